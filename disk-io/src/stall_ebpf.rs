//! [`StallSource`] backed by the block-request probes (feature
//! `ebpf-stall`).
//!
//! The probe loader (`probe-loader run`) pins the probes' maps under bpffs.
//! This module reads them through `probes-ebpf-reader`, the one reader the
//! loader itself uses: the pinned in-flight table (request → issue time,
//! device, op, bytes), scanned with a bound, and the loader's liveness,
//! judged by the same rule `probe-loader status` applies. For each disk it
//! watches the whole block device its directory lives on: `stat(dir)` →
//! `st_dev` major:minor → `/sys/dev/block/MAJ:MIN` → the parent disk if that
//! is a partition (loop devices are whole disks).
//!
//! # Threshold semantics
//!
//! A disk's source reports a [`Stall`] while **any request outstanding on
//! its whole block device is older than [`EbpfStallConfig::threshold`]**,
//! measured from the request's issue to the device driver
//! (`block_rq_issue`) to now. It computes that age itself from the table,
//! so its threshold is independent of the loader's `--stall-threshold`.
//! The health monitor polls the source every
//! [`HealthConfig::tick`](crate::HealthConfig::tick) and scans are shared for
//! [`EbpfStallConfig::cache_ttl`], so a request that hangs at `t` turns the
//! disk Faulty by `t + threshold + cache_ttl + tick` — well before a caller
//! with a multi-second deadline gives up. Choose the threshold above the
//! device's worst healthy latency (see the p99.9 of `probe-loader status`)
//! and below the op deadlines. Every request on the device counts, whoever
//! issued it; disks sharing a device (partitions of one disk) stall
//! together.
//!
//! # No loader, no stall
//!
//! The maps are believed only while the liveness rule says the loader runs
//! ([`probes_ebpf_reader::judge`]: it owns the pin directory and its
//! heartbeat is fresh). A loader that died leaves pins whose in-flight
//! entries never complete; a paused one stops updating them. Then the
//! source reports no stall and logs a warning at most every
//! [`EbpfStallConfig::warn_interval`]: a missing probe must not take disks
//! out. The pins are reopened on the next poll, so a restarted loader is
//! picked up.
//!
//! # Resolving a directory to its device
//!
//! `stat` blocks on a hung file system, so it runs on one resolver thread
//! per monitor, fed through a queue of [`EbpfStallConfig::resolve_queue`]
//! requests; a caller waits at most [`EbpfStallConfig::resolve_timeout`].
//! However many resolves a hung path sees, there is one thread, and a full
//! queue is refused at once ([`EbpfStallError::ResolverBusy`]).

use std::collections::HashMap as StdHashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use probes_ebpf_reader::common::sysfs::{self, BlockDevice, SysfsError};
use probes_ebpf_reader::common::DEFAULT_PIN_DIR;
use probes_ebpf_reader::{monotonic_ns, Liveness, LivenessConfig, PinnedMaps, ReaderError};

use crate::stall::{Stall, StallSource};

/// Configuration of the eBPF stall source.
#[derive(Clone, Debug)]
pub struct EbpfStallConfig {
    /// The loader's pin directory (`probe-loader run --pin-dir`).
    pub pin_dir: PathBuf,
    /// A disk is stalled while a request on its device is older than this.
    pub threshold: Duration,
    /// One scan of the in-flight table serves every disk for this long.
    pub cache_ttl: Duration,
    /// Most entries one scan visits (the table's size is the loader's
    /// `--inflight-entries`; deletions during a walk restart it, hence the
    /// bound).
    pub max_scan_entries: usize,
    /// The liveness rule's parameters (the same defaults `probe-loader
    /// status` uses).
    pub liveness: LivenessConfig,
    /// Bound for `stat` of a disk's directory when mapping it to its device.
    pub resolve_timeout: Duration,
    /// Resolve requests queued for the resolver thread at most (a hung
    /// `stat` holds the thread; later requests wait here or are refused).
    pub resolve_queue: usize,
    /// Least time between two "no loader" warnings.
    pub warn_interval: Duration,
}

impl Default for EbpfStallConfig {
    fn default() -> Self {
        EbpfStallConfig {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            threshold: Duration::from_secs(1),
            cache_ttl: Duration::from_millis(20),
            max_scan_entries: 32_768,
            liveness: LivenessConfig::default(),
            resolve_timeout: Duration::from_secs(2),
            resolve_queue: 16,
            warn_interval: Duration::from_secs(30),
        }
    }
}

/// Why the eBPF stall source cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum EbpfStallError {
    /// The pins cannot be opened or read (no loader has pinned there:
    /// [`ReaderError::NotRunning`]; another layout:
    /// [`ReaderError::AbiMismatch`]; a map error).
    #[error(transparent)]
    Reader(#[from] ReaderError),
    /// The maps belong to no running loader.
    #[error("the probe loader (pid {pid}) that pinned the maps is not running ({liveness:?}); its maps are not believed")]
    NotLive {
        /// The liveness rule's verdict.
        liveness: Liveness,
        /// The pid in the loader's heartbeat record.
        pid: u32,
    },
    /// The disk's directory is not on a block device we can find.
    #[error(transparent)]
    Device(#[from] SysfsError),
    /// `stat` of the disk's directory did not answer in time.
    #[error("stat of {path} did not answer within {timeout:?}")]
    ResolveTimeout {
        /// The directory.
        path: PathBuf,
        /// The bound.
        timeout: Duration,
    },
    /// The resolver's queue is full (its thread is stuck in a `stat`).
    #[error(
        "cannot resolve {path}: {queued} resolves already wait for a stat that does not answer"
    )]
    ResolverBusy {
        /// The directory.
        path: PathBuf,
        /// The queue bound.
        queued: usize,
    },
    /// The resolver thread could not be started.
    #[error("cannot start the resolver thread: {0}")]
    ResolverSpawn(#[source] std::io::Error),
}

/// Oldest in-flight request per device, from one scan.
#[derive(Clone, Debug, Default)]
struct Scan {
    at: Option<Instant>,
    /// Device (kernel encoding) → age of its oldest request.
    oldest: StdHashMap<u32, Duration>,
}

#[derive(Default)]
struct State {
    pins: Option<PinnedMaps>,
    scan: Scan,
    last_warn: Option<Instant>,
}

type Resolved = Result<BlockDevice, SysfsError>;

/// One resolve request for the resolver thread.
struct Job {
    path: PathBuf,
    /// The caller has stopped waiting by then: skip the `stat`.
    give_up_at: Instant,
    reply: SyncSender<Resolved>,
}

/// The one resolver thread of a monitor (started on first use; it ends
/// when the monitor is dropped, after any `stat` it is stuck in returns).
#[derive(Default)]
struct Resolver {
    jobs: Mutex<Option<SyncSender<Job>>>,
}

impl Resolver {
    fn sender(&self, queue: usize) -> Result<SyncSender<Job>, EbpfStallError> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = jobs.as_ref() {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::sync_channel(queue);
        std::thread::Builder::new()
            .name("disk-io-resolve".into())
            .spawn(move || serve_resolves(&rx))
            .map_err(EbpfStallError::ResolverSpawn)?;
        *jobs = Some(tx.clone());
        Ok(tx)
    }

    fn forget(&self) {
        *self.jobs.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// `sysfs::disk_of_path(dir)` on the resolver thread, waiting at most
    /// `timeout`.
    fn resolve(
        &self,
        dir: &Path,
        timeout: Duration,
        queue: usize,
    ) -> Result<BlockDevice, EbpfStallError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            path: dir.to_path_buf(),
            give_up_at: Instant::now() + timeout,
            reply,
        };
        match self.sender(queue)?.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(EbpfStallError::ResolverBusy {
                    path: dir.to_path_buf(),
                    queued: queue,
                })
            }
            Err(TrySendError::Disconnected(job)) => {
                // The thread is gone (it cannot panic, but be sure): start
                // a new one.
                self.forget();
                self.sender(queue)?
                    .try_send(job)
                    .map_err(|_| EbpfStallError::ResolverBusy {
                        path: dir.to_path_buf(),
                        queued: queue,
                    })?;
            }
        }
        match answer.recv_timeout(timeout) {
            Ok(r) => Ok(r?),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                Err(EbpfStallError::ResolveTimeout {
                    path: dir.to_path_buf(),
                    timeout,
                })
            }
        }
    }
}

fn serve_resolves(jobs: &Receiver<Job>) {
    for job in jobs {
        if Instant::now() >= job.give_up_at {
            continue;
        }
        // The caller may have left meanwhile; nothing to do then.
        let _ = job.reply.send(sysfs::disk_of_path(&job.path));
    }
}

/// Reads the pinned in-flight table for any number of disks; one per
/// process is enough (share it with `Arc`). Scans are cached for
/// [`EbpfStallConfig::cache_ttl`], so many disks polling each tick cost one
/// scan.
pub struct EbpfStallMonitor {
    cfg: EbpfStallConfig,
    state: Mutex<State>,
    resolver: Resolver,
}

impl std::fmt::Debug for EbpfStallMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfStallMonitor")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl EbpfStallMonitor {
    /// A monitor reading the loader's maps under `cfg.pin_dir`. It does not
    /// need the loader yet: maps are opened on first use and reopened after
    /// the loader restarts.
    pub fn new(cfg: EbpfStallConfig) -> Arc<EbpfStallMonitor> {
        Arc::new(EbpfStallMonitor {
            cfg,
            state: Mutex::new(State::default()),
            resolver: Resolver::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EbpfStallConfig {
        &self.cfg
    }

    /// A stall source for the disk rooted at `dir` (its whole block device
    /// is found with a bounded `stat` on the monitor's resolver thread).
    pub fn source_for_dir(self: &Arc<Self>, dir: &Path) -> Result<EbpfStallSource, EbpfStallError> {
        let device =
            self.resolver
                .resolve(dir, self.cfg.resolve_timeout, self.cfg.resolve_queue.max(1))?;
        Ok(self.source_for_device(device))
    }

    /// A stall source for a known device.
    pub fn source_for_device(self: &Arc<Self>, device: BlockDevice) -> EbpfStallSource {
        EbpfStallSource {
            monitor: Arc::clone(self),
            device,
        }
    }

    /// Age of the oldest request in flight on `device` now (from a scan at
    /// most `cache_ttl` old), `None` if it has none.
    pub fn oldest_in_flight(
        &self,
        device: &BlockDevice,
    ) -> Result<Option<Duration>, EbpfStallError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = st
            .scan
            .at
            .is_some_and(|at| at.elapsed() < self.cfg.cache_ttl);
        if !fresh {
            if let Err(e) = self.rescan(&mut st) {
                // Drop the handles: the next call reopens the pins (a
                // restarted loader pins new maps).
                st.pins = None;
                st.scan = Scan::default();
                return Err(e);
            }
        }
        Ok(st.scan.oldest.get(&device.kernel_dev()).copied())
    }

    fn rescan(&self, st: &mut State) -> Result<(), EbpfStallError> {
        let pins = match st.pins.take() {
            Some(p) => p,
            None => PinnedMaps::open(&self.cfg.pin_dir)?,
        };
        let now = monotonic_ns();
        let check = pins.check(now, &self.cfg.liveness)?;
        if !check.liveness.is_live() {
            return Err(EbpfStallError::NotLive {
                liveness: check.liveness,
                pid: check.state.pid,
            });
        }
        let scan = pins.maps().scan_inflight(now, self.cfg.max_scan_entries);
        st.scan = Scan {
            at: Some(Instant::now()),
            oldest: scan
                .devices
                .iter()
                .map(|(&d, i)| (d, i.oldest_age))
                .collect(),
        };
        st.pins = Some(pins);
        Ok(())
    }

    fn warn(&self, device: &str, err: &EbpfStallError) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st
            .last_warn
            .is_some_and(|t| t.elapsed() < self.cfg.warn_interval)
        {
            return;
        }
        st.last_warn = Some(Instant::now());
        tracing::warn!(device, error = %err, "eBPF stall source unavailable; not reporting stalls");
    }
}

/// The stall source of one disk: its whole block device, read through a
/// shared [`EbpfStallMonitor`].
#[derive(Debug, Clone)]
pub struct EbpfStallSource {
    monitor: Arc<EbpfStallMonitor>,
    device: BlockDevice,
}

impl EbpfStallSource {
    /// The block device watched.
    pub fn device(&self) -> &BlockDevice {
        &self.device
    }

    /// Age of the oldest request in flight on the device, or why it cannot
    /// be read.
    pub fn oldest_in_flight(&self) -> Result<Option<Duration>, EbpfStallError> {
        self.monitor.oldest_in_flight(&self.device)
    }
}

impl StallSource for EbpfStallSource {
    fn check(&self) -> Option<Stall> {
        match self.oldest_in_flight() {
            Ok(Some(age)) if age > self.monitor.cfg.threshold => Some(Stall {
                device: self.device.name.clone(),
                oldest_age: age,
            }),
            Ok(_) => None,
            Err(e) => {
                self.monitor.warn(&self.device.name, &e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_loader_means_no_stall_and_an_error_that_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let monitor = EbpfStallMonitor::new(EbpfStallConfig {
            pin_dir: dir.path().join("none"),
            ..EbpfStallConfig::default()
        });
        let src = monitor.source_for_device(BlockDevice {
            name: "loop9".into(),
            major: 7,
            minor: 9,
        });
        assert!(src.check().is_none());
        assert!(matches!(
            src.oldest_in_flight(),
            Err(EbpfStallError::Reader(ReaderError::NotRunning { .. }))
        ));
    }

    #[test]
    fn a_directory_off_any_block_device_is_refused() {
        let monitor = EbpfStallMonitor::new(EbpfStallConfig::default());
        match monitor.source_for_dir(Path::new("/dev")) {
            Err(EbpfStallError::Device(SysfsError::NotBlockDevice { .. })) => {}
            other => panic!("expected NotBlockDevice, got {other:?}"),
        }
    }
}
