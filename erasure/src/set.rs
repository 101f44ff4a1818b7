//! [`ErasureSet`]: one set of disks and the object operations over it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use uuid::Uuid;

use disk_io_api::{
    CreateOptions, Deadline, DeleteOptions, Disk, DiskError, DiskId, OpClass, ShardWriter,
};

use crate::codec::{self, Encoder, Geometry, HASH_LEN};
use crate::config::{read_quorum, write_quorum, ErasureConfig};
use crate::error::ErasureError;
use crate::heal::{HealQueue, HealTask};
use crate::meta::{self, ObjectMeta, META_FORMAT};
use crate::metrics;
use crate::offline::OfflineDisk;
use crate::quorum::{Outcome, QuorumOp, SetStats, Tally};

/// One disk's result, `None` when it was not heard from in time.
type Slot<T> = Option<Result<T, DiskError>>;

/// What set initialisation found on one disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskStatus {
    /// The disk answered with the identity expected at its position.
    Ok(DiskId),
    /// The disk did not answer in time or answered an error; it stays in
    /// the set (it may come back) and counts as missing until it does.
    Missing(DiskError),
    /// The disk belongs elsewhere; it is kept out of the set.
    WrongId {
        /// Set index and disk index this position expects.
        expected: (u32, u32),
        /// What the disk says it is.
        found: DiskId,
    },
}

/// Result of set initialisation.
#[derive(Clone, Debug)]
pub struct SetReport {
    /// Set index.
    pub set: usize,
    /// Per disk position.
    pub disks: Vec<DiskStatus>,
}

impl SetReport {
    /// Disks that answered with the right identity.
    pub fn available(&self) -> usize {
        self.disks
            .iter()
            .filter(|d| matches!(d, DiskStatus::Ok(_)))
            .count()
    }
}

/// What a successful PUT did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutReport {
    /// The new version.
    pub version: Uuid,
    /// Object size.
    pub size: u64,
    /// Disk positions that hold the new version (shard and metadata).
    pub written: Vec<usize>,
    /// Disk positions that missed it (queued for healing).
    pub missed: Vec<usize>,
}

/// What a GET found besides the bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetReport {
    /// Bytes written to the sink.
    pub bytes: u64,
    /// Disk positions whose shard blocks failed their checksum.
    pub bitrot: Vec<usize>,
    /// Disk positions whose metadata or shard was missing or stale.
    pub missing: Vec<usize>,
    /// Shard reads hedged to another disk.
    pub hedges: u64,
}

/// Object metadata as returned by `stat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// Version id.
    pub version: Uuid,
    /// Modification time.
    pub modified: SystemTime,
    /// Data shards.
    pub data: usize,
    /// Parity shards.
    pub parity: usize,
}

/// What healing one object did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealReport {
    /// Positions whose shard and metadata were already good.
    pub good: Vec<usize>,
    /// Positions rebuilt and verified after writing.
    pub healed: Vec<usize>,
    /// Positions that could not be checked (unavailable now).
    pub skipped: Vec<usize>,
    /// Positions whose rebuild failed.
    pub failed: Vec<(usize, DiskError)>,
}

/// What one scanner pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Objects checked.
    pub objects: usize,
    /// Shards rebuilt.
    pub healed: usize,
    /// Objects whose heal failed.
    pub failed: usize,
    /// Whether the pass stopped early (entry bound or deadline).
    pub truncated: bool,
}

/// A set of disks holding objects with `data + parity` erasure coding.
#[derive(Debug)]
pub struct ErasureSet {
    index: usize,
    disks: Vec<Arc<dyn Disk>>,
    data: usize,
    parity: usize,
    cfg: Arc<ErasureConfig>,
    heal: Arc<HealQueue>,
    stats: Arc<SetStats>,
    /// When each disk was last left behind by a quorum (dropped from a
    /// write, or not heard from within the straggler grace). While that is
    /// recent (`straggler_memory`), a quorum does not wait for it at all.
    straggled: std::sync::Mutex<Vec<Option<Instant>>>,
}

/// A disk call bounded by `deadline` even if the disk ignores it (a
/// backstop: every disk must honour its deadline itself).
async fn bounded<T>(
    class: OpClass,
    deadline: Deadline,
    fut: impl std::future::Future<Output = Result<T, DiskError>>,
) -> Result<T, DiskError> {
    let started = Instant::now();
    match tokio::time::timeout_at(deadline.instant().into(), fut).await {
        Ok(r) => r,
        Err(_) => Err(DiskError::DeadlineExceeded {
            op: class,
            waited: started.elapsed(),
        }),
    }
}

fn deadline_of(cfg: &ErasureConfig, class: OpClass, deadline: Deadline) -> Deadline {
    deadline.min(cfg.timeouts.deadline(class))
}

/// Delete a file in the background, under its own deadline (never awaited
/// by an object operation).
fn spawn_cleanup(disk: Arc<dyn Disk>, cfg: &ErasureConfig, vol: String, path: String) {
    let d = cfg.timeouts.deadline(OpClass::Delete);
    tokio::spawn(async move {
        let r = bounded(
            OpClass::Delete,
            d,
            disk.delete(&vol, &path, DeleteOptions::default(), d),
        )
        .await;
        if let Err(e) = r {
            if e != DiskError::FileNotFound {
                tracing::debug!(disk = disk.label(), vol, path, error = %e, "cleanup failed");
            }
        }
    });
}

enum Msg {
    Block(Arc<Vec<u8>>),
    Finish,
}

enum TaskEnd {
    Committed,
    Failed(DiskError),
}

struct WriteTarget {
    tmp_vol: String,
    tmp: String,
    vol: String,
    dst: String,
}

/// One disk's side of a write: create the temporary shard file, append
/// each block, finish, rename into place.
async fn writer_task(
    disk: Arc<dyn Disk>,
    cfg: Arc<ErasureConfig>,
    t: WriteTarget,
    mut rx: mpsc::Receiver<Msg>,
    deadline: Deadline,
) -> TaskEnd {
    let dl = |c| deadline_of(&cfg, c, deadline);
    let create = |d: Deadline| {
        bounded(
            OpClass::CreateFile,
            d,
            disk.create_file(&t.tmp_vol, &t.tmp, CreateOptions::default(), d),
        )
    };
    let mut w: Box<dyn ShardWriter> = match create(dl(OpClass::CreateFile)).await {
        Ok(w) => w,
        Err(DiskError::VolumeNotFound) => {
            let d = dl(OpClass::MakeVol);
            match bounded(OpClass::MakeVol, d, disk.make_vol(&t.tmp_vol, d)).await {
                Ok(()) | Err(DiskError::VolumeExists) => {}
                Err(e) => return TaskEnd::Failed(e),
            }
            match create(dl(OpClass::CreateFile)).await {
                Ok(w) => w,
                Err(e) => return TaskEnd::Failed(e),
            }
        }
        Err(e) => return TaskEnd::Failed(e),
    };
    let fail = |e: DiskError| {
        spawn_cleanup(disk.clone(), &cfg, t.tmp_vol.clone(), t.tmp.clone());
        TaskEnd::Failed(e)
    };
    loop {
        let msg = match tokio::time::timeout_at(deadline.instant().into(), rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => {
                return fail(DiskError::DeadlineExceeded {
                    op: OpClass::Append,
                    waited: Duration::ZERO,
                })
            }
        };
        match msg {
            Msg::Block(b) => {
                let d = dl(OpClass::Append);
                if let Err(e) = bounded(OpClass::Append, d, w.append(&b, d)).await {
                    return fail(e);
                }
            }
            Msg::Finish => {
                let d = dl(OpClass::Finish);
                if let Err(e) = bounded(OpClass::Finish, d, w.finish(d)).await {
                    return fail(e);
                }
                let d = dl(OpClass::RenameFile);
                let r = bounded(
                    OpClass::RenameFile,
                    d,
                    disk.rename_file(&t.tmp_vol, &t.tmp, &t.vol, &t.dst, d),
                )
                .await;
                return match r {
                    Ok(()) => TaskEnd::Committed,
                    Err(e) => fail(e),
                };
            }
        }
    }
}

struct Writers {
    txs: Vec<Option<mpsc::Sender<Msg>>>,
    handles: Vec<Option<tokio::task::JoinHandle<TaskEnd>>>,
    /// Why a position was dropped from the write.
    dropped: Vec<Option<DiskError>>,
}

impl Writers {
    fn live(&self) -> usize {
        self.dropped.iter().filter(|d| d.is_none()).count()
    }

    fn drop_disk(&mut self, set: usize, pos: usize, e: DiskError, why: &'static str) {
        if self.dropped[pos].is_some() {
            return;
        }
        tracing::warn!(set, pos, error = %e, why, "disk dropped from write");
        metrics::write_dropped(set, why);
        self.txs[pos] = None;
        if let Some(h) = self.handles[pos].take() {
            h.abort();
        }
        self.dropped[pos] = Some(e);
    }

    fn abort_all(&mut self) {
        for pos in 0..self.txs.len() {
            self.txs[pos] = None;
            if let Some(h) = self.handles[pos].take() {
                h.abort();
            }
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.abort_all();
    }
}

impl ErasureSet {
    /// Build a set over `disks` (position = index) with `parity` parity
    /// shards. Every disk's id is checked in parallel under `deadline`; the
    /// ones that do not answer by then are recorded as missing (and kept:
    /// they may come back), the ones with another set's id are kept out.
    pub async fn open(
        index: usize,
        disks: Vec<Arc<dyn Disk>>,
        parity: usize,
        cfg: Arc<ErasureConfig>,
        heal: Arc<HealQueue>,
        deadline: Deadline,
    ) -> Result<(ErasureSet, SetReport), ErasureError> {
        cfg.validate()?;
        let n = disks.len();
        if n < 2 || parity == 0 || parity > n / 2 {
            return Err(ErasureError::InvalidTopology {
                reason: format!("a set of {n} disks cannot have {parity} parity shards"),
            });
        }
        let mut set = ErasureSet {
            index,
            disks,
            data: n - parity,
            parity,
            cfg,
            heal,
            stats: Arc::new(SetStats::default()),
            straggled: std::sync::Mutex::new(vec![None; n]),
        };
        let ids = set
            .gather(
                deadline,
                OpClass::DiskId,
                |_, disk, d| Box::pin(async move { disk.disk_id(d).await }),
                |_| false,
                false,
            )
            .await;
        let mut statuses = Vec::with_capacity(n);
        for (pos, r) in ids.into_iter().enumerate() {
            let expected = (index as u32, pos as u32);
            statuses.push(match r {
                Some(Ok(id)) if (id.set_index, id.disk_index) == expected => DiskStatus::Ok(id),
                Some(Ok(found)) => {
                    tracing::error!(set = index, pos, ?found, "disk belongs elsewhere; kept out");
                    set.disks[pos] = Arc::new(OfflineDisk::new(format!(
                        "{} (wrong id)",
                        set.disks[pos].label()
                    )));
                    DiskStatus::WrongId { expected, found }
                }
                Some(Err(e)) => DiskStatus::Missing(e),
                None => DiskStatus::Missing(DiskError::DeadlineExceeded {
                    op: OpClass::DiskId,
                    waited: Duration::ZERO,
                }),
            });
        }
        let report = SetReport {
            set: index,
            disks: statuses,
        };
        metrics::set_gauges(
            index,
            report.available(),
            set.read_quorum(),
            set.write_quorum(),
        );
        Ok((set, report))
    }

    /// Set index.
    pub fn index(&self) -> usize {
        self.index
    }
    /// The disks, by position.
    pub fn disks(&self) -> &[Arc<dyn Disk>] {
        &self.disks
    }
    /// Data shards.
    pub fn data(&self) -> usize {
        self.data
    }
    /// Parity shards.
    pub fn parity(&self) -> usize {
        self.parity
    }
    /// Disks a write needs.
    pub fn write_quorum(&self) -> usize {
        write_quorum(self.data, self.parity)
    }
    /// Disks a read needs.
    pub fn read_quorum(&self) -> usize {
        read_quorum(self.data, self.parity)
    }
    /// Counters of this set (false quorum loss among them).
    pub fn stats(&self) -> &Arc<SetStats> {
        &self.stats
    }
    /// The heal queue this set pushes to.
    pub fn heal_queue(&self) -> &Arc<HealQueue> {
        &self.heal
    }

    fn n(&self) -> usize {
        self.disks.len()
    }

    fn admits(&self, pos: usize) -> bool {
        self.disks[pos].state().admits()
    }

    /// Whether disk `pos` was left behind by a quorum recently.
    fn straggling(&self, pos: usize) -> bool {
        let g = self.straggled.lock().expect("straggled lock");
        g[pos].is_some_and(|at| at.elapsed() < self.cfg.straggler_memory)
    }

    /// Record that disk `pos` kept up (`false`) or was left behind
    /// (`true`). A mark is not renewed while it holds, so a disk that is
    /// merely slow gets a full grace again every `straggler_memory` and can
    /// clear itself by keeping up.
    fn mark_straggler(&self, pos: usize, behind: bool) {
        let mut g = self.straggled.lock().expect("straggled lock");
        if !behind {
            g[pos] = None;
        } else if g[pos].is_none_or(|at| at.elapsed() >= self.cfg.straggler_memory) {
            g[pos] = Some(Instant::now());
        }
    }

    /// The grace the disks in `waiting` get once a quorum answered after
    /// `took`: none when every one of them was left behind recently (a hung
    /// disk costs one grace per `straggler_memory`, not one per call).
    fn grace_for(&self, took: Duration, waiting: impl IntoIterator<Item = usize>) -> Duration {
        let mut any = false;
        for pos in waiting {
            any = true;
            if !self.straggling(pos) {
                return self.cfg.straggler_grace(took);
            }
        }
        if any {
            Duration::ZERO
        } else {
            self.cfg.straggler_grace(took)
        }
    }

    /// Run `f` on every disk at once, each under `min(deadline, its class
    /// budget)`. Returns when all answered, or at `deadline`, or — once
    /// `stop` holds — right away (`stragglers` false) or after the
    /// straggler grace (`ErasureConfig::straggler_grace` of the time it
    /// took to get there); disks not heard from by then are `None`.
    async fn gather<T: Send + 'static>(
        &self,
        deadline: Deadline,
        class: OpClass,
        f: impl Fn(usize, Arc<dyn Disk>, Deadline) -> BoxFuture<'static, Result<T, DiskError>>,
        stop: impl Fn(&[Slot<T>]) -> bool,
        stragglers: bool,
    ) -> Vec<Slot<T>> {
        let started = Instant::now();
        let mut results: Vec<Slot<T>> = (0..self.n()).map(|_| None).collect();
        let mut futs: FuturesUnordered<_> = self
            .disks
            .iter()
            .enumerate()
            .map(|(pos, disk)| {
                let d = deadline_of(&self.cfg, class, deadline);
                let fut = f(pos, disk.clone(), d);
                async move { (pos, bounded(class, d, fut).await) }
            })
            .collect();
        let mut until = deadline;
        let mut stopped = false;
        while let Ok(Some((pos, r))) =
            tokio::time::timeout_at(until.instant().into(), futs.next()).await
        {
            results[pos] = Some(r);
            if stragglers
                && !results[pos]
                    .as_ref()
                    .is_some_and(|r| r.as_ref().is_err_and(DiskError::is_unavailable))
            {
                self.mark_straggler(pos, false);
            }
            if !stopped && stop(&results) {
                stopped = true;
                let grace = if stragglers {
                    let waiting = (0..results.len()).filter(|&p| results[p].is_none());
                    self.grace_for(started.elapsed(), waiting.collect::<Vec<_>>())
                } else {
                    Duration::ZERO
                };
                until = deadline.min(Deadline::after(grace));
            }
            // Past the stop, once only disks known to lag are left: stop.
            if stopped
                && stragglers
                && (0..results.len())
                    .filter(|&p| results[p].is_none())
                    .all(|p| self.straggling(p))
            {
                break;
            }
        }
        if stragglers && stopped {
            for (pos, r) in results.iter().enumerate() {
                if r.is_none() {
                    self.mark_straggler(pos, true);
                }
            }
        }
        results
    }

    /// Tally results where success is `Ok`.
    fn tally<T>(&self, op: QuorumOp, needed: usize, results: &[Slot<T>]) -> Tally {
        let mut t = Tally::new(op, needed, self.n());
        for (pos, r) in results.iter().enumerate() {
            match r {
                Some(r) => t.add(r, self.admits(pos)),
                None => t.missing(self.admits(pos)),
            }
        }
        t
    }

    fn check_bucket(&self, bucket: &str) -> Result<(), ErasureError> {
        let bad = |reason| {
            Err(ErasureError::InvalidBucketName {
                name: bucket.to_string(),
                reason,
            })
        };
        if bucket.is_empty() || bucket.len() > 255 {
            return bad("empty or longer than 255 bytes");
        }
        if bucket.contains('/') || bucket.contains('\0') {
            return bad("contains '/' or NUL");
        }
        if bucket.starts_with('.') {
            return bad("starts with '.'");
        }
        if bucket == self.cfg.tmp_volume {
            return bad("is the temporary volume");
        }
        Ok(())
    }

    /// Publish the set's gauges: disks whose health admits callers now,
    /// and the quorums.
    fn refresh_gauges(&self) {
        let available = (0..self.n()).filter(|&p| self.admits(p)).count();
        metrics::set_gauges(
            self.index,
            available,
            self.read_quorum(),
            self.write_quorum(),
        );
    }

    /// The verdict of a tally, except that a shortfall of answers after the
    /// caller's own deadline has passed is [`ErasureError::DeadlineExceeded`]:
    /// the caller ran out of time, which says nothing about the disks (and
    /// is never reported as disks missing).
    fn decide(&self, t: &Tally, deadline: Deadline) -> Result<Outcome, ErasureError> {
        self.refresh_gauges();
        if t.short_of_answers() && deadline.is_expired() {
            return Err(ErasureError::DeadlineExceeded {
                op: t.op().as_str(),
            });
        }
        Ok(t.verdict(self.index, &self.stats)?)
    }

    fn push_heal(&self, bucket: &str, object: &str) {
        self.heal.push(HealTask {
            set: self.index,
            bucket: bucket.to_string(),
            object: object.to_string(),
        });
    }

    /// Create a bucket (a volume on every disk) with write quorum; an
    /// existing one counts as created.
    pub async fn make_bucket(&self, bucket: &str, deadline: Deadline) -> Result<(), ErasureError> {
        self.check_bucket(bucket)?;
        let b = bucket.to_string();
        let wq = self.write_quorum();
        let mut results = self
            .gather(
                deadline,
                OpClass::MakeVol,
                move |_, disk, d| {
                    let b = b.clone();
                    Box::pin(async move { disk.make_vol(&b, d).await })
                },
                |rs| {
                    rs.iter()
                        .filter(|r| matches!(r, Some(Ok(()) | Err(DiskError::VolumeExists))))
                        .count()
                        >= wq
                },
                true,
            )
            .await;
        for r in results.iter_mut() {
            if matches!(r, Some(Err(DiskError::VolumeExists))) {
                *r = Some(Ok(()));
            }
        }
        let t = self.tally(QuorumOp::MakeBucket, self.write_quorum(), &results);
        match self.decide(&t, deadline)? {
            Outcome::Met { .. } => Ok(()),
            Outcome::Agreed(e) => Err(ErasureError::Disk(e)),
        }
    }

    /// Write an object, streamed from `src` in blocks of `block_size`.
    ///
    /// Each block is encoded into `data + parity` shards with a checksum
    /// each and handed to one writer task per disk through a bounded queue.
    /// A disk that fails, or whose queue stays full for the straggler grace
    /// after a write quorum took the block, is dropped from the write; the
    /// write goes on while write quorum holds. Shard files are staged in
    /// the temporary volume and renamed into place, then the metadata is
    /// written with quorum: until then no reader sees the new version, and
    /// a failed write leaves nothing visible.
    pub async fn put_object(
        &self,
        bucket: &str,
        name: &str,
        src: &mut (dyn AsyncRead + Unpin + Send),
        deadline: Deadline,
    ) -> Result<PutReport, ErasureError> {
        self.check_bucket(bucket)?;
        meta::check_name(name)?;
        let n = self.n();
        let version = Uuid::new_v4();
        let distribution = meta::distribution(name, n);
        let shard_file = meta::shard_path(name, version);
        let mut w = Writers {
            txs: Vec::with_capacity(n),
            handles: Vec::with_capacity(n),
            dropped: vec![None; n],
        };
        for disk in &self.disks {
            let (tx, rx) = mpsc::channel(self.cfg.write_queue_blocks);
            let target = WriteTarget {
                tmp_vol: self.cfg.tmp_volume.clone(),
                tmp: version.to_string(),
                vol: bucket.to_string(),
                dst: shard_file.clone(),
            };
            w.txs.push(Some(tx));
            w.handles.push(Some(tokio::spawn(writer_task(
                disk.clone(),
                self.cfg.clone(),
                target,
                rx,
                deadline,
            ))));
        }
        let r = self
            .put_stream(&mut w, src, &distribution, deadline, bucket, name, version)
            .await;
        match r {
            Ok(report) => Ok(report),
            Err(e) => {
                w.abort_all();
                // Nothing is visible (no metadata names this version); take
                // the staged and renamed shard files away in the background.
                for (pos, disk) in self.disks.iter().enumerate() {
                    spawn_cleanup(
                        disk.clone(),
                        &self.cfg,
                        self.cfg.tmp_volume.clone(),
                        version.to_string(),
                    );
                    // This version's shard file, then the directories its
                    // rename created if nothing else is in them.
                    self.spawn_object_cleanup(pos, bucket, name, Shards::Only(version), true);
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn put_stream(
        &self,
        w: &mut Writers,
        src: &mut (dyn AsyncRead + Unpin + Send),
        distribution: &[usize],
        deadline: Deadline,
        bucket: &str,
        name: &str,
        version: Uuid,
    ) -> Result<PutReport, ErasureError> {
        let n = self.n();
        let block_size = self.cfg.block_size;
        let mut geo = Geometry {
            data: self.data,
            parity: self.parity,
            block_size: block_size as u64,
            size: 0,
        };
        let mut enc = Encoder::new(self.data, self.parity);
        let mut hashers: Vec<blake3::Hasher> = (0..n).map(|_| blake3::Hasher::new()).collect();
        let mut buf = vec![0u8; block_size];
        let mut size: u64 = 0;
        loop {
            let len = fill(src, &mut buf, deadline).await?;
            if len == 0 {
                break;
            }
            size += len as u64;
            let shards = enc.encode(&buf[..len], geo.shard_len(len as u64))?;
            for (i, s) in shards.iter().enumerate() {
                hashers[i].update(&s[..HASH_LEN]);
            }
            let shards: Vec<Arc<Vec<u8>>> = shards.into_iter().map(Arc::new).collect();
            let msgs: Vec<Msg> = (0..n)
                .map(|pos| Msg::Block(shards[distribution[pos]].clone()))
                .collect();
            self.send_all(w, msgs, deadline).await?;
            if len < block_size {
                break;
            }
        }
        geo.size = size;
        self.send_all(w, (0..n).map(|_| Msg::Finish).collect(), deadline)
            .await?;
        self.await_commits(w, deadline).await?;

        let meta = ObjectMeta {
            format: META_FORMAT,
            version,
            size,
            mod_time_ns: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            data: self.data,
            parity: self.parity,
            block_size: block_size as u64,
            checksum: "blake3".to_string(),
            distribution: distribution.to_vec(),
            shard_digests: hashers
                .into_iter()
                .map(|h| h.finalize().to_hex().to_string())
                .collect(),
        };
        debug_assert_eq!(geo.shard_file_size(), meta.geometry().shard_file_size());
        let bytes = Arc::new(meta.to_bytes());
        let committed: Vec<bool> = w.dropped.iter().map(Option::is_none).collect();
        let (b, p) = (bucket.to_string(), meta::meta_path(name));
        let wq = self.write_quorum();
        let committed2 = committed.clone();
        let results = self
            .gather(
                deadline,
                OpClass::WriteAll,
                move |pos, disk, d| {
                    let (b, p, bytes) = (b.clone(), p.clone(), bytes.clone());
                    let skip = !committed2[pos];
                    Box::pin(async move {
                        if skip {
                            // Dropped from the write: no metadata without
                            // its shard. (Its data-phase error is what the
                            // tally below counts for it; this placeholder is
                            // of the unavailable family so it does not count
                            // as the disk keeping up.)
                            return Err(DiskError::Busy {
                                reason: "dropped from this write".to_string(),
                            });
                        }
                        disk.write_all(&b, &p, &bytes, d).await
                    })
                },
                |rs| rs.iter().filter(|r| matches!(r, Some(Ok(())))).count() >= wq,
                true,
            )
            .await;
        let mut t = Tally::new(QuorumOp::WriteMeta, wq, n);
        let mut written = Vec::new();
        let mut missed = Vec::new();
        for (pos, result) in results.iter().enumerate() {
            let admits = self.admits(pos);
            match (&w.dropped[pos], result) {
                (Some(e), _) => t.err(e.clone(), admits),
                (None, Some(Ok(()))) => {
                    t.ok(admits);
                    written.push(pos);
                    continue;
                }
                (None, Some(Err(e))) => t.err(e.clone(), admits),
                (None, None) => t.missing(admits),
            }
            missed.push(pos);
        }
        match self.decide(&t, deadline) {
            Ok(Outcome::Met { .. }) => {}
            Ok(Outcome::Agreed(e)) => {
                self.rollback_meta(bucket, name, &written);
                return Err(agreed(e));
            }
            Err(e) => {
                self.rollback_meta(bucket, name, &written);
                return Err(e);
            }
        }
        if !missed.is_empty() {
            self.push_heal(bucket, name);
        }
        // Older versions' shard files on the disks that took this one.
        for &pos in &written {
            self.spawn_object_cleanup(pos, bucket, name, Shards::AllBut(version), false);
        }
        Ok(PutReport {
            version,
            size,
            written,
            missed,
        })
    }

    /// The metadata landed on too few disks: take it away again so the
    /// failed version is not visible (those disks lose the previous
    /// version's metadata and are queued for healing).
    fn rollback_meta(&self, bucket: &str, name: &str, written: &[usize]) {
        for &pos in written {
            spawn_cleanup(
                self.disks[pos].clone(),
                &self.cfg,
                bucket.to_string(),
                meta::meta_path(name),
            );
        }
        if !written.is_empty() {
            self.push_heal(bucket, name);
        }
    }

    /// In the background, on disk `pos`: delete the object's shard files
    /// that `which` names, then, when `prune`, the object's directory and
    /// its parents as long as they are empty (a non-recursive delete
    /// refuses a directory with anything in it, so a live object or a
    /// neighbour is never touched).
    fn spawn_object_cleanup(
        &self,
        pos: usize,
        bucket: &str,
        name: &str,
        which: Shards,
        prune: bool,
    ) {
        let disk = self.disks[pos].clone();
        let (b, dir) = (bucket.to_string(), name.to_string());
        let d = self.cfg.timeouts.deadline(OpClass::Delete);
        tokio::spawn(async move {
            if let Ok(entries) = bounded(OpClass::ListDir, d, disk.list_dir(&b, &dir, d)).await {
                for e in entries {
                    if which.selects(&e) {
                        let path = format!("{dir}/{e}");
                        let opts = DeleteOptions::default();
                        let _ = bounded(OpClass::Delete, d, disk.delete(&b, &path, opts, d)).await;
                    }
                }
            }
            if !prune {
                return;
            }
            let mut at = Some(dir.as_str());
            while let Some(p) = at {
                let opts = DeleteOptions::default();
                if bounded(OpClass::Delete, d, disk.delete(&b, p, opts, d))
                    .await
                    .is_err()
                {
                    return;
                }
                at = p.rsplit_once('/').map(|(parent, _)| parent);
            }
        });
    }

    /// Hand one message to every live writer. Waits until a write quorum
    /// took it, then at most the straggler grace for the others, and drops
    /// those still full or gone.
    async fn send_all(
        &self,
        w: &mut Writers,
        msgs: Vec<Msg>,
        deadline: Deadline,
    ) -> Result<(), ErasureError> {
        let wq = self.write_quorum();
        let n = self.n();
        let mut delivered = vec![false; n];
        let mut accepted = 0usize;
        let mut pending = FuturesUnordered::new();
        let mut closed = Vec::new();
        for (pos, msg) in msgs.into_iter().enumerate() {
            let Some(tx) = w.txs[pos].clone() else {
                continue;
            };
            match tx.try_send(msg) {
                Ok(()) => {
                    accepted += 1;
                    delivered[pos] = true;
                }
                Err(mpsc::error::TrySendError::Full(msg)) => {
                    pending.push(async move { (pos, tx.send(msg).await.is_ok()) });
                }
                Err(mpsc::error::TrySendError::Closed(_)) => closed.push(pos),
            }
        }
        let started = Instant::now();
        let mut waiting: Vec<usize> = Vec::new();
        for (pos, &d) in delivered.iter().enumerate() {
            if !d && w.txs[pos].is_some() && !closed.contains(&pos) {
                waiting.push(pos);
            }
        }
        let mut until = if accepted >= wq {
            let grace = self.grace_for(Duration::ZERO, waiting.iter().copied());
            deadline.min(Deadline::after(grace))
        } else {
            deadline
        };
        while let Ok(Some((pos, ok))) =
            tokio::time::timeout_at(until.instant().into(), pending.next()).await
        {
            waiting.retain(|&p| p != pos);
            if ok {
                delivered[pos] = true;
                accepted += 1;
                if accepted == wq {
                    let grace = self.grace_for(started.elapsed(), waiting.iter().copied());
                    until = deadline.min(Deadline::after(grace));
                }
            } else {
                closed.push(pos);
            }
            // Past quorum, once only disks known to lag are left: stop.
            if accepted >= wq && waiting.iter().all(|&p| self.straggling(p)) {
                break;
            }
        }
        // Sends still pending are cancelled here: their disks did not get
        // this message and leave the write.
        drop(pending);
        // A closed queue means the writer task ended with an error: get it.
        for &pos in &closed {
            let e = match w.handles[pos].take() {
                Some(h) => match bounded(OpClass::Append, deadline, async {
                    h.await.map_err(|_| DiskError::ShutDown)
                })
                .await
                {
                    Ok(TaskEnd::Failed(e)) => e,
                    Ok(TaskEnd::Committed) => DiskError::ShutDown,
                    Err(e) => e,
                },
                None => DiskError::ShutDown,
            };
            w.drop_disk(self.index, pos, e, "failed");
        }
        for (pos, &got) in delivered.iter().enumerate() {
            if w.dropped[pos].is_none() && !got {
                self.mark_straggler(pos, true);
                w.drop_disk(
                    self.index,
                    pos,
                    DiskError::DeadlineExceeded {
                        op: OpClass::Append,
                        waited: started.elapsed(),
                    },
                    "straggler",
                );
            }
        }
        debug_assert!((0..n).all(|p| w.dropped[p].is_some() || delivered[p]));
        self.check_live(w, deadline)
    }

    fn check_live(&self, w: &Writers, deadline: Deadline) -> Result<(), ErasureError> {
        if w.live() >= self.write_quorum() {
            return Ok(());
        }
        let mut t = Tally::new(QuorumOp::WriteData, self.write_quorum(), self.n());
        for pos in 0..self.n() {
            match &w.dropped[pos] {
                Some(e) => t.err(e.clone(), self.admits(pos)),
                None => t.ok(self.admits(pos)),
            }
        }
        match self.decide(&t, deadline) {
            Err(e) => Err(e),
            Ok(Outcome::Agreed(e)) => Err(agreed(e)),
            Ok(Outcome::Met { .. }) => unreachable!("fewer live writers than quorum"),
        }
    }

    /// Wait for the writers' finish + rename: until a write quorum
    /// committed, then at most the straggler grace for the others.
    async fn await_commits(&self, w: &mut Writers, deadline: Deadline) -> Result<(), ErasureError> {
        let wq = self.write_quorum();
        let mut futs = FuturesUnordered::new();
        let mut aborts = Vec::new();
        for pos in 0..self.n() {
            w.txs[pos] = None;
            if let Some(h) = w.handles[pos].take() {
                aborts.push((pos, h.abort_handle()));
                futs.push(async move { (pos, h.await) });
            }
        }
        let mut committed = 0usize;
        let started = Instant::now();
        let mut until = deadline;
        let mut grace_set = false;
        let mut heard = vec![false; self.n()];
        while let Ok(Some((pos, r))) =
            tokio::time::timeout_at(until.instant().into(), futs.next()).await
        {
            heard[pos] = true;
            match r {
                Ok(TaskEnd::Committed) => {
                    committed += 1;
                    self.mark_straggler(pos, false);
                }
                Ok(TaskEnd::Failed(e)) => w.drop_disk(self.index, pos, e, "failed"),
                Err(_) => w.drop_disk(self.index, pos, DiskError::ShutDown, "failed"),
            }
            if committed >= wq {
                let waiting: Vec<usize> = aborts
                    .iter()
                    .map(|(p, _)| *p)
                    .filter(|&p| !heard[p])
                    .collect();
                // Past quorum, once only disks known to lag are left: stop.
                if waiting.iter().all(|&p| self.straggling(p)) {
                    break;
                }
                if !grace_set {
                    grace_set = true;
                    let grace = self.grace_for(started.elapsed(), waiting);
                    until = deadline.min(Deadline::after(grace));
                }
            }
        }
        drop(futs);
        for (pos, abort) in aborts {
            if !heard[pos] {
                abort.abort();
                self.mark_straggler(pos, true);
                w.drop_disk(
                    self.index,
                    pos,
                    DiskError::DeadlineExceeded {
                        op: OpClass::Finish,
                        waited: started.elapsed(),
                    },
                    "straggler",
                );
            }
        }
        self.check_live(w, deadline)
    }

    /// Read the metadata from every disk; returns as soon as a read quorum
    /// of identical copies (or of one answered error) is in. Because write
    /// quorum + read quorum exceeds the set size, the first group to reach
    /// read quorum is the newest committed version.
    async fn read_meta(
        &self,
        bucket: &str,
        name: &str,
        deadline: Deadline,
        wait_all: bool,
    ) -> Result<(ObjectMeta, Vec<MetaState>), ErasureError> {
        self.check_bucket(bucket)?;
        meta::check_name(name)?;
        let n = self.n();
        let rq = self.read_quorum();
        let (b, p) = (bucket.to_string(), meta::meta_path(name));
        let max = self.cfg.max_meta_size;
        let results: Vec<Slot<Result<ObjectMeta, ()>>> = self
            .gather(
                deadline,
                OpClass::ReadAll,
                move |_, disk, d| {
                    let (b, p) = (b.clone(), p.clone());
                    Box::pin(async move {
                        let bytes = disk.read_all(&b, &p, d).await?;
                        if bytes.len() > max {
                            return Ok(Err(()));
                        }
                        Ok(ObjectMeta::from_bytes(&bytes, n).map_err(|_| ()))
                    })
                },
                |rs| !wait_all && !matches!(meta_decision(rs, rq), MetaDecision::Undecided),
                false,
            )
            .await;
        let winner = match meta_decision(&results, rq) {
            MetaDecision::Winner(m) => Some(m),
            MetaDecision::Error | MetaDecision::Undecided => None,
        };
        let mut t = Tally::new(QuorumOp::ReadMeta, rq, n);
        let mut states = Vec::with_capacity(n);
        for (pos, r) in results.iter().enumerate() {
            let admits = self.admits(pos);
            let state = match r {
                None => {
                    t.missing(admits);
                    MetaState::Unknown
                }
                Some(Ok(Ok(m))) if Some(m) == winner.as_ref() => {
                    t.ok(admits);
                    MetaState::Match
                }
                Some(Ok(_)) => {
                    t.disagree(admits);
                    MetaState::Stale
                }
                Some(Err(e)) => {
                    t.err(e.clone(), admits);
                    if e.is_unavailable() {
                        MetaState::Unknown
                    } else {
                        MetaState::Stale
                    }
                }
            };
            states.push(state);
        }
        match self.decide(&t, deadline)? {
            Outcome::Met { .. } => Ok((winner.expect("met implies a winner"), states)),
            Outcome::Agreed(e) => Err(agreed(e)),
        }
    }

    /// Size, version and time of an object (metadata read quorum).
    pub async fn stat_object(
        &self,
        bucket: &str,
        name: &str,
        deadline: Deadline,
    ) -> Result<ObjectInfo, ErasureError> {
        let (m, _) = self.read_meta(bucket, name, deadline, false).await?;
        Ok(ObjectInfo {
            size: m.size,
            version: m.version,
            modified: SystemTime::UNIX_EPOCH + Duration::from_nanos(m.mod_time_ns),
            data: m.data,
            parity: m.parity,
        })
    }

    /// Read `len` bytes at `offset` of an object (the whole object with
    /// `None`) into `out`. Data comes from the first `data` good shards;
    /// a shard read that has not answered after `hedge_delay` is hedged to
    /// another disk (and that disk is asked last for the rest of the
    /// object); every shard block is verified; bad or missing shards are
    /// reconstructed from parity and the object queued for healing.
    pub async fn get_object(
        &self,
        bucket: &str,
        name: &str,
        range: Option<(u64, u64)>,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        deadline: Deadline,
    ) -> Result<GetReport, ErasureError> {
        let (m, states) = self.read_meta(bucket, name, deadline, false).await?;
        let geo = m.geometry();
        let (offset, len) = match range {
            None => (0, m.size),
            Some((o, l)) => {
                if o.checked_add(l).is_none_or(|end| end > m.size) {
                    return Err(ErasureError::InvalidRange {
                        offset: o,
                        len: l,
                        size: m.size,
                    });
                }
                (o, l)
            }
        };
        let mut report = GetReport::default();
        let n = self.n();
        // Preference: disks with matching metadata holding data shards,
        // then those holding parity, then the unknown, then the stale.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&pos| {
            let rank = match states[pos] {
                MetaState::Match => 0,
                MetaState::Unknown => 2,
                MetaState::Stale => 3,
            };
            (
                rank,
                usize::from(m.distribution[pos] >= m.data),
                m.distribution[pos],
            )
        });
        for (pos, s) in states.iter().enumerate() {
            // Unknown is "not heard from before quorum", not missing.
            if *s == MetaState::Stale {
                report.missing.push(pos);
            }
        }
        let mut bad = vec![false; n];
        let shard_file = meta::shard_path(name, m.version);
        if len > 0 {
            let first = offset / geo.block_size;
            let last = (offset + len - 1) / geo.block_size;
            // One block read ahead: block b+1's shard reads (and decode)
            // run while block b goes to the sink.
            let mut next = Some(
                self.read_block(
                    bucket,
                    &shard_file,
                    &m,
                    first,
                    &mut order,
                    &mut bad,
                    &mut report,
                    deadline,
                )
                .await?,
            );
            for b in first..=last {
                let shards = next.take().expect("read ahead");
                let block_start = b * geo.block_size;
                let block_len = geo.block_len(b) as usize;
                let from = offset.saturating_sub(block_start) as usize;
                let to = ((offset + len - block_start) as usize).min(block_len);
                let shard_len = geo.shard_len(block_len as u64);
                let write = write_range(&shards[..m.data], shard_len, from, to, out, deadline);
                if b < last {
                    let (ahead, written) = tokio::join!(
                        self.read_block(
                            bucket,
                            &shard_file,
                            &m,
                            b + 1,
                            &mut order,
                            &mut bad,
                            &mut report,
                            deadline,
                        ),
                        write
                    );
                    written?;
                    next = Some(ahead?);
                } else {
                    write.await?;
                }
                report.bytes += (to - from) as u64;
            }
        }
        tokio::time::timeout_at(deadline.instant().into(), out.flush())
            .await
            .map_err(|_| ErasureError::DeadlineExceeded { op: "get_object" })?
            .map_err(ErasureError::stream)?;
        if !report.bitrot.is_empty() || !report.missing.is_empty() {
            self.push_heal(bucket, name);
        }
        Ok(report)
    }

    /// Read block `b`: `data` verified shards (without checksums) by
    /// shard index, reconstructing missing data shards.
    #[allow(clippy::too_many_arguments)]
    async fn read_block(
        &self,
        bucket: &str,
        shard_file: &str,
        m: &ObjectMeta,
        b: u64,
        order: &mut Vec<usize>,
        bad: &mut [bool],
        report: &mut GetReport,
        deadline: Deadline,
    ) -> Result<Vec<Vec<u8>>, ErasureError> {
        let geo = m.geometry();
        let (off, blen) = geo.shard_block(b);
        let shard_len = blen - HASH_LEN;
        let k = m.data;
        let n = self.n();
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; n];
        let mut errors: Vec<Option<DiskError>> = vec![None; n];
        let mut bitrot = vec![false; n];
        let mut got = 0usize;
        let mut outstanding: Vec<usize> = Vec::new();
        let mut futs = FuturesUnordered::new();
        let candidates: Vec<usize> = order.iter().copied().filter(|&p| !bad[p]).collect();
        let mut next = 0usize;
        let launch = |pos: usize, futs: &mut FuturesUnordered<_>| {
            let disk = self.disks[pos].clone();
            let (bk, path) = (bucket.to_string(), shard_file.to_string());
            let d = deadline_of(&self.cfg, OpClass::ReadFileAt, deadline);
            let fut: BoxFuture<'static, (usize, Result<Vec<u8>, DiskError>)> =
                Box::pin(async move {
                    let r = bounded(
                        OpClass::ReadFileAt,
                        d,
                        disk.read_file_at(&bk, &path, off, blen, d),
                    )
                    .await;
                    (pos, r)
                });
            futs.push(fut);
        };
        while next < candidates.len() && outstanding.len() < k {
            launch(candidates[next], &mut futs);
            outstanding.push(candidates[next]);
            next += 1;
        }
        let mut hedge_at = tokio::time::Instant::now() + self.cfg.hedge_delay;
        let mut slow: Vec<usize> = Vec::new();
        while got < k {
            if futs.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                Some((pos, r)) = futs.next() => {
                    outstanding.retain(|&p| p != pos);
                    match r {
                        Ok(mut buf) if buf.len() == blen && codec::verify(&buf) => {
                            buf.drain(..HASH_LEN);
                            shards[m.distribution[pos]] = Some(buf);
                            got += 1;
                        }
                        Ok(_) => {
                            tracing::warn!(set = self.index, pos, block = b, "bitrot: shard block checksum mismatch");
                            self.stats.add_bitrot(self.index);
                            bitrot[pos] = true;
                            bad[pos] = true;
                            if !report.bitrot.contains(&pos) {
                                report.bitrot.push(pos);
                            }
                        }
                        Err(e) => {
                            bad[pos] = true;
                            if !report.missing.contains(&pos) {
                                report.missing.push(pos);
                            }
                            errors[pos] = Some(e);
                        }
                    }
                    // Replace a failed read at once.
                    while got + outstanding.len() < k && next < candidates.len() {
                        launch(candidates[next], &mut futs);
                        outstanding.push(candidates[next]);
                        next += 1;
                    }
                }
                () = tokio::time::sleep_until(hedge_at) => {
                    // Hedge: every read still outstanding gets a stand-in,
                    // and its disk goes last for the rest of the object.
                    let late: Vec<usize> = outstanding.iter().copied().filter(|p| !slow.contains(p)).collect();
                    for pos in late {
                        slow.push(pos);
                        if next < candidates.len() {
                            launch(candidates[next], &mut futs);
                            outstanding.push(candidates[next]);
                            next += 1;
                            report.hedges += 1;
                            metrics::hedge(self.index);
                        }
                    }
                    hedge_at = tokio::time::Instant::now() + self.cfg.hedge_delay;
                }
            }
        }
        drop(futs);
        for pos in slow {
            if let Some(i) = order.iter().position(|&p| p == pos) {
                order.remove(i);
                order.push(pos);
            }
        }
        if got < k {
            let mut t = Tally::new(QuorumOp::ReadData, k, n);
            for pos in 0..n {
                let admits = self.admits(pos);
                if shards[m.distribution[pos]].is_some() {
                    t.ok(admits);
                } else if bitrot[pos] {
                    t.disagree(admits);
                } else if let Some(e) = errors[pos].take() {
                    t.err(e, admits);
                } else {
                    t.missing(admits);
                }
            }
            return match self.decide(&t, deadline) {
                Err(e) => Err(e),
                // One error agreed by `k` disks (e.g. the shard file is
                // missing everywhere): the object is damaged beyond repair.
                Ok(Outcome::Agreed(e)) => Err(agreed(e)),
                Ok(Outcome::Met { .. }) => unreachable!("fewer shards than data"),
            };
        }
        if shards[..k].iter().all(Option::is_some) {
            return Ok(shards
                .into_iter()
                .take(k)
                .map(|s| s.expect("checked"))
                .collect());
        }
        // Decoding is CPU work: off the runtime thread, so the previous
        // block's bytes go to the sink meanwhile (see get_object).
        let parity = m.parity;
        let mut all = tokio::task::spawn_blocking(move || {
            codec::reconstruct(k, parity, shard_len, shards, false)
        })
        .await
        .map_err(|e| ErasureError::Codec {
            reason: format!("decode task: {e}"),
        })??;
        all.truncate(k);
        Ok(all)
    }

    /// Delete an object: its metadata with write quorum (a disk that has
    /// none counts as done), then its shard files in the background.
    pub async fn delete_object(
        &self,
        bucket: &str,
        name: &str,
        deadline: Deadline,
    ) -> Result<(), ErasureError> {
        // Not found on a read quorum is "not found", not a silent success.
        self.read_meta(bucket, name, deadline, false).await?;
        let (b, p) = (bucket.to_string(), meta::meta_path(name));
        let wq = self.write_quorum();
        let mut results = self
            .gather(
                deadline,
                OpClass::Delete,
                move |_, disk, d| {
                    let (b, p) = (b.clone(), p.clone());
                    Box::pin(async move { disk.delete(&b, &p, DeleteOptions::default(), d).await })
                },
                |rs| rs.iter().filter(|r| matches!(r, Some(Ok(())))).count() >= wq,
                true,
            )
            .await;
        for r in results.iter_mut() {
            if matches!(r, Some(Err(DiskError::FileNotFound))) {
                *r = Some(Ok(()));
            }
        }
        let t = self.tally(QuorumOp::Delete, wq, &results);
        match self.decide(&t, deadline)? {
            Outcome::Met { .. } => {}
            Outcome::Agreed(e) => return Err(agreed(e)),
        }
        for (pos, r) in results.iter().enumerate() {
            if matches!(r, Some(Ok(()))) {
                self.spawn_object_cleanup(pos, bucket, name, Shards::All, true);
            } else {
                self.push_heal(bucket, name);
            }
        }
        Ok(())
    }

    /// `list_dir` of `dir` on every disk, each under its own deadline;
    /// with `quorum`, stops a straggler grace after that many listings are
    /// in, otherwise waits for every disk.
    async fn list_everywhere(
        &self,
        bucket: &str,
        dir: &str,
        quorum: Option<usize>,
        deadline: Deadline,
    ) -> Vec<Slot<Vec<String>>> {
        let (b, p) = (bucket.to_string(), dir.to_string());
        self.gather(
            deadline,
            OpClass::ListDir,
            move |_, disk, d| {
                let (b, p) = (b.clone(), p.clone());
                Box::pin(async move { disk.list_dir(&b, &p, d).await })
            },
            |rs| {
                quorum.is_some_and(|q| rs.iter().filter(|r| matches!(r, Some(Ok(_)))).count() >= q)
            },
            true,
        )
        .await
    }

    /// Entries directly under `dir` of a bucket (`""` for the top) that a
    /// read quorum of disks list: object and prefix names (without the
    /// trailing `/`), sorted. An entry on fewer disks is a write in
    /// progress or a failed one, and is left out.
    pub async fn list(
        &self,
        bucket: &str,
        dir: &str,
        deadline: Deadline,
    ) -> Result<Vec<String>, ErasureError> {
        self.check_bucket(bucket)?;
        if !dir.is_empty() {
            meta::check_name(dir)?;
        }
        let results = self
            .list_everywhere(bucket, dir, Some(self.read_quorum()), deadline)
            .await;
        let rq = self.read_quorum();
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        let mut results = results;
        for r in results.iter_mut() {
            if let Some(Ok(entries)) = r {
                for e in entries.iter() {
                    if let Some(d) = e.strip_suffix('/') {
                        *counts.entry(d.to_string()).or_default() += 1;
                    }
                }
            }
            // An empty directory and a missing one say the same here.
            if matches!(r, Some(Err(DiskError::FileNotFound))) {
                *r = Some(Ok(Vec::new()));
            }
        }
        let t = self.tally(QuorumOp::List, rq, &results);
        match self.decide(&t, deadline)? {
            Outcome::Met { .. } => {}
            Outcome::Agreed(e) => return Err(agreed(e)),
        }
        Ok(counts
            .into_iter()
            .filter(|(_, c)| *c >= rq)
            .map(|(e, _)| e)
            .collect())
    }

    /// Check every disk's copy of an object and rebuild the missing or
    /// corrupt ones from the good ones; each rebuilt shard is verified
    /// (re-read and checked against the metadata) after writing.
    pub async fn heal_object(
        &self,
        bucket: &str,
        name: &str,
        deadline: Deadline,
    ) -> Result<HealReport, ErasureError> {
        let (m, states) = self.read_meta(bucket, name, deadline, true).await?;
        let n = self.n();
        let shard_file = meta::shard_path(name, m.version);
        let checks = {
            let (b, f, m2) = (bucket.to_string(), shard_file.clone(), m.clone());
            let states = states.clone();
            self.gather(
                deadline,
                OpClass::ReadFileAt,
                move |pos, disk, d| {
                    let (b, f, m2) = (b.clone(), f.clone(), m2.clone());
                    let state = states[pos];
                    Box::pin(async move {
                        if state == MetaState::Unknown {
                            return Err(DiskError::DeadlineExceeded {
                                op: OpClass::ReadAll,
                                waited: Duration::ZERO,
                            });
                        }
                        let ok = verify_shard_file(&*disk, &b, &f, &m2, pos, d).await?;
                        Ok(ok && state == MetaState::Match)
                    })
                },
                |_| false,
                false,
            )
            .await
        };
        let mut report = HealReport::default();
        let mut targets = Vec::new();
        for (pos, c) in checks.into_iter().enumerate() {
            match c {
                Some(Ok(true)) => report.good.push(pos),
                Some(Ok(false)) => targets.push(pos),
                Some(Err(e)) if !e.is_unavailable() => targets.push(pos),
                _ => report.skipped.push(pos),
            }
        }
        if targets.is_empty() {
            return Ok(report);
        }
        if report.good.len() < m.data {
            let mut t = Tally::new(QuorumOp::ReadData, m.data, n);
            for pos in 0..n {
                if report.good.contains(&pos) {
                    t.ok(self.admits(pos));
                } else if targets.contains(&pos) {
                    t.disagree(self.admits(pos));
                } else {
                    t.missing(self.admits(pos));
                }
            }
            self.decide(&t, deadline)?;
        }
        self.rebuild(
            bucket,
            name,
            &m,
            &report.good.clone(),
            &targets,
            &mut report,
            deadline,
        )
        .await;
        for _ in &report.healed {
            metrics::heal_shard(true);
        }
        for _ in &report.failed {
            metrics::heal_shard(false);
        }
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    async fn rebuild(
        &self,
        bucket: &str,
        name: &str,
        m: &ObjectMeta,
        sources: &[usize],
        targets: &[usize],
        report: &mut HealReport,
        deadline: Deadline,
    ) {
        let geo = m.geometry();
        let shard_file = meta::shard_path(name, m.version);
        let tmp = format!("heal-{}", Uuid::new_v4());
        let mut writers: Vec<(usize, Box<dyn ShardWriter>)> = Vec::new();
        for &pos in targets {
            let disk = &self.disks[pos];
            let d = deadline_of(&self.cfg, OpClass::CreateFile, deadline);
            let mut r = bounded(
                OpClass::CreateFile,
                d,
                disk.create_file(&self.cfg.tmp_volume, &tmp, CreateOptions::default(), d),
            )
            .await;
            if matches!(r, Err(DiskError::VolumeNotFound)) {
                let d = deadline_of(&self.cfg, OpClass::MakeVol, deadline);
                let _ = bounded(OpClass::MakeVol, d, disk.make_vol(&self.cfg.tmp_volume, d)).await;
                let d = deadline_of(&self.cfg, OpClass::CreateFile, deadline);
                r = bounded(
                    OpClass::CreateFile,
                    d,
                    disk.create_file(&self.cfg.tmp_volume, &tmp, CreateOptions::default(), d),
                )
                .await;
            }
            match r {
                Ok(w) => writers.push((pos, w)),
                Err(e) => report.failed.push((pos, e)),
            }
        }
        let mut order: Vec<usize> = sources.to_vec();
        let mut bad = vec![true; self.n()];
        for &p in sources {
            bad[p] = false;
        }
        let mut scratch = GetReport::default();
        for b in 0..geo.blocks() {
            if writers.is_empty() {
                break;
            }
            let data = match self
                .read_block(
                    bucket,
                    &shard_file,
                    m,
                    b,
                    &mut order,
                    &mut bad,
                    &mut scratch,
                    deadline,
                )
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    let e = match e {
                        ErasureError::Quorum(q) => q
                            .counts()
                            .errors
                            .first()
                            .map(|g| g.error.clone())
                            .unwrap_or(DiskError::FileNotFound),
                        _ => DiskError::FileNotFound,
                    };
                    for (pos, _) in writers.drain(..) {
                        report.failed.push((pos, e.clone()));
                    }
                    break;
                }
            };
            let shard_len = geo.shard_len(geo.block_len(b));
            let given: Vec<Option<Vec<u8>>> = (0..self.n())
                .map(|i| (i < m.data).then(|| data[i].clone()))
                .collect();
            let all = match codec::reconstruct(m.data, m.parity, shard_len, given, true) {
                Ok(a) => a,
                Err(_) => break,
            };
            let mut i = 0;
            while i < writers.len() {
                let (pos, w) = &mut writers[i];
                let shard = &all[m.distribution[*pos]];
                let mut buf = Vec::with_capacity(HASH_LEN + shard.len());
                buf.extend_from_slice(&codec::hash(shard));
                buf.extend_from_slice(shard);
                let d = deadline_of(&self.cfg, OpClass::Append, deadline);
                match bounded(OpClass::Append, d, w.append(&buf, d)).await {
                    Ok(()) => i += 1,
                    Err(e) => {
                        let (pos, _) = writers.swap_remove(i);
                        report.failed.push((pos, e));
                    }
                }
            }
        }
        let bytes = m.to_bytes();
        for (pos, w) in writers {
            let disk = &self.disks[pos];
            let r = async {
                let d = deadline_of(&self.cfg, OpClass::Finish, deadline);
                bounded(OpClass::Finish, d, w.finish(d)).await?;
                let d = deadline_of(&self.cfg, OpClass::MakeVol, deadline);
                match bounded(OpClass::MakeVol, d, disk.make_vol(bucket, d)).await {
                    Ok(()) | Err(DiskError::VolumeExists) => {}
                    Err(e) => return Err(e),
                }
                let d = deadline_of(&self.cfg, OpClass::RenameFile, deadline);
                bounded(
                    OpClass::RenameFile,
                    d,
                    disk.rename_file(&self.cfg.tmp_volume, &tmp, bucket, &shard_file, d),
                )
                .await?;
                let d = deadline_of(&self.cfg, OpClass::WriteAll, deadline);
                bounded(
                    OpClass::WriteAll,
                    d,
                    disk.write_all(bucket, &meta::meta_path(name), &bytes, d),
                )
                .await?;
                let d = deadline_of(&self.cfg, OpClass::ReadFileAt, deadline);
                if verify_shard_file(&**disk, bucket, &shard_file, m, pos, d).await? {
                    Ok(())
                } else {
                    Err(DiskError::MediaError {
                        op: OpClass::ReadFileAt,
                        errno: disk_io_api::Errno(5),
                    })
                }
            }
            .await;
            match r {
                Ok(()) => {
                    tracing::info!(
                        set = self.index,
                        pos,
                        bucket,
                        name,
                        "shard healed and verified"
                    );
                    report.healed.push(pos);
                    self.spawn_object_cleanup(pos, bucket, name, Shards::AllBut(m.version), false);
                }
                Err(e) => {
                    spawn_cleanup(
                        disk.clone(),
                        &self.cfg,
                        self.cfg.tmp_volume.clone(),
                        tmp.clone(),
                    );
                    report.failed.push((pos, e));
                }
            }
        }
    }

    /// Remove staging files older than `tmp_max_age` from every disk's
    /// temporary volume (left by writes and heals that were aborted).
    /// Returns how many were removed. At most `scan_max_entries` per disk.
    pub async fn purge_tmp(&self, deadline: Deadline) -> usize {
        let vol = self.cfg.tmp_volume.clone();
        let max_age = self.cfg.tmp_max_age;
        let max_entries = self.cfg.scan_max_entries;
        let results = self
            .gather(
                deadline,
                OpClass::ListDir,
                move |_, disk, d| {
                    let vol = vol.clone();
                    Box::pin(async move {
                        let entries = match disk.list_dir(&vol, "", d).await {
                            Ok(e) => e,
                            Err(DiskError::VolumeNotFound) => return Ok(0),
                            Err(e) => return Err(e),
                        };
                        let mut removed = 0usize;
                        for e in entries.into_iter().take(max_entries) {
                            let (name, recursive) = match e.strip_suffix('/') {
                                Some(dir) => (dir.to_string(), true),
                                None => (e, false),
                            };
                            let info = disk.stat_file(&vol, &name, d).await?;
                            let old = info.modified.elapsed().is_ok_and(|age| age > max_age);
                            if old {
                                disk.delete(&vol, &name, DeleteOptions { recursive }, d)
                                    .await?;
                                removed += 1;
                            }
                        }
                        Ok(removed)
                    })
                },
                |_| false,
                false,
            )
            .await;
        results.into_iter().flatten().flatten().sum()
    }

    /// Walk a bucket and heal every object found on any disk (what the heal
    /// queue missed). Bounded by `scan_max_entries` and `deadline`.
    pub async fn scan(&self, bucket: &str, deadline: Deadline) -> ScanReport {
        let mut report = ScanReport::default();
        let mut dirs: std::collections::VecDeque<String> = [String::new()].into();
        let mut visited = 0usize;
        while let Some(dir) = dirs.pop_front() {
            if deadline.is_expired() || visited >= self.cfg.scan_max_entries {
                report.truncated = true;
                break;
            }
            let results = self.list_everywhere(bucket, &dir, None, deadline).await;
            let mut entries: std::collections::BTreeSet<String> = Default::default();
            for es in results.into_iter().flatten().flatten() {
                entries.extend(es);
            }
            visited += entries.len();
            if entries.contains(meta::META_FILE) {
                report.objects += 1;
                match self.heal_object(bucket, &dir, deadline).await {
                    Ok(h) => {
                        report.healed += h.healed.len();
                        if !h.failed.is_empty() {
                            report.failed += 1;
                        }
                    }
                    Err(ErasureError::ObjectNotFound) => {}
                    Err(_) => report.failed += 1,
                }
            }
            for e in entries {
                if let Some(child) = e.strip_suffix('/') {
                    dirs.push_back(if dir.is_empty() {
                        child.to_string()
                    } else {
                        format!("{dir}/{child}")
                    });
                }
            }
        }
        report
    }
}

/// Which shard files of an object a cleanup deletes.
#[derive(Clone, Copy, Debug)]
enum Shards {
    /// Every version's.
    All,
    /// Every version's but this one's.
    AllBut(Uuid),
    /// This version's only.
    Only(Uuid),
}

impl Shards {
    fn selects(self, entry: &str) -> bool {
        let Some(v) = entry
            .strip_suffix(meta::SHARD_SUFFIX)
            .and_then(|v| Uuid::parse_str(v).ok())
        else {
            return false;
        };
        match self {
            Shards::All => true,
            Shards::AllBut(keep) => v != keep,
            Shards::Only(it) => v == it,
        }
    }
}

/// What one disk's metadata said, relative to the chosen version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetaState {
    /// The chosen version.
    Match,
    /// Another version, corrupt, or missing.
    Stale,
    /// Not heard from.
    Unknown,
}

/// Whether the metadata answers so far decide the read.
enum MetaDecision {
    /// A read quorum of identical copies.
    Winner(ObjectMeta),
    /// A read quorum answered the same error (e.g. not found).
    Error,
    /// Not yet.
    Undecided,
}

fn meta_decision(rs: &[Slot<Result<ObjectMeta, ()>>], rq: usize) -> MetaDecision {
    let oks: Vec<&ObjectMeta> = rs
        .iter()
        .filter_map(|r| match r {
            Some(Ok(Ok(m))) => Some(m),
            _ => None,
        })
        .collect();
    for m in &oks {
        if oks.iter().filter(|o| *o == m).count() >= rq {
            return MetaDecision::Winner((*m).clone());
        }
    }
    let mut kinds: Vec<(std::mem::Discriminant<DiskError>, usize)> = Vec::new();
    for e in rs.iter().flatten().filter_map(|r| r.as_ref().err()) {
        if e.is_unavailable() {
            continue;
        }
        let d = std::mem::discriminant(e);
        match kinds.iter_mut().find(|(k, _)| *k == d) {
            Some((_, c)) => *c += 1,
            None => kinds.push((d, 1)),
        }
    }
    if kinds.iter().any(|(_, c)| *c >= rq) {
        MetaDecision::Error
    } else {
        MetaDecision::Undecided
    }
}

fn agreed(e: DiskError) -> ErasureError {
    match e {
        DiskError::FileNotFound => ErasureError::ObjectNotFound,
        DiskError::VolumeNotFound => ErasureError::BucketNotFound,
        e => ErasureError::Disk(e),
    }
}

/// Read a whole shard file block by block, checking every block's
/// checksum and the digest of all of them against the metadata.
async fn verify_shard_file(
    disk: &dyn Disk,
    bucket: &str,
    path: &str,
    m: &ObjectMeta,
    pos: usize,
    deadline: Deadline,
) -> Result<bool, DiskError> {
    let geo = m.geometry();
    let info = disk.stat_file(bucket, path, deadline).await?;
    if info.size != geo.shard_file_size() {
        return Ok(false);
    }
    let mut h = blake3::Hasher::new();
    for b in 0..geo.blocks() {
        let (off, len) = geo.shard_block(b);
        let buf = disk.read_file_at(bucket, path, off, len, deadline).await?;
        if !codec::verify(&buf) {
            return Ok(false);
        }
        h.update(&buf[..HASH_LEN]);
    }
    Ok(h.finalize().to_hex().as_str() == m.shard_digests[m.distribution[pos]])
}

/// Fill `buf` from `src` (until full or end of stream) by `deadline`.
async fn fill(
    src: &mut (dyn AsyncRead + Unpin + Send),
    buf: &mut [u8],
    deadline: Deadline,
) -> Result<usize, ErasureError> {
    let mut len = 0;
    while len < buf.len() {
        let n = tokio::time::timeout_at(deadline.instant().into(), src.read(&mut buf[len..]))
            .await
            .map_err(|_| ErasureError::DeadlineExceeded { op: "put_object" })?
            .map_err(ErasureError::stream)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    Ok(len)
}

/// Write object bytes `from..to` of a block (given as its data shards) to
/// `out`.
async fn write_range(
    data: &[Vec<u8>],
    shard_len: usize,
    from: usize,
    to: usize,
    out: &mut (dyn AsyncWrite + Unpin + Send),
    deadline: Deadline,
) -> Result<(), ErasureError> {
    let mut pos = from;
    while pos < to {
        let i = pos / shard_len;
        let start = pos % shard_len;
        let end = (to - i * shard_len).min(shard_len);
        tokio::time::timeout_at(
            deadline.instant().into(),
            out.write_all(&data[i][start..end]),
        )
        .await
        .map_err(|_| ErasureError::DeadlineExceeded { op: "get_object" })?
        .map_err(ErasureError::stream)?;
        pos += end - start;
    }
    Ok(())
}
