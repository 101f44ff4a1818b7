//! Builds the eBPF object from `probes-ebpf/kernel` and hands it to the
//! crate as `$OUT_DIR/probes.bpf.o` (included with `include_bytes_aligned!`).
//!
//! The kernel crate is not a workspace member: it builds for
//! `bpfel-unknown-none` with the nightly toolchain, `-Z build-std=core` and
//! bpf-linker, pinned by its own `Cargo.lock` (`--locked`). This script does
//! what `aya-build` does, plus:
//!
//! * it checks the toolchain first and fails with one clear message naming
//!   `cargo xtask setup` (instead of a nested cargo error);
//! * the nested build's target directory is `<target>/ebpf`, shared by
//!   every profile (debug, release, clippy), so the object and `core` are
//!   built once rather than once per `OUT_DIR`.
//!
//! Std only: nothing to download before the toolchain check.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TOOLCHAIN: &str = "nightly";
const BPF_TARGET: &str = "bpfel-unknown-none";
const BIN: &str = "probes";

fn main() {
    if let Err(msg) = build() {
        eprintln!("\nerror: cannot build the eBPF probes (probes-ebpf/kernel):\n  {msg}\n");
        std::process::exit(1);
    }
}

/// Directories to search for `rustup` and `bpf-linker` besides `PATH`
/// (`cargo install` puts them in `$CARGO_HOME/bin`).
fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs
}

fn search_path() -> OsString {
    let mut dirs: Vec<PathBuf> = env::split_paths(&env::var_os("PATH").unwrap_or_default())
        // rustup puts toolchain directories on PATH for build scripts; the
        // nested build must not pick the stable toolchain's binaries.
        .filter(|d| !d.components().any(|c| c.as_os_str() == "toolchains"))
        .collect();
    dirs.extend(cargo_bin_dirs());
    env::join_paths(dirs).unwrap_or_default()
}

fn find(tool: &str, path: &OsString) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

const SETUP: &str = "run `cargo xtask setup` (it installs the nightly toolchain's rust-src and \
                     bpf-linker; see DESIGN.md \"This machine\")";

fn build() -> Result<(), String> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("no CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("no OUT_DIR")?);
    let probes = manifest_dir
        .parent()
        .ok_or("loader has no parent directory")?
        .to_path_buf();
    let kernel = probes.join("kernel");
    let common = probes.join("common");
    for p in [
        kernel.join("src"),
        kernel.join("Cargo.toml"),
        kernel.join("Cargo.lock"),
        common.join("src"),
        common.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    let path = search_path();
    let rustup = find("rustup", &path)
        .ok_or_else(|| format!("`rustup` not found in PATH or ~/.cargo/bin; {SETUP}"))?;
    if find("bpf-linker", &path).is_none() {
        return Err(format!(
            "`bpf-linker` not found in PATH or ~/.cargo/bin; {SETUP}"
        ));
    }
    let sysroot = Command::new(&rustup)
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .ok_or_else(|| format!("the `{TOOLCHAIN}` toolchain is not installed; {SETUP}"))?;
    if !sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
    {
        return Err(format!(
            "the `{TOOLCHAIN}` toolchain has no rust-src component (needed for -Z build-std=core); {SETUP}"
        ));
    }

    let target_dir = shared_target_dir(&out_dir);
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    // The same flags aya-build passes: the target arch cfg aya-ebpf reads,
    // full debug info and BTF in the object (for verifier messages).
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");

    let mut cmd = Command::new(&rustup);
    cmd.args(["run", TOOLCHAIN, "cargo", "build", "--release", "--locked"])
        .args(["--target", BPF_TARGET, "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(kernel.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", &path)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // What the outer cargo (or clippy) set for this build must not leak into
    // the nested one: it would pick the stable rustc, clippy-driver, or the
    // outer target directory.
    for key in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "CLIPPY_ARGS",
    ] {
        cmd.env_remove(key);
    }
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start `rustup run {TOOLCHAIN} cargo`: {e}; {SETUP}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo +{TOOLCHAIN} build --target {BPF_TARGET}` of {} failed ({}):\n{}\n  \
             if the toolchain is missing, {SETUP}",
            kernel.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let object = target_dir.join(BPF_TARGET).join("release").join(BIN);
    let dest = out_dir.join("probes.bpf.o");
    fs::copy(&object, &dest)
        .map_err(|e| format!("copying {} to {}: {e}", object.display(), dest.display()))?;
    Ok(())
}

/// `<target>/ebpf`, found from `OUT_DIR` = `<target>/<profile>/build/<pkg>/out`;
/// falls back to a directory inside `OUT_DIR` for unusual layouts.
fn shared_target_dir(out_dir: &Path) -> PathBuf {
    let mut up = out_dir.ancestors();
    let build = up.nth(2);
    let target = up.nth(1);
    match (build, target) {
        (Some(b), Some(t)) if b.file_name().is_some_and(|n| n == "build") => t.join("ebpf"),
        _ => out_dir.join("ebpf-target"),
    }
}
