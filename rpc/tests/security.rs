//! Every refusal is typed and the server keeps serving: unauthenticated,
//! wrong-secret, tampered and replayed requests, 1 MiB of random bytes on
//! the port, an oversized message, and the concurrency limits (`Busy`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use disk_io::{Deadline, Disk, DiskError, OpClass};
use disk_io_rpc::proto::disk_service_client::DiskServiceClient;
use disk_io_rpc::proto::PathRequest;
use disk_io_rpc::{auth, methods, wire, RpcConfig};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Request;

mod common;
use common::{dl, fuse_disk, remote, serve, temp_disk, Served, SECRET};

async fn served() -> (tempfile::TempDir, Served) {
    let (dir, disk) = temp_disk().await;
    disk.make_vol("v", dl()).await.unwrap();
    disk.write_all("v", "f", b"hello", dl()).await.unwrap();
    (dir, serve(vec![Arc::new(disk)], RpcConfig::default()).await)
}

async fn good_call_answers(s: &Served) {
    let r = remote(s.addr, SECRET, RpcConfig::default(), 0);
    assert_eq!(
        r.read_all("v", "f", dl()).await.as_deref(),
        Ok(&b"hello"[..])
    );
}

fn rejected(e: &DiskError, what: &str) {
    assert!(matches!(e, DiskError::Rejected { .. }), "{what}: {e:?}");
}

fn req() -> PathRequest {
    PathRequest {
        disk: 0,
        vol: "v".into(),
        path: "f".into(),
    }
}

async fn raw(s: &Served, r: Request<PathRequest>) -> Result<Vec<u8>, DiskError> {
    let mut c = DiskServiceClient::connect(format!("http://{}", s.addr))
        .await
        .expect("connect");
    c.read_all(r)
        .await
        .map(|r| r.into_inner().data)
        .map_err(|s| wire::status_to_error(OpClass::ReadAll, Duration::ZERO, &s))
}

fn signed(secret: &[u8]) -> Request<PathRequest> {
    let mut r = Request::new(req());
    auth::sign(secret, methods::READ_ALL, Duration::from_secs(5), &mut r);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_wrong_secret_tampered_and_replayed_are_rejected() {
    let (_d, s) = served().await;
    assert_eq!(raw(&s, signed(SECRET)).await.as_deref(), Ok(&b"hello"[..]));

    rejected(&raw(&s, Request::new(req())).await.unwrap_err(), "unsigned");
    good_call_answers(&s).await;

    let wrong = remote(s.addr, b"some-other-secret-0000", RpcConfig::default(), 0);
    rejected(
        &wrong.read_all("v", "f", dl()).await.unwrap_err(),
        "wrong secret",
    );
    good_call_answers(&s).await;

    let mut tampered = signed(SECRET);
    tampered.get_mut().path = "other".into();
    rejected(&raw(&s, tampered).await.unwrap_err(), "tampered body");
    let mut tampered = signed(SECRET);
    tampered
        .metadata_mut()
        .insert(auth::H_BUDGET, "999999999".parse().unwrap());
    rejected(&raw(&s, tampered).await.unwrap_err(), "tampered budget");
    good_call_answers(&s).await;

    let once = signed(SECRET);
    let mut again = Request::new(once.get_ref().clone());
    *again.metadata_mut() = once.metadata().clone();
    assert!(raw(&s, once).await.is_ok());
    let e = raw(&s, again).await.unwrap_err();
    rejected(&e, "replayed");
    assert!(e.to_string().contains("replayed"), "{e}");
    good_call_answers(&s).await;
    assert!(s.server.stats().rejected.load(Ordering::Relaxed) >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_the_port_are_refused_and_the_server_keeps_serving() {
    let (_d, s) = served().await;
    let mut junk = vec![0u8; 1 << 20];
    rand::rng().fill_bytes(&mut junk);
    let mut sock = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    // The server may close before taking it all: a refusal either way.
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.write_all(&junk)).await;
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "the server closes a connection that is not HTTP/2"
    );
    good_call_answers(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_rejected_and_the_server_keeps_serving() {
    let (d, disk) = temp_disk().await;
    disk.make_vol("v", dl()).await.unwrap();
    disk.write_all("v", "f", b"hello", dl()).await.unwrap();
    let cfg = RpcConfig {
        max_message_bytes: 1 << 20,
        ..RpcConfig::default()
    };
    let s = serve(vec![Arc::new(disk)], cfg).await;
    let big_client = RpcConfig {
        max_message_bytes: 64 << 20,
        ..RpcConfig::default()
    };
    let r = remote(s.addr, SECRET, big_client, 0);
    let e = r
        .write_all("v", "big", &vec![1u8; 2 << 20], dl())
        .await
        .unwrap_err();
    rejected(&e, "oversized");
    // Nothing was written.
    assert!(!d.path().join("v/big").exists());
    // A read whose answer could not fit is refused before it runs.
    let e = r
        .read_file_at("v", "f", 0, 4 << 20, dl())
        .await
        .unwrap_err();
    assert!(matches!(e, DiskError::InvalidArgument { .. }), "{e:?}");
    // A file the disk reads but the RPC cannot carry: TooLarge, answered.
    std::fs::write(d.path().join("v/large"), vec![3u8; 2 << 20]).unwrap();
    let e = r.read_all("v", "large", dl()).await.unwrap_err();
    assert!(matches!(e, DiskError::TooLarge { .. }), "{e:?}");
    good_call_answers(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_answer_busy() {
    let (_scratch, fs, disk) = fuse_disk().await;
    let ctl = fs.control();
    let cfg = RpcConfig {
        max_in_flight: 3,
        max_in_flight_per_connection: 2,
        ..RpcConfig::default()
    };
    let s = serve(vec![disk as Arc<dyn Disk>], cfg).await;
    let a = remote(s.addr, SECRET, RpcConfig::default(), 0);
    let b = remote(s.addr, SECRET, RpcConfig::default(), 0);
    a.read_all("v", "f", dl()).await.unwrap();
    b.read_all("v", "f", dl()).await.unwrap();
    ctl.hang();
    let hold = |r: disk_io_rpc::RemoteDisk| {
        tokio::spawn(async move {
            r.read_all("v", "f", Deadline::after(Duration::from_secs(3)))
                .await
        })
    };
    let h1 = hold(a.clone());
    let h2 = hold(a.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = a
        .read_all("v", "f", Deadline::after(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert!(matches!(e, DiskError::Busy { .. }), "per connection: {e:?}");
    assert!(e.to_string().contains("connection"), "{e}");
    let h3 = hold(b.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = b
        .read_all("v", "f", Deadline::after(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert!(matches!(e, DiskError::Busy { .. }), "per server: {e:?}");
    assert!(e.to_string().contains("server"), "{e}");
    assert!(e.is_unavailable());
    ctl.release();
    for h in [h1, h2, h3] {
        let _ = h.await.unwrap();
    }
    // Slots are given back.
    assert_eq!(
        a.read_all("v", "f", dl()).await.as_deref(),
        Ok(&b"hello"[..])
    );
    assert!(s.server.stats().busy.load(Ordering::Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_and_slots_come_back() {
    let (_d, disk) = temp_disk().await;
    disk.make_vol("v", dl()).await.unwrap();
    disk.write_all("v", "f", b"hello", dl()).await.unwrap();
    let cfg = RpcConfig {
        max_connections: 2,
        ..RpcConfig::default()
    };
    let s = serve(vec![Arc::new(disk)], cfg).await;
    let a = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let b = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection is closed: {closed:?}"
    );
    assert_eq!(
        s.server.stats().refused_connections.load(Ordering::Relaxed),
        1
    );
    drop((a, b));
    // The slots are given back once the server sees the two close.
    let until = Deadline::after(Duration::from_secs(5));
    loop {
        let r = remote(s.addr, SECRET, RpcConfig::default(), 0);
        match r
            .read_all("v", "f", Deadline::after(Duration::from_millis(500)))
            .await
        {
            Ok(data) => {
                assert_eq!(data, b"hello");
                break;
            }
            Err(e) if !until.is_expired() => {
                assert!(e.is_unavailable(), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no slot came back: {e:?}"),
        }
    }
}
