//! GET with hedged shard reads, bitrot
//! checks, reconstruction and ranges, stat.

use super::*;

impl ErasureSet {
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
            user: m.user,
        })
    }

    /// The metadata a GET streams: the current version's, or with
    /// `expect` that version's even when a newer one has become current
    /// since (a reply whose headers came from a HEAD of `expect` then
    /// streams exactly those bytes; superseded versions stay on the disks
    /// for `superseded_grace`). `VersionChanged` when `expect` is gone.
    async fn meta_of(
        &self,
        bucket: &str,
        name: &str,
        expect: Option<Uuid>,
        deadline: Deadline,
    ) -> Result<(ObjectMeta, Vec<MetaState>), ErasureError> {
        self.check_bucket(bucket)?;
        meta::check_name(name)?;
        let r = self.resolve(bucket, name, deadline, false).await;
        let current = self.current(&r, deadline);
        let Some(v) = expect else {
            let (key, holders) = current?;
            let m = self
                .read_version(bucket, name, key, &holders, deadline)
                .await?;
            return Ok((m, r.states()));
        };
        if let Ok((key, holders)) = &current {
            if key.id == v {
                let m = self
                    .read_version(bucket, name, *key, holders, deadline)
                    .await?;
                return Ok((m, r.states()));
            }
        }
        let older = r
            .all_versions()
            .into_iter()
            .find(|(k, kind, _)| k.id == v && *kind == meta::VersionKind::Object);
        let Some((key, _, holders)) = older else {
            let found = current.map(|(k, _)| k.id).unwrap_or(Uuid::nil());
            return Err(ErasureError::VersionChanged { expected: v, found });
        };
        let m = self
            .read_version(bucket, name, key, &holders, deadline)
            .await?;
        let states = r
            .listings
            .iter()
            .enumerate()
            .map(|(pos, slot)| match versions::heard(slot) {
                None => MetaState::Unknown,
                Some(_) if holders.contains(&pos) => MetaState::Match,
                Some(_) => MetaState::Stale,
            })
            .collect();
        Ok((m, states))
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
        self.get_version(bucket, name, None, range, out, deadline)
            .await
    }

    /// [`get_object`](Self::get_object) of version `expect` only: when the
    /// current version is another (the object was replaced since the
    /// caller's `stat_object`), `VersionChanged` comes back before a byte
    /// is written, so a reply's headers and body never mix two versions.
    pub async fn get_version(
        &self,
        bucket: &str,
        name: &str,
        expect: Option<Uuid>,
        range: Option<(u64, u64)>,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        deadline: Deadline,
    ) -> Result<GetReport, ErasureError> {
        let (m, states) = self.meta_of(bucket, name, expect, deadline).await?;
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
    pub(super) async fn read_block(
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
            let (tmp, grave) = (self.cfg.tmp_volume.clone(), meta::grave_path(m.version));
            let d = deadline_of(&self.cfg, OpClass::ReadFileAt, deadline);
            let fut: BoxFuture<'static, (usize, Result<Vec<u8>, DiskError>)> =
                Box::pin(async move {
                    let mut r = bounded(
                        OpClass::ReadFileAt,
                        d,
                        disk.read_file_at(&bk, &path, off, blen, d),
                    )
                    .await;
                    // Superseded while this read was under way: the shard
                    // file waits in the graveyard for `superseded_grace`.
                    if matches!(r, Err(DiskError::FileNotFound)) {
                        r = bounded(
                            OpClass::ReadFileAt,
                            d,
                            disk.read_file_at(&tmp, &grave, off, blen, d),
                        )
                        .await
                        .map_err(|_| DiskError::FileNotFound);
                    }
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
