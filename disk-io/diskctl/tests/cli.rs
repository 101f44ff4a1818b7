//! The CLI's JSON contract: one object, `ok` and `elapsed_us` always,
//! `error_kind` on failure.

use std::process::Command;

fn diskctl(args: &[&str]) -> (serde_json::Value, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_diskctl"))
        .args(args)
        .output()
        .expect("run diskctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {text:?}"));
    assert!(v["ok"].is_boolean(), "{v}");
    assert!(v["elapsed_us"].is_u64(), "{v}");
    (v, out.status.success())
}

#[test]
fn format_id_info_probe() {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path().to_str().expect("utf8");
    let (v, ok) = diskctl(&["id", dir, "--json", "--deadline", "2s"]);
    assert!(!ok);
    assert_eq!(v["error_kind"], "unformatted");
    let (v, ok) = diskctl(&["format", dir, "--set", "2", "--index", "7", "--json"]);
    assert!(ok, "{v}");
    let uuid = v["disk_id"]["uuid"].as_str().expect("uuid").to_string();
    let (v, _) = diskctl(&["format", dir, "--json"]);
    assert_eq!(v["error_kind"], "already_formatted");
    let (v, ok) = diskctl(&["id", dir, "--json", "--deadline", "500ms"]);
    assert!(ok, "{v}");
    assert_eq!(v["disk_id"]["uuid"], uuid.as_str());
    assert_eq!(v["disk_id"]["set_index"], 2);
    let (v, ok) = diskctl(&["info", dir, "--json"]);
    assert!(ok, "{v}");
    assert!(v["info"]["total"].as_u64().expect("total") > 0);
    assert_eq!(v["info"]["state"], "online");
    let (v, ok) = diskctl(&["probe", dir, "--json", "--deadline", "2s"]);
    assert!(ok, "{v}");
    assert!(v["probe_us"].is_u64());
}

#[test]
fn missing_disk_is_a_typed_error() {
    let (v, ok) = diskctl(&["info", "/nonexistent/disk-io-nowhere", "--json"]);
    assert!(!ok);
    assert_eq!(v["error_kind"], "disk_not_found");
    assert_eq!(v["unavailable"], true);
}

/// What a caller of the CLI sees: the JSON answer, the exit status, and
/// how long until the process was gone *and* its stdout and stderr were
/// closed (what a wrapper such as `timeout` or a pipeline waits for).
fn diskctl_timed(args: &[&str]) -> (serde_json::Value, bool, Duration) {
    // The test itself must not hang if the CLI does: wait at most this long.
    const GIVE_UP: Duration = Duration::from_secs(20);
    let t0 = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_diskctl"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run diskctl");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(GIVE_UP) {
        Ok(out) => out.expect("wait for diskctl"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("diskctl {args:?} neither exited nor closed its output within {GIVE_UP:?}");
        }
    };
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {text:?}"));
    (v, out.status.success(), took)
}

use std::process::Stdio;
use std::time::{Duration, Instant};

use disk_io::{Deadline, Disk, LocalDisk};
use disk_io_harness::{privilege, FaultFs};

fn setup() -> Deadline {
    Deadline::after(Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_hung_disk_the_cli_answers_and_exits_by_its_deadline() {
    privilege::require_root().expect("this test mounts FUSE");
    privilege::require_fuse().expect("this test mounts FUSE");
    let (_scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
    let ctl = fs.control();
    let dir = fs.mountpoint().to_str().expect("utf8").to_string();
    {
        let disk = LocalDisk::open(fs.mountpoint(), setup())
            .await
            .expect("open");
        disk.format(0, 0, false, setup()).await.expect("format");
    }
    ctl.hang();
    // The deadline is 300 ms, the grace 500 ms: the whole process (and its
    // pipes) must be gone well before its I/O could ever finish.
    let bound = Duration::from_millis(300 + 500) + Duration::from_secs(1);
    for cmd in ["id", "info", "probe", "format"] {
        let mut args = vec![cmd, dir.as_str(), "--json", "--deadline", "300ms"];
        if cmd == "format" {
            args.push("--force");
        }
        let (v, ok, took) = diskctl_timed(&args);
        assert!(!ok, "{cmd}: {v}");
        assert_eq!(v["error_kind"], "deadline_exceeded", "{cmd}: {v}");
        assert_eq!(v["unavailable"], true, "{cmd}: {v}");
        assert!(
            took < bound,
            "{cmd}: diskctl took {took:?} to exit and close its output on a hung disk"
        );
    }
    assert!(
        ctl.hung_requests() > 0,
        "the FUSE layer really held requests"
    );
    ctl.release();
    let (v, ok, _) = diskctl_timed(&["id", dir.as_str(), "--json"]);
    assert!(ok, "after release: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspecting_a_live_disk_changes_nothing() {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path().to_str().expect("utf8").to_string();
    let disk = LocalDisk::open(d.path(), setup())
        .await
        .expect("owner open");
    disk.format(1, 2, false, setup()).await.expect("format");
    disk.make_vol("v", setup()).await.expect("make_vol");
    // A leftover file in tmp that only the owner's next open may move.
    let marker = d.path().join(".disk-io/tmp/marker");
    std::fs::write(&marker, b"m").expect("marker");
    // A writer running all along: inspection must not make it fail.
    let writer = {
        let disk = disk.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..400 {
                if let Err(e) = disk
                    .write_all("v", &format!("obj{}", i % 8), b"data", setup())
                    .await
                {
                    failures.push(e);
                }
            }
            failures
        })
    };
    for _ in 0..5 {
        for cmd in ["id", "info", "probe"] {
            let (v, ok) = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || diskctl(&[cmd, dir.as_str(), "--json"])
            })
            .await
            .expect("join");
            assert!(ok, "{cmd} on a live disk: {v}");
        }
    }
    let (v, ok) = diskctl(&["format", dir.as_str(), "--force", "--json"]);
    assert!(!ok, "format of a live node's disk must be refused: {v}");
    assert_eq!(v["error_kind"], "in_use");
    let failures = writer.await.expect("writer");
    assert!(failures.is_empty(), "the live writer failed: {failures:?}");
    assert!(marker.exists(), "inspection moved the owner's tmp");
    assert_eq!(
        disk.disk_id(setup()).await.expect("id").set_index,
        1,
        "identity unchanged"
    );
}

#[test]
fn inspecting_a_plain_directory_creates_nothing() {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path().to_str().expect("utf8");
    for cmd in ["id", "probe"] {
        let (v, ok) = diskctl(&[cmd, dir, "--json"]);
        assert!(!ok, "{cmd}: {v}");
        assert_eq!(v["error_kind"], "unformatted", "{cmd}: {v}");
    }
    let (v, ok) = diskctl(&["info", dir, "--json"]);
    assert!(ok, "{v}");
    assert!(v["info"]["id"].is_null(), "not formatted: {v}");
    let left: Vec<_> = std::fs::read_dir(d.path()).expect("ls").collect();
    assert!(left.is_empty(), "inspection created {left:?}");
}

#[test]
fn inspecting_works_on_a_read_only_mount() {
    privilege::require_root().expect("this test bind-mounts a directory read-only");
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let d = tempfile::tempdir().expect("tempdir");
    let src = d.path().join("src");
    let ro = d.path().join("ro");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::create_dir_all(&ro).expect("mkdir");
    let (v, ok) = diskctl(&["format", src.to_str().expect("utf8"), "--json"]);
    assert!(ok, "{v}");
    mount(
        Some(&src),
        &ro,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
    let _guard = Unmount(ro.clone());
    mount(
        None::<&str>,
        &ro,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .expect("remount read-only");
    let ro_dir = ro.to_str().expect("utf8");
    let (v, ok) = diskctl(&["id", ro_dir, "--json"]);
    assert!(ok, "id on a read-only mount: {v}");
    let (v, ok) = diskctl(&["info", ro_dir, "--json"]);
    assert!(ok, "info on a read-only mount: {v}");
    // The probe writes, so on a read-only mount it reports the file system's
    // answer, as a typed error.
    let (v, ok) = diskctl(&["probe", ro_dir, "--json"]);
    assert!(!ok, "{v}");
    assert_eq!(v["error_kind"], "read_only", "{v}");
}

#[test]
fn the_io_process_holds_none_of_the_callers_descriptors() {
    use std::os::fd::AsRawFd;
    privilege::require_root().expect("this test mounts FUSE");
    privilege::require_fuse().expect("this test mounts FUSE");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
    let ctl = fs.control();
    rt.block_on(async {
        let disk = LocalDisk::open(fs.mountpoint(), setup())
            .await
            .expect("open");
        disk.format(0, 0, false, setup()).await.expect("format");
    });
    // A pipe the caller did not mark close-on-exec, as a shell's `3>&1` or
    // a wrapper's socket would be.
    let (rd, wr) = nix::unistd::pipe().expect("pipe");
    nix::fcntl::fcntl(
        &wr,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .expect("clear CLOEXEC");
    ctl.hang();
    let dir = fs.mountpoint().to_str().expect("utf8").to_string();
    let (v, ok, _) = diskctl_timed(&["id", dir.as_str(), "--json", "--deadline", "300ms"]);
    assert!(!ok, "{v}");
    assert_eq!(v["error_kind"], "deadline_exceeded");
    // The CLI is gone and its stuck worker (still in the kernel on the hung
    // mount, until the release below) must not hold our pipe's write end:
    // with ours closed, a read sees EOF while the mount is still hung.
    // (Processes that other tests of this binary start meanwhile inherit
    // the write end for as long as they run, so wait for them, boundedly.)
    drop(wr);
    nix::fcntl::fcntl(
        &rd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("nonblocking");
    let t0 = Instant::now();
    let mut buf = [0u8; 1];
    loop {
        match nix::unistd::read(&rd, &mut buf) {
            Ok(0) => break,
            r if t0.elapsed() > Duration::from_secs(15) => panic!(
                "the pipe (fd {}) is still held open, most likely by diskctl's stuck I/O process ({r:?})",
                rd.as_raw_fd()
            ),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    assert!(ctl.is_hung(), "checked while the worker was still stuck");
    ctl.release();
}
