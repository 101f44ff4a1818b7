//! The one error type of the harness.

use std::io;
use std::process::ExitStatus;

/// Everything that can go wrong while setting up or tearing down a fault-injection fixture.
///
/// The library never panics; tests decide what a failure means (usually `.expect(..)`).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The process lacks a privilege or device the fixture needs. Tests must fail loudly on
    /// this instead of passing silently.
    #[error("missing privilege: {what}; {hint}")]
    Privilege {
        /// What is missing (root, `/dev/fuse`, loop devices, a tool).
        what: String,
        /// How to obtain it.
        hint: String,
    },
    /// Mounting or unmounting a file system failed.
    #[error("mount error: {0}")]
    Mount(#[source] io::Error),
    /// An external command (`losetup`, `mkfs.ext4`) could not start or exited unsuccessfully.
    #[error("`{cmd}` failed ({}): {stderr}", describe_status(.status))]
    Command {
        /// The command line, for the message.
        cmd: String,
        /// Its exit status; `None` when it could not be started at all.
        status: Option<ExitStatus>,
        /// What it printed on stderr (or why it could not start).
        stderr: String,
    },
    /// Any other I/O error; the message names the operation and path.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// Something did not finish within its bound.
    #[error("timed out: {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
    },
    /// A cluster spec, cluster config file or node command is invalid (caught before
    /// anything is created).
    #[error("invalid cluster configuration: {what}")]
    Config {
        /// What is wrong, naming the field.
        what: String,
    },
    /// The cluster has no node of that name.
    #[error("no node named {name:?} in cluster {cluster}")]
    NoSuchNode {
        /// The cluster's name.
        cluster: String,
        /// The name asked for.
        name: String,
    },
    /// The operation does not apply to the node in its current power state (e.g. `poweron`
    /// of a node that is on).
    #[error("cannot {op} {node}: it is {state}")]
    NodeState {
        /// The node.
        node: String,
        /// The operation refused.
        op: &'static str,
        /// Its current state, for the message.
        state: String,
    },
    /// The cluster state file (shared by separate CLI invocations) cannot be used.
    #[error("cluster state file {path}: {what}")]
    State {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong (missing, unparsable, locked by another invocation).
        what: String,
    },
}

fn describe_status(status: &Option<ExitStatus>) -> String {
    match status {
        Some(status) => status.to_string(),
        None => "could not start".to_owned(),
    }
}

/// Wraps an I/O error with the operation that failed, keeping its kind (the raw OS error is
/// folded into the message, which is what a test failure needs).
pub(crate) fn io_context(what: impl std::fmt::Display, err: io::Error) -> HarnessError {
    HarnessError::Io(io::Error::new(err.kind(), format!("{what}: {err}")))
}

/// Shorthand for results of this crate.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
