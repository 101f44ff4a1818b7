//! [`Locker`]: one node's vote in a quorum lock, local or remote, and
//! [`LeaseTable`], the locker every node runs.
//!
//! A locker grants **leases**: a grant lives for its TTL unless its holder
//! refreshes it, and the locker itself drops it when it expires. So a holder
//! that dies (or is cut off) loses its grants after the TTL without anyone
//! having to reach it, and a locker that dies only takes its own votes with
//! it. Quorum logic (which lockers to ask, how many grants make a lock) is
//! the caller's; a locker only answers for itself.
//!
//! Answers follow [`DiskError`]'s families: `Ok(false)` is a locker's
//! answer ("held by someone else", "no such lease"), an unavailable error
//! (deadline, unreachable, busy, ...) is a missing vote, never a refusal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::deadline::Deadline;
use crate::error::{DiskError, Result};

/// Shared or exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockKind {
    /// Many holders at once, no writer.
    Read,
    /// One holder, no readers.
    Write,
}

/// A request for a lease on `resource`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRequest {
    /// What is locked (a config path, an object name).
    pub resource: String,
    /// The lease token: unique per acquisition, the same on every locker
    /// asked, and what refresh and release name.
    pub uid: String,
    /// Who asks (a node name), for diagnostics.
    pub owner: String,
    /// Shared or exclusive.
    pub kind: LockKind,
    /// How long the grant lives unless refreshed.
    pub ttl: Duration,
}

/// One node's lock service, local or remote.
#[async_trait]
pub trait Locker: Send + Sync {
    /// Where the locker is (a node name), for errors and metrics.
    fn label(&self) -> &str;

    /// Grant `req` if nothing conflicting holds `resource`: `Ok(true)`
    /// granted, `Ok(false)` held by someone else. Asking again with the same
    /// uid renews the grant (a retried request whose answer was lost).
    async fn acquire(&self, req: &LockRequest, deadline: Deadline) -> Result<bool>;

    /// Extend the lease `uid` on `resource` by `ttl` from now: `Ok(false)`
    /// when this locker holds no such lease (it expired, or was never
    /// granted): the holder has lost this vote.
    async fn refresh(
        &self,
        resource: &str,
        uid: &str,
        ttl: Duration,
        deadline: Deadline,
    ) -> Result<bool>;

    /// Drop the lease `uid` on `resource`: `Ok(false)` when there was none.
    async fn release(&self, resource: &str, uid: &str, deadline: Deadline) -> Result<bool>;
}

/// Longest resource name a locker takes.
pub const MAX_RESOURCE: usize = 1024;
/// Longest lease token (uid) or owner name a locker takes.
pub const MAX_UID: usize = 128;

/// Limits of a [`LeaseTable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Longest lease granted; a request for more is refused
    /// ([`DiskError::InvalidArgument`]), not silently shortened: a holder
    /// counts its validity from the TTL it asked for, so a shorter grant
    /// would let it believe it holds a lock it no longer has.
    pub max_ttl: Duration,
    /// Resources with live leases at once; past it new resources are
    /// refused with [`DiskError::Busy`] (a vote not given, not a conflict).
    pub max_resources: usize,
    /// Read leases on one resource at once.
    pub max_readers: usize,
    /// After the table is created (a node started or restarted) it grants
    /// nothing for this long, answering [`DiskError::Busy`]: leases it had
    /// before a restart are gone from memory but may still be counted on by
    /// their holders until their TTL runs out, so a restarted locker must
    /// not give the same resource to someone else within that time. Set it
    /// to at least the longest TTL any holder uses (`max_ttl` by default).
    pub startup_quiet: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            max_ttl: Duration::from_secs(60),
            max_resources: 100_000,
            max_readers: 1024,
            startup_quiet: Duration::from_secs(60),
        }
    }
}

/// Tokens released (or expired while held) recently, and until when they
/// are refused: an acquire that arrives after its release (a retried or
/// delayed request) must not recreate a lease nobody will refresh or
/// release.
#[derive(Debug, Default)]
struct Tombstones {
    until: HashMap<String, Instant>,
}

impl Tombstones {
    fn bury(&mut self, uid: &str, until: Instant, now: Instant, cap: usize) {
        if self.until.len() >= cap {
            self.until.retain(|_, u| *u > now);
        }
        if self.until.len() < cap {
            self.until.insert(uid.to_string(), until);
        }
    }

    fn buried(&self, uid: &str, now: Instant) -> bool {
        self.until.get(uid).is_some_and(|u| *u > now)
    }
}

#[derive(Debug)]
enum Held {
    Write { uid: String, until: Instant },
    Read { holders: HashMap<String, Instant> },
}

impl Held {
    /// Drop expired leases; whether any live one is left.
    fn prune(&mut self, now: Instant) -> bool {
        match self {
            Held::Write { until, .. } => *until > now,
            Held::Read { holders } => {
                holders.retain(|_, until| *until > now);
                !holders.is_empty()
            }
        }
    }
}

/// The clock a lease table reads; injected so tests can move time.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The locker a node runs: leases in memory, bounded, expiring by
/// themselves. Answers at once (no I/O), so its deadline is never the limit.
pub struct LeaseTable {
    label: String,
    cfg: LeaseConfig,
    clock: Clock,
    /// Nothing is granted before this instant (see `startup_quiet`).
    grants_from: Instant,
    held: Mutex<HashMap<String, Held>>,
    released: Mutex<Tombstones>,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTable")
            .field("label", &self.label)
            .field("resources", &self.len())
            .finish()
    }
}

impl LeaseTable {
    /// A table on the monotonic clock.
    pub fn new(label: &str, cfg: LeaseConfig) -> LeaseTable {
        LeaseTable::with_clock(label, cfg, Arc::new(Instant::now))
    }

    /// A table on `clock`.
    pub fn with_clock(label: &str, cfg: LeaseConfig, clock: Clock) -> LeaseTable {
        let grants_from = clock() + cfg.startup_quiet;
        LeaseTable {
            label: label.to_string(),
            cfg,
            clock,
            grants_from,
            held: Mutex::new(HashMap::new()),
            released: Mutex::new(Tombstones::default()),
        }
    }

    /// Resources with live leases (expired ones are counted until the
    /// next access or [`LeaseTable::sweep`]).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No resource is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop every expired lease; returns how many resources went. The node
    /// calls it periodically so a table of dead owners' leases shrinks even
    /// when nobody asks for those resources again.
    pub fn sweep(&self) -> usize {
        let now = (self.clock)();
        let mut held = self.lock();
        let before = held.len();
        held.retain(|_, h| h.prune(now));
        before - held.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ttl(&self, ttl: Duration) -> Result<Duration> {
        if ttl.is_zero() || ttl > self.cfg.max_ttl {
            return Err(DiskError::InvalidArgument {
                reason: format!(
                    "lease ttl {ttl:?} must be in (0, {:?}] (locker {})",
                    self.cfg.max_ttl, self.label
                ),
            });
        }
        Ok(ttl)
    }

    fn check_names(resource: &str, uid: &str) -> Result<()> {
        if resource.is_empty()
            || uid.is_empty()
            || resource.len() > MAX_RESOURCE
            || uid.len() > MAX_UID
        {
            return Err(DiskError::InvalidArgument {
                reason: format!(
                    "lock resource must be 1..={MAX_RESOURCE} bytes and uid 1..={MAX_UID}"
                ),
            });
        }
        Ok(())
    }

    fn tombstones(&self) -> std::sync::MutexGuard<'_, Tombstones> {
        self.released.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Locker::acquire`], synchronously.
    pub fn try_acquire(&self, req: &LockRequest) -> Result<bool> {
        let ttl = self.ttl(req.ttl)?;
        Self::check_names(&req.resource, &req.uid)?;
        if req.owner.len() > MAX_UID {
            return Err(DiskError::InvalidArgument {
                reason: format!("lock owner must be at most {MAX_UID} bytes"),
            });
        }
        let now = (self.clock)();
        if self.tombstones().buried(&req.uid, now) {
            // This token was released: a late copy of its acquire.
            return Ok(false);
        }
        if now < self.grants_from {
            return Err(DiskError::Busy {
                reason: format!(
                    "locker {} started {:?} ago and grants nothing for {:?} after a start",
                    self.label,
                    self.cfg
                        .startup_quiet
                        .saturating_sub(self.grants_from - now),
                    self.cfg.startup_quiet
                ),
            });
        }
        let until = now + ttl;
        let mut held = self.lock();
        let live = held.get_mut(&req.resource).is_some_and(|h| h.prune(now));
        if !live {
            held.remove(&req.resource);
            if held.len() >= self.cfg.max_resources {
                // Expired entries of other resources may be what fills it.
                held.retain(|_, h| h.prune(now));
                if held.len() >= self.cfg.max_resources {
                    return Err(DiskError::Busy {
                        reason: format!(
                            "locker {}: {} resources held",
                            self.label, self.cfg.max_resources
                        ),
                    });
                }
            }
            let h = match req.kind {
                LockKind::Write => Held::Write {
                    uid: req.uid.clone(),
                    until,
                },
                LockKind::Read => Held::Read {
                    holders: HashMap::from([(req.uid.clone(), until)]),
                },
            };
            held.insert(req.resource.clone(), h);
            return Ok(true);
        }
        let Some(h) = held.get_mut(&req.resource) else {
            unreachable!("live entry checked above")
        };
        match (h, req.kind) {
            (Held::Write { uid, until: u }, LockKind::Write) if *uid == req.uid => {
                *u = until;
                Ok(true)
            }
            (Held::Read { holders }, LockKind::Read) => {
                if !holders.contains_key(&req.uid) && holders.len() >= self.cfg.max_readers {
                    return Err(DiskError::Busy {
                        reason: format!(
                            "locker {}: {} readers of one resource",
                            self.label, self.cfg.max_readers
                        ),
                    });
                }
                holders.insert(req.uid.clone(), until);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// [`Locker::refresh`], synchronously.
    pub fn try_refresh(&self, resource: &str, uid: &str, ttl: Duration) -> Result<bool> {
        let ttl = self.ttl(ttl)?;
        Self::check_names(resource, uid)?;
        let now = (self.clock)();
        let mut held = self.lock();
        let Some(h) = held.get_mut(resource) else {
            return Ok(false);
        };
        if !h.prune(now) {
            held.remove(resource);
            return Ok(false);
        }
        Ok(match h {
            Held::Write { uid: u, until } if u == uid => {
                *until = now + ttl;
                true
            }
            Held::Read { holders } => match holders.get_mut(uid) {
                Some(until) => {
                    *until = now + ttl;
                    true
                }
                None => false,
            },
            Held::Write { .. } => false,
        })
    }

    /// [`Locker::release`], synchronously.
    pub fn try_release(&self, resource: &str, uid: &str) -> Result<bool> {
        Self::check_names(resource, uid)?;
        let now = (self.clock)();
        // Refuse this token for the longest a late acquire of it could
        // still be in flight and matter: a lease's lifetime.
        self.tombstones()
            .bury(uid, now + self.cfg.max_ttl, now, self.cfg.max_resources);
        let mut held = self.lock();
        let Some(h) = held.get_mut(resource) else {
            return Ok(false);
        };
        let (released, empty) = match h {
            Held::Write { uid: u, until } if u == uid => (*until > now, true),
            Held::Write { .. } => (false, !h.prune(now)),
            Held::Read { holders } => {
                let was = holders.remove(uid).is_some_and(|until| until > now);
                (was, !h.prune(now))
            }
        };
        if empty {
            held.remove(resource);
        }
        Ok(released)
    }
}

#[async_trait]
impl Locker for LeaseTable {
    fn label(&self) -> &str {
        &self.label
    }

    async fn acquire(&self, req: &LockRequest, _deadline: Deadline) -> Result<bool> {
        self.try_acquire(req)
    }

    async fn refresh(
        &self,
        resource: &str,
        uid: &str,
        ttl: Duration,
        _deadline: Deadline,
    ) -> Result<bool> {
        self.try_refresh(resource, uid, ttl)
    }

    async fn release(&self, resource: &str, uid: &str, _deadline: Deadline) -> Result<bool> {
        self.try_release(resource, uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock tests move by hand (milliseconds past a base instant).
    fn manual() -> (Clock, Arc<AtomicU64>) {
        let base = Instant::now();
        let ms = Arc::new(AtomicU64::new(0));
        let m = ms.clone();
        (
            Arc::new(move || base + Duration::from_millis(m.load(Ordering::SeqCst))),
            ms,
        )
    }

    fn cfg() -> LeaseConfig {
        LeaseConfig {
            startup_quiet: Duration::ZERO,
            ..LeaseConfig::default()
        }
    }

    fn req(uid: &str, kind: LockKind, ttl_ms: u64) -> LockRequest {
        LockRequest {
            resource: "r".into(),
            uid: uid.into(),
            owner: "n1".into(),
            kind,
            ttl: Duration::from_millis(ttl_ms),
        }
    }

    #[test]
    fn writers_exclude_everyone_readers_share() {
        let (clock, _) = manual();
        let t = LeaseTable::with_clock("n1", cfg(), clock);
        assert_eq!(t.try_acquire(&req("w1", LockKind::Write, 1000)), Ok(true));
        assert_eq!(t.try_acquire(&req("w2", LockKind::Write, 1000)), Ok(false));
        assert_eq!(t.try_acquire(&req("r1", LockKind::Read, 1000)), Ok(false));
        assert_eq!(
            t.try_acquire(&req("w1", LockKind::Write, 1000)),
            Ok(true),
            "same uid renews"
        );
        assert_eq!(t.try_release("r", "w2"), Ok(false), "not the holder");
        assert_eq!(t.try_release("r", "w1"), Ok(true));
        assert_eq!(t.try_acquire(&req("r1", LockKind::Read, 1000)), Ok(true));
        assert_eq!(t.try_acquire(&req("r2", LockKind::Read, 1000)), Ok(true));
        assert_eq!(t.try_acquire(&req("w2", LockKind::Write, 1000)), Ok(false));
        assert_eq!(t.try_release("r", "r1"), Ok(true));
        assert_eq!(
            t.try_acquire(&req("w2", LockKind::Write, 1000)),
            Ok(false),
            "r2 still reads"
        );
        assert_eq!(t.try_release("r", "r2"), Ok(true));
        assert!(t.is_empty(), "the last release drops the resource");
        // w2 was released above (though it held nothing): its token is
        // buried, so a fresh one takes the lock.
        assert_eq!(t.try_acquire(&req("w2", LockKind::Write, 1000)), Ok(false));
        assert_eq!(t.try_acquire(&req("w3", LockKind::Write, 1000)), Ok(true));
    }

    #[test]
    fn leases_expire_by_themselves_and_refresh_extends_them() {
        let (clock, ms) = manual();
        let t = LeaseTable::with_clock("n1", cfg(), clock);
        assert_eq!(t.try_acquire(&req("w1", LockKind::Write, 100)), Ok(true));
        ms.store(90, Ordering::SeqCst);
        assert_eq!(
            t.try_refresh("r", "w1", Duration::from_millis(100)),
            Ok(true)
        );
        ms.store(150, Ordering::SeqCst);
        assert_eq!(
            t.try_acquire(&req("w2", LockKind::Write, 100)),
            Ok(false),
            "refreshed to 190"
        );
        ms.store(191, Ordering::SeqCst);
        assert_eq!(
            t.try_refresh("r", "w1", Duration::from_millis(100)),
            Ok(false),
            "expired"
        );
        assert_eq!(
            t.try_release("r", "w1"),
            Ok(false),
            "an expired lease is no lease"
        );
        assert_eq!(t.try_acquire(&req("w2", LockKind::Write, 100)), Ok(true));
        // Readers expire one by one.
        ms.store(1000, Ordering::SeqCst);
        assert_eq!(t.try_acquire(&req("r1", LockKind::Read, 100)), Ok(true));
        ms.store(1050, Ordering::SeqCst);
        assert_eq!(t.try_acquire(&req("r2", LockKind::Read, 100)), Ok(true));
        ms.store(1120, Ordering::SeqCst);
        assert_eq!(
            t.try_refresh("r", "r1", Duration::from_millis(100)),
            Ok(false)
        );
        assert_eq!(
            t.try_acquire(&req("w3", LockKind::Write, 100)),
            Ok(false),
            "r2 lives to 1150"
        );
        ms.store(1151, Ordering::SeqCst);
        assert_eq!(t.sweep(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn limits_are_refusals_of_a_vote_not_conflicts() {
        let (clock, ms) = manual();
        let cfg = LeaseConfig {
            max_ttl: Duration::from_millis(500),
            max_resources: 2,
            max_readers: 2,
            startup_quiet: Duration::ZERO,
        };
        let t = LeaseTable::with_clock("n1", cfg, clock);
        for (i, r) in ["a", "b"].iter().enumerate() {
            let mut q = req(&format!("u{i}"), LockKind::Write, 500);
            q.resource = r.to_string();
            assert_eq!(t.try_acquire(&q), Ok(true));
        }
        let mut c = req("u9", LockKind::Write, 100);
        c.resource = "c".into();
        assert!(matches!(t.try_acquire(&c), Err(DiskError::Busy { .. })));
        assert!(t.try_acquire(&c).unwrap_err().is_unavailable());
        // A TTL over max_ttl is refused, not shortened.
        let mut long = c.clone();
        long.ttl = Duration::from_millis(501);
        assert!(matches!(
            t.try_acquire(&long),
            Err(DiskError::InvalidArgument { .. })
        ));
        // Leases expire: past them the table has room again.
        ms.store(10_001, Ordering::SeqCst);
        assert_eq!(t.try_acquire(&c), Ok(true));
        // Readers of one resource are bounded too.
        ms.store(20_000, Ordering::SeqCst);
        let mut d = req("x1", LockKind::Read, 100);
        d.resource = "c2".into();
        let _ = t.sweep();
        assert_eq!(t.try_acquire(&d), Ok(true));
        d.uid = "x2".into();
        assert_eq!(t.try_acquire(&d), Ok(true));
        d.uid = "x3".into();
        assert!(matches!(t.try_acquire(&d), Err(DiskError::Busy { .. })));
        // Bad requests are typed.
        let mut z = req("z", LockKind::Write, 0);
        assert!(matches!(
            t.try_acquire(&z),
            Err(DiskError::InvalidArgument { .. })
        ));
        z.ttl = Duration::from_millis(10);
        z.uid.clear();
        assert!(matches!(
            t.try_acquire(&z),
            Err(DiskError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn a_released_token_is_not_granted_again_and_names_are_bounded() {
        let (clock, ms) = manual();
        let t = LeaseTable::with_clock("n1", cfg(), clock);
        assert_eq!(t.try_acquire(&req("w1", LockKind::Write, 100)), Ok(true));
        assert_eq!(t.try_release("r", "w1"), Ok(true));
        // A late copy of w1's acquire arrives after its release.
        assert_eq!(t.try_acquire(&req("w1", LockKind::Write, 100)), Ok(false));
        assert!(t.is_empty(), "no orphan lease");
        assert_eq!(t.try_acquire(&req("w2", LockKind::Write, 100)), Ok(true));
        // The tombstone lasts a max_ttl.
        ms.store(60_001, Ordering::SeqCst);
        assert_eq!(t.try_release("r", "w2"), Ok(false), "w2 expired long ago");
        let mut again = req("w1", LockKind::Write, 100);
        again.resource = "r2".into();
        assert_eq!(t.try_acquire(&again), Ok(true));
        let mut big = req("w3", LockKind::Write, 100);
        big.resource = "x".repeat(MAX_RESOURCE + 1);
        assert!(matches!(
            t.try_acquire(&big),
            Err(DiskError::InvalidArgument { .. })
        ));
        let long_uid = "u".repeat(MAX_UID + 1);
        assert!(matches!(
            t.try_refresh("r", &long_uid, Duration::from_millis(10)),
            Err(DiskError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn a_restarted_locker_grants_nothing_for_its_quiet_period() {
        let (clock, ms) = manual();
        let t = LeaseTable::with_clock(
            "n1",
            LeaseConfig {
                startup_quiet: Duration::from_millis(300),
                ..LeaseConfig::default()
            },
            clock,
        );
        let r = t.try_acquire(&req("w1", LockKind::Write, 100));
        assert!(matches!(r, Err(DiskError::Busy { .. })), "{r:?}");
        assert!(
            r.unwrap_err().is_unavailable(),
            "a missing vote, not a refusal"
        );
        assert_eq!(
            t.try_refresh("r", "w1", Duration::from_millis(100)),
            Ok(false)
        );
        ms.store(300, Ordering::SeqCst);
        assert_eq!(t.try_acquire(&req("w1", LockKind::Write, 100)), Ok(true));
    }
}
