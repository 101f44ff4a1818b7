//! For a known workload — N direct 4 KiB reads on a loop device — the
//! probes' histogram counts N completions for that device (within 1 %),
//! the pinned maps say the same through `status`, and nothing stays in
//! flight.

mod ebpf_common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use disk_io_harness::{privilege, LoopDevice, ScratchDir};
use ebpf_common::*;
use probes_ebpf_common::{dev, HistKey};
use probes_ebpf_loader::{status, StatusConfig};

const N: u64 = 4_000;
const IMAGE: u64 = 64 << 20;

#[test]
fn n_direct_reads_are_n_completions() {
    need_bpf();
    privilege::require_loop().expect("this test attaches a loop device");
    let scratch = ScratchDir::new().expect("scratch");
    let image = scratch.path().join("count.img");
    let f = std::fs::File::create(&image).expect("image");
    f.set_len(IMAGE).expect("size image");
    drop(f);
    let lo = LoopDevice::attach(&image, true).expect("loop device");
    let name = dev_name(lo.path());
    let (major, minor) = lo.major_minor();
    let key = HistKey {
        dev: dev::make(major, minor),
        op: 0,
    };
    let loader = start_loader(&name, Duration::from_secs(5), Duration::from_millis(50));
    let count =
        |l: &probes_ebpf_loader::Loader| l.snapshot().hists.get(&key).map_or(0, |h| h.count);
    let bytes =
        |l: &probes_ebpf_loader::Loader| l.snapshot().hists.get(&key).map_or(0, |h| h.bytes);
    // Let whatever the attach triggered settle, then take a baseline.
    std::thread::sleep(Duration::from_millis(200));
    let base = count(&loader);
    let base_bytes = bytes(&loader);

    let dev_file = open_direct(lo.path(), false);
    let mut buf = Block([0; 4096]);
    let blocks = IMAGE / 4096;
    for i in 0..N {
        // Spread over the device (a stride coprime with the block count).
        let off = (i * 7919 % blocks) * 4096;
        let n = dev_file.read_at(&mut buf.0, off).expect("O_DIRECT read");
        assert_eq!(n, 4096);
    }
    drop(dev_file);

    // Completions are counted before read() returns; wait for a scan.
    let deadline = Instant::now() + BOUND;
    let mut seen = count(&loader) - base;
    while seen < N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        seen = count(&loader) - base;
    }
    std::thread::sleep(Duration::from_millis(150));
    let seen = count(&loader) - base;
    let tolerance = N / 100;
    assert!(
        seen.abs_diff(N) <= tolerance,
        "histogram counted {seen} read completions on {name} for {N} reads (±{tolerance})"
    );
    let snap = loader.snapshot();
    let hist = snap.hists.get(&key).expect("read histogram");
    assert_eq!(
        hist.slots.iter().sum::<u64>(),
        hist.count,
        "buckets add up to the count"
    );
    assert_eq!(hist.errors, 0);
    let read_bytes = hist.bytes - base_bytes;
    assert!(
        read_bytes.abs_diff(N * 4096) <= tolerance * 4096,
        "{read_bytes} bytes for {N} reads of 4 KiB"
    );
    assert!(
        snap.scan.devices.get(&key.dev).is_none_or(|d| d.count == 0),
        "requests left in flight"
    );

    // `probe-loader status` reads the same from the pins.
    let st = status::read(loader.pin_dir(), StatusConfig::default()).expect("status from pins");
    assert!(st.loader_alive);
    let d = st
        .devices
        .iter()
        .find(|d| d.device == name)
        .expect("device in status");
    assert_eq!(d.dev, format!("{major}:{minor}"));
    let read = d
        .ops
        .iter()
        .find(|o| o.op == "read")
        .expect("read op in status");
    // The same counter, read from the pins instead of the loader's handle:
    // it must agree with the histogram (no I/O runs on this device between
    // the two reads), and so is N within the same 1 %.
    assert!(
        read.completions.abs_diff(hist.count) <= tolerance,
        "status says {} completions, the loader's maps {}",
        read.completions,
        hist.count
    );
    assert!(read.completions >= base + N - tolerance);
    assert!(read.p50_s > 0.0 && read.p50_s <= read.p99_s);
    assert_eq!(d.in_flight, 0);
    loader.stop();
}
