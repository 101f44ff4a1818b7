//! Loading the eBPF object, attaching its three raw tracepoints and pinning
//! its maps.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::HashMap;
use aya::programs::RawTracePoint;
use aya::{Ebpf, EbpfLoader};
use probes_ebpf_common::sysfs::{self, BlockDevice};
use probes_ebpf_common::{maps as names, Offsets, ABI_VERSION, FLAG_FILTER, OFFSETS_GLOBAL};

use crate::btf::Btf;
use crate::config::ProbeConfig;
use crate::error::{LoaderError, Result};
use crate::maps::MapSet;
use crate::system;

/// The eBPF object, built from `probes-ebpf/kernel` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probes.bpf.o"));

/// The tracepoints, and the program attached to each (same names).
pub const TRACEPOINTS: [&str; 3] = ["block_rq_issue", "block_rq_complete", "block_rq_requeue"];

/// Size of the eBPF object compiled into this binary.
pub fn object_len() -> usize {
    OBJECT.len()
}

/// A pinned heartbeat counts as live for this many of its scan intervals
/// (and at least [`MIN_LIVE`]).
const LIVE_INTERVALS: u64 = 5;
const MIN_LIVE: Duration = Duration::from_secs(1);

/// Loaded and attached probes. Dropping this detaches the programs and
/// removes the pins.
#[derive(Debug)]
pub struct Probes {
    // Field order: the maps close before the object. The object is never
    // read again, but owns the programs' links: dropping it detaches them.
    maps: MapSet,
    _ebpf: Ebpf,
    pin_dir: PathBuf,
    offsets: Offsets,
    devices: Vec<BlockDevice>,
}

impl Probes {
    /// Checks privileges, derives offsets from the BTF, resolves the device
    /// filter, loads and attaches the programs and pins the maps.
    pub fn attach(cfg: &ProbeConfig) -> Result<Probes> {
        system::require_bpf_caps()?;
        let btf = Btf::from_file(&cfg.btf).map_err(|source| LoaderError::Btf {
            path: cfg.btf.clone(),
            source,
        })?;
        let mut offsets = crate::offsets::derive(&btf).map_err(|source| LoaderError::Offsets {
            path: cfg.btf.clone(),
            source,
        })?;
        let devices = cfg
            .devices
            .iter()
            .map(|name| sysfs::device_by_name(name))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if !devices.is_empty() {
            offsets.flags |= FLAG_FILTER;
        }
        system::ensure_pin_dir(&cfg.pin_dir)?;
        clear_stale_pins(&cfg.pin_dir)?;

        let l = &cfg.limits;
        let mut ebpf = EbpfLoader::new()
            .override_global(OFFSETS_GLOBAL, &offsets, true)
            .map_max_entries(names::INFLIGHT, l.inflight_entries)
            .map_max_entries(names::HIST, l.hist_entries)
            .map_max_entries(names::DEV_FILTER, l.filter_entries)
            .load(OBJECT)
            .map_err(|e| LoaderError::ebpf("loading the eBPF object", e))?;

        if !devices.is_empty() {
            let map = ebpf.map_mut(names::DEV_FILTER).ok_or_else(|| {
                LoaderError::object(format!("the eBPF object has no map {}", names::DEV_FILTER))
            })?;
            let mut filter: HashMap<_, u32, u8> =
                HashMap::try_from(map).map_err(|e| LoaderError::map(names::DEV_FILTER, e))?;
            for d in &devices {
                filter
                    .insert(d.kernel_dev(), 1, 0)
                    .map_err(|e| LoaderError::map(names::DEV_FILTER, e))?;
            }
        }

        for tp in TRACEPOINTS {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(tp)
                .ok_or_else(|| LoaderError::object(format!("the eBPF object has no program {tp}")))?
                .try_into()
                .map_err(|e| LoaderError::ebpf(format!("program {tp}"), e))?;
            prog.load()
                .map_err(|e| LoaderError::ebpf(format!("loading program {tp}"), e))?;
            prog.attach(tp)
                .map_err(|e| LoaderError::ebpf(format!("attaching to raw tracepoint {tp}"), e))?;
        }

        // Pin, then take the maps out of the object (the programs keep
        // their own references).
        for name in names::PINNED {
            let map = ebpf
                .map(name)
                .ok_or_else(|| LoaderError::object(format!("the eBPF object has no map {name}")))?;
            map.pin(cfg.pin_dir.join(name)).map_err(|e| {
                LoaderError::ebpf(
                    format!("pinning map {name} in {}", cfg.pin_dir.display()),
                    e,
                )
            })?;
        }
        let maps = match MapSet::from_maps(|n| ebpf.take_map(n)) {
            Ok(m) => m,
            Err(e) => {
                remove_pins(&cfg.pin_dir);
                return Err(e);
            }
        };
        let mut probes = Probes {
            maps,
            _ebpf: ebpf,
            pin_dir: cfg.pin_dir.clone(),
            offsets,
            devices,
        };
        // A first heartbeat right away, so readers see a live loader.
        probes.heartbeat(Duration::ZERO, Duration::ZERO)?;
        tracing::info!(
            pin_dir = %probes.pin_dir.display(),
            object_bytes = OBJECT.len(),
            ?offsets,
            "block probes attached"
        );
        Ok(probes)
    }

    /// The maps.
    pub fn maps(&self) -> &MapSet {
        &self.maps
    }

    /// Offsets in use.
    pub fn offsets(&self) -> Offsets {
        self.offsets
    }

    /// The traced devices (empty: all).
    pub fn devices(&self) -> &[BlockDevice] {
        &self.devices
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Records a completed scan in `LOADER_STATE`.
    pub fn heartbeat(&mut self, scan_interval: Duration, threshold: Duration) -> Result<()> {
        self.maps.set_loader_state(probes_ebpf_common::LoaderState {
            heartbeat_ns: system::monotonic_ns(),
            scan_interval_ns: scan_interval.as_nanos() as u64,
            stall_threshold_ns: threshold.as_nanos() as u64,
            pid: std::process::id(),
            abi_version: ABI_VERSION,
        })
    }

    /// Detaches (by dropping the object) and removes the pins.
    pub fn detach(self) {
        drop(self);
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        remove_pins(&self.pin_dir);
        // `ebpf` drops after this, detaching the programs.
        tracing::info!(pin_dir = %self.pin_dir.display(), "block probes detached, pins removed");
    }
}

/// Whether a loader state describes a loader that is still running.
pub fn is_live(state: &probes_ebpf_common::LoaderState, now_ns: u64) -> bool {
    let window =
        Duration::from_nanos(state.scan_interval_ns.saturating_mul(LIVE_INTERVALS)).max(MIN_LIVE);
    let age = Duration::from_nanos(now_ns.saturating_sub(state.heartbeat_ns));
    age <= window && system::pid_alive(state.pid)
}

/// Refuses to start next to a live loader; removes pins a dead one left.
fn clear_stale_pins(dir: &Path) -> Result<()> {
    if dir.join(names::LOADER_STATE).exists() {
        if let Ok(maps) = MapSet::from_pins(dir) {
            if let Ok(state) = maps.loader_state() {
                if state.pid != std::process::id() && is_live(&state, system::monotonic_ns()) {
                    return Err(LoaderError::AlreadyRunning {
                        pid: state.pid,
                        dir: dir.to_path_buf(),
                    });
                }
            }
        }
        tracing::warn!(dir = %dir.display(), "removing pins left by a loader that is gone");
    }
    remove_pin_files(dir);
    Ok(())
}

/// Removes our pins and the directory if that leaves it empty.
fn remove_pins(dir: &Path) {
    remove_pin_files(dir);
    // Fails harmlessly if someone else keeps files there.
    let _ = fs::remove_dir(dir);
}

/// Removes our pin files.
fn remove_pin_files(dir: &Path) {
    for name in names::PINNED {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "removing pin"),
        }
    }
}
