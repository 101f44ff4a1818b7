//! Set initialisation from a topology: 4 nodes × 4 disks in sets of 8 with
//! 4 parity, every disk id checked in parallel under one deadline. A hung
//! disk is recorded missing by that deadline (never waited on); a disk
//! carrying another position's id is kept out. Needs root and /dev/fuse
//! (one disk is a hung FaultFs mount).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_io::{Deadline, Disk, DiskConfig, LocalDisk};
use disk_io_erasure::{DiskSlot, DiskStatus, ErasureConfig, ErasureError, ErasureSets, Topology};
use disk_io_harness::{privilege, FaultFs};

mod common;
use common::setup_deadline;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_by_four_opens_two_sets_and_records_a_hung_disk_missing_by_the_deadline() {
    privilege::require_fuse().expect("this test mounts FUSE");
    let topo = Topology {
        nodes: 4,
        disks_per_node: 4,
        set_size: 8,
        parity: 4,
    };
    let layout = topo.sets().unwrap();
    let hung_slot = DiskSlot { node: 3, disk: 1 };
    let wrong_slot = DiskSlot { node: 0, disk: 2 };
    let (_scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
    let mut tmp = Vec::new();
    let mut disks: HashMap<DiskSlot, Arc<dyn Disk>> = HashMap::new();
    let cfg = DiskConfig {
        disk_id_cache_ttl: Duration::ZERO,
        ..DiskConfig::default()
    };
    for (set, slots) in layout.iter().enumerate() {
        for (pos, &slot) in slots.iter().enumerate() {
            let root = if slot == hung_slot {
                fs.mountpoint().to_path_buf()
            } else {
                let t = tempfile::tempdir().unwrap();
                let p = t.path().to_path_buf();
                tmp.push(t);
                p
            };
            let disk = LocalDisk::builder(&root)
                .config(cfg.clone())
                .open(setup_deadline())
                .await
                .expect("open");
            // The wrong disk claims position 7 of its set.
            let idx = if slot == wrong_slot { 7 } else { pos as u32 };
            disk.format(set as u32, idx, false, setup_deadline())
                .await
                .expect("format");
            disks.insert(slot, Arc::new(disk));
        }
    }
    fs.control().hang();
    let budget = Duration::from_millis(800);
    let deadline = Deadline::after(budget);
    let started = Instant::now();
    let (sets, reports) = ErasureSets::open(
        topo,
        |slot| disks[&slot].clone(),
        ErasureConfig::default(),
        deadline,
    )
    .await
    .expect("open sets");
    let took = started.elapsed();
    assert!(
        deadline.overshoot(Instant::now()) <= Duration::from_millis(500),
        "set initialisation took {took:?} with a deadline of {budget:?}"
    );
    assert_eq!(sets.sets().len(), 2);
    assert_eq!(reports.len(), 2);
    let mut missing = 0;
    let mut wrong = 0;
    for (set, rep) in reports.iter().enumerate() {
        for (pos, st) in rep.disks.iter().enumerate() {
            let slot = layout[set][pos];
            match st {
                DiskStatus::Ok(id) => {
                    assert_eq!((id.set_index, id.disk_index), (set as u32, pos as u32));
                }
                DiskStatus::Missing(e) => {
                    assert_eq!(slot, hung_slot, "{e}");
                    assert!(e.is_unavailable(), "{e:?}");
                    missing += 1;
                }
                DiskStatus::WrongId { found, .. } => {
                    assert_eq!(slot, wrong_slot);
                    assert_eq!(found.disk_index, 7);
                    wrong += 1;
                }
            }
        }
    }
    assert_eq!((missing, wrong), (1, 1), "{reports:?}");
    assert_eq!(reports.iter().map(|r| r.available()).sum::<usize>(), 14);
    // Objects are placed by name over both sets, and work with a disk
    // missing in one and one kept out.
    let mut used = [false; 2];
    for i in 0..16 {
        let name = format!("o{i}");
        let set = sets.set_for("b", &name);
        used[set.index()] = true;
    }
    assert!(used[0] && used[1], "placement uses both sets");
    for set in sets.sets() {
        set.make_bucket("b", setup_deadline())
            .await
            .expect("bucket");
        let name = (0..100)
            .map(|i| format!("o{i}"))
            .find(|n| sets.set_for("b", n).index() == set.index())
            .unwrap();
        let mut src: &[u8] = b"hello sets";
        let rep = set
            .put_object(
                "b",
                &name,
                &mut src,
                Deadline::after(Duration::from_secs(30)),
            )
            .await
            .expect("put");
        assert!(rep.written.len() >= 5, "{rep:?}");
        let mut out = Vec::new();
        set.get_object("b", &name, None, &mut out, setup_deadline())
            .await
            .expect("get");
        assert_eq!(out, b"hello sets");
        assert_eq!(set.stats().false_quorum_loss(), 0);
    }
    fs.control().release();
    // The write on the hung disk's set was queued; the healer rebuilds it
    // once the disk answers again (it may take a probe to come back).
    let (task, first) = sets
        .heal_next(Deadline::after(Duration::from_secs(2)))
        .await
        .expect("a queued heal task");
    let set = &sets.sets()[task.set];
    let hung_pos = layout[task.set]
        .iter()
        .position(|&s| s == hung_slot)
        .expect("the hung disk's set");
    let mut healed = first.as_ref().is_ok_and(|h| h.healed.contains(&hung_pos));
    for _ in 0..20 {
        if healed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let h = set
            .heal_object(&task.bucket, &task.object, setup_deadline())
            .await;
        healed = h.is_ok_and(|h| h.healed.contains(&hung_pos) || h.good.contains(&hung_pos));
    }
    assert!(healed, "the disk that was hung got its shard back");
    let bad = Topology {
        set_size: 6,
        ..topo
    };
    assert!(matches!(
        ErasureSets::open(
            bad,
            |s| disks[&s].clone(),
            ErasureConfig::default(),
            setup_deadline()
        )
        .await,
        Err(ErasureError::InvalidTopology { .. })
    ));
}
