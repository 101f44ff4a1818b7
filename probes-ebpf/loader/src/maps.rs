//! Typed handles on the probes' maps, and the reads done on them: the
//! in-flight scan, histograms, counters, the loader's heartbeat.
//!
//! The same [`MapSet`] serves the running loader (maps taken from the
//! loaded object) and `probe-loader status` (maps opened from their pins).

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use probes_ebpf_common::{maps as names, Counter, Hist, HistKey, Inflight, LoaderState};

use crate::error::{LoaderError, Result};

/// The pinned maps, typed.
pub struct MapSet {
    inflight: HashMap<MapData, u64, Inflight>,
    hist: PerCpuHashMap<MapData, HistKey, Hist>,
    counters: PerCpuArray<MapData, u64>,
    state: Array<MapData, LoaderState>,
}

impl std::fmt::Debug for MapSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // aya's per-CPU and array wrappers are not Debug.
        f.debug_struct("MapSet").finish_non_exhaustive()
    }
}

/// In-flight requests of one device, as found by a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInflight {
    /// Requests outstanding.
    pub count: u64,
    /// The oldest one.
    pub oldest: Inflight,
    /// Its age at scan time.
    pub oldest_age: Duration,
}

/// Result of one scan of the in-flight table.
#[derive(Clone, Debug, Default)]
pub struct InflightScan {
    /// CLOCK_MONOTONIC nanoseconds when the scan started.
    pub now_ns: u64,
    /// Per whole-disk device (kernel encoding).
    pub devices: BTreeMap<u32, DeviceInflight>,
    /// Distinct entries seen.
    pub entries: usize,
    /// The scan hit its bound before the end of the table.
    pub truncated: bool,
}

fn typed<T>(map: Map, name: &'static str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(|e| LoaderError::map(name, e))
}

impl MapSet {
    /// Wraps maps taken from a loaded object.
    pub fn from_maps(mut take: impl FnMut(&'static str) -> Option<Map>) -> Result<MapSet> {
        let mut get = |name: &'static str| {
            take(name)
                .ok_or_else(|| LoaderError::object(format!("the eBPF object has no map {name}")))
        };
        Ok(MapSet {
            inflight: typed(get(names::INFLIGHT)?, names::INFLIGHT)?,
            hist: typed(get(names::HIST)?, names::HIST)?,
            counters: typed(get(names::COUNTERS)?, names::COUNTERS)?,
            state: typed(get(names::LOADER_STATE)?, names::LOADER_STATE)?,
        })
    }

    /// Opens the maps a loader pinned under `dir`.
    pub fn from_pins(dir: &Path) -> Result<MapSet> {
        let open = |name: &'static str| -> Result<Map> {
            let path = dir.join(name);
            if !path.exists() {
                return Err(LoaderError::NotRunning {
                    dir: dir.to_path_buf(),
                    map: name,
                });
            }
            let data = MapData::from_pin(&path).map_err(|e| LoaderError::map(name, e))?;
            Map::from_map_data(data).map_err(|e| LoaderError::map(name, e))
        };
        Ok(MapSet {
            inflight: typed(open(names::INFLIGHT)?, names::INFLIGHT)?,
            hist: typed(open(names::HIST)?, names::HIST)?,
            counters: typed(open(names::COUNTERS)?, names::COUNTERS)?,
            state: typed(open(names::LOADER_STATE)?, names::LOADER_STATE)?,
        })
    }

    /// Scans the in-flight table: count and oldest request per device.
    ///
    /// `get_next_key` restarts from the first key when the previous key was
    /// deleted meanwhile (a completion), so entries are de-duplicated and
    /// the walk stops after `max_entries` steps.
    pub fn scan_inflight(&self, now_ns: u64, max_entries: usize) -> InflightScan {
        let mut seen: HashSet<u64> = HashSet::new();
        let mut devices: BTreeMap<u32, DeviceInflight> = BTreeMap::new();
        let mut steps = 0;
        let mut truncated = false;
        for item in self.inflight.iter() {
            steps += 1;
            if steps > max_entries {
                truncated = true;
                break;
            }
            // Errors other than a vanished key end the walk: the rest of
            // the table is unreachable this round anyway.
            let Ok((rq, e)) = item else { break };
            if !seen.insert(rq) {
                continue;
            }
            let age = Duration::from_nanos(now_ns.saturating_sub(e.issue_ns));
            devices
                .entry(e.dev)
                .and_modify(|d| {
                    d.count += 1;
                    if e.issue_ns < d.oldest.issue_ns {
                        d.oldest = e;
                        d.oldest_age = age;
                    }
                })
                .or_insert(DeviceInflight {
                    count: 1,
                    oldest: e,
                    oldest_age: age,
                });
        }
        InflightScan {
            now_ns,
            devices,
            entries: seen.len(),
            truncated,
        }
    }

    /// Histograms per (device, op), summed over CPUs.
    pub fn read_hists(&self, max_keys: usize) -> BTreeMap<HistKey, Hist> {
        let mut out = BTreeMap::new();
        for item in self.hist.iter().take(max_keys) {
            let Ok((key, per_cpu)) = item else { break };
            let mut sum = Hist::ZERO;
            for h in per_cpu.iter() {
                sum.merge(h);
            }
            out.insert(key, sum);
        }
        out
    }

    /// Program-wide counters, summed over CPUs.
    pub fn read_counters(&self) -> StdHashMap<&'static str, u64> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let v = self
                    .counters
                    .get(&(c as u32), 0)
                    .map(|per_cpu| per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
                    .unwrap_or(0);
                (c.name(), v)
            })
            .collect()
    }

    /// The loader's heartbeat record.
    pub fn loader_state(&self) -> Result<LoaderState> {
        self.state
            .get(&0, 0)
            .map_err(|e| LoaderError::map(names::LOADER_STATE, e))
    }

    /// Writes the heartbeat record.
    pub fn set_loader_state(&mut self, state: LoaderState) -> Result<()> {
        self.state
            .set(0, state, 0)
            .map_err(|e| LoaderError::map(names::LOADER_STATE, e))
    }
}
