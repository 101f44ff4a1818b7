//! [`HealthConfig`]: every threshold of the health machine.

use std::time::Duration;

/// The health machine's thresholds.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    /// Consecutive device-fault outcomes (deadline misses, EIO, a gone
    /// device) with no success in between before a Suspect disk turns Faulty.
    pub faulty_after_misses: u32,
    /// A Suspect disk turns Faulty only if nothing has succeeded for at least
    /// this long: a busy disk that still completes work is slow, not dead.
    pub no_progress_window: Duration,
    /// How often the disk's monitor wakes (zombie check, stall check, probes).
    pub tick: Duration,
    /// Active probe period while Online (zero: no periodic probe).
    pub probe_interval: Duration,
    /// Consecutive successful probes that bring a Probing disk back Online.
    pub recovery_successes: u32,
    /// First wait before probing a Faulty disk.
    pub backoff_initial: Duration,
    /// Longest wait between probing attempts.
    pub backoff_max: Duration,
    /// Random extra wait, as a fraction of the backoff (0.0..=1.0), so that
    /// many disks do not probe in lock step.
    pub jitter: f64,
    /// A deadline miss counts against the disk only if the call had at
    /// least this much budget when it started: a caller that arrives with
    /// its deadline (nearly) spent says nothing about the device.
    pub min_fault_budget: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            faulty_after_misses: 3,
            no_progress_window: Duration::from_secs(1),
            tick: Duration::from_millis(50),
            probe_interval: Duration::from_secs(15),
            recovery_successes: 3,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            jitter: 0.2,
            min_fault_budget: Duration::from_millis(10),
        }
    }
}

impl HealthConfig {
    /// Why this configuration cannot work, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.faulty_after_misses == 0 || self.recovery_successes == 0 {
            return Err("health.faulty_after_misses and recovery_successes must be > 0".into());
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return Err("health.backoff_initial must be > 0 and <= backoff_max".into());
        }
        if self.tick.is_zero() {
            return Err("health.tick must be > 0".into());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err("health.jitter must be in 0.0..=1.0".into());
        }
        Ok(())
    }
}
