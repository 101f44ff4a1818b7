//! Prometheus text exposition (format 0.0.4) of a [`Snapshot`], encoded by
//! `prometheus-client`.
//!
//! The probes' histograms arrive pre-aggregated (log2 bucket counts summed
//! from per-CPU maps), so nothing is observed here: a [`Collector`] reads
//! the snapshot at scrape time and hands each family to the encoder as it
//! is (`encode_histogram` takes bucket counts, `ConstCounter`/`ConstGauge`
//! take values). The crate does the format: names, `# HELP`/`# TYPE`,
//! label escaping, float formatting, cumulative buckets and `+Inf`.
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

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use probes_ebpf_common::{op_name, slot_upper_ns, Counter, Hist, HIST_SLOTS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::snapshot::{DeviceView, Snapshot};

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Renders the snapshot.
pub fn render(snap: Arc<Snapshot>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snap)));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        // Writing into a String cannot fail; an encoder refusal would be a
        // bug here, and a scrape must still get an answer.
        tracing::error!(error = %e, "encoding /metrics");
    }
    out
}

#[derive(Debug)]
struct SnapshotCollector(Arc<Snapshot>);

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// One log2 histogram, already aggregated.
struct LogHist<'a>(&'a Hist);

impl EncodeMetric for LogHist<'_> {
    fn encode(&self, mut enc: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        let h = self.0;
        // Per-bucket counts; the last slot is open-ended and becomes +Inf.
        let buckets: Vec<(f64, u64)> = (0..HIST_SLOTS)
            .map(|slot| {
                (
                    slot_upper_ns(slot).map_or(f64::INFINITY, secs),
                    h.slots[slot],
                )
            })
            .collect();
        let count = h.slots.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        enc.encode_histogram::<NoLabelSet>(
            secs(h.sum_ns),
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Encodes one family: `name` with `help`, one sample per `(labels, metric)`.
fn family<L, M>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: EncodeMetric,
{
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn per_device<'a, M: EncodeMetric + 'a>(
    devices: &'a [DeviceView],
    value: impl Fn(&DeviceView) -> M + 'a,
) -> impl Iterator<Item = ([(&'static str, &'a str); 1], M)> + 'a {
    devices
        .iter()
        .map(move |d| ([("device", d.name.as_str())], value(d)))
}

fn per_op<'a, M: EncodeMetric + 'a>(
    devices: &'a [DeviceView],
    value: impl Fn(&'a Hist) -> M + Copy + 'a,
) -> impl Iterator<Item = ([(&'static str, &'a str); 2], M)> + 'a {
    devices.iter().flat_map(move |d| {
        d.ops
            .iter()
            .map(move |(&op, h)| ([("device", d.name.as_str()), ("op", op_name(op))], value(h)))
    })
}

const NONE: [(&str, &str); 0] = [];

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let snap = &self.0;
        let devices = snap.devices();
        let e = &mut enc;
        family(
            e,
            "diskio_block_request_duration_seconds",
            "Block request latency from issue to completion, per whole-disk device and operation (log2 buckets).",
            MetricType::Histogram,
            per_op(&devices, LogHist),
        )?;
        // Counter names get `_total` from the encoder.
        family(
            e,
            "diskio_block_requests_completed",
            "Block requests completed, per device and operation.",
            MetricType::Counter,
            per_op(&devices, |h| ConstCounter::new(h.count)),
        )?;
        family(
            e,
            "diskio_block_request_errors",
            "Block requests completed with an error status, per device and operation.",
            MetricType::Counter,
            per_op(&devices, |h| ConstCounter::new(h.errors)),
        )?;
        family(
            e,
            "diskio_block_requests_in_flight",
            "Block requests issued to the device and not completed, at the last scan.",
            MetricType::Gauge,
            per_device(&devices, |d| ConstGauge::new(d.in_flight)),
        )?;
        family(
            e,
            "diskio_block_oldest_in_flight_seconds",
            "Age of the oldest in-flight block request at the last scan (0 when none).",
            MetricType::Gauge,
            per_device(&devices, |d| {
                ConstGauge::new(d.oldest_age.map_or(0.0, |a| a.as_secs_f64()))
            }),
        )?;
        family(
            e,
            "diskio_block_stalled",
            "1 while the device's oldest in-flight request is older than the stall threshold.",
            MetricType::Gauge,
            per_device(&devices, |d| ConstGauge::new(u64::from(d.stalled))),
        )?;
        family(
            e,
            "diskio_block_stalls",
            "Stalls seen since the loader started.",
            MetricType::Counter,
            per_device(&devices, |d| ConstCounter::new(d.stalls_total)),
        )?;
        family(
            e,
            "diskio_block_stall_threshold_seconds",
            "Age of the oldest in-flight request above which a device counts as stalled.",
            MetricType::Gauge,
            [(NONE, ConstGauge::new(snap.threshold.as_secs_f64()))],
        )?;
        family(
            e,
            "diskio_probe_events",
            "Unusual events seen by the block probes: untracked completions, requeues, partial completions, failures.",
            MetricType::Counter,
            Counter::ALL.iter().map(|c| {
                let v = snap.counters.get(c.name()).copied().unwrap_or(0);
                ([("event", c.name())], ConstCounter::new(v))
            }),
        )?;
        family(
            e,
            "diskio_probe_scan_duration_seconds",
            "Time the last scan of the in-flight table and histograms took.",
            MetricType::Gauge,
            [(NONE, ConstGauge::new(snap.scan_duration.as_secs_f64()))],
        )?;
        family(
            e,
            "diskio_probe_inflight_entries",
            "Entries in the in-flight table at the last scan.",
            MetricType::Gauge,
            [(NONE, ConstGauge::new(snap.scan.entries as u64))],
        )?;
        family(
            e,
            "diskio_probe_inflight_capacity",
            "Size of the in-flight table (LRU: beyond it the oldest entries are evicted).",
            MetricType::Gauge,
            [(NONE, ConstGauge::new(snap.inflight_capacity))],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stall::DeviceStall;
    use probes_ebpf_common::{dev, Hist, HistKey, Inflight};
    use probes_ebpf_reader::{DeviceInflight, InflightScan};
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
        let text = render(Arc::new(snap()));
        assert!(text.contains(
            "diskio_block_request_duration_seconds_bucket{device=\"loop\\\"3\",op=\"read\",le=\"2.048e-06\"} 3"
        ), "{text}");
        assert!(text.contains("le=\"8.192e-06\"} 4"));
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
    fn label_values_are_escaped() {
        let mut s = snap();
        let d = *s.names.keys().next().expect("device");
        s.names.insert(d, "a\\b\nc".into());
        let text = render(Arc::new(s));
        assert!(
            text.contains("diskio_block_stalled{device=\"a\\\\b\\nc\"} 1"),
            "{text}"
        );
    }
}
