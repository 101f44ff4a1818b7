//! The shipped Prometheus alert rules are checked three ways:
//!
//! 1. `promtool check rules` parses them;
//! 2. `promtool test rules` fires every alert, with its exact labels and
//!    annotations, on synthetic series
//!    (`deploy/prometheus/disk-io-alerts.test.yml`) — and stays quiet on a
//!    healthy neighbour;
//! 3. every series the rules (and that test file) name is one that is
//!    really emitted, with the labels the rules aggregate by: the probe
//!    loader's names from a running loader's `/metrics`, the libraries'
//!    from a metrics recorder while real operations run (`emitted/`: a
//!    `LocalDisk` with a deadline miss on a hung disk, erasure sets, quorum
//!    locks, IAM, the node RPC).
//!
//! (3) needs root (BPF, FUSE, a loop device), as CI has.

mod ebpf_common;
mod emitted;

use std::collections::{BTreeMap, BTreeSet};

use ebpf_common::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_rules_use_is_emitted_with_their_labels() {
    let mut emitted: BTreeMap<String, BTreeSet<String>> = emitted::emitted_series()
        .await
        .into_iter()
        .map(|(name, family)| (name, family.labels))
        .collect();
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
