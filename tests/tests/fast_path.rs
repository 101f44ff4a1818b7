//! The driver's fast ring (reads and writes submitted from the caller's
//! thread with `RWF_NOWAIT`) under faults: a block device that stops
//! answering bounds every fast op by its deadline, counts zombies and
//! recovers; a hung disk does not slow another disk's fast ops on the same
//! runtime; a file system without a non-blocking path (FUSE) is sent to the
//! ring thread.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use disk_io::{Deadline, Disk, DiskError, LocalDisk};
use disk_io_driver::{AlignedBuf, Driver, DriverConfig, DriverError, File, IoBuf, KernelDeadline};
use disk_io_harness::{privilege, Ext4OnLoop, FaultFs};

mod common;
use common::{fuse_disk, need_fuse, never_trip, setup_deadline};

/// Slack over a deadline that a loaded 2-vCPU machine still meets.
const SLACK: Duration = Duration::from_millis(250);
const BLOCK: usize = 4096;

fn pattern(i: usize) -> Vec<u8> {
    (0..BLOCK)
        .map(|b| (b as u32 ^ (i as u32 * 31)) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_block_device_bounds_fast_ops_and_recovers() {
    need_fuse();
    privilege::require_ext4_on_loop().expect("this test attaches a loop device");
    let (scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
    let ctl = fs.control();
    let ext4 = Ext4OnLoop::over_faultfs(&fs, &scratch, 64 << 20).expect("ext4 on loop on faultfs");

    // A file of 64 written, fsynced blocks: reads and overwrites of it need
    // no allocation, so with its extents cached they go straight to the
    // device from the caller's thread.
    let path = ext4.mount_dir().join("blocks");
    {
        let f = std::fs::File::create(&path).expect("create");
        for i in 0..64 {
            f.write_all_at(&pattern(i), (i * BLOCK) as u64)
                .expect("lay out");
        }
        f.sync_all().expect("fsync");
    }
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .expect("O_DIRECT open");
    let cfg = DriverConfig {
        max_in_flight: 24,
        zombie_cap: 16,
        ..DriverConfig::default()
    };
    let driver = Driver::start("fast-hung", &cfg).expect("driver");
    let file = File::adopt(&driver, OwnedFd::from(direct));
    let stats = driver.stats().clone();
    let read = |i: usize, deadline: Deadline| {
        let (driver, file) = (driver.clone(), file.clone());
        async move {
            let buf = AlignedBuf::new(BLOCK, BLOCK).expect("aligned");
            driver
                .read_at(
                    &file,
                    IoBuf::Aligned(buf),
                    BLOCK,
                    (i * BLOCK) as u64,
                    deadline,
                    KernelDeadline::Enforced,
                )
                .await
        }
    };
    for i in 0..64 {
        let b = read(i, setup_deadline()).await.expect("read while healthy");
        assert_eq!(b.as_slice(), &pattern(i)[..], "block {i}");
    }
    let fast_before = stats.fast_submitted.load(Ordering::Relaxed);
    assert!(
        fast_before >= 64 - stats.fast_fallbacks.load(Ordering::Relaxed),
        "healthy direct reads on ext4 take the fast ring: {fast_before} fast, {} fell back",
        stats.fast_fallbacks.load(Ordering::Relaxed)
    );

    ctl.hang();
    // Twice as many reads as the driver has permits, 16 at a time, each
    // with a 300 ms deadline: every one answers by its deadline; the ones
    // the device holds become zombies, the rest wait for a permit until
    // their deadline.
    let budget = Duration::from_millis(300);
    let mut tasks = Vec::new();
    for i in 0..48 {
        let fut = read(i % 64, Deadline::after(budget));
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = fut.await;
            (r, t0.elapsed())
        }));
        if i % 16 == 15 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut late = Vec::new();
    for t in tasks {
        let (r, took) = t.await.expect("task");
        assert!(
            matches!(r, Err(DriverError::Deadline { .. })),
            "a read of a hung device: {r:?}"
        );
        if took > budget + SLACK {
            late.push(took);
        }
    }
    assert!(late.is_empty(), "reads answered late: {late:?}");
    assert!(
        ctl.wait_for_hung(1, Duration::from_secs(5)),
        "the reads must have reached the hung FUSE layer under the loop device"
    );
    let fast_hung = stats.fast_submitted.load(Ordering::Relaxed) - fast_before;
    assert!(fast_hung > 0, "no read reached the fast ring while hung");
    let zombies = stats.zombies();
    assert!(
        (1..cfg.max_in_flight).contains(&zombies) || zombies == cfg.max_in_flight,
        "zombies are counted and bounded by the permits: {zombies}"
    );
    assert!(stats.in_flight() <= cfg.max_in_flight);

    ctl.release();
    let t0 = Instant::now();
    while stats.zombies() > 0 || stats.in_flight() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "zombies never drained after release: {} zombies, {} in flight",
            stats.zombies(),
            stats.in_flight()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..64 {
        let b = read(i, setup_deadline()).await.expect("read after release");
        assert_eq!(b.as_slice(), &pattern(i)[..], "block {i} after release");
    }
    drop(file);
    drop(driver);
    drop(ext4);
    drop(fs);
    drop(scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_disk_does_not_slow_another_disks_fast_ops() {
    let hung = fuse_disk(never_trip()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let healthy = LocalDisk::open(dir.path(), setup_deadline())
        .await
        .expect("open healthy disk");
    healthy
        .make_vol("v", setup_deadline())
        .await
        .expect("make_vol");
    let body: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    healthy
        .write_all("v", "obj", &body, setup_deadline())
        .await
        .expect("write_all");

    // Normal latency of the healthy disk's reads, before anything hangs.
    async fn reads(disk: &LocalDisk, n: usize, body: &[u8]) -> Vec<Duration> {
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            let got = disk
                .read_file_at("v", "obj", 0, body.len(), setup_deadline())
                .await
                .expect("read on the healthy disk");
            lat.push(t0.elapsed());
            assert_eq!(got, body);
        }
        lat.sort();
        lat
    }
    let before = reads(&healthy, 200, &body).await;

    // 64 callers stuck on the hung disk for as long as the measurement runs.
    hung.ctl.hang();
    let stuck_budget = Duration::from_secs(8);
    let mut stuck = Vec::new();
    for i in 0..64 {
        let d = hung.disk.clone();
        stuck.push(tokio::spawn(async move {
            let deadline = Deadline::after(stuck_budget);
            let t0 = Instant::now();
            let r = if i % 2 == 0 {
                d.read_all("v", "meta", deadline).await.map(|_| ())
            } else {
                d.stat_vol("v", deadline).await.map(|_| ())
            };
            (r, t0.elapsed())
        }));
    }
    assert!(
        hung.ctl.wait_for_hung(1, Duration::from_secs(5)),
        "the callers must be stuck in the FUSE daemon"
    );
    let fast_before = healthy
        .driver_stats()
        .fast_submitted
        .load(Ordering::Relaxed);
    let during = reads(&healthy, 200, &body).await;
    let fast_during = healthy
        .driver_stats()
        .fast_submitted
        .load(Ordering::Relaxed)
        - fast_before;
    let p50 = |v: &[Duration]| v[v.len() / 2];
    let max = |v: &[Duration]| v[v.len() - 1];
    // Generous: a loaded 2-vCPU machine may double a latency, not make it
    // wait for the hung disk's deadline.
    assert!(
        p50(&during) <= p50(&before) * 4 + Duration::from_millis(5),
        "healthy p50 {:?} while the other disk hangs vs {:?} before",
        p50(&during),
        p50(&before)
    );
    assert!(
        max(&during) < Duration::from_millis(500),
        "a healthy read waited {:?} while the other disk hangs",
        max(&during)
    );
    assert!(
        fast_during >= 200,
        "the healthy disk's reads ran on the fast ring ({fast_during} fast submissions for 200 reads)"
    );
    // The stuck callers were still stuck during the whole measurement: none
    // has been answered.
    assert!(stuck.iter().all(|t| !t.is_finished()));
    for t in stuck {
        let (r, took) = t.await.expect("task");
        assert!(
            matches!(r, Err(DiskError::DeadlineExceeded { .. })),
            "a caller of the hung disk: {r:?}"
        );
        assert!(
            took <= stuck_budget + SLACK,
            "answered {took:?} after its start"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuse_files_go_to_the_ring_thread_after_one_refusal() {
    need_fuse();
    let fx = fuse_disk(never_trip()).await;
    // FUSE has no RWF_NOWAIT path: each file's first read is refused by the
    // fast ring (-EOPNOTSUPP), runs on the ring thread and still answers
    // correctly; its later reads go to the ring thread directly.
    let body: Vec<u8> = (0..3 << 20u32).map(|i| (i % 241) as u8).collect();
    fx.disk
        .write_all("v", "big", &body, setup_deadline())
        .await
        .expect("write on FUSE");
    let stats = fx.disk.driver_stats().clone();
    let fast0 = stats.fast_submitted.load(Ordering::Relaxed);
    let fb0 = stats.fast_fallbacks.load(Ordering::Relaxed);
    // Several reads of one open file (read_all reads in max_io_size pieces).
    let got = fx
        .disk
        .read_all("v", "big", setup_deadline())
        .await
        .expect("read on FUSE");
    assert!(got == body, "read back differs");
    let fast = stats.fast_submitted.load(Ordering::Relaxed) - fast0;
    let fb = stats.fast_fallbacks.load(Ordering::Relaxed) - fb0;
    assert_eq!(
        (fast, fb),
        (1, 1),
        "one refused attempt for the file, then the ring thread"
    );
}
