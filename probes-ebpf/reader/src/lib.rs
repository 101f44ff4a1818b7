//! # probes-ebpf-reader
//!
//! The contract between the block-request probes' loader (the writer) and
//! everyone who reads their pinned maps (`probe-loader status`, `disk-io`'s
//! eBPF stall source, the loader's own scanner), implemented once:
//!
//! * [`MapSet`]: the typed maps, opened from their pins or taken from the
//!   loaded object, and the reads done on them — the bounded, de-duplicated
//!   [`MapSet::scan_inflight`], histograms, counters, the heartbeat record.
//! * [`PinDirLock`]: exclusive ownership of a pin directory (`flock` on the
//!   directory itself). The loader holds it for its whole life; pins are
//!   made and removed only through it, so a loader only ever removes its own
//!   pins. [`owner_present`] asks, without waiting, whether anyone holds it.
//! * [`Liveness`] and [`judge`]: the one rule that says whether the maps
//!   belong to a running loader: someone owns the pin directory **and** its
//!   heartbeat, on `CLOCK_MONOTONIC` (the clock `bpf_ktime_get_ns` reads),
//!   is fresher than [`LivenessConfig::window`]. [`PinnedMaps::check`] applies
//!   it to opened pins.
//!
//! No CLI, exporter or HTTP dependency: `disk-io` links this crate.
//!
//! ```no_run
//! use probes_ebpf_reader::{monotonic_ns, LivenessConfig, PinnedMaps};
//!
//! let pins = PinnedMaps::open("/sys/fs/bpf/disk-io-probes".as_ref())?;
//! let check = pins.check(monotonic_ns(), &LivenessConfig::default())?;
//! if check.liveness.is_live() {
//!     let scan = pins.maps().scan_inflight(monotonic_ns(), 32_768);
//!     for (dev, d) in &scan.devices {
//!         println!("{dev}: {} in flight, oldest {:?}", d.count, d.oldest_age);
//!     }
//! }
//! # Ok::<(), probes_ebpf_reader::ReaderError>(())
//! ```

mod clock;
mod error;
mod liveness;
mod lock;
mod maps;
mod pins;

pub use clock::monotonic_ns;
pub use error::ReaderError;
pub use liveness::{judge, Liveness, LivenessConfig};
pub use lock::{owner_present, LockConfig, PinDirLock};
pub use maps::{DeviceInflight, InflightScan, MapSet};
pub use pins::{Check, PinnedMaps};
/// The shared `#[repr(C)]` types and sysfs helpers, re-exported so a
/// reader needs one dependency.
pub use probes_ebpf_common as common;
