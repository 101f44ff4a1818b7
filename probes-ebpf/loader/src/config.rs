//! Every bound and default of the loader, in one place, with the ranges
//! [`RunConfig::validate`] enforces before anything is created.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use probes_ebpf_common::DEFAULT_PIN_DIR;
use probes_ebpf_reader::{LivenessConfig, LockConfig};

/// Where the running kernel's BTF lives.
pub const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A configuration value out of its range. Checked before the pin
/// directory is created, so a refused start leaves nothing behind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A count outside its bounds.
    #[error("{name} must be between {min} and {max} (got {value})")]
    OutOfRange {
        /// The setting (with its command-line flag, where it has one).
        name: &'static str,
        /// The value given.
        value: u64,
        /// Least allowed.
        min: u64,
        /// Most allowed.
        max: u64,
    },
    /// A duration outside its bounds.
    #[error("{name} must be between {min:?} and {max:?} (got {value:?})")]
    DurationOutOfRange {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: Duration,
        /// Least allowed.
        min: Duration,
        /// Most allowed.
        max: Duration,
    },
}

fn check_count(
    name: &'static str,
    value: impl Into<u64>,
    range: RangeInclusive<u64>,
) -> Result<(), ConfigError> {
    let value = value.into();
    if range.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            name,
            value,
            min: *range.start(),
            max: *range.end(),
        })
    }
}

fn check_duration(
    name: &'static str,
    value: Duration,
    range: RangeInclusive<Duration>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::DurationOutOfRange {
            name,
            value,
            min: *range.start(),
            max: *range.end(),
        })
    }
}

fn widen(r: RangeInclusive<u32>) -> RangeInclusive<u64> {
    u64::from(*r.start())..=u64::from(*r.end())
}

/// Sizes of the eBPF maps (set on the object before the maps are created).
#[derive(Clone, Debug)]
pub struct MapLimits {
    /// In-flight table entries. Must exceed the sum of the queue depths of
    /// all traced devices, or the LRU evicts live requests (and a stalled
    /// request could be evicted by a busy neighbour). 16384 entries × ~40 B;
    /// LRU tables are preallocated, hence the upper bound.
    pub inflight_entries: u32,
    /// Histogram keys: devices × operations seen.
    pub hist_entries: u32,
    /// Devices in the `--device` filter.
    pub filter_entries: u32,
}

impl MapLimits {
    /// Allowed `inflight_entries` (`--inflight-entries`).
    pub const INFLIGHT_ENTRIES: RangeInclusive<u32> = 64..=1 << 20;
    /// Allowed `hist_entries`.
    pub const HIST_ENTRIES: RangeInclusive<u32> = 8..=1 << 16;
    /// Allowed `filter_entries`.
    pub const FILTER_ENTRIES: RangeInclusive<u32> = 1..=4_096;
}

impl Default for MapLimits {
    fn default() -> Self {
        MapLimits {
            inflight_entries: 16_384,
            hist_entries: 1_024,
            filter_entries: 64,
        }
    }
}

/// How the probes are loaded and where their maps are pinned.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// BTF of the running kernel (offsets are derived from it).
    pub btf: PathBuf,
    /// bpffs directory for the pinned maps.
    pub pin_dir: PathBuf,
    /// Trace only these devices (names like `loop3` or `sda`; partitions
    /// count as their disk). Empty = every device.
    pub devices: Vec<String>,
    /// Map sizes.
    pub limits: MapLimits,
    /// Taking the pin directory's ownership lock.
    pub lock: LockConfig,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            btf: PathBuf::from(DEFAULT_BTF),
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            devices: Vec::new(),
            limits: MapLimits::default(),
            lock: LockConfig::default(),
        }
    }
}

impl ProbeConfig {
    /// Checks the map sizes and the device list against their bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        check_count(
            "the in-flight table size (--inflight-entries)",
            l.inflight_entries,
            widen(MapLimits::INFLIGHT_ENTRIES),
        )?;
        check_count(
            "the histogram table size",
            l.hist_entries,
            widen(MapLimits::HIST_ENTRIES),
        )?;
        check_count(
            "the device filter size",
            l.filter_entries,
            widen(MapLimits::FILTER_ENTRIES),
        )?;
        check_count(
            "the number of --device names",
            self.devices.len() as u64,
            0..=u64::from(l.filter_entries),
        )?;
        check_duration(
            "the pin-directory lock wait",
            self.lock.wait,
            Duration::ZERO..=Duration::from_secs(60),
        )?;
        check_duration(
            "the pin-directory lock retry interval",
            self.lock.retry_interval,
            Duration::from_micros(100)..=Duration::from_secs(1),
        )
    }
}

/// The `/metrics` server's bounds. Every connection is served on its own
/// task, so an idle or slow client holds one connection slot and nothing
/// else; each exchange serves one request and closes.
#[derive(Clone, Copy, Debug)]
pub struct HttpConfig {
    /// Connections served at once; beyond it new ones are closed at once.
    pub max_connections: usize,
    /// The request head must arrive within this from accept.
    pub header_timeout: Duration,
    /// The whole exchange (head in, response out) must finish within this.
    pub connection_timeout: Duration,
    /// Largest request head accepted (431 beyond).
    pub max_request_head: usize,
    /// Pause after a failed `accept` (e.g. out of file descriptors), so the
    /// loop does not spin.
    pub accept_backoff: Duration,
    /// Stopping the server waits at most this for connections in progress.
    pub shutdown_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(10),
            max_request_head: 8 * 1024,
            accept_backoff: Duration::from_millis(50),
            shutdown_timeout: Duration::from_secs(1),
        }
    }
}

impl HttpConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_count(
            "the metrics server's connection cap",
            self.max_connections as u64,
            1..=65_536,
        )?;
        check_count(
            "the largest metrics request head",
            self.max_request_head as u64,
            256..=1 << 20,
        )?;
        let timeouts = Duration::from_millis(1)..=Duration::from_secs(600);
        check_duration(
            "the metrics request-head timeout",
            self.header_timeout,
            timeouts.clone(),
        )?;
        check_duration(
            "the metrics connection timeout",
            self.connection_timeout,
            timeouts.clone(),
        )?;
        check_duration(
            "the metrics accept backoff",
            self.accept_backoff,
            Duration::ZERO..=Duration::from_secs(10),
        )?;
        check_duration(
            "the metrics shutdown timeout",
            self.shutdown_timeout,
            timeouts,
        )
    }
}

/// The `run` loop: scanning, stall detection, metrics.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Loading and pinning.
    pub probes: ProbeConfig,
    /// A device is stalled while its oldest in-flight request is older
    /// than this.
    pub stall_threshold: Duration,
    /// How often the in-flight table is scanned (and the histograms read).
    /// A stall is reported at most `stall_threshold + scan_interval` after
    /// its request was issued.
    pub scan_interval: Duration,
    /// Where `/metrics` is served (`None`: no HTTP server).
    pub listen: Option<SocketAddr>,
    /// The `/metrics` server's bounds.
    pub http: HttpConfig,
    /// Most in-flight entries one scan visits (the iteration restarts when
    /// an entry is deleted under it, so it needs its own bound).
    pub max_scan_entries: usize,
    /// Most histogram keys one read visits.
    pub max_hist_keys: usize,
    /// Most device names cached.
    pub max_device_names: usize,
    /// Stall start/end events kept for a caller of [`crate::Loader::events`]
    /// that does not read them (older ones are dropped).
    pub event_queue: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        let limits = MapLimits::default();
        RunConfig {
            probes: ProbeConfig::default(),
            stall_threshold: Duration::from_secs(1),
            scan_interval: Duration::from_millis(100),
            listen: None,
            http: HttpConfig::default(),
            max_scan_entries: 2 * limits.inflight_entries as usize,
            max_hist_keys: 2 * limits.hist_entries as usize,
            max_device_names: 4_096,
            event_queue: 1_024,
        }
    }
}

impl RunConfig {
    /// Checks ranges; called by [`crate::Loader::start`] before anything is
    /// created.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_duration(
            "the scan interval (--scan-interval)",
            self.scan_interval,
            Duration::from_millis(1)..=Duration::from_secs(60),
        )?;
        check_duration(
            "the stall threshold (--stall-threshold)",
            self.stall_threshold,
            Duration::from_millis(1)..=Duration::from_secs(24 * 3600),
        )?;
        self.probes.validate()?;
        self.http.validate()?;
        let bounded = 1..=1 << 24;
        check_count(
            "the in-flight scan bound",
            self.max_scan_entries as u64,
            bounded.clone(),
        )?;
        check_count(
            "the histogram read bound",
            self.max_hist_keys as u64,
            bounded.clone(),
        )?;
        check_count(
            "the device-name cache",
            self.max_device_names as u64,
            bounded.clone(),
        )?;
        check_count("the event queue", self.event_queue as u64, bounded)
    }
}

/// Bounds of `probe-loader status`.
#[derive(Clone, Copy, Debug)]
pub struct StatusConfig {
    /// Most in-flight entries visited.
    pub max_scan_entries: usize,
    /// Most histogram keys visited.
    pub max_hist_keys: usize,
    /// Most device names looked up.
    pub max_device_names: usize,
    /// The liveness rule's parameters.
    pub liveness: LivenessConfig,
}

impl Default for StatusConfig {
    fn default() -> Self {
        let d = RunConfig::default();
        StatusConfig {
            max_scan_entries: d.max_scan_entries,
            max_hist_keys: d.max_hist_keys,
            max_device_names: 1_024,
            liveness: LivenessConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RunConfig::default().validate().expect("defaults");
    }

    #[test]
    fn the_inflight_bound_is_named_in_the_refusal() {
        for bad in [0, 63, (1 << 20) + 1, u32::MAX] {
            let mut cfg = RunConfig::default();
            cfg.probes.limits.inflight_entries = bad;
            let err = cfg.validate().expect_err("out of range");
            assert_eq!(
                err,
                ConfigError::OutOfRange {
                    name: "the in-flight table size (--inflight-entries)",
                    value: u64::from(bad),
                    min: 64,
                    max: 1 << 20,
                }
            );
            assert!(err.to_string().contains("between 64 and 1048576"), "{err}");
        }
    }

    #[test]
    fn too_many_devices_and_bad_http_bounds_are_refused() {
        let mut cfg = RunConfig::default();
        cfg.probes.limits.filter_entries = 1;
        cfg.probes.devices = vec!["a".into(), "b".into()];
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::OutOfRange {
                value: 2,
                max: 1,
                ..
            })
        ));
        let mut cfg = RunConfig::default();
        cfg.http.max_connections = 0;
        assert!(cfg.validate().is_err());
        let mut cfg = RunConfig::default();
        cfg.http.header_timeout = Duration::ZERO;
        assert!(cfg.validate().is_err());
    }
}
