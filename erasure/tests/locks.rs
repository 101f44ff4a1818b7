//! Quorum locks over in-process lockers with injected faults: a locker
//! that is down, hung, or restarted (its leases gone); an owner that dies
//! holding a lock; and a seeded chaos run checking mutual exclusion.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use disk_io_api::{Deadline, DiskError, LeaseConfig, LeaseTable, LockKind, LockRequest, Locker};
use disk_io_erasure::{LockConfig, LockError, QuorumLock};
use disk_io_harness::Ledger;

mod lock_client;
use lock_client::{acquire_latencies, chaos_seed, counter_client, Pace};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const UP: u8 = 0;
/// Answers at once with `Unreachable` (a powered-off node whose breaker is
/// open, or a refused connection).
const DOWN: u8 = 1;
/// Answers nothing until the caller's deadline (packets dropped).
const HUNG: u8 = 2;
/// Delivers every message late (0–250 ms), whether or not its caller still
/// waits: acquires and releases arrive late and out of order.
const SLOW: u8 = 3;

/// A node's locker: its lease table (replaced on a restart) and its
/// state, shared by every client.
struct Node {
    label: String,
    table: Mutex<Arc<LeaseTable>>,
    mode: AtomicU8,
    quiet: Duration,
    /// Deterministic delays of the SLOW mode.
    jitter: std::sync::atomic::AtomicU64,
}

impl Node {
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// The node restarts: its leases are gone, and it grants nothing for
    /// its quiet period.
    fn restart(&self) {
        let t = LeaseTable::new(
            &self.label,
            LeaseConfig {
                startup_quiet: self.quiet,
                ..LeaseConfig::default()
            },
        );
        *self.table.lock().unwrap() = Arc::new(t);
    }

    fn table(&self) -> Arc<LeaseTable> {
        self.table.lock().unwrap().clone()
    }
}

/// One client's view of a node's locker: the node's own state, plus a cut
/// of this client's link (the client's node lost power: nothing it sends
/// arrives).
struct FaultyLocker {
    node: Arc<Node>,
    cut: AtomicU8,
}

impl FaultyLocker {
    /// Run `op` on the node's table as the network delivers it: at once,
    /// never (down, hung), or late even for a caller that has gone (slow).
    async fn deliver<T: Send + 'static>(
        &self,
        deadline: Deadline,
        op: impl FnOnce(&LeaseTable) -> Result<T, DiskError> + Send + 'static,
    ) -> Result<T, DiskError> {
        let mode = self
            .node
            .mode
            .load(Ordering::SeqCst)
            .max(self.cut.load(Ordering::SeqCst));
        if mode != SLOW {
            self.gate(deadline).await?;
            return op(&self.node.table());
        }
        let delay =
            Duration::from_micros(self.node.jitter.fetch_add(7919, Ordering::Relaxed) % 250_000);
        let node = self.node.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(op(&node.table()));
        });
        match tokio::time::timeout_at(deadline.instant().into(), rx).await {
            Ok(Ok(r)) => r,
            _ => Err(DiskError::DeadlineExceeded {
                op: disk_io_api::OpClass::Lock,
                waited: Duration::ZERO,
            }),
        }
    }

    async fn gate(&self, deadline: Deadline) -> Result<(), DiskError> {
        let mode = self
            .node
            .mode
            .load(Ordering::SeqCst)
            .max(self.cut.load(Ordering::SeqCst));
        match mode {
            DOWN => Err(DiskError::Unreachable {
                reason: format!("{} is down", self.node.label),
            }),
            HUNG => {
                tokio::time::sleep_until(deadline.instant().into()).await;
                Err(DiskError::DeadlineExceeded {
                    op: disk_io_api::OpClass::Lock,
                    waited: Duration::ZERO,
                })
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Locker for FaultyLocker {
    fn label(&self) -> &str {
        &self.node.label
    }

    async fn acquire(&self, req: &LockRequest, deadline: Deadline) -> Result<bool, DiskError> {
        let req = req.clone();
        self.deliver(deadline, move |t| t.try_acquire(&req)).await
    }

    async fn refresh(
        &self,
        resource: &str,
        uid: &str,
        ttl: Duration,
        deadline: Deadline,
    ) -> Result<bool, DiskError> {
        let (r, u) = (resource.to_string(), uid.to_string());
        self.deliver(deadline, move |t| t.try_refresh(&r, &u, ttl))
            .await
    }

    async fn release(
        &self,
        resource: &str,
        uid: &str,
        deadline: Deadline,
    ) -> Result<bool, DiskError> {
        let (r, u) = (resource.to_string(), uid.to_string());
        self.deliver(deadline, move |t| t.try_release(&r, &u)).await
    }
}

fn cluster(n: usize, quiet: Duration) -> Vec<Arc<Node>> {
    (1..=n)
        .map(|i| {
            Arc::new(Node {
                label: format!("node{i}"),
                table: Mutex::new(Arc::new(LeaseTable::new(
                    &format!("node{i}"),
                    LeaseConfig {
                        startup_quiet: Duration::ZERO,
                        ..LeaseConfig::default()
                    },
                ))),
                mode: AtomicU8::new(UP),
                quiet,
                jitter: std::sync::atomic::AtomicU64::new(i as u64 * 104_729),
            })
        })
        .collect()
}

/// A client's lockers (one view per node) and its quorum lock.
fn client(
    nodes: &[Arc<Node>],
    owner: &str,
    cfg: &LockConfig,
) -> (QuorumLock, Vec<Arc<FaultyLocker>>) {
    let views: Vec<Arc<FaultyLocker>> = nodes
        .iter()
        .map(|n| {
            Arc::new(FaultyLocker {
                node: n.clone(),
                cut: AtomicU8::new(UP),
            })
        })
        .collect();
    let lockers: Vec<Arc<dyn Locker>> =
        views.iter().map(|v| v.clone() as Arc<dyn Locker>).collect();
    (
        QuorumLock::new(lockers, owner, cfg.clone()).expect("lock config"),
        views,
    )
}

fn locks(nodes: &[Arc<Node>], owner: &str, cfg: &LockConfig) -> QuorumLock {
    client(nodes, owner, cfg).0
}

fn fast_cfg() -> LockConfig {
    LockConfig {
        ttl: Duration::from_millis(600),
        refresh_interval: Duration::from_millis(200),
        attempt_timeout: Duration::from_millis(100),
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
        validity_fraction: 0.9,
    }
}

/// Slack over a bound that a loaded 2-vCPU machine still meets.
const SLACK: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_needs_a_majority_read_a_half_and_timeouts_say_why() {
    let nodes = cluster(4, Duration::ZERO);
    let cfg = fast_cfg();
    let a = locks(&nodes, "a", &cfg);
    nodes[0].set(HUNG);
    nodes[1].set(DOWN);
    // Write needs 3 of 4; only 2 answer.
    let t0 = Instant::now();
    let r = a
        .lock(
            "x",
            LockKind::Write,
            Deadline::after(Duration::from_millis(400)),
        )
        .await;
    let took = t0.elapsed();
    match r {
        Err(LockError::Timeout {
            needed,
            granted,
            refused,
            unavailable,
            attempts,
            ..
        }) => {
            assert_eq!((needed, granted, refused, unavailable), (3, 2, 0, 2));
            assert!(attempts >= 2, "retried within the deadline: {attempts}");
        }
        other => panic!("expected a typed timeout, got {other:?}"),
    }
    assert!(
        took <= Duration::from_millis(400) + SLACK,
        "answered after {took:?}"
    );
    // Read needs 2 of 4: granted by the two that answer.
    let g = a
        .lock("x", LockKind::Read, Deadline::after(Duration::from_secs(2)))
        .await
        .expect("read lock with two lockers out");
    assert!(g.is_held());
    // Another reader shares it; a writer cannot get in even with every
    // locker back (the readers hold two of four: a writer gets at most 2).
    nodes[0].set(UP);
    nodes[1].set(UP);
    let b = locks(&nodes, "b", &cfg);
    let g2 = b
        .lock("x", LockKind::Read, Deadline::after(Duration::from_secs(2)))
        .await
        .expect("a second reader");
    let w = b
        .lock(
            "x",
            LockKind::Write,
            Deadline::after(Duration::from_millis(300)),
        )
        .await;
    assert!(
        matches!(w, Err(LockError::Timeout { refused, .. }) if refused >= 2),
        "{w:?}"
    );
    assert!(g.release(Deadline::after(Duration::from_secs(1))).await >= 2);
    assert!(g2.release(Deadline::after(Duration::from_secs(1))).await >= 2);
    let w = b
        .lock(
            "x",
            LockKind::Write,
            Deadline::after(Duration::from_secs(2)),
        )
        .await
        .expect("write after the readers left");
    assert!(w.is_held());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_locker_costs_no_acquisition_its_attempt_timeout() {
    let nodes = cluster(4, Duration::ZERO);
    let cfg = LockConfig {
        attempt_timeout: Duration::from_millis(150),
        ..fast_cfg()
    };
    let a = locks(&nodes, "a", &cfg);
    nodes[3].set(HUNG);
    let mut lat = acquire_latencies(&a, "r", 20, Duration::from_secs(2)).await;
    // Quorum is three fast answers; nobody waits for the hung one: were
    // they waited for, every acquisition would take the 150 ms attempt.
    lat.sort();
    let median = lat[lat.len() / 2];
    assert!(
        median < Duration::from_millis(75),
        "median acquire {median:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_lock_is_free_after_its_ttl_and_not_before() {
    let nodes = cluster(4, Duration::ZERO);
    let cfg = fast_cfg();
    let (owner, links) = client(&nodes, "owner", &cfg);
    let g = owner
        .lock(
            "x",
            LockKind::Write,
            Deadline::after(Duration::from_secs(2)),
        )
        .await
        .expect("lock");
    // The owner's node loses power: its refreshes and its release never
    // arrive again.
    let died = Instant::now();
    for l in &links {
        l.cut.store(DOWN, Ordering::SeqCst);
    }
    // The leases started when the lockers granted them, a little before
    // `died`: "before the TTL" is judged with that much slack.
    let early = Duration::from_millis(200);
    let other = locks(&nodes, "other", &cfg);
    let g2 = other
        .lock(
            "x",
            LockKind::Write,
            Deadline::after(Duration::from_secs(5)),
        )
        .await
        .expect("the lock frees itself");
    let after = died.elapsed();
    assert!(
        after + early >= cfg.ttl,
        "granted after {after:?}, before the TTL"
    );
    assert!(
        after <= cfg.ttl + SLACK,
        "granted {after:?} after the owner died"
    );
    assert!(g2.is_held());
    // The dead owner's guard sees it lost the lock too (its validity ran
    // out without a refresh), so it cannot go on as if it held it.
    assert!(!g.is_held());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_learns_it_lost_quorum() {
    let nodes = cluster(4, Duration::from_millis(600));
    let cfg = fast_cfg();
    let a = locks(&nodes, "a", &cfg);
    let g = a
        .lock(
            "x",
            LockKind::Write,
            Deadline::after(Duration::from_secs(2)),
        )
        .await
        .expect("lock");
    // Two of four lockers restart: their leases are gone, so a refresh
    // round keeps at most two, below the write quorum.
    nodes[0].restart();
    nodes[1].restart();
    let t0 = Instant::now();
    tokio::time::timeout(cfg.refresh_interval * 2 + SLACK, g.lost())
        .await
        .expect("the holder hears of the loss within a refresh round");
    assert!(!g.is_held());
    assert!(t0.elapsed() <= cfg.refresh_interval + SLACK);
    // And a holder cut off from every locker loses it when its validity
    // runs out, without any answer.
    for n in &nodes {
        n.set(UP);
    }
    tokio::time::sleep(cfg.ttl).await; // past the restarted lockers' quiet time
    let g = a
        .lock(
            "y",
            LockKind::Write,
            Deadline::after(Duration::from_secs(2)),
        )
        .await
        .expect("lock");
    for n in &nodes {
        n.set(HUNG);
    }
    let valid = g.valid_until();
    tokio::time::timeout(cfg.ttl + SLACK, g.lost())
        .await
        .expect("lost when the validity ran out");
    assert!(Instant::now() >= valid);
}

/// Clients on three nodes take a write lock and increment a counter, while
/// lockers go down, hang, deliver late and out of order, and restart at
/// seeded random times. Every critical
/// section logs its interval; two successful ones never overlap, and the
/// counter equals the successes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_holds_while_lockers_fail_and_restart() {
    let seed = chaos_seed();
    let cfg = fast_cfg();
    // A restarted locker stays quiet for a whole TTL (LeaseConfig::startup_quiet).
    let nodes = cluster(5, cfg.ttl);
    let ledger = Arc::new(Ledger::new());
    let stop_at = Instant::now() + Duration::from_secs(8);

    let chaos = {
        let nodes = nodes.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut events = 0;
            // Until when each node is out (down, hung, or quiet after a
            // restart); at most two of five at once, so a write quorum
            // (three) stays possible and the run makes progress, while
            // restarts still take leases from under their holders.
            let mut out_until = vec![Instant::now(); nodes.len()];
            let far = Duration::from_secs(3600);
            while Instant::now() < stop_at {
                tokio::time::sleep(Duration::from_millis(rng.random_range(10..120))).await;
                let now = Instant::now();
                let i = rng.random_range(0..nodes.len());
                let out = out_until.iter().filter(|u| **u > now).count();
                let action = if out >= 2 && out_until[i] <= now {
                    4
                } else {
                    rng.random_range(0..5u8)
                };
                match action {
                    0 => {
                        nodes[i].set(DOWN);
                        out_until[i] = now + far;
                    }
                    1 => {
                        nodes[i].set(HUNG);
                        out_until[i] = now + far;
                    }
                    2 => {
                        nodes[i].set(UP);
                        nodes[i].restart();
                        out_until[i] = now + nodes[i].quiet;
                    }
                    3 => {
                        // Late and reordered messages: counted as out, as
                        // their answers often miss the attempt deadline.
                        nodes[i].set(SLOW);
                        out_until[i] = now + far;
                    }
                    _ => {
                        // Bring back a node that is out (this one, or any).
                        let j = if out_until[i] > now {
                            i
                        } else {
                            (0..nodes.len()).find(|&j| out_until[j] > now).unwrap_or(i)
                        };
                        if out_until[j] > now + nodes[j].quiet {
                            nodes[j].set(UP);
                            out_until[j] = now;
                        }
                    }
                }
                events += 1;
            }
            for n in &nodes {
                n.set(UP);
            }
            events
        })
    };
    let mut clients = Vec::new();
    for c in 0..3 {
        let l = locks(&nodes, &format!("client{c}"), &cfg);
        let ledger = ledger.clone();
        let name = format!("client{c}");
        clients.push(tokio::spawn(async move {
            let pace = Pace {
                lock_within: Duration::from_millis(500),
                think_max: Duration::from_millis(250),
                release_within: Duration::from_millis(200),
            };
            counter_client(l, &ledger, &name, seed, stop_at, pace).await
        }));
    }
    let mut attempts = 0;
    for c in clients {
        attempts += c.await.expect("client");
    }
    let events = chaos.await.expect("chaos");
    if let Some(v) = ledger.violation() {
        panic!("mutual exclusion broken (seed {seed}): {v}");
    }
    let n = ledger.sections().len();
    eprintln!("{events} fault events, {attempts} attempts, {n} critical sections");
    assert!(
        n >= 10,
        "too few sections succeeded to mean anything: {n} (seed {seed})"
    );
}
