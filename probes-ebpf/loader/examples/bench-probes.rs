//! `cargo xtask bench-probes`: what the block probes cost. fio 4 KiB random
//! reads, O_DIRECT, io_uring, queue depth 32, on a file on the root disk,
//! alternately without and with the probes attached (ABBA order over the
//! rounds, so drift of the disk or the host cancels), in one run. Prints
//! IOPS per run and the ratio with/without (target >= 0.97). The headline
//! is the median of the per-round ratios: on a shared VM one slow run of
//! the host's disk moves a mean by more than the probes cost.
//!
//! Options: `--filename F` (default `target/bench-probes.dat`), `--size S`
//! (fio size, default `1G`), `--runtime SECS` (per run, default 10),
//! `--rounds N` (default 3), `--json`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use probes_ebpf_loader::{Loader, ProbeConfig, RunConfig};

struct Opts {
    filename: String,
    size: String,
    runtime: u64,
    rounds: usize,
    json: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        filename: "target/bench-probes.dat".into(),
        size: "1G".into(),
        runtime: 10,
        rounds: 3,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--filename" => o.filename = val()?,
            "--size" => o.size = val()?,
            "--runtime" => o.runtime = val()?.parse().map_err(|e| format!("--runtime: {e}"))?,
            "--rounds" => o.rounds = val()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--json" => o.json = true,
            "-h" | "--help" => {
                return Err("usage: bench-probes [--filename F] [--size S] [--runtime SECS] [--rounds N] [--json]".into())
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.rounds == 0 || o.runtime == 0 {
        return Err("--rounds and --runtime must be positive".into());
    }
    Ok(o)
}

/// One fio run; returns read IOPS.
fn fio(o: &Opts, runtime: u64) -> Result<f64, String> {
    let mut child = Command::new("fio")
        .args([
            "--name=probes-randread",
            &format!("--filename={}", o.filename),
            &format!("--size={}", o.size),
            "--rw=randread",
            "--bs=4k",
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=32",
            &format!("--runtime={runtime}"),
            "--time_based",
            "--ramp_time=1",
            "--group_reporting",
            "--output-format=json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start fio ({e}); `cargo xtask setup` installs it"))?;
    // fio lays the file out on first use; allow for that plus its runtime.
    let bound = Duration::from_secs(runtime + 120);
    let t0 = Instant::now();
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if t0.elapsed() > bound {
            let _ = child.kill();
            return Err(format!("fio did not finish within {bound:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "fio failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // fio may print warnings before the JSON document.
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text
        .find('{')
        .map(|i| &text[i..])
        .ok_or("fio printed no JSON")?;
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("fio JSON: {e}"))?;
    v["jobs"][0]["read"]["iops"]
        .as_f64()
        .ok_or_else(|| "no jobs[0].read.iops in fio's JSON".to_owned())
}

fn with_probes(o: &Opts) -> Result<(f64, u64), String> {
    let cfg = RunConfig {
        probes: ProbeConfig {
            pin_dir: format!("/sys/fs/bpf/disk-io-bench-{}", std::process::id()).into(),
            ..ProbeConfig::default()
        },
        // The production defaults: scans every 100 ms.
        ..RunConfig::default()
    };
    let loader = Loader::start(cfg).map_err(|e| format!("attaching the probes: {e}"))?;
    let iops = fio(o, o.runtime);
    let completed = loader.snapshot().hists.values().map(|h| h.count).sum();
    loader.stop();
    Ok((iops?, completed))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> std::process::ExitCode {
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-probes: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<(), String> {
    let o = parse()?;
    eprintln!(
        "bench-probes: fio randread 4k direct io_uring QD32 on {} ({}), {} rounds x 2 runs of {} s",
        o.filename, o.size, o.rounds, o.runtime
    );
    // Lay the file out and warm up (not counted).
    fio(&o, 2)?;
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut seen = 0;
    for round in 0..o.rounds {
        // ABBA: alternate which goes first.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for probes in order {
            if probes {
                let (iops, completed) = with_probes(&o)?;
                seen = seen.max(completed);
                eprintln!("  round {}: with probes    {iops:>10.0} IOPS", round + 1);
                with.push(iops);
            } else {
                let iops = fio(&o, o.runtime)?;
                eprintln!("  round {}: without probes {iops:>10.0} IOPS", round + 1);
                without.push(iops);
            }
        }
    }
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let ratio = sum(&with) / sum(&without);
    let ratios: Vec<f64> = with.iter().zip(&without).map(|(w, wo)| w / wo).collect();
    let median_ratio = median(ratios.clone());
    if o.json {
        println!(
            "{}",
            serde_json::json!({
                "iops_without": without,
                "iops_with": with,
                "ratio": ratio,
                "median_round_ratio": median_ratio,
                "probe_completions_last_run": seen,
            })
        );
    } else {
        let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        println!(
            "probes on/off IOPS ratio: {median_ratio:.3} (median of {} rounds; target >= 0.97); \
             per round [{}]; ratio of sums {ratio:.3}; without {:.0} IOPS, with {:.0} IOPS (means); \
             probes counted {seen} completions in their last run",
            ratios.len(),
            rounds.join(", "),
            sum(&without) / without.len() as f64,
            sum(&with) / with.len() as f64
        );
    }
    Ok(())
}
