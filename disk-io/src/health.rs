//! The per-disk health machine.
//!
//! ```text
//!   Online ──fault──▶ Suspect ──N faults, no progress──▶ Faulty ◀──probe fails──┐
//!     ▲  ◀──success──────┘                                │ backoff+jitter      │
//!     │                   zombies > cap, stall signal ───▶│                     │
//!     └──────────── M consecutive probe successes ◀── Probing ───────────────────┘
//! ```
//!
//! Faulty and Probing disks fail every caller fast (a typed
//! [`DiskError::Faulty`], in microseconds). Only the monitor's active probe
//! reaches the device then.
//!
//! A fault (deadline miss, EIO) alone only makes a disk Suspect. It turns
//! Faulty after `faulty_after_misses` consecutive faults *and* nothing having
//! succeeded for `no_progress_window`: a busy disk that is slow on one op but
//! still completes others is not taken out (the failure RustFS issues #2686
//! and #2601 describe).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::HealthConfig;
use crate::error::DiskError;

/// Health of one disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum HealthState {
    /// Serving.
    Online = 0,
    /// Serving, but recent operations failed or missed their deadline.
    Suspect = 1,
    /// Out: calls fail fast until probes succeed.
    Faulty = 2,
    /// Out, and being probed.
    Probing = 3,
}

impl HealthState {
    fn from_u8(v: u8) -> HealthState {
        match v {
            0 => HealthState::Online,
            1 => HealthState::Suspect,
            2 => HealthState::Faulty,
            _ => HealthState::Probing,
        }
    }

    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Online => "online",
            HealthState::Suspect => "suspect",
            HealthState::Faulty => "faulty",
            HealthState::Probing => "probing",
        }
    }

    /// Whether callers are let through.
    pub fn admits(self) -> bool {
        matches!(self, HealthState::Online | HealthState::Suspect)
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change, as published to subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Previous state.
    pub from: HealthState,
    /// New state.
    pub to: HealthState,
    /// Why.
    pub reason: String,
}

struct Inner {
    consecutive_faults: u32,
    last_success: Instant,
    reason: String,
    backoff: Duration,
    next_probe_at: Instant,
    probe_successes: u32,
    last_probe: Instant,
}

/// The health machine of one disk. Cheap to query (`state` is one atomic
/// load); transitions take a short mutex.
pub struct Health {
    state: AtomicU8,
    inner: Mutex<Inner>,
    cfg: HealthConfig,
    label: String,
    events: watch::Sender<Transition>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("state", &self.state())
            .finish()
    }
}

impl Health {
    /// A new, Online machine.
    pub fn new(label: &str, cfg: HealthConfig) -> Health {
        let now = Instant::now();
        let (events, _) = watch::channel(Transition {
            from: HealthState::Online,
            to: HealthState::Online,
            reason: "opened".into(),
        });
        crate::metrics::set_state(label, HealthState::Online);
        Health {
            state: AtomicU8::new(HealthState::Online as u8),
            inner: Mutex::new(Inner {
                consecutive_faults: 0,
                last_success: now,
                reason: String::new(),
                backoff: cfg.backoff_initial,
                next_probe_at: now,
                probe_successes: 0,
                last_probe: now,
            }),
            cfg,
            label: label.to_string(),
            events,
        }
    }

    /// Current state.
    pub fn state(&self) -> HealthState {
        HealthState::from_u8(self.state.load(Ordering::Acquire))
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
            reason: self.lock().reason.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, inner: &mut Inner, to: HealthState, reason: &str) {
        let from = self.state();
        if from == to {
            return;
        }
        self.state.store(to as u8, Ordering::Release);
        if matches!(to, HealthState::Faulty) {
            inner.reason = reason.to_string();
        }
        match to {
            HealthState::Faulty | HealthState::Probing => {
                tracing::warn!(disk = %self.label, %from, %to, reason, "disk state change")
            }
            _ => tracing::info!(disk = %self.label, %from, %to, reason, "disk state change"),
        }
        crate::metrics::state_transition(&self.label, from, to);
        self.events.send_replace(Transition {
            from,
            to,
            reason: reason.to_string(),
        });
    }

    /// A caller's operation succeeded.
    pub fn on_success(&self) {
        let mut g = self.lock();
        g.consecutive_faults = 0;
        g.last_success = Instant::now();
        if self.state() == HealthState::Suspect {
            self.set(&mut g, HealthState::Online, "operation succeeded");
        }
    }

    /// A caller's operation failed in a way that implicates the device.
    pub fn on_fault(&self, err: &DiskError) {
        let mut g = self.lock();
        g.consecutive_faults = g.consecutive_faults.saturating_add(1);
        match self.state() {
            HealthState::Online => {
                let reason = format!("{err}");
                self.set(&mut g, HealthState::Suspect, &reason);
                self.maybe_trip(&mut g, err);
            }
            HealthState::Suspect => self.maybe_trip(&mut g, err),
            HealthState::Faulty | HealthState::Probing => {}
        }
    }

    fn maybe_trip(&self, g: &mut Inner, err: &DiskError) {
        if g.consecutive_faults >= self.cfg.faulty_after_misses
            && g.last_success.elapsed() >= self.cfg.no_progress_window
        {
            let reason = format!(
                "{} consecutive faults, nothing succeeded for {:?}; last: {err}",
                g.consecutive_faults,
                g.last_success.elapsed()
            );
            self.trip_locked(g, &reason);
        }
    }

    /// Take the disk out now (zombie cap, stall signal, explicit).
    pub fn trip(&self, reason: &str) {
        let mut g = self.lock();
        self.trip_locked(&mut g, reason);
    }

    fn trip_locked(&self, g: &mut Inner, reason: &str) {
        match self.state() {
            HealthState::Faulty => {
                g.reason = reason.to_string();
            }
            HealthState::Probing => {
                // A new fault while probing: back off again.
                self.fail_probe_locked(g, reason);
            }
            HealthState::Online | HealthState::Suspect => {
                g.backoff = self.cfg.backoff_initial;
                g.next_probe_at = Instant::now() + self.jittered(g.backoff);
                g.probe_successes = 0;
                self.set(g, HealthState::Faulty, reason);
            }
        }
    }

    fn jittered(&self, d: Duration) -> Duration {
        let j = self.cfg.jitter.clamp(0.0, 1.0);
        if j == 0.0 {
            return d;
        }
        d + d.mul_f64(rand::rng().random_range(0.0..j))
    }

    /// Whether the monitor should run an active probe now, and move a
    /// Faulty disk to Probing if so.
    pub(crate) fn probe_due(&self) -> bool {
        let mut g = self.lock();
        let now = Instant::now();
        match self.state() {
            HealthState::Online | HealthState::Suspect => {
                !self.cfg.probe_interval.is_zero()
                    && now.duration_since(g.last_probe) >= self.cfg.probe_interval
            }
            HealthState::Faulty => {
                if now >= g.next_probe_at {
                    g.probe_successes = 0;
                    self.set(&mut g, HealthState::Probing, "backoff elapsed; probing");
                    true
                } else {
                    false
                }
            }
            HealthState::Probing => true,
        }
    }

    /// Outcome of an active probe.
    pub(crate) fn on_probe(&self, result: Result<(), DiskError>) {
        let mut g = self.lock();
        g.last_probe = Instant::now();
        match (self.state(), result) {
            (HealthState::Probing, Ok(())) => {
                g.probe_successes += 1;
                if g.probe_successes >= self.cfg.recovery_successes {
                    g.consecutive_faults = 0;
                    g.last_success = Instant::now();
                    g.backoff = self.cfg.backoff_initial;
                    let reason = format!("{} consecutive probes succeeded", g.probe_successes);
                    self.set(&mut g, HealthState::Online, &reason);
                }
            }
            (HealthState::Probing, Err(e)) => {
                let reason = format!("probe failed: {e}");
                self.fail_probe_locked(&mut g, &reason);
            }
            (HealthState::Online | HealthState::Suspect, Ok(())) => {
                drop(g);
                self.on_success();
            }
            (HealthState::Online | HealthState::Suspect, Err(e)) => {
                drop(g);
                self.on_fault(&e);
            }
            (HealthState::Faulty, _) => {}
        }
    }

    fn fail_probe_locked(&self, g: &mut Inner, reason: &str) {
        g.probe_successes = 0;
        g.backoff = (g.backoff * 2).min(self.cfg.backoff_max);
        g.next_probe_at = Instant::now() + self.jittered(g.backoff);
        self.set(g, HealthState::Faulty, reason);
    }

    /// Keep a Faulty disk out (a stall is still present): push the next
    /// probe back by one backoff.
    pub(crate) fn hold(&self, reason: &str) {
        let mut g = self.lock();
        match self.state() {
            HealthState::Online | HealthState::Suspect | HealthState::Probing => {
                self.trip_locked(&mut g, reason)
            }
            HealthState::Faulty => {
                g.reason = reason.to_string();
                g.next_probe_at = g.next_probe_at.max(Instant::now() + g.backoff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::OpClass;

    fn cfg() -> HealthConfig {
        HealthConfig {
            faulty_after_misses: 3,
            no_progress_window: Duration::ZERO,
            tick: Duration::from_millis(10),
            probe_interval: Duration::ZERO,
            recovery_successes: 2,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
            jitter: 0.0,
        }
    }

    fn miss() -> DiskError {
        DiskError::DeadlineExceeded {
            op: OpClass::ReadAll,
            waited: Duration::from_millis(1),
        }
    }

    #[test]
    fn faults_trip_only_after_threshold_and_success_resets() {
        let h = Health::new("t", cfg());
        h.on_fault(&miss());
        assert_eq!(h.state(), HealthState::Suspect);
        h.on_fault(&miss());
        h.on_success();
        assert_eq!(h.state(), HealthState::Online, "a success clears suspicion");
        h.on_fault(&miss());
        h.on_fault(&miss());
        assert!(h.admit().is_ok());
        h.on_fault(&miss());
        assert_eq!(h.state(), HealthState::Faulty);
        assert_eq!(h.admit().map_err(|e| e.kind()), Err("faulty"));
    }

    #[test]
    fn slow_but_progressing_disk_is_not_tripped() {
        let mut c = cfg();
        c.no_progress_window = Duration::from_secs(3600);
        let h = Health::new("t", c);
        for _ in 0..10 {
            h.on_fault(&miss());
        }
        assert_eq!(
            h.state(),
            HealthState::Suspect,
            "faults while other work recently succeeded must not take the disk out"
        );
    }

    #[test]
    fn recovery_needs_consecutive_probe_successes_and_backs_off() {
        let h = Health::new("t", cfg());
        h.trip("test");
        assert_eq!(h.state(), HealthState::Faulty);
        std::thread::sleep(Duration::from_millis(2));
        assert!(h.probe_due());
        assert_eq!(h.state(), HealthState::Probing);
        assert!(h.admit().is_err(), "probing disks still fail fast");
        h.on_probe(Ok(()));
        assert_eq!(h.state(), HealthState::Probing);
        h.on_probe(Err(miss()));
        assert_eq!(
            h.state(),
            HealthState::Faulty,
            "a failed probe resets recovery"
        );
        assert!(!h.probe_due(), "backoff doubled, not yet due");
        std::thread::sleep(Duration::from_millis(5));
        assert!(h.probe_due());
        h.on_probe(Ok(()));
        h.on_probe(Ok(()));
        assert_eq!(h.state(), HealthState::Online);
    }

    #[test]
    fn subscribers_see_transitions() {
        let h = Health::new("t", cfg());
        let rx = h.subscribe();
        h.trip("stall on loop0");
        let t = rx.borrow().clone();
        assert_eq!((t.from, t.to), (HealthState::Online, HealthState::Faulty));
        assert!(t.reason.contains("loop0"));
    }
}
