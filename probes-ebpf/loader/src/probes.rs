//! Loading the eBPF object, attaching its three raw tracepoints and pinning
//! its maps.

use std::path::Path;
use std::time::Duration;

use aya::maps::HashMap;
use aya::programs::RawTracePoint;
use aya::{Ebpf, EbpfLoader};
use probes_ebpf_common::sysfs::{self, BlockDevice};
use probes_ebpf_common::{maps as names, Offsets, ABI_VERSION, FLAG_FILTER, OFFSETS_GLOBAL};
use probes_ebpf_reader::{MapSet, PinDirLock, ReaderError};

use crate::btf::Btf;
use crate::config::ProbeConfig;
use crate::error::{LoaderError, Result};
use crate::system;

/// The eBPF object, built from `probes-ebpf/kernel` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probes.bpf.o"));

/// The tracepoints, and the program attached to each (same names).
pub const TRACEPOINTS: [&str; 3] = ["block_rq_issue", "block_rq_complete", "block_rq_requeue"];

/// Size of the eBPF object compiled into this binary.
pub fn object_len() -> usize {
    OBJECT.len()
}

/// Loaded and attached probes. Dropping this removes this loader's pins
/// (only those: each is checked to still hold this loader's map), then
/// detaches the programs and releases the pin directory.
#[derive(Debug)]
pub struct Probes {
    // Field order: the maps close before the object. The object is never
    // read again, but owns the programs' links: dropping it detaches them.
    // The lock goes last: the directory is ours until everything is gone.
    maps: MapSet,
    _ebpf: Ebpf,
    lock: PinDirLock,
    pinned: Vec<(&'static str, u32)>,
    offsets: Offsets,
    devices: Vec<BlockDevice>,
}

impl Probes {
    /// Checks the configuration and privileges, derives offsets from the
    /// BTF, resolves the device filter — all before anything is created —
    /// then takes the pin directory's ownership lock (refused while another
    /// loader, even a paused one, holds it), removes a dead loader's pins,
    /// loads and attaches the programs and pins the maps. A failure after
    /// the directory was created removes it again.
    pub fn attach(cfg: &ProbeConfig) -> Result<Probes> {
        cfg.validate()?;
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
        // Everything that can be refused without touching bpffs has been;
        // from here on a failure removes what this start created.
        let created = system::ensure_pin_dir(&cfg.pin_dir)?;
        let lock = take_pin_dir(&cfg.pin_dir, cfg)?;
        clear_leftovers(&lock);

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

        // Pin through the locked directory, then take the maps out of the
        // object (the programs keep their own references).
        if let Err(e) = pin_all(&ebpf, &lock) {
            remove_leftovers(&lock);
            return Err(e);
        }
        let maps = match MapSet::from_maps(|n| ebpf.take_map(n)).and_then(|m| {
            let ids = m.ids()?;
            Ok((m, ids))
        }) {
            Ok(m) => m,
            Err(e) => {
                remove_leftovers(&lock);
                return Err(e.into());
            }
        };
        let (maps, ids) = maps;
        let mut probes = Probes {
            maps,
            _ebpf: ebpf,
            lock,
            pinned: ids.to_vec(),
            offsets,
            devices,
        };
        // A first heartbeat right away, so readers see a live loader.
        probes.heartbeat(Duration::ZERO, Duration::ZERO)?;
        created.keep();
        tracing::info!(
            pin_dir = %probes.pin_dir().display(),
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
        self.lock.dir()
    }

    /// Records a completed scan in `LOADER_STATE`.
    pub fn heartbeat(&mut self, scan_interval: Duration, threshold: Duration) -> Result<()> {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.maps
            .set_loader_state(probes_ebpf_common::LoaderState {
                heartbeat_ns: system::monotonic_ns(),
                scan_interval_ns: ns(scan_interval),
                stall_threshold_ns: ns(threshold),
                pid: std::process::id(),
                abi_version: ABI_VERSION,
            })
            .map_err(LoaderError::from)
    }

    /// Detaches (by dropping the object) and removes the pins.
    pub fn detach(self) {
        drop(self);
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        let dir = self.lock.dir().display().to_string();
        for &(name, id) in &self.pinned {
            match self.lock.remove_own(name, id) {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    pin_dir = %dir,
                    map = name,
                    "pin no longer holds this loader's map; left alone"
                ),
                Err(e) => tracing::warn!(pin_dir = %dir, map = name, error = %e, "removing pin"),
            }
        }
        if let Err(e) = self.lock.remove_dir() {
            tracing::debug!(pin_dir = %dir, error = %e, "pin directory kept");
        }
        // `ebpf` drops after this, detaching the programs; the lock last.
        tracing::info!(pin_dir = %dir, "block probes detached, pins removed");
    }
}

/// Takes the pin directory's ownership lock; a held lock means another
/// loader (alive, maybe paused) owns the directory.
fn take_pin_dir(dir: &Path, cfg: &ProbeConfig) -> Result<PinDirLock> {
    match PinDirLock::acquire(dir, &cfg.lock) {
        Ok(lock) => Ok(lock),
        Err(ReaderError::Owned { .. }) => Err(already_running(dir)),
        Err(e) => Err(e.into()),
    }
}

/// What is known of the loader that owns `dir`, from its heartbeat record.
fn already_running(dir: &Path) -> LoaderError {
    let state = MapSet::from_pins(dir).and_then(|m| m.loader_state()).ok();
    let owner = state.map_or_else(|| "pid unknown".to_owned(), |s| format!("pid {}", s.pid));
    let note = state
        .map(|s| {
            let cfg = probes_ebpf_reader::LivenessConfig::default();
            let age = Duration::from_nanos(system::monotonic_ns().saturating_sub(s.heartbeat_ns));
            if age > cfg.window(s.scan_interval_ns) {
                format!(
                    " (its last heartbeat is {:.1} s old: it is paused or hung, and keeps the \
                     directory until it exits)",
                    age.as_secs_f64()
                )
            } else {
                String::new()
            }
        })
        .unwrap_or_default();
    LoaderError::AlreadyRunning {
        owner,
        dir: dir.to_path_buf(),
        note,
    }
}

fn pin_all(ebpf: &Ebpf, lock: &PinDirLock) -> Result<()> {
    for name in names::PINNED {
        let map = ebpf
            .map(name)
            .ok_or_else(|| LoaderError::object(format!("the eBPF object has no map {name}")))?;
        map.pin(lock.pin_path(name)).map_err(|e| {
            LoaderError::ebpf(format!("pinning map {name} in {}", lock.dir().display()), e)
        })?;
    }
    Ok(())
}

/// Pins found in a directory whose lock was free belong to a loader that
/// is gone: remove them.
fn clear_leftovers(lock: &PinDirLock) {
    if names::PINNED.iter().any(|n| lock.pinned_id(n).is_some()) {
        tracing::warn!(
            pin_dir = %lock.dir().display(),
            "removing pins left by a loader that is gone"
        );
    }
    remove_leftovers(lock);
}

fn remove_leftovers(lock: &PinDirLock) {
    for name in names::PINNED {
        if let Err(e) = lock.remove_leftover(name) {
            tracing::warn!(pin_dir = %lock.dir().display(), map = name, error = %e, "removing pin");
        }
    }
}
