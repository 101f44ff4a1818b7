//! `cargo xtask demo`: the field report's scenario
//! (`../shared/reference/outage-analysis-4x4-cluster.md`) on a 4-node ×
//! 4-disk cluster of `disk-io-node`s in network namespaces. A 3.1 GiB
//! upload through boto3; node4 loses power (packets dropped, process
//! stopped) at 30 % of the bytes; a timeline as it happens; node4 powered
//! on and healed; a summary against the report's figures; cleanup.
//!
//! Needs root, netns, nftables, loop devices, awscli and python3-boto3
//! (`cargo xtask setup`).

use std::time::{Duration, Instant};

#[path = "../tests/s3_common/mod.rs"]
mod s3_common;
use s3_common::*;

const SIZE: u64 = 3_328_599_654; // 3.1 GiB
const POWER_OFF_AT: f64 = 0.30;

struct Timeline {
    t0: Instant,
}

impl Timeline {
    fn event(&self, what: &str) -> Duration {
        let t = self.t0.elapsed();
        let clear = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            "\r\x1b[2K"
        } else {
            ""
        };
        eprintln!("{clear}  {:>7.2} s  {what}", t.as_secs_f64());
        t
    }
}

/// The progress bar: redrawn in place on a terminal; elsewhere (a log
/// file, CI) one line per tenth of the bytes.
fn bar(done: f64, total: f64, rate: f64, last_tenth: &mut u64) {
    let width = 40;
    let filled = ((done / total) * width as f64) as usize;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let tenth = (10.0 * done / total) as u64;
    if !tty && tenth == *last_tenth {
        return;
    }
    *last_tenth = tenth;
    let (start, end) = if tty { ("\r\x1b[2K", "") } else { ("", "\n") };
    eprint!(
        "{start}  [{}{}] {:>5.1} %  {:.2}/{:.2} GiB  {:>6.0} MiB/s{end}",
        "#".repeat(filled.min(width)),
        ".".repeat(width - filled.min(width)),
        100.0 * done / total,
        done / (1u64 << 30) as f64,
        total / (1u64 << 30) as f64,
        rate / (1u64 << 20) as f64
    );
}

fn main() {
    let started = Instant::now();
    eprintln!("disk-io demo: the field report's power-off, with a real S3 client\n");
    eprintln!("starting 4 nodes × 4 disks (2 erasure sets of 4+4) in network namespaces ...");
    let mut s = S3Cluster::start(1 << 30);
    eprintln!(
        "cluster up in {:.1?}; user made through `disk-io-node admin user add`",
        started.elapsed()
    );
    let out = s.aws("node1", &["s3", "mb", "s3://demo"], Duration::from_secs(30));
    assert!(out.status.success(), "mb: {}", text(&out));
    let dir = scratch();
    let file = dir.path().join("upload.bin");
    eprintln!(
        "writing a {:.1} GiB file of random bytes ...",
        SIZE as f64 / (1u64 << 30) as f64
    );
    random_file(&file, SIZE, 42);
    let small = dir.path().join("small.bin");
    random_file(&small, 1 << 20, 7);

    eprintln!("\ntimeline (s since the upload started):");
    let tl = Timeline { t0: Instant::now() };
    let mut up = s.s3io(
        "node1",
        &[
            "--every",
            "33554432",
            "put",
            file.to_str().unwrap(),
            "demo",
            "big",
            "--part-size",
            "67108864",
        ],
    );
    let mut off_at = None;
    let mut tenth = 0u64;
    let mut detected = Duration::ZERO;
    let (mut new_put, mut iam_took) = (Duration::ZERO, Duration::ZERO);
    let mut before_rate = 0.0;
    let (mut last_b, mut last_t) = (0.0f64, 0.0f64);
    let done = loop {
        let v = up
            .wait_fraction(0.0, Duration::from_secs(600))
            .expect("upload progress");
        if v["event"] != "progress" {
            break v;
        }
        let (b, t) = (v["bytes"].as_f64().unwrap(), v["t"].as_f64().unwrap());
        let rate = if t > last_t {
            (b - last_b) / (t - last_t)
        } else {
            0.0
        };
        (last_b, last_t) = (b, t);
        bar(b, SIZE as f64, rate, &mut tenth);
        if off_at.is_none() && b / SIZE as f64 >= POWER_OFF_AT {
            before_rate = b / t;
            s.c.poweroff("node4").expect("power off node4");
            off_at = Some((
                tl.event("node4 powered off (packets dropped, process stopped)"),
                b,
                t,
            ));
            // Watch node1's view until node4 is dead there.
            let (mut dead, mut open) = (false, false);
            let since = Instant::now();
            while !(dead && open) && since.elapsed() < Duration::from_secs(10) {
                if let Ok(v) = s.status("node1", Duration::from_secs(1)) {
                    if !dead
                        && v.sets
                            .iter()
                            .flat_map(|s| &s.disks)
                            .filter(|d| d.label.starts_with("node4:"))
                            .all(|d| d.state != "online")
                    {
                        dead = true;
                        detected = since.elapsed();
                        tl.event("node4 seen dead by node1 (its disks faulty)");
                    }
                    if !open
                        && v.nodes
                            .iter()
                            .any(|n| n.name == "node4" && n.breaker == "open")
                    {
                        open = true;
                        tl.event("node1's breaker for node4 open: calls to it fail in µs");
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let r = s
                .s3io(
                    "node2",
                    &[
                        "put",
                        small.to_str().unwrap(),
                        "demo",
                        "during-outage",
                        "--single",
                    ],
                )
                .finish(Duration::from_secs(60));
            assert_eq!(r["event"], "done", "new upload: {r}");
            // Timed by the client around its request: the interpreter's
            // start is not the cluster's latency.
            let took = Duration::from_secs_f64(r["seconds"].as_f64().unwrap_or(0.0));
            tl.event(&format!(
                "new 1 MiB upload through node2 done in {:.0} ms",
                took.as_secs_f64() * 1e3
            ));
            let t = Instant::now();
            let out = s.admin(&[
                "--node",
                "node3",
                "user",
                "add",
                "--access-key",
                "during-outage",
                "--secret-key",
                "during-outage-secret-01",
            ]);
            let iam = t.elapsed();
            assert!(
                out.status.success(),
                "IAM add during the outage: {}",
                text(&out)
            );
            tl.event(&format!(
                "IAM user added through node3 in {:.0} ms (incl. CLI start)",
                iam.as_secs_f64() * 1e3
            ));
            (new_put, iam_took) = (took, iam);
        }
    };
    assert_eq!(done["event"], "done", "the upload failed: {done}");
    let total = done["seconds"].as_f64().unwrap();
    tl.event(&format!(
        "upload of {:.1} GiB done in {:.1} s",
        SIZE as f64 / (1u64 << 30) as f64,
        total
    ));
    let (_, off_b, off_t) = off_at.expect("node4 was powered off");
    let after_rate = (SIZE as f64 - off_b) / (total - off_t).max(1e-3);

    let t = Instant::now();
    let since = now_ms();
    s.c.poweron("node4").expect("power on node4");
    tl.event("node4 powered on");
    s.wait_healed(since, Duration::from_secs(300));
    let shards: u64 = ["node1", "node2", "node3", "node4"]
        .iter()
        .filter_map(|n| s.status(n, Duration::from_secs(2)).ok())
        .map(|v| v.healed)
        .sum();
    let heal = (t.elapsed(), shards);
    tl.event(&format!(
        "healed: both sets scanned to completion after node4 came back ({} shards rebuilt)",
        heal.1
    ));

    let iam = iam_took;
    let ratio = after_rate / before_rate;
    eprintln!("\nsummary (the field report measured RustFS on this kind of machine):");
    eprintln!(
        "  {:<44} {:>14} {:>22}",
        "", "disk-io", "field report (RustFS)"
    );
    eprintln!(
        "  {:<44} {:>13.1}s {:>22}",
        "upload completed through the power-off in", total, "yes, after a 25-30 s stall"
    );
    eprintln!(
        "  {:<44} {:>12.0}ms {:>22}",
        "node4 seen dead after its power-off",
        detected.as_secs_f64() * 1e3,
        "8 s"
    );
    eprintln!(
        "  {:<44} {:>14.2} {:>22}",
        "upload speed after / before the power-off", ratio, "~0.3 (1 GiB: 9.1→33.7 s)"
    );
    eprintln!(
        "  {:<44} {:>12.0}ms {:>22}",
        "new 1 MiB PUT during the outage",
        new_put.as_secs_f64() * 1e3,
        "19-31 s"
    );
    eprintln!(
        "  {:<44} {:>12.0}ms {:>22}",
        "IAM user add during the outage",
        iam.as_secs_f64() * 1e3,
        "10 s (timeout)"
    );
    eprintln!(
        "  {:<44} {:>13.1}s {:>22}",
        "node4 back to full redundancy",
        heal.0.as_secs_f64(),
        "-"
    );
    eprintln!("  target: speed ratio ≥ 0.9, new PUTs at normal latency, IAM < 1 s");
    eprintln!("\ncleaning up ...");
    s.c.shutdown().expect("cluster cleanup");
    eprintln!("demo done in {:.0?}", started.elapsed());
}
