//! [`LocalDisk`]: a directory on a local file system, driven through the
//! per-disk io_uring [`Driver`], guarded by the [`Health`] machine.
//!
//! * `mod.rs` (this file): the handle, the builder and open modes, opening
//!   (root, system directory, ownership lock, recovery of `tmp`), and the
//!   wrapper every public operation runs in ([`Inner::run`]).
//! * `ops.rs`: the [`Disk`](disk_io_api::Disk) operations themselves.
//! * `fs.rs`: the file-system algorithms they share: resolving parents
//!   beneath the root, creating directories durably, the atomic durable
//!   write, reads, the trash.
//! * `shard.rs`: the shard writer (buffered or O_DIRECT staging).
//! * `monitor.rs`: the health monitor task and the active probe.
//! * `paths.rs`: validation of caller paths.
//!
//! **Invariant:** every public operation goes through [`Inner::run`]: fail
//! fast when the disk is out, a tracing span, a caller-side
//! `timeout_at(deadline)` backstop around the whole (possibly multi-step)
//! operation, then metrics and health feedback. Each kernel step inside
//! also carries the deadline, so the kernel stops work nobody waits for.
//!
//! **Invariant:** only an [`OpenMode::Owner`] handle changes the disk, and
//! only while it holds the exclusive `flock` on the system directory; an
//! [`OpenMode::Inspect`] handle creates, moves and purges nothing.

mod fs;
mod monitor;
mod ops;
mod paths;
mod shard;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use disk_io_api::{Deadline, DiskError, DiskId, OpClass, PathRule, Result};
use disk_io_driver::{Driver, DriverError, DriverStats, File, Name, Open, OsError, RelPath};
use disk_io_health::{Health, MetricsObserver, Transition};
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::DiskConfig;
use crate::format::FORMAT_FILE;
use crate::stall::StallSource;
use paths::{system_name, VolName, SYSTEM_DIR};

/// How a handle may use its disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OpenMode {
    /// The one process that serves the disk: creates the system directory
    /// if missing, takes its exclusive lock (a second owner gets
    /// [`DiskError::InUse`]), moves the previous run's leftover temporary
    /// files to the trash and purges it.
    #[default]
    Owner,
    /// Look, do not touch: works on a read-only mount and on a live node's
    /// disk, creates nothing (not even the system directory), takes no lock,
    /// moves nothing. Operations that change the disk fail with
    /// [`DiskError::ReadOnly`]; the active probe still runs (it writes and
    /// removes one file of its own in `tmp`, which an owner never touches
    /// by name).
    Inspect,
}

/// A local disk. Cheap to clone; `Send + Sync`; usable from any tokio
/// runtime (multi-threaded included) without a runtime of its own.
#[derive(Clone)]
pub struct LocalDisk {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDisk")
            .field("root", &self.inner.root_path)
            .field("mode", &self.inner.mode)
            .field("state", &self.inner.health.state())
            .finish()
    }
}

/// Builder for [`LocalDisk`], for the optional parts.
#[derive(Debug)]
pub struct LocalDiskBuilder {
    root: PathBuf,
    config: DiskConfig,
    stall: Option<Arc<dyn StallSource>>,
    label: Option<String>,
    mode: OpenMode,
}

impl LocalDiskBuilder {
    /// Use this configuration (default: [`DiskConfig::default`]).
    pub fn config(mut self, config: DiskConfig) -> Self {
        self.config = config;
        self
    }

    /// Poll this stall source from the health monitor.
    pub fn stall_source(mut self, source: Arc<dyn StallSource>) -> Self {
        self.stall = Some(source);
        self
    }

    /// Label for logs and metrics (default: the root path).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Open as owner (default) or for inspection only.
    pub fn mode(mut self, mode: OpenMode) -> Self {
        self.mode = mode;
        self
    }

    /// Open the disk within `deadline`: start its ring thread, open the root
    /// directory and the system directory; an owner also takes the lock and
    /// recovers `tmp`. Must be called inside a tokio runtime (the health
    /// monitor is a task).
    pub async fn open(self, deadline: Deadline) -> Result<LocalDisk> {
        self.config.validate()?;
        let label = self
            .label
            .unwrap_or_else(|| self.root.display().to_string());
        let class = OpClass::Open;
        let driver =
            Driver::start(&label, &self.config.driver).map_err(|e| e.into_disk(class, ""))?;
        let root_text = self.root.display().to_string();
        let root = tokio::time::timeout_at(
            tokio_instant(deadline),
            driver.open_root(&self.root, deadline),
        )
        .await
        .unwrap_or(Err(DriverError::Deadline {
            waited: Duration::ZERO,
        }))
        .map_err(|e| match e.os_kind() {
            Some(OsError::NotFound | OsError::NotDir) => DiskError::DiskNotFound {
                reason: format!("{root_text}: {e}"),
            },
            _ => e.into_disk(class, &root_text),
        })?;
        let health = Health::new(
            &label,
            self.config.health.clone(),
            vec![Arc::new(MetricsObserver)],
        );
        let opening = Opening {
            driver: &driver,
            root: &root,
            deadline,
        };
        let sys = tokio::time::timeout_at(tokio_instant(deadline), async {
            match self.mode {
                OpenMode::Owner => opening.owner().await.map(Some),
                OpenMode::Inspect => opening.inspect().await,
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(DiskError::DeadlineExceeded {
                op: class,
                waited: Duration::ZERO,
            })
        })?;
        let inner = Arc::new(Inner {
            label,
            root_path: self.root,
            mode: self.mode,
            driver,
            health,
            cfg: self.config,
            root,
            sys,
            id_cache: Mutex::new(None),
            stall: self.stall,
            monitor: Mutex::new(None),
            fresh_dirs: fs::FreshDirs::default(),
            purge: Arc::default(),
        });
        if inner.mode == OpenMode::Owner {
            inner.spawn_purge();
        }
        let handle = tokio::spawn(monitor::run(Arc::downgrade(&inner), inner.cfg.health.tick));
        *inner.monitor.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(LocalDisk { inner })
    }
}

/// The system directory's handles.
pub(crate) struct SysDirs {
    /// `.disk-io` itself (holds the format file, and the owner's lock).
    dir: File,
    /// `.disk-io/tmp`: temporary files of atomic writes and probes.
    tmp: Option<File>,
    /// `.disk-io/trash`: trees waiting to be purged (owner only).
    trash: Option<File>,
}

/// The steps of opening, sharing the driver, root and deadline.
struct Opening<'a> {
    driver: &'a Driver,
    root: &'a File,
    deadline: Deadline,
}

impl Opening<'_> {
    fn err(e: DriverError, path: &str) -> DiskError {
        e.into_disk(OpClass::Open, path)
    }

    /// `mkdirat` that tolerates an existing entry; says whether it created.
    async fn ensure_dir(&self, dir: &File, name: &Name, path: &str) -> Result<bool> {
        match self.driver.mkdirat(dir, name, 0o755, self.deadline).await {
            Ok(()) => Ok(true),
            Err(e) if e.is(OsError::Exists) => Ok(false),
            Err(e) => Err(Self::err(e, path)),
        }
    }

    /// Open a directory of the system area, refusing a symlink in its place.
    async fn open_dir(&self, dir: &File, name: &str, path: &str) -> Result<File> {
        self.driver
            .open(
                dir,
                &RelPath::from(system_name(name)),
                Open::dir(),
                self.deadline,
            )
            .await
            .map_err(|e| Self::err(e, path))
    }

    async fn owner(&self) -> Result<SysDirs> {
        let d = self.deadline;
        let sys_name = system_name(SYSTEM_DIR);
        if self.ensure_dir(self.root, &sys_name, SYSTEM_DIR).await? {
            self.driver
                .fsync(self.root, false, d)
                .await
                .map_err(|e| Self::err(e, "."))?;
        }
        let sys = self.open_dir(self.root, SYSTEM_DIR, SYSTEM_DIR).await?;
        // Exclusive ownership before anything moves: a second process (a
        // second node, a stray `diskctl format`) must not recover `tmp`
        // under a live writer.
        self.driver
            .try_lock_exclusive(&sys, d)
            .await
            .map_err(|e| match e.os_kind() {
                Some(OsError::WouldBlock) => DiskError::InUse {
                    reason: format!("another process holds the exclusive lock on {SYSTEM_DIR}"),
                },
                _ => Self::err(e, SYSTEM_DIR),
            })?;
        let trash_path = format!("{SYSTEM_DIR}/trash");
        let tmp_path = format!("{SYSTEM_DIR}/tmp");
        let mut created = self
            .ensure_dir(&sys, &system_name("trash"), &trash_path)
            .await?;
        let trash = self.open_dir(&sys, "trash", &trash_path).await?;
        // Leftover temporary files of a previous run go to the trash in one
        // rename (purging `tmp` in place would race with this run's writes).
        // The rename moves whatever `tmp` is, a planted symlink included,
        // without following it.
        let aside = system_name(&format!("tmp-{}", uuid::Uuid::new_v4()));
        match self
            .driver
            .renameat(&sys, &system_name("tmp"), &trash, &aside, true, d)
            .await
        {
            Ok(()) => created = true,
            Err(e) if e.is(OsError::NotFound) => {}
            Err(e) => return Err(Self::err(e, &tmp_path)),
        }
        created |= self
            .ensure_dir(&sys, &system_name("tmp"), &tmp_path)
            .await?;
        if created {
            self.driver
                .fsync(&sys, false, d)
                .await
                .map_err(|e| Self::err(e, SYSTEM_DIR))?;
        }
        let tmp = self.open_dir(&sys, "tmp", &tmp_path).await?;
        Ok(SysDirs {
            dir: sys,
            tmp: Some(tmp),
            trash: Some(trash),
        })
    }

    async fn inspect(&self) -> Result<Option<SysDirs>> {
        let sys = match self.open_dir(self.root, SYSTEM_DIR, SYSTEM_DIR).await {
            Ok(f) => f,
            // Not a disk-io disk (yet): nothing to look at, nothing created.
            Err(DiskError::FileNotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let tmp = match self
            .open_dir(&sys, "tmp", &format!("{SYSTEM_DIR}/tmp"))
            .await
        {
            Ok(f) => Some(f),
            Err(DiskError::FileNotFound) => None,
            Err(e) => return Err(e),
        };
        Ok(Some(SysDirs {
            dir: sys,
            tmp,
            trash: None,
        }))
    }
}

impl LocalDisk {
    /// Start building a disk rooted at `root` (an existing directory).
    pub fn builder(root: impl AsRef<Path>) -> LocalDiskBuilder {
        LocalDiskBuilder {
            root: root.as_ref().to_path_buf(),
            config: DiskConfig::default(),
            stall: None,
            label: None,
            mode: OpenMode::Owner,
        }
    }

    /// Open as owner with the default configuration.
    pub async fn open(root: impl AsRef<Path>, deadline: Deadline) -> Result<LocalDisk> {
        LocalDisk::builder(root).open(deadline).await
    }

    /// The configuration in force.
    pub fn config(&self) -> &DiskConfig {
        &self.inner.cfg
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root_path
    }

    /// How this handle was opened.
    pub fn mode(&self) -> OpenMode {
        self.inner.mode
    }

    /// Driver counters (in flight, zombies, submitted, completed).
    pub fn driver_stats(&self) -> &Arc<DriverStats> {
        self.inner.driver.stats()
    }

    /// Subscribe to health transitions.
    pub fn subscribe(&self) -> watch::Receiver<Transition> {
        self.inner.health.subscribe()
    }

    /// Write a new format file (identity) to the disk. Refuses a formatted
    /// disk unless `force`.
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

    /// Take the disk out now (an operator draining it, a test). It comes
    /// back through the usual probing.
    pub fn mark_faulty(&self, reason: &str) {
        self.inner.health.trip(reason);
    }

    /// Run one active probe now (write, read back, delete a small file)
    /// and feed the result to the health machine. Returns the probe's own
    /// result and how long it took.
    pub async fn probe(&self) -> Result<Duration> {
        let started = Instant::now();
        let r = self.inner.probe().await;
        self.inner.health.on_probe(&r);
        r.map(|()| started.elapsed())
    }
}

pub(crate) struct CachedId {
    id: DiskId,
    checked_at: Instant,
    ino: u64,
    mtime: disk_io_driver::Timestamp,
    size: u64,
}

// Field order is drop order: the files go back to the ring before the
// driver's last handle tells the ring to stop.
pub(crate) struct Inner {
    label: String,
    root_path: PathBuf,
    mode: OpenMode,
    health: Health,
    cfg: DiskConfig,
    /// The root directory (`O_RDONLY`), opened once: every path resolves
    /// beneath this fd, whatever happens to the root's path later.
    root: File,
    /// `None`: opened for inspection and not (yet) a disk-io disk.
    sys: Option<SysDirs>,
    id_cache: Mutex<Option<CachedId>>,
    stall: Option<Arc<dyn StallSource>>,
    monitor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Directories being made durable (see `Inner::parent_dir`).
    fresh_dirs: fs::FreshDirs,
    /// One trash purge at a time; a request while one runs makes it go
    /// round once more.
    purge: Arc<fs::PurgeState>,
    driver: Driver,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self
            .monitor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            h.abort();
        }
    }
}

pub(crate) fn tokio_instant(d: Deadline) -> tokio::time::Instant {
    tokio::time::Instant::from_std(d.instant())
}

impl Inner {
    /// The wrapper every public operation runs in; see the module's
    /// invariant. A "file not found" from an operation on `vol` is explained
    /// here once: it becomes "volume not found" when the volume is missing.
    async fn run<T, F>(
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
        let budget = deadline.remaining();
        if let Err(e) = self.health.admit() {
            crate::metrics::fail_fast(&self.label, class);
            return Err(e);
        }
        let span = tracing::debug_span!("disk_op", disk = %self.label, op = %class);
        let body = async {
            match (fut.await, vol) {
                (Err(DiskError::FileNotFound), Some(vol)) => {
                    Err(self.explain_not_found(vol, class, deadline).await)
                }
                (r, _) => r,
            }
        };
        let res = if deadline.is_expired() {
            // Fencing by deadline: a call whose deadline has already passed
            // is refused before it touches the disk (`timeout_at` would poll
            // the operation once first), and counted as a deadline miss
            // below. The object path relies on this: no write of a commit
            // lands after its writer's deadline (ARCHITECTURE.md, "Per-key
            // commit").
            Err(DiskError::DeadlineExceeded {
                op: class,
                waited: Duration::ZERO,
            })
        } else {
            match tokio::time::timeout_at(tokio_instant(deadline), body.instrument(span)).await {
                Ok(r) => r,
                Err(_) => Err(DiskError::DeadlineExceeded {
                    op: class,
                    waited: started.elapsed(),
                }),
            }
        };
        // Report against the public operation, not its inner step.
        let res = res.map_err(|e| match e {
            DiskError::DeadlineExceeded { .. } => DiskError::DeadlineExceeded {
                op: class,
                waited: started.elapsed(),
            },
            e => e.for_op(class),
        });
        let elapsed = started.elapsed();
        crate::metrics::record_op(&self.label, class, elapsed, res.as_ref().map(|_| ()));
        if let Err(e) = &res {
            if e.is_device_fault() {
                tracing::debug!(disk = %self.label, op = %class, error = %e, ?elapsed, "device fault");
            }
        }
        // A miss of a call that came with (almost) no budget is the caller's,
        // not the device's: it neither counts against the disk nor as progress.
        let callers_miss = matches!(res, Err(DiskError::DeadlineExceeded { .. }))
            && budget < self.cfg.health.min_fault_budget;
        if !callers_miss {
            self.health.on_outcome(&res);
        }
        res
    }

    /// [`Inner::run`] for an operation that commits a change and then makes
    /// it durable: if the deadline cuts the durability step short after
    /// `committed` turned true, the change is visible, and the answer says
    /// so ([`DiskError::NotDurable`]) instead of "deadline exceeded".
    async fn run_committing<T, F>(
        &self,
        class: OpClass,
        deadline: Deadline,
        vol: Option<&VolName>,
        committed: &std::sync::atomic::AtomicBool,
        fut: F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        match self.run(class, deadline, vol, fut).await {
            Err(e @ DiskError::DeadlineExceeded { .. })
                if committed.load(std::sync::atomic::Ordering::Acquire) =>
            {
                Err(DiskError::NotDurable {
                    op: class,
                    cause: Box::new(e),
                })
            }
            r => r,
        }
    }

    /// Refuse a change through an inspection handle.
    fn writable(&self, class: OpClass) -> Result<()> {
        match self.mode {
            OpenMode::Owner => Ok(()),
            OpenMode::Inspect => Err(DiskError::ReadOnly { op: class }),
        }
    }

    /// The system directory, or `Unformatted` when there is none.
    fn sys(&self) -> Result<&SysDirs> {
        self.sys.as_ref().ok_or(DiskError::Unformatted)
    }

    /// Map "not found" to "volume not found" when the volume is missing
    /// (or is not a directory); a volume that is a symlink is refused.
    async fn explain_not_found(
        &self,
        vol: &VolName,
        class: OpClass,
        deadline: Deadline,
    ) -> DiskError {
        match self.driver.statx(&self.root, vol.name(), deadline).await {
            Err(e) if e.is(OsError::NotFound) => DiskError::VolumeNotFound,
            Ok(st) if st.kind == disk_io_driver::FileKind::Symlink => DiskError::InvalidPath {
                path: vol.as_str().to_string(),
                rule: PathRule::Symlink,
            },
            Ok(st) if st.kind != disk_io_driver::FileKind::Dir => DiskError::VolumeNotFound,
            Ok(_) => DiskError::FileNotFound,
            Err(e) => e.into_disk(class, vol.as_str()),
        }
    }

    /// Where the format file lives, for reads.
    fn format_name() -> RelPath {
        RelPath::from(system_name(FORMAT_FILE))
    }
}
