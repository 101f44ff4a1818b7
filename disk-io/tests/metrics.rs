//! The metrics a storage node's exporter will see: per-op counters and
//! latency histograms, disk-state-check duration and timeouts, deadline
//! misses, fail-fast refusals, state gauge and transitions, all prefixed
//! `diskio_`. Its own test binary because it installs the global recorder.

use std::time::Duration;

use disk_io::{metrics as m, Deadline, Disk, DiskConfig, DiskError, LocalDisk};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;

type Series = Vec<(metrics_util::CompositeKey, DebugValue)>;

/// One snapshot, taken once: the debugging recorder drains on snapshot.
fn take(snap: &Snapshotter) -> Series {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .map(|(ck, _, _, v)| (ck, v))
        .collect()
}

fn find<'a>(series: &'a Series, name: &str, labels: &[(&str, &str)]) -> Vec<&'a DebugValue> {
    series
        .iter()
        .filter(|(ck, _)| {
            let key = ck.key();
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(_, v)| v)
        .collect()
}

fn counter(snap: &Series, name: &str, labels: &[(&str, &str)]) -> u64 {
    find(snap, name, labels)
        .into_iter()
        .map(|v| match v {
            DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_record_their_metrics() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    recorder.install().expect("install the debugging recorder");

    let dir = tempfile::tempdir().expect("tempdir");
    let label = "metrics-test-disk";
    let cfg = DiskConfig {
        disk_id_cache_ttl: Duration::ZERO,
        ..Default::default()
    };
    let disk = LocalDisk::builder(dir.path())
        .label(label)
        .config(cfg)
        .open(Deadline::after(Duration::from_secs(5)))
        .await
        .expect("open");
    let dl = || Deadline::after(Duration::from_secs(5));
    disk.format(0, 0, false, dl()).await.expect("format");
    disk.make_vol("v", dl()).await.expect("make_vol");
    disk.write_all("v", "m", b"x", dl()).await.expect("write");
    assert_eq!(
        disk.read_all("v", "nope", dl()).await,
        Err(DiskError::FileNotFound)
    );
    disk.disk_id(dl()).await.expect("disk_id");
    // A deadline already in the past: the state check times out.
    let past = Deadline::at(std::time::Instant::now() - Duration::from_millis(1));
    assert!(matches!(
        disk.disk_id(past).await,
        Err(DiskError::DeadlineExceeded { .. })
    ));
    disk.mark_faulty("metrics test");
    assert!(matches!(
        disk.read_all("v", "m", dl()).await,
        Err(DiskError::Faulty { .. })
    ));

    let series = take(&snap);
    let snap = &series;
    let d = [("disk", label)];
    assert_eq!(
        counter(
            snap,
            m::OPS_TOTAL,
            &[("disk", label), ("op", "write_all"), ("result", "ok")]
        ),
        1
    );
    assert_eq!(
        counter(
            snap,
            m::OPS_TOTAL,
            &[("disk", label), ("op", "read_all"), ("result", "not_found")]
        ),
        1
    );
    assert_eq!(
        counter(
            snap,
            m::DEADLINE_MISSES,
            &[("disk", label), ("op", "get_disk_id")]
        ),
        1
    );
    assert_eq!(counter(snap, m::STATE_CHECK_TIMEOUTS, &d), 1);
    assert_eq!(
        counter(snap, m::FAIL_FAST, &[("disk", label), ("op", "read_all")]),
        1
    );
    assert_eq!(
        counter(snap, m::TRANSITIONS, &[("disk", label), ("to", "faulty")]),
        1
    );
    let checks = find(snap, m::STATE_CHECK_DURATION, &d);
    let samples: usize = checks
        .iter()
        .map(|v| match v {
            DebugValue::Histogram(h) => h.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(samples, 2, "one duration sample per get_disk_id call");
    match find(snap, m::STATE, &d).as_slice() {
        [DebugValue::Gauge(g)] => assert_eq!(g.into_inner(), 2.0, "gauge says faulty"),
        other => panic!("state gauge: {other:?}"),
    }
    // Every series this crate records carries the prefix.
    for (ck, _) in snap {
        assert!(
            ck.key().name().starts_with(m::PREFIX),
            "{}",
            ck.key().name()
        );
        if ck.kind() == MetricKind::Histogram {
            assert!(ck.key().name().ends_with("_seconds"), "{}", ck.key().name());
        }
    }
}
