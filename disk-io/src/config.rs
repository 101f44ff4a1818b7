//! Every limit and default in one place. Nothing in the crate hides a
//! timeout, a queue length or a pool size in a literal elsewhere.

use std::time::Duration;

use crate::deadline::Deadline;
use crate::op::OpClass;

/// Configuration of one local disk.
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// The io_uring driver's limits.
    pub driver: DriverConfig,
    /// Default budget per operation class.
    pub timeouts: OpTimeouts,
    /// The health machine.
    pub health: HealthConfig,
    /// Size limits on what one call may do.
    pub limits: Limits,
    /// How long `get_disk_id` may answer from its cache before checking the
    /// format file again (the check itself runs under the caller's deadline).
    pub disk_id_cache_ttl: Duration,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            driver: DriverConfig::default(),
            timeouts: OpTimeouts::default(),
            health: HealthConfig::default(),
            limits: Limits::default(),
            disk_id_cache_ttl: Duration::from_secs(1),
        }
    }
}

impl DiskConfig {
    /// A deadline for `op` using this configuration's default budget.
    pub fn deadline(&self, op: OpClass) -> Deadline {
        Deadline::after(self.timeouts.for_class(op))
    }

    /// Check the configuration for values that cannot work, so that a bad
    /// config fails at `open` with a clear message rather than later.
    pub fn validate(&self) -> Result<(), crate::error::DiskError> {
        self.check()
            .map_err(|reason| crate::error::DiskError::InvalidArgument { reason })
    }

    fn check(&self) -> Result<(), String> {
        let d = &self.driver;
        if d.max_in_flight == 0 {
            return Err("driver.max_in_flight must be > 0".into());
        }
        if d.max_open_files == 0 {
            return Err("driver.max_open_files must be > 0".into());
        }
        if d.blocking_threads == 0 {
            return Err("driver.blocking_threads must be > 0".into());
        }
        if d.iowq_bounded_workers == 0 || d.iowq_unbounded_workers == 0 {
            return Err("driver.iowq_*_workers must be > 0".into());
        }
        if d.zombie_cap == 0 || d.zombie_cap > d.max_in_flight {
            return Err("driver.zombie_cap must be in 1..=max_in_flight".into());
        }
        let l = &self.limits;
        if l.direct_io_alignment == 0 || !l.direct_io_alignment.is_power_of_two() {
            return Err("limits.direct_io_alignment must be a power of two".into());
        }
        if l.direct_io_chunk == 0 || !l.direct_io_chunk.is_multiple_of(l.direct_io_alignment) {
            return Err(
                "limits.direct_io_chunk must be a non-zero multiple of the alignment".into(),
            );
        }
        if l.max_io_size == 0 || l.max_io_size > u32::MAX as usize {
            return Err("limits.max_io_size must be in 1..=u32::MAX".into());
        }
        let h = &self.health;
        if h.faulty_after_misses == 0 || h.recovery_successes == 0 {
            return Err("health.faulty_after_misses and recovery_successes must be > 0".into());
        }
        if h.backoff_initial.is_zero() || h.backoff_max < h.backoff_initial {
            return Err("health.backoff_initial must be > 0 and <= backoff_max".into());
        }
        if h.tick.is_zero() {
            return Err("health.tick must be > 0".into());
        }
        Ok(())
    }
}

/// Limits of the per-disk io_uring driver and its blocking pool.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Submission queue entries (the completion queue gets twice as many).
    /// Rounded up to a power of two by the kernel.
    pub ring_entries: u32,
    /// Operations in flight at once (io_uring ops and blocking-pool jobs
    /// together). A permit is held until the kernel's completion arrives, so
    /// a hung disk can never hold more than this many operations.
    pub max_in_flight: usize,
    /// Open file handles (shard writers and the files opened inside
    /// composite ops) at once.
    pub max_open_files: usize,
    /// io-wq bounded workers (regular file I/O) for this disk's ring.
    pub iowq_bounded_workers: u32,
    /// io-wq unbounded workers (FIFOs, sockets) for this disk's ring.
    pub iowq_unbounded_workers: u32,
    /// Threads of the blocking pool (for getdents and statfs, which io_uring
    /// has no opcode for).
    pub blocking_threads: usize,
    /// Operations whose caller has gone but whose completion has not come
    /// back. More than this and the disk is Faulty.
    pub zombie_cap: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            ring_entries: 256,
            max_in_flight: 128,
            max_open_files: 256,
            iowq_bounded_workers: 8,
            iowq_unbounded_workers: 4,
            blocking_threads: 2,
            zombie_cap: 32,
        }
    }
}

/// Default budgets per operation class.
#[derive(Clone, Debug)]
pub struct OpTimeouts {
    /// `get_disk_id`, `disk_info`, `open`: the checks quorum and set
    /// initialisation depend on, so short.
    pub disk_state: Duration,
    /// Volume and metadata operations: stat, list, rename, delete,
    /// read_all, write_all, format.
    pub metadata: Duration,
    /// Shard data: create_file, append, finish, read_file_at.
    pub data: Duration,
    /// The health machine's active probe.
    pub probe: Duration,
    /// Background purge of a tree moved to the trash by a recursive delete.
    pub trash_purge: Duration,
}

impl Default for OpTimeouts {
    fn default() -> Self {
        OpTimeouts {
            disk_state: Duration::from_secs(2),
            metadata: Duration::from_secs(5),
            data: Duration::from_secs(10),
            probe: Duration::from_secs(2),
            trash_purge: Duration::from_secs(60),
        }
    }
}

impl OpTimeouts {
    /// The default budget for an operation class.
    pub fn for_class(&self, op: OpClass) -> Duration {
        match op {
            OpClass::Open | OpClass::DiskId | OpClass::DiskInfo => self.disk_state,
            OpClass::CreateFile
            | OpClass::Append
            | OpClass::Finish
            | OpClass::ReadFileAt
            | OpClass::RawRead
            | OpClass::RawWrite => self.data,
            OpClass::Probe => self.probe,
            _ => self.metadata,
        }
    }
}

/// The health machine's thresholds.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    /// Consecutive device-fault outcomes (deadline misses, EIO) with no
    /// success in between before a Suspect disk turns Faulty.
    pub faulty_after_misses: u32,
    /// A Suspect disk turns Faulty only if nothing has succeeded for at least
    /// this long: a busy disk that still completes work is slow, not dead.
    pub no_progress_window: Duration,
    /// How often the monitor task wakes (zombie check, stall check, probes).
    pub tick: Duration,
    /// Active probe period while Online (0 = no periodic probe).
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
        }
    }
}

/// Size limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest file `read_all` returns (it is for small metadata files).
    pub max_read_all: u64,
    /// Largest single read or write handed to the kernel; larger requests
    /// are split. Must fit in `u32` (an SQE's length field).
    pub max_io_size: usize,
    /// Longest `read_file_at` (bounds the buffer a caller can make us allocate).
    pub max_read_len: usize,
    /// Most entries `list_dir` and `list_vols` return.
    pub max_list_entries: usize,
    /// O_DIRECT buffer and offset alignment (the logical block size, or a
    /// multiple of it).
    pub direct_io_alignment: usize,
    /// Size of a shard writer's O_DIRECT staging buffer.
    pub direct_io_chunk: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_read_all: 16 << 20,
            max_io_size: 4 << 20,
            max_read_len: 64 << 20,
            max_list_entries: 100_000,
            direct_io_alignment: 4096,
            direct_io_chunk: 1 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        DiskConfig::default()
            .validate()
            .expect("defaults must validate");
    }

    #[test]
    fn bad_configs_are_rejected() {
        let mut c = DiskConfig::default();
        c.driver.max_in_flight = 0;
        assert!(c.validate().is_err());
        let mut c = DiskConfig::default();
        c.driver.zombie_cap = c.driver.max_in_flight + 1;
        assert!(c.validate().is_err());
        let mut c = DiskConfig::default();
        c.limits.direct_io_alignment = 3000;
        assert!(c.validate().is_err());
        let mut c = DiskConfig::default();
        c.limits.direct_io_chunk = 4097;
        assert!(c.validate().is_err());
    }

    #[test]
    fn every_class_has_a_budget() {
        let t = OpTimeouts::default();
        for op in OpClass::ALL {
            assert!(!t.for_class(op).is_zero(), "{op}");
        }
    }
}
