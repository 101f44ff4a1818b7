//! PUT: streamed blocks, one writer task per disk behind a bounded queue,
//! stragglers dropped while write quorum holds, rename commit, quorum
//! metadata, cleanup of a failed write.

use std::collections::BTreeMap;

use super::*;
use crate::meta::{VersionKey, VersionKind};

impl ErasureSet {
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
        self.put_object_with(bucket, name, src, PutOptions::default(), deadline)
            .await
    }

    /// [`put_object`](Self::put_object) storing `opts.user` (and what
    /// `opts.finish` adds once the source is exhausted) in the object's
    /// metadata, at most `max_user_meta` bytes of keys and values.
    pub async fn put_object_with(
        &self,
        bucket: &str,
        name: &str,
        src: &mut (dyn AsyncRead + Unpin + Send),
        opts: PutOptions<'_>,
        deadline: Deadline,
    ) -> Result<PutReport, ErasureError> {
        self.check_bucket(bucket)?;
        self.check_user_meta(&opts.user)?;
        meta::check_name(name)?;
        let n = self.n();
        let version = opts.version.unwrap_or_else(meta::new_version_id);
        let distribution = meta::distribution(name, n);
        let shard_file = meta::shard_path(name, version);
        let mut w = Writers {
            txs: Vec::with_capacity(n),
            handles: Vec::with_capacity(n),
            dropped: vec![None; n],
        };
        // From here on, whatever ends this call (an error, or the caller
        // dropping it when its client goes away) leaves nothing behind
        // that could ever become visible: see `PutGuard`.
        let mut guard = PutGuard {
            disks: self.disks.clone(),
            cfg: self.cfg.clone(),
            heal: self.heal.clone(),
            set: self.index,
            bucket: bucket.to_string(),
            name: name.to_string(),
            version,
            stage: Stage::Data,
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
            .put_stream(
                &mut w,
                src,
                opts,
                &distribution,
                deadline,
                bucket,
                name,
                version,
                &mut guard,
            )
            .await;
        if r.is_err() {
            w.abort_all();
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    async fn put_stream(
        &self,
        w: &mut Writers,
        src: &mut (dyn AsyncRead + Unpin + Send),
        opts: PutOptions<'_>,
        distribution: &[usize],
        deadline: Deadline,
        bucket: &str,
        name: &str,
        version: Uuid,
        guard: &mut PutGuard,
    ) -> Result<PutReport, ErasureError> {
        let n = self.n();
        let block_size = self.cfg.block_size;
        // The version clock is read while the data streams (it costs no
        // time on the write's path unless the disks are slower than it).
        let clock = self.version_clock(bucket, name, deadline);
        let data = async {
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
            let mut user = opts.user;
            if let Some(finish) = opts.finish {
                user.extend(finish(size));
                self.check_user_meta(&user)?;
            }
            self.send_all(w, (0..n).map(|_| Msg::Finish).collect(), deadline)
                .await?;
            self.await_commits(w, deadline).await?;
            Ok::<_, ErasureError>((geo, hashers, size, user))
        };
        let (seen, (geo, hashers, size, user)) = tokio::try_join!(clock, data)?;
        let key = VersionKey::after(seen, version);

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
            user,
        };
        debug_assert_eq!(geo.shard_file_size(), meta.geometry().shard_file_size());
        guard.stage = Stage::Committing;
        let commit = self
            .commit_version(
                bucket,
                name,
                key,
                VersionKind::Object,
                Arc::new(meta.to_bytes()),
                &w.dropped,
                deadline,
            )
            .await;
        let (written, missed) = match commit {
            Ok(c) => c,
            Err(Uncommitted { error, definite }) => {
                guard.stage = if definite {
                    Stage::Failed(key)
                } else {
                    Stage::Indeterminate
                };
                return Err(error);
            }
        };
        guard.stage = Stage::Done;
        Ok(PutReport {
            version,
            size,
            written,
            missed,
        })
    }

    /// The newest version timestamp a threshold of disks list for the
    /// object (`None`: no versions). A write orders after it, hence after
    /// every write acknowledged before this one started (an acknowledged
    /// write is on a write quorum, which meets any threshold of disks).
    pub(crate) async fn version_clock(
        &self,
        bucket: &str,
        name: &str,
        deadline: Deadline,
    ) -> Result<Option<u64>, ErasureError> {
        let t = self.threshold();
        let r = self
            .list_object_dir(bucket, name, deadline, |rs| {
                rs.iter().filter(|s| versions::heard(s).is_some()).count() >= t
            })
            .await;
        if r.bucket_missing() >= t {
            return Err(ErasureError::BucketNotFound);
        }
        let mut tally = Tally::new(QuorumOp::List, t, self.n());
        for (pos, slot) in r.listings.iter().enumerate() {
            let admits = self.admits(pos);
            match (versions::heard(slot), slot) {
                (Some(_), _) => tally.ok(admits),
                (None, Some(Err(e))) => tally.err(e.clone(), admits),
                (None, _) => tally.missing(admits),
            }
        }
        match self.decide(&tally, deadline)? {
            Outcome::Met { .. } => Ok(r.newest_ts()),
            Outcome::Agreed(e) => Err(agreed(e)),
        }
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

/// What a PUT stores besides the bytes.
#[derive(Default)]
pub struct PutOptions<'a> {
    /// Stored in the object's metadata as given.
    pub user: BTreeMap<String, String>,
    /// Called with the object's size once the source is exhausted, before
    /// the metadata is written; what it returns joins `user` (a digest of
    /// the bytes the caller computed while they streamed, say).
    #[allow(clippy::type_complexity)]
    pub finish: Option<Box<dyn FnOnce(u64) -> BTreeMap<String, String> + Send + 'a>>,
    /// The version id to write under (a fresh UUIDv7 when `None`): a
    /// caller that must record the id before the write lands (a
    /// multipart Complete) picks it. Must be a UUIDv7 never used before.
    pub version: Option<Uuid>,
}

/// Where a PUT is, for what its end must clean up.
#[derive(Clone, Copy, Debug)]
enum Stage {
    /// Streaming shards: nothing is visible; staged and renamed shard
    /// files go.
    Data,
    /// Writing the version file: it may become visible on its own.
    Committing,
    /// The commit failed and cannot be chosen: its files go, the version
    /// file `key` too.
    Failed(VersionKey),
    /// The commit failed but may be chosen: heal decides.
    Indeterminate,
    /// Acknowledged.
    Done,
}

/// Cleans up after a PUT however it ends, including when its future is
/// dropped (the S3 client went away mid-body): the drop runs the cleanup
/// in the background. Before this, an abandoned PUT left orphan shard
/// files that nothing removed.
struct PutGuard {
    disks: Vec<Arc<dyn Disk>>,
    cfg: Arc<ErasureConfig>,
    heal: Arc<HealQueue>,
    set: usize,
    bucket: String,
    name: String,
    version: Uuid,
    stage: Stage,
}

impl Drop for PutGuard {
    fn drop(&mut self) {
        let key = match self.stage {
            Stage::Done => return,
            Stage::Committing | Stage::Indeterminate => {
                // It may be chosen: the healer completes it if it is;
                // the collector removes it if it is not.
                self.heal.push(HealTask {
                    set: self.set,
                    bucket: self.bucket.clone(),
                    object: self.name.clone(),
                });
                return;
            }
            Stage::Data => None,
            Stage::Failed(key) => Some(key),
        };
        // A task dropped outside a runtime (shutdown) cannot clean up; the
        // collector does later.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        for disk in &self.disks {
            let mut paths = vec![meta::shard_path(&self.name, self.version)];
            if let Some(k) = key {
                paths.push(meta::version_path(&self.name, k, VersionKind::Object));
            }
            spawn_cleanup(
                disk.clone(),
                &self.cfg,
                self.cfg.tmp_volume.clone(),
                self.version.to_string(),
            );
            spawn_discard(disk.clone(), &self.cfg, &self.bucket, &self.name, paths);
        }
    }
}

impl ErasureSet {
    fn check_user_meta(&self, user: &BTreeMap<String, String>) -> Result<(), ErasureError> {
        let size: usize = user.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > self.cfg.max_user_meta {
            return Err(ErasureError::UserMetaTooLarge {
                size,
                max: self.cfg.max_user_meta,
            });
        }
        Ok(())
    }
}
