//! A reader's view of a pin directory: the maps opened from it, checked
//! against the one liveness rule.

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use probes_ebpf_common::{maps as names, LoaderState, ABI_VERSION};

use crate::error::ReaderError;
use crate::liveness::{judge, Liveness, LivenessConfig};
use crate::lock::owner_present;
use crate::maps::MapSet;

/// Maps opened from a pin directory by a reader.
#[derive(Debug)]
pub struct PinnedMaps {
    dir: PathBuf,
    maps: MapSet,
    state_id: u32,
}

/// What [`PinnedMaps::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    /// The heartbeat record.
    pub state: LoaderState,
    /// The verdict of the liveness rule.
    pub liveness: Liveness,
}

impl PinnedMaps {
    /// Opens the pins under `dir` ([`ReaderError::NotRunning`] when no
    /// loader pinned there).
    pub fn open(dir: &Path) -> Result<PinnedMaps, ReaderError> {
        let maps = MapSet::from_pins(dir)?;
        let state_id = maps.state_id()?;
        Ok(PinnedMaps {
            dir: dir.to_path_buf(),
            maps,
            state_id,
        })
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The opened maps.
    pub fn maps(&self) -> &MapSet {
        &self.maps
    }

    /// Reads the heartbeat record and applies the liveness rule at `now_ns`
    /// (`CLOCK_MONOTONIC`, see [`crate::monotonic_ns`]): the layout version
    /// must match ([`ReaderError::AbiMismatch`]); the pins must still hold
    /// the maps opened ([`Liveness::Replaced`] otherwise); then [`judge`]
    /// with the directory's owner lock.
    pub fn check(&self, now_ns: u64, cfg: &LivenessConfig) -> Result<Check, ReaderError> {
        let state = self.maps.loader_state()?;
        if state.abi_version != ABI_VERSION {
            return Err(ReaderError::AbiMismatch {
                dir: self.dir.clone(),
                found: state.abi_version,
                expected: ABI_VERSION,
            });
        }
        let pin = self.dir.join(names::LOADER_STATE);
        match MapInfo::from_pin(&pin) {
            Ok(info) if info.id() == self.state_id => {}
            Ok(_) => {
                return Ok(Check {
                    state,
                    liveness: Liveness::Replaced,
                })
            }
            // Unpinned: the loader exited (its pins go with it).
            Err(_) if !pin.exists() => {
                return Ok(Check {
                    state,
                    liveness: Liveness::Dead,
                })
            }
            Err(source) => {
                return Err(ReaderError::Map {
                    map: names::LOADER_STATE,
                    source,
                })
            }
        }
        let owned = match owner_present(&self.dir) {
            Ok(owned) => owned,
            // The directory went away: nobody owns these maps.
            Err(ReaderError::PinDir { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                false
            }
            Err(e) => return Err(e),
        };
        Ok(Check {
            state,
            liveness: judge(&state, owned, now_ns, cfg),
        })
    }
}
