//! Ownership of a pin directory: an exclusive `flock` on the directory.
//!
//! bpffs holds only pins and directories (no lock files), so the lock is
//! taken on the directory itself. The kernel drops it when its holder exits,
//! however it exits, so "nobody holds the lock" means "the loader that
//! pinned these maps is gone" at once, without waiting for its heartbeat to
//! age. A paused loader keeps its lock: no other loader can take its
//! directory over, so it cannot resume and delete a newer loader's pins.
//!
//! Every pin the owner makes or removes goes through the locked directory's
//! file descriptor (`/proc/self/fd/N/NAME`, `unlinkat(N, NAME)`), never
//! through the path again: if an operator removed the directory meanwhile
//! and a new loader made a new one at the same path, the old owner can only
//! touch its own (deleted) directory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::MapInfo;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::ReaderError;

/// Bounds of taking a pin directory's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockConfig {
    /// How long a starting loader retries a lock that is held. Readers hold
    /// it shared for microseconds ([`owner_present`]); a loader holds it for
    /// its life, so this only has to outlast a reader's probe.
    pub wait: Duration,
    /// Pause between two attempts.
    pub retry_interval: Duration,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            wait: Duration::from_millis(500),
            retry_interval: Duration::from_millis(10),
        }
    }
}

fn open_dir(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_CLOEXEC)
        .open(dir)
}

fn pin_dir_err<'a>(
    dir: &'a Path,
    what: &'static str,
) -> impl FnOnce(io::Error) -> ReaderError + 'a {
    move |source| ReaderError::PinDir {
        dir: dir.to_path_buf(),
        what,
        source,
    }
}

/// Whether a process holds `dir`'s ownership lock. Takes the lock shared
/// without waiting and drops it at once; a directory that does not exist
/// is [`ReaderError::PinDir`] with `NotFound`.
pub fn owner_present(dir: &Path) -> Result<bool, ReaderError> {
    let file = open_dir(dir).map_err(pin_dir_err(dir, "opening"))?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(shared) => {
            drop(shared);
            Ok(false)
        }
        Err((_, Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(pin_dir_err(dir, "probing its lock")(e.into())),
    }
}

/// The exclusive ownership of one pin directory (see the module docs).
/// Dropping it releases the lock; it does not remove anything.
#[derive(Debug)]
pub struct PinDirLock {
    dir: PathBuf,
    lock: Flock<File>,
    dev: u64,
    ino: u64,
}

impl PinDirLock {
    /// Takes `dir`'s lock, retrying for [`LockConfig::wait`] while another
    /// process holds it ([`ReaderError::Owned`] after that). Retries, too,
    /// when the directory was replaced between opening and locking it, so
    /// the lock held is always on the directory the path names.
    pub fn acquire(dir: &Path, cfg: &LockConfig) -> Result<PinDirLock, ReaderError> {
        let started = Instant::now();
        let deadline = started + cfg.wait;
        loop {
            let file = open_dir(dir).map_err(pin_dir_err(dir, "opening"))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    let held = lock.metadata().map_err(pin_dir_err(dir, "fstat"))?;
                    match std::fs::metadata(dir) {
                        Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                            return Ok(PinDirLock {
                                dir: dir.to_path_buf(),
                                lock,
                                dev: held.dev(),
                                ino: held.ino(),
                            });
                        }
                        // Replaced (or removed) under us: try the new one.
                        Ok(_) => {}
                        Err(e) => return Err(pin_dir_err(dir, "stat")(e)),
                    }
                }
                Err((_, Errno::EWOULDBLOCK)) => {}
                Err((_, e)) => return Err(pin_dir_err(dir, "locking")(e.into())),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReaderError::Owned {
                    dir: dir.to_path_buf(),
                    waited: now - started,
                });
            }
            std::thread::sleep(cfg.retry_interval.min(deadline - now));
        }
    }

    /// The directory's path (as given to [`acquire`](Self::acquire)).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path that resolves to `name` inside the locked directory whatever
    /// happened to the original path since (through `/proc/self/fd`), for
    /// pinning.
    pub fn pin_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.lock.as_raw_fd()))
    }

    /// Whether the path still names the locked directory.
    pub fn at_path(&self) -> bool {
        std::fs::metadata(&self.dir).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }

    /// Kernel id of the map pinned as `name` in the locked directory, `None`
    /// if there is no such pin.
    pub fn pinned_id(&self, name: &str) -> Option<u32> {
        MapInfo::from_pin(self.pin_path(name)).ok().map(|i| i.id())
    }

    /// Removes the pin `name` from the locked directory if it is the map
    /// `id` (this owner's); `Ok(false)` when there is no such pin or it is
    /// another map.
    pub fn remove_own(&self, name: &str, id: u32) -> io::Result<bool> {
        if self.pinned_id(name) != Some(id) {
            return Ok(false);
        }
        self.unlink(name).map(|()| true)
    }

    /// Removes the pin `name` whatever it holds (leftovers of a loader that
    /// is gone: nobody else can own this directory while the lock is held).
    pub fn remove_leftover(&self, name: &str) -> io::Result<bool> {
        match self.unlink(name) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn unlink(&self, name: &str) -> io::Result<()> {
        nix::unistd::unlinkat(
            self.lock.as_fd(),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
        .map_err(io::Error::from)
    }

    /// Removes the directory if the path still names it and it is empty
    /// (fails harmlessly otherwise); the lock is kept until drop.
    pub fn remove_dir(&self) -> io::Result<()> {
        if !self.at_path() {
            return Ok(());
        }
        std::fs::remove_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // flock works the same on any local file system; bpffs is exercised by
    // the loader's tests.
    #[test]
    fn exclusive_lock_excludes_and_is_visible_to_probes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("pins");
        std::fs::create_dir(&dir).expect("mkdir");
        assert!(!owner_present(&dir).expect("probe"));
        let cfg = LockConfig {
            wait: Duration::from_millis(50),
            retry_interval: Duration::from_millis(5),
        };
        let lock = PinDirLock::acquire(&dir, &cfg).expect("first lock");
        assert!(owner_present(&dir).expect("probe"));
        let t0 = Instant::now();
        match PinDirLock::acquire(&dir, &cfg) {
            Err(ReaderError::Owned { waited, .. }) => assert!(waited >= cfg.wait),
            other => panic!("expected Owned, got {other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
        drop(lock);
        assert!(!owner_present(&dir).expect("probe"));
        PinDirLock::acquire(&dir, &cfg).expect("free again");
    }

    #[test]
    fn an_owner_only_touches_its_own_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("pins");
        std::fs::create_dir(&dir).expect("mkdir");
        let old = PinDirLock::acquire(&dir, &LockConfig::default()).expect("lock");
        std::fs::write(dir.join("A"), b"old").expect("write");
        // An operator removes the directory; someone makes a new one.
        std::fs::remove_file(dir.join("A")).expect("rm");
        std::fs::remove_dir(&dir).expect("rmdir");
        std::fs::create_dir(&dir).expect("mkdir again");
        std::fs::write(dir.join("A"), b"new").expect("write");
        assert!(!old.at_path());
        let new = PinDirLock::acquire(&dir, &LockConfig::default()).expect("new lock");
        assert!(!old.remove_leftover("A").expect("unlinkat"));
        old.remove_dir().expect("no-op");
        drop(old);
        assert_eq!(std::fs::read(dir.join("A")).expect("still there"), b"new");
        assert!(new.at_path());
        assert!(new.remove_leftover("A").expect("unlinkat"));
        new.remove_dir().expect("rmdir");
        assert!(!dir.exists());
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("none");
        assert!(matches!(
            owner_present(&dir),
            Err(ReaderError::PinDir { .. })
        ));
        assert!(matches!(
            PinDirLock::acquire(&dir, &LockConfig::default()),
            Err(ReaderError::PinDir { .. })
        ));
    }
}
