//! Deadline overshoot (ε) and fail-fast latency, measured on a disk whose
//! FUSE layer hangs every request.
//!
//! ε is how late a call returns after its deadline: `return − deadline`.
//! The contract is `ε p100 ≤ 5 ms` on an idle machine. The health machine is
//! told not to trip during the overshoot phase, so every call really waits
//! for its deadline; then the disk is marked Faulty and the fail-fast path
//! is timed.
//!
//! `cargo xtask bench-deadline [--calls N] [--deadline D] [--concurrency C] [--json]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_io::{Deadline, Disk, DiskConfig, DiskError, LocalDisk};
use disk_io_bench::Latencies;
use disk_io_harness::faultfs::FaultFs;
use disk_io_harness::privilege;

struct Args {
    calls: usize,
    deadline: Duration,
    concurrency: usize,
    fail_fast_calls: usize,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        calls: 2000,
        deadline: Duration::from_millis(20),
        concurrency: 8,
        fail_fast_calls: 100_000,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--calls" => a.calls = value()?.parse().map_err(|e| format!("--calls: {e}"))?,
            "--deadline" => {
                a.deadline =
                    humantime::parse_duration(&value()?).map_err(|e| format!("--deadline: {e}"))?
            }
            "--concurrency" => {
                a.concurrency = value()?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?
            }
            "--fail-fast-calls" => {
                a.fail_fast_calls = value()?
                    .parse()
                    .map_err(|e| format!("--fail-fast-calls: {e}"))?
            }
            "--json" => a.json = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.calls == 0 || a.concurrency == 0 || a.deadline.is_zero() {
        return Err("--calls, --concurrency and --deadline must be > 0".into());
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("deadline-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = privilege::require_root().and_then(|()| privilege::require_fuse()) {
        eprintln!("deadline-bench: {e}");
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("deadline-bench: runtime: {e}");
            std::process::exit(1)
        });
    let code = rt.block_on(bench(args));
    std::process::exit(code);
}

async fn bench(args: Args) -> i32 {
    let (_scratch, fs) = match FaultFs::mount_scratch() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("deadline-bench: mount: {e}");
            return 1;
        }
    };
    let ctl = fs.control();
    let mut cfg = DiskConfig::default();
    // Measure the deadline path itself: never trip, never probe.
    cfg.health.faulty_after_misses = u32::MAX;
    cfg.health.probe_interval = Duration::ZERO;
    // Every hung call stays a zombie until the release, so room for all of
    // them keeps the zombie cap (which must stay below max_in_flight) out of
    // reach and every call on the deadline path rather than failing fast.
    cfg.driver.max_in_flight = args.calls + args.concurrency + 1;
    cfg.driver.zombie_cap = cfg.driver.max_in_flight - 1;
    let setup = Deadline::after(Duration::from_secs(10));
    let disk = match LocalDisk::builder(fs.mountpoint())
        .config(cfg)
        .open(setup)
        .await
    {
        Ok(d) => Arc::new(d),
        Err(e) => {
            eprintln!("deadline-bench: open: {e}");
            return 1;
        }
    };
    if let Err(e) = async {
        disk.format(0, 0, true, setup).await?;
        disk.make_vol("bench", setup).await?;
        disk.write_all("bench", "meta", b"x", setup).await
    }
    .await
    {
        eprintln!("deadline-bench: setup: {e}");
        return 1;
    }

    ctl.hang();
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per_task = args.calls.div_ceil(args.concurrency);
    for t in 0..args.concurrency {
        let disk = disk.clone();
        let d = args.deadline;
        tasks.push(tokio::spawn(async move {
            let mut eps = Vec::with_capacity(per_task);
            let mut other = 0usize;
            for i in 0..per_task {
                let deadline = Deadline::after(d);
                let kind = (t + i) % 4;
                let r = match kind {
                    0 => disk.read_all("bench", "meta", deadline).await.map(|_| ()),
                    1 => disk.stat_file("bench", "meta", deadline).await.map(|_| ()),
                    2 => disk.write_all("bench", "meta", b"y", deadline).await,
                    _ => disk.disk_id(deadline).await.map(|_| ()),
                };
                let now = Instant::now();
                match r {
                    Err(DiskError::DeadlineExceeded { .. }) => {
                        eps.push((kind, deadline.overshoot(now)))
                    }
                    _ => other += 1,
                }
            }
            (eps, other)
        }));
    }
    let mut overshoot = Latencies::new();
    let mut by_op: [Latencies; 4] = Default::default();
    let mut unexpected = 0;
    for t in tasks {
        if let Ok((eps, other)) = t.await {
            for (kind, e) in eps {
                overshoot.record(e);
                by_op[kind].record(e);
            }
            unexpected += other;
        }
    }
    let overshoot_wall = started.elapsed();
    let zombies = disk.driver_stats().zombies();

    disk.mark_faulty("bench: fail-fast phase");
    let mut fast = Latencies::new();
    for _ in 0..args.fail_fast_calls {
        let t0 = Instant::now();
        let r = disk
            .read_all("bench", "meta", Deadline::after(args.deadline))
            .await;
        fast.record(t0.elapsed());
        if !matches!(r, Err(DiskError::Faulty { .. })) {
            unexpected += 1;
        }
    }
    ctl.release();

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "deadline_ms": args.deadline.as_secs_f64() * 1e3,
                "concurrency": args.concurrency,
                "overshoot": overshoot.summary_json(),
                "fail_fast": fast.summary_json(),
                "unexpected_results": unexpected,
                "zombies_at_end": zombies,
            })
        );
    } else {
        println!(
            "deadline overshoot ε on a hung disk: {} calls, deadline {:?}, concurrency {}, {:.1?} wall",
            overshoot.count(),
            args.deadline,
            args.concurrency,
            overshoot_wall
        );
        println!("{}", overshoot.line("  ε (return − deadline)"));
        for (name, l) in ["read_all", "stat_file", "write_all", "get_disk_id"]
            .iter()
            .zip(&by_op)
        {
            println!("{}", l.line(&format!("    {name}")));
        }
        println!("fail-fast on a Faulty disk:");
        println!("{}", fast.line("  call latency"));
        println!(
            "zombies when the hang ended: {zombies}; calls with an unexpected result: {unexpected}"
        );
        println!("target: ε p100 ≤ 5 ms on an idle machine");
    }
    if unexpected > 0 {
        1
    } else {
        0
    }
}
