//! Loop devices and ext4 file systems on them.
//!
//! With the image file on a [`FaultFs`](crate::FaultFs) mount, every block request of the
//! loop device becomes a FUSE request, so the FUSE switches turn into block-level faults:
//! this machine has no device-mapper, null_blk or nbd to do that.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};

use crate::cmd;
use crate::error::{io_context, HarnessError, Result};
use crate::faultfs::FaultControl;

/// Bound for `losetup` invocations.
const LOSETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for `mkfs.ext4`; it writes every inode table through FUSE.
const MKFS_TIMEOUT: Duration = Duration::from_secs(120);
/// How long detaching a pinned (adopted) device waits for the kernel to clear it once our
/// descriptor is closed; a device still open elsewhere (a lazily unmounted file system)
/// clears by itself later.
const CLEAR_WAIT: Duration = Duration::from_secs(5);
/// Poll interval of that wait.
const CLEAR_POLL: Duration = Duration::from_millis(5);
/// Bound for the ext4 mount and unmount syscalls.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// An attached loop device, detached on drop.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    major: u32,
    minor: u32,
    attached: bool,
    /// For an adopted device: an open descriptor that pins its binding (a detach by
    /// anyone else only marks it to clear on last close, so the number cannot be handed
    /// to another image while we hold it), and the backing file it had.
    pinned: Option<(File, PathBuf)>,
}

impl LoopDevice {
    /// Attaches `image` to a free loop device (`losetup --find --show`), with the loop
    /// driver's direct I/O on if `direct_io` (so the loop device adds no page cache of its
    /// own; check [`direct_io`](Self::direct_io) for what the kernel accepted).
    pub fn attach(image: &Path, direct_io: bool) -> Result<LoopDevice> {
        let mut args = vec![OsStr::new("--find"), OsStr::new("--show")];
        if direct_io {
            args.push(OsStr::new("--direct-io=on"));
        }
        args.push(image.as_os_str());
        let stdout = cmd::run("losetup", &args, LOSETUP_TIMEOUT)?;
        let path = PathBuf::from(stdout.trim());
        // From here on the device is ours: dropping `device` detaches it on any error.
        let mut device = LoopDevice {
            path,
            major: 0,
            minor: 0,
            attached: true,
            pinned: None,
        };
        let md = fs::metadata(&device.path)
            .map_err(|e| io_context(format!("stat {}", device.path.display()), e))?;
        if !md.file_type().is_block_device() {
            return Err(HarnessError::Command {
                cmd: "losetup --find --show".into(),
                status: None,
                stderr: format!("printed {:?}, not a block device", device.path),
            });
        }
        let rdev = md.rdev();
        device.major = u32::try_from(nix::sys::stat::major(rdev)).unwrap_or(u32::MAX);
        device.minor = u32::try_from(nix::sys::stat::minor(rdev)).unwrap_or(u32::MAX);
        Ok(device)
    }

    /// Takes charge of an attached loop device (e.g. one an earlier process left, or one
    /// recorded by [`persist`](Self::persist)): it is detached on drop. The device is held
    /// open from here on, so its binding cannot change under us; check
    /// [`pinned_backing`](Self::pinned_backing) (or use [`adopt_backed_by`](Self::adopt_backed_by))
    /// to be sure it is the device you mean.
    pub fn adopt(path: &Path) -> Result<LoopDevice> {
        let hold =
            File::open(path).map_err(|e| io_context(format!("open {}", path.display()), e))?;
        let md = hold
            .metadata()
            .map_err(|e| io_context(format!("stat {}", path.display()), e))?;
        if !md.file_type().is_block_device() {
            return Err(HarnessError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a block device", path.display()),
            )));
        }
        let backing = backing_file(path)?;
        let rdev = md.rdev();
        Ok(LoopDevice {
            path: path.to_path_buf(),
            major: u32::try_from(nix::sys::stat::major(rdev)).unwrap_or(u32::MAX),
            minor: u32::try_from(nix::sys::stat::minor(rdev)).unwrap_or(u32::MAX),
            attached: backing.is_some(),
            pinned: backing.map(|b| (hold, b)),
        })
    }

    /// [`adopt`](Self::adopt)s `path` only if it is attached to `backing` (device numbers
    /// are reused: a recorded `/dev/loop7` may by now belong to someone else's image).
    pub fn adopt_backed_by(path: &Path, backing: &Path) -> Result<Option<LoopDevice>> {
        if !path.exists() {
            return Ok(None);
        }
        let device = LoopDevice::adopt(path)?;
        if device.pinned_backing() == Some(backing) {
            Ok(Some(device))
        } else {
            // Not ours: let go without detaching.
            device.persist();
            Ok(None)
        }
    }

    /// The backing file an adopted device had when it was adopted.
    pub fn pinned_backing(&self) -> Option<&Path> {
        self.pinned.as_ref().map(|(_, backing)| backing.as_path())
    }

    /// Gives up charge of the device: it stays attached after this value is gone (adopt it
    /// again by path to detach it). Returns its path.
    pub fn persist(mut self) -> PathBuf {
        self.attached = false;
        self.pinned = None;
        std::mem::take(&mut self.path)
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's `(major, minor)` numbers (what block-layer probes key on).
    pub fn major_minor(&self) -> (u32, u32) {
        (self.major, self.minor)
    }

    /// Whether the loop driver does direct I/O on the backing file (from sysfs).
    pub fn direct_io(&self) -> Result<bool> {
        let name = self.path.file_name().unwrap_or_default();
        let sysfs = Path::new("/sys/block").join(name).join("loop/dio");
        let text = fs::read_to_string(&sysfs)
            .map_err(|e| io_context(format!("reading {}", sysfs.display()), e))?;
        Ok(text.trim() == "1")
    }

    /// Detaches the device (`losetup -d`). A device still in use is marked to detach
    /// automatically once its last user closes it.
    pub fn detach(mut self) -> Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<()> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        let detached = cmd::run(
            "losetup",
            &[OsStr::new("-d"), self.path.as_os_str()],
            LOSETUP_TIMEOUT,
        )
        .map(drop);
        // Pinned: the detach above only marked the device; closing our descriptor clears
        // it. Wait for that, so the caller sees it gone.
        if let Some((hold, backing)) = self.pinned.take() {
            drop(hold);
            let deadline = std::time::Instant::now() + CLEAR_WAIT;
            while backing_file(&self.path).ok().flatten().as_deref() == Some(backing.as_path()) {
                if std::time::Instant::now() >= deadline {
                    return Err(HarnessError::Timeout {
                        what: format!(
                            "{} to clear within {CLEAR_WAIT:?} (still open: it clears on last close)",
                            self.path.display()
                        ),
                    });
                }
                std::thread::sleep(CLEAR_POLL);
            }
        }
        detached
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            tracing::warn!(device = %self.path.display(), error = %e, "loop detach");
        }
    }
}

/// An ext4 file system on a loop device over an image file, mounted; unmounted and
/// detached on drop.
///
/// Put the image on a [`FaultFs`](crate::FaultFs) mount to stall or fail the block device,
/// and hand its control to [`with_fault_control`](Self::with_fault_control) so teardown can
/// release a hang before unmounting (an ext4 unmount over a hung device would never end).
#[derive(Debug)]
pub struct Ext4OnLoop {
    mount_dir: PathBuf,
    mounted: bool,
    control: Option<FaultControl>,
    // Declared last: dropped after the unmount in `Drop::drop`.
    device: LoopDevice,
}

impl Ext4OnLoop {
    /// Creates a sparse image of `size_bytes` at `image` (replacing any file there),
    /// attaches it with direct I/O, formats it ext4 (inode tables and journal initialised
    /// up front, so no background writer runs later) and mounts it at `mount_dir`
    /// (created if missing).
    pub fn create(image: &Path, size_bytes: u64, mount_dir: &Path) -> Result<Ext4OnLoop> {
        let file = File::create(image)
            .map_err(|e| io_context(format!("creating image {}", image.display()), e))?;
        file.set_len(size_bytes)
            .map_err(|e| io_context(format!("sizing image {}", image.display()), e))?;
        drop(file);

        let device = LoopDevice::attach(image, true)?;
        let dev = device.path().to_path_buf();
        cmd::run(
            "mkfs.ext4",
            &[
                OsStr::new("-q"),
                OsStr::new("-F"),
                OsStr::new("-E"),
                OsStr::new("lazy_itable_init=0,lazy_journal_init=0,nodiscard"),
                dev.as_os_str(),
            ],
            MKFS_TIMEOUT,
        )?;

        fs::create_dir_all(mount_dir)
            .map_err(|e| io_context(format!("mkdir {}", mount_dir.display()), e))?;
        let mount_dir = mount_dir
            .canonicalize()
            .map_err(|e| io_context(format!("mount dir {}", mount_dir.display()), e))?;
        let target = mount_dir.clone();
        cmd::bounded("mounting ext4", MOUNT_TIMEOUT, move || {
            nix::mount::mount(
                Some(&dev),
                &target,
                Some("ext4"),
                MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|e| {
                HarnessError::Mount(std::io::Error::new(
                    std::io::Error::from(e).kind(),
                    format!("mounting {} at {}: {e}", dev.display(), target.display()),
                ))
            })
        })?;
        Ok(Ext4OnLoop {
            mount_dir,
            mounted: true,
            control: None,
            device,
        })
    }

    /// Takes charge of an ext4 file system on the loop device `device` that may be mounted
    /// at `mount_dir` (e.g. one recorded by [`persist`](Self::persist), or left by a crashed
    /// run): drop unmounts it if `device` is what is mounted there, then detaches the
    /// device (pinned open meanwhile, see [`LoopDevice::adopt`]).
    pub fn adopt(device: &Path, mount_dir: &Path) -> Result<Ext4OnLoop> {
        let device = LoopDevice::adopt(device)?;
        let mounted = crate::mounts::mount_at(mount_dir)?
            .is_some_and(|m| Path::new(&m.source) == device.path());
        Ok(Ext4OnLoop {
            mount_dir: mount_dir.to_path_buf(),
            mounted,
            control: None,
            device,
        })
    }

    /// Whether the file system is (still) mounted by this value.
    pub fn is_mounted(&self) -> bool {
        self.mounted
    }

    /// [`adopt`](Self::adopt) only if `device` is still attached to `image`; `None` (and
    /// nothing touched) otherwise.
    pub fn adopt_backed_by(
        device: &Path,
        mount_dir: &Path,
        image: &Path,
    ) -> Result<Option<Ext4OnLoop>> {
        let Some(device) = LoopDevice::adopt_backed_by(device, image)? else {
            return Ok(None);
        };
        let mounted = crate::mounts::mount_at(mount_dir)?
            .is_some_and(|m| Path::new(&m.source) == device.path());
        Ok(Some(Ext4OnLoop {
            mount_dir: mount_dir.to_path_buf(),
            mounted,
            control: None,
            device,
        }))
    }

    /// Gives up charge: the file system stays mounted and the device attached after this
    /// value is gone. Returns `(device, mount_dir)`.
    pub fn persist(mut self) -> (PathBuf, PathBuf) {
        self.mounted = false;
        self.device.attached = false;
        (
            std::mem::take(&mut self.device.path),
            std::mem::take(&mut self.mount_dir),
        )
    }

    /// An ext4 of `size_bytes` whose image is `disk.img` on the `fs` mount,
    /// mounted in a subdirectory `ext4` of `scratch`, with `fs`'s control
    /// remembered: hang `fs` and the block device stalls.
    pub fn over_faultfs(
        fs: &crate::FaultFs,
        scratch: &crate::ScratchDir,
        size_bytes: u64,
    ) -> Result<Ext4OnLoop> {
        let mount_dir = scratch.subdir("ext4")?;
        Ok(
            Ext4OnLoop::create(&fs.mountpoint().join("disk.img"), size_bytes, &mount_dir)?
                .with_fault_control(fs.control()),
        )
    }

    /// Remembers the control of the [`FaultFs`](crate::FaultFs) holding the image, so that
    /// drop resets its switches (releasing a hang) before unmounting.
    pub fn with_fault_control(mut self, control: FaultControl) -> Ext4OnLoop {
        self.control = Some(control);
        self
    }

    /// Where the ext4 file system is mounted (canonical path).
    pub fn mount_dir(&self) -> &Path {
        &self.mount_dir
    }

    /// The loop device under the file system.
    pub fn loop_device(&self) -> &LoopDevice {
        &self.device
    }

    /// Unmounts the file system and detaches the loop device, reporting errors
    /// (drop does the same silently).
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_inner()?;
        self.device.detach_inner()
    }

    fn unmount_inner(&mut self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        if let Some(control) = &self.control {
            control.reset();
        }
        let target = self.mount_dir.clone();
        let strict = cmd::bounded("unmounting ext4", MOUNT_TIMEOUT, move || {
            nix::mount::umount2(&target, MntFlags::empty())
                .map_err(|e| HarnessError::Mount(std::io::Error::from(e)))
        });
        if strict.is_ok() {
            return Ok(());
        }
        // Busy (a test still holds a file open) or stuck: detach it so the loop device can
        // be released once its users are gone.
        let target = self.mount_dir.clone();
        let lazy = cmd::bounded("lazily unmounting ext4", MOUNT_TIMEOUT, move || {
            nix::mount::umount2(&target, MntFlags::MNT_DETACH)
                .map_err(|e| HarnessError::Mount(std::io::Error::from(e)))
        });
        if let Err(e) = lazy {
            tracing::warn!(dir = %self.mount_dir.display(), error = %e, "lazy unmount of ext4");
        }
        strict
    }
}

impl Drop for Ext4OnLoop {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!(dir = %self.mount_dir.display(), error = %e, "ext4 unmount");
        }
        // `self.device` is dropped (detached) right after this.
    }
}

/// The backing file of loop device `device` (`None` when it is not attached), from sysfs.
pub fn backing_file(device: &Path) -> Result<Option<PathBuf>> {
    let Some(name) = device.file_name().and_then(|n| n.to_str()) else {
        return Ok(None);
    };
    match fs::read_to_string(Path::new("/sys/block").join(name).join("loop/backing_file")) {
        Ok(text) => Ok(Some(clean_backing(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_context(
            format!("backing file of {}", device.display()),
            e,
        )),
    }
}

fn clean_backing(text: &str) -> PathBuf {
    let text = text.trim_end_matches('\n');
    PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(text))
}

/// Every attached loop device with its backing file, from sysfs (`/sys/block/loopN/loop/
/// backing_file`; a deleted image shows with a ` (deleted)` suffix, which is removed here).
pub fn attached_loop_devices() -> Result<Vec<(PathBuf, PathBuf)>> {
    let entries = fs::read_dir("/sys/block").map_err(|e| io_context("listing /sys/block", e))?;
    let mut found = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue; // not attached
        };
        found.push((Path::new("/dev").join(name), clean_backing(&backing)));
    }
    found.sort();
    Ok(found)
}
