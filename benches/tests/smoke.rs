//! Smoke runs of the bench engine as a user runs it: every engine, fio side
//! by side, the suite, and bad options. They assert that the output parses
//! and that the counts add up, never speed.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn diskbench(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_diskbench"))
        .args(args)
        .output()
        .expect("run diskbench");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn ios(job: &Value) -> u64 {
    job["read"]["total_ios"].as_u64().unwrap_or(0) + job["write"]["total_ios"].as_u64().unwrap_or(0)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn every_engine_does_exactly_the_requested_io() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f.dat");
    for engine in ["uring", "uring-nodeadline", "psync", "tokio-fs"] {
        for (direct, numjobs) in [("0", "1"), ("1", "2")] {
            let (code, out, err) = diskbench(&[
                "--engine",
                engine,
                "--rw",
                "randrw",
                "--rwmixread",
                "70",
                "--bs",
                "4k",
                "--iodepth",
                "4",
                "--numjobs",
                numjobs,
                "--size",
                "4m",
                "--direct",
                direct,
                "--filename",
                path_str(&file),
                "--output-format",
                "json",
            ]);
            assert_eq!(code, 0, "{engine} direct={direct}: {err}");
            let v = json_of(&out);
            let job = &v["jobs"][0];
            assert_eq!(job["jobname"], engine);
            let jobs: u64 = numjobs.parse().expect("numjobs");
            // A size-bounded run: each job moves --size bytes, 4 MiB / 4 KiB = 1024 ops.
            assert_eq!(
                ios(job),
                1024 * jobs,
                "{engine} direct={direct} numjobs={numjobs}"
            );
            let bytes = job["read"]["io_bytes"].as_u64().unwrap_or(0)
                + job["write"]["io_bytes"].as_u64().unwrap_or(0);
            assert_eq!(bytes, 1024 * 4096 * jobs);
            let reads = job["read"]["total_ios"].as_u64().unwrap_or(0);
            assert!(
                reads > 0 && reads < ios(job),
                "randrw does both: {reads} reads"
            );
            let p50 = job["read"]["clat_ns"]["percentile"]["50.000000"]
                .as_u64()
                .unwrap_or(0);
            let max = job["read"]["clat_ns"]["max"].as_u64().unwrap_or(0);
            assert!(p50 > 0 && p50 <= max, "p50 {p50} max {max}");
            assert!(job["read"]["iops"].as_f64().unwrap_or(0.0) > 0.0);
        }
    }
}

#[test]
fn vs_fio_runs_the_same_job_and_compares() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f.dat");
    let args = [
        "--engine",
        "uring",
        "--rw",
        "randread",
        "--bs",
        "4k",
        "--iodepth",
        "8",
        "--size",
        "8m",
        "--runtime",
        "500ms",
        "--direct",
        "1",
        "--filename",
        path_str(&file),
        "--vs-fio",
    ];
    let mut json_args = args.to_vec();
    json_args.extend(["--output-format", "json"]);
    let (code, out, err) = diskbench(&json_args);
    assert_eq!(code, 0, "{err}");
    let v = json_of(&out);
    let jobs = v["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 2, "ours and fio's");
    assert_eq!(jobs[0]["jobname"], "uring");
    assert_eq!(jobs[1]["jobname"], "fio");
    for j in jobs {
        assert!(j["read"]["total_ios"].as_u64().unwrap_or(0) > 0, "{j}");
        assert_eq!(j["write"]["total_ios"].as_u64().unwrap_or(0), 0);
    }
    // The text form prints the side-by-side table with ratios to fio.
    let (code, out, err) = diskbench(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(ratios are to fio)"), "{out}");
    // The IOPS row: "IOPS  <uring> (<ratio>)  <fio> (1.00)". The printed
    // ratio must be uring's IOPS over fio's, both measured (non-zero).
    let row = out
        .lines()
        .find(|l| l.starts_with("IOPS"))
        .unwrap_or_else(|| panic!("no IOPS row: {out}"));
    let nums: Vec<f64> = row
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.parse().ok())
        .collect();
    let [ours, ratio, fio, fio_ratio] = nums[..] else {
        panic!("IOPS row is not two (value, ratio) pairs: {row:?}");
    };
    assert!(ours > 0.0 && fio > 0.0, "{row}");
    assert!((fio_ratio - 1.0).abs() < 1e-9, "fio is the base: {row}");
    assert!(
        (ratio - ours / fio).abs() <= 0.006 + 0.06 / fio,
        "printed ratio {ratio} is not {ours} / {fio}: {row}"
    );
}

#[test]
fn suite_writes_json_and_chart_for_every_cell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("suite.dat");
    let output = dir.path().join("out/suite.json");
    let (code, _out, err) = diskbench(&[
        "--suite",
        "--size",
        "8m",
        "--runtime",
        "200ms",
        "--rounds",
        "2",
        "--direct",
        "1",
        "--filename",
        path_str(&file),
        "--output",
        path_str(&output),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&output).expect("suite json"))
        .expect("parse suite json");
    let cells = v["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 5);
    let engines = [
        "uring",
        "uring-nodeadline",
        "uring-thread",
        "psync",
        "tokio-fs",
        "fio",
    ];
    for c in cells {
        let rounds = c["rounds"].as_array().expect("rounds");
        assert_eq!(rounds.len(), 2, "--rounds 2");
        for results in rounds
            .iter()
            .map(|r| r.as_array().expect("round"))
            .chain(std::iter::once(
                c["median_round"].as_array().expect("median"),
            ))
        {
            let names: Vec<&str> = results
                .iter()
                .filter_map(|r| r["engine"].as_str())
                .collect();
            assert_eq!(names, engines);
            for r in results {
                let ios = r["read"]["ios"].as_u64().unwrap_or(0)
                    + r["write"]["ios"].as_u64().unwrap_or(0);
                assert!(ios > 0, "{}: no I/O in {}", c["case"], r["engine"]);
                assert_eq!(r["errors"], 0);
                let cpu = r["cpu_us_per_io"].as_f64().expect("cpu_us_per_io");
                assert!(cpu > 0.0, "{}: {} used no CPU?", c["case"], r["engine"]);
            }
        }
        let ratios = c["median_ratio_to_last"].as_array().expect("ratios");
        assert_eq!(ratios.len(), engines.len());
        assert_eq!(ratios[engines.len() - 1]["ratio"], 1.0, "fio to itself");
    }
    let svg = std::fs::read_to_string(output.with_extension("svg")).expect("chart");
    assert!(
        svg.starts_with("<svg")
            && svg.contains("IOPS")
            && svg.contains("p99")
            && svg.contains("CPU")
    );
}

#[test]
fn bad_options_get_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f.dat");
    let missing = dir.path().join("missing.dat");
    let f = path_str(&file);
    let cases: [(&[&str], &str); 5] = [
        (&["--bs", "0", "--size", "1m", "--filename", f], "--bs"),
        (
            &["--iodepth", "0", "--size", "1m", "--filename", f],
            "--iodepth",
        ),
        (&["--filename", path_str(&missing)], "--size"),
        (
            &["--engine", "spdk", "--size", "1m", "--filename", f],
            "unknown engine",
        ),
        (
            &["--rw", "sideways", "--size", "1m", "--filename", f],
            "--rw",
        ),
    ];
    for (args, needle) in cases {
        let (code, out, err) = diskbench(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains(needle),
            "{args:?}: error should mention {needle}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!missing.exists(), "a refused job creates nothing");
}
