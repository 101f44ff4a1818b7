//! The I/O engines a job can run on, and the loop that drives them.
//!
//! * `uring`: disk-io's per-disk io_uring driver ([`Driver::read_at`] /
//!   [`Driver::write_at`]); every op carries a deadline, enforced in the
//!   kernel and by the ring thread.
//! * `uring-nodeadline`: the same driver with [`KernelDeadline::CallerOnly`]:
//!   no LinkTimeout and no ring-side deadline, to price the deadlines.
//! * `uring-thread`: the same driver with its fast ring off
//!   ([`DriverConfig::fast_path`]): every op goes through the disk's ring
//!   thread, as all ops did before the fast path; prices the hand-offs.
//! * `psync`: `pread`/`pwrite` from `numjobs × iodepth` threads (fio's psync
//!   is one thread per job at QD1; here each queue slot gets a thread so a
//!   "QD32" comparison means 32 requests in flight for every engine).
//! * `tokio-fs`: what storage nodes use today: every op hops to tokio's
//!   blocking pool (`spawn_blocking` around a positional read/write, which is
//!   how `tokio::fs` works; `tokio::fs::File`'s own buffer cannot be aligned
//!   for O_DIRECT, so the positional call is made directly).
//!
//! Each job covers the whole file. Random offsets are uniform over whole
//! blocks; sequential offsets are handed out in order from a counter shared
//! by the job's queue slots. A job ends at `runtime` (time-based) or when it
//! has done `size` bytes.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_io::Deadline;
use disk_io_driver::{AlignedBuf, Driver, DriverConfig, IoBuf, KernelDeadline};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::job::{BenchError, JobSpec, DIRECT_ALIGN};
use crate::Latencies;

/// An engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Engine {
    /// disk-io's driver with deadlines.
    Uring,
    /// disk-io's driver without kernel-side deadlines.
    UringNoDeadline,
    /// disk-io's driver with every op on the ring thread.
    UringThread,
    /// pread/pwrite in threads.
    Psync,
    /// tokio's blocking pool.
    TokioFs,
}

impl Engine {
    /// Every engine, in report order.
    pub const ALL: [Engine; 5] = [
        Engine::Uring,
        Engine::UringNoDeadline,
        Engine::UringThread,
        Engine::Psync,
        Engine::TokioFs,
    ];

    /// Parse an engine name.
    pub fn parse(s: &str) -> Result<Engine, BenchError> {
        Ok(match s {
            "uring" => Engine::Uring,
            "uring-nodeadline" => Engine::UringNoDeadline,
            "uring-thread" => Engine::UringThread,
            "psync" => Engine::Psync,
            "tokio-fs" => Engine::TokioFs,
            other => return Err(BenchError::UnknownEngine(other.to_string())),
        })
    }

    /// The engine's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Uring => "uring",
            Engine::UringNoDeadline => "uring-nodeadline",
            Engine::UringThread => "uring-thread",
            Engine::Psync => "psync",
            Engine::TokioFs => "tokio-fs",
        }
    }
}

/// Results of one direction (reads or writes) of a run.
#[derive(Default)]
pub struct DirStats {
    /// Completion latency of each op (submit call to completion).
    pub lat: Latencies,
    /// Completed ops.
    pub ios: u64,
    /// Bytes transferred.
    pub bytes: u64,
}

impl DirStats {
    fn merge(&mut self, other: &DirStats) {
        self.lat.merge(&other.lat);
        self.ios += other.ios;
        self.bytes += other.bytes;
    }
}

/// Results of a run, all jobs merged (fio's `group_reporting`).
pub struct RunResult {
    /// The engine.
    pub engine: Engine,
    /// Reads.
    pub read: DirStats,
    /// Writes.
    pub write: DirStats,
    /// Wall time from start to the last job's end.
    pub elapsed: Duration,
    /// Ops that failed (not counted in `ios`).
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// CPU time the process used during the run (user + system).
    pub cpu: Duration,
}

/// User + system CPU time of the whole process so far (every thread,
/// io-wq workers included: they are threads of the process).
pub fn process_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(ru) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
            };
            tv(ru.user_time()) + tv(ru.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// Counters the progress line reads while a run goes on.
#[derive(Default)]
pub struct Progress {
    /// Completed reads.
    pub read_ios: AtomicU64,
    /// Completed writes.
    pub write_ios: AtomicU64,
    /// Bytes moved.
    pub bytes: AtomicU64,
}

/// What every queue slot of a job shares: offsets, the byte budget, the
/// stop time.
struct JobCtx {
    spec: JobSpec,
    blocks: u64,
    seq: AtomicU64,
    /// Ops left in a size-bounded run (negative once exhausted).
    budget: AtomicI64,
    stop_at: Option<Instant>,
    /// Whether any op was claimed: a time-bounded job does at least one,
    /// even when its setup (threads, rings, files) outlasted its runtime on a
    /// loaded machine, so every engine reports a measurement.
    started: AtomicBool,
    progress: Arc<Progress>,
    failed: AtomicBool,
}

impl JobCtx {
    fn new(spec: &JobSpec, file_size: u64, progress: Arc<Progress>) -> JobCtx {
        let blocks = spec.blocks(file_size).max(1);
        let per_job = spec.size.unwrap_or(file_size) / spec.bs as u64;
        JobCtx {
            spec: spec.clone(),
            blocks,
            seq: AtomicU64::new(0),
            budget: AtomicI64::new(per_job.max(1) as i64),
            stop_at: spec.runtime.map(|r| Instant::now() + r),
            started: AtomicBool::new(false),
            progress,
            failed: AtomicBool::new(false),
        }
    }

    /// Claim the next op, or `None` when the job is done.
    fn claim(&self, rng: &mut SmallRng) -> Option<(u64, bool)> {
        if self.failed.load(Ordering::Relaxed) {
            return None;
        }
        match self.stop_at {
            Some(at) if Instant::now() >= at && self.started.swap(true, Ordering::Relaxed) => {
                return None
            }
            Some(_) => self.started.store(true, Ordering::Relaxed),
            None if self.budget.fetch_sub(1, Ordering::Relaxed) <= 0 => return None,
            None => {}
        }
        let block = if self.spec.rw.random() {
            rng.random_range(0..self.blocks)
        } else {
            self.seq.fetch_add(1, Ordering::Relaxed) % self.blocks
        };
        let read_pct = self.spec.rw.read_percent(self.spec.rwmixread);
        let is_read = match read_pct {
            100 => true,
            0 => false,
            p => rng.random_range(0..100u8) < p,
        };
        Some((block * self.spec.bs as u64, is_read))
    }

    fn done(&self, stats: &mut (DirStats, DirStats), is_read: bool, lat: Duration, bytes: usize) {
        let d = if is_read { &mut stats.0 } else { &mut stats.1 };
        d.lat.record(lat);
        d.ios += 1;
        d.bytes += bytes as u64;
        let c = if is_read {
            &self.progress.read_ios
        } else {
            &self.progress.write_ios
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.progress
            .bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// A buffer of one block, aligned for O_DIRECT, filled with a pattern so
/// writes do not write zeros (which some devices short-cut).
fn block_buf(bs: usize, seed: u64) -> Result<AlignedBuf, BenchError> {
    let mut b = AlignedBuf::new(bs, DIRECT_ALIGN).ok_or(BenchError::InvalidOption {
        option: "bs",
        reason: "cannot allocate an aligned buffer of that size".into(),
    })?;
    b.set_len(bs);
    let mut rng = SmallRng::seed_from_u64(seed);
    rng.fill(b.as_mut_slice());
    Ok(b)
}

fn open_target(spec: &JobSpec) -> Result<File, BenchError> {
    let writes = spec.rw.read_percent(spec.rwmixread) < 100;
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(writes);
    if spec.direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(&spec.filename).map_err(|e| BenchError::Io {
        what: format!(
            "open {}{}",
            spec.filename.display(),
            if spec.direct { " with O_DIRECT" } else { "" }
        ),
        source: e,
    })
}

/// Make sure the target exists with at least `size` bytes of real data
/// (reads of holes never reach the device). Returns the usable size.
pub fn prepare_file(spec: &JobSpec) -> Result<u64, BenchError> {
    let path: &Path = &spec.filename;
    let io = |what: String| move |e| BenchError::Io { what, source: e };
    let existing = match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_file() => Some(m.len()),
        Ok(_) => {
            // A block device: its size is where a seek to the end lands.
            use std::io::Seek;
            let mut f = File::open(path).map_err(io(format!("open {}", path.display())))?;
            Some(
                f.seek(std::io::SeekFrom::End(0))
                    .map_err(io(format!("size of {}", path.display())))?,
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(format!("stat {}", path.display()))(e)),
    };
    let want = match (existing, spec.size) {
        (None, None) => {
            return Err(BenchError::MissingFile {
                path: path.to_path_buf(),
            })
        }
        (Some(have), None) => return usable(spec, have),
        (Some(have), Some(want)) if have >= want => return usable(spec, have),
        (_, Some(want)) => want,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(format!("create {}", path.display())))?;
    let chunk = 1 << 20;
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let mut buf = vec![0u8; chunk];
    let mut off = existing.unwrap_or(0);
    while off < want {
        rng.fill(&mut buf[..]);
        let n = ((want - off) as usize).min(chunk);
        f.write_all_at(&buf[..n], off)
            .map_err(io(format!("lay out {}", path.display())))?;
        off += n as u64;
    }
    f.sync_all()
        .map_err(io(format!("fsync {}", path.display())))?;
    usable(spec, want)
}

fn usable(spec: &JobSpec, size: u64) -> Result<u64, BenchError> {
    if size < spec.bs as u64 {
        return Err(BenchError::InvalidOption {
            option: "filename",
            reason: format!("{} is smaller than one block", spec.filename.display()),
        });
    }
    Ok(size)
}

/// Run `spec` on `engine` over a file of `file_size` bytes.
pub fn run(
    engine: Engine,
    spec: &JobSpec,
    file_size: u64,
    progress: Arc<Progress>,
) -> Result<RunResult, BenchError> {
    spec.validate()?;
    let ctxs: Vec<Arc<JobCtx>> = (0..spec.numjobs)
        .map(|_| Arc::new(JobCtx::new(spec, file_size, progress.clone())))
        .collect();
    let started = Instant::now();
    let cpu0 = process_cpu();
    let per_slot = match engine {
        Engine::Uring | Engine::UringNoDeadline | Engine::UringThread => run_uring(engine, &ctxs)?,
        Engine::Psync => run_psync(&ctxs)?,
        Engine::TokioFs => run_tokio_fs(&ctxs)?,
    };
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu0);
    let mut out = RunResult {
        engine,
        read: DirStats::default(),
        write: DirStats::default(),
        elapsed,
        errors: 0,
        first_error: None,
        cpu,
    };
    for s in per_slot {
        out.read.merge(&s.stats.0);
        out.write.merge(&s.stats.1);
        out.errors += s.errors;
        if out.first_error.is_none() {
            out.first_error = s.first_error;
        }
    }
    Ok(out)
}

struct SlotResult {
    stats: (DirStats, DirStats),
    errors: u64,
    first_error: Option<String>,
}

impl SlotResult {
    fn new() -> SlotResult {
        SlotResult {
            stats: (DirStats::default(), DirStats::default()),
            errors: 0,
            first_error: None,
        }
    }

    fn fail(&mut self, ctx: &JobCtx, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
        // Stop the job at the first error: a bench that keeps going on
        // errors measures the error path.
        ctx.failed.store(true, Ordering::Relaxed);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Io {
            what: "start the tokio runtime".into(),
            source: e,
        })
}

fn run_uring(engine: Engine, ctxs: &[Arc<JobCtx>]) -> Result<Vec<SlotResult>, BenchError> {
    let mode = if engine == Engine::UringNoDeadline {
        KernelDeadline::CallerOnly
    } else {
        KernelDeadline::Enforced
    };
    let rt = runtime()?;
    rt.block_on(async {
        let mut jobs = Vec::new();
        for (j, ctx) in ctxs.iter().enumerate() {
            let qd = ctx.spec.iodepth;
            // One ring per job, like one ring per disk in a storage node.
            // One more permit than the depth, so the zombie cap (which must
            // be reachable, below max_in_flight) can be the depth itself.
            let cfg = DriverConfig {
                max_in_flight: qd + 1,
                zombie_cap: qd,
                ring_entries: ((2 * qd + 16) as u32).next_power_of_two(),
                fast_path: engine != Engine::UringThread,
                ..DriverConfig::default()
            };
            let driver =
                Driver::start(&format!("bench{j}"), &cfg).map_err(|e| BenchError::Engine {
                    engine: engine.as_str(),
                    reason: e.to_string(),
                })?;
            let file = disk_io_driver::File::adopt(&driver, OwnedFd::from(open_target(&ctx.spec)?));
            let mut bufs = Vec::with_capacity(qd);
            for i in 0..qd {
                bufs.push(block_buf(ctx.spec.bs, (j * 10_000 + i) as u64)?);
            }
            let ctx = ctx.clone();
            jobs.push(tokio::spawn(uring_job(
                driver, file, ctx, bufs, mode, j as u64,
            )));
        }
        let mut out = Vec::new();
        for j in jobs {
            out.push(j.await.map_err(|e| BenchError::Engine {
                engine: engine.as_str(),
                reason: e.to_string(),
            })?);
        }
        Ok(out)
    })
}

async fn uring_job(
    driver: Driver,
    file: disk_io_driver::File,
    ctx: Arc<JobCtx>,
    mut bufs: Vec<AlignedBuf>,
    mode: KernelDeadline,
    seed: u64,
) -> SlotResult {
    let mut res = SlotResult::new();
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xdead_beef);
    let bs = ctx.spec.bs;
    let deadline_budget = ctx.spec.op_deadline;
    let mut inflight = FuturesUnordered::new();
    loop {
        while inflight.len() < ctx.spec.iodepth {
            let Some(mut buf) = bufs.pop() else { break };
            let Some((offset, is_read)) = ctx.claim(&mut rng) else {
                bufs.push(buf);
                break;
            };
            buf.set_len(bs);
            let (driver, file) = (driver.clone(), file.clone());
            inflight.push(async move {
                let t0 = Instant::now();
                let deadline = Deadline::after(deadline_budget);
                let r = if is_read {
                    driver
                        .read_at(&file, IoBuf::Aligned(buf), bs, offset, deadline, mode)
                        .await
                        .map(|b| {
                            let n = b.len();
                            (b, n)
                        })
                } else {
                    driver
                        .write_at(&file, IoBuf::Aligned(buf), offset, deadline, mode)
                        .await
                };
                (r, t0.elapsed(), is_read)
            });
        }
        let Some((r, lat, is_read)) = inflight.next().await else {
            break;
        };
        match r {
            Ok((IoBuf::Aligned(b), n)) => {
                ctx.done(&mut res.stats, is_read, lat, n);
                bufs.push(b);
            }
            Ok((IoBuf::Vec(_), _)) => res.fail(&ctx, "driver returned another buffer".into()),
            Err(e) => {
                res.fail(&ctx, e.to_string());
                // The buffer went down with the op; replace it.
                match block_buf(bs, seed) {
                    Ok(b) => bufs.push(b),
                    Err(e) => res.fail(&ctx, e.to_string()),
                }
            }
        }
    }
    res
}

/// One positional read or write of the whole buffer.
fn pio(file: &File, buf: &mut AlignedBuf, offset: u64, is_read: bool) -> std::io::Result<usize> {
    if is_read {
        file.read_at(buf.as_mut_slice(), offset)
    } else {
        file.write_at(buf.as_slice(), offset)
    }
}

fn run_psync(ctxs: &[Arc<JobCtx>]) -> Result<Vec<SlotResult>, BenchError> {
    let mut threads = Vec::new();
    for (j, ctx) in ctxs.iter().enumerate() {
        let file = Arc::new(open_target(&ctx.spec)?);
        for slot in 0..ctx.spec.iodepth {
            let mut buf = block_buf(ctx.spec.bs, (j * 10_000 + slot) as u64)?;
            let (ctx, file) = (ctx.clone(), file.clone());
            let seed = (j * 10_000 + slot) as u64;
            let h = std::thread::Builder::new()
                .name(format!("psync{j}.{slot}"))
                .spawn(move || {
                    let mut res = SlotResult::new();
                    let mut rng = SmallRng::seed_from_u64(seed);
                    while let Some((offset, is_read)) = ctx.claim(&mut rng) {
                        buf.set_len(ctx.spec.bs);
                        let t0 = Instant::now();
                        match pio(&file, &mut buf, offset, is_read) {
                            Ok(n) => ctx.done(&mut res.stats, is_read, t0.elapsed(), n),
                            Err(e) => res.fail(&ctx, e.to_string()),
                        }
                    }
                    res
                })
                .map_err(|e| BenchError::Io {
                    what: "spawn a psync thread".into(),
                    source: e,
                })?;
            threads.push(h);
        }
    }
    Ok(threads
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| {
                let mut r = SlotResult::new();
                r.errors = 1;
                r.first_error = Some("a psync thread panicked".into());
                r
            })
        })
        .collect())
}

fn run_tokio_fs(ctxs: &[Arc<JobCtx>]) -> Result<Vec<SlotResult>, BenchError> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (j, ctx) in ctxs.iter().enumerate() {
            let file = Arc::new(open_target(&ctx.spec)?);
            for slot in 0..ctx.spec.iodepth {
                let mut buf = Some(block_buf(ctx.spec.bs, (j * 10_000 + slot) as u64)?);
                let (ctx, file) = (ctx.clone(), file.clone());
                let seed = (j * 10_000 + slot) as u64;
                tasks.push(tokio::spawn(async move {
                    let mut res = SlotResult::new();
                    let mut rng = SmallRng::seed_from_u64(seed);
                    while let Some((offset, is_read)) = ctx.claim(&mut rng) {
                        let Some(mut b) = buf.take() else { break };
                        b.set_len(ctx.spec.bs);
                        let f = file.clone();
                        let t0 = Instant::now();
                        let r = tokio::task::spawn_blocking(move || {
                            let r = pio(&f, &mut b, offset, is_read);
                            (b, r)
                        })
                        .await;
                        match r {
                            Ok((b, Ok(n))) => {
                                ctx.done(&mut res.stats, is_read, t0.elapsed(), n);
                                buf = Some(b);
                            }
                            Ok((b, Err(e))) => {
                                res.fail(&ctx, e.to_string());
                                buf = Some(b);
                            }
                            Err(e) => res.fail(&ctx, e.to_string()),
                        }
                    }
                    res
                }));
            }
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.map_err(|e| BenchError::Engine {
                engine: "tokio-fs",
                reason: e.to_string(),
            })?);
        }
        Ok(out)
    })
}
