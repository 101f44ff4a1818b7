//! Capabilities, bpffs, and the monotonic clock the probes use.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{LoaderError, Result, PRIVILEGE_HINT};

/// `CAP_SYS_ADMIN`.
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON` (Linux 5.8+).
pub const CAP_PERFMON: u32 = 38;
/// `CAP_BPF` (Linux 5.8+).
pub const CAP_BPF: u32 = 39;

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The effective capability set of this process (`None` if unreadable).
pub fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

/// Fails with [`LoaderError::Privilege`] unless the process can load and
/// attach tracing programs: `CAP_BPF` + `CAP_PERFMON`, or `CAP_SYS_ADMIN`.
pub fn require_bpf_caps() -> Result<()> {
    let Some(caps) = effective_caps() else {
        // Cannot tell: let the bpf() calls report it (EPERM is mapped to
        // the same error).
        return Ok(());
    };
    if has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(c, _)| !has(caps, *c))
        .map(|(_, n)| n)
        .collect();
    Err(LoaderError::Privilege {
        missing: format!("{} (or CAP_SYS_ADMIN)", missing.join(" and ")),
        hint: PRIVILEGE_HINT,
    })
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Makes sure `pin_dir` exists on a bpffs. If its nearest existing ancestor
/// is `/sys/fs/bpf` (or another directory) without bpffs mounted there,
/// mounts bpffs on `/sys/fs/bpf` first (needs `CAP_SYS_ADMIN`).
///
/// Returns the directories it created, outermost first, so a start that
/// fails later can remove exactly those ([`CreatedDirs`]).
pub fn ensure_pin_dir(pin_dir: &Path) -> Result<CreatedDirs> {
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        if !root.is_dir() {
            return Err(LoaderError::Bpffs(format!(
                "{} does not exist (is sysfs mounted?)",
                root.display()
            )));
        }
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .map_err(|e| match e {
            nix::Error::EPERM => LoaderError::Privilege {
                missing:
                    "CAP_SYS_ADMIN (bpffs is not mounted on /sys/fs/bpf and mounting it needs it)"
                        .into(),
                hint: PRIVILEGE_HINT,
            },
            e => LoaderError::Bpffs(format!("mounting bpffs on {}: {e}", root.display())),
        })?;
        tracing::info!(path = %root.display(), "mounted bpffs");
    }
    let missing: Vec<&Path> = pin_dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    let mut created = CreatedDirs(Vec::new());
    for dir in missing.into_iter().rev() {
        match fs::create_dir(dir) {
            Ok(()) => created.0.push(dir.to_path_buf()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(LoaderError::io(
                    format!("creating pin directory {}", dir.display()),
                    e,
                ))
            }
        }
    }
    if !is_bpffs(pin_dir) {
        return Err(LoaderError::Bpffs(format!(
            "{} is not on a bpffs; pass a --pin-dir under /sys/fs/bpf",
            pin_dir.display()
        )));
    }
    Ok(created)
}

/// Directories a start created. Dropped while armed (the start failed), it
/// removes them, innermost first, if they are empty; [`CreatedDirs::keep`]
/// disarms it once the loader owns the directory.
#[derive(Debug)]
#[must_use = "dropping it removes the directories"]
pub struct CreatedDirs(Vec<PathBuf>);

impl CreatedDirs {
    /// Keeps the directories (the start succeeded).
    pub fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for CreatedDirs {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            // Fails harmlessly if someone put something there meanwhile.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (the reader's clock, re-exported).
pub use probes_ebpf_reader::monotonic_ns;
