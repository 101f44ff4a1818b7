//! The blocking system calls, fd-relative, each run on tokio's blocking
//! pool by the caller (never on a runtime worker).
//!
//! `tokio::fs`'s path functions (`create_dir`, `rename`, `remove_file`,
//! `metadata`, `read_dir`) resolve a whole path from the current directory
//! and follow symlinks in every component but (for some) the last. That
//! cannot keep `LocalDisk`'s rule "no path leaves the root, no symlink is
//! followed anywhere". So the name-based steps are the calls `tokio::fs`
//! would make, made relative to a directory fd instead: opens with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV)` (the flags `LocalDisk`'s driver passes), and
//! `fstatat(AT_SYMLINK_NOFOLLOW)`, `mkdirat`, `unlinkat`, `renameat2` on a
//! single [`Name`] in a directory opened that way.
//!
//! Errors are [`DriverError`]s built from the errno, so the one errno →
//! `DiskError` table (`DriverError::into_disk`) is the one `LocalDisk`
//! uses.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use disk_io_driver::Timestamp;
use disk_io_driver::{DirEntry, DriverError, FileKind, Name, OsError, ReadDir, Statfs, Statx};
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, RenameFlags, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// Permission bits of directories and files disk-io creates.
pub(crate) const DIR_MODE: u32 = 0o755;
pub(crate) const FILE_MODE: u32 = 0o644;

/// Deepest tree the purge walks (deeper than any path disk-io can make).
const MAX_REMOVE_DEPTH: usize = 512;

pub(crate) fn nix_err(e: nix::errno::Errno) -> DriverError {
    DriverError::os(e as i32)
}

/// An `std::io::Error` as a [`DriverError`]: its errno when it has one; a
/// write of nothing when there was something to write is EIO (as the
/// driver says); anything else that is not the kernel's (tokio's "background
/// task failed", say) is an `Io` error that implicates no device.
pub(crate) fn io_err(e: &std::io::Error) -> DriverError {
    match e.raw_os_error() {
        Some(errno) => DriverError::os(errno),
        None if e.kind() == std::io::ErrorKind::WriteZero => DriverError::os(nix::libc::EIO),
        None => DriverError::Os {
            kind: OsError::Other,
            errno: disk_io_api::Errno(nix::libc::EIO),
        },
    }
}

/// What an open is for (the flag sets of `disk_io_driver::Open`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum How {
    /// `O_RDONLY | O_DIRECTORY`: a directory to fsync, list or name entries in.
    Dir,
    /// `O_PATH`: a handle to `fstat` the entry itself.
    Path,
    /// `O_RDONLY | O_NONBLOCK | O_NOCTTY`: a FIFO or device node planted in
    /// a file's place neither blocks the open nor becomes a terminal;
    /// callers `fstat` before any I/O.
    Read,
    /// `O_WRONLY | O_CREAT | O_EXCL`, with `O_DIRECT` when asked.
    CreateNew {
        /// Add `O_DIRECT`.
        direct: bool,
    },
}

/// `openat2(dir, rel)` beneath `dir`, following no symlink, entering no
/// other mount. Always `O_CLOEXEC`.
pub(crate) fn open_at<P: ?Sized + nix::NixPath>(
    dir: &File,
    rel: &P,
    how: How,
) -> Result<File, DriverError> {
    let (flags, mode) = match how {
        How::Dir => (OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0),
        How::Path => (OFlag::O_PATH, 0),
        How::Read => (OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY, 0),
        How::CreateNew { direct } => {
            let f = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
            (if direct { f | OFlag::O_DIRECT } else { f }, FILE_MODE)
        }
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    openat2(dir.as_fd(), rel, how)
        .map(File::from)
        .map_err(nix_err)
}

/// The disk root itself: an absolute path the operator configured,
/// resolved normally (symlinks included), `O_RDONLY | O_DIRECTORY`.
pub(crate) fn open_root(path: &std::path::Path) -> Result<File, DriverError> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(nix_err)?;
    Ok(File::from(fd))
}

fn kind_of(mode: u32) -> FileKind {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => FileKind::File,
        SFlag::S_IFDIR => FileKind::Dir,
        SFlag::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

fn ts(sec: i64, nsec: i64) -> Timestamp {
    Timestamp {
        sec,
        nsec: u32::try_from(nsec).unwrap_or(0),
    }
}

fn statx_of(st: &FileStat) -> Statx {
    Statx {
        kind: kind_of(st.st_mode),
        size: u64::try_from(st.st_size).unwrap_or(0),
        ino: st.st_ino,
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        mtime: ts(st.st_mtime, st.st_mtime_nsec),
        ctime: ts(st.st_ctime, st.st_ctime_nsec),
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: the entry itself.
pub(crate) fn stat_at(dir: &File, name: &Name) -> Result<Statx, DriverError> {
    nix::sys::stat::fstatat(dir.as_fd(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|st| statx_of(&st))
        .map_err(nix_err)
}

/// `fstat` of an open file (an `O_PATH` one included).
pub(crate) fn fstat(file: &File) -> Result<Statx, DriverError> {
    nix::sys::stat::fstat(file.as_fd())
        .map(|st| statx_of(&st))
        .map_err(nix_err)
}

/// `mkdirat(dir, name, 0755)`.
pub(crate) fn mkdir_at(dir: &File, name: &Name) -> Result<(), DriverError> {
    nix::sys::stat::mkdirat(
        dir.as_fd(),
        name.as_str(),
        Mode::from_bits_truncate(DIR_MODE),
    )
    .map_err(nix_err)
}

/// `unlinkat(dir, name)`, of a directory with `remove_dir`. Never follows
/// `name`: a symlink is removed itself.
pub(crate) fn unlink_at(dir: &File, name: &Name, remove_dir: bool) -> Result<(), DriverError> {
    let flag = if remove_dir {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    nix::unistd::unlinkat(dir.as_fd(), name.as_str(), flag).map_err(nix_err)
}

/// `renameat2(from_dir, from, to_dir, to)`; with `no_replace`, fails with
/// EEXIST instead of replacing `to`. Acts on the entries themselves (a
/// symlink is moved, never followed).
pub(crate) fn rename_at(
    from_dir: &File,
    from: &Name,
    to_dir: &File,
    to: &Name,
    no_replace: bool,
) -> Result<(), DriverError> {
    let flags = if no_replace {
        RenameFlags::RENAME_NOREPLACE
    } else {
        RenameFlags::empty()
    };
    nix::fcntl::renameat2(
        from_dir.as_fd(),
        from.as_str(),
        to_dir.as_fd(),
        to.as_str(),
        flags,
    )
    .map_err(nix_err)
}

/// `fsync` (or `fdatasync`).
pub(crate) fn fsync(file: &File, datasync: bool) -> Result<(), DriverError> {
    if datasync {
        nix::unistd::fdatasync(file.as_fd()).map_err(nix_err)
    } else {
        nix::unistd::fsync(file.as_fd()).map_err(nix_err)
    }
}

/// `close`, reporting its result (a close can report a deferred write
/// error on some file systems).
pub(crate) fn close(file: File) -> Result<(), DriverError> {
    nix::unistd::close(OwnedFd::from(file)).map_err(nix_err)
}

/// Turn `O_DIRECT` off on an open file (an unaligned tail cannot be
/// written with it).
pub(crate) fn clear_direct(file: &File) -> Result<(), DriverError> {
    use nix::fcntl::{fcntl, FcntlArg};
    let fl = fcntl(file.as_fd(), FcntlArg::F_GETFL).map_err(nix_err)?;
    let fl = OFlag::from_bits_retain(fl) & !OFlag::O_DIRECT;
    fcntl(file.as_fd(), FcntlArg::F_SETFL(fl))
        .map(drop)
        .map_err(nix_err)
}

/// Write all of `buf` at `offset` (positional; resubmits after short
/// writes).
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> Result<(), DriverError> {
    file.write_all_at(buf, offset).map_err(|e| io_err(&e))
}

/// Read up to `len` bytes at `offset`, stopping early only at end of file,
/// in pieces of at most `chunk` bytes.
pub(crate) fn read_range(
    file: &File,
    offset: u64,
    len: usize,
    chunk: usize,
) -> Result<Vec<u8>, DriverError> {
    let mut out = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let want = (len - done).min(chunk.max(1));
        match file.read_at(&mut out[done..done + want], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(&e)),
        }
    }
    out.truncate(done);
    Ok(out)
}

/// `fstatvfs` of the file system `file` is on.
pub(crate) fn statfs(file: &File) -> Result<Statfs, DriverError> {
    let v = nix::sys::statvfs::fstatvfs(file.as_fd()).map_err(nix_err)?;
    let frsize = v.fragment_size();
    Ok(Statfs {
        total: v.blocks() * frsize,
        available: v.blocks_available() * frsize,
        free: v.blocks_free() * frsize,
        files: v.files(),
        files_free: v.files_free(),
        read_only: v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
    })
}

/// The entries of a directory opened for this listing alone (its read
/// position is its own), at most `limit` of them, kinds from `d_type`
/// (asked of the inode, without following it, when the file system does
/// not fill it in).
pub(crate) fn read_dir(dir: File, limit: usize) -> Result<ReadDir, DriverError> {
    use nix::dir::{Dir, Type};
    let probe = dir.try_clone().map_err(|e| io_err(&e))?;
    let mut d = Dir::from_fd(OwnedFd::from(dir)).map_err(nix_err)?;
    let mut out = ReadDir::default();
    for entry in d.iter() {
        let entry = entry.map_err(nix_err)?;
        let name = std::ffi::OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        if out.entries.len() >= limit {
            out.truncated = true;
            break;
        }
        let kind = match entry.file_type() {
            Some(Type::File) => FileKind::File,
            Some(Type::Directory) => FileKind::Dir,
            Some(Type::Symlink) => FileKind::Symlink,
            Some(_) => FileKind::Other,
            None => {
                let st = nix::sys::stat::fstatat(
                    probe.as_fd(),
                    entry.file_name(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(nix_err)?;
                kind_of(st.st_mode)
            }
        };
        out.entries.push(DirEntry {
            name: name.to_os_string(),
            kind,
        });
    }
    Ok(out)
}

/// Remove up to `limit` entries of `dir` (the trash), each recursively:
/// descending with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_XDEV)` and removing with `unlinkat` relative to the
/// directory being emptied, so no symlink is followed and no other mount
/// (bind mounts included) is entered. `keep_going` is asked between
/// entries (the purge's own budget). Returns how many went.
pub(crate) fn remove_children(
    dir: &File,
    limit: usize,
    keep_going: &dyn Fn() -> bool,
) -> Result<usize, DriverError> {
    let listing = read_dir(open_at(dir, ".", How::Dir)?, limit)?;
    let mut removed = 0;
    for e in listing.entries {
        if !keep_going() {
            break;
        }
        match remove_entry(dir, e.name.as_os_str(), e.kind, 0, keep_going) {
            Ok(()) => removed += 1,
            Err(err) if err.is(OsError::NotFound) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(removed)
}

fn remove_entry(
    parent: &File,
    name: &std::ffi::OsStr,
    kind: FileKind,
    depth: usize,
    keep_going: &dyn Fn() -> bool,
) -> Result<(), DriverError> {
    if kind != FileKind::Dir {
        return nix::unistd::unlinkat(parent.as_fd(), name, UnlinkatFlags::NoRemoveDir)
            .map_err(nix_err);
    }
    if depth >= MAX_REMOVE_DEPTH {
        return Err(DriverError::os(nix::libc::ELOOP));
    }
    // A mount point inside the tree fails here with EXDEV: never purge
    // another file system, or another view of this one.
    let sub = open_at(parent, name, How::Dir)?;
    let listing = read_dir(open_at(&sub, ".", How::Dir)?, usize::MAX)?;
    for child in listing.entries {
        if !keep_going() {
            return Err(DriverError::Deadline {
                waited: std::time::Duration::ZERO,
            });
        }
        match remove_entry(
            &sub,
            child.name.as_os_str(),
            child.kind,
            depth + 1,
            keep_going,
        ) {
            Ok(()) => {}
            Err(err) if err.is(OsError::NotFound) => {}
            Err(err) => return Err(err),
        }
    }
    nix::unistd::unlinkat(parent.as_fd(), name, UnlinkatFlags::RemoveDir).map_err(nix_err)
}
