//! No path escapes the disk root: every operation of the `Disk` trait (and
//! the open-time housekeeping of the system directory) against symlinks
//! planted on the disk — a volume that is a symlink, a symlink in the middle
//! of a path, a symlink as the last component, `.disk-io` and its parts as
//! symlinks — leaves a tree outside the disk byte-for-byte unchanged (names,
//! kinds, contents, link targets, modification times).

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use disk_io::{
    CreateOptions, Deadline, DeleteOptions, Disk, DiskError, LocalDisk, OpenMode, PathRule,
};

fn dl() -> Deadline {
    Deadline::after(Duration::from_secs(5))
}

/// Everything observable about a tree, without following symlinks.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir {
        mtime_ns: i64,
        mode: u32,
    },
    File {
        bytes: Vec<u8>,
        mtime_ns: i64,
        mode: u32,
    },
    Link {
        target: PathBuf,
    },
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        let rel = p.strip_prefix(root).expect("under root").to_path_buf();
        let mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
        let node = if md.file_type().is_symlink() {
            Node::Link {
                target: std::fs::read_link(&p).expect("readlink"),
            }
        } else if md.is_dir() {
            for e in std::fs::read_dir(&p).expect("readdir") {
                stack.push(e.expect("entry").path());
            }
            Node::Dir {
                mtime_ns,
                mode: md.mode(),
            }
        } else {
            Node::File {
                bytes: std::fs::read(&p).expect("read"),
                mtime_ns,
                mode: md.mode(),
            }
        };
        out.insert(rel, node);
    }
    out
}

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    before: BTreeMap<PathBuf, Node>,
}

impl World {
    /// A disk root and, beside it, an `outside` tree an attacker wants to
    /// reach: files, a directory, a nested file.
    fn new() -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("disk");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("v/d")).expect("mkdir");
        std::fs::create_dir_all(outside.join("sub")).expect("mkdir");
        std::fs::write(outside.join("secret"), b"top secret").expect("write");
        std::fs::write(outside.join("sub/deep"), b"deeper").expect("write");
        std::fs::write(root.join("v/plain"), b"plain").expect("write");
        // Give the outside tree's mtimes a moment to be in the past, so a
        // change and an undo within one tick still shows.
        std::thread::sleep(Duration::from_millis(20));
        let before = snapshot(&outside);
        World {
            _tmp: tmp,
            root,
            outside,
            before,
        }
    }

    fn plant(&self, at: &str, target: &Path) {
        symlink(target, self.root.join(at)).expect("plant symlink");
    }

    #[track_caller]
    fn assert_outside_unchanged(&self, after: &str) {
        assert_eq!(
            snapshot(&self.outside),
            self.before,
            "the tree outside the disk changed after {after}"
        );
    }

    fn wait_trash_empty(&self) {
        let trash = self.root.join(".disk-io/trash");
        for _ in 0..500 {
            if std::fs::read_dir(&trash).map(|d| d.count()).unwrap_or(0) == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("trash at {} was not purged", trash.display());
    }
}

fn is_symlink_refusal<T: std::fmt::Debug>(r: &disk_io::Result<T>) -> bool {
    matches!(
        r,
        Err(DiskError::InvalidPath {
            rule: PathRule::Symlink,
            ..
        })
    )
}

#[track_caller]
fn refused<T: std::fmt::Debug>(what: &str, r: disk_io::Result<T>) {
    assert!(
        is_symlink_refusal(&r),
        "{what}: expected a symlink refusal, got {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_operation_reaches_outside_through_a_planted_symlink() {
    let w = World::new();
    let disk = LocalDisk::open(&w.root, dl()).await.expect("open");
    disk.format(0, 0, false, dl()).await.expect("format");
    // A volume that is a symlink, one in the middle of a path, one as the
    // last component (to a file and to a directory), one deeper down.
    w.plant("lvol", &w.outside);
    w.plant("v/link", &w.outside);
    w.plant("v/flink", &w.outside.join("secret"));
    w.plant("v/d/mid", &w.outside.join("sub"));
    // A shard writer opened before its directory is swapped for a symlink.
    std::fs::create_dir_all(w.root.join("v/w")).expect("mkdir");
    let mut writer = disk
        .create_file("v", "w/shard", CreateOptions::default(), dl())
        .await
        .expect("create_file");
    writer.append(b"before", dl()).await.expect("append");
    std::fs::rename(w.root.join("v/w"), w.root.join("v/w-moved")).expect("rename");
    w.plant("v/w", &w.outside);

    let deep_paths = ["link/secret", "link/sub/deep", "d/mid/deep", "link/new"];

    // Volumes.
    let vols = disk.list_vols(dl()).await.expect("list_vols");
    assert!(
        vols.iter().all(|v| v.name != "lvol"),
        "a symlink is not a volume: {vols:?}"
    );
    refused("stat_vol(lvol)", disk.stat_vol("lvol", dl()).await);
    assert_eq!(
        disk.make_vol("lvol", dl()).await,
        Err(DiskError::VolumeExists),
        "the name is taken by the link, nothing is created through it"
    );
    refused(
        "delete_vol(lvol)",
        disk.delete_vol("lvol", false, dl()).await,
    );
    refused(
        "delete_vol(lvol, force)",
        disk.delete_vol("lvol", true, dl()).await,
    );
    w.assert_outside_unchanged("volume operations");

    // Reads and stats through every kind of planted link.
    for p in deep_paths.iter().chain(&["flink"]) {
        let r = disk.read_all("v", p, dl()).await;
        assert!(
            is_symlink_refusal(&r) || r == Err(DiskError::FileNotFound),
            "read_all(v/{p}): {r:?}"
        );
        if *p != "link/new" {
            refused(&format!("read_all(v/{p})"), r);
            refused(
                &format!("read_file_at(v/{p})"),
                disk.read_file_at("v", p, 0, 1, dl()).await,
            );
            refused(
                &format!("stat_file(v/{p})"),
                disk.stat_file("v", p, dl()).await,
            );
        }
    }
    refused(
        "read_all(lvol/secret)",
        disk.read_all("lvol", "secret", dl()).await,
    );
    refused(
        "stat_file(lvol/secret)",
        disk.stat_file("lvol", "secret", dl()).await,
    );
    refused("list_dir(v/link)", disk.list_dir("v", "link", dl()).await);
    refused("list_dir(v/d/mid)", disk.list_dir("v", "d/mid", dl()).await);
    refused("list_dir(lvol)", disk.list_dir("lvol", "", dl()).await);
    let listing = disk.list_dir("v", "", dl()).await.expect("list_dir(v)");
    assert!(
        !listing
            .iter()
            .any(|n| n.starts_with("link") || n.starts_with("flink")),
        "symlinks are not listed as objects: {listing:?}"
    );
    w.assert_outside_unchanged("reads, stats and listings");

    // Writes: nothing may be created, truncated or replaced outside.
    for p in deep_paths {
        refused(
            &format!("write_all(v/{p})"),
            disk.write_all("v", p, b"pwned", dl()).await,
        );
        let r = disk
            .create_file("v", p, CreateOptions::default(), dl())
            .await;
        refused(&format!("create_file(v/{p})"), r.map(|_| ()));
    }
    refused(
        "write_all(lvol/x)",
        disk.write_all("lvol", "x", b"pwned", dl()).await,
    );
    refused(
        "create_file(lvol/x)",
        disk.create_file("lvol", "x", CreateOptions::default(), dl())
            .await
            .map(|_| ()),
    );
    // A shard created at a link's name replaces the link (the entry is
    // unlinked, a new file made): it never opens, let alone truncates, the
    // link's target.
    for direct in [false, true] {
        let mut w = disk
            .create_file(
                "v",
                "flink",
                CreateOptions {
                    direct,
                    datasync: false,
                },
                dl(),
            )
            .await
            .unwrap_or_else(|e| panic!("create_file(v/flink, direct={direct}): {e}"));
        w.append(b"shard", dl()).await.expect("append");
        w.finish(dl()).await.expect("finish");
    }
    assert!(std::fs::symlink_metadata(w.root.join("v/flink"))
        .expect("lstat")
        .is_file());
    // The writer whose directory became a link keeps writing its own file.
    writer
        .append(b" after", dl())
        .await
        .expect("append after swap");
    assert_eq!(writer.finish(dl()).await.expect("finish"), 12);
    assert_eq!(
        std::fs::read(w.root.join("v/w-moved/shard")).expect("read shard"),
        b"before after"
    );
    w.assert_outside_unchanged("writes");

    // Renames: neither the source nor the destination may pass a link.
    refused(
        "rename_file(v/link/secret -> v/stolen)",
        disk.rename_file("v", "link/secret", "v", "stolen", dl())
            .await,
    );
    refused(
        "rename_file(v/plain -> v/link/planted)",
        disk.rename_file("v", "plain", "v", "link/planted", dl())
            .await,
    );
    refused(
        "rename_file(v/plain -> lvol/planted)",
        disk.rename_file("v", "plain", "lvol", "planted", dl())
            .await,
    );
    refused(
        "rename_file(lvol/secret -> v/stolen)",
        disk.rename_file("lvol", "secret", "v", "stolen", dl())
            .await,
    );
    w.assert_outside_unchanged("renames");

    // Deletes: through a link, refused; of a link, the link itself goes.
    for p in ["link/secret", "link/sub", "d/mid/deep"] {
        for recursive in [false, true] {
            refused(
                &format!("delete(v/{p}, recursive={recursive})"),
                disk.delete("v", p, DeleteOptions { recursive }, dl()).await,
            );
        }
    }
    refused(
        "delete(lvol/secret)",
        disk.delete("lvol", "secret", DeleteOptions::default(), dl())
            .await,
    );
    disk.delete("v", "link", DeleteOptions { recursive: true }, dl())
        .await
        .expect("deleting a link removes the link");
    assert!(std::fs::symlink_metadata(w.root.join("v/link")).is_err());
    disk.delete("v", "flink", DeleteOptions::default(), dl())
        .await
        .expect("deleting a link removes the link");
    // A tree holding a link to the outside, deleted recursively and purged
    // from the trash, and a volume holding one, force-deleted.
    std::fs::create_dir_all(w.root.join("v/tree/a")).expect("mkdir");
    std::fs::write(w.root.join("v/tree/a/f"), b"f").expect("write");
    w.plant("v/tree/a/out", &w.outside);
    disk.delete("v", "tree", DeleteOptions { recursive: true }, dl())
        .await
        .expect("rm -r tree");
    disk.make_vol("gone", dl()).await.expect("make_vol");
    disk.write_all("gone", "x/y", b"y", dl())
        .await
        .expect("write");
    w.plant("gone/x/out", &w.outside);
    disk.delete_vol("gone", true, dl())
        .await
        .expect("force delete_vol");
    w.wait_trash_empty();
    w.assert_outside_unchanged("deletes and trash purges");

    // The format file as a link: read refused, forced format replaces the
    // link, never its target.
    std::fs::remove_file(w.root.join(".disk-io/format.json")).expect("rm format");
    w.plant(".disk-io/format.json", &w.outside.join("secret"));
    refused(
        "disk_id with a linked format file",
        disk.disk_id(dl()).await,
    );
    assert_eq!(
        disk.format(0, 0, false, dl()).await.map(|_| ()),
        Err(DiskError::AlreadyFormatted)
    );
    disk.format(0, 0, true, dl()).await.expect("force format");
    assert!(
        !std::fs::symlink_metadata(w.root.join(".disk-io/format.json"))
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    disk.disk_info(dl()).await.expect("disk_info");
    disk.probe().await.expect("probe");
    w.assert_outside_unchanged("format, disk_id, disk_info, probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_system_directory_is_refused_and_housekeeping_stays_inside() {
    // `.disk-io` itself is a link to a directory outside that looks like a
    // system directory with a `tmp` full of files: opening must not move or
    // purge any of them.
    let w = World::new();
    std::fs::create_dir_all(w.outside.join("sys/tmp")).expect("mkdir");
    std::fs::create_dir_all(w.outside.join("sys/trash")).expect("mkdir");
    std::fs::write(w.outside.join("sys/tmp/keep"), b"keep").expect("write");
    std::fs::write(w.outside.join("sys/trash/keep"), b"keep").expect("write");
    std::thread::sleep(Duration::from_millis(20));
    let w = World {
        before: snapshot(&w.outside),
        ..w
    };
    w.plant(".disk-io", &w.outside.join("sys"));
    for mode in [OpenMode::Owner, OpenMode::Inspect] {
        let r = LocalDisk::builder(&w.root).mode(mode).open(dl()).await;
        assert!(
            matches!(
                r,
                Err(DiskError::InvalidPath {
                    rule: PathRule::Symlink,
                    ..
                })
            ),
            "{mode:?}: {r:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.assert_outside_unchanged("opening a disk whose .disk-io is a link");

    // A real `.disk-io` whose `tmp` is a link: the owner moves the link
    // itself aside and purges it; the target is untouched.
    std::fs::remove_file(w.root.join(".disk-io")).expect("rm link");
    std::fs::create_dir_all(w.root.join(".disk-io/trash")).expect("mkdir");
    w.plant(".disk-io/tmp", &w.outside.join("sys/tmp"));
    let r = LocalDisk::builder(&w.root)
        .mode(OpenMode::Inspect)
        .open(dl())
        .await;
    assert!(
        matches!(
            r,
            Err(DiskError::InvalidPath {
                rule: PathRule::Symlink,
                ..
            })
        ),
        "inspect with a linked tmp: {r:?}"
    );
    let disk = LocalDisk::open(&w.root, dl()).await.expect("owner open");
    w.wait_trash_empty();
    assert!(std::fs::symlink_metadata(w.root.join(".disk-io/tmp"))
        .expect("tmp")
        .is_dir());
    disk.write_all("v", "x", b"x", dl()).await.expect("write");
    drop(disk);
    w.assert_outside_unchanged("recovering a linked tmp");

    // A `trash` that is a link: the owner refuses to open rather than
    // purge through it.
    std::fs::remove_dir_all(w.root.join(".disk-io/trash")).expect("rm trash");
    w.plant(".disk-io/trash", &w.outside.join("sys/trash"));
    // The previous owner's lock went with its handle (a directory's fd
    // closes at once on drop).
    let r = LocalDisk::open(&w.root, dl()).await;
    assert!(
        matches!(
            r,
            Err(DiskError::InvalidPath {
                rule: PathRule::Symlink,
                ..
            })
        ),
        "owner with a linked trash: {r:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.assert_outside_unchanged("opening with a linked trash");
}
