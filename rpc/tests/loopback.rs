//! Every `Disk` and `ShardWriter` op over the RPC, on loopback, against the
//! same op on a local disk: byte-exact data, the same error variants.

use std::sync::Arc;
use std::time::Duration;

use disk_io::{CreateOptions, Deadline, DeleteOptions, Disk, DiskError};
use disk_io_rpc::RpcConfig;
use rand::RngCore;

mod common;
use common::{dl, remote, serve, temp_disk, SECRET};

fn random(n: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    if let Some(b) = v.first_mut() {
        *b = seed;
    }
    v
}

/// Runs every op on `disk` and logs each outcome, times and uuids left out
/// (they differ between two disks by nature).
async fn script(disk: &dyn Disk, blob: &[u8], shard: &[Vec<u8>]) -> Vec<String> {
    let mut log = Vec::new();
    macro_rules! rec {
        ($name:literal, $e:expr) => {
            log.push(format!("{}: {:?}", $name, $e))
        };
    }
    let id = disk
        .disk_id(dl())
        .await
        .map(|i| (i.set_index, i.disk_index));
    rec!("disk_id", id);
    let info = disk
        .disk_info(dl())
        .await
        .map(|i| (i.id.is_some(), i.state, i.total > 0));
    rec!("disk_info", info);
    rec!("make_vol", disk.make_vol("v1", dl()).await);
    rec!("make_vol again", disk.make_vol("v1", dl()).await);
    rec!("make_vol dots", disk.make_vol("..", dl()).await);
    rec!("make_vol dot", disk.make_vol(".hidden", dl()).await);
    rec!("make_vol slash", disk.make_vol("a/b", dl()).await);
    rec!("make_vol v2", disk.make_vol("v2", dl()).await);
    let names = disk
        .list_vols(dl())
        .await
        .map(|v| v.into_iter().map(|v| v.name).collect::<Vec<_>>());
    rec!("list_vols", names);
    rec!("stat_vol", disk.stat_vol("v1", dl()).await.map(|v| v.name));
    rec!("stat_vol missing", disk.stat_vol("nope", dl()).await);
    rec!(
        "write_all",
        disk.write_all("v1", "a/b/meta.bin", blob, dl()).await
    );
    let back = disk.read_all("v1", "a/b/meta.bin", dl()).await;
    rec!("read_all exact", back.as_deref().map(|b| b == blob));
    rec!(
        "read_all missing",
        disk.read_all("v1", "a/none", dl()).await
    );
    rec!("read_all no vol", disk.read_all("novol", "x", dl()).await);
    rec!(
        "read_all dotdot",
        disk.read_all("v1", "../../etc/passwd", dl()).await
    );
    rec!(
        "read_all abs",
        disk.read_all("v1", "/etc/passwd", dl()).await
    );
    rec!("read_all nul", disk.read_all("v1", "a\0b", dl()).await);
    rec!("read_all dir", disk.read_all("v1", "a/b", dl()).await);
    rec!(
        "write_all dotdot",
        disk.write_all("v1", "x/../../y", b"z", dl()).await
    );
    for direct in [false, true] {
        let opts = CreateOptions {
            direct,
            datasync: direct,
        };
        let path = format!("shards/part.{direct}");
        match disk.create_file("v1", &path, opts, dl()).await {
            Ok(mut w) => {
                for chunk in shard {
                    rec!("append", w.append(chunk, dl()).await);
                }
                rec!("finish", w.finish(dl()).await);
            }
            Err(e) => rec!("create_file", Err::<(), _>(e)),
        }
        let all: Vec<u8> = shard.concat();
        for (off, len) in [
            (0usize, 4096usize),
            (1, 1),
            (4095, 8193),
            (all.len() - 10, 10),
        ] {
            let got = disk.read_file_at("v1", &path, off as u64, len, dl()).await;
            rec!("read_file_at exact", got.map(|g| g == all[off..off + len]));
        }
        let past = disk
            .read_file_at("v1", &path, all.len() as u64 - 5, 10, dl())
            .await;
        rec!("read_file_at past eof", past);
        rec!(
            "stat_file",
            disk.stat_file("v1", &path, dl())
                .await
                .map(|f| (f.size, f.is_dir))
        );
    }
    rec!(
        "create_file no vol",
        disk.create_file("zz", "f", CreateOptions::default(), dl())
            .await
            .map(drop)
    );
    rec!(
        "create_file dotdot",
        disk.create_file("v1", "../f", CreateOptions::default(), dl())
            .await
            .map(drop)
    );
    rec!(
        "read_file_at missing",
        disk.read_file_at("v1", "nope", 0, 1, dl()).await
    );
    rec!(
        "stat_file dir",
        disk.stat_file("v1", "a", dl()).await.map(|f| f.is_dir)
    );
    rec!(
        "stat_file missing",
        disk.stat_file("v1", "missing", dl()).await
    );
    rec!(
        "rename",
        disk.rename_file("v1", "a/b/meta.bin", "v2", "c/meta.bin", dl())
            .await
    );
    rec!(
        "rename missing",
        disk.rename_file("v1", "a/b/meta.bin", "v2", "c/x", dl())
            .await
    );
    rec!(
        "rename dotdot",
        disk.rename_file("v1", "shards/part.false", "v2", "../x", dl())
            .await
    );
    rec!(
        "read renamed",
        disk.read_all("v2", "c/meta.bin", dl())
            .await
            .map(|b| b == blob)
    );
    rec!("list_dir root", disk.list_dir("v1", "", dl()).await);
    rec!("list_dir", disk.list_dir("v1", "shards", dl()).await);
    rec!("list_dir missing", disk.list_dir("v1", "none", dl()).await);
    rec!(
        "list_dir file",
        disk.list_dir("v1", "shards/part.true", dl()).await
    );
    rec!(
        "delete non-empty",
        disk.delete("v1", "shards", DeleteOptions::default(), dl())
            .await
    );
    rec!(
        "delete file",
        disk.delete("v1", "shards/part.true", DeleteOptions::default(), dl())
            .await
    );
    rec!(
        "delete missing",
        disk.delete("v1", "shards/part.true", DeleteOptions::default(), dl())
            .await
    );
    rec!(
        "delete tree",
        disk.delete("v1", "shards", DeleteOptions { recursive: true }, dl())
            .await
    );
    rec!("list_dir after", disk.list_dir("v1", "", dl()).await);
    rec!(
        "delete_vol non-empty",
        disk.delete_vol("v2", false, dl()).await
    );
    rec!("delete_vol force", disk.delete_vol("v2", true, dl()).await);
    rec!(
        "delete_vol missing",
        disk.delete_vol("v2", false, dl()).await
    );
    rec!("list_vols end", disk.list_vols(dl()).await.map(|v| v.len()));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_op_over_rpc_matches_the_local_disk() {
    let (_d1, local) = temp_disk().await;
    let (_d2, served_disk) = temp_disk().await;
    let served = serve(vec![Arc::new(served_disk)], RpcConfig::default()).await;
    let remote = remote(served.addr, SECRET, RpcConfig::default(), 0);
    let blob = random(100 * 1024 + 3, 1);
    let shard = vec![
        random(1 << 20, 2),
        random(4097, 3),
        random(1, 4),
        random(64 * 1024, 5),
    ];
    let expected = script(&local, &blob, &shard).await;
    let got = script(&remote, &blob, &shard).await;
    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(g, e, "step {i}: remote differs from local");
    }
    assert_eq!(got.len(), expected.len());
    assert!(
        expected.iter().any(|l| l.contains("FileNotFound"))
            && expected.iter().any(|l| l.contains("InvalidPath")),
        "the script exercises the error paths: {expected:#?}"
    );
    assert_eq!(served.server.sessions(), 0, "finished sessions are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_disk_index_is_disk_not_found_and_unavailable() {
    let (_d, disk) = temp_disk().await;
    let served = serve(vec![Arc::new(disk)], RpcConfig::default()).await;
    let r = remote(served.addr, SECRET, RpcConfig::default(), 3);
    let e = r.disk_id(dl()).await.unwrap_err();
    assert!(matches!(e, DiskError::DiskNotFound { .. }), "{e:?}");
    assert!(e.is_unavailable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_shard_writer_frees_its_session() {
    let (_d, disk) = temp_disk().await;
    let served = serve(vec![Arc::new(disk)], RpcConfig::default()).await;
    let r = remote(served.addr, SECRET, RpcConfig::default(), 0);
    r.make_vol("v", dl()).await.unwrap();
    let mut w = r
        .create_file("v", "f", CreateOptions::default(), dl())
        .await
        .unwrap();
    w.append(b"abc", dl()).await.unwrap();
    assert_eq!(served.server.sessions(), 1);
    drop(w);
    let until = Deadline::after(Duration::from_secs(5));
    while served.server.sessions() != 0 && !until.is_expired() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(served.server.sessions(), 0, "abort reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_is_unavailable_by_the_deadline() {
    // A port nobody listens on: refused at once, typed as unreachable.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let r = remote(addr, SECRET, RpcConfig::default(), 0);
    let d = Deadline::after(Duration::from_millis(500));
    let e = r.read_all("v", "x", d).await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    assert!(d.overshoot(std::time::Instant::now()) < Duration::from_millis(300));
}

#[test]
fn a_peer_outside_a_runtime_is_a_typed_error() {
    let e = disk_io_rpc::Peer::new(
        "p",
        "127.0.0.1:1".parse().unwrap(),
        SECRET,
        RpcConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(e, DiskError::InvalidArgument { .. }), "{e:?}");
}
