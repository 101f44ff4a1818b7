//! [`Health`]: the machine shared by a disk's callers and its monitor.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

use crate::config::HealthConfig;
use crate::machine::{Event, Machine, Transition};
use crate::observe::Observer;
use crate::{DiskError, HealthState};

/// The health of one disk: a [`Machine`] behind a short mutex, fed with the
/// real clock. `state()` is one atomic load, so the fail-fast check costs
/// nothing measurable.
pub struct Health {
    label: String,
    state: AtomicU8,
    machine: Mutex<Machine>,
    events: watch::Sender<Transition>,
    observers: Vec<Arc<dyn Observer>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("disk", &self.label)
            .field("state", &self.state())
            .finish()
    }
}

impl Health {
    /// A new, Online disk named `label`; `observers` see every transition.
    pub fn new(label: &str, cfg: HealthConfig, observers: Vec<Arc<dyn Observer>>) -> Health {
        let now = Instant::now();
        // A per-process random seed: disks (and nodes) jitter differently;
        // tests that need determinism drive `Machine` directly.
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            label,
        );
        let (events, _) = watch::channel(Transition {
            from: HealthState::Online,
            to: HealthState::Online,
            reason: "opened".into(),
            at: now,
        });
        for o in &observers {
            o.initial(label, HealthState::Online);
        }
        Health {
            label: label.to_string(),
            state: AtomicU8::new(HealthState::Online as u8),
            machine: Mutex::new(Machine::new(cfg, now, seed)),
            events,
            observers,
        }
    }

    /// The disk's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Current state.
    pub fn state(&self) -> HealthState {
        // Only `publish` stores, and only valid states.
        HealthState::from_u8(self.state.load(Ordering::Acquire)).unwrap_or(HealthState::Faulty)
    }

    /// Subscribe to state changes (the latest one is always visible).
    pub fn subscribe(&self) -> watch::Receiver<Transition> {
        self.events.subscribe()
    }

    /// Fail fast unless the disk admits callers.
    pub fn admit(&self) -> Result<(), DiskError> {
        if self.state().admits() {
            return Ok(());
        }
        Err(DiskError::Faulty {
            reason: self.lock().reason().to_string(),
        })
    }

    /// Feed the outcome of a caller's operation: a device fault counts
    /// against the disk, anything else (success, or an answered error such
    /// as "not found") is progress.
    pub fn on_outcome<T>(&self, outcome: &Result<T, DiskError>) {
        match outcome {
            Err(e) if e.is_device_fault() => self.on(Event::Fault {
                reason: e.to_string(),
            }),
            _ => self.on(Event::Progress),
        }
    }

    /// Feed the outcome of an active probe.
    pub fn on_probe(&self, outcome: &Result<(), DiskError>) {
        match outcome {
            Ok(()) => self.on(Event::ProbeOk),
            Err(e) => self.on(Event::ProbeFailed {
                reason: e.to_string(),
            }),
        }
    }

    /// Take the disk out now.
    pub fn trip(&self, reason: &str) {
        self.on(Event::Trip {
            reason: reason.to_string(),
        })
    }

    /// Keep the disk out while a condition lasts (see [`Event::Hold`]).
    pub fn hold(&self, reason: &str) {
        self.on(Event::Hold {
            reason: reason.to_string(),
        })
    }

    /// Feed one event.
    pub fn on(&self, event: Event) {
        let mut m = self.lock();
        let ts = m.on(event, Instant::now());
        self.publish(&ts);
    }

    /// Whether the monitor should probe now (moves a Faulty disk whose
    /// backoff elapsed to Probing).
    pub fn probe_due(&self) -> bool {
        let mut m = self.lock();
        let (due, t) = m.probe_due(Instant::now());
        if let Some(t) = t {
            self.publish(&[t]);
        }
        due
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        // The machine's methods cannot leave it inconsistent (plain field
        // assignments), so a panic elsewhere does not poison its meaning.
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called with the machine's lock held, so transitions reach the atomic,
    /// the observers and the channel in the order they happened.
    fn publish(&self, ts: &[Transition]) {
        for t in ts {
            self.state.store(t.to as u8, Ordering::Release);
            match t.to {
                HealthState::Faulty | HealthState::Probing => {
                    tracing::warn!(disk = %self.label, from = %t.from, to = %t.to, reason = %t.reason, "disk state change")
                }
                _ => {
                    tracing::info!(disk = %self.label, from = %t.from, to = %t.to, reason = %t.reason, "disk state change")
                }
            }
            for o in &self.observers {
                o.transition(&self.label, t);
            }
            self.events.send_replace(t.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_io_api::OpClass;
    use std::time::Duration;

    #[derive(Debug, Default)]
    struct Log(Mutex<Vec<(HealthState, HealthState)>>);

    impl Observer for Log {
        fn initial(&self, _: &str, _: HealthState) {}
        fn transition(&self, _: &str, t: &Transition) {
            self.0.lock().unwrap().push((t.from, t.to));
        }
    }

    fn cfg() -> HealthConfig {
        HealthConfig {
            faulty_after_misses: 1,
            no_progress_window: Duration::ZERO,
            ..HealthConfig::default()
        }
    }

    #[test]
    fn outcomes_are_classified_and_observers_see_every_step() {
        let log = Arc::new(Log::default());
        let h = Health::new("d", cfg(), vec![log.clone()]);
        let rx = h.subscribe();
        h.on_outcome::<()>(&Err(DiskError::FileNotFound));
        assert_eq!(h.state(), HealthState::Online, "an answer is progress");
        h.on_outcome::<()>(&Err(DiskError::DeadlineExceeded {
            op: OpClass::ReadAll,
            waited: Duration::from_millis(1),
        }));
        assert_eq!(h.state(), HealthState::Faulty);
        use HealthState::*;
        assert_eq!(
            *log.0.lock().unwrap(),
            [(Online, Suspect), (Suspect, Faulty)]
        );
        assert_eq!(rx.borrow().to, Faulty);
        let e = h.admit().unwrap_err();
        assert!(matches!(e, DiskError::Faulty { ref reason } if reason.contains("deadline")));
    }

    #[test]
    fn metrics_observer_records_state_and_transitions() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let h = Health::new("disk9", cfg(), vec![Arc::new(crate::MetricsObserver)]);
            h.trip("operator");
        });
        let snap = snapshotter.snapshot().into_vec();
        let gauge = snap
            .iter()
            .find(|(k, ..)| k.key().name() == crate::STATE)
            .map(|(.., v)| v);
        assert_eq!(gauge, Some(&DebugValue::Gauge(2.0.into())));
        let transitions = snap
            .iter()
            .filter(|(k, ..)| k.key().name() == crate::TRANSITIONS)
            .count();
        assert_eq!(transitions, 1);
    }
}
