//! Caller paths: validated, then split into what the driver resolves
//! safely.
//!
//! Two layers keep every operation beneath the disk root:
//! 1. lexical rules here (no `..`, no absolute paths, no empty or `.`
//!    components, no NUL, bounded lengths, volume names that cannot name
//!    the system directory) reject escapes before any I/O;
//! 2. the driver resolves what is left with `RESOLVE_BENEATH |
//!    RESOLVE_NO_SYMLINKS` for opens and takes a single [`Name`] for every
//!    name-based call (statx, mkdirat, unlinkat, renameat), relative to a
//!    parent directory opened that way. So a symlink planted anywhere on the
//!    disk (a volume, a component in the middle, the last one) stops the
//!    operation with [`PathRule::Symlink`]; nothing follows it.

use disk_io_api::{DiskError, PathRule};
use disk_io_driver::{Name, RelPath};

/// The directory on every disk that holds the format file, temporary files
/// and the trash. Callers can never name it: volume names may not start
/// with a dot.
pub(crate) const SYSTEM_DIR: &str = ".disk-io";
/// Longest path accepted (Linux PATH_MAX less room for the volume).
const MAX_PATH: usize = 3072;

/// A volume name, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VolName {
    name: Name,
}

impl VolName {
    /// One component, not starting with a dot (which keeps the system
    /// directory and hidden names out), at most 255 bytes, no NUL.
    pub(crate) fn new(vol: &str) -> Result<VolName, DiskError> {
        let bad = |rule| {
            Err(DiskError::InvalidPath {
                path: vol.to_string(),
                rule,
            })
        };
        if vol.is_empty() {
            return bad(PathRule::Empty);
        }
        if vol.contains('/') {
            return bad(PathRule::VolumeHasSlash);
        }
        if vol.starts_with('.') {
            return bad(PathRule::VolumeStartsWithDot);
        }
        if vol.contains('\0') {
            return bad(PathRule::Nul);
        }
        if vol.len() > disk_io_driver::NAME_MAX {
            return bad(PathRule::ComponentTooLong);
        }
        match Name::new(vol) {
            Some(name) => Ok(VolName { name }),
            None => bad(PathRule::Empty),
        }
    }

    /// The volume directory's name in the root.
    pub(crate) fn name(&self) -> &Name {
        &self.name
    }

    pub(crate) fn as_str(&self) -> &str {
        self.name.as_str()
    }
}

/// `vol/path`, validated: the volume and at least one component below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ObjPath {
    vol: VolName,
    /// Components below the volume, the last one being the target.
    comps: Vec<Name>,
    /// `vol/path` as given, for messages and opens.
    text: String,
}

impl ObjPath {
    /// Relative object paths: components separated by single `/`, none
    /// empty, `.` or `..`, no NUL, bounded length.
    pub(crate) fn new(vol: &str, path: &str) -> Result<ObjPath, DiskError> {
        let vol = VolName::new(vol)?;
        let bad = |rule| {
            Err(DiskError::InvalidPath {
                path: path.to_string(),
                rule,
            })
        };
        if path.is_empty() {
            return bad(PathRule::Empty);
        }
        if path.len() > MAX_PATH {
            return bad(PathRule::TooLong);
        }
        if path.starts_with('/') {
            return bad(PathRule::Absolute);
        }
        if path.contains('\0') {
            return bad(PathRule::Nul);
        }
        let mut comps = Vec::new();
        for comp in path.split('/') {
            match comp {
                "" => return bad(PathRule::EmptyComponent),
                "." | ".." => return bad(PathRule::DotComponent),
                c if c.len() > disk_io_driver::NAME_MAX => return bad(PathRule::ComponentTooLong),
                c => match Name::new(c) {
                    Some(n) => comps.push(n),
                    None => return bad(PathRule::EmptyComponent),
                },
            }
        }
        let text = format!("{}/{path}", vol.as_str());
        Ok(ObjPath { vol, comps, text })
    }

    pub(crate) fn vol(&self) -> &VolName {
        &self.vol
    }

    /// The whole path, for opening the target itself beneath the root.
    pub(crate) fn rel(&self) -> RelPath {
        RelPath::new(&self.text).unwrap_or_else(|| unreachable!("validated components"))
    }

    /// The target's parent directory, beneath the root (at least the
    /// volume).
    pub(crate) fn parent(&self) -> RelPath {
        let cut = self
            .text
            .rfind('/')
            .unwrap_or_else(|| unreachable!("vol/..."));
        RelPath::new(&self.text[..cut]).unwrap_or_else(|| unreachable!("validated components"))
    }

    /// The directories between the volume and the target, outermost first.
    pub(crate) fn dirs(&self) -> &[Name] {
        &self.comps[..self.comps.len() - 1]
    }

    /// The target's own name in its parent.
    pub(crate) fn name(&self) -> &Name {
        self.comps
            .last()
            .unwrap_or_else(|| unreachable!("at least one component"))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }
}

/// A directory to list: a volume itself, or a directory below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DirPath {
    /// The volume's root.
    Vol(VolName),
    /// A directory inside the volume.
    Sub(ObjPath),
}

impl DirPath {
    /// `vol/dir` where `dir` may be empty (the volume itself) or end in `/`.
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

    /// The directory beneath the root.
    pub(crate) fn rel(&self) -> RelPath {
        match self {
            DirPath::Vol(v) => RelPath::from(v.name().clone()),
            DirPath::Sub(p) => p.rel(),
        }
    }
}

/// A name inside the system directory, made by the crate itself.
pub(crate) fn system_name(s: &str) -> Name {
    Name::new(s).unwrap_or_else(|| unreachable!("system names are plain components: {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_ordinary_paths() {
        let p = ObjPath::new("bucket", "a/b/c.bin").expect("valid");
        assert_eq!(p.as_str(), "bucket/a/b/c.bin");
        assert_eq!(p.rel().as_str(), "bucket/a/b/c.bin");
        assert_eq!(p.parent().as_str(), "bucket/a/b");
        assert_eq!(p.name().as_str(), "c.bin");
        let dirs: Vec<_> = p.dirs().iter().map(|n| n.as_str()).collect();
        assert_eq!(dirs, ["a", "b"]);
        let top = ObjPath::new("v", "x").expect("valid");
        assert_eq!(top.parent().as_str(), "v");
        assert!(top.dirs().is_empty());
        assert!(
            ObjPath::new("b", "x..y/.hidden/z...").is_ok(),
            "dots inside names are fine"
        );
    }

    #[test]
    fn rejects_traversal_and_absolute_with_the_rule_named() {
        let cases = [
            ("../etc/passwd", PathRule::DotComponent),
            ("a/../../x", PathRule::DotComponent),
            ("/etc/passwd", PathRule::Absolute),
            ("a//b", PathRule::EmptyComponent),
            ("a/./b", PathRule::DotComponent),
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
        assert!(ObjPath::new("vol", &"x".repeat(256)).is_err());
        assert!(ObjPath::new("vol", &"a/".repeat(2000)).is_err());
    }

    #[test]
    fn dir_paths() {
        assert!(matches!(DirPath::new("v", ""), Ok(DirPath::Vol(_))));
        let d = DirPath::new("v", "d/").expect("valid");
        assert_eq!(d.rel().as_str(), "v/d");
        assert_eq!(DirPath::new("v", "").expect("valid").rel().as_str(), "v");
    }
}
