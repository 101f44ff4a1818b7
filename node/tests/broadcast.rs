//! IAM hints over the node RPC: `PeerBroadcast` delivers a change to every
//! live peer's listener, never waits for a dead one, and drops what finds
//! no free send slot.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use disk_io_api::Listener;
use disk_io_iam::Broadcast;
use disk_io_node::PeerBroadcast;
use disk_io_rpc::{Peer, RpcConfig, RpcServer, Services};

const SECRET: &[u8] = b"broadcast-secret-0123456789";

#[derive(Default)]
struct Counting {
    seen: Mutex<Vec<(String, String)>>,
}

impl Listener for Counting {
    fn notify(&self, topic: &str, key: &str) -> bool {
        self.seen.lock().unwrap().push((topic.into(), key.into()));
        true
    }
}

async fn serve(listener: Arc<Counting>) -> std::net::SocketAddr {
    let services = Services {
        locker: None,
        listener: Some(listener),
        ..Services::default()
    };
    let server =
        RpcServer::serving(Vec::new(), services, SECRET, RpcConfig::default()).expect("server");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { server.serve(l, std::future::pending()).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_reach_live_peers_and_never_wait_for_dead_ones() {
    let (a, b) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
    let (addr_a, addr_b) = (serve(a.clone()).await, serve(b.clone()).await);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr_dead = dead.local_addr().expect("addr");
    drop(dead);
    let peers: Vec<Arc<Peer>> = [("a", addr_a), ("b", addr_b), ("dead", addr_dead)]
        .into_iter()
        .map(|(n, addr)| Peer::new(n, addr, SECRET, RpcConfig::default()).expect("peer"))
        .collect();
    let bc = PeerBroadcast::new(peers.clone(), Duration::from_millis(500), 16);
    let t0 = Instant::now();
    bc.send("iam.user", "alice");
    assert!(
        t0.elapsed() < Duration::from_millis(20),
        "send waited {:?}",
        t0.elapsed()
    );
    let t0 = Instant::now();
    while a.seen.lock().unwrap().is_empty() || b.seen.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "hints never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for l in [&a, &b] {
        assert_eq!(
            l.seen.lock().unwrap()[0],
            ("iam.user".into(), "alice".into())
        );
    }

    // One slot: of a burst, what finds the slot busy is dropped, not queued.
    let narrow = PeerBroadcast::new(peers, Duration::from_millis(500), 1);
    let before = a.seen.lock().unwrap().len() + b.seen.lock().unwrap().len();
    for i in 0..50 {
        narrow.send("iam.user", &format!("u{i}"));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = a.seen.lock().unwrap().len() + b.seen.lock().unwrap().len();
    let delivered = after - before;
    assert!(
        (1..100).contains(&delivered),
        "{delivered} of 100 hints delivered"
    );
}
