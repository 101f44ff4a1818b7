//! `cargo xtask <command>`: the project's automation, runnable on a fresh
//! machine of the project's kind (Debian, root, Rust toolchain present).
//!
//! * `setup`  install whatever is missing (idempotent, fast when present)
//! * `demo`   setup, then the README's main job: the field report's power-off on a 4x4 S3 cluster
//! * `ci`     setup, then fmt, clippy and every test (what `.ci/run` calls)
//! * `bench`  the fio-style bench engine (engines side by side, `--vs-fio`, `--suite`)
//! * `bench-deadline`  deadline overshoot and fail-fast latency (prints figures)
//! * `build-ebpf`  setup, then build the eBPF probes from source (`ebpf.rs`)
//! * `bench-probes`  fio 4 KiB randread with and without the probes (prints the ratio)
//! * `bench-rpc`  remote vs local latency/throughput, dead-peer detection (prints figures)
//! * `bench-locks`  quorum-lock latency with a dead node, owner power-off to lock free
//! * `fuzz-rpc`  the node RPC's cargo-fuzz targets for a bounded time (nightly, cargo-fuzz)
//! * `cluster`  the cluster harness CLI (`up|status|poweroff NODE|poweron NODE|down`, ...)

use std::process::ExitCode;
use std::time::Instant;

mod ebpf;
mod setup;
mod sys;

use sys::{cargo, run};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        usage();
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match cmd.as_str() {
        "setup" => setup::ensure(),
        "demo" => setup::ensure().and_then(|()| demo(rest)),
        "demo-disks" => setup::ensure().and_then(|()| demo_disks(rest)),
        "ci" => setup::ensure().and_then(|()| ci()),
        "bench-deadline" => setup::ensure().and_then(|()| bench_deadline(rest)),
        "bench" => setup::ensure().and_then(|()| bench(rest)),
        "build-ebpf" => setup::ensure().and_then(|()| ebpf::build(rest)),
        "bench-probes" => setup::ensure()
            .and_then(|()| cargo_run("probes-ebpf-loader", &["--example", "bench-probes"], rest)),
        "cluster" => setup::ensure().and_then(|()| cluster(rest)),
        "bench-rpc" => setup::ensure().and_then(|()| node_bench("rpc", rest)),
        "bench-locks" => setup::ensure().and_then(|()| node_bench("locks", rest)),
        "bench-s3" => setup::ensure().and_then(|()| node_bench("s3", rest)),
        "fuzz-rpc" => fuzz_rpc(rest),
        "help" | "-h" | "--help" => {
            usage();
            Ok(())
        }
        other => Err(format!("unknown command {other:?}; try `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo bench -p disk-io-node --bench NAME -- ARGS`.
fn node_bench(name: &str, rest: &[String]) -> Result<(), String> {
    run(cargo()
        .args(["bench", "-p", "disk-io-node", "--bench", name, "--"])
        .args(rest))
}

fn usage() {
    eprintln!(
        "usage: cargo xtask <command>\n\
         \n  setup            install missing system packages and toolchain parts (idempotent)\
         \n  demo             setup, then the field report's scenario: 4x4 cluster, 3.1 GiB S3 upload, node4 powered off at 30 %\
         \n  demo-disks       setup, then the local-disk demo: 4 disks, one hung mid-run, recovery\
         \n  ci               setup, then cargo fmt --check, clippy -D warnings, all tests\
         \n  bench [fio-style options]  setup, then the fio-style bench engine (`cargo xtask bench --help`)\
         \n  bench-deadline   setup, then measure deadline overshoot and fail-fast latency\
         \n  build-ebpf       setup (incl. nightly rust-src, bpf-linker), then build the eBPF probes from source\
         \n  bench-probes     setup, then fio 4 KiB randread QD32 with and without the probes (ratio)\
         \n  bench-rpc [--reads N --shard-mib N --writers N --poweroffs N]\
         \n                   remote vs local 4 KiB reads and shard writes; dead-peer detection over power-offs\
         \n  bench-locks [--rounds N --locks N]\
         \n                   quorum-lock latency healthy vs one node of four off; owner power-off to lock free\
         \n  bench-s3 [--rounds N --size-mib N]\
         \n                   1 GiB S3 PUT/GET healthy vs node4 off, io_uring vs tokio-fs disks, detection, IAM latency\
         \n  fuzz-rpc [--seconds N]  each node-RPC cargo-fuzz target for N s (default 60; needs nightly + cargo-fuzz)\
         \n  cluster up|status|poweroff NODE|poweron NODE|kill NODE|restart NODE|logs NODE|down\
         \n                   setup, then the cluster harness CLI (`cargo xtask cluster --help`)"
    );
}

/// `cargo run --release` of one target of a workspace package, passing
/// `rest` through.
fn cargo_run(package: &str, target: &[&str], rest: &[String]) -> Result<(), String> {
    run(cargo()
        .args(["run", "--release", "--quiet", "-p", package])
        .args(target)
        .arg("--")
        .args(rest))
}

/// The field report's scenario on a cluster of full nodes (the node
/// binary is built first: the example runs it from `target/release`).
fn demo(rest: &[String]) -> Result<(), String> {
    run(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "disk-io-node",
        "--bins",
    ]))?;
    cargo_run("disk-io-node", &["--example", "field_report_demo"], rest)
}

/// The local-disk demo: four disks, one hung mid-run, recovery.
fn demo_disks(rest: &[String]) -> Result<(), String> {
    cargo_run("disk-io-harness", &["--example", "demo"], rest)
}

/// The cluster harness CLI. The node binaries are built first: `up` without a command
/// runs the echo stand-in built next to the CLI.
fn cluster(rest: &[String]) -> Result<(), String> {
    run(cargo().args(["build", "--quiet", "-p", "disk-io-harness", "--bins"]))?;
    let mut args: Vec<String> = rest.to_vec();
    // `up` without a node command starts full nodes (S3, admin, sets):
    // the release `disk-io-node`, ready once it serves S3, with 6 s lock
    // leases so a fresh cluster is ready in seconds.
    if args.first().is_some_and(|a| a == "up") && !args.iter().any(|a| a == "--") {
        run(cargo().args(["build", "--release", "--quiet", "-p", "disk-io-node"]))?;
        let node = workspace_root().join("target/release/disk-io-node");
        if !args.iter().any(|a| a == "--ready") {
            args.extend(["--ready".into(), "s3".into()]);
        }
        if !args.iter().any(|a| a == "--lock-ttl-ms") {
            args.extend(["--lock-ttl-ms".into(), "6000".into()]);
        }
        args.extend([
            "--".into(),
            node.display().to_string(),
            "serve".into(),
            "--config".into(),
            "{config}".into(),
            "--node".into(),
            "{node}".into(),
            "--format-missing".into(),
        ]);
    }
    run(cargo()
        .args([
            "run",
            "--quiet",
            "-p",
            "disk-io-harness",
            "--bin",
            "disk-io-cluster",
            "--",
        ])
        .args(args))
}

/// The workspace's root directory.
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn bench(rest: &[String]) -> Result<(), String> {
    cargo_run("disk-io-bench", &["--bin", "diskbench"], rest)
}

fn bench_deadline(rest: &[String]) -> Result<(), String> {
    cargo_run("disk-io-bench", &["--bin", "deadline-bench"], rest)
}

/// Seconds `cargo xtask ci` fuzzes each node-RPC target.
const CI_FUZZ_SECONDS: u64 = 20;

/// Runs each cargo-fuzz target of `rpc/fuzz` for a bounded time.
fn fuzz_rpc(rest: &[String]) -> Result<(), String> {
    let seconds = rest
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| rest.get(i + 1))
        .map_or(Ok(60u64), |v| {
            v.parse().map_err(|_| format!("--seconds {v:?}"))
        })?;
    if !sys::answers("cargo-fuzz") {
        return Err(
            "cargo-fuzz is not installed: `cargo install cargo-fuzz` (needs the nightly toolchain)"
                .into(),
        );
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rpc/fuzz");
    for target in ["decode", "paths"] {
        run(std::process::Command::new("cargo")
            .current_dir(&dir)
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048"))?;
    }
    Ok(())
}

fn ci() -> Result<(), String> {
    let started = Instant::now();
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The library a storage node links, as it links it: default features
    // only (the workspace build below unifies features across members).
    run(cargo().args([
        "clippy",
        "-p",
        "disk-io",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args(["test", "-p", "disk-io", "--no-fail-fast"])
        .env("RUST_BACKTRACE", "1"))?;
    // Tests that mount FUSE, attach loop devices or load BPF need root; they
    // fail (never skip) with a message naming the privilege when it is missing.
    run(cargo()
        .args([
            "test",
            "--workspace",
            "--no-fail-fast",
            "--exclude",
            "disk-io-node",
        ])
        .env("RUST_BACKTRACE", "1"))?;
    // The node's tests run full clusters of node processes moving 1 GiB
    // objects through S3 and assert sub-second bounds on a 2-core machine:
    // built optimised, as the node runs in production (a debug build of
    // hyper, tonic and s3s needs several times the CPU for the same bytes).
    run(cargo()
        .args(["test", "--release", "-p", "disk-io-node", "--no-fail-fast"])
        .env("RUST_BACKTRACE", "1"))?;
    // The node RPC's decoders and path handling under coverage-guided
    // fuzzing, for a bounded time per target (the seeded, stable
    // `fuzz_smoke` test above runs the same bodies on every build).
    fuzz_rpc(&["--seconds".into(), CI_FUZZ_SECONDS.to_string()])?;
    eprintln!("xtask ci: all checks passed in {:.0?}", started.elapsed());
    Ok(())
}
