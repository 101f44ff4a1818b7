//! The op table both rings share the logic of: what an operation owns while
//! the kernel holds it, how a CQE (of the op or of its linked timer) turns
//! into the caller's [`Completion`], and how a departing caller turns the op
//! into an accounted zombie. The slow ring (`ring`) and the fast ring
//! (`fast`) each own one table; neither has completion logic of its own.
//!
//! **Invariant:** a slot is freed only at its op's CQE, and with it the
//! in-flight permit, the files the op uses and the buffers the kernel
//! points into. A caller that left earlier was answered from the slot
//! (timer CQE, the ring's deadline heap, or its own timeout) and the slot
//! stays, counted in [`DriverStats::zombies`], until then.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use io_uring::{opcode, squeue, types};
use tokio::sync::oneshot;

use crate::file::{Closer, File, FileInner};
use crate::ops::Op;
use crate::ring::{Completion, Submission};
use crate::DriverStats;
use disk_io_api::Deadline;

// user_data layout: [63:62] tag, [61:32] slot generation, [31:0] slot index.
pub(crate) const TAG_SHIFT: u32 = 62;
pub(crate) const TAG_OP: u64 = 0;
pub(crate) const TAG_TIMEOUT: u64 = 1;
/// Ring-private control entries (wake reads, ticks, cancels); the table
/// never sees them.
pub(crate) const TAG_CONTROL: u64 = 3;
const GEN_MASK: u64 = (1 << 30) - 1;
/// The CQE of an `AsyncCancel`: nothing to do.
pub(crate) const UD_IGNORE: u64 = (TAG_CONTROL << TAG_SHIFT) | 2;

pub(crate) fn user_data(tag: u64, gen: u32, idx: u32) -> u64 {
    (tag << TAG_SHIFT) | ((gen as u64 & GEN_MASK) << 32) | idx as u64
}

pub(crate) fn decode(ud: u64) -> (u64, u32, u32) {
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
    _inflight_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    file_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    cancellable: bool,
    _keep: [Option<File>; 2],
    op_done: bool,
    timer_fired: bool,
    /// Nobody waits for this op any more and its CQE has not come: a zombie.
    abandoned: bool,
}

/// Fixed-capacity slab of in-flight operations.
///
/// **Invariant:** the table is never full when an op arrives. Its capacity
/// is `max_in_flight + max_open_files`, every op holds an in-flight permit
/// until its slot is freed, and every close holds the file permit of the
/// fd it closes; the semaphores in front are the bound. A full table is a
/// bug in the accounting and stops the ring (assert), rather than being
/// reported to a caller as if the disk had failed.
struct Slab {
    slots: Vec<Option<Slot>>,
    gens: Vec<u32>,
    free: Vec<u32>,
}

impl Slab {
    fn new(capacity: usize) -> Slab {
        Slab {
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

/// An op admitted to the table: the SQEs to push, as one unit.
pub(crate) struct Admitted {
    /// The op, and its LinkTimeout when it has a deadline.
    pub entries: [squeue::Entry; 2],
    /// How many of `entries` to push.
    pub len: usize,
    /// Slot index and generation, for the slow ring's deadline heap.
    pub idx: u32,
    pub gen: u32,
}

impl Admitted {
    pub(crate) fn entries(&self) -> &[squeue::Entry] {
        &self.entries[..self.len]
    }
}

/// One ring's in-flight operations.
pub(crate) struct OpTable {
    slab: Slab,
    by_op_id: HashMap<u64, (u32, u32)>,
    stats: Arc<DriverStats>,
    closer: Closer,
    name: String,
}

impl OpTable {
    pub(crate) fn new(
        capacity: usize,
        stats: Arc<DriverStats>,
        closer: Closer,
        name: String,
    ) -> OpTable {
        OpTable {
            slab: Slab::new(capacity),
            by_op_id: HashMap::with_capacity(capacity),
            stats,
            closer,
            name,
        }
    }

    /// Operations the kernel still holds.
    pub(crate) fn in_use(&self) -> usize {
        self.slab.in_use()
    }

    /// Put `s` in the table and build its SQEs (`nowait`: data ops carry
    /// `RWF_NOWAIT`, see `fast`). A submission whose deadline already passed
    /// is answered at once and `None` comes back.
    pub(crate) fn admit(&mut self, s: Submission, nowait: bool) -> Option<Admitted> {
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
        if remaining == Some(std::time::Duration::ZERO) {
            if let Some(tx) = reply {
                let _ = tx.send(Completion {
                    res: -libc::ETIME,
                    timed_out: true,
                    op: Some(op),
                    file: None,
                });
            }
            return None;
        }
        let timespec = remaining.map(|r| Box::new(types::Timespec::from(r)));
        let entry = op.entry(nowait);
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
        let Some((idx, gen)) = self.slab.alloc(slot) else {
            panic!(
                "disk {}: op table full ({} slots) despite the permits in front of it",
                self.name,
                self.slab.slots.len()
            );
        };
        if op_id != u64::MAX {
            self.by_op_id.insert(op_id, (idx, gen));
        }
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        let entry = entry.user_data(user_data(TAG_OP, gen, idx));
        Some(match timespec {
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
                if let Some(slot) = self.slab.get(idx, gen) {
                    // The box moves into the slot; the pointer the SQE holds
                    // is to its heap contents, which do not move.
                    slot._timespec = Some(ts);
                }
                Admitted {
                    entries: [entry.flags(squeue::Flags::IO_LINK), timeout],
                    len: 2,
                    idx,
                    gen,
                }
            }
            None => Admitted {
                entries: [entry, opcode::Nop::new().build()],
                len: 1,
                idx,
                gen,
            },
        })
    }

    /// Whether the op in (`idx`, `gen`) still has a caller waiting for it.
    pub(crate) fn is_waiting(&mut self, idx: u32, gen: u32) -> bool {
        self.slab
            .get(idx, gen)
            .is_some_and(|s| !s.op_done && s.reply.is_some())
    }

    /// The deadline of the op in (`idx`, `gen`) passed: answer its caller
    /// now and return its op id, for the ring to cancel it.
    pub(crate) fn expire(&mut self, idx: u32, gen: u32) -> Option<u64> {
        let slot = self.slab.get(idx, gen)?;
        if slot.op_done {
            return None;
        }
        let tx = slot.reply.take()?;
        slot.timer_fired = true;
        let _ = tx.send(Completion {
            res: -libc::ETIME,
            timed_out: true,
            op: None,
            file: None,
        });
        Some(slot.op_id)
    }

    /// The caller of `op_id` has gone: it becomes a zombie until its CQE.
    /// Returns the `AsyncCancel` to push, if the op may be cancelled.
    pub(crate) fn abandon(&mut self, op_id: u64) -> Option<squeue::Entry> {
        let &(idx, gen) = self.by_op_id.get(&op_id)?;
        let slot = self.slab.get(idx, gen)?;
        slot.reply = None;
        if !slot.op_done && !slot.abandoned {
            slot.abandoned = true;
            self.stats.zombies.fetch_add(1, Ordering::Relaxed);
        }
        if !slot.cancellable {
            return None;
        }
        Some(
            opcode::AsyncCancel::new(user_data(TAG_OP, gen, idx))
                .build()
                .user_data(UD_IGNORE),
        )
    }

    /// Op ids of everything in the table (for a shutdown's cancel-all).
    pub(crate) fn op_ids(&self) -> Vec<u64> {
        self.by_op_id.keys().copied().collect()
    }

    /// Handle a CQE of an op or of its linked timer (`TAG_OP` or
    /// `TAG_TIMEOUT` in `ud`); other tags are the ring's own.
    pub(crate) fn complete(&mut self, ud: u64, res: i32) {
        let (tag, gen, idx) = decode(ud);
        match tag {
            TAG_TIMEOUT => self.timer_cqe(idx, gen, res),
            TAG_OP => self.op_cqe(idx, gen, res),
            _ => {}
        }
    }

    fn timer_cqe(&mut self, idx: u32, gen: u32, res: i32) {
        let Some(slot) = self.slab.get(idx, gen) else {
            return;
        };
        // -ETIME: fired and cancelled the op; -EALREADY/-ENOENT: fired but
        // the op was running or just finished. -ECANCELED: the op completed
        // first and the timer was removed.
        if res == -libc::ECANCELED || slot.op_done {
            return;
        }
        slot.timer_fired = true;
        // Answer the caller now, on the kernel's timer, rather than when the
        // op's own CQE comes (which for an op stuck in a hung device may be
        // never). The op stays in the table with its buffers until that
        // CQE: a zombie.
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

    fn op_cqe(&mut self, idx: u32, gen: u32, res: i32) {
        let Some(slot) = self.slab.get(idx, gen) else {
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
        // A successful open owns a new fd from here on, whoever (if anyone)
        // still waits for it.
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
            // A send to a caller that has gone hands the completion back;
            // dropping it closes the file through the ring.
            let _ = tx.send(Completion {
                res,
                timed_out,
                op,
                file,
            });
        }
        self.slab.release(idx);
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Ops the kernel still holds point into buffers in this table; freeing
    /// them would let a late completion write into freed memory. Leak them
    /// deliberately: bounded by the table's capacity, and it happens only
    /// when a disk is dropped while its device is hung.
    pub(crate) fn leak_if_outstanding(self) {
        if self.in_use() > 0 {
            tracing::warn!(
                disk = %self.name,
                outstanding = self.in_use(),
                "ring goes away with operations still held by the kernel; leaking their buffers"
            );
            std::mem::forget(self);
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
    fn slab_reuses_slots_with_new_generation() {
        let mut t = Slab::new(2);
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
