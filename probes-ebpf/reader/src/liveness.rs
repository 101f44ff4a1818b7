//! The one liveness rule.

use std::time::Duration;

use probes_ebpf_common::LoaderState;

/// How fresh a loader's heartbeat must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LivenessConfig {
    /// The heartbeat counts as fresh for this many of the loader's own scan
    /// intervals (it writes one after every scan)...
    pub heartbeat_intervals: u32,
    /// ...and for at least this long (a loader with a 1 ms interval on a
    /// loaded machine is not dead after 5 ms).
    pub min_window: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            heartbeat_intervals: 5,
            min_window: Duration::from_secs(1),
        }
    }
}

impl LivenessConfig {
    /// How old a heartbeat from a loader scanning every `scan_interval_ns`
    /// may be.
    pub fn window(&self, scan_interval_ns: u64) -> Duration {
        Duration::from_nanos(scan_interval_ns.saturating_mul(u64::from(self.heartbeat_intervals)))
            .max(self.min_window)
    }
}

/// Whether pinned maps belong to a running loader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// A process owns the pin directory and the heartbeat is fresh.
    Live {
        /// Age of the last heartbeat.
        heartbeat_age: Duration,
    },
    /// Nobody owns the pin directory: the loader that pinned these maps
    /// exited or was killed (its in-flight entries will never complete).
    Dead,
    /// The directory is owned but the heartbeat is older than the window:
    /// the loader is paused (SIGSTOP), hung, or starved.
    Stale {
        /// Age of the last heartbeat.
        heartbeat_age: Duration,
        /// The window it had to be within.
        window: Duration,
    },
    /// The pins now hold other maps than the ones this reader opened (a
    /// new loader replaced a dead one): reopen them.
    Replaced,
}

impl Liveness {
    /// Only [`Liveness::Live`] maps may be believed.
    pub fn is_live(&self) -> bool {
        matches!(self, Liveness::Live { .. })
    }
}

/// The rule: live iff someone owns the pin directory (`owner_present`, see
/// [`crate::owner_present`]) and `state`'s heartbeat is at most
/// [`LivenessConfig::window`] old at `now_ns` (`CLOCK_MONOTONIC`). A
/// heartbeat from the future (cannot happen on one machine) counts as age
/// zero.
pub fn judge(
    state: &LoaderState,
    owner_present: bool,
    now_ns: u64,
    cfg: &LivenessConfig,
) -> Liveness {
    if !owner_present {
        return Liveness::Dead;
    }
    let heartbeat_age = Duration::from_nanos(now_ns.saturating_sub(state.heartbeat_ns));
    let window = cfg.window(state.scan_interval_ns);
    if heartbeat_age <= window {
        Liveness::Live { heartbeat_age }
    } else {
        Liveness::Stale {
            heartbeat_age,
            window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn state(heartbeat_ms: u64, interval_ms: u64) -> LoaderState {
        LoaderState {
            heartbeat_ns: heartbeat_ms * MS,
            scan_interval_ns: interval_ms * MS,
            ..LoaderState::default()
        }
    }

    #[test]
    fn window_is_intervals_with_a_floor() {
        let cfg = LivenessConfig::default();
        assert_eq!(cfg.window(100 * MS), Duration::from_secs(1));
        assert_eq!(cfg.window(500 * MS), Duration::from_millis(2500));
        assert_eq!(cfg.window(0), Duration::from_secs(1));
        assert_eq!(cfg.window(u64::MAX), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn owner_and_fresh_heartbeat_is_live_and_nothing_else_is() {
        let cfg = LivenessConfig::default();
        let s = state(10_000, 100);
        assert_eq!(
            judge(&s, true, 10_999 * MS, &cfg),
            Liveness::Live {
                heartbeat_age: Duration::from_millis(999)
            }
        );
        assert_eq!(
            judge(&s, true, 11_000 * MS, &cfg),
            Liveness::Live {
                heartbeat_age: Duration::from_secs(1)
            }
        );
        assert_eq!(
            judge(&s, true, 11_001 * MS, &cfg),
            Liveness::Stale {
                heartbeat_age: Duration::from_millis(1001),
                window: Duration::from_secs(1)
            }
        );
        // No owner: dead however fresh the heartbeat.
        assert_eq!(judge(&s, false, 10_000 * MS, &cfg), Liveness::Dead);
        // A heartbeat "from the future" is age zero.
        assert!(judge(&s, true, 0, &cfg).is_live());
    }
}
