//! Reading `/proc/self/mountinfo` and detaching mounts, without touching the mounted file
//! systems themselves (a `stat` of a hung FUSE mount point would block).

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::mount::MntFlags;

use crate::error::{io_context, Result};

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Major number of the mounted device (0 for FUSE and other anonymous devices).
    pub major: u32,
    /// Minor number of the mounted device.
    pub minor: u32,
    /// File system type, e.g. `fuse` or `ext4`.
    pub fs_type: String,
    /// Mount source, e.g. `faultfs` or `/dev/loop3`.
    pub source: String,
}

/// Undoes the octal escapes (`\040` for a space, ...) mountinfo uses in paths.
fn unescape(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let fields: Vec<&str> = left.split(' ').collect();
    let (major, minor) = fields.get(2)?.split_once(':')?;
    let mut right = right.split(' ');
    Some(MountEntry {
        mount_point: PathBuf::from(unescape(fields.get(4)?)),
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        fs_type: right.next()?.to_owned(),
        source: unescape(right.next()?).to_string_lossy().into_owned(),
    })
}

/// All mounts visible to this process, in mount order.
pub fn mounts() -> Result<Vec<MountEntry>> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| io_context("reading /proc/self/mountinfo", e))?;
    Ok(text.lines().filter_map(parse_line).collect())
}

/// The topmost mount at exactly `path`, if any.
pub fn mount_at(path: &Path) -> Result<Option<MountEntry>> {
    Ok(mounts()?.into_iter().rev().find(|m| m.mount_point == path))
}

/// Whether something is mounted at exactly `path`.
pub fn is_mounted(path: &Path) -> Result<bool> {
    Ok(mount_at(path)?.is_some())
}

/// Lazily detaches every mount at or below `root`, deepest first. Best effort: used by
/// cleanup paths that must not fail or block.
pub(crate) fn detach_below(root: &Path) {
    let Ok(all) = mounts() else {
        return;
    };
    let mut below: Vec<PathBuf> = all
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(root))
        .collect();
    below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for path in below {
        if let Err(e) = nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %path.display(), error = %e, "lazy unmount failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let line = "36 35 0:52 / /tmp/a\\040b rw,nosuid - fuse faultfs rw,user_id=0";
        let entry = parse_line(line).expect("parse");
        assert_eq!(entry.mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!((entry.major, entry.minor), (0, 52));
        assert_eq!(entry.fs_type, "fuse");
        assert_eq!(entry.source, "faultfs");
    }
}
