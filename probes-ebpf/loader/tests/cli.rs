//! `probe-loader` as an SRE runs it: clear messages (never a panic) without
//! privilege, without BTF, with an unknown device or no running loader; and
//! a real run that serves `status` and detaches cleanly on SIGTERM.
//!
//! Runs as root in CI (it drops to `nobody` itself for the privilege case).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_probe-loader");
const BOUND: Duration = Duration::from_secs(30);

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "missing privilege: root; these tests load eBPF programs and switch users; \
         run them as root, as CI does"
    );
}

fn pin_dir(tag: &str) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/disk-io-cli-{tag}-{}",
        std::process::id()
    ))
}

/// Runs the binary to completion, bounded.
fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start probe-loader");
    let deadline = Instant::now() + BOUND;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("probe-loader did not exit within {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// The run failed with exit code 1 and a message containing `expect`, and
/// did not panic.
fn assert_clear_failure(out: &Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "panic instead of a message:\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(stderr.contains(expect), "expected {expect:?} in:\n{stderr}");
}

fn loader(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env("RUST_LOG", "warn");
    c
}

#[test]
fn without_privilege_it_names_the_capabilities() {
    need_root();
    for args in [&["run", "--listen", "127.0.0.1:0"][..], &["status"][..]] {
        let mut cmd = loader(args);
        cmd.uid(65534).gid(65534);
        let out = run(&mut cmd);
        assert_clear_failure(
            &out,
            "missing privilege: CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)",
        );
        assert_clear_failure(&out, "probe-loader.service");
    }
}

#[test]
fn without_btf_it_says_so() {
    need_root();
    let dir = pin_dir("nobtf");
    let out = run(&mut loader(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--btf",
        "/nonexistent/vmlinux",
        "--pin-dir",
        dir.to_str().expect("utf-8"),
    ]));
    assert_clear_failure(&out, "no usable kernel BTF at /nonexistent/vmlinux");
    assert_clear_failure(&out, "CONFIG_DEBUG_INFO_BTF");
    // A file that is not BTF.
    let garbage = std::env::temp_dir().join(format!("not-btf-{}", std::process::id()));
    std::fs::write(&garbage, b"this is not BTF").expect("write");
    let out = run(&mut loader(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--btf",
        garbage.to_str().expect("utf-8"),
        "--pin-dir",
        dir.to_str().expect("utf-8"),
    ]));
    let _ = std::fs::remove_file(&garbage);
    assert_clear_failure(&out, "not a BTF file");
    assert!(!dir.exists(), "a failed start left {}", dir.display());
}

#[test]
fn unknown_device_is_refused_by_name() {
    need_root();
    let dir = pin_dir("nodev");
    let out = run(&mut loader(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--device",
        "no-such-disk",
        "--pin-dir",
        dir.to_str().expect("utf-8"),
    ]));
    assert_clear_failure(&out, "unknown block device `no-such-disk`");
}

#[test]
fn status_without_a_loader_says_none_runs() {
    need_root();
    let dir = pin_dir("none");
    let out = run(&mut loader(&[
        "status",
        "--pin-dir",
        dir.to_str().expect("utf-8"),
    ]));
    assert_clear_failure(&out, "no running probe loader");
}

/// Reads stderr lines on a thread (so a full pipe never blocks the child).
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + BOUND;
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(l) => {
                seen.push_str(&l);
                seen.push('\n');
            }
            Err(_) => panic!("no line with {needle:?} within {BOUND:?}; stderr so far:\n{seen}"),
        }
    }
}

#[test]
fn run_serves_status_and_detaches_on_sigterm() {
    need_root();
    let dir = pin_dir("run");
    let dir_s = dir.to_str().expect("utf-8");
    let mut child = loader(&["run", "--listen", "127.0.0.1:0", "--pin-dir", dir_s])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start probe-loader run");
    let lines = stderr_lines(&mut child);
    let ready = wait_line(&lines, "probe-loader: ready");
    assert!(ready.contains(dir_s), "{ready}");
    for m in ["INFLIGHT", "HIST", "COUNTERS", "LOADER_STATE"] {
        assert!(Path::new(&dir).join(m).exists(), "{m} not pinned");
    }

    // A second loader on the same pins is refused, naming the first.
    let out = run(&mut loader(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--pin-dir",
        dir_s,
    ]));
    assert_clear_failure(
        &out,
        &format!("another probe loader (pid {}) is running", child.id()),
    );

    let out = run(&mut loader(&["status", "--json", "--pin-dir", dir_s]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(st["loader_pid"], child.id());
    assert_eq!(st["loader_alive"], true);
    assert!(st["devices"].is_array());
    let out = run(&mut loader(&["status", "--pin-dir", dir_s]));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("IN-FLIGHT"));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no exit within {BOUND:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(!dir.exists(), "pins left in {}", dir.display());
}
