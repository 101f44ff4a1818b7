//! A job description in fio's terms, and its validation.

use std::path::PathBuf;
use std::time::Duration;

/// Errors from the bench engine. Bad options are reported before any I/O.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An option has a value the engine cannot run with.
    #[error("invalid option --{option}: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The target file does not exist and no `--size` says how big to make it.
    #[error("{path}: no such file; pass --size to create it")]
    MissingFile {
        /// The file.
        path: PathBuf,
    },
    /// An engine name that does not exist.
    #[error(
        "unknown engine {0:?}; engines: uring, uring-nodeadline, uring-thread, psync, tokio-fs"
    )]
    UnknownEngine(String),
    /// File preparation or I/O outside the measured path failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A measured operation failed.
    #[error("{engine}: I/O failed: {reason}")]
    Engine {
        /// The engine.
        engine: &'static str,
        /// The error.
        reason: String,
    },
    /// fio could not be run or its output not understood.
    #[error("fio: {0}")]
    Fio(String),
}

/// fio's `rw` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Random mixed reads and writes (`rwmixread` percent reads).
    RandRw,
}

impl Rw {
    /// Parse fio's spelling.
    pub fn parse(s: &str) -> Result<Rw, BenchError> {
        Ok(match s {
            "read" => Rw::Read,
            "write" => Rw::Write,
            "randread" => Rw::RandRead,
            "randwrite" => Rw::RandWrite,
            "randrw" => Rw::RandRw,
            other => {
                return Err(BenchError::InvalidOption {
                    option: "rw",
                    reason: format!(
                        "{other:?} is not one of read, write, randread, randwrite, randrw"
                    ),
                })
            }
        })
    }

    /// fio's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
            Rw::RandRw => "randrw",
        }
    }

    /// Random offsets rather than sequential.
    pub fn random(self) -> bool {
        matches!(self, Rw::RandRead | Rw::RandWrite | Rw::RandRw)
    }

    /// Percentage of reads given `rwmixread`.
    pub fn read_percent(self, rwmixread: u8) -> u8 {
        match self {
            Rw::Read | Rw::RandRead => 100,
            Rw::Write | Rw::RandWrite => 0,
            Rw::RandRw => rwmixread,
        }
    }
}

/// One job, as fio would describe it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JobSpec {
    /// Access pattern.
    pub rw: Rw,
    /// Block size in bytes.
    pub bs: usize,
    /// Operations in flight per job.
    pub iodepth: usize,
    /// Parallel jobs, each over the whole file.
    pub numjobs: usize,
    /// Bytes each job transfers (and the file size to create when missing).
    pub size: Option<u64>,
    /// Run for this long (time-based) instead of until `size` is done.
    pub runtime: Option<Duration>,
    /// O_DIRECT.
    pub direct: bool,
    /// Target file (or block device).
    pub filename: PathBuf,
    /// Percentage of reads for `randrw`.
    pub rwmixread: u8,
    /// Deadline of each operation for the engines that take one.
    pub op_deadline: Duration,
}

/// Alignment O_DIRECT requires of sizes and offsets here (the logical block
/// size of the devices this project targets is 512 or 4096).
pub const DIRECT_ALIGN: usize = 4096;

impl JobSpec {
    /// Check options that can be checked without touching the file.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |option, reason: &str| {
            Err(BenchError::InvalidOption {
                option,
                reason: reason.to_string(),
            })
        };
        if self.bs == 0 {
            return bad("bs", "must be > 0");
        }
        if self.bs > (64 << 20) {
            return bad("bs", "must be at most 64 MiB");
        }
        if self.direct && !self.bs.is_multiple_of(DIRECT_ALIGN) {
            return bad("bs", "must be a multiple of 4 KiB with --direct 1");
        }
        if self.iodepth == 0 || self.iodepth > 4096 {
            return bad("iodepth", "must be in 1..=4096");
        }
        if self.numjobs == 0 || self.numjobs > 256 {
            return bad("numjobs", "must be in 1..=256");
        }
        if self.rwmixread > 100 {
            return bad("rwmixread", "must be a percentage (0..=100)");
        }
        if let Some(size) = self.size {
            if size < self.bs as u64 {
                return bad("size", "must be at least one block (--bs)");
            }
        }
        if self.runtime.is_some_and(|r| r.is_zero()) {
            return bad("runtime", "must be > 0");
        }
        if self.op_deadline.is_zero() {
            return bad("op-deadline", "must be > 0");
        }
        Ok(())
    }

    /// Number of whole blocks in a file of `file_size` bytes.
    pub fn blocks(&self, file_size: u64) -> u64 {
        file_size / self.bs as u64
    }
}

/// Parse a size the way fio does: a number with an optional k/m/g/t suffix
/// (powers of 1024; a trailing `b`/`ib` is accepted).
pub fn parse_size(option: &'static str, s: &str) -> Result<u64, BenchError> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (digits, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = digits.parse().map_err(|_| BenchError::InvalidOption {
        option,
        reason: format!("{s:?} is not a size (e.g. 4k, 1m, 2g)"),
    })?;
    n.checked_mul(mult).ok_or(BenchError::InvalidOption {
        option,
        reason: format!("{s:?} is too large"),
    })
}

/// Parse a duration the way fio does: plain seconds, or with a unit
/// (`500ms`, `10s`, `2m`).
pub fn parse_duration(option: &'static str, s: &str) -> Result<Duration, BenchError> {
    if let Ok(secs) = s.trim().parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s.trim()).map_err(|e| BenchError::InvalidOption {
        option,
        reason: format!("{s:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            rw: Rw::RandRead,
            bs: 4096,
            iodepth: 32,
            numjobs: 1,
            size: Some(1 << 20),
            runtime: None,
            direct: true,
            filename: "/tmp/x".into(),
            rwmixread: 50,
            op_deadline: Duration::from_secs(1),
        }
    }

    #[test]
    fn sizes_parse_like_fio() {
        assert_eq!(parse_size("bs", "4k").ok(), Some(4096));
        assert_eq!(parse_size("bs", "4KiB").ok(), Some(4096));
        assert_eq!(parse_size("size", "1M").ok(), Some(1 << 20));
        assert_eq!(parse_size("size", "2g").ok(), Some(2 << 30));
        assert_eq!(parse_size("bs", "512").ok(), Some(512));
        assert!(parse_size("bs", "four").is_err());
        assert!(parse_size("bs", "99999999999t").is_err());
        assert_eq!(
            parse_duration("runtime", "10").ok(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_duration("runtime", "250ms").ok(),
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn bad_options_are_named() {
        let named = |s: JobSpec| match s.validate() {
            Err(BenchError::InvalidOption { option, .. }) => option,
            other => panic!("expected an invalid option, got {other:?}"),
        };
        assert_eq!(named(JobSpec { bs: 0, ..spec() }), "bs");
        assert_eq!(named(JobSpec { bs: 1000, ..spec() }), "bs");
        assert_eq!(
            named(JobSpec {
                iodepth: 0,
                ..spec()
            }),
            "iodepth"
        );
        assert_eq!(
            named(JobSpec {
                numjobs: 0,
                ..spec()
            }),
            "numjobs"
        );
        assert_eq!(
            named(JobSpec {
                rwmixread: 101,
                ..spec()
            }),
            "rwmixread"
        );
        assert_eq!(
            named(JobSpec {
                size: Some(100),
                ..spec()
            }),
            "size"
        );
        assert!(Rw::parse("readwrite").is_err());
        spec().validate().expect("a sane job validates");
    }
}
