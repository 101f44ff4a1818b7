//! `cargo xtask demo`: four disks, one of them on the FUSE fault harness,
//! a mixed workload with deadlines, and the FUSE layer hung mid-run.
//!
//! Every operation is printed as it finishes, with its latency against its
//! deadline; the hung disk's health transitions are printed as they happen
//! (Online → Suspect → Faulty → Probing → Online after release). Ends by
//! itself in about 15 s, cleans up, and exits non-zero if the contract was
//! broken (a call returned later than deadline + slack, or the hung disk
//! never recovered).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use disk_io::{CreateOptions, Deadline, Disk, DiskConfig, DiskError, HealthState, LocalDisk};
use disk_io_harness::{privilege, FaultFs, ScratchDir};

/// Budget of every workload operation.
const OP_DEADLINE: Duration = Duration::from_millis(200);
/// Pause between one disk's operations.
const OP_INTERVAL: Duration = Duration::from_millis(250);
/// When the FUSE layer under disk 3 hangs, and when it is released.
const HANG_AT: Duration = Duration::from_secs(3);
const RELEASE_AT: Duration = Duration::from_secs(7);
/// The run ends this long after the hung disk is back Online (or at MAX_RUN).
const TAIL: Duration = Duration::from_secs(2);
const MAX_RUN: Duration = Duration::from_secs(40);
/// How late past its deadline a call may return before the demo calls it a
/// broken contract (the bench measures the real ε; this is a sanity bound).
const LATE_LIMIT: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Tally {
    ok: u64,
    deadline: u64,
    faulty: u64,
    other: u64,
    worst_late: Duration,
}

fn config() -> DiskConfig {
    let mut c = DiskConfig::default();
    c.health.tick = Duration::from_millis(50);
    c.health.faulty_after_misses = 3;
    c.health.no_progress_window = Duration::from_millis(300);
    c.health.backoff_initial = Duration::from_millis(500);
    c.health.backoff_max = Duration::from_secs(2);
    c.health.recovery_successes = 2;
    c.health.probe_interval = Duration::from_secs(5);
    c.timeouts.probe = Duration::from_millis(300);
    c
}

fn main() {
    if let Err(e) = privilege::require_root().and_then(|()| privilege::require_fuse()) {
        eprintln!("demo: {e}");
        std::process::exit(1);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(demo());
    std::process::exit(code);
}

async fn demo() -> i32 {
    let started = Instant::now();
    let t = move || started.elapsed().as_secs_f64();
    let scratch = match ScratchDir::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo: scratch dir: {e}");
            return 1;
        }
    };
    let (fuse_backing, fuse_mnt) = match (scratch.subdir("fuse-backing"), scratch.subdir("disk3")) {
        (Ok(b), Ok(m)) => (b, m),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("demo: {e}");
            return 1;
        }
    };
    let fs = match FaultFs::mount(&fuse_backing, &fuse_mnt) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("demo: mount faultfs: {e}");
            return 1;
        }
    };
    let ctl = fs.control();
    let setup = Deadline::after(Duration::from_secs(10));
    let mut disks = Vec::new();
    for i in 0..4u32 {
        let root = if i == 3 {
            fuse_mnt.clone()
        } else {
            match scratch.subdir(&format!("disk{i}")) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("demo: {e}");
                    return 1;
                }
            }
        };
        let opened = async {
            let d = LocalDisk::builder(&root)
                .config(config())
                .label(format!("disk{i}"))
                .open(setup)
                .await?;
            let id = d.format(0, i, true, setup).await?;
            d.make_vol("demo", setup).await?;
            Ok::<_, DiskError>((d, id))
        }
        .await;
        match opened {
            Ok((d, id)) => {
                println!(
                    "[{:6.3}s] disk{i} formatted at {} (uuid {}, set 0, index {i}){}",
                    t(),
                    root.display(),
                    id.uuid,
                    if i == 3 {
                        "  <- on the FUSE fault harness"
                    } else {
                        ""
                    }
                );
                disks.push(d);
            }
            Err(e) => {
                eprintln!("demo: disk{i}: {e}");
                return 1;
            }
        }
    }

    // Print the hung disk's state changes as they happen.
    let transitions = Arc::new(Mutex::new(vec![HealthState::Online]));
    let mut rx = disks[3].subscribe();
    let seen = transitions.clone();
    let watcher = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let tr = rx.borrow_and_update().clone();
            println!(
                "[{:6.3}s] ** disk3 state {} -> {}  ({})",
                t(),
                tr.from,
                tr.to,
                tr.reason
            );
            seen.lock().unwrap_or_else(|e| e.into_inner()).push(tr.to);
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        let disk = disk.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut n = 0u64;
            let mut shard = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let deadline = Deadline::after(OP_DEADLINE);
                let t0 = Instant::now();
                let key = format!("obj{}", n % 8);
                let (op, r) = match n % 4 {
                    0 => (
                        "write_all",
                        disk.write_all(
                            "demo",
                            &format!("{key}/meta"),
                            format!("v{n}").as_bytes(),
                            deadline,
                        )
                        .await,
                    ),
                    1 => (
                        "read_all",
                        disk.read_all(
                            "demo",
                            &format!("obj{}/meta", n.saturating_sub(1) % 8),
                            deadline,
                        )
                        .await
                        .map(|_| ()),
                    ),
                    2 => {
                        shard += 1;
                        let r = async {
                            let mut w = disk
                                .create_file(
                                    "demo",
                                    &format!("{key}/part.{shard}"),
                                    CreateOptions::default(),
                                    deadline,
                                )
                                .await?;
                            w.append(&[n as u8; 64 * 1024], deadline).await?;
                            w.finish(deadline).await.map(|_| ())
                        }
                        .await;
                        ("shard write", r)
                    }
                    _ => (
                        "stat_file",
                        disk.stat_file(
                            "demo",
                            &format!("obj{}/meta", n.saturating_sub(3) % 8),
                            deadline,
                        )
                        .await
                        .map(|_| ()),
                    ),
                };
                let took = t0.elapsed();
                let late = deadline.overshoot(Instant::now());
                tally.worst_late = tally.worst_late.max(late);
                let outcome = match &r {
                    Ok(()) => {
                        tally.ok += 1;
                        "ok".to_string()
                    }
                    Err(DiskError::DeadlineExceeded { .. }) => {
                        tally.deadline += 1;
                        format!("DEADLINE EXCEEDED ({:.1?} past it)", late)
                    }
                    Err(DiskError::Faulty { .. }) => {
                        tally.faulty += 1;
                        "FAULTY, failed fast".to_string()
                    }
                    Err(DiskError::FileNotFound) => {
                        tally.ok += 1;
                        "not found (not written yet)".to_string()
                    }
                    Err(e) => {
                        tally.other += 1;
                        format!("error: {e}")
                    }
                };
                println!(
                    "[{:6.3}s] disk{i} {op:<11} {:>9.1?} / {:?}  {outcome}",
                    t(),
                    took,
                    OP_DEADLINE
                );
                n += 1;
                tokio::time::sleep(OP_INTERVAL).await;
            }
            tally
        }));
    }

    tokio::time::sleep_until(tokio::time::Instant::from_std(started + HANG_AT)).await;
    println!(
        "[{:6.3}s] !! hanging every request of the FUSE layer under disk3",
        t()
    );
    ctl.hang();
    tokio::time::sleep_until(tokio::time::Instant::from_std(started + RELEASE_AT)).await;
    println!("[{:6.3}s] !! releasing the FUSE layer under disk3", t());
    ctl.release();

    // Run until disk3 has been back Online for TAIL, or MAX_RUN.
    let mut online_since: Option<Instant> = None;
    while started.elapsed() < MAX_RUN {
        match (disks[3].state(), online_since) {
            (HealthState::Online, None) => online_since = Some(Instant::now()),
            (HealthState::Online, Some(at)) if at.elapsed() >= TAIL => break,
            (HealthState::Online, Some(_)) => {}
            _ => online_since = None,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut tallies = Vec::new();
    for w in workers {
        tallies.push(w.await.unwrap_or_default());
    }
    watcher.abort();

    println!("\nsummary ({:.1}s):", t());
    println!("  disk    ok  deadline-exceeded  failed-fast  other  worst-return-past-deadline");
    let mut worst = Duration::ZERO;
    for (i, tl) in tallies.iter().enumerate() {
        worst = worst.max(tl.worst_late);
        println!(
            "  disk{i} {:>5} {:>18} {:>12} {:>6}  {:>10.1?}",
            tl.ok, tl.deadline, tl.faulty, tl.other, tl.worst_late
        );
    }
    let states = transitions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let path: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    println!("  disk3 went {}", path.join(" -> "));
    let recovered = states.contains(&HealthState::Faulty)
        && states.contains(&HealthState::Probing)
        && states.last() == Some(&HealthState::Online);
    let healthy_others = tallies[..3]
        .iter()
        .all(|t| t.deadline == 0 && t.faulty == 0 && t.other == 0);

    drop(disks);
    if let Err(e) = fs.unmount() {
        eprintln!("demo: unmount: {e}");
    }
    drop(scratch);

    let mut code = 0;
    if worst > LATE_LIMIT {
        println!("  CONTRACT BROKEN: a call returned {worst:?} after its deadline");
        code = 1;
    }
    if !recovered {
        println!("  disk3 did not go Faulty -> Probing -> Online");
        code = 1;
    }
    if !healthy_others {
        println!("  a healthy disk saw errors while disk3 was hung");
        code = 1;
    }
    if code == 0 {
        println!("  every call returned by its deadline + {worst:.1?} at worst; the hung disk was taken out, failed fast, and came back after release; the other disks never noticed");
    }
    code
}
