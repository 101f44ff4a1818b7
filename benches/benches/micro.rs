//! Criterion micro-benches: the costs a storage node pays on every call.
//!
//! * `fail_fast`: a call on a Faulty disk (should be well under a µs).
//! * `deadline`: constructing and querying a `Deadline`.
//! * `driver_round_trip`: one 4 KiB page-cached read through the ring
//!   thread and back, with and without kernel-side deadlines.

use std::os::fd::OwnedFd;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use disk_io::{Deadline, Disk, LocalDisk};
use disk_io_driver::{Driver, DriverConfig, File, IoBuf, KernelDeadline};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn fail_fast(c: &mut Criterion) {
    // A current-thread runtime: `block_on` itself then costs next to
    // nothing, so the figure is the fail-fast path, not the runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = rt
        .block_on(LocalDisk::open(
            dir.path(),
            Deadline::after(Duration::from_secs(5)),
        ))
        .expect("open");
    disk.mark_faulty("bench");
    c.bench_function("fail_fast/read_all_on_faulty_disk", |b| {
        b.iter(|| {
            let r = rt.block_on(disk.read_all("v", "x", Deadline::after(Duration::from_secs(1))));
            assert!(r.is_err());
        })
    });
}

fn deadline(c: &mut Criterion) {
    c.bench_function("deadline/after+remaining+is_expired", |b| {
        b.iter(|| {
            let d = Deadline::after(std::hint::black_box(Duration::from_millis(250)));
            std::hint::black_box((d.remaining(), d.is_expired()))
        })
    });
    let a = Deadline::after(Duration::from_secs(1));
    let z = Deadline::after(Duration::from_secs(2));
    c.bench_function("deadline/min", |b| {
        b.iter(|| std::hint::black_box(a).min(std::hint::black_box(z)))
    });
}

fn driver_round_trip(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    std::fs::write(&path, vec![7u8; 1 << 20]).expect("write");
    let driver = rt
        .block_on(async { Driver::start("micro", &DriverConfig::default()) })
        .expect("driver");
    let file = File::adopt(
        &driver,
        OwnedFd::from(std::fs::File::open(&path).expect("open")),
    );
    for (name, mode) in [
        ("driver_round_trip/4k_cached_read", KernelDeadline::Enforced),
        (
            "driver_round_trip/4k_cached_read_no_kernel_deadline",
            KernelDeadline::CallerOnly,
        ),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let buf = rt
                    .block_on(driver.read_at(
                        &file,
                        IoBuf::with_capacity(4096),
                        4096,
                        8192,
                        Deadline::after(Duration::from_secs(1)),
                        mode,
                    ))
                    .expect("read");
                assert_eq!(buf.len(), 4096);
            })
        });
    }
}

criterion_group!(benches, fail_fast, deadline, driver_round_trip);
criterion_main!(benches);
