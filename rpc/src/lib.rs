//! # disk-io-rpc
//!
//! The node RPC of disk-io (gRPC: tonic + prost, code generated at build time
//! with a vendored protoc):
//!
//! * [`RemoteDisk`]: a disk on a peer node behind the same
//!   [`Disk`](disk_io_api::Disk)/[`ShardWriter`](disk_io_api::ShardWriter)
//!   traits, with the same error variants a local disk returns; transport
//!   failures are the unavailable variants (`Unreachable`, `DeadlineExceeded`,
//!   `CircuitOpen`, `Busy`, `Rejected`).
//! * [`Peer`]: one per remote node: data channel, liveness channel (its own
//!   connection), [`Breaker`].
//! * [`RpcServer`]: serves any `Vec<Arc<dyn Disk>>` and the node's
//!   [`Locker`](disk_io_api::Locker), authenticating every request
//!   ([`auth`]), bounding everything ([`RpcConfig`]).
//! * [`RemoteLocker`]: a peer's locker behind the `Locker` trait, through
//!   the same breaker as its disks.
//! * [`cluster`]: the cluster config file (TOML), shared with the harness.
//!
//! **Boundary:** no CLI, exporter, S3 or test-only dependency; depends on
//! the API and health crates only, never on the local disk.

pub mod auth;
pub mod breaker;
pub mod client;
pub mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod server;
pub mod wire;

/// The generated messages and service (see `proto/disk.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("diskio.rpc.v1");
}

/// The gRPC paths of the service's methods (what requests are signed over).
pub mod methods {
    macro_rules! paths {
        ($($name:ident = $method:literal),* $(,)?) => {
            $(
                #[doc = concat!("`/diskio.rpc.v1.DiskService/", $method, "`")]
                pub const $name: &str = concat!("/diskio.rpc.v1.DiskService/", $method);
            )*
        };
    }
    paths! {
        DISK_ID = "DiskId",
        DISK_INFO = "DiskInfo",
        MAKE_VOL = "MakeVol",
        LIST_VOLS = "ListVols",
        STAT_VOL = "StatVol",
        DELETE_VOL = "DeleteVol",
        READ_ALL = "ReadAll",
        WRITE_ALL = "WriteAll",
        CREATE_FILE = "CreateFile",
        APPEND = "Append",
        FINISH = "Finish",
        ABORT = "Abort",
        READ_FILE_AT = "ReadFileAt",
        STAT_FILE = "StatFile",
        RENAME_FILE = "RenameFile",
        DELETE = "Delete",
        LIST_DIR = "ListDir",
        PING = "Ping",
        LOCK = "Lock",
        REFRESH_LOCK = "RefreshLock",
        UNLOCK = "Unlock",
        NOTIFY = "Notify",
        ADMIN = "Admin",
    }
}

pub use breaker::{Breaker, BreakerState};
pub use client::{Peer, RemoteDisk, RemoteLocker};
pub use cluster::{ClusterConfig, LockTiming, NodeConfig};
pub use config::{BreakerConfig, RpcConfig};
pub use server::{RpcServer, ServeError, ServerStats, Services};
