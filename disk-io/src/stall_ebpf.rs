//! [`StallSource`] backed by the block-request probes (feature
//! `ebpf-stall`).
//!
//! The probe loader (`probe-loader run`) pins the probes' maps under bpffs.
//! This module opens the pinned in-flight table (request → issue time,
//! device, op, bytes) and, for each disk, the whole block device its
//! directory lives on: `stat(dir)` → `st_dev` major:minor →
//! `/sys/dev/block/MAJ:MIN` → the parent disk if that is a partition (loop
//! devices are whole disks).
//!
//! # Threshold semantics
//!
//! A disk's source reports a [`Stall`] while **any request outstanding on
//! its whole block device is older than [`EbpfStallConfig::threshold`]**,
//! measured from the request's issue to the device driver
//! (`block_rq_issue`) to now. It computes that age itself from the table,
//! so its threshold is independent of the loader's `--stall-threshold`.
//! The health monitor polls the source every
//! [`HealthConfig::tick`](crate::HealthConfig::tick) and scans are shared for
//! [`EbpfStallConfig::cache_ttl`], so a request that hangs at `t` turns the
//! disk Faulty by `t + threshold + cache_ttl + tick` — well before a caller
//! with a multi-second deadline gives up. Choose the threshold above the
//! device's worst healthy latency (see the p99.9 of `probe-loader status`)
//! and below the op deadlines. Every request on the device counts, whoever
//! issued it; disks sharing a device (partitions of one disk) stall
//! together.
//!
//! When no loader runs, or its heartbeat is older than
//! [`EbpfStallConfig::heartbeat_timeout`] (a loader that died leaves its
//! pins and stale entries behind), the source reports no stall and logs a
//! warning at most every [`EbpfStallConfig::warn_interval`]: a missing
//! probe must not take disks out. The maps are reopened from their pins
//! then, so a restarted loader is picked up.

use std::collections::{HashMap as StdHashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, Map, MapData};
use probes_ebpf_common::sysfs::{self, BlockDevice, SysfsError};
use probes_ebpf_common::{maps as names, Inflight, LoaderState, ABI_VERSION, DEFAULT_PIN_DIR};

use crate::stall::{Stall, StallSource};

/// Configuration of the eBPF stall source.
#[derive(Clone, Debug)]
pub struct EbpfStallConfig {
    /// The loader's pin directory (`probe-loader run --pin-dir`).
    pub pin_dir: PathBuf,
    /// A disk is stalled while a request on its device is older than this.
    pub threshold: Duration,
    /// One scan of the in-flight table serves every disk for this long.
    pub cache_ttl: Duration,
    /// Most entries one scan visits (the table's size is the loader's
    /// `--inflight-entries`; deletions during a walk restart it, hence the
    /// bound).
    pub max_scan_entries: usize,
    /// The loader counts as gone when its heartbeat is older than this (or
    /// than five of its scan intervals, whichever is longer).
    pub heartbeat_timeout: Duration,
    /// Bound for `stat` of a disk's directory when mapping it to its device.
    pub resolve_timeout: Duration,
    /// Least time between two "no loader" warnings.
    pub warn_interval: Duration,
}

impl Default for EbpfStallConfig {
    fn default() -> Self {
        EbpfStallConfig {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            threshold: Duration::from_secs(1),
            cache_ttl: Duration::from_millis(20),
            max_scan_entries: 32_768,
            heartbeat_timeout: Duration::from_secs(2),
            resolve_timeout: Duration::from_secs(2),
            warn_interval: Duration::from_secs(30),
        }
    }
}

/// Why the eBPF stall source cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum EbpfStallError {
    /// No loader has pinned maps there.
    #[error("no probe loader: {0} not found (is `probe-loader run` running with this --pin-dir?)")]
    NoLoader(PathBuf),
    /// The loader's heartbeat is too old: it died or hangs.
    #[error("the probe loader's heartbeat is {age:?} old (pid {pid}); its maps are stale")]
    Stale {
        /// Age of the last heartbeat.
        age: Duration,
        /// The loader's pid.
        pid: u32,
    },
    /// The pinned maps have another layout.
    #[error("pinned maps have layout version {found}, this build reads {expected}")]
    AbiMismatch {
        /// Found.
        found: u32,
        /// Expected.
        expected: u32,
    },
    /// A map could not be opened or read.
    #[error("map {map}: {source}")]
    Map {
        /// The map.
        map: &'static str,
        /// The aya error.
        #[source]
        source: aya::maps::MapError,
    },
    /// The disk's directory is not on a block device we can find.
    #[error(transparent)]
    Device(#[from] SysfsError),
    /// `stat` of the disk's directory did not answer in time.
    #[error("stat of {path} did not answer within {timeout:?}")]
    ResolveTimeout {
        /// The directory.
        path: PathBuf,
        /// The bound.
        timeout: Duration,
    },
}

struct Maps {
    inflight: HashMap<MapData, u64, Inflight>,
    state: Array<MapData, LoaderState>,
}

fn open_maps(dir: &Path) -> Result<Maps, EbpfStallError> {
    let open = |name: &'static str| -> Result<Map, EbpfStallError> {
        let path = dir.join(name);
        if !path.exists() {
            return Err(EbpfStallError::NoLoader(path));
        }
        let data =
            MapData::from_pin(&path).map_err(|source| EbpfStallError::Map { map: name, source })?;
        Map::from_map_data(data).map_err(|source| EbpfStallError::Map { map: name, source })
    };
    let inflight =
        HashMap::try_from(open(names::INFLIGHT)?).map_err(|source| EbpfStallError::Map {
            map: names::INFLIGHT,
            source,
        })?;
    let state =
        Array::try_from(open(names::LOADER_STATE)?).map_err(|source| EbpfStallError::Map {
            map: names::LOADER_STATE,
            source,
        })?;
    Ok(Maps { inflight, state })
}

/// Oldest in-flight request per device, from one scan.
#[derive(Clone, Debug, Default)]
struct Scan {
    at: Option<Instant>,
    /// Device (kernel encoding) → age of its oldest request.
    oldest: StdHashMap<u32, Duration>,
}

#[derive(Default)]
struct State {
    maps: Option<Maps>,
    scan: Scan,
    last_warn: Option<Instant>,
}

/// Reads the pinned in-flight table for any number of disks; one per
/// process is enough (share it with `Arc`). Scans are cached for
/// [`EbpfStallConfig::cache_ttl`], so many disks polling each tick cost one
/// scan.
pub struct EbpfStallMonitor {
    cfg: EbpfStallConfig,
    state: Mutex<State>,
}

impl std::fmt::Debug for EbpfStallMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfStallMonitor")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => Duration::from(ts).as_nanos() as u64,
        // Cannot fail on Linux; 0 makes every age small (never a false stall).
        Err(_) => 0,
    }
}

impl EbpfStallMonitor {
    /// A monitor reading the loader's maps under `cfg.pin_dir`. It does not
    /// need the loader yet: maps are opened on first use and reopened after
    /// the loader restarts.
    pub fn new(cfg: EbpfStallConfig) -> Arc<EbpfStallMonitor> {
        Arc::new(EbpfStallMonitor {
            cfg,
            state: Mutex::new(State::default()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EbpfStallConfig {
        &self.cfg
    }

    /// A stall source for the disk rooted at `dir` (its whole block device
    /// is found with a bounded `stat`).
    pub fn source_for_dir(self: &Arc<Self>, dir: &Path) -> Result<EbpfStallSource, EbpfStallError> {
        let device = resolve_bounded(dir, self.cfg.resolve_timeout)?;
        Ok(self.source_for_device(device))
    }

    /// A stall source for a known device.
    pub fn source_for_device(self: &Arc<Self>, device: BlockDevice) -> EbpfStallSource {
        EbpfStallSource {
            monitor: Arc::clone(self),
            device,
        }
    }

    /// Age of the oldest request in flight on `device` now (from a scan at
    /// most `cache_ttl` old), `None` if it has none.
    pub fn oldest_in_flight(
        &self,
        device: &BlockDevice,
    ) -> Result<Option<Duration>, EbpfStallError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = st
            .scan
            .at
            .is_some_and(|at| at.elapsed() < self.cfg.cache_ttl);
        if !fresh {
            if let Err(e) = self.rescan(&mut st) {
                // Drop the handles: the next call reopens the pins (a
                // restarted loader pins new maps).
                st.maps = None;
                st.scan = Scan::default();
                return Err(e);
            }
        }
        Ok(st.scan.oldest.get(&device.kernel_dev()).copied())
    }

    fn rescan(&self, st: &mut State) -> Result<(), EbpfStallError> {
        if st.maps.is_none() {
            st.maps = Some(open_maps(&self.cfg.pin_dir)?);
        }
        let Some(maps) = st.maps.as_ref() else {
            return Err(EbpfStallError::NoLoader(self.cfg.pin_dir.clone()));
        };
        let now = monotonic_ns();
        let state = maps
            .state
            .get(&0, 0)
            .map_err(|source| EbpfStallError::Map {
                map: names::LOADER_STATE,
                source,
            })?;
        if state.abi_version != ABI_VERSION {
            return Err(EbpfStallError::AbiMismatch {
                found: state.abi_version,
                expected: ABI_VERSION,
            });
        }
        let age = Duration::from_nanos(now.saturating_sub(state.heartbeat_ns));
        let allowed = self.cfg.heartbeat_timeout.max(Duration::from_nanos(
            state.scan_interval_ns.saturating_mul(5),
        ));
        if age > allowed {
            return Err(EbpfStallError::Stale {
                age,
                pid: state.pid,
            });
        }
        let mut seen = HashSet::new();
        let mut oldest: StdHashMap<u32, Duration> = StdHashMap::new();
        for (steps, item) in maps.inflight.iter().enumerate() {
            if steps >= self.cfg.max_scan_entries {
                break;
            }
            // An error ends the walk; what was seen so far still counts.
            let Ok((rq, e)) = item else { break };
            if !seen.insert(rq) {
                continue;
            }
            let a = Duration::from_nanos(now.saturating_sub(e.issue_ns));
            let slot = oldest.entry(e.dev).or_default();
            *slot = (*slot).max(a);
        }
        st.scan = Scan {
            at: Some(Instant::now()),
            oldest,
        };
        Ok(())
    }

    fn warn(&self, device: &str, err: &EbpfStallError) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st
            .last_warn
            .is_some_and(|t| t.elapsed() < self.cfg.warn_interval)
        {
            return;
        }
        st.last_warn = Some(Instant::now());
        tracing::warn!(device, error = %err, "eBPF stall source unavailable; not reporting stalls");
    }
}

/// `sysfs::disk_of_path` on a helper thread, waiting at most `timeout`
/// (`stat` blocks on a hung file system; the thread is left to finish).
fn resolve_bounded(dir: &Path, timeout: Duration) -> Result<BlockDevice, EbpfStallError> {
    let (tx, rx) = mpsc::channel();
    let path = dir.to_path_buf();
    std::thread::Builder::new()
        .name("disk-io-resolve".into())
        .spawn(move || {
            let _ = tx.send(sysfs::disk_of_path(&path));
        })
        .map_err(|e| {
            EbpfStallError::Device(SysfsError::Stat {
                path: dir.to_path_buf(),
                source: e,
            })
        })?;
    match rx.recv_timeout(timeout) {
        Ok(r) => Ok(r?),
        Err(_) => Err(EbpfStallError::ResolveTimeout {
            path: dir.to_path_buf(),
            timeout,
        }),
    }
}

/// The stall source of one disk: its whole block device, read through a
/// shared [`EbpfStallMonitor`].
#[derive(Debug, Clone)]
pub struct EbpfStallSource {
    monitor: Arc<EbpfStallMonitor>,
    device: BlockDevice,
}

impl EbpfStallSource {
    /// The block device watched.
    pub fn device(&self) -> &BlockDevice {
        &self.device
    }

    /// Age of the oldest request in flight on the device, or why it cannot
    /// be read.
    pub fn oldest_in_flight(&self) -> Result<Option<Duration>, EbpfStallError> {
        self.monitor.oldest_in_flight(&self.device)
    }
}

impl StallSource for EbpfStallSource {
    fn check(&self) -> Option<Stall> {
        match self.oldest_in_flight() {
            Ok(Some(age)) if age > self.monitor.cfg.threshold => Some(Stall {
                device: self.device.name.clone(),
                oldest_age: age,
            }),
            Ok(_) => None,
            Err(e) => {
                self.monitor.warn(&self.device.name, &e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_loader_means_no_stall_and_an_error_that_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let monitor = EbpfStallMonitor::new(EbpfStallConfig {
            pin_dir: dir.path().join("none"),
            ..EbpfStallConfig::default()
        });
        let src = monitor.source_for_device(BlockDevice {
            name: "loop9".into(),
            major: 7,
            minor: 9,
        });
        assert!(src.check().is_none());
        assert!(matches!(
            src.oldest_in_flight(),
            Err(EbpfStallError::NoLoader(_))
        ));
    }

    #[test]
    fn a_directory_off_any_block_device_is_refused() {
        let monitor = EbpfStallMonitor::new(EbpfStallConfig::default());
        match monitor.source_for_dir(Path::new("/dev")) {
            Err(EbpfStallError::Device(SysfsError::NotBlockDevice { .. })) => {}
            other => panic!("expected NotBlockDevice, got {other:?}"),
        }
    }
}
