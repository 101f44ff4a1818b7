//! Hedged reads: a disk that answered the metadata read and then stops
//! answering shard reads must not slow a GET. Its read is hedged to
//! another shard after `hedge_delay`, and it is asked last for the rest of
//! the object, so the GET pays the hedge delay about once, not per block.
//! (A test wrapper disk makes shard reads hang until their deadline; no
//! privilege needed.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use disk_io::{
    CreateOptions, Deadline, DeleteOptions, Disk, DiskConfig, DiskError, DiskId, DiskInfo,
    FileInfo, HealthState, LocalDisk, OpClass, Result, ShardWriter, VolInfo,
};
use disk_io_erasure::{ErasureConfig, ErasureSet, HealQueue};

mod common;
use common::{bytes, setup_deadline, BUCKET};

/// Delegates everything; while `hang_reads` is on, `read_file_at` waits
/// out its deadline like a hung device would.
#[derive(Debug)]
struct HangingReads {
    inner: Arc<dyn Disk>,
    hang_reads: AtomicBool,
    /// Delay of metadata reads (so the disk under test is surely among the
    /// first `data` copies to answer, and its shards are asked for).
    meta_delay_ms: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl Disk for HangingReads {
    fn label(&self) -> &str {
        self.inner.label()
    }
    fn state(&self) -> HealthState {
        self.inner.state()
    }
    async fn disk_id(&self, d: Deadline) -> Result<DiskId> {
        self.inner.disk_id(d).await
    }
    async fn disk_info(&self, d: Deadline) -> Result<DiskInfo> {
        self.inner.disk_info(d).await
    }
    async fn make_vol(&self, v: &str, d: Deadline) -> Result<()> {
        self.inner.make_vol(v, d).await
    }
    async fn list_vols(&self, d: Deadline) -> Result<Vec<VolInfo>> {
        self.inner.list_vols(d).await
    }
    async fn stat_vol(&self, v: &str, d: Deadline) -> Result<VolInfo> {
        self.inner.stat_vol(v, d).await
    }
    async fn delete_vol(&self, v: &str, f: bool, d: Deadline) -> Result<()> {
        self.inner.delete_vol(v, f, d).await
    }
    async fn read_all(&self, v: &str, p: &str, d: Deadline) -> Result<Vec<u8>> {
        let delay = self.meta_delay_ms.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        self.inner.read_all(v, p, d).await
    }
    async fn write_all(&self, v: &str, p: &str, b: &[u8], d: Deadline) -> Result<()> {
        self.inner.write_all(v, p, b, d).await
    }
    async fn create_file(
        &self,
        v: &str,
        p: &str,
        o: CreateOptions,
        d: Deadline,
    ) -> Result<Box<dyn ShardWriter>> {
        self.inner.create_file(v, p, o, d).await
    }
    async fn read_file_at(
        &self,
        v: &str,
        p: &str,
        off: u64,
        len: usize,
        d: Deadline,
    ) -> Result<Vec<u8>> {
        if self.hang_reads.load(Ordering::Relaxed) {
            let started = Instant::now();
            tokio::time::sleep_until(d.instant().into()).await;
            return Err(DiskError::DeadlineExceeded {
                op: OpClass::ReadFileAt,
                waited: started.elapsed(),
            });
        }
        self.inner.read_file_at(v, p, off, len, d).await
    }
    async fn stat_file(&self, v: &str, p: &str, d: Deadline) -> Result<FileInfo> {
        self.inner.stat_file(v, p, d).await
    }
    async fn rename_file(&self, a: &str, b: &str, c: &str, e: &str, d: Deadline) -> Result<()> {
        self.inner.rename_file(a, b, c, e, d).await
    }
    async fn delete(&self, v: &str, p: &str, o: DeleteOptions, d: Deadline) -> Result<()> {
        self.inner.delete(v, p, o, d).await
    }
    async fn list_dir(&self, v: &str, p: &str, d: Deadline) -> Result<Vec<String>> {
        self.inner.list_dir(v, p, d).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_disk_hanging_after_its_metadata_answered_is_hedged_once() {
    let mut tmp = Vec::new();
    let mut wrapped = Vec::new();
    for pos in 0..8u32 {
        let t = tempfile::tempdir().unwrap();
        let disk = LocalDisk::builder(t.path())
            .config(DiskConfig::default())
            .open(setup_deadline())
            .await
            .unwrap();
        disk.format(0, pos, false, setup_deadline()).await.unwrap();
        tmp.push(t);
        wrapped.push(Arc::new(HangingReads {
            inner: Arc::new(disk),
            hang_reads: AtomicBool::new(false),
            meta_delay_ms: Default::default(),
        }));
    }
    let cfg = ErasureConfig {
        block_size: 256 << 10,
        hedge_delay: Duration::from_millis(50),
        ..ErasureConfig::default()
    };
    let heal = Arc::new(HealQueue::new(16));
    let disks: Vec<Arc<dyn Disk>> = wrapped.iter().map(|d| d.clone() as Arc<dyn Disk>).collect();
    let (set, _) = ErasureSet::open(0, disks, 4, Arc::new(cfg), heal, setup_deadline())
        .await
        .unwrap();
    set.make_bucket(BUCKET, setup_deadline()).await.unwrap();
    let data = bytes(8 << 20, 3);
    let mut src: &[u8] = &data;
    set.put_object(BUCKET, "h", &mut src, setup_deadline())
        .await
        .unwrap();
    // The disk holding data shard 0: asked first once its metadata matched.
    let d0 = (0..8)
        .find(|&p| disk_io_erasure::meta::distribution("h", 8)[p] == 0)
        .unwrap();
    wrapped[d0].hang_reads.store(true, Ordering::Relaxed);
    for (p, w) in wrapped.iter().enumerate() {
        if p != d0 {
            w.meta_delay_ms.store(100, Ordering::Relaxed);
        }
    }
    let started = Instant::now();
    let mut out = Vec::new();
    let r = set
        .get_object(
            BUCKET,
            "h",
            None,
            &mut out,
            Deadline::after(Duration::from_secs(30)),
        )
        .await
        .expect("get with a hung data disk");
    let took = started.elapsed();
    assert!(out == data, "object differs");
    // 32 blocks: without demotion that would be 32 hedges, without hedging
    // 32 × the 10 s data budget. (A healthy disk slower than the hedge
    // delay on a loaded machine may add a hedge or two; half is generous.)
    assert!(r.hedges >= 1, "{r:?}");
    assert!(
        r.hedges < 16,
        "the hung disk is asked last after one hedge: {r:?}"
    );
    assert!(took < Duration::from_secs(3), "GET took {took:?}");
    assert_eq!(set.stats().false_quorum_loss(), 0);
}
