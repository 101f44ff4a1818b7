//! disk-io with the eBPF stall source: a disk on ext4 on a loop device whose
//! image is on a hung FUSE mount turns Faulty in under a second of the
//! stall — long before a caller's 5 s deadline — and calls fail fast; it
//! comes back once the device answers again.

mod ebpf_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_io::stall_ebpf::{EbpfStallConfig, EbpfStallMonitor};
use disk_io::{Deadline, Disk, DiskConfig, DiskError, HealthState, LocalDisk};
use ebpf_common::*;

const THRESHOLD: Duration = Duration::from_millis(300);
const OP_DEADLINE: Duration = Duration::from_secs(5);

fn op_deadline() -> Deadline {
    Deadline::after(OP_DEADLINE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_device_takes_the_disk_out_before_any_deadline() {
    let disk_fx = stallable_disk();
    let (ext4, ctl, dev) = (&disk_fx.ext4, &disk_fx.ctl, disk_fx.dev.clone());
    // The loader's own threshold does not matter here: disk-io's source
    // reads the in-flight table with its own.
    let loader = start_loader(&dev, Duration::from_secs(10), Duration::from_millis(100));

    let monitor = EbpfStallMonitor::new(EbpfStallConfig {
        pin_dir: loader.pin_dir().to_path_buf(),
        threshold: THRESHOLD,
        ..EbpfStallConfig::default()
    });
    let source = monitor
        .source_for_dir(ext4.mount_dir())
        .expect("map the disk directory to its block device");
    assert_eq!(
        source.device().name,
        dev,
        "ext4 mount maps to its loop device"
    );
    assert_eq!(source.oldest_in_flight().expect("read pinned maps"), None);

    let mut cfg = DiskConfig::default();
    cfg.health.probe_interval = Duration::ZERO;
    cfg.health.backoff_initial = Duration::from_millis(100);
    cfg.health.backoff_max = Duration::from_millis(500);
    let disk = LocalDisk::builder(ext4.mount_dir())
        .config(cfg)
        .stall_source(Arc::new(source))
        .open(op_deadline())
        .await
        .expect("open disk");
    disk.format(0, 1, false, op_deadline())
        .await
        .expect("format");
    disk.make_vol("v", op_deadline()).await.expect("make_vol");
    disk.write_all("v", "meta", b"old", op_deadline())
        .await
        .expect("write_all");
    assert_eq!(disk.state(), HealthState::Online);

    // A durable write (fsync: block writes on the loop device) with a 5 s
    // deadline, issued while the FUSE layer under the device is hung.
    ctl.hang();
    let writer = {
        let disk = disk.clone();
        tokio::spawn(async move { disk.write_all("v", "meta", b"new", op_deadline()).await })
    };
    let hung = {
        let ctl = ctl.clone();
        tokio::task::spawn_blocking(move || ctl.wait_for_hung(1, BOUND))
            .await
            .expect("wait_for_hung")
    };
    assert!(hung, "no block request reached the FUSE daemon");
    let stalled_at = Instant::now();

    while disk.state() != HealthState::Faulty {
        assert!(
            stalled_at.elapsed() < BOUND,
            "disk never went Faulty (state {:?})",
            disk.state()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let to_faulty = stalled_at.elapsed();
    assert!(
        to_faulty < Duration::from_secs(1),
        "Faulty {to_faulty:?} after the stall began (threshold {THRESHOLD:?})"
    );
    assert!(!writer.is_finished() || to_faulty < OP_DEADLINE);

    // Calls fail fast with a typed error naming the device.
    let t0 = Instant::now();
    let r = disk.read_all("v", "meta", op_deadline()).await;
    let took = t0.elapsed();
    match r {
        Err(DiskError::Faulty { reason }) => assert!(reason.contains(&dev), "{reason}"),
        other => panic!("expected Faulty, got {other:?}"),
    }
    assert!(
        took < Duration::from_millis(100),
        "fail-fast call took {took:?}"
    );
    let t0 = Instant::now();
    assert!(matches!(
        disk.stat_vol("v", op_deadline()).await,
        Err(DiskError::Faulty { .. })
    ));
    assert!(t0.elapsed() < Duration::from_millis(100));
    // It stays out while the request is stuck.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(disk.state(), HealthState::Faulty);

    ctl.release();
    let written = tokio::time::timeout(BOUND, writer)
        .await
        .expect("the stalled write_all did not return after release")
        .expect("writer task");
    // It either finished after release or gave up at its deadline; either
    // way it returned.
    if let Err(e) = &written {
        assert!(e.is_unavailable(), "{e:?}");
    }
    let t0 = Instant::now();
    while disk.state() != HealthState::Online {
        assert!(
            t0.elapsed() < BOUND,
            "no recovery after release (state {:?})",
            disk.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    disk.read_all("v", "meta", op_deadline())
        .await
        .expect("serves again after recovery");
    drop(disk);
    loader.stop();
}
