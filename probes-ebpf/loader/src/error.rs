//! The loader's error type.

use std::io;
use std::path::PathBuf;

use probes_ebpf_common::sysfs::SysfsError;

use probes_ebpf_reader::ReaderError;

use crate::btf::BtfError;
use crate::config::ConfigError;
use crate::offsets::OffsetError;

/// Everything that can stop the loader or `status`. Each variant's message
/// is meant for an SRE reading the terminal: it says what is missing and
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The process lacks a capability the operation needs.
    #[error("missing privilege: {missing}; {hint}")]
    Privilege {
        /// What is missing (capability names).
        missing: String,
        /// How to get it.
        hint: &'static str,
    },
    /// The running kernel's BTF is unavailable or unusable.
    #[error(
        "no usable kernel BTF at {path}: {source}. The probes need the running kernel's BTF \
         to find fields of struct request (kernels built with CONFIG_DEBUG_INFO_BTF=y \
         provide /sys/kernel/btf/vmlinux); pass --btf FILE to use a BTF file for this kernel"
    )]
    Btf {
        /// The BTF file tried.
        path: PathBuf,
        /// Why it could not be used.
        #[source]
        source: BtfError,
    },
    /// The BTF does not describe the structures the probes read.
    #[error("cannot derive field offsets from {path}: {source}")]
    Offsets {
        /// The BTF file.
        path: PathBuf,
        /// What is missing or unexpected.
        #[source]
        source: OffsetError,
    },
    /// A device named on the command line, or a device lookup, failed.
    #[error(transparent)]
    Device(#[from] SysfsError),
    /// bpffs is not mounted and could not be mounted, or the pin directory
    /// is not on it.
    #[error("bpffs: {0}")]
    Bpffs(String),
    /// Another loader owns the pin directory (holds its lock).
    #[error(
        "another probe loader ({owner}) is running with pin directory {dir}{note}; \
         stop it or pass another --pin-dir"
    )]
    AlreadyRunning {
        /// `pid N` from its heartbeat record, or what is known of it.
        owner: String,
        /// The shared pin directory.
        dir: PathBuf,
        /// Whether its heartbeat is stale (paused or hung), when it is.
        note: String,
    },
    /// Reading the pinned maps or owning the pin directory failed.
    #[error(transparent)]
    Reader(ReaderError),
    /// The maps belong to no running loader (`status`).
    #[error("the probe loader (pid {pid}) that pinned the maps in {dir} is not running: {why}")]
    NotLive {
        /// The pin directory.
        dir: PathBuf,
        /// The pid in its heartbeat record.
        pid: u32,
        /// What the liveness rule found.
        why: String,
    },
    /// Loading, attaching or pinning the eBPF programs failed.
    #[error("{what}: {detail}")]
    Ebpf {
        /// What was being done.
        what: String,
        /// The error and its causes, for the message (aya's errors often
        /// keep the errno in a source).
        detail: String,
        /// The aya error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The metrics listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The scanner thread ended while the loader was meant to run.
    #[error("the scanner thread stopped unexpectedly")]
    ScannerStopped,
    /// Any other I/O error, with context.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl LoaderError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> LoaderError {
        LoaderError::Io {
            what: what.into(),
            source,
        }
    }

    /// Wraps an aya error; an `EPERM` anywhere in its source chain becomes
    /// [`LoaderError::Privilege`] (lockdown, a container without the
    /// capabilities, an LSM), which is what the operator needs to know.
    pub(crate) fn ebpf<E>(what: impl Into<String>, err: E) -> LoaderError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        if has_eperm(&err) {
            return LoaderError::Privilege {
                missing: format!("permission denied ({})", what.into()),
                hint: PRIVILEGE_HINT,
            };
        }
        LoaderError::Ebpf {
            what: what.into(),
            detail: chain(&err),
            source: Box::new(err),
        }
    }

    /// An internal inconsistency of the eBPF object (a map or program
    /// missing): a build problem, not an operator one.
    pub(crate) fn object(what: String) -> LoaderError {
        LoaderError::Ebpf {
            detail: "the object compiled into this binary does not match the loader".into(),
            source: what.clone().into(),
            what,
        }
    }

    /// Wraps a map error the same way (EPERM becomes a privilege error).
    pub(crate) fn map(map: &'static str, source: aya::maps::MapError) -> LoaderError {
        ReaderError::Map { map, source }.into()
    }
}

impl From<ReaderError> for LoaderError {
    /// A refusal for lack of privilege becomes [`LoaderError::Privilege`],
    /// which says what to do about it.
    fn from(e: ReaderError) -> LoaderError {
        if e.is_permission_denied() {
            return LoaderError::Privilege {
                missing: format!("permission denied ({e})"),
                hint: PRIVILEGE_HINT,
            };
        }
        LoaderError::Reader(e)
    }
}

/// How to obtain the capabilities the loader needs.
pub(crate) const PRIVILEGE_HINT: &str =
    "loading and reading the block probes needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), \
     plus CAP_SYS_ADMIN to mount bpffs if it is not mounted; run as root or through \
     probe-loader.service, which grants exactly these";

/// `err: cause: cause`, skipping causes already quoted by the previous
/// message.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

fn has_eperm(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// Shorthand for results of this crate.
pub type Result<T, E = LoaderError> = std::result::Result<T, E>;
