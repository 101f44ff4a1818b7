//! The collector: what failed, abandoned or superseded writes left behind
//! goes, and nothing else (see ARCHITECTURE.md "Per-key commit").
//!
//! Each rule removes only what is proven dead:
//! * a version older than the chosen one is superseded for good (its shard
//!   file moves to the graveyard, its version file goes);
//! * a version newer than the chosen one (or any version when none is
//!   chosen) is a failed write once every disk was heard, it is on fewer
//!   than the threshold of them, and its writer's deadline has passed
//!   (`commit_window` after its timestamp: no copy can land later, because
//!   every disk refuses a call past its deadline);
//! * a chosen tombstone goes once every disk was heard, no older version
//!   is left anywhere, and `commit_window` has passed (a slower write that
//!   ordered before it can no longer land and resurface);
//! * a shard file no version file on any disk names, minted more than
//!   `commit_window` ago, is an abandoned write's: it moves to the
//!   graveyard;
//! * a graveyard file goes `superseded_grace` after this collector first
//!   saw it (a GET that began on it has finished by then);
//! * staging files go after `tmp_max_age`; empty directories go.

use std::time::{Duration, Instant};

use super::versions::{decide, heard, Decision, DirListing, ListingSlot};
use super::*;
use crate::meta::VersionKind;

/// What one collector pass over a set did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectReport {
    /// Object directories looked at.
    pub dirs: usize,
    /// Superseded versions removed (per disk copy).
    pub superseded: usize,
    /// Tombstones removed (per disk copy).
    pub tombstones: usize,
    /// Versions of failed writes removed (per disk copy).
    pub failed_versions: usize,
    /// Orphan shard files moved to the graveyard.
    pub orphan_shards: usize,
    /// Graveyard files deleted.
    pub graves: usize,
    /// Staging files deleted.
    pub staging: usize,
    /// Empty directories removed.
    pub directories: usize,
    /// Directories left for later: not every disk heard, or undecided.
    pub deferred: usize,
    /// Objects found current (a bucket drain stops at the first).
    pub visible: usize,
    /// The pass stopped early (entry bound or deadline).
    pub truncated: bool,
}

impl CollectReport {
    /// Add another pass's counts.
    pub fn add(&mut self, o: &CollectReport) {
        self.dirs += o.dirs;
        self.superseded += o.superseded;
        self.tombstones += o.tombstones;
        self.failed_versions += o.failed_versions;
        self.orphan_shards += o.orphan_shards;
        self.graves += o.graves;
        self.staging += o.staging;
        self.directories += o.directories;
        self.deferred += o.deferred;
        self.visible += o.visible;
        self.truncated |= o.truncated;
    }

    /// Files removed or moved in all.
    pub fn removed(&self) -> usize {
        self.superseded
            + self.tombstones
            + self.failed_versions
            + self.orphan_shards
            + self.graves
            + self.staging
            + self.directories
    }

    fn count_metrics(&self, set: usize) {
        metrics::gc_removed(set, "superseded", self.superseded);
        metrics::gc_removed(set, "tombstone", self.tombstones);
        metrics::gc_removed(set, "failed_version", self.failed_versions);
        metrics::gc_removed(set, "orphan_shard", self.orphan_shards);
        metrics::gc_removed(set, "grave", self.graves);
        metrics::gc_removed(set, "staging", self.staging);
        metrics::gc_removed(set, "directory", self.directories);
    }
}

/// What a pass over a bucket is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The scheduled collector.
    Collect,
    /// Before deleting the bucket: stop at the first current object;
    /// deleted objects' files go at once.
    Drain,
}

/// When the collector first saw each graveyard file (bounded; a file not
/// remembered is kept, so forgetting is always safe).
#[derive(Debug, Default)]
pub(crate) struct GraveClock {
    seen: std::collections::HashMap<(usize, String), Instant>,
}

fn older_than(ts_ns: u64, age: Duration) -> bool {
    meta::now_ns().saturating_sub(ts_ns) > age.as_nanos() as u64
}

impl ErasureSet {
    /// One collector pass over `buckets` and the temporary volume.
    pub async fn collect(&self, buckets: &[String], deadline: Deadline) -> CollectReport {
        let mut report = CollectReport::default();
        for b in buckets {
            if deadline.is_expired() {
                report.truncated = true;
                break;
            }
            let r = self.collect_bucket(b, Mode::Collect, deadline).await;
            report.add(&r);
        }
        report.graves += self.collect_graveyard(deadline).await;
        report.staging += self.purge_tmp(deadline).await;
        report.count_metrics(self.index);
        report
    }

    /// One pass over `bucket`.
    pub(crate) async fn collect_bucket(
        &self,
        bucket: &str,
        mode: Mode,
        deadline: Deadline,
    ) -> CollectReport {
        let mut report = CollectReport::default();
        let mut dirs: std::collections::VecDeque<String> = [String::new()].into();
        let mut visited = 0usize;
        while let Some(dir) = dirs.pop_front() {
            if deadline.is_expired() || visited >= self.cfg.scan_max_entries {
                report.truncated = true;
                break;
            }
            let raw = self.list_everywhere(bucket, &dir, None, deadline).await;
            let listings: Vec<ListingSlot> = raw
                .into_iter()
                .map(|s| s.map(|r| r.map(DirListing::parse)))
                .collect();
            let mut subdirs: std::collections::BTreeSet<String> = Default::default();
            for l in listings.iter().flatten().flatten() {
                subdirs.extend(l.subdirs.iter().cloned());
            }
            visited += 1 + subdirs.len();
            for child in subdirs {
                dirs.push_back(if dir.is_empty() {
                    child
                } else {
                    format!("{dir}/{child}")
                });
            }
            if dir.is_empty() {
                continue;
            }
            report.dirs += 1;
            self.collect_dir(bucket, &dir, &listings, mode, &mut report)
                .await;
            if mode == Mode::Drain && (report.visible > 0 || report.deferred > 0) {
                break;
            }
        }
        report
    }

    /// Apply the module's rules to one object directory.
    async fn collect_dir(
        &self,
        bucket: &str,
        dir: &str,
        listings: &[ListingSlot],
        mode: Mode,
        report: &mut CollectReport,
    ) {
        let t = self.threshold();
        let drain = mode == Mode::Drain;
        let all_heard = listings.iter().all(|s| heard(s).is_some());
        let window = self.cfg.commit_window;
        let decision = decide(listings, t);
        let chosen = match &decision {
            Decision::Chosen {
                kind: VersionKind::Object,
                ..
            } if drain => {
                report.visible += 1;
                return;
            }
            Decision::Chosen { key, kind, .. } => Some((*key, *kind)),
            Decision::Absent => None,
            Decision::Undecided { .. } => {
                report.deferred += 1;
                return;
            }
        };
        // Every version id any disk names: a shard file named by none is
        // an orphan.
        let named: std::collections::HashSet<Uuid> = listings
            .iter()
            .flatten()
            .flatten()
            .flat_map(|l| l.versions.iter().map(|(k, _)| k.id))
            .collect();
        let older_left = chosen.is_some_and(|(key, _)| {
            listings
                .iter()
                .flatten()
                .flatten()
                .any(|l| l.versions.iter().any(|(k, _)| *k < key))
        });
        if !all_heard {
            report.deferred += 1;
        }
        let d = self.cfg.timeouts.deadline(OpClass::Delete);
        for (pos, slot) in listings.iter().enumerate() {
            let Some(Ok(l)) = slot else { continue };
            let disk = &*self.disks[pos];
            let mut gone = 0usize;
            let mut shards_left = l.shards.len();
            for &(k, kind) in &l.versions {
                match chosen {
                    // Draining a bucket for deletion: what is buried by a
                    // tombstone goes at once (no GET can begin on it; one
                    // under way is cut, as by the bucket's deletion).
                    Some((key, _)) if drain && k <= key => {
                        let (shard, file) =
                            discard_version(disk, bucket, dir, k, kind, &l.shards, d).await;
                        shards_left -= usize::from(shard);
                        if file {
                            report.tombstones += usize::from(k == key);
                            report.superseded += usize::from(k < key);
                            gone += 1;
                        }
                    }
                    Some((key, _)) if k < key => {
                        if supersede_one(disk, &self.cfg, bucket, dir, k, kind, &l.shards).await {
                            report.superseded += 1;
                            gone += 1;
                            if kind == VersionKind::Object && l.shards.contains(&k.id) {
                                shards_left -= 1;
                            }
                        }
                    }
                    Some((key, VersionKind::Tombstone)) if k == key => {
                        if all_heard && !older_left && older_than(k.ts, window) {
                            let p = meta::version_path(dir, k, kind);
                            if delete_file(disk, bucket, &p, d).await {
                                report.tombstones += 1;
                                gone += 1;
                            }
                        }
                    }
                    Some((key, _)) if k == key => {}
                    // Newer than the chosen version, or none chosen: a
                    // failed write once it can no longer land anywhere.
                    _ => {
                        if all_heard && older_than(k.ts, window) {
                            let (shard, file) =
                                discard_version(disk, bucket, dir, k, kind, &l.shards, d).await;
                            shards_left -= usize::from(shard);
                            if file {
                                report.failed_versions += 1;
                                gone += 1;
                            }
                        }
                    }
                }
            }
            if all_heard {
                for &id in &l.shards {
                    if named.contains(&id) {
                        continue;
                    }
                    let minted = meta::id_time(id);
                    let old = minted.is_none_or(|at| at.elapsed().is_ok_and(|a| a > window));
                    if old
                        && bury(disk, &self.cfg, bucket, &meta::shard_path(dir, id), id, d)
                            .await
                            .is_ok()
                    {
                        report.orphan_shards += 1;
                        shards_left -= 1;
                    }
                }
            }
            let empty = gone == l.versions.len()
                && shards_left == 0
                && l.subdirs.is_empty()
                && l.other.is_empty();
            if empty {
                report.directories += prune_dirs(disk, bucket, dir, d).await;
            }
        }
    }

    /// Delete graveyard files `superseded_grace` after first seeing them.
    async fn collect_graveyard(&self, deadline: Deadline) -> usize {
        let vol = self.cfg.tmp_volume.clone();
        let listed = self
            .list_everywhere(&vol, meta::GRAVEYARD, None, deadline)
            .await;
        let grace = self.cfg.superseded_grace;
        let cap = self.cfg.scan_max_entries;
        let mut due: Vec<(usize, String)> = Vec::new();
        {
            let mut clock = self.graves.lock().expect("grave clock lock");
            let now = Instant::now();
            let mut present = std::collections::HashSet::new();
            for (pos, slot) in listed.iter().enumerate() {
                let Some(Ok(entries)) = slot else { continue };
                for e in entries.iter().filter(|e| !e.ends_with('/')) {
                    present.insert((pos, e.clone()));
                }
            }
            // Forget what is gone; never remember more than the bound.
            clock.seen.retain(|k, _| present.contains(k));
            for k in present {
                match clock.seen.get(&k) {
                    Some(at) if now.duration_since(*at) >= grace => due.push(k),
                    Some(_) => {}
                    None if clock.seen.len() < cap => {
                        clock.seen.insert(k, now);
                    }
                    None => {}
                }
            }
        }
        let d = self.cfg.timeouts.deadline(OpClass::Delete);
        let mut n = 0;
        for (pos, e) in due {
            let p = format!("{}/{e}", meta::GRAVEYARD);
            if delete_file(&*self.disks[pos], &vol, &p, d).await {
                n += 1;
                self.graves
                    .lock()
                    .expect("grave clock lock")
                    .seen
                    .remove(&(pos, e));
            }
        }
        n
    }
}

/// Delete version `k` of object `dir` on one disk outright, its shard file
/// first (when `shards` lists it): for versions no reader can ever need.
/// Whether the shard file and the version file are gone.
async fn discard_version(
    disk: &dyn Disk,
    bucket: &str,
    dir: &str,
    k: meta::VersionKey,
    kind: VersionKind,
    shards: &[Uuid],
    d: Deadline,
) -> (bool, bool) {
    let shard =
        shards.contains(&k.id) && delete_file(disk, bucket, &meta::shard_path(dir, k.id), d).await;
    let file = delete_file(disk, bucket, &meta::version_path(dir, k, kind), d).await;
    (shard, file)
}
