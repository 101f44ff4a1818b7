//! Block-request timing: raw tracepoints on `block_rq_issue`,
//! `block_rq_complete` and `block_rq_requeue`, keyed by the request pointer
//! (as libbpf-tools' biolatency does).
//!
//! * issue: record (issue time, whole-disk device, op, bytes) in the
//!   `INFLIGHT` LRU table under the request's address.
//! * complete: look the request up, add its latency to the per-CPU log2
//!   histogram of (device, op), count errors, drop the entry. A partial
//!   completion only shrinks the entry's byte count: the request is still
//!   outstanding.
//! * requeue: drop the entry; the request will be issued again.
//!
//! Raw tracepoints (not `tp_btf`) because they need no BTF-typed context and
//! their arguments are the tracepoint's `TP_PROTO` (`struct request *`
//! first), stable since 5.11. Field offsets inside `struct request`,
//! `request_queue` and `gendisk` come from the loader through the `OFFSETS`
//! global: rustc cannot emit CO-RE relocations.
#![no_std]
#![no_main]

use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel};
use aya_ebpf::macros::{map, raw_tracepoint};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap};
use aya_ebpf::programs::RawTracePointContext;
use aya_ebpf::Global;
use probes_ebpf_common::{
    dev, slot_of, Counter, Hist, HistKey, Inflight, LoaderState, Offsets, FLAG_FILTER,
    FLAG_RQ_DISK, FLAG_VALID,
};

/// Offsets from the loader; all zero (and not [`FLAG_VALID`]) until it
/// sets them, in which case every program returns at once.
#[unsafe(no_mangle)]
static OFFSETS: Global<Offsets> = Global::new(Offsets {
    rq_q: 0,
    rq_disk: 0,
    q_disk: 0,
    disk_major: 0,
    disk_first_minor: 0,
    rq_cmd_flags: 0,
    rq_data_len: 0,
    op_mask: 0,
    flags: 0,
    _pad: 0,
});

// Sizes here are placeholders: the loader sets every map's max_entries from
// its configuration before the maps are created.

/// Request address → in-flight request. LRU so a completion the probes
/// never see (a request freed without completing) cannot fill the table.
#[map(name = "INFLIGHT")]
static INFLIGHT: LruHashMap<u64, Inflight> = LruHashMap::with_max_entries(16384, 2);

/// (device, op) → latency histogram, per CPU (no atomics on the hot path).
#[map(name = "HIST")]
static HIST: PerCpuHashMap<HistKey, Hist> = PerCpuHashMap::with_max_entries(1024, 0);

/// Program-wide counters, indexed by [`Counter`].
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Devices to trace when [`FLAG_FILTER`] is set.
#[map(name = "DEV_FILTER")]
static DEV_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(64, 0);

/// Written by user space only (heartbeat); defined here so it is created
/// and pinned with the others.
#[map(name = "LOADER_STATE")]
static LOADER_STATE: Array<LoaderState> = Array::with_max_entries(1, 0);

/// A zeroed histogram to insert new keys from: a `Hist` does not fit the
/// 512-byte BPF stack.
#[map(name = "HIST_ZERO")]
static HIST_ZERO: Array<Hist> = Array::with_max_entries(1, 0);

#[inline(always)]
fn bump(counter: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU array slot of this CPU; programs do not nest on
        // one CPU for these tracepoints, so the add is not torn.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies from any kernel address and
    // fails (instead of faulting) on a bad one.
    match unsafe { bpf_probe_read_kernel(addr as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            bump(Counter::ReadFailed);
            None
        }
    }
}

/// Whole-disk device number of a request: `q->disk` (or `rq->rq_disk`
/// on old kernels), then `MKDEV(disk->major, disk->first_minor)`.
#[inline(always)]
fn request_dev(rq: u64, q: u64, off: &Offsets) -> Option<u32> {
    let disk: u64 = if off.flags & FLAG_RQ_DISK != 0 {
        read(rq + off.rq_disk as u64)?
    } else {
        if q == 0 {
            return None;
        }
        read(q + off.q_disk as u64)?
    };
    if disk == 0 {
        // Requests without a disk (e.g. some passthrough commands).
        return None;
    }
    // One read instead of two when the fields are adjacent (they are:
    // `int major; int first_minor;`); every helper call counts at ~100k
    // requests per second.
    let (major, minor) = if off.disk_first_minor == off.disk_major + 4 {
        let pair: [u32; 2] = read(disk + off.disk_major as u64)?;
        (pair[0], pair[1])
    } else {
        (
            read(disk + off.disk_major as u64)?,
            read(disk + off.disk_first_minor as u64)?,
        )
    };
    Some(dev::make(major, minor))
}

/// Size of the window [`rq_fields`] reads in one go.
const WINDOW_WORDS: usize = 16;

/// `q`, `cmd_flags` and `__data_len` of a request. On 6.18 they sit at 0,
/// 24 and 44: one 64-byte read instead of three (each helper call costs
/// ~60 ns, and this runs for every request). Falls back to three reads on
/// a layout where they are further apart.
#[inline(always)]
fn rq_fields(rq: u64, off: &Offsets) -> Option<(u64, u32, u32)> {
    let lo = off.rq_q.min(off.rq_cmd_flags).min(off.rq_data_len);
    let hi = (off.rq_q + 8)
        .max(off.rq_cmd_flags + 4)
        .max(off.rq_data_len + 4);
    let aligned = (off.rq_q | off.rq_cmd_flags | off.rq_data_len | lo) % 4 == 0;
    if aligned && hi - lo <= (WINDOW_WORDS * 4) as u32 {
        let w: [u32; WINDOW_WORDS] = read(rq + lo as u64)?;
        let word = |o: u32| w.get(((o - lo) / 4) as usize).copied();
        let q = u64::from(word(off.rq_q)?) | (u64::from(word(off.rq_q + 4)?) << 32);
        return Some((q, word(off.rq_cmd_flags)?, word(off.rq_data_len)?));
    }
    Some((
        read(rq + off.rq_q as u64)?,
        read(rq + off.rq_cmd_flags as u64)?,
        read(rq + off.rq_data_len as u64)?,
    ))
}

fn on_issue(ctx: &RawTracePointContext) -> Option<()> {
    let off = OFFSETS.load();
    if off.flags & FLAG_VALID == 0 {
        return None;
    }
    let rq: u64 = ctx.arg(0);
    let (q, cmd_flags, bytes) = rq_fields(rq, &off)?;
    let dev = request_dev(rq, q, &off)?;
    // SAFETY: a plain lookup; the value is not dereferenced.
    if off.flags & FLAG_FILTER != 0 && unsafe { DEV_FILTER.get(&dev) }.is_none() {
        return None;
    }
    let entry = Inflight {
        // SAFETY: no preconditions.
        issue_ns: unsafe { bpf_ktime_get_ns() },
        dev,
        op: cmd_flags & off.op_mask,
        bytes,
        _pad: 0,
    };
    // Only failures are counted here: a counter per request would cost a
    // map lookup on the hot path, and completions are counted per device
    // in `HIST` anyway.
    if INFLIGHT.insert(&rq, &entry, 0).is_err() {
        bump(Counter::InflightInsertFailed);
    }
    Some(())
}

fn on_complete(ctx: &RawTracePointContext) -> Option<()> {
    let off = OFFSETS.load();
    if off.flags & FLAG_VALID == 0 {
        return None;
    }
    let rq: u64 = ctx.arg(0);
    // blk_status_t is a u8 widened to u64 by the tracepoint glue.
    let error = ctx.arg::<u64>(1) & 0xff;
    let nr_bytes = ctx.arg::<u64>(2) as u32;
    let Some(entry) = INFLIGHT.get_ptr_mut(&rq) else {
        bump(Counter::Untracked);
        return None;
    };
    // SAFETY: a value of our own map; only this request's issue/complete
    // touch this key and they do not run concurrently for one request.
    let e = unsafe { &mut *entry };
    if error == 0 && nr_bytes != 0 && nr_bytes < e.bytes {
        // Partial completion: the rest of the request is still outstanding.
        e.bytes -= nr_bytes;
        bump(Counter::Partial);
        return Some(());
    }
    let inflight = *e;
    let _ = INFLIGHT.remove(&rq);
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let lat = now.saturating_sub(inflight.issue_ns);
    let key = HistKey {
        dev: inflight.dev,
        op: inflight.op,
    };
    let hist = match HIST.get_ptr_mut(&key) {
        Some(h) => h,
        None => {
            let zero = HIST_ZERO.get(0)?;
            // BPF_NOEXIST: another CPU may have created it meanwhile.
            let _ = HIST.insert(&key, zero, 1);
            match HIST.get_ptr_mut(&key) {
                Some(h) => h,
                None => {
                    bump(Counter::HistFull);
                    return None;
                }
            }
        }
    };
    // SAFETY: this CPU's copy of a per-CPU value; see `bump`.
    let h = unsafe { &mut *hist };
    let slot = slot_of(lat);
    if let Some(s) = h.slots.get_mut(slot) {
        *s += 1;
    }
    h.count += 1;
    h.sum_ns += lat;
    h.bytes += inflight.bytes as u64;
    if error != 0 {
        h.errors += 1;
    }
    Some(())
}

fn on_requeue(ctx: &RawTracePointContext) -> Option<()> {
    let off = OFFSETS.load();
    if off.flags & FLAG_VALID == 0 {
        return None;
    }
    let rq: u64 = ctx.arg(0);
    if INFLIGHT.remove(&rq).is_ok() {
        bump(Counter::Requeued);
    }
    Some(())
}

/// `block_rq_issue(struct request *rq)`.
#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn block_rq_issue(ctx: RawTracePointContext) -> i32 {
    let _ = on_issue(&ctx);
    0
}

/// `block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`.
#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn block_rq_complete(ctx: RawTracePointContext) -> i32 {
    let _ = on_complete(&ctx);
    0
}

/// `block_rq_requeue(struct request *rq)`.
#[raw_tracepoint(tracepoint = "block_rq_requeue")]
pub fn block_rq_requeue(ctx: RawTracePointContext) -> i32 {
    let _ = on_requeue(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Licence: GPL is required for bpf_probe_read_kernel.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
