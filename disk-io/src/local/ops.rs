//! The [`Disk`] operations of a [`LocalDisk`].
//!
//! Each one: validate the caller's path (an `InvalidPath` before any I/O),
//! refuse changes through an inspection handle, then run its steps inside
//! [`Inner::run`]. Every step resolves beneath the root without following
//! any symlink (see `paths.rs`).
//!
//! To add an operation: its [`OpClass`] (api `op.rs`, with a budget in
//! `OpTimeouts::for_class`), the trait method (api `disk.rs`), its body
//! here, its remote form (the RPC crate), and a case in the tests that run
//! every operation (`disk-io/tests/ops.rs`, `tests/tests/local_faults.rs`,
//! `disk-io/tests/symlinks.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use disk_io_api::{
    CreateOptions, Deadline, DeleteOptions, Disk, DiskError, DiskId, DiskInfo, FileInfo,
    HealthState, OpClass, PathRule, Result, ShardWriter, VolInfo,
};
use disk_io_driver::{AlignedBuf, FileKind, Open, OsError, RelPath};

/// EINVAL, what an O_DIRECT open answers on a file system without it.
const EINVAL: disk_io_api::Errno = disk_io_driver::EINVAL;

use super::fs::{DIR_MODE, FILE_MODE};
use super::paths::{system_name, DirPath, ObjPath, VolName};
use super::shard::LocalShardWriter;
use super::{CachedId, Inner, LocalDisk};
use crate::format::{FormatFile, FORMAT_FILE};

fn symlink(path: &str) -> DiskError {
    DiskError::InvalidPath {
        path: path.to_string(),
        rule: PathRule::Symlink,
    }
}

impl Inner {
    pub(super) async fn format(
        &self,
        set_index: u32,
        disk_index: u32,
        force: bool,
        deadline: Deadline,
    ) -> Result<DiskId> {
        let class = OpClass::Format;
        self.writable(class)?;
        let committed = AtomicBool::new(false);
        self.run_committing(class, deadline, None, &committed, async {
            let sys = self.sys()?;
            let name = system_name(FORMAT_FILE);
            if !force {
                match self.driver.statx(&sys.dir, &name, deadline).await {
                    Ok(_) => return Err(DiskError::AlreadyFormatted),
                    Err(e) if e.is(OsError::NotFound) => {}
                    Err(e) => return Err(Self::err(e, class, FORMAT_FILE)),
                }
            }
            let f = FormatFile::new(set_index, disk_index);
            let r = self
                .atomic_write(&sys.dir, &name, &f.to_bytes(), &committed, class, deadline)
                .await;
            *self.id_cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
            r.map(|()| f.disk)
        })
        .await
    }

    /// The identity from the format file, from a short cache whose
    /// staleness check (the file's inode, mtime and size) runs under the
    /// caller's deadline too.
    pub(super) async fn disk_id(&self, deadline: Deadline) -> Result<DiskId> {
        let class = OpClass::DiskId;
        let unformatted = |e: DiskError| match e {
            DiskError::FileNotFound => DiskError::Unformatted,
            e => e,
        };
        let sys = self.sys()?;
        let name = system_name(FORMAT_FILE);
        let cached = {
            let g = self.id_cache.lock().unwrap_or_else(|e| e.into_inner());
            g.as_ref()
                .map(|c| (c.id, c.checked_at, c.ino, c.mtime, c.size))
        };
        if let Some((id, checked_at, ino, mtime, size)) = cached {
            if checked_at.elapsed() < self.cfg.disk_id_cache_ttl {
                return Ok(id);
            }
            let st = self
                .driver
                .statx(&sys.dir, &name, deadline)
                .await
                .map_err(|e| unformatted(Self::err(e, class, FORMAT_FILE)))?;
            crate::local::fs::check_regular(&st, FORMAT_FILE)?;
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
            .read_small(&sys.dir, &Self::format_name(), class, deadline)
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
            .run(OpClass::DiskId, deadline, None, inner.disk_id(deadline))
            .await
    }

    async fn disk_info(&self, deadline: Deadline) -> Result<DiskInfo> {
        let inner = &self.inner;
        let class = OpClass::DiskInfo;
        inner
            .run(class, deadline, None, async {
                let fs = inner
                    .driver
                    .statfs(&inner.root, deadline)
                    .await
                    .map_err(|e| Inner::err(e, class, "."))?;
                let id = match inner.disk_id(deadline).await {
                    Ok(id) => Some(id),
                    Err(DiskError::Unformatted) => None,
                    Err(e) => return Err(e),
                };
                let stats = inner.driver.stats();
                Ok(DiskInfo {
                    id,
                    total: fs.total,
                    free: fs.available,
                    used: fs.total - fs.free,
                    files: fs.files,
                    files_free: fs.files_free,
                    state: inner.health.state(),
                    in_flight: stats.in_flight(),
                    zombies: stats.zombies(),
                })
            })
            .await
    }

    async fn make_vol(&self, vol: &str, deadline: Deadline) -> Result<()> {
        let inner = &self.inner;
        let class = OpClass::MakeVol;
        let v = VolName::new(vol)?;
        inner.writable(class)?;
        let committed = AtomicBool::new(false);
        inner
            .run_committing(class, deadline, None, &committed, async {
                match inner
                    .driver
                    .mkdirat(&inner.root, v.name(), DIR_MODE, deadline)
                    .await
                {
                    Ok(()) => committed.store(true, Ordering::Release),
                    Err(e) if e.is(OsError::Exists) => return Err(DiskError::VolumeExists),
                    Err(e) => return Err(Inner::err(e, class, vol)),
                }
                inner.make_durable(&inner.root, class, ".", deadline).await
            })
            .await
    }

    async fn list_vols(&self, deadline: Deadline) -> Result<Vec<VolInfo>> {
        let inner = &self.inner;
        let class = OpClass::ListVols;
        inner
            .run(class, deadline, None, async {
                // A fresh fd per listing: a directory's read position lives
                // in its open file description.
                let dir = inner
                    .driver
                    .open(&inner.root, &RelPath::dot(), Open::dir(), deadline)
                    .await
                    .map_err(|e| Inner::err(e, class, "."))?;
                let listing = inner
                    .driver
                    .read_dir(&dir, inner.cfg.limits.max_list_entries, deadline)
                    .await
                    .map_err(|e| Inner::err(e, class, "."))?;
                if listing.truncated {
                    return Err(too_many(inner.cfg.limits.max_list_entries));
                }
                let mut vols = Vec::new();
                for e in listing.entries {
                    // Volumes are directories with a valid volume name;
                    // the system directory, symlinks and files are not.
                    let Some(name) = e.name.to_str().and_then(|n| VolName::new(n).ok()) else {
                        continue;
                    };
                    if e.kind != FileKind::Dir {
                        continue;
                    }
                    let st = inner
                        .driver
                        .statx(&inner.root, name.name(), deadline)
                        .await
                        .map_err(|e| Inner::err(e, class, name.as_str()))?;
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
    }

    async fn stat_vol(&self, vol: &str, deadline: Deadline) -> Result<VolInfo> {
        let inner = &self.inner;
        let class = OpClass::StatVol;
        let v = VolName::new(vol)?;
        inner
            .run(class, deadline, None, async {
                match inner.driver.statx(&inner.root, v.name(), deadline).await {
                    Ok(st) if st.kind == FileKind::Dir => Ok(VolInfo {
                        name: vol.to_string(),
                        created: st.ctime.system_time(),
                    }),
                    Ok(st) if st.kind == FileKind::Symlink => Err(symlink(vol)),
                    Ok(_) => Err(DiskError::VolumeNotFound),
                    Err(e) if e.is(OsError::NotFound) => Err(DiskError::VolumeNotFound),
                    Err(e) => Err(Inner::err(e, class, vol)),
                }
            })
            .await
    }

    async fn delete_vol(&self, vol: &str, force: bool, deadline: Deadline) -> Result<()> {
        let inner = &self.inner;
        let class = OpClass::DeleteVol;
        let v = VolName::new(vol)?;
        inner.writable(class)?;
        inner
            .run(class, deadline, None, async {
                match inner
                    .driver
                    .unlinkat(&inner.root, v.name(), true, deadline)
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(e) if e.is(OsError::NotEmpty) && force => {
                        inner.trash(&inner.root, v.name(), class, deadline).await
                    }
                    Err(e) if e.is(OsError::NotEmpty) => Err(DiskError::VolumeNotEmpty),
                    Err(e) if e.is(OsError::NotFound) => Err(DiskError::VolumeNotFound),
                    // rmdir of a non-directory: a file or a planted symlink
                    // in the volume's place, neither of which is a volume.
                    Err(e) if e.is(OsError::NotDir) => {
                        Err(inner.explain_not_found(&v, class, deadline).await)
                    }
                    Err(e) => Err(Inner::err(e, class, vol)),
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
                    .read_small(&inner.root, &p.rel(), class, deadline)
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
        inner.writable(class)?;
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
                    .atomic_write(&dir, p.name(), data, &committed, class, deadline)
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
        inner.writable(class)?;
        let staging = if opts.direct {
            let l = &inner.cfg.limits;
            Some(
                AlignedBuf::new(l.direct_io_chunk, l.direct_io_alignment).ok_or_else(|| {
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
                let how = if opts.direct {
                    Open::create_new(FILE_MODE).direct()
                } else {
                    Open::create_new(FILE_MODE)
                };
                let file = inner
                    .create_replacing(&dir, p.name(), how, class, p.as_str(), deadline)
                    .await
                    .map_err(|e| match e {
                        DiskError::Io { errno, .. } if opts.direct && errno == EINVAL => {
                            DiskError::InvalidArgument {
                                reason: "the file system does not support O_DIRECT".into(),
                            }
                        }
                        e => e,
                    })?;
                let w: Box<dyn ShardWriter> = Box::new(LocalShardWriter::new(
                    self.inner.clone(),
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
                let (file, _) = inner
                    .open_regular(&inner.root, &p.rel(), class, deadline)
                    .await?;
                let data = inner
                    .read_range(&file, offset, len, class, deadline)
                    .await?;
                if data.len() < len {
                    // Reading a directory fails with EISDIR above; a short
                    // read is a file that ends before the range does.
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
                // An O_PATH open resolves every component, the last one
                // included, without following a symlink; then fstat.
                let file = inner
                    .open_rel(&p.rel(), Open::path(), class, deadline)
                    .await?;
                let st = inner
                    .driver
                    .fstat(&file, deadline)
                    .await
                    .map_err(|e| Inner::err(e, class, p.as_str()))?;
                match st.kind {
                    FileKind::File | FileKind::Dir => Ok(FileInfo {
                        size: st.size,
                        modified: st.mtime.system_time(),
                        is_dir: st.kind == FileKind::Dir,
                    }),
                    FileKind::Symlink => Err(symlink(p.as_str())),
                    FileKind::Other => Err(DiskError::InvalidPath {
                        path: p.as_str().to_string(),
                        rule: PathRule::NotRegular,
                    }),
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
        let class = OpClass::RenameFile;
        let from = ObjPath::new(src_vol, src)?;
        let to = ObjPath::new(dst_vol, dst)?;
        inner.writable(class)?;
        let committed = AtomicBool::new(false);
        inner
            .run_committing(class, deadline, Some(from.vol()), &committed, async {
                let from_dir = inner.parent_dir(&from, false, class, deadline).await?;
                let to_dir = match inner.parent_dir(&to, true, class, deadline).await {
                    // The destination's volume is missing: say which volume.
                    Err(DiskError::VolumeNotFound) => return Err(DiskError::VolumeNotFound),
                    r => r?,
                };
                inner
                    .driver
                    .renameat(&from_dir, from.name(), &to_dir, to.name(), false, deadline)
                    .await
                    .map_err(|e| Inner::err(e, class, from.as_str()))?;
                committed.store(true, Ordering::Release);
                inner
                    .make_durable(&to_dir, class, to.as_str(), deadline)
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
        inner.writable(class)?;
        inner
            .run(class, deadline, Some(p.vol()), async {
                let dir = inner.parent_dir(&p, false, class, deadline).await?;
                let name = p.name();
                // unlinkat never follows `name`: a symlink is removed itself.
                let r = match inner.driver.unlinkat(&dir, name, false, deadline).await {
                    Err(e) if e.is(OsError::IsDir) || e.is(OsError::Access) => {
                        match inner.driver.unlinkat(&dir, name, true, deadline).await {
                            Err(e) if e.is(OsError::NotEmpty) && opts.recursive => {
                                return inner.trash(&dir, name, class, deadline).await
                            }
                            r => r,
                        }
                    }
                    r => r,
                };
                r.map_err(|e| Inner::err(e, class, p.as_str()))
            })
            .await
    }

    async fn list_dir(&self, vol: &str, dir: &str, deadline: Deadline) -> Result<Vec<String>> {
        let inner = &self.inner;
        let class = OpClass::ListDir;
        let d = DirPath::new(vol, dir)?;
        inner
            .run(class, deadline, Some(d.vol()), async {
                let dir = inner
                    .open_rel(&d.rel(), Open::dir(), class, deadline)
                    .await?;
                let limit = inner.cfg.limits.max_list_entries;
                let listing = inner
                    .driver
                    .read_dir(&dir, limit, deadline)
                    .await
                    .map_err(|e| Inner::err(e, class, d.rel().as_str()))?;
                if listing.truncated {
                    return Err(too_many(limit));
                }
                // Files and directories only: symlinks and special files
                // planted on the disk are not objects (and are never followed).
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
    }
}

fn too_many(limit: usize) -> DiskError {
    DiskError::TooLarge {
        size: limit as u64 + 1,
        limit: limit as u64,
    }
}
