//! Object round trips over 8 healthy local disks (temp dirs, no privilege
//! needed): byte-exact from 0 B to 64 MiB, ranges, stat, list, delete and
//! the typed errors for bad input.

use std::time::Duration;

use disk_io::Deadline;
use disk_io_erasure::{ErasureConfig, ErasureError};

mod common;
use common::*;

fn long() -> Deadline {
    Deadline::after(Duration::from_secs(120))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_from_0_b_to_64_mib_round_trip_byte_exact() {
    let fx = fixture(
        &[],
        ErasureConfig {
            block_size: 1 << 20,
            ..ErasureConfig::default()
        },
    )
    .await;
    let sizes: &[usize] = &[
        0,
        1,
        2,
        3,
        7,
        4095,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 1,
        3 * (1 << 20) + 12_345,
        64 << 20,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let name = format!("dir/obj-{size}");
        let data = bytes(size, i as u64 + 1);
        let rep = put(&fx.set, &name, &data, long()).await;
        assert_eq!(rep.size, size as u64);
        // Healthy disks; one may still lag past the straggler grace on a
        // loaded machine and be left for healing.
        assert!(
            rep.written.len() >= 7 && rep.written.len() + rep.missed.len() == 8,
            "{rep:?}"
        );
        let (back, r) = get(&fx.set, &name, None, long()).await.expect("get");
        assert!(back == data, "{size} B object differs after the round trip");
        // No bitrot; a shard may be missing only on a disk the write left
        // behind (see above).
        assert!(
            r.bitrot.is_empty() && r.missing.iter().all(|d| rep.missed.contains(d)),
            "{r:?} after {rep:?}"
        );
        let info = fx
            .set
            .stat_object(BUCKET, &name, long())
            .await
            .expect("stat");
        assert_eq!(info.size, size as u64);
        assert_eq!(info.version, rep.version);
    }
    // Ranged reads across block boundaries, at the ends, and empty.
    let name = "dir/obj-3158073";
    let data = bytes(3 * (1 << 20) + 12_345, 10);
    for (off, len) in [
        (0u64, 1u64),
        (1, 10),
        ((1 << 20) - 5, 10),
        ((1 << 20) + 3, 2 << 20),
        (data.len() as u64 - 1, 1),
        (17, 0),
        (0, data.len() as u64),
    ] {
        let (back, _) = get(&fx.set, name, Some((off, len)), long())
            .await
            .expect("range");
        assert_eq!(
            back,
            &data[off as usize..(off + len) as usize],
            "range {off}+{len}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_list_delete_and_overwrite_follow_quorum() {
    let fx = fixture(&[], test_config()).await;
    put(&fx.set, "a/one", b"first", long()).await;
    put(&fx.set, "a/two", &bytes(600_000, 3), long()).await;
    put(&fx.set, "b", b"x", long()).await;
    assert_eq!(
        fx.set.list(BUCKET, "", long()).await.unwrap(),
        vec!["a".to_string(), "b".to_string()]
    );
    assert_eq!(
        fx.set.list(BUCKET, "a", long()).await.unwrap(),
        vec!["one".to_string(), "two".to_string()]
    );
    // Overwrite: the new version wins, and the old shard files go.
    let v2 = put(&fx.set, "a/one", b"second version", long()).await;
    let (back, _) = get(&fx.set, "a/one", None, long()).await.unwrap();
    assert_eq!(back, b"second version");
    for root in &fx.backing {
        let dir = root.join(BUCKET).join("a/one");
        let only_new = vec![format!("{}.shards", v2.version)];
        let shards = || -> Vec<String> {
            files_under(&dir)
                .into_iter()
                .filter(|f| f.ends_with(".shards"))
                .collect()
        };
        eventually("the old version's shard files go", || shards() == only_new).await;
    }
    // The old version's shard files wait in the graveyard (a GET that
    // began on it may still read them) until the collector has seen them
    // for `superseded_grace`.
    let graves = |root: &std::path::Path| files_under(&root.join("diskio-tmp/superseded"));
    for root in &fx.backing {
        eventually("the old shard file is in the graveyard", || {
            graves(root).len() == 1
        })
        .await;
    }
    fx.set
        .delete_object(BUCKET, "a/one", long())
        .await
        .expect("delete");
    // A delete is a tombstone version; the collector removes it (and the
    // emptied directory) once no write that ordered before it can land.
    let buckets = vec![BUCKET.to_string()];
    for root in &fx.backing {
        let left = || files_under(&root.join(BUCKET).join("a/one"));
        eventually("the deleted version is superseded by its tombstone", || {
            let l = left();
            l.len() == 1 && l[0].ends_with(".del")
        })
        .await;
    }
    tokio::time::sleep(fx_window()).await;
    let c = fx.set.collect(&buckets, long()).await;
    assert_eq!(c.tombstones, 8, "{c:?}");
    let c = fx.set.collect(&buckets, long()).await;
    // Two versions' shard files per disk: the overwritten one and the
    // deleted one.
    assert!(c.graves == 16 || c.graves == 0, "{c:?}");
    tokio::time::sleep(fx_window()).await;
    let c2 = fx.set.collect(&buckets, long()).await;
    assert_eq!(c.graves + c2.graves, 16, "{c:?} {c2:?}");
    for root in &fx.backing {
        let dir = root.join(BUCKET).join("a/one");
        assert!(!dir.exists(), "{root:?}: the emptied directory is pruned");
        assert!(graves(root).is_empty(), "{root:?}: graveyard emptied");
        assert!(
            root.join(BUCKET).join("a/two").exists(),
            "{root:?}: the neighbour stays"
        );
    }
    assert_eq!(
        fx.set.list(BUCKET, "a", long()).await.unwrap(),
        vec!["two".to_string()]
    );
    assert_eq!(
        fx.set.stat_object(BUCKET, "a/one", long()).await,
        Err(ErasureError::ObjectNotFound)
    );
    assert_eq!(
        fx.set.delete_object(BUCKET, "a/one", long()).await,
        Err(ErasureError::ObjectNotFound)
    );
    let mut sink = Vec::new();
    assert_eq!(
        fx.set
            .get_object(BUCKET, "nope", None, &mut sink, long())
            .await,
        Err(ErasureError::ObjectNotFound)
    );
    assert_eq!(
        fx.set.stat_object("nobucket", "x", long()).await,
        Err(ErasureError::BucketNotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors() {
    let fx = fixture(&[], test_config()).await;
    for name in ["", "/abs", "a/../b", "a//b", "x/object.meta", "v.shards"] {
        let mut src: &[u8] = b"data";
        assert!(
            matches!(
                fx.set.put_object(BUCKET, name, &mut src, long()).await,
                Err(ErasureError::InvalidObjectName { .. })
            ),
            "{name:?}"
        );
    }
    for bucket in ["", "a/b", ".hidden", "diskio-tmp"] {
        let mut src: &[u8] = b"data";
        assert!(
            matches!(
                fx.set.put_object(bucket, "x", &mut src, long()).await,
                Err(ErasureError::InvalidBucketName { .. })
            ),
            "{bucket:?}"
        );
    }
    put(&fx.set, "small", b"12345", long()).await;
    let mut sink = Vec::new();
    for (off, len) in [(0u64, 6u64), (5, 1), (u64::MAX, 2)] {
        assert!(matches!(
            fx.set
                .get_object(BUCKET, "small", Some((off, len)), &mut sink, long())
                .await,
            Err(ErasureError::InvalidRange { .. })
        ));
    }
    // An already-expired deadline: a typed error, no hang, no panic.
    let mut src: &[u8] = b"data";
    let r = fx
        .set
        .put_object(BUCKET, "late", &mut src, Deadline::after(Duration::ZERO))
        .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(fx.set.stats().false_quorum_loss(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healer_rebuilds_what_a_read_found_missing_and_stale_staging_files_are_purged() {
    use disk_io::Disk;
    use disk_io_erasure::{ErasureSets, Topology};
    use std::sync::Arc;

    let fx = fixture(&[], test_config()).await;
    // The same disks as a 1 node × 8 topology, with a short staging age.
    let disks: Vec<Arc<dyn Disk>> = fx
        .disks
        .iter()
        .map(|d| d.clone() as Arc<dyn Disk>)
        .collect();
    let topo = Topology {
        nodes: 1,
        disks_per_node: 8,
        set_size: 8,
        parity: 4,
    };
    let cfg = ErasureConfig {
        tmp_max_age: Duration::from_millis(500),
        healer_poll: Duration::from_millis(50),
        ..test_config()
    };
    let (sets, reports) = ErasureSets::open(topo, |s| disks[s.disk].clone(), cfg, long())
        .await
        .expect("open");
    assert_eq!(reports[0].available(), 8);
    let sets = Arc::new(sets);
    let set = sets.set_for(BUCKET, "o").clone();
    let data = bytes(700_000, 21);
    let mut src: &[u8] = &data;
    set.put_object(BUCKET, "o", &mut src, long()).await.unwrap();
    std::fs::remove_dir_all(fx.backing[6].join(BUCKET).join("o")).unwrap();
    let mut out = Vec::new();
    let r = set
        .get_object(BUCKET, "o", None, &mut out, long())
        .await
        .unwrap();
    assert!(out == data);
    assert!(
        r.missing.contains(&6) || sets.heal_queue().is_empty(),
        "disk 6 is reported missing when its metadata answered: {r:?}"
    );
    // Whether or not this read heard from disk 6, the scanner's way in is
    // the queue too: push it, and let the healer run.
    sets.heal_queue().push(disk_io_erasure::HealTask {
        set: set.index(),
        bucket: BUCKET.into(),
        object: "o".into(),
    });
    let (stop, rx) = tokio::sync::watch::channel(false);
    let healer = sets.spawn_healer(rx);
    let started = std::time::Instant::now();
    let dir6 = fx.backing[6].join(BUCKET).join("o");
    let healed6 = || files_under(&dir6).iter().any(|f| f.ends_with(".ver"));
    while !(healed6() && sets.heal_queue().is_empty()) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the healer did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), healer)
        .await
        .expect("the healer stops on shutdown")
        .unwrap();
    // The healer rebuilt it: a check now finds every copy good.
    let h = set.heal_object(BUCKET, "o", long()).await.unwrap();
    assert_eq!(h.good.len(), 8, "{h:?}");
    assert!(h.healed.is_empty(), "{h:?}");
    // Staging files: an old one goes, a fresh one stays.
    fx.disks[1]
        .write_all("diskio-tmp", "stale", b"x", long())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    fx.disks[1]
        .write_all("diskio-tmp", "fresh", b"x", long())
        .await
        .unwrap();
    assert_eq!(set.purge_tmp(long()).await, 1);
    let left = fx.disks[1]
        .list_dir("diskio-tmp", "", long())
        .await
        .unwrap();
    assert_eq!(left, vec!["fresh".to_string()]);
}
