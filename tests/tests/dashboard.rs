//! The Grafana dashboard (`deploy/grafana/disk-io-dashboard.json`) is
//! importable and reads only series that are really exported:
//!
//! 1. its structure: `__inputs` declares the Prometheus datasource
//!    `DS_PROMETHEUS`, every panel (nested ones included) refers to it by uid
//!    and has at least one target, ids are unique, the rows are the ones SREs
//!    expect;
//! 2. every query (with Grafana's variables filled in) is valid PromQL, as
//!    `promtool check rules` sees it;
//! 3. every series name and label the queries use is exported: the
//!    libraries' from a metrics recorder while real operations run
//!    (`emitted/`, shared with `alert_rules.rs`), rendered as the node's
//!    exporter renders them (histograms with buckets: every one is named
//!    `_seconds`); the probe loader's from its real renderer
//!    (`probes_ebpf_loader::metrics::render`) on a snapshot with a device in
//!    every state; the node binary's own (`diskio_s3_*`, `diskio_node_*`)
//!    only against their documented names and labels, and listed by
//!    [`node_only_series`] for the test that scrapes a live node.
//!
//! (3) needs root (FUSE), as CI has.

mod ebpf_common;
mod emitted;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use disk_io_harness::dashboard::{
    expose, is_node_only, label_values_query, node_documented, node_only_series, parse,
    series_names, unexported, Dashboard, Exposition, Kind, SAMPLE_SUFFIXES,
};
use ebpf_common::{exposed_series, promtool};
use emitted::MetricKind;
use serde_json::{json, Value};

fn shipped() -> Dashboard {
    Dashboard::shipped().unwrap_or_else(|e| panic!("the shipped dashboard: {e}"))
}

/// The datasource every panel, target and query variable refers to.
fn prometheus_ref() -> Value {
    json!({ "type": "prometheus", "uid": "${DS_PROMETHEUS}" })
}

#[test]
fn the_dashboard_is_importable_and_every_panel_queries_prometheus() {
    let d = shipped();
    let top = d.json();
    let inputs = top["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "__inputs declares no Prometheus datasource DS_PROMETHEUS: {inputs:?}"
    );
    assert!(
        top["schemaVersion"].as_u64().is_some_and(|v| v >= 38),
        "schemaVersion {} is older than Grafana 10's",
        top["schemaVersion"]
    );
    assert!(top["uid"].as_str().is_some_and(|u| !u.is_empty()), "no uid");
    let requires: BTreeSet<(&str, &str)> = top["__requires"]
        .as_array()
        .expect("__requires")
        .iter()
        .filter_map(|r| Some((r["type"].as_str()?, r["id"].as_str()?)))
        .collect();
    assert!(requires.contains(&("grafana", "grafana")), "{requires:?}");
    assert!(
        requires.contains(&("datasource", "prometheus")),
        "{requires:?}"
    );

    assert_eq!(
        d.rows(),
        [
            "Disks",
            "Block devices (probe-loader)",
            "Peers / RPC",
            "Erasure sets",
            "Locks & IAM",
            "S3",
        ]
    );
    let panels = d.panels();
    assert!(panels.len() >= 20, "only {} panels", panels.len());
    let mut ids = BTreeSet::new();
    // Grid cells (column, row) → the panel there.
    let mut taken: std::collections::BTreeMap<(u64, u64), String> = Default::default();
    for p in panels {
        let name = format!("panel {:?} ({})", p.title, p.kind);
        assert!(!p.title.is_empty(), "a panel without a title: {p:?}");
        assert!(p.row.is_some(), "{name} is above the first row");
        assert!(
            p.id.is_some_and(|id| ids.insert(id)),
            "{name}: missing or duplicate id"
        );
        assert_eq!(
            p.datasource.as_ref(),
            Some(&prometheus_ref()),
            "{name}: datasource"
        );
        assert!(
            requires.contains(&("panel", p.kind.as_str())),
            "{name}: panel type missing from __requires"
        );
        let pos = p.grid_pos.as_ref().expect("gridPos");
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
            pos[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: gridPos.{k}"))
        });
        assert!(h > 0 && w > 0 && x + w <= 24, "{name}: gridPos {pos}");
        let cells = (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy)));
        for cell in cells {
            if let Some(other) = taken.insert(cell, p.title.clone()) {
                panic!("{name} overlaps panel {other:?} at {cell:?}");
            }
        }
        assert!(!p.targets.is_empty(), "{name} has no target");
        for t in &p.targets {
            assert!(!t.ref_id.is_empty(), "{name}: a target without refId");
            assert!(!t.expr.trim().is_empty(), "{name}: an empty expr");
            if let Some(ds) = &t.datasource {
                assert_eq!(ds, &prometheus_ref(), "{name}: target datasource");
            }
        }
    }
    for v in d.variables().iter().filter(|v| v.kind == "query") {
        assert_eq!(
            v.datasource.as_ref(),
            Some(&prometheus_ref()),
            "variable {}: datasource",
            v.name
        );
        let q = v.query.as_deref().unwrap_or("");
        assert!(
            label_values_query(q).is_some(),
            "variable {}: `{q}` is not label_values(SERIES, LABEL)",
            v.name
        );
    }
    for (place, expr) in d.promql() {
        if let Err(e) = parse(&expr) {
            panic!("{place}: {e}");
        }
    }
}

/// `expr` with Grafana's variables replaced by what Grafana sends: a range
/// for the interval variables, a regex matching anything in a label value.
fn as_sent(expr: &str) -> String {
    let mut s = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "30s")
        .replace("$__range", "1h");
    while let Some(i) = s.find('$') {
        let rest = &s[i + 1..];
        let len = if let Some(r) = rest.strip_prefix('{') {
            r.find('}').map_or(rest.len(), |e| e + 2)
        } else {
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
        };
        s.replace_range(i..i + 1 + len, ".*");
    }
    s
}

#[test]
fn every_query_is_valid_promql() {
    let d = shipped();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let queries = d.promql();
    assert!(!queries.is_empty());
    for (n, (_, expr)) in queries.iter().enumerate() {
        let expr = serde_json::to_string(&as_sent(expr)).expect("quote");
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {expr}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, &rules).expect("write rules");
    let path = file.to_str().expect("utf-8 path");
    let out = promtool(&["check", "rules", path], None)
        .unwrap_or_else(|e| panic!("{e}\nqueries as sent:\n{rules}"));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The probe loader's exposition: its real renderer on a snapshot with a
/// device that has reads and writes, requests in flight, a stall on, and
/// every probe counter.
fn loader_exposition() -> Exposition {
    use probes_ebpf_common::{dev, Hist, HistKey, Inflight};
    use probes_ebpf_loader::reader::{DeviceInflight, InflightScan};
    use probes_ebpf_loader::stall::DeviceStall;
    use probes_ebpf_loader::Snapshot;

    let d = dev::make(7, 3);
    let mut h = Hist::ZERO;
    h.slots[10] = 3;
    h.slots[20] = 1;
    h.count = 4;
    h.sum_ns = 1_010_000;
    h.errors = 1;
    let mut s = Snapshot::default();
    for op in [0, 1] {
        s.hists.insert(HistKey { dev: d, op }, h);
    }
    s.names.insert(d, "loop3".into());
    s.scan = InflightScan {
        now_ns: 10,
        devices: [(
            d,
            DeviceInflight {
                count: 2,
                oldest: Inflight::default(),
                oldest_age: Duration::from_millis(1500),
            },
        )]
        .into_iter()
        .collect(),
        entries: 2,
        truncated: false,
    };
    s.stalls.insert(
        d,
        DeviceStall {
            since_ns: Some(1),
            total: 1,
        },
    );
    s.threshold = Duration::from_millis(300);
    s.scan_duration = Duration::from_micros(200);
    s.inflight_capacity = 4096;
    let text = probes_ebpf_loader::metrics::render(Arc::new(s));
    let series = exposed_series(&text);
    // The renderer did render a device (not only the families' headers).
    let bucket = series
        .get("diskio_block_request_duration_seconds_bucket")
        .unwrap_or_else(|| panic!("no latency buckets rendered:\n{text}"));
    assert!(
        ["device", "op", "le"].iter().all(|l| bucket.contains(*l)),
        "{bucket:?}"
    );
    series
}

/// The libraries' series, as the node's exporter renders them
/// (metrics-exporter-prometheus with buckets for names ending in
/// `_seconds`: any other histogram would be a summary).
fn library_exposition(
    recorded: &std::collections::BTreeMap<String, emitted::Family>,
) -> Exposition {
    let mut out = Exposition::new();
    for (name, f) in recorded {
        let kind = match f.kind {
            MetricKind::Counter => Kind::Counter,
            MetricKind::Gauge => Kind::Gauge,
            MetricKind::Histogram if name.ends_with("_seconds") => Kind::Histogram,
            MetricKind::Histogram => Kind::Summary,
        };
        expose(&mut out, name, kind, &f.labels);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_dashboard_reads_is_exported() {
    let d = shipped();
    let recorded = emitted::emitted_series().await;
    let library = library_exposition(&recorded);
    let loader = loader_exposition();
    // The node-only names are exempt from (a) and (b) below because no
    // library exports them; were one to, that exemption would be wrong.
    let clash: Vec<&String> = library
        .keys()
        .chain(loader.keys())
        .filter(|n| is_node_only(n))
        .collect();
    assert!(
        clash.is_empty(),
        "node-only names exported by a library: {clash:?}"
    );

    let mut exported = library.clone();
    for (name, labels) in &loader {
        exported
            .entry(name.clone())
            .or_default()
            .extend(labels.iter().cloned());
    }
    let problems = unexported(&d, &exported);
    // Every name the queries select (with histogram samples' base names,
    // which no scrape shows as a series of its own, so they do not count
    // below).
    let read: BTreeSet<String> = d
        .promql()
        .iter()
        .flat_map(|(_, e)| series_names(e))
        .collect();
    let missing: BTreeSet<&String> = read
        .iter()
        .filter(|n| !is_node_only(n) && !exported.contains_key(*n))
        .filter(|n| {
            !SAMPLE_SUFFIXES
                .iter()
                .any(|s| read.contains(&format!("{n}{s}")))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "the dashboard reads what is not exported; missing series: {missing:?}\n{}\nexported: {:?}",
        problems
            .iter()
            .map(|p| format!("  {p}"))
            .collect::<Vec<_>>()
            .join("\n"),
        exported.keys().collect::<Vec<_>>()
    );
    // Not vacuous: the dashboard reads series of every source.
    for (what, source) in [("the libraries", &library), ("the probe loader", &loader)] {
        let used = read.iter().filter(|n| source.contains_key(*n)).count();
        assert!(
            used >= 5,
            "the dashboard reads only {used} series of {what}"
        );
    }
}

#[test]
fn the_node_only_series_it_reads_are_the_documented_ones() {
    let node = node_only_series(&shipped());
    assert!(!node.is_empty(), "the S3 row reads no node series");
    let documented = node_documented();
    let unknown: Vec<&String> = node
        .iter()
        .filter(|n| !documented.contains_key(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "node-only series that are not documented: {unknown:?} (documented: {:?})",
        documented.keys().collect::<Vec<_>>()
    );
}
