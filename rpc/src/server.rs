//! The node RPC server: serves any set of `Arc<dyn Disk>` (and, later, the
//! lockers) to authenticated peers.
//!
//! Per request, in order: authenticate (HMAC, window, nonce), admit (server
//! and per-connection in-flight limits, typed `Busy` past them), then run the
//! op under `min(budget − margin, cap of its class)`. The handler's future is
//! dropped when the client gives up (RST_STREAM, grpc-timeout), which drops
//! the local op: a local disk counts it as a zombie until the kernel answers.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use disk_io_api::{
    AdminHandler, CreateOptions, Deadline, DeleteOptions, Disk, DiskError, Listener, LockKind,
    LockRequest, Locker, OpClass, ShardWriter,
};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::auth::{AuthError, Verifier};
use crate::config::RpcConfig;
use crate::methods;
use crate::proto::disk_service_server::{DiskService, DiskServiceServer};
use crate::proto::*;
use crate::wire::{self, error_to_status};

/// Counters of what the server refused (tests and metrics read them).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests refused by authentication (missing, bad, stale, replayed).
    pub rejected: AtomicU64,
    /// Requests refused by a concurrency limit or a full table.
    pub busy: AtomicU64,
    /// Requests run.
    pub served: AtomicU64,
    /// Connections closed at accept because `max_connections` were open.
    pub refused_connections: AtomicU64,
}

/// An accepted connection holding one of the server's connection slots.
struct Conn {
    stream: tokio::net::TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

struct SessionEntry {
    writer: Option<Box<dyn ShardWriter>>,
    last: Instant,
}

struct Inner {
    disks: Vec<Arc<dyn Disk>>,
    locker: Option<Arc<dyn Locker>>,
    listener: Option<Arc<dyn Listener>>,
    admin: Option<Arc<dyn AdminHandler>>,
    cfg: RpcConfig,
    verifier: Verifier,
    in_flight: Arc<Semaphore>,
    per_conn: Mutex<HashMap<Option<SocketAddr>, usize>>,
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    stats: Arc<ServerStats>,
}

/// What a node serves besides its disks.
#[derive(Clone, Default)]
pub struct Services {
    /// The node's locker (lock calls are `Rejected` without one).
    pub locker: Option<Arc<dyn Locker>>,
    /// Where peers' notifications go (`Rejected` without one).
    pub listener: Option<Arc<dyn Listener>>,
    /// Operators' requests (`Rejected` without one).
    pub admin: Option<Arc<dyn AdminHandler>>,
}

/// The node RPC server.
#[derive(Clone)]
pub struct RpcServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("disks", &self.inner.disks.len())
            .finish_non_exhaustive()
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration cannot work.
    #[error("rpc config: {0}")]
    Config(String),
    /// The transport failed.
    #[error("rpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Releases a connection's in-flight slot.
struct ConnSlot {
    inner: Arc<Inner>,
    key: Option<SocketAddr>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.inner.per_conn);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl RpcServer {
    /// A server for `disks` (index = position), authenticating with
    /// `secret`, with no locker and no listener (their calls are
    /// `Rejected`).
    pub fn new(
        disks: Vec<Arc<dyn Disk>>,
        secret: &[u8],
        cfg: RpcConfig,
    ) -> Result<RpcServer, ServeError> {
        RpcServer::serving(disks, Services::default(), secret, cfg)
    }

    /// A server for `disks` and the node's other services.
    pub fn serving(
        disks: Vec<Arc<dyn Disk>>,
        services: Services,
        secret: &[u8],
        cfg: RpcConfig,
    ) -> Result<RpcServer, ServeError> {
        cfg.check().map_err(ServeError::Config)?;
        let Services {
            locker,
            listener,
            admin,
        } = services;
        Ok(RpcServer {
            inner: Arc::new(Inner {
                verifier: Verifier::new(secret, cfg.replay_window, cfg.nonce_cache_entries),
                in_flight: Arc::new(Semaphore::new(cfg.max_in_flight)),
                per_conn: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
                stats: Arc::new(ServerStats::default()),
                disks,
                locker,
                listener,
                admin,
                cfg,
            }),
        })
    }

    fn locker(&self) -> Result<Arc<dyn Locker>, DiskError> {
        self.inner
            .locker
            .clone()
            .ok_or_else(|| DiskError::Rejected {
                reason: "this node serves no locker".into(),
            })
    }

    /// What the server refused and served so far.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.inner.stats.clone()
    }

    /// Open shard-writer sessions.
    pub fn sessions(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// Serves on `listener` until `shutdown` resolves. Accepted sockets get
    /// TCP_USER_TIMEOUT and no Nagle; connections get HTTP/2 keepalive.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let cfg = self.inner.cfg.clone();
        let user_timeout = cfg.tcp_user_timeout;
        let slots = Arc::new(Semaphore::new(cfg.max_connections));
        let stats = self.inner.stats.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(
            move |accepted| match accepted {
                Ok(stream) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        // Dropping the stream closes it: a bounded server.
                        stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::refused("connections");
                        return None;
                    };
                    let sock = socket2::SockRef::from(&stream);
                    if let Err(e) = sock.set_tcp_user_timeout(Some(user_timeout)) {
                        tracing::warn!(error = %e, "TCP_USER_TIMEOUT not set on an accepted socket");
                    }
                    let _ = stream.set_nodelay(true);
                    Some(Ok::<_, std::io::Error>(Conn {
                        stream,
                        _slot: slot,
                    }))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    None
                }
            },
        );
        let svc = DiskServiceServer::new(self)
            .max_decoding_message_size(cfg.max_message_bytes)
            .max_encoding_message_size(cfg.max_message_bytes);
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(cfg.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(cfg.http2_keepalive_timeout))
            .max_concurrent_streams(Some(cfg.max_streams_per_connection))
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }

    fn refuse(&self, e: AuthError) -> Status {
        let err = if e == AuthError::CacheFull {
            self.inner.stats.busy.fetch_add(1, Ordering::Relaxed);
            crate::metrics::refused("busy");
            DiskError::Busy {
                reason: e.to_string(),
            }
        } else {
            self.inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
            crate::metrics::refused("rejected");
            DiskError::Rejected {
                reason: e.to_string(),
            }
        };
        error_to_status(&err)
    }

    fn busy(&self, reason: String) -> Status {
        self.inner.stats.busy.fetch_add(1, Ordering::Relaxed);
        crate::metrics::refused("busy");
        error_to_status(&DiskError::Busy { reason })
    }

    fn admit(&self, key: Option<SocketAddr>) -> Result<ConnSlot, Status> {
        let permit = self
            .inner
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                self.busy(format!(
                    "server limit of {} requests in flight",
                    self.inner.cfg.max_in_flight
                ))
            })?;
        let mut map = lock(&self.inner.per_conn);
        let n = map.entry(key).or_insert(0);
        if *n >= self.inner.cfg.max_in_flight_per_connection {
            drop(map);
            return Err(self.busy(format!(
                "connection limit of {} requests in flight",
                self.inner.cfg.max_in_flight_per_connection
            )));
        }
        *n += 1;
        Ok(ConnSlot {
            inner: self.inner.clone(),
            key,
            _permit: permit,
        })
    }

    fn disk(&self, index: u32) -> Result<Arc<dyn Disk>, DiskError> {
        self.inner
            .disks
            .get(index as usize)
            .cloned()
            .ok_or_else(|| DiskError::DiskNotFound {
                reason: format!(
                    "this node has no disk {index} (it serves {})",
                    self.inner.disks.len()
                ),
            })
    }

    /// Authenticates, admits and runs one op under the server's deadline.
    async fn run<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        op: OpClass,
        req: Request<Req>,
        f: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Message,
        F: FnOnce(Req, Deadline) -> Fut,
        Fut: Future<Output = Result<Resp, DiskError>>,
    {
        let start = Instant::now();
        let budget = self
            .inner
            .verifier
            .verify(method, &req)
            .map_err(|e| self.refuse(e))?;
        let _slot = self.admit(req.remote_addr())?;
        self.inner.stats.served.fetch_add(1, Ordering::Relaxed);
        let local = budget
            .saturating_sub(self.inner.cfg.server_margin)
            .min(self.inner.cfg.server_caps.for_class(op));
        if local.is_zero() {
            return Err(error_to_status(&DiskError::DeadlineExceeded {
                op,
                waited: start.elapsed(),
            }));
        }
        let deadline = Deadline::after(local);
        // Any disk, not only a well-behaved local one: the server itself
        // answers by its deadline plus half its margin.
        let hard = deadline.instant() + self.inner.cfg.server_margin / 2;
        match tokio::time::timeout_at(hard.into(), f(req.into_inner(), deadline)).await {
            Ok(Ok(r)) => Ok(Response::new(r)),
            Ok(Err(e)) => Err(error_to_status(&e)),
            Err(_) => Err(error_to_status(&DiskError::DeadlineExceeded {
                op,
                waited: start.elapsed(),
            })),
        }
    }

    fn new_session(&self, writer: Box<dyn ShardWriter>) -> Result<u64, DiskError> {
        let mut sessions = lock(&self.inner.sessions);
        let idle = self.inner.cfg.session_idle;
        sessions.retain(|_, s| s.last.elapsed() < idle);
        if sessions.len() >= self.inner.cfg.max_sessions {
            self.inner.stats.busy.fetch_add(1, Ordering::Relaxed);
            crate::metrics::refused("busy");
            return Err(DiskError::Busy {
                reason: format!("{} shard sessions open", sessions.len()),
            });
        }
        let mut id: u64 = rand::random();
        while id == 0 || sessions.contains_key(&id) {
            id = rand::random();
        }
        sessions.insert(
            id,
            SessionEntry {
                writer: Some(writer),
                last: Instant::now(),
            },
        );
        Ok(id)
    }

    fn take_writer(&self, id: u64) -> Result<Box<dyn ShardWriter>, DiskError> {
        let mut sessions = lock(&self.inner.sessions);
        let s = sessions
            .get_mut(&id)
            .ok_or_else(|| DiskError::InvalidArgument {
                reason: "unknown or expired shard session".into(),
            })?;
        s.last = Instant::now();
        s.writer.take().ok_or_else(|| DiskError::InvalidArgument {
            reason: "shard session has a call in flight".into(),
        })
    }

    fn put_writer(&self, id: u64, writer: Box<dyn ShardWriter>) {
        if let Some(s) = lock(&self.inner.sessions).get_mut(&id) {
            s.writer = Some(writer);
            s.last = Instant::now();
        }
    }
}

fn empty() -> Empty {
    Empty {}
}

fn usize_arg(v: u64, what: &str) -> Result<usize, DiskError> {
    usize::try_from(v).map_err(|_| DiskError::InvalidArgument {
        reason: format!("{what} {v} does not fit"),
    })
}

fn lock_kind(k: u32) -> Result<LockKind, DiskError> {
    match k {
        0 => Ok(LockKind::Read),
        1 => Ok(LockKind::Write),
        other => Err(DiskError::InvalidArgument {
            reason: format!("lock kind {other} is neither 0 (read) nor 1 (write)"),
        }),
    }
}

fn ttl_arg(ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(ms)
}

#[tonic::async_trait]
impl DiskService for RpcServer {
    async fn lock(&self, r: Request<LockArgs>) -> Result<Response<Granted>, Status> {
        self.run(methods::LOCK, OpClass::Lock, r, |m, d| async move {
            let req = LockRequest {
                resource: m.resource,
                uid: m.uid,
                owner: m.owner,
                kind: lock_kind(m.kind)?,
                ttl: ttl_arg(m.ttl_ms),
            };
            let granted = self.locker()?.acquire(&req, d).await?;
            Ok(Granted { granted })
        })
        .await
    }

    async fn refresh_lock(&self, r: Request<LeaseArgs>) -> Result<Response<Granted>, Status> {
        self.run(methods::REFRESH_LOCK, OpClass::Lock, r, |m, d| async move {
            let granted = self
                .locker()?
                .refresh(&m.resource, &m.uid, ttl_arg(m.ttl_ms), d)
                .await?;
            Ok(Granted { granted })
        })
        .await
    }

    async fn notify(&self, r: Request<NotifyMsg>) -> Result<Response<Taken>, Status> {
        self.run(methods::NOTIFY, OpClass::Notify, r, |m, _d| async move {
            let l = self
                .inner
                .listener
                .clone()
                .ok_or_else(|| DiskError::Rejected {
                    reason: "this node takes no notifications".into(),
                })?;
            if m.topic.len() > 256 || m.key.len() > 1024 {
                return Err(DiskError::InvalidArgument {
                    reason: "notification topic or key too long".into(),
                });
            }
            Ok(Taken {
                taken: l.notify(&m.topic, &m.key),
            })
        })
        .await
    }

    async fn admin(&self, r: Request<AdminMsg>) -> Result<Response<AdminMsg>, Status> {
        self.run(methods::ADMIN, OpClass::Admin, r, |m, d| async move {
            let h = self
                .inner
                .admin
                .clone()
                .ok_or_else(|| DiskError::Rejected {
                    reason: "this node takes no admin requests".into(),
                })?;
            Ok(AdminMsg {
                body: h.handle(&m.body, d).await?,
            })
        })
        .await
    }

    async fn unlock(&self, r: Request<LeaseArgs>) -> Result<Response<Granted>, Status> {
        self.run(methods::UNLOCK, OpClass::Lock, r, |m, d| async move {
            let granted = self.locker()?.release(&m.resource, &m.uid, d).await?;
            Ok(Granted { granted })
        })
        .await
    }

    async fn disk_id(&self, r: Request<DiskTarget>) -> Result<Response<DiskIdMsg>, Status> {
        self.run(methods::DISK_ID, OpClass::DiskId, r, |m, d| async move {
            Ok(wire::id_to_wire(&self.disk(m.disk)?.disk_id(d).await?))
        })
        .await
    }

    async fn disk_info(&self, r: Request<DiskTarget>) -> Result<Response<DiskInfoMsg>, Status> {
        self.run(
            methods::DISK_INFO,
            OpClass::DiskInfo,
            r,
            |m, d| async move { Ok(wire::info_to_wire(&self.disk(m.disk)?.disk_info(d).await?)) },
        )
        .await
    }

    async fn make_vol(&self, r: Request<VolRequest>) -> Result<Response<Empty>, Status> {
        self.run(methods::MAKE_VOL, OpClass::MakeVol, r, |m, d| async move {
            self.disk(m.disk)?
                .make_vol(&m.vol, d)
                .await
                .map(|()| empty())
        })
        .await
    }

    async fn list_vols(&self, r: Request<DiskTarget>) -> Result<Response<VolList>, Status> {
        self.run(
            methods::LIST_VOLS,
            OpClass::ListVols,
            r,
            |m, d| async move {
                let vols = self.disk(m.disk)?.list_vols(d).await?;
                Ok(VolList {
                    vols: vols.iter().map(wire::vol_to_wire).collect(),
                })
            },
        )
        .await
    }

    async fn stat_vol(&self, r: Request<VolRequest>) -> Result<Response<VolInfoMsg>, Status> {
        self.run(methods::STAT_VOL, OpClass::StatVol, r, |m, d| async move {
            Ok(wire::vol_to_wire(
                &self.disk(m.disk)?.stat_vol(&m.vol, d).await?,
            ))
        })
        .await
    }

    async fn delete_vol(&self, r: Request<DeleteVolRequest>) -> Result<Response<Empty>, Status> {
        self.run(
            methods::DELETE_VOL,
            OpClass::DeleteVol,
            r,
            |m, d| async move {
                self.disk(m.disk)?
                    .delete_vol(&m.vol, m.force, d)
                    .await
                    .map(|()| empty())
            },
        )
        .await
    }

    async fn read_all(&self, r: Request<PathRequest>) -> Result<Response<Data>, Status> {
        let limit = self.inner.cfg.max_message_bytes.saturating_sub(64) as u64;
        self.run(methods::READ_ALL, OpClass::ReadAll, r, |m, d| async move {
            let data = self.disk(m.disk)?.read_all(&m.vol, &m.path, d).await?;
            // An answer that cannot be sent is a typed, answered error.
            if data.len() as u64 > limit {
                return Err(DiskError::TooLarge {
                    size: data.len() as u64,
                    limit,
                });
            }
            Ok(Data { data })
        })
        .await
    }

    async fn write_all(&self, r: Request<WriteAllRequest>) -> Result<Response<Empty>, Status> {
        self.run(
            methods::WRITE_ALL,
            OpClass::WriteAll,
            r,
            |m, d| async move {
                self.disk(m.disk)?
                    .write_all(&m.vol, &m.path, &m.data, d)
                    .await
                    .map(|()| empty())
            },
        )
        .await
    }

    async fn create_file(
        &self,
        r: Request<CreateFileRequest>,
    ) -> Result<Response<crate::proto::Session>, Status> {
        self.run(
            methods::CREATE_FILE,
            OpClass::CreateFile,
            r,
            |m, d| async move {
                let opts = CreateOptions {
                    direct: m.direct,
                    datasync: m.datasync,
                };
                let writer = self
                    .disk(m.disk)?
                    .create_file(&m.vol, &m.path, opts, d)
                    .await?;
                Ok(crate::proto::Session {
                    session: self.new_session(writer)?,
                })
            },
        )
        .await
    }

    async fn append(&self, r: Request<AppendRequest>) -> Result<Response<Empty>, Status> {
        self.run(methods::APPEND, OpClass::Append, r, |m, d| async move {
            let mut w = self.take_writer(m.session)?;
            let out = w.append(&m.data, d).await;
            self.put_writer(m.session, w);
            out.map(|()| empty())
        })
        .await
    }

    async fn finish(&self, r: Request<SessionRequest>) -> Result<Response<Size>, Status> {
        self.run(methods::FINISH, OpClass::Finish, r, |m, d| async move {
            let w = self.take_writer(m.session)?;
            lock(&self.inner.sessions).remove(&m.session);
            Ok(Size {
                size: w.finish(d).await?,
            })
        })
        .await
    }

    async fn abort(&self, r: Request<SessionRequest>) -> Result<Response<Empty>, Status> {
        self.run(methods::ABORT, OpClass::Finish, r, |m, _d| async move {
            lock(&self.inner.sessions).remove(&m.session);
            Ok(empty())
        })
        .await
    }

    async fn read_file_at(&self, r: Request<ReadFileAtRequest>) -> Result<Response<Data>, Status> {
        let max = self.inner.cfg.max_message_bytes;
        self.run(
            methods::READ_FILE_AT,
            OpClass::ReadFileAt,
            r,
            |m, d| async move {
                let len = usize_arg(m.len, "length")?;
                // The answer must fit in one message (with room for framing).
                if len > max.saturating_sub(64) {
                    return Err(DiskError::InvalidArgument {
                        reason: format!(
                            "read of {len} bytes exceeds the RPC message limit of {max}"
                        ),
                    });
                }
                let data = self
                    .disk(m.disk)?
                    .read_file_at(&m.vol, &m.path, m.offset, len, d)
                    .await?;
                Ok(Data { data })
            },
        )
        .await
    }

    async fn stat_file(&self, r: Request<PathRequest>) -> Result<Response<FileInfoMsg>, Status> {
        self.run(
            methods::STAT_FILE,
            OpClass::StatFile,
            r,
            |m, d| async move {
                Ok(wire::file_to_wire(
                    &self.disk(m.disk)?.stat_file(&m.vol, &m.path, d).await?,
                ))
            },
        )
        .await
    }

    async fn rename_file(&self, r: Request<RenameRequest>) -> Result<Response<Empty>, Status> {
        self.run(
            methods::RENAME_FILE,
            OpClass::RenameFile,
            r,
            |m, d| async move {
                self.disk(m.disk)?
                    .rename_file(&m.src_vol, &m.src, &m.dst_vol, &m.dst, d)
                    .await
                    .map(|()| empty())
            },
        )
        .await
    }

    async fn delete(&self, r: Request<DeleteRequest>) -> Result<Response<Empty>, Status> {
        self.run(methods::DELETE, OpClass::Delete, r, |m, d| async move {
            let opts = DeleteOptions {
                recursive: m.recursive,
            };
            self.disk(m.disk)?
                .delete(&m.vol, &m.path, opts, d)
                .await
                .map(|()| empty())
        })
        .await
    }

    async fn list_dir(&self, r: Request<PathRequest>) -> Result<Response<Names>, Status> {
        self.run(methods::LIST_DIR, OpClass::ListDir, r, |m, d| async move {
            Ok(Names {
                names: self.disk(m.disk)?.list_dir(&m.vol, &m.path, d).await?,
            })
        })
        .await
    }

    async fn ping(&self, r: Request<Heartbeat>) -> Result<Response<Heartbeat>, Status> {
        // Authenticated, but outside the data limits: a saturated server
        // still answers its heartbeats.
        self.inner
            .verifier
            .verify(methods::PING, &r)
            .map_err(|e| self.refuse(e))?;
        Ok(Response::new(Heartbeat {
            seq: r.into_inner().seq,
        }))
    }
}
