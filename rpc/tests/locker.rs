//! A node's locker over the RPC: the same answers as the lease table
//! itself, authenticated like every call, and a missing locker or a dead
//! peer is a missing vote, never a refusal.

use std::sync::Arc;
use std::time::Duration;

use disk_io_api::{Deadline, DiskError, LeaseConfig, LeaseTable, LockKind, LockRequest, Locker};
use disk_io_rpc::{Peer, RpcConfig};

mod common;
use common::{dl, serve, serve_with_locker, SECRET};

fn table() -> Arc<LeaseTable> {
    Arc::new(LeaseTable::new(
        "node1",
        LeaseConfig {
            startup_quiet: Duration::ZERO,
            ..LeaseConfig::default()
        },
    ))
}

fn req(uid: &str, kind: LockKind, ttl: Duration) -> LockRequest {
    LockRequest {
        resource: "config/iam/users/alice".into(),
        uid: uid.into(),
        owner: "client".into(),
        kind,
        ttl,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_locker_answers_like_the_lease_table() {
    let t = table();
    let served = serve_with_locker(Vec::new(), Some(t.clone()), RpcConfig::default()).await;
    let peer = Peer::new("node1", served.addr, SECRET, RpcConfig::default()).expect("peer");
    let l = peer.locker();
    assert_eq!(l.label(), "node1");
    let ttl = Duration::from_millis(400);
    assert_eq!(
        l.acquire(&req("w1", LockKind::Write, ttl), dl()).await,
        Ok(true)
    );
    assert_eq!(t.len(), 1, "the grant is in the node's table");
    assert_eq!(
        l.acquire(&req("w2", LockKind::Write, ttl), dl()).await,
        Ok(false)
    );
    assert_eq!(
        l.acquire(&req("r1", LockKind::Read, ttl), dl()).await,
        Ok(false)
    );
    assert_eq!(
        l.refresh("config/iam/users/alice", "w1", ttl, dl()).await,
        Ok(true)
    );
    assert_eq!(
        l.refresh("config/iam/users/alice", "w2", ttl, dl()).await,
        Ok(false)
    );
    assert_eq!(
        l.release("config/iam/users/alice", "w1", dl()).await,
        Ok(true)
    );
    assert_eq!(
        l.release("config/iam/users/alice", "w1", dl()).await,
        Ok(false)
    );
    // Expiry happens on the node, by itself.
    assert_eq!(
        l.acquire(&req("w3", LockKind::Write, ttl), dl()).await,
        Ok(true)
    );
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(
        l.refresh("config/iam/users/alice", "w3", ttl, dl()).await,
        Ok(false)
    );
    assert_eq!(
        l.acquire(&req("w4", LockKind::Write, ttl), dl()).await,
        Ok(true)
    );
    // A bad request is answered, typed, over the wire.
    let bad = l
        .acquire(&req("w5", LockKind::Write, Duration::ZERO), dl())
        .await;
    assert!(
        matches!(bad, Err(DiskError::InvalidArgument { .. })),
        "{bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_locker_a_wrong_secret_or_a_dead_peer_are_missing_votes() {
    // A node that serves no locker.
    let served = serve(Vec::new(), RpcConfig::default()).await;
    let peer = Peer::new("node1", served.addr, SECRET, RpcConfig::default()).expect("peer");
    let r = peer
        .locker()
        .acquire(&req("w1", LockKind::Write, Duration::from_secs(1)), dl())
        .await;
    assert!(matches!(&r, Err(DiskError::Rejected { .. })), "{r:?}");
    assert!(r.unwrap_err().is_unavailable());

    // A client with the wrong secret is refused before the locker sees it.
    let t = table();
    let served = serve_with_locker(Vec::new(), Some(t.clone()), RpcConfig::default()).await;
    let wrong = Peer::new(
        "node1",
        served.addr,
        b"not-the-secret-0123456789",
        RpcConfig::default(),
    )
    .expect("peer");
    let r = wrong
        .locker()
        .acquire(&req("w1", LockKind::Write, Duration::from_secs(1)), dl())
        .await;
    assert!(matches!(&r, Err(DiskError::Rejected { .. })), "{r:?}");
    assert!(
        t.is_empty(),
        "nothing was granted to an unauthenticated caller"
    );

    // A peer nobody listens on: unavailable by the deadline.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = dead.local_addr().expect("addr");
    drop(dead);
    let peer = Peer::new("gone", addr, SECRET, RpcConfig::default()).expect("peer");
    let deadline = Deadline::after(Duration::from_millis(500));
    let r = peer
        .locker()
        .acquire(
            &req("w1", LockKind::Write, Duration::from_secs(1)),
            deadline,
        )
        .await;
    assert!(r.as_ref().is_err_and(DiskError::is_unavailable), "{r:?}");
    assert!(deadline.overshoot(std::time::Instant::now()) < Duration::from_millis(300));
}
