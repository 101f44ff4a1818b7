//! The probes' clock.

use std::time::Duration;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` reads,
/// so ages computed from it and the probes' timestamps are exact.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => u64::try_from(Duration::from(ts).as_nanos()).unwrap_or(u64::MAX),
        // CLOCK_MONOTONIC cannot fail on Linux; 0 makes every age look
        // small, never a false stall.
        Err(_) => 0,
    }
}
