//! Metric names and the few helpers that record them, through the `metrics`
//! facade (the storage node picks the exporter). Every name starts with
//! [`PREFIX`]. Health states and transitions are recorded by
//! [`disk_io_health::MetricsObserver`] ([`STATE`], [`TRANSITIONS`]).

use std::time::Duration;

use disk_io_api::{DiskError, OpClass};

pub use disk_io_health::{STATE, TRANSITIONS};

/// Prefix of every metric this crate records.
pub const PREFIX: &str = "diskio_";

/// Counter: operations finished, by disk, op and result (`ok` or an error kind).
pub const OPS_TOTAL: &str = "diskio_ops_total";
/// Histogram (seconds): operation latency by disk and op.
pub const OP_DURATION: &str = "diskio_op_duration_seconds";
/// Counter: operations that missed their deadline, by disk and op.
pub const DEADLINE_MISSES: &str = "diskio_deadline_misses_total";
/// Counter: calls refused fast because the disk was Faulty, by disk and op.
pub const FAIL_FAST: &str = "diskio_fail_fast_total";
/// Gauge: operations in flight, by disk.
pub const IN_FLIGHT: &str = "diskio_inflight_ops";
/// Gauge: zombie operations (caller gone, kernel still busy), by disk.
pub const ZOMBIES: &str = "diskio_zombie_ops";
/// Counter: disk-state checks (`get_disk_id`) that timed out, by disk.
pub const STATE_CHECK_TIMEOUTS: &str = "diskio_disk_state_check_timeouts_total";
/// Histogram (seconds): disk-state check (`get_disk_id`) duration, by disk.
pub const STATE_CHECK_DURATION: &str = "diskio_disk_state_check_duration_seconds";
/// Counter: active probes, by disk and result.
pub const PROBES: &str = "diskio_probes_total";

/// Record one finished operation. Public so remote disks record the same
/// series under their own label.
pub fn record_op(disk: &str, op: OpClass, elapsed: Duration, result: Result<(), &DiskError>) {
    let outcome = match result {
        Ok(()) => "ok",
        Err(e) => e.kind(),
    };
    metrics::counter!(OPS_TOTAL, "disk" => disk.to_string(), "op" => op.as_str(), "result" => outcome)
        .increment(1);
    metrics::histogram!(OP_DURATION, "disk" => disk.to_string(), "op" => op.as_str())
        .record(elapsed.as_secs_f64());
    let missed = matches!(result, Err(DiskError::DeadlineExceeded { .. }));
    if missed {
        metrics::counter!(DEADLINE_MISSES, "disk" => disk.to_string(), "op" => op.as_str())
            .increment(1);
    }
    if op == OpClass::DiskId {
        metrics::histogram!(STATE_CHECK_DURATION, "disk" => disk.to_string())
            .record(elapsed.as_secs_f64());
        if missed {
            metrics::counter!(STATE_CHECK_TIMEOUTS, "disk" => disk.to_string()).increment(1);
        }
    }
}

/// Record a call refused fast by the health machine.
pub fn fail_fast(disk: &str, op: OpClass) {
    metrics::counter!(FAIL_FAST, "disk" => disk.to_string(), "op" => op.as_str()).increment(1);
}

pub(crate) fn driver_gauges(disk: &str, in_flight: usize, zombies: usize) {
    metrics::gauge!(IN_FLIGHT, "disk" => disk.to_string()).set(in_flight as f64);
    metrics::gauge!(ZOMBIES, "disk" => disk.to_string()).set(zombies as f64);
}

/// Record an active probe's result.
pub fn probe(disk: &str, ok: bool) {
    metrics::counter!(PROBES, "disk" => disk.to_string(), "result" => if ok { "ok" } else { "error" })
        .increment(1);
}
