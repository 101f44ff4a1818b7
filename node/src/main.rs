//! `disk-io-node serve --config cluster.toml --node NAME`: serves the node's
//! disks over the node RPC until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use disk_io_node::NodeOptions;
use disk_io_rpc::ClusterConfig;

#[derive(Parser)]
#[command(name = "disk-io-node", about = "disk-io reference storage node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve this node's disks over the node RPC.
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let Command::Serve {
        config,
        node,
        format_missing,
    } = cli.command;
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
    let outcome = runtime.block_on(async {
        let cluster = ClusterConfig::load(&config)?;
        let mut opts = NodeOptions::new(&node);
        opts.format_missing = format_missing;
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
