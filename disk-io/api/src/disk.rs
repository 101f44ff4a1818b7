//! The [`Disk`] trait every disk implements, local or remote, and the
//! values its operations return.

use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::deadline::Deadline;
use crate::error::Result;
use crate::state::HealthState;

/// A disk's identity, read from the format file on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DiskId {
    /// Unique id written at format time.
    pub uuid: Uuid,
    /// Index of the erasure set the disk belongs to.
    pub set_index: u32,
    /// Index of the disk within its set.
    pub disk_index: u32,
}

/// Capacity and state of a disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Identity, when the disk is formatted.
    pub id: Option<DiskId>,
    /// Total bytes.
    pub total: u64,
    /// Bytes available to unprivileged writers.
    pub free: u64,
    /// Bytes used.
    pub used: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
    /// Health state at the time of the call.
    pub state: HealthState,
    /// Operations in flight.
    pub in_flight: usize,
    /// Operations abandoned by their callers and not yet completed.
    pub zombies: usize,
}

/// A volume (a top-level directory, like a bucket).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolInfo {
    /// Name.
    pub name: String,
    /// Creation (or last status change) time.
    pub created: SystemTime,
}

/// Metadata of a file or directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Size in bytes.
    pub size: u64,
    /// Last modification.
    pub modified: SystemTime,
    /// A directory rather than a file.
    pub is_dir: bool,
}

/// Options for [`Disk::create_file`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// Write with O_DIRECT through aligned buffers, bypassing the page cache
    /// (shards are written once and read rarely; caching them evicts hot
    /// metadata).
    pub direct: bool,
    /// Use `fdatasync` rather than `fsync` in `finish`.
    pub datasync: bool,
}

/// Options for [`Disk::delete`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Delete a directory and everything below it. The tree is first moved
    /// into the disk's trash (one rename, within the deadline) and purged in
    /// the background.
    pub recursive: bool,
}

/// A disk: every operation takes a [`Deadline`] and returns by it (plus a
/// small ε). Object-safe and `Send`, so a storage node can hold
/// `Arc<dyn Disk>` for local and remote disks alike.
#[async_trait]
pub trait Disk: Send + Sync + std::fmt::Debug {
    /// A label for logs and metrics (the root path, or `peer:/path`).
    fn label(&self) -> &str;

    /// Current health state (no I/O).
    fn state(&self) -> HealthState;

    /// The disk's identity from its format file. May answer from a short
    /// cache, but the staleness check runs under `deadline` too.
    async fn disk_id(&self, deadline: Deadline) -> Result<DiskId>;

    /// Capacity, identity and state.
    async fn disk_info(&self, deadline: Deadline) -> Result<DiskInfo>;

    /// Create a volume.
    async fn make_vol(&self, vol: &str, deadline: Deadline) -> Result<()>;

    /// All volumes, sorted by name.
    async fn list_vols(&self, deadline: Deadline) -> Result<Vec<VolInfo>>;

    /// One volume.
    async fn stat_vol(&self, vol: &str, deadline: Deadline) -> Result<VolInfo>;

    /// Delete a volume; without `force` it must be empty.
    async fn delete_vol(&self, vol: &str, force: bool, deadline: Deadline) -> Result<()>;

    /// Read a whole small file (metadata).
    async fn read_all(&self, vol: &str, path: &str, deadline: Deadline) -> Result<Vec<u8>>;

    /// Replace a small file atomically and durably: a temporary file,
    /// fsync, rename over the target, fsync of the directory (and of every
    /// directory it had to create).
    ///
    /// The contract, by outcome:
    /// * `Ok(())`: the new content is in place and durable.
    /// * [`NotDurable`](crate::DiskError::NotDurable): the new content is in place, but the
    ///   fsync that makes the rename durable failed or ran out of time; a
    ///   crash may bring the old content back.
    /// * [`DeadlineExceeded`](crate::DiskError::DeadlineExceeded) before the commit was known to
    ///   land: either the old or the new content is in place, never a mix
    ///   (the rename may still complete in the kernel after the caller left).
    /// * any other error: nothing took effect; the old content is intact.
    async fn write_all(&self, vol: &str, path: &str, data: &[u8], deadline: Deadline)
        -> Result<()>;

    /// Create (or truncate) a file for appending shard data.
    async fn create_file(
        &self,
        vol: &str,
        path: &str,
        opts: CreateOptions,
        deadline: Deadline,
    ) -> Result<Box<dyn ShardWriter>>;

    /// Read exactly `len` bytes at `offset`.
    async fn read_file_at(
        &self,
        vol: &str,
        path: &str,
        offset: u64,
        len: usize,
        deadline: Deadline,
    ) -> Result<Vec<u8>>;

    /// Size and times of a file or directory.
    async fn stat_file(&self, vol: &str, path: &str, deadline: Deadline) -> Result<FileInfo>;

    /// Rename within the disk, creating the destination's parents, and
    /// make it durable (fsync of the destination directory and of every
    /// directory created). A failure after the rename landed is
    /// [`NotDurable`](crate::DiskError::NotDurable), as for [`Disk::write_all`].
    async fn rename_file(
        &self,
        src_vol: &str,
        src: &str,
        dst_vol: &str,
        dst: &str,
        deadline: Deadline,
    ) -> Result<()>;

    /// Delete a file or an empty directory (or a tree, with `recursive`).
    async fn delete(
        &self,
        vol: &str,
        path: &str,
        opts: DeleteOptions,
        deadline: Deadline,
    ) -> Result<()>;

    /// Entries of a directory (`dir` empty for the volume root), sorted;
    /// directories carry a trailing `/`.
    async fn list_dir(&self, vol: &str, dir: &str, deadline: Deadline) -> Result<Vec<String>>;
}

/// A file being written in appends (an erasure shard).
#[async_trait]
pub trait ShardWriter: Send {
    /// Append bytes. With O_DIRECT they are staged in aligned chunks, so an
    /// append may return before its bytes reach the disk; `finish` writes
    /// the rest.
    async fn append(&mut self, data: &[u8], deadline: Deadline) -> Result<()>;

    /// Write what is staged, fsync, close; returns the file's size.
    async fn finish(self: Box<Self>, deadline: Deadline) -> Result<u64>;
}
