//! The pass-through `fuser::Filesystem`: every request is admitted through the
//! [`FaultControl`] gate, checked against the fault rules, then replayed on the backing
//! directory.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::fcntl::{FallocateFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::control::{Access, FaultControl};
use super::inodes::{InodeTable, ROOT};

/// Zero TTL: the kernel caches no entry or attribute, so every stat and path walk reaches
/// the daemon (and therefore the fault switches).
const TTL: Duration = Duration::ZERO;

/// Direct I/O: no page cache can hide a hung daemon. Parallel direct writes: concurrent
/// writers to one file reach the daemon concurrently instead of queueing on the inode lock.
const OPEN_FLAGS: FopenFlags =
    FopenFlags::FOPEN_DIRECT_IO.union(FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES);

#[derive(Debug)]
struct OpenFile {
    ino: u64,
    file: Arc<File>,
    /// The path at open time, used for fault matching once the file has no name any more.
    path: PathBuf,
}

#[derive(Debug)]
struct DirEntry {
    ino: u64,
    kind: FileType,
    name: OsString,
}

#[derive(Debug)]
pub(crate) struct PassFs {
    backing: PathBuf,
    ctl: FaultControl,
    inodes: Mutex<InodeTable>,
    files: Mutex<HashMap<u64, OpenFile>>,
    /// Directory listings are snapshotted at opendir so offsets stay stable.
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn errno(err: io::Error) -> Errno {
    Errno::from(err)
}

fn nix_errno(err: nix::Error) -> Errno {
    Errno::from_i32(err as i32)
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = Duration::from_nanos(u64::try_from(nsecs).unwrap_or(0).min(999_999_999));
    let base = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    base.and_then(|t| t.checked_add(nsecs))
        .unwrap_or(UNIX_EPOCH)
}

fn time_spec(time: Option<TimeOrNow>) -> TimeSpec {
    match time {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSpec::from(d),
            Err(before) => {
                let secs = i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX);
                TimeSpec::new(-secs, 0)
            }
        },
    }
}

fn to_attr(ino: u64, md: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: system_time(md.atime(), md.atime_nsec()),
        mtime: system_time(md.mtime(), md.mtime_nsec()),
        ctime: system_time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile),
        perm: (md.mode() & 0o7777) as u16,
        nlink: u32::try_from(md.nlink()).unwrap_or(u32::MAX),
        uid: md.uid(),
        gid: md.gid(),
        // The kernel decodes rdev with the same "new" encoding glibc uses for 32-bit values.
        rdev: md.rdev() as u32,
        blksize: u32::try_from(md.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

/// Opens a backing file with the kernel's flags. `O_DIRECT` is dropped because our reads
/// and writes use ordinary (unaligned) buffers; the stall we simulate lives in this daemon,
/// not in the backing file system.
fn open_backing(path: &Path, flags: i32, create_mode: Option<u32>) -> Result<File, Errno> {
    let mut oflag = OFlag::from_bits_retain(flags);
    oflag.remove(OFlag::O_DIRECT | OFlag::O_NOCTTY);
    oflag.insert(OFlag::O_CLOEXEC);
    let mode = match create_mode {
        Some(mode) => {
            oflag.insert(OFlag::O_CREAT);
            Mode::from_bits_truncate(mode & 0o7777)
        }
        None => {
            oflag.remove(OFlag::O_CREAT | OFlag::O_EXCL);
            Mode::empty()
        }
    };
    let fd: OwnedFd = nix::fcntl::open(path, oflag, mode).map_err(nix_errno)?;
    Ok(File::from(fd))
}

impl PassFs {
    pub(crate) fn new(backing: PathBuf, root: &Metadata, ctl: FaultControl) -> Self {
        Self {
            backing,
            ctl,
            inodes: Mutex::new(InodeTable::new(root)),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.backing.clone()
        } else {
            self.backing.join(rel)
        }
    }

    fn rel(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        lock(&self.inodes).path(ino.0).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.rel(parent)?.join(name))
    }

    /// Applies the fault rules to a request on `rel`.
    fn check(&self, rel: &Path, access: Access) -> Result<(), Errno> {
        let shown = format!("/{}", rel.display());
        match self.ctl.injected_error(&shown, access) {
            Some(e) => Err(Errno::from_i32(e)),
            None => Ok(()),
        }
    }

    /// Stats `rel`, records the kernel's new reference to it and returns its attributes.
    fn entry(&self, rel: PathBuf) -> Result<FileAttr, Errno> {
        let md = fs::symlink_metadata(self.abs(&rel)).map_err(errno)?;
        let ino = lock(&self.inodes).remember(rel, &md);
        Ok(to_attr(ino, &md))
    }

    fn add_file(&self, ino: u64, file: File, path: PathBuf) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(
            fh,
            OpenFile {
                ino,
                file: Arc::new(file),
                path,
            },
        );
        fh
    }

    /// The open file behind `fh` and the path to match fault rules against (its current
    /// name, or the name it was opened under once it has none).
    fn open_file(&self, ino: INodeNo, fh: FileHandle) -> Result<(Arc<File>, PathBuf), Errno> {
        let (file, opened_as) = {
            let files = lock(&self.files);
            let open = files.get(&fh.0).ok_or(Errno::EBADF)?;
            (Arc::clone(&open.file), open.path.clone())
        };
        let path = lock(&self.inodes).path(ino.0).unwrap_or(opened_as);
        Ok((file, path))
    }

    /// An open file for `ino`: the handle `fh` if given, else any handle open on it. The
    /// kernel stats and chmods an unlinked-but-open file by inode only, and the backing
    /// file is then reachable through an open handle alone.
    fn handle_for(&self, ino: INodeNo, fh: Option<FileHandle>) -> Option<(Arc<File>, PathBuf)> {
        if let Some(found) = fh.and_then(|fh| self.open_file(ino, fh).ok()) {
            return Some(found);
        }
        let files = lock(&self.files);
        let open = files.values().find(|open| open.ino == ino.0)?;
        Some((Arc::clone(&open.file), open.path.clone()))
    }

    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let rel = self.child(parent, name)?;
        self.check(&rel, Access::Plain)?;
        self.entry(rel)
    }

    fn do_getattr(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
        let rel = self.rel(ino);
        let handle = if fh.is_some() || rel.is_err() {
            self.handle_for(ino, fh)
        } else {
            None
        };
        let md = match (handle, rel) {
            (Some((file, path)), _) => {
                self.check(&path, Access::Plain)?;
                file.metadata().map_err(errno)?
            }
            (None, Ok(rel)) => {
                self.check(&rel, Access::Plain)?;
                fs::symlink_metadata(self.abs(&rel)).map_err(errno)?
            }
            (None, Err(e)) => return Err(e),
        };
        Ok(to_attr(ino.0, &md))
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        // With a handle (ftruncate, fchmod, ...) the file may have no name any more; size
        // changes then go through the handle. Everything else needs the path.
        let open = self.handle_for(ino, fh);
        let abs = match (self.rel(ino), &open) {
            (Ok(rel), _) => {
                self.check(&rel, Access::Plain)?;
                Some(self.abs(&rel))
            }
            (Err(_), Some((_, opened_as))) => {
                self.check(opened_as, Access::Plain)?;
                None
            }
            (Err(e), None) => return Err(e),
        };
        let by_path = || abs.as_deref().ok_or(Errno::ENOENT);
        let metadata = || match &open {
            Some((file, _)) => file.metadata().map_err(errno),
            None => fs::symlink_metadata(by_path()?).map_err(errno),
        };
        if let Some(size) = size {
            if size > metadata()?.len() && self.ctl.enospc() {
                return Err(Errno::ENOSPC);
            }
            match &open {
                Some((file, _)) if file.set_len(size).is_ok() => {}
                // The handle may be read-only (truncate(2) by path while open); use the path.
                _ => OpenOptions::new()
                    .write(true)
                    .open(by_path()?)
                    .and_then(|f| f.set_len(size))
                    .map_err(errno)?,
            }
        }
        if let Some(mode) = mode {
            fs::set_permissions(by_path()?, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(errno)?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(by_path()?, uid, gid).map_err(errno)?;
        }
        if atime.is_some() || mtime.is_some() {
            nix::sys::stat::utimensat(
                AT_FDCWD,
                by_path()?,
                &time_spec(atime),
                &time_spec(mtime),
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(nix_errno)?;
        }
        Ok(to_attr(ino.0, &metadata()?))
    }

    fn do_mknod(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<FileAttr, Errno> {
        let rel = self.child(parent, name)?;
        self.check(&rel, Access::Allocates)?;
        let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        nix::sys::stat::mknod(&self.abs(&rel), kind, perm, libc::dev_t::from(rdev))
            .map_err(nix_errno)?;
        self.entry(rel)
    }

    fn do_mkdir(&self, parent: INodeNo, name: &OsStr, mode: u32) -> Result<FileAttr, Errno> {
        let rel = self.child(parent, name)?;
        self.check(&rel, Access::Allocates)?;
        fs::DirBuilder::new()
            .mode(mode & 0o7777)
            .create(self.abs(&rel))
            .map_err(errno)?;
        self.entry(rel)
    }

    fn do_remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let rel = self.child(parent, name)?;
        self.check(&rel, Access::Plain)?;
        let abs = self.abs(&rel);
        let md = fs::symlink_metadata(&abs).map_err(errno)?;
        if dir {
            fs::remove_dir(&abs).map_err(errno)?;
        } else {
            fs::remove_file(&abs).map_err(errno)?;
        }
        lock(&self.inodes).removed(&rel, &md);
        Ok(())
    }

    fn do_symlink(
        &self,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
    ) -> Result<FileAttr, Errno> {
        let rel = self.child(parent, link_name)?;
        self.check(&rel, Access::Allocates)?;
        std::os::unix::fs::symlink(target, self.abs(&rel)).map_err(errno)?;
        self.entry(rel)
    }

    fn do_link(
        &self,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
    ) -> Result<FileAttr, Errno> {
        let old = self.rel(ino)?;
        let new = self.child(newparent, newname)?;
        self.check(&old, Access::Plain)?;
        self.check(&new, Access::Allocates)?;
        fs::hard_link(self.abs(&old), self.abs(&new)).map_err(errno)?;
        self.entry(new)
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        self.check(&from, Access::Plain)?;
        self.check(&to, Access::Plain)?;
        let (abs_from, abs_to) = (self.abs(&from), self.abs(&to));
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let moved = fs::symlink_metadata(&abs_from).map_err(errno)?;
        let replaced = if exchange {
            None
        } else {
            fs::symlink_metadata(&abs_to).ok()
        };
        if flags.is_empty() {
            fs::rename(&abs_from, &abs_to).map_err(errno)?;
        } else {
            let flags = nix::fcntl::RenameFlags::from_bits_retain(flags.bits());
            nix::fcntl::renameat2(AT_FDCWD, &abs_from, AT_FDCWD, &abs_to, flags)
                .map_err(nix_errno)?;
        }
        let mut inodes = lock(&self.inodes);
        if let Some(replaced) = replaced {
            // Renaming one hard link onto another is a no-op; otherwise the old target
            // lost this name.
            if (replaced.dev(), replaced.ino()) == (moved.dev(), moved.ino()) {
                return Ok(());
            }
            inodes.removed(&to, &replaced);
        }
        inodes.renamed(&from, &to, exchange);
        Ok(())
    }

    fn do_open(&self, ino: INodeNo, flags: OpenFlags) -> Result<u64, Errno> {
        let rel = self.rel(ino)?;
        self.check(&rel, Access::Plain)?;
        let file = open_backing(&self.abs(&rel), flags.0, None)?;
        Ok(self.add_file(ino.0, file, rel))
    }

    fn do_create(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let rel = self.child(parent, name)?;
        self.check(&rel, Access::Allocates)?;
        let file = open_backing(&self.abs(&rel), flags, Some(mode))?;
        let md = file.metadata().map_err(errno)?;
        let ino = lock(&self.inodes).remember(rel.clone(), &md);
        let fh = self.add_file(ino, file, rel);
        Ok((to_attr(ino, &md), fh))
    }

    fn do_read(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let (file, path) = self.open_file(ino, fh)?;
        self.check(&path, Access::Plain)?;
        let mut buf = vec![0; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno(e)),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn do_write(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, Errno> {
        let (file, path) = self.open_file(ino, fh)?;
        self.check(&path, Access::Allocates)?;
        file.write_all_at(data, offset).map_err(errno)?;
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    fn do_fsync(&self, ino: INodeNo, fh: FileHandle, datasync: bool) -> Result<(), Errno> {
        let (file, path) = self.open_file(ino, fh)?;
        self.check(&path, Access::Plain)?;
        if datasync {
            file.sync_data().map_err(errno)
        } else {
            file.sync_all().map_err(errno)
        }
    }

    fn do_opendir(&self, ino: INodeNo) -> Result<u64, Errno> {
        let rel = self.rel(ino)?;
        self.check(&rel, Access::Plain)?;
        let mut entries = vec![
            DirEntry {
                ino: ino.0,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                // The kernel resolves ".." itself; the number here is informational only.
                ino: ROOT,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for entry in fs::read_dir(self.abs(&rel)).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let kind = entry
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            entries.push(DirEntry {
                ino: entry.ino(),
                kind,
                name: entry.file_name(),
            });
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, Arc::new(entries));
        Ok(fh)
    }

    fn do_statfs(&self, ino: INodeNo) -> Result<nix::sys::statvfs::Statvfs, Errno> {
        let rel = self.rel(ino).unwrap_or_default();
        self.check(&rel, Access::Plain)?;
        nix::sys::statvfs::statvfs(&self.backing).map_err(nix_errno)
    }

    fn do_fallocate(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        let (file, path) = self.open_file(ino, fh)?;
        let frees_space = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let access = if frees_space {
            Access::Plain
        } else {
            Access::Allocates
        };
        self.check(&path, access)?;
        let offset = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let length = i64::try_from(length).map_err(|_| Errno::EINVAL)?;
        nix::fcntl::fallocate(
            file.as_ref(),
            FallocateFlags::from_bits_retain(mode),
            offset,
            length,
        )
        .map_err(nix_errno)
    }
}

fn reply_entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_attr(reply: ReplyAttr, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for PassFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Parallel dirops: a lookup parked by `hang` must not hold the directory lock that
        // unrelated lookups in the same directory need, or they would queue in the kernel
        // instead of reaching the daemon. Mmap on direct-I/O files keeps `mmap` usable.
        // Both are optional: an older kernel just runs without them.
        for flag in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
        ] {
            if config.add_capabilities(flag).is_err() {
                tracing::debug!(?flag, "kernel lacks FUSE capability");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.ctl.admit();
        reply_entry(reply, self.do_lookup(parent, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // Not gated: nobody waits for a forget, and parking it would only use up a thread.
        lock(&self.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.ctl.admit();
        reply_attr(reply, self.do_getattr(ino, fh));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.ctl.admit();
        reply_attr(
            reply,
            self.do_setattr(ino, mode, uid, gid, size, atime, mtime, fh),
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.ctl.admit();
        let result = self.rel(ino).and_then(|rel| {
            self.check(&rel, Access::Plain)?;
            fs::read_link(self.abs(&rel)).map_err(errno)
        });
        match result {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.ctl.admit();
        reply_entry(reply, self.do_mknod(parent, name, mode, rdev));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.ctl.admit();
        reply_entry(reply, self.do_mkdir(parent, name, mode));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.ctl.admit();
        reply_empty(reply, self.do_remove(parent, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.ctl.admit();
        reply_empty(reply, self.do_remove(parent, name, true));
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.ctl.admit();
        reply_entry(reply, self.do_symlink(parent, link_name, target));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.ctl.admit();
        reply_empty(
            reply,
            self.do_rename(parent, name, newparent, newname, flags),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.ctl.admit();
        reply_entry(reply, self.do_link(ino, newparent, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.ctl.admit();
        match self.do_open(ino, flags) {
            Ok(fh) => reply.opened(FileHandle(fh), OPEN_FLAGS),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.ctl.admit();
        match self.do_read(ino, fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.ctl.admit();
        match self.do_write(ino, fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.ctl.admit();
        // Nothing is buffered here; flush only reports injected faults (close(2) sees them).
        let result = self
            .open_file(ino, fh)
            .and_then(|(_, path)| self.check(&path, Access::Plain));
        reply_empty(reply, result);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Not gated (see `FaultControl::hang`): the kernel sends it after close(2) returned.
        self.ctl.count();
        lock(&self.files).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.ctl.admit();
        reply_empty(reply, self.do_fsync(ino, fh, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.ctl.admit();
        match self.do_opendir(ino) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.ctl.admit();
        if let Err(e) = self
            .rel(ino)
            .and_then(|rel| self.check(&rel, Access::Plain))
        {
            return reply.error(e);
        }
        let Some(entries) = lock(&self.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, entry) in entries.iter().enumerate().skip(start) {
            // The offset of an entry is where the next readdir continues.
            if reply.add(INodeNo(entry.ino), i as u64 + 1, entry.kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.ctl.count();
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.ctl.admit();
        let result = self.rel(ino).and_then(|rel| {
            self.check(&rel, Access::Plain)?;
            if self.ctl.on_fsync_dir(&format!("/{}", rel.display())) {
                return Err(Errno::EIO);
            }
            File::open(self.abs(&rel))
                .and_then(|dir| dir.sync_all())
                .map_err(errno)
        });
        reply_empty(reply, result);
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.ctl.admit();
        match self.do_statfs(ino) {
            Ok(st) => reply.statfs(
                st.blocks(),
                st.blocks_free(),
                st.blocks_available(),
                st.files(),
                st.files_free(),
                u32::try_from(st.block_size()).unwrap_or(4096),
                u32::try_from(st.name_max()).unwrap_or(255),
                u32::try_from(st.fragment_size()).unwrap_or(4096),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // We run as root and mount without default_permissions: every access is allowed,
        // but the request still goes through the switches like any other.
        self.ctl.admit();
        let result = self
            .rel(ino)
            .and_then(|rel| self.check(&rel, Access::Plain));
        reply_empty(reply, result);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.ctl.admit();
        match self.do_create(parent, name, mode, flags) {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), OPEN_FLAGS),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.ctl.admit();
        reply_empty(reply, self.do_fallocate(ino, fh, offset, length, mode));
    }
}
