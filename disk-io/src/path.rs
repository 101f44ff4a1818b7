//! Validation of caller-supplied volume names and paths.
//!
//! Every path that reaches the kernel is relative to the disk's root fd and
//! was built here. Lexical rules (no `..`, no absolute paths, no empty or `.`
//! components, no NUL) reject escapes before any I/O; opens additionally use
//! `openat2(RESOLVE_BENEATH)` so a symlink planted on the disk cannot lead
//! outside it either.

use std::ffi::CString;

use crate::error::DiskError;

/// The directory on every disk that holds the format file, temporary files
/// and the trash. Callers can never name it: volume names may not start
/// with a dot.
pub(crate) const SYSTEM_DIR: &str = ".disk-io";
/// Longest path accepted (Linux PATH_MAX less room for the volume).
const MAX_PATH: usize = 3072;
/// Longest single component (NAME_MAX).
const MAX_COMPONENT: usize = 255;

/// A validated path relative to the disk root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RelPath {
    text: String,
}

impl RelPath {
    /// `vol/path`, both validated.
    pub(crate) fn new(vol: &str, path: &str) -> Result<RelPath, DiskError> {
        validate_volume(vol)?;
        validate_path(path)?;
        Ok(RelPath {
            text: format!("{vol}/{path}"),
        })
    }

    /// The volume directory itself.
    pub(crate) fn volume(vol: &str) -> Result<RelPath, DiskError> {
        validate_volume(vol)?;
        Ok(RelPath {
            text: vol.to_string(),
        })
    }

    /// `vol/dir` where `dir` may be empty (the volume itself).
    pub(crate) fn dir(vol: &str, dir: &str) -> Result<RelPath, DiskError> {
        let dir = dir.trim_end_matches('/');
        if dir.is_empty() {
            RelPath::volume(vol)
        } else {
            RelPath::new(vol, dir)
        }
    }

    /// A path inside the system directory, built by the crate itself.
    pub(crate) fn system(rest: &str) -> RelPath {
        debug_assert!(validate_path(rest).is_ok(), "system path {rest:?}");
        RelPath {
            text: format!("{SYSTEM_DIR}/{rest}"),
        }
    }

    /// The system directory itself.
    pub(crate) fn system_root() -> RelPath {
        RelPath {
            text: SYSTEM_DIR.into(),
        }
    }

    /// The disk root itself (".").
    pub(crate) fn root() -> RelPath {
        RelPath { text: ".".into() }
    }

    /// The path as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The parent directory, if the path has more than one component.
    pub(crate) fn parent(&self) -> Option<RelPath> {
        self.text.rfind('/').map(|i| RelPath {
            text: self.text[..i].to_string(),
        })
    }

    /// Every proper ancestor, shortest first (`a`, `a/b` for `a/b/c`).
    pub(crate) fn ancestors(&self) -> Vec<RelPath> {
        self.text
            .match_indices('/')
            .map(|(i, _)| RelPath {
                text: self.text[..i].to_string(),
            })
            .collect()
    }

    /// A C string for the kernel. Validation already rejected NUL bytes.
    pub(crate) fn c_string(&self) -> CString {
        CString::new(self.text.as_bytes()).unwrap_or_default()
    }
}

/// Volume names: one component, not starting with a dot (which keeps the
/// system directory and hidden names out), at most 255 bytes, no NUL.
pub(crate) fn validate_volume(vol: &str) -> Result<(), DiskError> {
    let bad = |reason| {
        Err(DiskError::InvalidPath {
            path: vol.to_string(),
            reason,
        })
    };
    if vol.is_empty() {
        return bad("empty volume name");
    }
    if vol.len() > MAX_COMPONENT {
        return bad("volume name longer than 255 bytes");
    }
    if vol.contains('/') {
        return bad("volume name contains '/'");
    }
    if vol.starts_with('.') {
        return bad("volume name starts with '.'");
    }
    if vol.contains('\0') {
        return bad("volume name contains NUL");
    }
    Ok(())
}

/// Object paths: relative, components separated by single `/`, none empty,
/// `.` or `..`, no NUL, bounded length.
pub(crate) fn validate_path(path: &str) -> Result<(), DiskError> {
    let bad = |reason| {
        Err(DiskError::InvalidPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty path");
    }
    if path.len() > MAX_PATH {
        return bad("path too long");
    }
    if path.starts_with('/') {
        return bad("absolute path");
    }
    if path.contains('\0') {
        return bad("path contains NUL");
    }
    for comp in path.split('/') {
        match comp {
            "" => return bad("empty path component (leading, trailing or double '/')"),
            "." => return bad("'.' component"),
            ".." => return bad("'..' component"),
            c if c.len() > MAX_COMPONENT => return bad("path component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        assert_eq!(
            RelPath::new("bucket", "a/b/c.bin").map(|p| p.text),
            Ok("bucket/a/b/c.bin".into())
        );
        assert!(
            RelPath::new("b", "x..y/.hidden/z...").is_ok(),
            "dots inside names are fine"
        );
    }

    #[test]
    fn rejects_traversal_and_absolute() {
        for p in [
            "../etc/passwd",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a/",
            "",
            ".",
            "..",
            "a\0b",
        ] {
            let e = RelPath::new("vol", p).expect_err(p);
            assert_eq!(e.kind(), "invalid_argument", "{p}");
        }
        for v in ["", "..", ".disk-io", "a/b", ".", "x\0"] {
            assert!(RelPath::volume(v).is_err(), "{v:?}");
        }
        assert!(RelPath::new("vol", &"x".repeat(256)).is_err());
        assert!(RelPath::new("vol", &"a/".repeat(2000)).is_err());
    }

    #[test]
    fn ancestors_and_parent() {
        let p = RelPath::new("v", "a/b/c").expect("valid");
        let a: Vec<_> = p.ancestors().into_iter().map(|p| p.text).collect();
        assert_eq!(a, vec!["v", "v/a", "v/a/b"]);
        assert_eq!(p.parent().map(|p| p.text), Some("v/a/b".into()));
        assert_eq!(RelPath::dir("v", "").map(|p| p.text), Ok("v".into()));
        assert_eq!(RelPath::dir("v", "d/").map(|p| p.text), Ok("v/d".into()));
    }
}
