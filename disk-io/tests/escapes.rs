//! Ways out of a disk other than symlinks (those are `symlinks.rs`): a hard
//! link to a file elsewhere (outside the disk, or the disk's own format
//! file), a device node planted in a file's place, and another file system
//! mounted inside a volume. Reads refuse them, writes replace the entry
//! instead of writing through it, and purges never enter another mount.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use disk_io::{CreateOptions, Deadline, DeleteOptions, Disk, DiskError, LocalDisk, PathRule};
use disk_io_harness::privilege;

fn dl() -> Deadline {
    Deadline::after(Duration::from_secs(5))
}

fn rule<T: std::fmt::Debug>(r: &disk_io::Result<T>) -> Option<PathRule> {
    match r {
        Err(DiskError::InvalidPath { rule, .. }) => Some(*rule),
        _ => None,
    }
}

async fn setup() -> (tempfile::TempDir, std::path::PathBuf, LocalDisk) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("disk");
    std::fs::create_dir_all(root.join("v")).expect("mkdir");
    std::fs::create_dir_all(tmp.path().join("outside")).expect("mkdir");
    std::fs::write(tmp.path().join("outside/secret"), b"top secret").expect("write");
    let disk = LocalDisk::open(&root, dl()).await.expect("open");
    disk.format(0, 0, false, dl()).await.expect("format");
    (tmp, root, disk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_are_neither_read_nor_written_through() {
    let (tmp, root, disk) = setup().await;
    let secret = tmp.path().join("outside/secret");
    let id = disk.disk_id(dl()).await.expect("id");
    std::fs::hard_link(&secret, root.join("v/hl")).expect("hard link");
    std::fs::hard_link(root.join(".disk-io/format.json"), root.join("v/fmt")).expect("link");
    // While another name links the format file, the disk does not trust it
    // (once its identity cache is due for the check).
    tokio::time::sleep(disk.config().disk_id_cache_ttl + Duration::from_millis(50)).await;
    assert_eq!(rule(&disk.disk_id(dl()).await), Some(PathRule::HardLinked));
    for p in ["hl", "fmt"] {
        assert_eq!(
            rule(&disk.read_all("v", p, dl()).await),
            Some(PathRule::HardLinked),
            "{p}"
        );
        assert_eq!(
            rule(&disk.read_file_at("v", p, 0, 1, dl()).await),
            Some(PathRule::HardLinked),
            "{p}"
        );
        // A shard written at the link's name replaces the entry: the other
        // name keeps its content.
        let mut w = disk
            .create_file("v", p, CreateOptions::default(), dl())
            .await
            .expect("create_file replaces the entry");
        w.append(b"PWNED", dl()).await.expect("append");
        w.finish(dl()).await.expect("finish");
        assert_eq!(disk.read_all("v", p, dl()).await.expect("read"), b"PWNED");
    }
    assert_eq!(std::fs::read(&secret).expect("read"), b"top secret");
    assert_eq!(disk.disk_id(dl()).await, Ok(id), "the format file survived");
    // write_all replaces by rename: never through the link either.
    std::fs::hard_link(&secret, root.join("v/hl2")).expect("hard link");
    disk.write_all("v", "hl2", b"new", dl())
        .await
        .expect("write_all");
    assert_eq!(std::fs::read(&secret).expect("read"), b"top secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_nodes_are_refused_and_replaced_never_opened_for_io() {
    privilege::require_root().expect("this test makes device nodes (mknod)");
    let (_tmp, root, disk) = setup().await;
    for (name, dev) in [("zero", "1 5"), ("null", "1 3"), ("fifo", "")] {
        let path = root.join("v").join(name);
        let mut cmd = Command::new("mknod");
        cmd.arg(&path);
        if dev.is_empty() {
            cmd.arg("p");
        } else {
            cmd.arg("c").args(dev.split(' '));
        }
        assert!(cmd.status().expect("mknod").success(), "mknod {name}");
        let r = disk.read_file_at("v", name, 0, 8, dl()).await;
        assert_eq!(rule(&r), Some(PathRule::NotRegular), "{name}: {r:?}");
        assert_eq!(
            rule(&disk.read_all("v", name, dl()).await),
            Some(PathRule::NotRegular),
            "{name}"
        );
        assert_eq!(
            rule(&disk.stat_file("v", name, dl()).await),
            Some(PathRule::NotRegular),
            "{name}"
        );
        let mut w = disk
            .create_file("v", name, CreateOptions::default(), dl())
            .await
            .expect("create_file replaces the node");
        w.append(b"data", dl()).await.expect("append");
        w.finish(dl()).await.expect("finish");
        assert!(
            std::fs::symlink_metadata(&path).expect("lstat").is_file(),
            "{name}"
        );
    }
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn bind(src: &Path, dst: &Path) -> Unmount {
    std::fs::create_dir_all(dst).expect("mkdir mount point");
    assert!(Command::new("mount")
        .arg("--bind")
        .arg(src)
        .arg(dst)
        .status()
        .expect("mount")
        .success());
    Unmount(dst.to_path_buf())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_mount_inside_a_volume_is_not_entered_or_purged() {
    privilege::require_root().expect("this test bind-mounts a directory");
    let (tmp, root, disk) = setup().await;
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(root.join("v/tree")).expect("mkdir");
    std::fs::write(root.join("v/tree/f"), b"f").expect("write");
    let _m = bind(&outside, &root.join("v/tree/mnt"));
    assert_eq!(
        rule(&disk.read_all("v", "tree/mnt/secret", dl()).await),
        Some(PathRule::Escapes)
    );
    assert_eq!(
        rule(&disk.write_all("v", "tree/mnt/planted", b"x", dl()).await),
        Some(PathRule::Escapes)
    );
    // The whole tree, mount point inside, goes to the trash (a rename, the
    // mount moves with it); the purge must not delete through the mount.
    let r = disk
        .delete("v", "tree", DeleteOptions { recursive: true }, dl())
        .await;
    // A rename of a tree holding a mount point is refused by the kernel
    // (EBUSY) or done; either way the outside stays.
    let _ = r;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        std::fs::read(outside.join("secret")).expect("the outside file survived"),
        b"top secret"
    );
}
