//! A served disk on a FaultFs mount: ENOSPC travels as `NoSpace`, a hung
//! disk answers by the caller's deadline and the server abandons the local
//! op (the server's driver counts the zombie, which drains on release).
//!
//! Needs root and /dev/fuse; without them the tests fail naming them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_io::{CreateOptions, Deadline, Disk, DiskError};
use disk_io_rpc::RpcConfig;

mod common;
use common::{dl, fuse_disk, remote, serve, SECRET};

const SLACK: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_space_is_no_space_remotely_too() {
    let (_s, fs, local) = fuse_disk().await;
    let ctl = fs.control();
    let served = serve(vec![local.clone() as Arc<dyn Disk>], RpcConfig::default()).await;
    let r = remote(served.addr, SECRET, RpcConfig::default(), 0);
    ctl.set_enospc(true);
    let want = local.write_all("v", "new", b"data", dl()).await;
    assert_eq!(want, Err(DiskError::NoSpace), "the fault is in place");
    assert_eq!(r.write_all("v", "new", b"data", dl()).await, want);
    let lw = async {
        let mut w = local
            .create_file("v", "s1", CreateOptions::default(), dl())
            .await?;
        w.append(&[7u8; 8192], dl()).await?;
        w.finish(dl()).await
    }
    .await;
    let rw = async {
        let mut w = r
            .create_file("v", "s2", CreateOptions::default(), dl())
            .await?;
        w.append(&[7u8; 8192], dl()).await?;
        w.finish(dl()).await
    }
    .await;
    assert_eq!(rw, lw, "shard write under ENOSPC");
    assert!(matches!(rw, Err(DiskError::NoSpace)), "{rw:?}");
    ctl.reset();
    assert_eq!(
        r.read_all("v", "meta", dl()).await.as_deref(),
        Ok(&b"old"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_remote_disk_answers_by_the_deadline_and_the_server_abandons_the_op() {
    let (_s, fs, local) = fuse_disk().await;
    let ctl = fs.control();
    let served = serve(vec![local.clone() as Arc<dyn Disk>], RpcConfig::default()).await;
    let r = remote(served.addr, SECRET, RpcConfig::default(), 0);
    assert_eq!(
        r.read_all("v", "meta", dl()).await.as_deref(),
        Ok(&b"old"[..])
    );
    ctl.hang();
    let mut calls = Vec::new();
    for i in 0..4 {
        let r = r.clone();
        calls.push(tokio::spawn(async move {
            let d = Deadline::after(Duration::from_millis(400));
            let out = if i % 2 == 0 {
                r.read_all("v", "meta", d).await.map(drop)
            } else {
                r.write_all("v", "other", b"x", d).await
            };
            (out, d.overshoot(Instant::now()))
        }));
    }
    for c in calls {
        let (out, late) = c.await.unwrap();
        assert!(
            matches!(out, Err(DiskError::DeadlineExceeded { .. })),
            "{out:?}"
        );
        assert!(late <= SLACK, "answered {late:?} after the deadline");
    }
    assert!(
        local.driver_stats().zombies() >= 1,
        "the server's local op was abandoned, not left running for the caller: zombies {}",
        local.driver_stats().zombies()
    );
    ctl.release();
    let until = Deadline::after(Duration::from_secs(10));
    while local.driver_stats().zombies() != 0 && !until.is_expired() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        local.driver_stats().zombies(),
        0,
        "zombies drained after release"
    );
    assert_eq!(
        r.read_all("v", "meta", dl()).await.as_deref(),
        Ok(&b"old"[..])
    );
}
