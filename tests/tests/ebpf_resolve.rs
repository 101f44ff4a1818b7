//! The eBPF stall source maps a disk's directory to its block device with a
//! `stat` that may hang (a dead FUSE daemon). However often that is tried,
//! it runs on one resolver thread: repeated resolves of a hung path return
//! within their bound and do not leave a thread behind each (they used to).
//! Alone in its test binary, so the thread counts it reads are its own.

use std::time::{Duration, Instant};

use disk_io::stall_ebpf::{EbpfStallConfig, EbpfStallError, EbpfStallMonitor};
use disk_io_harness::{privilege, FaultFs};
use probes_ebpf_common::sysfs::SysfsError;

const RESOLVES: usize = 20;
const TIMEOUT: Duration = Duration::from_millis(100);
const QUEUE: usize = 4;

/// Threads of this process whose name is `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim_end() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn resolves_on_a_hung_fuse_path_share_one_bounded_thread() {
    privilege::require_fuse().expect("this test mounts FUSE");
    let (_scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
    let ctl = fs.control();
    let monitor = EbpfStallMonitor::new(EbpfStallConfig {
        resolve_timeout: TIMEOUT,
        resolve_queue: QUEUE,
        ..EbpfStallConfig::default()
    });
    ctl.hang();
    let mut timeouts = 0;
    let mut busy = 0;
    for i in 0..RESOLVES {
        // A new name each time: the kernel cannot answer from its caches.
        let dir = fs.mountpoint().join(format!("d{i}"));
        let t0 = Instant::now();
        match monitor.source_for_dir(&dir) {
            Err(EbpfStallError::ResolveTimeout { timeout, .. }) => {
                assert_eq!(timeout, TIMEOUT);
                timeouts += 1;
            }
            Err(EbpfStallError::ResolverBusy { queued, .. }) => {
                assert_eq!(queued, QUEUE);
                busy += 1;
            }
            other => panic!("resolve {i} of a hung path answered {other:?}"),
        }
        let took = t0.elapsed();
        assert!(
            took < TIMEOUT + Duration::from_secs(1),
            "resolve {i} took {took:?} (bound {TIMEOUT:?})"
        );
        let n = threads_named("disk-io-resolve");
        assert!(n <= 1, "{n} resolver threads after {} resolves", i + 1);
    }
    assert_eq!(timeouts + busy, RESOLVES);
    assert!(
        ctl.hung_requests() >= 1,
        "the stat never reached the FUSE daemon"
    );
    assert_eq!(threads_named("disk-io-resolve"), 1);

    // Released, the one thread gets through its stat and serves again: a
    // FUSE mount is no block device, and says so.
    ctl.release();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match monitor.source_for_dir(fs.mountpoint()) {
            Err(EbpfStallError::Device(SysfsError::NotBlockDevice { .. })) => break,
            Err(EbpfStallError::ResolveTimeout { .. } | EbpfStallError::ResolverBusy { .. })
                if Instant::now() < deadline => {}
            other => panic!("after release: {other:?}"),
        }
    }
    assert_eq!(threads_named("disk-io-resolve"), 1);
    // The thread ends with its monitor.
    drop(monitor);
    let deadline = Instant::now() + Duration::from_secs(20);
    while threads_named("disk-io-resolve") != 0 {
        assert!(
            Instant::now() < deadline,
            "the resolver thread outlived its monitor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
