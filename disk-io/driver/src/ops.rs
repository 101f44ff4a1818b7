//! The operations the ring thread can run, each owning everything the kernel
//! points into (paths, buffers, `open_how`, `statx` output) for as long as the
//! operation lives in the op table.

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

use super::buf::IoBuf;

/// One kernel operation with its owned arguments. Internal: callers use the
/// typed calls on [`crate::Driver`], which build these and unpack results.
pub(crate) enum Op {
    /// `openat2(dirfd, path, how)`; the result is a new fd.
    OpenAt {
        /// Directory the path is relative to.
        dirfd: RawFd,
        /// Relative path.
        path: CString,
        /// Flags, mode and resolve restrictions.
        how: Box<types::OpenHow>,
        /// The new fd is closed inline on drop (`O_PATH` or a directory).
        close_inline: bool,
    },
    /// `pread(fd, buf, len, offset)`.
    Read {
        /// File.
        fd: RawFd,
        /// Destination; its valid length is set from the result.
        buf: IoBuf,
        /// Bytes to read (at most the buffer's capacity).
        len: u32,
        /// File offset.
        offset: u64,
    },
    /// `pwrite(fd, buf[skip..], offset)`.
    Write {
        /// File.
        fd: RawFd,
        /// Source bytes.
        buf: IoBuf,
        /// Bytes of `buf` already written by earlier (short) writes.
        skip: usize,
        /// File offset.
        offset: u64,
    },
    /// `fsync`/`fdatasync`.
    Fsync {
        /// File.
        fd: RawFd,
        /// `fdatasync` instead of `fsync`.
        datasync: bool,
    },
    /// `statx(dirfd, path, flags, STATX_BASIC_STATS)`.
    Statx {
        /// Directory (or the file itself with `AT_EMPTY_PATH`).
        dirfd: RawFd,
        /// Relative path, or empty with `AT_EMPTY_PATH`.
        path: CString,
        /// `AT_*` flags.
        flags: i32,
        /// Output.
        out: Box<MaybeUninit<libc::statx>>,
    },
    /// `renameat2(from_dir, from, to_dir, to, flags)`.
    RenameAt {
        /// Directory of the source.
        from_dir: RawFd,
        /// Source name.
        from: CString,
        /// Directory of the destination.
        to_dir: RawFd,
        /// Destination name.
        to: CString,
        /// `RENAME_*` flags.
        flags: u32,
    },
    /// `unlinkat(dirfd, path, flags)`.
    UnlinkAt {
        /// Directory.
        dirfd: RawFd,
        /// Relative path.
        path: CString,
        /// `AT_REMOVEDIR` or 0.
        flags: i32,
    },
    /// `mkdirat(dirfd, path, mode)`.
    MkDirAt {
        /// Directory.
        dirfd: RawFd,
        /// Relative path.
        path: CString,
        /// Permission bits.
        mode: libc::mode_t,
    },
    /// `close(fd)`.
    Close {
        /// The fd to close.
        fd: RawFd,
    },
}

impl Op {
    /// Build the SQE. The pointers inside stay valid because `self` is kept
    /// in the op table, unmoved on the heap where it matters, until the CQE.
    /// With `nowait`, reads and writes carry `RWF_NOWAIT`: the kernel either
    /// issues them without blocking the submitting thread or fails them with
    /// `-EAGAIN` (`-EOPNOTSUPP` where the file has no non-blocking path),
    /// and never punts them to io-wq (see `fast`).
    pub(crate) fn entry(&mut self, nowait: bool) -> squeue::Entry {
        let rw_flags: i32 = if nowait { libc::RWF_NOWAIT } else { 0 };
        match self {
            // Always punted to io-wq: a non-blocking open attempt inline can
            // still block in a file system's open handler (FUSE sends OPEN and
            // waits, whatever O_NONBLOCK says), which would stall the ring
            // thread and every other op of this disk with it.
            Op::OpenAt {
                dirfd, path, how, ..
            } => opcode::OpenAt2::new(types::Fd(*dirfd), path.as_ptr(), &**how as *const _)
                .build()
                .flags(squeue::Flags::ASYNC),
            Op::Read {
                fd,
                buf,
                len,
                offset,
            } => {
                let len = (*len).min(buf.capacity() as u32);
                opcode::Read::new(types::Fd(*fd), buf.as_mut_ptr(), len)
                    .offset(*offset)
                    .rw_flags(rw_flags)
                    .build()
            }
            Op::Write {
                fd,
                buf,
                skip,
                offset,
            } => {
                let skip = (*skip).min(buf.len());
                let len = (buf.len() - skip) as u32;
                // SAFETY: skip <= len of the valid bytes, so the pointer stays in bounds.
                let ptr = unsafe { buf.as_ptr().add(skip) };
                opcode::Write::new(types::Fd(*fd), ptr, len)
                    .offset(*offset + skip as u64)
                    .rw_flags(rw_flags)
                    .build()
            }
            Op::Fsync { fd, datasync } => {
                let flags = if *datasync {
                    types::FsyncFlags::DATASYNC
                } else {
                    types::FsyncFlags::empty()
                };
                opcode::Fsync::new(types::Fd(*fd)).flags(flags).build()
            }
            Op::Statx {
                dirfd,
                path,
                flags,
                out,
            } => opcode::Statx::new(
                types::Fd(*dirfd),
                path.as_ptr(),
                out.as_mut_ptr() as *mut types::statx,
            )
            .flags(*flags)
            .mask(libc::STATX_BASIC_STATS)
            .build(),
            Op::RenameAt {
                from_dir,
                from,
                to_dir,
                to,
                flags,
            } => opcode::RenameAt::new(
                types::Fd(*from_dir),
                from.as_ptr(),
                types::Fd(*to_dir),
                to.as_ptr(),
            )
            .flags(*flags)
            .build(),
            Op::UnlinkAt { dirfd, path, flags } => {
                opcode::UnlinkAt::new(types::Fd(*dirfd), path.as_ptr())
                    .flags(*flags)
                    .build()
            }
            Op::MkDirAt { dirfd, path, mode } => {
                opcode::MkDirAt::new(types::Fd(*dirfd), path.as_ptr())
                    .mode(*mode)
                    .build()
            }
            Op::Close { fd } => opcode::Close::new(types::Fd(*fd)).build(),
        }
    }

    /// A read or write: what the fast ring may run (see `fast`).
    pub(crate) fn is_data(&self) -> bool {
        matches!(self, Op::Read { .. } | Op::Write { .. })
    }

    /// After a successful read, mark the bytes the kernel wrote as valid.
    pub(crate) fn complete(&mut self, res: i32) {
        if let Op::Read { buf, .. } = self {
            if res > 0 {
                let n = (res as usize).min(buf.capacity());
                // SAFETY: the kernel reported `res` bytes written into the buffer.
                unsafe { buf.set_len(n) };
            }
        }
    }
}
