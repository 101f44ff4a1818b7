//! Figures of the node RPC, printed (not asserted):
//!
//! * 4 KiB `read_file_at` latency, p50/p99, remote (loopback, in-process
//!   server) vs the same local disk;
//! * shard-write throughput (1 MiB appends, several writers), remote vs local;
//! * dead-peer detection over N power-offs in the cluster harness (node
//!   processes in network namespaces): time from the power-off to the
//!   breaker opening, p50 and max; and time from power-on to calls
//!   succeeding. Needs root, netns, nftables and loop devices.
//!
//! `cargo bench -p disk-io-node --bench rpc -- [--reads N] [--shard-mib N]
//! [--writers N] [--poweroffs N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_io::{CreateOptions, Deadline, DeleteOptions, Disk, HealthConfig, LocalDisk};
use disk_io_harness::cluster::{Cluster, ClusterSpec, NodeCommand};
use disk_io_harness::netns::RuntimeSpec;
use disk_io_harness::privilege;
use disk_io_rpc::{BreakerState, Peer, RpcConfig, RpcServer};

mod common;
use common::{arg, pct};

const SECRET: &[u8] = b"bench-secret-0123456789abcdef";

fn dl() -> Deadline {
    Deadline::after(Duration::from_secs(10))
}

async fn read_latency(disk: &dyn Disk, reads: usize) -> (Duration, Duration) {
    let mut lat = Vec::with_capacity(reads);
    for i in 0..reads {
        let off = ((i * 7919) % 255) as u64 * 4096;
        let t = Instant::now();
        disk.read_file_at("b", "data", off, 4096, dl())
            .await
            .expect("read");
        lat.push(t.elapsed());
    }
    lat.sort();
    (pct(&lat, 0.5), pct(&lat, 0.99))
}

async fn shard_throughput(disk: Arc<dyn Disk>, mib: usize, writers: usize) -> f64 {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let disk = disk.clone();
        let each = mib / writers;
        tasks.push(tokio::spawn(async move {
            let chunk = vec![w as u8; 1 << 20];
            let path = format!("shard{w}");
            let mut sw = disk
                .create_file("b", &path, CreateOptions::default(), dl())
                .await
                .expect("create");
            for _ in 0..each {
                sw.append(&chunk, dl()).await.expect("append");
            }
            sw.finish(dl()).await.expect("finish");
            disk.delete("b", &path, DeleteOptions::default(), dl())
                .await
                .expect("delete");
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    (mib / writers * writers) as f64 / t.elapsed().as_secs_f64()
}

async fn local_vs_remote(reads: usize, mib: usize, writers: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = Arc::new(LocalDisk::open(dir.path(), dl()).await.expect("open"));
    local.make_vol("b", dl()).await.expect("vol");
    local
        .write_all("b", "data", &vec![7u8; 1 << 20], dl())
        .await
        .expect("data");
    let server = RpcServer::new(
        vec![local.clone() as Arc<dyn Disk>],
        SECRET,
        RpcConfig::default(),
    )
    .expect("server");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(server.serve(l, std::future::pending()));
    let peer = Peer::new("bench", addr, SECRET, RpcConfig::default()).expect("peer");
    let remote = Arc::new(peer.disk(0, HealthConfig::default(), Vec::new()));
    // Warm up both paths (page cache, connection).
    read_latency(local.as_ref(), 200).await;
    read_latency(remote.as_ref(), 200).await;
    let (lp50, lp99) = read_latency(local.as_ref(), reads).await;
    let (rp50, rp99) = read_latency(remote.as_ref(), reads).await;
    println!("4 KiB read_file_at, {reads} reads: local p50 {lp50:?} p99 {lp99:?} | remote (loopback) p50 {rp50:?} p99 {rp99:?}");
    let lt = shard_throughput(local.clone(), mib, writers).await;
    let rt = shard_throughput(remote, mib, writers).await;
    println!(
        "shard writes, {mib} MiB in 1 MiB appends, {writers} writers: local {lt:.0} MiB/s | remote (loopback) {rt:.0} MiB/s ({:.0} %)",
        rt / lt * 100.0
    );
}

fn detection(poweroffs: usize) {
    if let Err(e) = privilege::require_cluster() {
        eprintln!("dead-peer detection needs the cluster harness: {e}");
        std::process::exit(1);
    }
    let mut spec = ClusterSpec::with_shape(2, 1);
    spec.set_size = 2;
    spec.parity = 1;
    spec.disk_image_bytes = 64 << 20;
    let node = NodeCommand::disk_io_node(env!("CARGO_BIN_EXE_disk-io-node"));
    let mut c = Cluster::start(spec, node).expect("cluster");
    let addr = c.node("node2").expect("node2").rpc_addr;
    let secret = c.config().secret;
    let rt = c.client_runtime(&RuntimeSpec::default()).expect("runtime");
    let (peer, disk) = rt
        .block_on(Duration::from_secs(30), async move {
            let peer =
                Peer::new("node2", addr, secret.as_bytes(), RpcConfig::default()).expect("peer");
            let disk = peer.disk(0, HealthConfig::default(), Vec::new());
            (peer, disk)
        })
        .expect("peer");
    let wait_ok = |disk: disk_io_rpc::RemoteDisk| {
        rt.block_on(Duration::from_secs(60), async move {
            let t = Instant::now();
            while disk
                .disk_id(Deadline::after(Duration::from_millis(300)))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            t.elapsed()
        })
        .expect("node answers")
    };
    wait_ok(disk.clone());
    let mut detect = Vec::new();
    let mut recover = Vec::new();
    for i in 0..poweroffs {
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        c.poweroff("node2").expect("poweroff");
        while peer.breaker_state() != BreakerState::Open {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "breaker never opened"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        detect.push(t.elapsed());
        let t = Instant::now();
        c.poweron("node2").expect("poweron");
        wait_ok(disk.clone());
        recover.push(t.elapsed());
        println!(
            "power-off {}: detected in {:?}, calls succeed {:?} after power-on",
            i + 1,
            detect[i],
            recover[i]
        );
    }
    detect.sort();
    recover.sort();
    println!(
        "dead-peer detection over {poweroffs} power-offs: p50 {:?} max {:?} (target <= 1 s; RustFS claims ~8 s, MinIO's grid 20 s) | recovery after power-on: p50 {:?} max {:?}",
        pct(&detect, 0.5),
        detect[detect.len() - 1],
        pct(&recover, 0.5),
        recover[recover.len() - 1]
    );
    drop(rt);
    c.shutdown().expect("teardown");
}

fn main() {
    // `cargo bench` passes `--bench`; ignore what we do not know.
    let reads = arg("--reads", 5000);
    let mib = arg("--shard-mib", 256);
    let writers = arg("--writers", 4).max(1);
    let poweroffs = arg("--poweroffs", 10).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(local_vs_remote(reads, mib, writers));
    drop(rt);
    detection(poweroffs);
}
