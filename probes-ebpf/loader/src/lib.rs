//! # probes-ebpf-loader
//!
//! Loads the block-request probes (`probes-ebpf/kernel`, built from source
//! by this crate's build script), pins their maps under bpffs, scans the
//! in-flight table for stalls, and renders Prometheus metrics. The
//! `probe-loader` binary wraps it for SREs (`run`, `status`).
//!
//! ```no_run
//! use std::time::Duration;
//! use probes_ebpf_loader::{Loader, RunConfig};
//!
//! let mut cfg = RunConfig::default();
//! cfg.stall_threshold = Duration::from_millis(300);
//! cfg.listen = Some("127.0.0.1:9435".parse()?);
//! let loader = Loader::start(cfg)?;
//! if let Ok(ev) = loader.events().recv_timeout(Duration::from_secs(10)) {
//!     println!("{ev:?}");
//! }
//! loader.stop();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Data flow: the raw tracepoints fill `INFLIGHT` (request pointer → issue
//! time, device, op, bytes) and the per-CPU `HIST` (device, op → log2
//! latency buckets); the scanner reads both every `scan_interval`, follows
//! stalls (oldest in-flight age > `stall_threshold`) and publishes a
//! [`Snapshot`]; `/metrics` renders the latest one. Reading the maps (the
//! bounded scan, the pin directory's ownership lock, the liveness rule)
//! lives in `probes-ebpf-reader` ([`reader`]), which `disk-io`'s eBPF stall
//! source uses too.

pub mod btf;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod offsets;
pub mod probes;
pub mod run;
pub mod snapshot;
pub mod stall;
pub mod status;
pub mod system;

pub use config::{
    ConfigError, HttpConfig, MapLimits, ProbeConfig, RunConfig, StatusConfig, DEFAULT_BTF,
};
pub use error::{LoaderError, Result};
pub use probes::Probes;
/// The one reader of the pinned maps (scan, lock, liveness), shared with
/// `disk-io`'s stall source.
pub use probes_ebpf_reader as reader;
pub use run::{wait_event, Loader};
pub use snapshot::Snapshot;
pub use stall::StallEvent;
