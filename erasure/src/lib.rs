//! # disk-io-erasure
//!
//! Erasure sets over `Arc<dyn Disk>` (local and remote disks alike):
//!
//! * [`quorum`]: the reduction. An *unavailable* disk is missing, never a
//!   vote; a failure says needed, answered, unavailable and which errors
//!   came back, and "too few answered" ([`QuorumError::Unavailable`]) is a
//!   different error from "answered but failed" ([`QuorumError::Lost`]).
//! * [`Topology`] → [`ErasureSets`]: sets spread over nodes, objects placed
//!   by a hash of their name, set initialisation that checks every disk id
//!   in parallel under one deadline.
//! * [`ErasureSet`]: streamed PUT (Reed-Solomon per block, a BLAKE3 checksum
//!   per shard block, one writer task per disk behind a bounded queue,
//!   slow or failed disks dropped while write quorum holds, data committed
//!   by rename and made visible by an immutable per-version file on a
//!   write quorum, with no lock: `set::versions` decides the current
//!   version), GET (first `data` good shards, hedged reads, bitrot checks,
//!   reconstruction, ranges), stat, delete (a tombstone version), list,
//!   heal, scan and the collector of what failed or superseded writes
//!   left.
//! * [`ConfigStore`]: configuration documents in a system bucket, read
//!   under a quorum read lock and written under a write lock.
//! * [`QuorumLock`]: read and write locks over every node's
//!   [`Locker`](disk_io_api::Locker), as leases refreshed by the holder.
//!
//! **Boundary:** depends on `disk-io-api` only (no local disk, no driver);
//! every disk call goes through the trait with a deadline.
#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
pub mod error;
pub mod heal;
pub mod lock;
pub mod meta;
pub mod metrics;
mod offline;
pub mod quorum;
mod set;
mod sets;
pub mod sysconfig;

pub use config::{read_quorum, write_quorum, DiskSlot, ErasureConfig, Topology};
pub use error::ErasureError;
pub use heal::{HealQueue, HealTask, Pushed};
pub use lock::{lock_quorum, LockConfig, LockError, LockGuard, QuorumLock};
pub use meta::{check_name as check_object_name, ObjectMeta};
pub use offline::OfflineDisk;
pub use quorum::{
    proves_out, ErrorCount, Outcome, QuorumCounts, QuorumError, QuorumOp, SetStats, Tally,
};
pub use set::{
    CollectReport, DiskStatus, ErasureSet, GetReport, HealReport, ObjectInfo, PutOptions,
    PutReport, ScanReport, SetReport, UnhealableObject,
};
pub use sets::{placement, ErasureSets};
pub use sysconfig::{ConfigError, ConfigStore, ConfigStoreConfig, SYSTEM_BUCKET};
