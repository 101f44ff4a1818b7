//! `disk-io-node serve` as a process: reads the cluster file, opens and
//! formats its disks, serves them on its RPC address; SIGTERM stops it.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use disk_io::{Deadline, Disk, DiskError, HealthConfig};
use disk_io_rpc::cluster::{ClusterConfig, NodeConfig, CONFIG_SCHEMA};
use disk_io_rpc::{Peer, RpcConfig};

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_opens_formats_and_serves_the_nodes_disks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disks: Vec<PathBuf> = (1..=2)
        .map(|i| {
            let p = dir.path().join(format!("disk{i}"));
            std::fs::create_dir(&p).expect("mkdir");
            p
        })
        .collect();
    let rpc_addr = free_addr();
    let config = ClusterConfig {
        schema: CONFIG_SCHEMA,
        name: "nodetest".into(),
        secret: "0123456789abcdef0123456789abcdef".into(),
        set_size: 2,
        parity: 1,
        locks: Default::default(),
        nodes: vec![NodeConfig {
            name: "node1".into(),
            rpc_addr,
            s3_addr: free_addr(),
            http_addr: None,
            disks,
        }],
    };
    let path = dir.path().join("cluster.toml");
    config.write(&path).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_disk-io-node"))
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--node", "node1", "--format-missing"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn disk-io-node");
    let peer = Peer::new(
        "node1",
        rpc_addr,
        config.secret.as_bytes(),
        RpcConfig::default(),
    )
    .expect("peer");
    let until = Instant::now() + Duration::from_secs(20);
    let mut ids = Vec::new();
    for i in 0..2 {
        let disk = peer.disk(i, HealthConfig::default(), Vec::new());
        let id = loop {
            match disk.disk_id(Deadline::after(Duration::from_secs(2))).await {
                Ok(id) => break id,
                Err(e) if Instant::now() < until && e.is_unavailable() => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("disk {i}: {e:?}"),
            }
        };
        ids.push((id.set_index, id.disk_index));
    }
    assert_eq!(ids, vec![(0, 0), (0, 1)]);
    let third = peer.disk(2, HealthConfig::default(), Vec::new());
    assert!(matches!(
        third.disk_id(Deadline::after(Duration::from_secs(2))).await,
        Err(DiskError::DiskNotFound { .. })
    ));
    // A wrong secret is refused.
    let wrong = Peer::new(
        "node1",
        rpc_addr,
        b"not-the-cluster-secret",
        RpcConfig::default(),
    )
    .expect("peer");
    assert!(matches!(
        wrong
            .disk(0, HealthConfig::default(), Vec::new())
            .disk_id(Deadline::after(Duration::from_secs(2)))
            .await,
        Err(DiskError::Rejected { .. })
    ));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let stop = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > stop {
            let _ = child.kill();
            panic!("disk-io-node did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn unknown_node_and_bad_config_fail_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, "schema = 1\nname = \"x\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_disk-io-node"))
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--node", "node9"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster config"), "{err}");
}
