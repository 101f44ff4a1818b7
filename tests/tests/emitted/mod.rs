//! The series disk-io's libraries really emit, as a metrics recorder
//! installed in the test process captures them while real operations run.
//! Shared by the tests that hold shipped queries to what is emitted
//! (`alert_rules.rs`: the Prometheus rules; `dashboard.rs`: the Grafana
//! dashboard). The operations:
//!
//! * a `LocalDisk` on a FUSE mount: opened, formatted, written and read; its
//!   disk id asked with a short deadline while the mount hangs (a state-check
//!   timeout and a deadline miss); an active probe; taken out and called (a
//!   fail-fast refusal);
//! * the cluster layer on local disks (`erasure/tests/store_fixture`):
//!   erasure sets opened (their must-stay-zero false-quorum-loss counters
//!   registered), a quorum lock and an IAM operation that time out on a lock
//!   someone holds, then the user added and looked up (found and absent);
//! * an erasure set (`erasure/tests/common`): a shard corrupted on disk and
//!   read (bitrot, the heal queue), healed, then a write with five of eight
//!   disks out (quorum unavailable);
//! * a quorum lock whose leases expire under its holder (lock lost);
//! * the node RPC on loopback: a peer that heartbeats, and one with the wrong
//!   secret (refused requests, missed heartbeats, its breaker opening).
//!
//! Needs root and FUSE, as CI has.
#![allow(dead_code)]

#[path = "../../../erasure/tests/common/mod.rs"]
mod erasure_fixture;
#[path = "../../../erasure/tests/store_fixture/mod.rs"]
mod store_fixture;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_io::{Deadline, Disk, DiskConfig, DiskError, HealthConfig, LocalDisk};
use disk_io_api::{Clock, LeaseConfig, LeaseTable, LockKind, Locker};
use disk_io_erasure::{ConfigStoreConfig, ErasureError, LockConfig, QuorumError, QuorumLock};
use disk_io_harness::{privilege, FaultFs};
use disk_io_iam::{Iam, IamConfig, Lookup, Policy, Status, User};
use disk_io_rpc::{Peer, RpcConfig, RpcServer, Services};
use metrics_util::debugging::DebuggingRecorder;
pub use metrics_util::MetricKind;
use store_fixture::{cluster, dl, lock_cfg};

/// Bound of any wait for something asynchronous (a loaded 2-core machine).
const BOUND: Duration = Duration::from_secs(20);

/// One recorded metric family.
#[derive(Clone, Debug)]
pub struct Family {
    /// Counter, gauge or histogram, as recorded.
    pub kind: MetricKind,
    /// Every label name it was recorded with.
    pub labels: BTreeSet<String>,
}

/// Installs the recorder (once per test binary: a second call panics), runs
/// every operation of the module docs and returns what was recorded, by
/// name.
pub async fn emitted_series() -> BTreeMap<String, Family> {
    privilege::require_fuse().expect("this test runs a disk on FUSE");
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("install the metrics recorder (once per test binary)");
    disk_series().await;
    cluster_series().await;
    erasure_series().await;
    lock_lost_series().await;
    rpc_series().await;
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for (key, _, _, _) in snapshotter.snapshot().into_vec() {
        let kind = key.kind();
        let key = key.key();
        let f = out.entry(key.name().to_owned()).or_insert(Family {
            kind,
            labels: BTreeSet::new(),
        });
        assert_eq!(f.kind, kind, "{} recorded as two kinds", key.name());
        f.labels.extend(key.labels().map(|l| l.key().to_owned()));
    }
    out
}

/// Waits (at most [`BOUND`]) for `cond`.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < BOUND, "not within {BOUND:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real `LocalDisk` on a FUSE mount: opened, formatted, written and
/// read, then asked its disk id with a short deadline while the mount hangs
/// (a state-check timeout and a deadline miss); probed; taken out and
/// called (a fail-fast refusal).
async fn disk_series() {
    let (_scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
    let ctl = fs.control();
    let mut cfg = DiskConfig {
        disk_id_cache_ttl: Duration::ZERO,
        ..DiskConfig::default()
    };
    cfg.health.tick = Duration::from_millis(10);
    let setup = || Deadline::after(Duration::from_secs(10));
    let disk = LocalDisk::builder(fs.mountpoint())
        .label("disk1")
        .config(cfg)
        .open(setup())
        .await
        .expect("open disk on faultfs");
    disk.format(0, 1, false, setup()).await.expect("format");
    disk.make_vol("v", setup()).await.expect("make_vol");
    disk.write_all("v", "meta", b"x", setup())
        .await
        .expect("write_all");
    disk.read_all("v", "meta", setup()).await.expect("read_all");
    disk.disk_id(setup()).await.expect("disk_id");
    ctl.hang();
    let missed = disk
        .disk_id(Deadline::after(Duration::from_millis(50)))
        .await;
    assert!(
        matches!(missed, Err(DiskError::DeadlineExceeded { .. })),
        "disk_id on a hung disk: {missed:?}"
    );
    // Let the health monitor tick (the driver gauges are set per tick).
    tokio::time::sleep(Duration::from_millis(100)).await;
    ctl.release();
    disk.probe().await.expect("active probe after the release");
    disk.mark_faulty("taken out by the test");
    let refused = disk.disk_id(setup()).await;
    assert!(
        matches!(refused, Err(DiskError::Faulty { .. })),
        "disk_id on a disk taken out: {refused:?}"
    );
    drop(disk);
}

/// The cluster layer's series (on the config store's local disks): erasure
/// sets opened, a quorum lock and an IAM operation that time out on a lock
/// someone holds; then the user added (the credential cache) and looked up
/// (a hit and an absent key).
async fn cluster_series() {
    let c = cluster(ConfigStoreConfig::default()).await;
    let iam = Iam::new(c.store.clone(), IamConfig::default(), None);
    let other = QuorumLock::new(c.lockers.clone(), "other", lock_cfg()).expect("locks");
    let held = other
        .lock("config/iam/users/alice.json", LockKind::Write, dl())
        .await
        .expect("hold alice's document");
    let user = User {
        access_key: "alice".into(),
        secret_key: "alice-secret-key".into(),
        status: Status::Enabled,
        policy: Policy::read_write_all(),
    };
    let r = iam
        .add_user(user.clone(), Deadline::after(Duration::from_millis(300)))
        .await;
    assert!(r.as_ref().is_err_and(|e| e.is_lock_timeout()), "{r:?}");
    held.release(dl()).await;
    iam.add_user(user, dl())
        .await
        .expect("add alice once her document is free");
    let found = iam.lookup("alice", dl()).await;
    assert!(matches!(found, Ok(Lookup::Found(_))), "{found:?}");
    let absent = iam.lookup("nobody", dl()).await;
    assert!(matches!(absent, Ok(Lookup::Unknown)), "{absent:?}");
}

/// An erasure set of 8 local disks (4+4): one shard corrupted on disk and
/// read until the read notices (bitrot; the object queued for healing),
/// healed, then a write with five disks taken out (quorum unavailable).
async fn erasure_series() {
    use erasure_fixture::{fixture, get, put, setup_deadline, test_config, BUCKET};
    let fx = fixture(&[], test_config()).await;
    let data = erasure_fixture::bytes((1 << 20) + 7, 5);
    let rep = put(&fx.set, "rot", &data, setup_deadline()).await;
    // The disk of data shard 0, which every read asks for first.
    let d0 = (0..8)
        .find(|&p| disk_io_erasure::meta::distribution("rot", 8)[p] == 0)
        .expect("a disk holds data shard 0");
    let path = fx.backing[d0]
        .join(BUCKET)
        .join("rot")
        .join(format!("{}.shards", rep.version));
    let mut shards = std::fs::read(&path).expect("shard file");
    for i in [40usize, 41, 5000] {
        shards[i] ^= 0xA5;
    }
    std::fs::write(&path, &shards).expect("corrupt the shard");
    let mut noticed = false;
    for _ in 0..30 {
        let (back, r) = get(&fx.set, "rot", None, setup_deadline())
            .await
            .expect("get despite bitrot");
        assert!(back == data, "a read must be correct despite bitrot");
        if !r.bitrot.is_empty() {
            noticed = true;
            break;
        }
    }
    assert!(noticed, "no read asked the corrupt shard");
    let h = fx
        .set
        .heal_object(BUCKET, "rot", setup_deadline())
        .await
        .expect("heal");
    assert!(h.healed.contains(&d0), "{h:?}");
    for d in &fx.disks[..5] {
        d.mark_faulty("taken out by the test");
    }
    let mut src: &[u8] = &data;
    let r = fx
        .set
        .put_object(BUCKET, "unwritable", &mut src, setup_deadline())
        .await;
    assert!(
        matches!(r, Err(ErasureError::Quorum(QuorumError::Unavailable(_)))),
        "write with 3 of 8 disks in: {r:?}"
    );
}

/// A write lock on three lockers whose leases then expire on the lockers'
/// clocks: the holder's next refresh round finds them gone (lock lost).
async fn lock_lost_series() {
    let ahead_ms = Arc::new(AtomicU64::new(0));
    let lockers: Vec<Arc<dyn Locker>> = (1..=3)
        .map(|i| {
            let ahead = ahead_ms.clone();
            let clock: Clock = Arc::new(move || {
                Instant::now() + Duration::from_millis(ahead.load(Ordering::Relaxed))
            });
            let cfg = LeaseConfig {
                startup_quiet: Duration::ZERO,
                ..LeaseConfig::default()
            };
            Arc::new(LeaseTable::with_clock(&format!("lost{i}"), cfg, clock)) as Arc<dyn Locker>
        })
        .collect();
    let cfg = LockConfig {
        ttl: Duration::from_secs(1),
        refresh_interval: Duration::from_millis(200),
        attempt_timeout: Duration::from_millis(100),
        ..LockConfig::default()
    };
    let locks = QuorumLock::new(lockers, "holder", cfg).expect("locks");
    let g = locks
        .lock("lost/resource", LockKind::Write, dl())
        .await
        .expect("lock");
    // Every lease is past its TTL on its locker's clock.
    ahead_ms.store(60_000, Ordering::Relaxed);
    tokio::time::timeout(BOUND, g.lost())
        .await
        .expect("the holder hears its leases are gone");
}

/// The node RPC on loopback, serving one local disk: a peer that
/// heartbeats and reads the disk's id, and one with the wrong secret
/// (its request and heartbeats refused, its breaker opening).
async fn rpc_series() {
    const SECRET: &[u8] = b"emitted-series-secret-0123456789";
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = LocalDisk::builder(dir.path())
        .label("served")
        .open(dl())
        .await
        .expect("open");
    disk.format(0, 1, false, dl()).await.expect("format");
    let server = RpcServer::serving(
        vec![Arc::new(disk) as Arc<dyn Disk>],
        Services::default(),
        SECRET,
        RpcConfig::default(),
    )
    .expect("server");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let peer = Peer::new("peer1", addr, SECRET, RpcConfig::default()).expect("peer");
    let remote = peer.disk(0, HealthConfig::default(), Vec::new());
    remote.disk_id(dl()).await.expect("remote disk_id");
    eventually("a heartbeat answered", || peer.heartbeats().0 >= 1).await;
    let intruder = Peer::new(
        "intruder",
        addr,
        b"not-the-cluster-secret-987654321",
        RpcConfig::default(),
    )
    .expect("peer");
    let r = intruder
        .disk(0, HealthConfig::default(), Vec::new())
        .disk_id(dl())
        .await;
    assert!(matches!(r, Err(DiskError::Rejected { .. })), "{r:?}");
    eventually("the intruder's breaker opens", || {
        intruder.breaker_opened() >= 1
    })
    .await;
    let _ = stop.send(());
    served.abort();
}
