//! Named network namespaces, and running commands and Rust code inside them.
//!
//! The cluster harness gives every storage node, its test clients and the bridge joining
//! them a network namespace of their own, so that cluster traffic never touches the root
//! namespace (nor, through it, any real network): the root namespace only ever runs the
//! `ip` commands that create and delete the namespaces.
//!
//! Namespaces are made with iproute2 (`ip netns add`), not by hand with `unshare` and bind
//! mounts: `ip` already does the delicate part (a shared `/run/netns` mount, so the bind
//! mounts are seen from other mount namespaces), the names it creates are what operators
//! use to debug (`ip netns list`, `ip -n NAME addr`, `ip netns exec NAME ss -tn`), and a
//! namespace outlives the process that made it, which separate CLI invocations acting on
//! one cluster need. Links and addresses are configured with `ip -n NAME` for the same
//! reasons (one tool, no netlink code of our own).
//!
//! Entering a namespace is `setns(2)` on `/run/netns/NAME`, per thread:
//! * [`Netns::command`] builds a [`Command`] whose child enters the namespace before `exec`
//!   (node processes, `nft`, `ss`); the child shares the root mount namespace, so it sees
//!   the cluster's disks where the harness mounted them.
//! * [`Netns::run`] runs a closure on a fresh thread that has entered the namespace, and
//!   waits for it with a bound; [`Netns::spawn`] does the same without waiting.
//! * [`Netns::tokio_runtime`] builds a [`NetnsRuntime`]: a tokio runtime every thread of
//!   which (workers and blocking pool) enters the namespace as it starts, so sockets
//!   created by its tasks live there.
//!
//! Invariant: no thread the harness starts for a namespace ever runs caller code outside
//! it. If entering fails on a runtime thread (it cannot fail for root with an open
//! namespace file, but the kernel may say ENOMEM), the thread moves to a fresh, empty
//! namespace instead (no routes: connects fail with `ENETUNREACH`, nothing leaks), and if
//! even that fails the process aborts rather than let test traffic reach a real network.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::sched::CloneFlags;

use crate::cmd;
use crate::error::{io_context, HarnessError, Result};

/// Where iproute2 keeps the bind mounts that name network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace (`/run/netns/NAME`).
///
/// An owned namespace (from [`Netns::create`]) is deleted on drop; one from
/// [`Netns::open`], or released with [`Netns::persist`], is left alone.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    /// Bound for each `ip` / `nft` / `ss` invocation.
    tool_timeout: Duration,
    owned: bool,
}

impl Netns {
    /// Creates the namespace `name` (`ip netns add`) and brings its loopback up. Fails if
    /// one of that name exists already. `tool_timeout` bounds every tool the handle runs.
    pub fn create(name: &str, tool_timeout: Duration) -> Result<Netns> {
        validate_name(name)?;
        cmd::run(
            "ip",
            &[OsStr::new("netns"), OsStr::new("add"), OsStr::new(name)],
            tool_timeout,
        )?;
        // Owned from here on: an error below deletes it again.
        let ns = Netns {
            name: name.to_owned(),
            path: Path::new(NETNS_DIR).join(name),
            tool_timeout,
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on the existing namespace `name`; never deleted by this handle.
    pub fn open(name: &str, tool_timeout: Duration) -> Result<Netns> {
        validate_name(name)?;
        let path = Path::new(NETNS_DIR).join(name);
        fs::metadata(&path).map_err(|e| io_context(format!("network namespace {name}"), e))?;
        Ok(Netns {
            name: name.to_owned(),
            path,
            tool_timeout,
            owned: false,
        })
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the namespace after this handle is dropped (the caller takes over deleting
    /// it, e.g. a cluster's teardown, or `down` for the CLI's clusters).
    pub fn persist(mut self) -> Netns {
        self.owned = false;
        self
    }

    /// The namespace's identity: `(device, inode)` of its nsfs file, what
    /// `/proc/PID/ns/net` of a process inside it resolves to.
    pub fn id(&self) -> Result<(u64, u64)> {
        let md = fs::metadata(&self.path)
            .map_err(|e| io_context(format!("stat {}", self.path.display()), e))?;
        Ok((md.dev(), md.ino()))
    }

    /// Opens the namespace file (the handle `setns` takes).
    fn file(&self) -> Result<File> {
        File::open(&self.path).map_err(|e| io_context(format!("open {}", self.path.display()), e))
    }

    /// Moves the calling thread into this namespace (only this thread: network namespaces
    /// are per thread). Prefer [`run`](Self::run) or [`spawn`](Self::spawn), which never
    /// change the caller's own namespace.
    pub fn enter_current_thread(&self) -> Result<()> {
        let file = self.file()?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
            io_context(
                format!("setns into network namespace {}", self.name),
                io::Error::from(e),
            )
        })
    }

    /// A command for `program` whose process enters this namespace before it `exec`s.
    /// `program` is used as given (a path, or a name looked up in `PATH` by `exec`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let file = Arc::new(self.file()?);
        let mut command = Command::new(program);
        // SAFETY: the hook runs in the forked child before exec, where only
        // async-signal-safe work is allowed. It makes one raw setns(2) system call on a
        // descriptor opened before the fork (kept alive by the Arc the closure owns) and
        // allocates nothing: `io::Error::from(Errno)` wraps the raw error code.
        unsafe {
            command.pre_exec(move || {
                nix::sched::setns(&*file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
        Ok(command)
    }

    /// Runs the system tool `program` (e.g. `nft`, `ss`) with `args` inside this namespace,
    /// bounded by the tool timeout; returns its stdout.
    pub fn run_tool(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut command = self.command(cmd::tool(program)?)?;
        command.args(args);
        cmd::run_command(command, self.tool_timeout)
    }

    /// `ip -n NAME args...`: configures this namespace's links and addresses.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all: Vec<&OsStr> = vec![OsStr::new("-n"), OsStr::new(&self.name)];
        all.extend(args.iter().map(OsStr::new));
        cmd::run("ip", &all, self.tool_timeout)
    }

    /// Runs `f` on a fresh thread that has entered this namespace and waits at most
    /// `timeout` for its result. On timeout the thread is left to finish on its own
    /// (still inside the namespace).
    pub fn run<T, F>(&self, timeout: Duration, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let handle = self.spawn(move || {
            let _ = tx.send(f());
        })?;
        match rx.recv_timeout(timeout) {
            Ok(value) => Ok(value),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(HarnessError::Timeout {
                what: format!("code running in network namespace {}", self.name),
            }),
            // The sender is dropped without sending when entering failed or `f` panicked;
            // the spawned thread's result says which.
            Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(HarnessError::Io(io::Error::other(format!(
                    "code running in network namespace {} panicked",
                    self.name
                )))),
            },
        }
    }

    /// Spawns a thread that enters this namespace, then runs `f`. The join handle yields
    /// an error instead of running `f` if entering failed.
    pub fn spawn<T, F>(&self, f: F) -> Result<thread::JoinHandle<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let file = self.file()?;
        let name = self.name.clone();
        thread::Builder::new()
            .name(thread_name(&self.name))
            .spawn(move || {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                    io_context(
                        format!("setns into network namespace {name}"),
                        io::Error::from(e),
                    )
                })?;
                Ok(f())
            })
            .map_err(|e| io_context("spawning a namespace thread", e))
    }

    /// A tokio runtime whose every thread lives in this namespace (see [`NetnsRuntime`]).
    pub fn tokio_runtime(&self, spec: &RuntimeSpec) -> Result<NetnsRuntime> {
        if spec.worker_threads == 0 || spec.max_blocking_threads == 0 {
            return Err(HarnessError::Config {
                what: "RuntimeSpec: worker_threads and max_blocking_threads must be > 0".into(),
            });
        }
        // Entering works (the common failure is reported here, not as a fallback later).
        self.run(self.tool_timeout, || ())?;
        let file = Arc::new(self.file()?);
        let name = self.name.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(spec.worker_threads)
            .max_blocking_threads(spec.max_blocking_threads)
            .thread_name(thread_name(&self.name))
            .enable_all()
            .on_thread_start(move || enter_or_isolate(&file, &name))
            .build()
            .map_err(|e| io_context("building a namespace tokio runtime", e))?;
        Ok(NetnsRuntime {
            runtime: Some(runtime),
            netns: self.name.clone(),
            shutdown_timeout: spec.shutdown_timeout,
        })
    }

    /// Processes whose (main thread's) network namespace is this one.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let id = self.id()?;
        Ok(pids_in(id))
    }

    /// Deletes the namespace (`ip netns del`). Processes still inside keep it alive but
    /// unnamed; kill them first.
    pub fn delete(mut self) -> Result<()> {
        self.owned = false;
        delete_named(&self.name, self.tool_timeout)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = delete_named(&self.name, self.tool_timeout) {
                tracing::warn!(netns = %self.name, error = %e, "deleting network namespace");
            }
        }
    }
}

/// Shapes of a [`NetnsRuntime`]: both thread pools are bounded, and so is its shutdown.
#[derive(Clone, Debug)]
pub struct RuntimeSpec {
    /// Worker threads.
    pub worker_threads: usize,
    /// Upper bound of the blocking pool (`spawn_blocking`, DNS lookups).
    pub max_blocking_threads: usize,
    /// How long dropping the runtime waits for its blocking tasks.
    pub shutdown_timeout: Duration,
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        RuntimeSpec {
            worker_threads: 2,
            max_blocking_threads: 8,
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// A tokio runtime whose threads all live in one network namespace.
///
/// Only code running *on the runtime's threads* is inside the namespace. `Runtime::block_on`
/// would poll its future on the caller's thread (outside it), which is why this type does
/// not expose it: [`block_on`](Self::block_on) spawns the future onto the runtime and only
/// waits for it on the caller's thread.
#[derive(Debug)]
pub struct NetnsRuntime {
    /// `Some` until drop.
    runtime: Option<tokio::runtime::Runtime>,
    netns: String,
    shutdown_timeout: Duration,
}

impl Drop for NetnsRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(self.shutdown_timeout);
        }
    }
}

impl NetnsRuntime {
    /// Runs `future` on the runtime (inside the namespace) and waits at most `timeout` for
    /// its output. A panic in the future is resumed on the caller's thread.
    pub fn block_on<F>(&self, timeout: Duration, future: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self.runtime()?;
        let task = runtime.spawn(future);
        let waited = runtime.block_on(async { tokio::time::timeout(timeout, task).await });
        match waited {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(join)) => match join.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(join) => Err(HarnessError::Io(io::Error::other(format!(
                    "task in network namespace {} did not finish: {join}",
                    self.netns
                )))),
            },
            Err(_) => Err(HarnessError::Timeout {
                what: format!(
                    "a task in network namespace {} within {timeout:?}",
                    self.netns
                ),
            }),
        }
    }

    /// Spawns `future` onto the runtime's worker threads (inside the namespace).
    pub fn spawn<F>(&self, future: F) -> Result<tokio::task::JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Ok(self.runtime()?.spawn(future))
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime> {
        // Only `drop` takes it, so a caller never sees `None`.
        self.runtime.as_ref().ok_or_else(|| {
            HarnessError::Io(io::Error::other("namespace runtime already shut down"))
        })
    }

    /// The namespace the runtime's threads live in.
    pub fn netns(&self) -> &str {
        &self.netns
    }
}

/// `on_thread_start` of a namespace runtime: enter the namespace; failing that, an empty
/// fresh one; failing that, abort (see the module docs).
fn enter_or_isolate(file: &File, name: &str) {
    let Err(e) = nix::sched::setns(file, CloneFlags::CLONE_NEWNET) else {
        return;
    };
    tracing::error!(netns = %name, error = %e, "runtime thread could not enter its namespace; isolating it");
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWNET) {
        eprintln!(
            "disk-io-harness: a runtime thread could neither enter network namespace {name} \
             nor a fresh one ({e}); aborting so no test traffic leaves the harness' namespaces"
        );
        std::process::abort();
    }
}

/// Thread names are cut to 15 bytes by the kernel; keep the informative tail.
fn thread_name(netns: &str) -> String {
    let tail: String = netns
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("ns-{tail}")
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(HarnessError::Config {
            what: format!("network namespace name {name:?}: use [A-Za-z0-9._-], at most 200"),
        })
    }
}

/// Names in `/run/netns` starting with `prefix`, sorted.
pub fn list(prefix: &str) -> Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_context(format!("listing {NETNS_DIR}"), e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Deletes the namespace `name` (`ip netns del`). Idempotent: a namespace that is gone
/// already (e.g. removed by a concurrent sweep) is not an error.
pub fn delete_named(name: &str, timeout: Duration) -> Result<()> {
    validate_name(name)?;
    let path = Path::new(NETNS_DIR).join(name);
    if !path.exists() {
        return Ok(());
    }
    match cmd::run(
        "ip",
        &[OsStr::new("netns"), OsStr::new("del"), OsStr::new(name)],
        timeout,
    ) {
        Ok(_) => Ok(()),
        Err(_) if !path.exists() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Processes whose `/proc/PID/ns/net` is the namespace `id` (`(dev, inode)`).
pub(crate) fn pids_in(id: (u64, u64)) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|md| (md.dev(), md.ino()) == id)
                .unwrap_or(false)
        })
        .collect()
}
