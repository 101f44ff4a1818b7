//! `cargo xtask bench-s3` (`cargo bench -p disk-io-node --bench s3`): the
//! object-level figures of the field report's scenario, through boto3 on
//! 4-node × 4-disk clusters of release-built `disk-io-node`s:
//!
//! - PUT and GET throughput of a 1 GiB object, healthy vs node4 powered
//!   off (target: ≥ 0.9 of healthy), for the io_uring disks (the product)
//!   and for the same node serving its disks through `tokio::fs`
//!   (`--disk-backend tokio-fs`), to show what the io_uring layer buys at
//!   the object level;
//! - how long the survivors take to see node4 dead;
//! - an IAM operation's latency (user add through the admin CLI) while
//!   node4 is off.
//!
//! Rounds interleave everything (uring healthy, uring off, tokio-fs
//! healthy, tokio-fs off, ...) in one run, since this host drifts by tens
//! of percent between runs; medians and per-round ratios are printed.
//!
//! Options: `--rounds N` (default 3), `--size-mib N` (default 1024).

use std::time::{Duration, Instant};

#[path = "../tests/s3_common/mod.rs"]
mod s3_common;
use s3_common::*;

#[path = "common/mod.rs"]
mod common;

#[derive(Default)]
struct Figures {
    put_mib_s: Vec<f64>,
    get_mib_s: Vec<f64>,
}

fn mib_s(bytes: u64, v: &serde_json::Value) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / v["seconds"].as_f64().expect("seconds")
}

/// One PUT and one GET of the object through node1; MiB/s each.
fn put_get(
    s: &S3Cluster,
    file: &std::path::Path,
    size: u64,
    sum: &str,
    out: &std::path::Path,
) -> (f64, f64) {
    let p = s
        .s3io(
            "node1",
            &[
                "put",
                file.to_str().unwrap(),
                "bench",
                "obj",
                "--part-size",
                "67108864",
            ],
        )
        .finish(Duration::from_secs(900));
    assert_eq!(p["event"], "done", "PUT: {p}");
    let g = s
        .s3io("node2", &["get", "bench", "obj", out.to_str().unwrap()])
        .finish(Duration::from_secs(900));
    assert_eq!(g["event"], "done", "GET: {g}");
    assert_eq!(g["sha256"].as_str(), Some(sum), "GET returned other bytes");
    (mib_s(size, &p), mib_s(size, &g))
}

/// Wait until node1 sees node4 dead (its breaker open); from `since`.
fn seen_dead(s: &S3Cluster, since: Instant) -> Duration {
    loop {
        if let Ok(v) = s.status("node1", Duration::from_secs(1)) {
            if v.nodes
                .iter()
                .any(|n| n.name == "node4" && n.breaker == "open")
            {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "node4 never seen dead"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Power node4 on and wait until it is healed.
fn power_on_and_heal(s: &mut S3Cluster) {
    let since = now_ms();
    s.c.poweron("node4").expect("power on node4");
    s.wait_healed(since, Duration::from_secs(300));
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds = common::arg("--rounds", 3).max(1);
    let size = (common::arg("--size-mib", 1024) as u64) << 20;
    let dir = scratch();
    let file = dir.path().join("obj.bin");
    let out = dir.path().join("got.bin");
    let sum = random_file(&file, size, 99);
    // Room per disk for three versions of the object's shards (128 MiB per
    // GiB each): the current one, the one a round replaces, and leftovers a
    // powered-off node keeps until the scanner purges them.
    let image = (size / 2).max(256 << 20);
    eprintln!("starting two 4x4 clusters (io_uring disks, tokio-fs disks) ...");
    let mut uring = S3Cluster::start_with(image, &[]);
    let bench = |s: &S3Cluster| {
        let o = s.aws(
            "node1",
            &["s3", "mb", "s3://bench"],
            Duration::from_secs(30),
        );
        assert!(o.status.success(), "mb: {}", text(&o));
    };
    bench(&uring);
    // One cluster's S3Cluster holds the per-process cluster lock; the
    // second is started through the harness directly.
    let mut tokio_fs = S3Cluster::second(image, &["--disk-backend", "tokio-fs"]);
    bench(&tokio_fs);

    let mut fig: [[Figures; 2]; 2] = Default::default(); // [backend][healthy, off]
    let mut detect = Vec::new();
    let mut iam = Vec::new();
    for r in 0..rounds {
        for (b, s) in [&mut uring, &mut tokio_fs].into_iter().enumerate() {
            let (p, g) = put_get(s, &file, size, &sum, &out);
            fig[b][0].put_mib_s.push(p);
            fig[b][0].get_mib_s.push(g);
            s.c.poweroff("node4").expect("power off node4");
            let off = Instant::now();
            let d = seen_dead(s, off);
            let t0 = Instant::now();
            let o = s.admin(&[
                "--node",
                "node2",
                "user",
                "add",
                "--access-key",
                &format!("bench-{b}-{r}"),
                "--secret-key",
                "bench-user-secret-key-01",
            ]);
            let iam_took = t0.elapsed();
            assert!(o.status.success(), "IAM add with node4 off: {}", text(&o));
            let (p2, g2) = put_get(s, &file, size, &sum, &out);
            fig[b][1].put_mib_s.push(p2);
            fig[b][1].get_mib_s.push(g2);
            if b == 0 {
                detect.push(d);
                iam.push(iam_took);
            }
            eprintln!(
                "round {} {}: PUT {:.0} → {:.0} MiB/s, GET {:.0} → {:.0} MiB/s (healthy → node4 off); detection {:.0} ms; IAM add {:.0} ms",
                r + 1,
                ["uring", "tokio-fs"][b],
                p,
                p2,
                g,
                g2,
                d.as_secs_f64() * 1e3,
                iam_took.as_secs_f64() * 1e3
            );
            power_on_and_heal(s);
        }
    }
    println!(
        "\n1 GiB object through boto3, 4x4 cluster, median of {rounds} interleaved rounds (MiB/s):"
    );
    println!(
        "{:<10} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8}",
        "disks", "PUT healthy", "PUT node4off", "ratio", "GET healthy", "GET node4off", "ratio"
    );
    for (b, name) in ["uring", "tokio-fs"].iter().enumerate() {
        let ph = median(&fig[b][0].put_mib_s);
        let po = median(&fig[b][1].put_mib_s);
        let gh = median(&fig[b][0].get_mib_s);
        let go = median(&fig[b][1].get_mib_s);
        let pr: Vec<f64> = fig[b][1]
            .put_mib_s
            .iter()
            .zip(&fig[b][0].put_mib_s)
            .map(|(o, h)| o / h)
            .collect();
        let gr: Vec<f64> = fig[b][1]
            .get_mib_s
            .iter()
            .zip(&fig[b][0].get_mib_s)
            .map(|(o, h)| o / h)
            .collect();
        println!(
            "{name:<10} {ph:>12.0} {po:>12.0} {:>8.2} {gh:>12.0} {go:>12.0} {:>8.2}",
            median(&pr),
            median(&gr)
        );
    }
    let up: Vec<f64> = fig[0][0]
        .put_mib_s
        .iter()
        .zip(&fig[1][0].put_mib_s)
        .map(|(u, t)| u / t)
        .collect();
    let ug: Vec<f64> = fig[0][0]
        .get_mib_s
        .iter()
        .zip(&fig[1][0].get_mib_s)
        .map(|(u, t)| u / t)
        .collect();
    println!(
        "uring / tokio-fs, healthy (median per-round ratio): PUT {:.2}, GET {:.2}",
        median(&up),
        median(&ug)
    );
    let ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>();
    println!(
        "node4 seen dead by node1 (ms, per round): {:?}; IAM user add with node4 off (ms, per round, incl. CLI start): {:?}",
        ms(&detect).iter().map(|x| x.round()).collect::<Vec<_>>(),
        ms(&iam).iter().map(|x| x.round()).collect::<Vec<_>>()
    );
    tokio_fs.c.shutdown().expect("cleanup");
    uring.c.shutdown().expect("cleanup");
}
