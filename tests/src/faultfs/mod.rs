//! `FaultFs`: a FUSE pass-through file system with run-time fault switches.
//!
//! The mount mirrors a backing directory. Files are opened with `FOPEN_DIRECT_IO` and every
//! entry and attribute has a zero TTL, so reads, writes, stats and path lookups always reach
//! the daemon, where a [`FaultControl`] can delay them, park them (a hung disk) or fail them.
//! The daemon runs on background threads inside the test process.

mod control;
mod fs;
mod inodes;

use std::fs as stdfs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use nix::mount::MntFlags;

pub use control::FaultControl;

use crate::error::{io_context, HarnessError, Result};
use crate::mounts;
use crate::scratch::ScratchDir;

/// Daemon threads. More than one so a latency switch behaves like a device with a queue
/// (concurrent requests are delayed concurrently, not one after another).
const DAEMON_THREADS: usize = 4;
/// How long teardown waits for the daemon to stop after a lazy unmount before it aborts
/// the FUSE connection.
const LAZY_GRACE: Duration = Duration::from_secs(2);
/// How long teardown waits for the daemon after aborting the connection.
const ABORT_GRACE: Duration = Duration::from_secs(5);
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// A mounted FUSE pass-through file system with fault switches.
///
/// Dropping it releases any hang first, then unmounts (lazily if the mount is busy) and, if
/// the daemon still has not stopped after a grace period, aborts the FUSE connection, so a
/// panicking test never leaves a mount or a blocked process behind.
///
/// When a loop device or an [`Ext4OnLoop`](crate::Ext4OnLoop) uses a file on this mount,
/// drop that first (declare the `FaultFs` before it).
#[derive(Debug)]
pub struct FaultFs {
    control: FaultControl,
    backing: PathBuf,
    mountpoint: PathBuf,
    /// FUSE connection number (its directory name under `/sys/fs/fuse/connections`).
    connection: Option<u64>,
    session: Option<BackgroundSession>,
}

fn wait_finished(session: &BackgroundSession, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !session.guard.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

impl FaultFs {
    /// Mounts a pass-through of `backing` at `mountpoint` (both must be existing
    /// directories) and starts the daemon threads.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<FaultFs> {
        let backing = backing
            .canonicalize()
            .map_err(|e| io_context(format!("backing directory {}", backing.display()), e))?;
        let mountpoint = mountpoint
            .canonicalize()
            .map_err(|e| io_context(format!("mount point {}", mountpoint.display()), e))?;
        let root = stdfs::metadata(&backing)
            .map_err(|e| io_context(format!("stat {}", backing.display()), e))?;
        if !root.is_dir() {
            return Err(HarnessError::Io(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("backing {} is not a directory", backing.display()),
            )));
        }
        let control = FaultControl::new();
        let filesystem = fs::PassFs::new(backing.clone(), &root, control.clone());

        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("faultfs".into()),
            MountOption::Subtype("faultfs".into()),
            MountOption::RW,
        ];
        // allow_other: kernel threads (the loop driver) and other uids must reach the
        // daemon too. No default_permissions: the daemon (root) decides.
        config.acl = SessionACL::All;
        config.n_threads = Some(DAEMON_THREADS);
        config.clone_fd = true;

        let session = fuser::Session::new(filesystem, &mountpoint, &config)
            .and_then(fuser::Session::spawn)
            .map_err(|e| {
                HarnessError::Mount(io::Error::new(
                    e.kind(),
                    format!("mounting faultfs at {}: {e}", mountpoint.display()),
                ))
            })?;
        let connection = match mounts::mount_at(&mountpoint) {
            Ok(Some(m)) => Some((u64::from(m.major) << 20) | u64::from(m.minor)),
            _ => None,
        };
        tracing::debug!(
            backing = %backing.display(),
            mountpoint = %mountpoint.display(),
            ?connection,
            "faultfs mounted"
        );
        Ok(FaultFs {
            control,
            backing,
            mountpoint,
            connection,
            session: Some(session),
        })
    }

    /// Creates a [`ScratchDir`] and mounts its `backing/` at its `mnt/`.
    ///
    /// Bind the result as `let (scratch, fs) = ...;` so that `fs` is dropped (unmounted)
    /// before `scratch` is removed; `ScratchDir` also detaches leftover mounts itself.
    pub fn mount_scratch() -> Result<(ScratchDir, FaultFs)> {
        let scratch = ScratchDir::new()?;
        let fs = FaultFs::mount(&scratch.backing(), &scratch.mnt())?;
        Ok((scratch, fs))
    }

    /// A handle to flip this mount's fault switches.
    pub fn control(&self) -> FaultControl {
        self.control.clone()
    }

    /// Where the file system is mounted (canonical path).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The mirrored backing directory (canonical path). Reading it bypasses all faults.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Unmounts and stops the daemon.
    ///
    /// Fails with [`HarnessError::Mount`] if the mount was busy (open files, a loop device);
    /// the mount is then detached lazily and the connection aborted anyway, as on drop.
    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    /// Kills the daemon as far as the kernel can tell: aborts the FUSE
    /// connection, so every pending and future request on the mount fails
    /// with `ENOTCONN`, which is what a crashed FUSE daemon or a lost mount
    /// looks like to its users. Teardown still unmounts.
    pub fn kill_daemon(&self) -> Result<()> {
        self.control.close();
        self.abort_connection().map_err(HarnessError::Mount)
    }

    /// Aborts the FUSE connection: every pending and future request fails with `ENOTCONN`.
    fn abort_connection(&self) -> io::Result<()> {
        let Some(connection) = self.connection else {
            return Err(io::Error::other("the FUSE connection number is unknown"));
        };
        // fusectl is not mounted on every machine; we are root, so mount it on demand.
        if !matches!(mounts::is_mounted(Path::new(FUSECTL)), Ok(true)) {
            if let Err(e) = nix::mount::mount(
                Some("fusectl"),
                FUSECTL,
                Some("fusectl"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            ) {
                return Err(io::Error::other(format!(
                    "cannot mount fusectl to abort a FUSE connection: {e}"
                )));
            }
        }
        let abort = Path::new(FUSECTL)
            .join(connection.to_string())
            .join("abort");
        stdfs::write(&abort, "1").map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("aborting the FUSE connection ({}): {e}", abort.display()),
            )
        })
    }

    fn teardown(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // Parked requests must finish before anything else: an unmount or a loop device
        // teardown behind them would wait forever.
        self.control.close();

        let mut result = Ok(());
        if let Err(e) = nix::mount::umount2(&self.mountpoint, MntFlags::empty()) {
            // EINVAL: nothing mounted there any more (someone detached it already).
            if e != nix::errno::Errno::EINVAL {
                result = Err(HarnessError::Mount(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("unmounting {}: {e}", self.mountpoint.display()),
                )));
                if let Err(e) = nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH) {
                    tracing::warn!(error = %e, "lazy unmount of faultfs failed");
                }
            }
        }
        // After a lazy unmount the daemon keeps serving until the last user goes away.
        if !wait_finished(&session, LAZY_GRACE) {
            tracing::warn!(
                mountpoint = %self.mountpoint.display(),
                "faultfs still in use after unmount; aborting the FUSE connection"
            );
            if let Err(e) = self.abort_connection() {
                tracing::warn!(error = %e, "aborting the FUSE connection failed");
            }
            if !wait_finished(&session, ABORT_GRACE) {
                // Leave the threads behind rather than block the caller.
                return result.and(Err(HarnessError::Timeout {
                    what: format!(
                        "faultfs daemon for {} did not stop",
                        self.mountpoint.display()
                    ),
                }));
            }
        }
        match session.join() {
            Ok(()) => result,
            Err(e) => result.and(Err(HarnessError::Mount(e))),
        }
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(error = %e, "faultfs teardown");
        }
    }
}
