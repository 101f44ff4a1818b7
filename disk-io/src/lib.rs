//! # disk-io
//!
//! A disk layer for distributed, erasure-coded object stores whose every
//! operation returns within a fixed bound, whatever the device does. This is
//! the crate a storage node links:
//!
//! * the disk API, re-exported from `disk-io-api`: [`Deadline`] (every
//!   operation takes one), the object-safe [`Disk`] / [`ShardWriter`]
//!   traits (local and remote disks alike), [`DiskError`] whose
//!   [`Availability`] says whether the disk was unavailable (its vote is
//!   missing) or answered with an error;
//! * [`LocalDisk`]: a directory driven through a per-disk io_uring ring
//!   (`disk-io-driver`); every kernel op carries its deadline, is cancelled
//!   when the caller leaves, and keeps its buffers in an op table until the
//!   kernel is done, with zombies counted and capped; no path a caller gives
//!   and no symlink planted on the disk leads outside its root;
//! * health (`disk-io-health`): Online → Suspect → Faulty → Probing →
//!   Online, with fail fast, active probes, backoff with jitter and a
//!   [`StallSource`] hook;
//! * `stall_ebpf` (feature `ebpf-stall`): a [`StallSource`] reading the
//!   block-request probes' pinned in-flight table, so a disk whose block
//!   device has a request outstanding past a threshold turns Faulty before
//!   any caller's deadline runs out.
//!
//! ```no_run
//! use disk_io::{Deadline, Disk, LocalDisk};
//! use std::time::Duration;
//!
//! # async fn demo() -> disk_io::Result<()> {
//! let disk = LocalDisk::open("/mnt/disk1", Deadline::after(Duration::from_secs(2))).await?;
//! let id = disk.disk_id(Deadline::after(Duration::from_millis(500))).await?;
//! disk.write_all("bucket", "obj/xl.meta", b"hello", Deadline::after(Duration::from_secs(1))).await?;
//! # let _ = id; Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod config;
pub mod format;
mod local;
pub mod metrics;
pub mod stall;
#[cfg(feature = "ebpf-stall")]
pub mod stall_ebpf;

pub use config::{DiskConfig, Limits};
pub use disk_io_api::{
    Availability, CreateOptions, Deadline, DeleteOptions, Disk, DiskError, DiskId, DiskInfo, Errno,
    FileInfo, HealthState, OpClass, OpTimeouts, PathRule, Result, ShardWriter, VolInfo, WrongType,
};
pub use disk_io_driver::{DriverConfig, DriverStats};
pub use disk_io_health::{HealthConfig, Transition};
pub use local::{LocalDisk, LocalDiskBuilder, OpenMode};
pub use stall::{Stall, StallSource};
