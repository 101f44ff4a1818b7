//! [`StallSource`]: an outside signal that a disk's block device has a
//! request outstanding for too long (the eBPF probe loader implements it).
//! The health monitor polls it every tick and takes the disk Faulty before
//! any caller has to wait out a deadline.

use std::fmt::Debug;
use std::time::Duration;

/// A stalled request on the device behind a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The device, as the source names it (e.g. `loop3`, `nvme0n1`).
    pub device: String,
    /// Age of the oldest outstanding request.
    pub oldest_age: Duration,
}

/// Something that can tell whether a disk's device is stalled right now.
/// `check` is called from the health monitor every tick and must not block.
pub trait StallSource: Send + Sync + Debug {
    /// `Some` while a request on the disk's device has been outstanding for
    /// longer than the source's threshold.
    fn check(&self) -> Option<Stall>;
}
