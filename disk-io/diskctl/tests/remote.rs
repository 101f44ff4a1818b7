//! `diskctl --config cluster.toml id|info|probe NODE:N`: the same JSON for a
//! disk served over the node RPC, the same deadline when the node is silent.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_io::{Deadline, Disk, LocalDisk};
use disk_io_rpc::cluster::{ClusterConfig, NodeConfig, CONFIG_SCHEMA};
use disk_io_rpc::{RpcConfig, RpcServer};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn diskctl(args: &[&str]) -> (serde_json::Value, bool, Duration) {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_diskctl"))
        .args(args)
        .output()
        .expect("run diskctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {text:?}"));
    assert!(v["ok"].is_boolean() && v["elapsed_us"].is_u64(), "{v}");
    (v, out.status.success(), t0.elapsed())
}

fn config(dir: &std::path::Path, nodes: &[(&str, SocketAddr)]) -> String {
    let nodes = nodes
        .iter()
        .enumerate()
        .map(|(i, (name, rpc_addr))| NodeConfig {
            name: name.to_string(),
            rpc_addr: *rpc_addr,
            s3_addr: format!("127.0.0.1:{}", 1 + i).parse().unwrap(),
            http_addr: None,
            disks: vec![dir.join(format!("{name}-disk1"))],
        })
        .collect::<Vec<_>>();
    let c = ClusterConfig {
        schema: CONFIG_SCHEMA,
        name: "ctl".into(),
        secret: SECRET.into(),
        set_size: nodes.len(),
        parity: nodes.len() / 2,
        locks: Default::default(),
        nodes,
    };
    let path = dir.join("cluster.toml");
    c.write(&path).expect("write config");
    path.to_str().expect("utf8").to_string()
}

#[test]
fn id_info_probe_of_a_remote_disk() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let disk_dir = tempfile::tempdir().expect("tempdir");
    let (addr, uuid) = rt.block_on(async {
        let d = || Deadline::after(Duration::from_secs(5));
        let disk = LocalDisk::open(disk_dir.path(), d()).await.expect("open");
        let id = disk.format(1, 2, false, d()).await.expect("format");
        let server = RpcServer::new(
            vec![Arc::new(disk) as Arc<dyn Disk>],
            SECRET.as_bytes(),
            RpcConfig::default(),
        )
        .expect("server");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(server.serve(l, std::future::pending()));
        (addr, id.uuid.to_string())
    });
    // A node that accepts connections and never answers: a hung peer.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().unwrap();
    let cfg = config(dir.path(), &[("node1", addr), ("node2", silent_addr)]);

    let (v, ok, _) = diskctl(&[
        "--config",
        &cfg,
        "id",
        "node1:1",
        "--json",
        "--deadline",
        "2s",
    ]);
    assert!(ok, "{v}");
    assert_eq!(v["disk_id"]["uuid"], uuid.as_str());
    assert_eq!(v["disk_id"]["set_index"], 1);
    let (v, ok, _) = diskctl(&["--config", &cfg, "info", "node1:1", "--json"]);
    assert!(ok, "{v}");
    assert!(v["info"]["total"].as_u64().expect("total") > 0);
    assert_eq!(v["info"]["state"], "online");
    let (v, ok, _) = diskctl(&["--config", &cfg, "probe", "node1:1", "--json"]);
    assert!(ok, "{v}");
    assert!(v["probe_us"].is_u64());

    let (v, ok, _) = diskctl(&["--config", &cfg, "id", "node1:2", "--json"]);
    assert!(!ok);
    assert_eq!(v["error_kind"], "invalid_argument", "{v}");
    let (v, ok, _) = diskctl(&["--config", &cfg, "format", "node1:1", "--json"]);
    assert!(!ok);
    assert_eq!(v["error_kind"], "invalid_argument", "{v}");

    let (v, ok, took) = diskctl(&[
        "--config",
        &cfg,
        "info",
        "node2:1",
        "--json",
        "--deadline",
        "500ms",
    ]);
    assert!(!ok);
    assert_eq!(v["error_kind"], "deadline_exceeded", "{v}");
    assert_eq!(v["unavailable"], true);
    assert!(
        took < Duration::from_millis(500) + Duration::from_secs(2),
        "took {took:?}"
    );
    drop(silent);
}
