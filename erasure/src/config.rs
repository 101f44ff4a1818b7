//! [`ErasureConfig`] and [`Topology`]: every bound and budget of the erasure
//! layer in one place, validated before use.

use std::time::Duration;

use disk_io_api::OpTimeouts;

use crate::error::ErasureError;

/// Bounds and budgets of the erasure layer. Nothing in the crate uses a
/// literal where a field of this struct belongs.
#[derive(Clone, Debug)]
pub struct ErasureConfig {
    /// Bytes of object data per erasure block (split over the data shards).
    pub block_size: usize,
    /// Per-disk budgets: each disk call gets `min(caller's deadline, now +
    /// budget of its class)`.
    pub timeouts: OpTimeouts,
    /// A read that has not answered after this long is hedged: another
    /// shard (parity) is asked for, and the late disk is put last for the
    /// rest of the object.
    pub hedge_delay: Duration,
    /// Once a quorum has answered (taken a block, finished a shard, written
    /// metadata), the other disks get `straggler_factor` × the time the
    /// quorum took, at least `straggler_floor` and at most
    /// `straggler_wait`, before they are dropped (and healed later). So a
    /// hung disk costs a small PUT about its own latency again, not a
    /// fixed quarter second, and a large PUT at most `straggler_wait` once.
    pub straggler_wait: Duration,
    /// Least straggler grace.
    pub straggler_floor: Duration,
    /// Straggler grace as a multiple of the time the quorum took.
    pub straggler_factor: f64,
    /// A disk left behind by a quorum gets no grace at all for this long
    /// afterwards (until it keeps up again): a hung disk then costs one
    /// grace per `straggler_memory`, not one per call.
    pub straggler_memory: Duration,
    /// Blocks queued per disk writer (memory bound of a write:
    /// `write_queue_blocks × set size × shard block`).
    pub write_queue_blocks: usize,
    /// Objects the heal queue holds; beyond, pushes are counted and
    /// dropped (the scanner finds them later).
    pub heal_queue_capacity: usize,
    /// Largest metadata file accepted.
    pub max_meta_size: usize,
    /// Most bytes of user metadata (keys and values) an object may carry.
    pub max_user_meta: usize,
    /// Entries one scanner pass visits at most.
    pub scan_max_entries: usize,
    /// Objects one scanner pass heals at once.
    pub scan_heal_concurrency: usize,
    /// How long after its version timestamp (or id) a write may still
    /// land a file on a disk: at least the longest deadline any write is
    /// given (the S3 layer's transfer budget) plus the RPC replay window
    /// and the clock skew between nodes. The collector treats a version on
    /// too few disks, an unnamed shard file, or a tombstone's shadow as
    /// dead only after it.
    pub commit_window: Duration,
    /// How long a superseded version's shard file stays in the graveyard
    /// after the collector first sees it there: at least the longest GET
    /// (a GET that began on the version finishes with it).
    pub superseded_grace: Duration,
    /// Objects remembered as unhealable (reported, not retried in a loop).
    pub unhealable_max: usize,
    /// Budget for healing one object popped from the heal queue.
    pub heal_object_budget: Duration,
    /// How long the healer waits on an empty queue before looking again
    /// (and checking for shutdown).
    pub healer_poll: Duration,
    /// Staging files in the temporary volume older than this are left over
    /// from aborted writes or heals, and `purge_tmp` removes them.
    pub tmp_max_age: Duration,
    /// Volume holding writes in progress on every disk.
    pub tmp_volume: String,
}

impl Default for ErasureConfig {
    fn default() -> Self {
        ErasureConfig {
            block_size: 1 << 20,
            timeouts: OpTimeouts::default(),
            hedge_delay: Duration::from_millis(50),
            straggler_wait: Duration::from_millis(250),
            straggler_floor: Duration::from_millis(100),
            straggler_factor: 2.0,
            straggler_memory: Duration::from_secs(5),
            write_queue_blocks: 4,
            heal_queue_capacity: 10_000,
            max_meta_size: 1 << 20,
            max_user_meta: 8 << 10,
            scan_max_entries: 100_000,
            scan_heal_concurrency: 4,
            commit_window: Duration::from_secs(20 * 60),
            superseded_grace: Duration::from_secs(20 * 60),
            unhealable_max: 1000,
            heal_object_budget: Duration::from_secs(60),
            healer_poll: Duration::from_secs(1),
            tmp_max_age: Duration::from_secs(3600),
            tmp_volume: "diskio-tmp".to_string(),
        }
    }
}

impl ErasureConfig {
    /// How long the disks outside a quorum still get, once the quorum
    /// answered after `quorum_took`.
    pub fn straggler_grace(&self, quorum_took: Duration) -> Duration {
        quorum_took
            .mul_f64(self.straggler_factor)
            .clamp(self.straggler_floor, self.straggler_wait)
    }

    /// Why this config cannot work, naming the field.
    pub fn validate(&self) -> Result<(), ErasureError> {
        let bad = |field: &'static str, reason: &str| {
            Err(ErasureError::InvalidConfig {
                field,
                reason: reason.to_string(),
            })
        };
        if self.block_size < 2 || self.block_size > (64 << 20) {
            return bad("block_size", "must be in 2 B ..= 64 MiB");
        }
        if let Err(reason) = self.timeouts.check() {
            return bad("timeouts", &reason);
        }
        if self.hedge_delay.is_zero() {
            return bad("hedge_delay", "must be > 0");
        }
        if self.straggler_floor > self.straggler_wait {
            return bad("straggler_floor", "must be <= straggler_wait");
        }
        if !(self.straggler_factor.is_finite() && self.straggler_factor >= 0.0) {
            return bad("straggler_factor", "must be a finite number >= 0");
        }
        if self.write_queue_blocks == 0 || self.write_queue_blocks > 1024 {
            return bad("write_queue_blocks", "must be in 1 ..= 1024");
        }
        if self.heal_queue_capacity == 0 {
            return bad("heal_queue_capacity", "must be > 0");
        }
        if self.max_meta_size < 1024 {
            return bad("max_meta_size", "must be >= 1 KiB");
        }
        if self.max_user_meta > self.max_meta_size / 2 {
            return bad("max_user_meta", "must be <= max_meta_size / 2");
        }
        if self.scan_heal_concurrency == 0 || self.scan_heal_concurrency > 256 {
            return bad("scan_heal_concurrency", "must be in 1 ..= 256");
        }
        if self.scan_max_entries == 0 {
            return bad("scan_max_entries", "must be > 0");
        }
        if self.heal_object_budget.is_zero() {
            return bad("heal_object_budget", "must be > 0");
        }
        if self.healer_poll.is_zero() {
            return bad("healer_poll", "must be > 0");
        }
        if self.commit_window.is_zero() {
            return bad("commit_window", "must be > 0");
        }
        if self.unhealable_max == 0 {
            return bad("unhealable_max", "must be > 0");
        }
        if self.tmp_max_age.is_zero() {
            return bad("tmp_max_age", "must be > 0");
        }
        if self.tmp_volume.is_empty() || self.tmp_volume.contains('/') {
            return bad("tmp_volume", "must be a plain volume name");
        }
        Ok(())
    }
}

/// Where a disk sits in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DiskSlot {
    /// Node index.
    pub node: usize,
    /// Disk index on that node.
    pub disk: usize,
}

/// The cluster's shape: `nodes × disks_per_node` disks cut into erasure
/// sets of `set_size` with `parity` parity shards each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Number of nodes.
    pub nodes: usize,
    /// Disks on each node.
    pub disks_per_node: usize,
    /// Disks per erasure set.
    pub set_size: usize,
    /// Parity shards per object (data = set_size − parity).
    pub parity: usize,
}

impl Topology {
    /// Why the topology cannot work.
    pub fn validate(&self) -> Result<(), ErasureError> {
        let bad = |reason: String| Err(ErasureError::InvalidTopology { reason });
        if self.nodes == 0 || self.disks_per_node == 0 {
            return bad("nodes and disks_per_node must be > 0".into());
        }
        let total = self.nodes * self.disks_per_node;
        if self.set_size < 2 || self.set_size > 256 {
            return bad(format!("set_size {} must be in 2 ..= 256", self.set_size));
        }
        if !total.is_multiple_of(self.set_size) {
            return bad(format!(
                "{total} disks cannot be cut into sets of {}",
                self.set_size
            ));
        }
        if self.parity == 0 || self.parity > self.set_size / 2 {
            return bad(format!(
                "parity {} must be in 1 ..= set_size / 2 ({})",
                self.parity,
                self.set_size / 2
            ));
        }
        Ok(())
    }

    /// Data shards per object.
    pub fn data(&self) -> usize {
        self.set_size - self.parity
    }

    /// The disks of every set. Disks are taken column by column (disk 0 of
    /// every node, then disk 1, ...), so each set is spread as evenly as
    /// possible over the nodes: 4 nodes × 4 disks in sets of 8 gives 2
    /// sets, each holding 2 disks of every node.
    pub fn sets(&self) -> Result<Vec<Vec<DiskSlot>>, ErasureError> {
        self.validate()?;
        let order: Vec<DiskSlot> = (0..self.disks_per_node)
            .flat_map(|disk| (0..self.nodes).map(move |node| DiskSlot { node, disk }))
            .collect();
        Ok(order.chunks(self.set_size).map(<[_]>::to_vec).collect())
    }
}

/// Write quorum for `data` + `parity`: `data`, plus one when data equals
/// parity (so two writes can never both reach quorum on disjoint halves).
pub fn write_quorum(data: usize, parity: usize) -> usize {
    if data == parity {
        data + 1
    } else {
        data
    }
}

/// Read quorum: `data` shards (or metadata copies) are needed.
pub fn read_quorum(data: usize, _parity: usize) -> usize {
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_by_four_gives_two_sets_two_disks_per_node() {
        let t = Topology {
            nodes: 4,
            disks_per_node: 4,
            set_size: 8,
            parity: 4,
        };
        let sets = t.sets().unwrap();
        assert_eq!(sets.len(), 2);
        for set in &sets {
            assert_eq!(set.len(), 8);
            for node in 0..4 {
                assert_eq!(set.iter().filter(|s| s.node == node).count(), 2);
            }
        }
        let mut all: Vec<_> = sets.concat();
        all.sort_by_key(|s| (s.node, s.disk));
        all.dedup();
        assert_eq!(all.len(), 16, "every disk in exactly one set");
        assert_eq!(write_quorum(4, 4), 5);
        assert_eq!(read_quorum(4, 4), 4);
    }

    #[test]
    fn one_node_eight_disks_is_one_set() {
        let t = Topology {
            nodes: 1,
            disks_per_node: 8,
            set_size: 8,
            parity: 4,
        };
        let sets = t.sets().unwrap();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].len(), 8);
    }

    #[test]
    fn bad_topologies_are_typed_errors() {
        let base = Topology {
            nodes: 4,
            disks_per_node: 4,
            set_size: 8,
            parity: 4,
        };
        for t in [
            Topology { nodes: 0, ..base },
            Topology {
                set_size: 7,
                ..base
            },
            Topology { parity: 0, ..base },
            Topology { parity: 5, ..base },
            Topology {
                set_size: 1,
                ..base
            },
        ] {
            assert!(matches!(
                t.sets(),
                Err(ErasureError::InvalidTopology { .. })
            ));
        }
        assert_eq!(write_quorum(6, 2), 6);
    }

    #[test]
    fn straggler_grace_is_proportional_and_bounded() {
        let c = ErasureConfig::default();
        assert_eq!(c.straggler_grace(Duration::ZERO), c.straggler_floor);
        assert_eq!(
            c.straggler_grace(Duration::from_millis(80)),
            Duration::from_millis(160)
        );
        assert_eq!(c.straggler_grace(Duration::from_secs(5)), c.straggler_wait);
        let bad = ErasureConfig {
            straggler_floor: Duration::from_secs(1),
            ..ErasureConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(ErasureError::InvalidConfig {
                field: "straggler_floor",
                ..
            })
        ));
    }

    #[test]
    fn config_validation_names_the_field() {
        assert!(ErasureConfig::default().validate().is_ok());
        let c = ErasureConfig {
            write_queue_blocks: 0,
            ..ErasureConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ErasureError::InvalidConfig {
                field: "write_queue_blocks",
                ..
            })
        ));
    }
}
