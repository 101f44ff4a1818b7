//! `probe-loader status`: what a running loader's pinned maps say, per
//! device: latency percentiles, completions, errors, in-flight count and
//! oldest in-flight age.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use probes_ebpf_common::op_name;
use probes_ebpf_reader::{Liveness, PinnedMaps};
use serde::Serialize;

pub use crate::config::StatusConfig;
use crate::error::{LoaderError, Result};
use crate::snapshot::{quantile, DeviceNames, Snapshot};
use crate::stall::dev_string;
use crate::system;

/// Latency of one operation on one device.
#[derive(Clone, Debug, Serialize)]
pub struct OpStatus {
    /// Operation (`read`, `write`, ...).
    pub op: &'static str,
    /// Completions.
    pub completions: u64,
    /// Completions with an error status.
    pub errors: u64,
    /// Mean latency, seconds.
    pub mean_s: f64,
    /// Median latency, seconds (interpolated in log2 buckets).
    pub p50_s: f64,
    /// 90th percentile, seconds.
    pub p90_s: f64,
    /// 99th percentile, seconds.
    pub p99_s: f64,
    /// 99.9th percentile, seconds.
    pub p999_s: f64,
}

/// One device.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceStatus {
    /// Name (`loop3`).
    pub device: String,
    /// `MAJ:MIN`.
    pub dev: String,
    /// Requests in flight.
    pub in_flight: u64,
    /// Age of the oldest, seconds (0 when none).
    pub oldest_in_flight_s: f64,
    /// Oldest in flight is older than the loader's threshold.
    pub stalled: bool,
    /// Per operation.
    pub ops: Vec<OpStatus>,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Pin directory read.
    pub pin_dir: PathBuf,
    /// The loader's pid.
    pub loader_pid: u32,
    /// The liveness rule says the loader runs: it owns the pin directory
    /// and its heartbeat is fresh.
    pub loader_alive: bool,
    /// Why not, when it is not (`dead`, `stale`, `replaced`), or `live`.
    pub liveness: &'static str,
    /// Seconds since its last scan.
    pub heartbeat_age_s: f64,
    /// Its stall threshold, seconds.
    pub stall_threshold_s: f64,
    /// Its scan interval, seconds.
    pub scan_interval_s: f64,
    /// Program-wide counters.
    pub events: std::collections::BTreeMap<&'static str, u64>,
    /// Per device.
    pub devices: Vec<DeviceStatus>,
}

/// Reads the maps pinned under `pin_dir`. The report is returned whether
/// or not the loader runs ([`Status::loader_alive`]); [`require_live`] turns
/// a dead one into an error.
pub fn read(pin_dir: &Path, cfg: StatusConfig) -> Result<Status> {
    system::require_bpf_caps()?;
    let pins = PinnedMaps::open(pin_dir)?;
    let now = system::monotonic_ns();
    let check = pins.check(now, &cfg.liveness)?;
    let state = check.state;
    let maps = pins.maps();
    let threshold = Duration::from_nanos(state.stall_threshold_ns);
    let scan = maps.scan_inflight(now, cfg.max_scan_entries);
    let hists = maps.read_hists(cfg.max_hist_keys);
    let mut names = DeviceNames::new(cfg.max_device_names);
    let snap = Snapshot {
        names: hists
            .keys()
            .map(|k| k.dev)
            .chain(scan.devices.keys().copied())
            .map(|d| (d, names.name(d)))
            .collect(),
        scan,
        hists,
        counters: maps.read_counters(),
        threshold,
        ..Snapshot::default()
    };
    let devices = snap
        .devices()
        .into_iter()
        .map(|d| DeviceStatus {
            dev: dev_string(d.dev),
            in_flight: d.in_flight,
            oldest_in_flight_s: d.oldest_age.map_or(0.0, |a| a.as_secs_f64()),
            stalled: d.oldest_age.is_some_and(|a| a > threshold),
            ops: d
                .ops
                .iter()
                .map(|(&op, h)| {
                    let q = |x| quantile(h, x).map_or(0.0, |v| v.as_secs_f64());
                    OpStatus {
                        op: op_name(op),
                        completions: h.count,
                        errors: h.errors,
                        mean_s: if h.count == 0 {
                            0.0
                        } else {
                            h.sum_ns as f64 / h.count as f64 / 1e9
                        },
                        p50_s: q(0.5),
                        p90_s: q(0.9),
                        p99_s: q(0.99),
                        p999_s: q(0.999),
                    }
                })
                .collect(),
            device: d.name,
        })
        .collect();
    Ok(Status {
        pin_dir: pin_dir.to_path_buf(),
        loader_pid: state.pid,
        loader_alive: check.liveness.is_live(),
        liveness: liveness_name(&check.liveness),
        heartbeat_age_s: Duration::from_nanos(now.saturating_sub(state.heartbeat_ns)).as_secs_f64(),
        stall_threshold_s: threshold.as_secs_f64(),
        scan_interval_s: Duration::from_nanos(state.scan_interval_ns).as_secs_f64(),
        events: snap.counters.iter().map(|(k, v)| (*k, *v)).collect(),
        devices,
    })
}

fn liveness_name(l: &Liveness) -> &'static str {
    match l {
        Liveness::Live { .. } => "live",
        Liveness::Dead => "dead",
        Liveness::Stale { .. } => "stale",
        Liveness::Replaced => "replaced",
    }
}

/// `Err(NotLive)` unless the report is from a running loader.
pub fn require_live(st: &Status) -> Result<()> {
    if st.loader_alive {
        return Ok(());
    }
    let why = match st.liveness {
        "dead" => {
            "no process owns the pin directory (the loader exited or was killed and left its pins)"
                .to_owned()
        }
        "stale" => format!(
            "its last heartbeat is {:.1} s old (paused or hung)",
            st.heartbeat_age_s
        ),
        other => format!("the pins changed while being read ({other})"),
    };
    Err(LoaderError::NotLive {
        dir: st.pin_dir.clone(),
        pid: st.loader_pid,
        why,
    })
}

fn ms(s: f64) -> String {
    if s < 0.001 {
        format!("{:.1}µs", s * 1e6)
    } else {
        format!("{:.2}ms", s * 1e3)
    }
}

/// Human-readable table.
pub fn render_text(st: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "loader pid {} ({}), last scan {:.1}s ago, stall threshold {}, scan interval {}; maps in {}",
        st.loader_pid,
        if st.loader_alive { "running" } else { "NOT RUNNING: figures are stale" },
        st.heartbeat_age_s,
        ms(st.stall_threshold_s),
        ms(st.scan_interval_s),
        st.pin_dir.display()
    );
    let _ = writeln!(
        out,
        "{:<12} {:<8} {:>9} {:>11} {:<8} {:>10} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "DEVICE",
        "DEV",
        "IN-FLIGHT",
        "OLDEST",
        "OP",
        "COMPLETED",
        "ERRORS",
        "P50",
        "P90",
        "P99",
        "P99.9"
    );
    for d in &st.devices {
        let oldest = if d.in_flight == 0 {
            "-".to_owned()
        } else if d.stalled {
            format!("{} STALL", ms(d.oldest_in_flight_s))
        } else {
            ms(d.oldest_in_flight_s)
        };
        if d.ops.is_empty() {
            let _ = writeln!(
                out,
                "{:<12} {:<8} {:>9} {:>11}",
                d.device, d.dev, d.in_flight, oldest
            );
        }
        for (i, o) in d.ops.iter().enumerate() {
            let (name, dev, inf, old) = if i == 0 {
                (
                    d.device.as_str(),
                    d.dev.as_str(),
                    d.in_flight.to_string(),
                    oldest.clone(),
                )
            } else {
                ("", "", String::new(), String::new())
            };
            let _ = writeln!(
                out,
                "{:<12} {:<8} {:>9} {:>11} {:<8} {:>10} {:>6} {:>10} {:>10} {:>10} {:>10}",
                name,
                dev,
                inf,
                old,
                o.op,
                o.completions,
                o.errors,
                ms(o.p50_s),
                ms(o.p90_s),
                ms(o.p99_s),
                ms(o.p999_s)
            );
        }
    }
    if st.devices.is_empty() {
        let _ = writeln!(out, "(no block requests seen yet)");
    }
    out
}
