//! An `openat` that completes after its caller gave up must not leak its
//! fd: the ring thread closes it. Its own test binary, so the process-wide fd
//! count it reads is not disturbed by other tests.

use std::time::Duration;

use disk_io::{Deadline, Disk, DiskConfig, DiskError, LocalDisk};
use disk_io_harness::{privilege, FaultFs};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_open_results_are_closed() {
    privilege::require_root().expect("this test mounts FUSE");
    privilege::require_fuse().expect("this test mounts FUSE");
    let (_scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
    let ctl = fs.control();
    let mut cfg = DiskConfig::default();
    cfg.health.faulty_after_misses = u32::MAX;
    cfg.health.probe_interval = Duration::ZERO;
    let setup = Deadline::after(Duration::from_secs(10));
    let disk = LocalDisk::builder(fs.mountpoint())
        .config(cfg)
        .open(setup)
        .await
        .expect("open");
    disk.make_vol("v", setup).await.expect("make_vol");
    disk.write_all("v", "f", b"data", setup)
        .await
        .expect("write");
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
    assert_eq!(disk.read_all("v", "f", setup).await.expect("read"), b"data");
}
