//! `probe-loader` as an SRE runs it: clear messages (never a panic) without
//! privilege, without BTF, with an unknown device, a bad table size or no
//! running loader; a real run that serves `status` and detaches cleanly on
//! SIGTERM; `status` failing on a dead loader; and exclusive ownership of
//! the pin directory against a paused loader.
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

/// `probe-loader run --listen 127.0.0.1:0 --pin-dir DIR EXTRA...`, run to
/// completion (for starts that are meant to be refused).
fn run_refused(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--listen",
        "127.0.0.1:0",
        "--pin-dir",
        dir.to_str().expect("utf-8 pin dir"),
    ];
    args.extend_from_slice(extra);
    run(&mut loader(&args))
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
    let out = run_refused(&dir, &["--btf", "/nonexistent/vmlinux"]);
    assert_clear_failure(&out, "no usable kernel BTF at /nonexistent/vmlinux");
    assert_clear_failure(&out, "CONFIG_DEBUG_INFO_BTF");
    // A file that is not BTF.
    let garbage = std::env::temp_dir().join(format!("not-btf-{}", std::process::id()));
    std::fs::write(&garbage, b"this is not BTF").expect("write");
    let out = run_refused(&dir, &["--btf", garbage.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&garbage);
    assert_clear_failure(&out, "not a BTF file");
    assert!(!dir.exists(), "a failed start left {}", dir.display());
}

#[test]
fn unknown_device_is_refused_by_name() {
    need_root();
    let dir = pin_dir("nodev");
    let out = run_refused(&dir, &["--device", "no-such-disk"]);
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
    let (mut child, ready) = spawn_ready(dir_s);
    assert!(ready.contains(dir_s), "{ready}");
    for m in PINS {
        assert!(Path::new(&dir).join(m).exists(), "{m} not pinned");
    }

    // A second loader on the same pins is refused, naming the first.
    second_start_refused(dir_s, child.id());

    let (code, st) = status_json(dir_s);
    assert_eq!(code, Some(0), "{st}");
    assert_eq!(st["loader_pid"], child.id());
    assert_eq!(st["loader_alive"], true);
    assert!(st["devices"].is_array());
    let out = run(&mut loader(&["status", "--pin-dir", dir_s]));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("IN-FLIGHT"));

    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status:?}");
    assert!(!dir.exists(), "pins left in {}", dir.display());
}

/// The maps a loader pins.
const PINS: [&str; 4] = ["INFLIGHT", "HIST", "COUNTERS", "LOADER_STATE"];

/// `status --json`: exit code and report.
fn status_json(dir: &str) -> (Option<i32>, serde_json::Value) {
    let out = run(&mut loader(&["status", "--json", "--pin-dir", dir]));
    let st = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status JSON: {e}; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), st)
}

/// A second `run` on `dir` is refused, naming the owner `pid`.
fn second_start_refused(dir: &str, pid: u32) -> Output {
    let out = run_refused(Path::new(dir), &[]);
    assert_clear_failure(
        &out,
        &format!("another probe loader (pid {pid}) is running"),
    );
    out
}

fn pid_of(child: &Child) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"))
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(pid_of(child), sig).expect("signal");
}

/// Waits (bounded) for `child` to exit.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "no exit within {BOUND:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `probe-loader run` on `dir`, up and ready; returns the ready line.
fn spawn_ready(dir: &str) -> (Child, String) {
    let mut child = loader(&["run", "--listen", "127.0.0.1:0", "--pin-dir", dir])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start probe-loader run");
    let lines = stderr_lines(&mut child);
    let ready = wait_line(&lines, "probe-loader: ready");
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || while lines.recv().is_ok() {});
    (child, ready)
}

/// Removes pins (and the directory) a killed loader left.
fn remove_pins(dir: &Path) {
    for m in PINS {
        let _ = std::fs::remove_file(dir.join(m));
    }
    let _ = std::fs::remove_dir(dir);
}

#[test]
fn a_bad_inflight_table_size_is_refused_with_its_bound_and_leaves_nothing() {
    need_root();
    let parent = pin_dir("inflight");
    let dir = parent.join("nested");
    for bad in ["0", "63", "1048577", "4000000000"] {
        let out = run_refused(&dir, &["--inflight-entries", bad]);
        assert_clear_failure(&out, "--inflight-entries");
        assert_clear_failure(&out, &format!("between 64 and 1048576 (got {bad})"));
        assert!(!dir.exists(), "a refused start left {}", dir.display());
        assert!(
            !parent.exists(),
            "a refused start left {}",
            parent.display()
        );
    }
}

#[test]
fn a_start_refused_after_making_the_pin_directory_removes_it() {
    need_root();
    // Not on bpffs: found out only once the directories exist.
    let tmp = tempfile::tempdir().expect("tempdir");
    let outer = tmp.path().join("outer");
    let dir = outer.join("pins");
    let out = run_refused(&dir, &[]);
    assert_clear_failure(&out, "is not on a bpffs");
    assert!(!outer.exists(), "a refused start left {}", outer.display());
    assert!(
        tmp.path().exists(),
        "it removed a directory it did not make"
    );
}

#[test]
fn status_on_a_dead_loader_exits_non_zero() {
    need_root();
    let dir = pin_dir("dead");
    let dir_s = dir.to_str().expect("utf-8");
    let (mut child, _) = spawn_ready(dir_s);
    let pid = child.id();
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    wait_exit(&mut child);
    // The pins outlive a killed loader; its heartbeat is still fresh, but
    // nobody owns the directory any more.
    assert!(dir.join("LOADER_STATE").exists());
    let out = run(&mut loader(&["status", "--pin-dir", dir_s]));
    assert_clear_failure(
        &out,
        &format!("the probe loader (pid {pid}) that pinned the maps in {dir_s} is not running"),
    );
    assert_clear_failure(&out, "no process owns the pin directory");
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT RUNNING"));
    let (code, st) = status_json(dir_s);
    assert_eq!(code, Some(1));
    assert_eq!(st["loader_alive"], false);
    assert_eq!(st["liveness"], "dead");
    assert_eq!(st["loader_pid"], pid);
    // A new loader takes the dead one's directory over.
    let (mut next, _lines) = spawn_ready(dir_s);
    let out = run(&mut loader(&["status", "--json", "--pin-dir", dir_s]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    signal(&next, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_exit(&mut next).success());
    assert!(!dir.exists(), "pins left in {}", dir.display());
    remove_pins(&dir);
}

#[test]
fn a_paused_loader_keeps_its_directory_and_never_removes_a_newer_loaders_pins() {
    use nix::sys::signal::Signal;
    need_root();
    let dir = pin_dir("paused");
    let dir_s = dir.to_str().expect("utf-8");
    let (mut first, _) = spawn_ready(dir_s);
    signal(&first, Signal::SIGSTOP);
    // Past the liveness window (1 s): its heartbeat is stale.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, st) = status_json(dir_s);
    assert_eq!(code, Some(1), "status of a paused loader: {st}");
    assert_eq!(st["liveness"], "stale");

    // A second loader may not take the directory of a paused one.
    let out = second_start_refused(dir_s, first.id());
    assert_clear_failure(&out, "paused or hung");
    for m in PINS {
        assert!(dir.join(m).exists(), "the refused start removed {m}");
    }

    // An operator clears the directory by hand and starts a new loader.
    remove_pins(&dir);
    let (mut second, _) = spawn_ready(dir_s);

    // The paused loader resumes and exits: the new pins are not its own.
    signal(&first, Signal::SIGCONT);
    signal(&first, Signal::SIGTERM);
    assert!(wait_exit(&mut first).success());
    for m in ["INFLIGHT", "HIST", "COUNTERS", "LOADER_STATE"] {
        assert!(
            dir.join(m).exists(),
            "the old loader removed the new loader's {m}"
        );
    }
    let out = run(&mut loader(&["status", "--json", "--pin-dir", dir_s]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(st["loader_pid"], second.id());
    assert_eq!(st["loader_alive"], true);

    signal(&second, Signal::SIGTERM);
    assert!(wait_exit(&mut second).success());
    assert!(!dir.exists(), "pins left in {}", dir.display());
}
