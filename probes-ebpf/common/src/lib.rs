//! Types shared by the block-request probes (`probes-ebpf/kernel`, built for
//! `bpfel-unknown-none`) and user space (the probe loader and `disk-io`'s
//! eBPF stall source).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding, so the
//! layout is the same on both sides and no uninitialised byte ever reaches a
//! map. With the `user` feature the types implement `aya::Pod` and the
//! [`sysfs`] helpers (device numbers ↔ names, directory → backing disk) are
//! available.
//!
//! Device numbers are kept in the kernel's internal encoding
//! (`major << 20 | minor`, see [`dev`]), because that is what the probes can
//! build from `struct gendisk` without any helper.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

#[cfg(feature = "user")]
pub mod sysfs;

/// Version of the map layout. The loader stores it in [`LoaderState`]; a
/// reader built against another layout refuses the maps instead of
/// misreading them.
pub const ABI_VERSION: u32 = 1;

/// Names of the maps, as defined in the eBPF object and as pinned under the
/// pin directory.
pub mod maps {
    /// In-flight requests: LRU hash, request pointer (`u64`) →
    /// [`Inflight`](crate::Inflight).
    pub const INFLIGHT: &str = "INFLIGHT";
    /// Latency histograms: per-CPU hash, [`HistKey`](crate::HistKey) →
    /// [`Hist`](crate::Hist).
    pub const HIST: &str = "HIST";
    /// Program-wide event counters: per-CPU array indexed by
    /// [`Counter`](crate::Counter).
    pub const COUNTERS: &str = "COUNTERS";
    /// Device filter: hash, device (`u32`) → `u8` (present = traced). Only
    /// consulted when [`Offsets::flags`](crate::Offsets::flags) has
    /// [`FLAG_FILTER`](crate::FLAG_FILTER).
    pub const DEV_FILTER: &str = "DEV_FILTER";
    /// One-entry array the loader writes after every scan:
    /// [`LoaderState`](crate::LoaderState).
    pub const LOADER_STATE: &str = "LOADER_STATE";
    /// One-entry array holding a zeroed [`Hist`](crate::Hist): the template
    /// the probes insert from (a `Hist` is too large for the 512-byte BPF
    /// stack). Not pinned.
    pub const HIST_ZERO: &str = "HIST_ZERO";
    /// The maps a reader opens from the pin directory.
    pub const PINNED: [&str; 4] = [INFLIGHT, HIST, COUNTERS, LOADER_STATE];
}

/// Name of the global holding [`Offsets`] in the eBPF object.
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Default bpffs directory the loader pins its maps under.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/disk-io-probes";

/// Number of log2 latency buckets. Bucket `i` counts latencies in
/// `[2^i, 2^(i+1))` nanoseconds; the last bucket also takes everything
/// longer (2^39 ns ≈ 9 minutes).
pub const HIST_SLOTS: usize = 40;

/// [`Offsets::flags`]: the loader filled the offsets in. The probes do
/// nothing without it (an object loaded with default globals must not read
/// kernel memory at offset 0).
pub const FLAG_VALID: u32 = 1;
/// [`Offsets::flags`]: the kernel has `request.rq_disk` (before 5.19/6.0);
/// read the disk from there instead of `request.q->disk`.
pub const FLAG_RQ_DISK: u32 = 1 << 1;
/// [`Offsets::flags`]: trace only devices present in the `DEV_FILTER` map.
pub const FLAG_FILTER: u32 = 1 << 2;

/// Field offsets inside kernel structures, worked out by the loader from
/// the running kernel's BTF and passed in as a global (rustc cannot emit
/// CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `struct request`, field `q` (`struct request_queue *`).
    pub rq_q: u32,
    /// `struct request`, field `rq_disk` (`struct gendisk *`), on kernels
    /// that have it ([`FLAG_RQ_DISK`]).
    pub rq_disk: u32,
    /// `struct request_queue`, field `disk` (`struct gendisk *`).
    pub q_disk: u32,
    /// `struct gendisk`, field `major` (`int`).
    pub disk_major: u32,
    /// `struct gendisk`, field `first_minor` (`int`).
    pub disk_first_minor: u32,
    /// `struct request`, field `cmd_flags` (`blk_opf_t`, 32 bits).
    pub rq_cmd_flags: u32,
    /// `struct request`, field `__data_len` (`unsigned int`).
    pub rq_data_len: u32,
    /// Mask of the operation bits in `cmd_flags` (`(1 << REQ_OP_BITS) - 1`).
    pub op_mask: u32,
    /// [`FLAG_VALID`] | [`FLAG_RQ_DISK`] | [`FLAG_FILTER`].
    pub flags: u32,
    /// Padding (keeps the size a multiple of 8; always 0).
    pub _pad: u32,
}

/// One in-flight request, as stored by `block_rq_issue`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inflight {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at issue.
    pub issue_ns: u64,
    /// Whole-disk device number, kernel encoding ([`dev`]).
    pub dev: u32,
    /// Request operation (`cmd_flags & op_mask`: 0 read, 1 write, ...).
    pub op: u32,
    /// Bytes still to complete (`__data_len` at issue, minus partial
    /// completions).
    pub bytes: u32,
    /// Padding (always 0).
    pub _pad: u32,
}

/// Key of the latency histograms.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistKey {
    /// Whole-disk device number, kernel encoding ([`dev`]).
    pub dev: u32,
    /// Request operation (see [`op_name`]).
    pub op: u32,
}

/// Per-CPU latency histogram and counters of one (device, operation).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hist {
    /// Log2 latency buckets in nanoseconds (see [`HIST_SLOTS`]).
    pub slots: [u64; HIST_SLOTS],
    /// Completed requests.
    pub count: u64,
    /// Sum of their latencies, nanoseconds.
    pub sum_ns: u64,
    /// Completions with a non-zero `blk_status_t`.
    pub errors: u64,
    /// Bytes completed.
    pub bytes: u64,
}

impl Hist {
    /// An empty histogram.
    pub const ZERO: Hist = Hist {
        slots: [0; HIST_SLOTS],
        count: 0,
        sum_ns: 0,
        errors: 0,
        bytes: 0,
    };

    /// Adds `other` into `self` (user space sums the per-CPU copies).
    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.slots.iter_mut().zip(other.slots.iter()) {
            *a = a.wrapping_add(*b);
        }
        self.count = self.count.wrapping_add(other.count);
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
        self.errors = self.errors.wrapping_add(other.errors);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

impl Default for Hist {
    fn default() -> Self {
        Hist::ZERO
    }
}

/// Bucket of a latency in nanoseconds: `floor(log2(ns))`, clamped to the
/// last slot. Written without loops or `leading_zeros` (the BPF backend has
/// no count-leading-zeros instruction); the same function runs in the
/// probes and in tests.
#[inline(always)]
pub fn slot_of(ns: u64) -> usize {
    let mut v = ns;
    let mut r: u64 = 0;
    let mut shift: u64;
    shift = ((v > 0xFFFF_FFFF) as u64) << 5;
    v >>= shift;
    r |= shift;
    shift = ((v > 0xFFFF) as u64) << 4;
    v >>= shift;
    r |= shift;
    shift = ((v > 0xFF) as u64) << 3;
    v >>= shift;
    r |= shift;
    shift = ((v > 0xF) as u64) << 2;
    v >>= shift;
    r |= shift;
    shift = ((v > 0x3) as u64) << 1;
    v >>= shift;
    r |= shift;
    r |= v >> 1;
    let r = r as usize;
    if r >= HIST_SLOTS {
        HIST_SLOTS - 1
    } else {
        r
    }
}

/// Upper bound of bucket `slot` in nanoseconds (`2^(slot+1)`); `None` for
/// the last bucket, which is open-ended.
pub fn slot_upper_ns(slot: usize) -> Option<u64> {
    (slot + 1 < HIST_SLOTS).then(|| 1u64 << (slot + 1))
}

/// Program-wide event counters (indices into the `COUNTERS` array). Only
/// the unusual events: counting every request here would add a map access
/// per request, and completions are counted per device in `HIST`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Completions with no in-flight entry (issued before the probes were
    /// attached, or evicted).
    Untracked = 0,
    /// Requests sent back to the queue (their entry is dropped; the next
    /// issue starts a new one).
    Requeued = 1,
    /// In-flight insertions that failed.
    InflightInsertFailed = 2,
    /// Histogram insertions that failed (the `HIST` map is full).
    HistFull = 3,
    /// Kernel memory reads that failed (bad offsets).
    ReadFailed = 4,
    /// Partial completions (the request stays in flight).
    Partial = 5,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 6] = [
        Counter::Untracked,
        Counter::Requeued,
        Counter::InflightInsertFailed,
        Counter::HistFull,
        Counter::ReadFailed,
        Counter::Partial,
    ];
    /// Number of counters (entries of the `COUNTERS` array).
    pub const COUNT: u32 = 6;

    /// Label used in metrics and `status`.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Untracked => "untracked",
            Counter::Requeued => "requeued",
            Counter::InflightInsertFailed => "inflight_insert_failed",
            Counter::HistFull => "hist_full",
            Counter::ReadFailed => "read_failed",
            Counter::Partial => "partial",
        }
    }
}

/// Written by the loader into `LOADER_STATE` after every scan, so readers
/// (`probe-loader status`, `disk-io`) can tell a live loader from pins left
/// behind by a dead one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoaderState {
    /// CLOCK_MONOTONIC nanoseconds of the last completed scan.
    pub heartbeat_ns: u64,
    /// The loader's scan interval, nanoseconds.
    pub scan_interval_ns: u64,
    /// The loader's stall threshold, nanoseconds.
    pub stall_threshold_ns: u64,
    /// The loader's process id.
    pub pid: u32,
    /// [`ABI_VERSION`] of the loader that wrote this.
    pub abi_version: u32,
}

/// Kernel device-number encoding (`MINORBITS` = 20).
pub mod dev {
    /// Bits of the minor number in the kernel's internal `dev_t`.
    pub const MINOR_BITS: u32 = 20;

    /// `MKDEV(major, minor)` as the kernel encodes it.
    pub const fn make(major: u32, minor: u32) -> u32 {
        (major << MINOR_BITS) | (minor & ((1 << MINOR_BITS) - 1))
    }

    /// Major number of a kernel `dev_t`.
    pub const fn major(dev: u32) -> u32 {
        dev >> MINOR_BITS
    }

    /// Minor number of a kernel `dev_t`.
    pub const fn minor(dev: u32) -> u32 {
        dev & ((1 << MINOR_BITS) - 1)
    }
}

/// Name of a request operation (`REQ_OP_*`), for labels.
pub fn op_name(op: u32) -> &'static str {
    match op {
        0 => "read",
        1 => "write",
        2 => "flush",
        3 => "discard",
        5 => "secure_erase",
        7 => "zone_append",
        9 => "write_zeroes",
        10..=17 => "zone_mgmt",
        34 => "drv_in",
        35 => "drv_out",
        _ => "other",
    }
}

/// The layout contract, checked at compile time: a change to any map type
/// that moves a field, adds implicit padding or changes a size fails the
/// build of both sides (kernel and user space) instead of misreading maps.
/// Bump [`ABI_VERSION`] together with any intended change here.
mod layout {
    use super::{Hist, HistKey, Inflight, LoaderState, Offsets, HIST_SLOTS};
    use core::mem::{align_of, offset_of, size_of};

    const _: () = {
        assert!(size_of::<Offsets>() == 40);
        assert!(align_of::<Offsets>() == 4);
        assert!(offset_of!(Offsets, rq_q) == 0);
        assert!(offset_of!(Offsets, rq_disk) == 4);
        assert!(offset_of!(Offsets, q_disk) == 8);
        assert!(offset_of!(Offsets, disk_major) == 12);
        assert!(offset_of!(Offsets, disk_first_minor) == 16);
        assert!(offset_of!(Offsets, rq_cmd_flags) == 20);
        assert!(offset_of!(Offsets, rq_data_len) == 24);
        assert!(offset_of!(Offsets, op_mask) == 28);
        assert!(offset_of!(Offsets, flags) == 32);
        assert!(offset_of!(Offsets, _pad) == 36);

        assert!(size_of::<Inflight>() == 24);
        assert!(align_of::<Inflight>() == 8);
        assert!(offset_of!(Inflight, issue_ns) == 0);
        assert!(offset_of!(Inflight, dev) == 8);
        assert!(offset_of!(Inflight, op) == 12);
        assert!(offset_of!(Inflight, bytes) == 16);
        assert!(offset_of!(Inflight, _pad) == 20);

        assert!(size_of::<HistKey>() == 8);
        assert!(align_of::<HistKey>() == 4);
        assert!(offset_of!(HistKey, dev) == 0);
        assert!(offset_of!(HistKey, op) == 4);

        assert!(size_of::<Hist>() == (HIST_SLOTS + 4) * 8);
        assert!(align_of::<Hist>() == 8);
        assert!(offset_of!(Hist, slots) == 0);
        assert!(offset_of!(Hist, count) == HIST_SLOTS * 8);
        assert!(offset_of!(Hist, sum_ns) == HIST_SLOTS * 8 + 8);
        assert!(offset_of!(Hist, errors) == HIST_SLOTS * 8 + 16);
        assert!(offset_of!(Hist, bytes) == HIST_SLOTS * 8 + 24);

        assert!(size_of::<LoaderState>() == 32);
        assert!(align_of::<LoaderState>() == 8);
        assert!(offset_of!(LoaderState, heartbeat_ns) == 0);
        assert!(offset_of!(LoaderState, scan_interval_ns) == 8);
        assert!(offset_of!(LoaderState, stall_threshold_ns) == 16);
        assert!(offset_of!(LoaderState, pid) == 24);
        assert!(offset_of!(LoaderState, abi_version) == 28);
    };
}

#[cfg(feature = "user")]
mod pod {
    use super::{Hist, HistKey, Inflight, LoaderState, Offsets};
    // SAFETY: all five are #[repr(C)], made only of integers, with explicit
    // padding fields, so every bit pattern is valid and none has padding bytes.
    unsafe impl aya::Pod for Offsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Inflight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for HistKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Hist {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LoaderState {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_floor_log2_clamped() {
        assert_eq!(slot_of(0), 0);
        assert_eq!(slot_of(1), 0);
        assert_eq!(slot_of(2), 1);
        assert_eq!(slot_of(3), 1);
        assert_eq!(slot_of(4), 2);
        assert_eq!(slot_of(1023), 9);
        assert_eq!(slot_of(1024), 10);
        for i in 0..HIST_SLOTS as u32 {
            let v = 1u64 << i;
            assert_eq!(slot_of(v), i as usize, "2^{i}");
            assert_eq!(slot_of(v * 2 - 1), i as usize, "2^{}-1", i + 1);
        }
        assert_eq!(slot_of(u64::MAX), HIST_SLOTS - 1);
        assert_eq!(slot_of(1 << 45), HIST_SLOTS - 1);
    }

    #[test]
    fn upper_bounds() {
        assert_eq!(slot_upper_ns(0), Some(2));
        assert_eq!(slot_upper_ns(9), Some(1024));
        assert_eq!(slot_upper_ns(HIST_SLOTS - 1), None);
    }

    #[test]
    fn dev_round_trip() {
        let d = dev::make(7, 3);
        assert_eq!(d, (7 << 20) | 3);
        assert_eq!(dev::major(d), 7);
        assert_eq!(dev::minor(d), 3);
        let d = dev::make(259, 0x1_2345);
        assert_eq!((dev::major(d), dev::minor(d)), (259, 0x1_2345));
    }

    #[test]
    fn merge_adds() {
        let mut a = Hist::ZERO;
        a.slots[3] = 2;
        a.count = 2;
        let mut b = Hist::ZERO;
        b.slots[3] = 1;
        b.slots[5] = 4;
        b.count = 5;
        b.errors = 1;
        a.merge(&b);
        assert_eq!(a.slots[3], 3);
        assert_eq!(a.slots[5], 4);
        assert_eq!(a.count, 7);
        assert_eq!(a.errors, 1);
    }
}
