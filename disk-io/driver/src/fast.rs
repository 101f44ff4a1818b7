//! The fast ring: reads and writes on open files, submitted from the
//! caller's own thread with `RWF_NOWAIT` and reaped by a tokio task woken
//! through an eventfd the ring signals, so a data op crosses no thread of
//! ours: the caller enters the kernel once, and the completion is run by
//! whichever runtime worker the reactor wakes (usually the one that
//! submitted), which then runs the waiting task on the spot.
//!
//! Why data ops only, and why `RWF_NOWAIT`: io_uring hands work that would
//! block to io-wq workers that belong to the *submitting* thread. Opens,
//! statx, fsync, rename and unlink on a possibly hung file system stay on
//! the disk's ring thread (`ring`), so a hung disk's stuck workers are that
//! thread's and capped per disk. A `RWF_NOWAIT` read or write is never
//! punted: the kernel either issues it without blocking (an O_DIRECT bio
//! queued to the device, a page-cache hit copied inline) or fails it at
//! once with `-EAGAIN` (page-cache miss, a lock taken, a full device queue)
//! or `-EOPNOTSUPP` (a file system without a non-blocking path, FUSE among
//! them). The driver then runs the same op on the ring thread; a file that
//! said `-EOPNOTSUPP` goes there directly from then on. So a caller's thread
//! never blocks in the kernel, and a tokio worker never owns an io-wq
//! worker a hung device could capture.
//!
//! Deadlines: every op is linked to a `LinkTimeout` (a kernel hrtimer). An
//! op the kernel cannot cancel (a bio a hung device holds) is answered on
//! the timer's CQE and stays in the table as a zombie, holding its permit,
//! until its own CQE, exactly as on the ring thread. The caller's own
//! `timeout_at` stays the backstop.
//!
//! **Invariant:** the table, the SQ and `io_uring_enter` are used only under
//! `inner`'s lock, and every enter submits everything in the SQ. A linked
//! (op, LinkTimeout) pair is therefore never split between two enters: a
//! head submitted without its timer would be an unfinished link, which the
//! kernel punts to io-wq as a *blocking* op (and the lone timer fails with
//! `-EINVAL`). Entering outside the lock would not spare other workers a
//! wait anyway: the kernel holds the ring's own `uring_lock` for the whole
//! submission, page-cache copy included.
//!
//! **Invariant:** the CQ has room for every CQE the ops in the table can
//! post (op, timer and cancel: three per in-flight permit), so it never
//! overflows; and if it ever did, the crate's `submit` enters with
//! `GETEVENTS` when the kernel flags an overflow, which flushes it.
//!
//! What it depends on: a completion is task work of the thread that
//! submitted, so the CQE (and the eventfd signal) comes when that worker
//! runs it. A worker blocked in the kernel elsewhere (application code doing
//! blocking I/O on a runtime thread) delays its ops' answers until the
//! caller's own `timeout_at` backstop, as for any op of this driver.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use io_uring::{squeue, IoUring};
use tokio::io::unix::AsyncFd;

use crate::file::Closer;
use crate::ring::Submission;
use crate::table::{OpTable, UD_IGNORE};
use crate::DriverStats;

struct Inner {
    // `Option`s so that `Drop` can leak them when the kernel still holds ops.
    ring: Option<IoUring>,
    table: Option<OpTable>,
}

impl Inner {
    fn parts(&mut self) -> (&mut IoUring, &mut OpTable) {
        match (self.ring.as_mut(), self.table.as_mut()) {
            (Some(r), Some(t)) => (r, t),
            _ => unreachable!("ring and table are taken only in Drop"),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let outstanding = self.table.as_ref().map_or(0, |t| t.in_use());
        if outstanding > 0 {
            // The kernel may still write into buffers the table owns: leak
            // both (see OpTable::leak_if_outstanding).
            if let Some(t) = self.table.take() {
                t.leak_if_outstanding();
            }
            std::mem::forget(self.ring.take());
        }
    }
}

/// The eventfd the ring signals at every CQE, as tokio's reactor sees it.
struct EventFd(Arc<OwnedFd>);

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// One disk's fast ring (see the module docs).
pub(crate) struct FastRing {
    inner: Mutex<Inner>,
    efd: Arc<OwnedFd>,
    /// A reaper task is alive on some runtime.
    reaper_running: AtomicBool,
    /// A runtime without I/O was met: the fast ring stays unused.
    no_reactor: AtomicBool,
    /// The driver is gone: refuse new ops; the reaper ends when the last
    /// outstanding op completes.
    closed: AtomicBool,
    stats: Arc<DriverStats>,
    name: String,
}

impl FastRing {
    /// Build the ring with `entries` SQ entries and an op table of
    /// `capacity` slots (one per in-flight permit); the CQ holds the three
    /// CQEs each of them can post (its own, its timer's, a cancel's).
    pub(crate) fn new(
        name: &str,
        entries: u32,
        capacity: usize,
        stats: Arc<DriverStats>,
        closer: Closer,
    ) -> std::io::Result<FastRing> {
        // Not SINGLE_ISSUER: every caller's thread submits. Not
        // COOP_TASKRUN: completions are task work of the submitting thread,
        // and without the notification a worker parked on a condvar would
        // sit on them until it next entered the kernel.
        let cq = u32::try_from(capacity.saturating_mul(3).saturating_add(8))
            .unwrap_or(u32::MAX)
            .max(entries.saturating_mul(2));
        let ring = IoUring::builder().setup_cqsize(cq).build(entries)?;
        // The CQ-room invariant, checked rather than trusted to the kernel's
        // rounding.
        if (ring.params().cq_entries() as usize) < capacity.saturating_mul(3) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "fast ring: the kernel gave a CQ smaller than 3 x max_in_flight",
            ));
        }
        // SAFETY: plain syscall; the fd is checked and owned right after.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh fd nobody else owns.
        let efd = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        // Not the _async variant: that one signals only completions posted by
        // io-wq workers, and these ops never go there.
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        Ok(FastRing {
            inner: Mutex::new(Inner {
                ring: Some(ring),
                table: Some(OpTable::new(capacity, stats.clone(), closer, name.into())),
            }),
            efd,
            reaper_running: AtomicBool::new(false),
            no_reactor: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stats,
            name: name.into(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock (the table's full-table assert) leaves the
        // table consistent enough to keep reaping what the kernel returns.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Submit `s` (a read or write), then hand over what completed inside
    /// the enter (a page-cache hit, an immediate `-EAGAIN`) now rather than
    /// after a trip through the reactor. Hands `s` back when the fast path
    /// cannot take it: the driver is closing, or there is no tokio runtime
    /// with I/O enabled to run a reaper on.
    pub(crate) fn submit(self: &Arc<Self>, s: Submission) -> Option<Submission> {
        debug_assert!(s.op.is_data());
        if self.closed.load(Ordering::Acquire) || !self.ensure_reaper() {
            return Some(s);
        }
        let mut g = self.lock();
        let (ring, table) = g.parts();
        let Some(admitted) = table.admit(s, true) else {
            return None; // answered already: the deadline had passed
        };
        self.stats.fast_submitted.fetch_add(1, Ordering::Relaxed);
        self.push_and_enter(ring, table, admitted.entries());
        Self::drain(ring, table);
        None
    }

    /// The caller of `op_id` has gone: cancel the op (a zombie until its CQE).
    pub(crate) fn cancel(&self, op_id: u64) {
        let mut g = self.lock();
        let (ring, table) = g.parts();
        if let Some(e) = table.abandon(op_id) {
            self.push_and_enter(ring, table, &[e]);
        }
    }

    /// Push `entries` as one unit and submit everything in the SQ.
    fn push_and_enter(&self, ring: &mut IoUring, table: &mut OpTable, entries: &[squeue::Entry]) {
        self.push(ring, table, entries);
        self.enter(ring, table);
    }

    /// Push `entries` as one unit. Every push is followed by an enter of the
    /// whole SQ, so it only holds what a failed enter left; if it lacks
    /// room, everything in it is submitted first.
    fn push(&self, ring: &mut IoUring, table: &mut OpTable, entries: &[squeue::Entry]) {
        loop {
            let room = {
                let sq = ring.submission();
                sq.capacity() - sq.len()
            };
            if room >= entries.len() {
                break;
            }
            self.enter(ring, table);
        }
        // SAFETY: every entry's pointers refer to memory owned by the op
        // table, which keeps it until the matching CQE has been reaped.
        let pushed = unsafe { ring.submission().push_multiple(entries) };
        debug_assert!(pushed.is_ok(), "room was checked above");
    }

    /// `io_uring_enter` for everything in the SQ (with `GETEVENTS` when the
    /// kernel flags a CQ overflow). An interrupted call is retried; any
    /// other failure leaves the entries for the next enter, and the
    /// callers' deadlines hold meanwhile.
    fn enter(&self, ring: &mut IoUring, table: &mut OpTable) {
        loop {
            match ring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e)
                    if e.raw_os_error() == Some(libc::EAGAIN)
                        || e.raw_os_error() == Some(libc::EBUSY) =>
                {
                    // Out of memory for requests, or (older kernels) a full
                    // CQ: make room and let the next enter try again.
                    Self::drain(ring, table);
                    return;
                }
                Err(e) => {
                    tracing::error!(disk = %self.name, error = %e, "fast ring: io_uring_enter failed");
                    return;
                }
            }
        }
    }

    /// Hand every posted completion to its caller, and submit what a failed
    /// enter left in the SQ.
    fn reap(&self) {
        let mut g = self.lock();
        let (ring, table) = g.parts();
        Self::drain(ring, table);
        if !ring.submission().is_empty() || ring.submission().cq_overflow() {
            self.enter(ring, table);
            Self::drain(ring, table);
        }
    }

    fn drain(ring: &mut IoUring, table: &mut OpTable) {
        loop {
            let mut cq = ring.completion();
            if cq.is_empty() {
                return;
            }
            // Batches of what is posted now; the CQ head advances when `cq`
            // drops, so the kernel can post more while these are handled.
            let batch: Vec<(u64, i32)> = cq.by_ref().map(|c| (c.user_data(), c.result())).collect();
            drop(cq);
            for (ud, res) in batch {
                if ud != UD_IGNORE {
                    table.complete(ud, res);
                }
            }
        }
    }

    /// Operations the kernel still holds.
    pub(crate) fn outstanding(&self) -> usize {
        let mut g = self.lock();
        g.parts().1.in_use()
    }

    /// A waiting caller's own look at the CQ (see
    /// `DriverConfig::fast_reap_backstop`); also restarts a reaper that
    /// ended with its runtime.
    pub(crate) fn caller_reap(self: &Arc<Self>) {
        self.reap();
        self.ensure_reaper();
    }

    /// Start a reaper on the current runtime unless one runs. False when
    /// there is none to start it on (no runtime, or one without I/O).
    fn ensure_reaper(self: &Arc<Self>) -> bool {
        if self.reaper_running.load(Ordering::Acquire) {
            return true;
        }
        if self.no_reactor.load(Ordering::Acquire) {
            return false;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if self.reaper_running.swap(true, Ordering::AcqRel) {
            return true;
        }
        let _enter = handle.enter();
        let efd = EventFd(self.efd.clone());
        // tokio panics, rather than failing, when the runtime was built
        // without I/O; that is a setting of the application's runtime, not a
        // reason to take a storage node down: the driver then runs every op
        // on the ring thread, and says so once.
        let registered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the eventfd is owned by this FastRing (the Arc in
            // EventFd keeps it open for the AsyncFd's whole life) and
            // as_raw_fd always returns that same fd.
            unsafe { AsyncFd::register_with_interest(efd, tokio::io::Interest::READABLE) }
        }));
        let afd = match registered {
            Ok(Ok(afd)) => afd,
            failed => {
                self.no_reactor.store(true, Ordering::Release);
                self.reaper_running.store(false, Ordering::Release);
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the tokio runtime has no I/O driver (enable_io)".to_string(),
                };
                tracing::warn!(disk = %self.name, reason = %why, "fast ring unavailable; reads and writes go to the ring thread");
                return false;
            }
        };
        handle.spawn(reaper(self.clone(), afd));
        true
    }

    /// The driver is dropped: take no new ops, and let the reaper end once
    /// the outstanding ones are back.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        crate::wake(&self.efd);
    }
}

/// Clears `reaper_running` however the reaper ends (its runtime shutting
/// down drops it mid-await), so the next op starts another.
struct Running(Arc<FastRing>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.reaper_running.store(false, Ordering::Release);
    }
}

async fn reaper(fast: Arc<FastRing>, afd: AsyncFd<EventFd>) {
    let running = Running(fast);
    let fast = &running.0;
    loop {
        let Ok(mut ready) = afd.readable().await else {
            return;
        };
        // The counter is never read: every signal of an eventfd wakes its
        // wait queue, so epoll (edge-triggered under tokio) reports each one
        // as a new event whatever the count; reading it would cost a syscall
        // per wake. (The count cannot reach its 2^64 - 1 limit.) A signal
        // after the drain below is a newer readiness event, which tokio's
        // tick keeps through the clear.
        fast.reap();
        ready.clear_ready();
        if fast.closed.load(Ordering::Acquire) && fast.outstanding() == 0 {
            return;
        }
    }
}
