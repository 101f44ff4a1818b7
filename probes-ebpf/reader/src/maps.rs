//! Typed handles on the probes' maps and the reads done on them.
//!
//! The same [`MapSet`] serves the running loader (maps taken from the
//! loaded object) and every reader (maps opened from their pins).

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, HashMap, IterableMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use probes_ebpf_common::{maps as names, Counter, Hist, HistKey, Inflight, LoaderState};

use crate::error::ReaderError;

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
    /// `CLOCK_MONOTONIC` nanoseconds the ages are measured at.
    pub now_ns: u64,
    /// Per whole-disk device (kernel encoding).
    pub devices: BTreeMap<u32, DeviceInflight>,
    /// Distinct entries seen.
    pub entries: usize,
    /// The scan hit its bound before the end of the table.
    pub truncated: bool,
}

fn typed<T>(map: Map, name: &'static str) -> Result<T, ReaderError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(|source| ReaderError::Map { map: name, source })
}

impl MapSet {
    /// Wraps maps taken from a loaded object (`take(name)`).
    pub fn from_maps(
        mut take: impl FnMut(&'static str) -> Option<Map>,
    ) -> Result<MapSet, ReaderError> {
        let mut get = |map: &'static str| take(map).ok_or(ReaderError::MissingMap { map });
        Ok(MapSet {
            inflight: typed(get(names::INFLIGHT)?, names::INFLIGHT)?,
            hist: typed(get(names::HIST)?, names::HIST)?,
            counters: typed(get(names::COUNTERS)?, names::COUNTERS)?,
            state: typed(get(names::LOADER_STATE)?, names::LOADER_STATE)?,
        })
    }

    /// Opens the maps a loader pinned under `dir`.
    pub fn from_pins(dir: &Path) -> Result<MapSet, ReaderError> {
        let open = |name: &'static str| -> Result<Map, ReaderError> {
            let path = dir.join(name);
            if !path.exists() {
                return Err(ReaderError::NotRunning {
                    dir: dir.to_path_buf(),
                    map: name,
                });
            }
            let data = MapData::from_pin(&path)
                .map_err(|source| ReaderError::Map { map: name, source })?;
            Map::from_map_data(data).map_err(|source| ReaderError::Map { map: name, source })
        };
        Ok(MapSet {
            inflight: typed(open(names::INFLIGHT)?, names::INFLIGHT)?,
            hist: typed(open(names::HIST)?, names::HIST)?,
            counters: typed(open(names::COUNTERS)?, names::COUNTERS)?,
            state: typed(open(names::LOADER_STATE)?, names::LOADER_STATE)?,
        })
    }

    /// Kernel ids of the maps, by pinned name (what a pin must hold to be
    /// these maps).
    pub fn ids(&self) -> Result<[(&'static str, u32); 4], ReaderError> {
        let id = |name: &'static str, data: &MapData| {
            data.info()
                .map(|i| (name, i.id()))
                .map_err(|source| ReaderError::Map { map: name, source })
        };
        Ok([
            id(names::INFLIGHT, self.inflight.map())?,
            id(names::HIST, self.hist.map())?,
            id(names::COUNTERS, self.counters.map())?,
            id(names::LOADER_STATE, self.state.map())?,
        ])
    }

    /// Kernel id of the heartbeat map.
    pub fn state_id(&self) -> Result<u32, ReaderError> {
        self.state
            .map()
            .info()
            .map(|i| i.id())
            .map_err(|source| ReaderError::Map {
                map: names::LOADER_STATE,
                source,
            })
    }

    /// Scans the in-flight table: count and oldest request per device,
    /// ages measured at `now_ns`.
    ///
    /// `get_next_key` restarts from the first key when the previous key was
    /// deleted meanwhile (a completion), so entries are de-duplicated and
    /// the walk stops after `max_entries` steps ([`InflightScan::truncated`]).
    pub fn scan_inflight(&self, now_ns: u64, max_entries: usize) -> InflightScan {
        let mut seen: HashSet<u64> = HashSet::new();
        let mut devices: BTreeMap<u32, DeviceInflight> = BTreeMap::new();
        let mut truncated = false;
        for (steps, item) in self.inflight.iter().enumerate() {
            if steps >= max_entries {
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

    /// Histograms per (device, op), summed over CPUs; at most `max_keys`.
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
    pub fn loader_state(&self) -> Result<LoaderState, ReaderError> {
        self.state.get(&0, 0).map_err(|source| ReaderError::Map {
            map: names::LOADER_STATE,
            source,
        })
    }

    /// Writes the heartbeat record (the loader only).
    pub fn set_loader_state(&mut self, state: LoaderState) -> Result<(), ReaderError> {
        self.state
            .set(0, state, 0)
            .map_err(|source| ReaderError::Map {
                map: names::LOADER_STATE,
                source,
            })
    }
}
