//! Stall detection: a device is stalled while its oldest in-flight request
//! is older than the threshold.
//!
//! Histograms only learn about a request when it completes, so a hung
//! request is invisible to them; the in-flight table is scanned every scan
//! interval instead. A request issued at `t` is reported by the first scan
//! after `t + threshold`, i.e. no later than `t + threshold + interval`
//! (plus the scan's own duration).

use std::collections::BTreeMap;
use std::time::Duration;

use probes_ebpf_common::{dev, op_name};
use serde::Serialize;

use probes_ebpf_reader::InflightScan;

/// A stall starting or ending on one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StallEvent {
    /// The device's oldest in-flight request passed the threshold.
    Started {
        /// Device name (`loop3`), or `MAJ:MIN` if sysfs does not know it.
        device: String,
        /// Kernel device number.
        dev: u32,
        /// Age of the oldest request when seen.
        oldest_age: Duration,
        /// Its operation.
        op: &'static str,
        /// Its size in bytes.
        bytes: u32,
        /// Requests in flight on the device.
        in_flight: u64,
    },
    /// No request on the device is older than the threshold any more.
    Ended {
        /// Device name.
        device: String,
        /// Kernel device number.
        dev: u32,
        /// How long the stall was seen (from first to last scan).
        lasted: Duration,
    },
}

impl StallEvent {
    /// The device this event is about.
    pub fn device(&self) -> &str {
        match self {
            StallEvent::Started { device, .. } | StallEvent::Ended { device, .. } => device,
        }
    }
}

/// Stall state of one device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStall {
    /// Monotonic ns of the scan that first saw the current stall.
    pub since_ns: Option<u64>,
    /// Stalls seen since the loader started.
    pub total: u64,
}

/// Follows stalls across scans.
#[derive(Debug)]
pub struct StallTracker {
    threshold: Duration,
    devices: BTreeMap<u32, DeviceStall>,
}

impl StallTracker {
    /// A tracker with this threshold.
    pub fn new(threshold: Duration) -> StallTracker {
        StallTracker {
            threshold,
            devices: BTreeMap::new(),
        }
    }

    /// The threshold.
    pub fn threshold(&self) -> Duration {
        self.threshold
    }

    /// Per-device state (devices that have stalled at least once).
    pub fn devices(&self) -> &BTreeMap<u32, DeviceStall> {
        &self.devices
    }

    /// Whether `dev` is stalled now.
    pub fn is_stalled(&self, dev: u32) -> bool {
        self.devices.get(&dev).is_some_and(|d| d.since_ns.is_some())
    }

    /// Feeds one scan; returns the stalls that started or ended.
    pub fn update(
        &mut self,
        scan: &InflightScan,
        name: &mut impl FnMut(u32) -> String,
    ) -> Vec<StallEvent> {
        let mut events = Vec::new();
        for (&d, inflight) in &scan.devices {
            if inflight.oldest_age > self.threshold {
                let st = self.devices.entry(d).or_default();
                if st.since_ns.is_none() {
                    st.since_ns = Some(scan.now_ns);
                    st.total += 1;
                    events.push(StallEvent::Started {
                        device: name(d),
                        dev: d,
                        oldest_age: inflight.oldest_age,
                        op: op_name(inflight.oldest.op),
                        bytes: inflight.oldest.bytes,
                        in_flight: inflight.count,
                    });
                }
            }
        }
        for (&d, st) in self.devices.iter_mut() {
            let Some(since) = st.since_ns else { continue };
            let still = scan
                .devices
                .get(&d)
                .is_some_and(|i| i.oldest_age > self.threshold);
            // A truncated scan may have missed the stalled request: keep
            // the stall until a complete scan says otherwise.
            if !still && !scan.truncated {
                st.since_ns = None;
                events.push(StallEvent::Ended {
                    device: name(d),
                    dev: d,
                    lasted: Duration::from_nanos(scan.now_ns.saturating_sub(since)),
                });
            }
        }
        events
    }
}

/// `MAJ:MIN` of a kernel device number.
pub fn dev_string(d: u32) -> String {
    format!("{}:{}", dev::major(d), dev::minor(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use probes_ebpf_common::Inflight;
    use probes_ebpf_reader::DeviceInflight;

    fn scan(now_ms: u64, devs: &[(u32, u64)], truncated: bool) -> InflightScan {
        let now_ns = now_ms * 1_000_000;
        InflightScan {
            now_ns,
            devices: devs
                .iter()
                .map(|&(d, issue_ms)| {
                    let e = Inflight {
                        issue_ns: issue_ms * 1_000_000,
                        dev: d,
                        op: 1,
                        bytes: 4096,
                        _pad: 0,
                    };
                    (
                        d,
                        DeviceInflight {
                            count: 1,
                            oldest: e,
                            oldest_age: Duration::from_millis(now_ms - issue_ms),
                        },
                    )
                })
                .collect(),
            entries: devs.len(),
            truncated,
        }
    }

    #[test]
    fn start_once_end_once() {
        let mut t = StallTracker::new(Duration::from_millis(300));
        let mut name = |d: u32| dev_string(d);
        let a = dev::make(7, 1);
        let b = dev::make(8, 0);
        assert!(t
            .update(&scan(1000, &[(a, 900), (b, 990)], false), &mut name)
            .is_empty());
        let ev = t.update(&scan(1250, &[(a, 900), (b, 1240)], false), &mut name);
        assert_eq!(ev.len(), 1);
        assert!(
            matches!(&ev[0], StallEvent::Started { device, op: "write", bytes: 4096, .. } if device == "7:1")
        );
        assert!(t.is_stalled(a) && !t.is_stalled(b));
        // Still stalled: no new event.
        assert!(t
            .update(&scan(1400, &[(a, 900)], false), &mut name)
            .is_empty());
        // A truncated scan that misses it keeps the stall.
        assert!(t.update(&scan(1500, &[], true), &mut name).is_empty());
        let ev = t.update(&scan(1600, &[(a, 1590)], false), &mut name);
        assert_eq!(
            ev,
            vec![StallEvent::Ended {
                device: "7:1".into(),
                dev: a,
                lasted: Duration::from_millis(350)
            }]
        );
        assert_eq!(t.devices()[&a].total, 1);
        // A second stall counts again.
        assert_eq!(
            t.update(&scan(2000, &[(a, 1600)], false), &mut name).len(),
            1
        );
        assert_eq!(t.devices()[&a].total, 2);
    }

    #[test]
    fn exactly_threshold_is_not_a_stall() {
        let mut t = StallTracker::new(Duration::from_millis(300));
        let mut name = |d: u32| dev_string(d);
        assert!(t
            .update(&scan(1300, &[(1, 1000)], false), &mut name)
            .is_empty());
    }
}
