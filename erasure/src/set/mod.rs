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

mod collect;
mod read;
mod repair;
mod versions;
mod write;

pub use collect::CollectReport;
pub use write::PutOptions;

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
    /// What the writer stored with it ([`PutOptions::user`]).
    pub user: std::collections::BTreeMap<String, String>,
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
    /// Objects with a disk that could not be checked (unavailable).
    pub skipped: usize,
    /// Objects known unhealable (reported, not failures to retry for).
    pub unhealable: usize,
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
    /// When the collector first saw each graveyard file.
    graves: std::sync::Mutex<collect::GraveClock>,
    /// Objects the healer found it cannot rebuild.
    unhealable: std::sync::Mutex<Unhealable>,
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
            graves: Default::default(),
            unhealable: Default::default(),
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
        metrics::register_set(index);
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

    /// Buckets (volumes) that a read quorum of disks hold, with the oldest
    /// creation time any of them reports; the temporary volume is left out.
    pub async fn list_buckets(
        &self,
        deadline: Deadline,
    ) -> Result<Vec<(String, SystemTime)>, ErasureError> {
        let rq = self.read_quorum();
        let results = self
            .gather(
                deadline,
                OpClass::ListVols,
                move |_, disk, d| Box::pin(async move { disk.list_vols(d).await }),
                |rs| rs.iter().filter(|r| matches!(r, Some(Ok(_)))).count() >= rq,
                true,
            )
            .await;
        let mut seen: std::collections::BTreeMap<String, (usize, SystemTime)> = Default::default();
        for vols in results.iter().flatten().flatten() {
            for v in vols {
                let e = seen.entry(v.name.clone()).or_insert((0, v.created));
                e.0 += 1;
                e.1 = e.1.min(v.created);
            }
        }
        let t = self.tally(QuorumOp::List, rq, &results);
        match self.decide(&t, deadline)? {
            Outcome::Met { .. } => {}
            Outcome::Agreed(e) => return Err(agreed(e)),
        }
        Ok(seen
            .into_iter()
            .filter(|(name, (c, _))| *c >= rq && *name != self.cfg.tmp_volume)
            .map(|(name, (_, t))| (name, t))
            .collect())
    }

    /// Delete a bucket with no current object (its volume on every disk)
    /// with write quorum. First the files of deleted objects go (tombstones
    /// and what they bury: a bucket is deletable as soon as its objects
    /// are); a current object is `BucketNotEmpty`. Then each disk deletes
    /// its volume only if empty, so a PUT racing the deletion either left a
    /// file first (that disk refuses) or finds the volume gone (its write
    /// fails there): write quorum on both sides means at most one of them
    /// succeeds.
    pub async fn delete_bucket(
        &self,
        bucket: &str,
        deadline: Deadline,
    ) -> Result<(), ErasureError> {
        self.drain_bucket(bucket, deadline).await?;
        self.delete_volumes(bucket, deadline).await
    }

    /// The first half of [`delete_bucket`](Self::delete_bucket): the files
    /// of deleted objects go; `BucketNotEmpty` when an object is current.
    /// (`ErasureSets` drains every set before any set deletes its volume.)
    pub(crate) async fn drain_bucket(
        &self,
        bucket: &str,
        deadline: Deadline,
    ) -> Result<(), ErasureError> {
        self.check_bucket(bucket)?;
        let drained = self
            .collect_bucket(bucket, collect::Mode::Drain, deadline)
            .await;
        if drained.visible > 0 {
            return Err(ErasureError::BucketNotEmpty);
        }
        Ok(())
    }

    /// The second half of [`delete_bucket`](Self::delete_bucket): each
    /// disk deletes the volume if it is empty, with write quorum.
    pub(crate) async fn delete_volumes(
        &self,
        bucket: &str,
        deadline: Deadline,
    ) -> Result<(), ErasureError> {
        self.check_bucket(bucket)?;
        let b = bucket.to_string();
        let wq = self.write_quorum();
        let mut results = self
            .gather(
                deadline,
                OpClass::DeleteVol,
                move |_, disk, d| {
                    let b = b.clone();
                    Box::pin(async move { disk.delete_vol(&b, false, d).await })
                },
                |rs| rs.iter().filter(|r| matches!(r, Some(Ok(())))).count() >= wq,
                true,
            )
            .await;
        let gone = results
            .iter()
            .filter(|r| matches!(r, Some(Err(DiskError::VolumeNotFound))))
            .count();
        if gone == results.len() {
            return Err(ErasureError::BucketNotFound);
        }
        for r in results.iter_mut() {
            if matches!(r, Some(Err(DiskError::VolumeNotFound))) {
                *r = Some(Ok(()));
            }
        }
        let t = self.tally(QuorumOp::Delete, wq, &results);
        match self.decide(&t, deadline)? {
            Outcome::Met { .. } => Ok(()),
            Outcome::Agreed(e) => Err(agreed(e)),
        }
    }

    /// Write version file `key` of an object on every disk not in `skip`
    /// (disks dropped from the write, with why) with write quorum. On
    /// success: the positions written and missed (queued for healing), and
    /// the versions older than `key` superseded on the written disks in the
    /// background. On failure, whether the version can never be chosen
    /// (`definite`: fewer disks than the threshold could hold it, even if
    /// every write whose outcome is unknown landed).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn commit_version(
        &self,
        bucket: &str,
        name: &str,
        key: meta::VersionKey,
        kind: meta::VersionKind,
        bytes: Arc<Vec<u8>>,
        skip: &[Option<DiskError>],
        deadline: Deadline,
    ) -> Result<(Vec<usize>, Vec<usize>), Uncommitted> {
        let n = self.n();
        let (b, p) = (bucket.to_string(), meta::version_path(name, key, kind));
        let wq = self.write_quorum();
        let skipped: Vec<bool> = skip.iter().map(Option::is_some).collect();
        let results = self
            .gather(
                deadline,
                OpClass::WriteAll,
                move |pos, disk, d| {
                    let (b, p, bytes) = (b.clone(), p.clone(), bytes.clone());
                    let skip = skipped[pos];
                    Box::pin(async move {
                        if skip {
                            // Dropped from the write: no version file
                            // without its shard. (Its data-phase error is
                            // what the tally counts for it; this placeholder
                            // is of the unavailable family so it does not
                            // count as the disk keeping up.)
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
        // Disks whose version file may or may not be there (not heard, or
        // an error that does not prove the write did not happen).
        let mut unknown = 0usize;
        for (pos, result) in results.iter().enumerate() {
            let admits = self.admits(pos);
            match (&skip[pos], result) {
                (Some(e), _) => t.err(e.clone(), admits),
                (None, Some(Ok(()))) => {
                    t.ok(admits);
                    written.push(pos);
                    continue;
                }
                (None, Some(Err(e))) => {
                    if e.is_unavailable() || matches!(e, DiskError::NotDurable { .. }) {
                        unknown += 1;
                    }
                    t.err(e.clone(), admits)
                }
                (None, None) => {
                    unknown += 1;
                    t.missing(admits)
                }
            }
            missed.push(pos);
        }
        let error = match self.decide(&t, deadline) {
            Ok(Outcome::Met { .. }) => None,
            Ok(Outcome::Agreed(e)) => Some(agreed(e)),
            Err(e) => Some(e),
        };
        if let Some(error) = error {
            let definite = written.len() + unknown < self.threshold();
            if !definite {
                self.push_heal(bucket, name);
            }
            return Err(Uncommitted { error, definite });
        }
        if !missed.is_empty() {
            self.push_heal(bucket, name);
        }
        // Older versions are superseded for good on the disks that took
        // this one (it is chosen: on a write quorum).
        for &pos in &written {
            self.spawn_supersede(pos, bucket, name, key);
        }
        Ok((written, missed))
    }

    /// In the background, on disk `pos`: every version of the object older
    /// than `key` (chosen) goes. Its shard file is moved to the
    /// graveyard first (a GET that began on it still finds it there for
    /// `superseded_grace`), then its version file is deleted.
    pub(crate) fn spawn_supersede(
        &self,
        pos: usize,
        bucket: &str,
        name: &str,
        key: meta::VersionKey,
    ) {
        let disk = self.disks[pos].clone();
        let cfg = self.cfg.clone();
        let (b, dir) = (bucket.to_string(), name.to_string());
        tokio::spawn(async move {
            let d = cfg.timeouts.deadline(OpClass::Delete);
            let Ok(entries) = bounded(OpClass::ListDir, d, disk.list_dir(&b, &dir, d)).await else {
                return;
            };
            let listing = versions::DirListing::parse(entries);
            for (k, kind) in listing.versions {
                if k >= key {
                    continue;
                }
                supersede_one(&*disk, &cfg, &b, &dir, k, kind, &listing.shards).await;
            }
        });
    }

    /// Delete an object: a tombstone version, written like a PUT's version
    /// file (`ObjectNotFound`, writing nothing, when there is no object).
    pub async fn delete_object(
        &self,
        bucket: &str,
        name: &str,
        deadline: Deadline,
    ) -> Result<(), ErasureError> {
        self.check_bucket(bucket)?;
        meta::check_name(name)?;
        let r = self.resolve(bucket, name, deadline, false).await;
        self.current(&r, deadline)?;
        let key = meta::VersionKey::after(r.newest_ts(), meta::new_version_id());
        let none = vec![None; self.n()];
        let kind = meta::VersionKind::Tombstone;
        match self
            .commit_version(
                bucket,
                name,
                key,
                kind,
                Arc::new(Vec::new()),
                &none,
                deadline,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(Uncommitted { error, definite }) => {
                if definite {
                    let path = meta::version_path(name, key, kind);
                    for disk in &self.disks {
                        spawn_discard(disk.clone(), &self.cfg, bucket, name, vec![path.clone()]);
                    }
                }
                Err(error)
            }
        }
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

    /// Entries directly under `dir` of a bucket (`""` for the top) that any
    /// disk lists (with a read quorum of disks answering): candidate object
    /// and prefix names (without the trailing `/`), sorted. Whether one is
    /// an object is [`stat_object`](Self::stat_object)'s to say.
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
        // Every directory any disk lists is a candidate: the caller
        // resolves each one (`stat_object`) before showing it, so a key is
        // listed exactly when a HEAD finds it. (Counting directories on a
        // read quorum of disks, as before, hid keys whose directory was on
        // fewer disks and showed keys deleted long ago.)
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
        Ok(counts.into_keys().collect())
    }
}

/// An object the healer cannot rebuild (fewer good shards than data
/// shards, or no readable metadata): reported once, not retried in a loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnhealableObject {
    /// Bucket.
    pub bucket: String,
    /// Object name.
    pub object: String,
    /// The version that cannot be rebuilt.
    pub version: Uuid,
    /// Good copies found.
    pub good: usize,
    /// Copies needed.
    pub needed: usize,
    /// When it was first found.
    pub since: SystemTime,
}

/// The bounded registry of unhealable objects.
#[derive(Debug, Default)]
pub(crate) struct Unhealable {
    objects: std::collections::BTreeMap<(String, String), UnhealableObject>,
}

impl ErasureSet {
    /// Objects found unhealable and not healed or replaced since.
    pub fn unhealable(&self) -> Vec<UnhealableObject> {
        let g = self.unhealable.lock().expect("unhealable lock");
        g.objects.values().cloned().collect()
    }

    /// Whether `bucket/name` at `version` is known unhealable.
    fn known_unhealable(&self, bucket: &str, name: &str, version: Uuid) -> bool {
        let g = self.unhealable.lock().expect("unhealable lock");
        g.objects
            .get(&(bucket.to_string(), name.to_string()))
            .is_some_and(|o| o.version == version)
    }

    /// Record (`Some`) or clear (`None`) an object's unhealable state; logs
    /// once per object and version.
    fn mark_unhealable(&self, bucket: &str, name: &str, found: Option<UnhealableObject>) {
        let mut g = self.unhealable.lock().expect("unhealable lock");
        let k = (bucket.to_string(), name.to_string());
        match found {
            None => {
                g.objects.remove(&k);
            }
            Some(o) => {
                let new = g.objects.get(&k).is_none_or(|old| old.version != o.version);
                if new && (g.objects.contains_key(&k) || g.objects.len() < self.cfg.unhealable_max)
                {
                    tracing::error!(
                        set = self.index,
                        bucket,
                        object = name,
                        version = %o.version,
                        good = o.good,
                        needed = o.needed,
                        "object cannot be healed: fewer good shards than data shards"
                    );
                    g.objects.insert(k, o);
                }
            }
        }
        metrics::unhealable(self.index, g.objects.len());
    }
}

/// Why a version file was not committed.
#[derive(Debug)]
pub(crate) struct Uncommitted {
    /// What the caller answers.
    pub error: ErasureError,
    /// The version can never be chosen (its files may go).
    pub definite: bool,
}

/// In the background, on `disk`: delete `paths` of object `name` (a
/// missing one is fine), then the object's directory and its parents as
/// long as they are empty (a non-recursive delete refuses a directory with
/// anything in it, so a live object or a neighbour is never touched).
fn spawn_discard(
    disk: Arc<dyn Disk>,
    cfg: &ErasureConfig,
    bucket: &str,
    name: &str,
    paths: Vec<String>,
) {
    let (b, dir) = (bucket.to_string(), name.to_string());
    let d = cfg.timeouts.deadline(OpClass::Delete);
    tokio::spawn(async move {
        for path in paths {
            let opts = DeleteOptions::default();
            let _ = bounded(OpClass::Delete, d, disk.delete(&b, &path, opts, d)).await;
        }
        prune_dirs(&*disk, &b, &dir, d).await;
    });
}

/// Delete `dir` and its parents while they are empty.
pub(crate) async fn prune_dirs(disk: &dyn Disk, bucket: &str, dir: &str, d: Deadline) -> usize {
    let mut at = Some(dir);
    let mut pruned = 0;
    while let Some(p) = at {
        let opts = DeleteOptions::default();
        if bounded(OpClass::Delete, d, disk.delete(bucket, p, opts, d))
            .await
            .is_err()
        {
            break;
        }
        pruned += 1;
        at = p.rsplit_once('/').map(|(parent, _)| parent);
    }
    pruned
}

/// Supersede version `k` of object `dir` on one disk: its shard file (if
/// `shards` lists it) moves to the graveyard, then its version file goes.
/// Whether both happened (a file already gone counts).
pub(crate) async fn supersede_one(
    disk: &dyn Disk,
    cfg: &ErasureConfig,
    bucket: &str,
    dir: &str,
    k: meta::VersionKey,
    kind: meta::VersionKind,
    shards: &[Uuid],
) -> bool {
    let d = cfg.timeouts.deadline(OpClass::RenameFile);
    if kind == meta::VersionKind::Object
        && shards.contains(&k.id)
        && bury(disk, cfg, bucket, &meta::shard_path(dir, k.id), k.id, d)
            .await
            .is_err()
    {
        return false;
    }
    delete_file(disk, bucket, &meta::version_path(dir, k, kind), d).await
}

/// Delete one file; whether it is gone (a missing one counts).
pub(crate) async fn delete_file(disk: &dyn Disk, bucket: &str, path: &str, d: Deadline) -> bool {
    matches!(
        bounded(
            OpClass::Delete,
            d,
            disk.delete(bucket, path, DeleteOptions::default(), d)
        )
        .await,
        Ok(()) | Err(DiskError::FileNotFound)
    )
}

/// Move a shard file into the graveyard of the temporary volume.
pub(crate) async fn bury(
    disk: &dyn Disk,
    cfg: &ErasureConfig,
    bucket: &str,
    path: &str,
    id: Uuid,
    d: Deadline,
) -> Result<(), DiskError> {
    let grave = meta::grave_path(id);
    let r = bounded(
        OpClass::RenameFile,
        d,
        disk.rename_file(bucket, path, &cfg.tmp_volume, &grave, d),
    )
    .await;
    match r {
        Ok(()) | Err(DiskError::FileNotFound) => Ok(()),
        Err(DiskError::VolumeNotFound) => {
            match bounded(OpClass::MakeVol, d, disk.make_vol(&cfg.tmp_volume, d)).await {
                Ok(()) | Err(DiskError::VolumeExists) => {}
                Err(e) => return Err(e),
            }
            bounded(
                OpClass::RenameFile,
                d,
                disk.rename_file(bucket, path, &cfg.tmp_volume, &grave, d),
            )
            .await
        }
        Err(e) => Err(e),
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

fn agreed(e: DiskError) -> ErasureError {
    match e {
        DiskError::FileNotFound => ErasureError::ObjectNotFound,
        DiskError::VolumeNotFound => ErasureError::BucketNotFound,
        e => ErasureError::Disk(e),
    }
}
