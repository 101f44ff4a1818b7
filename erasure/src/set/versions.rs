//! Which version of an object is current: decided from the version files
//! the disks list, without locks (see ARCHITECTURE.md "Per-key commit").
//!
//! **Rule.** A version is *chosen* once its version file is on at least
//! `T = N − W + 1` disks (= the read quorum). The current version is the
//! newest chosen one (by [`VersionKey`]); a tombstone as current means
//! "not found". A reader answers only when the disks it heard make that
//! certain: every version newer than its answer is on too few of the heard
//! disks to be chosen even if all unheard disks held it, and (for "not
//! found") fewer than `T` disks are unheard.
//!
//! **Why it is linearizable.** An acknowledged write is on `W` disks, so it
//! is chosen. A write that starts after it lists `N − T + 1` disks, which
//! intersect those `W`, and takes a timestamp above every version it saw:
//! it orders after. A reader that starts after the acknowledgement hears
//! `N − T + 1` disks at least, sees the version on some of them and cannot
//! skip it. Chosen stays chosen: a version file is deleted only once a
//! newer version is chosen.

use std::collections::BTreeMap;

use super::*;
use crate::meta::{VersionKey, VersionKind};

/// One disk's view of an object directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DirListing {
    /// Version files, any order.
    pub versions: Vec<(VersionKey, VersionKind)>,
    /// Shard files by version id.
    pub shards: Vec<Uuid>,
    /// Sub-directories (other keys below this one), without the `/`.
    pub subdirs: Vec<String>,
    /// Anything else (format-1 metadata, strangers).
    pub other: Vec<String>,
}

impl DirListing {
    pub(crate) fn parse(entries: Vec<String>) -> DirListing {
        let mut l = DirListing::default();
        for e in entries {
            if let Some(d) = e.strip_suffix('/') {
                l.subdirs.push(d.to_string());
            } else if let Some(v) = VersionKey::parse(&e) {
                l.versions.push(v);
            } else if let Some(id) = meta::parse_shard(&e) {
                l.shards.push(id);
            } else {
                l.other.push(e);
            }
        }
        l
    }
}

/// One disk's answer to "list the object's directory", as the decision
/// counts it.
pub(crate) type ListingSlot = Slot<DirListing>;

/// Whether a disk was heard: it listed the directory, or answered that the
/// directory or the bucket is not there. Every other outcome leaves it
/// unheard (it may hold anything).
pub(crate) fn heard(slot: &ListingSlot) -> Option<&[(VersionKey, VersionKind)]> {
    match slot {
        Some(Ok(l)) => Some(&l.versions),
        Some(Err(DiskError::FileNotFound | DiskError::VolumeNotFound)) => Some(&[]),
        _ => None,
    }
}

/// What the listings decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The current version, and the disk positions that list it.
    Chosen {
        key: VersionKey,
        kind: VersionKind,
        holders: Vec<usize>,
    },
    /// No version is chosen.
    Absent,
    /// Cannot be decided from what was heard: `key` (newest undecided) is
    /// on `holders` heard disks and `unheard` disks were not heard.
    Undecided {
        key: Option<VersionKey>,
        holders: usize,
        unheard: usize,
    },
}

impl Decision {
    pub(crate) fn is_final(&self) -> bool {
        !matches!(self, Decision::Undecided { .. })
    }
}

/// The decision rule of the module docs over one listing per disk.
pub(crate) fn decide(listings: &[ListingSlot], threshold: usize) -> Decision {
    let mut unheard = 0usize;
    let mut counts: BTreeMap<VersionKey, (VersionKind, Vec<usize>)> = BTreeMap::new();
    for (pos, slot) in listings.iter().enumerate() {
        match heard(slot) {
            None => unheard += 1,
            Some(vs) => {
                for &(k, kind) in vs {
                    let e = counts.entry(k).or_insert((kind, Vec::new()));
                    if !e.1.contains(&pos) {
                        e.1.push(pos);
                    }
                }
            }
        }
    }
    for (key, (kind, holders)) in counts.into_iter().rev() {
        if holders.len() >= threshold {
            return Decision::Chosen { key, kind, holders };
        }
        if holders.len() + unheard >= threshold {
            return Decision::Undecided {
                key: Some(key),
                holders: holders.len(),
                unheard,
            };
        }
    }
    if unheard >= threshold {
        return Decision::Undecided {
            key: None,
            holders: 0,
            unheard,
        };
    }
    Decision::Absent
}

/// A decided object directory: the per-disk listings and their verdict.
pub(crate) struct Resolution {
    pub listings: Vec<ListingSlot>,
    pub decision: Decision,
}

impl Resolution {
    /// Per position: lists the chosen version, heard without it, or
    /// unheard.
    pub(crate) fn states(&self) -> Vec<MetaState> {
        let chosen = match &self.decision {
            Decision::Chosen { key, .. } => Some(*key),
            _ => None,
        };
        self.listings
            .iter()
            .map(|slot| match (heard(slot), chosen) {
                (None, _) => MetaState::Unknown,
                (Some(vs), Some(k)) if vs.iter().any(|(v, _)| *v == k) => MetaState::Match,
                (Some(_), _) => MetaState::Stale,
            })
            .collect()
    }

    /// The newest version timestamp any heard disk lists.
    pub(crate) fn newest_ts(&self) -> Option<u64> {
        self.listings
            .iter()
            .filter_map(heard)
            .flat_map(|vs| vs.iter().map(|(k, _)| k.ts))
            .max()
    }

    /// Disks that answered "no such bucket".
    pub(crate) fn bucket_missing(&self) -> usize {
        self.listings
            .iter()
            .filter(|s| matches!(s, Some(Err(DiskError::VolumeNotFound))))
            .count()
    }

    /// Every version any heard disk lists, newest first, with its holders.
    pub(crate) fn all_versions(&self) -> Vec<(VersionKey, VersionKind, Vec<usize>)> {
        let mut m: BTreeMap<VersionKey, (VersionKind, Vec<usize>)> = BTreeMap::new();
        for (pos, slot) in self.listings.iter().enumerate() {
            for &(k, kind) in heard(slot).unwrap_or(&[]) {
                m.entry(k).or_insert((kind, Vec::new())).1.push(pos);
            }
        }
        m.into_iter()
            .rev()
            .map(|(k, (kind, h))| (k, kind, h))
            .collect()
    }
}

impl ErasureSet {
    /// The version threshold `T` (= the read quorum; see the module docs).
    pub(crate) fn threshold(&self) -> usize {
        self.n() - self.write_quorum() + 1
    }

    /// List the object's directory on every disk until the listings decide
    /// (`wait_all`: until every disk answered or `deadline`).
    pub(crate) async fn resolve(
        &self,
        bucket: &str,
        name: &str,
        deadline: Deadline,
        wait_all: bool,
    ) -> Resolution {
        let t = self.threshold();
        self.list_object_dir(bucket, name, deadline, |rs| {
            !wait_all && decide(rs, t).is_final()
        })
        .await
    }

    /// `list_dir` of the object's directory on every disk, until `stop`
    /// holds for the listings in (or every disk answered, or `deadline`),
    /// and what they decide.
    pub(crate) async fn list_object_dir(
        &self,
        bucket: &str,
        name: &str,
        deadline: Deadline,
        stop: impl Fn(&[ListingSlot]) -> bool,
    ) -> Resolution {
        let (b, p) = (bucket.to_string(), name.to_string());
        let listings = self
            .gather(
                deadline,
                OpClass::ListDir,
                move |_, disk, d| {
                    let (b, p) = (b.clone(), p.clone());
                    Box::pin(async move { disk.list_dir(&b, &p, d).await.map(DirListing::parse) })
                },
                stop,
                false,
            )
            .await;
        let decision = decide(&listings, self.threshold());
        Resolution { listings, decision }
    }

    /// The current version's metadata (`ObjectNotFound` for none or a
    /// tombstone) and each disk's state relative to it.
    pub(super) async fn read_meta(
        &self,
        bucket: &str,
        name: &str,
        deadline: Deadline,
        wait_all: bool,
    ) -> Result<(ObjectMeta, Vec<MetaState>), ErasureError> {
        self.check_bucket(bucket)?;
        meta::check_name(name)?;
        let r = self.resolve(bucket, name, deadline, wait_all).await;
        let (key, holders) = self.current(&r, deadline)?;
        let m = self
            .read_version(bucket, name, key, &holders, deadline)
            .await?;
        Ok((m, r.states()))
    }

    /// The chosen object version of a resolution, or the error it means.
    pub(crate) fn current(
        &self,
        r: &Resolution,
        deadline: Deadline,
    ) -> Result<(VersionKey, Vec<usize>), ErasureError> {
        self.refresh_gauges();
        match &r.decision {
            Decision::Chosen {
                key,
                kind: VersionKind::Object,
                holders,
            } => Ok((*key, holders.clone())),
            Decision::Chosen { .. } => Err(ErasureError::ObjectNotFound),
            Decision::Absent if r.bucket_missing() >= self.threshold() => {
                Err(ErasureError::BucketNotFound)
            }
            Decision::Absent => Err(ErasureError::ObjectNotFound),
            Decision::Undecided { key, .. } => {
                // Holders of the undecided version vote for it; every other
                // heard disk disagrees; the unheard are missing.
                let mut t = Tally::new(QuorumOp::ReadMeta, self.threshold(), self.n());
                for (pos, slot) in r.listings.iter().enumerate() {
                    let admits = self.admits(pos);
                    match (heard(slot), key) {
                        (Some(vs), Some(k)) if vs.iter().any(|(v, _)| v == k) => t.ok(admits),
                        (Some(_), _) => t.disagree(admits),
                        (None, _) => match slot {
                            Some(Err(e)) => t.err(e.clone(), admits),
                            _ => t.missing(admits),
                        },
                    }
                }
                match self.decide(&t, deadline)? {
                    // Cannot happen (fewer holders than the threshold), but
                    // an undecided read is never an answer.
                    Outcome::Met { .. } | Outcome::Agreed(_) => {
                        Err(ErasureError::DeadlineExceeded {
                            op: QuorumOp::ReadMeta.as_str(),
                        })
                    }
                }
            }
        }
    }

    /// Read version `key`'s metadata from the first of `holders` that
    /// gives a valid copy (each version file is immutable, so any copy is
    /// the copy).
    pub(crate) async fn read_version(
        &self,
        bucket: &str,
        name: &str,
        key: VersionKey,
        holders: &[usize],
        deadline: Deadline,
    ) -> Result<ObjectMeta, ErasureError> {
        let path = meta::version_path(name, key, VersionKind::Object);
        let mut order = holders.to_vec();
        order.sort_by_key(|&p| (self.straggling(p), !self.admits(p)));
        let mut last = None;
        for pos in order {
            let d = deadline_of(&self.cfg, OpClass::ReadAll, deadline);
            let r = bounded(
                OpClass::ReadAll,
                d,
                self.disks[pos].read_all(bucket, &path, d),
            )
            .await;
            match r {
                Ok(bytes) if bytes.len() <= self.cfg.max_meta_size => {
                    match ObjectMeta::from_bytes(&bytes, self.n()) {
                        Ok(m) if m.version == key.id => return Ok(m),
                        Ok(_) => {
                            last = Some(ErasureError::CorruptMeta {
                                reason: format!("{path}: version id does not match its name"),
                            })
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Ok(bytes) => {
                    last = Some(ErasureError::CorruptMeta {
                        reason: format!("{path}: {} bytes", bytes.len()),
                    })
                }
                Err(e) => last = Some(ErasureError::Disk(e)),
            }
            if deadline.is_expired() {
                break;
            }
        }
        Err(last.unwrap_or(ErasureError::DeadlineExceeded {
            op: QuorumOp::ReadMeta.as_str(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ts: u64) -> VersionKey {
        VersionKey {
            ts,
            id: Uuid::from_u128(ts as u128),
        }
    }

    fn disk(vs: &[u64]) -> ListingSlot {
        Some(Ok(DirListing {
            versions: vs.iter().map(|&t| (key(t), VersionKind::Object)).collect(),
            ..Default::default()
        }))
    }

    fn unheard() -> ListingSlot {
        None
    }

    #[test]
    fn newest_version_on_threshold_disks_wins() {
        // 8 disks, T = 4: v2 on 4 disks, v1 on all.
        let ls = vec![
            disk(&[1, 2]),
            disk(&[1, 2]),
            disk(&[1, 2]),
            disk(&[1, 2]),
            disk(&[1]),
            disk(&[1]),
            disk(&[1]),
            disk(&[1]),
        ];
        assert!(matches!(decide(&ls, 4), Decision::Chosen { key: k, .. } if k == key(2)));
    }

    #[test]
    fn a_version_that_might_be_chosen_blocks_the_answer() {
        // v2 on 3 heard disks, one disk unheard: v2 may be on 4.
        let mut ls = vec![disk(&[1, 2]), disk(&[1, 2]), disk(&[1, 2])];
        ls.extend((0..4).map(|_| disk(&[1])));
        ls.push(unheard());
        assert_eq!(
            decide(&ls, 4),
            Decision::Undecided {
                key: Some(key(2)),
                holders: 3,
                unheard: 1
            }
        );
        // Heard everywhere: v2 is a failed write, v1 is current.
        ls[7] = disk(&[1]);
        assert!(matches!(decide(&ls, 4), Decision::Chosen { key: k, .. } if k == key(1)));
    }

    #[test]
    fn absent_needs_fewer_than_threshold_unheard() {
        let mut ls: Vec<ListingSlot> = (0..4).map(|_| Some(Err(DiskError::FileNotFound))).collect();
        ls.extend((0..4).map(|_| unheard()));
        assert!(!decide(&ls, 4).is_final());
        ls[4] = Some(Err(DiskError::VolumeNotFound));
        assert_eq!(decide(&ls, 4), Decision::Absent);
        // An answered error other than "not there" is not "heard".
        ls[4] = Some(Err(DiskError::NoSpace));
        assert!(!decide(&ls, 4).is_final());
    }

    #[test]
    fn a_tombstone_is_a_version() {
        let mut ls = Vec::new();
        for _ in 0..5 {
            ls.push(Some(Ok(DirListing {
                versions: vec![
                    (key(1), VersionKind::Object),
                    (key(2), VersionKind::Tombstone),
                ],
                ..Default::default()
            })));
        }
        ls.extend((0..3).map(|_| disk(&[1])));
        assert!(matches!(
            decide(&ls, 4),
            Decision::Chosen {
                kind: VersionKind::Tombstone,
                ..
            }
        ));
    }

    #[test]
    fn listings_parse_our_names_only() {
        let k = key(7);
        let l = DirListing::parse(vec![
            k.file_name(VersionKind::Object),
            format!("{}.shards", k.id),
            "sub/".into(),
            "object.meta".into(),
        ]);
        assert_eq!(l.versions, vec![(k, VersionKind::Object)]);
        assert_eq!(l.shards, vec![k.id]);
        assert_eq!(l.subdirs, vec!["sub".to_string()]);
        assert_eq!(l.other, vec!["object.meta".to_string()]);
    }
}
