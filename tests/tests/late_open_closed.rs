//! An `openat` that completes after its caller gave up must not leak its
//! fd: the ring thread closes it. Its own test binary, so the process-wide fd
//! count it reads is not disturbed by other tests.

use std::time::Duration;

use disk_io::{Deadline, Disk, DiskError};

mod common;
use common::{fuse_disk, never_trip, setup_deadline};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_open_results_are_closed() {
    let fx = fuse_disk(never_trip()).await;
    let (disk, ctl) = (&fx.disk, &fx.ctl);
    let setup = setup_deadline();
    // Let the background trash purge from open finish before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = open_fds();

    // Every FUSE request now takes 150 ms: opens finish after 50 ms deadlines.
    ctl.set_latency(Duration::from_millis(150));
    let mut missed = 0;
    for _ in 0..10 {
        match disk
            .read_all("v", "f", Deadline::after(Duration::from_millis(50)))
            .await
        {
            Err(DiskError::DeadlineExceeded { .. }) => missed += 1,
            other => panic!("expected a deadline miss, got {other:?}"),
        }
    }
    assert_eq!(missed, 10);
    // The late opens land and are closed by the ring (each close also pays
    // the latency); wait for the zombies to drain, bounded.
    let stats = disk.driver_stats().clone();
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        while stats.in_flight() > 0 || open_fds() > before {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    ctl.set_latency(Duration::ZERO);
    assert!(
        drained.is_ok(),
        "fds {} -> {} and {} ops still in flight: late opens leaked",
        before,
        open_fds(),
        stats.in_flight()
    );
    assert_eq!(
        disk.read_all("v", "meta", setup).await.expect("read"),
        b"old"
    );
}
