//! Behaviour of every operation on a healthy local disk (a temp directory).

use std::time::Duration;

use disk_io::{CreateOptions, Deadline, DeleteOptions, Disk, DiskError, LocalDisk};

fn dl() -> Deadline {
    Deadline::after(Duration::from_secs(5))
}

async fn disk() -> (tempfile::TempDir, LocalDisk) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = LocalDisk::open(dir.path(), dl()).await.expect("open");
    (dir, disk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_and_disk_id() {
    let (_d, disk) = disk().await;
    assert_eq!(disk.disk_id(dl()).await, Err(DiskError::Unformatted));
    let id = disk.format(1, 3, false, dl()).await.expect("format");
    assert_eq!((id.set_index, id.disk_index), (1, 3));
    assert_eq!(disk.disk_id(dl()).await, Ok(id));
    assert_eq!(
        disk.format(1, 3, false, dl()).await,
        Err(DiskError::AlreadyFormatted)
    );
    let id2 = disk.format(1, 3, true, dl()).await.expect("force format");
    assert_ne!(id.uuid, id2.uuid);
    assert_eq!(
        disk.disk_id(dl()).await,
        Ok(id2),
        "cache invalidated by format"
    );
    let info = disk.disk_info(dl()).await.expect("info");
    assert_eq!(info.id, Some(id2));
    assert!(info.total > 0 && info.free <= info.total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes() {
    let (_d, disk) = disk().await;
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
    assert_eq!(names, vec!["a0", "b1"], "sorted, system dir hidden");
    assert_eq!(disk.stat_vol("b1", dl()).await.expect("stat").name, "b1");
    assert_eq!(
        disk.stat_vol("zz", dl()).await,
        Err(DiskError::VolumeNotFound)
    );
    disk.write_all("b1", "x", b"1", dl()).await.expect("write");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip() {
    let (_d, disk) = disk().await;
    disk.make_vol("v", dl()).await.expect("mkvol");
    disk.write_all("v", "a/b/meta", b"hello", dl())
        .await
        .expect("write nested");
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
    assert!(matches!(
        disk.read_file_at("v", "a/b/meta", 4, 10, dl()).await,
        Err(DiskError::UnexpectedEof { wanted: 10, got: 2 })
    ));
    let st = disk.stat_file("v", "a/b/meta", dl()).await.expect("stat");
    assert_eq!((st.size, st.is_dir), (6, false));
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
        disk.rename_file("v", "missing", "v", "x", dl()).await,
        Err(DiskError::FileNotFound)
    );
    assert_eq!(
        disk.list_dir("v", "", dl()).await.expect("ls"),
        vec!["a/", "c/"]
    );
    assert_eq!(
        disk.list_dir("v", "c/d", dl()).await.expect("ls"),
        vec!["meta2"]
    );
    assert_eq!(
        disk.list_dir("v", "zz", dl()).await,
        Err(DiskError::FileNotFound)
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
    assert_eq!(disk.list_dir("v", "", dl()).await.expect("ls"), vec!["c/"]);
    assert_eq!(
        disk.delete("v", "a", DeleteOptions::default(), dl()).await,
        Err(DiskError::FileNotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_writer_buffered_and_direct() {
    let (_d, disk) = disk().await;
    disk.make_vol("v", dl()).await.expect("mkvol");
    let payload: Vec<u8> = (0..3_000_017u32).map(|i| (i % 251) as u8).collect();
    for direct in [false, true] {
        let path = format!("shard-{direct}/part.1");
        let opts = CreateOptions {
            direct,
            datasync: true,
        };
        // The temp dir must be on a file system with O_DIRECT (ext4 here and
        // in CI); on one without, the error says so, and this test fails.
        let mut w = disk
            .create_file("v", &path, opts, dl())
            .await
            .unwrap_or_else(|e| {
                panic!("create_file(direct={direct}) in {}: {e} (run with TMPDIR on a file system with O_DIRECT)", _d.path().display())
            });
        for chunk in payload.chunks(100_003) {
            w.append(chunk, dl()).await.expect("append");
        }
        assert_eq!(w.finish(dl()).await.expect("finish"), payload.len() as u64);
        let back = disk
            .read_file_at("v", &path, 0, payload.len(), dl())
            .await
            .expect("read");
        assert!(back == payload, "direct={direct}: content differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_are_rejected_and_touch_nothing() {
    let (d, disk) = disk().await;
    disk.make_vol("v", dl()).await.expect("mkvol");
    let outside = d
        .path()
        .parent()
        .expect("parent")
        .join("disk-io-escape-probe");
    let _ = std::fs::remove_file(&outside);
    for p in [
        "../disk-io-escape-probe",
        "/etc/passwd",
        "a/../../x",
        "a//b",
        "./a",
    ] {
        for r in [
            disk.write_all("v", p, b"x", dl()).await,
            disk.read_all("v", p, dl()).await.map(|_| ()),
            disk.delete("v", p, DeleteOptions::default(), dl()).await,
            disk.stat_file("v", p, dl()).await.map(|_| ()),
        ] {
            assert_eq!(r.map_err(|e| e.kind()), Err("invalid_path"), "{p}");
        }
    }
    for v in ["..", ".disk-io", "/", "a/b"] {
        assert_eq!(
            disk.make_vol(v, dl()).await.map_err(|e| e.kind()),
            Err("invalid_path"),
            "{v}"
        );
    }
    assert!(!outside.exists(), "nothing written outside the disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_arrive_out_of_time_do_not_take_a_healthy_disk_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = disk_io::DiskConfig::default();
    cfg.health.faulty_after_misses = 3;
    cfg.health.no_progress_window = Duration::ZERO;
    let disk = LocalDisk::builder(dir.path())
        .config(cfg)
        .open(dl())
        .await
        .expect("open");
    disk.make_vol("v", dl()).await.expect("mkvol");
    for _ in 0..10 {
        let r = disk.stat_vol("v", Deadline::after(Duration::ZERO)).await;
        assert!(
            matches!(r, Err(DiskError::DeadlineExceeded { .. })),
            "{r:?}"
        );
    }
    assert_eq!(disk.state(), disk_io::HealthState::Online);
    disk.stat_vol("v", dl()).await.expect("serves");
}
