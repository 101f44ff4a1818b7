//! Fixtures shared by the RPC test binaries: a server on loopback over
//! local disks, and a peer for it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use disk_io::{Deadline, Disk, DiskConfig, LocalDisk};
use disk_io_harness::{privilege, FaultFs, ScratchDir};
use disk_io_health::HealthConfig;
use disk_io_rpc::{Peer, RemoteDisk, RpcConfig, RpcServer};
use tokio::sync::oneshot;

pub const SECRET: &[u8] = b"test-secret-0123456789abcdef";

pub fn dl() -> Deadline {
    Deadline::after(Duration::from_secs(10))
}

/// A running server; dropping it stops the server.
pub struct Served {
    pub addr: SocketAddr,
    pub server: RpcServer,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

pub async fn serve(disks: Vec<Arc<dyn Disk>>, cfg: RpcConfig) -> Served {
    serve_with_locker(disks, None, cfg).await
}

pub async fn serve_with_locker(
    disks: Vec<Arc<dyn Disk>>,
    locker: Option<Arc<dyn disk_io_api::Locker>>,
    cfg: RpcConfig,
) -> Served {
    let services = disk_io_rpc::Services {
        locker,
        ..disk_io_rpc::Services::default()
    };
    let server = RpcServer::serving(disks, services, SECRET, cfg).expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let s = server.clone();
    let task = tokio::spawn(async move {
        s.serve(listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    Served {
        addr,
        server,
        stop: Some(stop),
        task,
    }
}

pub fn remote(addr: SocketAddr, secret: &[u8], cfg: RpcConfig, index: u32) -> RemoteDisk {
    let peer = Peer::new("peer", addr, secret, cfg).expect("peer");
    peer.disk(index, never_trip_health(), Vec::new())
}

pub fn never_trip_health() -> HealthConfig {
    HealthConfig {
        faulty_after_misses: u32::MAX,
        ..HealthConfig::default()
    }
}

/// A formatted local disk on a fresh temp dir.
pub async fn temp_disk() -> (tempfile::TempDir, LocalDisk) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = LocalDisk::open(dir.path(), dl()).await.expect("open");
    disk.format(0, 1, false, dl()).await.expect("format");
    (dir, disk)
}

/// A local disk on a fresh FaultFs mount whose health never trips on misses
/// (to observe them raw), with volume `v` holding `meta` = "old" and `f` =
/// "hello". Needs root and /dev/fuse (fails naming them).
pub async fn fuse_disk() -> (ScratchDir, FaultFs, Arc<LocalDisk>) {
    privilege::require_root().expect("this test mounts FUSE");
    privilege::require_fuse().expect("this test mounts FUSE");
    let (scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
    let mut cfg = DiskConfig::default();
    cfg.health.faulty_after_misses = u32::MAX;
    cfg.health.probe_interval = Duration::ZERO;
    cfg.disk_id_cache_ttl = Duration::ZERO;
    let disk = LocalDisk::builder(fs.mountpoint())
        .config(cfg)
        .open(dl())
        .await
        .expect("open disk on faultfs");
    disk.format(0, 1, false, dl()).await.expect("format");
    disk.make_vol("v", dl()).await.expect("make_vol");
    disk.write_all("v", "meta", b"old", dl())
        .await
        .expect("write_all");
    disk.write_all("v", "f", b"hello", dl())
        .await
        .expect("write_all");
    (scratch, fs, Arc::new(disk))
}
