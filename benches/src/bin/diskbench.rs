//! `diskbench` (run it as `cargo xtask bench ...`): fio's job options on
//! disk-io's io_uring driver and the engines storage nodes use today, with
//! fio itself side by side.
//!
//! ```text
//! cargo xtask bench --rw randread --bs 4k --iodepth 32 --direct 1 \
//!     --size 1g --runtime 10s --filename /var/tmp/bench.dat --engine uring --vs-fio
//! cargo xtask bench --engine all --rw randread --iodepth 32 ...
//! cargo xtask bench --suite --size 1g --runtime 5s
//! ```

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use disk_io_bench::engines::{self, Engine, Progress};
use disk_io_bench::job::{parse_duration, parse_size, BenchError, JobSpec, Rw};
use disk_io_bench::report::{self, Summary};
use disk_io_bench::{fio, suite};

#[derive(Parser, Debug)]
#[command(
    name = "diskbench",
    about = "fio-style benchmarks of disk-io's io_uring driver, side by side with fio"
)]
struct Cli {
    /// read | write | randread | randwrite | randrw
    #[arg(long, default_value = "randread")]
    rw: String,
    /// Block size (fio units: 4k, 1m, ...).
    #[arg(long, default_value = "4k")]
    bs: String,
    /// Operations in flight per job.
    #[arg(long, default_value_t = 1)]
    iodepth: usize,
    /// Parallel jobs over the same file.
    #[arg(long, default_value_t = 1)]
    numjobs: usize,
    /// Bytes per job, and the file size to create if the file is missing.
    #[arg(long)]
    size: Option<String>,
    /// Run this long (time-based); without it a job ends after --size bytes.
    #[arg(long)]
    runtime: Option<String>,
    /// 1 for O_DIRECT.
    #[arg(long, default_value_t = 0)]
    direct: u8,
    /// Target file or block device.
    #[arg(long, default_value = "target/diskbench/bench.dat")]
    filename: PathBuf,
    /// Percentage of reads for randrw.
    #[arg(long, default_value_t = 50)]
    rwmixread: u8,
    /// uring | uring-nodeadline | uring-thread | psync | tokio-fs | all
    #[arg(long, default_value = "uring")]
    engine: String,
    /// Deadline of each operation for the `uring` engine.
    #[arg(long, default_value = "5s")]
    op_deadline: String,
    /// Repeat the engines (and fio) this many times, interleaved, and report
    /// each engine's median round: ratios on a drifting device.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Also run fio with the same job on the same file and compare.
    #[arg(long)]
    vs_fio: bool,
    /// normal | json (fio's field names)
    #[arg(long, default_value = "normal")]
    output_format: String,
    /// Run the matrix (4k randread QD1/QD32, 4k randwrite QD32, 1M read/write)
    /// over all engines and fio; writes JSON and an SVG chart.
    #[arg(long)]
    suite: bool,
    /// Where --suite writes its JSON (the chart goes beside it as .svg).
    #[arg(long, default_value = "target/diskbench/suite.json")]
    output: PathBuf,
}

fn spec_of(cli: &Cli) -> Result<JobSpec, BenchError> {
    let direct = match cli.direct {
        0 => false,
        1 => true,
        _ => {
            return Err(BenchError::InvalidOption {
                option: "direct",
                reason: "must be 0 or 1".into(),
            })
        }
    };
    let bs = parse_size("bs", &cli.bs)?;
    let spec = JobSpec {
        rw: Rw::parse(&cli.rw)?,
        bs: usize::try_from(bs).map_err(|_| BenchError::InvalidOption {
            option: "bs",
            reason: "too large".into(),
        })?,
        iodepth: cli.iodepth,
        numjobs: cli.numjobs,
        size: cli
            .size
            .as_deref()
            .map(|s| parse_size("size", s))
            .transpose()?,
        runtime: cli
            .runtime
            .as_deref()
            .map(|s| parse_duration("runtime", s))
            .transpose()?,
        direct,
        filename: cli.filename.clone(),
        rwmixread: cli.rwmixread,
        op_deadline: parse_duration("op-deadline", &cli.op_deadline)?,
    };
    spec.validate()?;
    Ok(spec)
}

fn engines_of(name: &str) -> Result<Vec<Engine>, BenchError> {
    if name == "all" {
        Ok(Engine::ALL.to_vec())
    } else {
        name.split(',').map(|n| Engine::parse(n.trim())).collect()
    }
}

/// Prints a live progress line on a terminal until dropped.
struct ProgressLine {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressLine {
    fn start(label: String, progress: Arc<Progress>) -> ProgressLine {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let (mut last_ios, mut last_bytes, mut last_t) = (0u64, 0u64, Instant::now());
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(500));
                    let ios = progress.read_ios.load(Ordering::Relaxed)
                        + progress.write_ios.load(Ordering::Relaxed);
                    let bytes = progress.bytes.load(Ordering::Relaxed);
                    let dt = last_t.elapsed().as_secs_f64().max(1e-9);
                    eprint!(
                        "\r[{label}] {:5.1}s  {:>9.0} IOPS  {:>8.1} MiB/s   ",
                        t0.elapsed().as_secs_f64(),
                        (ios - last_ios) as f64 / dt,
                        (bytes - last_bytes) as f64 / dt / (1u64 << 20) as f64
                    );
                    (last_ios, last_bytes, last_t) = (ios, bytes, Instant::now());
                }
                eprint!("\r{:70}\r", "");
            })
        });
        ProgressLine { stop, thread }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(cli: &Cli) -> Result<(), BenchError> {
    let json = match cli.output_format.as_str() {
        "normal" => false,
        "json" => true,
        other => {
            return Err(BenchError::InvalidOption {
                option: "output-format",
                reason: format!("{other:?} is not normal or json"),
            })
        }
    };
    if cli.suite {
        let opts = suite::SuiteOptions {
            filename: cli.filename.clone(),
            size: parse_size("size", cli.size.as_deref().unwrap_or("1g"))?,
            runtime: parse_duration("runtime", cli.runtime.as_deref().unwrap_or("5s"))?,
            direct: cli.direct == 1,
            engines: Engine::ALL.to_vec(),
            with_fio: true,
            output: cli.output.clone(),
            op_deadline: parse_duration("op-deadline", &cli.op_deadline)?,
            rounds: cli.rounds.max(1) as usize,
        };
        suite::run(&opts, Arc::new(Progress::default()))?;
        return Ok(());
    }
    let spec = spec_of(cli)?;
    let engines = engines_of(&cli.engine)?;
    let file_size = engines::prepare_file(&spec)?;
    // rounds[r][i]: round r, engine i (fio last with --vs-fio). Engines run
    // interleaved, round after round, so a device whose speed drifts
    // between runs (a VM's host disk does, by tens of percent) affects every
    // engine alike; ratios are taken within a round.
    let mut rounds: Vec<Vec<Summary>> = Vec::new();
    for round in 0..cli.rounds {
        let mut row = Vec::new();
        for &engine in &engines {
            let progress = Arc::new(Progress::default());
            let line = ProgressLine::start(engine.as_str().to_string(), progress.clone());
            let r = engines::run(engine, &spec, file_size, progress)?;
            drop(line);
            if let Some(e) = &r.first_error {
                eprintln!("{}: {} ops failed; first: {e}", engine.as_str(), r.errors);
            }
            row.push(Summary::from_run(&r));
        }
        if cli.vs_fio {
            row.push(fio::run(&spec, file_size)?);
        }
        if cli.rounds > 1 && !json {
            let figures: Vec<String> = row
                .iter()
                .map(|s| format!("{} {:.0}", s.engine, s.iops()))
                .collect();
            eprintln!("round {}: {} IOPS", round + 1, figures.join(", "));
        }
        rounds.push(row);
    }
    // The round whose ratio to the base is the median, per engine.
    let runs: Vec<Summary> = (0..rounds.first().map_or(0, Vec::len))
        .map(|i| report::median_round(&rounds, i))
        .collect();
    if !json {
        for s in &runs {
            print!("{}", report::text(&spec, s));
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::fio_json(&spec, &runs)).unwrap_or_default()
        );
    } else if runs.len() > 1 {
        let base = runs.last().cloned().unwrap_or_else(|| runs[0].clone());
        println!();
        print!("{}", report::compare(&runs, &base));
        if rounds.len() > 1 {
            let ratios: Vec<String> = report::median_ratios(&rounds)
                .into_iter()
                .map(|(e, r)| format!("{e} {r:.2}"))
                .collect();
            println!(
                "median over {} rounds of the per-round IOPS ratio to {}: {}",
                rounds.len(),
                base.engine,
                ratios.join(", ")
            );
        }
    }
    if runs.iter().any(|r| r.errors > 0) {
        return Err(BenchError::Engine {
            engine: "bench",
            reason: "some operations failed (see above)".into(),
        });
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            e @ (BenchError::InvalidOption { .. }
            | BenchError::MissingFile { .. }
            | BenchError::UnknownEngine(_)),
        ) => {
            eprintln!("diskbench: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("diskbench: {e}");
            ExitCode::FAILURE
        }
    }
}
