//! `disk-io-cluster`: the cluster harness for operators (and `cargo xtask cluster ...`).
//!
//! One invocation per action; the cluster lives on between them. Its state (names, pids,
//! disks, power) is kept in a JSON file, by default `/run/disk-io-cluster/state.json`,
//! under an exclusive lock, so separate invocations act on one cluster:
//!
//! ```text
//! disk-io-cluster up [--nodes 4 --disks 4 --disk-mib 256 ...] [-- PROGRAM ARGS...]
//! disk-io-cluster status [--json]
//! disk-io-cluster poweroff node4      # drop every packet, SIGSTOP the process
//! disk-io-cluster poweron node4       # SIGKILL, lift the drop, start a fresh process
//! disk-io-cluster kill node2 | start node2 | restart node2
//! disk-io-cluster logs node4
//! disk-io-cluster exec node1 -- ss -tn           # a command inside node1's namespace
//! disk-io-cluster client -- curl http://10.213.7.11:9000/   # inside the client namespace
//! disk-io-cluster down
//! ```
//!
//! `up` runs PROGRAM ARGS for every node, with `{node}`, `{rpc_addr}`, `{config}`, ...
//! filled in (see `NodeCommand::PLACEHOLDERS`); without one it runs the stand-in
//! `disk-io-echo-node` built next to this binary. The nodes keep running after `up` exits.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use nix::fcntl::{Flock, FlockArg};

use disk_io_harness::cluster::{
    sweep, Cluster, ClusterSpec, ClusterState, NodeCommand, ReadyCheck,
};
use disk_io_harness::{HarnessError, Result};

/// Default state file.
const DEFAULT_STATE: &str = "/run/disk-io-cluster/state.json";

/// A cluster of storage-node processes in network namespaces, with power switches.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// State file shared by invocations acting on one cluster.
    #[arg(long, global = true, default_value = DEFAULT_STATE)]
    state: PathBuf,
    /// Print JSON instead of a table (up, status).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create the namespaces and disks, write the config and start every node.
    Up(UpArgs),
    /// Nodes, addresses, pids, power, disks.
    Status,
    /// Drop every packet of NODE and stop its process.
    Poweroff {
        /// e.g. node4
        node: String,
    },
    /// Kill NODE's stopped process, lift the drop, start it again.
    Poweron {
        /// e.g. node4
        node: String,
    },
    /// Crash NODE's process (SIGKILL; peers see FIN/RST).
    Kill {
        /// e.g. node2
        node: String,
    },
    /// Start NODE's command again after `kill` or a crash.
    Start {
        /// e.g. node2
        node: String,
    },
    /// SIGTERM (then SIGKILL) NODE's process and start it again.
    Restart {
        /// e.g. node2
        node: String,
    },
    /// Print NODE's log (stdout and stderr of every process started for it).
    Logs {
        /// e.g. node1
        node: String,
    },
    /// Run a command inside NODE's network namespace.
    Exec {
        /// e.g. node1
        node: String,
        /// Give up (and kill it) after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run a command inside the client namespace.
    Client {
        /// Give up (and kill it) after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop every node and remove everything the cluster made.
    Down {
        /// Label of the cluster to remove when the state file is gone.
        #[arg(long, default_value = "cli")]
        label: String,
    },
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    /// Storage nodes.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Disks per node.
    #[arg(long, default_value_t = 4)]
    disks: usize,
    /// Size of each disk image (sparse), MiB.
    #[arg(long, default_value_t = 256)]
    disk_mib: u64,
    /// Erasure set size (default: up to 8, dividing the disk count).
    #[arg(long)]
    set_size: Option<usize>,
    /// Parity per set (default: half the set).
    #[arg(long)]
    parity: Option<usize>,
    /// RPC port of every node.
    #[arg(long, default_value_t = 7100)]
    rpc_port: u16,
    /// S3 port of every node.
    #[arg(long, default_value_t = 9000)]
    s3_port: u16,
    /// Network address of the cluster's /24, e.g. 10.213.7.0.
    #[arg(long)]
    subnet: Option<std::net::Ipv4Addr>,
    /// Cluster label: its resources are named dioh-LABEL-*.
    #[arg(long, default_value = "cli")]
    label: String,
    /// Wait for each node to accept connections on its RPC port, its S3 port, or not at all.
    #[arg(long, value_parser = ["rpc", "s3", "none"], default_value = "rpc")]
    ready: String,
    /// Also drop ARP on poweroff.
    #[arg(long)]
    drop_arp: bool,
    /// Lease TTL of the cluster's quorum locks in ms (refreshed every third
    /// of it); lockers grant nothing for a TTL after they start, so a short
    /// TTL makes a fresh cluster ready sooner. Default: the config's (30 s).
    #[arg(long)]
    lock_ttl_ms: Option<u64>,
    /// Node command template (default: the echo stand-in next to this binary).
    #[arg(last = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("disk-io-cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    if let Some(dir) = cli.state.parent() {
        fs::create_dir_all(dir).map_err(|e| state_error(&cli.state, e))?;
    }
    let spec_timeouts = ClusterSpec::default().timeouts;
    let _lock = lock(&cli.state, spec_timeouts.state_lock, spec_timeouts.poll)?;
    match &cli.command {
        Cmd::Up(args) => up(cli, args),
        Cmd::Status => {
            with_cluster(cli, |_| Ok(()))?;
            node_view(cli)
        }
        Cmd::Poweroff { node } => with_cluster(cli, |c| c.poweroff(node)),
        Cmd::Poweron { node } => with_cluster(cli, |c| c.poweron(node)),
        Cmd::Kill { node } => with_cluster(cli, |c| c.kill(node)),
        Cmd::Start { node } => with_cluster(cli, |c| c.start_node(node)),
        Cmd::Restart { node } => with_cluster(cli, |c| c.restart(node)),
        Cmd::Logs { node } => {
            let cluster = Cluster::attach(load(&cli.state)?)?;
            print!("{}", cluster.log(node)?);
            Ok(())
        }
        Cmd::Exec {
            node,
            timeout_secs,
            command,
        } => {
            let cluster = Cluster::attach(load(&cli.state)?)?;
            run_inside(
                &cluster.node_netns(node)?,
                command,
                *timeout_secs,
                cluster.spec().timeouts.poll,
            )
        }
        Cmd::Client {
            timeout_secs,
            command,
        } => {
            let cluster = Cluster::attach(load(&cli.state)?)?;
            run_inside(
                &cluster.client_netns()?,
                command,
                *timeout_secs,
                cluster.spec().timeouts.poll,
            )
        }
        Cmd::Down { label } => down(cli, label),
    }
}

fn up(cli: &Cli, args: &UpArgs) -> Result<()> {
    if cli.state.exists() {
        let state = load(&cli.state)?;
        return Err(HarnessError::State {
            path: cli.state.clone(),
            what: format!("cluster {} is up; run `down` first", state.name),
        });
    }
    let mut spec = ClusterSpec::with_shape(args.nodes, args.disks);
    spec.disk_image_bytes = args.disk_mib << 20;
    if let Some(size) = args.set_size {
        spec.set_size = size;
        spec.parity = size / 2;
    }
    if let Some(parity) = args.parity {
        spec.parity = parity;
    }
    spec.rpc_port = args.rpc_port;
    spec.s3_port = args.s3_port;
    spec.subnet = args.subnet;
    spec.label = Some(args.label.clone());
    spec.poweroff_drops_arp = args.drop_arp;
    if let Some(ttl) = args.lock_ttl_ms {
        spec.locks = disk_io_rpc::LockTiming {
            ttl_ms: ttl,
            refresh_ms: ttl / 3,
            attempt_ms: (ttl / 24).clamp(1, 1000),
        };
    }
    spec.ready = match args.ready.as_str() {
        "s3" => ReadyCheck::S3Port,
        "none" => ReadyCheck::None,
        _ => ReadyCheck::RpcPort,
    };
    let command = match args.command.split_first() {
        Some((program, rest)) => NodeCommand::new(program).args(rest.iter().cloned()),
        None => default_command()?,
    };
    let started = Instant::now();
    let mut cluster = Cluster::start_persistent(spec, command)?;
    let elapsed = started.elapsed();
    let status = cluster.status()?;
    let state = cluster.detach();
    save(&cli.state, &state)?;
    print_status(cli, &status)?;
    if !cli.json {
        println!("up in {elapsed:.1?}; state in {}", cli.state.display());
    }
    Ok(())
}

/// When the nodes are `disk-io-node`s: the cluster as node1 (or the first
/// node that answers) sees it, through `disk-io-node admin status` run in
/// the client namespace.
fn node_view(cli: &Cli) -> Result<()> {
    if cli.json {
        return Ok(());
    }
    let state = load(&cli.state)?;
    let Some(cmd) = state.command.as_ref() else {
        return Ok(());
    };
    if cmd.program.file_name().is_none_or(|n| n != "disk-io-node") {
        return Ok(());
    }
    let config = state.config_path.display().to_string();
    let program = cmd.program.display().to_string();
    // Attached only to find the client namespace; detached so that
    // dropping it leaves the cluster running.
    let cluster = Cluster::attach(state.clone())?;
    let (ns, poll) = (cluster.client_netns(), cluster.spec().timeouts.poll);
    cluster.detach();
    println!();
    run_inside(
        &ns?,
        &[
            program,
            "admin".into(),
            "--config".into(),
            config,
            "--timeout".into(),
            "2s".into(),
            "status".into(),
        ],
        30,
        poll,
    )
}

/// The echo stand-in next to this executable.
fn default_command() -> Result<NodeCommand> {
    let exe = std::env::current_exe().map_err(HarnessError::Io)?;
    let echo = exe.with_file_name("disk-io-echo-node");
    if !echo.is_file() {
        return Err(HarnessError::Config {
            what: format!(
                "no node command given and {} does not exist (build it: \
                 cargo build -p disk-io-harness --bins)",
                echo.display()
            ),
        });
    }
    Ok(NodeCommand::new(echo).args([
        "--node",
        "{node}",
        "--listen",
        "{rpc_addr}",
        "--disks",
        "{disks}",
    ]))
}

/// Attaches to the recorded cluster, runs `op`, saves the updated state and prints the
/// status (even when `op` failed, so the operator sees where things stand).
fn with_cluster(cli: &Cli, op: impl FnOnce(&mut Cluster) -> Result<()>) -> Result<()> {
    let mut cluster = Cluster::attach(load(&cli.state)?)?;
    let outcome = op(&mut cluster);
    let status = cluster.status();
    save(&cli.state, &cluster.detach())?;
    print_status(cli, &status?)?;
    outcome
}

fn down(cli: &Cli, label: &str) -> Result<()> {
    let spec = ClusterSpec::default();
    let (name, work_root, outcome) = if cli.state.exists() {
        let state = load(&cli.state)?;
        let name = state.name.clone();
        let root = state
            .work_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or(spec.work_root.clone());
        let outcome = Cluster::attach(state).and_then(Cluster::shutdown);
        (name, root, outcome)
    } else {
        (
            format!("{}-{label}", spec.prefix),
            spec.work_root.clone(),
            Ok(()),
        )
    };
    // Whatever is left of that cluster (a failed step above, or an `up` that was killed).
    let left = sweep::leftovers(&name, &work_root, spec.timeouts.tool)?;
    if !left.is_empty() {
        eprintln!("removing leftovers of {name}: {left:?}");
        sweep::remove(&left, &spec.timeouts)?;
    }
    outcome?;
    if cli.state.exists() {
        fs::remove_file(&cli.state).map_err(|e| state_error(&cli.state, e))?;
    }
    println!("cluster {name} is down");
    Ok(())
}

fn print_status(cli: &Cli, status: &disk_io_harness::cluster::ClusterStatus) -> Result<()> {
    if cli.json {
        let text = serde_json::to_string_pretty(status).map_err(|e| HarnessError::Config {
            what: format!("serializing status: {e}"),
        })?;
        println!("{text}");
    } else {
        print!("{status}");
    }
    Ok(())
}

fn run_inside(
    ns: &disk_io_harness::Netns,
    command: &[String],
    timeout_secs: u64,
    poll: Duration,
) -> Result<()> {
    let Some((program, args)) = command.split_first() else {
        return Err(HarnessError::Config {
            what: "no command given".into(),
        });
    };
    let mut cmd = ns.command(program)?;
    cmd.args(args);
    let mut child = cmd.spawn().map_err(HarnessError::Io)?;
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        if let Some(status) = child.try_wait().map_err(HarnessError::Io)? {
            return if status.success() {
                Ok(())
            } else {
                Err(HarnessError::Command {
                    cmd: command.join(" "),
                    status: Some(status),
                    stderr: String::new(),
                })
            };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HarnessError::Timeout {
                what: format!("`{}` within {timeout_secs} s", command.join(" ")),
            });
        }
        thread::sleep(poll);
    }
}

fn state_error(path: &Path, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::State {
        path: path.to_path_buf(),
        what: e.to_string(),
    }
}

/// Takes the exclusive lock beside the state file, waiting at most `timeout`.
fn lock(state: &Path, timeout: Duration, poll: Duration) -> Result<Flock<File>> {
    let path = state.with_extension("lock");
    let deadline = Instant::now() + timeout;
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| state_error(&path, e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                thread::sleep(poll);
            }
            Err((_, e)) => {
                return Err(state_error(
                    &path,
                    format!("cannot lock (another invocation holds it?): {e}"),
                ))
            }
        }
    }
}

fn load(path: &Path) -> Result<ClusterState> {
    let text = fs::read_to_string(path).map_err(|e| {
        state_error(
            path,
            format!("{e} (is a cluster up? `disk-io-cluster up` creates it)"),
        )
    })?;
    serde_json::from_str(&text).map_err(|e| state_error(path, format!("unparsable: {e}")))
}

/// Writes the state atomically (temporary file, fsync, rename), mode 0600: it holds the
/// cluster secret.
fn save(path: &Path, state: &ClusterState) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let text = serde_json::to_string_pretty(state).map_err(|e| state_error(path, e))?;
    let tmp = path.with_extension("json.tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| state_error(&tmp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| state_error(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| state_error(path, e))
}
