//! `diskctl`: operator CLI for disk-io disks.
//!
//! Every command runs under one deadline (`--deadline`, covering opening
//! the disk and the operation) and reports how long it took. With `--json`
//! it prints exactly one JSON object that always has `ok` and `elapsed_us`,
//! and on failure `error_kind` (the stable [`disk_io::DiskError::kind`]
//! name), `unavailable` and `error`. The exit status is 0 on success, 1 on a
//! disk error, 2 on a usage error (from clap).
//!
//! **Invariant:** the process exits once its answer is printed, even when
//! the disk is hung. The disk I/O runs in a child process (this same binary,
//! started with a hidden `worker` subcommand) whose stdout and stderr are
//! pipes to this process, never the caller's: the parent prints the child's
//! answer, or a deadline error of its own at `--deadline` + `--exit-grace`,
//! and exits without waiting for the child. A child stuck in io_uring or
//! io-wq teardown on a hung device then holds none of the caller's file
//! descriptors, so a wrapper (`timeout`, a shell pipeline, a monitoring
//! agent) sees EOF at once.
//!
//! **Remote disks:** with `--config cluster.toml`, `id`, `info` and `probe`
//! take a disk of the cluster as `NODE:N` (N from 1, as in the config's
//! disk list) and ask that node over the node RPC, under the same deadline
//! and with the same JSON; the remote `probe` is a timed `disk_id` +
//! `disk_info` round trip (it writes nothing on the remote disk).
//!
//! **Invariant:** `id`, `info` and `probe` open the disk for inspection
//! ([`OpenMode::Inspect`]): they work on a read-only mount and on a live
//! node's disk, create nothing (not even `.disk-io` on a directory that is
//! not a disk) and never move the owner's temporary files. `format` opens as
//! owner and refuses a disk another process owns.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use disk_io::{Deadline, Disk, DiskError, LocalDisk, OpClass, OpenMode};
use disk_io_rpc::{ClusterConfig, Peer, RpcConfig};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(name = "diskctl", version, about = "Inspect and prepare disk-io disks")]
struct Cli {
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// How long past `--deadline` the CLI waits for its I/O process to
    /// answer before it answers "deadline exceeded" itself.
    #[arg(long, global = true, default_value = "500ms", value_parser = humantime::parse_duration)]
    exit_grace: Duration,
    /// A cluster config file: the disk argument is then `NODE:N`, a disk
    /// of that node, asked over the node RPC (`id`, `info`, `probe`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Write a format file (disk identity) to a directory.
    Format {
        /// The disk's root directory (with `--config`: `NODE:N`).
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
        /// The disk's root directory (with `--config`: `NODE:N`).
        dir: PathBuf,
        /// Budget for the whole command.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        deadline: Duration,
    },
    /// Print capacity, identity and state.
    Info {
        /// The disk's root directory (with `--config`: `NODE:N`).
        dir: PathBuf,
        /// Budget for the whole command.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        deadline: Duration,
    },
    /// Timed write, read back and delete of a small file in the disk's tmp.
    Probe {
        /// The disk's root directory (with `--config`: `NODE:N`).
        dir: PathBuf,
        /// Budget for the whole command.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        deadline: Duration,
    },
    /// Internal: run the command's I/O and print its JSON result on stdout.
    #[command(hide = true)]
    Worker {
        /// The command, as its own argument list.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

impl Cmd {
    /// The operation the command stands for, for its errors.
    fn class(&self) -> OpClass {
        match self {
            Cmd::Format { .. } => OpClass::Format,
            Cmd::Id { .. } => OpClass::DiskId,
            Cmd::Info { .. } => OpClass::DiskInfo,
            Cmd::Probe { .. } => OpClass::Probe,
            Cmd::Worker { .. } => OpClass::Open,
        }
    }

    fn budget(&self) -> Duration {
        match self {
            Cmd::Format { deadline, .. }
            | Cmd::Id { deadline, .. }
            | Cmd::Info { deadline, .. }
            | Cmd::Probe { deadline, .. } => *deadline,
            Cmd::Worker { .. } => Duration::ZERO,
        }
    }
}

/// The command's I/O on a disk of the cluster, over the node RPC.
async fn run_remote(config: &Path, cmd: &Cmd, deadline: Deadline) -> Result<Value, DiskError> {
    let bad = |reason: String| DiskError::InvalidArgument { reason };
    let dir = match cmd {
        Cmd::Id { dir, .. } | Cmd::Info { dir, .. } | Cmd::Probe { dir, .. } => dir,
        Cmd::Format { .. } | Cmd::Worker { .. } => {
            return Err(bad("only id, info and probe work on a remote disk".into()))
        }
    };
    let cluster = ClusterConfig::load(config).map_err(|e| bad(e.to_string()))?;
    let spec = dir.to_string_lossy();
    let (node, index) = cluster.disk_spec(&spec).map_err(|e| bad(e.to_string()))?;
    let peer = Peer::new(
        &node.name,
        node.rpc_addr,
        cluster.secret.as_bytes(),
        RpcConfig::default(),
    )?;
    let health = disk_io::HealthConfig {
        probe_interval: Duration::ZERO,
        ..Default::default()
    };
    let disk = peer.disk(index, health, Vec::new());
    match cmd {
        Cmd::Id { .. } => Ok(json!({ "disk_id": disk.disk_id(deadline).await? })),
        Cmd::Info { .. } => Ok(json!({ "info": disk.disk_info(deadline).await? })),
        _ => {
            let started = Instant::now();
            disk.disk_id(deadline).await?;
            disk.disk_info(deadline).await?;
            Ok(json!({ "probe_us": started.elapsed().as_micros() as u64 }))
        }
    }
}

/// The command's I/O, in the worker process.
async fn run(cmd: &Cmd, config: Option<&Path>, deadline: Deadline) -> Result<Value, DiskError> {
    if let Some(config) = config {
        return run_remote(config, cmd, deadline).await;
    }
    let (dir, mode) = match cmd {
        Cmd::Format { dir, .. } => (dir, OpenMode::Owner),
        Cmd::Id { dir, .. } | Cmd::Info { dir, .. } | Cmd::Probe { dir, .. } => {
            (dir, OpenMode::Inspect)
        }
        Cmd::Worker { .. } => {
            return Err(DiskError::InvalidArgument {
                reason: "nested worker".into(),
            })
        }
    };
    let mut config = disk_io::DiskConfig::default();
    // A one-shot command: the probe gets the command's budget, and no
    // periodic probe runs behind its back.
    config.timeouts.probe = cmd.budget();
    config.health.probe_interval = Duration::ZERO;
    let disk = LocalDisk::builder(dir)
        .config(config)
        .mode(mode)
        .open(deadline)
        .await?;
    match cmd {
        Cmd::Format {
            set, index, force, ..
        } => {
            let id = disk.format(*set, *index, *force, deadline).await?;
            Ok(json!({ "disk_id": id }))
        }
        Cmd::Id { .. } => Ok(json!({ "disk_id": disk.disk_id(deadline).await? })),
        Cmd::Info { .. } => Ok(json!({ "info": disk.disk_info(deadline).await? })),
        Cmd::Probe { .. } => {
            let took = tokio::time::timeout_at(
                tokio::time::Instant::from_std(deadline.instant()),
                disk.probe(),
            )
            .await
            .unwrap_or(Err(DiskError::DeadlineExceeded {
                op: OpClass::Probe,
                waited: cmd.budget(),
            }))?;
            Ok(json!({ "probe_us": took.as_micros() as u64 }))
        }
        Cmd::Worker { .. } => unreachable!("handled above"),
    }
}

fn error_value(e: &DiskError) -> Value {
    json!({
        "ok": false,
        "error_kind": e.kind(),
        "unavailable": e.is_unavailable(),
        "error": e.to_string(),
    })
}

/// The worker process: run, print one JSON line, exit (the exit itself may
/// hang on a hung device; the parent does not wait for it).
fn worker(args: Vec<String>, outer_config: Option<PathBuf>) -> ExitCode {
    // Whatever the caller's process had open and did not mark close-on-exec
    // (a pipe a wrapper reads, a socket) would be held by a worker stuck on a
    // hung disk after the parent has gone: keep stdin/stdout/stderr only.
    if let Err(e) = disk_io_driver::close_inherited_fds(3) {
        println!(
            "{}",
            json!({"ok": false, "error_kind": "io", "unavailable": false, "error": format!("cannot close inherited fds: {e}")})
        );
        return ExitCode::FAILURE;
    }
    let cli = match Cli::try_parse_from(std::iter::once("diskctl".to_string()).chain(args)) {
        Ok(c) => c,
        Err(e) => {
            println!(
                "{}",
                json!({"ok": false, "error_kind": "invalid_argument", "unavailable": false, "error": e.to_string()})
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            println!(
                "{}",
                json!({"ok": false, "error_kind": "io", "unavailable": false, "error": format!("cannot start the runtime: {e}")})
            );
            return ExitCode::FAILURE;
        }
    };
    let deadline = Deadline::after(cli.cmd.budget());
    let out = match runtime.block_on(run(
        &cli.cmd,
        // clap hands a global `--config` after `worker` to the outer parser.
        cli.config.as_deref().or(outer_config.as_deref()),
        deadline,
    )) {
        Ok(mut v) => {
            v["ok"] = json!(true);
            v
        }
        Err(e) => error_value(&e),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
    let _ = stdout.flush();
    drop(stdout);
    // Leave without tearing the runtime down: a ring thread stuck on a hung
    // device must not keep the answer from the parent (it already has it).
    std::mem::forget(runtime);
    std::process::exit(if out["ok"] == json!(true) { 0 } else { 1 })
}

/// The parent: start the worker, wait for its answer at most until the
/// deadline plus the grace, print, exit.
fn parent(cli: &Cli) -> (Value, ExitCode) {
    let started = Instant::now();
    let budget = cli.cmd.budget();
    let give_up = budget + cli.exit_grace;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            return (
                error_value(&DiskError::InvalidArgument {
                    reason: format!("cannot find the diskctl binary: {e}"),
                }),
                ExitCode::FAILURE,
            )
        }
    };
    let mut child = match Command::new(exe)
        .arg("worker")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return (
                error_value(&DiskError::InvalidArgument {
                    reason: format!("cannot start the I/O process: {e}"),
                }),
                ExitCode::FAILURE,
            )
        }
    };
    // The child's logs go to our stderr while we live; the forwarding
    // thread is never joined.
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            // One line is the whole answer.
            let mut text = String::new();
            let _ = BufReader::new(out).read_line(&mut text);
            let _ = tx.send(text);
        });
    }
    let answer = rx.recv_timeout(give_up);
    let elapsed_us = started.elapsed().as_micros() as u64;
    let mut v = match answer {
        Ok(text) => match serde_json::from_str::<Value>(text.trim()) {
            Ok(v) if v.is_object() => v,
            _ => error_value(&DiskError::InvalidArgument {
                reason: format!("the I/O process answered {text:?}"),
            }),
        },
        Err(_) => {
            // No answer by the deadline: the disk did not answer.
            let _ = child.kill();
            error_value(&DiskError::DeadlineExceeded {
                op: cli.cmd.class(),
                waited: started.elapsed(),
            })
        }
    };
    v["elapsed_us"] = json!(elapsed_us);
    let code = if v["ok"] == json!(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    (v, code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Worker { args } = cli.cmd.clone() {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("DISKCTL_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .init();
        return worker(args, cli.config.clone());
    }
    let (out, code) = parent(&cli);
    if cli.json {
        println!("{out}");
    } else {
        print_text(&out);
    }
    let _ = std::io::stdout().flush();
    // Exit now: neither the worker nor the stderr forwarder is waited for.
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 })
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
