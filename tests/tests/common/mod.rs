//! Fixtures shared by the integration test binaries (each `tests/*.rs`
//! includes this module; not every binary uses every item).
#![allow(dead_code)]

use std::time::Duration;

use disk_io::{Deadline, Disk, DiskConfig, LocalDisk};
use disk_io_harness::{privilege, FaultControl, FaultFs, ScratchDir};

pub fn need_fuse() {
    privilege::require_root().expect("this test mounts FUSE");
    privilege::require_fuse().expect("this test mounts FUSE");
}

pub fn setup_deadline() -> Deadline {
    Deadline::after(Duration::from_secs(10))
}

/// A config whose health machine never trips on deadline misses, to
/// observe them raw. (The zombie cap still applies: it must stay reachable.)
pub fn never_trip() -> DiskConfig {
    let mut c = DiskConfig::default();
    c.health.faulty_after_misses = u32::MAX;
    c.health.probe_interval = Duration::ZERO;
    c.disk_id_cache_ttl = Duration::ZERO;
    c
}

pub struct Fixture {
    pub disk: LocalDisk,
    pub ctl: FaultControl,
    // Field order matters: the disk goes first, then the mount, then the dirs.
    pub fs: FaultFs,
    _scratch: ScratchDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Never leave a hung mount behind, even when an assertion failed.
        self.ctl.reset();
    }
}

/// A formatted disk on a fresh FaultFs mount, with volume `v` holding
/// `meta` ("old") and `d/inner`.
pub async fn fuse_disk(cfg: DiskConfig) -> Fixture {
    need_fuse();
    let (scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
    let ctl = fs.control();
    let disk = LocalDisk::builder(fs.mountpoint())
        .config(cfg)
        .open(setup_deadline())
        .await
        .expect("open disk on faultfs");
    disk.format(0, 1, false, setup_deadline())
        .await
        .expect("format");
    disk.make_vol("v", setup_deadline())
        .await
        .expect("make_vol");
    disk.write_all("v", "meta", b"old", setup_deadline())
        .await
        .expect("write_all");
    disk.write_all("v", "d/inner", b"x", setup_deadline())
        .await
        .expect("write_all nested");
    Fixture {
        disk,
        ctl,
        fs,
        _scratch: scratch,
    }
}
