//! [`DriverError`]: what a driver call can fail with, typed, and the one
//! place that turns a kernel errno into meaning ([`OsError`]) and into the
//! API's [`DiskError`].

use std::time::Duration;

use disk_io_api::{DiskError, Errno, OpClass, PathRule, WrongType};

/// EIO, for outcomes the kernel did not report but that mean the same
/// (a probe reading back other bytes than it wrote).
pub const EIO: Errno = Errno(libc::EIO);

/// EINVAL (an O_DIRECT open on a file system without it answers this).
pub const EINVAL: Errno = Errno(libc::EINVAL);

/// The errnos disk-io tells apart, by what they mean for a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OsError {
    /// ENOENT.
    NotFound,
    /// EEXIST.
    Exists,
    /// ENOTEMPTY (or EEXIST from rmdir on some file systems).
    NotEmpty,
    /// EISDIR.
    IsDir,
    /// ENOTDIR.
    NotDir,
    /// ELOOP: a symlink on the path (opens forbid following any).
    Symlink,
    /// EXDEV from `RESOLVE_BENEATH`: the path leaves the directory; from a
    /// rename: across file systems.
    CrossesBoundary,
    /// ENOSPC, EDQUOT.
    NoSpace,
    /// EACCES, EPERM.
    Access,
    /// ENAMETOOLONG.
    NameTooLong,
    /// EINVAL (e.g. O_DIRECT on a file system without it).
    Invalid,
    /// EAGAIN / EWOULDBLOCK (a held lock with `LOCK_NB`).
    WouldBlock,
    /// EROFS: the file system is read-only (mounted so, or remounted after
    /// an error); the disk can answer reads, not changes.
    ReadOnlyFs,
    /// The device reports an error about the data: EIO, EUCLEAN, EBADMSG.
    Media,
    /// The device, file system or its transport is gone: ENOTCONN (dead
    /// FUSE daemon), ESHUTDOWN, ECONNABORTED, ECONNRESET, ENODEV, ENXIO,
    /// ESTALE, EHOSTDOWN, ENOMEDIUM, and what a network-backed file system
    /// returns when its server is unreachable (ETIMEDOUT, EHOSTUNREACH,
    /// ENETUNREACH, ENETDOWN, ECONNREFUSED, ENOLINK, EREMOTEIO, ECOMM).
    Gone,
    /// This process is out of something it needs to make the call (EMFILE,
    /// ENFILE, ENOMEM): the disk said nothing about the request.
    Exhausted,
    /// Anything else.
    Other,
}

impl OsError {
    /// Classify a (positive) errno.
    pub fn of(errno: i32) -> OsError {
        match errno {
            libc::ENOENT => OsError::NotFound,
            libc::EEXIST => OsError::Exists,
            libc::ENOTEMPTY => OsError::NotEmpty,
            libc::EISDIR => OsError::IsDir,
            libc::ENOTDIR => OsError::NotDir,
            libc::ELOOP => OsError::Symlink,
            libc::EXDEV => OsError::CrossesBoundary,
            libc::ENOSPC | libc::EDQUOT => OsError::NoSpace,
            libc::EACCES | libc::EPERM => OsError::Access,
            libc::ENAMETOOLONG => OsError::NameTooLong,
            libc::EINVAL => OsError::Invalid,
            libc::EAGAIN => OsError::WouldBlock,
            libc::EROFS => OsError::ReadOnlyFs,
            libc::EIO | libc::EUCLEAN | libc::EBADMSG => OsError::Media,
            libc::ENOTCONN
            | libc::ESHUTDOWN
            | libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::ENODEV
            | libc::ENXIO
            | libc::ESTALE
            | libc::EHOSTDOWN
            | libc::ENOMEDIUM
            | libc::ETIMEDOUT
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::ENETDOWN
            | libc::ECONNREFUSED
            | libc::ENOLINK
            | libc::EREMOTEIO
            | libc::ECOMM => OsError::Gone,
            libc::EMFILE | libc::ENFILE | libc::ENOMEM => OsError::Exhausted,
            _ => OsError::Other,
        }
    }
}

/// A driver call's failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The call's deadline passed before the kernel answered (the op was
    /// cancelled, or lives on as a zombie).
    #[error("deadline passed after {waited:?}")]
    Deadline {
        /// How long the caller waited.
        waited: Duration,
    },
    /// The driver has shut down.
    #[error("driver has shut down")]
    ShutDown,
    /// The kernel answered with an error.
    #[error("{errno}")]
    Os {
        /// What it means.
        kind: OsError,
        /// The errno itself.
        errno: Errno,
    },
}

impl DriverError {
    /// From a (positive) errno.
    pub fn os(errno: i32) -> DriverError {
        DriverError::Os {
            kind: OsError::of(errno),
            errno: Errno(errno),
        }
    }

    /// The error the last failed libc call left in `errno`.
    pub(crate) fn last_os() -> DriverError {
        DriverError::os(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }

    /// The kind of an OS error, if it is one.
    pub fn os_kind(&self) -> Option<OsError> {
        match self {
            DriverError::Os { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether this is the OS error `kind`.
    pub fn is(&self, kind: OsError) -> bool {
        self.os_kind() == Some(kind)
    }

    /// The API error for operation `op`, without more context than the
    /// errno gives (callers that know more, e.g. that a missing parent is a
    /// missing volume, map those cases first).
    pub fn into_disk(self, op: OpClass, path: &str) -> DiskError {
        let (kind, errno) = match self {
            DriverError::Deadline { waited } => return DiskError::DeadlineExceeded { op, waited },
            DriverError::ShutDown => return DiskError::ShutDown,
            DriverError::Os { kind, errno } => (kind, errno),
        };
        let path_err = |rule| DiskError::InvalidPath {
            path: path.to_string(),
            rule,
        };
        match kind {
            OsError::NotFound => DiskError::FileNotFound,
            OsError::Exists => DiskError::FileExists,
            OsError::NotEmpty => DiskError::DirectoryNotEmpty,
            OsError::IsDir => DiskError::WrongFileType(WrongType::IsDirectory),
            OsError::NotDir => DiskError::WrongFileType(WrongType::NotDirectory),
            OsError::Symlink => path_err(PathRule::Symlink),
            OsError::CrossesBoundary => path_err(PathRule::Escapes),
            OsError::NameTooLong => path_err(PathRule::TooLong),
            OsError::NoSpace => DiskError::NoSpace,
            OsError::Access => DiskError::PermissionDenied,
            OsError::Media => DiskError::MediaError { op, errno },
            OsError::ReadOnlyFs => DiskError::ReadOnly { op },
            OsError::Gone => DiskError::DeviceGone { op, errno },
            OsError::Exhausted => DiskError::Busy {
                reason: format!("{op}: {errno}"),
            },
            OsError::Invalid | OsError::WouldBlock | OsError::Other => DiskError::Io { op, errno },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_fuse_daemon_or_lost_device_is_unavailable() {
        for e in [
            libc::ENOTCONN,
            libc::ESHUTDOWN,
            libc::ECONNABORTED,
            libc::ENODEV,
            libc::ENXIO,
            libc::ESTALE,
        ] {
            let d = DriverError::os(e).into_disk(OpClass::ReadAll, "v/x");
            assert!(d.is_unavailable(), "errno {e}: {d:?}");
            assert!(d.is_device_fault(), "errno {e}: {d:?}");
        }
    }

    #[test]
    fn an_unreachable_network_file_system_is_unavailable() {
        for e in [
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ENETDOWN,
            libc::ECONNREFUSED,
            libc::ENOLINK,
            libc::EREMOTEIO,
            libc::ECOMM,
        ] {
            let d = DriverError::os(e).into_disk(OpClass::ReadAll, "v/x");
            assert!(
                d.is_unavailable() && d.is_device_fault(),
                "errno {e}: {d:?}"
            );
        }
    }

    #[test]
    fn local_exhaustion_is_unavailable_but_not_a_device_fault() {
        for e in [libc::EMFILE, libc::ENFILE, libc::ENOMEM] {
            let d = DriverError::os(e).into_disk(OpClass::ReadAll, "v/x");
            assert!(d.is_unavailable(), "errno {e}: {d:?}");
            assert!(!d.is_device_fault(), "errno {e}: {d:?}");
        }
    }

    #[test]
    fn a_read_only_file_system_answers_and_is_not_a_fault() {
        let d = DriverError::os(libc::EROFS).into_disk(OpClass::WriteAll, "v/x");
        assert_eq!(
            d,
            DiskError::ReadOnly {
                op: OpClass::WriteAll
            }
        );
        assert!(!d.is_unavailable() && !d.is_device_fault());
    }

    #[test]
    fn media_errors_are_answered_device_faults() {
        for e in [libc::EIO, libc::EUCLEAN, libc::EBADMSG] {
            let d = DriverError::os(e).into_disk(OpClass::ReadAll, "v/x");
            assert!(!d.is_unavailable(), "errno {e}");
            assert!(d.is_device_fault(), "errno {e}");
        }
    }

    #[test]
    fn caller_errors_are_answered_and_not_faults() {
        let cases = [
            (libc::ENOENT, DiskError::FileNotFound),
            (libc::EEXIST, DiskError::FileExists),
            (libc::ENOSPC, DiskError::NoSpace),
            (libc::EDQUOT, DiskError::NoSpace),
            (libc::ENOTEMPTY, DiskError::DirectoryNotEmpty),
            (
                libc::ELOOP,
                DiskError::InvalidPath {
                    path: "v/x".into(),
                    rule: PathRule::Symlink,
                },
            ),
            (
                libc::EXDEV,
                DiskError::InvalidPath {
                    path: "v/x".into(),
                    rule: PathRule::Escapes,
                },
            ),
        ];
        for (errno, want) in cases {
            let d = DriverError::os(errno).into_disk(OpClass::WriteAll, "v/x");
            assert_eq!(d, want, "errno {errno}");
            assert!(!d.is_device_fault());
            assert!(!d.is_unavailable());
        }
    }

    #[test]
    fn deadline_and_shutdown_keep_their_meaning() {
        let d = DriverError::Deadline {
            waited: Duration::from_millis(3),
        }
        .into_disk(OpClass::StatFile, "");
        assert!(matches!(
            d,
            DiskError::DeadlineExceeded {
                op: OpClass::StatFile,
                ..
            }
        ));
        assert_eq!(
            DriverError::ShutDown.into_disk(OpClass::StatFile, ""),
            DiskError::ShutDown
        );
    }
}
