//! Concurrent writers on one key, on one set of local disks: every
//! acknowledged write survives until a later one replaces it, readers
//! never see a torn or mixed object, a GET finishes with the version it
//! began with, and abandoned writes leave nothing once collected.
//!
//! (Before the per-version commit, two PUTs of one key at once could both
//! answer OK and leave no readable version: each deleted every shard file
//! but its own.)

mod common;

use std::collections::HashSet;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use disk_io::Deadline;
use disk_io_erasure::ErasureError;
use futures_util::future::join_all;
use tokio::io::AsyncWrite;

fn long() -> Deadline {
    Deadline::after(Duration::from_secs(60))
}

/// Body `i` of a round: distinct content and length, so a mix of two is
/// detectable.
fn body(round: u64, i: u64) -> Vec<u8> {
    bytes(100_000 + (i as usize) * 7_919, round * 1000 + i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_of_one_key_leave_exactly_one_acknowledged_body() {
    let fx = fixture(&[], test_config()).await;
    for round in 0..6u64 {
        let writers = 8u64;
        let results = join_all((0..writers).map(|i| {
            let set = &fx.set;
            async move {
                let data = body(round, i);
                let mut src: &[u8] = &data;
                (i, set.put_object(BUCKET, "k", &mut src, long()).await)
            }
        }))
        .await;
        let acked: HashSet<Vec<u8>> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| body(round, *i))
            .collect();
        assert_eq!(acked.len(), writers as usize, "all writes succeed here");
        // Every reader agrees on one acknowledged body, byte-exact.
        let (back, _) = get(&fx.set, "k", None, long()).await.expect("readable");
        assert!(acked.contains(&back), "round {round}: a body nobody wrote");
        let info = fx.set.stat_object(BUCKET, "k", long()).await.unwrap();
        assert_eq!(info.size, back.len() as u64);
        for _ in 0..3 {
            let (again, _) = get(&fx.set, "k", None, long()).await.unwrap();
            assert!(again == back, "round {round}: reads disagree");
        }
        assert_eq!(
            fx.set.list(BUCKET, "", long()).await.unwrap(),
            vec!["k".to_string()]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_body_retries_and_deletes_racing_puts_agree_everywhere() {
    let fx = fixture(&[], test_config()).await;
    for round in 0..6u64 {
        let data = body(round, 0);
        // The same body sent three times (an SDK retry), a different one,
        // and a DELETE, all at once.
        let ops = join_all((0..5u64).map(|i| {
            let (set, data) = (&fx.set, data.clone());
            async move {
                match i {
                    0..=2 => {
                        let mut src: &[u8] = &data;
                        set.put_object(BUCKET, "r", &mut src, long())
                            .await
                            .map(|_| Some(data.clone()))
                    }
                    3 => {
                        let other = body(round, 9);
                        let mut src: &[u8] = &other;
                        set.put_object(BUCKET, "r", &mut src, long())
                            .await
                            .map(|_| Some(other))
                    }
                    _ => match set.delete_object(BUCKET, "r", long()).await {
                        Ok(()) | Err(ErasureError::ObjectNotFound) => Ok(None),
                        Err(e) => Err(e),
                    },
                }
            }
        }))
        .await;
        let outcomes: Vec<Option<Vec<u8>>> = ops.into_iter().map(|r| r.expect("op")).collect();
        match get(&fx.set, "r", None, long()).await {
            Ok((back, _)) => {
                assert!(
                    outcomes.iter().flatten().any(|b| *b == back),
                    "round {round}: a body nobody wrote"
                );
                let info = fx.set.stat_object(BUCKET, "r", long()).await.unwrap();
                assert_eq!(info.size, back.len() as u64);
                assert!(fx
                    .set
                    .list(BUCKET, "", long())
                    .await
                    .unwrap()
                    .contains(&"r".into()));
            }
            Err(ErasureError::ObjectNotFound) => {
                assert!(
                    outcomes.contains(&None),
                    "round {round}: lost without a DELETE"
                );
                assert_eq!(
                    fx.set.stat_object(BUCKET, "r", long()).await,
                    Err(ErasureError::ObjectNotFound)
                );
            }
            Err(e) => panic!("round {round}: {e}"),
        }
    }
}

/// A sink that takes `chunk` bytes per poll with a pause between, so a
/// GET stays in flight while the object is replaced.
struct SlowSink {
    buf: Vec<u8>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncWrite for SlowSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(s) = self.sleep.as_mut() {
            if s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.sleep = Some(Box::pin(tokio::time::sleep(Duration::from_millis(15))));
        let n = data.len().min(64 << 10);
        self.buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

use std::future::Future;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_in_flight_finishes_with_its_version_while_replaced_and_deleted() {
    let fx = fixture(&[], test_config()).await;
    let old = bytes(3 << 20, 1);
    put(&fx.set, "g", &old, long()).await;
    let mut sink = SlowSink {
        buf: Vec::new(),
        sleep: None,
    };
    let reading = fx.set.get_object(BUCKET, "g", None, &mut sink, long());
    let replacing = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        put(&fx.set, "g", &bytes(1 << 20, 2), long()).await;
        fx.set.delete_object(BUCKET, "g", long()).await.unwrap();
        // Let the superseded files move to the graveyard meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let (r, ()) = tokio::join!(reading, replacing);
    r.expect("the GET finishes");
    assert!(
        sink.buf == old,
        "the GET streamed the version it began with"
    );
    assert_eq!(
        fx.set.stat_object(BUCKET, "g", long()).await,
        Err(ErasureError::ObjectNotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_puts_leave_nothing_after_the_collector() {
    let fx = fixture(&[], test_config()).await;
    put(&fx.set, "keep", b"kept", long()).await;
    // Writers dropped mid-body, as when the S3 client goes away.
    for i in 0..20u64 {
        let data = bytes(2 << 20, i);
        let mut src = SlowSource {
            data,
            at: 0,
            sleep: None,
        };
        let name = format!("gone/{i}");
        let put = fx.set.put_object(BUCKET, &name, &mut src, long());
        let _ = tokio::time::timeout(Duration::from_millis(150), put).await;
    }
    tokio::time::sleep(fx_window() * 2).await;
    let buckets = vec![BUCKET.to_string()];
    for _ in 0..3 {
        fx.set.collect(&buckets, long()).await;
        tokio::time::sleep(fx_window()).await;
    }
    for root in &fx.backing {
        let left = files_under(&root.join(BUCKET));
        assert!(
            left.iter().all(|f| f.starts_with("keep/")),
            "{root:?}: {left:?}"
        );
        assert!(files_under(&root.join("diskio-tmp")).is_empty(), "{root:?}");
    }
    let (back, _) = get(&fx.set, "keep", None, long()).await.unwrap();
    assert_eq!(back, b"kept");
}

/// A source that gives 64 KiB per poll with a pause between.
struct SlowSource {
    data: Vec<u8>,
    at: usize,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl tokio::io::AsyncRead for SlowSource {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(s) = self.sleep.as_mut() {
            if s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.sleep = Some(Box::pin(tokio::time::sleep(Duration::from_millis(20))));
        let n = (self.data.len() - self.at)
            .min(64 << 10)
            .min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_deletes_right_after_its_last_object_and_never_under_an_acked_put() {
    let fx = fixture(&[], test_config()).await;
    put(&fx.set, "a", b"x", long()).await;
    put(&fx.set, "a", b"y", long()).await;
    assert_eq!(
        fx.set.delete_bucket(BUCKET, long()).await,
        Err(ErasureError::BucketNotEmpty)
    );
    fx.set.delete_object(BUCKET, "a", long()).await.unwrap();
    fx.set
        .delete_bucket(BUCKET, long())
        .await
        .expect("deletable at once after its last object");
    // DeleteBucket racing PUTs: never both acknowledged with the object
    // then gone.
    for round in 0..5 {
        fx.set.make_bucket(BUCKET, long()).await.unwrap();
        let data = body(round, 1);
        let (p, d) = tokio::join!(
            async {
                let mut src: &[u8] = &data;
                fx.set.put_object(BUCKET, "race", &mut src, long()).await
            },
            fx.set.delete_bucket(BUCKET, long())
        );
        match (p.is_ok(), d.is_ok()) {
            (true, true) => panic!("round {round}: PUT and DeleteBucket both acknowledged"),
            (true, false) => {
                let (back, _) = get(&fx.set, "race", None, long()).await.unwrap();
                assert!(back == data);
                fx.set.delete_object(BUCKET, "race", long()).await.unwrap();
                fx.set.delete_bucket(BUCKET, long()).await.unwrap();
            }
            (false, _) => {
                let _ = fx.set.delete_bucket(BUCKET, long()).await;
            }
        }
    }
}
