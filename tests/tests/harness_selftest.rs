//! Self-tests of the fault-injection harness: the pass-through is faithful, and every switch
//! does what the disk-io tests rely on. These need root (CI runs them as root) and fail,
//! naming the missing privilege, without it.
//!
//! Every wait is bounded: blocking calls run on helper threads and are awaited with
//! `recv_timeout`, so a broken harness fails a test instead of hanging the run.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use disk_io_harness::{mounts, privilege, Ext4OnLoop, FaultFs, ScratchDir};

/// Upper bound for anything that should finish promptly.
const BOUND: Duration = Duration::from_secs(15);
/// How long a blocked call is observed to stay blocked.
const STAYS_BLOCKED: Duration = Duration::from_millis(400);
/// Block size for O_DIRECT I/O.
const BLOCK: usize = 4096;

/// Runs `f` on its own thread; the receiver yields its result.
fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

/// Runs `f` on its own thread and waits for it at most `BOUND`.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn(f)
        .recv_timeout(BOUND)
        .unwrap_or_else(|e| panic!("{what}: no result within {BOUND:?} ({e})"))
}

fn mount() -> (ScratchDir, FaultFs) {
    privilege::require_fuse().expect("FUSE privileges");
    FaultFs::mount_scratch().expect("mount faultfs")
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

fn errno_of<T: std::fmt::Debug>(result: io::Result<T>) -> Option<i32> {
    result
        .expect_err("operation should have failed")
        .raw_os_error()
}

/// A `BLOCK`-aligned, `BLOCK`-sized buffer filled with `byte`, for O_DIRECT.
struct Aligned {
    storage: Vec<u8>,
    offset: usize,
}

impl Aligned {
    fn new(byte: u8) -> Self {
        let mut storage = vec![byte; 2 * BLOCK];
        let offset = storage.as_mut_ptr().align_offset(BLOCK);
        Aligned { storage, offset }
    }
    fn bytes(&self) -> &[u8] {
        &self.storage[self.offset..self.offset + BLOCK]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.offset..self.offset + BLOCK]
    }
}

fn open_direct(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .expect("open O_DIRECT")
}

#[test]
fn privileges_are_present() {
    privilege::require_root().expect("root");
    privilege::require_fuse().expect("fuse");
    privilege::require_loop().expect("loop");
    privilege::require_ext4_on_loop().expect("ext4 tools");
}

#[test]
fn pass_through_round_trip() {
    let (_scratch, fs) = mount();
    let (mnt, backing) = (fs.mountpoint().to_path_buf(), fs.backing().to_path_buf());
    let entry = mounts::mount_at(&mnt).expect("mountinfo").expect("mounted");
    assert_eq!(entry.fs_type, "fuse");
    assert_eq!(entry.source, "faultfs");

    // Writes through the mount land in the backing directory and vice versa, at once.
    fs::write(mnt.join("a.txt"), b"via mount").expect("write via mount");
    assert_eq!(fs::read(backing.join("a.txt")).expect("read"), b"via mount");
    fs::write(backing.join("b.txt"), b"via backing").expect("write backing");
    assert_eq!(fs::read(mnt.join("b.txt")).expect("read"), b"via backing");
    fs::write(backing.join("b.txt"), b"changed behind its back").expect("rewrite");
    assert_eq!(
        fs::read(mnt.join("b.txt")).expect("read"),
        b"changed behind its back"
    );
    assert_eq!(fs::metadata(mnt.join("b.txt")).expect("stat").len(), 23);

    // Larger than one FUSE request.
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    fs::write(mnt.join("big"), &big).expect("write big");
    assert!(fs::read(backing.join("big")).expect("read big") == big);
    assert!(fs::read(mnt.join("big")).expect("read big") == big);

    // Directories, and renames that move open files and whole subtrees.
    fs::create_dir(mnt.join("dir")).expect("mkdir");
    let mut open = File::create(mnt.join("dir/f")).expect("create in dir");
    fs::rename(mnt.join("dir"), mnt.join("dir2")).expect("rename dir");
    open.write_all(b"written after rename")
        .expect("write via old fd");
    open.sync_all().expect("fsync");
    drop(open);
    assert_eq!(
        fs::read(backing.join("dir2/f")).expect("read"),
        b"written after rename"
    );
    assert_eq!(
        fs::read(mnt.join("dir2/f")).expect("read"),
        b"written after rename"
    );
    assert!(!mnt.join("dir").exists());
    File::open(mnt.join("dir2"))
        .and_then(|d| d.sync_all())
        .expect("fsyncdir");

    fs::write(mnt.join("x"), b"x").expect("write x");
    fs::write(mnt.join("y"), b"y").expect("write y");
    fs::rename(mnt.join("x"), mnt.join("y")).expect("rename over");
    assert_eq!(fs::read(mnt.join("y")).expect("read y"), b"x");
    assert!(!backing.join("x").exists());

    fs::remove_file(mnt.join("a.txt")).expect("unlink");
    assert!(!backing.join("a.txt").exists());
    assert_eq!(
        names(&mnt),
        ["b.txt", "big", "dir2", "y"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(names(&mnt.join("dir2")), BTreeSet::from(["f".to_owned()]));

    // setattr: size, mode, times.
    OpenOptions::new()
        .write(true)
        .open(mnt.join("b.txt"))
        .and_then(|f| f.set_len(3))
        .expect("truncate");
    assert_eq!(fs::read(backing.join("b.txt")).expect("read"), b"cha");
    fs::set_permissions(mnt.join("y"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let mode = fs::metadata(backing.join("y"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(mnt.join("y"))
        .and_then(|f| f.set_modified(when))
        .expect("utimens");
    assert_eq!(
        fs::metadata(backing.join("y"))
            .expect("stat")
            .modified()
            .expect("mtime"),
        when
    );

    // Links, symlinks and fallocate.
    std::os::unix::fs::symlink("y", mnt.join("ln")).expect("symlink");
    assert_eq!(
        fs::read_link(mnt.join("ln")).expect("readlink"),
        Path::new("y")
    );
    assert_eq!(
        fs::read(mnt.join("ln")).expect("read through symlink"),
        b"x"
    );
    fs::hard_link(mnt.join("y"), mnt.join("y2")).expect("link");
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(&fs::metadata(mnt.join("y")).expect("stat")),
        2
    );
    fs::remove_file(mnt.join("y2")).expect("unlink link");
    fs::remove_file(mnt.join("ln")).expect("unlink symlink");
    let file = OpenOptions::new()
        .write(true)
        .open(mnt.join("b.txt"))
        .expect("open");
    nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, 1 << 16)
        .expect("fallocate");
    assert_eq!(
        fs::metadata(backing.join("b.txt")).expect("stat").len(),
        1 << 16
    );
    file.set_len(3).expect("truncate back");
    drop(file);

    fs::remove_file(mnt.join("dir2/f")).expect("unlink in dir");
    fs::remove_dir(mnt.join("dir2")).expect("rmdir");
    assert!(!backing.join("dir2").exists());

    // An open file keeps working after its name is gone.
    let mut orphan = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(mnt.join("orphan"))
        .expect("create orphan");
    fs::remove_file(mnt.join("orphan")).expect("unlink open file");
    orphan.write_all(b"still here").expect("write unlinked");
    orphan.set_len(5).expect("ftruncate unlinked");
    assert_eq!(orphan.metadata().expect("fstat unlinked").len(), 5);
    let mut buf = [0; 16];
    let n = orphan.read_at(&mut buf, 0).expect("read unlinked");
    assert_eq!(&buf[..n], b"still");
    drop(orphan);

    let via_mount = nix::sys::statvfs::statvfs(&mnt).expect("statfs mount");
    let direct = nix::sys::statvfs::statvfs(&backing).expect("statfs backing");
    assert_eq!(via_mount.blocks(), direct.blocks());
    assert_eq!(via_mount.block_size(), direct.block_size());
    assert!(via_mount.blocks() > 0);

    assert!(fs.control().requests() > 0);
    fs.unmount().expect("unmount");
    assert!(!mounts::is_mounted(&mnt).expect("mountinfo"));
    assert_eq!(fs::read(backing.join("y")).expect("backing kept"), b"x");
}

#[test]
fn hang_blocks_requests_until_release() {
    let (_scratch, fs) = mount();
    let ctl = fs.control();
    let path = fs.mountpoint().join("slow");
    fs::write(&path, b"payload").expect("write");
    let file = File::open(&path).expect("open");

    ctl.hang();
    assert!(ctl.is_hung());
    let reader = spawn(move || {
        let mut buf = [0; 64];
        file.read_at(&mut buf, 0).map(|n| buf[..n].to_vec())
    });
    assert!(
        ctl.wait_for_hung(1, BOUND),
        "the read never reached the daemon"
    );
    assert!(ctl.hung_requests() >= 1);
    assert!(
        matches!(
            reader.recv_timeout(STAYS_BLOCKED),
            Err(RecvTimeoutError::Timeout)
        ),
        "the read completed while the file system was hung"
    );
    // Metadata requests park too (zero TTL: nothing is answered from the kernel cache).
    let stat_path = path.clone();
    let stat = spawn(move || fs::metadata(stat_path).map(|m| m.len()));
    assert!(
        ctl.wait_for_hung(2, BOUND),
        "the stat never reached the daemon"
    );

    ctl.release();
    let data = reader
        .recv_timeout(BOUND)
        .expect("read still blocked after release")
        .expect("read failed");
    assert_eq!(data, b"payload");
    assert_eq!(
        stat.recv_timeout(BOUND)
            .expect("stat still blocked")
            .expect("stat"),
        7
    );
    assert_eq!(ctl.hung_requests(), 0);
}

#[test]
fn latency_delays_each_request() {
    let (_scratch, fs) = mount();
    let ctl = fs.control();
    let path = fs.mountpoint().join("f");
    fs::write(&path, b"data").expect("write");
    let latency = Duration::from_millis(300);

    let timed_read = |path: PathBuf| {
        bounded("read", move || {
            let start = Instant::now();
            fs::read(path).expect("read");
            start.elapsed()
        })
    };
    ctl.set_latency(latency);
    assert_eq!(ctl.latency(), latency);
    let slow = timed_read(path.clone());
    ctl.set_latency(Duration::ZERO);
    let fast = timed_read(path);

    // A read is at least lookup + open + read + release: several delayed requests.
    assert!(slow >= latency * 2, "read with latency took only {slow:?}");
    assert!(fast < latency, "read without latency took {fast:?}");
}

#[test]
fn eio_rule_fails_matching_paths_only() {
    let (_scratch, fs) = mount();
    let ctl = fs.control();
    let (mnt, backing) = (fs.mountpoint().to_path_buf(), fs.backing().to_path_buf());
    fs::write(backing.join("good.txt"), b"good").expect("write");
    fs::write(backing.join("bad.txt"), b"bad").expect("write");
    fs::create_dir(backing.join("bad-dir")).expect("mkdir");
    fs::write(backing.join("bad-dir/inner"), b"inner").expect("write");
    let opened_before = File::open(mnt.join("bad.txt")).expect("open before the rule");

    ctl.fail_eio("bad");
    let eio = Some(libc::EIO);
    assert_eq!(errno_of(fs::read(mnt.join("bad.txt"))), eio);
    assert_eq!(errno_of(fs::metadata(mnt.join("bad.txt"))), eio);
    assert_eq!(
        errno_of(opened_before.read_at(&mut [0; 8], 0)),
        eio,
        "reads on a file opened before the rule fail too"
    );
    assert_eq!(errno_of(fs::read(mnt.join("bad-dir/inner"))), eio);
    assert_eq!(errno_of(fs::write(mnt.join("new-bad"), b"x")), eio);
    assert!(!backing.join("new-bad").exists());

    assert_eq!(fs::read(mnt.join("good.txt")).expect("good file"), b"good");
    fs::write(mnt.join("other"), b"ok").expect("unrelated write");

    ctl.clear_eio();
    assert_eq!(fs::read(mnt.join("bad.txt")).expect("after clear"), b"bad");
    let mut buf = [0; 3];
    assert_eq!(opened_before.read_at(&mut buf, 0).expect("read"), 3);
}

#[test]
fn enospc_fails_allocations_and_keeps_content() {
    let (_scratch, fs) = mount();
    let ctl = fs.control();
    let (mnt, backing) = (fs.mountpoint().to_path_buf(), fs.backing().to_path_buf());
    fs::write(backing.join("keep.txt"), b"original content").expect("write");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("keep.txt"))
        .expect("open");

    ctl.set_enospc(true);
    let enospc = Some(libc::ENOSPC);
    assert_eq!(errno_of(file.write_at(b"XXXX", 0)), enospc);
    assert_eq!(errno_of(file.set_len(1 << 20)), enospc, "growing truncate");
    assert_eq!(errno_of(File::create(mnt.join("new.txt"))), enospc);
    assert_eq!(errno_of(fs::create_dir(mnt.join("newdir"))), enospc);
    assert_eq!(
        errno_of(
            nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, 1 << 20)
                .map_err(io::Error::from)
        ),
        enospc
    );
    assert!(!backing.join("new.txt").exists());
    assert!(!backing.join("newdir").exists());
    // Reads still work and nothing was modified.
    assert_eq!(
        fs::read(mnt.join("keep.txt")).expect("read"),
        b"original content"
    );
    assert_eq!(
        fs::read(backing.join("keep.txt")).expect("read"),
        b"original content"
    );

    ctl.set_enospc(false);
    file.write_at(b"NEW!", 0)
        .expect("write after ENOSPC cleared");
    assert_eq!(
        fs::read(backing.join("keep.txt")).expect("read"),
        b"NEW!inal content"
    );
}

#[test]
fn reset_clears_every_switch() {
    let (_scratch, fs) = mount();
    let ctl = fs.control();
    let path = fs.mountpoint().join("f");
    fs::write(&path, b"data").expect("write");
    ctl.fail_eio("/f");
    ctl.set_enospc(true);
    ctl.set_latency(Duration::from_secs(60));
    ctl.hang();
    let reader = spawn(move || fs::read(path));
    assert!(ctl.wait_for_hung(1, BOUND));
    ctl.reset();
    assert!(!ctl.is_hung());
    assert_eq!(ctl.latency(), Duration::ZERO);
    // The parked request checks the rules only after it is released, and reset cleared
    // them all at once: it succeeds without delay.
    let start = Instant::now();
    let data = reader
        .recv_timeout(BOUND)
        .expect("read still blocked after reset");
    assert_eq!(data.expect("read after reset"), b"data");
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn fifo_replaces_a_file_on_the_mount() {
    let (_scratch, fs) = mount();
    let (mnt, backing) = (fs.mountpoint().to_path_buf(), fs.backing().to_path_buf());
    let path = mnt.join("format.json");
    fs::write(&path, b"{}").expect("write");
    fs::remove_file(&path).expect("unlink");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");

    assert!(fs::symlink_metadata(&path)
        .expect("stat")
        .file_type()
        .is_fifo());
    assert!(fs::symlink_metadata(backing.join("format.json"))
        .expect("stat backing")
        .file_type()
        .is_fifo());
    // It behaves as a FIFO: a non-blocking writer without a reader gets ENXIO, and a
    // non-blocking reader opens fine.
    let writer = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path);
    assert_eq!(errno_of(writer), Some(libc::ENXIO));
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .expect("non-blocking open for reading");
}

#[test]
fn drop_while_hung_unblocks_callers_and_unmounts() {
    let (_scratch, fs) = mount();
    let ctl = fs.control();
    let mnt = fs.mountpoint().to_path_buf();
    let path = mnt.join("f");
    fs::write(&path, b"data").expect("write");
    let file = File::open(&path).expect("open");

    ctl.hang();
    let reader = spawn(move || {
        let mut buf = [0; 4];
        file.read_at(&mut buf, 0)
    });
    assert!(ctl.wait_for_hung(1, BOUND));

    bounded("dropping a hung faultfs", move || drop(fs));
    reader
        .recv_timeout(BOUND)
        .expect("reader still blocked after drop")
        .expect("the parked read completes once released");
    assert!(!mounts::is_mounted(&mnt).expect("mountinfo"));
}

fn ext4_on(fs: &FaultFs, scratch: &ScratchDir) -> Ext4OnLoop {
    privilege::require_ext4_on_loop().expect("loop devices and mkfs.ext4");
    let image = fs.mountpoint().join("disk.img");
    let mount_dir = scratch.subdir("ext4").expect("ext4 mount dir");
    Ext4OnLoop::create(&image, 64 << 20, &mount_dir)
        .expect("ext4 on a loop device over faultfs")
        .with_fault_control(fs.control())
}

#[test]
fn ext4_on_loop_over_faultfs_round_trip() {
    let (scratch, fs) = mount();
    let ext4 = ext4_on(&fs, &scratch);
    let device = ext4.loop_device();
    assert!(device.path().starts_with("/dev"), "{:?}", device.path());
    assert_eq!(device.major_minor().0, 7, "loop devices have major 7");
    assert!(
        device.direct_io().expect("sysfs dio"),
        "loop direct I/O is on"
    );
    assert_eq!(
        fs::metadata(fs.backing().join("disk.img"))
            .expect("image in backing")
            .len(),
        64 << 20
    );
    let entry = mounts::mount_at(ext4.mount_dir())
        .expect("mountinfo")
        .expect("ext4 mounted");
    assert_eq!(entry.fs_type, "ext4");

    let requests_before = fs.control().requests();
    let path = ext4.mount_dir().join("hello");
    let mut file = File::create(&path).expect("create on ext4");
    file.write_all(b"hello through ext4, loop and FUSE")
        .expect("write");
    file.sync_all().expect("fsync on ext4");
    drop(file);
    assert_eq!(
        fs::read(&path).expect("read back"),
        b"hello through ext4, loop and FUSE"
    );
    assert!(
        fs.control().requests() > requests_before,
        "the fsync must have gone through the FUSE layer"
    );

    let mount_dir = ext4.mount_dir().to_path_buf();
    ext4.unmount().expect("unmount ext4 and detach");
    assert!(!mounts::is_mounted(&mount_dir).expect("mountinfo"));
}

#[test]
fn fuse_hang_stalls_o_direct_write_on_ext4() {
    let (scratch, fs) = mount();
    let ctl = fs.control();
    let ext4 = ext4_on(&fs, &scratch);
    let path = ext4.mount_dir().join("block");

    // Allocate the block first, so the stalled write is a plain overwrite that goes straight
    // to the device (no allocation, no journal).
    let file = open_direct(&path);
    file.write_at(Aligned::new(0xAB).bytes(), 0)
        .expect("first O_DIRECT write");
    file.sync_all().expect("fsync");

    ctl.hang();
    let writer = spawn(move || file.write_at(Aligned::new(0xCD).bytes(), 0));
    assert!(
        ctl.wait_for_hung(1, BOUND),
        "the block write never reached the FUSE daemon"
    );
    assert!(
        matches!(
            writer.recv_timeout(STAYS_BLOCKED),
            Err(RecvTimeoutError::Timeout)
        ),
        "the O_DIRECT write completed while the FUSE layer was hung"
    );

    ctl.release();
    let written = writer
        .recv_timeout(BOUND)
        .expect("write still blocked after release")
        .expect("O_DIRECT write");
    assert_eq!(written, BLOCK);

    let read_path = path.clone();
    let data = bounded("O_DIRECT read", move || {
        let mut buf = Aligned::new(0);
        open_direct(&read_path)
            .read_at(buf.bytes_mut(), 0)
            .map(|n| (n, buf.bytes().to_vec()))
    })
    .expect("O_DIRECT read");
    assert_eq!(data.0, BLOCK);
    assert!(data.1.iter().all(|&b| b == 0xCD));
}

#[test]
fn busy_unmount_reports_error_and_still_cleans_up() {
    let (_scratch, fs) = mount();
    let mnt = fs.mountpoint().to_path_buf();
    fs::write(mnt.join("f"), b"data").expect("write");
    let held = File::open(mnt.join("f")).expect("open");

    let result = bounded("unmounting a busy faultfs", move || fs.unmount());
    assert!(
        matches!(result, Err(disk_io_harness::HarnessError::Mount(_))),
        "{result:?}"
    );
    assert!(!mounts::is_mounted(&mnt).expect("mountinfo"));
    // The connection was aborted: the file still open fails instead of hanging.
    let mut buf = [0; 4];
    assert_eq!(errno_of(held.read_at(&mut buf, 0)), Some(libc::ENOTCONN));
}

#[test]
fn wrong_drop_order_still_cleans_up() {
    let (scratch, fs) = mount();
    let ext4 = ext4_on(&fs, &scratch);
    let mount_dir = ext4.mount_dir().to_path_buf();
    let device = ext4.loop_device().path().to_path_buf();
    fs.control().hang();
    // The FUSE mount goes first while the loop device still uses it.
    bounded("dropping faultfs under a loop device", move || drop(fs));
    bounded("dropping ext4 after its faultfs", move || drop(ext4));
    assert!(!mounts::is_mounted(&mount_dir).expect("mountinfo"));
    let backing_file = fs::read_to_string(format!(
        "/sys/block/{}/loop/backing_file",
        device.file_name().expect("name").to_string_lossy()
    ));
    assert!(
        backing_file.is_err(),
        "loop device still attached: {backing_file:?}"
    );
    drop(scratch);
}
