//! The typed error every disk operation returns.
//!
//! Each variant belongs to one of two families (see [`Availability`]):
//! either the disk could not be asked (it is faulty, late, unreachable,
//! gone) or it answered with an error. Quorum logic must never count the
//! first family as a vote: a disk that did not answer says nothing about
//! the object.
//!
//! **Invariant:** [`DiskError::availability`] and [`DiskError::kind`] match
//! every variant explicitly (no `_` arm), so a new variant cannot be added
//! without deciding its family.

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

/// Which rule a caller's path broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PathRule {
    /// Empty path or volume name.
    Empty,
    /// Longer than the limit.
    TooLong,
    /// Starts with `/`.
    Absolute,
    /// Contains a NUL byte.
    Nul,
    /// An empty component (leading, trailing or double `/`).
    EmptyComponent,
    /// A `.` or `..` component.
    DotComponent,
    /// A component longer than 255 bytes.
    ComponentTooLong,
    /// A volume name with a `/` in it.
    VolumeHasSlash,
    /// A volume name starting with `.` (reserved for the system directory).
    VolumeStartsWithDot,
    /// A component on the disk is a symlink; disk-io follows none.
    Symlink,
    /// The path would resolve outside the disk root (or into another mount).
    Escapes,
    /// The file has other hard links: disk-io reads and writes only files
    /// it alone links (a planted link could reach a file elsewhere).
    HardLinked,
    /// Not a regular file or directory (a device node, FIFO or socket).
    NotRegular,
}

impl PathRule {
    /// Every rule, in a fixed order (wire encodings index into it: append
    /// new rules at the end).
    pub const ALL: [PathRule; 13] = [
        PathRule::Empty,
        PathRule::TooLong,
        PathRule::Absolute,
        PathRule::Nul,
        PathRule::EmptyComponent,
        PathRule::DotComponent,
        PathRule::ComponentTooLong,
        PathRule::VolumeHasSlash,
        PathRule::VolumeStartsWithDot,
        PathRule::Symlink,
        PathRule::Escapes,
        PathRule::HardLinked,
        PathRule::NotRegular,
    ];

    /// What the rule says, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            PathRule::Empty => "empty",
            PathRule::TooLong => "too long",
            PathRule::Absolute => "absolute path",
            PathRule::Nul => "contains NUL",
            PathRule::EmptyComponent => "empty component (leading, trailing or double '/')",
            PathRule::DotComponent => "'.' or '..' component",
            PathRule::ComponentTooLong => "component longer than 255 bytes",
            PathRule::VolumeHasSlash => "volume name contains '/'",
            PathRule::VolumeStartsWithDot => "volume name starts with '.'",
            PathRule::Symlink => "a component is a symlink (disk-io follows none)",
            PathRule::Escapes => "resolves outside the disk root or into another mount",
            PathRule::HardLinked => {
                "the file has other hard links (disk-io touches only files it alone links)"
            }
            PathRule::NotRegular => "not a regular file (a device node, FIFO or socket)",
        }
    }
}

impl std::fmt::Display for PathRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What was found where another kind of file was expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WrongType {
    /// A directory where a file was expected.
    IsDirectory,
    /// Not a directory where one was expected.
    NotDirectory,
}

impl std::fmt::Display for WrongType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WrongType::IsDirectory => "is a directory",
            WrongType::NotDirectory => "not a directory",
        })
    }
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
    /// The call was refused before it ran because a resource it needs is
    /// exhausted (a peer's concurrency limit, this process's fds or
    /// memory); nothing was done and the disk said nothing about the
    /// request.
    #[error("busy: {reason}")]
    Busy {
        /// Which limit.
        reason: String,
    },
    /// A remote peer rejected the request itself (authentication, replay,
    /// malformed or oversized message); nothing was done.
    #[error("request rejected: {reason}")]
    Rejected {
        /// Why.
        reason: String,
    },
    /// The disk (its root directory or its format) is gone.
    #[error("disk not found: {reason}")]
    DiskNotFound {
        /// Detail.
        reason: String,
    },
    /// The device or file system behind the disk is gone: a dead FUSE
    /// daemon (ENOTCONN), a lost mount, a removed device (ENODEV, ENXIO).
    #[error("{op}: the device is gone: {errno}")]
    DeviceGone {
        /// Which operation saw it.
        op: OpClass,
        /// The errno.
        errno: Errno,
    },
    /// The disk's driver has shut down (the handle outlived its disk).
    #[error("disk driver has shut down")]
    ShutDown,

    // ---- answered ----------------------------------------------------------
    /// The caller's path or volume name is not acceptable, or it leads
    /// through a symlink or outside the disk.
    #[error("invalid path {path:?}: {rule}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Which rule it breaks.
        rule: PathRule,
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
    #[error("wrong file type: {0}")]
    WrongFileType(WrongType),
    /// A directory to delete is not empty.
    #[error("directory not empty")]
    DirectoryNotEmpty,
    /// The file system is full (ENOSPC or EDQUOT).
    #[error("no space left on disk")]
    NoSpace,
    /// The file system refused access.
    #[error("permission denied")]
    PermissionDenied,
    /// The disk cannot take changes: this handle was opened for inspection
    /// only, or the file system is read-only (EROFS).
    #[error("{op} refused: the disk is read-only")]
    ReadOnly {
        /// The refused operation.
        op: OpClass,
    },
    /// Another process owns the disk (holds its exclusive lock).
    #[error("disk in use: {reason}")]
    InUse {
        /// Detail.
        reason: String,
    },
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
    /// The device reported an I/O error (EIO, a file system gone read-only
    /// after an error, corruption): the request failed and the device is
    /// suspect.
    #[error("{op}: device I/O error: {errno}")]
    MediaError {
        /// Which operation.
        op: OpClass,
        /// The errno.
        errno: Errno,
    },
    /// The change is in place and visible, but making it durable failed
    /// (the directory fsync after the rename failed or ran out of time).
    /// The old content is gone; the new one may not survive a crash.
    #[error("{op} took effect but is not known to be durable: {cause}")]
    NotDurable {
        /// Which operation.
        op: OpClass,
        /// What failed after the commit.
        cause: Box<DiskError>,
    },
    /// Any other error the kernel returned for this request.
    #[error("{op} failed: {errno}")]
    Io {
        /// Which operation.
        op: OpClass,
        /// The errno, kept as a number so the error stays `Clone + Eq`.
        errno: Errno,
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
        use DiskError::*;
        match self {
            DeadlineExceeded { .. }
            | Faulty { .. }
            | Unreachable { .. }
            | CircuitOpen { .. }
            | Busy { .. }
            | Rejected { .. }
            | DiskNotFound { .. }
            | DeviceGone { .. }
            | ShutDown => Availability::Unavailable,
            InvalidPath { .. }
            | InvalidArgument { .. }
            | VolumeNotFound
            | VolumeExists
            | VolumeNotEmpty
            | FileNotFound
            | FileExists
            | WrongFileType(_)
            | DirectoryNotEmpty
            | NoSpace
            | PermissionDenied
            | ReadOnly { .. }
            | InUse { .. }
            | Unformatted
            | AlreadyFormatted
            | CorruptFormat { .. }
            | TooLarge { .. }
            | UnexpectedEof { .. }
            | MediaError { .. }
            | NotDurable { .. }
            | Io { .. } => Availability::Answered,
        }
    }

    /// Shorthand for `availability() == Unavailable`.
    pub fn is_unavailable(&self) -> bool {
        self.availability() == Availability::Unavailable
    }

    /// A stable snake_case name for logs, metrics labels and JSON output.
    pub fn kind(&self) -> &'static str {
        use DiskError::*;
        match self {
            DeadlineExceeded { .. } => "deadline_exceeded",
            Faulty { .. } => "faulty",
            Unreachable { .. } => "unreachable",
            CircuitOpen { .. } => "circuit_open",
            Busy { .. } => "busy",
            Rejected { .. } => "rejected",
            DiskNotFound { .. } => "disk_not_found",
            DeviceGone { .. } => "device_gone",
            ShutDown => "shut_down",
            InvalidPath { .. } => "invalid_path",
            InvalidArgument { .. } => "invalid_argument",
            VolumeNotFound => "volume_not_found",
            VolumeExists => "volume_exists",
            VolumeNotEmpty => "volume_not_empty",
            FileNotFound => "not_found",
            FileExists => "exists",
            WrongFileType(_) => "wrong_file_type",
            DirectoryNotEmpty => "directory_not_empty",
            NoSpace => "no_space",
            PermissionDenied => "permission_denied",
            ReadOnly { .. } => "read_only",
            InUse { .. } => "in_use",
            Unformatted => "unformatted",
            AlreadyFormatted => "already_formatted",
            CorruptFormat { .. } => "corrupt_format",
            TooLarge { .. } => "too_large",
            UnexpectedEof { .. } => "unexpected_eof",
            MediaError { .. } => "media_error",
            NotDurable { .. } => "not_durable",
            Io { .. } => "io",
        }
    }

    /// Whether this outcome implicates the device itself (as opposed to a
    /// caller mistake such as a missing file): the health machine counts
    /// these as faults. An answered "not found" is progress, not a fault.
    pub fn is_device_fault(&self) -> bool {
        match self {
            DiskError::DeadlineExceeded { .. }
            | DiskError::DeviceGone { .. }
            | DiskError::MediaError { .. } => true,
            DiskError::NotDurable { cause, .. } => cause.is_device_fault(),
            _ => false,
        }
    }

    /// The same error reported against the public operation `op` (a step
    /// inside a composite operation reports its own class; callers see the
    /// operation they called).
    pub fn for_op(self, op: OpClass) -> DiskError {
        match self {
            DiskError::DeadlineExceeded { waited, .. } => {
                DiskError::DeadlineExceeded { op, waited }
            }
            DiskError::DeviceGone { errno, .. } => DiskError::DeviceGone { op, errno },
            DiskError::MediaError { errno, .. } => DiskError::MediaError { op, errno },
            DiskError::Io { errno, .. } => DiskError::Io { op, errno },
            e => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miss() -> DiskError {
        DiskError::DeadlineExceeded {
            op: OpClass::ReadAll,
            waited: Duration::from_millis(1),
        }
    }

    #[test]
    fn unavailable_family_is_exactly_the_transport_health_and_gone_errors() {
        let unavailable = [
            miss(),
            DiskError::Faulty { reason: "x".into() },
            DiskError::Unreachable { reason: "x".into() },
            DiskError::CircuitOpen { peer: "p".into() },
            DiskError::Busy { reason: "x".into() },
            DiskError::Rejected { reason: "x".into() },
            DiskError::DiskNotFound { reason: "x".into() },
            DiskError::DeviceGone {
                op: OpClass::ReadAll,
                errno: Errno(107),
            },
            DiskError::ShutDown,
        ];
        for e in &unavailable {
            assert!(e.is_unavailable(), "{e:?}");
        }
        let answered = [
            DiskError::FileNotFound,
            DiskError::NoSpace,
            DiskError::VolumeNotFound,
            DiskError::MediaError {
                op: OpClass::ReadAll,
                errno: Errno(5),
            },
            DiskError::NotDurable {
                op: OpClass::WriteAll,
                cause: Box::new(miss()),
            },
        ];
        for e in &answered {
            assert_eq!(e.availability(), Availability::Answered, "{e:?}");
        }
    }

    #[test]
    fn device_faults_are_misses_gone_devices_and_media_errors() {
        assert!(miss().is_device_fault());
        assert!(DiskError::MediaError {
            op: OpClass::ReadAll,
            errno: Errno(5)
        }
        .is_device_fault());
        assert!(DiskError::NotDurable {
            op: OpClass::WriteAll,
            cause: Box::new(miss())
        }
        .is_device_fault());
        assert!(!DiskError::FileNotFound.is_device_fault());
        assert!(!DiskError::Io {
            op: OpClass::ReadAll,
            errno: Errno(22)
        }
        .is_device_fault());
    }

    #[test]
    fn every_path_rule_is_listed_once() {
        // A rule missing from ALL would not cross the wire; this match has
        // no `_` arm, so a new rule fails to compile here until it is added.
        for r in PathRule::ALL {
            let i = match r {
                PathRule::Empty => 0,
                PathRule::TooLong => 1,
                PathRule::Absolute => 2,
                PathRule::Nul => 3,
                PathRule::EmptyComponent => 4,
                PathRule::DotComponent => 5,
                PathRule::ComponentTooLong => 6,
                PathRule::VolumeHasSlash => 7,
                PathRule::VolumeStartsWithDot => 8,
                PathRule::Symlink => 9,
                PathRule::Escapes => 10,
                PathRule::HardLinked => 11,
                PathRule::NotRegular => 12,
            };
            assert_eq!(PathRule::ALL[i], r);
        }
    }

    #[test]
    fn for_op_relabels_steps_but_keeps_the_cause() {
        let e = miss().for_op(OpClass::WriteAll);
        assert!(matches!(
            e,
            DiskError::DeadlineExceeded {
                op: OpClass::WriteAll,
                ..
            }
        ));
        assert_eq!(
            DiskError::FileNotFound.for_op(OpClass::WriteAll),
            DiskError::FileNotFound
        );
    }
}
