//! # disk-io-iam
//!
//! Users of an object store, kept where the cluster keeps its configuration
//! ([`ConfigStore`]: one JSON document per user under `iam/users/`), and
//! the credential cache every request is authenticated from.
//!
//! The field report's first failure was IAM: a read lock on an identity
//! file waited on a dead node, and since IAM gates every request, every
//! upload and download stopped. Here:
//!
//! * **The request path never waits on the cluster.** [`Iam::cached`] is a
//!   synchronous map lookup. [`Iam::lookup`] adds, on a miss only, one read
//!   of the user's document under a short deadline
//!   ([`IamConfig::miss_timeout`]); a user known not to exist is remembered
//!   for [`IamConfig::negative_ttl`] so a flood of bad keys does not become
//!   a flood of cluster reads.
//! * **The cache is kept fresh** by a periodic full reload
//!   ([`Iam::spawn_refresher`]) and by hints: an admin change on any node is
//!   applied to that node's cache at once and sent to the others
//!   ([`Broadcast`], fire-and-forget); a node takes a hint only if one of
//!   [`IamConfig::hint_slots`] reload slots is free ([`Iam::hint`]), else it
//!   drops it (counted) and the next periodic reload catches up.
//! * **Admin operations** ([`Iam::add_user`], [`Iam::set_status`],
//!   [`Iam::remove_user`], [`Iam::list_users`]) run under the caller's
//!   deadline, under the config store's quorum locks, and fail with typed
//!   errors: a lock timeout is [`IamError::is_lock_timeout`], never text.
//!
//! **Boundary:** depends on the API and the erasure layer (config store,
//! locks) only; the transport of hints is the node's ([`Broadcast`] here,
//! [`disk_io_api::Listener`] on the receiving side).
#![forbid(unsafe_code)]

pub mod user;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use disk_io_api::{Deadline, Listener};
use disk_io_erasure::{ConfigError, ConfigStore};
use futures_util::stream::{self, StreamExt};
use tokio::sync::Semaphore;

pub use user::{check_access_key, check_keys, Access, Policy, Status, User};

/// Where user documents live in the config store.
pub const USERS_DIR: &str = "iam/users";
/// The notification topic of a user change (the key is the access key).
pub const NOTIFY_TOPIC: &str = "iam.user";

/// Metric: IAM operation time by `op` and `outcome` (`ok`, `error`).
pub const IAM_OP_SECONDS: &str = "diskio_iam_op_seconds";
/// Metric: IAM operations that failed on a lock timeout, by `op`.
pub const IAM_LOCK_TIMEOUTS: &str = "diskio_iam_lock_timeouts_total";
/// Metric: users in the credential cache.
pub const IAM_CACHE_USERS: &str = "diskio_iam_cache_users";
/// Metric: credential lookups by `result` (`hit`, `miss_loaded`,
/// `miss_absent`, `negative`, `miss_failed`).
pub const IAM_LOOKUPS: &str = "diskio_iam_lookups_total";
/// Metric: change hints dropped because every reload slot was busy.
pub const IAM_HINTS_DROPPED: &str = "diskio_iam_hints_dropped_total";

/// Limits and timing of the IAM service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IamConfig {
    /// Deadline of a cache miss's read of the store.
    pub miss_timeout: Duration,
    /// How long a key known not to exist is answered from the cache.
    pub negative_ttl: Duration,
    /// Period of the full reload.
    pub refresh_interval: Duration,
    /// Deadline of one full reload.
    pub reload_timeout: Duration,
    /// Users the cache holds at most (a reload beyond it is an error).
    pub max_users: usize,
    /// Documents a reload reads at once.
    pub reload_concurrency: usize,
    /// Hint-driven reloads running at once; more hints are dropped.
    pub hint_slots: usize,
    /// Cache misses reading the store at once; a miss beyond them is
    /// refused at once ([`IamError::Busy`]) instead of queueing, so a flood
    /// of unknown keys cannot become a flood of quorum reads.
    pub miss_slots: usize,
    /// Keys remembered as absent at most; past it (after dropping expired
    /// ones) a miss is not remembered.
    pub max_negative: usize,
}

impl Default for IamConfig {
    fn default() -> Self {
        IamConfig {
            miss_timeout: Duration::from_millis(500),
            negative_ttl: Duration::from_secs(2),
            refresh_interval: Duration::from_secs(10),
            reload_timeout: Duration::from_secs(5),
            max_users: 100_000,
            reload_concurrency: 8,
            hint_slots: 64,
            miss_slots: 32,
            max_negative: 10_000,
        }
    }
}

/// Sends a change hint to every other node; must not block (implementations
/// spawn the sends, each under its own short deadline, and bound them).
pub trait Broadcast: Send + Sync {
    /// `topic`/`key` changed.
    fn send(&self, topic: &str, key: &str);
}

/// Why an IAM operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IamError {
    /// The user cannot be stored (bad key, bad secret).
    #[error("invalid user: {0}")]
    InvalidUser(String),
    /// `add_user` of an access key that exists.
    #[error("user {0} exists")]
    UserExists(String),
    /// No user with that access key.
    #[error("no user {0}")]
    NoSuchUser(String),
    /// A stored document could not be read as a user.
    #[error("user document {key}: {reason}")]
    Corrupt {
        /// Which user.
        key: String,
        /// Why.
        reason: String,
    },
    /// More users than `max_users`.
    #[error("more than {0} users")]
    TooManyUsers(usize),
    /// Every miss slot is taken: try again (the cache answers meanwhile).
    #[error("too many credential lookups in flight")]
    Busy,
    /// The config store failed (lock, quorum, deadline).
    #[error(transparent)]
    Store(#[from] ConfigError),
}

impl IamError {
    /// The store's lock timed out.
    pub fn is_lock_timeout(&self) -> bool {
        matches!(self, IamError::Store(e) if e.is_lock_timeout())
    }

    /// Trying again may succeed (lock timeout or loss, too few disks,
    /// every miss slot busy).
    pub fn is_retryable(&self) -> bool {
        matches!(self, IamError::Busy) || matches!(self, IamError::Store(e) if e.is_retryable())
    }
}

/// What the cache says about an access key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// An enabled user.
    Found(Arc<User>),
    /// The user exists but is disabled.
    Disabled,
    /// No such user (as far as the cache knows, for [`Iam::cached`]).
    Unknown,
}

/// A user as `list_users` shows it (no secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    /// The access key.
    pub access_key: String,
    /// Enabled or disabled.
    pub status: Status,
    /// What it may do.
    pub policy: Policy,
}

#[derive(Clone)]
enum Value {
    User(Arc<User>),
    /// Known not to exist until then.
    Absent(Instant),
}

/// A cache entry, stamped with the generation of the change that wrote it:
/// a load that started before that generation (a reload or a miss that
/// read the store before a local change or a hint was applied) must not
/// overwrite it with what it read.
#[derive(Clone)]
struct Entry {
    value: Value,
    gen: u64,
}

/// The IAM service of one node.
pub struct Iam {
    store: ConfigStore,
    cfg: IamConfig,
    cache: RwLock<HashMap<String, Entry>>,
    broadcast: Option<Arc<dyn Broadcast>>,
    hint_slots: Arc<Semaphore>,
    miss_slots: Arc<Semaphore>,
    /// Generations of changes (see [`Entry`]).
    gen: AtomicU64,
    /// Users in the cache (kept up to date, so publishing it is O(1)).
    users: AtomicUsize,
}

impl std::fmt::Debug for Iam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iam")
            .field("cached", &self.read_cache().len())
            .finish_non_exhaustive()
    }
}

fn doc_path(key: &str) -> String {
    format!("{USERS_DIR}/{key}.json")
}

fn record(op: &'static str, started: Instant, r: &Result<impl Sized, IamError>) {
    let outcome = if r.is_ok() { "ok" } else { "error" };
    metrics::histogram!(IAM_OP_SECONDS, "op" => op, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    if let Err(e) = r {
        if e.is_lock_timeout() {
            metrics::counter!(IAM_LOCK_TIMEOUTS, "op" => op).increment(1);
        }
    }
}

fn parse(key: &str, bytes: &[u8]) -> Result<User, IamError> {
    let u: User = serde_json::from_slice(bytes).map_err(|e| IamError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    if u.access_key != key {
        return Err(IamError::Corrupt {
            key: key.to_string(),
            reason: format!("the document names {:?}", u.access_key),
        });
    }
    Ok(u)
}

fn encode(u: &User) -> Vec<u8> {
    // A struct of strings and bools always serializes.
    serde_json::to_vec(u).unwrap_or_default()
}

impl Iam {
    /// The service over `store`, sending change hints through `broadcast`.
    pub fn new(
        store: ConfigStore,
        cfg: IamConfig,
        broadcast: Option<Arc<dyn Broadcast>>,
    ) -> Arc<Iam> {
        Arc::new(Iam {
            hint_slots: Arc::new(Semaphore::new(cfg.hint_slots.max(1))),
            miss_slots: Arc::new(Semaphore::new(cfg.miss_slots.max(1))),
            store,
            cfg,
            cache: RwLock::new(HashMap::new()),
            broadcast,
            gen: AtomicU64::new(1),
            users: AtomicUsize::new(0),
        })
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A generation for a change about to be applied, or for a load about
    /// to start (which may then overwrite only entries older than it).
    fn next_gen(&self) -> u64 {
        self.gen.fetch_add(1, Ordering::SeqCst)
    }

    fn publish_users(&self) {
        metrics::gauge!(IAM_CACHE_USERS).set(self.users.load(Ordering::Relaxed) as f64);
    }

    /// Write `user` (or its absence) for `key` with generation `gen`,
    /// unless the entry there is newer, or the negative bound is reached.
    /// O(1) under the lock but for the rare purge of expired negatives.
    fn put_cache(&self, key: &str, user: Option<User>, gen: u64) -> bool {
        let mut c = self.write_cache();
        if c.get(key).is_some_and(|e| e.gen > gen) {
            return false;
        }
        let value = match user {
            Some(u) => Value::User(Arc::new(u)),
            None => {
                let negatives =
                    |c: &HashMap<String, Entry>| c.len() - self.users.load(Ordering::Relaxed);
                if negatives(&c) >= self.cfg.max_negative {
                    let now = Instant::now();
                    c.retain(|_, e| !matches!(e.value, Value::Absent(t) if t <= now));
                }
                if negatives(&c) >= self.cfg.max_negative && !c.contains_key(key) {
                    return false; // not remembered: the bound holds
                }
                Value::Absent(Instant::now() + self.cfg.negative_ttl)
            }
        };
        let was_user = matches!(c.get(key).map(|e| &e.value), Some(Value::User(_)));
        let is_user = matches!(value, Value::User(_));
        c.insert(key.to_string(), Entry { value, gen });
        match (was_user, is_user) {
            (false, true) => {
                self.users.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.users.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        drop(c);
        self.publish_users();
        true
    }

    fn answer(value: &Value) -> Option<Lookup> {
        match value {
            Value::User(u) if u.status == Status::Enabled => Some(Lookup::Found(u.clone())),
            Value::User(_) => Some(Lookup::Disabled),
            Value::Absent(until) if Instant::now() < *until => Some(Lookup::Unknown),
            Value::Absent(_) => None,
        }
    }

    /// Users and remembered-absent keys in the cache.
    pub fn cache_entries(&self) -> (usize, usize) {
        let c = self.read_cache();
        let users = self.users.load(Ordering::Relaxed);
        (users, c.len() - users)
    }

    /// The request path: what the cache knows of `key`, now, without any
    /// I/O. A key the cache has never seen is `Unknown`.
    pub fn cached(&self, key: &str) -> Lookup {
        let c = self.read_cache();
        c.get(key)
            .and_then(|e| Self::answer(&e.value))
            .unwrap_or(Lookup::Unknown)
    }

    /// The cache, and on a miss one read of the store under
    /// `min(deadline, miss_timeout)`, if one of `miss_slots` is free (else
    /// [`IamError::Busy`] at once). A failed read is an error (the caller
    /// refuses the request as "try again", not as "unknown user").
    pub async fn lookup(&self, key: &str, deadline: Deadline) -> Result<Lookup, IamError> {
        let cached = self
            .read_cache()
            .get(key)
            .and_then(|e| Self::answer(&e.value));
        if let Some(a) = cached {
            let result = if matches!(a, Lookup::Unknown) {
                "negative"
            } else {
                "hit"
            };
            metrics::counter!(IAM_LOOKUPS, "result" => result).increment(1);
            return Ok(a);
        }
        if check_access_key(key).is_err() {
            // A key that cannot exist: no read, nothing remembered.
            metrics::counter!(IAM_LOOKUPS, "result" => "invalid").increment(1);
            return Ok(Lookup::Unknown);
        }
        let Ok(_slot) = self.miss_slots.try_acquire() else {
            metrics::counter!(IAM_LOOKUPS, "result" => "busy").increment(1);
            return Err(IamError::Busy);
        };
        let started = Instant::now();
        let gen = self.next_gen();
        let d = deadline.min(Deadline::after(self.cfg.miss_timeout));
        let r = self.load(key, d).await;
        record("lookup_miss", started, &r);
        match r {
            Ok(Some(u)) => {
                metrics::counter!(IAM_LOOKUPS, "result" => "miss_loaded").increment(1);
                let a = Self::answer(&Value::User(Arc::new(u.clone()))).unwrap_or(Lookup::Unknown);
                self.put_cache(key, Some(u), gen);
                Ok(a)
            }
            Ok(None) => {
                metrics::counter!(IAM_LOOKUPS, "result" => "miss_absent").increment(1);
                self.put_cache(key, None, gen);
                Ok(Lookup::Unknown)
            }
            Err(e) => {
                metrics::counter!(IAM_LOOKUPS, "result" => "miss_failed").increment(1);
                Err(e)
            }
        }
    }

    async fn load(&self, key: &str, deadline: Deadline) -> Result<Option<User>, IamError> {
        match self.store.read(&doc_path(key), deadline).await? {
            Some(bytes) => parse(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn changed(&self, key: &str) {
        if let Some(b) = &self.broadcast {
            b.send(NOTIFY_TOPIC, key);
        }
    }

    /// Create `user`; [`IamError::UserExists`] if its key is taken.
    pub async fn add_user(&self, user: User, deadline: Deadline) -> Result<(), IamError> {
        let started = Instant::now();
        let r = self.add_user_inner(user, deadline).await;
        record("add_user", started, &r);
        r
    }

    async fn add_user_inner(&self, user: User, deadline: Deadline) -> Result<(), IamError> {
        check_keys(&user.access_key, &user.secret_key).map_err(IamError::InvalidUser)?;
        let key = user.access_key.clone();
        let bytes = encode(&user);
        let r = self
            .store
            .update(&doc_path(&key), deadline, |cur| match cur {
                Some(_) => Err("exists".into()),
                None => Ok(Some(bytes)),
            })
            .await;
        match r {
            Ok(_) => {}
            Err(ConfigError::Refused { .. }) => return Err(IamError::UserExists(key)),
            Err(e) => return Err(e.into()),
        }
        self.put_cache(&key, Some(user), self.next_gen());
        self.changed(&key);
        Ok(())
    }

    /// Enable or disable the user `key`.
    pub async fn set_status(
        &self,
        key: &str,
        status: Status,
        deadline: Deadline,
    ) -> Result<(), IamError> {
        let started = Instant::now();
        let r = self.modify(key, deadline, |u| u.status = status).await;
        record("set_status", started, &r);
        r
    }

    async fn modify(
        &self,
        key: &str,
        deadline: Deadline,
        f: impl FnOnce(&mut User),
    ) -> Result<(), IamError> {
        let mut updated = None;
        let r = self
            .store
            .update(&doc_path(key), deadline, |cur| {
                let Some(bytes) = cur else {
                    return Err("missing".into());
                };
                let mut u = parse(key, &bytes).map_err(|e| e.to_string())?;
                f(&mut u);
                let out = encode(&u);
                updated = Some(u);
                Ok(Some(out))
            })
            .await;
        match r {
            Ok(_) => {}
            Err(ConfigError::Refused { reason, .. }) if reason == "missing" => {
                return Err(IamError::NoSuchUser(key.to_string()))
            }
            Err(ConfigError::Refused { reason, .. }) => {
                return Err(IamError::Corrupt {
                    key: key.to_string(),
                    reason,
                })
            }
            Err(e) => return Err(e.into()),
        }
        self.put_cache(key, updated, self.next_gen());
        self.changed(key);
        Ok(())
    }

    /// Remove the user `key`.
    pub async fn remove_user(&self, key: &str, deadline: Deadline) -> Result<(), IamError> {
        let started = Instant::now();
        let r = async {
            if !self.store.delete(&doc_path(key), deadline).await? {
                return Err(IamError::NoSuchUser(key.to_string()));
            }
            self.put_cache(key, None, self.next_gen());
            self.changed(key);
            Ok(())
        }
        .await;
        record("remove_user", started, &r);
        r
    }

    /// Every user, from the store (not the cache), sorted by key. A
    /// document that cannot be read as a user is left out and logged.
    pub async fn list_users(&self, deadline: Deadline) -> Result<Vec<UserSummary>, IamError> {
        let started = Instant::now();
        let r = self.read_all(deadline).await.map(|users| {
            users
                .into_iter()
                .map(|u| UserSummary {
                    access_key: u.access_key,
                    status: u.status,
                    policy: u.policy,
                })
                .collect()
        });
        record("list_users", started, &r);
        r
    }

    async fn read_all(&self, deadline: Deadline) -> Result<Vec<User>, IamError> {
        let names = match self.store.list(USERS_DIR, deadline).await {
            Ok(n) => n,
            Err(ConfigError::TooMany { .. }) => {
                return Err(IamError::TooManyUsers(self.cfg.max_users))
            }
            Err(e) => return Err(e.into()),
        };
        let keys: Vec<String> = names
            .iter()
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect();
        if keys.len() > self.cfg.max_users {
            return Err(IamError::TooManyUsers(self.cfg.max_users));
        }
        let loads: Vec<_> = keys
            .into_iter()
            .map(|k| async move { (self.load(&k, deadline).await, k) })
            .collect();
        let loaded: Vec<(Result<Option<User>, IamError>, String)> = stream::iter(loads)
            .buffered(self.cfg.reload_concurrency.max(1))
            .collect()
            .await;
        let mut users = Vec::with_capacity(loaded.len());
        for (u, key) in loaded {
            match u {
                // A user removed between the listing and its read is gone.
                Ok(Some(u)) => users.push(u),
                Ok(None) => {}
                // One bad document must not keep every other change from
                // reaching this node.
                Err(e @ IamError::Corrupt { .. }) => {
                    tracing::warn!(key = %key, error = %e, "IAM: unreadable user document skipped");
                }
                Err(e) => return Err(e),
            }
        }
        users.sort_by(|a, b| a.access_key.cmp(&b.access_key));
        Ok(users)
    }

    /// Bring the cache to the store's users; how many there are. Entries
    /// changed since the reload started (a local change, a hint) are kept.
    /// On failure the cache is kept as it was (stale beats empty).
    pub async fn reload(&self, deadline: Deadline) -> Result<usize, IamError> {
        let started = Instant::now();
        let gen = self.next_gen();
        let r = self.read_all(deadline).await.map(|users| {
            let n = users.len();
            let present: std::collections::HashSet<String> =
                users.iter().map(|u| u.access_key.clone()).collect();
            for u in users {
                let key = u.access_key.clone();
                self.put_cache(&key, Some(u), gen);
            }
            // Users the store no longer has, unless changed meanwhile.
            let gone: Vec<String> = self
                .read_cache()
                .iter()
                .filter(|(k, e)| {
                    matches!(e.value, Value::User(_)) && e.gen <= gen && !present.contains(*k)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                self.put_cache(&k, None, gen);
            }
            n
        });
        record("reload", started, &r);
        r
    }

    /// Reload every `refresh_interval` until the last handle to the service
    /// goes.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let every = self.cfg.refresh_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(iam) = weak.upgrade() else { return };
                if let Err(e) = iam.reload(Deadline::after(iam.cfg.reload_timeout)).await {
                    tracing::warn!(error = %e, "IAM reload failed; serving the cached users");
                }
            }
        })
    }

    /// A peer says `key` changed: reload it in the background if a slot is
    /// free. Never waits; returns whether the hint was taken.
    pub fn hint(self: &Arc<Self>, key: &str) -> bool {
        if check_access_key(key).is_err() {
            return false;
        }
        let Ok(permit) = self.hint_slots.clone().try_acquire_owned() else {
            metrics::counter!(IAM_HINTS_DROPPED).increment(1);
            return false;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let (iam, key) = (self.clone(), key.to_string());
        let gen = self.next_gen();
        rt.spawn(async move {
            let _permit = permit;
            match iam.load(&key, Deadline::after(iam.cfg.miss_timeout)).await {
                Ok(u) => {
                    iam.put_cache(&key, u, gen);
                }
                Err(e) => tracing::debug!(key = %key, error = %e, "IAM hint reload failed"),
            }
        });
        true
    }
}

/// The [`Listener`] a node's RPC server hands IAM hints to.
pub struct IamListener(pub Arc<Iam>);

impl Listener for IamListener {
    fn notify(&self, topic: &str, key: &str) -> bool {
        topic == NOTIFY_TOPIC && self.0.hint(key)
    }
}
