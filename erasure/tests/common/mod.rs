//! Fixtures shared by the erasure integration tests: a set of 8 local
//! disks, some of them on FaultFs mounts.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use disk_io::{Deadline, Disk, DiskConfig, LocalDisk};
use disk_io_erasure::{ErasureConfig, ErasureSet, HealQueue, SetReport};
use disk_io_harness::{privilege, FaultControl, FaultFs, ScratchDir};

pub const BUCKET: &str = "bkt";

pub fn setup_deadline() -> Deadline {
    Deadline::after(Duration::from_secs(20))
}

/// Deterministic pseudo-random bytes (xorshift), so a failure reproduces.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub struct Mount {
    pub ctl: FaultControl,
    pub fs: FaultFs,
    _scratch: ScratchDir,
}

pub struct Fixture {
    pub set: ErasureSet,
    pub report: SetReport,
    pub disks: Vec<Arc<LocalDisk>>,
    /// Backing directory of each disk (where its files really are).
    pub backing: Vec<PathBuf>,
    /// `Some` for disks on FaultFs.
    pub mounts: Vec<Option<Mount>>,
    _tmp: Vec<tempfile::TempDir>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for m in self.mounts.iter().flatten() {
            m.ctl.reset();
        }
    }
}

impl Fixture {
    pub fn ctl(&self, pos: usize) -> &FaultControl {
        &self.mounts[pos].as_ref().expect("a FaultFs disk").ctl
    }
}

/// A config for tests: small blocks so objects of a few MiB have many.
pub fn test_config() -> ErasureConfig {
    ErasureConfig {
        block_size: 256 << 10,
        commit_window: fx_window(),
        superseded_grace: fx_window(),
        ..ErasureConfig::default()
    }
}

/// The collector's commit window and graveyard grace in these tests.
pub fn fx_window() -> Duration {
    Duration::from_millis(300)
}

/// 8 disks, 4+4; the positions in `faulty` are on FaultFs mounts.
pub async fn fixture(faulty: &[usize], cfg: ErasureConfig) -> Fixture {
    if !faulty.is_empty() {
        privilege::require_root().expect("this test mounts FUSE");
        privilege::require_fuse().expect("this test mounts FUSE");
    }
    let mut disks = Vec::new();
    let mut backing = Vec::new();
    let mut mounts = Vec::new();
    let mut tmp = Vec::new();
    for pos in 0..8 {
        let root = if faulty.contains(&pos) {
            let (scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
            let root = fs.mountpoint().to_path_buf();
            backing.push(fs.backing().to_path_buf());
            mounts.push(Some(Mount {
                ctl: fs.control(),
                fs,
                _scratch: scratch,
            }));
            root
        } else {
            let t = tempfile::tempdir().expect("tempdir");
            let root = t.path().to_path_buf();
            backing.push(root.clone());
            tmp.push(t);
            mounts.push(None);
            root
        };
        let disk = LocalDisk::builder(&root)
            .config(DiskConfig::default())
            .label(format!("disk{pos}"))
            .open(setup_deadline())
            .await
            .expect("open disk");
        disk.format(0, pos as u32, false, setup_deadline())
            .await
            .expect("format");
        disks.push(Arc::new(disk));
    }
    let dyn_disks: Vec<Arc<dyn Disk>> = disks.iter().map(|d| d.clone() as Arc<dyn Disk>).collect();
    let cfg = Arc::new(cfg);
    let heal = Arc::new(HealQueue::new(cfg.heal_queue_capacity));
    let (set, report) = ErasureSet::open(0, dyn_disks, 4, cfg, heal, setup_deadline())
        .await
        .expect("open set");
    assert_eq!(report.available(), 8, "{report:?}");
    set.make_bucket(BUCKET, setup_deadline())
        .await
        .expect("make bucket");
    Fixture {
        set,
        report,
        disks,
        backing,
        mounts,
        _tmp: tmp,
    }
}

/// PUT `data` as `name`.
pub async fn put(
    set: &ErasureSet,
    name: &str,
    data: &[u8],
    deadline: Deadline,
) -> disk_io_erasure::PutReport {
    let mut src = data;
    set.put_object(BUCKET, name, &mut src, deadline)
        .await
        .unwrap_or_else(|e| panic!("put {name} ({} B): {e}", data.len()))
}

/// GET `name` (or a range of it) into memory.
pub async fn get(
    set: &ErasureSet,
    name: &str,
    range: Option<(u64, u64)>,
    deadline: Deadline,
) -> Result<(Vec<u8>, disk_io_erasure::GetReport), disk_io_erasure::ErasureError> {
    let mut out = Vec::new();
    let r = set
        .get_object(BUCKET, name, range, &mut out, deadline)
        .await?;
    Ok((out, r))
}

/// Every file under `dir`, recursively (paths relative to it).
pub fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Wait (up to 10 s) for background cleanups to make `cond` true.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
