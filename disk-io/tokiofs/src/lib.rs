//! # disk-io-tokiofs
//!
//! [`TokioFsDisk`]: disk-io's [`Disk`](disk_io_api::Disk) trait done the
//! conventional way a Rust storage node does disk I/O, on `tokio::fs` and
//! tokio's blocking pool (`tokio::task::spawn_blocking`). It is the
//! **baseline** the io_uring [`LocalDisk`](disk_io::LocalDisk) is compared
//! with (`disk-io-node --disk-backend tokio-fs`), so it is a drop-in for it:
//!
//! * **The same disk.** The same layout (`.disk-io/format.json` through
//!   [`disk_io::format::FormatFile`], `.disk-io/tmp` for atomic writes,
//!   `.disk-io/trash` for recursive deletes, volumes as top-level
//!   directories), the same exclusive `flock` on `.disk-io` (a `LocalDisk`
//!   and a `TokioFsDisk` owning one disk at once exclude each other: the
//!   second gets [`DiskError::InUse`]), the same recovery of `tmp` at open.
//!   A disk formatted by either opens under the other with the same
//!   [`DiskId`].
//! * **The same answers.** Paths are checked with `LocalDisk`'s rules
//!   before any I/O (see `paths.rs` for why that module is not shared);
//!   errnos become [`DiskError`]s through `disk-io-driver`'s one table
//!   (`DriverError::into_disk`); "not found" is explained as
//!   `VolumeNotFound` the same way; limits and budgets come from the same
//!   [`DiskConfig`].
//! * **The same durability.** `write_all` writes a file in `.disk-io/tmp`,
//!   fsyncs and closes it, renames it over the target and fsyncs the
//!   directory; every directory it creates is fsynced in its parent (with
//!   the same "fresh directory" rule for concurrent callers); a failure after
//!   the rename is [`DiskError::NotDurable`]. `rename_file`, `make_vol`,
//!   `format` and a shard's `finish` are durable the same way.
//! * **The same resolution rules.** Every open is `openat2` beneath the
//!   disk root with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV` (through `nix`), and every
//!   name-based call (`fstatat(AT_SYMLINK_NOFOLLOW)`, `mkdirat`, `unlinkat`,
//!   `renameat2`) takes one component relative to a directory opened that
//!   way; reads refuse what is not a regular file linked once; shards are
//!   created `O_EXCL`, replacing a planted entry by unlinking it. The
//!   `tokio::fs` path functions cannot do that (they resolve whole paths and
//!   follow symlinks), so those steps are the same blocking-pool calls made
//!   fd-relative; the data itself goes through [`tokio::fs::File`].
//!
//! ## Where the baseline differs from `LocalDisk`, on purpose
//!
//! * **Deadlines.** Every operation runs under
//!   `tokio::time::timeout_at(deadline)` and answers
//!   [`DiskError::DeadlineExceeded`] with the operation's class, as
//!   `LocalDisk` does; a deadline that has already passed is answered at
//!   once without starting anything. But a `std::fs` call that blocks in
//!   the kernel (a hung device, a dead FUSE daemon) **keeps its
//!   blocking-pool thread** until the kernel lets go: nothing can cancel
//!   it. The caller leaves on time; the thread does not. Those calls are
//!   counted as zombies ([`TokioFsDisk::zombies`], `DiskInfo::zombies`),
//!   and tokio's pool adds a thread for each one, up to the runtime's
//!   `max_blocking_threads` (512 by default); past that, every blocking
//!   job of the process, other disks' included, queues behind them. That
//!   is the point of the comparison: `LocalDisk` cancels the op in the
//!   kernel and bounds what a hung disk can hold. A blocking job whose
//!   caller left before a pool thread picked it up does nothing.
//!   Deadlines are checked by a job between its steps (a multi-step job,
//!   such as the walk that creates missing directories, stops at the next
//!   directory level), not handed to the kernel with each call.
//! * **No health machine.** [`Disk::state`](disk_io_api::Disk::state) is
//!   always `Online`; there is no fail-fast, no active probe, no stall
//!   source, no `mark_faulty`/`probe`/`subscribe`. A baseline measures I/O,
//!   not the health policy. Operations are recorded under `LocalDisk`'s
//!   metric names ([`disk_io::metrics::record_op`]); the in-flight and
//!   zombie gauges and the health-state series are not published.
//! * **Owner only.** There is no `OpenMode::Inspect`; `diskctl` keeps using
//!   `LocalDisk` for that.
//! * **In-flight counts** cover the blocking jobs this crate spawns. The
//!   reads and buffered writes `tokio::fs::File` runs on the pool for
//!   itself are not visible to it.
//! * **Buffered shard appends write behind**, as `tokio::fs::File` does:
//!   `append` copies each chunk of up to 2 MiB into the file's buffer,
//!   hands it to the pool and returns (one write in flight per file); an
//!   error of that write is reported by the next `append` or by `finish`
//!   (which waits for it, then fsyncs), and poisons the writer as a failed
//!   `LocalDisk` append does. `LocalDisk`'s `append` returns once the
//!   kernel took the bytes. `read_file_at` reads through
//!   `tokio::fs::File` too (seek, then reads of at most 2 MiB each;
//!   `LocalDisk` splits at `limits.max_io_size`).
//! * **O_DIRECT shards** are supported as `LocalDisk` does (the same
//!   staging chunk and alignment from [`Limits`](disk_io::Limits), the tail
//!   written after turning `O_DIRECT` off, `InvalidArgument` from a file
//!   system without it), but not through `tokio::fs::File`: its internal
//!   buffer is not aligned, so every O_DIRECT write would fail with EINVAL.
//!   The aligned chunks are written with `pwrite` on the blocking pool, in
//!   safe code (the staging buffer is a byte vector used from its first
//!   aligned address).
//! * **Closes.** `write_all`'s temporary file and a finished shard are
//!   closed on the pool and the result awaited, as `LocalDisk` does through
//!   its ring; a file opened for a read is closed on the pool without
//!   waiting (never inline on a runtime worker: a FUSE close sends FLUSH
//!   and can block).
//!
//! ```no_run
//! use disk_io_api::{Deadline, Disk};
//! use disk_io_tokiofs::TokioFsDisk;
//! use std::time::Duration;
//!
//! # async fn demo() -> disk_io_api::Result<()> {
//! let disk = TokioFsDisk::open("/mnt/disk1", Deadline::after(Duration::from_secs(2))).await?;
//! disk.write_all("bucket", "obj/xl.meta", b"hello", Deadline::after(Duration::from_secs(1))).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod ops;
mod paths;
mod shard;
mod sys;

use std::collections::HashSet;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use disk_io::DiskConfig;
use disk_io_api::{Deadline, DiskError, DiskId, Errno, OpClass, PathRule, Result};
use disk_io_driver::{DriverError, FileKind, Name, OsError, Statx};

use paths::{system_name, VolName, SYSTEM_DIR, TMP_DIR, TRASH_DIR};
use sys::How;

/// A disk served through `tokio::fs` and tokio's blocking pool, with
/// `LocalDisk`'s layout and semantics (see the crate docs for where it
/// differs). Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct TokioFsDisk {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokioFsDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioFsDisk")
            .field("root", &self.inner.root_path)
            .field("in_flight", &self.inner.counters.in_flight())
            .field("zombies", &self.inner.counters.zombies())
            .finish()
    }
}

/// Builder for [`TokioFsDisk`].
#[derive(Debug)]
pub struct TokioFsDiskBuilder {
    root: PathBuf,
    config: DiskConfig,
    label: Option<String>,
}

impl TokioFsDiskBuilder {
    /// Use this configuration (default: [`DiskConfig::default`]). Its
    /// limits, budgets and `disk_id_cache_ttl` apply as they do to
    /// `LocalDisk`; the driver and health sections are validated and
    /// otherwise unused.
    pub fn config(mut self, config: DiskConfig) -> Self {
        self.config = config;
        self
    }

    /// Label for logs and metrics (default: the root path).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Open the disk as its owner within `deadline`: open the root, create
    /// `.disk-io` if missing, take its exclusive lock (a second owner,
    /// `LocalDisk` or `TokioFsDisk`, gets [`DiskError::InUse`]), move the
    /// previous run's `tmp` to the trash and purge it in the background.
    /// Must be called inside a tokio runtime.
    pub async fn open(self, deadline: Deadline) -> Result<TokioFsDisk> {
        self.config.validate()?;
        let class = OpClass::Open;
        let label = self
            .label
            .unwrap_or_else(|| self.root.display().to_string());
        let counters = Arc::new(Counters::default());
        let root_path = self.root.clone();
        let root_text = self.root.display().to_string();
        let opened = tokio::time::timeout_at(
            tokio_instant(deadline),
            blocking(&counters, class, deadline, move |job| {
                let root = sys::open_root(&root_path).map_err(|e| match e.os_kind() {
                    Some(OsError::NotFound | OsError::NotDir) => DiskError::DiskNotFound {
                        reason: format!("{root_text}: {e}"),
                    },
                    _ => e.into_disk(class, &root_text),
                })?;
                let sys = open_owner(&root, job)?;
                Ok((root, sys))
            }),
        )
        .await
        .unwrap_or_else(|_| {
            Err(DiskError::DeadlineExceeded {
                op: class,
                waited: Duration::ZERO,
            })
        })?;
        let (root, sys) = opened;
        let inner = Arc::new(Inner {
            label,
            root_path: self.root,
            cfg: self.config,
            root: Arc::new(root),
            sys,
            id_cache: Mutex::new(None),
            counters,
            fresh_dirs: Arc::default(),
            purge: Arc::default(),
        });
        inner.spawn_purge();
        Ok(TokioFsDisk { inner })
    }
}

impl TokioFsDisk {
    /// Start building a disk rooted at `root` (an existing directory).
    pub fn builder(root: impl AsRef<Path>) -> TokioFsDiskBuilder {
        TokioFsDiskBuilder {
            root: root.as_ref().to_path_buf(),
            config: DiskConfig::default(),
            label: None,
        }
    }

    /// Open as owner with the default configuration.
    pub async fn open(root: impl AsRef<Path>, deadline: Deadline) -> Result<TokioFsDisk> {
        TokioFsDisk::builder(root).open(deadline).await
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root_path
    }

    /// The configuration in force.
    pub fn config(&self) -> &DiskConfig {
        &self.inner.cfg
    }

    /// Blocking jobs of this disk queued or running on tokio's blocking
    /// pool right now (abandoned ones included).
    pub fn in_flight(&self) -> usize {
        self.inner.counters.in_flight()
    }

    /// Blocking jobs whose caller left (its deadline passed) before they
    /// ended: a running one holds its blocking-pool thread until the kernel
    /// returns; a queued one is counted until a thread picks it up and
    /// drops it without running it.
    pub fn zombies(&self) -> usize {
        self.inner.counters.zombies()
    }

    /// Write a new format file (identity) to the disk, as
    /// `LocalDisk::format` does. Refuses a formatted disk unless `force`.
    pub async fn format(
        &self,
        set_index: u32,
        disk_index: u32,
        force: bool,
        deadline: Deadline,
    ) -> Result<DiskId> {
        self.inner
            .format(set_index, disk_index, force, deadline)
            .await
    }
}

/// The owner's steps of opening, on one blocking-pool thread: the system
/// directory, its lock, the trash, the recovery of `tmp`.
fn open_owner(root: &File, job: &Job) -> Result<SysDirs> {
    let class = OpClass::Open;
    let err = |e: DriverError, path: &str| e.into_disk(class, path);
    let ensure = |dir: &File, name: &Name, path: &str| -> Result<bool> {
        match sys::mkdir_at(dir, name) {
            Ok(()) => Ok(true),
            Err(e) if e.is(OsError::Exists) => Ok(false),
            Err(e) => Err(err(e, path)),
        }
    };
    let step = || job.check().map_err(|e| err(e, ""));
    if ensure(root, &system_name(SYSTEM_DIR)?, SYSTEM_DIR)? {
        sys::fsync(root, false).map_err(|e| err(e, "."))?;
    }
    step()?;
    let sys_dir = sys::open_at(root, SYSTEM_DIR, How::Dir).map_err(|e| err(e, SYSTEM_DIR))?;
    // The same lock `LocalDisk` takes (flock(LOCK_EX | LOCK_NB) on the
    // system directory), before anything moves.
    match sys_dir.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(DiskError::InUse {
                reason: format!("another process holds the exclusive lock on {SYSTEM_DIR}"),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(sys::io_err(&e), SYSTEM_DIR)),
    }
    let trash_path = format!("{SYSTEM_DIR}/{TRASH_DIR}");
    let tmp_path = format!("{SYSTEM_DIR}/{TMP_DIR}");
    let trash_name = system_name(TRASH_DIR)?;
    let tmp_name = system_name(TMP_DIR)?;
    step()?;
    let mut created = ensure(&sys_dir, &trash_name, &trash_path)?;
    let trash = sys::open_at(&sys_dir, TRASH_DIR, How::Dir).map_err(|e| err(e, &trash_path))?;
    // The previous run's temporary files go to the trash in one rename
    // (whatever `tmp` is, a planted symlink included, without following it).
    let aside = system_name(&format!("{TMP_DIR}-{}", uuid::Uuid::new_v4()))?;
    match sys::rename_at(&sys_dir, &tmp_name, &trash, &aside, true) {
        Ok(()) => created = true,
        Err(e) if e.is(OsError::NotFound) => {}
        Err(e) => return Err(err(e, &tmp_path)),
    }
    created |= ensure(&sys_dir, &tmp_name, &tmp_path)?;
    if created {
        sys::fsync(&sys_dir, false).map_err(|e| err(e, SYSTEM_DIR))?;
    }
    let tmp = sys::open_at(&sys_dir, TMP_DIR, How::Dir).map_err(|e| err(e, &tmp_path))?;
    Ok(SysDirs {
        dir: Arc::new(sys_dir),
        tmp: Arc::new(tmp),
        trash: Arc::new(trash),
    })
}

/// The system directory's handles. `dir` holds the owner's lock for as
/// long as the disk lives.
pub(crate) struct SysDirs {
    dir: Arc<File>,
    tmp: Arc<File>,
    trash: Arc<File>,
}

pub(crate) struct CachedId {
    id: DiskId,
    checked_at: Instant,
    ino: u64,
    mtime: disk_io_driver::Timestamp,
    size: u64,
}

pub(crate) struct Inner {
    label: String,
    root_path: PathBuf,
    cfg: DiskConfig,
    /// The root directory, opened once: every path resolves beneath it.
    root: Arc<File>,
    sys: SysDirs,
    id_cache: Mutex<Option<CachedId>>,
    counters: Arc<Counters>,
    fresh_dirs: Arc<FreshDirs>,
    purge: Arc<PurgeState>,
}

pub(crate) fn tokio_instant(d: Deadline) -> tokio::time::Instant {
    tokio::time::Instant::from_std(d.instant())
}

// ---- blocking jobs ----------------------------------------------------------

/// Blocking jobs in flight and abandoned ones still running.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    in_flight: AtomicUsize,
    zombies: AtomicUsize,
}

impl Counters {
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn zombies(&self) -> usize {
        self.zombies.load(Ordering::Relaxed)
    }
}

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;

/// What a blocking job sees of its caller.
pub(crate) struct Job {
    state: Arc<AtomicU8>,
    deadline: Deadline,
}

impl Job {
    /// `Ok` while the caller still waits; a deadline error once it left or
    /// its deadline passed. Multi-step jobs ask between steps, so a job
    /// nobody waits for stops at the next step.
    pub(crate) fn check(&self) -> std::result::Result<(), DriverError> {
        if self.state.load(Ordering::Acquire) == ABANDONED || self.deadline.is_expired() {
            return Err(DriverError::Deadline {
                waited: Duration::ZERO,
            });
        }
        Ok(())
    }
}

/// Counts the job in flight; dropped when the job ends (or is dropped
/// unrun by a runtime shutting down).
struct Ticket {
    counters: Arc<Counters>,
    state: Arc<AtomicU8>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.state.swap(DONE, Ordering::AcqRel) == ABANDONED {
            self.counters.zombies.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Marks the job abandoned if the caller's future is dropped while it waits.
struct Waiting {
    counters: Arc<Counters>,
    state: Arc<AtomicU8>,
    armed: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Counted before it is claimed, so the job's decrement never
        // comes first.
        self.counters.zombies.fetch_add(1, Ordering::AcqRel);
        if self
            .state
            .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.counters.zombies.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Run `f` on tokio's blocking pool for an operation of `class`. A
/// deadline already passed is answered at once and starts nothing; a job
/// that reaches a thread after its caller left does nothing. The caller's
/// own deadline is enforced around this (`Inner::run`); a job that is
/// running when its caller leaves runs to its end (a zombie).
pub(crate) async fn blocking<T, F>(
    counters: &Arc<Counters>,
    class: OpClass,
    deadline: Deadline,
    f: F,
) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Job) -> Result<T> + Send + 'static,
{
    if deadline.is_expired() {
        return Err(DiskError::DeadlineExceeded {
            op: class,
            waited: Duration::ZERO,
        });
    }
    let state = Arc::new(AtomicU8::new(RUNNING));
    counters.in_flight.fetch_add(1, Ordering::AcqRel);
    let ticket = Ticket {
        counters: counters.clone(),
        state: state.clone(),
    };
    let job = Job {
        state: state.clone(),
        deadline,
    };
    let mut waiting = Waiting {
        counters: counters.clone(),
        state,
        armed: true,
    };
    let handle = tokio::task::spawn_blocking(move || {
        let _ticket = ticket;
        match job.check() {
            Ok(()) => f(&job),
            Err(e) => Err(e.into_disk(class, "")),
        }
    });
    let r = handle.await;
    waiting.armed = false;
    match r {
        Ok(r) => r,
        Err(e) if e.is_panic() => Err(DiskError::Io {
            op: class,
            errno: Errno(nix::libc::EIO),
        }),
        Err(_) => Err(DiskError::ShutDown),
    }
}

// ---- the wrapper every operation runs in ------------------------------------

impl Inner {
    pub(crate) async fn blocking<T, F>(&self, class: OpClass, deadline: Deadline, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Job) -> Result<T> + Send + 'static,
    {
        blocking(&self.counters, class, deadline, f).await
    }

    /// Every public operation: `timeout_at(deadline)` around the whole
    /// (possibly multi-step) operation, "not found" explained once as
    /// "volume not found" when the volume is missing, errors reported
    /// against the public operation, metrics recorded.
    pub(crate) async fn run<T, F>(
        &self,
        class: OpClass,
        deadline: Deadline,
        vol: Option<&VolName>,
        fut: F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        // A deadline already passed starts nothing (`timeout_at` would poll
        // the operation once first, and a buffered write would be handed to
        // the pool before the timer is looked at).
        if deadline.is_expired() {
            let e = DiskError::DeadlineExceeded {
                op: class,
                waited: Duration::ZERO,
            };
            disk_io::metrics::record_op(&self.label, class, started.elapsed(), Err(&e));
            return Err(e);
        }
        let body = async {
            match (fut.await, vol) {
                (Err(DiskError::FileNotFound), Some(vol)) => {
                    Err(self.explain_not_found(vol, class, deadline).await)
                }
                (r, _) => r,
            }
        };
        let res = match tokio::time::timeout_at(tokio_instant(deadline), body).await {
            Ok(r) => r,
            Err(_) => Err(DiskError::DeadlineExceeded {
                op: class,
                waited: started.elapsed(),
            }),
        };
        let res = res.map_err(|e| match e {
            DiskError::DeadlineExceeded { .. } => DiskError::DeadlineExceeded {
                op: class,
                waited: started.elapsed(),
            },
            e => e.for_op(class),
        });
        disk_io::metrics::record_op(
            &self.label,
            class,
            started.elapsed(),
            res.as_ref().map(|_| ()),
        );
        res
    }

    /// [`Inner::run`] for an operation that commits a change and then makes
    /// it durable: a deadline that cuts the durability step short after
    /// `committed` turned true is [`DiskError::NotDurable`].
    pub(crate) async fn run_committing<T, F>(
        &self,
        class: OpClass,
        deadline: Deadline,
        vol: Option<&VolName>,
        committed: &AtomicBool,
        fut: F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        match self.run(class, deadline, vol, fut).await {
            Err(e @ DiskError::DeadlineExceeded { .. }) if committed.load(Ordering::Acquire) => {
                Err(DiskError::NotDurable {
                    op: class,
                    cause: Box::new(e),
                })
            }
            r => r,
        }
    }

    /// "Not found" on `vol`: the volume itself missing (or not a
    /// directory) is `VolumeNotFound`; a symlink in its place is refused.
    async fn explain_not_found(
        &self,
        vol: &VolName,
        class: OpClass,
        deadline: Deadline,
    ) -> DiskError {
        let root = self.root.clone();
        let v = vol.clone();
        let r = self
            .blocking(class, deadline, move |_| {
                Ok(match sys::stat_at(&root, v.name()) {
                    Err(e) if e.is(OsError::NotFound) => DiskError::VolumeNotFound,
                    Ok(st) if st.kind == FileKind::Symlink => DiskError::InvalidPath {
                        path: v.as_str().to_string(),
                        rule: PathRule::Symlink,
                    },
                    Ok(st) if st.kind != FileKind::Dir => DiskError::VolumeNotFound,
                    Ok(_) => DiskError::FileNotFound,
                    Err(e) => e.into_disk(class, v.as_str()),
                })
            })
            .await;
        r.unwrap_or_else(|e| e)
    }

    /// Refuse to read anything but a regular file only disk-io links (as
    /// `LocalDisk`): a directory is the wrong type, a device node, FIFO or
    /// socket is not a file, a file with other hard links may be someone
    /// else's.
    pub(crate) fn check_regular(st: &Statx, path: &str) -> Result<()> {
        let refuse = |rule| {
            Err(DiskError::InvalidPath {
                path: path.to_string(),
                rule,
            })
        };
        match st.kind {
            FileKind::File if st.nlink <= 1 => Ok(()),
            FileKind::File => refuse(PathRule::HardLinked),
            FileKind::Dir => Err(DiskError::WrongFileType(
                disk_io_api::WrongType::IsDirectory,
            )),
            FileKind::Symlink => refuse(PathRule::Symlink),
            FileKind::Other => refuse(PathRule::NotRegular),
        }
    }

    /// Empty the trash in the background, one purge at a time; a request
    /// while one runs makes it go round once more. Runs on the blocking
    /// pool under its own budget (`timeouts.trash_purge`), outside the
    /// in-flight counts.
    pub(crate) fn spawn_purge(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let state = self.purge.clone();
        state.again.store(true, Ordering::Release);
        if state.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let trash = self.sys.trash.clone();
        let budget = self.cfg.timeouts.trash_purge;
        let limit = self.cfg.limits.max_list_entries;
        let label = self.label.clone();
        rt.spawn(async move {
            loop {
                while state.again.swap(false, Ordering::AcqRel) {
                    let deadline = Deadline::after(budget);
                    let trash = trash.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        sys::remove_children(&trash, limit, &|| !deadline.is_expired())
                    })
                    .await;
                    match r {
                        Ok(Ok(0)) => {}
                        Ok(Ok(n)) => tracing::debug!(disk = %label, removed = n, "trash purged"),
                        Ok(Err(e)) => {
                            tracing::warn!(disk = %label, error = %e, "trash purge did not finish")
                        }
                        Err(e) => tracing::warn!(disk = %label, error = %e, "trash purge failed"),
                    }
                }
                state.running.store(false, Ordering::Release);
                if !state.again.load(Ordering::Acquire)
                    || state.running.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
        });
    }

    /// Best-effort removal of an atomic write's leftover temporary file,
    /// off the caller's path and under its own budget (the owner's next
    /// open moves `tmp` to the trash anyway).
    pub(crate) fn spawn_unlink_tmp(&self, name: Name) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tmp = self.sys.tmp.clone();
        let deadline = self.cfg.deadline(OpClass::Delete);
        rt.spawn_blocking(move || {
            if !deadline.is_expired() {
                let _ = sys::unlink_at(&tmp, &name, false);
            }
        });
    }
}

/// Whether a trash purge runs, and whether another round is wanted.
#[derive(Debug, Default)]
pub(crate) struct PurgeState {
    running: AtomicBool,
    again: AtomicBool,
}

/// Directories this disk created whose parent's fsync has not returned
/// yet: a call whose path crosses one takes the slow walk (which fsyncs the
/// parent of every directory it finds) rather than the fast open, so it
/// never builds a durable answer on a directory that is not durable yet.
#[derive(Debug, Default)]
pub(crate) struct FreshDirs {
    dirs: Mutex<HashSet<String>>,
}

impl FreshDirs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `dir` or any directory above it is not yet durable.
    pub(crate) fn crosses(&self, dir: &str) -> bool {
        let dirs = self.lock();
        if dirs.is_empty() {
            return false;
        }
        dir.match_indices('/')
            .map(|(i, _)| &dir[..i])
            .chain(std::iter::once(dir))
            .any(|d| dirs.contains(d))
    }

    /// Register `dir` until the returned guard drops.
    pub(crate) fn register(self: &Arc<Self>, dir: &str) -> FreshGuard {
        let added = self.lock().insert(dir.to_string());
        FreshGuard {
            set: self.clone(),
            dir: added.then(|| dir.to_string()),
        }
    }
}

pub(crate) struct FreshGuard {
    set: Arc<FreshDirs>,
    /// `None` when another call registered the same directory first.
    dir: Option<String>,
}

impl Drop for FreshGuard {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            self.set.lock().remove(&d);
        }
    }
}
