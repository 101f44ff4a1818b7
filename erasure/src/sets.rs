//! [`ErasureSets`]: every set of the cluster, built from a [`Topology`],
//! and the placement of objects on sets.

use std::sync::Arc;

use disk_io_api::{Deadline, Disk, DiskError};

use crate::config::{DiskSlot, ErasureConfig, Topology};
use crate::error::ErasureError;
use crate::heal::{HealQueue, HealTask};
use crate::set::{ErasureSet, HealReport, SetReport};

/// All sets of a cluster.
#[derive(Debug)]
pub struct ErasureSets {
    topology: Topology,
    sets: Vec<Arc<ErasureSet>>,
    heal: Arc<HealQueue>,
    cfg: Arc<ErasureConfig>,
}

impl ErasureSets {
    /// Cut the cluster's disks into sets and open them all at once: every
    /// disk's id is checked in parallel under the one `deadline`, and a
    /// disk that does not answer by then is recorded missing. `disk(slot)`
    /// gives the disk at a slot.
    pub async fn open(
        topology: Topology,
        mut disk: impl FnMut(DiskSlot) -> Arc<dyn Disk>,
        cfg: ErasureConfig,
        deadline: Deadline,
    ) -> Result<(ErasureSets, Vec<SetReport>), ErasureError> {
        cfg.validate()?;
        let layout = topology.sets()?;
        let cfg = Arc::new(cfg);
        let heal = Arc::new(HealQueue::new(cfg.heal_queue_capacity));
        let opens = layout.iter().enumerate().map(|(i, slots)| {
            let disks: Vec<Arc<dyn Disk>> = slots.iter().map(|s| disk(*s)).collect();
            ErasureSet::open(
                i,
                disks,
                topology.parity,
                cfg.clone(),
                heal.clone(),
                deadline,
            )
        });
        let opened = futures_util::future::join_all(opens.collect::<Vec<_>>()).await;
        let mut sets = Vec::with_capacity(opened.len());
        let mut reports = Vec::with_capacity(opened.len());
        for r in opened {
            let (s, rep) = r?;
            sets.push(Arc::new(s));
            reports.push(rep);
        }
        Ok((
            ErasureSets {
                topology,
                sets,
                heal,
                cfg,
            },
            reports,
        ))
    }

    /// The topology.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Every set.
    pub fn sets(&self) -> &[Arc<ErasureSet>] {
        &self.sets
    }

    /// The shared heal queue.
    pub fn heal_queue(&self) -> &Arc<HealQueue> {
        &self.heal
    }

    /// Pop one task from the heal queue (waiting at most until `wait`) and
    /// heal it under `heal_object_budget`. `None` when nothing came.
    pub async fn heal_next(
        &self,
        wait: Deadline,
    ) -> Option<(HealTask, Result<HealReport, ErasureError>)> {
        let task = self.heal.pop(wait).await?;
        let Some(set) = self.sets.get(task.set) else {
            debug_assert!(false, "heal task for a set that does not exist: {task:?}");
            return None;
        };
        let d = Deadline::after(self.cfg.heal_object_budget);
        let r = set.heal_object(&task.bucket, &task.object, d).await;
        if let Err(e) = &r {
            tracing::warn!(?task, error = %e, "heal failed");
        }
        Some((task, r))
    }

    /// Run the healer until `shutdown` turns true (or its sender is
    /// dropped): pop, heal, repeat. Returns the task's handle.
    pub fn spawn_healer(
        self: &Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let sets = self.clone();
        tokio::spawn(async move {
            loop {
                if *shutdown.borrow() {
                    return;
                }
                let wait = Deadline::after(sets.cfg.healer_poll);
                tokio::select! {
                    changed = shutdown.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = sets.heal_next(wait) => {}
                }
            }
        })
    }

    /// Create a bucket on every set (in parallel, each with write quorum).
    pub async fn make_bucket(&self, bucket: &str, deadline: Deadline) -> Result<(), ErasureError> {
        let makes = self.sets.iter().map(|s| s.make_bucket(bucket, deadline));
        for r in futures_util::future::join_all(makes).await {
            r?;
        }
        Ok(())
    }

    /// Buckets present on every set, with their creation time (a bucket
    /// on only some sets is a create that failed half-way, and is left
    /// out until a create or delete finishes it).
    pub async fn list_buckets(
        &self,
        deadline: Deadline,
    ) -> Result<Vec<(String, std::time::SystemTime)>, ErasureError> {
        let lists = self.sets.iter().map(|s| s.list_buckets(deadline));
        let mut common: Option<std::collections::BTreeMap<String, std::time::SystemTime>> = None;
        for r in futures_util::future::join_all(lists).await {
            let here: std::collections::BTreeMap<_, _> = r?.into_iter().collect();
            common = Some(match common {
                None => here,
                Some(c) => c
                    .into_iter()
                    .filter_map(|(b, t)| here.get(&b).map(|t2| (b, t.min(*t2))))
                    .collect(),
            });
        }
        Ok(common.unwrap_or_default().into_iter().collect())
    }

    /// Delete a bucket with no current object from every set. Every set
    /// drains it first (deleted objects' files go; a current object is
    /// `BucketNotEmpty`), so a bucket with objects on one set is not
    /// deleted from the others.
    pub async fn delete_bucket(
        &self,
        bucket: &str,
        deadline: Deadline,
    ) -> Result<(), ErasureError> {
        // Every set first: a current object anywhere refuses the deletion
        // before any set has deleted its volume. (Listing names is not
        // enough since deletes are tombstones: a deleted object's
        // directory stays until the drain removes it.)
        let drains = self.sets.iter().map(|s| s.drain_bucket(bucket, deadline));
        for r in futures_util::future::join_all(drains).await {
            r?;
        }
        let deletes = self.sets.iter().map(|s| s.delete_volumes(bucket, deadline));
        let mut missing = 0;
        for r in futures_util::future::join_all(deletes).await {
            match r {
                Ok(()) => {}
                Err(ErasureError::BucketNotFound) => missing += 1,
                Err(ErasureError::Disk(DiskError::VolumeNotEmpty)) => {
                    return Err(ErasureError::BucketNotEmpty)
                }
                Err(e) => return Err(e),
            }
        }
        if missing == self.sets.len() {
            return Err(ErasureError::BucketNotFound);
        }
        Ok(())
    }

    /// The set an object lives on (a hash of its name).
    pub fn set_for(&self, bucket: &str, object: &str) -> &Arc<ErasureSet> {
        &self.sets[placement(bucket, object, self.sets.len())]
    }
}

/// Set index for an object: BLAKE3 of `bucket/object`, modulo the sets.
pub fn placement(bucket: &str, object: &str, sets: usize) -> usize {
    assert!(sets > 0);
    let mut h = blake3::Hasher::new();
    h.update(bucket.as_bytes());
    h.update(b"/");
    h.update(object.as_bytes());
    let v = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
    (v % sets as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_spreads() {
        assert_eq!(placement("b", "o", 2), placement("b", "o", 2));
        let on0 = (0..1000)
            .filter(|i| placement("b", &format!("obj{i}"), 2) == 0)
            .count();
        assert!((350..650).contains(&on0), "{on0}");
        assert_eq!(placement("b", "o", 1), 0);
    }
}
