//! [`LocalDisk`]: a directory on a local file system, driven through the
//! per-disk io_uring [`Driver`], guarded by the [`Health`] machine.
//!
//! Every public operation goes through [`Inner::guarded`]: fail fast when
//! the disk is out, a tracing span, a caller-side `timeout_at(deadline)`
//! backstop around the whole (possibly multi-step) operation, then metrics
//! and health feedback. Each kernel step inside also carries the deadline as
//! a LinkTimeout, so the kernel stops work the caller no longer waits for.

use std::ffi::CString;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tracing::Instrument;

use crate::config::DiskConfig;
use crate::deadline::Deadline;
use crate::disk::{
    CreateOptions, DeleteOptions, Disk, DiskId, DiskInfo, FileInfo, ShardWriter, VolInfo,
};
use crate::driver::buf::{AlignedBuf, IoBuf};
use crate::driver::ops::Op;
use crate::driver::{Driver, DriverStats};
use crate::error::{DiskError, Errno, Result};
use crate::format::{FormatFile, FORMAT_FILE};
use crate::health::{Health, HealthState, Transition};
use crate::op::OpClass;
use crate::path::{RelPath, SYSTEM_DIR};
use crate::stall::StallSource;

/// Size of the file the active probe writes, reads back and deletes.
const PROBE_SIZE: usize = 4096;

/// A local disk. Cheap to clone; `Send + Sync`; usable from any tokio
/// runtime (multi-threaded included) without a runtime of its own.
#[derive(Clone)]
pub struct LocalDisk {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDisk")
            .field("root", &self.inner.root)
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

    /// Open the disk: start its ring thread, open the root directory and
    /// make sure the system directory exists, all within `deadline`. Must
    /// be called inside a tokio runtime (the health monitor is a task).
    pub async fn open(self, deadline: Deadline) -> Result<LocalDisk> {
        self.config.validate()?;
        let label = self
            .label
            .unwrap_or_else(|| self.root.display().to_string());
        let driver = Driver::start(&label, &self.config.driver)?;
        let root_c = CString::new(self.root.as_os_str().as_encoded_bytes()).map_err(|_| {
            DiskError::InvalidPath {
                path: self.root.display().to_string(),
                reason: "root path contains NUL",
            }
        })?;
        let how = io_uring::types::OpenHow::new()
            .flags((libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64);
        let done = tokio::time::timeout_at(
            deadline.tokio(),
            driver.run(
                OpClass::Open,
                Op::OpenAt {
                    dirfd: libc::AT_FDCWD,
                    path: root_c,
                    how: Box::new(how),
                },
                deadline,
                None,
            ),
        )
        .await
        .map_err(|_| DiskError::DeadlineExceeded {
            op: OpClass::Open,
            waited: Duration::ZERO,
        })??;
        if done.res < 0 {
            return Err(match -done.res {
                libc::ENOENT | libc::ENOTDIR => DiskError::DiskNotFound {
                    reason: format!("{}: {}", self.root.display(), Errno(-done.res)),
                },
                e => DiskError::from_errno(OpClass::Open, e),
            });
        }
        // SAFETY: a successful openat's result is a new fd that we now own.
        let root_fd = Arc::new(unsafe { OwnedFd::from_raw_fd(done.res) });
        let health = Health::new(&label, self.config.health.clone());
        let inner = Arc::new(Inner {
            label,
            root: self.root,
            root_fd,
            driver,
            health,
            cfg: self.config,
            id_cache: Mutex::new(None),
            stall: self.stall,
            monitor: Mutex::new(None),
        });
        // Leftover temporary files from a previous run go to the trash in one
        // rename (purging `tmp` in place would race with this run's writes).
        let class = OpClass::Open;
        for rel in [RelPath::system_root(), RelPath::system("trash")] {
            ignore_exists(inner.mkdir(&rel, class, deadline).await)?;
        }
        let old_tmp = RelPath::system(&format!("trash/tmp-{}", uuid::Uuid::new_v4()));
        match inner
            .rename(&RelPath::system("tmp"), &old_tmp, class, deadline)
            .await
        {
            Ok(()) | Err(DiskError::FileNotFound) => {}
            Err(e) => return Err(e),
        }
        ignore_exists(inner.mkdir(&RelPath::system("tmp"), class, deadline).await)?;
        inner.spawn_purge();
        let weak = Arc::downgrade(&inner);
        let tick = inner.cfg.health.tick;
        let handle = tokio::spawn(monitor(weak, tick));
        *inner.monitor.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(LocalDisk { inner })
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
        }
    }

    /// Open with default configuration.
    pub async fn open(root: impl AsRef<Path>, deadline: Deadline) -> Result<LocalDisk> {
        LocalDisk::builder(root).open(deadline).await
    }

    /// The configuration in force.
    pub fn config(&self) -> &DiskConfig {
        &self.inner.cfg
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
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
        let inner = &self.inner;
        inner
            .guarded(OpClass::Format, deadline, async {
                let path = RelPath::system(FORMAT_FILE);
                if !force {
                    match inner.statx(&path, OpClass::Format, deadline).await {
                        Ok(_) => return Err(DiskError::AlreadyFormatted),
                        Err(DiskError::FileNotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
                let f = FormatFile::new(set_index, disk_index);
                inner
                    .atomic_write(&path, None, &f.to_bytes(), OpClass::Format, deadline)
                    .await?;
                *inner.id_cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(f.disk)
            })
            .await
    }

    /// Take the disk out now (an operator draining it, a test). It comes
    /// back through the usual probing.
    pub fn mark_faulty(&self, reason: &str) {
        self.inner.health.trip(reason);
    }

    /// Run one active probe now (write, read back, delete a small file)
    /// and feed the result to the health machine. Returns the probe's own
    /// result.
    pub async fn probe(&self) -> Result<Duration> {
        let started = Instant::now();
        let r = self.inner.probe().await;
        self.inner.health.on_probe(r.clone());
        r.map(|()| started.elapsed())
    }
}

struct CachedId {
    id: DiskId,
    checked_at: Instant,
    ino: u64,
    mtime: (i64, u32),
    size: u64,
}

struct Inner {
    label: String,
    root: PathBuf,
    root_fd: Arc<OwnedFd>,
    driver: Driver,
    health: Health,
    cfg: DiskConfig,
    id_cache: Mutex<Option<CachedId>>,
    stall: Option<Arc<dyn StallSource>>,
    monitor: Mutex<Option<tokio::task::JoinHandle<()>>>,
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

/// An fd owned by a composite operation or a shard writer. Dropping it
/// closes it on the ring without waiting; `close` waits (under a deadline).
struct FileFd {
    fd: RawFd,
    permit: Option<OwnedSemaphorePermit>,
    driver: Driver,
    closed: bool,
}

impl FileFd {
    async fn close(mut self, class: OpClass, deadline: Deadline) -> Result<()> {
        self.closed = true;
        // No kernel timeout: a cancelled close would leak the fd. The caller
        // still leaves at its deadline; the close then finishes as a zombie.
        let done = self
            .driver
            .run_with(
                class,
                Op::Close { fd: self.fd },
                None,
                deadline,
                self.permit.take(),
                None,
            )
            .await?;
        check(class, done.res).map(|_| ())
    }
}

impl Drop for FileFd {
    fn drop(&mut self) {
        if !self.closed {
            self.driver.close_fd(self.fd, self.permit.take());
        }
    }
}

fn ignore_exists(r: Result<()>) -> Result<()> {
    match r {
        Err(DiskError::FileExists) => Ok(()),
        r => r,
    }
}

fn check(class: OpClass, res: i32) -> Result<i32> {
    if res < 0 {
        Err(DiskError::from_errno(class, -res))
    } else {
        Ok(res)
    }
}

fn to_system_time(ts: libc::statx_timestamp) -> SystemTime {
    if ts.tv_sec >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

fn is_dir(st: &libc::statx) -> bool {
    (st.stx_mode as u32 & libc::S_IFMT) == libc::S_IFDIR
}

impl Inner {
    /// The wrapper every public operation runs in.
    async fn guarded<T, F>(&self, class: OpClass, deadline: Deadline, fut: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        if let Err(e) = self.health.admit() {
            crate::metrics::fail_fast(&self.label, class);
            return Err(e);
        }
        let span = tracing::debug_span!("disk_op", disk = %self.label, op = %class);
        let res = match tokio::time::timeout_at(deadline.tokio(), fut.instrument(span)).await {
            Ok(r) => r,
            Err(_) => Err(DiskError::DeadlineExceeded {
                op: class,
                waited: started.elapsed(),
            }),
        };
        // Report a miss against the public operation, not its inner step.
        let res = res.map_err(|e| match e {
            DiskError::DeadlineExceeded { .. } => DiskError::DeadlineExceeded {
                op: class,
                waited: started.elapsed(),
            },
            e => e,
        });
        let elapsed = started.elapsed();
        crate::metrics::record_op(&self.label, class, elapsed, res.as_ref().map(|_| ()));
        match &res {
            Err(e) if e.is_device_fault() => {
                tracing::debug!(disk = %self.label, op = %class, error = %e, ?elapsed, "device fault");
                self.health.on_fault(e)
            }
            // The disk answered (even with "not found"): it makes progress.
            _ => self.health.on_success(),
        }
        res
    }

    async fn open(
        &self,
        rel: &RelPath,
        flags: i32,
        mode: u32,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<FileFd> {
        let permit = self.driver.acquire_file(class, deadline).await?;
        let how = io_uring::types::OpenHow::new()
            .flags((flags | libc::O_CLOEXEC) as u64)
            .mode(mode as u64)
            .resolve(libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS);
        let done = self
            .driver
            .run(
                class,
                Op::OpenAt {
                    dirfd: self.root_fd.as_raw_fd(),
                    path: rel.c_string(),
                    how: Box::new(how),
                },
                deadline,
                Some(permit),
            )
            .await?;
        let fd = check(class, done.res)?;
        Ok(FileFd {
            fd,
            permit: done.file_permit,
            driver: self.driver.clone(),
            closed: false,
        })
    }

    async fn statx_at(
        &self,
        dirfd: RawFd,
        path: CString,
        flags: i32,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<libc::statx> {
        let done = self
            .driver
            .run(
                class,
                Op::Statx {
                    dirfd,
                    path,
                    flags,
                    out: Box::new(std::mem::MaybeUninit::zeroed()),
                },
                deadline,
                None,
            )
            .await?;
        check(class, done.res)?;
        match done.op {
            // SAFETY: statx succeeded, so the kernel filled the buffer (it was
            // zeroed beforehand, so any field it skipped is still valid).
            Op::Statx { out, .. } => Ok(unsafe { *out.assume_init() }),
            _ => Err(DiskError::Io {
                op: class,
                source_errno: Errno(libc::EIO),
            }),
        }
    }

    async fn statx(
        &self,
        rel: &RelPath,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<libc::statx> {
        self.statx_at(
            self.root_fd.as_raw_fd(),
            rel.c_string(),
            libc::AT_SYMLINK_NOFOLLOW,
            class,
            deadline,
        )
        .await
    }

    async fn statx_fd(&self, fd: RawFd, class: OpClass, deadline: Deadline) -> Result<libc::statx> {
        self.statx_at(fd, CString::default(), libc::AT_EMPTY_PATH, class, deadline)
            .await
    }

    /// Read up to `len` bytes at `offset`, stopping early only at EOF.
    async fn read_fd(
        &self,
        fd: RawFd,
        offset: u64,
        len: usize,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let want = (len - out.len()).min(self.cfg.limits.max_io_size);
            let done = self
                .driver
                .run(
                    class,
                    Op::Read {
                        fd,
                        buf: IoBuf::with_capacity(want),
                        len: want as u32,
                        offset: offset + out.len() as u64,
                    },
                    deadline,
                    None,
                )
                .await?;
            let n = check(class, done.res)? as usize;
            if n == 0 {
                break;
            }
            if let Op::Read { buf, .. } = done.op {
                if out.is_empty() && n == len {
                    return Ok(buf.into_vec());
                }
                out.extend_from_slice(buf.as_slice());
            }
        }
        Ok(out)
    }

    /// Write all of `buf` at `offset`, resubmitting after short writes.
    /// Returns the buffer for reuse.
    async fn write_fd(
        &self,
        fd: RawFd,
        mut buf: IoBuf,
        offset: u64,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<IoBuf> {
        let total = buf.len();
        let mut skip = 0;
        while skip < total {
            // Split oversized writes so one SQE's length always fits.
            let done = self
                .driver
                .run(
                    class,
                    Op::Write {
                        fd,
                        buf,
                        skip,
                        offset,
                    },
                    deadline,
                    None,
                )
                .await?;
            let n = check(class, done.res)? as usize;
            buf = match done.op {
                Op::Write { buf, .. } => buf,
                _ => unreachable_op(class)?,
            };
            if n == 0 {
                return Err(DiskError::Io {
                    op: class,
                    source_errno: Errno(libc::EIO),
                });
            }
            skip += n;
        }
        Ok(buf)
    }

    async fn fsync(
        &self,
        fd: RawFd,
        datasync: bool,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<()> {
        let done = self
            .driver
            .run(class, Op::Fsync { fd, datasync }, deadline, None)
            .await?;
        check(class, done.res).map(|_| ())
    }

    async fn mkdir(&self, rel: &RelPath, class: OpClass, deadline: Deadline) -> Result<()> {
        let done = self
            .driver
            .run(
                class,
                Op::MkDirAt {
                    dirfd: self.root_fd.as_raw_fd(),
                    path: rel.c_string(),
                    mode: 0o755,
                },
                deadline,
                None,
            )
            .await?;
        check(class, done.res).map(|_| ())
    }

    /// Create every missing ancestor of `rel` below its volume.
    async fn mkdir_parents(&self, rel: &RelPath, class: OpClass, deadline: Deadline) -> Result<()> {
        // The first ancestor is the volume itself, which must already exist.
        for dir in rel.ancestors().iter().skip(1) {
            match self.mkdir(dir, class, deadline).await {
                Ok(()) | Err(DiskError::FileExists) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn unlink(
        &self,
        rel: &RelPath,
        flags: i32,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<()> {
        let done = self
            .driver
            .run(
                class,
                Op::UnlinkAt {
                    dirfd: self.root_fd.as_raw_fd(),
                    path: rel.c_string(),
                    flags,
                },
                deadline,
                None,
            )
            .await?;
        check(class, done.res).map(|_| ())
    }

    async fn rename(
        &self,
        from: &RelPath,
        to: &RelPath,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<()> {
        let done = self
            .driver
            .run(
                class,
                Op::RenameAt {
                    dirfd: self.root_fd.as_raw_fd(),
                    from: from.c_string(),
                    to: to.c_string(),
                    flags: 0,
                },
                deadline,
                None,
            )
            .await?;
        check(class, done.res).map(|_| ())
    }

    /// fsync a directory so a rename or create inside it is durable.
    async fn fsync_dir(&self, rel: &RelPath, class: OpClass, deadline: Deadline) -> Result<()> {
        let dir = self
            .open(rel, libc::O_RDONLY | libc::O_DIRECTORY, 0, class, deadline)
            .await?;
        self.fsync(dir.fd, false, class, deadline).await
    }

    /// Map "not found" to "volume not found" when the volume is missing.
    async fn explain_not_found(
        &self,
        err: DiskError,
        vol: &str,
        class: OpClass,
        deadline: Deadline,
    ) -> DiskError {
        if err != DiskError::FileNotFound {
            return err;
        }
        let Ok(v) = RelPath::volume(vol) else {
            return err;
        };
        match self.statx(&v, class, deadline).await {
            Err(DiskError::FileNotFound) => DiskError::VolumeNotFound,
            Ok(st) if !is_dir(&st) => DiskError::VolumeNotFound,
            _ => err,
        }
    }

    /// Read a whole file of at most `max_read_all` bytes.
    async fn read_small(
        &self,
        rel: &RelPath,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<(Vec<u8>, libc::statx)> {
        let file = self.open(rel, libc::O_RDONLY, 0, class, deadline).await?;
        let st = self.statx_fd(file.fd, class, deadline).await?;
        if is_dir(&st) {
            return Err(DiskError::WrongFileType {
                detail: "is a directory",
            });
        }
        if st.stx_size > self.cfg.limits.max_read_all {
            return Err(DiskError::TooLarge {
                size: st.stx_size,
                limit: self.cfg.limits.max_read_all,
            });
        }
        let data = self
            .read_fd(file.fd, 0, st.stx_size as usize, class, deadline)
            .await?;
        Ok((data, st))
    }

    /// tmp file, write, fsync, close, rename over `dst`, fsync the
    /// directory. `vol` is `Some` for caller paths (whose parents may be
    /// created, but never the volume itself).
    async fn atomic_write(
        &self,
        dst: &RelPath,
        vol: Option<&str>,
        data: &[u8],
        class: OpClass,
        deadline: Deadline,
    ) -> Result<()> {
        let tmp = RelPath::system(&format!("tmp/{}", uuid::Uuid::new_v4()));
        // If the create itself fails or times out there is nothing of ours to
        // remove yet (a create that lands late leaves a file in `tmp`, which
        // the next open moves to the trash). Cleaning up only after a
        // successful create also keeps a hung disk from filling its permits
        // with cleanups that cannot run either.
        let file = self
            .open(
                &tmp,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o644,
                class,
                deadline,
            )
            .await?;
        let res = async {
            if !data.is_empty() {
                self.write_fd(file.fd, IoBuf::Vec(data.to_vec()), 0, class, deadline)
                    .await?;
            }
            self.fsync(file.fd, false, class, deadline).await?;
            file.close(class, deadline).await?;
            match self.rename(&tmp, dst, class, deadline).await {
                Err(DiskError::FileNotFound) if vol.is_some() => {
                    let vol = vol.unwrap_or_default();
                    let e = self
                        .explain_not_found(DiskError::FileNotFound, vol, class, deadline)
                        .await;
                    if e == DiskError::VolumeNotFound {
                        return Err(e);
                    }
                    self.mkdir_parents(dst, class, deadline).await?;
                    self.rename(&tmp, dst, class, deadline).await?;
                }
                r => r?,
            }
            let parent = dst.parent().unwrap_or_else(RelPath::root);
            self.fsync_dir(&parent, class, deadline).await
        }
        .await;
        if res.is_err() {
            self.spawn_unlink(tmp);
        }
        res
    }

    /// Best-effort removal of a leftover temporary file, off the caller's
    /// path and under its own budget (the tmp dir is also purged at open).
    fn spawn_unlink(&self, rel: RelPath) {
        let driver = self.driver.clone();
        let dirfd = self.root_fd.clone();
        let deadline = Deadline::after(self.cfg.timeouts.metadata);
        tokio::spawn(async move {
            let _ = driver
                .run(
                    OpClass::Delete,
                    Op::UnlinkAt {
                        dirfd: dirfd.as_raw_fd(),
                        path: rel.c_string(),
                        flags: 0,
                    },
                    deadline,
                    None,
                )
                .await;
        });
    }

    /// Empty the trash in the background (trees moved there by recursive
    /// deletes, and the previous run's temporary files).
    fn spawn_purge(&self) {
        let driver = self.driver.clone();
        let dirfd = self.root_fd.clone();
        let deadline = Deadline::after(self.cfg.timeouts.trash_purge);
        let label = self.label.clone();
        tokio::spawn(async move {
            let r = driver
                .blocking(OpClass::Delete, deadline, move || {
                    purge_dir(&dirfd, &format!("{SYSTEM_DIR}/trash"))
                })
                .await;
            match r {
                Ok(Ok(n)) if n > 0 => tracing::debug!(disk = %label, removed = n, "trash purged"),
                Ok(Err(e)) => tracing::warn!(disk = %label, error = %e, "trash purge failed"),
                Err(e) => tracing::warn!(disk = %label, error = %e, "trash purge did not finish"),
                _ => {}
            }
        });
    }

    async fn disk_id(&self, deadline: Deadline) -> Result<DiskId> {
        let class = OpClass::DiskId;
        let path = RelPath::system(FORMAT_FILE);
        let cached = {
            let g = self.id_cache.lock().unwrap_or_else(|e| e.into_inner());
            g.as_ref()
                .map(|c| (c.id, c.checked_at, c.ino, c.mtime, c.size))
        };
        if let Some((id, checked_at, ino, mtime, size)) = cached {
            if checked_at.elapsed() < self.cfg.disk_id_cache_ttl {
                return Ok(id);
            }
            // Staleness check, under the same deadline as everything else.
            let st = self
                .statx(&path, class, deadline)
                .await
                .map_err(|e| match e {
                    DiskError::FileNotFound => DiskError::Unformatted,
                    e => e,
                })?;
            if st.stx_ino == ino
                && (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec) == mtime
                && st.stx_size == size
            {
                if let Some(c) = self
                    .id_cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_mut()
                {
                    c.checked_at = Instant::now();
                }
                return Ok(id);
            }
        }
        let (bytes, st) = self
            .read_small(&path, class, deadline)
            .await
            .map_err(|e| match e {
                DiskError::FileNotFound => DiskError::Unformatted,
                e => e,
            })?;
        let f = FormatFile::parse(&bytes)?;
        *self.id_cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(CachedId {
            id: f.disk,
            checked_at: Instant::now(),
            ino: st.stx_ino,
            mtime: (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
            size: st.stx_size,
        });
        Ok(f.disk)
    }

    /// Write, read back and delete a small file.
    async fn probe(&self) -> Result<()> {
        let class = OpClass::Probe;
        let deadline = self.cfg.deadline(class);
        let started = Instant::now();
        let rel = RelPath::system(&format!("tmp/probe-{}", uuid::Uuid::new_v4()));
        let pattern: Vec<u8> = (0..PROBE_SIZE).map(|i| (i * 31 + 7) as u8).collect();
        // The probe goes through the same atomic write path callers use (tmp
        // file, write, fsync, rename, directory fsync), so it touches the
        // device itself, not just the page cache.
        let mut written = false;
        let r = tokio::time::timeout_at(deadline.tokio(), async {
            self.atomic_write(&rel, None, &pattern, class, deadline)
                .await?;
            written = true;
            let (back, _) = self.read_small(&rel, class, deadline).await?;
            self.unlink(&rel, 0, class, deadline).await?;
            if back != pattern {
                return Err(DiskError::Io {
                    op: class,
                    source_errno: Errno(libc::EIO),
                });
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| {
            Err(DiskError::DeadlineExceeded {
                op: class,
                waited: started.elapsed(),
            })
        });
        if r.is_err() && written {
            self.spawn_unlink(rel);
        }
        crate::metrics::probe(&self.label, r.is_ok());
        r
    }

    /// One tick of the health monitor.
    async fn monitor_tick(&self) {
        let stats = self.driver.stats();
        let zombies = stats.zombies();
        crate::metrics::driver_gauges(&self.label, stats.in_flight(), zombies);
        if zombies > self.cfg.driver.zombie_cap {
            self.health.hold(&format!(
                "{zombies} zombie operations exceed the cap of {}",
                self.cfg.driver.zombie_cap
            ));
        }
        if let Some(stall) = self.stall.as_ref().and_then(|s| s.check()) {
            self.health.hold(&format!(
                "device {} has a request outstanding for {:?}",
                stall.device, stall.oldest_age
            ));
            return;
        }
        if zombies > self.cfg.driver.zombie_cap {
            return;
        }
        if self.health.probe_due() {
            let r = self.probe().await;
            self.health.on_probe(r);
        }
    }
}

fn unreachable_op<T>(class: OpClass) -> Result<T> {
    // The driver hands back the op it was given; anything else is a bug in
    // this crate. Answer with an error rather than panic a storage node.
    debug_assert!(false, "driver returned a different op for {class}");
    Err(DiskError::Io {
        op: class,
        source_errno: Errno(libc::EIO),
    })
}

async fn monitor(weak: Weak<Inner>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        inner.monitor_tick().await;
    }
}

/// Remove everything inside `dirfd/rel` (blocking; runs on the pool).
fn purge_dir(root: &OwnedFd, rel: &str) -> std::io::Result<usize> {
    // Paths through /proc/self/fd keep the purge beneath this disk's root
    // fd even if the root path was remounted or renamed since open.
    let path = PathBuf::from(format!("/proc/self/fd/{}/{rel}", root.as_raw_fd()));
    let mut removed = 0;
    for entry in std::fs::read_dir(&path)? {
        let entry = entry?;
        let p = entry.path();
        let r = if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match r {
            Ok(()) => removed += 1,
            // Another purge (a concurrent recursive delete) got there first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Read a directory's entries (blocking; runs on the pool).
fn read_dir_at(
    root: &OwnedFd,
    rel: &RelPath,
    limit: usize,
    dirs_only: bool,
) -> Result<Vec<(String, bool)>> {
    use nix::dir::{Dir, Type};
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let class = OpClass::ListDir;
    let mut dir = Dir::openat(
        root,
        rel.as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| DiskError::from_errno(class, e as i32))?;
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| DiskError::from_errno(class, e as i32))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let is_dir = matches!(entry.file_type(), Some(Type::Directory));
        if dirs_only && (!is_dir || name.starts_with('.')) {
            continue;
        }
        if out.len() >= limit {
            return Err(DiskError::TooLarge {
                size: out.len() as u64 + 1,
                limit: limit as u64,
            });
        }
        out.push((name, is_dir));
    }
    out.sort();
    Ok(out)
}

#[async_trait]
impl Disk for LocalDisk {
    fn label(&self) -> &str {
        &self.inner.label
    }

    fn state(&self) -> HealthState {
        self.inner.health.state()
    }

    async fn disk_id(&self, deadline: Deadline) -> Result<DiskId> {
        let inner = &self.inner;
        inner
            .guarded(OpClass::DiskId, deadline, inner.disk_id(deadline))
            .await
    }

    async fn disk_info(&self, deadline: Deadline) -> Result<DiskInfo> {
        let inner = &self.inner;
        inner
            .guarded(OpClass::DiskInfo, deadline, async {
                let root = inner.root_fd.clone();
                let vfs = inner
                    .driver
                    .blocking(OpClass::DiskInfo, deadline, move || {
                        nix::sys::statvfs::fstatvfs(&*root)
                    })
                    .await?
                    .map_err(|e| DiskError::from_errno(OpClass::DiskInfo, e as i32))?;
                let id = match inner.disk_id(deadline).await {
                    Ok(id) => Some(id),
                    Err(DiskError::Unformatted) => None,
                    Err(e) => return Err(e),
                };
                let frsize = vfs.fragment_size();
                let stats = inner.driver.stats();
                Ok(DiskInfo {
                    id,
                    total: vfs.blocks() * frsize,
                    free: vfs.blocks_available() * frsize,
                    used: (vfs.blocks() - vfs.blocks_free()) * frsize,
                    files: vfs.files(),
                    files_free: vfs.files_free(),
                    state: inner.health.state(),
                    in_flight: stats.in_flight(),
                    zombies: stats.zombies(),
                })
            })
            .await
    }

    async fn make_vol(&self, vol: &str, deadline: Deadline) -> Result<()> {
        let inner = &self.inner;
        let rel = RelPath::volume(vol)?;
        inner
            .guarded(OpClass::MakeVol, deadline, async {
                inner
                    .mkdir(&rel, OpClass::MakeVol, deadline)
                    .await
                    .map_err(|e| match e {
                        DiskError::FileExists => DiskError::VolumeExists,
                        e => e,
                    })
            })
            .await
    }

    async fn list_vols(&self, deadline: Deadline) -> Result<Vec<VolInfo>> {
        let inner = &self.inner;
        inner
            .guarded(OpClass::ListVols, deadline, async {
                let root = inner.root_fd.clone();
                let limit = inner.cfg.limits.max_list_entries;
                let names = inner
                    .driver
                    .blocking(OpClass::ListVols, deadline, move || {
                        read_dir_at(&root, &RelPath::root(), limit, true)
                    })
                    .await??;
                let mut vols = Vec::with_capacity(names.len());
                for (name, _) in names {
                    let rel = RelPath::volume(&name)?;
                    let st = inner.statx(&rel, OpClass::ListVols, deadline).await?;
                    vols.push(VolInfo {
                        name,
                        created: to_system_time(st.stx_ctime),
                    });
                }
                Ok(vols)
            })
            .await
    }

    async fn stat_vol(&self, vol: &str, deadline: Deadline) -> Result<VolInfo> {
        let inner = &self.inner;
        let rel = RelPath::volume(vol)?;
        inner
            .guarded(OpClass::StatVol, deadline, async {
                match inner.statx(&rel, OpClass::StatVol, deadline).await {
                    Ok(st) if is_dir(&st) => Ok(VolInfo {
                        name: vol.to_string(),
                        created: to_system_time(st.stx_ctime),
                    }),
                    Ok(_) | Err(DiskError::FileNotFound) => Err(DiskError::VolumeNotFound),
                    Err(e) => Err(e),
                }
            })
            .await
    }

    async fn delete_vol(&self, vol: &str, force: bool, deadline: Deadline) -> Result<()> {
        let inner = &self.inner;
        let rel = RelPath::volume(vol)?;
        let class = OpClass::DeleteVol;
        inner
            .guarded(class, deadline, async {
                match inner
                    .unlink(&rel, libc::AT_REMOVEDIR, class, deadline)
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(DiskError::FileNotFound) => Err(DiskError::VolumeNotFound),
                    Err(DiskError::DirectoryNotEmpty) if force => {
                        inner.trash(&rel, class, deadline).await
                    }
                    Err(DiskError::DirectoryNotEmpty) => Err(DiskError::VolumeNotEmpty),
                    Err(e) => Err(e),
                }
            })
            .await
    }

    async fn read_all(&self, vol: &str, path: &str, deadline: Deadline) -> Result<Vec<u8>> {
        let inner = &self.inner;
        let rel = RelPath::new(vol, path)?;
        let class = OpClass::ReadAll;
        inner
            .guarded(class, deadline, async {
                match inner.read_small(&rel, class, deadline).await {
                    Ok((data, _)) => Ok(data),
                    Err(e) => Err(inner.explain_not_found(e, vol, class, deadline).await),
                }
            })
            .await
    }

    async fn write_all(
        &self,
        vol: &str,
        path: &str,
        data: &[u8],
        deadline: Deadline,
    ) -> Result<()> {
        let inner = &self.inner;
        let rel = RelPath::new(vol, path)?;
        inner
            .guarded(
                OpClass::WriteAll,
                deadline,
                inner.atomic_write(&rel, Some(vol), data, OpClass::WriteAll, deadline),
            )
            .await
    }

    async fn create_file(
        &self,
        vol: &str,
        path: &str,
        opts: CreateOptions,
        deadline: Deadline,
    ) -> Result<Box<dyn ShardWriter>> {
        let inner = &self.inner;
        let rel = RelPath::new(vol, path)?;
        let class = OpClass::CreateFile;
        inner
            .guarded(class, deadline, async {
                let mut flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
                if opts.direct {
                    flags |= libc::O_DIRECT;
                }
                let file = match inner.open(&rel, flags, 0o644, class, deadline).await {
                    Err(DiskError::FileNotFound) => {
                        let e = inner
                            .explain_not_found(DiskError::FileNotFound, vol, class, deadline)
                            .await;
                        if e == DiskError::VolumeNotFound {
                            return Err(e);
                        }
                        inner.mkdir_parents(&rel, class, deadline).await?;
                        inner.open(&rel, flags, 0o644, class, deadline).await
                    }
                    r => r,
                }
                .map_err(|e| match e {
                    DiskError::Io {
                        source_errno: Errno(libc::EINVAL),
                        ..
                    } if opts.direct => DiskError::InvalidArgument {
                        reason: "the file system does not support O_DIRECT".into(),
                    },
                    e => e,
                })?;
                let staging = if opts.direct {
                    let l = &inner.cfg.limits;
                    Some(
                        AlignedBuf::new(l.direct_io_chunk, l.direct_io_alignment).ok_or_else(
                            || DiskError::InvalidArgument {
                                reason: "cannot allocate the O_DIRECT staging buffer".into(),
                            },
                        )?,
                    )
                } else {
                    None
                };
                let w: Box<dyn ShardWriter> = Box::new(LocalShardWriter {
                    disk: self.inner.clone(),
                    file: Some(file),
                    offset: 0,
                    staging,
                    datasync: opts.datasync,
                    poisoned: false,
                });
                Ok(w)
            })
            .await
    }

    async fn read_file_at(
        &self,
        vol: &str,
        path: &str,
        offset: u64,
        len: usize,
        deadline: Deadline,
    ) -> Result<Vec<u8>> {
        let inner = &self.inner;
        let rel = RelPath::new(vol, path)?;
        let class = OpClass::ReadFileAt;
        if len > inner.cfg.limits.max_read_len {
            return Err(DiskError::TooLarge {
                size: len as u64,
                limit: inner.cfg.limits.max_read_len as u64,
            });
        }
        inner
            .guarded(class, deadline, async {
                let file = match inner.open(&rel, libc::O_RDONLY, 0, class, deadline).await {
                    Ok(f) => f,
                    Err(e) => return Err(inner.explain_not_found(e, vol, class, deadline).await),
                };
                let data = inner.read_fd(file.fd, offset, len, class, deadline).await?;
                if data.len() < len {
                    return Err(DiskError::UnexpectedEof {
                        wanted: len as u64,
                        got: data.len() as u64,
                    });
                }
                Ok(data)
            })
            .await
    }

    async fn stat_file(&self, vol: &str, path: &str, deadline: Deadline) -> Result<FileInfo> {
        let inner = &self.inner;
        let rel = RelPath::new(vol, path)?;
        let class = OpClass::StatFile;
        inner
            .guarded(class, deadline, async {
                match inner.statx(&rel, class, deadline).await {
                    Ok(st) => Ok(FileInfo {
                        size: st.stx_size,
                        modified: to_system_time(st.stx_mtime),
                        is_dir: is_dir(&st),
                    }),
                    Err(e) => Err(inner.explain_not_found(e, vol, class, deadline).await),
                }
            })
            .await
    }

    async fn rename_file(
        &self,
        src_vol: &str,
        src: &str,
        dst_vol: &str,
        dst: &str,
        deadline: Deadline,
    ) -> Result<()> {
        let inner = &self.inner;
        let from = RelPath::new(src_vol, src)?;
        let to = RelPath::new(dst_vol, dst)?;
        let class = OpClass::RenameFile;
        inner
            .guarded(class, deadline, async {
                match inner.rename(&from, &to, class, deadline).await {
                    Err(DiskError::FileNotFound) => {
                        // Which side is missing: the source, or the destination's parents?
                        if let Err(e) = inner.statx(&from, class, deadline).await {
                            return Err(inner.explain_not_found(e, src_vol, class, deadline).await);
                        }
                        let e = inner
                            .explain_not_found(DiskError::FileNotFound, dst_vol, class, deadline)
                            .await;
                        if e == DiskError::VolumeNotFound {
                            return Err(e);
                        }
                        inner.mkdir_parents(&to, class, deadline).await?;
                        inner.rename(&from, &to, class, deadline).await?;
                    }
                    r => r?,
                }
                let parent = to.parent().unwrap_or_else(RelPath::root);
                inner.fsync_dir(&parent, class, deadline).await
            })
            .await
    }

    async fn delete(
        &self,
        vol: &str,
        path: &str,
        opts: DeleteOptions,
        deadline: Deadline,
    ) -> Result<()> {
        let inner = &self.inner;
        let rel = RelPath::new(vol, path)?;
        let class = OpClass::Delete;
        inner
            .guarded(class, deadline, async {
                let r = match inner.unlink(&rel, 0, class, deadline).await {
                    Err(DiskError::WrongFileType { .. }) => {
                        match inner
                            .unlink(&rel, libc::AT_REMOVEDIR, class, deadline)
                            .await
                        {
                            Err(DiskError::DirectoryNotEmpty) if opts.recursive => {
                                inner.trash(&rel, class, deadline).await
                            }
                            r => r,
                        }
                    }
                    r => r,
                };
                match r {
                    Err(e) => Err(inner.explain_not_found(e, vol, class, deadline).await),
                    Ok(()) => Ok(()),
                }
            })
            .await
    }

    async fn list_dir(&self, vol: &str, dir: &str, deadline: Deadline) -> Result<Vec<String>> {
        let inner = &self.inner;
        let rel = RelPath::dir(vol, dir)?;
        let class = OpClass::ListDir;
        inner
            .guarded(class, deadline, async {
                let root = inner.root_fd.clone();
                let limit = inner.cfg.limits.max_list_entries;
                let r = inner
                    .driver
                    .blocking(class, deadline, move || {
                        read_dir_at(&root, &rel, limit, false)
                    })
                    .await?;
                match r {
                    Ok(entries) => Ok(entries
                        .into_iter()
                        .map(|(name, is_dir)| if is_dir { format!("{name}/") } else { name })
                        .collect()),
                    Err(e) => Err(inner.explain_not_found(e, vol, class, deadline).await),
                }
            })
            .await
    }
}

impl Inner {
    /// Move a tree into the trash (one rename, within the deadline) and
    /// purge it in the background.
    async fn trash(&self, rel: &RelPath, class: OpClass, deadline: Deadline) -> Result<()> {
        let dst = RelPath::system(&format!("trash/{}", uuid::Uuid::new_v4()));
        self.rename(rel, &dst, class, deadline).await?;
        self.spawn_purge();
        Ok(())
    }
}

/// Shard writer over a local file.
struct LocalShardWriter {
    disk: Arc<Inner>,
    file: Option<FileFd>,
    offset: u64,
    /// O_DIRECT staging buffer (aligned); `None` for buffered writes.
    staging: Option<AlignedBuf>,
    datasync: bool,
    /// A write failed: the file's content is undefined from here on.
    poisoned: bool,
}

impl LocalShardWriter {
    fn fd(&self) -> Result<RawFd> {
        if self.poisoned {
            return Err(DiskError::InvalidArgument {
                reason: "an earlier write on this shard failed; its content is undefined".into(),
            });
        }
        self.file
            .as_ref()
            .map(|f| f.fd)
            .ok_or(DiskError::InvalidArgument {
                reason: "shard writer already finished".into(),
            })
    }

    /// Write the staging buffer's first `len` bytes (a multiple of the
    /// alignment) at the current offset and keep the rest staged.
    async fn flush_staged(&mut self, len: usize, deadline: Deadline) -> Result<()> {
        let fd = self.fd()?;
        let Some(mut staging) = self.staging.take() else {
            return Ok(());
        };
        let keep = staging.as_slice()[len..].to_vec();
        staging.truncate(len);
        let r = self
            .disk
            .write_fd(
                fd,
                IoBuf::Aligned(staging),
                self.offset,
                OpClass::Append,
                deadline,
            )
            .await;
        match r {
            Ok(IoBuf::Aligned(mut b)) => {
                b.clear();
                b.extend_from(&keep);
                self.offset += len as u64;
                self.staging = Some(b);
                Ok(())
            }
            Ok(IoBuf::Vec(_)) => unreachable_op(OpClass::Append),
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl ShardWriter for LocalShardWriter {
    async fn append(&mut self, data: &[u8], deadline: Deadline) -> Result<()> {
        let disk = self.disk.clone();
        disk.guarded(OpClass::Append, deadline, async {
            let fd = self.fd()?;
            if self.staging.is_none() {
                let r = self
                    .disk
                    .write_fd(
                        fd,
                        IoBuf::Vec(data.to_vec()),
                        self.offset,
                        OpClass::Append,
                        deadline,
                    )
                    .await;
                return match r {
                    Ok(_) => {
                        self.offset += data.len() as u64;
                        Ok(())
                    }
                    Err(e) => {
                        self.poisoned = true;
                        Err(e)
                    }
                };
            }
            let mut rest = data;
            while !rest.is_empty() {
                let staging = self.staging.as_mut().ok_or(DiskError::ShutDown)?;
                let n = staging.extend_from(rest);
                rest = &rest[n..];
                if staging.remaining() == 0 {
                    let full = staging.capacity();
                    self.flush_staged(full, deadline).await?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn finish(mut self: Box<Self>, deadline: Deadline) -> Result<u64> {
        let disk = self.disk.clone();
        disk.guarded(OpClass::Finish, deadline, async {
            let fd = self.fd()?;
            let class = OpClass::Finish;
            if let Some(staged) = self.staging.as_ref().map(|s| s.as_slice().len()) {
                let align = self.disk.cfg.limits.direct_io_alignment;
                let aligned = staged - staged % align;
                if aligned > 0 {
                    self.flush_staged(aligned, deadline).await?;
                }
                let tail: Vec<u8> = self
                    .staging
                    .as_ref()
                    .map(|s| s.as_slice().to_vec())
                    .unwrap_or_default();
                if !tail.is_empty() {
                    // O_DIRECT cannot write an unaligned tail. Clearing the flag is
                    // an fcntl on the fd's flags, never I/O, so it cannot block.
                    // SAFETY: plain fcntl on an fd we own.
                    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
                    // SAFETY: as above.
                    if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_DIRECT) } < 0
                    {
                        self.poisoned = true;
                        return Err(DiskError::from_errno(
                            class,
                            std::io::Error::last_os_error()
                                .raw_os_error()
                                .unwrap_or(libc::EIO),
                        ));
                    }
                    self.disk
                        .write_fd(fd, IoBuf::Vec(tail.clone()), self.offset, class, deadline)
                        .await
                        .inspect_err(|_| self.poisoned = true)?;
                    self.offset += tail.len() as u64;
                }
            }
            self.disk.fsync(fd, self.datasync, class, deadline).await?;
            if let Some(file) = self.file.take() {
                file.close(class, deadline).await?;
            }
            Ok(self.offset)
        })
        .await
    }
}
