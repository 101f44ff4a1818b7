//! Results in a form both our engines and fio produce ([`Summary`]), and
//! the outputs: fio-like text, fio-shaped JSON, side-by-side comparisons.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::engines::{DirStats, RunResult};
use crate::job::JobSpec;

/// Latency figures in nanoseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LatSummary {
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub stddev: f64,
    /// 50th percentile.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99.99th percentile.
    pub p9999: f64,
}

/// One direction of a run.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DirSummary {
    /// Completed ops.
    pub ios: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Ops per second.
    pub iops: f64,
    /// Bytes per second.
    pub bw_bytes: f64,
    /// Latency of each op.
    pub lat_ns: LatSummary,
}

/// A run of one engine (or fio), comparable across engines.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    /// `uring`, `psync`, ..., or `fio`.
    pub engine: String,
    /// Wall time of the run in milliseconds.
    pub runtime_ms: u64,
    /// Reads.
    pub read: DirSummary,
    /// Writes.
    pub write: DirSummary,
    /// Failed ops.
    pub errors: u64,
    /// CPU time (user + system, every thread of the process: callers, ring
    /// threads, io-wq workers) per completed op, in microseconds; fio's
    /// `usr_cpu + sys_cpu` of the job's runtime, per op, for fio.
    pub cpu_us_per_io: f64,
}

impl Summary {
    /// Summarise one of our runs.
    pub fn from_run(r: &RunResult) -> Summary {
        Summary {
            engine: r.engine.as_str().to_string(),
            runtime_ms: r.elapsed.as_millis() as u64,
            read: dir_summary(&r.read, r.elapsed),
            write: dir_summary(&r.write, r.elapsed),
            errors: r.errors,
            cpu_us_per_io: per_io(r.cpu, r.read.ios + r.write.ios),
        }
    }

    /// Total ops per second, reads and writes together.
    pub fn iops(&self) -> f64 {
        self.read.iops + self.write.iops
    }

    /// The direction that carries the job (reads unless it only writes).
    pub fn main_dir(&self) -> &DirSummary {
        if self.read.ios >= self.write.ios {
            &self.read
        } else {
            &self.write
        }
    }
}

/// CPU microseconds per op.
pub fn per_io(cpu: Duration, ios: u64) -> f64 {
    if ios == 0 {
        0.0
    } else {
        cpu.as_secs_f64() * 1e6 / ios as f64
    }
}

fn dir_summary(d: &DirStats, elapsed: Duration) -> DirSummary {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ns = |x: Duration| x.as_nanos() as f64;
    DirSummary {
        ios: d.ios,
        bytes: d.bytes,
        iops: d.ios as f64 / secs,
        bw_bytes: d.bytes as f64 / secs,
        lat_ns: if d.ios == 0 {
            LatSummary::default()
        } else {
            LatSummary {
                min: ns(d.lat.min()),
                max: ns(d.lat.max()),
                mean: d.lat.mean_ns(),
                stddev: d.lat.stdev_ns(),
                p50: ns(d.lat.quantile(0.50)),
                p90: ns(d.lat.quantile(0.90)),
                p99: ns(d.lat.quantile(0.99)),
                p999: ns(d.lat.quantile(0.999)),
                p9999: ns(d.lat.quantile(0.9999)),
            }
        },
    }
}

fn human_count(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn human_bw(bytes_per_sec: f64) -> String {
    let mib = bytes_per_sec / (1u64 << 20) as f64;
    if mib >= 1024.0 {
        format!("{:.2}GiB/s", mib / 1024.0)
    } else {
        format!("{mib:.1}MiB/s")
    }
}

/// fio-like text for one run.
pub fn text(spec: &JobSpec, s: &Summary) -> String {
    let mut out = format!(
        "{}: rw={}, bs={}, iodepth={}, numjobs={}, direct={}, file={}\n",
        s.engine,
        spec.rw.as_str(),
        spec.bs,
        spec.iodepth,
        spec.numjobs,
        u8::from(spec.direct),
        spec.filename.display()
    );
    for (name, d) in [("read", &s.read), ("write", &s.write)] {
        if d.ios == 0 {
            continue;
        }
        let l = &d.lat_ns;
        out += &format!(
            "  {name}: IOPS={}, BW={} ({} ios in {}ms)\n",
            human_count(d.iops),
            human_bw(d.bw_bytes),
            d.ios,
            s.runtime_ms
        );
        out += &format!(
            "    clat (usec): min={:.1}, max={:.1}, avg={:.1}, stdev={:.1}\n",
            l.min / 1e3,
            l.max / 1e3,
            l.mean / 1e3,
            l.stddev / 1e3
        );
        out += &format!(
            "    clat percentiles (usec): | 50.00th=[{:.1}], 90.00th=[{:.1}], 99.00th=[{:.1}], 99.90th=[{:.1}], 99.99th=[{:.1}]\n",
            l.p50 / 1e3,
            l.p90 / 1e3,
            l.p99 / 1e3,
            l.p999 / 1e3,
            l.p9999 / 1e3
        );
    }
    out += &format!("  cpu: {:.2} usec per io (user+sys)\n", s.cpu_us_per_io);
    if s.errors > 0 {
        out += &format!("  errors: {}\n", s.errors);
    }
    out
}

fn fio_dir(d: &DirSummary, runtime_ms: u64) -> Value {
    let l = &d.lat_ns;
    let lat = json!({
        "min": l.min as u64,
        "max": l.max as u64,
        "mean": l.mean,
        "stddev": l.stddev,
        "N": d.ios,
        "percentile": {
            "50.000000": l.p50 as u64,
            "90.000000": l.p90 as u64,
            "99.000000": l.p99 as u64,
            "99.900000": l.p999 as u64,
            "99.990000": l.p9999 as u64,
        },
    });
    json!({
        "io_bytes": d.bytes,
        "io_kbytes": d.bytes / 1024,
        "bw_bytes": d.bw_bytes as u64,
        "bw": (d.bw_bytes / 1024.0) as u64,
        "iops": d.iops,
        "runtime": runtime_ms,
        "total_ios": d.ios,
        // Our latency runs from the submit call to the completion, through
        // the hop to the ring thread: fio would call that `lat`. It is also
        // emitted as `clat_ns` so tools reading fio's usual field work.
        "clat_ns": lat.clone(),
        "lat_ns": lat,
    })
}

/// fio-shaped JSON for one or more runs (`jobs[].read.iops`, `bw_bytes`,
/// `clat_ns.percentile`, ...).
pub fn fio_json(spec: &JobSpec, runs: &[Summary]) -> Value {
    let jobs: Vec<Value> = runs
        .iter()
        .map(|s| {
            json!({
                "jobname": s.engine,
                "groupid": 0,
                "error": if s.errors > 0 { 1 } else { 0 },
                "job options": {
                    "ioengine": s.engine,
                    "rw": spec.rw.as_str(),
                    "bs": spec.bs.to_string(),
                    "iodepth": spec.iodepth.to_string(),
                    "numjobs": spec.numjobs.to_string(),
                    "direct": u8::from(spec.direct).to_string(),
                    "filename": spec.filename.display().to_string(),
                    "rwmixread": spec.rwmixread.to_string(),
                },
                "read": fio_dir(&s.read, s.runtime_ms),
                "write": fio_dir(&s.write, s.runtime_ms),
                "job_runtime": s.runtime_ms,
                "errors": s.errors,
                "cpu_us_per_io": s.cpu_us_per_io,
            })
        })
        .collect();
    json!({
        "fio version": format!("disk-io-bench-{}", env!("CARGO_PKG_VERSION")),
        "jobs": jobs,
    })
}

/// Engine `i`'s run from the round where its IOPS ratio to that round's
/// base (the last engine of the round) is the median over all rounds.
pub fn median_round(rounds: &[Vec<Summary>], i: usize) -> Summary {
    let mut ranked: Vec<(f64, &Summary)> = rounds
        .iter()
        .filter_map(|row| {
            let s = row.get(i)?;
            let base = row.last()?.iops();
            Some((if base > 0.0 { s.iops() / base } else { 0.0 }, s))
        })
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    ranked
        .get(ranked.len() / 2)
        .map(|(_, s)| (*s).clone())
        .unwrap_or_else(|| Summary {
            engine: String::new(),
            runtime_ms: 0,
            read: DirSummary::default(),
            write: DirSummary::default(),
            errors: 0,
            cpu_us_per_io: 0.0,
        })
}

/// Per engine, the median over rounds of its IOPS ratio to the round's
/// base (the last engine of each round).
pub fn median_ratios(rounds: &[Vec<Summary>]) -> Vec<(String, f64)> {
    let engines = rounds.first().map_or(0, Vec::len);
    (0..engines)
        .map(|i| {
            let mut r: Vec<f64> = rounds
                .iter()
                .filter_map(|row| {
                    let base = row.last()?.iops();
                    (base > 0.0).then(|| row.get(i).map(|s| s.iops() / base))?
                })
                .collect();
            r.sort_by(f64::total_cmp);
            let name = rounds[0][i].engine.clone();
            (name, r.get(r.len() / 2).copied().unwrap_or(0.0))
        })
        .collect()
}

/// A side-by-side table of runs, each figure with its ratio to `base`
/// (the last run when comparing with fio).
pub fn compare(runs: &[Summary], base: &Summary) -> String {
    let mut out = format!("{:<18}", "");
    for r in runs {
        out += &format!("{:>18}", r.engine);
    }
    out += "\n";
    type Get = fn(&Summary) -> f64;
    let rows: [(&str, Get, bool); 7] = [
        ("IOPS", |s| s.iops(), false),
        (
            "BW MiB/s",
            |s| (s.read.bw_bytes + s.write.bw_bytes) / (1u64 << 20) as f64,
            false,
        ),
        ("lat avg us", |s| s.main_dir().lat_ns.mean / 1e3, true),
        ("lat p50 us", |s| s.main_dir().lat_ns.p50 / 1e3, true),
        ("lat p99 us", |s| s.main_dir().lat_ns.p99 / 1e3, true),
        ("lat p99.9 us", |s| s.main_dir().lat_ns.p999 / 1e3, true),
        ("cpu us/io", |s| s.cpu_us_per_io, true),
    ];
    for (name, get, _lower_better) in rows {
        out += &format!("{name:<18}");
        let b = get(base);
        for r in runs {
            let v = get(r);
            let ratio = if b > 0.0 { v / b } else { 0.0 };
            out += &format!("{:>10.1} ({:>4.2})", v, ratio);
        }
        out += "\n";
    }
    out += &format!("(ratios are to {})\n", base.engine);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::Engine;
    use crate::Latencies;

    #[test]
    fn json_has_fios_field_names_and_counts_add_up() {
        let mut read = DirStats {
            lat: Latencies::new(),
            ios: 0,
            bytes: 0,
        };
        for i in 1..=1000u64 {
            read.lat.record(Duration::from_micros(i));
            read.ios += 1;
            read.bytes += 4096;
        }
        let run = RunResult {
            engine: Engine::Psync,
            read,
            write: DirStats::default(),
            elapsed: Duration::from_secs(2),
            errors: 0,
            first_error: None,
            cpu: Duration::from_millis(50),
        };
        let s = Summary::from_run(&run);
        assert_eq!(s.read.iops, 500.0);
        let spec = JobSpec {
            rw: crate::job::Rw::RandRead,
            bs: 4096,
            iodepth: 1,
            numjobs: 1,
            size: None,
            runtime: None,
            direct: false,
            filename: "/tmp/f".into(),
            rwmixread: 50,
            op_deadline: Duration::from_secs(1),
        };
        let v = fio_json(&spec, std::slice::from_ref(&s));
        let r = &v["jobs"][0]["read"];
        assert_eq!(r["total_ios"], 1000);
        assert_eq!(r["io_bytes"], 4096 * 1000);
        assert_eq!(r["iops"], 500.0);
        let p50 = r["clat_ns"]["percentile"]["50.000000"]
            .as_u64()
            .expect("p50");
        assert!((499_000..=501_000).contains(&p50), "{p50}");
        assert!(text(&spec, &s).contains("IOPS=500"));
        assert_eq!(s.cpu_us_per_io, 50.0, "50 ms of CPU over 1000 ops");
    }
}
