//! The reader's error type.

use std::io;
use std::path::PathBuf;

/// What can go wrong reading the probes' maps or owning their pin
/// directory. Messages are meant for an operator.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// No loader has pinned maps in this directory.
    #[error(
        "no running probe loader: {dir}/{map} not found (start one with `probe-loader run`, \
         or pass the --pin-dir it uses)"
    )]
    NotRunning {
        /// The pin directory.
        dir: PathBuf,
        /// The map that is missing.
        map: &'static str,
    },
    /// The loaded eBPF object has no map of this name (a build mismatch).
    #[error("the eBPF object has no map {map}")]
    MissingMap {
        /// The map.
        map: &'static str,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// The map.
        map: &'static str,
        /// The aya error.
        #[source]
        source: aya::maps::MapError,
    },
    /// The pinned maps were written by a loader with another map layout.
    #[error("the maps in {dir} have layout version {found}, this build reads version {expected}")]
    AbiMismatch {
        /// The pin directory.
        dir: PathBuf,
        /// Version found in the pinned state.
        found: u32,
        /// This build's version.
        expected: u32,
    },
    /// Another process holds the pin directory's ownership lock.
    #[error(
        "pin directory {dir} is owned by another process (its lock was not free within {waited:?})"
    )]
    Owned {
        /// The pin directory.
        dir: PathBuf,
        /// How long acquisition was retried.
        waited: std::time::Duration,
    },
    /// The pin directory could not be opened, locked or changed.
    #[error("pin directory {dir}: {what}: {source}")]
    PinDir {
        /// The pin directory.
        dir: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl ReaderError {
    /// Whether the kernel refused for lack of privilege (`EPERM`/`EACCES`
    /// anywhere in the source chain): lockdown, missing capabilities, an
    /// LSM.
    pub fn is_permission_denied(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                if matches!(
                    io.raw_os_error(),
                    Some(nix::libc::EPERM | nix::libc::EACCES)
                ) {
                    return true;
                }
            }
            cur = e.source();
        }
        false
    }
}
