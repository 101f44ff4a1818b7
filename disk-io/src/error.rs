//! The typed error every disk operation returns.
//!
//! Each variant belongs to one of two families (see [`Availability`]):
//! either the disk could not be asked (it is faulty, late, unreachable) or it
//! answered with an error. Quorum logic must never count the first family as
//! a vote: a disk that did not answer says nothing about the object.

use std::time::Duration;

use crate::op::OpClass;

/// Result alias for disk operations.
pub type Result<T, E = DiskError> = std::result::Result<T, E>;

/// Whether an error means "this disk is unavailable" or "this disk answered".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Availability {
    /// The disk did not answer in time or is known to be unusable; its vote
    /// is missing, not negative.
    Unavailable,
    /// The disk answered, and the answer is an error about the request
    /// (not found, no space, I/O error on this file, bad argument, ...).
    Answered,
}

/// Every error a [`Disk`](crate::Disk) operation can return.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiskError {
    // ---- unavailable -------------------------------------------------------
    /// The operation did not finish before its deadline.
    #[error("{op} missed its deadline (waited {waited:?})")]
    DeadlineExceeded {
        /// Which operation.
        op: OpClass,
        /// How long the caller waited in total.
        waited: Duration,
    },
    /// The disk's health machine has it Faulty (or Probing); calls fail fast.
    #[error("disk is faulty ({reason}); failing fast")]
    Faulty {
        /// Why the health machine took the disk out.
        reason: String,
    },
    /// A remote disk's peer could not be reached.
    #[error("disk unreachable: {reason}")]
    Unreachable {
        /// Transport-level detail.
        reason: String,
    },
    /// A remote peer's circuit breaker is open; calls fail fast.
    #[error("circuit open for peer {peer}")]
    CircuitOpen {
        /// The peer.
        peer: String,
    },
    /// The disk (its root directory or its format) is gone.
    #[error("disk not found: {reason}")]
    DiskNotFound {
        /// Detail.
        reason: String,
    },
    /// The disk's driver has shut down (the handle outlived its disk).
    #[error("disk driver has shut down")]
    ShutDown,

    // ---- answered ----------------------------------------------------------
    /// The caller's path or volume name is not acceptable.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An argument other than a path is not acceptable.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// The volume does not exist.
    #[error("volume not found")]
    VolumeNotFound,
    /// The volume already exists.
    #[error("volume already exists")]
    VolumeExists,
    /// The volume is not empty and `force` was not given.
    #[error("volume not empty")]
    VolumeNotEmpty,
    /// The file or directory does not exist.
    #[error("file not found")]
    FileNotFound,
    /// The file already exists.
    #[error("file already exists")]
    FileExists,
    /// A directory was found where a file was expected, or the reverse.
    #[error("wrong file type: {detail}")]
    WrongFileType {
        /// What was expected.
        detail: &'static str,
    },
    /// A directory to delete is not empty.
    #[error("directory not empty")]
    DirectoryNotEmpty,
    /// The file system is full (ENOSPC or EDQUOT).
    #[error("no space left on disk")]
    NoSpace,
    /// The file system refused access.
    #[error("permission denied")]
    PermissionDenied,
    /// The disk has no format file: it was never formatted.
    #[error("disk is not formatted")]
    Unformatted,
    /// The disk already has a format file (format without `force`).
    #[error("disk is already formatted")]
    AlreadyFormatted,
    /// The format file exists but cannot be understood.
    #[error("corrupt format file: {reason}")]
    CorruptFormat {
        /// What is wrong with it.
        reason: String,
    },
    /// A file is larger than the operation allows (e.g. `read_all` limit).
    #[error("file too large: {size} bytes > limit {limit}")]
    TooLarge {
        /// The file's size.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The file ended before the requested range.
    #[error("unexpected end of file: wanted {wanted} bytes, got {got}")]
    UnexpectedEof {
        /// Bytes requested.
        wanted: u64,
        /// Bytes available.
        got: u64,
    },
    /// Any other error the kernel returned for this request (EIO among them).
    #[error("{op} failed: {source_errno}")]
    Io {
        /// Which operation.
        op: OpClass,
        /// The errno, kept as a number so the error stays `Clone + Eq`.
        #[source]
        source_errno: Errno,
    },
}

/// A raw errno with a readable `Display`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (errno {})",
            std::io::Error::from_raw_os_error(self.0),
            self.0
        )
    }
}

impl std::error::Error for Errno {}

impl DiskError {
    /// Which family the error belongs to.
    pub fn availability(&self) -> Availability {
        match self {
            DiskError::DeadlineExceeded { .. }
            | DiskError::Faulty { .. }
            | DiskError::Unreachable { .. }
            | DiskError::CircuitOpen { .. }
            | DiskError::DiskNotFound { .. }
            | DiskError::ShutDown => Availability::Unavailable,
            _ => Availability::Answered,
        }
    }

    /// Shorthand for `availability() == Unavailable`.
    pub fn is_unavailable(&self) -> bool {
        self.availability() == Availability::Unavailable
    }

    /// A stable snake_case name for logs, metrics labels and JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            DiskError::DeadlineExceeded { .. } => "deadline_exceeded",
            DiskError::Faulty { .. } => "faulty",
            DiskError::Unreachable { .. } => "unreachable",
            DiskError::CircuitOpen { .. } => "circuit_open",
            DiskError::DiskNotFound { .. } => "disk_not_found",
            DiskError::ShutDown => "shut_down",
            DiskError::InvalidPath { .. } | DiskError::InvalidArgument { .. } => "invalid_argument",
            DiskError::VolumeNotFound => "volume_not_found",
            DiskError::VolumeExists => "volume_exists",
            DiskError::VolumeNotEmpty => "volume_not_empty",
            DiskError::FileNotFound => "not_found",
            DiskError::FileExists => "exists",
            DiskError::WrongFileType { .. } => "wrong_file_type",
            DiskError::DirectoryNotEmpty => "directory_not_empty",
            DiskError::NoSpace => "no_space",
            DiskError::PermissionDenied => "permission_denied",
            DiskError::Unformatted => "unformatted",
            DiskError::AlreadyFormatted => "already_formatted",
            DiskError::CorruptFormat { .. } => "corrupt_format",
            DiskError::TooLarge { .. } => "too_large",
            DiskError::UnexpectedEof { .. } => "unexpected_eof",
            DiskError::Io { .. } => "io",
        }
    }

    /// Whether the health machine should treat this error as a sign the
    /// device itself is in trouble (as opposed to a caller mistake such as a
    /// missing file).
    pub(crate) fn is_device_fault(&self) -> bool {
        match self {
            DiskError::DeadlineExceeded { .. } => true,
            DiskError::Io { source_errno, .. } => {
                matches!(
                    source_errno.0,
                    libc::EIO | libc::EROFS | libc::ENXIO | libc::ENODEV
                )
            }
            _ => false,
        }
    }

    /// Map a kernel errno (positive) from operation `op` to a typed error.
    pub(crate) fn from_errno(op: OpClass, errno: i32) -> DiskError {
        match errno {
            libc::ENOENT => DiskError::FileNotFound,
            libc::EEXIST => DiskError::FileExists,
            libc::ENOSPC | libc::EDQUOT => DiskError::NoSpace,
            libc::EACCES | libc::EPERM => DiskError::PermissionDenied,
            libc::ENOTEMPTY => DiskError::DirectoryNotEmpty,
            libc::EISDIR => DiskError::WrongFileType {
                detail: "is a directory",
            },
            libc::ENOTDIR => DiskError::WrongFileType {
                detail: "not a directory",
            },
            libc::EXDEV | libc::ELOOP => DiskError::InvalidPath {
                path: String::new(),
                reason: "resolves outside the disk root or through a symlink loop",
            },
            libc::ENAMETOOLONG => DiskError::InvalidPath {
                path: String::new(),
                reason: "name too long",
            },
            other => DiskError::Io {
                op,
                source_errno: Errno(other),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_family_is_exactly_the_transport_and_health_errors() {
        let unavailable = [
            DiskError::DeadlineExceeded {
                op: OpClass::ReadAll,
                waited: Duration::from_millis(1),
            },
            DiskError::Faulty { reason: "x".into() },
            DiskError::Unreachable { reason: "x".into() },
            DiskError::CircuitOpen { peer: "p".into() },
            DiskError::DiskNotFound { reason: "x".into() },
            DiskError::ShutDown,
        ];
        for e in &unavailable {
            assert!(e.is_unavailable(), "{e:?}");
        }
        let answered = [
            DiskError::FileNotFound,
            DiskError::NoSpace,
            DiskError::from_errno(OpClass::ReadAll, libc::EIO),
            DiskError::VolumeNotFound,
        ];
        for e in &answered {
            assert_eq!(e.availability(), Availability::Answered, "{e:?}");
        }
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(
            DiskError::from_errno(OpClass::WriteAll, libc::ENOSPC),
            DiskError::NoSpace
        );
        assert_eq!(
            DiskError::from_errno(OpClass::WriteAll, libc::EDQUOT).kind(),
            "no_space"
        );
        let eio = DiskError::from_errno(OpClass::ReadFileAt, libc::EIO);
        assert_eq!(eio.kind(), "io");
        assert!(eio.is_device_fault());
        assert!(!DiskError::FileNotFound.is_device_fault());
    }
}
