//! Caller paths, validated before any I/O with the rules `LocalDisk`
//! applies.
//!
//! `disk-io`'s own validation (`local/paths.rs`: `VolName`, `ObjPath`,
//! `DirPath`) is private to that crate, and `disk-io-api` has none (it does
//! no I/O and knows no paths). What is public is `disk-io-driver`'s
//! [`Name`] (one plain component: not empty, not `.`/`..`, no `/` or NUL,
//! at most [`NAME_MAX`] bytes) and the API's [`PathRule`]. This module is
//! built on those: `Name` decides what a component is, and the checks
//! before it only pick which `PathRule` a rejected path reports, in the
//! order `LocalDisk` reports them. `tests/ops.rs` runs the same bad paths
//! through both disks and requires identical errors, so a change to
//! `LocalDisk`'s rules shows up there.

use disk_io_api::{DiskError, PathRule};
use disk_io_driver::{Name, NAME_MAX};

/// The directory on every disk that holds the format file, temporary files
/// and the trash (`LocalDisk`'s layout). Callers can never name it: volume
/// names may not start with a dot.
pub(crate) const SYSTEM_DIR: &str = ".disk-io";
/// The format file, inside [`SYSTEM_DIR`].
pub(crate) const FORMAT_FILE: &str = "format.json";
/// Temporary files of atomic writes, inside [`SYSTEM_DIR`].
pub(crate) const TMP_DIR: &str = "tmp";
/// Trees waiting to be purged, inside [`SYSTEM_DIR`].
pub(crate) const TRASH_DIR: &str = "trash";
/// Longest object path accepted (Linux PATH_MAX less room for the volume),
/// as `LocalDisk`.
const MAX_PATH: usize = 3072;

fn invalid<T>(path: &str, rule: PathRule) -> Result<T, DiskError> {
    Err(DiskError::InvalidPath {
        path: path.to_string(),
        rule,
    })
}

/// A volume name: one component, not starting with a dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VolName {
    name: Name,
}

impl VolName {
    pub(crate) fn new(vol: &str) -> Result<VolName, DiskError> {
        if vol.is_empty() {
            return invalid(vol, PathRule::Empty);
        }
        if vol.contains('/') {
            return invalid(vol, PathRule::VolumeHasSlash);
        }
        if vol.starts_with('.') {
            return invalid(vol, PathRule::VolumeStartsWithDot);
        }
        if vol.contains('\0') {
            return invalid(vol, PathRule::Nul);
        }
        if vol.len() > NAME_MAX {
            return invalid(vol, PathRule::ComponentTooLong);
        }
        match Name::new(vol) {
            Some(name) => Ok(VolName { name }),
            None => invalid(vol, PathRule::Empty),
        }
    }

    pub(crate) fn name(&self) -> &Name {
        &self.name
    }

    pub(crate) fn as_str(&self) -> &str {
        self.name.as_str()
    }
}

/// `vol/path`: a volume and at least one component below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ObjPath {
    vol: VolName,
    comps: Vec<Name>,
    text: String,
}

impl ObjPath {
    pub(crate) fn new(vol: &str, path: &str) -> Result<ObjPath, DiskError> {
        let vol = VolName::new(vol)?;
        if path.is_empty() {
            return invalid(path, PathRule::Empty);
        }
        if path.len() > MAX_PATH {
            return invalid(path, PathRule::TooLong);
        }
        if path.starts_with('/') {
            return invalid(path, PathRule::Absolute);
        }
        if path.contains('\0') {
            return invalid(path, PathRule::Nul);
        }
        let mut comps = Vec::new();
        for comp in path.split('/') {
            match comp {
                "" => return invalid(path, PathRule::EmptyComponent),
                "." | ".." => return invalid(path, PathRule::DotComponent),
                c if c.len() > NAME_MAX => return invalid(path, PathRule::ComponentTooLong),
                c => match Name::new(c) {
                    Some(n) => comps.push(n),
                    None => return invalid(path, PathRule::EmptyComponent),
                },
            }
        }
        let text = format!("{}/{path}", vol.as_str());
        Ok(ObjPath { vol, comps, text })
    }

    pub(crate) fn vol(&self) -> &VolName {
        &self.vol
    }

    /// `vol/path`, opened beneath the root.
    pub(crate) fn rel(&self) -> &str {
        &self.text
    }

    /// The parent directory beneath the root (at least the volume).
    pub(crate) fn parent(&self) -> &str {
        // `text` is `vol/…` with at least one component after the volume.
        let cut = self.text.rfind('/').unwrap_or(self.text.len());
        &self.text[..cut]
    }

    /// The directories between the volume and the target, outermost first.
    pub(crate) fn dirs(&self) -> &[Name] {
        &self.comps[..self.comps.len().saturating_sub(1)]
    }

    /// The target's own name in its parent.
    pub(crate) fn name(&self) -> &Name {
        // `new` refuses an empty path, so there is at least one component.
        self.comps.last().unwrap_or(self.vol.name())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }
}

/// A directory to list: a volume, or a directory below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DirPath {
    Vol(VolName),
    Sub(ObjPath),
}

impl DirPath {
    /// `dir` may be empty (the volume itself) or end in `/`.
    pub(crate) fn new(vol: &str, dir: &str) -> Result<DirPath, DiskError> {
        let dir = dir.strip_suffix('/').unwrap_or(dir);
        if dir.is_empty() {
            VolName::new(vol).map(DirPath::Vol)
        } else {
            ObjPath::new(vol, dir).map(DirPath::Sub)
        }
    }

    pub(crate) fn vol(&self) -> &VolName {
        match self {
            DirPath::Vol(v) => v,
            DirPath::Sub(p) => p.vol(),
        }
    }

    pub(crate) fn rel(&self) -> &str {
        match self {
            DirPath::Vol(v) => v.as_str(),
            DirPath::Sub(p) => p.rel(),
        }
    }
}

/// A name the crate itself makes (system directory entries, uuids).
pub(crate) fn system_name(s: &str) -> Result<Name, DiskError> {
    Name::new(s).ok_or_else(|| DiskError::InvalidPath {
        path: s.to_string(),
        rule: PathRule::EmptyComponent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_ordinary_paths() {
        let p = ObjPath::new("bucket", "a/b/c.bin").expect("valid");
        assert_eq!(p.rel(), "bucket/a/b/c.bin");
        assert_eq!(p.parent(), "bucket/a/b");
        assert_eq!(p.name().as_str(), "c.bin");
        let dirs: Vec<_> = p.dirs().iter().map(|n| n.as_str()).collect();
        assert_eq!(dirs, ["a", "b"]);
        let top = ObjPath::new("v", "x").expect("valid");
        assert_eq!(top.parent(), "v");
        assert!(top.dirs().is_empty());
    }

    #[test]
    fn rejects_with_the_rule_named() {
        let cases = [
            ("../etc/passwd", PathRule::DotComponent),
            ("/etc/passwd", PathRule::Absolute),
            ("a//b", PathRule::EmptyComponent),
            ("a/", PathRule::EmptyComponent),
            ("", PathRule::Empty),
            ("a\0b", PathRule::Nul),
        ];
        for (p, rule) in cases {
            match ObjPath::new("vol", p) {
                Err(DiskError::InvalidPath { rule: r, .. }) => assert_eq!(r, rule, "{p:?}"),
                other => panic!("{p:?}: {other:?}"),
            }
        }
        for v in ["", "..", ".disk-io", "a/b", ".", "x\0"] {
            assert!(VolName::new(v).is_err(), "{v:?}");
        }
        assert!(matches!(DirPath::new("v", ""), Ok(DirPath::Vol(_))));
        assert_eq!(DirPath::new("v", "d/").expect("valid").rel(), "v/d");
    }
}
