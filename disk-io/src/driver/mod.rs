//! The per-disk io_uring driver: a handle callers share ([`Driver`]), the
//! ring thread behind it ([`ring`]), the owned operations ([`ops`], [`buf`])
//! and the bounded blocking pool for what io_uring cannot do ([`pool`]).
//!
//! Flow of one operation:
//! 1. the caller takes an in-flight permit (waiting at most until its
//!    deadline),
//! 2. sends a [`ring::Submission`] over a bounded crossbeam channel and bumps
//!    an eventfd the ring thread always has a read pending on,
//! 3. the ring thread puts the op in its table and submits it linked to a
//!    `LinkTimeout` for the remaining budget,
//! 4. the CQE comes back over a oneshot; the caller also waits with
//!    `timeout_at(deadline)` so it leaves on time even if the kernel cannot
//!    cancel, and on leaving asks the ring to `AsyncCancel`.
//!
//! The permit is released when the slot is freed, after the CQE: an op the
//! kernel could not cancel (a zombie) keeps its permit, so a hung device can
//! hold at most `max_in_flight` operations, buffers and io-wq workers.

pub mod buf;
pub(crate) mod ops;

pub use buf::{AlignedBuf, IoBuf};
pub(crate) mod pool;
pub(crate) mod ring;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::config::DriverConfig;
use crate::deadline::Deadline;
use crate::error::DiskError;
use crate::op::OpClass;
use ops::Op;
use ring::{Completion, Msg, RingParams, RingThread, Submission};

/// How long a dropped driver's ring thread waits for outstanding ops before
/// it leaks them. Internal: it only bounds teardown, never a caller.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Counters shared by the ring thread, the blocking pool and the health
/// machine.
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
    wake: Arc<OwnedFd>,
    parked: Arc<AtomicBool>,
    inflight: Arc<Semaphore>,
    files: Arc<Semaphore>,
    stats: Arc<DriverStats>,
    next_op_id: AtomicU64,
    pool: pool::BlockingPool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Shared {
    /// Wake the ring thread if it sleeps (see `RingParams::parked`).
    fn nudge(&self) {
        if self.parked.swap(false, Ordering::SeqCst) {
            wake(&self.wake);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.tx.try_send(Msg::Shutdown);
        wake(&self.wake);
        // Not joined: the thread may wait up to SHUTDOWN_GRACE for a hung
        // device, and a drop must not block its caller for that long.
        drop(self.thread.lock().map(|mut t| t.take()));
    }
}

fn wake(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a valid u64 to an eventfd we own. A full
    // counter (EAGAIN) still means a wake is pending, so the result is moot.
    unsafe {
        libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8);
    }
}

/// Handle to one disk's ring thread. Cheap to clone; `Send + Sync`.
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

/// Outcome of a completed kernel operation.
pub(crate) struct Done {
    pub res: i32,
    pub op: Op,
    pub file_permit: Option<OwnedSemaphorePermit>,
}

impl Driver {
    /// Start a ring thread named after `name` with the given limits.
    pub fn start(name: &str, cfg: &DriverConfig) -> Result<Driver, DiskError> {
        let io_err = |e: std::io::Error| DiskError::Io {
            op: OpClass::Open,
            source_errno: crate::error::Errno(e.raw_os_error().unwrap_or(libc::EIO)),
        };
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
        let parked = Arc::new(AtomicBool::new(false));
        let (init_tx, init_rx) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let name = name.to_string();
            let wake_fd = wake_fd.clone();
            let stats = stats.clone();
            let parked = parked.clone();
            let entries = cfg.ring_entries;
            let iowq = [cfg.iowq_bounded_workers, cfg.iowq_unbounded_workers];
            std::thread::Builder::new()
                .name(format!("disk-io-ring-{}", short(&name)))
                .spawn(move || {
                    match RingThread::new(RingParams {
                        name,
                        parked,
                        entries,
                        table_capacity,
                        iowq_max: iowq,
                        rx,
                        wake_fd,
                        stats,
                        shutdown_grace: SHUTDOWN_GRACE,
                    }) {
                        Ok(ring) => {
                            let _ = init_tx.send(Ok(()));
                            ring.run();
                        }
                        Err(e) => {
                            let _ = init_tx.send(Err(e));
                        }
                    }
                })
                .map_err(io_err)?
        };
        match init_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io_err(e)),
            Err(_) => return Err(DiskError::ShutDown),
        }
        let pool =
            pool::BlockingPool::start(name, cfg.blocking_threads, cfg.max_in_flight, stats.clone())
                .map_err(io_err)?;
        Ok(Driver {
            shared: Arc::new(Shared {
                tx,
                wake: wake_fd,
                parked,
                inflight: Arc::new(Semaphore::new(cfg.max_in_flight)),
                files: Arc::new(Semaphore::new(cfg.max_open_files)),
                stats,
                next_op_id: AtomicU64::new(1),
                pool,
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
        class: OpClass,
        deadline: Deadline,
        started: Instant,
    ) -> Result<OwnedSemaphorePermit, DiskError> {
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        match tokio::time::timeout_at(deadline.tokio(), sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(DiskError::ShutDown),
            Err(_) => Err(DiskError::DeadlineExceeded {
                op: class,
                waited: started.elapsed(),
            }),
        }
    }

    /// Take an open-file permit, waiting at most until `deadline`.
    pub(crate) async fn acquire_file(
        &self,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<OwnedSemaphorePermit, DiskError> {
        Self::acquire(&self.shared.files, class, deadline, Instant::now()).await
    }

    /// Run `op` under `deadline`, kernel-enforced and as a caller backstop.
    pub(crate) async fn run(
        &self,
        class: OpClass,
        op: Op,
        deadline: Deadline,
        file_permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Done, DiskError> {
        self.run_with(class, op, Some(deadline), deadline, file_permit, None)
            .await
    }

    /// Run `op`, with a kernel LinkTimeout only when `kernel_deadline` is
    /// set (the no-deadline bench engine passes `None` to price it); the
    /// caller waits at most until `wait_until` either way.
    pub(crate) async fn run_with(
        &self,
        class: OpClass,
        op: Op,
        kernel_deadline: Option<Deadline>,
        wait_until: Deadline,
        file_permit: Option<OwnedSemaphorePermit>,
        keep: Option<Arc<OwnedFd>>,
    ) -> Result<Done, DiskError> {
        let started = Instant::now();
        let timed_out = || DiskError::DeadlineExceeded {
            op: class,
            waited: started.elapsed(),
        };
        if wait_until.is_expired() {
            return Err(timed_out());
        }
        let permit = Self::acquire(&self.shared.inflight, class, wait_until, started).await?;
        let op_id = self.shared.next_op_id.fetch_add(1, Ordering::Relaxed);
        let op_is_close = matches!(op, Op::Close { .. });
        let (tx, rx) = oneshot::channel();
        let sub = Submission {
            op,
            deadline: kernel_deadline,
            op_id,
            reply: Some(tx),
            inflight_permit: Some(permit),
            cancellable: !op_is_close,
            file_permit,
            keep,
        };
        self.send(Msg::Submit(sub))?;
        let guard = CancelGuard {
            shared: &self.shared,
            op_id,
            armed: true,
        };
        let out = tokio::time::timeout_at(wait_until.tokio(), rx).await;
        match out {
            Ok(Ok(Completion {
                res,
                timed_out: kernel_timed_out,
                op,
                file_permit,
            })) => {
                guard.disarm();
                match op {
                    Some(op) if !kernel_timed_out => Ok(Done {
                        res,
                        op,
                        file_permit,
                    }),
                    op => {
                        // A late successful open is closed here; the fd is ours.
                        if let (Some(Op::OpenAt { .. }), true) = (&op, res >= 0) {
                            self.close_fd(res, file_permit);
                        }
                        Err(timed_out())
                    }
                }
            }
            Ok(Err(_)) => {
                guard.disarm();
                Err(DiskError::ShutDown)
            }
            // The guard's drop tells the ring to cancel; the op becomes a
            // zombie until its CQE arrives.
            Err(_) => Err(timed_out()),
        }
    }

    fn send(&self, msg: Msg) -> Result<(), DiskError> {
        match self.shared.tx.try_send(msg) {
            Ok(()) => {
                self.shared.nudge();
                Ok(())
            }
            // Full cannot happen (the channel is sized for every permit);
            // disconnected means the ring thread is gone.
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                Err(DiskError::ShutDown)
            }
        }
    }

    /// Close `fd` on the ring without waiting; the file permit is released
    /// when the close completes.
    pub(crate) fn close_fd(&self, fd: RawFd, file_permit: Option<OwnedSemaphorePermit>) {
        let sub = Submission {
            op: Op::Close { fd },
            deadline: None,
            op_id: u64::MAX,
            reply: None,
            inflight_permit: None,
            file_permit,
            cancellable: false,
            keep: None,
        };
        if self.shared.tx.try_send(Msg::Submit(sub)).is_err() {
            // Ring gone: nothing can hang any more on this fd's device that
            // would not have hung the ring too; close synchronously.
            // SAFETY: the caller hands over ownership of fd.
            unsafe { libc::close(fd) };
            return;
        }
        self.shared.nudge();
    }

    /// Run a blocking closure on this disk's pool under `deadline`, with the
    /// same in-flight permit and zombie accounting as ring ops.
    pub(crate) async fn blocking<T, F>(
        &self,
        class: OpClass,
        deadline: Deadline,
        f: F,
    ) -> Result<T, DiskError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let started = Instant::now();
        let permit = Self::acquire(&self.shared.inflight, class, deadline, started).await?;
        self.shared
            .pool
            .run(class, deadline, started, permit, f)
            .await
    }
}

/// Whether the kernel is told about an operation's deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelDeadline {
    /// The normal mode: a linked timeout plus the ring thread's deadline
    /// heap; the kernel stops work nobody waits for.
    Enforced,
    /// Neither: only the caller's own wait is bounded. Exists to price the
    /// deadline machinery in benchmarks; an op that hangs in this mode holds
    /// its permit until the device answers.
    CallerOnly,
}

impl Driver {
    /// Read up to `len` bytes at `offset` from a file the caller opened,
    /// into `buf` (an [`IoBuf::Aligned`] for O_DIRECT files). Returns the
    /// buffer with its valid length set to the bytes read (short at EOF).
    ///
    /// The driver keeps `file` open until the kernel is done with the op,
    /// even if the caller leaves at its deadline. No health or metrics here:
    /// this is the raw driver; [`crate::LocalDisk`] adds both.
    pub async fn read_at(
        &self,
        file: &Arc<OwnedFd>,
        buf: IoBuf,
        len: usize,
        offset: u64,
        deadline: Deadline,
        mode: KernelDeadline,
    ) -> Result<IoBuf, DiskError> {
        let class = OpClass::RawRead;
        let len =
            u32::try_from(len.min(buf.capacity())).map_err(|_| DiskError::InvalidArgument {
                reason: "a single read is limited to 4 GiB".into(),
            })?;
        let op = Op::Read {
            fd: file.as_raw_fd(),
            buf,
            len,
            offset,
        };
        match self.raw_res(class, op, file, deadline, mode).await?.1 {
            Op::Read { buf, .. } => Ok(buf),
            _ => Err(DiskError::ShutDown),
        }
    }

    /// Write all valid bytes of `buf` at `offset` (one kernel write; a short
    /// write is returned as such). Returns the buffer and the bytes written.
    pub async fn write_at(
        &self,
        file: &Arc<OwnedFd>,
        buf: IoBuf,
        offset: u64,
        deadline: Deadline,
        mode: KernelDeadline,
    ) -> Result<(IoBuf, usize), DiskError> {
        let class = OpClass::RawWrite;
        if u32::try_from(buf.len()).is_err() {
            return Err(DiskError::InvalidArgument {
                reason: "a single write is limited to 4 GiB".into(),
            });
        }
        let op = Op::Write {
            fd: file.as_raw_fd(),
            buf,
            skip: 0,
            offset,
        };
        let (res, op) = self.raw_res(class, op, file, deadline, mode).await?;
        match op {
            Op::Write { buf, .. } => Ok((buf, res as usize)),
            _ => Err(DiskError::ShutDown),
        }
    }

    async fn raw_res(
        &self,
        class: OpClass,
        op: Op,
        file: &Arc<OwnedFd>,
        deadline: Deadline,
        mode: KernelDeadline,
    ) -> Result<(i32, Op), DiskError> {
        let kernel = match mode {
            KernelDeadline::Enforced => Some(deadline),
            KernelDeadline::CallerOnly => None,
        };
        let done = self
            .run_with(class, op, kernel, deadline, None, Some(file.clone()))
            .await?;
        if done.res < 0 {
            return Err(DiskError::from_errno(class, -done.res));
        }
        Ok((done.res, done.op))
    }
}

/// Sends `Cancel` for its op when dropped armed: the caller timed out or its
/// future was dropped mid-flight.
struct CancelGuard<'a> {
    shared: &'a Shared,
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
        if self.armed && self.shared.tx.try_send(Msg::Cancel(self.op_id)).is_ok() {
            self.shared.nudge();
        }
    }
}

fn short(name: &str) -> String {
    // Thread names are cut at 15 bytes by the kernel; keep the tail, which
    // is the distinctive part of a disk path.
    let tail: String = name.chars().rev().take(4).collect();
    tail.chars().rev().collect()
}
