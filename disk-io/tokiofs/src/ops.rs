//! The [`Disk`] operations of a [`TokioFsDisk`], step for step those of
//! `LocalDisk` (`disk-io/src/local/ops.rs` and `fs.rs`): validate the
//! caller's path (an `InvalidPath` before any I/O), then run the steps
//! inside [`Inner::run`], each system call on tokio's blocking pool
//! (`sys.rs`), data reads through `tokio::fs::File`.

use std::fs::File;
use std::io::SeekFrom;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use disk_io::format::FormatFile;
use disk_io_api::{
    CreateOptions, Deadline, DeleteOptions, Disk, DiskError, DiskId, DiskInfo, Errno, FileInfo,
    HealthState, OpClass, PathRule, Result, ShardWriter, VolInfo,
};
use disk_io_driver::{FileKind, Name, OsError, Statx};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::paths::{system_name, DirPath, ObjPath, VolName, FORMAT_FILE};
use crate::shard::{close_off_worker, Staging, TokioShardWriter};
use crate::sys::{self, How};
use crate::{CachedId, Inner, TokioFsDisk};

fn symlink(path: &str) -> DiskError {
    DiskError::InvalidPath {
        path: path.to_string(),
        rule: PathRule::Symlink,
    }
}

fn too_many(limit: usize) -> DiskError {
    DiskError::TooLarge {
        size: limit as u64 + 1,
        limit: limit as u64,
    }
}

fn io(class: OpClass) -> impl Fn(std::io::Error) -> DiskError {
    move |e| sys::io_err(&e).into_disk(class, "")
}

/// A `tokio::fs::File` whose close goes to the blocking pool when it is
/// dropped (a regular file's close can block, e.g. FUSE's FLUSH), rather
/// than running on the runtime worker that drops it.
struct OffWorker(Option<tokio::fs::File>);

impl Drop for OffWorker {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            // With an operation in flight, that job holds the file and
            // closes it on the pool when it ends.
            if let Ok(std) = f.try_into_std() {
                close_off_worker(std);
            }
        }
    }
}

/// Read `len` bytes at `offset`, stopping early only at end of file.
async fn read_range_tokio(
    file: &mut tokio::fs::File,
    offset: u64,
    len: usize,
    class: OpClass,
) -> Result<Vec<u8>> {
    let mut data = vec![0u8; len];
    let mut done = 0;
    if len > 0 {
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(io(class))?;
    }
    while done < len {
        let n = file.read(&mut data[done..]).await.map_err(io(class))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    data.truncate(done);
    Ok(data)
}

impl Inner {
    pub(crate) async fn format(
        &self,
        set_index: u32,
        disk_index: u32,
        force: bool,
        deadline: Deadline,
    ) -> Result<DiskId> {
        let class = OpClass::Format;
        let committed = AtomicBool::new(false);
        self.run_committing(class, deadline, None, &committed, async {
            let name = system_name(FORMAT_FILE)?;
            if !force {
                let (dir, n) = (self.sys.dir.clone(), name.clone());
                self.blocking(class, deadline, move |_| match sys::stat_at(&dir, &n) {
                    Ok(_) => Err(DiskError::AlreadyFormatted),
                    Err(e) if e.is(OsError::NotFound) => Ok(()),
                    Err(e) => Err(e.into_disk(class, FORMAT_FILE)),
                })
                .await?;
            }
            let f = FormatFile::new(set_index, disk_index);
            let r = self
                .atomic_write(
                    self.sys.dir.clone(),
                    name,
                    f.to_bytes(),
                    &committed,
                    class,
                    deadline,
                )
                .await;
            *self.id_cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
            r.map(|()| f.disk)
        })
        .await
    }

    /// The identity from the format file, from a short cache whose
    /// staleness check (the file's inode, mtime and size) runs under the
    /// caller's deadline too.
    pub(crate) async fn disk_id(&self, deadline: Deadline) -> Result<DiskId> {
        let class = OpClass::DiskId;
        let unformatted = |e: DiskError| match e {
            DiskError::FileNotFound => DiskError::Unformatted,
            e => e,
        };
        let cached = {
            let g = self.id_cache.lock().unwrap_or_else(|e| e.into_inner());
            g.as_ref()
                .map(|c| (c.id, c.checked_at, c.ino, c.mtime, c.size))
        };
        if let Some((id, checked_at, ino, mtime, size)) = cached {
            if checked_at.elapsed() < self.cfg.disk_id_cache_ttl {
                return Ok(id);
            }
            let (dir, name) = (self.sys.dir.clone(), system_name(FORMAT_FILE)?);
            let st = self
                .blocking(class, deadline, move |_| {
                    sys::stat_at(&dir, &name).map_err(|e| e.into_disk(class, FORMAT_FILE))
                })
                .await
                .map_err(unformatted)?;
            Inner::check_regular(&st, FORMAT_FILE)?;
            if (st.ino, st.mtime, st.size) == (ino, mtime, size) {
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
            .read_small(
                self.sys.dir.clone(),
                FORMAT_FILE.to_string(),
                class,
                deadline,
            )
            .await
            .map_err(unformatted)?;
        let f = FormatFile::parse(&bytes)?;
        *self.id_cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(CachedId {
            id: f.disk,
            checked_at: Instant::now(),
            ino: st.ino,
            mtime: st.mtime,
            size: st.size,
        });
        Ok(f.disk)
    }

    /// Open `rel` beneath `dir` for reading and check it is a regular file
    /// only disk-io links, in one blocking job.
    fn open_regular_sync(dir: &File, rel: &str, class: OpClass) -> Result<(File, Statx)> {
        let file = sys::open_at(dir, rel, How::Read).map_err(|e| e.into_disk(class, rel))?;
        let st = sys::fstat(&file).map_err(|e| e.into_disk(class, rel))?;
        Inner::check_regular(&st, rel)?;
        Ok((file, st))
    }

    /// Read a whole regular file of at most `max_read_all` bytes beneath
    /// `dir`: one blocking job (open, fstat, check, read), as
    /// `tokio::fs::read` would be.
    pub(crate) async fn read_small(
        &self,
        dir: Arc<File>,
        rel: String,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<(Vec<u8>, Statx)> {
        let limit = self.cfg.limits.max_read_all;
        let chunk = self.cfg.limits.max_io_size;
        self.blocking(class, deadline, move |_| {
            let (file, st) = Inner::open_regular_sync(&dir, &rel, class)?;
            if st.size > limit {
                return Err(DiskError::TooLarge {
                    size: st.size,
                    limit,
                });
            }
            let data = sys::read_range(&file, 0, st.size as usize, chunk)
                .map_err(|e| e.into_disk(class, ""))?;
            Ok((data, st))
        })
        .await
    }

    /// The parent directory of `p` (`O_RDONLY`, so it can be fsynced). With
    /// `create`, directories missing between the volume and the target are
    /// made, each fsynced in its parent; the volume itself is never created
    /// (a missing one is [`DiskError::VolumeNotFound`]). A directory made
    /// is registered in `fresh_dirs` until its parent's fsync returns; a
    /// call whose path crosses one takes the walk, which fsyncs the parent
    /// of every directory it finds. If that fsync fails, the directory just
    /// made is removed again and the error returned.
    pub(crate) async fn parent_dir(
        &self,
        p: &ObjPath,
        create: bool,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<Arc<File>> {
        let parent = p.parent().to_string();
        if !create || !self.fresh_dirs.crosses(&parent) {
            let root = self.root.clone();
            let r = self
                .blocking(class, deadline, move |_| {
                    sys::open_at(&root, parent.as_str(), How::Dir)
                        .map_err(|e| e.into_disk(class, &parent))
                })
                .await;
            match r {
                Err(DiskError::FileNotFound) if create => {}
                r => return r.map(Arc::new),
            }
        }
        let root = self.root.clone();
        let fresh_dirs = self.fresh_dirs.clone();
        let p = p.clone();
        self.blocking(class, deadline, move |job| {
            let vol = p.vol().as_str();
            let mut dir =
                sys::open_at(&root, vol, How::Dir).map_err(|e| match e.into_disk(class, vol) {
                    DiskError::FileNotFound => DiskError::VolumeNotFound,
                    e => e,
                })?;
            let mut path = vol.to_string();
            for name in p.dirs() {
                job.check().map_err(|e| e.into_disk(class, &path))?;
                path.push('/');
                path.push_str(name.as_str());
                let fresh = fresh_dirs.register(&path);
                match sys::mkdir_at(&dir, name) {
                    Ok(()) => {
                        if let Err(e) = sys::fsync(&dir, false) {
                            let _ = sys::unlink_at(&dir, name, true);
                            return Err(e.into_disk(class, &path));
                        }
                    }
                    // Made by someone else, maybe an instant ago: make sure
                    // its entry is durable before building on it.
                    Err(e) if e.is(OsError::Exists) => {
                        sys::fsync(&dir, false).map_err(|e| e.into_disk(class, &path))?
                    }
                    Err(e) => return Err(e.into_disk(class, &path)),
                }
                drop(fresh);
                // Beneath the directory held, following no symlink: a
                // planted link in place of `name` stops here.
                dir = sys::open_at(&dir, name.as_str(), How::Dir)
                    .map_err(|e| e.into_disk(class, &path))?;
            }
            Ok(Arc::new(dir))
        })
        .await
    }

    /// Replace `dst_dir/dst` atomically and durably: a new file in
    /// `.disk-io/tmp`, write, fsync, close, rename over the target, fsync
    /// of `dst_dir`. `committed` turns true once the rename landed.
    pub(crate) async fn atomic_write(
        &self,
        dst_dir: Arc<File>,
        dst: Name,
        data: Vec<u8>,
        committed: &AtomicBool,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<()> {
        let tmp = system_name(&uuid::Uuid::new_v4().to_string())?;
        let (tmp_dir, tmp_name) = (self.sys.tmp.clone(), tmp.clone());
        // A create that fails or times out left nothing of ours (one that
        // lands late leaves a file in `tmp`, which the next open moves to
        // the trash).
        let file = self
            .blocking(class, deadline, move |_| {
                sys::open_at(
                    &tmp_dir,
                    tmp_name.as_str(),
                    How::CreateNew { direct: false },
                )
                .map_err(|e| e.into_disk(class, "tmp"))
            })
            .await?;
        // From here a temporary file of ours exists: it goes away on every
        // way out short of the commit, a dropped future included.
        let mut guard = TmpGuard {
            inner: self,
            name: Some(tmp.clone()),
        };
        self.blocking(class, deadline, move |job| {
            if !data.is_empty() {
                sys::write_all_at(&file, &data, 0).map_err(|e| e.into_disk(class, ""))?;
            }
            job.check().map_err(|e| e.into_disk(class, "tmp"))?;
            sys::fsync(&file, false).map_err(|e| e.into_disk(class, "tmp"))?;
            sys::close(file).map_err(|e| e.into_disk(class, "tmp"))
        })
        .await?;
        let (tmp_dir, to_dir, to) = (self.sys.tmp.clone(), dst_dir.clone(), dst.clone());
        self.blocking(class, deadline, move |_| {
            sys::rename_at(&tmp_dir, &tmp, &to_dir, &to, false)
                .map_err(|e| e.into_disk(class, to.as_str()))
        })
        .await?;
        guard.name = None;
        committed.store(true, Ordering::Release);
        self.make_durable(dst_dir, class, dst.as_str(), deadline)
            .await
    }

    /// fsync `dir` after a change in it took effect: any failure here is
    /// [`DiskError::NotDurable`], never "not applied".
    pub(crate) async fn make_durable(
        &self,
        dir: Arc<File>,
        class: OpClass,
        path: &str,
        deadline: Deadline,
    ) -> Result<()> {
        let p = path.to_string();
        self.blocking(class, deadline, move |_| {
            sys::fsync(&dir, false).map_err(|e| e.into_disk(class, &p))
        })
        .await
        .map_err(|e| DiskError::NotDurable {
            op: class,
            cause: Box::new(e),
        })
    }

    /// Move `dir/name` into the trash (one rename, within the deadline) and
    /// purge it in the background.
    async fn trash(
        &self,
        dir: Arc<File>,
        name: Name,
        class: OpClass,
        deadline: Deadline,
    ) -> Result<()> {
        let trash = self.sys.trash.clone();
        let aside = system_name(&uuid::Uuid::new_v4().to_string())?;
        self.blocking(class, deadline, move |_| {
            sys::rename_at(&dir, &name, &trash, &aside, true)
                .map_err(|e| e.into_disk(class, name.as_str()))
        })
        .await?;
        self.spawn_purge();
        Ok(())
    }

    /// Create `name` in `dir` as a new file (`O_CREAT | O_EXCL`), replacing
    /// whatever entry had that name by unlinking the entry first, never by
    /// truncating the inode it names.
    async fn create_replacing(
        &self,
        dir: Arc<File>,
        name: Name,
        direct: bool,
        class: OpClass,
        path: String,
        deadline: Deadline,
    ) -> Result<File> {
        self.blocking(class, deadline, move |_| {
            for _ in 0..2 {
                match sys::open_at(&dir, name.as_str(), How::CreateNew { direct }) {
                    Ok(f) => return Ok(f),
                    Err(e) if e.is(OsError::Exists) => match sys::unlink_at(&dir, &name, false) {
                        Ok(()) => {}
                        Err(e) if e.is(OsError::NotFound) => {}
                        Err(e) => return Err(e.into_disk(class, &path)),
                    },
                    Err(e) => return Err(e.into_disk(class, &path)),
                }
            }
            // Recreated by someone else between our unlink and our create, twice.
            Err(DiskError::FileExists)
        })
        .await
    }
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

#[async_trait]
impl Disk for TokioFsDisk {
    fn label(&self) -> &str {
        &self.inner.label
    }

    /// Always `Online`: this baseline has no health machine.
    fn state(&self) -> HealthState {
        HealthState::Online
    }

    async fn disk_id(&self, deadline: Deadline) -> Result<DiskId> {
        let inner = &self.inner;
        inner
            .run(OpClass::DiskId, deadline, None, inner.disk_id(deadline))
            .await
    }

    async fn disk_info(&self, deadline: Deadline) -> Result<DiskInfo> {
        let inner = &self.inner;
        let class = OpClass::DiskInfo;
        inner
            .run(class, deadline, None, async {
                let root = inner.root.clone();
                let fs = inner
                    .blocking(class, deadline, move |_| {
                        sys::statfs(&root).map_err(|e| e.into_disk(class, "."))
                    })
                    .await?;
                let id = match inner.disk_id(deadline).await {
                    Ok(id) => Some(id),
                    Err(DiskError::Unformatted) => None,
                    Err(e) => return Err(e),
                };
                Ok(DiskInfo {
                    id,
                    total: fs.total,
                    free: fs.available,
                    used: fs.total.saturating_sub(fs.free),
                    files: fs.files,
                    files_free: fs.files_free,
                    state: HealthState::Online,
                    in_flight: inner.counters.in_flight(),
                    zombies: inner.counters.zombies(),
                })
            })
            .await
    }

    async fn make_vol(&self, vol: &str, deadline: Deadline) -> Result<()> {
        let inner = &self.inner;
        let class = OpClass::MakeVol;
        let v = VolName::new(vol)?;
        let committed = AtomicBool::new(false);
        inner
            .run_committing(class, deadline, None, &committed, async {
                let (root, name, text) = (inner.root.clone(), v.name().clone(), vol.to_string());
                inner
                    .blocking(class, deadline, move |_| {
                        match sys::mkdir_at(&root, &name) {
                            Ok(()) => Ok(()),
                            Err(e) if e.is(OsError::Exists) => Err(DiskError::VolumeExists),
                            Err(e) => Err(e.into_disk(class, &text)),
                        }
                    })
                    .await?;
                committed.store(true, Ordering::Release);
                inner
                    .make_durable(inner.root.clone(), class, ".", deadline)
                    .await
            })
            .await
    }

    async fn list_vols(&self, deadline: Deadline) -> Result<Vec<VolInfo>> {
        let inner = &self.inner;
        let class = OpClass::ListVols;
        let limit = inner.cfg.limits.max_list_entries;
        inner
            .run(class, deadline, None, async {
                let root = inner.root.clone();
                inner
                    .blocking(class, deadline, move |_| {
                        // A fresh open per listing: a directory's read
                        // position lives in its open file description.
                        let dir = sys::open_at(&root, ".", How::Dir)
                            .map_err(|e| e.into_disk(class, "."))?;
                        let listing =
                            sys::read_dir(dir, limit).map_err(|e| e.into_disk(class, "."))?;
                        if listing.truncated {
                            return Err(too_many(limit));
                        }
                        let mut vols = Vec::new();
                        for e in listing.entries {
                            // Volumes are directories with a valid volume
                            // name; the system directory, symlinks and files
                            // are not.
                            let Some(name) = e.name.to_str().and_then(|n| VolName::new(n).ok())
                            else {
                                continue;
                            };
                            if e.kind != FileKind::Dir {
                                continue;
                            }
                            let st = sys::stat_at(&root, name.name())
                                .map_err(|e| e.into_disk(class, name.as_str()))?;
                            if st.kind == FileKind::Dir {
                                vols.push(VolInfo {
                                    name: name.as_str().to_string(),
                                    created: st.ctime.system_time(),
                                });
                            }
                        }
                        vols.sort_by(|a, b| a.name.cmp(&b.name));
                        Ok(vols)
                    })
                    .await
            })
            .await
    }

    async fn stat_vol(&self, vol: &str, deadline: Deadline) -> Result<VolInfo> {
        let inner = &self.inner;
        let class = OpClass::StatVol;
        let v = VolName::new(vol)?;
        inner
            .run(class, deadline, None, async {
                let (root, v) = (inner.root.clone(), v.clone());
                inner
                    .blocking(class, deadline, move |_| {
                        match sys::stat_at(&root, v.name()) {
                            Ok(st) if st.kind == FileKind::Dir => Ok(VolInfo {
                                name: v.as_str().to_string(),
                                created: st.ctime.system_time(),
                            }),
                            Ok(st) if st.kind == FileKind::Symlink => Err(symlink(v.as_str())),
                            Ok(_) => Err(DiskError::VolumeNotFound),
                            Err(e) if e.is(OsError::NotFound) => Err(DiskError::VolumeNotFound),
                            Err(e) => Err(e.into_disk(class, v.as_str())),
                        }
                    })
                    .await
            })
            .await
    }

    async fn delete_vol(&self, vol: &str, force: bool, deadline: Deadline) -> Result<()> {
        let inner = &self.inner;
        let class = OpClass::DeleteVol;
        let v = VolName::new(vol)?;
        inner
            .run(class, deadline, None, async {
                let (root, name) = (inner.root.clone(), v.name().clone());
                let r = inner
                    .blocking(class, deadline, move |_| {
                        Ok(sys::unlink_at(&root, &name, true))
                    })
                    .await?;
                match r {
                    Ok(()) => Ok(()),
                    Err(e) if e.is(OsError::NotEmpty) && force => {
                        inner
                            .trash(inner.root.clone(), v.name().clone(), class, deadline)
                            .await
                    }
                    Err(e) if e.is(OsError::NotEmpty) => Err(DiskError::VolumeNotEmpty),
                    Err(e) if e.is(OsError::NotFound) => Err(DiskError::VolumeNotFound),
                    // rmdir of a non-directory: a file or a planted symlink
                    // in the volume's place, neither of which is a volume.
                    Err(e) if e.is(OsError::NotDir) => {
                        Err(inner.explain_not_found(&v, class, deadline).await)
                    }
                    Err(e) => Err(e.into_disk(class, vol)),
                }
            })
            .await
    }

    async fn read_all(&self, vol: &str, path: &str, deadline: Deadline) -> Result<Vec<u8>> {
        let inner = &self.inner;
        let class = OpClass::ReadAll;
        let p = ObjPath::new(vol, path)?;
        inner
            .run(class, deadline, Some(p.vol()), async {
                inner
                    .read_small(inner.root.clone(), p.rel().to_string(), class, deadline)
                    .await
                    .map(|(data, _)| data)
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
        let class = OpClass::WriteAll;
        let p = ObjPath::new(vol, path)?;
        let limit = inner.cfg.limits.max_write_all;
        if data.len() > limit {
            return Err(DiskError::TooLarge {
                size: data.len() as u64,
                limit: limit as u64,
            });
        }
        let committed = AtomicBool::new(false);
        inner
            .run_committing(class, deadline, Some(p.vol()), &committed, async {
                let dir = inner.parent_dir(&p, true, class, deadline).await?;
                inner
                    .atomic_write(
                        dir,
                        p.name().clone(),
                        data.to_vec(),
                        &committed,
                        class,
                        deadline,
                    )
                    .await
            })
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
        let class = OpClass::CreateFile;
        let p = ObjPath::new(vol, path)?;
        let staging = if opts.direct {
            let l = &inner.cfg.limits;
            Some(
                Staging::new(l.direct_io_chunk, l.direct_io_alignment).ok_or_else(|| {
                    DiskError::InvalidArgument {
                        reason: "cannot allocate the O_DIRECT staging buffer".into(),
                    }
                })?,
            )
        } else {
            None
        };
        inner
            .run(class, deadline, Some(p.vol()), async {
                let dir = inner.parent_dir(&p, true, class, deadline).await?;
                let file = inner
                    .create_replacing(
                        dir.clone(),
                        p.name().clone(),
                        opts.direct,
                        class,
                        p.as_str().to_string(),
                        deadline,
                    )
                    .await
                    .map_err(|e| match e {
                        DiskError::Io { errno, .. }
                            if opts.direct && errno == Errno(nix::libc::EINVAL) =>
                        {
                            DiskError::InvalidArgument {
                                reason: "the file system does not support O_DIRECT".into(),
                            }
                        }
                        e => e,
                    })?;
                let w: Box<dyn ShardWriter> = Box::new(TokioShardWriter::new(
                    inner.clone(),
                    file,
                    dir,
                    staging,
                    opts.datasync,
                ));
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
        let class = OpClass::ReadFileAt;
        let p = ObjPath::new(vol, path)?;
        let limit = inner.cfg.limits.max_read_len;
        if len > limit {
            return Err(DiskError::TooLarge {
                size: len as u64,
                limit: limit as u64,
            });
        }
        inner
            .run(class, deadline, Some(p.vol()), async {
                let (root, rel) = (inner.root.clone(), p.rel().to_string());
                let (file, _) = inner
                    .blocking(class, deadline, move |_| {
                        Inner::open_regular_sync(&root, &rel, class)
                    })
                    .await?;
                // The data through tokio::fs::File: seek, then reads of at
                // most 2 MiB each on the blocking pool.
                let mut f = OffWorker(Some(tokio::fs::File::from_std(file)));
                let data = match f.0.as_mut() {
                    Some(file) => read_range_tokio(file, offset, len, class).await?,
                    None => Vec::new(),
                };
                if data.len() < len {
                    // Reading a directory fails above; a short read is a
                    // file that ends before the range does.
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
        let class = OpClass::StatFile;
        let p = ObjPath::new(vol, path)?;
        inner
            .run(class, deadline, Some(p.vol()), async {
                let (root, rel) = (inner.root.clone(), p.rel().to_string());
                inner
                    .blocking(class, deadline, move |_| {
                        // An O_PATH open resolves every component, the last
                        // one included, without following a symlink; then
                        // fstat.
                        let file = sys::open_at(&root, rel.as_str(), How::Path)
                            .map_err(|e| e.into_disk(class, &rel))?;
                        let st = sys::fstat(&file).map_err(|e| e.into_disk(class, &rel))?;
                        match st.kind {
                            FileKind::File | FileKind::Dir => Ok(FileInfo {
                                size: st.size,
                                modified: st.mtime.system_time(),
                                is_dir: st.kind == FileKind::Dir,
                            }),
                            FileKind::Symlink => Err(symlink(&rel)),
                            FileKind::Other => Err(DiskError::InvalidPath {
                                path: rel.clone(),
                                rule: PathRule::NotRegular,
                            }),
                        }
                    })
                    .await
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
        let class = OpClass::RenameFile;
        let from = ObjPath::new(src_vol, src)?;
        let to = ObjPath::new(dst_vol, dst)?;
        let committed = AtomicBool::new(false);
        inner
            .run_committing(class, deadline, Some(from.vol()), &committed, async {
                let from_dir = inner.parent_dir(&from, false, class, deadline).await?;
                // A missing destination volume is `VolumeNotFound` from the
                // walk itself.
                let to_dir = inner.parent_dir(&to, true, class, deadline).await?;
                let (fd, fname, td, tname, text) = (
                    from_dir,
                    from.name().clone(),
                    to_dir.clone(),
                    to.name().clone(),
                    from.as_str().to_string(),
                );
                inner
                    .blocking(class, deadline, move |_| {
                        sys::rename_at(&fd, &fname, &td, &tname, false)
                            .map_err(|e| e.into_disk(class, &text))
                    })
                    .await?;
                committed.store(true, Ordering::Release);
                inner
                    .make_durable(to_dir, class, to.as_str(), deadline)
                    .await
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
        let class = OpClass::Delete;
        let p = ObjPath::new(vol, path)?;
        inner
            .run(class, deadline, Some(p.vol()), async {
                let dir = inner.parent_dir(&p, false, class, deadline).await?;
                let (d, name) = (dir.clone(), p.name().clone());
                // unlinkat never follows `name`: a symlink is removed itself.
                let r = inner
                    .blocking(class, deadline, move |_| {
                        Ok(match sys::unlink_at(&d, &name, false) {
                            Err(e) if e.is(OsError::IsDir) || e.is(OsError::Access) => {
                                sys::unlink_at(&d, &name, true)
                            }
                            r => r,
                        })
                    })
                    .await?;
                match r {
                    Err(e) if e.is(OsError::NotEmpty) && opts.recursive => {
                        inner.trash(dir, p.name().clone(), class, deadline).await
                    }
                    r => r.map_err(|e| e.into_disk(class, p.as_str())),
                }
            })
            .await
    }

    async fn list_dir(&self, vol: &str, dir: &str, deadline: Deadline) -> Result<Vec<String>> {
        let inner = &self.inner;
        let class = OpClass::ListDir;
        let d = DirPath::new(vol, dir)?;
        let limit = inner.cfg.limits.max_list_entries;
        inner
            .run(class, deadline, Some(d.vol()), async {
                let (root, rel) = (inner.root.clone(), d.rel().to_string());
                inner
                    .blocking(class, deadline, move |_| {
                        let dir = sys::open_at(&root, rel.as_str(), How::Dir)
                            .map_err(|e| e.into_disk(class, &rel))?;
                        let listing =
                            sys::read_dir(dir, limit).map_err(|e| e.into_disk(class, &rel))?;
                        if listing.truncated {
                            return Err(too_many(limit));
                        }
                        // Files and directories only: symlinks and special
                        // files planted on the disk are not objects (and are
                        // never followed).
                        let mut names: Vec<String> = listing
                            .entries
                            .into_iter()
                            .filter_map(|e| {
                                let name = e.name.into_string().ok()?;
                                match e.kind {
                                    FileKind::Dir => Some(format!("{name}/")),
                                    FileKind::File => Some(name),
                                    FileKind::Symlink | FileKind::Other => None,
                                }
                            })
                            .collect();
                        names.sort();
                        Ok(names)
                    })
                    .await
            })
            .await
    }
}
