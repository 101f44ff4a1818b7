//! Run fio (the reference every storage engineer trusts) on the same job and
//! file, and read its JSON into a [`Summary`].

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::job::{BenchError, JobSpec};
use crate::report::{DirSummary, LatSummary, Summary};

/// How long fio may take beyond the job's runtime (start-up, layout) before
/// it is killed; size-bounded jobs get [`SIZE_BOUND_LIMIT`] in all.
const GRACE: Duration = Duration::from_secs(60);
const SIZE_BOUND_LIMIT: Duration = Duration::from_secs(600);

/// fio's arguments for the job (io_uring engine, group reporting, JSON,
/// total-latency percentiles so they compare with ours).
pub fn args(spec: &JobSpec, file_size: u64) -> Vec<String> {
    let mut a = vec![
        "--name=diskbench".to_string(),
        format!("--filename={}", spec.filename.display()),
        "--ioengine=io_uring".into(),
        format!("--rw={}", spec.rw.as_str()),
        format!("--bs={}", spec.bs),
        format!("--iodepth={}", spec.iodepth),
        format!("--numjobs={}", spec.numjobs),
        format!("--direct={}", u8::from(spec.direct)),
        format!("--rwmixread={}", spec.rwmixread),
        format!("--size={file_size}"),
        "--group_reporting".into(),
        "--lat_percentiles=1".into(),
        "--output-format=json".into(),
    ];
    match spec.runtime {
        Some(r) => {
            a.push(format!("--runtime={}ms", r.as_millis().max(1)));
            a.push("--time_based".into());
        }
        None => a.push(format!("--io_size={}", spec.size.unwrap_or(file_size))),
    }
    a
}

/// Run fio and summarise it.
pub fn run(spec: &JobSpec, file_size: u64) -> Result<Summary, BenchError> {
    let limit = spec.runtime.map(|r| r + GRACE).unwrap_or(SIZE_BOUND_LIMIT);
    let mut child = Command::new("fio")
        .args(args(spec, file_size))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::Fio(format!("cannot start fio (run `cargo xtask setup`): {e}")))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BenchError::Fio(format!(
                    "still running after {limit:?}; killed"
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(BenchError::Fio(format!("wait: {e}"))),
        }
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    if !status.success() {
        return Err(BenchError::Fio(format!("{status}: {}", stderr.trim())));
    }
    parse(&stdout)
}

/// Parse fio's JSON output (anything before the first `{` is fio's chatter).
pub fn parse(stdout: &str) -> Result<Summary, BenchError> {
    let start = stdout
        .find('{')
        .ok_or_else(|| BenchError::Fio("no JSON in fio's output".into()))?;
    let v: Value = serde_json::from_str(&stdout[start..])
        .map_err(|e| BenchError::Fio(format!("unreadable JSON: {e}")))?;
    let job = &v["jobs"][0];
    if job.is_null() {
        return Err(BenchError::Fio("no jobs in fio's JSON".into()));
    }
    let runtime_ms = job["read"]["runtime"]
        .as_u64()
        .filter(|&r| r > 0)
        .or_else(|| job["write"]["runtime"].as_u64())
        .unwrap_or(0);
    let (read, write) = (dir(&job["read"]), dir(&job["write"]));
    // usr_cpu/sys_cpu are percentages of the job's runtime.
    let cpu_pct = job["usr_cpu"].as_f64().unwrap_or(0.0) + job["sys_cpu"].as_f64().unwrap_or(0.0);
    let job_ms = job["job_runtime"].as_u64().unwrap_or(runtime_ms);
    let cpu = Duration::from_secs_f64(cpu_pct / 100.0 * job_ms as f64 / 1e3);
    Ok(Summary {
        engine: "fio".into(),
        runtime_ms,
        cpu_us_per_io: crate::report::per_io(cpu, read.ios + write.ios),
        read,
        write,
        errors: job["error"].as_u64().unwrap_or(0),
    })
}

fn dir(d: &Value) -> DirSummary {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    // Total latency (slat + clat) is what our engines measure.
    let lat = if d["lat_ns"]["percentile"].is_object() {
        &d["lat_ns"]
    } else {
        &d["clat_ns"]
    };
    let p = |k: &str| f(&lat["percentile"][k]);
    DirSummary {
        ios: d["total_ios"].as_u64().unwrap_or(0),
        bytes: d["io_bytes"].as_u64().unwrap_or(0),
        iops: f(&d["iops"]),
        bw_bytes: f(&d["bw_bytes"]),
        lat_ns: LatSummary {
            min: f(&lat["min"]),
            max: f(&lat["max"]),
            mean: f(&lat["mean"]),
            stddev: f(&lat["stddev"]),
            p50: p("50.000000"),
            p90: p("90.000000"),
            p99: p("99.000000"),
            p999: p("99.900000"),
            p9999: p("99.990000"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_json_after_chatter() {
        let out = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{"fio version":"fio-3.33","jobs":[{"jobname":"diskbench","error":0,"job_runtime":2000,"usr_cpu":1.5,"sys_cpu":3.5,
 "read":{"io_bytes":409600,"bw_bytes":204800,"iops":50.0,"runtime":2000,"total_ios":100,
   "lat_ns":{"min":1000,"max":9000,"mean":3000.5,"stddev":10.0,
     "percentile":{"50.000000":2000,"90.000000":5000,"99.000000":8000,"99.900000":9000,"99.990000":9000}}},
 "write":{"io_bytes":0,"bw_bytes":0,"iops":0.0,"runtime":0,"total_ios":0,"clat_ns":{"min":0,"max":0,"mean":0.0,"stddev":0.0}}}]}"#;
        let s = parse(out).expect("parse");
        assert_eq!(s.engine, "fio");
        assert_eq!(s.read.ios, 100);
        assert_eq!(s.read.lat_ns.p99, 8000.0);
        assert_eq!(s.runtime_ms, 2000);
        assert_eq!(s.write.ios, 0);
        // 5 % of 2 s over 100 ops.
        assert!(
            (s.cpu_us_per_io - 1000.0).abs() < 1e-6,
            "{}",
            s.cpu_us_per_io
        );
        assert!(parse("no json here").is_err());
    }
}
