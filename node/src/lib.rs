//! # disk-io-node
//!
//! The reference storage node: opens its local disks (as
//! [`OpenMode::Owner`]) from the cluster config file, serves them, its
//! locker (a [`LeaseTable`]) and the admin API over the node RPC
//! ([`disk_io_rpc::RpcServer`]), and S3 over the cluster's erasure sets
//! ([`serve`]). [`cluster_lock`] builds the quorum lock over every node's
//! locker that clients of the cluster use.
//!
//! Modules: [`objects`] (S3's object model over the sets: buckets,
//! objects, multipart manifests, listing), [`s3`] (the s3s front end, SigV4
//! from the IAM cache, policy checks), [`admin`] (admin requests over the
//! RPC, the cluster view), [`http`] (S3 and ops listeners), [`serve`] (the
//! node's life: bootstrap, healer, scanner).

pub mod admin;
pub mod http;
pub mod objects;
pub mod s3;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use disk_io::{Deadline, Disk, DiskConfig, DiskError, LocalDisk, OpenMode};
use disk_io_api::{LeaseConfig, LeaseTable, Locker};
use disk_io_erasure::{LockConfig, QuorumLock};
use disk_io_rpc::{ClusterConfig, Peer, RpcConfig};

/// What `serve` needs besides the cluster file.
#[derive(Clone)]
pub struct NodeOptions {
    /// This node's name in the cluster file.
    pub node: String,
    /// Format disks that have no format file yet (set and disk index from
    /// the disk's position in the cluster: global index / set size).
    pub format_missing: bool,
    /// Budget for opening (and formatting) each disk.
    pub open_deadline: Duration,
    /// The local disks' configuration.
    pub disk: DiskConfig,
    /// Which implementation serves the local disks.
    pub backend: DiskBackend,
    /// The RPC's limits.
    pub rpc: RpcConfig,
    /// Remote disks' health machine.
    pub health: disk_io::HealthConfig,
    /// The erasure layer's bounds.
    pub erasure: disk_io_erasure::ErasureConfig,
    /// The object layer's bounds.
    pub objects: objects::ObjectsConfig,
    /// IAM's cache and deadlines.
    pub iam: disk_io_iam::IamConfig,
    /// The S3 listener's limits.
    pub s3_http: http::S3HttpConfig,
    /// Where `/metrics` renders from (the process's recorder); `None`
    /// answers 404.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Budget for opening the erasure sets (every disk id, local and
    /// remote, checked in parallel; a disk not answering by then is
    /// recorded missing).
    pub sets_open_deadline: Duration,
    /// Budget of one bootstrap attempt (making the reserved buckets).
    pub bootstrap_step: Duration,
    /// Pause between bootstrap attempts.
    pub bootstrap_retry: Duration,
    /// Budget of one IAM hint to a peer.
    pub hint_deadline: Duration,
    /// How often the scanner looks at peers (a peer back from the dead
    /// triggers a scan).
    pub peer_watch: Duration,
    /// Scan every set at least this often.
    pub scan_interval: Duration,
    /// Budget of scanning one bucket of one set.
    pub scan_budget: Duration,
    /// How long the scanner waits for a set's scan lock.
    pub scan_lock_wait: Duration,
    /// A scan for a peer that came back waits at most this long for every
    /// disk to be online again.
    pub scan_online_wait: Duration,
    /// Pause before scanning again after a scan that could not heal all.
    pub scan_retry: Duration,
    /// How often the collector runs (what failed, abandoned and
    /// superseded writes left; see `disk_io_erasure` "collect").
    pub collect_interval: Duration,
    /// Budget of one collector pass over one set.
    pub collect_budget: Duration,
}

impl NodeOptions {
    /// The erasure config the node runs with: the collector's commit
    /// window and graveyard grace raised to what this node's budgets
    /// require (a write may land until its transfer budget and the RPC
    /// replay window have passed; a GET streams for up to a transfer
    /// budget), so no setting of the budgets makes the collector remove
    /// a live file.
    pub fn erasure_config(&self) -> disk_io_erasure::ErasureConfig {
        let mut e = self.erasure.clone();
        let longest = self.objects.transfer_budget.max(self.objects.meta_budget);
        e.commit_window = e.commit_window.max(longest + self.rpc.replay_window);
        e.superseded_grace = e.superseded_grace.max(longest);
        e
    }
}

impl NodeOptions {
    /// Defaults for node `node`.
    pub fn new(node: &str) -> NodeOptions {
        NodeOptions {
            node: node.to_string(),
            format_missing: false,
            open_deadline: Duration::from_secs(10),
            disk: DiskConfig::default(),
            backend: DiskBackend::Uring,
            rpc: RpcConfig::default(),
            health: disk_io::HealthConfig::default(),
            erasure: disk_io_erasure::ErasureConfig::default(),
            objects: objects::ObjectsConfig::default(),
            iam: disk_io_iam::IamConfig::default(),
            s3_http: http::S3HttpConfig::default(),
            metrics: None,
            sets_open_deadline: Duration::from_secs(5),
            bootstrap_step: Duration::from_secs(5),
            bootstrap_retry: Duration::from_millis(500),
            hint_deadline: Duration::from_secs(1),
            peer_watch: Duration::from_millis(500),
            scan_interval: Duration::from_secs(300),
            scan_budget: Duration::from_secs(600),
            scan_lock_wait: Duration::from_secs(2),
            scan_online_wait: Duration::from_secs(30),
            scan_retry: Duration::from_secs(10),
            collect_interval: Duration::from_secs(60),
            collect_budget: Duration::from_secs(600),
        }
    }
}

/// Which implementation serves the node's local disks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskBackend {
    /// [`LocalDisk`]: io_uring with kernel-enforced deadlines (the product).
    #[default]
    Uring,
    /// [`disk_io_tokiofs::TokioFsDisk`]: `tokio::fs` on the blocking pool,
    /// the conventional baseline, for the object-level benchmark only.
    TokioFs,
}

/// A disk the node owns, of either backend.
enum Opened {
    Uring(LocalDisk),
    TokioFs(disk_io_tokiofs::TokioFsDisk),
}

impl Opened {
    async fn format(&self, set: u32, index: u32, d: Deadline) -> Result<(), DiskError> {
        match self {
            Opened::Uring(x) => x.format(set, index, false, d).await.map(|_| ()),
            Opened::TokioFs(x) => x.format(set, index, false, d).await.map(|_| ()),
        }
    }

    fn into_dyn(self) -> Arc<dyn Disk> {
        match self {
            Opened::Uring(x) => Arc::new(x),
            Opened::TokioFs(x) => Arc::new(x),
        }
    }

    fn as_dyn(&self) -> &dyn Disk {
        match self {
            Opened::Uring(x) => x,
            Opened::TokioFs(x) => x,
        }
    }
}

/// Opens the node's disks, in config order.
pub async fn open_disks(
    config: &ClusterConfig,
    opts: &NodeOptions,
) -> anyhow::Result<Vec<Arc<dyn Disk>>> {
    let node = config
        .node(&opts.node)
        .ok_or_else(|| anyhow!("no node named {:?} in cluster {}", opts.node, config.name))?;
    let mut disks = Vec::new();
    for (i, path) in node.disks.iter().enumerate() {
        let label = format!("{}:{}", node.name, i + 1);
        let d = Deadline::after(opts.open_deadline);
        let disk = match opts.backend {
            DiskBackend::Uring => LocalDisk::builder(path)
                .config(opts.disk.clone())
                .label(label.clone())
                .mode(OpenMode::Owner)
                .open(d)
                .await
                .map(Opened::Uring),
            DiskBackend::TokioFs => disk_io_tokiofs::TokioFsDisk::builder(path)
                .config(opts.disk.clone())
                .label(label.clone())
                .open(d)
                .await
                .map(Opened::TokioFs),
        }
        .with_context(|| format!("opening disk {label} at {}", path.display()))?;
        if opts.format_missing {
            // The erasure layer's positions (`Topology::sets`: disk i of
            // every node, column by column), so each set spreads over every
            // node and the set opening finds each disk where it expects it.
            let (set, index) = erasure_position(config, &opts.node, i)?;
            match disk
                .as_dyn()
                .disk_id(Deadline::after(opts.open_deadline))
                .await
            {
                Err(DiskError::Unformatted) => {
                    disk.format(
                        set as u32,
                        index as u32,
                        Deadline::after(opts.open_deadline),
                    )
                    .await
                    .with_context(|| format!("formatting disk {label}"))?;
                }
                Ok(_) => {}
                Err(e) => return Err(anyhow!("disk {label}: {e}")),
            }
        }
        disks.push(disk.into_dyn());
    }
    Ok(disks)
}

/// The (set, index) the erasure layer gives disk `disk` of node `node`.
fn erasure_position(
    config: &ClusterConfig,
    node: &str,
    disk: usize,
) -> anyhow::Result<(usize, usize)> {
    let node_index = config
        .nodes
        .iter()
        .position(|n| n.name == node)
        .ok_or_else(|| anyhow!("no node named {node:?}"))?;
    let sets = topology(config)?.sets().map_err(|e| anyhow!("{e}"))?;
    sets.iter()
        .enumerate()
        .find_map(|(s, slots)| {
            slots
                .iter()
                .position(|d| d.node == node_index && d.disk == disk)
                .map(|i| (s, i))
        })
        .ok_or_else(|| anyhow!("disk {disk} of {node} is in no erasure set"))
}

pub use serve::serve;

/// The node's locker limits, from the cluster's lock timing: leases no
/// longer than the TTL, and nothing granted for a TTL after a start (a
/// restarted node forgot leases their holders still count on).
pub fn lease_config(config: &ClusterConfig) -> LeaseConfig {
    LeaseConfig {
        max_ttl: config.locks.ttl(),
        startup_quiet: config.locks.ttl(),
        ..LeaseConfig::default()
    }
}

/// Drops expired leases every `every`, so dead owners' leases do not pile
/// up in memory when nobody asks for those resources again.
pub(crate) async fn sweep_leases(table: Arc<LeaseTable>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let gone = table.sweep();
        if gone > 0 {
            tracing::debug!(resources = gone, "expired leases dropped");
        }
    }
}

/// The cluster's topology as the erasure layer cuts it (every node must
/// have the same number of disks).
pub fn topology(config: &ClusterConfig) -> anyhow::Result<disk_io_erasure::Topology> {
    let per_node = config.nodes.first().map_or(0, |n| n.disks.len());
    if config.nodes.iter().any(|n| n.disks.len() != per_node) {
        return Err(anyhow!(
            "the erasure layout needs the same number of disks on every node"
        ));
    }
    Ok(disk_io_erasure::Topology {
        nodes: config.nodes.len(),
        disks_per_node: per_node,
        set_size: config.set_size,
        parity: config.parity,
    })
}

/// The cluster's erasure sets over every node's disks, all reached over
/// the RPC (a client's view, or a node's view of its peers). Returns the
/// peers too: they own the connections and must live as long as the sets.
pub async fn cluster_sets(
    config: &ClusterConfig,
    rpc: &RpcConfig,
    health: disk_io::HealthConfig,
    erasure: disk_io_erasure::ErasureConfig,
    deadline: Deadline,
) -> anyhow::Result<(disk_io_erasure::ErasureSets, Vec<Arc<Peer>>)> {
    let topo = topology(config)?;
    let mut peers = Vec::new();
    let mut disks = std::collections::HashMap::new();
    for (node, n) in config.nodes.iter().enumerate() {
        let peer = Peer::new(&n.name, n.rpc_addr, config.secret.as_bytes(), rpc.clone())
            .map_err(|e| anyhow!("peer {}: {e}", n.name))?;
        for disk in 0..topo.disks_per_node {
            let d = peer.disk(disk as u32, health.clone(), Vec::new());
            disks.insert(
                disk_io_erasure::DiskSlot { node, disk },
                Arc::new(d) as Arc<dyn Disk>,
            );
        }
        peers.push(peer);
    }
    let (sets, _) =
        disk_io_erasure::ErasureSets::open(topo, |slot| disks[&slot].clone(), erasure, deadline)
            .await
            .map_err(|e| anyhow!("opening the erasure sets: {e}"))?;
    Ok((sets, peers))
}

/// IAM change hints to every peer over the node RPC: each send is spawned
/// under `deadline`, at most `max_in_flight` at once; a hint that finds no
/// free slot is dropped (the peers' periodic reload covers it), so an admin
/// operation never waits for a peer, dead or alive.
pub struct PeerBroadcast {
    peers: Vec<Arc<Peer>>,
    deadline: Duration,
    slots: Arc<tokio::sync::Semaphore>,
}

impl PeerBroadcast {
    /// Hints to `peers`, each under `deadline`, `max_in_flight` at once.
    pub fn new(peers: Vec<Arc<Peer>>, deadline: Duration, max_in_flight: usize) -> PeerBroadcast {
        PeerBroadcast {
            peers,
            deadline,
            slots: Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1))),
        }
    }
}

impl disk_io_iam::Broadcast for PeerBroadcast {
    fn send(&self, topic: &str, key: &str) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for p in &self.peers {
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                tracing::debug!(peer = %p.name(), "IAM hint dropped: every send slot is busy");
                continue;
            };
            let (p, topic, key, d) = (p.clone(), topic.to_string(), key.to_string(), self.deadline);
            rt.spawn(async move {
                let _slot = slot;
                if let Err(e) = p.notify(&topic, &key, Deadline::after(d)).await {
                    tracing::debug!(peer = %p.name(), error = %e, "IAM hint not delivered");
                }
            });
        }
    }
}

/// The cluster's quorum lock as `owner` sees it: every node's locker over
/// the RPC, with the cluster's lock timing. Peers are made here; callers
/// keep the lock (and so the peers) for as long as they lock.
pub fn cluster_lock(
    config: &ClusterConfig,
    owner: &str,
    rpc: &RpcConfig,
) -> anyhow::Result<QuorumLock> {
    let mut lockers: Vec<Arc<dyn Locker>> = Vec::new();
    for n in &config.nodes {
        let peer = Peer::new(&n.name, n.rpc_addr, config.secret.as_bytes(), rpc.clone())
            .map_err(|e| anyhow!("peer {}: {e}", n.name))?;
        lockers.push(Arc::new(peer.locker()));
    }
    let t = &config.locks;
    let cfg = LockConfig {
        ttl: t.ttl(),
        refresh_interval: t.refresh(),
        attempt_timeout: t.attempt(),
        ..LockConfig::default()
    };
    QuorumLock::new(lockers, owner, cfg).map_err(|e| anyhow!("{e}"))
}
