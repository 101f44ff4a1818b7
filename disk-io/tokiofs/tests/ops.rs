//! `TokioFsDisk` against `LocalDisk`: every operation round-trips, errors
//! have the same kinds (one script run on both disks must give identical
//! outcomes, planted symlinks, hard links and FIFOs included), a disk
//! formatted by either opens under the other with the same id, the owner
//! lock excludes the other backend, `write_all` is atomic, and deadlines
//! are kept (an expired one at once and starting nothing; a job stuck
//! behind a full blocking pool on time, and never run).

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_io::{
    CreateOptions, Deadline, DeleteOptions, Disk, DiskConfig, DiskError, LocalDisk, OpClass,
};
use disk_io_tokiofs::TokioFsDisk;

fn dl() -> Deadline {
    Deadline::after(Duration::from_secs(5))
}

async fn disk() -> (tempfile::TempDir, TokioFsDisk) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = TokioFsDisk::open(dir.path(), dl()).await.expect("open");
    (dir, disk)
}

/// Wait up to 5 s for `cond`.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Open as owner once a `LocalDisk` just dropped has let go of the lock:
/// its health monitor's first tick (a probe, right after open) holds the
/// handle for a moment after the caller dropped it.
async fn open_after_local(root: &Path) -> TokioFsDisk {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match TokioFsDisk::open(root, dl()).await {
            Err(DiskError::InUse { .. }) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            r => return r.expect("tokiofs open"),
        }
    }
}

// ---- every operation on its own ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_and_disk_id() {
    let (d, disk) = disk().await;
    assert_eq!(disk.disk_id(dl()).await, Err(DiskError::Unformatted));
    let info = disk.disk_info(dl()).await.expect("info");
    assert_eq!(info.id, None);
    let id = disk.format(1, 3, false, dl()).await.expect("format");
    assert_eq!((id.set_index, id.disk_index), (1, 3));
    assert_eq!(disk.disk_id(dl()).await, Ok(id));
    assert_eq!(
        disk.format(1, 3, false, dl()).await,
        Err(DiskError::AlreadyFormatted)
    );
    let id2 = disk.format(1, 3, true, dl()).await.expect("force format");
    assert_ne!(id.uuid, id2.uuid);
    assert_eq!(disk.disk_id(dl()).await, Ok(id2), "cache invalidated");
    let info = disk.disk_info(dl()).await.expect("info");
    assert_eq!(info.id, Some(id2));
    assert!(info.total > 0 && info.free <= info.total && info.files > 0);
    assert_eq!((info.in_flight, info.zombies), (0, 0));
    // The layout: the format file where LocalDisk keeps it, parsed by
    // disk-io's own FormatFile.
    let bytes = std::fs::read(d.path().join(".disk-io/format.json")).expect("format file");
    let f = disk_io::format::FormatFile::parse(&bytes).expect("parses");
    assert_eq!(f.disk, id2);
    assert_eq!(
        entries(&d.path().join(".disk-io")),
        ["format.json", "tmp", "trash"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_id_cache_notices_a_replaced_format_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = DiskConfig {
        disk_id_cache_ttl: Duration::ZERO,
        ..DiskConfig::default()
    };
    let disk = TokioFsDisk::builder(dir.path())
        .config(cfg)
        .open(dl())
        .await
        .expect("open");
    let id = disk.format(0, 1, false, dl()).await.expect("format");
    assert_eq!(disk.disk_id(dl()).await, Ok(id));
    let mut other = disk_io::format::FormatFile::new(7, 7);
    other.disk.uuid = uuid::Uuid::from_u128(42);
    let tmp = dir.path().join(".disk-io/format.json.new");
    std::fs::write(&tmp, other.to_bytes()).expect("write");
    std::fs::rename(&tmp, dir.path().join(".disk-io/format.json")).expect("rename");
    assert_eq!(disk.disk_id(dl()).await, Ok(other.disk));
    std::fs::remove_file(dir.path().join(".disk-io/format.json")).expect("rm");
    assert_eq!(disk.disk_id(dl()).await, Err(DiskError::Unformatted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes() {
    let (d, disk) = disk().await;
    disk.make_vol("b1", dl()).await.expect("mkvol");
    disk.make_vol("a0", dl()).await.expect("mkvol");
    assert_eq!(
        disk.make_vol("b1", dl()).await,
        Err(DiskError::VolumeExists)
    );
    let names: Vec<_> = disk
        .list_vols(dl())
        .await
        .expect("list")
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["a0", "b1"], "sorted, system dir hidden");
    assert_eq!(disk.stat_vol("b1", dl()).await.expect("stat").name, "b1");
    assert_eq!(
        disk.stat_vol("zz", dl()).await,
        Err(DiskError::VolumeNotFound)
    );
    disk.write_all("b1", "x/y", b"1", dl())
        .await
        .expect("write");
    assert_eq!(
        disk.delete_vol("b1", false, dl()).await,
        Err(DiskError::VolumeNotEmpty)
    );
    disk.delete_vol("b1", true, dl())
        .await
        .expect("force delete");
    assert_eq!(
        disk.stat_vol("b1", dl()).await,
        Err(DiskError::VolumeNotFound)
    );
    disk.delete_vol("a0", false, dl())
        .await
        .expect("delete empty");
    assert_eq!(
        disk.delete_vol("a0", false, dl()).await,
        Err(DiskError::VolumeNotFound)
    );
    let trash = d.path().join(".disk-io/trash");
    eventually("the trash purge", || entries(&trash).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip() {
    let (d, disk) = disk().await;
    disk.make_vol("v", dl()).await.expect("mkvol");
    disk.write_all("v", "a/b/meta", b"hello", dl())
        .await
        .expect("write nested");
    assert_eq!(
        std::fs::read(d.path().join("v/a/b/meta")).expect("on disk"),
        b"hello"
    );
    assert_eq!(
        disk.read_all("v", "a/b/meta", dl()).await.expect("read"),
        b"hello"
    );
    disk.write_all("v", "a/b/meta", b"world!", dl())
        .await
        .expect("overwrite");
    assert_eq!(
        disk.read_all("v", "a/b/meta", dl()).await.expect("read"),
        b"world!"
    );
    disk.write_all("v", "empty", b"", dl())
        .await
        .expect("empty");
    assert_eq!(disk.read_all("v", "empty", dl()).await, Ok(Vec::new()));
    assert_eq!(
        disk.read_all("v", "nope", dl()).await,
        Err(DiskError::FileNotFound)
    );
    assert_eq!(
        disk.read_all("nov", "x", dl()).await,
        Err(DiskError::VolumeNotFound)
    );
    assert_eq!(
        disk.write_all("nov", "x", b"", dl()).await,
        Err(DiskError::VolumeNotFound)
    );
    assert_eq!(
        disk.read_file_at("v", "a/b/meta", 1, 3, dl())
            .await
            .expect("read at"),
        b"orl"
    );
    assert_eq!(
        disk.read_file_at("v", "a/b/meta", 6, 0, dl()).await,
        Ok(Vec::new())
    );
    assert!(matches!(
        disk.read_file_at("v", "a/b/meta", 4, 10, dl()).await,
        Err(DiskError::UnexpectedEof { wanted: 10, got: 2 })
    ));
    let st = disk.stat_file("v", "a/b/meta", dl()).await.expect("stat");
    assert_eq!((st.size, st.is_dir), (6, false));
    let md = std::fs::metadata(d.path().join("v/a/b/meta")).expect("md");
    assert_eq!(st.modified, md.modified().expect("mtime"));
    assert!(
        disk.stat_file("v", "a", dl())
            .await
            .expect("stat dir")
            .is_dir
    );
    disk.rename_file("v", "a/b/meta", "v", "c/d/meta2", dl())
        .await
        .expect("rename");
    assert_eq!(
        disk.read_all("v", "c/d/meta2", dl()).await.expect("read"),
        b"world!"
    );
    assert_eq!(
        disk.read_all("v", "a/b/meta", dl()).await,
        Err(DiskError::FileNotFound)
    );
    assert_eq!(
        disk.rename_file("v", "missing", "v", "x", dl()).await,
        Err(DiskError::FileNotFound)
    );
    assert_eq!(
        disk.rename_file("v", "c/d/meta2", "nov", "x", dl()).await,
        Err(DiskError::VolumeNotFound)
    );
    assert_eq!(
        disk.list_dir("v", "", dl()).await.expect("ls"),
        ["a/", "c/", "empty"]
    );
    assert_eq!(
        disk.list_dir("v", "c/d/", dl()).await.expect("ls"),
        ["meta2"]
    );
    assert_eq!(
        disk.list_dir("v", "zz", dl()).await,
        Err(DiskError::FileNotFound)
    );
    assert_eq!(
        disk.list_dir("nov", "", dl()).await,
        Err(DiskError::VolumeNotFound)
    );
    assert_eq!(
        disk.delete("v", "c", DeleteOptions::default(), dl()).await,
        Err(DiskError::DirectoryNotEmpty)
    );
    disk.delete("v", "c/d/meta2", DeleteOptions::default(), dl())
        .await
        .expect("rm file");
    disk.delete("v", "c/d", DeleteOptions::default(), dl())
        .await
        .expect("rm empty dir");
    disk.delete("v", "a", DeleteOptions { recursive: true }, dl())
        .await
        .expect("rm -r");
    assert_eq!(
        disk.list_dir("v", "", dl()).await.expect("ls"),
        ["c/", "empty"]
    );
    assert_eq!(
        disk.delete("v", "a", DeleteOptions::default(), dl()).await,
        Err(DiskError::FileNotFound)
    );
    let trash = d.path().join(".disk-io/trash");
    eventually("the trash purge", || entries(&trash).is_empty()).await;
    assert!(
        entries(&d.path().join(".disk-io/tmp")).is_empty(),
        "atomic writes leave nothing in tmp"
    );
}

/// The flags of this process's open fd for `path` (from /proc/self/fdinfo).
fn open_flags(path: &Path) -> Option<i32> {
    for e in std::fs::read_dir("/proc/self/fd").ok()? {
        let e = e.ok()?;
        if std::fs::read_link(e.path()).ok().as_deref() == Some(path) {
            let info =
                std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(e.file_name())).ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
            return i32::from_str_radix(flags.trim(), 8).ok();
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_writer_buffered_and_direct() {
    let (d, disk) = disk().await;
    disk.make_vol("v", dl()).await.expect("mkvol");
    let payload: Vec<u8> = (0..3_000_017u32).map(|i| (i % 251) as u8).collect();
    for direct in [false, true] {
        let path = format!("shard-{direct}/part.1");
        let opts = CreateOptions {
            direct,
            datasync: direct,
        };
        // The temp dir must be on a file system with O_DIRECT (ext4 here
        // and in CI); on one without, the error says so and this fails.
        let mut w = disk
            .create_file("v", &path, opts, dl())
            .await
            .unwrap_or_else(|e| panic!("create_file(direct={direct}): {e}"));
        for chunk in payload.chunks(100_003) {
            w.append(chunk, dl()).await.expect("append");
        }
        let on_disk = d.path().join("v").join(&path);
        let flags = open_flags(&on_disk).expect("the shard is open");
        assert_eq!(
            flags & nix::libc::O_DIRECT != 0,
            direct,
            "direct={direct}: flags {flags:o}"
        );
        assert_eq!(w.finish(dl()).await.expect("finish"), payload.len() as u64);
        assert!(open_flags(&on_disk).is_none(), "finish closed the file");
        assert!(
            std::fs::read(&on_disk).expect("read") == payload,
            "direct={direct}: content on disk differs"
        );
        let back = disk
            .read_file_at("v", &path, 0, payload.len(), dl())
            .await
            .expect("read");
        assert!(back == payload, "direct={direct}: content differs");
        let mid = disk
            .read_file_at("v", &path, 1_234_567, 3_000_000 - 1_234_567, dl())
            .await
            .expect("read range");
        assert!(
            mid == payload[1_234_567..3_000_000],
            "direct={direct}: range"
        );
    }
    // An empty shard, and creating over an existing file replaces it.
    let w = disk
        .create_file("v", "shard-false/part.1", CreateOptions::default(), dl())
        .await
        .expect("create over");
    assert_eq!(w.finish(dl()).await, Ok(0));
    assert_eq!(
        disk.read_all("v", "shard-false/part.1", dl()).await,
        Ok(vec![])
    );
    assert_eq!(
        disk.create_file("nov", "x", CreateOptions::default(), dl())
            .await
            .map(|_| ())
            .map_err(|e| e.kind()),
        Err("volume_not_found")
    );
}

// ---- the same script on both disks ------------------------------------------

/// Everything observable about a tree, without following symlinks.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        let rel = p.strip_prefix(root).expect("under root").to_path_buf();
        let what = if md.file_type().is_symlink() {
            format!("link {:?}", std::fs::read_link(&p).expect("readlink"))
        } else if md.is_dir() {
            for e in std::fs::read_dir(&p).expect("readdir") {
                stack.push(e.expect("entry").path());
            }
            format!("dir {} {}", md.mode(), md.mtime_nsec())
        } else {
            format!(
                "file {} {} {:?}",
                md.mode(),
                md.mtime_nsec(),
                std::fs::read(&p).expect("read")
            )
        };
        out.insert(rel, what);
    }
    out
}

/// A disk root with things planted in it, and beside it the tree an
/// attacker wants to reach.
struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("disk");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("v/dir/sub")).expect("mkdir");
        std::fs::create_dir_all(root.join("v/many")).expect("mkdir");
        std::fs::create_dir_all(outside.join("sub")).expect("mkdir");
        std::fs::write(outside.join("secret"), b"top secret").expect("write");
        std::fs::write(outside.join("sub/deep"), b"deeper").expect("write");
        std::fs::write(root.join("v/plain"), b"plain text").expect("write");
        std::fs::write(root.join("v/dir/sub/f"), b"f").expect("write");
        std::fs::write(root.join("afile"), b"not a volume").expect("write");
        for i in 0..9 {
            std::fs::write(root.join(format!("v/many/{i}")), b"").expect("write");
        }
        std::fs::write(root.join("v/big"), vec![7u8; 5000]).expect("write");
        symlink(&outside, root.join("lnkvol")).expect("symlink");
        symlink(&outside, root.join("v/lnkdir")).expect("symlink");
        symlink(outside.join("secret"), root.join("v/lnkfile")).expect("symlink");
        std::fs::hard_link(outside.join("secret"), root.join("v/hard")).expect("hard link");
        nix::unistd::mkfifo(
            &root.join("v/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .expect("mkfifo");
        std::thread::sleep(Duration::from_millis(20));
        let before = snapshot(&outside);
        World {
            _tmp: tmp,
            root,
            outside,
            before,
        }
    }

    #[track_caller]
    fn assert_outside_unchanged(&self, who: &str) {
        assert_eq!(
            snapshot(&self.outside),
            self.before,
            "{who}: the tree outside the disk changed"
        );
    }
}

/// Small limits, the same for both disks, so the limit errors are in the
/// script too.
fn small_limits() -> DiskConfig {
    let mut cfg = DiskConfig::default();
    cfg.limits.max_list_entries = 8;
    cfg.limits.max_read_all = 4096;
    cfg.limits.max_write_all = 4096;
    cfg.limits.max_read_len = 1 << 20;
    cfg
}

fn show<T: std::fmt::Debug>(r: disk_io::Result<T>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        // Only `DeadlineExceeded` carries a time, and the script has none.
        Err(e) => format!("err {e:?}"),
    }
}

const BAD_PATHS: [&str; 8] = [
    "../x",
    "/etc/passwd",
    "a//b",
    "./a",
    "a/",
    "",
    "a\0b",
    "a/../../x",
];

fn bad_vols() -> Vec<String> {
    ["", "..", ".", ".disk-io", "a/b", "x\0", ".hidden"]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "x".repeat(256),
            "a/".repeat(2000),
            format!("{}/y", "x".repeat(300)),
        ])
        .collect()
}

/// Every operation, good and bad, in one fixed order: each line is the
/// step and its outcome (times and ids left out).
async fn script(d: &dyn Disk) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! step {
        ($name:expr, $e:expr) => {
            out.push(format!("{}: {}", $name, show($e)))
        };
    }
    let none = DeleteOptions::default();
    let rec = DeleteOptions { recursive: true };
    let long = "x".repeat(256);
    let too_long = "a/".repeat(2000) + "a";

    step!("disk_id", d.disk_id(dl()).await.map(|id| id.disk_index));
    for v in ["v", "w", "lnkvol", "afile"] {
        step!(format!("make_vol {v}"), d.make_vol(v, dl()).await);
    }
    for v in bad_vols() {
        step!(format!("make_vol {v:?}"), d.make_vol(&v, dl()).await);
        step!(
            format!("stat_vol {v:?}"),
            d.stat_vol(&v, dl()).await.map(|i| i.name)
        );
        step!(
            format!("delete_vol {v:?}"),
            d.delete_vol(&v, false, dl()).await
        );
        step!(format!("read_all {v:?}"), d.read_all(&v, "x", dl()).await);
        step!(format!("list_dir {v:?}"), d.list_dir(&v, "", dl()).await);
    }
    let vols = |r: disk_io::Result<Vec<disk_io::VolInfo>>| {
        r.map(|v| v.into_iter().map(|i| i.name).collect::<Vec<_>>())
    };
    step!("list_vols", vols(d.list_vols(dl()).await));
    for v in ["v", "zz", "lnkvol", "afile"] {
        step!(
            format!("stat_vol {v}"),
            d.stat_vol(v, dl()).await.map(|i| i.name)
        );
    }
    let mut paths: Vec<String> = BAD_PATHS.iter().map(|s| s.to_string()).collect();
    paths.extend([long.clone(), too_long.clone(), format!("a/{long}")]);
    for p in &paths {
        step!(format!("read_all {p:?}"), d.read_all("v", p, dl()).await);
        step!(
            format!("write_all {p:?}"),
            d.write_all("v", p, b"x", dl()).await
        );
        step!(
            format!("create_file {p:?}"),
            d.create_file("v", p, CreateOptions::default(), dl())
                .await
                .map(|_| ())
        );
        step!(
            format!("read_file_at {p:?}"),
            d.read_file_at("v", p, 0, 1, dl()).await
        );
        step!(
            format!("stat_file {p:?}"),
            d.stat_file("v", p, dl()).await.map(|i| i.size)
        );
        step!(format!("delete {p:?}"), d.delete("v", p, none, dl()).await);
        step!(format!("list_dir {p:?}"), d.list_dir("v", p, dl()).await);
        step!(
            format!("rename_file from {p:?}"),
            d.rename_file("v", p, "v", "ok", dl()).await
        );
        step!(
            format!("rename_file to {p:?}"),
            d.rename_file("v", "plain", "v", p, dl()).await
        );
    }
    // Reads: files, missing ones, planted links, a hard link, a FIFO, a
    // directory, limits.
    for p in [
        "plain",
        "nope",
        "lnkfile",
        "lnkdir/secret",
        "lnkdir/sub/deep",
        "hard",
        "fifo",
        "dir",
        "big",
        "plain/x",
    ] {
        step!(format!("read_all v/{p}"), d.read_all("v", p, dl()).await);
        step!(
            format!("read_file_at v/{p}"),
            d.read_file_at("v", p, 2, 4, dl()).await
        );
        step!(
            format!("stat_file v/{p}"),
            d.stat_file("v", p, dl()).await.map(|i| (i.size, i.is_dir))
        );
        step!(format!("list_dir v/{p}"), d.list_dir("v", p, dl()).await);
    }
    for (v, p) in [("nov", "x"), ("lnkvol", "secret"), ("afile", "x")] {
        step!(format!("read_all {v}/{p}"), d.read_all(v, p, dl()).await);
        step!(
            format!("stat_file {v}/{p}"),
            d.stat_file(v, p, dl()).await.map(|i| i.size)
        );
        step!(format!("list_dir {v}"), d.list_dir(v, "", dl()).await);
        step!(
            format!("write_all {v}/{p}"),
            d.write_all(v, p, b"x", dl()).await
        );
        step!(
            format!("create_file {v}/{p}"),
            d.create_file(v, p, CreateOptions::default(), dl())
                .await
                .map(|_| ())
        );
        step!(format!("delete {v}/{p}"), d.delete(v, p, none, dl()).await);
    }
    step!(
        "read_file_at too long",
        d.read_file_at("v", "plain", 0, (1 << 20) + 1, dl()).await
    );
    step!(
        "read_file_at past eof",
        d.read_file_at("v", "plain", 8, 4, dl()).await
    );
    step!("list_dir many", d.list_dir("v", "many", dl()).await);
    step!(
        "write_all too large",
        d.write_all("v", "t", &[0u8; 4097], dl()).await
    );
    // Writes through and onto planted things.
    for p in [
        "lnkdir/x",
        "lnkdir/sub/x",
        "lnkfile",
        "plain/x",
        "dir",
        "new/a/b",
        "hard",
        "fifo",
    ] {
        step!(
            format!("write_all v/{p}"),
            d.write_all("v", p, b"written", dl()).await
        );
        step!(
            format!("read_all v/{p} again"),
            d.read_all("v", p, dl()).await
        );
    }
    for (p, direct) in [
        ("lnkdir/s", false),
        ("sh/buffered", false),
        ("sh/direct", true),
        ("plain/s", false),
        ("dir/sub", false),
    ] {
        let r = async {
            let mut w = d
                .create_file(
                    "v",
                    p,
                    CreateOptions {
                        direct,
                        datasync: false,
                    },
                    dl(),
                )
                .await?;
            w.append(b"0123456789", dl()).await?;
            w.append(&[b'z'; 5000], dl()).await?;
            w.finish(dl()).await
        }
        .await;
        step!(format!("shard v/{p}"), r);
        step!(
            format!("read_file_at v/{p} again"),
            d.read_file_at("v", p, 8, 4, dl()).await
        );
    }
    // Renames.
    for (fv, f, tv, t) in [
        ("v", "plain", "v", "moved/deep/plain"),
        ("v", "moved/deep/plain", "v", "plain"),
        ("v", "missing", "v", "x"),
        ("nov", "x", "v", "x"),
        ("v", "plain", "nov", "x"),
        ("v", "lnkdir/secret", "v", "stolen"),
        ("v", "plain", "v", "lnkdir/planted"),
        ("v", "plain", "lnkvol", "planted"),
        ("v", "plain", "v", "dir"),
        ("v", "dir", "v", "plain/x"),
        ("v", "sh", "w", "sh2"),
        ("v", "lnkfile", "w", "moved-link"),
    ] {
        step!(
            format!("rename_file {fv}/{f} -> {tv}/{t}"),
            d.rename_file(fv, f, tv, t, dl()).await
        );
    }
    step!("list_dir w", d.list_dir("w", "", dl()).await);
    step!("list_dir w/sh2", d.list_dir("w", "sh2", dl()).await);
    // Deletes.
    for (p, o) in [
        ("nope", none),
        ("dir", none),
        ("lnkdir", none),
        ("dir", rec),
        ("hard", none),
        ("fifo", none),
        ("new", none),
        ("new", rec),
    ] {
        step!(
            format!("delete v/{p} recursive={}", o.recursive),
            d.delete("v", p, o, dl()).await
        );
    }
    step!("list_dir v", d.list_dir("v", "", dl()).await);
    step!("list_dir v/ (slash)", d.list_dir("v", "/", dl()).await);
    for (v, force) in [
        ("w", false),
        ("v", false),
        ("zz", false),
        ("afile", false),
        ("lnkvol", false),
        ("lnkvol", true),
        ("w", true),
        ("v", true),
    ] {
        step!(
            format!("delete_vol {v} force={force}"),
            d.delete_vol(v, force, dl()).await
        );
    }
    step!("list_vols", vols(d.list_vols(dl()).await));
    step!(
        "disk_info",
        d.disk_info(dl())
            .await
            .map(|i| (i.id.map(|id| id.disk_index), i.state))
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_script_gives_the_same_outcomes_as_local_disk() {
    let lw = World::new();
    let tw = World::new();
    let local = LocalDisk::builder(&lw.root)
        .config(small_limits())
        .open(dl())
        .await
        .expect("local open");
    let tokio_fs = TokioFsDisk::builder(&tw.root)
        .config(small_limits())
        .open(dl())
        .await
        .expect("tokiofs open");
    local.format(0, 4, false, dl()).await.expect("format");
    tokio_fs.format(0, 4, false, dl()).await.expect("format");
    let want = script(&local).await;
    let got = script(&tokio_fs).await;
    assert_eq!(want.len(), got.len());
    let differ: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("  LocalDisk:   {w}\n  TokioFsDisk: {g}"))
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} steps differ:\n{}",
        differ.len(),
        want.len(),
        differ.join("\n")
    );
    // The script really went through the error paths it is meant to.
    for must in [
        "rule: Symlink",
        "rule: HardLinked",
        "rule: NotRegular",
        "rule: DotComponent",
        "rule: VolumeStartsWithDot",
        "rule: TooLong",
        "VolumeNotFound",
        "VolumeNotEmpty",
        "DirectoryNotEmpty",
        "WrongFileType(IsDirectory)",
        "WrongFileType(NotDirectory)",
        "TooLarge",
        "UnexpectedEof",
        "ok 5010",
    ] {
        assert!(got.iter().any(|l| l.contains(must)), "no step saw {must}");
    }
    lw.assert_outside_unchanged("LocalDisk");
    tw.assert_outside_unchanged("TokioFsDisk");
    eventually("the trash purge", || {
        entries(&tw.root.join(".disk-io/trash")).is_empty()
    })
    .await;
    assert!(entries(&tw.root.join(".disk-io/tmp")).is_empty());
}

// ---- the same disk under both backends --------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_formatted_by_either_backend_opens_under_the_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let payload: Vec<u8> = (0..1_500_001u32).map(|i| (i % 253) as u8).collect();
    let (id, local_stat) = {
        let l = LocalDisk::open(dir.path(), dl()).await.expect("local open");
        let id = l.format(2, 5, false, dl()).await.expect("format");
        l.make_vol("v", dl()).await.expect("mkvol");
        l.write_all("v", "obj/meta", b"from local", dl())
            .await
            .expect("write");
        let mut w = l
            .create_file(
                "v",
                "obj/part.1",
                CreateOptions {
                    direct: true,
                    datasync: true,
                },
                dl(),
            )
            .await
            .expect("create");
        w.append(&payload, dl()).await.expect("append");
        w.finish(dl()).await.expect("finish");
        let st = l.stat_file("v", "obj/part.1", dl()).await.expect("stat");
        (id, st)
    };
    let t_id = {
        let t = open_after_local(dir.path()).await;
        assert_eq!(t.disk_id(dl()).await, Ok(id), "the same identity");
        assert_eq!(t.disk_info(dl()).await.expect("info").id, Some(id));
        assert_eq!(
            t.format(2, 5, false, dl()).await,
            Err(DiskError::AlreadyFormatted)
        );
        assert_eq!(
            t.read_all("v", "obj/meta", dl()).await.expect("read"),
            b"from local"
        );
        let back = t
            .read_file_at("v", "obj/part.1", 0, payload.len(), dl())
            .await
            .expect("read shard");
        assert!(back == payload, "shard written by LocalDisk reads back");
        assert_eq!(
            t.stat_file("v", "obj/part.1", dl()).await.expect("stat"),
            local_stat,
            "the same FileInfo, times included"
        );
        assert_eq!(
            t.list_dir("v", "obj", dl()).await.expect("ls"),
            ["meta", "part.1"]
        );
        t.write_all("v", "obj2/meta", b"from tokio-fs", dl())
            .await
            .expect("write");
        let mut w = t
            .create_file(
                "v",
                "obj2/part.1",
                CreateOptions {
                    direct: true,
                    datasync: false,
                },
                dl(),
            )
            .await
            .expect("create");
        w.append(&payload, dl()).await.expect("append");
        w.finish(dl()).await.expect("finish");
        t.disk_id(dl()).await.expect("id")
    };
    assert_eq!(t_id, id);
    let l = LocalDisk::open(dir.path(), dl())
        .await
        .expect("local reopen");
    assert_eq!(l.disk_id(dl()).await, Ok(id));
    assert_eq!(
        l.read_all("v", "obj2/meta", dl()).await.expect("read"),
        b"from tokio-fs"
    );
    let back = l
        .read_file_at("v", "obj2/part.1", 0, payload.len(), dl())
        .await
        .expect("read shard");
    assert!(back == payload, "shard written by TokioFsDisk reads back");
    drop(l);

    // And a disk formatted by TokioFsDisk.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let id2 = {
        let t = TokioFsDisk::open(dir2.path(), dl()).await.expect("open");
        t.format(3, 1, false, dl()).await.expect("format")
    };
    let l = LocalDisk::open(dir2.path(), dl())
        .await
        .expect("local open");
    assert_eq!(l.disk_id(dl()).await, Ok(id2));
    assert_eq!((id2.set_index, id2.disk_index), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_owner_at_a_time_whichever_the_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let _l = LocalDisk::open(dir.path(), dl()).await.expect("local open");
        match TokioFsDisk::open(dir.path(), dl()).await {
            Err(DiskError::InUse { .. }) => {}
            other => panic!("TokioFsDisk under a LocalDisk owner: {other:?}"),
        }
    }
    let t = open_after_local(dir.path()).await;
    match LocalDisk::open(dir.path(), dl()).await {
        Err(DiskError::InUse { .. }) => {}
        other => panic!("LocalDisk under a TokioFsDisk owner: {other:?}"),
    }
    match TokioFsDisk::open(dir.path(), dl()).await {
        Err(DiskError::InUse { .. }) => {}
        other => panic!("a second TokioFsDisk owner: {other:?}"),
    }
    drop(t);
    TokioFsDisk::open(dir.path(), dl())
        .await
        .expect("the lock went with the handle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_recovers_tmp_and_purges_the_trash() {
    // A previous run's layout, left as a crash would leave it (made by
    // hand: a previous handle's purge could still be running).
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = dir.path().join(".disk-io");
    std::fs::create_dir_all(sys.join("tmp")).expect("mkdir");
    std::fs::write(sys.join("tmp/leftover"), b"half a write").expect("write");
    std::fs::create_dir_all(sys.join("trash/old/tree")).expect("mkdir");
    std::fs::write(sys.join("trash/old/tree/f"), b"x").expect("write");
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("keep"), b"keep").expect("write");
    symlink(outside.path(), sys.join("trash/old/link")).expect("symlink");
    let _t = TokioFsDisk::open(dir.path(), dl()).await.expect("reopen");
    assert!(entries(&sys.join("tmp")).is_empty(), "tmp moved aside");
    eventually("the trash purge", || entries(&sys.join("trash")).is_empty()).await;
    assert_eq!(
        std::fs::read(outside.path().join("keep")).expect("outside"),
        b"keep",
        "the purge removed the link, not what it points to"
    );
    assert!(dir.path().join(".disk-io/format.json").metadata().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_a_directory_root_is_disk_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    for root in [dir.path().join("missing"), {
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").expect("write");
        f
    }] {
        assert_eq!(
            TokioFsDisk::open(&root, dl())
                .await
                .map(|_| ())
                .map_err(|e| e.kind()),
            Err("disk_not_found"),
            "{}",
            root.display()
        );
    }
}

// ---- atomic writes ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_all_is_atomic_under_concurrent_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = Arc::new(TokioFsDisk::open(dir.path(), dl()).await.expect("open"));
    disk.make_vol("v", dl()).await.expect("mkvol");
    const SIZE: usize = 1 << 20;
    disk.write_all("v", "obj/meta", &vec![0u8; SIZE], dl())
        .await
        .expect("first write");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (disk, stop) = (disk.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let data = disk
                    .read_all("v", "obj/meta", dl())
                    .await
                    .expect("always readable");
                assert_eq!(data.len(), SIZE, "a whole version, never a short one");
                let first = data[0];
                assert!(data.iter().all(|&b| b == first), "one version, never a mix");
                reads += 1;
            }
            reads
        }));
    }
    // Also from outside, through the plain file system.
    let path = dir.path().join("v/obj/meta");
    let raw_stop = stop.clone();
    let raw = std::thread::spawn(move || {
        let mut reads = 0u32;
        while !raw_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let data = std::fs::read(&path).expect("the target always exists");
            assert_eq!(data.len(), SIZE);
            assert!(data.iter().all(|&b| b == data[0]), "never a mix");
            reads += 1;
        }
        reads
    });
    for i in 1..=40u8 {
        disk.write_all("v", "obj/meta", &vec![i; SIZE], dl())
            .await
            .expect("overwrite");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.expect("reader") > 0);
    }
    assert!(raw.join().expect("raw reader") > 0);
    assert_eq!(
        disk.read_all("v", "obj/meta", dl()).await.expect("read"),
        vec![40u8; SIZE]
    );
    assert!(entries(&dir.path().join(".disk-io/tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_all_changes_nothing_and_cleans_its_temporary_file() {
    let (d, disk) = disk().await;
    disk.make_vol("v", dl()).await.expect("mkvol");
    std::fs::create_dir_all(d.path().join("v/target/child")).expect("mkdir");
    disk.write_all("v", "f", b"old", dl()).await.expect("write");
    // The rename onto a non-empty directory fails after the temporary file
    // was written and fsynced.
    assert_eq!(
        disk.write_all("v", "target", b"new", dl()).await,
        Err(DiskError::WrongFileType(disk_io::WrongType::IsDirectory))
    );
    assert!(d.path().join("v/target/child").is_dir());
    eventually("the temporary file's removal", || {
        entries(&d.path().join(".disk-io/tmp")).is_empty()
    })
    .await;
    // A parent that is a file: nothing is created, the file is intact.
    assert_eq!(
        disk.write_all("v", "f/x", b"new", dl()).await,
        Err(DiskError::WrongFileType(disk_io::WrongType::NotDirectory))
    );
    assert_eq!(disk.read_all("v", "f", dl()).await.expect("read"), b"old");
}

// ---- deadlines --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_is_answered_at_once_and_starts_nothing() {
    let (d, disk) = disk().await;
    disk.format(0, 0, false, dl()).await.expect("format");
    disk.make_vol("v", dl()).await.expect("mkvol");
    disk.write_all("v", "f", b"data", dl())
        .await
        .expect("write");
    let gone = || Deadline::at(Instant::now() - Duration::from_millis(1));
    let mut w = disk
        .create_file("v", "shard", CreateOptions::default(), dl())
        .await
        .expect("create");
    let none = DeleteOptions::default();
    let started = Instant::now();
    let cases: Vec<(OpClass, disk_io::Result<()>)> = vec![
        (OpClass::DiskId, disk.disk_id(gone()).await.map(drop)),
        (OpClass::DiskInfo, disk.disk_info(gone()).await.map(drop)),
        (OpClass::MakeVol, disk.make_vol("late", gone()).await),
        (OpClass::ListVols, disk.list_vols(gone()).await.map(drop)),
        (OpClass::StatVol, disk.stat_vol("v", gone()).await.map(drop)),
        (OpClass::DeleteVol, disk.delete_vol("v", true, gone()).await),
        (
            OpClass::ReadAll,
            disk.read_all("v", "f", gone()).await.map(drop),
        ),
        (
            OpClass::WriteAll,
            disk.write_all("v", "late", b"x", gone()).await,
        ),
        (
            OpClass::CreateFile,
            disk.create_file("v", "late2", CreateOptions::default(), gone())
                .await
                .map(drop),
        ),
        (
            OpClass::ReadFileAt,
            disk.read_file_at("v", "f", 0, 4, gone()).await.map(drop),
        ),
        (
            OpClass::StatFile,
            disk.stat_file("v", "f", gone()).await.map(drop),
        ),
        (
            OpClass::RenameFile,
            disk.rename_file("v", "f", "v", "g", gone()).await,
        ),
        (OpClass::Delete, disk.delete("v", "f", none, gone()).await),
        (
            OpClass::ListDir,
            disk.list_dir("v", "", gone()).await.map(drop),
        ),
        (OpClass::Append, w.append(b"late", gone()).await),
        (
            OpClass::Format,
            disk.format(0, 0, true, gone()).await.map(drop),
        ),
    ];
    let elapsed = started.elapsed();
    for (class, r) in cases {
        match r {
            Err(DiskError::DeadlineExceeded { op, .. }) if op == class => {}
            other => panic!("{class}: {other:?}"),
        }
    }
    match w.finish(gone()).await {
        Err(DiskError::DeadlineExceeded {
            op: OpClass::Finish,
            ..
        }) => {}
        other => panic!("finish: {other:?}"),
    }
    assert!(
        elapsed < Duration::from_millis(200),
        "16 expired calls took {elapsed:?}"
    );
    // Nothing was started: give a late job every chance to land, then look.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(entries(&d.path().join("v")), ["f", "shard"]);
    assert_eq!(std::fs::read(d.path().join("v/f")).expect("read"), b"data");
    assert!(d.path().join("v").is_dir());
    assert_eq!((disk.in_flight(), disk.zombies()), (0, 0));
    assert_eq!(
        disk.read_all("v", "f", dl()).await.expect("serves"),
        b"data"
    );
}

#[test]
fn a_call_stuck_behind_a_full_blocking_pool_leaves_on_time_and_never_runs() {
    // One blocking thread, taken by a job that sleeps: the disk's next
    // blocking job queues behind it, as it would behind a hung std::fs call.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (d, disk) = disk().await;
        disk.make_vol("v", dl()).await.expect("mkvol");
        let release = Arc::new(std::sync::Barrier::new(2));
        let r2 = release.clone();
        let hog = tokio::task::spawn_blocking(move || {
            r2.wait();
        });
        let budget = Duration::from_millis(150);
        let started = Instant::now();
        let r = disk.make_vol("late", Deadline::after(budget)).await;
        let took = started.elapsed();
        assert!(
            matches!(
                r,
                Err(DiskError::DeadlineExceeded {
                    op: OpClass::MakeVol,
                    ..
                })
            ),
            "{r:?}"
        );
        assert!(took >= budget, "left early: {took:?}");
        assert!(
            took < budget + Duration::from_millis(300),
            "left late: {took:?}"
        );
        let started = Instant::now();
        let r = disk
            .write_all("v", "late", b"x", Deadline::after(budget))
            .await;
        assert!(
            matches!(
                r,
                Err(DiskError::DeadlineExceeded {
                    op: OpClass::WriteAll,
                    ..
                })
            ),
            "{r:?}"
        );
        assert!(started.elapsed() < budget + Duration::from_millis(300));
        assert_eq!(disk.zombies(), 2, "both callers left their queued jobs");
        assert_eq!(disk.in_flight(), 2);
        release.wait();
        hog.await.expect("hog");
        eventually("the abandoned jobs to drain", || {
            disk.in_flight() == 0 && disk.zombies() == 0
        })
        .await;
        assert!(
            !d.path().join("late").exists(),
            "a job whose caller left before it started does nothing"
        );
        assert!(!d.path().join("v/late").exists());
        assert!(entries(&d.path().join(".disk-io/tmp")).is_empty());
        disk.make_vol("late", dl()).await.expect("serves again");
    });
}
