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
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use io_uring::{opcode, squeue, types, IoUring};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::file::{Closer, File, FileInner};
use crate::ops::Op;
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

// user_data layout: [63:62] tag, [61:32] slot generation, [31:0] slot index
// (or an fd for closes of files nobody waits for).
const TAG_SHIFT: u32 = 62;
const TAG_OP: u64 = 0;
const TAG_TIMEOUT: u64 = 1;
const TAG_CONTROL: u64 = 3;
const GEN_MASK: u64 = (1 << 30) - 1;
const UD_WAKE: u64 = (TAG_CONTROL << TAG_SHIFT) | 1;
const UD_IGNORE: u64 = (TAG_CONTROL << TAG_SHIFT) | 2;
const UD_TICK: u64 = (TAG_CONTROL << TAG_SHIFT) | 3;
/// How often a shutting-down ring thread re-checks whether its ops are done.
const SHUTDOWN_TICK: Duration = Duration::from_millis(20);

fn user_data(tag: u64, gen: u32, idx: u32) -> u64 {
    (tag << TAG_SHIFT) | ((gen as u64 & GEN_MASK) << 32) | idx as u64
}

fn decode(ud: u64) -> (u64, u32, u32) {
    (
        ud >> TAG_SHIFT,
        ((ud >> 32) & GEN_MASK) as u32,
        (ud & 0xffff_ffff) as u32,
    )
}

struct Slot {
    op: Option<Op>,
    op_id: u64,
    reply: Option<oneshot::Sender<Completion>>,
    deadline: Option<Deadline>,
    _timespec: Option<Box<types::Timespec>>,
    _inflight_permit: Option<OwnedSemaphorePermit>,
    file_permit: Option<OwnedSemaphorePermit>,
    cancellable: bool,
    _keep: [Option<File>; 2],
    op_done: bool,
    timer_fired: bool,
    /// Nobody waits for this op any more and its CQE has not come: a zombie.
    abandoned: bool,
}

/// Fixed-capacity table of in-flight operations.
///
/// **Invariant:** the table is never full when an op arrives. Its capacity
/// is `max_in_flight + max_open_files`, every op holds an in-flight permit
/// until its slot is freed, and every close holds the file permit of the
/// fd it closes; the semaphores in front are the bound. A full table is a
/// bug in the accounting and stops the ring thread (assert), rather than
/// being reported to a caller as if the disk had failed.
struct OpTable {
    slots: Vec<Option<Slot>>,
    gens: Vec<u32>,
    free: Vec<u32>,
}

impl OpTable {
    fn new(capacity: usize) -> OpTable {
        OpTable {
            slots: (0..capacity).map(|_| None).collect(),
            gens: vec![0; capacity],
            free: (0..capacity as u32).rev().collect(),
        }
    }

    fn alloc(&mut self, slot: Slot) -> Option<(u32, u32)> {
        let idx = self.free.pop()?;
        let i = idx as usize;
        debug_assert!(self.slots[i].is_none());
        self.gens[i] = (self.gens[i].wrapping_add(1)) & GEN_MASK as u32;
        self.slots[i] = Some(slot);
        Some((idx, self.gens[i]))
    }

    fn get(&mut self, idx: u32, gen: u32) -> Option<&mut Slot> {
        let i = idx as usize;
        if i < self.slots.len() && self.gens[i] == gen {
            self.slots[i].as_mut()
        } else {
            None
        }
    }

    fn release(&mut self, idx: u32) -> Option<Slot> {
        let s = self.slots.get_mut(idx as usize)?.take();
        if s.is_some() {
            self.free.push(idx);
        }
        s
    }

    fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

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
    by_op_id: HashMap<u64, (u32, u32)>,
    /// Deadlines of ops in the table, earliest first. Entries of ops that
    /// already completed are skipped lazily (their generation no longer
    /// matches, or the op is done).
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    stats: Arc<DriverStats>,
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
            table: OpTable::new(table_capacity),
            by_op_id: HashMap::with_capacity(table_capacity),
            deadlines: BinaryHeap::with_capacity(table_capacity),
            stats,
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
    /// freeing them would let a late completion write into freed memory.
    /// Leak them, and the ring with them, deliberately: the amount is bounded
    /// by the op table's capacity, and it happens only when a disk is dropped
    /// while its device is hung.
    fn leak_outstanding(self) {
        if self.table.in_use() > 0 {
            tracing::warn!(
                disk = %self.name,
                outstanding = self.table.in_use(),
                "ring thread exits with operations still held by the kernel; leaking their buffers"
            );
            std::mem::forget(self.table);
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
        let Submission {
            mut op,
            deadline,
            op_id,
            reply,
            inflight_permit,
            file_permit,
            cancellable,
            keep,
        } = s;
        let remaining = deadline.map(|d| d.remaining());
        if remaining == Some(Duration::ZERO) {
            if let Some(tx) = reply {
                let _ = tx.send(Completion {
                    res: -libc::ETIME,
                    timed_out: true,
                    op: Some(op),
                    file: None,
                });
            }
            return;
        }
        let timespec = remaining.map(|r| Box::new(types::Timespec::from(r)));
        let mut entry = op.entry();
        let slot = Slot {
            op: Some(op),
            op_id,
            reply,
            deadline,
            _timespec: None,
            _inflight_permit: inflight_permit,
            file_permit,
            cancellable,
            _keep: keep,
            op_done: false,
            timer_fired: false,
            abandoned: false,
        };
        let Some((idx, gen)) = self.table.alloc(slot) else {
            panic!(
                "disk {}: op table full ({} slots) despite the permits in front of it",
                self.name,
                self.table.slots.len()
            );
        };
        self.by_op_id.insert(op_id, (idx, gen));
        if let Some(d) = deadline {
            self.deadlines.push(Reverse((d.instant(), idx, gen)));
        }
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        entry = entry.user_data(user_data(TAG_OP, gen, idx));
        match timespec {
            Some(ts) => {
                // SKIP_SUCCESS: when the op finishes first the timer's
                // -ECANCELED completion is not posted, saving a CQE per op. A
                // timer that fires still posts (-ETIME/-EALREADY); it may come
                // after the op's CQE freed the slot, and is then dropped by
                // the generation check.
                let timeout = opcode::LinkTimeout::new(&*ts as *const _)
                    .build()
                    .flags(squeue::Flags::SKIP_SUCCESS)
                    .user_data(user_data(TAG_TIMEOUT, gen, idx));
                if let Some(slot) = self.table.get(idx, gen) {
                    slot._timespec = Some(ts);
                }
                self.push(&[entry.flags(squeue::Flags::IO_LINK), timeout]);
            }
            None => self.push(&[entry]),
        }
    }

    /// Time until the earliest deadline of an op still waiting, dropping
    /// heap entries of ops that are gone or already answered.
    fn next_expiry(&mut self) -> Option<Duration> {
        while let Some(&Reverse((at, idx, gen))) = self.deadlines.peek() {
            let live = self
                .table
                .get(idx, gen)
                .is_some_and(|s| !s.op_done && s.reply.is_some());
            if live {
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
            let Some(slot) = self.table.get(idx, gen) else {
                continue;
            };
            if slot.op_done {
                continue;
            }
            let Some(tx) = slot.reply.take() else {
                continue;
            };
            slot.timer_fired = true;
            let _ = tx.send(Completion {
                res: -libc::ETIME,
                timed_out: true,
                op: None,
                file: None,
            });
            let op_id = slot.op_id;
            self.cancel(op_id);
        }
    }

    fn cancel(&mut self, op_id: u64) {
        let Some(&(idx, gen)) = self.by_op_id.get(&op_id) else {
            return; // already completed
        };
        let Some(slot) = self.table.get(idx, gen) else {
            return;
        };
        slot.reply = None;
        if !slot.op_done && !slot.abandoned {
            slot.abandoned = true;
            self.stats.zombies.fetch_add(1, Ordering::Relaxed);
        }
        if !slot.cancellable {
            return;
        }
        let e = opcode::AsyncCancel::new(user_data(TAG_OP, gen, idx))
            .build()
            .user_data(UD_IGNORE);
        self.push(&[e]);
    }

    fn cancel_all(&mut self) {
        let ids: Vec<u64> = self.by_op_id.keys().copied().collect();
        for id in ids {
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
                return;
            }
            UD_TICK => {
                self.tick_outstanding = false;
                return;
            }
            UD_IGNORE => return,
            _ => {}
        }
        let (tag, gen, idx) = decode(ud);
        match tag {
            TAG_TIMEOUT => {
                if let Some(slot) = self.table.get(idx, gen) {
                    // -ETIME: fired and cancelled the op; -EALREADY/-ENOENT: fired
                    // but the op was running or just finished. -ECANCELED: the op
                    // completed first and the timer was removed.
                    if res != -libc::ECANCELED && !slot.op_done {
                        slot.timer_fired = true;
                        // Answer the caller now, on the kernel's timer, rather than
                        // when the op's own CQE comes (which for an op stuck in a
                        // hung device may be never). The op stays in the table
                        // with its buffers until that CQE: a zombie.
                        if let Some(tx) = slot.reply.take() {
                            let _ = tx.send(Completion {
                                res: -libc::ETIME,
                                timed_out: true,
                                op: None,
                                file: None,
                            });
                        }
                        if !slot.abandoned {
                            slot.abandoned = true;
                            self.stats.zombies.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            TAG_OP => {
                let Some(slot) = self.table.get(idx, gen) else {
                    return;
                };
                slot.op_done = true;
                if slot.abandoned {
                    self.stats.zombies.fetch_sub(1, Ordering::Relaxed);
                }
                let op_id = slot.op_id;
                let deadline_passed = slot.deadline.is_some_and(|d| d.is_expired());
                // -ERESTARTSYS (512) leaks out of io-wq when a blocking op is
                // interrupted by our cancel; like -EINTR it means "cancelled".
                const ERESTARTSYS: i32 = 512;
                let interrupted = res == -libc::EINTR || res == -ERESTARTSYS;
                let timed_out = res == -libc::ECANCELED
                    || res == -libc::ETIME
                    || (interrupted && (slot.timer_fired || deadline_passed))
                    || slot.timer_fired && res < 0;
                let mut op = slot.op.take();
                if let Some(op) = op.as_mut() {
                    op.complete(res);
                }
                let reply = slot.reply.take();
                let file_permit = slot.file_permit.take();
                self.by_op_id.remove(&op_id);
                self.stats.completed.fetch_add(1, Ordering::Relaxed);
                if timed_out {
                    self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                }
                // A successful open owns a new fd from here on, whoever
                // (if anyone) still waits for it.
                let file = match &op {
                    Some(Op::OpenAt { close_inline, .. }) if res >= 0 => Some(File {
                        inner: Arc::new(FileInner::new(
                            res,
                            *close_inline,
                            self.closer.clone(),
                            file_permit,
                        )),
                    }),
                    _ => {
                        drop(file_permit);
                        None
                    }
                };
                if let Some(tx) = reply {
                    // A send to a caller that has gone hands the completion
                    // back; dropping it closes the file through the ring.
                    let _ = tx.send(Completion {
                        res,
                        timed_out,
                        op,
                        file,
                    });
                }
                self.maybe_free(idx, gen);
            }
            _ => {}
        }
    }

    fn maybe_free(&mut self, idx: u32, gen: u32) {
        let done = self.table.get(idx, gen).is_some_and(|s| s.op_done);
        if done {
            self.table.release(idx);
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_and_never_collides_with_control() {
        for &(tag, gen, idx) in &[
            (TAG_OP, 0, 0),
            (TAG_TIMEOUT, 5, 7),
            (TAG_OP, GEN_MASK as u32, u32::MAX),
        ] {
            let ud = user_data(tag, gen, idx);
            assert_eq!(decode(ud), (tag, gen, idx));
            assert_ne!(ud >> TAG_SHIFT, TAG_CONTROL);
        }
    }

    #[test]
    fn op_table_reuses_slots_with_new_generation() {
        let mut t = OpTable::new(2);
        let mk = || Slot {
            op: None,
            op_id: 0,
            reply: None,
            deadline: None,
            _timespec: None,
            _inflight_permit: None,
            file_permit: None,
            cancellable: true,
            _keep: [None, None],
            op_done: false,
            timer_fired: false,
            abandoned: false,
        };
        let (a, ga) = t.alloc(mk()).expect("slot");
        let (_b, _) = t.alloc(mk()).expect("slot");
        assert!(t.alloc(mk()).is_none(), "capacity is a hard bound");
        assert!(t.release(a).is_some());
        let (a2, ga2) = t.alloc(mk()).expect("slot");
        assert_eq!(a, a2);
        assert_ne!(ga, ga2, "stale user_data must not match a reused slot");
        assert!(t.get(a, ga).is_none());
    }
}
