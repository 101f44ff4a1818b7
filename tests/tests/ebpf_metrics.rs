//! `/metrics` of a running loader passes `promtool check metrics` and
//! carries every documented series for a device that saw I/O.

mod ebpf_common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use disk_io_harness::{privilege, LoopDevice, ScratchDir};
use ebpf_common::*;

#[test]
fn metrics_pass_promtool_and_name_the_device() {
    need_bpf();
    privilege::require_loop().expect("this test attaches a loop device");
    let scratch = ScratchDir::new().expect("scratch");
    let image = scratch.path().join("metrics.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(16 << 20))
        .expect("image");
    let lo = LoopDevice::attach(&image, true).expect("loop device");
    let dev = dev_name(lo.path());
    let loader = start_loader(&dev, Duration::from_secs(1), Duration::from_millis(50));

    let file = open_direct(lo.path(), false);
    for i in 0..64u64 {
        file.write_at(&Block([i as u8; 4096]).0, i * 4096)
            .expect("O_DIRECT write");
        let mut b = Block([0; 4096]);
        file.read_at(&mut b.0, i * 4096).expect("O_DIRECT read");
    }
    drop(file);

    let series =
        format!("diskio_block_request_duration_seconds_count{{device=\"{dev}\",op=\"read\"}}");
    let deadline = Instant::now() + BOUND;
    let text = loop {
        let text = scrape(&loader);
        if metric(&text, &series).unwrap_or(0.0) >= 64.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "reads never showed up:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    promtool_check(&text).expect("promtool check metrics");
    for (name, labels) in [
        (
            "diskio_block_request_duration_seconds_bucket",
            format!("{{device=\"{dev}\",op=\"write\",le=\"+Inf\"}}"),
        ),
        (
            "diskio_block_request_duration_seconds_sum",
            format!("{{device=\"{dev}\",op=\"read\"}}"),
        ),
        (
            "diskio_block_requests_completed_total",
            format!("{{device=\"{dev}\",op=\"write\"}}"),
        ),
        (
            "diskio_block_request_errors_total",
            format!("{{device=\"{dev}\",op=\"read\"}}"),
        ),
        (
            "diskio_block_requests_in_flight",
            format!("{{device=\"{dev}\"}}"),
        ),
        (
            "diskio_block_oldest_in_flight_seconds",
            format!("{{device=\"{dev}\"}}"),
        ),
        ("diskio_block_stalled", format!("{{device=\"{dev}\"}}")),
        ("diskio_block_stalls_total", format!("{{device=\"{dev}\"}}")),
        ("diskio_block_stall_threshold_seconds", String::new()),
        (
            "diskio_probe_events_total",
            "{event=\"untracked\"}".to_owned(),
        ),
        ("diskio_probe_inflight_capacity", String::new()),
    ] {
        assert!(
            metric(&text, &format!("{name}{labels}")).is_some(),
            "missing {name}{labels}:\n{text}"
        );
    }
    assert_eq!(
        metric(
            &text,
            &format!("diskio_block_request_errors_total{{device=\"{dev}\",op=\"read\"}}")
        ),
        Some(0.0)
    );
    // Only the test's own device is traced (the --device filter).
    assert!(
        text.lines()
            .filter(|l| l.starts_with("diskio_block_stalled{"))
            .count()
            == 1,
        "{text}"
    );
    let addr = loader.metrics_addr().expect("addr");
    let (code, _) =
        probes_ebpf_loader::http::get(addr, "/nope", Duration::from_secs(5)).expect("GET");
    assert_eq!(code, 404);
    loader.stop();
}
