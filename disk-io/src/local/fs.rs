//! The file-system algorithms the operations share: resolving a parent
//! directory beneath the root (creating missing ones durably), whole and
//! ranged reads and writes, the atomic durable write, and the trash.

use std::sync::atomic::{AtomicBool, Ordering};

use disk_io_api::{Deadline, DiskError, OpClass, PathRule, Result, WrongType};
use disk_io_driver::{DriverError, File, FileKind, IoBuf, Name, Open, OsError, RelPath, Statx};

use super::paths::{system_name, ObjPath};
use super::Inner;

/// Permission bits of directories and files disk-io creates.
pub(crate) const DIR_MODE: u32 = 0o755;
pub(crate) const FILE_MODE: u32 = 0o644;

/// Refuse to read or write anything but a regular file only disk-io
/// links: a directory is the wrong type, a device node, FIFO or socket is
/// not a file, and a file with other hard links may be someone else's
/// (a link planted to a file outside the disk, or to the format file).
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
        FileKind::Dir => Err(DiskError::WrongFileType(WrongType::IsDirectory)),
        FileKind::Symlink => refuse(PathRule::Symlink),
        FileKind::Other => refuse(PathRule::NotRegular),
    }
}

impl Inner {
    /// Open `rel` beneath `dir` for reading, and check it is a regular file
    /// only disk-io links before any I/O (see [`check_regular`]).
    pub(crate) async fn open_regular(
        &self,
        dir: &File,
        rel: &RelPath,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<(File, Statx)> {
        let file = self
            .driver
            .open(dir, rel, Open::read(), deadline)
            .await
            .map_err(|e| Self::err(e, class, rel.as_str()))?;
        let st = self
            .driver
            .fstat(&file, deadline)
            .await
            .map_err(|e| Self::err(e, class, rel.as_str()))?;
        check_regular(&st, rel.as_str())?;
        Ok((file, st))
    }

    /// Create `name` in `dir` as a new file (`O_CREAT | O_EXCL`), replacing
    /// whatever entry had that name by unlinking the entry first, never by
    /// truncating the inode it names: a hard link or device node planted
    /// there is unlinked, not written through.
    pub(crate) async fn create_replacing(
        &self,
        dir: &File,
        name: &Name,
        how: Open,
        class: OpClass,
        path: &str,
        deadline: Deadline,
    ) -> Result<File> {
        let rel = RelPath::from(name.clone());
        for _ in 0..2 {
            match self.driver.open(dir, &rel, how, deadline).await {
                Ok(f) => return Ok(f),
                Err(e) if e.is(OsError::Exists) => {
                    match self.driver.unlinkat(dir, name, false, deadline).await {
                        Ok(()) => {}
                        Err(e) if e.is(OsError::NotFound) => {}
                        Err(e) => return Err(Self::err(e, class, path)),
                    }
                }
                Err(e) => return Err(Self::err(e, class, path)),
            }
        }
        // Recreated by someone else between our unlink and our create, twice.
        Err(DiskError::FileExists)
    }

    /// The API error for a driver error on `path` (see
    /// [`DriverError::into_disk`]).
    pub(crate) fn err(e: DriverError, class: OpClass, path: &str) -> DiskError {
        e.into_disk(class, path)
    }

    /// Open `rel` beneath the root.
    pub(crate) async fn open_rel(
        &self,
        rel: &RelPath,
        how: Open,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<File> {
        self.driver
            .open(&self.root, rel, how, deadline)
            .await
            .map_err(|e| Self::err(e, class, rel.as_str()))
    }

    /// The parent directory of `p` (`O_RDONLY`, so it can be fsynced). With
    /// `create`, directories missing between the volume and the target are
    /// made; the volume itself is never created (a missing one is
    /// [`DiskError::VolumeNotFound`]).
    ///
    /// **Invariant:** a directory this returns is durable, and so is every
    /// directory above it that a call of this disk created. Each directory
    /// made is registered in `fresh_dirs` until the fsync of its parent
    /// returns; a call whose path crosses one takes the walk instead of the
    /// fast open, and the walk fsyncs the parent of every directory it finds
    /// already there. If that fsync fails, the directory just made is
    /// removed again (best effort) and the error returned: nothing of the
    /// call took effect.
    pub(crate) async fn parent_dir(
        &self,
        p: &ObjPath,
        create: bool,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<File> {
        let parent = p.parent();
        if !create || !self.fresh_dirs.crosses(parent.as_str()) {
            match self.open_rel(&parent, Open::dir(), class, deadline).await {
                Err(DiskError::FileNotFound) if create => {}
                r => return r,
            }
        }
        let mut dir = self
            .open_rel(
                &RelPath::from(p.vol().name().clone()),
                Open::dir(),
                class,
                deadline,
            )
            .await
            .map_err(|e| match e {
                DiskError::FileNotFound => DiskError::VolumeNotFound,
                e => e,
            })?;
        let mut path = p.vol().as_str().to_string();
        for name in p.dirs() {
            path.push('/');
            path.push_str(name.as_str());
            let fresh = self.fresh_dirs.register(&path);
            match self.driver.mkdirat(&dir, name, DIR_MODE, deadline).await {
                Ok(()) => {
                    if let Err(e) = self.driver.fsync(&dir, false, deadline).await {
                        let _ = self.driver.unlinkat(&dir, name, true, deadline).await;
                        return Err(Self::err(e, class, &path));
                    }
                }
                // Made by someone else, maybe an instant ago: make sure its
                // entry is durable before building on it.
                Err(e) if e.is(OsError::Exists) => self
                    .driver
                    .fsync(&dir, false, deadline)
                    .await
                    .map_err(|e| Self::err(e, class, &path))?,
                Err(e) => return Err(Self::err(e, class, &path)),
            }
            drop(fresh);
            // Beneath the directory we hold, following no symlink: a
            // planted link in place of `name` stops here.
            dir = self
                .driver
                .open(&dir, &RelPath::from(name.clone()), Open::dir(), deadline)
                .await
                .map_err(|e| Self::err(e, class, &path))?;
        }
        Ok(dir)
    }

    /// Read `len` bytes at `offset`, stopping early only at end of file.
    pub(crate) async fn read_range(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<Vec<u8>> {
        let mut out: Vec<u8> = Vec::new();
        while out.len() < len {
            let want = (len - out.len()).min(self.cfg.limits.max_io_size);
            let buf = self
                .driver
                .read(
                    file,
                    IoBuf::with_capacity(want),
                    offset + out.len() as u64,
                    deadline,
                )
                .await
                .map_err(|e| Self::err(e, class, ""))?;
            let got = &buf.as_slice()[..buf.len().min(want)];
            if got.is_empty() {
                break;
            }
            if out.is_empty() && got.len() == len {
                let mut v = buf.into_vec();
                v.truncate(len);
                return Ok(v);
            }
            out.extend_from_slice(got);
        }
        Ok(out)
    }

    /// Write all of `buf` at `offset`, resubmitting after short writes, in
    /// pieces of at most `max_io_size`. Returns the buffer for reuse.
    pub(crate) async fn write_all_at(
        &self,
        file: &File,
        mut buf: IoBuf,
        offset: u64,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<IoBuf> {
        let total = buf.len();
        let mut done = 0;
        while done < total {
            let (b, n) = self
                .driver
                .write(file, buf, done, offset, deadline)
                .await
                .map_err(|e| Self::err(e, class, ""))?;
            buf = b;
            done += n;
        }
        Ok(buf)
    }

    /// Read a whole regular file of at most `max_read_all` bytes, opened
    /// beneath `dir`.
    pub(crate) async fn read_small(
        &self,
        dir: &File,
        rel: &RelPath,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<(Vec<u8>, Statx)> {
        let (file, st) = self.open_regular(dir, rel, class, deadline).await?;
        let limit = self.cfg.limits.max_read_all;
        if st.size > limit {
            return Err(DiskError::TooLarge {
                size: st.size,
                limit,
            });
        }
        let data = self
            .read_range(&file, 0, st.size as usize, class, deadline)
            .await?;
        Ok((data, st))
    }

    /// Replace `dst_dir/dst` atomically and durably: a new file in `tmp`,
    /// write, fsync, close, rename over the target, fsync of `dst_dir`.
    /// `committed` turns true once the rename landed, so a caller that runs
    /// out of time afterwards can tell [`DiskError::NotDurable`] from "not
    /// applied" (see [`disk_io_api::Disk::write_all`]).
    pub(crate) async fn atomic_write(
        &self,
        dst_dir: &File,
        dst: &Name,
        data: &[u8],
        committed: &AtomicBool,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<()> {
        let tmp_dir = self.sys()?.tmp.as_ref().ok_or(DiskError::Unformatted)?;
        let tmp = system_name(&uuid::Uuid::new_v4().to_string());
        // If the create itself fails or times out there is nothing of ours to
        // remove yet (a create that lands late leaves a file in `tmp`, which
        // the owner's next open moves to the trash). Cleaning up only after a
        // successful create also keeps a hung disk from filling its permits
        // with cleanups that cannot run either.
        let file = self
            .driver
            .open(
                tmp_dir,
                &RelPath::from(tmp.clone()),
                Open::create_new(FILE_MODE),
                deadline,
            )
            .await
            .map_err(|e| Self::err(e, class, "tmp"))?;
        // From here a temporary file of ours exists: it goes away on every
        // way out short of the commit, a dropped future (the caller's own
        // timeout) included.
        let mut guard = TmpGuard {
            inner: self,
            name: Some(tmp.clone()),
        };
        let written = async {
            if !data.is_empty() {
                self.write_all_at(&file, IoBuf::Vec(data.to_vec()), 0, class, deadline)
                    .await?;
            }
            self.driver
                .fsync(&file, false, deadline)
                .await
                .map_err(|e| Self::err(e, class, "tmp"))?;
            self.driver
                .close(file, deadline)
                .await
                .map_err(|e| Self::err(e, class, "tmp"))?;
            self.driver
                .renameat(tmp_dir, &tmp, dst_dir, dst, false, deadline)
                .await
                .map_err(|e| Self::err(e, class, dst.as_str()))
        }
        .await;
        written?;
        guard.name = None;
        committed.store(true, Ordering::Release);
        self.make_durable(dst_dir, class, dst.as_str(), deadline)
            .await
    }

    /// fsync `dir` after a change in it took effect: a failure here is
    /// [`DiskError::NotDurable`], never "not applied".
    pub(crate) async fn make_durable(
        &self,
        dir: &File,
        class: OpClass,
        path: &str,
        deadline: Deadline,
    ) -> Result<()> {
        self.driver
            .fsync(dir, false, deadline)
            .await
            .map_err(|e| DiskError::NotDurable {
                op: class,
                cause: Box::new(Self::err(e, class, path)),
            })
    }

    /// Move `dir/name` into the trash (one rename, within the deadline) and
    /// purge it in the background.
    pub(crate) async fn trash(
        &self,
        dir: &File,
        name: &Name,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<()> {
        let trash = self
            .sys()?
            .trash
            .as_ref()
            .ok_or(DiskError::ReadOnly { op: class })?;
        let aside = system_name(&uuid::Uuid::new_v4().to_string());
        self.driver
            .renameat(dir, name, trash, &aside, true, deadline)
            .await
            .map_err(|e| Self::err(e, class, name.as_str()))?;
        self.spawn_purge();
        Ok(())
    }

    /// Best-effort removal of a leftover temporary file, off the caller's
    /// path and under its own budget (the owner's next open moves `tmp` to
    /// the trash anyway).
    pub(crate) fn spawn_unlink_tmp(&self, name: Name) {
        let Some(tmp) = self.sys.as_ref().and_then(|s| s.tmp.clone()) else {
            return;
        };
        let driver = self.driver.clone();
        let deadline = self.cfg.deadline(OpClass::Delete);
        tokio::spawn(async move {
            let _ = driver.unlinkat(&tmp, &name, false, deadline).await;
        });
    }

    /// Empty the trash in the background (trees moved there by recursive
    /// deletes, and the previous run's temporary files). Owner only. One
    /// purge runs at a time, on the driver's janitor thread; a request while
    /// one runs makes it go round once more instead of starting another.
    pub(crate) fn spawn_purge(&self) {
        let Some(trash) = self.sys.as_ref().and_then(|s| s.trash.clone()) else {
            return;
        };
        let state = self.purge.clone();
        state.again.store(true, Ordering::Release);
        if state.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let driver = self.driver.clone();
        let budget = self.cfg.timeouts.trash_purge;
        let limit = self.cfg.limits.max_list_entries;
        let label = self.label.clone();
        tokio::spawn(async move {
            loop {
                while state.again.swap(false, Ordering::AcqRel) {
                    match driver
                        .remove_children(&trash, limit, Deadline::after(budget))
                        .await
                    {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(disk = %label, removed = n, "trash purged"),
                        Err(e) => {
                            tracing::warn!(disk = %label, error = %e, "trash purge did not finish")
                        }
                    }
                }
                state.running.store(false, Ordering::Release);
                // A request that came after the last round but before
                // `running` cleared: take it, unless another task did.
                if !state.again.load(Ordering::Acquire)
                    || state.running.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
        });
    }
}

/// Directories created by this disk whose parent's fsync has not returned
/// yet (see [`Inner::parent_dir`]). At most one entry per directory level a
/// call is creating, so bounded by the calls in flight.
#[derive(Debug, Default)]
pub(crate) struct FreshDirs {
    dirs: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl FreshDirs {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `dir` or any directory above it is not yet durable.
    fn crosses(&self, dir: &str) -> bool {
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
    fn register<'a>(&'a self, dir: &str) -> FreshGuard<'a> {
        let added = self.lock().insert(dir.to_string());
        FreshGuard {
            set: self,
            dir: added.then(|| dir.to_string()),
        }
    }
}

pub(crate) struct FreshGuard<'a> {
    set: &'a FreshDirs,
    /// `None` when another call registered the same directory first.
    dir: Option<String>,
}

impl Drop for FreshGuard<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            self.set.lock().remove(&d);
        }
    }
}

/// Whether a trash purge runs, and whether another round is wanted.
#[derive(Debug, Default)]
pub(crate) struct PurgeState {
    running: AtomicBool,
    again: AtomicBool,
}

/// Removes an atomic write's temporary file when dropped armed.
struct TmpGuard<'a> {
    inner: &'a Inner,
    name: Option<Name>,
}

impl Drop for TmpGuard<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            self.inner.spawn_unlink_tmp(name);
        }
    }
}
