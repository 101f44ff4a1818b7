//! The config store on local disks with in-process lockers: documents
//! round-trip, a read-modify-write from many tasks loses nothing, a held
//! lock is a typed, retryable timeout by the deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_io::Deadline;
use disk_io_api::LockKind;
use disk_io_erasure::{ConfigError, ConfigStoreConfig, QuorumLock};

mod store_fixture;
use store_fixture::{cluster, dl, lock_cfg};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_round_trip_and_limits_are_typed() {
    let c = cluster(ConfigStoreConfig {
        max_document_bytes: 4096,
        ..ConfigStoreConfig::default()
    })
    .await;
    let s = &c.store;
    assert_eq!(s.read("iam/users/alice.json", dl()).await, Ok(None));
    s.write("iam/users/alice.json", b"{\"a\":1}", dl())
        .await
        .expect("write");
    s.write("iam/users/bob.json", b"{\"b\":2}", dl())
        .await
        .expect("write");
    s.write("settings.json", b"{}", dl()).await.expect("write");
    assert_eq!(
        s.read("iam/users/alice.json", dl()).await,
        Ok(Some(b"{\"a\":1}".to_vec()))
    );
    assert_eq!(
        s.list("iam/users", dl()).await.expect("list"),
        ["alice.json", "bob.json"]
    );
    let next = s
        .update("iam/users/alice.json", dl(), |cur| {
            assert_eq!(cur.as_deref(), Some(&b"{\"a\":1}"[..]));
            Ok(Some(b"{\"a\":2}".to_vec()))
        })
        .await
        .expect("update");
    assert_eq!(next.as_deref(), Some(&b"{\"a\":2}"[..]));
    let refused = s
        .update("iam/users/alice.json", dl(), |_| Err("no".into()))
        .await;
    assert!(
        matches!(refused, Err(ConfigError::Refused { .. })),
        "{refused:?}"
    );
    assert_eq!(s.delete("iam/users/alice.json", dl()).await, Ok(true));
    assert_eq!(s.delete("iam/users/alice.json", dl()).await, Ok(false));
    assert_eq!(s.read("iam/users/alice.json", dl()).await, Ok(None));
    let big = vec![7u8; 5000];
    let r = s.write("big.json", &big, dl()).await;
    assert!(
        matches!(r, Err(ConfigError::TooLarge { size: 5000, .. })),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_modify_writes_lose_nothing() {
    let c = Arc::new(cluster(ConfigStoreConfig::default()).await);
    let mut tasks = Vec::new();
    for t in 0..6u32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..4u32 {
                c.store
                    .update(
                        "list.txt",
                        Deadline::after(Duration::from_secs(30)),
                        |cur| {
                            let mut v = cur.unwrap_or_default();
                            v.extend_from_slice(format!("{t}.{i}\n").as_bytes());
                            Ok(Some(v))
                        },
                    )
                    .await
                    .expect("update");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let doc = c
        .store
        .read("list.txt", dl())
        .await
        .expect("read")
        .expect("doc");
    let lines: std::collections::HashSet<&[u8]> = doc
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        24,
        "every update survived: {}",
        String::from_utf8_lossy(&doc)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_is_a_typed_retryable_timeout_by_the_deadline() {
    let c = cluster(ConfigStoreConfig::default()).await;
    c.store
        .write("iam/users/x.json", b"1", dl())
        .await
        .expect("write");
    let other = QuorumLock::new(c.lockers.clone(), "other", lock_cfg()).expect("locks");
    let held = other
        .lock("config/iam/users/x.json", LockKind::Write, dl())
        .await
        .expect("hold the document's lock");
    let budget = Duration::from_millis(400);
    let t0 = Instant::now();
    let r = c
        .store
        .read("iam/users/x.json", Deadline::after(budget))
        .await;
    let took = t0.elapsed();
    assert!(r.as_ref().is_err_and(ConfigError::is_lock_timeout), "{r:?}");
    assert!(r.as_ref().is_err_and(ConfigError::is_retryable));
    assert!(
        took <= budget + Duration::from_millis(300),
        "answered after {took:?}"
    );
    held.release(dl()).await;
    assert_eq!(
        c.store.read("iam/users/x.json", dl()).await,
        Ok(Some(b"1".to_vec()))
    );
}
