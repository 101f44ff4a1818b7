//! [`File`]: an fd owned by the driver; [`Name`]: one path component;
//! [`Open`]: the opens disk-io makes.
//!
//! **Invariant:** an fd is closed exactly once, and a regular file's fd is
//! closed through the ring, never by a caller's thread: closing a file on a
//! FUSE mount sends FLUSH and waits for the daemon, so a close on a hung
//! mount must be an op the ring can leave behind, not a syscall that blocks
//! whoever dropped the handle. `O_PATH` and directory fds are closed inline
//! on drop: an `O_PATH` fd never reaches the file system, and a directory
//! has no flush (FUSE sends its RELEASEDIR in the background), so neither
//! close can wait on a device, and a dropped disk lets go of its mount at
//! once.
//!
//! **Invariant:** while an op that uses a `File` is in flight, the op table
//! holds a clone of it, so the fd cannot be closed (and its number reused)
//! under the kernel, even when the caller left at its deadline.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;
use tokio::sync::OwnedSemaphorePermit;

use crate::ops::Op;
use crate::ring::{Msg, Submission};

/// An open file or directory. Cheap to clone; the fd is closed when the
/// last clone (including the ones in-flight ops hold) is dropped, through
/// the ring, or with [`crate::Driver::close`] to wait for the result.
#[derive(Clone)]
pub struct File {
    pub(crate) inner: Arc<FileInner>,
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File")
            .field("fd", &self.inner.fd)
            .field("close_inline", &self.inner.close_inline)
            .finish()
    }
}

impl File {
    pub(crate) fn raw(&self) -> RawFd {
        self.inner.fd
    }

    /// Hand an fd the caller opened itself to the driver (the bench engine
    /// opens its test file with std): it is closed through the ring when
    /// the last clone goes.
    #[cfg(feature = "raw")]
    pub fn adopt(driver: &crate::Driver, fd: std::os::fd::OwnedFd) -> File {
        use std::os::fd::IntoRawFd;
        File {
            inner: Arc::new(FileInner::new(
                fd.into_raw_fd(),
                false,
                driver.shared.closer.clone(),
                None,
            )),
        }
    }

    /// Turn `O_DIRECT` on or off for this open file (an fcntl on the
    /// descriptor's flags, never I/O, so it cannot block): a shard writer
    /// writes its unaligned tail without it.
    pub fn set_direct(&self, on: bool) -> Result<(), crate::DriverError> {
        let fd = self.raw();
        // SAFETY: fcntl on an fd this handle keeps open; no memory involved.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let new = if on {
            fl | libc::O_DIRECT
        } else {
            fl & !libc::O_DIRECT
        };
        // SAFETY: as above.
        if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, new) } < 0 {
            return Err(crate::DriverError::last_os());
        }
        Ok(())
    }

    /// Whether this fd is closed inline on drop (an `O_PATH` or directory
    /// handle) rather than through the ring.
    pub fn closes_inline(&self) -> bool {
        self.inner.close_inline
    }
}

/// How an fd goes back to the kernel.
#[derive(Clone)]
pub(crate) struct Closer {
    pub tx: Sender<Msg>,
    pub wake: Arc<std::os::fd::OwnedFd>,
    pub parked: Arc<AtomicBool>,
    /// Whether the ring still takes closes. The ring clears it under the
    /// lock before its last drain of the channel, so a close is either
    /// queued before that drain (and run by it) or refused (and run by the
    /// dropping thread): never lost in a channel nobody reads.
    pub accepting: Arc<std::sync::Mutex<bool>>,
}

impl Closer {
    /// Close `fd` through the ring, releasing `permit` after its CQE; if
    /// the ring no longer takes closes, close it here and now.
    pub(crate) fn close(&self, fd: RawFd, permit: Option<OwnedSemaphorePermit>) {
        let accepting = self.accepting.lock().unwrap_or_else(|e| e.into_inner());
        if *accepting {
            let sub = Submission::fire_and_forget(Op::Close { fd }, permit);
            // The channel has room for a close per file permit.
            if self.tx.try_send(Msg::Submit(sub)).is_ok() {
                drop(accepting);
                if self.parked.swap(false, Ordering::SeqCst) {
                    crate::wake(&self.wake);
                }
                return;
            }
        }
        drop(accepting);
        // The ring is gone (the driver shut down): nothing is left that
        // could wait on this close except this thread.
        close_now(fd);
    }
}

pub(crate) struct FileInner {
    fd: RawFd,
    close_inline: bool,
    closer: Closer,
    /// The open-file permit; released when the close completes.
    permit: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
    /// Set when [`crate::Driver::close`] took the fd over.
    taken: AtomicBool,
    /// Which of this file's ops go straight to the ring thread
    /// ([`NOWAIT_READS`] | [`NOWAIT_WRITES`] bits): the file system said
    /// `-EOPNOTSUPP` to `RWF_NOWAIT` (both), or a write said `-EAGAIN`
    /// (writes: buffered writes on a file system without async buffered
    /// writes, and allocating O_DIRECT writes, refuse every time).
    nowait_refused: std::sync::atomic::AtomicU8,
}

/// Reads of this file skip the fast ring.
pub(crate) const NOWAIT_READS: u8 = 1;
/// Writes of this file skip the fast ring.
pub(crate) const NOWAIT_WRITES: u8 = 2;

impl FileInner {
    pub(crate) fn new(
        fd: RawFd,
        close_inline: bool,
        closer: Closer,
        permit: Option<OwnedSemaphorePermit>,
    ) -> FileInner {
        debug_assert!(fd >= 0);
        FileInner {
            fd,
            close_inline,
            closer,
            permit: std::sync::Mutex::new(permit),
            taken: AtomicBool::new(false),
            nowait_refused: std::sync::atomic::AtomicU8::new(0),
        }
    }

    /// Whether a `RWF_NOWAIT` op of kind `kind` (a `NOWAIT_*` bit) on this
    /// file may be tried.
    pub(crate) fn nowait_capable(&self, kind: u8) -> bool {
        self.nowait_refused.load(Ordering::Relaxed) & kind == 0
    }

    /// Send ops of the `kinds` bits to the ring thread from now on.
    pub(crate) fn refuse_nowait(&self, kinds: u8) {
        self.nowait_refused.fetch_or(kinds, Ordering::Relaxed);
    }

    pub(crate) fn closes_inline(&self) -> bool {
        self.close_inline
    }

    /// Take the fd and permit over (for a waited close); the drop then
    /// does nothing.
    pub(crate) fn take(&self) -> (RawFd, Option<OwnedSemaphorePermit>) {
        let was = self.taken.swap(true, Ordering::AcqRel);
        assert!(!was, "an fd is taken over once");
        (self.fd, self.take_permit())
    }

    fn take_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permit.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Drop for FileInner {
    fn drop(&mut self) {
        if self.taken.load(Ordering::Acquire) {
            return;
        }
        let permit = self.take_permit();
        if self.close_inline {
            // See the module's invariant: this close cannot block on a device.
            close_now(self.fd);
            drop(permit);
            return;
        }
        self.closer.close(self.fd, permit);
    }
}

pub(crate) fn close_now(fd: RawFd) {
    // SAFETY: the caller owns `fd` and closes it exactly once.
    unsafe { libc::close(fd) };
}

/// One path component: not empty, not `.` or `..`, no `/`, no NUL, at most
/// 255 bytes. Every name-based call (`statx`, `mkdirat`, `unlinkat`,
/// `renameat`) takes one, relative to a directory [`File`], so no such call
/// can walk through anything on the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name(CString);

/// Longest component (NAME_MAX).
pub const NAME_MAX: usize = 255;

impl Name {
    /// A component, or `None` if `s` is not a single plain one.
    pub fn new(s: &str) -> Option<Name> {
        if s.is_empty()
            || s == "."
            || s == ".."
            || s.len() > NAME_MAX
            || s.bytes().any(|b| b == b'/' || b == 0)
        {
            return None;
        }
        CString::new(s).ok().map(Name)
    }

    /// The component as text.
    pub fn as_str(&self) -> &str {
        // Built from a &str in `new`.
        self.0.to_str().unwrap_or_default()
    }

    pub(crate) fn c_string(&self) -> CString {
        self.0.clone()
    }
}

/// A relative path for an open: components as for [`Name`], joined by `/`.
/// Opens resolve it with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so it
/// cannot leave its directory or pass through any symlink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelPath(CString);

impl RelPath {
    /// A relative path, or `None` if any component is not a plain [`Name`].
    pub fn new(s: &str) -> Option<RelPath> {
        if s.split('/').all(|c| Name::new(c).is_some()) {
            CString::new(s).ok().map(RelPath)
        } else {
            None
        }
    }

    /// `.`: the directory itself (a second open of it, e.g. for a listing
    /// with its own read position).
    pub fn dot() -> RelPath {
        RelPath(c".".to_owned())
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    pub(crate) fn c_string(&self) -> CString {
        self.0.clone()
    }
}

impl From<Name> for RelPath {
    fn from(n: Name) -> RelPath {
        RelPath(n.0)
    }
}

/// What an open is for. Always `O_CLOEXEC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Open {
    pub(crate) flags: i32,
    pub(crate) mode: u32,
}

impl Open {
    /// `O_PATH | O_DIRECTORY`: a directory handle to name entries in.
    pub fn dir_path() -> Open {
        Open {
            flags: libc::O_PATH | libc::O_DIRECTORY,
            mode: 0,
        }
    }

    /// `O_PATH`: a handle to `fstat` the entry itself (with
    /// `RESOLVE_NO_SYMLINKS`, a symlink in its place fails the open).
    pub fn path() -> Open {
        Open {
            flags: libc::O_PATH,
            mode: 0,
        }
    }

    /// `O_RDONLY | O_DIRECTORY`: a directory to fsync or list.
    pub fn dir() -> Open {
        Open {
            flags: libc::O_RDONLY | libc::O_DIRECTORY,
            mode: 0,
        }
    }

    /// `O_RDONLY | O_NONBLOCK | O_NOCTTY`: opening a FIFO or a device node
    /// planted in a file's place neither blocks nor acquires a terminal;
    /// callers `fstat` before any I/O and refuse what is not a regular file.
    /// (`O_NONBLOCK` changes nothing for a regular file's reads.)
    pub fn read() -> Open {
        Open {
            flags: libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
            mode: 0,
        }
    }

    /// `O_WRONLY | O_CREAT | O_EXCL`.
    pub fn create_new(mode: u32) -> Open {
        Open {
            flags: libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            mode,
        }
    }

    /// Add `O_DIRECT`.
    pub fn direct(self) -> Open {
        Open {
            flags: self.flags | libc::O_DIRECT,
            ..self
        }
    }

    /// `O_PATH` or `O_DIRECTORY`: closed inline (see the module docs).
    pub(crate) fn closes_inline(self) -> bool {
        self.flags & (libc::O_PATH | libc::O_DIRECTORY) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_plain_components() {
        for ok in ["a", "x..y", ".hidden", "tmp-1"] {
            assert!(Name::new(ok).is_some(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/a", "a\0b", &"x".repeat(256)] {
            assert!(Name::new(bad).is_none(), "{bad:?}");
        }
        assert!(RelPath::new("v/a/b").is_some());
        for bad in ["", "v//a", "/v", "v/", "v/../x", "v/./x"] {
            assert!(RelPath::new(bad).is_none(), "{bad:?}");
        }
    }
}
