//! The client of the mutual-exclusion tests, shared by this crate's
//! in-process chaos test (`tests/locks.rs`) and the node's power-off test
//! (`node/tests/lock_cluster.rs`, which includes this file by path): take
//! the write lock on `counter`, read, think a seeded random while, commit
//! `read + 1` only while the lease still holds, release; until `stop_at`.

use std::time::{Duration, Instant};

use disk_io_api::{Deadline, LockKind};
use disk_io_erasure::QuorumLock;
use disk_io_harness::Ledger;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How a client paces itself.
pub struct Pace {
    /// Deadline of each lock attempt series.
    pub lock_within: Duration,
    /// Longest think time inside a critical section.
    pub think_max: Duration,
    /// Deadline of each release.
    pub release_within: Duration,
}

/// Runs one client; returns how many acquisitions it attempted.
pub async fn counter_client(
    l: QuorumLock,
    ledger: &Ledger,
    name: &str,
    seed: u64,
    stop_at: Instant,
    pace: Pace,
) -> u64 {
    let mut think = StdRng::seed_from_u64(seed ^ name.bytes().fold(0u64, |h, b| h * 31 + b as u64));
    let mut attempts = 0u64;
    while Instant::now() < stop_at {
        attempts += 1;
        let Ok(g) = l
            .lock(
                "counter",
                LockKind::Write,
                Deadline::after(pace.lock_within),
            )
            .await
        else {
            continue;
        };
        let start = Instant::now();
        // Read, think, write: the window another holder would hit.
        let v = ledger.read();
        let ms = think.random_range(1..pace.think_max.as_millis().max(2) as u64);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        // Commit only while the lease is valid (a fenced write).
        ledger.commit(v, start, g.uid(), name, || g.is_held());
        g.release(Deadline::after(pace.release_within)).await;
    }
    attempts
}

/// Take and release `n` write locks on fresh resources (`{prefix}{i}`),
/// each within `within`; the time each acquisition took. Panics, naming
/// the attempt, if one fails.
pub async fn acquire_latencies(
    l: &QuorumLock,
    prefix: &str,
    n: usize,
    within: Duration,
) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        let g = l
            .lock(
                &format!("{prefix}{i}"),
                LockKind::Write,
                Deadline::after(within),
            )
            .await
            .unwrap_or_else(|e| panic!("lock {prefix}{i}: {e}"));
        lat.push(t0.elapsed());
        g.release(Deadline::after(within)).await;
    }
    lat
}

/// The seed of a chaos run: `LOCK_CHAOS_SEED` when set (to replay a
/// failure), else the clock; printed either way.
pub fn chaos_seed() -> u64 {
    let seed = std::env::var("LOCK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("chaos seed {seed} (rerun with LOCK_CHAOS_SEED={seed})");
    seed
}
