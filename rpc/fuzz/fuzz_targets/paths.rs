//! Hostile volume and path names through the server's handlers, on a real
//! local disk: typed errors, never a panic, nothing outside the disk root.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use disk_io::{Deadline, Disk, LocalDisk};
use disk_io_rpc::{RpcConfig, RpcServer};

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef";

struct Fixture {
    rt: tokio::runtime::Runtime,
    server: RpcServer,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let server = rt.block_on(async {
            let d = Deadline::after(Duration::from_secs(10));
            let disk = LocalDisk::open(dir.path(), d).await.expect("open");
            disk.make_vol("v", d).await.expect("vol");
            disk.write_all("v", "a/file", b"x", d).await.expect("file");
            let mut cfg = RpcConfig::default();
            // Every input is a fresh signed request: keep the cache small
            // and let old nonces age out quickly.
            cfg.replay_window = Duration::from_secs(2);
            RpcServer::new(vec![Arc::new(disk) as Arc<dyn Disk>], SECRET, cfg).expect("server")
        });
        Fixture {
            rt,
            server,
            _dir: dir,
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let f = fixture();
    f.rt
        .block_on(disk_io_rpc::fuzzing::path_requests(&f.server, SECRET, data));
});
