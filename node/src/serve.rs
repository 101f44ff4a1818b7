//! `serve`: one full node. It serves its disks and locker over the node
//! RPC at once (peers may need them to start), then bootstraps in the
//! background: opens the erasure sets over its own disks (local) and its
//! peers' (remote) under one deadline, makes the reserved buckets and
//! loads IAM, retrying until the cluster answers; only then does it bind
//! S3 and report ready. A healer drains the heal queue, and a scanner
//! (one node per set at a time, under a quorum lock) heals what the queue
//! missed, every `scan_interval` and as soon as a dead peer comes back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use disk_io::{Deadline, Disk};
use disk_io_api::{LeaseTable, Listener, LockKind, Locker};
use disk_io_erasure::{
    ConfigStore, ConfigStoreConfig, DiskSlot, ErasureSets, LockConfig, QuorumLock,
};
use disk_io_iam::{Iam, IamListener};
use disk_io_rpc::{BreakerState, ClusterConfig, NodeConfig, Peer, RpcServer, Services};

use crate::admin::{cluster_view, AdminService, ClusterView, NodeState};
use crate::objects::ObjectLayer;
use crate::s3::{IamAccess, IamAuth, S3Front};
use crate::{lease_config, open_disks, topology, NodeOptions, PeerBroadcast};

/// Gauge: 1 once the node serves S3.
pub const NODE_READY: &str = "diskio_node_ready";
/// Counter: shards rebuilt by this node's healer and scanner.
pub const NODE_HEALED: &str = "diskio_node_healed_shards_total";

/// What the node has once bootstrapped.
struct Ready {
    sets: Arc<ErasureSets>,
    iam: Arc<Iam>,
    lock: QuorumLock,
}

/// Shared state of a running node (admin service, ops endpoints).
pub struct Node {
    name: String,
    names: Vec<String>,
    peers: Vec<Arc<Peer>>,
    ready: OnceLock<Ready>,
    ready_flag: AtomicBool,
    healed: AtomicU64,
    scans: AtomicU64,
    /// Per set: start (Unix ms) of this node's last complete scan.
    scanned_ms: std::sync::Mutex<Vec<Option<u64>>>,
    /// The collector's totals.
    collected: std::sync::Mutex<crate::admin::CollectorView>,
    iam_listener: OnceLock<IamListener>,
}

impl Node {
    /// Whether the node serves S3.
    pub fn is_ready(&self) -> bool {
        self.ready_flag.load(Ordering::Acquire)
    }
}

impl NodeState for Node {
    fn view(&self) -> ClusterView {
        cluster_view(
            &self.name,
            self.is_ready(),
            &self.names,
            &self.peers,
            self.ready.get().map(|r| r.sets.as_ref()),
            self.healed.load(Ordering::Relaxed),
            self.scans.load(Ordering::Relaxed),
            &self.scanned_ms.lock().unwrap_or_else(|e| e.into_inner()),
            self.collected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    fn iam(&self) -> Option<Arc<Iam>> {
        self.ready.get().map(|r| r.iam.clone())
    }
}

/// Peers' IAM hints, dropped until IAM is loaded (its first load reads
/// everything anyway).
struct LateListener(Arc<Node>);

impl Listener for LateListener {
    fn notify(&self, topic: &str, key: &str) -> bool {
        self.0
            .iam_listener
            .get()
            .is_some_and(|l| l.notify(topic, key))
    }
}

/// Serves the node until `shutdown` resolves.
pub async fn serve(
    config: &ClusterConfig,
    opts: &NodeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let me = config
        .node(&opts.node)
        .ok_or_else(|| anyhow!("no node named {:?} in cluster {}", opts.node, config.name))?
        .clone();
    let local_dyn = open_disks(config, opts).await?;
    let table = Arc::new(LeaseTable::new(&me.name, lease_config(config)));
    let sweeper = tokio::spawn(crate::sweep_leases(table.clone(), config.locks.ttl()));
    let mut peers = Vec::new();
    for n in config.nodes.iter().filter(|n| n.name != me.name) {
        peers.push(
            Peer::new(
                &n.name,
                n.rpc_addr,
                config.secret.as_bytes(),
                opts.rpc.clone(),
            )
            .map_err(|e| anyhow!("peer {}: {e}", n.name))?,
        );
    }
    let node = Arc::new(Node {
        name: me.name.clone(),
        names: config.nodes.iter().map(|n| n.name.clone()).collect(),
        peers: peers.clone(),
        ready: OnceLock::new(),
        ready_flag: AtomicBool::new(false),
        healed: AtomicU64::new(0),
        scans: AtomicU64::new(0),
        scanned_ms: std::sync::Mutex::new(Vec::new()),
        collected: Default::default(),
        iam_listener: OnceLock::new(),
    });
    metrics::gauge!(NODE_READY).set(0.0);
    metrics::counter!(NODE_HEALED).absolute(0);

    let services = Services {
        locker: Some(table.clone() as Arc<dyn Locker>),
        listener: Some(Arc::new(LateListener(node.clone()))),
        admin: Some(Arc::new(AdminService::new(node.clone()))),
    };
    let server = RpcServer::serving(
        local_dyn.clone(),
        services,
        config.secret.as_bytes(),
        opts.rpc.clone(),
    )?;
    let rpc_listener = tokio::net::TcpListener::bind(me.rpc_addr)
        .await
        .with_context(|| format!("binding the RPC address {}", me.rpc_addr))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rpc = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            server
                .serve(rpc_listener, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let http = match me.http_addr {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the HTTP address {addr}"))?;
            Some(tokio::spawn(crate::http::serve_ops(
                l,
                node.clone(),
                opts.metrics.clone(),
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    tracing::info!(node = %me.name, rpc = %me.rpc_addr, s3 = %me.s3_addr, http = ?me.http_addr, disks = local_dyn.len(), backend = ?opts.backend, "node started; bootstrapping");

    let boot = tokio::spawn(bootstrap(
        config.clone(),
        me.clone(),
        opts.clone(),
        node.clone(),
        local_dyn,
        table,
        peers,
        stop_rx.clone(),
    ));
    // A bootstrap that fails for good (a bad config, the S3 port taken)
    // ends the process with its error instead of leaving it unready.
    let mut boot = boot;
    let failed = tokio::select! {
        _ = shutdown => None,
        r = &mut boot => Some(match r {
            Ok(Ok(())) => anyhow!("the S3 server stopped"),
            Ok(Err(e)) => e,
            Err(e) => anyhow!("bootstrap task: {e}"),
        }),
    };
    let _ = stop_tx.send(true);
    boot.abort();
    sweeper.abort();
    if let Some(h) = http {
        let _ = h.await;
    }
    match rpc.await {
        Ok(r) => r?,
        Err(e) => return Err(anyhow!("RPC server task: {e}")),
    }
    match failed {
        Some(e) => Err(e.context("bootstrap")),
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn bootstrap(
    config: ClusterConfig,
    me: NodeConfig,
    opts: NodeOptions,
    node: Arc<Node>,
    local: Vec<Arc<dyn Disk>>,
    table: Arc<LeaseTable>,
    peers: Vec<Arc<Peer>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let topo = topology(&config)?;
    let my_index = config
        .nodes
        .iter()
        .position(|n| n.name == me.name)
        .expect("the node is in its config");
    let mut disks: HashMap<DiskSlot, Arc<dyn Disk>> = HashMap::new();
    for (ni, n) in config.nodes.iter().enumerate() {
        for d in 0..topo.disks_per_node {
            let disk: Arc<dyn Disk> = if ni == my_index {
                local.get(d).cloned().ok_or_else(|| {
                    anyhow!(
                        "node {} has {} disks, the topology {}",
                        n.name,
                        local.len(),
                        topo.disks_per_node
                    )
                })?
            } else {
                let p = peers
                    .iter()
                    .find(|p| p.name() == n.name)
                    .expect("a peer per node");
                Arc::new(p.disk(d as u32, opts.health.clone(), Vec::new()))
            };
            disks.insert(DiskSlot { node: ni, disk: d }, disk);
        }
    }
    let (sets, reports) = ErasureSets::open(
        topo,
        |slot| disks[&slot].clone(),
        opts.erasure_config(),
        Deadline::after(opts.sets_open_deadline),
    )
    .await
    .map_err(|e| anyhow!("opening the erasure sets: {e}"))?;
    for r in &reports {
        tracing::info!(
            set = r.set,
            available = r.available(),
            disks = r.disks.len(),
            "set opened"
        );
    }
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "erasure sets open"
    );
    let sets = Arc::new(sets);

    let mut lockers: Vec<Arc<dyn Locker>> = Vec::new();
    for n in &config.nodes {
        match peers.iter().find(|p| p.name() == n.name) {
            Some(p) => lockers.push(Arc::new(p.locker())),
            None => lockers.push(table.clone()),
        }
    }
    let lock_cfg = LockConfig {
        ttl: config.locks.ttl(),
        refresh_interval: config.locks.refresh(),
        attempt_timeout: config.locks.attempt(),
        ..LockConfig::default()
    };
    let lock =
        QuorumLock::new(lockers.clone(), &me.name, lock_cfg.clone()).map_err(|e| anyhow!("{e}"))?;
    let store = ConfigStore::new(sets.clone(), lock.clone(), ConfigStoreConfig::default());
    let broadcast = PeerBroadcast::new(peers.clone(), opts.hint_deadline, opts.iam.hint_slots);
    let iam = Iam::new(store.clone(), opts.iam.clone(), Some(Arc::new(broadcast)));
    let objects = Arc::new(ObjectLayer::new(sets.clone(), opts.objects.clone()));

    // Until the cluster answers: system buckets, then IAM's first load.
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let d = Deadline::after(opts.bootstrap_step);
        let r = async {
            store
                .init(d)
                .await
                .map_err(|e| anyhow!("config store: {e}"))?;
            objects
                .init(d)
                .await
                .map_err(|e| anyhow!("multipart bucket: {e}"))?;
            iam.reload(Deadline::after(opts.iam.reload_timeout))
                .await
                .map_err(|e| anyhow!("IAM: {e}"))?;
            anyhow::Ok(())
        }
        .await;
        match r {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(attempt, error = %e, "bootstrap step failed; retrying");
                tokio::time::sleep(opts.bootstrap_retry).await;
            }
        }
    }
    let _ = node.iam_listener.set(IamListener(iam.clone()));
    let _refresher = iam.spawn_refresher();

    let s3_listener = tokio::net::TcpListener::bind(me.s3_addr)
        .await
        .with_context(|| format!("binding the S3 address {}", me.s3_addr))?;
    let mut builder = s3s::service::S3ServiceBuilder::new(S3Front::new(objects));
    builder.set_auth(IamAuth::new(iam.clone(), opts.iam.miss_timeout));
    builder.set_access(IamAccess::new(iam.clone(), opts.iam.miss_timeout));
    let service = builder.build();
    let _ = node.ready.set(Ready {
        sets: sets.clone(),
        iam,
        lock: QuorumLock::new(lockers, &me.name, lock_cfg).map_err(|e| anyhow!("{e}"))?,
    });
    node.ready_flag.store(true, Ordering::Release);
    metrics::gauge!(NODE_READY).set(1.0);
    tracing::info!(took_ms = started.elapsed().as_millis() as u64, attempts = attempt, s3 = %me.s3_addr, "ready: serving S3");

    tokio::spawn(healer(node.clone(), sets.clone(), stop.clone()));
    tokio::spawn(scanner(node.clone(), opts.clone(), stop.clone()));
    tokio::spawn(collector(node.clone(), opts.clone(), stop.clone()));
    crate::http::serve_s3(s3_listener, service, &opts.s3_http, stop).await;
    Ok(())
}

/// Pop heal tasks and heal them, counting rebuilt shards.
async fn healer(
    node: Arc<Node>,
    sets: Arc<ErasureSets>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let wait = Deadline::after(Duration::from_millis(500));
        tokio::select! {
            _ = crate::http::stopped(&mut stop) => return,
            r = sets.heal_next(wait) => {
                if let Some((_, Ok(rep))) = r {
                    count_healed(&node, rep.healed.len());
                }
            }
        }
    }
}

fn count_healed(node: &Node, n: usize) {
    if n > 0 {
        node.healed.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!(NODE_HEALED).increment(n as u64);
    }
}

/// Every `scan_interval`, and soon after a peer that was away comes back:
/// for each set whose scan lock this node gets, scan every bucket. A scan
/// for a returning peer waits until every disk is online again (at most
/// `scan_online_wait`: healing while its disks still probe would skip
/// them), and one that could not heal everything is tried again after
/// `scan_retry`.
async fn scanner(node: Arc<Node>, opts: NodeOptions, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(ready) = node.ready.get() else {
        return;
    };
    // The deep (bitrot) scan keeps its own schedule: quick scans for a
    // returning peer, or retries after an incomplete scan, never postpone
    // it. (Before, an incomplete scan made every later scan quick, so one
    // unhealable object switched bitrot scanning off for good.)
    let mut last_deep = Instant::now();
    // The breakers' open counts: a peer away for less than one poll still
    // moves its count.
    let mut opens: Vec<u64> = node.peers.iter().map(|p| p.breaker_opened()).collect();
    let mut pending = Some(Instant::now()); // a scan right after start covers a restart
    loop {
        tokio::select! {
            _ = crate::http::stopped(&mut stop) => return,
            _ = tokio::time::sleep(opts.peer_watch) => {}
        }
        let mut down = false;
        for (i, p) in node.peers.iter().enumerate() {
            let n = p.breaker_opened();
            if n != opens[i] {
                opens[i] = n;
                pending.get_or_insert_with(Instant::now);
            }
            down |= p.breaker_state() != BreakerState::Closed;
        }
        let due = last_deep.elapsed() >= opts.scan_interval;
        let Some(since) = pending.or(due.then(Instant::now)) else {
            continue;
        };
        if down {
            // A peer is still down: healing now would skip its disks. The
            // wait for its disks to be online starts when it is back.
            if pending.is_some() {
                pending = Some(Instant::now());
            }
            continue;
        }
        let online = ready.sets.sets().iter().all(|s| {
            s.disks()
                .iter()
                .all(|d| d.state() == disk_io::HealthState::Online)
        });
        if !online && since.elapsed() < opts.scan_online_wait {
            continue;
        }
        // A scan for a returning peer looks for what it missed (metadata
        // and shard files, without reading every shard); the periodic one
        // reads and verifies everything (bitrot).
        let deep = due;
        if deep {
            last_deep = Instant::now();
        }
        let complete = scan_all(&node, ready, &opts, deep).await;
        if !complete {
            tokio::select! {
                _ = crate::http::stopped(&mut stop) => return,
                _ = tokio::time::sleep(opts.scan_retry) => {}
            }
        }
        pending = (!complete).then(Instant::now);
    }
}

/// Every `collect_interval`: for each set whose collector lock this node
/// gets, one collector pass over every bucket and the temporary volume.
/// Every rule of the collector is safe to run from two nodes at once; the
/// lock only saves the work.
async fn collector(
    node: Arc<Node>,
    opts: NodeOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(ready) = node.ready.get() else {
        return;
    };
    loop {
        tokio::select! {
            _ = crate::http::stopped(&mut stop) => return,
            _ = tokio::time::sleep(opts.collect_interval) => {}
        }
        let buckets = match ready
            .sets
            .list_buckets(Deadline::after(opts.collect_budget))
            .await
        {
            Ok(b) => b.into_iter().map(|(b, _)| b).collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "collector: listing buckets failed");
                continue;
            }
        };
        for set in ready.sets.sets() {
            let Ok(guard) = set_job_lock(ready, "collect", set.index(), &opts).await else {
                continue;
            };
            let rep = set
                .collect(&buckets, Deadline::after(opts.collect_budget))
                .await;
            drop(guard);
            if rep.removed() > 0 || rep.truncated {
                tracing::info!(set = set.index(), ?rep, "collector");
            }
            let mut c = node.collected.lock().unwrap_or_else(|e| e.into_inner());
            c.add(&rep);
            c.passes += 1;
            c.last_ms = Some(unix_ms());
        }
    }
}

/// The cluster-wide lock that lets one node at a time run `job` (scan,
/// collect) on set `set`, waited for at most `scan_lock_wait`.
async fn set_job_lock(
    ready: &Ready,
    job: &str,
    set: usize,
    opts: &NodeOptions,
) -> Result<disk_io_erasure::LockGuard, disk_io_erasure::LockError> {
    let resource = format!("diskio/{job}/set-{set}");
    ready
        .lock
        .lock(
            &resource,
            LockKind::Write,
            Deadline::after(opts.scan_lock_wait),
        )
        .await
}

/// Milliseconds since the Unix epoch now.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether every set was scanned and every object healed.
async fn scan_all(node: &Node, ready: &Ready, opts: &NodeOptions, deep: bool) -> bool {
    let buckets = match ready
        .sets
        .list_buckets(Deadline::after(opts.scan_budget))
        .await
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "scan: listing buckets failed");
            return false;
        }
    };
    let mut complete = true;
    for set in ready.sets.sets() {
        let guard = match set_job_lock(ready, "scan", set.index(), opts).await {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(set = set.index(), error = %e, "scan lock not taken; another node scans");
                continue;
            }
        };
        let started_ms = unix_ms();
        let mut set_complete = true;
        for (b, _) in &buckets {
            let rep = set
                .scan_with(b, deep, Deadline::after(opts.scan_budget))
                .await;
            count_healed(node, rep.healed);
            if rep.healed > 0 || rep.failed > 0 || rep.skipped > 0 || rep.truncated {
                tracing::info!(set = set.index(), bucket = %b, objects = rep.objects, healed = rep.healed, failed = rep.failed, skipped = rep.skipped, truncated = rep.truncated, "scan");
            }
            set_complete &= rep.failed == 0 && rep.skipped == 0 && !rep.truncated;
        }
        drop(guard);
        node.scans.fetch_add(1, Ordering::Relaxed);
        complete &= set_complete;
        if set_complete {
            let mut at = node.scanned_ms.lock().unwrap_or_else(|e| e.into_inner());
            if at.len() <= set.index() {
                at.resize(set.index() + 1, None);
            }
            at[set.index()] = Some(started_ms);
        }
    }
    complete
}
