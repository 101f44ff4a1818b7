//! A node's process: spawned into its namespace with its output in a log file, stopped,
//! killed and waited for with bounds.
//!
//! A process is identified by its pid *and* its start time (field 22 of `/proc/PID/stat`),
//! so a separate CLI invocation acting on a recorded pid never signals an unrelated
//! process that reused it. A process started by this one is also held as a [`Child`], which
//! is how it gets reaped; one adopted from a record (its parent is gone) is reaped by init,
//! and counts as exited once it is a zombie with no thread left but the leader: only then
//! has the kernel closed its sockets.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::{io_context, HarnessError, Result};

/// What `/proc` says about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Running or sleeping.
    Running,
    /// Stopped by a signal (every thread, `T`).
    Stopped,
    /// Gone, a zombie, or a different process under the same pid.
    Exited(Option<ExitStatus>),
}

/// `(state, start time in clock ticks)` of a task from its `stat` file.
fn stat_of(path: &Path) -> Option<(char, u64)> {
    let text = fs::read_to_string(path).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields resume after
    // the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Start time (clock ticks since boot) of process `pid`, if it exists.
pub(crate) fn start_ticks_of(pid: i32) -> Option<u64> {
    stat_of(Path::new(&format!("/proc/{pid}/stat"))).map(|(_, start)| start)
}

/// A node process (see the module docs).
#[derive(Debug)]
pub(crate) struct NodeProcess {
    pid: i32,
    start_ticks: u64,
    child: Option<Child>,
    exit: Option<ExitStatus>,
}

impl NodeProcess {
    /// Spawns `command` with stdin from `/dev/null` and stdout and stderr appended to
    /// `log` (after a header line). With `new_session` the process leaves the caller's
    /// session and process group, so a terminal's Ctrl-C aimed at a later command cannot
    /// reach it (the CLI's nodes outlive the invocation that started them).
    pub(crate) fn spawn(
        mut command: Command,
        log: &Path,
        new_session: bool,
    ) -> Result<NodeProcess> {
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| io_context(format!("opening log {}", log.display()), e))?;
        let when = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        writeln!(
            out,
            "=== disk-io-harness: starting {} (unix time {when}) ===",
            crate::cmd::describe(&command)
        )
        .map_err(|e| io_context(format!("writing log {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| io_context("duplicating the log descriptor", e))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        if new_session {
            // SAFETY: runs in the forked child before exec; setsid(2) is a single
            // async-signal-safe system call and nothing is allocated.
            unsafe {
                command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
            }
        }
        let cmdline = crate::cmd::describe(&command);
        let child = command.spawn().map_err(|e| HarnessError::Command {
            cmd: cmdline,
            status: None,
            stderr: e.to_string(),
        })?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        // The child exists until we reap it, so its stat file is there (a zombie at worst).
        let start_ticks = start_ticks_of(pid).unwrap_or(0);
        Ok(NodeProcess {
            pid,
            start_ticks,
            child: Some(child),
            exit: None,
        })
    }

    /// A process known only from a record (pid and start time), not our child.
    pub(crate) fn adopt(pid: i32, start_ticks: u64) -> NodeProcess {
        NodeProcess {
            pid,
            start_ticks,
            child: None,
            exit: None,
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    pub(crate) fn start_ticks(&self) -> u64 {
        self.start_ticks
    }

    /// Where the process is now; reaps our child if it has exited.
    ///
    /// Exited means every thread is gone, so the kernel has closed the process's files
    /// (sockets included). A thread-group leader shows as a zombie as soon as *it* exits,
    /// while its other threads may still hold the descriptor table; so a zombie counts as
    /// exited only once its task list is down to the leader, and for our own child only
    /// `waitpid` (which waits for the whole group) decides.
    pub(crate) fn liveness(&mut self) -> Liveness {
        if self.exit.is_some() {
            return Liveness::Exited(self.exit);
        }
        let proc_says = self.proc_liveness();
        if let Some(child) = &mut self.child {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    return Liveness::Exited(Some(status));
                }
                Ok(None) if proc_says == Liveness::Stopped => return Liveness::Stopped,
                Ok(None) => return Liveness::Running,
                // Not waitable (reaped elsewhere): /proc decides.
                Err(_) => {}
            }
        }
        proc_says
    }

    fn proc_liveness(&self) -> Liveness {
        match stat_of(Path::new(&format!("/proc/{}/stat", self.pid))) {
            Some((state, start)) if start == self.start_ticks => match state {
                'Z' | 'X' | 'x' if self.thread_count() <= 1 => Liveness::Exited(None),
                'T' | 't' if self.all_threads_stopped() => Liveness::Stopped,
                _ => Liveness::Running,
            },
            _ => Liveness::Exited(None),
        }
    }

    fn thread_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/task", self.pid))
            .map(|tasks| tasks.count())
            .unwrap_or(0)
    }

    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return false;
        };
        tasks.filter_map(|t| t.ok()).all(|task| {
            matches!(
                stat_of(&task.path().join("stat")),
                Some(('T' | 't' | 'Z' | 'X', _))
            )
        })
    }

    /// Sends `sig` if the process is still the one we started (no-op once it exited).
    pub(crate) fn signal(&mut self, sig: Signal) -> Result<()> {
        if matches!(self.liveness(), Liveness::Exited(_)) {
            return Ok(());
        }
        match signal::kill(Pid::from_raw(self.pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(io_context(
                format!("sending {sig} to pid {}", self.pid),
                e.into(),
            )),
        }
    }

    /// Waits until the process has exited (and, if it is our child, is reaped).
    pub(crate) fn wait_exited(&mut self, timeout: Duration, poll: Duration) -> Result<()> {
        self.wait_for(timeout, poll, "exit", |l| matches!(l, Liveness::Exited(_)))
    }

    /// Waits until every thread of the process is stopped.
    pub(crate) fn wait_stopped(&mut self, timeout: Duration, poll: Duration) -> Result<()> {
        self.wait_for(timeout, poll, "stop", |l| {
            matches!(l, Liveness::Stopped | Liveness::Exited(_))
        })
    }

    fn wait_for(
        &mut self,
        timeout: Duration,
        poll: Duration,
        what: &str,
        done: impl Fn(Liveness) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self.liveness()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("pid {} to {what} within {timeout:?}", self.pid),
                });
            }
            thread::sleep(poll);
        }
    }

    /// SIGKILL, then wait for the exit.
    pub(crate) fn kill_and_reap(&mut self, timeout: Duration, poll: Duration) -> Result<()> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exited(timeout, poll)
    }

    /// Forgets the child handle (the process keeps running; it is reaped by init once its
    /// new parent is gone).
    pub(crate) fn release(mut self) -> (i32, u64) {
        drop(self.child.take());
        (self.pid, self.start_ticks)
    }
}

/// The last `max` bytes of `path` (lossy UTF-8), for printing a node's log on failure.
pub(crate) fn tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = file.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
