//! 1,000 calls on a hung disk must not grow threads or memory without
//! bound. Alone in its own test binary, so no other test's threads or
//! allocations muddy the process-wide counts it reads.

use std::sync::Arc;
use std::time::Duration;

use disk_io::{Deadline, Disk, DiskError};

mod common;
use common::{fuse_disk, never_trip};

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_on_a_hung_disk_stay_bounded() {
    let mut cfg = never_trip();
    cfg.driver.max_in_flight = 16;
    cfg.driver.zombie_cap = 15;
    cfg.driver.iowq_bounded_workers = 4;
    cfg.driver.iowq_unbounded_workers = 2;
    cfg.driver.blocking_threads = 2;
    let limits = cfg.driver.clone();
    let fx = fuse_disk(cfg).await;
    let ctl = fx.ctl.clone();
    let disk = Arc::new(fx.disk.clone());
    let threads_before = thread_count();
    let rss_before = rss_bytes();
    ctl.hang();

    let mut tasks = Vec::new();
    for t in 0..50 {
        let disk = disk.clone();
        tasks.push(tokio::spawn(async move {
            // Every call returns bounded: a deadline miss, or once the
            // zombies pile up past the cap, a fail-fast refusal.
            let mut misses = 0;
            for i in 0..20 {
                let d = Deadline::after(Duration::from_millis(50));
                let r = match (t + i) % 3 {
                    0 => disk.read_all("v", "meta", d).await.map(|_| ()),
                    1 => disk.stat_file("v", "meta", d).await.map(|_| ()),
                    _ => disk.list_dir("v", "", d).await.map(|_| ()),
                };
                match r {
                    Err(DiskError::DeadlineExceeded { .. }) | Err(DiskError::Faulty { .. }) => {
                        misses += 1
                    }
                    other => panic!("hung disk answered {other:?}"),
                }
            }
            misses
        }));
    }
    let mut misses = 0;
    for t in tasks {
        misses += t.await.expect("task");
    }
    assert_eq!(misses, 1000, "every call returned unavailable, none hung");

    let stats = disk.driver_stats();
    let zombies = stats.zombies();
    let in_flight = stats.in_flight();
    let threads = thread_count();
    let rss = rss_bytes();
    ctl.release();
    eprintln!(
        "after 1000 hung calls: zombies {zombies}, in-flight {in_flight}, threads {threads_before} -> {threads}, RSS {} -> {} KiB",
        rss_before / 1024,
        rss / 1024
    );
    assert!(
        zombies <= limits.max_in_flight && in_flight <= limits.max_in_flight,
        "zombies {zombies} / in-flight {in_flight} exceed max_in_flight {}",
        limits.max_in_flight
    );
    // New threads can only be io-wq workers (capped per ring) and nothing else:
    // the blocking pool and ring thread already existed before the hang.
    let cap = (limits.iowq_bounded_workers + limits.iowq_unbounded_workers) as usize;
    assert!(
        threads <= threads_before + cap,
        "threads grew from {threads_before} to {threads} (io-wq cap {cap})"
    );
    let grown = rss.saturating_sub(rss_before);
    assert!(
        grown < 64 << 20,
        "RSS grew by {grown} bytes during 1000 hung calls"
    );
}
