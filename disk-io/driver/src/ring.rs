//! The ring thread: one per disk. It owns the io_uring instance and the op
//! table, turns requests from callers into linked (op, LinkTimeout) SQE
//! pairs, and routes completions back.
//!
//! Why a thread per disk: io-wq workers belong to the task that submits, so a
//! disk whose device hangs keeps its stuck workers to itself, and their
//! number is capped per ring with `register_iowq_max_workers`. And if an op
//! that should have been punted to io-wq blocks inline in `io_uring_enter`
//! (a FUSE file system that ignores `O_NONBLOCK`, say), only this disk's
//! thread stops; callers still leave at their deadline through the tokio
//! backstop in [`super::Driver::submit`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use io_uring::{opcode, squeue, types, IoUring};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::file::{Closer, File};
use crate::ops::Op;
use crate::table::{OpTable, TAG_CONTROL, TAG_SHIFT, UD_IGNORE};
use crate::DriverStats;
use disk_io_api::Deadline;

/// A request from a caller.
pub(crate) struct Submission {
    pub op: Op,
    /// `None` submits without a LinkTimeout (internal closes; the
    /// no-deadline bench engine).
    pub deadline: Option<Deadline>,
    /// Caller-chosen id, so a caller can cancel before it knows the slot.
    pub op_id: u64,
    /// Where the completion goes; `None` for fire-and-forget ops.
    pub reply: Option<oneshot::Sender<Completion>>,
    /// The in-flight permit, released when the slot is freed (after the CQE).
    pub inflight_permit: Option<OwnedSemaphorePermit>,
    /// An open-file permit travelling with an open (it ends up in the new
    /// [`File`]) or a close (released after the CQE).
    pub file_permit: Option<OwnedSemaphorePermit>,
    /// Whether a departing caller may have the op cancelled. Closes may
    /// not: a cancelled close leaves the fd open and leaked.
    pub cancellable: bool,
    /// The files the op uses, kept open until its CQE even if the caller
    /// drops its handles after a timeout (io-wq resolves fds when it runs
    /// the op, which may be later than submission).
    pub keep: [Option<File>; 2],
}

impl Submission {
    /// An op nobody waits for (a close of a dropped file).
    pub(crate) fn fire_and_forget(op: Op, file_permit: Option<OwnedSemaphorePermit>) -> Self {
        Submission {
            op,
            deadline: None,
            op_id: u64::MAX,
            reply: None,
            inflight_permit: None,
            file_permit,
            cancellable: false,
            keep: [None, None],
        }
    }
}

/// What a caller gets back.
pub(crate) struct Completion {
    /// The CQE result: >= 0 success, < 0 a negated errno.
    pub res: i32,
    /// The deadline fired before the op finished (the kernel cancelled it).
    pub timed_out: bool,
    /// The op with its buffers; `None` when the reply is an early
    /// "deadline passed" sent while the kernel still holds the op.
    pub op: Option<Op>,
    /// The file a successful open made. Built on the ring thread at the
    /// CQE, so a caller that has gone by then cannot leak the fd: dropping
    /// the completion closes it through the ring.
    pub file: Option<File>,
}

/// Messages to the ring thread.
pub(crate) enum Msg {
    Submit(Submission),
    /// The caller with this op id has gone (deadline or dropped future).
    Cancel(u64),
    Shutdown,
}

const UD_WAKE: u64 = (TAG_CONTROL << TAG_SHIFT) | 1;
const UD_TICK: u64 = (TAG_CONTROL << TAG_SHIFT) | 3;
/// How often a shutting-down ring thread re-checks whether its ops are done.
const SHUTDOWN_TICK: Duration = Duration::from_millis(20);

/// What a ring thread is built from.
pub(crate) struct RingParams {
    pub name: String,
    /// Set by the ring thread while it sleeps in `io_uring_enter`; callers
    /// write the eventfd only then, saving a syscall per op under load.
    pub parked: Arc<AtomicBool>,
    /// SQ entries.
    pub entries: u32,
    /// Op table slots.
    pub table_capacity: usize,
    /// io-wq worker caps: [bounded, unbounded].
    pub iowq_max: [u32; 2],
    pub rx: Receiver<Msg>,
    pub wake_fd: Arc<OwnedFd>,
    pub stats: Arc<DriverStats>,
    pub shutdown_grace: Duration,
    /// For the files successful opens make.
    pub closer: Closer,
}

pub(crate) struct RingThread {
    ring: IoUring,
    rx: Receiver<Msg>,
    wake_fd: Arc<OwnedFd>,
    parked: Arc<AtomicBool>,
    wake_buf: Box<u64>,
    table: OpTable,
    /// Deadlines of ops in the table, earliest first. Entries of ops that
    /// already completed are skipped lazily (their generation no longer
    /// matches, or the op is done).
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    shutdown_grace: Duration,
    shutdown_at: Option<Instant>,
    tick_ts: Box<types::Timespec>,
    tick_outstanding: bool,
    name: String,
    closer: Closer,
}

impl RingThread {
    /// Build the ring. Runs on the ring thread itself, since
    /// `SINGLE_ISSUER` ties the ring to the task that creates it and the
    /// io-wq worker cap applies to the calling task's io-wq.
    pub(crate) fn new(p: RingParams) -> std::io::Result<RingThread> {
        let RingParams {
            name,
            parked,
            entries,
            table_capacity,
            iowq_max,
            rx,
            wake_fd,
            stats,
            shutdown_grace,
            closer,
        } = p;
        let ring = IoUring::builder()
            .setup_cqsize(entries.saturating_mul(4))
            .setup_single_issuer()
            // Completions are run only when this thread asks for them (it is
            // the only thread that ever does), instead of interrupting it
            // with task-work notifications.
            .setup_defer_taskrun()
            .build(entries)?;
        let mut max = iowq_max;
        ring.submitter().register_iowq_max_workers(&mut max)?;
        Ok(RingThread {
            ring,
            rx,
            wake_fd,
            parked,
            wake_buf: Box::new(0),
            table: OpTable::new(table_capacity, stats, closer.clone(), name.clone()),
            deadlines: BinaryHeap::with_capacity(table_capacity),
            shutdown_grace,
            shutdown_at: None,
            tick_ts: Box::new(types::Timespec::from(SHUTDOWN_TICK)),
            tick_outstanding: false,
            name,
            closer,
        })
    }

    pub(crate) fn run(mut self) {
        self.arm_wake();
        loop {
            // Announce the sleep, then look once more: a message sent before
            // the flag was visible is seen here; one sent after it finds the
            // flag set and writes the eventfd.
            self.parked.store(true, Ordering::SeqCst);
            let want = if self.rx.is_empty() { 1 } else { 0 };
            let waited = match (want, self.next_expiry()) {
                (0, _) => self.ring.submit(),
                (_, None) => self.ring.submit_and_wait(1),
                (_, Some(wait)) => {
                    let ts = types::Timespec::from(wait);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
            };
            self.parked.store(false, Ordering::SeqCst);
            match waited {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::ETIME)
                    ) => {}
                Err(e) => {
                    tracing::error!(disk = %self.name, error = %e, "io_uring_enter failed; ring thread stops");
                    // Same reasoning as the grace-period exit below.
                    self.exit();
                    return;
                }
            }
            self.reap();
            self.expire_due();
            loop {
                match self.rx.try_recv() {
                    Ok(Msg::Submit(s)) => self.submit(s),
                    Ok(Msg::Cancel(op_id)) => self.cancel(op_id),
                    Ok(Msg::Shutdown) | Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        self.begin_shutdown();
                        break;
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                }
            }
            if let Some(at) = self.shutdown_at {
                if self.table.in_use() == 0 || at.elapsed() >= self.shutdown_grace {
                    self.exit();
                    return;
                }
                if !self.tick_outstanding {
                    // A timer so the loop wakes even if no CQE ever comes.
                    self.tick_outstanding = true;
                    let e = opcode::Timeout::new(&*self.tick_ts as *const _)
                        .build()
                        .user_data(UD_TICK);
                    self.push(&[e]);
                }
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_at.is_none() {
            self.shutdown_at = Some(Instant::now());
            self.cancel_all();
        }
    }

    /// Leave the loop: close the fds of closes still queued (dropped files
    /// whose close never reached the ring), then let go of the ring.
    fn exit(self) {
        *self
            .closer
            .accepting
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = false;
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Submit(Submission {
                op: Op::Close { fd },
                ..
            }) = msg
            {
                crate::file::close_now(fd);
            }
        }
        self.leak_outstanding();
    }

    /// Ops the kernel still holds point into buffers in the op table;
    /// freeing them would let a late completion write into freed memory, so
    /// the table, the ring and the buffers of the ring's own entries are
    /// leaked then (see [`OpTable::leak_if_outstanding`]).
    fn leak_outstanding(self) {
        if self.table.in_use() > 0 {
            self.table.leak_if_outstanding();
            std::mem::forget(self.ring);
            std::mem::forget(self.wake_buf);
            std::mem::forget(self.tick_ts);
        }
    }

    /// Keep one read outstanding on the eventfd callers write to after
    /// queueing a message, so a blocked `submit_and_wait` wakes for it.
    fn arm_wake(&mut self) {
        let e = opcode::Read::new(
            types::Fd(self.wake_fd.as_raw_fd()),
            &mut *self.wake_buf as *mut u64 as *mut u8,
            8,
        )
        .build()
        .user_data(UD_WAKE);
        self.push(&[e]);
    }

    /// Push entries as one unit, flushing to the kernel first if the SQ
    /// lacks room (a linked pair must not be split across a full queue).
    fn push(&mut self, entries: &[squeue::Entry]) {
        loop {
            let room = {
                let sq = self.ring.submission();
                sq.capacity() - sq.len()
            };
            if room >= entries.len() {
                break;
            }
            if let Err(e) = self.ring.submit() {
                if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) {
                    tracing::error!(disk = %self.name, error = %e, "io_uring submit failed while flushing");
                }
                // EBUSY: the CQ is full; reap to make room before trying again.
                self.reap();
            }
        }
        // SAFETY: every entry's pointers refer to memory owned by the op table
        // (or by this struct: wake_buf, grace timespec) that stays put until
        // the matching CQE has been reaped.
        let pushed = unsafe { self.ring.submission().push_multiple(entries) };
        debug_assert!(pushed.is_ok(), "room was checked above");
    }

    fn submit(&mut self, s: Submission) {
        let deadline = s.deadline;
        let Some(admitted) = self.table.admit(s, false) else {
            return;
        };
        if let Some(d) = deadline {
            self.deadlines
                .push(Reverse((d.instant(), admitted.idx, admitted.gen)));
        }
        self.push(admitted.entries());
    }

    /// Time until the earliest deadline of an op still waiting, dropping
    /// heap entries of ops that are gone or already answered.
    fn next_expiry(&mut self) -> Option<Duration> {
        while let Some(&Reverse((at, idx, gen))) = self.deadlines.peek() {
            if self.table.is_waiting(idx, gen) {
                return Some(at.saturating_duration_since(Instant::now()));
            }
            self.deadlines.pop();
        }
        None
    }

    /// Answer every op whose deadline has passed and ask the kernel to
    /// cancel it. The LinkTimeout normally does both, precisely, but the
    /// kernel does not fire it for every path (on 6.18 an op forced into
    /// io-wq that blocks there, like an open of a FIFO or a statx on a hung
    /// FUSE mount, never sees its linked timer); the ring thread's own wait
    /// timeout makes the deadline hold regardless, on an hrtimer, rather than
    /// relying on the caller's millisecond-grained tokio timer.
    fn expire_due(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, idx, gen))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if let Some(op_id) = self.table.expire(idx, gen) {
                self.cancel(op_id);
            }
        }
    }

    fn cancel(&mut self, op_id: u64) {
        if let Some(e) = self.table.abandon(op_id) {
            self.push(&[e]);
        }
    }

    fn cancel_all(&mut self) {
        for id in self.table.op_ids() {
            self.cancel(id);
        }
    }

    fn reap(&mut self) {
        // Collect first: handling a CQE may push SQEs, which needs the ring.
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in cqes {
            self.handle_cqe(ud, res);
        }
    }

    fn handle_cqe(&mut self, ud: u64, res: i32) {
        match ud {
            UD_WAKE => {
                if res < 0 && res != -libc::EAGAIN && res != -libc::EINTR {
                    tracing::error!(disk = %self.name, res, "eventfd read failed");
                }
                self.arm_wake();
            }
            UD_TICK => self.tick_outstanding = false,
            UD_IGNORE => {}
            _ => self.table.complete(ud, res),
        }
    }
}
