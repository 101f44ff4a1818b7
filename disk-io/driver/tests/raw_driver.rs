//! The raw driver API the bench engine uses (feature `raw`): positional
//! reads and writes on a caller's file, with and without kernel-side
//! deadlines.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use disk_io_api::Deadline;
use disk_io_driver::{AlignedBuf, Driver, DriverConfig, DriverError, File, IoBuf, KernelDeadline};

fn dl() -> Deadline {
    Deadline::after(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_read_back_buffered_and_direct() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    let driver = Driver::start("raw-test", &DriverConfig::default()).expect("driver");
    let file = File::adopt(
        &driver,
        OwnedFd::from(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .expect("open"),
        ),
    );
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    for mode in [KernelDeadline::Enforced, KernelDeadline::CallerOnly] {
        let (_, n) = driver
            .write_at(&file, IoBuf::Vec(data.clone()), 0, dl(), mode)
            .await
            .expect("write");
        assert_eq!(n, data.len());
        let buf = driver
            .read_at(&file, IoBuf::with_capacity(4096), 4096, 4096, dl(), mode)
            .await
            .expect("read");
        assert_eq!(buf.as_slice(), &data[4096..]);
        // Short read at EOF.
        let buf = driver
            .read_at(&file, IoBuf::with_capacity(4096), 4096, 6000, dl(), mode)
            .await
            .expect("read at eof");
        assert_eq!(buf.as_slice(), &data[6000..]);
    }
    // O_DIRECT through an aligned buffer. The temp dir must be on a file
    // system with O_DIRECT (ext4 here and in CI); tmpfs would refuse it.
    use std::os::unix::fs::OpenOptionsExt;
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap_or_else(|e| {
            panic!(
                "O_DIRECT open of {} failed ({e}): run the tests with TMPDIR on a file system that supports O_DIRECT",
                path.display()
            )
        });
    {
        let file = File::adopt(&driver, OwnedFd::from(direct));
        let buf = AlignedBuf::new(4096, 4096).expect("aligned");
        let buf = driver
            .read_at(
                &file,
                IoBuf::Aligned(buf),
                4096,
                0,
                dl(),
                KernelDeadline::Enforced,
            )
            .await
            .expect("direct read");
        assert_eq!(buf.as_slice(), &data[..4096]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_never_completes_returns_at_its_deadline() {
    let driver = Driver::start("raw-pipe", &DriverConfig::default()).expect("driver");
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds that we own right after.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds from pipe2.
    let (rd, _wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let rd = File::adopt(&driver, rd);
    for mode in [KernelDeadline::Enforced, KernelDeadline::CallerOnly] {
        let deadline = Deadline::after(Duration::from_millis(100));
        let r = driver
            .read_at(&rd, IoBuf::with_capacity(16), 16, 0, deadline, mode)
            .await;
        let late = deadline.overshoot(Instant::now());
        assert!(
            matches!(r, Err(DriverError::Deadline { .. })),
            "{mode:?}: {r:?}"
        );
        assert!(late < Duration::from_millis(300), "{mode:?}: {late:?} late");
    }
    // The cancelled reads release their permits: the pipe is readable again.
    let stats = driver.stats().clone();
    let t0 = Instant::now();
    while stats.in_flight() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "cancelled reads never completed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats.zombies(), 0);
}

/// The fast ring's reaper lives on the first runtime that used the driver.
/// If that runtime stops being driven, or shuts down, callers on another
/// runtime still get their completions (the caller's own backstop reap, and
/// a new reaper on their runtime), not a deadline miss.
#[test]
fn fast_ring_completions_reach_callers_when_the_reapers_runtime_is_gone() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    let data: Vec<u8> = (0..64 * 4096u32).map(|i| (i % 249) as u8).collect();
    std::fs::write(&path, &data).expect("write");
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .expect("O_DIRECT open (TMPDIR must support it)")
    };
    let driver = Driver::start("raw-reaper", &DriverConfig::default()).expect("driver");
    let read_all = |rt: &tokio::runtime::Runtime, file: File| {
        let driver = driver.clone();
        let want = data.clone();
        rt.block_on(async move {
            for i in 0..64usize {
                let t0 = Instant::now();
                let buf = AlignedBuf::new(4096, 4096).expect("aligned");
                let got = driver
                    .read_at(
                        &file,
                        IoBuf::Aligned(buf),
                        4096,
                        (i * 4096) as u64,
                        Deadline::after(Duration::from_secs(10)),
                        KernelDeadline::Enforced,
                    )
                    .await
                    .expect("read");
                assert_eq!(got.as_slice(), &want[i * 4096..(i + 1) * 4096]);
                assert!(
                    t0.elapsed() < Duration::from_secs(2),
                    "read {i} took {:?}: its completion waited for the deadline",
                    t0.elapsed()
                );
            }
        });
    };
    let build = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    // Runtime A starts the reaper, then is kept but never driven again.
    let a = build();
    read_all(&a, File::adopt(&driver, OwnedFd::from(open())));
    let fast_a = driver
        .stats()
        .fast_submitted
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        fast_a >= 32,
        "direct reads on ext4 take the fast ring ({fast_a})"
    );
    let b = build();
    read_all(&b, File::adopt(&driver, OwnedFd::from(open())));
    // A shuts down (its reaper with it); B's next reads start a new one.
    drop(a);
    read_all(&b, File::adopt(&driver, OwnedFd::from(open())));
    let fast = driver
        .stats()
        .fast_submitted
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        fast >= fast_a + 64,
        "the later reads ran on the fast ring too"
    );
}
