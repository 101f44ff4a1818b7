//! Block devices as sysfs names them: device numbers ↔ names, and the whole
//! disk behind a directory (`stat` → `st_dev` → `/sys/dev/block/MAJ:MIN` →
//! the parent disk when that is a partition).
//!
//! The probes key everything by whole disk (`struct gendisk`), so every
//! lookup here ends at the whole disk: `sda1` answers as `sda`. Loop devices
//! are whole disks.

use std::format;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};

/// Where sysfs is mounted.
const SYS: &str = "/sys";

/// What can go wrong finding a block device.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// `stat` of the path failed.
    #[error("cannot stat {path}: {source}")]
    Stat {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The path's file system is not on a block device (tmpfs, FUSE, NFS,
    /// overlay, btrfs subvolumes: their `st_dev` is an anonymous device).
    #[error(
        "{path} is on device {major}:{minor}, which is not a block device \
         (no /sys/dev/block/{major}:{minor}); the block-request probes cannot watch it"
    )]
    NotBlockDevice {
        /// The path.
        path: PathBuf,
        /// `st_dev` major.
        major: u32,
        /// `st_dev` minor.
        minor: u32,
    },
    /// No block device has this name.
    #[error("unknown block device `{name}`: {} does not exist", class_block(name).display())]
    UnknownName {
        /// The name asked for.
        name: String,
    },
    /// No block device has this number.
    #[error("unknown block device {major}:{minor}: /sys/dev/block/{major}:{minor} does not exist")]
    UnknownNumber {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A sysfs file could not be read or parsed.
    #[error("reading {path}: {reason}")]
    Sysfs {
        /// The sysfs file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A whole-disk block device.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockDevice {
    /// Kernel name (`loop3`, `sda`, `nvme0n1`).
    pub name: String,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl BlockDevice {
    /// The device number in the kernel encoding the probes use.
    pub fn kernel_dev(&self) -> u32 {
        crate::dev::make(self.major, self.minor)
    }
}

fn class_block(name: &str) -> PathBuf {
    Path::new(SYS).join("class/block").join(name)
}

/// Major number of a glibc `dev_t` (as in `st_dev`).
pub fn user_major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}

/// Minor number of a glibc `dev_t` (as in `st_dev`).
pub fn user_minor(dev: u64) -> u32 {
    ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32
}

fn parse_dev_file(path: &Path) -> Result<(u32, u32), SysfsError> {
    let bad = |reason: String| SysfsError::Sysfs {
        path: path.to_path_buf(),
        reason,
    };
    let text = fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let (ma, mi) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| bad(format!("expected MAJ:MIN, found {:?}", text.trim())))?;
    let parse = |s: &str| {
        s.parse::<u32>()
            .map_err(|e| bad(format!("bad number {s:?}: {e}")))
    };
    Ok((parse(ma)?, parse(mi)?))
}

/// The whole disk of the sysfs device directory `dir` (a disk or a
/// partition directory, symlinks allowed).
fn whole_disk_of_dir(dir: &Path) -> Result<BlockDevice, SysfsError> {
    let real = fs::canonicalize(dir).map_err(|e| SysfsError::Sysfs {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    // A partition's directory sits inside its disk's and has a `partition`
    // attribute.
    let disk_dir = if real.join("partition").exists() {
        real.parent().map(Path::to_path_buf).unwrap_or(real)
    } else {
        real
    };
    let (major, minor) = parse_dev_file(&disk_dir.join("dev"))?;
    let name = disk_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| SysfsError::Sysfs {
            path: disk_dir.clone(),
            reason: "no device name".into(),
        })?;
    Ok(BlockDevice { name, major, minor })
}

/// The whole disk for device `major:minor` (a partition answers with its
/// disk).
pub fn whole_disk(major: u32, minor: u32) -> Result<BlockDevice, SysfsError> {
    let dir = Path::new(SYS)
        .join("dev/block")
        .join(format!("{major}:{minor}"));
    if !dir.exists() {
        return Err(SysfsError::UnknownNumber { major, minor });
    }
    whole_disk_of_dir(&dir)
}

/// The whole disk named `name` (`sda1` answers with `sda`).
pub fn device_by_name(name: &str) -> Result<BlockDevice, SysfsError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(SysfsError::UnknownName { name: name.into() });
    }
    let dir = class_block(name);
    if !dir.exists() {
        return Err(SysfsError::UnknownName { name: name.into() });
    }
    whole_disk_of_dir(&dir)
}

/// Name of the block device `major:minor` (itself, not its disk), or `None`
/// when sysfs does not know it (removed since).
pub fn device_name(major: u32, minor: u32) -> Option<String> {
    let dir = Path::new(SYS)
        .join("dev/block")
        .join(format!("{major}:{minor}"));
    let real = fs::canonicalize(dir).ok()?;
    real.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// The whole disk holding the file system `path` lives on: `stat(path)` →
/// `st_dev` → `/sys/dev/block/MAJ:MIN` → its disk if it is a partition.
///
/// `stat` may block on a hung file system; callers that must not block run
/// this with a bound.
pub fn disk_of_path(path: &Path) -> Result<BlockDevice, SysfsError> {
    let md = fs::metadata(path).map_err(|source| SysfsError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    let (major, minor) = (user_major(md.dev()), user_minor(md.dev()));
    match whole_disk(major, minor) {
        Err(SysfsError::UnknownNumber { .. }) => Err(SysfsError::NotBlockDevice {
            path: path.to_path_buf(),
            major,
            minor,
        }),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_dev_t_decoding() {
        // makedev(7, 3) and makedev(259, 0x12345) as glibc encodes them.
        let enc = |ma: u64, mi: u64| {
            ((ma & 0xfff) << 8) | ((ma & !0xfff) << 32) | (mi & 0xff) | ((mi & !0xff) << 12)
        };
        assert_eq!(user_major(enc(7, 3)), 7);
        assert_eq!(user_minor(enc(7, 3)), 3);
        assert_eq!(user_major(enc(259, 0x12345)), 259);
        assert_eq!(user_minor(enc(259, 0x12345)), 0x12345);
    }

    #[test]
    fn unknown_names_are_errors() {
        for name in ["", "..", "a/b", "no-such-disk-xyz"] {
            assert!(matches!(
                device_by_name(name),
                Err(SysfsError::UnknownName { .. })
            ));
        }
        assert!(matches!(
            whole_disk(4095, 1_000_000),
            Err(SysfsError::UnknownNumber { .. })
        ));
    }

    #[test]
    fn tmpfs_is_not_a_block_device() {
        // /dev is devtmpfs: anonymous device, major 0.
        match disk_of_path(Path::new("/dev")) {
            Err(SysfsError::NotBlockDevice { major: 0, .. }) => {}
            other => panic!("expected NotBlockDevice, got {other:?}"),
        }
    }
}
