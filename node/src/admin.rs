//! The admin API: operators' requests (users, cluster status) as JSON over
//! the node RPC's `Admin` method, so they are authenticated, bounded and
//! replay-protected exactly like node-to-node calls (one scheme to audit,
//! not two). [`AdminService`] answers them on a node; [`admin_call`] is the
//! client the CLI (`disk-io-node admin …`) uses.

use std::sync::Arc;
use std::time::Duration;

use disk_io_api::{Deadline, DiskError, HealthState};
use disk_io_iam::{Iam, IamError, Policy, Status, User};
use disk_io_rpc::{BreakerState, Peer};
use serde::{Deserialize, Serialize};

/// An operator's request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// Create a user.
    AddUser {
        /// Access key.
        access_key: String,
        /// Secret key.
        secret_key: String,
        /// What it may do.
        policy: Policy,
    },
    /// Every user (no secrets).
    ListUsers,
    /// Enable or disable a user.
    SetStatus {
        /// Access key.
        access_key: String,
        /// New status.
        status: Status,
    },
    /// Delete a user.
    RemoveUser {
        /// Access key.
        access_key: String,
    },
    /// The answering node's view of the cluster.
    ClusterStatus,
}

/// Why an admin request failed (typed; the CLI exits by kind).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AdminErrorKind {
    /// The request cannot be carried out as given.
    Invalid,
    /// The user exists.
    Exists,
    /// No such user.
    NotFound,
    /// The cluster could not answer in time (lock timeout, too few disks):
    /// try again.
    Unavailable,
    /// The node is still starting.
    NotReady,
    /// Anything else.
    Internal,
}

/// An admin reply.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminReply {
    /// Done.
    Done,
    /// Users.
    Users {
        /// Without secrets.
        users: Vec<UserView>,
    },
    /// The cluster view.
    Status(ClusterView),
    /// Failed.
    Error {
        /// What kind of failure.
        kind: AdminErrorKind,
        /// For people.
        message: String,
    },
}

/// A user as the admin API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserView {
    /// Access key.
    pub access_key: String,
    /// Enabled or disabled.
    pub status: Status,
    /// Policy.
    pub policy: Policy,
}

/// One node as the answering node sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    /// Name.
    pub name: String,
    /// Whether this is the answering node.
    pub local: bool,
    /// `closed` (reachable), `open` (dead: calls fail fast) or `half_open`.
    pub breaker: String,
    /// Heartbeats answered and missed so far.
    pub heartbeats_ok: u64,
    /// Heartbeats missed.
    pub heartbeats_missed: u64,
    /// Times the breaker opened.
    pub breaker_opens: u64,
}

/// One disk of a set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DiskView {
    /// Label (`node:index`).
    pub label: String,
    /// Health state (`online`, `suspect`, `faulty`, `probing`).
    pub state: String,
}

/// One erasure set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SetView {
    /// Index.
    pub index: usize,
    /// Disks in set order.
    pub disks: Vec<DiskView>,
    /// Disks online now.
    pub online: usize,
    /// Write quorum.
    pub write_quorum: usize,
    /// Read quorum.
    pub read_quorum: usize,
    /// When (Unix ms) the last scan of this set by the answering node that
    /// healed everything it found started; none yet.
    pub scanned_ms: Option<u64>,
}

/// The cluster as one node sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClusterView {
    /// The answering node.
    pub node: String,
    /// Whether it serves S3 (sets open, system buckets made, IAM loaded).
    pub ready: bool,
    /// Every node.
    pub nodes: Vec<NodeView>,
    /// Every set (empty while the node starts).
    pub sets: Vec<SetView>,
    /// Objects waiting in this node's heal queue.
    pub heal_queue: usize,
    /// Shards this node's healer and scanner rebuilt since it started.
    pub healed: u64,
    /// Set scans this node completed since it started.
    pub scans: u64,
    /// What this node's collector removed since it started.
    #[serde(default)]
    pub collector: CollectorView,
    /// Objects this node found unhealable (fewer good shards than data
    /// shards), not healed or replaced since.
    #[serde(default)]
    pub unhealable: Vec<UnhealableView>,
}

/// The collector's totals on the answering node.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CollectorView {
    /// Collector passes (one per set) completed.
    pub passes: u64,
    /// When (Unix ms) the last pass ended; none yet.
    pub last_ms: Option<u64>,
    /// Superseded versions removed (per disk copy).
    pub superseded: u64,
    /// Tombstones removed (per disk copy).
    pub tombstones: u64,
    /// Versions of failed writes removed (per disk copy).
    pub failed_versions: u64,
    /// Orphan shard files moved to the graveyard.
    pub orphan_shards: u64,
    /// Graveyard files deleted.
    pub graves: u64,
    /// Staging files deleted.
    pub staging: u64,
    /// Empty directories removed.
    pub directories: u64,
    /// Parts and records of abandoned multipart uploads removed.
    pub uploads: u64,
}

impl CollectorView {
    /// Add one pass's counts.
    pub fn add(&mut self, r: &disk_io_erasure::CollectReport) {
        self.superseded += r.superseded as u64;
        self.tombstones += r.tombstones as u64;
        self.failed_versions += r.failed_versions as u64;
        self.orphan_shards += r.orphan_shards as u64;
        self.graves += r.graves as u64;
        self.staging += r.staging as u64;
        self.directories += r.directories as u64;
    }
}

/// One unhealable object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UnhealableView {
    /// Set index.
    pub set: usize,
    /// Bucket.
    pub bucket: String,
    /// Object.
    pub object: String,
    /// Version id.
    pub version: String,
    /// Good copies found.
    pub good: usize,
    /// Copies needed.
    pub needed: usize,
}

fn state_name(s: HealthState) -> &'static str {
    match s {
        HealthState::Online => "online",
        HealthState::Suspect => "suspect",
        HealthState::Faulty => "faulty",
        HealthState::Probing => "probing",
    }
}

fn breaker_name(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

/// What the admin service reads the node's state from.
pub trait NodeState: Send + Sync {
    /// The cluster view.
    fn view(&self) -> ClusterView;
    /// IAM, once the node is ready.
    fn iam(&self) -> Option<Arc<Iam>>;
}

/// Builds the cluster view from peers and (once open) the sets.
#[allow(clippy::too_many_arguments)] // one argument per field of the view
pub fn cluster_view(
    node: &str,
    ready: bool,
    nodes: &[String],
    peers: &[Arc<Peer>],
    sets: Option<&disk_io_erasure::ErasureSets>,
    healed: u64,
    scans: u64,
    scanned_ms: &[Option<u64>],
    collector: CollectorView,
) -> ClusterView {
    let nodes = nodes
        .iter()
        .map(|n| match peers.iter().find(|p| p.name() == n) {
            Some(p) => {
                let (ok, missed) = p.heartbeats();
                NodeView {
                    name: n.clone(),
                    local: false,
                    breaker: breaker_name(p.breaker_state()).into(),
                    heartbeats_ok: ok,
                    heartbeats_missed: missed,
                    breaker_opens: p.breaker_opened(),
                }
            }
            None => NodeView {
                name: n.clone(),
                local: true,
                breaker: breaker_name(BreakerState::Closed).into(),
                heartbeats_ok: 0,
                heartbeats_missed: 0,
                breaker_opens: 0,
            },
        })
        .collect();
    let sets_of = sets;
    let (sets, heal_queue) = match sets {
        None => (Vec::new(), 0),
        Some(s) => (
            s.sets()
                .iter()
                .map(|set| {
                    let disks: Vec<DiskView> = set
                        .disks()
                        .iter()
                        .map(|d| DiskView {
                            label: d.label().to_string(),
                            state: state_name(d.state()).into(),
                        })
                        .collect();
                    SetView {
                        index: set.index(),
                        online: disks.iter().filter(|d| d.state == "online").count(),
                        disks,
                        write_quorum: set.write_quorum(),
                        read_quorum: set.read_quorum(),
                        scanned_ms: scanned_ms.get(set.index()).copied().flatten(),
                    }
                })
                .collect(),
            s.heal_queue().len(),
        ),
    };
    let unhealable = sets_of
        .map(|s| {
            s.sets()
                .iter()
                .flat_map(|set| {
                    set.unhealable().into_iter().map(|o| UnhealableView {
                        set: set.index(),
                        bucket: o.bucket,
                        object: o.object,
                        version: o.version.to_string(),
                        good: o.good,
                        needed: o.needed,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    ClusterView {
        node: node.to_string(),
        ready,
        nodes,
        sets,
        heal_queue,
        healed,
        scans,
        collector,
        unhealable,
    }
}

fn iam_error(e: IamError) -> AdminReply {
    let kind = match &e {
        IamError::InvalidUser(_) | IamError::TooManyUsers(_) => AdminErrorKind::Invalid,
        IamError::UserExists(_) => AdminErrorKind::Exists,
        IamError::NoSuchUser(_) => AdminErrorKind::NotFound,
        e if e.is_retryable() => AdminErrorKind::Unavailable,
        _ => AdminErrorKind::Internal,
    };
    AdminReply::Error {
        kind,
        message: e.to_string(),
    }
}

/// Answers admin requests on a node.
pub struct AdminService {
    state: Arc<dyn NodeState>,
}

impl AdminService {
    /// The service over the node's state.
    pub fn new(state: Arc<dyn NodeState>) -> AdminService {
        AdminService { state }
    }

    async fn answer(&self, req: AdminRequest, deadline: Deadline) -> AdminReply {
        if let AdminRequest::ClusterStatus = req {
            return AdminReply::Status(self.state.view());
        }
        let Some(iam) = self.state.iam() else {
            return AdminReply::Error {
                kind: AdminErrorKind::NotReady,
                message: "the node is still starting".into(),
            };
        };
        let started = std::time::Instant::now();
        let r = match req {
            AdminRequest::AddUser {
                access_key,
                secret_key,
                policy,
            } => iam
                .add_user(
                    User {
                        access_key,
                        secret_key,
                        status: Status::Enabled,
                        policy,
                    },
                    deadline,
                )
                .await
                .map(|()| AdminReply::Done),
            AdminRequest::ListUsers => iam.list_users(deadline).await.map(|us| AdminReply::Users {
                users: us
                    .into_iter()
                    .map(|u| UserView {
                        access_key: u.access_key,
                        status: u.status,
                        policy: u.policy,
                    })
                    .collect(),
            }),
            AdminRequest::SetStatus { access_key, status } => iam
                .set_status(&access_key, status, deadline)
                .await
                .map(|()| AdminReply::Done),
            AdminRequest::RemoveUser { access_key } => iam
                .remove_user(&access_key, deadline)
                .await
                .map(|()| AdminReply::Done),
            AdminRequest::ClusterStatus => unreachable!("answered above"),
        };
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            ok = r.is_ok(),
            "admin request"
        );
        r.unwrap_or_else(iam_error)
    }
}

#[async_trait::async_trait]
impl disk_io_api::AdminHandler for AdminService {
    async fn handle(&self, request: &[u8], deadline: Deadline) -> Result<Vec<u8>, DiskError> {
        let reply = match serde_json::from_slice::<AdminRequest>(request) {
            Ok(req) => self.answer(req, deadline).await,
            Err(e) => AdminReply::Error {
                kind: AdminErrorKind::Invalid,
                message: format!("bad request: {e}"),
            },
        };
        Ok(serde_json::to_vec(&reply).expect("replies serialize"))
    }
}

/// Why an admin call from the CLI failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminCallError {
    /// The node could not be reached or did not answer in time.
    #[error("node {node}: {error}")]
    Transport {
        /// Which node.
        node: String,
        /// The RPC error.
        error: DiskError,
    },
    /// The node's reply was not understood.
    #[error("node {node}: bad reply: {reason}")]
    BadReply {
        /// Which node.
        node: String,
        /// Why.
        reason: String,
    },
}

/// Send `req` to `peer` under `timeout`; its reply.
pub async fn admin_call(
    peer: &Peer,
    req: &AdminRequest,
    timeout: Duration,
) -> Result<AdminReply, AdminCallError> {
    let body = serde_json::to_vec(req).expect("requests serialize");
    let bytes = peer
        .admin(body, Deadline::after(timeout))
        .await
        .map_err(|error| AdminCallError::Transport {
            node: peer.name().to_string(),
            error,
        })?;
    serde_json::from_slice(&bytes).map_err(|e| AdminCallError::BadReply {
        node: peer.name().to_string(),
        reason: e.to_string(),
    })
}
