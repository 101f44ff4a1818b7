//! [`QuorumLock`]: read and write locks over the lockers of every node,
//! held as leases.
//!
//! * **Acquire** asks every locker at once, each under its own short
//!   attempt deadline (`LockConfig::attempt_timeout`, within the caller's),
//!   and succeeds when a quorum granted: write `n/2 + 1`, read `n − n/2`
//!   (so a read and a write quorum always share a locker, and two write
//!   quorums do). An attempt that cannot reach quorum any more (too many
//!   refusals or missing votes) stops early; its partial grants are
//!   released; the next attempt comes after a backoff with jitter, until the
//!   caller's deadline, and then the error says how many lockers granted,
//!   refused and did not answer ([`LockError::Timeout`]).
//! * **Hold**: the grant is a lease of `ttl`. The [`LockGuard`] refreshes it
//!   on every locker each `refresh_interval` (a third of the TTL by
//!   default); when a refresh round keeps fewer than a quorum, or its
//!   validity runs out before a round succeeds, the guard reports the lock
//!   lost ([`LockGuard::lost`]) and [`LockGuard::is_held`] turns false.
//! * **Validity** is judged on the holder's clock, conservatively: from the
//!   start of the attempt (or refresh round) that a quorum granted, for
//!   `ttl × validity_fraction`. Every locker started its lease after that
//!   instant, so while the guard says it holds, a quorum of lockers still
//!   holds its lease (up to clock-rate drift, which the fraction covers).
//!
//! **Invariant:** an unavailable locker (deadline, unreachable, breaker
//! open, busy) is a missing vote, never a refusal, and never waited for
//! past the attempt deadline: a dead node slows no acquisition beyond one
//! attempt, and a dead owner's leases vanish after the TTL.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use disk_io_api::{Deadline, DiskError, LockKind, LockRequest, Locker};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use tokio::sync::watch;

/// Metric: lock acquisition time, by kind and outcome (`ok`, `timeout`).
pub const LOCK_ACQUIRE_SECONDS: &str = "diskio_lock_acquire_seconds";
/// Metric: acquisitions that ran out of time, by kind and resource class.
pub const LOCK_TIMEOUTS: &str = "diskio_lock_timeouts_total";
/// Metric: held locks that lost their quorum.
pub const LOCK_LOST: &str = "diskio_lock_lost_total";

/// Timing of quorum locks.
#[derive(Clone, Debug, PartialEq)]
pub struct LockConfig {
    /// Lease length on every locker.
    pub ttl: Duration,
    /// How often a holder refreshes (a third of `ttl` by default).
    pub refresh_interval: Duration,
    /// Deadline of one acquire, refresh or release call to one locker.
    pub attempt_timeout: Duration,
    /// First backoff after a failed attempt; doubles up to `retry_max`,
    /// each wait drawn uniformly from [backoff/2, backoff].
    pub retry_min: Duration,
    /// Longest backoff.
    pub retry_max: Duration,
    /// Share of the TTL, counted from an attempt's start, during which the
    /// holder counts the lease valid (covers clock-rate drift between
    /// nodes).
    pub validity_fraction: f64,
}

impl Default for LockConfig {
    fn default() -> Self {
        // RustFS: 30 s TTL refreshed every 10 s, 1 s attempts; MinIO dsync:
        // 1 s attempts, refresh every 10 s.
        LockConfig {
            ttl: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(1),
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_millis(500),
            validity_fraction: 0.9,
        }
    }
}

impl LockConfig {
    /// Why this configuration cannot work, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.ttl.is_zero() || self.attempt_timeout.is_zero() || self.retry_min.is_zero() {
            return Err("lock: ttl, attempt_timeout and retry_min must be > 0".into());
        }
        if self.refresh_interval.is_zero() || self.refresh_interval * 2 > self.ttl {
            return Err("lock: refresh_interval must be in (0, ttl/2]".into());
        }
        if self.attempt_timeout >= self.refresh_interval {
            return Err("lock: attempt_timeout must be below refresh_interval".into());
        }
        // A round (started every refresh_interval, lasting up to an
        // attempt) must be able to finish within the validity it extends.
        if self.refresh_interval + self.attempt_timeout
            >= self.ttl.mul_f64(self.validity_fraction.clamp(0.0, 1.0))
        {
            return Err(
                "lock: refresh_interval + attempt_timeout must be below ttl * validity_fraction"
                    .into(),
            );
        }
        if self.retry_max < self.retry_min {
            return Err("lock: retry_max must be >= retry_min".into());
        }
        if !(self.validity_fraction > 0.0 && self.validity_fraction <= 1.0) {
            return Err("lock: validity_fraction must be in (0, 1]".into());
        }
        Ok(())
    }

    fn validity(&self) -> Duration {
        self.ttl.mul_f64(self.validity_fraction)
    }
}

/// Why a lock was not taken.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockError {
    /// The caller's deadline passed before any attempt reached quorum. The
    /// counts are those of the last attempt.
    #[error(
        "{kind:?} lock on {resource:?} timed out after {attempts} attempts: \
         needed {needed}, granted {granted}, refused {refused}, unavailable {unavailable}"
    )]
    Timeout {
        /// What was to be locked.
        resource: String,
        /// Read or write.
        kind: LockKind,
        /// Grants a quorum needs.
        needed: usize,
        /// Lockers that granted in the last attempt.
        granted: usize,
        /// Lockers that answered "held by someone else".
        refused: usize,
        /// Lockers that did not answer (dead, unreachable, busy, late).
        unavailable: usize,
        /// Attempts made.
        attempts: u32,
    },
    /// The lock was held but its lease is no longer valid (lost its quorum,
    /// or ran out before a refresh): what it protected must not be written.
    #[error("the lock on {resource:?} was lost")]
    Lost {
        /// What was locked.
        resource: String,
    },
    /// A locker answered with an error that is not a vote either way (a bad
    /// request): retrying cannot help.
    #[error("locker {locker} refused the request: {error}")]
    Invalid {
        /// The locker.
        locker: String,
        /// Its answer.
        error: DiskError,
    },
    /// The lock set is not usable (no lockers, bad timing).
    #[error("lock configuration: {0}")]
    Config(String),
}

impl LockError {
    /// The lock is taken elsewhere or too few lockers answered, and a later
    /// attempt may succeed: what config and IAM readers retry on.
    pub fn is_timeout(&self) -> bool {
        matches!(self, LockError::Timeout { .. })
    }

    /// A new attempt may succeed: a timeout, or a lock lost mid-way.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LockError::Timeout { .. } | LockError::Lost { .. })
    }
}

/// The lockers of a cluster and how to lock with them.
#[derive(Clone)]
pub struct QuorumLock {
    lockers: Arc<[Arc<dyn Locker>]>,
    owner: String,
    cfg: LockConfig,
}

impl std::fmt::Debug for QuorumLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumLock")
            .field("lockers", &self.lockers.len())
            .field("owner", &self.owner)
            .finish()
    }
}

/// Grants a quorum of `n` lockers needs for `kind`.
pub fn lock_quorum(n: usize, kind: LockKind) -> usize {
    match kind {
        LockKind::Write => n / 2 + 1,
        LockKind::Read => n - n / 2,
    }
}

struct Tally {
    granted: Vec<bool>,
    refused: usize,
    unavailable: usize,
}

impl QuorumLock {
    /// Locks over `lockers` (one per node, this node's own included),
    /// asked for by `owner`.
    pub fn new(
        lockers: Vec<Arc<dyn Locker>>,
        owner: &str,
        cfg: LockConfig,
    ) -> Result<QuorumLock, LockError> {
        cfg.check().map_err(LockError::Config)?;
        if lockers.is_empty() {
            return Err(LockError::Config("no lockers".into()));
        }
        Ok(QuorumLock {
            lockers: lockers.into(),
            owner: owner.to_string(),
            cfg,
        })
    }

    /// The timing in use.
    pub fn config(&self) -> &LockConfig {
        &self.cfg
    }

    /// Take `kind` on `resource` by `deadline`.
    pub async fn lock(
        &self,
        resource: &str,
        kind: LockKind,
        deadline: Deadline,
    ) -> Result<LockGuard, LockError> {
        let started = Instant::now();
        let n = self.lockers.len();
        let needed = lock_quorum(n, kind);
        let mut backoff = self.cfg.retry_min;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            // A fresh token per attempt: the background release of a failed
            // attempt's partial grants can then never take away a grant of
            // a later attempt (a delayed release would otherwise land on the
            // new lease of the same token), and a late acquire of a released
            // token is refused by the locker's tombstone.
            let req = LockRequest {
                resource: resource.to_string(),
                uid: uuid::Uuid::new_v4().to_string(),
                owner: self.owner.clone(),
                kind,
                ttl: self.cfg.ttl,
            };
            let attempt_start = Instant::now();
            let tally = match self.attempt(&req, needed, deadline).await {
                Ok(t) => t,
                Err(e) => {
                    drop(self.release_all(&req.resource, &req.uid));
                    return Err(e);
                }
            };
            let granted = tally.granted.iter().filter(|g| **g).count();
            if granted >= needed {
                record_acquire(kind, "ok", started.elapsed());
                return Ok(LockGuard::start(
                    self.clone(),
                    req,
                    needed,
                    attempt_start + self.cfg.validity(),
                ));
            }
            // Partial grants (and any a late answer makes) are given back on
            // every locker: the uid is unique to this attempt series.
            drop(self.release_all(&req.resource, &req.uid));
            let wait = rand::rng().random_range(backoff / 2..=backoff);
            let out_of_time = deadline.remaining() <= wait;
            if out_of_time {
                record_acquire(kind, "timeout", started.elapsed());
                metrics::counter!(LOCK_TIMEOUTS, "kind" => kind_str(kind)).increment(1);
                return Err(LockError::Timeout {
                    resource: resource.to_string(),
                    kind,
                    needed,
                    granted,
                    refused: tally.refused,
                    unavailable: tally.unavailable,
                    attempts,
                });
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.cfg.retry_max);
        }
    }

    /// One round of acquire calls, each under the attempt deadline; stops
    /// as soon as quorum is reached or can no longer be.
    async fn attempt(
        &self,
        req: &LockRequest,
        needed: usize,
        deadline: Deadline,
    ) -> Result<Tally, LockError> {
        let n = self.lockers.len();
        let d = deadline.min(Deadline::after(self.cfg.attempt_timeout));
        let mut calls: FuturesUnordered<_> = self
            .lockers
            .iter()
            .enumerate()
            .map(|(i, l)| async move { (i, l.acquire(req, d).await) })
            .collect();
        let mut t = Tally {
            granted: vec![false; n],
            refused: 0,
            unavailable: 0,
        };
        let mut answered = 0;
        let mut granted = 0;
        while let Some((i, r)) = calls.next().await {
            answered += 1;
            match r {
                Ok(true) => {
                    t.granted[i] = true;
                    granted += 1;
                }
                Ok(false) => t.refused += 1,
                Err(e) if e.is_unavailable() => t.unavailable += 1,
                Err(e) => {
                    return Err(LockError::Invalid {
                        locker: self.lockers[i].label().to_string(),
                        error: e,
                    })
                }
            }
            let pending = n - answered;
            if granted >= needed || granted + pending < needed {
                // Lockers still pending count as unavailable in the report.
                t.unavailable += pending;
                break;
            }
        }
        Ok(t)
    }

    /// Release `uid` on every locker in a background task, the calls under
    /// their own attempt deadline (whatever is left of any caller's: an
    /// operation that ran out of time must still give its lock back, not
    /// leave it to the TTL). The task's result is how many lockers released
    /// a lease they held; nobody has to wait for it (a locker that misses
    /// the release drops the lease at its TTL). `None` without a runtime:
    /// the leases then expire by themselves.
    fn release_all(&self, resource: &str, uid: &str) -> Option<tokio::task::JoinHandle<usize>> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let lockers = self.lockers.clone();
        let (resource, uid) = (resource.to_string(), uid.to_string());
        let d = Deadline::after(self.cfg.attempt_timeout);
        Some(rt.spawn(async move {
            let calls: FuturesUnordered<_> = lockers
                .iter()
                .map(|l| l.release(&resource, &uid, d))
                .collect();
            calls
                .filter(|r| std::future::ready(matches!(r, Ok(true))))
                .count()
                .await
        }))
    }

    /// One refresh round: how many lockers still hold the lease, and how
    /// many said they do not (the rest did not answer).
    async fn refresh_round(&self, resource: &str, uid: &str) -> (usize, usize) {
        let d = Deadline::after(self.cfg.attempt_timeout);
        let ttl = self.cfg.ttl;
        let mut calls: FuturesUnordered<_> = self
            .lockers
            .iter()
            .map(|l| async move { l.refresh(resource, uid, ttl, d).await })
            .collect();
        let (mut held, mut gone) = (0, 0);
        while let Some(r) = calls.next().await {
            match r {
                Ok(true) => held += 1,
                Ok(false) => gone += 1,
                Err(_) => {}
            }
        }
        (held, gone)
    }
}

fn kind_str(kind: LockKind) -> &'static str {
    match kind {
        LockKind::Read => "read",
        LockKind::Write => "write",
    }
}

fn record_acquire(kind: LockKind, outcome: &'static str, took: Duration) {
    metrics::histogram!(LOCK_ACQUIRE_SECONDS, "kind" => kind_str(kind), "outcome" => outcome)
        .record(took.as_secs_f64());
}

struct Held {
    lock: QuorumLock,
    req: LockRequest,
    needed: usize,
    valid_until: Mutex<Instant>,
    lost: watch::Sender<bool>,
}

impl Held {
    fn valid_until(&self) -> Instant {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a release the guard is gone; no "lost" metric for that.
    fn mark_lost_quietly(&self) {
        self.lost.send_replace(true);
    }

    fn mark_lost(&self) {
        if !self.lost.send_replace(true) {
            metrics::counter!(LOCK_LOST, "kind" => kind_str(self.req.kind)).increment(1);
            tracing::warn!(resource = %self.req.resource, uid = %self.req.uid, "lock lost its quorum");
        }
    }
}

/// A lock held on a quorum of lockers. Refreshes its lease in the
/// background; dropping it releases the lock (in the background),
/// [`LockGuard::release`] does so and waits.
pub struct LockGuard {
    held: Arc<Held>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("resource", &self.held.req.resource)
            .field("uid", &self.held.req.uid)
            .field("held", &self.is_held())
            .finish()
    }
}

impl LockGuard {
    fn start(lock: QuorumLock, req: LockRequest, needed: usize, valid_until: Instant) -> LockGuard {
        let (lost, _) = watch::channel(false);
        let held = Arc::new(Held {
            lock,
            req,
            needed,
            valid_until: Mutex::new(valid_until),
            lost,
        });
        let refresher = tokio::spawn(refresh_loop(Arc::downgrade(&held)));
        LockGuard {
            held,
            refresher: Some(refresher),
        }
    }

    /// The lease token (the same on every locker).
    pub fn uid(&self) -> &str {
        &self.held.req.uid
    }

    /// What is locked.
    pub fn resource(&self) -> &str {
        &self.held.req.resource
    }

    /// Until when, on this node's clock, a quorum of lockers surely holds
    /// the lease (extended by every successful refresh round).
    pub fn valid_until(&self) -> Instant {
        self.held.valid_until()
    }

    /// Whether the lock is still held: not lost, and within its validity.
    pub fn is_held(&self) -> bool {
        !*self.held.lost.borrow() && Instant::now() < self.valid_until()
    }

    /// Resolves when the lock has lost its quorum (or its validity ran out
    /// without a successful refresh).
    pub async fn lost(&self) {
        let mut rx = self.held.lost.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    /// Release on every locker, waiting at most `deadline`; returns how
    /// many lockers released a lease they held.
    pub async fn release(mut self, deadline: Deadline) -> usize {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        let held = self.held.clone();
        held.mark_lost_quietly();
        let Some(task) = held.lock.release_all(&held.req.resource, &held.req.uid) else {
            return 0;
        };
        // The caller waits at most until its own deadline (or the releases'
        // attempt deadline); the releases go on without it.
        let d = deadline.min(Deadline::after(held.lock.cfg.attempt_timeout));
        match tokio::time::timeout_at(d.instant().into(), task).await {
            Ok(Ok(n)) => n,
            _ => 0,
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
            self.held.mark_lost_quietly();
            drop(
                self.held
                    .lock
                    .release_all(&self.held.req.resource, &self.held.req.uid),
            );
        }
    }
}

/// Refresh every `refresh_interval` until the guard goes or the lock is
/// lost. A round that keeps a quorum extends the validity from its start;
/// one where so many lockers said "no such lease" that quorum is impossible
/// loses the lock at once; unanswered rounds lose it when the validity runs
/// out.
async fn refresh_loop(held: std::sync::Weak<Held>) {
    // Rounds start every `interval` from the acquisition's start, whatever
    // a round takes, so a slow round does not push the next one late.
    let Some(h) = held.upgrade() else { return };
    let interval = h.lock.cfg.refresh_interval;
    let mut next = h.valid_until() - h.lock.cfg.validity() + interval;
    drop(h);
    loop {
        let Some(h) = held.upgrade() else { return };
        let until = h.valid_until();
        drop(h);
        // Wake for the next round, or when the validity runs out first.
        tokio::time::sleep_until(next.min(until).into()).await;
        let Some(h) = held.upgrade() else { return };
        if Instant::now() >= h.valid_until() {
            h.mark_lost();
            return;
        }
        if Instant::now() < next {
            continue;
        }
        let round_start = Instant::now();
        next = round_start + interval;
        let (ok, gone) = h.lock.refresh_round(&h.req.resource, &h.req.uid).await;
        let n = h.lock.lockers.len();
        if ok >= h.needed {
            *h.valid_until.lock().unwrap_or_else(|e| e.into_inner()) =
                round_start + h.lock.cfg.validity();
        } else if n - gone < h.needed {
            h.mark_lost();
            return;
        }
    }
}
