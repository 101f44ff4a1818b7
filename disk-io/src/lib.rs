//! # disk-io
//!
//! A disk layer for distributed, erasure-coded object stores whose every
//! operation returns within a fixed bound, whatever the device does.
//!
//! * [`Deadline`]: every operation takes one (an absolute monotonic
//!   instant); there is no way to call without it. Per-class defaults live
//!   in [`DiskConfig::timeouts`].
//! * [`Disk`]: one object-safe async trait, implemented by [`LocalDisk`] and
//!   (later) by remote disks, so quorum code treats both alike.
//! * [`DiskError`]: a typed error whose [`Availability`] says whether the
//!   disk was unavailable (its vote is missing) or answered with an error.
//! * [`LocalDisk`]: a directory driven through a per-disk io_uring ring
//!   thread; each kernel op is linked to a `LinkTimeout` for its deadline,
//!   cancelled when the caller leaves, and kept (buffers and all) in an op
//!   table until its completion, with zombies counted and capped.
//! * [`health`]: Online → Suspect → Faulty → Probing → Online, with fail
//!   fast, active probes, backoff with jitter and a [`StallSource`] hook.
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

pub mod config;
pub mod deadline;
pub mod disk;
pub mod driver;
pub mod error;
pub mod format;
pub mod health;
mod local;
pub mod metrics;
pub mod op;
mod path;
pub mod stall;
#[cfg(feature = "ebpf-stall")]
pub mod stall_ebpf;

pub use config::{DiskConfig, DriverConfig, HealthConfig, Limits, OpTimeouts};
pub use deadline::Deadline;
pub use disk::{
    CreateOptions, DeleteOptions, Disk, DiskId, DiskInfo, FileInfo, ShardWriter, VolInfo,
};
pub use error::{Availability, DiskError, Result};
pub use health::{HealthState, Transition};
pub use local::{LocalDisk, LocalDiskBuilder};
pub use op::OpClass;
pub use stall::{Stall, StallSource};
