//! [`ConfigStore`]: small configuration documents (IAM users, policies,
//! cluster settings) kept as objects of a system bucket on the erasure
//! sets, read under a quorum read lock and written under a quorum write
//! lock, every call under its caller's deadline.
//!
//! Why locks at all, when the erasure layer already needs quorum: a
//! read-modify-write of one document (add a user to a list, bump a version)
//! from two nodes at once would otherwise lose one of the writes. Reads
//! take the read lock so they never see a document another node is halfway
//! through replacing on a quorum.
//!
//! A lock that cannot be had in time is [`ConfigError::Lock`] with the
//! typed [`LockError`] inside: callers retry on
//! [`ConfigError::is_lock_timeout`], never on a message (the field report's
//! outage began with a lock timeout that was only recognisable by its text).

use std::sync::Arc;
use std::time::Duration;

use disk_io_api::{Deadline, LockKind};

use crate::error::ErasureError;
use crate::lock::{LockError, LockGuard, QuorumLock};
use crate::sets::ErasureSets;

/// The bucket the store keeps its documents in. Reserved: the S3 layer
/// refuses it as a user bucket.
pub const SYSTEM_BUCKET: &str = "disk-io-system";

/// Limits of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigStoreConfig {
    /// Largest document (they are read whole into memory).
    pub max_document_bytes: usize,
    /// Most names one listing returns.
    pub max_list: usize,
    /// Share of an operation's deadline the lock may take, so a lock that
    /// comes late still leaves time for the I/O it protects.
    pub lock_share: u32,
}

impl Default for ConfigStoreConfig {
    fn default() -> Self {
        ConfigStoreConfig {
            max_document_bytes: 1 << 20,
            max_list: 100_000,
            lock_share: 50,
        }
    }
}

/// Why a config operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The document's lock could not be taken in time.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The erasure layer failed (quorum, deadline, ...).
    #[error(transparent)]
    Erasure(#[from] ErasureError),
    /// A document over `max_document_bytes`.
    #[error("config document {path:?} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Which document.
        path: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A listing found more than `max_list` names (never truncated
    /// silently: a caller that acted on part of a list would miss the rest).
    #[error("more than {limit} documents under {dir:?}")]
    TooMany {
        /// The directory listed.
        dir: String,
        /// The limit.
        limit: usize,
    },
    /// An update function refused the current document.
    #[error("config update of {path:?} refused: {reason}")]
    Refused {
        /// Which document.
        path: String,
        /// Why.
        reason: String,
    },
}

impl ConfigError {
    /// The lock was not granted in time (held elsewhere, or too few lockers
    /// answered): a later attempt may succeed.
    pub fn is_lock_timeout(&self) -> bool {
        matches!(self, ConfigError::Lock(e) if e.is_timeout())
    }

    /// Trying again may succeed: the lock timed out or was lost, or the
    /// erasure layer lacked a quorum of disks (not an answer).
    pub fn is_retryable(&self) -> bool {
        match self {
            ConfigError::Lock(e) => e.is_retryable(),
            ConfigError::Erasure(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

/// Configuration documents on the erasure sets.
#[derive(Clone)]
pub struct ConfigStore {
    sets: Arc<ErasureSets>,
    locks: QuorumLock,
    cfg: ConfigStoreConfig,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore").finish_non_exhaustive()
    }
}

/// `deadline`, cut to end a margin before the guard's validity does, so an
/// operation under the lock cannot outlive the lease that protects it.
fn fenced(guard: &LockGuard, deadline: Deadline) -> Deadline {
    const MARGIN: Duration = Duration::from_millis(50);
    let until = guard
        .valid_until()
        .checked_sub(MARGIN)
        .unwrap_or_else(std::time::Instant::now);
    deadline.min(Deadline::at(until))
}

fn lock_name(path: &str) -> String {
    format!("config/{path}")
}

impl ConfigStore {
    /// A store on `sets`, locking with `locks`.
    pub fn new(sets: Arc<ErasureSets>, locks: QuorumLock, cfg: ConfigStoreConfig) -> ConfigStore {
        ConfigStore { sets, locks, cfg }
    }

    /// The locks the store takes (IAM reuses them).
    pub fn locks(&self) -> &QuorumLock {
        &self.locks
    }

    /// Create the system bucket on every set (an existing one counts).
    pub async fn init(&self, deadline: Deadline) -> Result<(), ConfigError> {
        let makes = self
            .sets
            .sets()
            .iter()
            .map(|s| s.make_bucket(SYSTEM_BUCKET, deadline));
        for r in futures_util::future::join_all(makes).await {
            r?;
        }
        Ok(())
    }

    fn lock_deadline(&self, deadline: Deadline) -> Deadline {
        let share = deadline.remaining() * self.cfg.lock_share.min(100) / 100;
        deadline.min(Deadline::after(share.max(Duration::from_millis(1))))
    }

    /// Take the document's lock, each try bounded to `lock_share` of what
    /// is left of `deadline` (so the I/O it protects keeps its time), and
    /// try again on the typed timeout while at least one lock attempt's
    /// worth of time is left.
    async fn lock_retrying(
        &self,
        path: &str,
        kind: LockKind,
        deadline: Deadline,
    ) -> Result<LockGuard, ConfigError> {
        let name = lock_name(path);
        loop {
            match self
                .locks
                .lock(&name, kind, self.lock_deadline(deadline))
                .await
            {
                Ok(g) => return Ok(g),
                Err(e)
                    if e.is_timeout()
                        && deadline.remaining() > self.locks.config().attempt_timeout * 2 =>
                {
                    tracing::debug!(resource = %name, error = %e, "config lock timed out; trying again");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The document at `path`, or `None` if there is none.
    pub async fn read(
        &self,
        path: &str,
        deadline: Deadline,
    ) -> Result<Option<Vec<u8>>, ConfigError> {
        let guard = self.lock_retrying(path, LockKind::Read, deadline).await?;
        let r = self.get(path, deadline).await;
        guard.release(deadline).await;
        r
    }

    async fn get(&self, path: &str, deadline: Deadline) -> Result<Option<Vec<u8>>, ConfigError> {
        let set = self.sets.set_for(SYSTEM_BUCKET, path);
        let info = match set.stat_object(SYSTEM_BUCKET, path, deadline).await {
            Ok(i) => i,
            Err(ErasureError::ObjectNotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let size = usize::try_from(info.size).unwrap_or(usize::MAX);
        if size > self.cfg.max_document_bytes {
            return Err(ConfigError::TooLarge {
                path: path.to_string(),
                size,
                limit: self.cfg.max_document_bytes,
            });
        }
        let mut out = Vec::with_capacity(size);
        match set
            .get_object(SYSTEM_BUCKET, path, None, &mut out, deadline)
            .await
        {
            Ok(_) => Ok(Some(out)),
            // Deleted between the stat and the read.
            Err(ErasureError::ObjectNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put(&self, path: &str, data: &[u8], deadline: Deadline) -> Result<(), ConfigError> {
        if data.len() > self.cfg.max_document_bytes {
            return Err(ConfigError::TooLarge {
                path: path.to_string(),
                size: data.len(),
                limit: self.cfg.max_document_bytes,
            });
        }
        let set = self.sets.set_for(SYSTEM_BUCKET, path);
        let mut src = data;
        set.put_object(SYSTEM_BUCKET, path, &mut src, deadline)
            .await?;
        Ok(())
    }

    /// Replace the document at `path` with `data`.
    pub async fn write(
        &self,
        path: &str,
        data: &[u8],
        deadline: Deadline,
    ) -> Result<(), ConfigError> {
        self.update(path, deadline, |_| Ok(Some(data.to_vec())))
            .await
            .map(drop)
    }

    /// Delete the document at `path`; `false` if there was none.
    pub async fn delete(&self, path: &str, deadline: Deadline) -> Result<bool, ConfigError> {
        let guard = self.lock_retrying(path, LockKind::Write, deadline).await?;
        if !guard.is_held() {
            guard.release(deadline).await;
            return Err(ConfigError::Lock(LockError::Lost {
                resource: lock_name(path),
            }));
        }
        let set = self.sets.set_for(SYSTEM_BUCKET, path);
        let r = match set
            .delete_object(SYSTEM_BUCKET, path, fenced(&guard, deadline))
            .await
        {
            Ok(()) => Ok(true),
            Err(ErasureError::ObjectNotFound) => Ok(false),
            Err(e) => Err(e.into()),
        };
        guard.release(deadline).await;
        r
    }

    /// Read, change and write back the document at `path` under one write
    /// lock: `f` gets the current bytes (or `None`) and returns the new ones
    /// (`None` leaves the document as it is). Returns what `f` returned.
    pub async fn update(
        &self,
        path: &str,
        deadline: Deadline,
        f: impl FnOnce(Option<Vec<u8>>) -> Result<Option<Vec<u8>>, String>,
    ) -> Result<Option<Vec<u8>>, ConfigError> {
        let guard = self.lock_retrying(path, LockKind::Write, deadline).await?;
        let r = async {
            let current = self.get(path, deadline).await?;
            let next = f(current).map_err(|reason| ConfigError::Refused {
                path: path.to_string(),
                reason,
            })?;
            if let Some(bytes) = &next {
                if !guard.is_held() {
                    // The lease ran out while we read: writing now could
                    // overwrite someone else's update.
                    return Err(ConfigError::Lock(LockError::Lost {
                        resource: lock_name(path),
                    }));
                }
                // The write must end while the lease is surely valid: past
                // it another holder may already have written.
                self.put(path, bytes, fenced(&guard, deadline)).await?;
            }
            Ok(next)
        }
        .await;
        guard.release(deadline).await;
        r
    }

    /// Names of the documents directly under `dir` (no lock: a listing is
    /// a snapshot by nature, and each name is read under its own lock).
    pub async fn list(&self, dir: &str, deadline: Deadline) -> Result<Vec<String>, ConfigError> {
        let lists = self
            .sets
            .sets()
            .iter()
            .map(|s| s.list(SYSTEM_BUCKET, dir, deadline));
        let mut names = Vec::new();
        for r in futures_util::future::join_all(lists).await {
            match r {
                Ok(v) => names.extend(v),
                Err(ErasureError::BucketNotFound) => {}
                Err(e) => return Err(e.into()),
            }
            if names.len() > self.cfg.max_list {
                return Err(ConfigError::TooMany {
                    dir: dir.to_string(),
                    limit: self.cfg.max_list,
                });
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}
