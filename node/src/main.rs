//! `disk-io-node`: the reference storage node.
//!
//! - `disk-io-node serve --config cluster.toml --node NAME`: serves the
//!   node's disks, locker and admin API over the node RPC, S3 on its
//!   `s3_addr` and `/metrics` + `/health/*` on its `http_addr`, until
//!   SIGTERM or SIGINT.
//! - `disk-io-node admin --config cluster.toml …`: users and the cluster
//!   view, through any node's admin API (the cluster secret signs it).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use disk_io_iam::{Policy, Status};
use disk_io_node::admin::{admin_call, AdminErrorKind, AdminReply, AdminRequest, ClusterView};
use disk_io_node::NodeOptions;
use disk_io_rpc::{ClusterConfig, Peer, RpcConfig};

#[derive(Parser)]
#[command(name = "disk-io-node", about = "disk-io reference storage node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve this node: disks and locker over the node RPC, S3, /metrics.
    Serve {
        /// The cluster config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// This node's name in it.
        #[arg(long)]
        node: String,
        /// Format disks that have no format file yet.
        #[arg(long)]
        format_missing: bool,
        /// How often the scanner heals every set, at least (e.g. `5m`).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        scan_interval: Duration,
        /// `uring` (the product) or `tokio-fs` (the conventional baseline,
        /// for the object-level benchmark).
        #[arg(long, value_parser = ["uring", "tokio-fs"], default_value = "uring")]
        disk_backend: String,
    },
    /// Operate the cluster through a node's admin API.
    Admin(AdminArgs),
}

#[derive(Args)]
struct AdminArgs {
    /// The cluster config file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Ask this node (default: the first that answers, in config order).
    #[arg(long)]
    node: Option<String>,
    /// Budget of the request, per node tried (e.g. `5s`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    timeout: Duration,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    what: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// IAM users.
    #[command(subcommand)]
    User(UserCommand),
    /// The cluster as the answering node sees it: nodes, breakers, disks,
    /// sets and their quorum.
    Status,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user (read and write on every bucket unless --bucket,
    /// --read or --write narrow it).
    Add {
        /// Access key.
        #[arg(long)]
        access_key: String,
        /// Secret key.
        #[arg(long)]
        secret_key: String,
        /// A bucket it may use (repeatable; default every bucket).
        #[arg(long = "bucket")]
        buckets: Vec<String>,
        /// Read only.
        #[arg(long, conflicts_with = "write_only")]
        read_only: bool,
        /// Write only.
        #[arg(long)]
        write_only: bool,
    },
    /// List users (no secrets).
    List,
    /// Let a user's requests in again.
    Enable {
        /// Access key.
        access_key: String,
    },
    /// Refuse a user's requests (the user is kept).
    Disable {
        /// Access key.
        access_key: String,
    },
    /// Delete a user.
    Remove {
        /// Access key.
        access_key: String,
    },
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
    tracing::info!("shutting down");
}

/// Latency buckets for every `*_seconds` histogram: 100 µs to 60 s.
const SECONDS_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .install_recorder()?;
    Ok(handle)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Plain text in log files (the harness, journald), colour on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("disk-io-node: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve {
            config,
            node,
            format_missing,
            scan_interval,
            disk_backend,
        } => {
            let outcome = runtime.block_on(async {
                let cluster = ClusterConfig::load(&config)?;
                let handle = install_metrics()?;
                let upkeep = handle.clone();
                tokio::spawn(async move {
                    let mut t = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        t.tick().await;
                        upkeep.run_upkeep();
                    }
                });
                let mut opts = NodeOptions::new(&node);
                opts.format_missing = format_missing;
                opts.scan_interval = scan_interval;
                if disk_backend == "tokio-fs" {
                    opts.backend = disk_io_node::DiskBackend::TokioFs;
                }
                opts.metrics = Some(handle);
                disk_io_node::serve(&cluster, &opts, shutdown_signal()).await
            });
            match outcome {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("disk-io-node: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Admin(args) => runtime.block_on(admin(args)),
    }
}

fn request(what: AdminCommand) -> AdminRequest {
    match what {
        AdminCommand::Status => AdminRequest::ClusterStatus,
        AdminCommand::User(u) => match u {
            UserCommand::Add {
                access_key,
                secret_key,
                buckets,
                read_only,
                write_only,
            } => AdminRequest::AddUser {
                access_key,
                secret_key,
                policy: Policy {
                    buckets: if buckets.is_empty() {
                        vec!["*".into()]
                    } else {
                        buckets
                    },
                    read: !write_only,
                    write: !read_only,
                },
            },
            UserCommand::List => AdminRequest::ListUsers,
            UserCommand::Enable { access_key } => AdminRequest::SetStatus {
                access_key,
                status: Status::Enabled,
            },
            UserCommand::Disable { access_key } => AdminRequest::SetStatus {
                access_key,
                status: Status::Disabled,
            },
            UserCommand::Remove { access_key } => AdminRequest::RemoveUser { access_key },
        },
    }
}

/// Exit codes: 0 done, 1 the node refused (typed kind printed), 3 no node
/// answered, 2 bad invocation or config.
async fn admin(args: AdminArgs) -> ExitCode {
    let cluster = match ClusterConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("disk-io-node admin: {e}");
            return ExitCode::from(2);
        }
    };
    let targets: Vec<_> = cluster
        .nodes
        .iter()
        .filter(|n| args.node.as_ref().is_none_or(|want| &n.name == want))
        .collect();
    if targets.is_empty() {
        eprintln!("disk-io-node admin: no node {:?} in the config", args.node);
        return ExitCode::from(2);
    }
    let req = request(args.what);
    let mut rpc = RpcConfig::default();
    rpc.connect_timeout = rpc.connect_timeout.min(args.timeout);
    for n in targets {
        let peer = match Peer::new(&n.name, n.rpc_addr, cluster.secret.as_bytes(), rpc.clone()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("disk-io-node admin: {}: {e}", n.name);
                continue;
            }
        };
        match admin_call(&peer, &req, args.timeout).await {
            // A node still starting cannot answer for the cluster: the next may.
            Ok(AdminReply::Error {
                kind: AdminErrorKind::NotReady,
                message,
            }) => eprintln!("disk-io-node admin: {}: {message}", n.name),
            Ok(reply) => return print_reply(&reply, args.json),
            Err(e) => eprintln!("disk-io-node admin: {e}"),
        }
    }
    ExitCode::from(3)
}

fn print_reply(reply: &AdminReply, json: bool) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(reply).expect("replies serialize")
        );
    } else {
        match reply {
            AdminReply::Done => println!("ok"),
            AdminReply::Users { users } => {
                println!(
                    "{:<24} {:<9} {:<6} {:<6} buckets",
                    "access key", "status", "read", "write"
                );
                for u in users {
                    println!(
                        "{:<24} {:<9} {:<6} {:<6} {}",
                        u.access_key,
                        format!("{:?}", u.status).to_lowercase(),
                        u.policy.read,
                        u.policy.write,
                        u.policy.buckets.join(",")
                    );
                }
            }
            AdminReply::Status(v) => print_status(v),
            AdminReply::Error { .. } => {}
        }
    }
    match reply {
        AdminReply::Error { kind, message } => {
            eprintln!("disk-io-node admin: {kind:?}: {message}");
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    }
}

fn print_status(v: &ClusterView) {
    println!(
        "as seen by {} ({}); heal queue {}, shards healed {}, set scans {}",
        v.node,
        if v.ready { "ready" } else { "starting" },
        v.heal_queue,
        v.healed,
        v.scans
    );
    println!(
        "{:<10} {:<10} {:>8} {:>8} {:>6}",
        "node", "breaker", "hb ok", "missed", "opens"
    );
    for n in &v.nodes {
        let breaker = if n.local {
            "(self)"
        } else {
            n.breaker.as_str()
        };
        println!(
            "{:<10} {:<10} {:>8} {:>8} {:>6}",
            n.name, breaker, n.heartbeats_ok, n.heartbeats_missed, n.breaker_opens
        );
    }
    for s in &v.sets {
        let state = if s.online >= s.write_quorum {
            "writable"
        } else if s.online >= s.read_quorum {
            "read-only"
        } else {
            "UNAVAILABLE"
        };
        println!(
            "set {}: {}/{} disks online, write quorum {}, read quorum {}: {}",
            s.index,
            s.online,
            s.disks.len(),
            s.write_quorum,
            s.read_quorum,
            state
        );
        for d in &s.disks {
            println!("  {:<10} {}", d.label, d.state);
        }
    }
}
