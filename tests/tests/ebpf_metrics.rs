//! `/metrics` of a running loader passes `promtool check metrics` and
//! carries every documented series for a device that saw I/O; and it
//! answers within 1 s while idle and slow-loris clients hold connections.

mod ebpf_common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ebpf_common::*;

#[test]
fn metrics_pass_promtool_and_name_the_device() {
    let traced = loader_with_io(64);
    let (loader, dev) = (&traced.loader, dev_name(traced.lo.path()));
    let text = scrape(loader);
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
}

/// A scrape answers within 1 s (generous for a loaded 2-core machine; a
/// healthy scrape takes milliseconds) while idle clients and a slow-loris
/// client hold connections. The old one-at-a-time server made a scrape wait
/// 5 s per idle client ahead of it.
#[test]
fn scrapes_answer_within_a_second_while_idle_and_slow_clients_hold_connections() {
    let traced = loader_with_io(8);
    let addr = traced.loader.metrics_addr().expect("metrics address");
    let idle: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(addr).expect("connect idle client"))
        .collect();
    let mut loris = TcpStream::connect(addr).expect("connect slow client");
    loris
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Sl")
        .expect("first bytes");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // One byte every 200 ms, bounded; a write error means the
            // server cut it off, which is fine.
            for _ in 0..50 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || loris.write_all(b"o").is_err()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t0 = Instant::now();
        let (code, body) = probes_ebpf_loader::http::get(addr, "/metrics", Duration::from_secs(5))
            .expect("scrape");
        let took = t0.elapsed();
        worst = worst.max(took);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("diskio_block_stalled{"), "{body}");
        assert!(
            took < Duration::from_secs(1),
            "scrape took {took:?} with 5 idle and 1 slow client connected"
        );
    }
    eprintln!("slowest of 5 scrapes with 5 idle + 1 slow-loris client: {worst:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickle.join().expect("slow client");
    drop(idle);
}
