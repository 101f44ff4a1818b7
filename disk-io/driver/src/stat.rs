//! Typed results of `statx` and `fstatvfs`.

use std::time::{Duration, SystemTime};

/// What a directory entry or inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by disk-io).
    Symlink,
    /// A FIFO, socket or device node.
    Other,
}

impl FileKind {
    fn of_mode(mode: u32) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }
}

/// A timestamp as the kernel keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: u32,
}

impl Timestamp {
    /// As a `SystemTime` (the epoch for times before it).
    pub fn system_time(self) -> SystemTime {
        if self.sec >= 0 {
            SystemTime::UNIX_EPOCH + Duration::new(self.sec as u64, self.nsec)
        } else {
            SystemTime::UNIX_EPOCH
        }
    }
}

/// The fields of `statx` disk-io uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statx {
    /// Kind of inode.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Inode number.
    pub ino: u64,
    /// Hard links to the inode.
    pub nlink: u32,
    /// Last modification.
    pub mtime: Timestamp,
    /// Last status change.
    pub ctime: Timestamp,
}

impl Statx {
    pub(crate) fn from_raw(st: &libc::statx) -> Statx {
        let ts = |t: libc::statx_timestamp| Timestamp {
            sec: t.tv_sec,
            nsec: t.tv_nsec,
        };
        Statx {
            kind: FileKind::of_mode(st.stx_mode as u32),
            size: st.stx_size,
            ino: st.stx_ino,
            nlink: st.stx_nlink,
            mtime: ts(st.stx_mtime),
            ctime: ts(st.stx_ctime),
        }
    }
}

/// Capacity of a file system (`fstatvfs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statfs {
    /// Total bytes.
    pub total: u64,
    /// Bytes available to unprivileged writers.
    pub available: u64,
    /// Bytes free (including the reserve).
    pub free: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
    /// Mounted read-only.
    pub read_only: bool,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The name as bytes (a name planted on the disk need not be UTF-8).
    pub name: std::ffi::OsString,
    /// Its kind, from `d_type` (`Other` when the file system does not say).
    pub kind: FileKind,
}

/// A directory's entries, at most a limit of them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ReadDir {
    /// Entries other than `.` and `..`, in directory order.
    pub entries: Vec<DirEntry>,
    /// More entries exist than the limit allowed.
    pub truncated: bool,
}
