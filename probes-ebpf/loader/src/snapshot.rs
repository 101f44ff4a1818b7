//! One consistent view of the maps, taken by the scanner every interval
//! and rendered by `/metrics` and `status`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use probes_ebpf_common::sysfs;
use probes_ebpf_common::{dev, slot_upper_ns, Hist, HistKey, HIST_SLOTS};

use crate::stall::{dev_string, DeviceStall};
use probes_ebpf_reader::InflightScan;

/// What the scanner saw at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The in-flight scan.
    pub scan: InflightScan,
    /// Histograms per (device, op), summed over CPUs.
    pub hists: BTreeMap<HistKey, Hist>,
    /// Program-wide counters.
    pub counters: HashMap<&'static str, u64>,
    /// Stall state per device (devices that stalled at least once).
    pub stalls: BTreeMap<u32, DeviceStall>,
    /// Device names for every device above.
    pub names: BTreeMap<u32, String>,
    /// The stall threshold in force.
    pub threshold: Duration,
    /// How long the scan and reads took.
    pub scan_duration: Duration,
    /// Size of the in-flight table.
    pub inflight_capacity: u32,
}

/// Everything known about one device.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceView {
    /// Kernel device number.
    pub dev: u32,
    /// Its name.
    pub name: String,
    /// Histograms per operation.
    pub ops: BTreeMap<u32, Hist>,
    /// Requests in flight.
    pub in_flight: u64,
    /// Age of the oldest one.
    pub oldest_age: Option<Duration>,
    /// Stalled now.
    pub stalled: bool,
    /// Stalls seen.
    pub stalls_total: u64,
}

impl Snapshot {
    /// Every device seen (histograms, in flight, stalls), by device number.
    pub fn devices(&self) -> Vec<DeviceView> {
        let all: BTreeSet<u32> = self
            .hists
            .keys()
            .map(|k| k.dev)
            .chain(self.scan.devices.keys().copied())
            .chain(self.stalls.keys().copied())
            .collect();
        all.into_iter()
            .map(|d| {
                let inflight = self.scan.devices.get(&d);
                let stall = self.stalls.get(&d);
                DeviceView {
                    dev: d,
                    name: self.names.get(&d).cloned().unwrap_or_else(|| dev_string(d)),
                    ops: self
                        .hists
                        .iter()
                        .filter(|(k, _)| k.dev == d)
                        .map(|(k, h)| (k.op, *h))
                        .collect(),
                    in_flight: inflight.map_or(0, |i| i.count),
                    oldest_age: inflight.map(|i| i.oldest_age),
                    stalled: stall.is_some_and(|s| s.since_ns.is_some()),
                    stalls_total: stall.map_or(0, |s| s.total),
                }
            })
            .collect()
    }
}

/// Device names from sysfs, cached (bounded).
#[derive(Debug)]
pub struct DeviceNames {
    cache: HashMap<u32, String>,
    max: usize,
}

impl DeviceNames {
    /// A cache of at most `max` names.
    pub fn new(max: usize) -> DeviceNames {
        DeviceNames {
            cache: HashMap::new(),
            max: max.max(1),
        }
    }

    /// Name of `d`, or `MAJ:MIN` when sysfs does not know it (a device
    /// removed since; not cached, so a new device with that number is named
    /// properly).
    pub fn name(&mut self, d: u32) -> String {
        if let Some(n) = self.cache.get(&d) {
            return n.clone();
        }
        match sysfs::device_name(dev::major(d), dev::minor(d)) {
            Some(n) => {
                if self.cache.len() >= self.max {
                    self.cache.clear();
                }
                self.cache.insert(d, n.clone());
                n
            }
            None => dev_string(d),
        }
    }
}

/// Latency at quantile `q` (0..=1), interpolated linearly inside its log2
/// bucket (as Prometheus' `histogram_quantile` does); `None` if empty.
pub fn quantile(h: &Hist, q: f64) -> Option<Duration> {
    let total: u64 = h.slots.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut cum = 0u64;
    for (i, &c) in h.slots.iter().enumerate() {
        if c == 0 {
            continue;
        }
        if (cum + c) as f64 >= rank {
            let lower = if i == 0 { 0 } else { 1u64 << i };
            let Some(upper) = slot_upper_ns(i) else {
                // Open-ended last bucket: its lower bound is all we know.
                return Some(Duration::from_nanos(lower));
            };
            let frac = (rank - cum as f64) / c as f64;
            let ns = lower as f64 + frac * (upper - lower) as f64;
            return Some(Duration::from_nanos(ns as u64));
        }
        cum += c;
    }
    Some(Duration::from_nanos(1u64 << (HIST_SLOTS - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let mut h = Hist::ZERO;
        assert_eq!(quantile(&h, 0.5), None);
        // 100 requests in [1024, 2048) ns.
        h.slots[10] = 100;
        assert_eq!(quantile(&h, 0.5), Some(Duration::from_nanos(1536)));
        assert_eq!(quantile(&h, 1.0), Some(Duration::from_nanos(2048)));
        // One slow outlier in [2^20, 2^21).
        h.slots[20] = 1;
        assert!(quantile(&h, 0.99).unwrap_or_default() < Duration::from_nanos(2048));
        assert!(quantile(&h, 1.0).unwrap_or_default() >= Duration::from_nanos(1 << 20));
        let mut last = Hist::ZERO;
        last.slots[HIST_SLOTS - 1] = 1;
        assert_eq!(
            quantile(&last, 0.5),
            Some(Duration::from_nanos(1 << (HIST_SLOTS - 1)))
        );
    }

    #[test]
    fn unknown_devices_are_named_by_number() {
        let mut names = DeviceNames::new(4);
        assert_eq!(names.name(dev::make(4000, 12345)), "4000:12345");
    }
}
