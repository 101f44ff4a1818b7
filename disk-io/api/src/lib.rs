//! # disk-io-api
//!
//! The contract every disk of disk-io keeps, local or remote, and the only
//! thing quorum code needs to know about a disk:
//!
//! * [`Deadline`]: an absolute monotonic instant; every operation takes one
//!   and answers by it (plus a small ε).
//! * [`Disk`] / [`ShardWriter`]: one object-safe async trait, so a storage
//!   node holds `Arc<dyn Disk>` for local and remote disks alike.
//! * [`DiskError`]: a typed error whose [`Availability`] says whether the
//!   disk was unavailable (its vote is missing) or answered with an error.
//! * [`OpClass`]: the name of every operation (default budgets in
//!   [`OpTimeouts`], metrics labels, spans).
//! * [`Locker`]: one node's vote in a quorum lock (leases with a TTL), and
//!   [`LeaseTable`], the in-memory locker every node serves.
//!
//! **Boundary:** this crate does no I/O and depends on no libc, io_uring or
//! runtime; it is `#![forbid(unsafe_code)]`. Errno values travel as
//! [`Errno`] numbers; turning a kernel errno into a [`DiskError`] is the
//! local driver's job.
#![forbid(unsafe_code)]

mod deadline;
mod disk;
mod error;
mod lock;
mod notify;
mod op;
mod state;
mod timeouts;

pub use deadline::Deadline;
pub use disk::{
    CreateOptions, DeleteOptions, Disk, DiskId, DiskInfo, FileInfo, ShardWriter, VolInfo,
};
pub use error::{Availability, DiskError, Errno, PathRule, Result, WrongType};
pub use lock::{Clock, LeaseConfig, LeaseTable, LockKind, LockRequest, Locker};
pub use notify::{AdminHandler, Listener};
pub use op::OpClass;
pub use state::HealthState;
pub use timeouts::OpTimeouts;
