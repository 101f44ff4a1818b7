//! The per-peer circuit breaker: Closed → Open (on heartbeat loss or
//! repeated unavailability) → HalfOpen (after `open_for` + jitter, one probe
//! let through) → Closed (the probe or a heartbeat succeeded) or Open again.
//!
//! A pure state machine over an injected clock, so it is tested without
//! sleeps; [`crate::client::Peer`] wraps it in a mutex with `Instant::now()`.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::BreakerConfig;

/// The breaker's state as callers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// One probe call is let through; the rest fail fast.
    HalfOpen,
}

impl BreakerState {
    /// Stable lowercase name (metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// The breaker of one peer.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
    failures: u32,
    misses: u32,
    open_until: Instant,
    last_answer: Option<Instant>,
    probe_out: bool,
    opened: u64,
    rng: StdRng,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig, now: Instant, seed: u64) -> Breaker {
        Breaker {
            cfg,
            state: BreakerState::Closed,
            failures: 0,
            misses: 0,
            open_until: now,
            last_answer: None,
            probe_out: false,
            opened: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Current state (an Open breaker whose time is up reads HalfOpen only
    /// once something asks to go through).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// How many times the breaker has opened.
    pub fn times_opened(&self) -> u64 {
        self.opened
    }

    fn open(&mut self, now: Instant) {
        if self.state != BreakerState::Open {
            self.opened += 1;
        }
        let jitter = self
            .cfg
            .open_for
            .mul_f64(self.rng.random_range(0.0..=self.cfg.jitter));
        self.state = BreakerState::Open;
        self.open_until = now + self.cfg.open_for + jitter;
        self.probe_out = false;
        self.failures = 0;
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.failures = 0;
        self.misses = 0;
        self.probe_out = false;
    }

    /// May a call go through now? `false`: fail fast.
    pub fn admit(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open if now >= self.open_until => {
                self.state = BreakerState::HalfOpen;
                self.probe_out = true;
                true
            }
            BreakerState::Open => false,
            BreakerState::HalfOpen if !self.probe_out => {
                self.probe_out = true;
                true
            }
            BreakerState::HalfOpen => false,
        }
    }

    /// An admitted call was not sent after all: a half-open probe slot is
    /// free again.
    pub fn release(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.probe_out = false;
        }
    }

    /// The outcome of an admitted call: `peer_failed` when the peer did not
    /// answer (unreachable, no answer by the deadline); an answered error
    /// is a success here.
    pub fn on_call(&mut self, peer_failed: bool, now: Instant) {
        if !peer_failed {
            self.last_answer = Some(now);
        }
        match (self.state, peer_failed) {
            (BreakerState::Closed, false) => self.failures = 0,
            (BreakerState::Closed, true) => {
                self.failures += 1;
                if self.failures >= self.cfg.failure_threshold {
                    self.open(now);
                }
            }
            (BreakerState::HalfOpen, false) => self.close(),
            (BreakerState::HalfOpen, true) => self.open(now),
            // A call admitted before the breaker opened, answering late.
            (BreakerState::Open, _) => {}
        }
    }

    /// A heartbeat answered (`true`) or was missed (`false`).
    pub fn on_heartbeat(&mut self, ok: bool, now: Instant) {
        if ok {
            self.misses = 0;
            match self.state {
                BreakerState::Closed => {}
                // The peer answers again: once the open time is up the
                // heartbeat is the half-open probe, and it succeeded.
                BreakerState::Open if now < self.open_until => {}
                BreakerState::Open | BreakerState::HalfOpen => {
                    self.state = BreakerState::HalfOpen;
                    self.close();
                }
            }
            return;
        }
        let progressing = self
            .last_answer
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.progress_window);
        if progressing && self.state == BreakerState::Closed {
            // The peer answers data calls: it is alive, only busy.
            return;
        }
        self.misses += 1;
        match self.state {
            BreakerState::Closed if self.misses >= self.cfg.heartbeat_misses => self.open(now),
            BreakerState::HalfOpen => self.open(now),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            heartbeat_misses: 2,
            open_for: Duration::from_millis(100),
            jitter: 0.5,
            progress_window: Duration::from_millis(500),
        }
    }

    #[test]
    fn repeated_unavailability_opens_then_half_open_probe_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0, 1);
        for _ in 0..2 {
            assert!(b.admit(t0));
            b.on_call(true, t0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_call(false, t0);
        for _ in 0..2 {
            b.on_call(true, t0);
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        b.on_call(true, t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.admit(t0 + Duration::from_millis(99)));
        let later = t0 + Duration::from_millis(151);
        assert!(b.admit(later), "half-open lets one probe through");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.admit(later), "only one");
        b.release();
        assert!(b.admit(later), "a released probe slot is free again");
        b.on_call(false, later);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn failed_probe_reopens_with_jitter_inside_bounds() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0, 7);
        b.on_heartbeat(false, t0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_heartbeat(false, t0);
        assert_eq!(b.state(), BreakerState::Open);
        let t1 = t0 + Duration::from_millis(150);
        assert!(b.admit(t1));
        b.on_call(true, t1);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.admit(t1 + Duration::from_millis(99)));
        assert!(b.admit(t1 + Duration::from_millis(150)));
    }

    #[test]
    fn heartbeat_back_closes_only_after_the_open_time() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0, 3);
        b.on_heartbeat(false, t0);
        b.on_heartbeat(false, t0);
        b.on_heartbeat(true, t0 + Duration::from_millis(10));
        assert_eq!(b.state(), BreakerState::Open);
        b.on_heartbeat(true, t0 + Duration::from_millis(151));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn missed_heartbeats_do_not_count_while_data_calls_are_answered() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0, 5);
        b.on_call(false, t0);
        for ms in [100, 200, 300, 400] {
            b.on_heartbeat(false, t0 + Duration::from_millis(ms));
        }
        assert_eq!(b.state(), BreakerState::Closed, "busy, not dead");
        // Answers stop: the misses count again.
        b.on_heartbeat(false, t0 + Duration::from_millis(600));
        b.on_heartbeat(false, t0 + Duration::from_millis(700));
        assert_eq!(b.state(), BreakerState::Open);
    }
}
