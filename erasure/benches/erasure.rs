//! Erasure throughput and hedging figures (prints, asserts nothing).
//!
//! `cargo bench -p disk-io-erasure --bench erasure` (release). Environment:
//! `EBENCH_MIB` object size for the throughput rounds (default 1024),
//! `EBENCH_GETS` small GETs per latency round (default 200). The rounds
//! with hung disks mount FaultFs and need root and /dev/fuse; the bench
//! stops with a message naming the privilege when they are missing.
//!
//! Figures:
//! * encode + hash throughput per core (4+4, 1 MiB blocks), and reconstruct;
//! * PUT and GET MiB/s of one large object on 8 local disks, healthy and
//!   with 2 of the 8 hung (two of the disks are FaultFs pass-through mounts
//!   in both rounds, so only the hang differs), and the ratio;
//! * GET and PUT latency p50/p99 of 1 MiB objects, healthy and with 1 disk
//!   hung.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use disk_io::{Deadline, Disk, DiskConfig, LocalDisk};
use disk_io_erasure::codec::{self, Encoder, Geometry, HASH_LEN};
use disk_io_erasure::{ErasureConfig, ErasureSet, HealQueue};
use disk_io_harness::{privilege, FaultControl, FaultFs, ScratchDir};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const MIB: usize = 1 << 20;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An endless pseudo-random byte source of a fixed length (never holds the
/// object in memory); the same seed gives the same bytes.
struct Source {
    left: u64,
    x: u64,
    chunk: Vec<u8>,
}

impl Source {
    fn new(len: u64, seed: u64) -> Source {
        Source {
            left: len,
            x: seed | 1,
            chunk: vec![0; 64 << 10],
        }
    }
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let n = (buf.remaining() as u64)
            .min(this.left)
            .min(this.chunk.len() as u64) as usize;
        for w in this.chunk[..n].chunks_mut(8) {
            this.x ^= this.x << 13;
            this.x ^= this.x >> 7;
            this.x ^= this.x << 17;
            let b = this.x.to_le_bytes();
            w.copy_from_slice(&b[..w.len()]);
        }
        buf.put_slice(&this.chunk[..n]);
        this.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// A sink that hashes what it gets.
struct HashSink(blake3::Hasher, u64);

impl AsyncWrite for HashSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn source_hash(len: u64, seed: u64) -> blake3::Hash {
    use tokio::io::AsyncReadExt;
    let mut s = Source::new(len, seed);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; MIB];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            return h.finalize();
        }
        h.update(&buf[..n]);
    }
}

struct Bench {
    set: ErasureSet,
    ctls: Vec<FaultControl>,
    _mounts: Vec<(FaultFs, ScratchDir)>,
    _tmp: Vec<tempfile::TempDir>,
}

async fn open(fuse_positions: &[usize]) -> Bench {
    let d = || Deadline::after(Duration::from_secs(30));
    let mut disks: Vec<Arc<dyn Disk>> = Vec::new();
    let mut mounts = Vec::new();
    let mut ctls = Vec::new();
    let mut tmp = Vec::new();
    for pos in 0..8u32 {
        let root = if fuse_positions.contains(&(pos as usize)) {
            let (scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
            let root = fs.mountpoint().to_path_buf();
            ctls.push(fs.control());
            mounts.push((fs, scratch));
            root
        } else {
            let t = tempfile::tempdir().expect("tempdir");
            let root = t.path().to_path_buf();
            tmp.push(t);
            root
        };
        let disk = LocalDisk::builder(&root)
            .config(DiskConfig::default())
            .open(d())
            .await
            .expect("open disk");
        disk.format(0, pos, false, d()).await.expect("format");
        disks.push(Arc::new(disk));
    }
    let cfg = Arc::new(ErasureConfig {
        timeouts: disk_io::OpTimeouts {
            data: Duration::from_secs(30),
            ..disk_io::OpTimeouts::default()
        },
        ..ErasureConfig::default()
    });
    let heal = Arc::new(HealQueue::new(1024));
    let (set, _) = ErasureSet::open(0, disks, 4, cfg, heal, d())
        .await
        .expect("open set");
    set.make_bucket("bench", d()).await.expect("bucket");
    Bench {
        set,
        ctls,
        _mounts: mounts,
        _tmp: tmp,
    }
}

async fn put_get(b: &Bench, name: &str, size: u64, seed: u64) -> (f64, f64) {
    let d = || Deadline::after(Duration::from_secs(600));
    let mib = size as f64 / MIB as f64;
    let mut src = Source::new(size, seed);
    let t = Instant::now();
    b.set
        .put_object("bench", name, &mut src, d())
        .await
        .expect("put");
    let put = mib / t.elapsed().as_secs_f64();
    let mut sink = HashSink(blake3::Hasher::new(), 0);
    let t = Instant::now();
    b.set
        .get_object("bench", name, None, &mut sink, d())
        .await
        .expect("get");
    let get = mib / t.elapsed().as_secs_f64();
    assert_eq!(sink.1, size);
    assert_eq!(
        sink.0.finalize(),
        source_hash(size, seed).await,
        "GET differs"
    );
    (put, get)
}

fn codec_figures() {
    let block = vec![0x5Au8; MIB];
    let geo = Geometry {
        data: 4,
        parity: 4,
        block_size: MIB as u64,
        size: MIB as u64,
    };
    let len = geo.shard_len(MIB as u64);
    let mut enc = Encoder::new(4, 4);
    let rounds = 256;
    let t = Instant::now();
    let mut last = Vec::new();
    for _ in 0..rounds {
        last = enc.encode(&block, len).unwrap();
    }
    let enc_rate = rounds as f64 / t.elapsed().as_secs_f64();
    let given: Vec<Option<Vec<u8>>> = (0..8)
        .map(|i| (2..6).contains(&i).then(|| last[i][HASH_LEN..].to_vec()))
        .collect();
    let t = Instant::now();
    for _ in 0..rounds {
        codec::reconstruct(4, 4, len, given.clone(), false).unwrap();
    }
    let dec_rate = rounds as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for s in 0..rounds {
        std::hint::black_box(codec::hash(&last[s % 8][HASH_LEN..]));
    }
    let hash_rate = rounds as f64 * len as f64 / MIB as f64 / t.elapsed().as_secs_f64();
    println!("codec (one core, 4+4, 1 MiB blocks):");
    println!("  encode + BLAKE3 of 8 shards: {enc_rate:8.0} MiB/s of object data");
    println!("  reconstruct 2 data shards:   {dec_rate:8.0} MiB/s of object data");
    println!("  BLAKE3 alone:                {hash_rate:8.0} MiB/s");
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn put_latency(b: &Bench, puts: usize, tag: &str) -> (Duration, Duration) {
    let d = || Deadline::after(Duration::from_secs(60));
    let mut v = Vec::with_capacity(puts);
    for i in 0..puts {
        let mut src = Source::new(MIB as u64, 1000 + i as u64);
        let t = Instant::now();
        b.set
            .put_object("bench", &format!("put-{tag}-{}", i % 16), &mut src, d())
            .await
            .expect("small put");
        v.push(t.elapsed());
    }
    (pct(&mut v, 0.5), pct(&mut v, 0.99))
}

async fn latency(b: &Bench, gets: usize) -> (Duration, Duration) {
    let d = || Deadline::after(Duration::from_secs(60));
    let mut v = Vec::with_capacity(gets);
    for i in 0..gets {
        let mut sink = HashSink(blake3::Hasher::new(), 0);
        let t = Instant::now();
        b.set
            .get_object("bench", &format!("small-{}", i % 16), None, &mut sink, d())
            .await
            .expect("small get");
        v.push(t.elapsed());
    }
    (pct(&mut v, 0.5), pct(&mut v, 0.99))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    codec_figures();
    privilege::require_fuse().expect("the hung-disk rounds mount FaultFs");
    let size = (env("EBENCH_MIB", 1024) * MIB) as u64;
    let gets = env("EBENCH_GETS", 200);
    rt.block_on(async {
        let b = open(&[2, 5]).await;
        let (hp, hg) = put_get(&b, "big-healthy", size, 1).await;
        for c in &b.ctls {
            c.hang();
        }
        let (sp, sg) = put_get(&b, "big-hung", size, 2).await;
        for c in &b.ctls {
            c.release();
        }
        println!(
            "{} MiB object, 8 local disks (2 on FaultFs), 4+4, 1 MiB blocks:",
            size / MIB as u64
        );
        println!("  healthy:      PUT {hp:7.1} MiB/s  GET {hg:7.1} MiB/s");
        println!("  2 of 8 hung:  PUT {sp:7.1} MiB/s  GET {sg:7.1} MiB/s");
        println!(
            "  ratio hung/healthy: PUT {:.2}  GET {:.2}",
            sp / hp,
            sg / hg
        );
        drop(b);

        let b = open(&[0]).await;
        for i in 0..16 {
            let mut src = Source::new(MIB as u64, 100 + i);
            b.set
                .put_object(
                    "bench",
                    &format!("small-{i}"),
                    &mut src,
                    Deadline::after(Duration::from_secs(60)),
                )
                .await
                .expect("small put");
        }
        let (p50, p99) = latency(&b, gets).await;
        let (pp50, pp99) = put_latency(&b, gets / 2, "healthy").await;
        b.ctls[0].hang();
        let (hp50, hp99) = latency(&b, gets).await;
        let (hpp50, hpp99) = put_latency(&b, gets / 2, "hung").await;
        b.ctls[0].release();
        println!("PUT of 1 MiB objects ({} each):", gets / 2);
        println!("  healthy:     p50 {pp50:?}  p99 {pp99:?}");
        println!("  1 disk hung: p50 {hpp50:?}  p99 {hpp99:?}");
        println!(
            "  p50 ratio hung/healthy: {:.2}",
            hpp50.as_secs_f64() / pp50.as_secs_f64()
        );
        println!("GET of 1 MiB objects ({gets} each):");
        println!("  healthy:     p50 {p50:?}  p99 {p99:?}");
        println!("  1 disk hung: p50 {hp50:?}  p99 {hp99:?}");
        println!(
            "  p99 ratio hung/healthy: {:.2}",
            hp99.as_secs_f64() / p99.as_secs_f64()
        );
    });
}
