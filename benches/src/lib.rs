//! Shared pieces of the benchmark binaries: latency summaries that print
//! the same way everywhere.

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
            // 1 ns .. 1 h at 3 significant figures cannot be an invalid range.
            hist: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
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
