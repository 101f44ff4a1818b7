//! `cargo xtask setup`: install what this project needs on a fresh machine,
//! idempotently (the eBPF toolchain part lives in `ebpf.rs`). Each
//! requirement is checked first (a command answering, a rustup component
//! listed); only what is missing is installed, so a second run takes well
//! under a second.

use std::process::Command;

use crate::sys::{answers, apt_install, run as sh};

/// A command the project runs, and the Debian package providing it.
struct Tool {
    command: &'static str,
    package: &'static str,
    why: &'static str,
}

const TOOLS: &[Tool] = &[
    Tool {
        command: "mkfs.ext4",
        package: "e2fsprogs",
        why: "ext4 on loop devices for block-level stall tests",
    },
    Tool {
        command: "losetup",
        package: "mount",
        why: "loop devices",
    },
    Tool {
        command: "fio",
        package: "fio",
        why: "the reference engine `cargo xtask bench --vs-fio` compares against",
    },
    Tool {
        command: "promtool",
        package: "prometheus",
        why: "`promtool check metrics` on the probe loader's /metrics (tests)",
    },
    Tool {
        command: "ip",
        package: "iproute2",
        why: "network namespaces, veth pairs and bridges of the cluster harness",
    },
    Tool {
        command: "ss",
        package: "iproute2",
        why: "destroying a powered-off node's sockets (cluster harness)",
    },
    Tool {
        command: "nft",
        package: "nftables",
        why: "a powered-off node's namespace drops every packet (cluster harness)",
    },
    Tool {
        command: "mkfifo",
        package: "coreutils",
        why: "FIFO format-file test",
    }, // By absolute path: another `aws` or `python3` on PATH (pyenv, pip)
    // is not what the tests and the demo run.
    Tool {
        command: "/usr/bin/aws",
        package: "awscli",
        why: "the real S3 client of the S3 tests and `aws s3 cp` in the demo",
    },
    Tool {
        command: "/usr/lib/python3/dist-packages/boto3/__init__.py",
        package: "python3-boto3",
        why: "boto3, the S3 client of node/scripts/s3io.py (tests, demo, bench)",
    },
];

pub(crate) fn ensure() -> Result<(), String> {
    // A path is checked for existence (a module file is not a command).
    let present = |t: &&Tool| {
        if t.command.starts_with('/') {
            std::path::Path::new(t.command).exists()
        } else {
            answers(t.command)
        }
    };
    let missing: Vec<&Tool> = TOOLS.iter().filter(|t| !present(t)).collect();
    if !missing.is_empty() {
        let mut packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
        packages.sort_unstable();
        packages.dedup();
        for t in &missing {
            eprintln!(
                "setup: {} missing ({}), installing {}",
                t.command, t.why, t.package
            );
        }
        apt_install(&packages)?;
    }
    for component in ["rustfmt", "clippy"] {
        let listed = Command::new("rustup")
            .args(["component", "list", "--installed"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(component))
            .unwrap_or(false);
        if !listed {
            sh(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    // Nightly rust-src and bpf-linker for the eBPF probes, built from
    // source by the loader's build script (nightly also runs cargo-fuzz).
    crate::ebpf::ensure()?;
    // cargo-fuzz for the node RPC's fuzz targets (`cargo xtask ci` runs
    // them for a bounded time).
    if !answers("cargo-fuzz") {
        eprintln!("setup: cargo-fuzz missing (fuzzing the node RPC), installing it");
        sh(crate::sys::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}
