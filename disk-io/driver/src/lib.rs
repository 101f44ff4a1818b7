//! # disk-io-driver
//!
//! The per-disk io_uring driver: a handle callers share ([`Driver`]) with
//! one typed, deadline-bounded call per kernel operation ([`Driver::open`]
//! → [`File`], [`Driver::statx`] → [`Statx`], [`Driver::read`] → [`IoBuf`],
//! …), the ring thread behind it (`ring`), the owned operations (`ops`,
//! [`buf`]) and a bounded blocking pool for what io_uring has no opcode for
//! (`pool`: getdents, statfs, flock, tree removal).
//!
//! **Boundary:** all of disk-io's `unsafe` code and every io_uring and libc
//! call live in this crate. Callers never see an SQE, a raw fd or an errno
//! number they have to interpret: errors are [`DriverError`] with a typed
//! [`OsError`].
//!
//! Flow of one operation:
//! 1. the caller takes an in-flight permit (waiting at most until its
//!    deadline),
//! 2. sends a submission over a bounded crossbeam channel and, if the ring
//!    thread sleeps, bumps an eventfd it always has a read pending on,
//! 3. the ring thread puts the op in its table and submits it linked to a
//!    `LinkTimeout` for the remaining budget, and also keeps the deadline in
//!    a heap it waits on with an hrtimer (io-wq ignores LinkTimeouts of ops
//!    blocked inside it on 6.18),
//! 4. the CQE comes back over a oneshot; the caller also waits with
//!    `timeout_at(deadline)` so it leaves on time whatever happens, and on
//!    leaving asks the ring to `AsyncCancel`.
//!
//! **Invariant:** the in-flight permit is released when the slot is freed,
//! after the CQE: an op the kernel could not cancel (a zombie) keeps its
//! permit, so a hung device can hold at most `max_in_flight` operations,
//! buffers and io-wq workers.
//!
//! **Invariant:** every open relative to a directory resolves with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV` (no symlink, no way out, no other mount), and every
//! name-based call takes a single [`Name`]: nothing this driver does
//! relative to a directory follows a symlink or leaves that directory.

pub mod buf;
mod error;
mod fast;
mod file;
mod ops;
mod pool;
#[cfg(feature = "raw")]
mod raw;
mod ring;
mod stat;
mod table;

pub use buf::{AlignedBuf, IoBuf};
pub use error::{DriverError, OsError, EINVAL, EIO};
pub use file::{File, Name, Open, RelPath, NAME_MAX};
#[cfg(feature = "raw")]
pub use raw::KernelDeadline;
pub use stat::{DirEntry, FileKind, ReadDir, Statfs, Statx, Timestamp};

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use disk_io_api::Deadline;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use file::Closer;
use ops::Op;
use ring::{Completion, Msg, RingParams, RingThread, Submission};

/// Limits of one driver (ring, op table, blocking pool).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    /// Submission queue entries (the completion queue gets four times as
    /// many). Rounded up to a power of two by the kernel.
    pub ring_entries: u32,
    /// Operations in flight at once (io_uring ops and blocking-pool jobs
    /// together). A permit is held until the kernel's completion arrives, so
    /// a hung disk can never hold more than this many operations.
    pub max_in_flight: usize,
    /// Open file handles (files, directories, `O_PATH` handles) at once.
    pub max_open_files: usize,
    /// io-wq bounded workers (regular file I/O) for this disk's ring.
    pub iowq_bounded_workers: u32,
    /// io-wq unbounded workers (FIFOs, sockets) for this disk's ring.
    pub iowq_unbounded_workers: u32,
    /// Threads of the blocking pool.
    pub blocking_threads: usize,
    /// Operations whose caller has gone but whose completion has not come
    /// back, beyond which the disk is taken out (the disk's monitor reads
    /// [`DriverStats::zombies`] against it).
    pub zombie_cap: usize,
    /// How long a dropped driver's ring thread waits for outstanding ops
    /// before it leaks them (bounds teardown, never a caller).
    pub shutdown_grace: Duration,
    /// Reads and writes go through the fast ring (submitted from the
    /// caller's thread with `RWF_NOWAIT`, reaped on the runtime; see
    /// `fast`), falling back to the ring thread when the kernel would block.
    /// Off: every op goes through the ring thread (the bench prices both).
    pub fast_path: bool,
    /// How often a caller waiting on the fast ring looks at its CQ itself,
    /// in case the reaper cannot run (its runtime shut down or is not being
    /// driven): the most such a completion can be late.
    pub fast_reap_backstop: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            ring_entries: 256,
            max_in_flight: 128,
            max_open_files: 256,
            iowq_bounded_workers: 8,
            iowq_unbounded_workers: 4,
            blocking_threads: 2,
            zombie_cap: 32,
            shutdown_grace: Duration::from_secs(2),
            fast_path: true,
            fast_reap_backstop: Duration::from_millis(20),
        }
    }
}

impl DriverConfig {
    /// Why this configuration cannot work, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.ring_entries == 0 {
            return Err("driver.ring_entries must be > 0".into());
        }
        if self.max_in_flight == 0 {
            return Err("driver.max_in_flight must be > 0".into());
        }
        if self.max_open_files == 0 {
            return Err("driver.max_open_files must be > 0".into());
        }
        if self.fast_reap_backstop.is_zero() {
            return Err("driver.fast_reap_backstop must be > 0".into());
        }
        if self.blocking_threads == 0 {
            return Err("driver.blocking_threads must be > 0".into());
        }
        if self.iowq_bounded_workers == 0 || self.iowq_unbounded_workers == 0 {
            return Err("driver.iowq_*_workers must be > 0".into());
        }
        // The cap must be reachable: below max_in_flight, or zombies could
        // never exceed it (they each hold an in-flight permit).
        if self.zombie_cap == 0 || self.zombie_cap >= self.max_in_flight {
            return Err("driver.zombie_cap must be in 1..max_in_flight".into());
        }
        Ok(())
    }
}

/// Counters shared by the ring thread, the blocking pool and the disk's
/// monitor.
#[derive(Debug, Default)]
pub struct DriverStats {
    /// Operations in the op table or running in the blocking pool.
    pub in_flight: AtomicUsize,
    /// Operations whose caller has gone but whose completion has not come.
    pub zombies: AtomicUsize,
    /// Operations submitted to the kernel.
    pub submitted: AtomicU64,
    /// Completions received.
    pub completed: AtomicU64,
    /// Completions that were cancellations by the deadline.
    pub timed_out: AtomicU64,
    /// Reads and writes submitted on the fast ring.
    pub fast_submitted: AtomicU64,
    /// Fast-ring ops the kernel refused to run without blocking
    /// (`-EAGAIN`, `-EOPNOTSUPP`), run again on the ring thread.
    pub fast_fallbacks: AtomicU64,
}

impl DriverStats {
    /// Current zombie count.
    pub fn zombies(&self) -> usize {
        self.zombies.load(Ordering::Relaxed)
    }

    /// Current in-flight count.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

struct Shared {
    tx: Sender<Msg>,
    /// `None` when [`DriverConfig::fast_path`] is off.
    fast: Option<Arc<fast::FastRing>>,
    fast_reap_backstop: Duration,
    closer: Closer,
    inflight: Arc<Semaphore>,
    files: Arc<Semaphore>,
    stats: Arc<DriverStats>,
    next_op_id: AtomicU64,
    pool: pool::BlockingPool,
    /// One thread, one job at a time, for tree removal (trash purges): a
    /// purge is long and must not take the pool's threads or the disk's
    /// in-flight permits from callers.
    janitor: pool::BlockingPool,
    janitor_permit: Arc<Semaphore>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Shared {
    /// Wake the ring thread if it sleeps (see `RingParams::parked`).
    fn nudge(&self) {
        if self.closer.parked.swap(false, Ordering::SeqCst) {
            wake(&self.closer.wake);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(f) = &self.fast {
            f.close();
        }
        let _ = self.tx.try_send(Msg::Shutdown);
        wake(&self.closer.wake);
        // Not joined: the thread may wait up to the shutdown grace for a
        // hung device, and a drop must not block its caller for that long.
        drop(self.thread.lock().map(|mut t| t.take()));
    }
}

pub(crate) fn wake(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a valid u64 to an eventfd we own. A full
    // counter (EAGAIN) still means a wake is pending, so the result is moot.
    unsafe {
        libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8);
    }
}

/// Close every fd from `first` up (`close_range`), for a process that must
/// not hold descriptors it inherited: `diskctl`'s I/O worker, which may
/// outlive its parent on a hung disk and must not keep a caller's pipe or
/// socket open. Call it first thing in `main`, before anything opens fds.
pub fn close_inherited_fds(first: u32) -> Result<(), DriverError> {
    // SAFETY: close_range takes plain integers; closing fds that nothing in
    // this process uses yet (the caller's contract) cannot free memory.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if r == 0 {
        Ok(())
    } else {
        Err(DriverError::last_os())
    }
}

pub(crate) fn tokio_instant(d: Deadline) -> tokio::time::Instant {
    tokio::time::Instant::from_std(d.instant())
}

/// Handle to one disk's ring thread. Cheap to clone; `Send + Sync`; usable
/// from any tokio runtime.
#[derive(Clone)]
pub struct Driver {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("in_flight", &self.shared.stats.in_flight())
            .field("zombies", &self.shared.stats.zombies())
            .finish()
    }
}

/// What one kernel op came back with.
struct Done {
    res: i32,
    op: Op,
    file: Option<File>,
}

/// How one submission ended, short of an error.
enum Attempt {
    Done(Done),
    /// The fast ring's kernel would have blocked (`-EAGAIN`), or the file
    /// has no non-blocking path at all (`unsupported`: `-EOPNOTSUPP`).
    WouldBlock {
        op: Op,
        unsupported: bool,
    },
}

impl Driver {
    /// Start a ring thread named after `name` with the given limits.
    pub fn start(name: &str, cfg: &DriverConfig) -> Result<Driver, DriverError> {
        cfg.check().map_err(|_| DriverError::os(libc::EINVAL))?;
        let io_err = |e: std::io::Error| DriverError::os(e.raw_os_error().unwrap_or(libc::EIO));
        // SAFETY: plain syscall; the fd is checked and owned right after.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io_err(std::io::Error::last_os_error()));
        }
        // SAFETY: efd is a fresh fd nobody else owns.
        let wake_fd = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let table_capacity = cfg.max_in_flight + cfg.max_open_files;
        // Bounded by construction: at most one Submit and one Cancel per
        // in-flight permit, one close per file permit, and a shutdown.
        let (tx, rx) = crossbeam_channel::bounded(2 * cfg.max_in_flight + cfg.max_open_files + 4);
        let stats = Arc::new(DriverStats::default());
        let closer = Closer {
            tx: tx.clone(),
            wake: wake_fd.clone(),
            parked: Arc::new(AtomicBool::new(false)),
            accepting: Arc::new(Mutex::new(true)),
        };
        let (init_tx, init_rx) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let params = RingParams {
                name: name.to_string(),
                parked: closer.parked.clone(),
                entries: cfg.ring_entries,
                table_capacity,
                iowq_max: [cfg.iowq_bounded_workers, cfg.iowq_unbounded_workers],
                rx,
                wake_fd: wake_fd.clone(),
                stats: stats.clone(),
                shutdown_grace: cfg.shutdown_grace,
                closer: closer.clone(),
            };
            std::thread::Builder::new()
                .name(format!("disk-io-ring-{}", short(name)))
                .spawn(move || match RingThread::new(params) {
                    Ok(ring) => {
                        let _ = init_tx.send(Ok(()));
                        ring.run();
                    }
                    Err(e) => {
                        let _ = init_tx.send(Err(e));
                    }
                })
                .map_err(io_err)?
        };
        match init_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io_err(e)),
            Err(_) => return Err(DriverError::ShutDown),
        }
        let pool =
            pool::BlockingPool::start(name, cfg.blocking_threads, cfg.max_in_flight, stats.clone())
                .map_err(io_err)?;
        // Its own counters: a purge the caller stopped waiting for is not one
        // of the disk's zombies.
        let janitor = pool::BlockingPool::start(
            &format!("jan-{name}"),
            1,
            1,
            Arc::new(DriverStats::default()),
        )
        .map_err(io_err)?;
        let fast = if cfg.fast_path {
            let ring = fast::FastRing::new(
                name,
                cfg.ring_entries,
                cfg.max_in_flight,
                stats.clone(),
                closer.clone(),
            )
            .map_err(io_err)?;
            Some(Arc::new(ring))
        } else {
            None
        };
        Ok(Driver {
            shared: Arc::new(Shared {
                tx,
                fast,
                fast_reap_backstop: cfg.fast_reap_backstop,
                closer,
                inflight: Arc::new(Semaphore::new(cfg.max_in_flight)),
                files: Arc::new(Semaphore::new(cfg.max_open_files)),
                stats,
                next_op_id: AtomicU64::new(1),
                pool,
                janitor,
                janitor_permit: Arc::new(Semaphore::new(1)),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<DriverStats> {
        &self.shared.stats
    }

    /// Free in-flight permits right now.
    pub fn available_permits(&self) -> usize {
        self.shared.inflight.available_permits()
    }

    async fn acquire(
        sem: &Arc<Semaphore>,
        deadline: Deadline,
        started: Instant,
    ) -> Result<OwnedSemaphorePermit, DriverError> {
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        match tokio::time::timeout_at(tokio_instant(deadline), sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(DriverError::ShutDown),
            Err(_) => Err(DriverError::Deadline {
                waited: started.elapsed(),
            }),
        }
    }

    /// Run `op` with the kernel told about `kernel_deadline` (a LinkTimeout
    /// and, on the ring thread, its deadline heap) when it is set; the
    /// caller waits at most until `wait_until` either way. A negative CQE
    /// result is an error.
    ///
    /// Reads and writes try the fast ring first (see `fast`); what the
    /// kernel would not run there without blocking runs again on the ring
    /// thread, under the same deadline.
    async fn run(
        &self,
        op: Op,
        keep: [Option<File>; 2],
        kernel_deadline: Option<Deadline>,
        wait_until: Deadline,
        file_permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Done, DriverError> {
        let started = Instant::now();
        let kind = match op {
            Op::Read { .. } => file::NOWAIT_READS,
            _ => file::NOWAIT_WRITES,
        };
        let fast = self
            .shared
            .fast
            .as_ref()
            .filter(|_| op.is_data())
            .filter(|_| {
                keep[0]
                    .as_ref()
                    .is_some_and(|f| f.inner.nowait_capable(kind))
            });
        let op = match fast {
            Some(fast) => {
                let attempt = self.run_once(
                    Some(fast),
                    op,
                    keep.clone(),
                    kernel_deadline,
                    wait_until,
                    None,
                    started,
                );
                match attempt.await? {
                    Attempt::Done(done) => return Ok(done),
                    Attempt::WouldBlock { op, unsupported } => {
                        self.shared
                            .stats
                            .fast_fallbacks
                            .fetch_add(1, Ordering::Relaxed);
                        let refuse = if unsupported {
                            file::NOWAIT_READS | file::NOWAIT_WRITES
                        } else if kind == file::NOWAIT_WRITES {
                            file::NOWAIT_WRITES
                        } else {
                            0 // a read's -EAGAIN is a page-cache miss: try again next time
                        };
                        if let Some(f) = &keep[0] {
                            f.inner.refuse_nowait(refuse);
                        }
                        op
                    }
                }
            }
            None => op,
        };
        match self
            .run_once(
                None,
                op,
                keep,
                kernel_deadline,
                wait_until,
                file_permit,
                started,
            )
            .await?
        {
            Attempt::Done(done) => Ok(done),
            Attempt::WouldBlock { .. } => {
                unreachable!("only the fast ring hands an op back")
            }
        }
    }

    /// One submission, to the fast ring when `fast` is set (and it takes
    /// the op), else to the ring thread.
    #[allow(clippy::too_many_arguments)]
    async fn run_once(
        &self,
        fast: Option<&Arc<fast::FastRing>>,
        op: Op,
        keep: [Option<File>; 2],
        kernel_deadline: Option<Deadline>,
        wait_until: Deadline,
        file_permit: Option<OwnedSemaphorePermit>,
        started: Instant,
    ) -> Result<Attempt, DriverError> {
        let timed_out = || DriverError::Deadline {
            waited: started.elapsed(),
        };
        if wait_until.is_expired() {
            return Err(timed_out());
        }
        let permit = Self::acquire(&self.shared.inflight, wait_until, started).await?;
        let op_id = self.shared.next_op_id.fetch_add(1, Ordering::Relaxed);
        let cancellable = !matches!(op, Op::Close { .. });
        let (tx, rx) = oneshot::channel();
        let sub = Submission {
            op,
            deadline: kernel_deadline,
            op_id,
            reply: Some(tx),
            inflight_permit: Some(permit),
            cancellable,
            file_permit,
            keep,
        };
        let (sub, on_fast) = match fast {
            Some(f) => match f.submit(sub) {
                None => (None, true),
                refused => (refused, false),
            },
            None => (Some(sub), false),
        };
        if let Some(sub) = sub {
            // The channel holds a message per permit: a failed send means the
            // ring thread is gone.
            self.shared
                .tx
                .try_send(Msg::Submit(sub))
                .map_err(|_| DriverError::ShutDown)?;
            self.shared.nudge();
        }
        let guard = CancelGuard {
            shared: &self.shared,
            fast: fast.filter(|_| on_fast),
            op_id,
            armed: true,
        };
        let mut rx = rx;
        let answer = loop {
            // On the fast ring the caller also looks at the CQ itself every
            // `fast_reap_backstop`: if the reaper's runtime has shut down or is
            // not being driven, completions still reach their callers, late by
            // at most that much instead of at their deadline.
            let until = match guard.fast {
                Some(_) => wait_until
                    .instant()
                    .min(Instant::now() + self.shared.fast_reap_backstop),
                None => wait_until.instant(),
            };
            match tokio::time::timeout_at(tokio::time::Instant::from_std(until), &mut rx).await {
                Ok(r) => break Ok(r),
                Err(_) if !wait_until.is_expired() => {
                    if let Some(f) = guard.fast {
                        f.caller_reap();
                    }
                }
                Err(e) => break Err(e),
            }
        };
        match answer {
            Ok(Ok(Completion {
                res,
                timed_out: kernel_timed_out,
                op,
                file,
            })) => {
                guard.disarm();
                match op {
                    // A file that a late open made is dropped with `file`
                    // here, which closes it through the ring.
                    Some(_) if kernel_timed_out => Err(timed_out()),
                    None => Err(timed_out()),
                    Some(op) if on_fast && (res == -libc::EAGAIN || res == -libc::EOPNOTSUPP) => {
                        Ok(Attempt::WouldBlock {
                            op,
                            unsupported: res == -libc::EOPNOTSUPP,
                        })
                    }
                    Some(_) if res < 0 => Err(DriverError::os(-res)),
                    Some(op) => Ok(Attempt::Done(Done { res, op, file })),
                }
            }
            Ok(Err(_)) => {
                guard.disarm();
                Err(DriverError::ShutDown)
            }
            // The guard's drop tells the ring to cancel; the op becomes a
            // zombie until its CQE arrives.
            Err(_) => Err(timed_out()),
        }
    }

    async fn run_enforced(
        &self,
        op: Op,
        keep: [Option<File>; 2],
        deadline: Deadline,
    ) -> Result<Done, DriverError> {
        self.run(op, keep, Some(deadline), deadline, None).await
    }

    // ---- typed calls ------------------------------------------------------

    /// Open the directory at the absolute `path` an operator configured as
    /// a disk's root (`O_RDONLY | O_DIRECTORY`). Resolved normally, symlinks
    /// included: the operator chose that path; what lies beneath it is
    /// opened with [`Driver::open`], which follows none.
    pub async fn open_root(
        &self,
        path: &std::path::Path,
        deadline: Deadline,
    ) -> Result<File, DriverError> {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| DriverError::os(libc::EINVAL))?;
        self.open_at(libc::AT_FDCWD, None, c_path, Open::dir(), 0, deadline)
            .await
    }

    /// `openat2` of `path` beneath `dir` with `RESOLVE_BENEATH |
    /// RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`: a
    /// symlink anywhere on the path fails with [`OsError::Symlink`], a way
    /// out of `dir` or into another mount with [`OsError::CrossesBoundary`].
    pub async fn open(
        &self,
        dir: &File,
        path: &RelPath,
        how: Open,
        deadline: Deadline,
    ) -> Result<File, DriverError> {
        let resolve = libc::RESOLVE_BENEATH
            | libc::RESOLVE_NO_SYMLINKS
            | libc::RESOLVE_NO_MAGICLINKS
            | libc::RESOLVE_NO_XDEV;
        self.open_at(
            dir.raw(),
            Some(dir.clone()),
            path.c_string(),
            how,
            resolve,
            deadline,
        )
        .await
    }

    /// Opens are always punted to io-wq: a non-blocking open attempt inline
    /// can still block in a file system's open handler (FUSE sends OPEN and
    /// waits), which would stall the ring thread.
    async fn open_at(
        &self,
        dirfd: i32,
        keep: Option<File>,
        path: CString,
        how: Open,
        resolve: u64,
        deadline: Deadline,
    ) -> Result<File, DriverError> {
        let permit = Self::acquire(&self.shared.files, deadline, Instant::now()).await?;
        let op = Op::OpenAt {
            dirfd,
            path,
            how: Box::new(
                io_uring::types::OpenHow::new()
                    .flags((how.flags | libc::O_CLOEXEC) as u64)
                    .mode(how.mode as u64)
                    .resolve(resolve),
            ),
            close_inline: how.closes_inline(),
        };
        let done = self
            .run(op, [keep, None], Some(deadline), deadline, Some(permit))
            .await?;
        // A successful open always carries its file (built at the CQE).
        Ok(done
            .file
            .unwrap_or_else(|| unreachable!("an open's CQE >= 0 makes a file")))
    }

    /// `statx` of the entry `name` in `dir`, not following it if it is a
    /// symlink.
    pub async fn statx(
        &self,
        dir: &File,
        name: &Name,
        deadline: Deadline,
    ) -> Result<Statx, DriverError> {
        self.statx_raw(dir, name.c_string(), libc::AT_SYMLINK_NOFOLLOW, deadline)
            .await
    }

    /// `statx` of an open file itself.
    pub async fn fstat(&self, file: &File, deadline: Deadline) -> Result<Statx, DriverError> {
        self.statx_raw(file, CString::default(), libc::AT_EMPTY_PATH, deadline)
            .await
    }

    async fn statx_raw(
        &self,
        dir: &File,
        path: CString,
        flags: i32,
        deadline: Deadline,
    ) -> Result<Statx, DriverError> {
        let op = Op::Statx {
            dirfd: dir.raw(),
            path,
            flags,
            out: Box::new(std::mem::MaybeUninit::zeroed()),
        };
        let done = self
            .run_enforced(op, [Some(dir.clone()), None], deadline)
            .await?;
        match done.op {
            // SAFETY: statx succeeded, so the kernel filled the buffer (it was
            // zeroed beforehand, so any field it skipped is still valid).
            Op::Statx { out, .. } => Ok(Statx::from_raw(unsafe { &*out.as_ptr() })),
            _ => unreachable!("the ring hands back the op it was given"),
        }
    }

    /// Read up to `buf.capacity()` bytes at `offset` into `buf` (an
    /// [`IoBuf::Aligned`] for O_DIRECT files). Returns the buffer with its
    /// valid length set to the bytes read (short at EOF).
    pub async fn read(
        &self,
        file: &File,
        buf: IoBuf,
        offset: u64,
        deadline: Deadline,
    ) -> Result<IoBuf, DriverError> {
        let len = buf.capacity();
        self.read_op(file, buf, len, offset, Some(deadline), deadline)
            .await
    }

    /// A read of up to `len` bytes, with the kernel told about the deadline
    /// only when `kernel_deadline` is set (the raw API prices it).
    pub(crate) async fn read_op(
        &self,
        file: &File,
        buf: IoBuf,
        len: usize,
        offset: u64,
        kernel_deadline: Option<Deadline>,
        deadline: Deadline,
    ) -> Result<IoBuf, DriverError> {
        let len =
            u32::try_from(len.min(buf.capacity())).map_err(|_| DriverError::os(libc::EINVAL))?;
        let op = Op::Read {
            fd: file.raw(),
            buf,
            len,
            offset,
        };
        let done = self
            .run(
                op,
                [Some(file.clone()), None],
                kernel_deadline,
                deadline,
                None,
            )
            .await?;
        match done.op {
            Op::Read { buf, .. } => Ok(buf),
            _ => unreachable!("the ring hands back the op it was given"),
        }
    }

    /// One kernel write of `buf[skip..]` at `offset + skip`. Returns the
    /// buffer and the bytes written (a short write is returned as such; a
    /// write of nothing when there was something to write is EIO).
    pub async fn write(
        &self,
        file: &File,
        buf: IoBuf,
        skip: usize,
        offset: u64,
        deadline: Deadline,
    ) -> Result<(IoBuf, usize), DriverError> {
        self.write_op(file, buf, skip, offset, Some(deadline), deadline)
            .await
    }

    /// A write, with the kernel told about the deadline only when
    /// `kernel_deadline` is set.
    pub(crate) async fn write_op(
        &self,
        file: &File,
        buf: IoBuf,
        skip: usize,
        offset: u64,
        kernel_deadline: Option<Deadline>,
        deadline: Deadline,
    ) -> Result<(IoBuf, usize), DriverError> {
        if skip > buf.len() || u32::try_from(buf.len() - skip).is_err() {
            return Err(DriverError::os(libc::EINVAL));
        }
        let want = buf.len() - skip;
        let op = Op::Write {
            fd: file.raw(),
            buf,
            skip,
            offset,
        };
        let done = self
            .run(
                op,
                [Some(file.clone()), None],
                kernel_deadline,
                deadline,
                None,
            )
            .await?;
        if done.res == 0 && want > 0 {
            // A write that makes no progress would make its caller loop.
            return Err(DriverError::os(libc::EIO));
        }
        match done.op {
            Op::Write { buf, .. } => Ok((buf, done.res as usize)),
            _ => unreachable!("the ring hands back the op it was given"),
        }
    }

    /// `fsync` (or `fdatasync`).
    pub async fn fsync(
        &self,
        file: &File,
        datasync: bool,
        deadline: Deadline,
    ) -> Result<(), DriverError> {
        let op = Op::Fsync {
            fd: file.raw(),
            datasync,
        };
        self.run_enforced(op, [Some(file.clone()), None], deadline)
            .await
            .map(|_| ())
    }

    /// `mkdirat(dir, name, mode)`.
    pub async fn mkdirat(
        &self,
        dir: &File,
        name: &Name,
        mode: u32,
        deadline: Deadline,
    ) -> Result<(), DriverError> {
        let op = Op::MkDirAt {
            dirfd: dir.raw(),
            path: name.c_string(),
            mode,
        };
        self.run_enforced(op, [Some(dir.clone()), None], deadline)
            .await
            .map(|_| ())
    }

    /// `unlinkat(dir, name)`, of a directory with `remove_dir`. Never
    /// follows `name`: a symlink is removed itself.
    pub async fn unlinkat(
        &self,
        dir: &File,
        name: &Name,
        remove_dir: bool,
        deadline: Deadline,
    ) -> Result<(), DriverError> {
        let op = Op::UnlinkAt {
            dirfd: dir.raw(),
            path: name.c_string(),
            flags: if remove_dir { libc::AT_REMOVEDIR } else { 0 },
        };
        self.run_enforced(op, [Some(dir.clone()), None], deadline)
            .await
            .map(|_| ())
    }

    /// `renameat2(from_dir, from, to_dir, to)`; with `no_replace`, fails
    /// with [`OsError::Exists`] instead of replacing `to`.
    pub async fn renameat(
        &self,
        from_dir: &File,
        from: &Name,
        to_dir: &File,
        to: &Name,
        no_replace: bool,
        deadline: Deadline,
    ) -> Result<(), DriverError> {
        let op = Op::RenameAt {
            from_dir: from_dir.raw(),
            from: from.c_string(),
            to_dir: to_dir.raw(),
            to: to.c_string(),
            flags: if no_replace {
                libc::RENAME_NOREPLACE
            } else {
                0
            },
        };
        self.run_enforced(op, [Some(from_dir.clone()), Some(to_dir.clone())], deadline)
            .await
            .map(|_| ())
    }

    /// Close `file` and wait for the result (a close can report a deferred
    /// write error on some file systems). If other handles to the same fd
    /// are still alive (clones, or an op the kernel still runs), the fd is
    /// closed when the last one goes, and this returns `Ok` at once.
    ///
    /// No kernel timeout: a cancelled close would leak the fd. The caller
    /// still leaves at its deadline; the close then finishes as a zombie.
    pub async fn close(&self, file: File, deadline: Deadline) -> Result<(), DriverError> {
        let Ok(inner) = Arc::try_unwrap(file.inner) else {
            return Ok(());
        };
        let (fd, permit) = inner.take();
        if inner.closes_inline() {
            file::close_now(fd);
            return Ok(());
        }
        self.run(Op::Close { fd }, [None, None], None, deadline, permit)
            .await
            .map(|_| ())
    }

    // ---- blocking pool ----------------------------------------------------

    /// Run `f` on this disk's bounded pool under `deadline`, with the same
    /// in-flight permit and zombie accounting as ring ops.
    async fn blocking<T, F>(&self, deadline: Deadline, f: F) -> Result<T, DriverError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let started = Instant::now();
        let permit = Self::acquire(&self.shared.inflight, deadline, started).await?;
        self.shared.pool.run(deadline, started, permit, f).await
    }

    /// `fstatvfs` of the file system `file` is on.
    pub async fn statfs(&self, file: &File, deadline: Deadline) -> Result<Statfs, DriverError> {
        let file = file.clone();
        self.blocking(deadline, move || pool::statfs(&file)).await?
    }

    /// The entries of the directory `dir` (opened with [`Open::dir`]),
    /// at most `limit` of them.
    pub async fn read_dir(
        &self,
        dir: &File,
        limit: usize,
        deadline: Deadline,
    ) -> Result<ReadDir, DriverError> {
        let dir = dir.clone();
        self.blocking(deadline, move || pool::read_dir(&dir, limit))
            .await?
    }

    /// Take an exclusive `flock` on `file` without waiting: fails with
    /// [`OsError::WouldBlock`] if another open file description holds it.
    /// The lock lives as long as the fd.
    pub async fn try_lock_exclusive(
        &self,
        file: &File,
        deadline: Deadline,
    ) -> Result<(), DriverError> {
        let file = file.clone();
        self.blocking(deadline, move || pool::try_lock_exclusive(&file))
            .await?
    }

    /// Remove up to `limit` entries of the directory `dir` (each
    /// recursively, following no symlink and entering no other mount);
    /// returns how many went. Runs on the driver's one janitor thread, one
    /// removal at a time, outside the in-flight permits and zombie counts.
    pub async fn remove_children(
        &self,
        dir: &File,
        limit: usize,
        deadline: Deadline,
    ) -> Result<usize, DriverError> {
        let started = Instant::now();
        let permit = Self::acquire(&self.shared.janitor_permit, deadline, started).await?;
        let dir = dir.clone();
        self.shared
            .janitor
            .run(deadline, started, permit, move || {
                pool::remove_children(&dir, limit)
            })
            .await?
    }
}

/// Sends `Cancel` for its op when dropped armed: the caller timed out or its
/// future was dropped mid-flight.
struct CancelGuard<'a> {
    shared: &'a Shared,
    /// Set when the op went to the fast ring.
    fast: Option<&'a Arc<fast::FastRing>>,
    op_id: u64,
    armed: bool,
}

impl CancelGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match self.fast {
            Some(f) => f.cancel(self.op_id),
            None => {
                if self.shared.tx.try_send(Msg::Cancel(self.op_id)).is_ok() {
                    self.shared.nudge();
                }
            }
        }
    }
}

pub(crate) fn short(name: &str) -> String {
    // Thread names are cut at 15 bytes by the kernel; keep the tail, which
    // is the distinctive part of a disk path.
    let tail: String = name.chars().rev().take(4).collect();
    tail.chars().rev().collect()
}
