//! `probe-loader`: block-request probes for SREs.
//!
//! * `probe-loader run [--listen ADDR] [--stall-threshold D] [--scan-interval D] [--pin-dir DIR]`
//!   attaches the probes, pins their maps, logs stall start/end per device
//!   and serves Prometheus `/metrics` until SIGINT/SIGTERM.
//! * `probe-loader status [--json] [--pin-dir DIR]` reads a running
//!   loader's pinned maps: per-device latency percentiles, in-flight count,
//!   oldest in-flight age; it exits non-zero when the loader is not running.
//!
//! Needs CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN), and CAP_SYS_ADMIN to
//! mount bpffs when it is not mounted; see `probe-loader.service`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use probes_ebpf_common::DEFAULT_PIN_DIR;
use probes_ebpf_loader::status;
use probes_ebpf_loader::{
    Loader, LoaderError, MapLimits, ProbeConfig, RunConfig, StatusConfig, DEFAULT_BTF,
};

/// How often the main thread checks for a signal.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

#[derive(Parser)]
#[command(
    name = "probe-loader",
    version,
    about = "Block-request probes: latency histograms, stall detection, Prometheus metrics"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach the probes, detect stalls, serve /metrics until SIGINT/SIGTERM.
    Run {
        /// Address for Prometheus /metrics.
        #[arg(long, default_value = "127.0.0.1:9435")]
        listen: SocketAddr,
        /// A device is stalled while a request has been outstanding longer than this.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        stall_threshold: Duration,
        /// How often the in-flight table is scanned.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        scan_interval: Duration,
        /// bpffs directory for the pinned maps (mounted if absent).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// BTF of the running kernel (struct offsets are derived from it).
        #[arg(long, default_value = DEFAULT_BTF)]
        btf: PathBuf,
        /// Trace only this device (repeatable; e.g. `sda`, `loop3`). Default: all.
        #[arg(long = "device")]
        devices: Vec<String>,
        /// In-flight table size (sum of queue depths of the traced devices, with room;
        /// 64 to 1048576). Checked before anything is created.
        #[arg(long, default_value_t = MapLimits::default().inflight_entries)]
        inflight_entries: u32,
    },
    /// Print per-device latency percentiles, in-flight count and oldest age from a running loader
    /// (exits non-zero, after the report, when the loader that pinned the maps is not running).
    Status {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// The running loader's pin directory.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run {
            listen,
            stall_threshold,
            scan_interval,
            pin_dir,
            btf,
            devices,
            inflight_entries,
        } => {
            let mut cfg = RunConfig {
                probes: ProbeConfig {
                    btf,
                    pin_dir,
                    devices,
                    ..ProbeConfig::default()
                },
                stall_threshold,
                scan_interval,
                listen: Some(listen),
                ..RunConfig::default()
            };
            cfg.probes.limits.inflight_entries = inflight_entries;
            cfg.max_scan_entries = 2 * inflight_entries as usize;
            run(cfg)
        }
        Cmd::Status { json, pin_dir } => print_status(&pin_dir, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("probe-loader: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: RunConfig) -> Result<(), LoaderError> {
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, term.clone()).map_err(|e| LoaderError::Io {
            what: "installing signal handlers".into(),
            source: e,
        })?;
    }
    let loader = Loader::start(cfg)?;
    if let Some(addr) = loader.metrics_addr() {
        // Tests and scripts wait for this line.
        eprintln!(
            "probe-loader: ready, metrics on http://{addr}/metrics, maps pinned in {}",
            loader.pin_dir().display()
        );
    }
    while !term.load(Ordering::Relaxed) {
        if !loader.is_running() {
            return Err(LoaderError::ScannerStopped);
        }
        std::thread::sleep(SIGNAL_POLL);
    }
    tracing::info!("signal received: detaching");
    loader.stop();
    Ok(())
}

fn print_status(pin_dir: &std::path::Path, json: bool) -> Result<(), LoaderError> {
    let st = status::read(pin_dir, StatusConfig::default())?;
    if json {
        let text = serde_json::to_string_pretty(&st).map_err(|e| LoaderError::Io {
            what: "encoding JSON".into(),
            source: e.into(),
        })?;
        println!("{text}");
    } else {
        print!("{}", status::render_text(&st));
    }
    status::require_live(&st)
}
