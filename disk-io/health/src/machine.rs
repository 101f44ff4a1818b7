//! [`Machine`]: the health state machine as a pure function of events and
//! the instants they happen at.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::HealthConfig;
use crate::HealthState;

/// Something that happened to a disk, as the machine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A caller's operation succeeded, or the disk answered with an error
    /// about the request (not found counts): the device makes progress.
    Progress,
    /// A caller's operation failed in a way that implicates the device
    /// (deadline miss, I/O error, device gone).
    Fault {
        /// What happened, for the transition's reason.
        reason: String,
    },
    /// Take the disk out now (an operator draining it, a first sign that
    /// cannot be wrong).
    Trip {
        /// Why.
        reason: String,
    },
    /// A condition that keeps the disk out while it lasts (a stalled
    /// block request, zombies over the cap, a dead peer): takes an admitting
    /// disk out, and pushes the next probe of an out disk back by one
    /// backoff.
    Hold {
        /// Why.
        reason: String,
    },
    /// An active probe succeeded.
    ProbeOk,
    /// An active probe failed.
    ProbeFailed {
        /// Why.
        reason: String,
    },
}

/// A state change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Previous state.
    pub from: HealthState,
    /// New state.
    pub to: HealthState,
    /// Why.
    pub reason: String,
    /// When (on the clock the machine was fed).
    pub at: Instant,
}

/// The health machine of one disk. Pure: every method takes the current
/// instant, jitter comes from a seeded generator, and the transitions it
/// makes are returned, never published.
#[derive(Debug)]
pub struct Machine {
    cfg: HealthConfig,
    state: HealthState,
    consecutive_faults: u32,
    last_success: Instant,
    /// Why the disk is out (shown by fail-fast errors).
    reason: String,
    backoff: Duration,
    next_probe_at: Instant,
    probe_successes: u32,
    last_probe: Instant,
    rng: StdRng,
}

impl Machine {
    /// A new, Online machine at `now`, with jitter drawn from a generator
    /// seeded with `seed`.
    pub fn new(cfg: HealthConfig, now: Instant, seed: u64) -> Machine {
        Machine {
            backoff: cfg.backoff_initial,
            cfg,
            state: HealthState::Online,
            consecutive_faults: 0,
            last_success: now,
            reason: String::new(),
            next_probe_at: now,
            probe_successes: 0,
            last_probe: now,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Why the disk is out (empty while it admits callers).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The configuration in force.
    pub fn config(&self) -> &HealthConfig {
        &self.cfg
    }

    /// When a Faulty disk will next be probed.
    pub fn next_probe_at(&self) -> Instant {
        self.next_probe_at
    }

    /// Feed one event; returns the transitions it caused, in order (a fault
    /// on an Online disk can go Online → Suspect → Faulty at once).
    pub fn on(&mut self, event: Event, now: Instant) -> Vec<Transition> {
        let mut out = Vec::new();
        match event {
            Event::Progress => self.progress(now, &mut out),
            Event::Fault { reason } => self.fault(&reason, now, &mut out),
            Event::Trip { reason } => self.trip(&reason, now, &mut out),
            Event::Hold { reason } => match self.state {
                HealthState::Online | HealthState::Suspect | HealthState::Probing => {
                    self.trip(&reason, now, &mut out)
                }
                HealthState::Faulty => {
                    self.reason = reason;
                    self.next_probe_at = self.next_probe_at.max(now + self.backoff);
                }
            },
            Event::ProbeOk => {
                self.last_probe = now;
                match self.state {
                    HealthState::Probing => {
                        self.probe_successes += 1;
                        if self.probe_successes >= self.cfg.recovery_successes {
                            self.consecutive_faults = 0;
                            self.last_success = now;
                            self.backoff = self.cfg.backoff_initial;
                            let reason =
                                format!("{} consecutive probes succeeded", self.probe_successes);
                            self.set(HealthState::Online, &reason, now, &mut out);
                        }
                    }
                    HealthState::Online | HealthState::Suspect => self.progress(now, &mut out),
                    // A probe that started before the disk was taken out:
                    // its success says nothing about the new fault.
                    HealthState::Faulty => {}
                }
            }
            Event::ProbeFailed { reason } => {
                self.last_probe = now;
                match self.state {
                    HealthState::Probing => {
                        self.fail_probe(&format!("probe failed: {reason}"), now, &mut out)
                    }
                    HealthState::Online | HealthState::Suspect => {
                        self.fault(&format!("probe failed: {reason}"), now, &mut out)
                    }
                    HealthState::Faulty => {}
                }
            }
        }
        debug_assert!(
            out.windows(2).all(|w| w[0].to == w[1].from),
            "transitions chain"
        );
        out
    }

    /// Whether an active probe should run now. A Faulty disk whose backoff
    /// has elapsed moves to Probing (the returned transition).
    pub fn probe_due(&mut self, now: Instant) -> (bool, Option<Transition>) {
        match self.state {
            HealthState::Online | HealthState::Suspect => (
                !self.cfg.probe_interval.is_zero()
                    && now.saturating_duration_since(self.last_probe) >= self.cfg.probe_interval,
                None,
            ),
            HealthState::Faulty if now >= self.next_probe_at => {
                self.probe_successes = 0;
                let mut out = Vec::new();
                self.set(
                    HealthState::Probing,
                    "backoff elapsed; probing",
                    now,
                    &mut out,
                );
                (true, out.pop())
            }
            HealthState::Faulty => (false, None),
            HealthState::Probing => (true, None),
        }
    }

    fn progress(&mut self, now: Instant, out: &mut Vec<Transition>) {
        self.consecutive_faults = 0;
        self.last_success = now;
        if self.state == HealthState::Suspect {
            self.set(HealthState::Online, "operation succeeded", now, out);
        }
    }

    fn fault(&mut self, reason: &str, now: Instant, out: &mut Vec<Transition>) {
        self.consecutive_faults = self.consecutive_faults.saturating_add(1);
        match self.state {
            HealthState::Online => {
                self.set(HealthState::Suspect, reason, now, out);
                self.maybe_trip(reason, now, out);
            }
            HealthState::Suspect => self.maybe_trip(reason, now, out),
            // Out already: callers fail fast, so only probes report, and
            // they use the probe events.
            HealthState::Faulty | HealthState::Probing => {}
        }
    }

    fn maybe_trip(&mut self, last: &str, now: Instant, out: &mut Vec<Transition>) {
        let quiet = now.saturating_duration_since(self.last_success);
        if self.consecutive_faults >= self.cfg.faulty_after_misses
            && quiet >= self.cfg.no_progress_window
        {
            let reason = format!(
                "{} consecutive faults, nothing succeeded for {quiet:?}; last: {last}",
                self.consecutive_faults
            );
            self.trip(&reason, now, out);
        }
    }

    fn trip(&mut self, reason: &str, now: Instant, out: &mut Vec<Transition>) {
        match self.state {
            HealthState::Faulty => self.reason = reason.to_string(),
            // A new fault while probing: back off again.
            HealthState::Probing => self.fail_probe(reason, now, out),
            HealthState::Online | HealthState::Suspect => {
                self.backoff = self.cfg.backoff_initial;
                self.next_probe_at = now + self.jittered(self.backoff);
                self.probe_successes = 0;
                self.set(HealthState::Faulty, reason, now, out);
            }
        }
    }

    fn fail_probe(&mut self, reason: &str, now: Instant, out: &mut Vec<Transition>) {
        self.probe_successes = 0;
        self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
        self.next_probe_at = now + self.jittered(self.backoff);
        self.set(HealthState::Faulty, reason, now, out);
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        let j = self.cfg.jitter.clamp(0.0, 1.0);
        if j == 0.0 {
            return d;
        }
        d + d.mul_f64(self.rng.random_range(0.0..j))
    }

    fn set(&mut self, to: HealthState, reason: &str, now: Instant, out: &mut Vec<Transition>) {
        let from = self.state;
        if from == to {
            if !to.admits() {
                self.reason = reason.to_string();
            }
            return;
        }
        self.state = to;
        self.reason = if to.admits() {
            String::new()
        } else {
            reason.to_string()
        };
        out.push(Transition {
            from,
            to,
            reason: reason.to_string(),
            at: now,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            faulty_after_misses: 3,
            no_progress_window: Duration::ZERO,
            tick: Duration::from_millis(10),
            probe_interval: Duration::ZERO,
            recovery_successes: 2,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(400),
            jitter: 0.0,
            min_fault_budget: Duration::ZERO,
        }
    }

    fn fault() -> Event {
        Event::Fault {
            reason: "read_all missed its deadline".into(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn states(ts: &[Transition]) -> Vec<(HealthState, HealthState)> {
        ts.iter().map(|t| (t.from, t.to)).collect()
    }

    use HealthState::*;

    #[test]
    fn faults_trip_only_after_threshold_and_progress_resets() {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg(), t0, 1);
        assert_eq!(states(&m.on(fault(), t0)), [(Online, Suspect)]);
        assert!(m.on(fault(), t0).is_empty());
        assert_eq!(states(&m.on(Event::Progress, t0)), [(Suspect, Online)]);
        m.on(fault(), t0);
        m.on(fault(), t0);
        assert_eq!(m.state(), Suspect);
        let ts = m.on(fault(), t0);
        assert_eq!(states(&ts), [(Suspect, Faulty)]);
        assert!(ts[0].reason.contains("3 consecutive faults"));
        assert!(!m.state().admits());
        assert!(m.reason().contains("missed its deadline"));
    }

    #[test]
    fn one_fault_can_go_online_to_faulty_in_one_step() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.faulty_after_misses = 1;
        let mut m = Machine::new(c, t0, 1);
        assert_eq!(
            states(&m.on(fault(), t0)),
            [(Online, Suspect), (Suspect, Faulty)]
        );
    }

    #[test]
    fn slow_but_progressing_disk_is_not_tripped() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.no_progress_window = Duration::from_secs(1);
        let mut m = Machine::new(c, t0, 1);
        // Ten faults within the window after the last success: Suspect only.
        for i in 0..10 {
            m.on(fault(), t0 + ms(i * 50));
        }
        assert_eq!(m.state(), Suspect);
        // The same faults once nothing has succeeded for the window: out.
        let ts = m.on(fault(), t0 + ms(1000));
        assert_eq!(states(&ts), [(Suspect, Faulty)]);
    }

    #[test]
    fn recovery_needs_consecutive_probe_successes_and_backs_off() {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg(), t0, 1);
        m.on(
            Event::Trip {
                reason: "test".into(),
            },
            t0,
        );
        assert_eq!(m.state(), Faulty);
        assert_eq!(m.probe_due(t0 + ms(99)), (false, None));
        let (due, t) = m.probe_due(t0 + ms(100));
        assert!(due);
        assert_eq!(t.map(|t| (t.from, t.to)), Some((Faulty, Probing)));
        assert!(!m.state().admits(), "probing disks still fail fast");
        assert!(m.on(Event::ProbeOk, t0 + ms(101)).is_empty());
        let ts = m.on(
            Event::ProbeFailed {
                reason: "EIO".into(),
            },
            t0 + ms(102),
        );
        assert_eq!(states(&ts), [(Probing, Faulty)]);
        // Backoff doubled to 200 ms from the failed probe.
        assert_eq!(m.next_probe_at(), t0 + ms(302));
        assert_eq!(m.probe_due(t0 + ms(301)), (false, None));
        assert!(m.probe_due(t0 + ms(302)).0);
        m.on(Event::ProbeOk, t0 + ms(303));
        let ts = m.on(Event::ProbeOk, t0 + ms(304));
        assert_eq!(states(&ts), [(Probing, Online)]);
        assert_eq!(m.reason(), "");
    }

    #[test]
    fn backoff_is_capped() {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg(), t0, 1);
        m.on(Event::Trip { reason: "x".into() }, t0);
        let mut now = t0;
        for _ in 0..10 {
            now = m.next_probe_at();
            assert!(m.probe_due(now).0);
            m.on(Event::ProbeFailed { reason: "x".into() }, now);
        }
        assert_eq!(m.next_probe_at() - now, ms(400));
    }

    #[test]
    fn hold_takes_out_and_pushes_the_next_probe_back() {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg(), t0, 1);
        let ts = m.on(
            Event::Hold {
                reason: "stall on loop3".into(),
            },
            t0,
        );
        assert_eq!(states(&ts), [(Online, Faulty)]);
        let first = m.next_probe_at();
        // Still stalled 90 ms later: the probe moves to 90 + 100 ms.
        m.on(
            Event::Hold {
                reason: "stall on loop3".into(),
            },
            t0 + ms(90),
        );
        assert_eq!(m.next_probe_at(), t0 + ms(190));
        assert!(m.next_probe_at() > first);
        // A hold while probing is a failed probe.
        assert!(m.probe_due(t0 + ms(190)).0);
        let ts = m.on(Event::Hold { reason: "x".into() }, t0 + ms(191));
        assert_eq!(states(&ts), [(Probing, Faulty)]);
    }

    #[test]
    fn periodic_probe_runs_every_interval_while_online() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.probe_interval = ms(1000);
        let mut m = Machine::new(c, t0, 1);
        assert!(!m.probe_due(t0 + ms(999)).0);
        assert!(m.probe_due(t0 + ms(1000)).0);
        m.on(Event::ProbeOk, t0 + ms(1000));
        assert!(!m.probe_due(t0 + ms(1999)).0);
        // A failed periodic probe is a fault like any other.
        let ts = m.on(
            Event::ProbeFailed {
                reason: "EIO".into(),
            },
            t0 + ms(2000),
        );
        assert_eq!(states(&ts), [(Online, Suspect)]);
    }

    #[test]
    fn jitter_is_deterministic_per_seed_and_bounded() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.jitter = 0.5;
        let trip_at = |seed| {
            let mut m = Machine::new(c.clone(), t0, seed);
            m.on(Event::Trip { reason: "x".into() }, t0);
            m.next_probe_at() - t0
        };
        assert_eq!(trip_at(7), trip_at(7));
        for seed in 0..50 {
            let d = trip_at(seed);
            assert!(d >= ms(100) && d < ms(150), "{d:?}");
        }
        assert!(
            (0..50)
                .map(trip_at)
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1
        );
    }

    #[test]
    fn late_probe_success_does_not_bring_a_faulty_disk_back() {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg(), t0, 1);
        m.on(Event::Trip { reason: "x".into() }, t0);
        assert!(m.on(Event::ProbeOk, t0 + ms(1)).is_empty());
        assert_eq!(m.state(), Faulty);
    }
}
