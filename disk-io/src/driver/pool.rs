//! A small, bounded pool of threads for the calls io_uring has no opcode
//! for (getdents for `list_dir`, statfs for `disk_info`).
//!
//! Same contract as ring ops: the caller waits at most until its deadline,
//! the in-flight permit stays with the job until the job really ends, and a
//! job whose caller left while it ran counts as a zombie. A job still queued
//! when its caller leaves is skipped. The number of threads is fixed, so a
//! hung device can pin at most that many.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::DriverStats;
use crate::deadline::Deadline;
use crate::error::DiskError;
use crate::op::OpClass;

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
/// Caller left before the job started: skip it.
const ABANDONED: u8 = 3;
/// Caller left while the job ran: a zombie until it ends.
const ZOMBIE: u8 = 4;

struct Job {
    state: Arc<AtomicU8>,
    deadline: Deadline,
    _permit: OwnedSemaphorePermit,
    work: Box<dyn FnOnce() + Send>,
}

pub(crate) struct BlockingPool {
    tx: Sender<Job>,
    stats: Arc<DriverStats>,
}

impl BlockingPool {
    pub(crate) fn start(
        name: &str,
        threads: usize,
        queue: usize,
        stats: Arc<DriverStats>,
    ) -> std::io::Result<BlockingPool> {
        // The queue holds at most one job per in-flight permit.
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue);
        for i in 0..threads {
            let rx: Receiver<Job> = rx.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name(format!("disk-io-blk{i}-{}", super::short(name)))
                .spawn(move || worker(rx, stats))?;
        }
        Ok(BlockingPool { tx, stats })
    }

    pub(crate) async fn run<T, F>(
        &self,
        class: OpClass,
        deadline: Deadline,
        started: Instant,
        permit: OwnedSemaphorePermit,
        f: F,
    ) -> Result<T, DiskError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job = Job {
            state: state.clone(),
            deadline,
            _permit: permit,
            work: Box::new(move || {
                let _ = tx.send(f());
            }),
        };
        if self.tx.try_send(job).is_err() {
            return Err(DiskError::ShutDown);
        }
        match tokio::time::timeout_at(deadline.tokio(), rx).await {
            Ok(Ok(v)) => Ok(v),
            // The job was skipped (its deadline passed in the queue) or the
            // pool is gone.
            Ok(Err(_)) if deadline.is_expired() => Err(DiskError::DeadlineExceeded {
                op: class,
                waited: started.elapsed(),
            }),
            Ok(Err(_)) => Err(DiskError::ShutDown),
            Err(_) => {
                // Leave: a queued job is skipped, a running one is a zombie.
                if state
                    .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                    && state
                        .compare_exchange(RUNNING, ZOMBIE, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    self.stats.zombies.fetch_add(1, Ordering::Relaxed);
                }
                Err(DiskError::DeadlineExceeded {
                    op: class,
                    waited: started.elapsed(),
                })
            }
        }
    }
}

fn worker(rx: Receiver<Job>, stats: Arc<DriverStats>) {
    // Ends when the pool (its Sender) is dropped and the queue is drained.
    for job in rx {
        if job.deadline.is_expired()
            || job
                .state
                .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            continue; // dropping the job releases its permit
        }
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        (job.work)();
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if job
            .state
            .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // The caller left while we ran.
            job.state.store(DONE, Ordering::Release);
            stats.zombies.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
