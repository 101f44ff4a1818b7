//! A config store on local disks (4 "nodes" × 2 disks, sets of 4) with
//! one in-process locker per node: what the config-store tests here and the
//! IAM tests (`iam/tests/iam.rs`, which include this file by path) run on.

use std::sync::Arc;
use std::time::Duration;

use disk_io::{Deadline, Disk, DiskConfig, LocalDisk};
use disk_io_api::{LeaseConfig, LeaseTable, Locker};
use disk_io_erasure::{
    ConfigStore, ConfigStoreConfig, ErasureConfig, ErasureSets, LockConfig, QuorumLock, Topology,
};

pub fn dl() -> Deadline {
    Deadline::after(Duration::from_secs(10))
}

pub struct Cluster {
    pub store: ConfigStore,
    pub lockers: Vec<Arc<dyn Locker>>,
    _dirs: Vec<tempfile::TempDir>,
}

pub fn lock_cfg() -> LockConfig {
    LockConfig {
        ttl: Duration::from_secs(3),
        refresh_interval: Duration::from_secs(1),
        attempt_timeout: Duration::from_millis(200),
        ..LockConfig::default()
    }
}

/// 4 "nodes" × 2 disks, sets of 4 (2+2), one locker per node.
pub async fn cluster(cfg: ConfigStoreConfig) -> Cluster {
    let topology = Topology {
        nodes: 4,
        disks_per_node: 2,
        set_size: 4,
        parity: 2,
    };
    let layout = topology.sets().expect("layout");
    let mut dirs = Vec::new();
    let mut disks = std::collections::HashMap::new();
    for (set, slots) in layout.iter().enumerate() {
        for (index, slot) in slots.iter().enumerate() {
            let d = tempfile::tempdir().expect("tempdir");
            let disk = LocalDisk::builder(d.path())
                .config(DiskConfig::default())
                .label(format!("n{}d{}", slot.node, slot.disk))
                .open(dl())
                .await
                .expect("open");
            disk.format(set as u32, index as u32, false, dl())
                .await
                .expect("format");
            disks.insert((slot.node, slot.disk), Arc::new(disk) as Arc<dyn Disk>);
            dirs.push(d);
        }
    }
    let (sets, _) = ErasureSets::open(
        topology,
        |s| disks[&(s.node, s.disk)].clone(),
        ErasureConfig::default(),
        dl(),
    )
    .await
    .expect("open sets");
    let lockers: Vec<Arc<dyn Locker>> = (1..=4)
        .map(|i| {
            Arc::new(LeaseTable::new(
                &format!("node{i}"),
                LeaseConfig {
                    startup_quiet: Duration::ZERO,
                    ..LeaseConfig::default()
                },
            )) as Arc<dyn Locker>
        })
        .collect();
    let locks = QuorumLock::new(lockers.clone(), "test", lock_cfg()).expect("locks");
    let store = ConfigStore::new(Arc::new(sets), locks, cfg);
    store.init(dl()).await.expect("init");
    Cluster {
        store,
        lockers,
        _dirs: dirs,
    }
}
