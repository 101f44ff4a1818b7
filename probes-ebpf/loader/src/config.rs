//! Every bound and default of the loader, in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use probes_ebpf_common::DEFAULT_PIN_DIR;

use crate::error::{LoaderError, Result};

/// Where the running kernel's BTF lives.
pub const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Sizes of the eBPF maps (set on the object before the maps are created).
#[derive(Clone, Debug)]
pub struct MapLimits {
    /// In-flight table entries. Must exceed the sum of the queue depths of
    /// all traced devices, or the LRU evicts live requests (and a stalled
    /// request could be evicted by a busy neighbour). 16384 entries × ~40 B.
    pub inflight_entries: u32,
    /// Histogram keys: devices × operations seen.
    pub hist_entries: u32,
    /// Devices in the `--device` filter.
    pub filter_entries: u32,
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
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            btf: PathBuf::from(DEFAULT_BTF),
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            devices: Vec::new(),
            limits: MapLimits::default(),
        }
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
    /// Most in-flight entries one scan visits (the iteration restarts when
    /// an entry is deleted under it, so it needs its own bound).
    pub max_scan_entries: usize,
    /// Most histogram keys one read visits.
    pub max_hist_keys: usize,
    /// Most device names cached.
    pub max_device_names: usize,
    /// HTTP: a connection must send its request within this.
    pub http_read_timeout: Duration,
    /// HTTP: writing the response must finish within this.
    pub http_write_timeout: Duration,
    /// HTTP: largest request head accepted.
    pub http_max_request: usize,
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
            max_scan_entries: 2 * limits.inflight_entries as usize,
            max_hist_keys: 2 * limits.hist_entries as usize,
            max_device_names: 4_096,
            http_read_timeout: Duration::from_secs(5),
            http_write_timeout: Duration::from_secs(5),
            http_max_request: 8 * 1024,
            event_queue: 1_024,
        }
    }
}

impl RunConfig {
    /// Checks ranges; called by [`crate::Loader::start`].
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(LoaderError::Config(m.to_owned()));
        if self.scan_interval < Duration::from_millis(1)
            || self.scan_interval > Duration::from_secs(60)
        {
            return bad("scan interval must be between 1 ms and 60 s");
        }
        if self.stall_threshold < Duration::from_millis(1) {
            return bad("stall threshold must be at least 1 ms");
        }
        let l = &self.probes.limits;
        if l.inflight_entries < 64 || l.hist_entries < 8 || l.filter_entries < 1 {
            return bad("map sizes too small (inflight >= 64, hist >= 8, filter >= 1)");
        }
        if self.probes.devices.len() > l.filter_entries as usize {
            return bad("more --device names than filter entries");
        }
        if self.max_scan_entries == 0 || self.max_hist_keys == 0 || self.event_queue == 0 {
            return bad("scan, histogram and event bounds must be positive");
        }
        Ok(())
    }
}
