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
    _permit: OwnedSemaphorePermit,
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
        let job = Job {
            state: state.clone(),
            deadline,
            _permit: permit,
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
                    .is_err()
                {
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
    })
}

pub(crate) fn read_dir(dir: &File, limit: usize) -> Result<ReadDir, DriverError> {
    use nix::dir::{Dir, Type};
    // A dup shares the open file description, so closing it when `Dir`
    // drops releases nothing on the file system (no RELEASEDIR on FUSE);
    // the description closes with `dir`, through the ring.
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
        Err(DriverError::os(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ))
    }
}

pub(crate) fn remove_children(dir: &File, limit: usize) -> Result<usize, DriverError> {
    let listing = read_dir(dir, limit)?;
    let mut removed = 0;
    for e in listing.entries {
        // `/proc/self/fd/N/name` starts at this very directory, whatever
        // its path is now; std's remove_dir_all then walks with
        // openat(O_NOFOLLOW) and unlinkat, never through a symlink.
        let mut p = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.raw()));
        p.push(&e.name);
        let r = if e.kind == FileKind::Dir {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match r {
            Ok(()) => removed += 1,
            // Another purge got there first.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(DriverError::os(err.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
    Ok(removed)
}
