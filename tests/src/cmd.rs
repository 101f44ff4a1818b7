//! Running external tools (`losetup`, `mkfs.ext4`, `ip`, `nft`) and blocking syscalls with a
//! bound.

use std::ffi::OsStr;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};

/// Where system tools live; `PATH` of a test runner often lacks the sbin directories.
const EXTRA_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Finds `name` in `PATH` or the usual system directories.
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn read_pipe(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        // A reader thread per pipe so a chatty tool can never fill a pipe and stall.
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        });
    }
    rx
}

pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args...`, waiting at most `timeout`; returns its stdout.
pub(crate) fn run(program: &str, args: &[&OsStr], timeout: Duration) -> Result<String> {
    let mut cmd = Command::new(tool(program)?);
    cmd.args(args);
    run_command(cmd, timeout)
}

/// The full path of the system tool `program`, or a `Command` error naming where it was
/// looked for.
pub(crate) fn tool(program: &str) -> Result<PathBuf> {
    find_tool(program).ok_or_else(|| HarnessError::Command {
        cmd: program.to_owned(),
        status: None,
        stderr: format!("`{program}` not found in PATH or {EXTRA_DIRS:?}"),
    })
}

/// Runs a prepared command (its stdio is replaced: no stdin, captured output), waiting at
/// most `timeout`; returns its stdout.
pub(crate) fn run_command(mut cmd: Command, timeout: Duration) -> Result<String> {
    let cmdline = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HarnessError::Command {
            cmd: cmdline.clone(),
            status: None,
            stderr: e.to_string(),
        })?;
    let stdout = read_pipe(child.stdout.take());
    let stderr = read_pipe(child.stderr.take());
    let Some(status) = wait_child(&mut child, timeout) else {
        // A tool stuck in uninterruptible sleep may ignore the kill; we do not wait for it.
        let _ = child.kill();
        let _ = wait_child(&mut child, Duration::from_millis(100));
        return Err(HarnessError::Timeout {
            what: format!("`{cmdline}` did not finish within {timeout:?}"),
        });
    };
    let grace = Duration::from_secs(1);
    let stdout = stdout.recv_timeout(grace).unwrap_or_default();
    let stderr = stderr.recv_timeout(grace).unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(HarnessError::Command {
            cmd: cmdline,
            status: Some(status),
            stderr: stderr.trim().to_owned(),
        })
    }
}

/// Runs a possibly blocking operation (a mount or unmount syscall that may wait on a hung
/// device) on its own thread and waits at most `timeout`. On timeout the thread is left
/// behind; it finishes whenever the device answers or is aborted.
pub(crate) fn bounded<T, F>(what: &str, timeout: Duration, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("harness-bounded".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| crate::error::io_context(format!("spawning a thread for {what}"), e))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(HarnessError::Timeout {
            what: format!("{what} did not finish within {timeout:?}"),
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(HarnessError::Io(std::io::Error::other(
            format!("the thread running {what} panicked"),
        ))),
    }
}
