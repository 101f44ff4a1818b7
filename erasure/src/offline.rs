//! [`OfflineDisk`]: what stands in a set position whose disk must not be
//! used (it carries another set's identity). Every call fails at once with
//! an *unavailable* error, so quorum counts the position as missing.

use async_trait::async_trait;

use disk_io_api::{
    CreateOptions, Deadline, DeleteOptions, Disk, DiskError, DiskId, DiskInfo, FileInfo,
    HealthState, Result, ShardWriter, VolInfo,
};

/// A disk position that is out of the set.
#[derive(Debug)]
pub struct OfflineDisk {
    label: String,
}

impl OfflineDisk {
    /// A stand-in labelled `label`.
    pub fn new(label: String) -> OfflineDisk {
        OfflineDisk { label }
    }

    fn err(&self) -> DiskError {
        DiskError::DiskNotFound {
            reason: format!("{}: kept out of the set", self.label),
        }
    }
}

#[async_trait]
impl Disk for OfflineDisk {
    fn label(&self) -> &str {
        &self.label
    }
    fn state(&self) -> HealthState {
        HealthState::Faulty
    }
    async fn disk_id(&self, _: Deadline) -> Result<DiskId> {
        Err(self.err())
    }
    async fn disk_info(&self, _: Deadline) -> Result<DiskInfo> {
        Err(self.err())
    }
    async fn make_vol(&self, _: &str, _: Deadline) -> Result<()> {
        Err(self.err())
    }
    async fn list_vols(&self, _: Deadline) -> Result<Vec<VolInfo>> {
        Err(self.err())
    }
    async fn stat_vol(&self, _: &str, _: Deadline) -> Result<VolInfo> {
        Err(self.err())
    }
    async fn delete_vol(&self, _: &str, _: bool, _: Deadline) -> Result<()> {
        Err(self.err())
    }
    async fn read_all(&self, _: &str, _: &str, _: Deadline) -> Result<Vec<u8>> {
        Err(self.err())
    }
    async fn write_all(&self, _: &str, _: &str, _: &[u8], _: Deadline) -> Result<()> {
        Err(self.err())
    }
    async fn create_file(
        &self,
        _: &str,
        _: &str,
        _: CreateOptions,
        _: Deadline,
    ) -> Result<Box<dyn ShardWriter>> {
        Err(self.err())
    }
    async fn read_file_at(
        &self,
        _: &str,
        _: &str,
        _: u64,
        _: usize,
        _: Deadline,
    ) -> Result<Vec<u8>> {
        Err(self.err())
    }
    async fn stat_file(&self, _: &str, _: &str, _: Deadline) -> Result<FileInfo> {
        Err(self.err())
    }
    async fn rename_file(&self, _: &str, _: &str, _: &str, _: &str, _: Deadline) -> Result<()> {
        Err(self.err())
    }
    async fn delete(&self, _: &str, _: &str, _: DeleteOptions, _: Deadline) -> Result<()> {
        Err(self.err())
    }
    async fn list_dir(&self, _: &str, _: &str, _: Deadline) -> Result<Vec<String>> {
        Err(self.err())
    }
}
