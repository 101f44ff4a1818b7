//! Figures of quorum locks over `disk-io-node` lockers in the cluster
//! harness (4 nodes, each in its own network namespace), printed, not
//! asserted, in interleaved rounds (this host drifts between runs):
//!
//! * write-lock acquire + release latency from a client, p50/p99, with
//!   every node up vs with node4 powered off (target ratio ≤ 1.5);
//! * time from the power-off of a lock's owner (a client on node4) to the
//!   lock being granted to another client (bounded by the lease TTL).
//!
//! `cargo bench -p disk-io-node --bench locks -- [--rounds N] [--locks N]`
//! (or `cargo xtask bench-locks`). Needs root, netns, nftables and loop
//! devices.

use std::time::{Duration, Instant};

use disk_io::Deadline;
use disk_io_api::LockKind;
use disk_io_erasure::QuorumLock;
use disk_io_harness::cluster::{Cluster, ClusterSpec, NodeCommand};
use disk_io_harness::netns::RuntimeSpec;
use disk_io_harness::privilege;
use disk_io_rpc::{LockTiming, RpcConfig};

mod common;
use common::{arg, pct};

async fn acquire_n(l: &QuorumLock, prefix: &str, n: usize) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        match l
            .lock(
                &format!("{prefix}{i}"),
                LockKind::Write,
                Deadline::after(Duration::from_secs(3)),
            )
            .await
        {
            Ok(g) => {
                lat.push(t0.elapsed());
                g.release(Deadline::after(Duration::from_secs(1))).await;
            }
            Err(e) => eprintln!("  acquire {prefix}{i} failed: {e}"),
        }
    }
    lat
}

/// Until a write lock is granted (the lockers' quiet time after a start).
async fn until_granting(l: &QuorumLock) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if let Ok(g) = l
            .lock(
                "warm",
                LockKind::Write,
                Deadline::after(Duration::from_secs(2)),
            )
            .await
        {
            g.release(Deadline::after(Duration::from_secs(1))).await;
            return;
        }
    }
    panic!("the lockers never granted");
}

fn main() {
    if let Err(e) = privilege::require_cluster() {
        eprintln!("the lock bench needs the cluster harness: {e}");
        std::process::exit(1);
    }
    let rounds = arg("--rounds", 3);
    let n = arg("--locks", 200);
    let timing = LockTiming {
        ttl_ms: 3000,
        refresh_ms: 1000,
        attempt_ms: 300,
    };
    let mut spec = ClusterSpec::with_shape(4, 1);
    spec.set_size = 4;
    spec.parity = 2;
    spec.disk_image_bytes = 64 << 20;
    spec.locks = timing.clone();
    let node = NodeCommand::disk_io_node(env!("CARGO_BIN_EXE_disk-io-node"));
    let mut c = Cluster::start(spec, node).expect("cluster");
    let config = c.config();
    let client = c.client_runtime(&RuntimeSpec::default()).expect("runtime");
    let owner_rt = c
        .node_netns("node4")
        .expect("node4")
        .tokio_runtime(&RuntimeSpec::default())
        .expect("a runtime on node4");
    let cfg = config.clone();
    let lock = client
        .block_on(Duration::from_secs(90), async move {
            let l = disk_io_node::cluster_lock(&cfg, "bench", &RpcConfig::default()).expect("lock");
            until_granting(&l).await;
            l
        })
        .expect("warm-up");
    println!(
        "quorum locks, 4 nodes, ttl {:?}, refresh {:?}, attempt {:?}; {rounds} rounds of {n} acquisitions",
        timing.ttl(),
        timing.refresh(),
        timing.attempt()
    );
    let (mut healthy, mut dead, mut takeover) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let l = lock.clone();
        let mut h = client
            .block_on(Duration::from_secs(300), async move {
                acquire_n(&l, "h", n).await
            })
            .expect("healthy round");
        // An owner on node4 takes a lock, then node4 loses power.
        let cfg = config.clone();
        let (owner, guard) = owner_rt
            .block_on(Duration::from_secs(30), async move {
                let l =
                    disk_io_node::cluster_lock(&cfg, "owner", &RpcConfig::default()).expect("lock");
                let g = l
                    .lock(
                        "owned",
                        LockKind::Write,
                        Deadline::after(Duration::from_secs(5)),
                    )
                    .await
                    .expect("the owner's lock");
                (l, g)
            })
            .expect("owner");
        c.poweroff("node4").expect("power off");
        let off = Instant::now();
        let l = lock.clone();
        let ttl = timing.ttl();
        let freed = client
            .block_on(Duration::from_secs(60), async move {
                let g = l
                    .lock("owned", LockKind::Write, Deadline::after(ttl * 4))
                    .await
                    .expect("the owner's lock frees itself");
                let t = off.elapsed();
                g.release(Deadline::after(Duration::from_secs(1))).await;
                t
            })
            .expect("takeover");
        drop(guard);
        drop(owner);
        let l = lock.clone();
        let mut d = client
            .block_on(Duration::from_secs(300), async move {
                acquire_n(&l, "d", n).await
            })
            .expect("dead-locker round");
        c.poweron("node4").expect("power on");
        // node4's locker is quiet for a TTL after its restart: the next
        // healthy round starts after it grants again.
        std::thread::sleep(timing.ttl() + Duration::from_millis(500));
        h.sort();
        d.sort();
        println!(
            "round {round}: acquire p50/p99 healthy {:?}/{:?}, node4 off {:?}/{:?} (p50 ratio {:.2}); owner power-off -> lock free after {freed:?}",
            pct(&h, 0.5),
            pct(&h, 0.99),
            pct(&d, 0.5),
            pct(&d, 0.99),
            pct(&d, 0.5).as_secs_f64() / pct(&h, 0.5).as_secs_f64()
        );
        healthy.extend(h);
        dead.extend(d);
        takeover.push(freed);
    }
    healthy.sort();
    dead.sort();
    takeover.sort();
    println!(
        "all rounds: acquire p50/p99 healthy {:?}/{:?}, node4 off {:?}/{:?}; p50 ratio {:.2}, p99 ratio {:.2}",
        pct(&healthy, 0.5),
        pct(&healthy, 0.99),
        pct(&dead, 0.5),
        pct(&dead, 0.99),
        pct(&dead, 0.5).as_secs_f64() / pct(&healthy, 0.5).as_secs_f64(),
        pct(&dead, 0.99).as_secs_f64() / pct(&healthy, 0.99).as_secs_f64()
    );
    println!(
        "owner power-off -> lock free: min {:?}, max {:?} (ttl {:?})",
        takeover[0],
        takeover[takeover.len() - 1],
        timing.ttl()
    );
    drop(lock);
    drop(owner_rt);
    drop(client);
    c.shutdown().expect("shutdown");
}
