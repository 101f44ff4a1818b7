//! IAM over a config store on local disks with in-process lockers: admin
//! operations and their typed errors, hints between two nodes' caches, the
//! negative cache, and a request path that never waits on the cluster.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use disk_io::Deadline;

use disk_io_api::LockKind;
use disk_io_erasure::{ConfigStoreConfig, QuorumLock};
use disk_io_iam::{
    Broadcast, Iam, IamConfig, IamError, IamListener, Lookup, Policy, Status, User, NOTIFY_TOPIC,
};

#[path = "../../erasure/tests/store_fixture/mod.rs"]
mod store_fixture;
use store_fixture::{cluster, dl, lock_cfg};

fn user(key: &str) -> User {
    User {
        access_key: key.into(),
        secret_key: format!("{key}-secret-key"),
        status: Status::Enabled,
        policy: Policy::read_write_all(),
    }
}

/// Hands hints to other in-process nodes' listeners, as the node RPC does.
#[derive(Default)]
struct Loopback {
    peers: Mutex<Vec<IamListener>>,
}

impl Broadcast for Loopback {
    fn send(&self, topic: &str, key: &str) {
        use disk_io_api::Listener;
        for p in self.peers.lock().unwrap().iter() {
            p.notify(topic, key);
        }
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_operations_and_their_typed_errors() {
    let c = cluster(ConfigStoreConfig::default()).await;
    let iam = Iam::new(c.store.clone(), IamConfig::default(), None);
    assert_eq!(iam.cached("alice"), Lookup::Unknown);
    iam.add_user(user("alice"), dl()).await.expect("add alice");
    iam.add_user(user("bob"), dl()).await.expect("add bob");
    assert!(matches!(iam.cached("alice"), Lookup::Found(u) if u.secret_key == "alice-secret-key"));
    assert_eq!(
        iam.add_user(user("alice"), dl()).await,
        Err(IamError::UserExists("alice".into()))
    );
    let mut bad = user("x");
    bad.access_key = "a/b".into();
    assert!(matches!(
        iam.add_user(bad, dl()).await,
        Err(IamError::InvalidUser(_))
    ));
    iam.set_status("bob", Status::Disabled, dl())
        .await
        .expect("disable");
    assert_eq!(iam.cached("bob"), Lookup::Disabled);
    assert_eq!(
        iam.set_status("carol", Status::Disabled, dl()).await,
        Err(IamError::NoSuchUser("carol".into()))
    );
    let listed = iam.list_users(dl()).await.expect("list");
    let keys: Vec<(&str, Status)> = listed
        .iter()
        .map(|u| (u.access_key.as_str(), u.status))
        .collect();
    assert_eq!(
        keys,
        [("alice", Status::Enabled), ("bob", Status::Disabled)]
    );
    iam.remove_user("alice", dl()).await.expect("remove");
    assert_eq!(iam.cached("alice"), Lookup::Unknown);
    assert_eq!(
        iam.remove_user("alice", dl()).await,
        Err(IamError::NoSuchUser("alice".into()))
    );
    // A fresh node loads what the store has.
    let other = Iam::new(c.store.clone(), IamConfig::default(), None);
    assert_eq!(other.reload(dl()).await, Ok(1));
    assert_eq!(other.cached("bob"), Lookup::Disabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_node_reaches_the_others_by_hint() {
    let c = cluster(ConfigStoreConfig::default()).await;
    let bus = Arc::new(Loopback::default());
    let a = Iam::new(c.store.clone(), IamConfig::default(), Some(bus.clone()));
    let b = Iam::new(c.store.clone(), IamConfig::default(), None);
    bus.peers.lock().unwrap().push(IamListener(b.clone()));
    a.add_user(user("alice"), dl()).await.expect("add");
    eventually("b learns of alice", || {
        matches!(b.cached("alice"), Lookup::Found(_))
    })
    .await;
    a.set_status("alice", Status::Disabled, dl())
        .await
        .expect("disable");
    eventually("b learns alice is disabled", || {
        b.cached("alice") == Lookup::Disabled
    })
    .await;
    a.remove_user("alice", dl()).await.expect("remove");
    eventually("b forgets alice", || b.cached("alice") == Lookup::Unknown).await;
    // Hints of another topic are not taken.
    use disk_io_api::Listener;
    assert!(!IamListener(b.clone()).notify("other.topic", "alice"));
    assert!(IamListener(b.clone()).notify(NOTIFY_TOPIC, "alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_key_is_remembered_for_the_negative_ttl_within_a_bound() {
    let c = cluster(ConfigStoreConfig::default()).await;
    let cfg = IamConfig {
        negative_ttl: Duration::from_secs(3),
        max_negative: 5,
        ..IamConfig::default()
    };
    let reader = Iam::new(c.store.clone(), cfg, None);
    let writer = Iam::new(c.store.clone(), IamConfig::default(), None);
    assert_eq!(reader.lookup("alice", dl()).await, Ok(Lookup::Unknown));
    // alice appears without a hint: the negative entry answers until it
    // expires, then a miss loads her.
    writer.add_user(user("alice"), dl()).await.expect("add");
    let t0 = Instant::now();
    assert_eq!(reader.lookup("alice", dl()).await, Ok(Lookup::Unknown));
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "answered from the negative entry"
    );
    tokio::time::sleep(Duration::from_secs(3) + Duration::from_millis(100)).await;
    assert!(matches!(
        reader.lookup("alice", dl()).await,
        Ok(Lookup::Found(_))
    ));
    assert!(
        matches!(reader.cached("alice"), Lookup::Found(_)),
        "the miss filled the cache"
    );
    // A flood of unknown keys is remembered up to the bound, and keys that
    // cannot exist are neither read nor remembered.
    for i in 0..20 {
        assert_eq!(
            reader.lookup(&format!("nobody{i}"), dl()).await,
            Ok(Lookup::Unknown)
        );
        assert_eq!(
            reader.lookup(&format!("bad/key{i}"), dl()).await,
            Ok(Lookup::Unknown)
        );
    }
    let (users, negatives) = reader.cache_entries();
    assert_eq!(users, 1);
    assert!(
        negatives <= 5,
        "{negatives} absent keys remembered, bound 5"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_path_never_waits_on_a_stuck_cluster() {
    let c = cluster(ConfigStoreConfig::default()).await;
    let cfg = IamConfig {
        miss_timeout: Duration::from_millis(300),
        ..IamConfig::default()
    };
    let iam = Iam::new(c.store.clone(), cfg, None);
    iam.add_user(user("alice"), dl()).await.expect("add");
    iam.add_user(user("bob"), dl()).await.expect("add");
    // Someone holds the write lock of bob's and carol's documents (a node
    // died mid-update and its leases have not run out): nothing can read
    // them from the store now. A lookup that touched the store for bob
    // would wait on that lock.
    let other = QuorumLock::new(c.lockers.clone(), "other", lock_cfg()).expect("locks");
    let held_bob = other
        .lock("config/iam/users/bob.json", LockKind::Write, dl())
        .await
        .expect("hold bob's lock");
    let held_carol = other
        .lock("config/iam/users/carol.json", LockKind::Write, dl())
        .await
        .expect("hold carol's lock");
    // A reload runs alongside (it cannot read bob either, and fails after
    // its deadline): the cache keeps answering meanwhile.
    let reloading = {
        let iam = iam.clone();
        tokio::spawn(async move {
            iam.reload(Deadline::after(Duration::from_millis(500)))
                .await
        })
    };
    for _ in 0..1000 {
        let t0 = Instant::now();
        assert!(matches!(iam.cached("alice"), Lookup::Found(_)));
        assert!(matches!(
            iam.lookup("bob", dl()).await,
            Ok(Lookup::Found(_))
        ));
        assert!(
            t0.elapsed() < Duration::from_millis(50),
            "a cached lookup took {:?}",
            t0.elapsed()
        );
    }
    let r = reloading.await.expect("reload task");
    assert!(
        r.is_err(),
        "the reload could not read bob's document: {r:?}"
    );
    assert!(
        matches!(iam.cached("bob"), Lookup::Found(_)),
        "a failed reload keeps the cache"
    );
    // A miss on a stuck document answers by miss_timeout, typed.
    let t0 = Instant::now();
    let r = iam.lookup("carol", dl()).await;
    assert!(r.as_ref().is_err_and(IamError::is_lock_timeout), "{r:?}");
    assert!(t0.elapsed() < Duration::from_millis(300) + Duration::from_millis(300));
    held_bob.release(dl()).await;
    held_carol.release(dl()).await;
    assert_eq!(iam.lookup("carol", dl()).await, Ok(Lookup::Unknown));
}
