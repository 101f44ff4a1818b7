//! A small, bounded pool of threads for the calls io_uring has no opcode
//! for (getdents for `list_dir`, statfs for `disk_info`).
//!
//! Same contract as ring ops: the caller waits at most until its deadline,
//! the in-flight permit stays with the job until the job really ends, and a
//! job whose caller left while it ran counts as a zombie. A job still queued
//! when its caller leaves is skipped. The number of threads is fixed, so a
//! hung device can pin at most that many.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::error::DriverError;
use crate::DriverStats;
use disk_io_api::Deadline;

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
/// Caller left before the job started: skip it.
const ABANDONED: u8 = 3;
/// Caller left while the job ran: a zombie until it ends.
const ZOMBIE: u8 = 4;

struct Job {
    state: Arc<AtomicU8>,
    deadline: Deadline,
    /// The in-flight permit. A caller that leaves before the job started
    /// takes it back at once (the job will be skipped), so queued jobs of
    /// departed callers never starve ring ops of permits.
    _permit: Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>,
    work: Box<dyn FnOnce() + Send>,
}

pub(crate) struct BlockingPool {
    tx: Sender<Job>,
    stats: Arc<DriverStats>,
}

impl BlockingPool {
    pub(crate) fn start(
        name: &str,
        threads: usize,
        queue: usize,
        stats: Arc<DriverStats>,
    ) -> std::io::Result<BlockingPool> {
        // The queue holds at most one job per in-flight permit.
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue);
        for i in 0..threads {
            let rx: Receiver<Job> = rx.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name(format!("disk-io-blk{i}-{}", crate::short(name)))
                .spawn(move || worker(rx, stats))?;
        }
        Ok(BlockingPool { tx, stats })
    }

    pub(crate) async fn run<T, F>(
        &self,
        deadline: Deadline,
        started: Instant,
        permit: OwnedSemaphorePermit,
        f: F,
    ) -> Result<T, DriverError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let permit = Arc::new(std::sync::Mutex::new(Some(permit)));
        let job = Job {
            state: state.clone(),
            deadline,
            _permit: permit.clone(),
            work: Box::new(move || {
                let _ = tx.send(f());
            }),
        };
        // The queue holds one job per in-flight permit, and the caller holds
        // one: it cannot be full. A failed send means the workers are gone.
        if self.tx.try_send(job).is_err() {
            return Err(DriverError::ShutDown);
        }
        let timed_out = || DriverError::Deadline {
            waited: started.elapsed(),
        };
        match tokio::time::timeout_at(crate::tokio_instant(deadline), rx).await {
            Ok(Ok(v)) => Ok(v),
            // The job was skipped (its deadline passed in the queue) or the
            // pool is gone.
            Ok(Err(_)) if deadline.is_expired() => Err(timed_out()),
            Ok(Err(_)) => Err(DriverError::ShutDown),
            Err(_) => {
                // Leave: a queued job is skipped, a running one is a zombie.
                // Count the zombie before claiming it, so the worker's
                // decrement (which follows our claim) can never run first
                // and wrap the counter.
                if state
                    .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    // Never started, never will: its permit goes back now.
                    drop(permit.lock().unwrap_or_else(|e| e.into_inner()).take());
                } else {
                    self.stats.zombies.fetch_add(1, Ordering::AcqRel);
                    if state
                        .compare_exchange(RUNNING, ZOMBIE, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        // It finished meanwhile: not a zombie after all.
                        self.stats.zombies.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                Err(timed_out())
            }
        }
    }
}

fn worker(rx: Receiver<Job>, stats: Arc<DriverStats>) {
    // Ends when the pool (its Sender) is dropped and the queue is drained.
    for job in rx {
        if job.deadline.is_expired()
            || job
                .state
                .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            continue; // dropping the job releases its permit
        }
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        (job.work)();
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if job
            .state
            .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // The caller left while we ran.
            job.state.store(DONE, Ordering::Release);
            let before = stats.zombies.fetch_sub(1, Ordering::AcqRel);
            debug_assert!(before > 0, "zombie counted before it was claimed");
        }
    }
}

// ---- the jobs ---------------------------------------------------------------
// Each runs on a pool thread, holding a clone of the `File` it works on, so
// the fd stays open until the job ends even if its caller left.

use std::os::fd::BorrowedFd;

use crate::file::File;
use crate::stat::{DirEntry, FileKind, ReadDir, Statfs};

fn borrow(file: &File) -> BorrowedFd<'_> {
    // SAFETY: `file` owns the fd and outlives the borrow.
    unsafe { BorrowedFd::borrow_raw(file.raw()) }
}

fn nix_err(e: nix::errno::Errno) -> DriverError {
    DriverError::os(e as i32)
}

pub(crate) fn statfs(file: &File) -> Result<Statfs, DriverError> {
    let v = nix::sys::statvfs::fstatvfs(borrow(file)).map_err(nix_err)?;
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

pub(crate) fn read_dir(dir: &File, limit: usize) -> Result<ReadDir, DriverError> {
    use nix::dir::{Dir, Type};
    // A dup shares the open file description, so closing it when `Dir`
    // drops releases nothing on the file system (no RELEASEDIR on FUSE);
    // the description closes when the last clone of `dir` goes.
    let dup = nix::unistd::dup(borrow(dir)).map_err(nix_err)?;
    let mut d = Dir::from_fd(dup).map_err(nix_err)?;
    let mut out = ReadDir::default();
    for entry in d.iter() {
        let entry = entry.map_err(nix_err)?;
        let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
            entry.file_name().to_bytes(),
        );
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
            // The file system does not fill d_type: ask the inode.
            None => stat_kind(dir, entry.file_name())?,
        };
        out.entries.push(DirEntry {
            name: name.to_os_string(),
            kind,
        });
    }
    Ok(out)
}

fn stat_kind(dir: &File, name: &std::ffi::CStr) -> Result<FileKind, DriverError> {
    use nix::sys::stat::{fstatat, SFlag};
    let st =
        fstatat(borrow(dir), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(nix_err)?;
    let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    Ok(match fmt {
        SFlag::S_IFREG => FileKind::File,
        SFlag::S_IFDIR => FileKind::Dir,
        SFlag::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    })
}

pub(crate) fn try_lock_exclusive(file: &File) -> Result<(), DriverError> {
    // SAFETY: flock on an fd `file` keeps open; no memory is involved.
    let r = unsafe { libc::flock(file.raw(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Ok(())
    } else {
        Err(DriverError::last_os())
    }
}

/// Deepest tree [`remove_children`] walks (a tree deeper than any path
/// disk-io can create is not ours).
const MAX_REMOVE_DEPTH: usize = 512;

/// Remove up to `limit` entries of `dir`, each recursively, descending
/// with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`
/// and removing with `unlinkat`, relative to the directory being emptied:
/// no symlink is followed (a link is removed itself) and no other mount is
/// entered, bind mounts of the same file system included (the walk stops
/// there with `CrossesBoundary`, and the tree is left in place).
pub(crate) fn remove_children(dir: &File, limit: usize) -> Result<usize, DriverError> {
    let listing = read_dir(dir, limit)?;
    let mut removed = 0;
    for e in listing.entries {
        match remove_entry(borrow(dir), &e.name, e.kind, 0) {
            Ok(()) => removed += 1,
            // Another purge got there first.
            Err(err) if err.is(crate::OsError::NotFound) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(removed)
}

fn remove_entry(
    parent: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    kind: FileKind,
    depth: usize,
) -> Result<(), DriverError> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use nix::unistd::{unlinkat, UnlinkatFlags};
    if kind != FileKind::Dir {
        return unlinkat(parent, name, UnlinkatFlags::NoRemoveDir).map_err(nix_err);
    }
    if depth >= MAX_REMOVE_DEPTH {
        return Err(DriverError::os(libc::ELOOP));
    }
    // A mount point inside the tree fails here with EXDEV: never purge
    // another file system, or another view of this one.
    let sub = openat2(
        parent,
        name,
        OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            ),
    )
    .map_err(nix_err)?;
    let mut d =
        nix::dir::Dir::from_fd(nix::unistd::dup(&sub).map_err(nix_err)?).map_err(nix_err)?;
    let mut children = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(nix_err)?;
        let child = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
            entry.file_name().to_bytes(),
        );
        if child == "." || child == ".." {
            continue;
        }
        let kind = match entry.file_type() {
            Some(nix::dir::Type::Directory) => FileKind::Dir,
            Some(_) => FileKind::File,
            None => {
                let st =
                    nix::sys::stat::fstatat(&sub, child, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map_err(nix_err)?;
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    FileKind::Dir
                } else {
                    FileKind::File
                }
            }
        };
        children.push((child.to_os_string(), kind));
    }
    drop(d);
    for (child, kind) in children {
        match remove_entry(std::os::fd::AsFd::as_fd(&sub), &child, kind, depth + 1) {
            Ok(()) => {}
            Err(err) if err.is(crate::OsError::NotFound) => {}
            Err(err) => return Err(err),
        }
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir).map_err(nix_err)
}
