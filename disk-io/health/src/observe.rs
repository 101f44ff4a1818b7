//! [`Observer`]s see every transition, in order, as it happens; metrics
//! are one of them ([`MetricsObserver`]), so the machine knows nothing of
//! metrics.

use crate::machine::Transition;
use crate::HealthState;

/// Gauge: health state (0 online, 1 suspect, 2 faulty, 3 probing), by disk.
pub const STATE: &str = "diskio_disk_state";
/// Counter: state transitions, by disk, from and to.
pub const TRANSITIONS: &str = "diskio_disk_state_transitions_total";

/// Something that wants every transition of a disk. Called with the
/// machine's lock held, so it must be quick and must not call back into
/// the [`Health`](crate::Health) it observes.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// The disk was created in `state`.
    fn initial(&self, disk: &str, state: HealthState);
    /// The disk changed state.
    fn transition(&self, disk: &str, t: &Transition);
}

/// Records [`STATE`] and [`TRANSITIONS`] through the `metrics` facade.
#[derive(Debug, Default, Clone, Copy)]
pub struct MetricsObserver;

impl Observer for MetricsObserver {
    fn initial(&self, disk: &str, state: HealthState) {
        metrics::gauge!(STATE, "disk" => disk.to_string()).set(state as u8 as f64);
    }

    fn transition(&self, disk: &str, t: &Transition) {
        metrics::gauge!(STATE, "disk" => disk.to_string()).set(t.to as u8 as f64);
        metrics::counter!(TRANSITIONS, "disk" => disk.to_string(), "from" => t.from.as_str(), "to" => t.to.as_str())
            .increment(1);
    }
}
