//! Prometheus text exposition (format 0.0.4) of a [`Snapshot`].
//!
//! Written by hand rather than with the `prometheus` or
//! `metrics-exporter-prometheus` crates: both build histograms from
//! individual observations, while ours arrive pre-aggregated as log2 bucket
//! counts from the kernel. Re-observing them would be lossy and slow, and
//! a custom collector would be more code than the format itself.
//!
//! Series (prefix `diskio_`, like the rest of the project):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `diskio_block_request_duration_seconds` | histogram (`le` = 2^(i+1) ns) | device, op |
//! | `diskio_block_requests_completed_total` | counter | device, op |
//! | `diskio_block_request_errors_total` | counter | device, op |
//! | `diskio_block_requests_in_flight` | gauge | device |
//! | `diskio_block_oldest_in_flight_seconds` | gauge | device |
//! | `diskio_block_stalled` | gauge (0/1) | device |
//! | `diskio_block_stalls_total` | counter | device |
//! | `diskio_block_stall_threshold_seconds` | gauge | — |
//! | `diskio_probe_events_total` | counter | event |
//! | `diskio_probe_scan_duration_seconds` | gauge | — |
//! | `diskio_probe_inflight_entries` / `_capacity` | gauge | — |

use std::fmt::Write as _;

use probes_ebpf_common::{op_name, slot_upper_ns, Counter, HIST_SLOTS};

use crate::snapshot::Snapshot;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Renders the snapshot.
pub fn render(snap: &Snapshot) -> String {
    let devices = snap.devices();
    let mut out = String::with_capacity(4096 + devices.len() * 8192);

    let name = "diskio_block_request_duration_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "Block request latency from issue to completion, per whole-disk device and operation (log2 buckets).",
    );
    for d in &devices {
        let dev = escape(&d.name);
        for (&op, h) in &d.ops {
            let op = op_name(op);
            let mut cum = 0u64;
            for slot in 0..HIST_SLOTS {
                cum += h.slots[slot];
                // The last slot is open-ended: it only appears in +Inf.
                if let Some(upper) = slot_upper_ns(slot) {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{device=\"{dev}\",op=\"{op}\",le=\"{}\"}} {cum}",
                        secs(upper)
                    );
                }
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{device=\"{dev}\",op=\"{op}\",le=\"+Inf\"}} {cum}"
            );
            let _ = writeln!(
                out,
                "{name}_sum{{device=\"{dev}\",op=\"{op}\"}} {}",
                secs(h.sum_ns)
            );
            let _ = writeln!(out, "{name}_count{{device=\"{dev}\",op=\"{op}\"}} {cum}");
        }
    }

    type Field = fn(&probes_ebpf_common::Hist) -> u64;
    let per_op: [(&str, &str, Field); 2] = [
        (
            "diskio_block_requests_completed_total",
            "Block requests completed, per device and operation.",
            |h| h.count,
        ),
        (
            "diskio_block_request_errors_total",
            "Block requests completed with an error status, per device and operation.",
            |h| h.errors,
        ),
    ];
    for (name, help, get) in per_op {
        header(&mut out, name, "counter", help);
        for d in &devices {
            let dev = escape(&d.name);
            for (&op, h) in &d.ops {
                let _ = writeln!(
                    out,
                    "{name}{{device=\"{dev}\",op=\"{}\"}} {}",
                    op_name(op),
                    get(h)
                );
            }
        }
    }

    header(
        &mut out,
        "diskio_block_requests_in_flight",
        "gauge",
        "Block requests issued to the device and not completed, at the last scan.",
    );
    for d in &devices {
        let _ = writeln!(
            out,
            "diskio_block_requests_in_flight{{device=\"{}\"}} {}",
            escape(&d.name),
            d.in_flight
        );
    }
    header(
        &mut out,
        "diskio_block_oldest_in_flight_seconds",
        "gauge",
        "Age of the oldest in-flight block request at the last scan (0 when none).",
    );
    for d in &devices {
        let _ = writeln!(
            out,
            "diskio_block_oldest_in_flight_seconds{{device=\"{}\"}} {}",
            escape(&d.name),
            d.oldest_age.map_or(0.0, |a| a.as_secs_f64())
        );
    }
    header(
        &mut out,
        "diskio_block_stalled",
        "gauge",
        "1 while the device's oldest in-flight request is older than the stall threshold.",
    );
    for d in &devices {
        let _ = writeln!(
            out,
            "diskio_block_stalled{{device=\"{}\"}} {}",
            escape(&d.name),
            u8::from(d.stalled)
        );
    }
    header(
        &mut out,
        "diskio_block_stalls_total",
        "counter",
        "Stalls seen since the loader started.",
    );
    for d in &devices {
        let _ = writeln!(
            out,
            "diskio_block_stalls_total{{device=\"{}\"}} {}",
            escape(&d.name),
            d.stalls_total
        );
    }
    header(
        &mut out,
        "diskio_block_stall_threshold_seconds",
        "gauge",
        "Age of the oldest in-flight request above which a device counts as stalled.",
    );
    let _ = writeln!(
        out,
        "diskio_block_stall_threshold_seconds {}",
        snap.threshold.as_secs_f64()
    );

    header(
        &mut out,
        "diskio_probe_events_total",
        "counter",
        "Unusual events seen by the block probes: untracked completions, requeues, partial completions, failures.",
    );
    for c in Counter::ALL {
        let v = snap.counters.get(c.name()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "diskio_probe_events_total{{event=\"{}\"}} {v}",
            c.name()
        );
    }
    header(
        &mut out,
        "diskio_probe_scan_duration_seconds",
        "gauge",
        "Time the last scan of the in-flight table and histograms took.",
    );
    let _ = writeln!(
        out,
        "diskio_probe_scan_duration_seconds {}",
        snap.scan_duration.as_secs_f64()
    );
    header(
        &mut out,
        "diskio_probe_inflight_entries",
        "gauge",
        "Entries in the in-flight table at the last scan.",
    );
    let _ = writeln!(out, "diskio_probe_inflight_entries {}", snap.scan.entries);
    header(
        &mut out,
        "diskio_probe_inflight_capacity",
        "gauge",
        "Size of the in-flight table (LRU: beyond it the oldest entries are evicted).",
    );
    let _ = writeln!(
        out,
        "diskio_probe_inflight_capacity {}",
        snap.inflight_capacity
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{DeviceInflight, InflightScan};
    use crate::stall::DeviceStall;
    use probes_ebpf_common::{dev, Hist, HistKey, Inflight};
    use std::time::Duration;

    fn snap() -> Snapshot {
        let d = dev::make(7, 3);
        let mut h = Hist::ZERO;
        h.slots[10] = 3;
        h.slots[12] = 1;
        h.count = 4;
        h.sum_ns = 10_000;
        h.errors = 1;
        let mut s = Snapshot::default();
        s.hists.insert(HistKey { dev: d, op: 0 }, h);
        s.names.insert(d, "loop\"3".into());
        s.scan = InflightScan {
            now_ns: 10,
            devices: [(
                d,
                DeviceInflight {
                    count: 2,
                    oldest: Inflight::default(),
                    oldest_age: Duration::from_millis(1500),
                },
            )]
            .into_iter()
            .collect(),
            entries: 2,
            truncated: false,
        };
        s.stalls.insert(
            d,
            DeviceStall {
                since_ns: Some(1),
                total: 1,
            },
        );
        s.threshold = Duration::from_millis(300);
        s
    }

    #[test]
    fn histogram_is_cumulative_and_consistent() {
        let text = render(&snap());
        assert!(text.contains(
            "diskio_block_request_duration_seconds_bucket{device=\"loop\\\"3\",op=\"read\",le=\"0.000002048\"} 3"
        ), "{text}");
        assert!(text.contains("le=\"0.000008192\"} 4"));
        assert!(text.contains("le=\"+Inf\"} 4"));
        assert!(text.contains(
            "diskio_block_request_duration_seconds_count{device=\"loop\\\"3\",op=\"read\"} 4"
        ));
        assert!(text.contains(
            "diskio_block_request_duration_seconds_sum{device=\"loop\\\"3\",op=\"read\"} 0.00001"
        ));
        assert!(
            text.contains("diskio_block_request_errors_total{device=\"loop\\\"3\",op=\"read\"} 1")
        );
        assert!(text.contains("diskio_block_stalled{device=\"loop\\\"3\"} 1"));
        assert!(text.contains("diskio_block_oldest_in_flight_seconds{device=\"loop\\\"3\"} 1.5"));
        assert!(text.contains("diskio_block_requests_in_flight{device=\"loop\\\"3\"} 2"));
        assert!(text.contains("diskio_block_stall_threshold_seconds 0.3"));
        // Every bucket line count: HIST_SLOTS - 1 finite + Inf.
        let buckets = text.lines().filter(|l| l.contains("_bucket{")).count();
        assert_eq!(buckets, HIST_SLOTS);
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
