//! `diskctl`: operator CLI for disk-io disks.
//!
//! Every command runs under one deadline (`--deadline`, covering opening
//! the disk and the operation) and reports how long it took. With `--json`
//! it prints exactly one JSON object that always has `ok` and `elapsed_us`,
//! and on failure `error_kind` (the stable [`disk_io::DiskError::kind`]
//! name) and `error`. The exit status is 0 on success, 1 on a disk error,
//! 2 on a usage error (from clap).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use disk_io::{Deadline, Disk, DiskError, LocalDisk};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(name = "diskctl", version, about = "Inspect and prepare disk-io disks")]
struct Cli {
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write a format file (disk identity) to a directory.
    Format {
        /// The disk's root directory.
        dir: PathBuf,
        /// Erasure set index.
        #[arg(long, default_value_t = 0)]
        set: u32,
        /// Disk index within the set.
        #[arg(long, default_value_t = 0)]
        index: u32,
        /// Replace an existing format (gives the disk a new identity).
        #[arg(long)]
        force: bool,
        /// Budget for the whole command, e.g. `2s`, `500ms`.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        deadline: Duration,
    },
    /// Print the disk's identity (reads the format file under the deadline).
    Id {
        /// The disk's root directory.
        dir: PathBuf,
        /// Budget for the whole command.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        deadline: Duration,
    },
    /// Print capacity, identity and state.
    Info {
        /// The disk's root directory.
        dir: PathBuf,
        /// Budget for the whole command.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        deadline: Duration,
    },
    /// Timed write, read back and delete of a small file.
    Probe {
        /// The disk's root directory.
        dir: PathBuf,
        /// Budget for the whole command.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        deadline: Duration,
    },
}

impl Cmd {
    fn dir_and_budget(&self) -> (&PathBuf, Duration) {
        match self {
            Cmd::Format { dir, deadline, .. }
            | Cmd::Id { dir, deadline }
            | Cmd::Info { dir, deadline }
            | Cmd::Probe { dir, deadline } => (dir, *deadline),
        }
    }
}

async fn run(cmd: &Cmd, deadline: Deadline) -> Result<Value, DiskError> {
    let (dir, budget) = cmd.dir_and_budget();
    let mut config = disk_io::DiskConfig::default();
    // A one-shot command: the probe gets the command's budget, and no
    // periodic probe runs behind its back.
    config.timeouts.probe = budget;
    config.health.probe_interval = Duration::ZERO;
    let disk = LocalDisk::builder(dir)
        .config(config)
        .open(deadline)
        .await?;
    match cmd {
        Cmd::Format {
            set, index, force, ..
        } => {
            let id = disk.format(*set, *index, *force, deadline).await?;
            Ok(json!({ "disk_id": id }))
        }
        Cmd::Id { .. } => {
            let id = disk.disk_id(deadline).await?;
            Ok(json!({ "disk_id": id }))
        }
        Cmd::Info { .. } => {
            let info = disk.disk_info(deadline).await?;
            Ok(json!({ "info": info }))
        }
        Cmd::Probe { .. } => {
            let took = tokio::time::timeout_at(
                tokio::time::Instant::from_std(deadline.instant()),
                disk.probe(),
            )
            .await
            .unwrap_or(Err(DiskError::DeadlineExceeded {
                op: disk_io::OpClass::Probe,
                waited: budget,
            }))?;
            Ok(json!({ "probe_us": took.as_micros() as u64 }))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DISKCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("diskctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (_, budget) = cli.cmd.dir_and_budget();
    let started = Instant::now();
    let deadline = Deadline::after(budget);
    let result = runtime.block_on(run(&cli.cmd, deadline));
    let elapsed_us = started.elapsed().as_micros() as u64;
    let (out, code) = match result {
        Ok(mut v) => {
            v["ok"] = json!(true);
            v["elapsed_us"] = json!(elapsed_us);
            (v, ExitCode::SUCCESS)
        }
        Err(e) => (
            json!({
                "ok": false,
                "elapsed_us": elapsed_us,
                "error_kind": e.kind(),
                "unavailable": e.is_unavailable(),
                "error": e.to_string(),
            }),
            ExitCode::FAILURE,
        ),
    };
    if cli.json {
        println!("{out}");
    } else {
        print_text(&out);
    }
    // Do not wait for a ring thread stuck on a hung device: the answer is
    // out, and process exit reclaims everything.
    std::mem::forget(runtime);
    code
}

fn print_text(v: &Value) {
    let ok = v["ok"].as_bool().unwrap_or(false);
    let us = v["elapsed_us"].as_u64().unwrap_or(0);
    if !ok {
        eprintln!(
            "error ({}): {} [after {us} µs]",
            v["error_kind"].as_str().unwrap_or("?"),
            v["error"].as_str().unwrap_or("?")
        );
        return;
    }
    if let Some(id) = v.get("disk_id") {
        println!(
            "disk {} (set {}, index {})",
            id["uuid"].as_str().unwrap_or("?"),
            id["set_index"],
            id["disk_index"]
        );
    }
    if let Some(info) = v.get("info") {
        let gib = |k: &str| info[k].as_u64().unwrap_or(0) as f64 / (1u64 << 30) as f64;
        println!(
            "state {}  total {:.2} GiB  free {:.2} GiB  used {:.2} GiB  inodes free {}/{}  in-flight {}  zombies {}",
            info["state"].as_str().unwrap_or("?"),
            gib("total"),
            gib("free"),
            gib("used"),
            info["files_free"],
            info["files"],
            info["in_flight"],
            info["zombies"]
        );
        match info["id"].get("uuid") {
            Some(u) => println!("disk {}", u.as_str().unwrap_or("?")),
            None => println!("disk is not formatted"),
        }
    }
    if let Some(p) = v.get("probe_us") {
        println!("probe ok in {p} µs");
    }
    println!("({us} µs)");
}
