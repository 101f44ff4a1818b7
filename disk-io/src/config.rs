//! [`DiskConfig`]: every limit and default of a local disk in one place.
//! Nothing in the crate hides a timeout, a queue length or a pool size in a
//! literal elsewhere.

use std::time::Duration;

use disk_io_api::{Deadline, DiskError, OpClass, OpTimeouts};
use disk_io_driver::DriverConfig;
use disk_io_health::HealthConfig;

/// Configuration of one local disk.
#[derive(Clone, Debug, PartialEq)]
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
        self.timeouts.deadline(op)
    }

    /// Check the configuration for values that cannot work, so that a bad
    /// config fails at `open` with a clear message rather than later.
    pub fn validate(&self) -> Result<(), DiskError> {
        self.driver
            .check()
            .and_then(|()| self.timeouts.check())
            .and_then(|()| self.health.check())
            .and_then(|()| self.limits.check())
            .map_err(|reason| DiskError::InvalidArgument { reason })
    }
}

/// Size limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest file `read_all` returns (it is for small metadata files).
    pub max_read_all: u64,
    /// Largest `write_all` (the same kind of file; larger data goes through
    /// a shard writer).
    pub max_write_all: usize,
    /// Largest single read or write handed to the kernel; larger requests
    /// are split. Must fit in `u32` (an SQE's length field).
    pub max_io_size: usize,
    /// Longest `read_file_at` (bounds the buffer a caller can make us allocate).
    pub max_read_len: usize,
    /// Most entries `list_dir` and `list_vols` return, and most trash
    /// entries one purge removes.
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
            max_write_all: 16 << 20,
            max_io_size: 4 << 20,
            max_read_len: 64 << 20,
            max_list_entries: 100_000,
            direct_io_alignment: 4096,
            direct_io_chunk: 1 << 20,
        }
    }
}

impl Limits {
    fn check(&self) -> Result<(), String> {
        if self.direct_io_alignment == 0 || !self.direct_io_alignment.is_power_of_two() {
            return Err("limits.direct_io_alignment must be a power of two".into());
        }
        if self.direct_io_chunk == 0
            || !self
                .direct_io_chunk
                .is_multiple_of(self.direct_io_alignment)
        {
            return Err(
                "limits.direct_io_chunk must be a non-zero multiple of the alignment".into(),
            );
        }
        if self.max_io_size == 0 || self.max_io_size > u32::MAX as usize {
            return Err("limits.max_io_size must be in 1..=u32::MAX".into());
        }
        if self.max_list_entries == 0 || self.max_read_len == 0 || self.max_read_all == 0 {
            return Err("limits.max_list_entries, max_read_len, max_read_all must be > 0".into());
        }
        if self.max_write_all as u64 > self.max_read_all {
            return Err(
                "limits.max_write_all must be <= max_read_all (what is written must be readable)"
                    .into(),
            );
        }
        Ok(())
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
    fn bad_configs_are_rejected_with_the_field_named() {
        type Breaker = fn(&mut DiskConfig);
        let cases: Vec<(Breaker, &str)> = vec![
            (|c| c.driver.max_in_flight = 0, "max_in_flight"),
            (
                |c| c.driver.zombie_cap = c.driver.max_in_flight,
                "zombie_cap",
            ),
            (|c| c.limits.direct_io_alignment = 3000, "alignment"),
            (|c| c.limits.direct_io_chunk = 4097, "direct_io_chunk"),
            (|c| c.health.backoff_initial = Duration::ZERO, "backoff"),
            (|c| c.timeouts.data = Duration::ZERO, "timeouts.data"),
        ];
        for (break_it, field) in cases {
            let mut c = DiskConfig::default();
            break_it(&mut c);
            match c.validate() {
                Err(DiskError::InvalidArgument { reason }) => {
                    assert!(reason.contains(field), "{reason} should name {field}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
