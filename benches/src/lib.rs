//! The fio-style bench engine behind `cargo xtask bench`, and the pieces
//! the benchmark binaries share.
//!
//! * [`job`]: a job in fio's terms (`--rw --bs --iodepth --numjobs --size
//!   --runtime --direct --filename --rwmixread`) and its validation.
//! * [`engines`]: `uring`, `uring-nodeadline`, `uring-thread`, `psync`, `tokio-fs`.
//! * [`report`]: fio-like text and JSON (fio's field names), side-by-side
//!   comparison tables.
//! * [`fio`]: runs fio on the same job and reads its JSON.
//! * [`suite`]: the matrix of jobs over every engine and fio, with an SVG chart.

pub mod engines;
pub mod fio;
pub mod job;
pub mod report;
pub mod suite;
pub mod svg;

use std::time::Duration;

use hdrhistogram::Histogram;

/// A latency histogram in nanoseconds, 3 significant digits, up to an hour.
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// Empty.
    pub fn new() -> Latencies {
        Latencies {
            hist: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("1 ns ..= 1 h at 3 significant figures is a valid, constant range"),
        }
    }

    /// Record one sample (clamped into the histogram's range).
    pub fn record(&mut self, d: Duration) {
        let ns = (d.as_nanos() as u64).clamp(1, self.hist.high());
        self.hist.saturating_record(ns);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0.0..=1.0).
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.hist.value_at_quantile(q))
    }

    /// Largest sample.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.hist.max())
    }

    /// Smallest sample (zero when empty).
    pub fn min(&self) -> Duration {
        if self.hist.is_empty() {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.hist.min())
        }
    }

    /// Mean in nanoseconds.
    pub fn mean_ns(&self) -> f64 {
        self.hist.mean()
    }

    /// Standard deviation in nanoseconds.
    pub fn stdev_ns(&self) -> f64 {
        self.hist.stdev()
    }

    /// Add another histogram's samples.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail; saturate anyway.
        let _ = self.hist.add(&other.hist);
    }

    /// p50, p99, p99.9 and max as a JSON object in microseconds.
    pub fn summary_json(&self) -> serde_json::Value {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        serde_json::json!({
            "count": self.count(),
            "p50_us": us(self.quantile(0.50)),
            "p99_us": us(self.quantile(0.99)),
            "p999_us": us(self.quantile(0.999)),
            "max_us": us(self.max()),
        })
    }

    /// One line: `label  n=..  p50 ..  p99 ..  p99.9 ..  max ..`.
    pub fn line(&self, label: &str) -> String {
        format!(
            "{label:<28} n={:<7} p50 {:>10.1?}  p99 {:>10.1?}  p99.9 {:>10.1?}  max {:>10.1?}",
            self.count(),
            self.quantile(0.50),
            self.quantile(0.99),
            self.quantile(0.999),
            self.max()
        )
    }
}
