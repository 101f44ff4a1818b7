//! The deadline contract of `LocalDisk` under injected faults: a hung FUSE
//! layer, a FIFO in place of the format file, EIO and ENOSPC, an outside
//! stall signal, and load from a multi-threaded runtime.
//!
//! These tests need root and /dev/fuse (CI runs as root). Without them they
//! fail with a message naming what is missing; they never pass silently.
//!
//! Timing assertions use a generous slack so they hold on a loaded 2-core
//! machine; the real figures (ε, fail-fast latency) are measured by
//! `cargo xtask bench-deadline`, not asserted here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_io::{
    CreateOptions, Deadline, DeleteOptions, Disk, DiskConfig, DiskError, HealthState, LocalDisk,
    Stall, StallSource,
};
use disk_io_harness::{privilege, FaultFs};

mod common;
use common::{fuse_disk, need_fuse, never_trip, setup_deadline};

/// How late a call may return after its deadline in these tests. The
/// contract's ε is ~ms (bench-measured); this only has to survive CI load.
const SLACK: Duration = Duration::from_millis(400);
/// Budget given to each call on the hung disk.
const SHORT: Duration = Duration::from_millis(300);

/// Run `f` with a fresh `SHORT` deadline and check it misses it on time.
async fn expect_deadline<T: std::fmt::Debug>(
    what: &str,
    f: impl std::future::Future<Output = disk_io::Result<T>>,
    deadline: Deadline,
) {
    let started = Instant::now();
    let r = f.await;
    let late = deadline.overshoot(Instant::now());
    assert!(
        matches!(r, Err(DiskError::DeadlineExceeded { .. })),
        "{what}: expected DeadlineExceeded, got {r:?}"
    );
    assert!(
        late <= SLACK,
        "{what}: returned {late:?} after its deadline (took {:?})",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_misses_its_deadline_on_time_when_hung() {
    let mut cfg = never_trip();
    cfg.timeouts.probe = SHORT;
    let fx = fuse_disk(cfg).await;
    let disk = &fx.disk;
    disk.make_vol("v2", setup_deadline())
        .await
        .expect("make_vol");
    // Shard writers opened while healthy: one appended to, one finished,
    // while hung.
    let mut writer = disk
        .create_file("v", "shard", CreateOptions::default(), setup_deadline())
        .await
        .expect("create_file");
    let mut to_finish = disk
        .create_file("v", "shard2", CreateOptions::default(), setup_deadline())
        .await
        .expect("create_file");
    to_finish
        .append(b"staged", setup_deadline())
        .await
        .expect("append");
    fx.ctl.hang();

    macro_rules! check {
        ($name:expr, |$d:ident| $call:expr) => {{
            let $d = Deadline::after(SHORT);
            expect_deadline($name, $call, $d).await;
        }};
    }
    // Every operation of the Disk trait, the shard writer's two, and the
    // local disk's own (format, probe).
    check!("get_disk_id", |d| disk.disk_id(d));
    check!("disk_info", |d| disk.disk_info(d));
    check!("make_vol", |d| disk.make_vol("v3", d));
    check!("list_vols", |d| disk.list_vols(d));
    check!("stat_vol", |d| disk.stat_vol("v", d));
    check!("delete_vol", |d| disk.delete_vol("v2", false, d));
    check!("read_all", |d| disk.read_all("v", "meta", d));
    check!("write_all", |d| disk.write_all("v", "meta", b"new", d));
    check!("create_file", |d| async {
        disk.create_file("v", "shard3", CreateOptions::default(), d)
            .await
            .map(|_| ())
    });
    check!("append", |d| writer.append(b"shard bytes", d));
    check!("finish", |d| to_finish.finish(d));
    check!("read_file_at", |d| disk.read_file_at("v", "meta", 0, 3, d));
    check!("stat_file", |d| disk.stat_file("v", "meta", d));
    check!("rename_file", |d| disk
        .rename_file("v", "meta", "v", "meta2", d));
    check!("delete", |d| disk.delete(
        "v",
        "d/inner",
        DeleteOptions::default(),
        d
    ));
    check!("list_dir", |d| disk.list_dir("v", "", d));
    check!("format", |d| async {
        disk.format(0, 1, true, d).await.map(|_| ())
    });
    let probe_deadline = Deadline::after(SHORT);
    expect_deadline("probe", disk.probe(), probe_deadline).await;
    assert!(
        fx.ctl.hung_requests() > 0,
        "the FUSE layer really held requests"
    );

    fx.ctl.release();
    // Once released, the same disk serves again and nothing was torn. The
    // abandoned ops may still have run (a cancelled write leaves its range
    // undefined; here rename and write_all are each all-or-nothing), so the
    // file is under one of its two names with one of its two contents.
    let mut found = Vec::new();
    for name in ["meta", "meta2"] {
        match disk.read_all("v", name, setup_deadline()).await {
            Ok(back) => found.push(back),
            Err(DiskError::FileNotFound) => {}
            Err(e) => panic!("read {name} after release: {e}"),
        }
    }
    assert!(!found.is_empty(), "the file vanished");
    for back in found {
        assert!(
            back == b"old" || back == b"new",
            "write_all is all-or-nothing, got {back:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_fuse_daemon_is_unavailable_and_takes_the_disk_out() {
    let mut cfg = DiskConfig::default();
    cfg.health.faulty_after_misses = 3;
    cfg.health.no_progress_window = Duration::ZERO;
    cfg.health.probe_interval = Duration::ZERO;
    let fx = fuse_disk(cfg).await;
    let disk = &fx.disk;
    fx.fs.kill_daemon().expect("abort the FUSE connection");
    // Each op answers at once (no waiting for a deadline), as unavailable,
    // typed as a gone device; after a few, the disk is out.
    let long = || Deadline::after(Duration::from_secs(5));
    let results = [
        disk.read_all("v", "meta", long()).await.map(|_| ()),
        disk.stat_file("v", "meta", long()).await.map(|_| ()),
        disk.write_all("v", "meta", b"x", long()).await,
        disk.list_dir("v", "", long()).await.map(|_| ()),
    ];
    for r in &results {
        match r {
            Err(DiskError::DeviceGone { errno, .. }) => assert_eq!(errno.0, libc::ENOTCONN),
            Err(DiskError::Faulty { .. }) => {}
            other => panic!("a dead daemon answered {other:?}"),
        }
        let e = r.as_ref().unwrap_err();
        assert!(e.is_unavailable(), "{e:?} must not count as a vote");
    }
    assert!(
        matches!(results[0], Err(DiskError::DeviceGone { .. })),
        "{:?}",
        results[0]
    );
    assert!(
        !disk.state().admits(),
        "health must take a gone device out; state {:?}",
        disk.state()
    );
    let r = disk.disk_id(long()).await;
    assert!(matches!(r, Err(DiskError::Faulty { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombies_over_the_cap_take_the_disk_out_until_they_drain() {
    let mut cfg = never_trip();
    cfg.driver.max_in_flight = 8;
    cfg.driver.zombie_cap = 3;
    cfg.health.tick = Duration::from_millis(20);
    cfg.health.backoff_initial = Duration::from_millis(100);
    cfg.health.backoff_max = Duration::from_millis(200);
    cfg.health.recovery_successes = 1;
    cfg.timeouts.probe = Duration::from_secs(2);
    let fx = fuse_disk(cfg).await;
    let disk = fx.disk.clone();
    fx.ctl.hang();
    // Six reads that cannot be cancelled out of the hung FUSE request:
    // their callers leave at the deadline, the kernel keeps them.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let disk = disk.clone();
        tasks.push(tokio::spawn(async move {
            disk.read_all("v", "meta", Deadline::after(SHORT)).await
        }));
    }
    for t in tasks {
        let r = t.await.expect("task");
        assert!(
            matches!(r, Err(DiskError::DeadlineExceeded { .. })),
            "{r:?}"
        );
    }
    let t0 = Instant::now();
    while disk.state().admits() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "zombies {} over a cap of 3 did not take the disk out",
            disk.driver_stats().zombies()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(disk.driver_stats().zombies() > 3);
    match disk.stat_vol("v", setup_deadline()).await {
        Err(DiskError::Faulty { reason }) => assert!(reason.contains("zombie"), "{reason}"),
        other => panic!("expected a fail-fast Faulty, got {other:?}"),
    }
    // While they last, probes are not even tried.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!disk.state().admits());
    fx.ctl.release();
    let t0 = Instant::now();
    while disk.state() != HealthState::Online {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no recovery after the zombies drained (zombies {}, state {:?})",
            disk.driver_stats().zombies(),
            disk.state()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(disk.driver_stats().zombies(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_created_directory_and_commit_is_fsynced() {
    let fx = fuse_disk(never_trip()).await;
    let disk = &fx.disk;
    let before = fx.ctl.fsynced_dirs().len();
    disk.write_all("v", "n1/n2/meta", b"m", setup_deadline())
        .await
        .expect("write_all");
    let synced: Vec<String> = fx.ctl.fsynced_dirs()[before..].to_vec();
    for dir in ["/v", "/v/n1", "/v/n1/n2"] {
        assert!(
            synced.iter().any(|s| s == dir),
            "{dir} was not fsynced after an entry was created in it: {synced:?}"
        );
    }
    let before = fx.ctl.fsynced_dirs().len();
    disk.rename_file("v", "n1/n2/meta", "v", "r1/r2/meta", setup_deadline())
        .await
        .expect("rename");
    let synced: Vec<String> = fx.ctl.fsynced_dirs()[before..].to_vec();
    for dir in ["/v", "/v/r1", "/v/r1/r2"] {
        assert!(synced.iter().any(|s| s == dir), "{dir}: {synced:?}");
    }
    let before = fx.ctl.fsynced_dirs().len();
    let mut w = disk
        .create_file("v", "s1/part", CreateOptions::default(), setup_deadline())
        .await
        .expect("create_file");
    w.append(b"abc", setup_deadline()).await.expect("append");
    w.finish(setup_deadline()).await.expect("finish");
    let synced: Vec<String> = fx.ctl.fsynced_dirs()[before..].to_vec();
    for dir in ["/v", "/v/s1"] {
        assert!(synced.iter().any(|s| s == dir), "{dir}: {synced:?}");
    }
    disk.make_vol("nv", setup_deadline())
        .await
        .expect("make_vol");
    assert_eq!(
        fx.ctl.fsynced_dirs().last().map(String::as_str),
        Some("/"),
        "a new volume makes the root fsynced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_cannot_be_made_durable_says_so() {
    let fx = fuse_disk(never_trip()).await;
    let disk = &fx.disk;
    // The rename lands, the directory fsync after it fails: the new
    // content is visible, and the error says it is not durable.
    fx.ctl.fail_fsync_dir("/v/d");
    let r = disk
        .write_all("v", "d/inner", b"new", setup_deadline())
        .await;
    match &r {
        Err(DiskError::NotDurable { op, cause }) => {
            assert_eq!(*op, disk_io::OpClass::WriteAll);
            assert!(matches!(**cause, DiskError::MediaError { .. }), "{cause:?}");
        }
        other => panic!("expected NotDurable, got {other:?}"),
    }
    assert!(!r.as_ref().unwrap_err().is_unavailable());
    let r = disk
        .rename_file("v", "meta", "v", "d/moved", setup_deadline())
        .await;
    assert!(matches!(r, Err(DiskError::NotDurable { .. })), "{r:?}");
    fx.ctl.clear_eio();
    assert_eq!(
        disk.read_all("v", "d/inner", setup_deadline())
            .await
            .expect("read"),
        b"new"
    );
    assert_eq!(
        disk.read_all("v", "d/moved", setup_deadline())
            .await
            .expect("read"),
        b"old"
    );
    // A failure before the commit leaves nothing changed (see the EIO test
    // below for the temporary file; here the parent cannot be created).
    fx.ctl.fail_eio("/v/nope");
    let r = disk.write_all("v", "nope/x", b"x", setup_deadline()).await;
    assert!(matches!(r, Err(DiskError::MediaError { .. })), "{r:?}");
    fx.ctl.clear_eio();
    assert_eq!(
        disk.read_all("v", "nope/x", setup_deadline()).await,
        Err(DiskError::FileNotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_disk_trips_fails_fast_and_recovers_after_release() {
    let mut cfg = DiskConfig::default();
    cfg.health.faulty_after_misses = 2;
    cfg.health.no_progress_window = Duration::from_millis(200);
    cfg.health.backoff_initial = Duration::from_millis(200);
    cfg.health.backoff_max = Duration::from_millis(400);
    cfg.health.recovery_successes = 2;
    cfg.timeouts.probe = Duration::from_millis(500);
    let fx = fuse_disk(cfg).await;
    let disk = &fx.disk;
    let mut states = disk.subscribe();
    fx.ctl.hang();

    // Misses pile up until the machine trips; bounded number of calls.
    let mut tripped = false;
    for _ in 0..20 {
        let d = Deadline::after(SHORT);
        match disk.read_all("v", "meta", d).await {
            Err(DiskError::DeadlineExceeded { .. }) => {}
            Err(DiskError::Faulty { .. }) => {
                tripped = true;
                break;
            }
            other => panic!("unexpected result on a hung disk: {other:?}"),
        }
    }
    assert!(tripped, "the health machine never tripped");
    assert!(!disk.state().admits());

    // Fail fast: a call with a long deadline returns at once.
    let long = Deadline::after(Duration::from_secs(5));
    let t0 = Instant::now();
    let r = disk.read_all("v", "meta", long).await;
    let took = t0.elapsed();
    assert!(matches!(r, Err(DiskError::Faulty { .. })), "{r:?}");
    assert!(
        took < Duration::from_millis(50),
        "fail-fast took {took:?}; it must not wait for the deadline"
    );
    assert!(r.as_ref().err().is_some_and(|e| e.is_unavailable()));

    fx.ctl.release();
    // Probing brings it back: Faulty -> Probing -> Online, bounded wait.
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if disk.state() == HealthState::Online {
                return;
            }
            if states.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "disk did not come back Online after release; state {:?}",
        disk.state()
    );
    assert_eq!(
        disk.read_all("v", "meta", setup_deadline())
            .await
            .expect("read after recovery"),
        b"old"
    );
}

/// Whether any thread of this process sits in a FIFO open.
fn threads_stuck_in_fifo_open() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|t| t.ok())
        .filter(|t| {
            std::fs::read_to_string(t.path().join("stack"))
                .map(|s| s.contains("fifo_open") || s.contains("wait_for_partner"))
                .unwrap_or(false)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_format_file_is_refused_at_once_and_leaves_nothing_in_the_kernel() {
    privilege::require_root().expect("reading kernel stacks of io-wq workers needs root");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = never_trip();
    cfg.disk_id_cache_ttl = Duration::ZERO;
    let disk = LocalDisk::builder(dir.path())
        .config(cfg)
        .open(setup_deadline())
        .await
        .expect("open");
    let id = disk
        .format(3, 4, false, setup_deadline())
        .await
        .expect("format");
    assert_eq!(disk.disk_id(setup_deadline()).await, Ok(id));

    let format = dir.path().join(".disk-io/format.json");
    let saved = std::fs::read(&format).expect("read format");
    std::fs::remove_file(&format).expect("rm format");
    nix::unistd::mkfifo(&format, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");

    // Opens for reading are non-blocking and checked before any I/O: a FIFO
    // planted in place of the format file is refused at once, with a typed
    // answer, instead of an open that waits for a writer until the deadline.
    let t0 = Instant::now();
    let r = disk.disk_id(Deadline::after(Duration::from_secs(5))).await;
    assert!(
        matches!(
            r,
            Err(DiskError::InvalidPath {
                rule: disk_io::PathRule::NotRegular,
                ..
            })
        ),
        "get_disk_id on a FIFO: {r:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );

    // Nothing was left in the kernel: no zombie, no worker in fifo_open.
    let stats = disk.driver_stats().clone();
    let settled = tokio::time::timeout(Duration::from_secs(5), async {
        while stats.zombies() != 0 || threads_stuck_in_fifo_open() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "zombies {} and {} threads still in fifo_open",
        stats.zombies(),
        threads_stuck_in_fifo_open()
    );

    // The ring is fine afterwards.
    std::fs::remove_file(&format).expect("rm fifo");
    std::fs::write(&format, saved).expect("restore format");
    assert_eq!(disk.disk_id(setup_deadline()).await, Ok(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_and_enospc_are_typed_and_never_tear_a_file() {
    let fx = fuse_disk(never_trip()).await;
    let disk = &fx.disk;

    fx.ctl.fail_eio("/v/meta");
    let r = disk.read_all("v", "meta", setup_deadline()).await;
    assert!(
        matches!(r, Err(DiskError::MediaError { errno, .. }) if errno.0 == libc::EIO),
        "{r:?}"
    );
    assert!(
        !r.as_ref().err().is_some_and(|e| e.is_unavailable()),
        "EIO is an answer, not absence"
    );
    fx.ctl.clear_eio();

    fx.ctl.set_enospc(true);
    let r = disk
        .write_all("v", "meta", b"new content", setup_deadline())
        .await;
    assert_eq!(r, Err(DiskError::NoSpace));
    let mut w = disk
        .create_file("v", "shard", CreateOptions::default(), setup_deadline())
        .await;
    if let Ok(w) = w.as_mut() {
        let r = w.append(b"data", setup_deadline()).await;
        assert_eq!(r, Err(DiskError::NoSpace));
    } else {
        assert_eq!(w.err(), Some(DiskError::NoSpace));
    }
    fx.ctl.set_enospc(false);
    assert_eq!(
        disk.read_all("v", "meta", setup_deadline())
            .await
            .expect("read"),
        b"old",
        "a failed write_all left the previous content intact"
    );

    // EIO in the middle of write_all (on its temporary file) leaves it intact too.
    fx.ctl.fail_eio(".disk-io/tmp");
    let r = disk
        .write_all("v", "meta", b"newer", setup_deadline())
        .await;
    assert_eq!(r.map_err(|e| e.kind()), Err("media_error"));
    fx.ctl.clear_eio();
    assert_eq!(
        disk.read_all("v", "meta", setup_deadline())
            .await
            .expect("read"),
        b"old"
    );
}

#[derive(Debug, Default)]
struct FakeStall {
    stalled: AtomicBool,
}

impl StallSource for FakeStall {
    fn check(&self) -> Option<Stall> {
        self.stalled.load(Ordering::Relaxed).then(|| Stall {
            device: "fake0".into(),
            oldest_age: Duration::from_millis(500),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_signal_takes_the_disk_out_before_any_caller_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stall = Arc::new(FakeStall::default());
    let mut cfg = DiskConfig::default();
    cfg.health.tick = Duration::from_millis(20);
    cfg.health.backoff_initial = Duration::from_millis(50);
    cfg.health.backoff_max = Duration::from_millis(100);
    let disk = LocalDisk::builder(dir.path())
        .config(cfg)
        .stall_source(stall.clone())
        .open(setup_deadline())
        .await
        .expect("open");
    disk.make_vol("v", setup_deadline())
        .await
        .expect("make_vol");

    stall.stalled.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    while disk.state().admits() {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "stall signal ignored"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = disk
        .stat_vol("v", Deadline::after(Duration::from_secs(5)))
        .await;
    match r {
        Err(DiskError::Faulty { reason }) => assert!(reason.contains("fake0"), "{reason}"),
        other => panic!("expected Faulty, got {other:?}"),
    }
    // While the stall lasts, the disk stays out (no probe lets it back).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!disk.state().admits(), "disk came back while still stalled");

    stall.stalled.store(false, Ordering::Relaxed);
    let t0 = Instant::now();
    while disk.state() != HealthState::Online {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no recovery after the stall cleared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    disk.stat_vol("v", setup_deadline())
        .await
        .expect("serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ops_on_four_disks_read_back_exactly() {
    need_fuse();
    // Three plain directories and one FUSE pass-through: different paths
    // through the kernel, same contract.
    let (scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut disks = Vec::new();
    for d in &dirs {
        disks.push(
            LocalDisk::open(d.path(), setup_deadline())
                .await
                .expect("open"),
        );
    }
    disks.push(
        LocalDisk::open(fs.mountpoint(), setup_deadline())
            .await
            .expect("open fuse"),
    );
    for d in &disks {
        d.make_vol("v", setup_deadline()).await.expect("make_vol");
    }

    let mut tasks = Vec::new();
    for (di, disk) in disks.iter().enumerate() {
        for t in 0..64usize {
            let disk = disk.clone();
            tasks.push(tokio::spawn(async move {
                let seed = (di * 1000 + t) as u32;
                let meta: Vec<u8> = (0..(1000 + t * 37))
                    .map(|i| (i as u32 ^ seed) as u8)
                    .collect();
                let shard: Vec<u8> = (0..(100_000 + t * 911))
                    .map(|i| (i as u32).wrapping_mul(seed | 1) as u8)
                    .collect();
                let d = || Deadline::after(Duration::from_secs(30));
                disk.write_all("v", &format!("obj{t}/meta"), &meta, d())
                    .await?;
                let mut w = disk
                    .create_file(
                        "v",
                        &format!("obj{t}/part.1"),
                        CreateOptions::default(),
                        d(),
                    )
                    .await?;
                for c in shard.chunks(8191) {
                    w.append(c, d()).await?;
                }
                assert_eq!(w.finish(d()).await?, shard.len() as u64);
                let m = disk.read_all("v", &format!("obj{t}/meta"), d()).await?;
                let s = disk
                    .read_file_at("v", &format!("obj{t}/part.1"), 0, shard.len(), d())
                    .await?;
                let tail = disk
                    .read_file_at("v", &format!("obj{t}/part.1"), 5000, 777, d())
                    .await?;
                Ok::<bool, DiskError>(m == meta && s == shard && tail[..] == shard[5000..5777])
            }));
        }
    }
    let mut good = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(true) => good += 1,
            Ok(false) => panic!("read back differs from what was written"),
            Err(e) => panic!("operation failed: {e}"),
        }
    }
    assert_eq!(good, 4 * 64);
    // The plain directories' reads and writes ran on the fast ring (caller
    // thread, RWF_NOWAIT); the FUSE disk's were refused there and ran on its
    // ring thread: both paths are byte-exact under 64-way concurrency.
    for (i, d) in disks.iter().enumerate() {
        let s = d.driver_stats();
        let fast = s.fast_submitted.load(std::sync::atomic::Ordering::Relaxed);
        let fell_back = s.fast_fallbacks.load(std::sync::atomic::Ordering::Relaxed);
        if i < 3 {
            assert!(
                fast > 64 * 3 && fell_back < fast,
                "disk {i}: {fast} fast submissions, {fell_back} fallbacks"
            );
        } else {
            assert!(fell_back >= 64, "FUSE disk: {fell_back} fallbacks");
        }
    }
    drop(disks);
    drop(fs);
    drop(scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_append_poisons_the_writer_instead_of_tearing_the_shard() {
    let fx = fuse_disk(never_trip()).await;
    let disk = &fx.disk;
    let mut w = disk
        .create_file("v", "torn", CreateOptions::default(), setup_deadline())
        .await
        .expect("create_file");
    // The caller gives up on an append the kernel is still doing.
    fx.ctl.set_latency(Duration::from_millis(300));
    let r = tokio::time::timeout(
        Duration::from_millis(50),
        w.append(b"AAAAAAAA", setup_deadline()),
    )
    .await;
    assert!(r.is_err(), "the append should still be running: {r:?}");
    fx.ctl.set_latency(Duration::ZERO);
    let r = w.append(b"BB", setup_deadline()).await;
    assert!(
        matches!(r, Err(DiskError::InvalidArgument { .. })),
        "a writer whose append was abandoned must refuse to go on: {r:?}"
    );
    let r = w.finish(setup_deadline()).await;
    assert!(r.is_err(), "finish of a torn shard must not be Ok: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_whose_creation_was_not_made_durable_is_undone() {
    let fx = fuse_disk(never_trip()).await;
    let disk = &fx.disk;
    fx.ctl.fail_fsync_dir("/v");
    let r = disk.write_all("v", "a/x", b"x", setup_deadline()).await;
    assert!(matches!(r, Err(DiskError::MediaError { .. })), "{r:?}");
    fx.ctl.clear_eio();
    assert_eq!(
        disk.list_dir("v", "", setup_deadline()).await.expect("ls"),
        vec!["d/", "meta"],
        "the directory that could not be made durable was removed again"
    );
    // The retry creates it again, and this time its parent is fsynced.
    let before = fx.ctl.fsynced_dirs().len();
    disk.write_all("v", "a/y", b"y", setup_deadline())
        .await
        .expect("write_all");
    let synced = fx.ctl.fsynced_dirs()[before..].to_vec();
    assert!(synced.iter().any(|d| d == "/v"), "{synced:?}");
}
