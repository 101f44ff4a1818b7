//! Metric names (prefix `diskio_`) and recording helpers.

use crate::quorum::{QuorumError, QuorumOp};

/// Gauge: disks of a set that answered the last availability check.
pub const SET_AVAILABLE_DISKS: &str = "diskio_erasure_set_available_disks";
/// Gauge: the write quorum a set needs.
pub const SET_WRITE_QUORUM: &str = "diskio_erasure_set_write_quorum";
/// Gauge: the read quorum a set needs.
pub const SET_READ_QUORUM: &str = "diskio_erasure_set_read_quorum";
/// Counter: quorum failures while health showed enough disks admitting.
/// Must stay 0.
pub const FALSE_QUORUM_LOSS: &str = "diskio_false_quorum_loss_total";
/// Counter: quorum failures by op and branch (`unavailable`, `lost`).
pub const QUORUM_FAILURES: &str = "diskio_quorum_failures_total";
/// Counter: shard blocks that failed their bitrot checksum.
pub const BITROT: &str = "diskio_bitrot_blocks_total";
/// Gauge: objects waiting in the heal queue.
pub const HEAL_QUEUE_DEPTH: &str = "diskio_heal_queue_depth";
/// Counter: heal pushes dropped because the queue was full.
pub const HEAL_QUEUE_DROPPED: &str = "diskio_heal_queue_dropped_total";
/// Counter: shards rebuilt by healing, by result (`healed`, `failed`).
pub const HEAL_SHARDS: &str = "diskio_heal_shards_total";
/// Counter: disks dropped from a write (failed or too slow).
pub const WRITE_DROPPED_DISKS: &str = "diskio_write_dropped_disks_total";
/// Counter: shard reads hedged to another disk.
pub const READ_HEDGES: &str = "diskio_read_hedges_total";

pub(crate) fn set_gauges(set: usize, available: usize, read_q: usize, write_q: usize) {
    let s = set.to_string();
    metrics::gauge!(SET_AVAILABLE_DISKS, "set" => s.clone()).set(available as f64);
    metrics::gauge!(SET_READ_QUORUM, "set" => s.clone()).set(read_q as f64);
    metrics::gauge!(SET_WRITE_QUORUM, "set" => s).set(write_q as f64);
}

/// Register the must-stay-zero counter of every op of `set` at 0, so it is
/// exported (and alertable) before the first increment, and an absent
/// series means a node that does not export, not a healthy one.
pub(crate) fn register_set(set: usize) {
    for op in QuorumOp::ALL {
        metrics::counter!(FALSE_QUORUM_LOSS, "set" => set.to_string(), "op" => op.as_str())
            .increment(0);
    }
}

pub(crate) fn false_quorum_loss(set: usize, op: QuorumOp) {
    metrics::counter!(FALSE_QUORUM_LOSS, "set" => set.to_string(), "op" => op.as_str())
        .increment(1);
}

pub(crate) fn quorum_failure(set: usize, e: &QuorumError) {
    let branch = match e {
        QuorumError::Unavailable(_) => "unavailable",
        QuorumError::Lost(_) => "lost",
    };
    metrics::counter!(QUORUM_FAILURES, "set" => set.to_string(),
        "op" => e.counts().op.as_str(), "branch" => branch)
    .increment(1);
}

pub(crate) fn bitrot(set: usize) {
    metrics::counter!(BITROT, "set" => set.to_string()).increment(1);
}

pub(crate) fn heal_queue(depth: usize) {
    metrics::gauge!(HEAL_QUEUE_DEPTH).set(depth as f64);
}

pub(crate) fn heal_dropped() {
    metrics::counter!(HEAL_QUEUE_DROPPED).increment(1);
}

pub(crate) fn heal_shard(ok: bool) {
    metrics::counter!(HEAL_SHARDS, "result" => if ok { "healed" } else { "failed" }).increment(1);
}

pub(crate) fn write_dropped(set: usize, why: &'static str) {
    metrics::counter!(WRITE_DROPPED_DISKS, "set" => set.to_string(), "why" => why).increment(1);
}

pub(crate) fn hedge(set: usize) {
    metrics::counter!(READ_HEDGES, "set" => set.to_string()).increment(1);
}

/// Counter: files the collector removed or moved, by kind (`superseded`,
/// `tombstone`, `failed_version`, `orphan_shard`, `grave`, `staging`,
/// `directory`).
pub const GC_REMOVED: &str = "diskio_gc_removed_total";
/// Gauge: objects known unhealable (fewer good shards than data shards).
pub const UNHEALABLE: &str = "diskio_unhealable_objects";

pub(crate) fn gc_removed(set: usize, kind: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!(GC_REMOVED, "set" => set.to_string(), "kind" => kind).increment(n as u64);
    }
}

pub(crate) fn unhealable(set: usize, n: usize) {
    metrics::gauge!(UNHEALABLE, "set" => set.to_string()).set(n as f64);
}
