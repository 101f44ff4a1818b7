//! The shipped Prometheus alert rules are checked three ways:
//!
//! 1. `promtool check rules` parses them;
//! 2. `promtool test rules` fires every alert, with its exact labels and
//!    annotations, on synthetic series
//!    (`deploy/prometheus/disk-io-alerts.test.yml`) — and stays quiet on a
//!    healthy neighbour;
//! 3. every series the rules (and that test file) name is one that is
//!    really emitted, with the labels the rules aggregate by: the probe
//!    loader's names from a running loader's `/metrics`, disk-io's names
//!    from a metrics recorder after real operations on a `LocalDisk`
//!    (including a deadline miss on a hung disk), the cluster layer's from
//!    erasure sets opened and a quorum lock and an IAM operation timing
//!    out on a held lock.
//!
//! (3) needs root (BPF, FUSE, a loop device), as CI has.

mod ebpf_common;
#[path = "../../erasure/tests/store_fixture/mod.rs"]
mod store_fixture;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use disk_io::{Deadline, Disk, DiskConfig, DiskError, LocalDisk};
use disk_io_api::LockKind;
use disk_io_erasure::{ConfigStoreConfig, QuorumLock};
use disk_io_harness::{privilege, FaultFs};
use disk_io_iam::{Iam, IamConfig, Policy, Status, User};
use ebpf_common::*;
use metrics_util::debugging::DebuggingRecorder;
use store_fixture::{cluster, dl, lock_cfg};

const RULES: &str = "disk-io-alerts.yml";
const RULE_TESTS: &str = "disk-io-alerts.test.yml";

fn read(name: &str) -> String {
    let path = format!("{}/../deploy/prometheus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Identifiers in `text` that start with `diskio_` (series names; no label
/// or function of ours has that prefix).
fn series_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("diskio_"))
        .map(str::to_owned)
        .collect()
}

/// Each rule's expression, with the labels its `by (...)` clauses name.
fn rule_exprs(rules: &str) -> Vec<(String, BTreeSet<String>)> {
    let alerts = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect();
    // One single-line `expr:` per alert; a multi-line one would escape the
    // name check below, so it is refused here.
    assert_eq!(
        exprs.len(),
        alerts,
        "every alert needs a one-line `expr:` (found {} for {alerts} alerts)",
        exprs.len()
    );
    exprs
        .into_iter()
        .map(|e| {
            let mut by = BTreeSet::new();
            let mut rest = e.as_str();
            while let Some(i) = rest.find("by (") {
                let after = &rest[i + 4..];
                let end = after.find(')').unwrap_or(after.len());
                by.extend(after[..end].split(',').map(|l| l.trim().to_owned()));
                rest = &after[end..];
            }
            (e, by)
        })
        .collect()
}

#[test]
fn rules_pass_promtool_check() {
    let out = promtool(&["check", "rules", RULES], None).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_fires_in_promtool_test_rules() {
    let out = promtool(&["test", "rules", RULE_TESTS], None).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert of the rules file is tested firing (an alert test with a
    // non-empty exp_alerts).
    let tests = read(RULE_TESTS);
    let fired: BTreeSet<&str> = tests
        .split("- eval_time:")
        .filter(|block| block.contains("exp_labels:"))
        .filter_map(|block| {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix("alertname:"))
                .map(str::trim)
        })
        .collect();
    for alert in read(RULES)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
    {
        assert!(fired.contains(alert), "{RULE_TESTS} never fires {alert}");
    }
    // The synthetic series use only the names the rules use (which the
    // next test ties to what is really emitted).
    let used = series_names(&read(RULES));
    for name in series_names(&tests) {
        assert!(
            used.contains(&name),
            "{RULE_TESTS} feeds {name}, which no rule reads"
        );
    }
}

/// disk-io's series as recorded by a real `LocalDisk`: opened, formatted,
/// written and read on a FUSE mount, then asked its disk id with a short
/// deadline while the mount hangs (a state-check timeout and a deadline
/// miss). Series name → label names.
async fn library_series() -> BTreeMap<String, BTreeSet<String>> {
    privilege::require_fuse().expect("this test runs a disk on FUSE");
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("install the metrics recorder (once per test binary)");
    let (_scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
    let ctl = fs.control();
    let mut cfg = DiskConfig {
        disk_id_cache_ttl: Duration::ZERO,
        ..DiskConfig::default()
    };
    cfg.health.tick = Duration::from_millis(10);
    let setup = || Deadline::after(Duration::from_secs(10));
    let disk = LocalDisk::builder(fs.mountpoint())
        .label("disk1")
        .config(cfg)
        .open(setup())
        .await
        .expect("open disk on faultfs");
    disk.format(0, 1, false, setup()).await.expect("format");
    disk.make_vol("v", setup()).await.expect("make_vol");
    disk.write_all("v", "meta", b"x", setup())
        .await
        .expect("write_all");
    disk.read_all("v", "meta", setup()).await.expect("read_all");
    disk.disk_id(setup()).await.expect("disk_id");
    ctl.hang();
    let missed = disk
        .disk_id(Deadline::after(Duration::from_millis(50)))
        .await;
    assert!(
        matches!(missed, Err(DiskError::DeadlineExceeded { .. })),
        "disk_id on a hung disk: {missed:?}"
    );
    // Let the health monitor tick (the driver gauges are set per tick).
    tokio::time::sleep(Duration::from_millis(100)).await;
    ctl.release();
    drop(disk);
    cluster_series().await;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (key, _, _, _) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        out.entry(key.name().to_owned())
            .or_default()
            .extend(key.labels().map(|l| l.key().to_owned()));
    }
    out
}

/// The cluster layer's series, from real operations (recorded by the
/// recorder `library_series` installed): erasure sets opened (their
/// must-stay-zero false-quorum-loss counters registered), a quorum lock
/// and an IAM operation that time out on a lock someone holds.
async fn cluster_series() {
    let c = cluster(ConfigStoreConfig::default()).await;
    let iam = Iam::new(c.store.clone(), IamConfig::default(), None);
    let other = QuorumLock::new(c.lockers.clone(), "other", lock_cfg()).expect("locks");
    let held = other
        .lock("config/iam/users/alice.json", LockKind::Write, dl())
        .await
        .expect("hold alice's document");
    let user = User {
        access_key: "alice".into(),
        secret_key: "alice-secret-key".into(),
        status: Status::Enabled,
        policy: Policy::read_write_all(),
    };
    let r = iam
        .add_user(user, Deadline::after(Duration::from_millis(300)))
        .await;
    assert!(r.as_ref().is_err_and(|e| e.is_lock_timeout()), "{r:?}");
    held.release(dl()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_rules_use_is_emitted_with_their_labels() {
    let mut emitted = library_series().await;
    let traced = tokio::task::spawn_blocking(|| {
        let traced = loader_with_io(8);
        let text = scrape(&traced.loader);
        promtool_check(&text).expect("promtool check metrics");
        (traced, text)
    })
    .await
    .expect("loader");
    let (traced, text) = traced;
    for (name, labels) in exposed_series(&text) {
        emitted.entry(name).or_default().extend(labels);
    }
    drop(traced);

    let rules = read(RULES);
    let exprs = rule_exprs(&rules);
    assert!(!exprs.is_empty(), "no rules in {RULES}");
    for (expr, by) in exprs {
        let names = series_names(&expr);
        assert!(!names.is_empty(), "rule reads no diskio_ series: {expr}");
        for name in names {
            let labels = emitted.get(&name).unwrap_or_else(|| {
                panic!(
                    "the rules read {name}, which nothing emits; emitted: {:?}",
                    emitted.keys().collect::<Vec<_>>()
                )
            });
            // `instance` is added by Prometheus at scrape time.
            for label in by.iter().filter(|l| *l != "instance") {
                assert!(
                    labels.contains(label),
                    "{expr}: aggregates {name} by `{label}`, but it carries {labels:?}"
                );
            }
        }
    }
}
