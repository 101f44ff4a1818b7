//! Temporary directories for fixtures.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{io_context, Result};
use crate::mounts;

/// A temporary directory (under `$TMPDIR`, usually `/tmp`) with `backing/` and `mnt/`
/// subdirectories, removed on drop.
///
/// Before removing anything, drop lazily detaches every mount still below it, so removal
/// never walks into a mounted (possibly hung) file system.
#[derive(Debug)]
pub struct ScratchDir {
    root: PathBuf,
}

impl ScratchDir {
    /// Creates a fresh directory with empty `backing/` and `mnt/` subdirectories.
    pub fn new() -> Result<ScratchDir> {
        let dir = tempfile::Builder::new()
            .prefix("disk-io-harness-")
            .tempdir()
            .map_err(|e| io_context("creating a scratch directory", e))?;
        // Canonical, so it compares equal to the paths in /proc/self/mountinfo.
        let root = dir
            .keep()
            .canonicalize()
            .map_err(|e| io_context("canonicalizing the scratch directory", e))?;
        let scratch = ScratchDir { root };
        scratch.subdir("backing")?;
        scratch.subdir("mnt")?;
        Ok(scratch)
    }

    /// The scratch directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `backing/`: the directory a [`FaultFs`](crate::FaultFs) mirrors.
    pub fn backing(&self) -> PathBuf {
        self.root.join("backing")
    }

    /// `mnt/`: the mount point for a [`FaultFs`](crate::FaultFs).
    pub fn mnt(&self) -> PathBuf {
        self.root.join("mnt")
    }

    /// Creates (if needed) and returns the subdirectory `name`, e.g. a mount point for an
    /// [`Ext4OnLoop`](crate::Ext4OnLoop).
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir).map_err(|e| io_context(format!("mkdir {}", dir.display()), e))?;
        Ok(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        mounts::detach_below(&self.root);
        if let Err(e) = fs::remove_dir_all(&self.root) {
            tracing::warn!(path = %self.root.display(), error = %e, "removing scratch directory");
        }
    }
}
