//! Healing one object (verify every copy, rebuild, verify again), the
//! scanner, and the purge of stale staging files.

use super::*;

impl ErasureSet {
    /// Check every disk's copy of an object and rebuild the missing or
    /// corrupt ones from the good ones; each rebuilt shard is verified
    /// (re-read and checked against the metadata) after writing.
    pub async fn heal_object(
        &self,
        bucket: &str,
        name: &str,
        deadline: Deadline,
    ) -> Result<HealReport, ErasureError> {
        self.heal_object_with(bucket, name, true, deadline).await
    }

    /// [`heal_object`](Self::heal_object); with `deep` false a copy whose
    /// metadata matches and whose shard file has the right size counts as
    /// good without reading it (what a node missed while it was away is
    /// found at the cost of a stat, not of reading every shard again).
    pub async fn heal_object_with(
        &self,
        bucket: &str,
        name: &str,
        deep: bool,
        deadline: Deadline,
    ) -> Result<HealReport, ErasureError> {
        self.check_bucket(bucket)?;
        meta::check_name(name)?;
        let r = self.resolve(bucket, name, deadline, true).await;
        if let versions::Decision::Chosen {
            key,
            kind: meta::VersionKind::Tombstone,
            holders,
        } = &r.decision
        {
            return Ok(self
                .heal_tombstone(bucket, name, *key, holders, &r, deadline)
                .await);
        }
        let (key, holders) = self.current(&r, deadline)?;
        if !deep && self.known_unhealable(bucket, name, key.id) {
            return Err(ErasureError::Unhealable { version: key.id });
        }
        let m = self
            .read_version(bucket, name, key, &holders, deadline)
            .await?;
        let states = r.states();
        let expected_size = m.geometry().shard_file_size();
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
                        if !deep && state == MetaState::Match {
                            let st = disk.stat_file(&b, &f, d).await;
                            return match st {
                                Ok(info) => Ok(info.size == expected_size),
                                Err(DiskError::FileNotFound) => Ok(false),
                                Err(e) => Err(e),
                            };
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
        // Older versions left on disks that missed the write that
        // superseded them go now.
        let older: Vec<usize> = r
            .all_versions()
            .iter()
            .filter(|(k, _, _)| *k < key)
            .flat_map(|(_, _, h)| h.clone())
            .collect();
        for pos in 0..n {
            if older.contains(&pos) && report.good.contains(&pos) {
                self.spawn_supersede(pos, bucket, name, key);
            }
        }
        if targets.is_empty() {
            self.mark_unhealable(bucket, name, None);
            return Ok(report);
        }
        if report.good.len() < m.data {
            if report.good.len() + report.skipped.len() < m.data {
                self.refresh_gauges();
                self.mark_unhealable(
                    bucket,
                    name,
                    Some(UnhealableObject {
                        bucket: bucket.to_string(),
                        object: name.to_string(),
                        version: m.version,
                        good: report.good.len(),
                        needed: m.data,
                        since: SystemTime::now(),
                    }),
                );
                return Err(ErasureError::Unhealable { version: m.version });
            }
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
            key,
            &m,
            &report.good.clone(),
            &targets,
            &mut report,
            deadline,
        )
        .await;
        if report.failed.is_empty() {
            self.mark_unhealable(bucket, name, None);
        }
        for &pos in &report.healed {
            metrics::heal_shard(true);
            if older.contains(&pos) {
                self.spawn_supersede(pos, bucket, name, key);
            }
        }
        for _ in &report.failed {
            metrics::heal_shard(false);
        }
        Ok(report)
    }

    /// Make a chosen tombstone durable: every heard disk gets it (so the
    /// versions it buried cannot come back when disks holding it are
    /// lost), and older versions go.
    async fn heal_tombstone(
        &self,
        bucket: &str,
        name: &str,
        key: meta::VersionKey,
        holders: &[usize],
        r: &versions::Resolution,
        deadline: Deadline,
    ) -> HealReport {
        let mut report = HealReport::default();
        let path = meta::version_path(name, key, meta::VersionKind::Tombstone);
        let versions = r.all_versions();
        for (pos, slot) in r.listings.iter().enumerate() {
            if versions::heard(slot).is_none() {
                report.skipped.push(pos);
                continue;
            }
            if !holders.contains(&pos) {
                let d = deadline_of(&self.cfg, OpClass::WriteAll, deadline);
                let w = bounded(
                    OpClass::WriteAll,
                    d,
                    self.disks[pos].write_all(bucket, &path, &[], d),
                )
                .await;
                match w {
                    Ok(()) => report.healed.push(pos),
                    Err(e) => {
                        report.failed.push((pos, e));
                        continue;
                    }
                }
            } else {
                report.good.push(pos);
            }
            if versions
                .iter()
                .any(|(k, _, h)| *k < key && h.contains(&pos))
            {
                self.spawn_supersede(pos, bucket, name, key);
            }
        }
        report
    }

    #[allow(clippy::too_many_arguments)]
    async fn rebuild(
        &self,
        bucket: &str,
        name: &str,
        key: meta::VersionKey,
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
                    disk.write_all(
                        bucket,
                        &meta::version_path(name, key, meta::VersionKind::Object),
                        &bytes,
                        d,
                    ),
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
                            // The graveyard has its own clock (`collect`).
                            if e.trim_end_matches('/') == meta::GRAVEYARD {
                                continue;
                            }
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
        self.scan_with(bucket, true, deadline).await
    }

    /// [`scan`](Self::scan), healing with [`heal_object_with`](Self::heal_object_with)`(deep)`.
    pub async fn scan_with(&self, bucket: &str, deep: bool, deadline: Deadline) -> ScanReport {
        let mut report = ScanReport::default();
        let mut dirs: std::collections::VecDeque<String> = [String::new()].into();
        let mut visited = 0usize;
        // Walk first (bounded by `scan_max_entries`), then heal the objects
        // found `scan_heal_concurrency` at a time: one object's heal waits
        // on reads and a rebuild, so healing them one by one leaves the
        // disks idle.
        let mut objects = Vec::new();
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
            for e in &entries {
                if let Some(child) = e.strip_suffix('/') {
                    dirs.push_back(if dir.is_empty() {
                        child.to_string()
                    } else {
                        format!("{dir}/{child}")
                    });
                }
            }
            if entries.iter().any(|e| meta::VersionKey::parse(e).is_some()) {
                objects.push(dir);
            }
        }
        report.objects = objects.len();
        let mut heals = futures_util::stream::iter(objects.into_iter().map(|dir| async move {
            (
                self.heal_object_with(bucket, &dir, deep, deadline).await,
                dir,
            )
        }))
        .buffer_unordered(self.cfg.scan_heal_concurrency);
        while let Some((r, object)) = heals.next().await {
            match r {
                Ok(h) => {
                    report.healed += h.healed.len();
                    if !h.failed.is_empty() {
                        report.failed += 1;
                    }
                    if !h.skipped.is_empty() {
                        report.skipped += 1;
                    }
                }
                Err(ErasureError::ObjectNotFound) => {}
                // Reported by the registry (admin status, metric), logged
                // once there; not a failure to retry the scan for.
                Err(ErasureError::Unhealable { .. }) => report.unhealable += 1,
                Err(e) => {
                    tracing::warn!(set = self.index(), bucket, %object, error = %e, "scan: heal failed");
                    report.failed += 1
                }
            }
        }
        report
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
