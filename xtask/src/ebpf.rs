//! The eBPF toolchain and build: what `probes-ebpf/kernel` needs to build
//! from source (DESIGN.md, "This machine"), installed idempotently, and
//! `cargo xtask build-ebpf`.
//!
//! * LLVM 22 development packages (bpf-linker links against them);
//! * the nightly toolchain with `rust-src` (`-Z build-std=core` for
//!   `bpfel-unknown-none`);
//! * `bpf-linker`, built with `cargo install` against LLVM 22 (about five
//!   minutes from clean; skipped when `bpf-linker --version` answers).
//!
//! The object itself is built by the loader's `build.rs` (so any cargo
//! build of the workspace rebuilds it when the kernel sources change);
//! `build-ebpf` runs that build on purpose and reports where the object is.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::sys::{apt_install, cargo, run as sh};

/// Debian packages bpf-linker builds against.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Where those packages put `llvm-config`; first on PATH for the install
/// only, so bpf-linker's build finds LLVM 22.
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
/// The bpf-linker release that builds here with LLVM 22 and Rust 1.95.
const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn output(cmd: &mut Command) -> Option<String> {
    cmd.stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn cargo_bin() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin"))
}

/// `bpf-linker` from PATH, or from `~/.cargo/bin` (where `cargo install`
/// puts it, and where the loader's build script also looks).
fn bpf_linker() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(cargo_bin())
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

fn dpkg_installed(package: &str) -> bool {
    output(Command::new("dpkg").args(["-s", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Installs whatever of the eBPF toolchain is missing; fast when all is
/// there (three queries, no network).
pub(crate) fn ensure() -> Result<(), String> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "setup: eBPF toolchain: installing {} (bpf-linker links against LLVM 22)",
            missing.join(" ")
        );
        apt_install(&missing)?;
    }

    let has_src = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .is_some_and(|s| s.lines().any(|l| l.trim().starts_with("rust-src")));
    if !has_src {
        eprintln!("setup: eBPF toolchain: nightly with rust-src (for -Z build-std=core)");
        let have_nightly =
            quiet(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--version"]));
        if have_nightly {
            sh(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                NIGHTLY,
            ]))?;
        } else {
            sh(Command::new("rustup").args([
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
        }
    }

    let linker_ok = bpf_linker().is_some_and(|p| quiet(Command::new(p).arg("--version")));
    if !linker_ok {
        eprintln!(
            "setup: eBPF toolchain: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 \
             (about 5 minutes, once)"
        );
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(PathBuf::from(LLVM_BIN)).chain(std::env::split_paths(&path)),
        )
        .map_err(|e| format!("building PATH: {e}"))?;
        sh(cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path))?;
    }
    Ok(())
}

/// `cargo xtask build-ebpf`: toolchain, then the loader's build (whose
/// build script compiles `probes-ebpf/kernel`); prints the object's path.
pub(crate) fn build(rest: &[String]) -> Result<(), String> {
    ensure()?;
    let release = !rest.iter().any(|a| a == "--debug");
    let mut cmd = cargo();
    cmd.args(["build", "-p", "probes-ebpf-loader"]);
    if release {
        cmd.arg("--release");
    }
    sh(&mut cmd)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let object = target.join("ebpf/bpfel-unknown-none/release/probes");
    let len = std::fs::metadata(&object)
        .map(|m| m.len())
        .map_err(|e| format!("the build did not leave {}: {e}", object.display()))?;
    eprintln!(
        "xtask build-ebpf: eBPF object {} ({len} bytes), embedded in probe-loader; \
         run it with `cargo run --release -p probes-ebpf-loader --bin probe-loader -- run`",
        object.display()
    );
    Ok(())
}
