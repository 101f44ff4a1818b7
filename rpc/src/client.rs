//! The client side: a [`Peer`] per remote node (data channel, liveness
//! channel, breaker), a [`RemoteDisk`] per disk of that node and a
//! [`RemoteLocker`] for its locker.
//!
//! A call never waits past its deadline: the budget goes out in the request
//! (`grpc-timeout` and the signed `x-dio-budget`), and the whole call, the
//! connect included, runs under `timeout_at(deadline)`. While the peer's
//! breaker is open a call fails fast with `CircuitOpen`, before any I/O.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use async_trait::async_trait;
use disk_io_api::{
    CreateOptions, Deadline, DeleteOptions, Disk, DiskError, DiskId, DiskInfo, FileInfo,
    HealthState, LockKind, LockRequest, Locker, OpClass, Result, ShardWriter, VolInfo,
};
use disk_io_health::{Health, HealthConfig, Observer};
use hyper_util::client::legacy::connect::HttpConnector;
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::auth;
use crate::breaker::{Breaker, BreakerState};
use crate::config::RpcConfig;
use crate::methods;
use crate::proto::disk_service_client::DiskServiceClient;
use crate::proto::*;
use crate::wire;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn channel(addr: SocketAddr, cfg: &RpcConfig) -> Result<Channel> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_keepalive(Some(cfg.tcp_keepalive));
    http.set_tcp_user_timeout(Some(cfg.tcp_user_timeout));
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| DiskError::InvalidArgument {
            reason: format!("peer address {addr}: {e}"),
        })?
        .connect_timeout(cfg.connect_timeout)
        .http2_keep_alive_interval(cfg.http2_keepalive_interval)
        .keep_alive_timeout(cfg.http2_keepalive_timeout)
        .keep_alive_while_idle(true);
    Ok(ep.connect_with_connector_lazy(http))
}

struct PeerShared {
    name: String,
    addr: SocketAddr,
    secret: Vec<u8>,
    cfg: RpcConfig,
    /// The runtime of `Peer::new`'s caller: data connections live there.
    runtime: tokio::runtime::Handle,
    data: Mutex<Channel>,
    breaker: Mutex<Breaker>,
    disks: Mutex<Vec<Weak<Health>>>,
    heartbeats_ok: AtomicU64,
    heartbeats_missed: AtomicU64,
}

impl PeerShared {
    fn admit(&self) -> bool {
        let (admitted, before, after) = {
            let mut b = lock(&self.breaker);
            let before = b.state();
            let admitted = b.admit(Instant::now());
            (admitted, before, b.state())
        };
        self.after_breaker(before, after);
        admitted
    }

    fn healths(&self) -> Vec<Arc<Health>> {
        let mut disks = lock(&self.disks);
        disks.retain(|w| w.strong_count() > 0);
        disks.iter().filter_map(Weak::upgrade).collect()
    }

    /// Feeds the breaker's state change (if any) to the disks' health.
    fn after_breaker(&self, before: BreakerState, after: BreakerState) {
        if before == after {
            return;
        }
        tracing::info!(peer = %self.name, from = before.as_str(), to = after.as_str(), "breaker");
        crate::metrics::breaker(&self.name, after);
        if after == BreakerState::Open {
            let reason = format!("peer {} unreachable (breaker open)", self.name);
            for h in self.healths() {
                h.hold(&reason);
            }
        }
        if before == BreakerState::Open && after != BreakerState::Open {
            // The old data connection died with the peer; start afresh, on
            // the caller's runtime (this may run on the heartbeat thread,
            // whose one-thread runtime must not carry the data connection).
            let _rt = self.runtime.enter();
            if let Ok(c) = channel(self.addr, &self.cfg) {
                *lock(&self.data) = c;
            }
        }
    }

    fn on_call(&self, peer_failed: bool) {
        let (before, after) = {
            let mut b = lock(&self.breaker);
            let before = b.state();
            b.on_call(peer_failed, Instant::now());
            (before, b.state())
        };
        self.after_breaker(before, after);
    }

    fn on_heartbeat(&self, ok: bool) {
        let counter = if ok {
            &self.heartbeats_ok
        } else {
            &self.heartbeats_missed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        crate::metrics::heartbeat(&self.name, ok);
        let (before, after) = {
            let mut b = lock(&self.breaker);
            let before = b.state();
            b.on_heartbeat(ok, Instant::now());
            (before, b.state())
        };
        self.after_breaker(before, after);
        let healths = self.healths();
        if after == BreakerState::Closed {
            // The peer answers: a remote disk held out only for its peer's
            // sake comes back through its probes.
            for h in healths {
                if h.probe_due() {
                    h.on_probe(&Ok(()));
                }
            }
        } else if !ok {
            let reason = format!("peer {} missed a heartbeat", self.name);
            for h in healths {
                h.hold(&reason);
            }
        }
    }
}

async fn liveness(
    shared: Weak<PeerShared>,
    cfg: RpcConfig,
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut tick = tokio::time::interval(cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut live = channel(addr, &cfg).ok();
    let mut seq = 0u64;
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        seq += 1;
        let ok = match &live {
            Some(ch) => {
                let mut req = Request::new(Heartbeat { seq });
                req.set_timeout(cfg.heartbeat_timeout);
                auth::sign(
                    &shared.secret,
                    methods::PING,
                    cfg.heartbeat_timeout,
                    &mut req,
                );
                let mut client = DiskServiceClient::new(ch.clone());
                matches!(
                    tokio::time::timeout(cfg.heartbeat_timeout, client.ping(req)).await,
                    Ok(Ok(r)) if r.get_ref().seq == seq
                )
            }
            None => false,
        };
        if !ok {
            // A silent peer may have left a dead connection behind: the
            // next heartbeat dials afresh rather than wait for TCP to notice.
            live = channel(addr, &cfg).ok();
        }
        shared.on_heartbeat(ok);
    }
}

/// A remote node: its data channel, its liveness channel (own connection,
/// small heartbeats) and its circuit breaker.
pub struct Peer {
    shared: Arc<PeerShared>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("name", &self.shared.name)
            .field("addr", &self.shared.addr)
            .field("breaker", &self.breaker_state())
            .finish()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The liveness thread sees the flag at its next tick and ends.
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Peer {
    /// A peer called `name` at `addr`. Connects lazily (the first call, or
    /// the first heartbeat, dials). Must be called inside a tokio runtime,
    /// which carries the data connection (outside one: `InvalidArgument`);
    /// heartbeats run on a thread of their own.
    pub fn new(name: &str, addr: SocketAddr, secret: &[u8], cfg: RpcConfig) -> Result<Arc<Peer>> {
        cfg.check()
            .map_err(|reason| DiskError::InvalidArgument { reason })?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| DiskError::InvalidArgument {
                reason: "Peer::new must be called inside a tokio runtime (it runs the heartbeats)"
                    .into(),
            })?;
        let seed: u64 = rand::random();
        let shared = Arc::new(PeerShared {
            name: name.to_string(),
            addr,
            secret: secret.to_vec(),
            data: Mutex::new(channel(addr, &cfg)?),
            breaker: Mutex::new(Breaker::new(cfg.breaker.clone(), Instant::now(), seed)),
            disks: Mutex::new(Vec::new()),
            heartbeats_ok: AtomicU64::new(0),
            heartbeats_missed: AtomicU64::new(0),
            cfg: cfg.clone(),
            runtime,
        });
        // Heartbeats run on their own thread and runtime: a node whose
        // runtime is saturated by a multi-GiB transfer still sends and
        // reads them on time, so a live peer is not taken for dead
        // because this side was too busy to notice its answers.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (weak, flag) = (Arc::downgrade(&shared), stop.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DiskError::InvalidArgument {
                reason: format!("a runtime for the heartbeats: {e}"),
            })?;
        std::thread::Builder::new()
            .name(format!("diskio-hb-{name}"))
            .spawn(move || rt.block_on(liveness(weak, cfg, addr, flag)))
            .map_err(|e| DiskError::InvalidArgument {
                reason: format!("starting the heartbeat thread: {e}"),
            })?;
        Ok(Arc::new(Peer { shared, stop }))
    }

    /// The peer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        lock(&self.shared.breaker).state()
    }

    /// How many times the breaker has opened.
    pub fn breaker_opened(&self) -> u64 {
        lock(&self.shared.breaker).times_opened()
    }

    /// Heartbeats answered and missed so far.
    pub fn heartbeats(&self) -> (u64, u64) {
        (
            self.shared.heartbeats_ok.load(Ordering::Relaxed),
            self.shared.heartbeats_missed.load(Ordering::Relaxed),
        )
    }

    /// Disk `index` (0-based) of this peer, labelled `peer:N` (N from 1).
    pub fn disk(
        self: &Arc<Self>,
        index: u32,
        health: HealthConfig,
        observers: Vec<Arc<dyn Observer>>,
    ) -> RemoteDisk {
        let label = format!("{}:{}", self.shared.name, index + 1);
        let health = Arc::new(Health::new(&label, health, observers));
        lock(&self.shared.disks).push(Arc::downgrade(&health));
        RemoteDisk {
            inner: Arc::new(DiskInner {
                peer: self.clone(),
                index,
                label,
                health,
            }),
        }
    }
}

struct DiskInner {
    peer: Arc<Peer>,
    index: u32,
    label: String,
    health: Arc<Health>,
}

/// Reports an admitted call's outcome to the breaker exactly once. A call
/// its caller drops (a hedged read that lost, a straggler left behind by a
/// write quorum) says nothing about the peer while the breaker is closed,
/// so it counts for nothing then; only an unfinished half-open probe counts
/// as a failure, so the probe is never left hanging.
struct CallGuard<'a> {
    peer: &'a PeerShared,
    reported: bool,
}

impl CallGuard<'_> {
    fn report(mut self, peer_failed: bool) {
        self.reported = true;
        self.peer.on_call(peer_failed);
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if !self.reported && lock(&self.peer.breaker).state() != BreakerState::Closed {
            self.peer.on_call(true);
        }
    }
}

type Client = DiskServiceClient<Channel>;

impl DiskInner {
    async fn call<Req, Resp, F, Fut>(
        &self,
        op: OpClass,
        method: &'static str,
        msg: Req,
        deadline: Deadline,
        f: F,
    ) -> Result<Resp>
    where
        Req: Message,
        F: FnOnce(Client, Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        self.peer
            .call(Some(&self.health), op, method, msg, deadline, f)
            .await
    }
}

impl Peer {
    /// One signed call under `deadline`, through the breaker, and through
    /// `health` when the call is a disk's (a locker has none of its own:
    /// the breaker is what takes a dead peer out).
    async fn call<Req, Resp, F, Fut>(
        &self,
        health: Option<&Health>,
        op: OpClass,
        method: &'static str,
        msg: Req,
        deadline: Deadline,
        f: F,
    ) -> Result<Resp>
    where
        Req: Message,
        F: FnOnce(Client, Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        let start = Instant::now();
        let peer = &self.shared;
        let budget = deadline.remaining();
        if budget.is_zero() {
            return Err(DiskError::DeadlineExceeded {
                op,
                waited: start.elapsed(),
            });
        }
        if !peer.admit() {
            return Err(DiskError::CircuitOpen {
                peer: peer.name.clone(),
            });
        }
        if let Some(Err(e)) = health.map(Health::admit) {
            // Not sent: a half-open probe slot goes back unused.
            lock(&peer.breaker).release();
            return Err(e);
        }
        let guard = CallGuard {
            peer,
            reported: false,
        };
        let mut req = Request::new(msg);
        req.set_timeout(budget);
        auth::sign(&peer.secret, method, budget, &mut req);
        let client = DiskServiceClient::new(lock(&peer.data).clone())
            .max_decoding_message_size(peer.cfg.max_message_bytes)
            .max_encoding_message_size(peer.cfg.max_message_bytes);
        let out = tokio::time::timeout_at(deadline.instant().into(), f(client, req)).await;
        let waited = start.elapsed();
        let (result, peer_failed) = match out {
            Err(_) => (Err(DiskError::DeadlineExceeded { op, waited }), true),
            Ok(Ok(r)) => (Ok(r.into_inner()), false),
            Ok(Err(s)) => {
                let e = wire::status_to_error(op, waited, &s);
                let failed = s.details().is_empty() && matches!(e, DiskError::Unreachable { .. });
                (Err(e), failed)
            }
        };
        guard.report(peer_failed);
        if let Some(h) = health {
            h.on_outcome(&result);
        }
        result
    }

    /// Send `topic`/`key` to the peer's listener; whether it took it.
    pub async fn notify(&self, topic: &str, key: &str, deadline: Deadline) -> Result<bool> {
        let m = NotifyMsg {
            topic: topic.to_string(),
            key: key.to_string(),
        };
        let r = self
            .call(
                None,
                OpClass::Notify,
                methods::NOTIFY,
                m,
                deadline,
                |mut c, r| async move { c.notify(r).await },
            )
            .await?;
        Ok(r.taken)
    }

    /// Send an operator's request to the peer's admin handler; its reply.
    pub async fn admin(&self, body: Vec<u8>, deadline: Deadline) -> Result<Vec<u8>> {
        let r = self
            .call(
                None,
                OpClass::Admin,
                methods::ADMIN,
                AdminMsg { body },
                deadline,
                |mut c, r| async move { c.admin(r).await },
            )
            .await?;
        Ok(r.body)
    }

    /// This peer's locker.
    pub fn locker(self: &Arc<Self>) -> RemoteLocker {
        RemoteLocker { peer: self.clone() }
    }
}

/// A peer node's locker, behind the [`Locker`] trait. Its calls go through
/// the peer's breaker, so a powered-off node costs a lock attempt nothing
/// once the breaker is open (`CircuitOpen`, an unavailable vote).
#[derive(Clone)]
pub struct RemoteLocker {
    peer: Arc<Peer>,
}

impl std::fmt::Debug for RemoteLocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLocker")
            .field("peer", &self.peer.name())
            .finish()
    }
}

/// Milliseconds on the wire; a sub-millisecond TTL rounds up (it is not
/// zero), a zero TTL stays zero for the locker to refuse.
fn ttl_ms(ttl: std::time::Duration) -> u64 {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 && !ttl.is_zero() {
        1
    } else {
        ms
    }
}

#[async_trait]
impl Locker for RemoteLocker {
    fn label(&self) -> &str {
        self.peer.name()
    }

    async fn acquire(&self, req: &LockRequest, deadline: Deadline) -> Result<bool> {
        let m = LockArgs {
            resource: req.resource.clone(),
            uid: req.uid.clone(),
            owner: req.owner.clone(),
            kind: match req.kind {
                LockKind::Read => 0,
                LockKind::Write => 1,
            },
            ttl_ms: ttl_ms(req.ttl),
        };
        let r = self
            .peer
            .call(
                None,
                OpClass::Lock,
                methods::LOCK,
                m,
                deadline,
                |mut c, r| async move { c.lock(r).await },
            )
            .await?;
        Ok(r.granted)
    }

    async fn refresh(
        &self,
        resource: &str,
        uid: &str,
        ttl: std::time::Duration,
        deadline: Deadline,
    ) -> Result<bool> {
        let m = LeaseArgs {
            resource: resource.to_string(),
            uid: uid.to_string(),
            ttl_ms: ttl_ms(ttl),
        };
        let r = self
            .peer
            .call(
                None,
                OpClass::Lock,
                methods::REFRESH_LOCK,
                m,
                deadline,
                |mut c, r| async move { c.refresh_lock(r).await },
            )
            .await?;
        Ok(r.granted)
    }

    async fn release(&self, resource: &str, uid: &str, deadline: Deadline) -> Result<bool> {
        let m = LeaseArgs {
            resource: resource.to_string(),
            uid: uid.to_string(),
            ttl_ms: 0,
        };
        let r = self
            .peer
            .call(
                None,
                OpClass::Lock,
                methods::UNLOCK,
                m,
                deadline,
                |mut c, r| async move { c.unlock(r).await },
            )
            .await?;
        Ok(r.granted)
    }
}

/// A disk on a peer node, behind the same [`Disk`] trait as a local one.
#[derive(Clone)]
pub struct RemoteDisk {
    inner: Arc<DiskInner>,
}

impl std::fmt::Debug for RemoteDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDisk")
            .field("label", &self.inner.label)
            .finish()
    }
}

impl RemoteDisk {
    /// The peer this disk is on.
    pub fn peer(&self) -> &Arc<Peer> {
        &self.inner.peer
    }

    /// The disk's health handle.
    pub fn health(&self) -> &Arc<Health> {
        &self.inner.health
    }
}

fn path_req(disk: u32, vol: &str, path: &str) -> PathRequest {
    PathRequest {
        disk,
        vol: vol.to_string(),
        path: path.to_string(),
    }
}

#[async_trait]
impl Disk for RemoteDisk {
    fn label(&self) -> &str {
        &self.inner.label
    }

    fn state(&self) -> HealthState {
        if self.inner.peer.breaker_state() == BreakerState::Open {
            return HealthState::Faulty;
        }
        self.inner.health.state()
    }

    async fn disk_id(&self, deadline: Deadline) -> Result<DiskId> {
        let m = DiskTarget {
            disk: self.inner.index,
        };
        let r = self
            .inner
            .call(
                OpClass::DiskId,
                methods::DISK_ID,
                m,
                deadline,
                |mut c, r| async move { c.disk_id(r).await },
            )
            .await?;
        wire::id_from_wire(r)
    }

    async fn disk_info(&self, deadline: Deadline) -> Result<DiskInfo> {
        let m = DiskTarget {
            disk: self.inner.index,
        };
        let r = self
            .inner
            .call(
                OpClass::DiskInfo,
                methods::DISK_INFO,
                m,
                deadline,
                |mut c, r| async move { c.disk_info(r).await },
            )
            .await?;
        wire::info_from_wire(r)
    }

    async fn make_vol(&self, vol: &str, deadline: Deadline) -> Result<()> {
        let m = VolRequest {
            disk: self.inner.index,
            vol: vol.to_string(),
        };
        self.inner
            .call(
                OpClass::MakeVol,
                methods::MAKE_VOL,
                m,
                deadline,
                |mut c, r| async move { c.make_vol(r).await },
            )
            .await
            .map(drop)
    }

    async fn list_vols(&self, deadline: Deadline) -> Result<Vec<VolInfo>> {
        let m = DiskTarget {
            disk: self.inner.index,
        };
        let r = self
            .inner
            .call(
                OpClass::ListVols,
                methods::LIST_VOLS,
                m,
                deadline,
                |mut c, r| async move { c.list_vols(r).await },
            )
            .await?;
        Ok(r.vols.into_iter().map(wire::vol_from_wire).collect())
    }

    async fn stat_vol(&self, vol: &str, deadline: Deadline) -> Result<VolInfo> {
        let m = VolRequest {
            disk: self.inner.index,
            vol: vol.to_string(),
        };
        let r = self
            .inner
            .call(
                OpClass::StatVol,
                methods::STAT_VOL,
                m,
                deadline,
                |mut c, r| async move { c.stat_vol(r).await },
            )
            .await?;
        Ok(wire::vol_from_wire(r))
    }

    async fn delete_vol(&self, vol: &str, force: bool, deadline: Deadline) -> Result<()> {
        let m = DeleteVolRequest {
            disk: self.inner.index,
            vol: vol.to_string(),
            force,
        };
        self.inner
            .call(
                OpClass::DeleteVol,
                methods::DELETE_VOL,
                m,
                deadline,
                |mut c, r| async move { c.delete_vol(r).await },
            )
            .await
            .map(drop)
    }

    async fn read_all(&self, vol: &str, path: &str, deadline: Deadline) -> Result<Vec<u8>> {
        let m = path_req(self.inner.index, vol, path);
        let r = self
            .inner
            .call(
                OpClass::ReadAll,
                methods::READ_ALL,
                m,
                deadline,
                |mut c, r| async move { c.read_all(r).await },
            )
            .await?;
        Ok(r.data)
    }

    async fn write_all(
        &self,
        vol: &str,
        path: &str,
        data: &[u8],
        deadline: Deadline,
    ) -> Result<()> {
        let m = WriteAllRequest {
            disk: self.inner.index,
            vol: vol.to_string(),
            path: path.to_string(),
            data: data.to_vec(),
        };
        self.inner
            .call(
                OpClass::WriteAll,
                methods::WRITE_ALL,
                m,
                deadline,
                |mut c, r| async move { c.write_all(r).await },
            )
            .await
            .map(drop)
    }

    async fn create_file(
        &self,
        vol: &str,
        path: &str,
        opts: CreateOptions,
        deadline: Deadline,
    ) -> Result<Box<dyn ShardWriter>> {
        let m = CreateFileRequest {
            disk: self.inner.index,
            vol: vol.to_string(),
            path: path.to_string(),
            direct: opts.direct,
            datasync: opts.datasync,
        };
        let r = self
            .inner
            .call(
                OpClass::CreateFile,
                methods::CREATE_FILE,
                m,
                deadline,
                |mut c, r| async move { c.create_file(r).await },
            )
            .await?;
        Ok(Box::new(RemoteShardWriter {
            disk: self.inner.clone(),
            session: r.session,
            open: true,
        }))
    }

    async fn read_file_at(
        &self,
        vol: &str,
        path: &str,
        offset: u64,
        len: usize,
        deadline: Deadline,
    ) -> Result<Vec<u8>> {
        let m = ReadFileAtRequest {
            disk: self.inner.index,
            vol: vol.to_string(),
            path: path.to_string(),
            offset,
            len: len as u64,
        };
        let r = self
            .inner
            .call(
                OpClass::ReadFileAt,
                methods::READ_FILE_AT,
                m,
                deadline,
                |mut c, r| async move { c.read_file_at(r).await },
            )
            .await?;
        Ok(r.data)
    }

    async fn stat_file(&self, vol: &str, path: &str, deadline: Deadline) -> Result<FileInfo> {
        let m = path_req(self.inner.index, vol, path);
        let r = self
            .inner
            .call(
                OpClass::StatFile,
                methods::STAT_FILE,
                m,
                deadline,
                |mut c, r| async move { c.stat_file(r).await },
            )
            .await?;
        Ok(wire::file_from_wire(r))
    }

    async fn rename_file(
        &self,
        src_vol: &str,
        src: &str,
        dst_vol: &str,
        dst: &str,
        deadline: Deadline,
    ) -> Result<()> {
        let m = RenameRequest {
            disk: self.inner.index,
            src_vol: src_vol.to_string(),
            src: src.to_string(),
            dst_vol: dst_vol.to_string(),
            dst: dst.to_string(),
        };
        self.inner
            .call(
                OpClass::RenameFile,
                methods::RENAME_FILE,
                m,
                deadline,
                |mut c, r| async move { c.rename_file(r).await },
            )
            .await
            .map(drop)
    }

    async fn delete(
        &self,
        vol: &str,
        path: &str,
        opts: DeleteOptions,
        deadline: Deadline,
    ) -> Result<()> {
        let m = DeleteRequest {
            disk: self.inner.index,
            vol: vol.to_string(),
            path: path.to_string(),
            recursive: opts.recursive,
        };
        self.inner
            .call(
                OpClass::Delete,
                methods::DELETE,
                m,
                deadline,
                |mut c, r| async move { c.delete(r).await },
            )
            .await
            .map(drop)
    }

    async fn list_dir(&self, vol: &str, dir: &str, deadline: Deadline) -> Result<Vec<String>> {
        let m = path_req(self.inner.index, vol, dir);
        let r = self
            .inner
            .call(
                OpClass::ListDir,
                methods::LIST_DIR,
                m,
                deadline,
                |mut c, r| async move { c.list_dir(r).await },
            )
            .await?;
        Ok(r.names)
    }
}

/// A shard being written on a peer: a server-side session.
struct RemoteShardWriter {
    disk: Arc<DiskInner>,
    session: u64,
    open: bool,
}

impl Drop for RemoteShardWriter {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        // Dropped without finish: tell the server, best effort, under the
        // probe budget; its idle timeout covers the case this never lands.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let disk = self.disk.clone();
            let session = self.session;
            let deadline = Deadline::after(disk.peer.shared.cfg.server_caps.probe);
            rt.spawn(async move {
                let _ = disk
                    .call(
                        OpClass::Finish,
                        methods::ABORT,
                        SessionRequest { session },
                        deadline,
                        |mut c, r| async move { c.abort(r).await },
                    )
                    .await;
            });
        }
    }
}

#[async_trait]
impl ShardWriter for RemoteShardWriter {
    async fn append(&mut self, data: &[u8], deadline: Deadline) -> Result<()> {
        let m = AppendRequest {
            session: self.session,
            data: data.to_vec(),
        };
        self.disk
            .call(
                OpClass::Append,
                methods::APPEND,
                m,
                deadline,
                |mut c, r| async move { c.append(r).await },
            )
            .await
            .map(drop)
    }

    async fn finish(mut self: Box<Self>, deadline: Deadline) -> Result<u64> {
        let m = SessionRequest {
            session: self.session,
        };
        let r = self
            .disk
            .call(
                OpClass::Finish,
                methods::FINISH,
                m,
                deadline,
                |mut c, r| async move { c.finish(r).await },
            )
            .await;
        // Whatever the outcome, the server has dropped or will drop the session.
        self.open = false;
        Ok(r?.size)
    }
}
