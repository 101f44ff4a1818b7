//! [`ErasureError`]: what an object operation returns when it fails.

use disk_io_api::DiskError;

use crate::quorum::QuorumError;

/// Every error of the erasure layer. Typed: callers match variants, never
/// messages.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErasureError {
    /// Quorum could not be reached (see [`QuorumError`] for the branch and
    /// the counts).
    #[error(transparent)]
    Quorum(#[from] QuorumError),
    /// A quorum of disks agrees the object does not exist.
    #[error("object not found")]
    ObjectNotFound,
    /// A quorum of disks agrees the bucket (volume) does not exist.
    #[error("bucket not found")]
    BucketNotFound,
    /// A quorum of disks answered the same error; it is the answer.
    #[error("disks agree: {0}")]
    Disk(DiskError),
    /// The object's current version is not the one asked for.
    #[error("object version changed: expected {expected}, found {found}")]
    VersionChanged {
        /// The version the caller asked for.
        expected: uuid::Uuid,
        /// The current one.
        found: uuid::Uuid,
    },
    /// The object's current version was found unhealable before (fewer
    /// good shards than data shards) and is not retried outside a deep
    /// scan.
    #[error("object version {version} is known unhealable")]
    Unhealable {
        /// The version.
        version: uuid::Uuid,
    },
    /// The bucket still holds objects.
    #[error("bucket not empty")]
    BucketNotEmpty,
    /// The object name cannot be stored.
    #[error("invalid object name {name:?}: {reason}")]
    InvalidObjectName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The bucket name cannot be used (empty, a `/`, a leading `.`, or the
    /// name of the temporary volume).
    #[error("invalid bucket name {name:?}: {reason}")]
    InvalidBucketName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The user metadata of a PUT is larger than `max_user_meta`.
    #[error("user metadata of {size} bytes is over the limit of {max}")]
    UserMetaTooLarge {
        /// Bytes given.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A requested range lies outside the object.
    #[error("range {offset}+{len} outside object of {size} bytes")]
    InvalidRange {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// Object size.
        size: u64,
    },
    /// The caller's deadline passed.
    #[error("{op} missed its deadline")]
    DeadlineExceeded {
        /// Which object operation.
        op: &'static str,
    },
    /// Reading the source stream (PUT) or writing the sink (GET) failed.
    #[error("object stream: {kind:?}: {message}")]
    Stream {
        /// The I/O error kind.
        kind: std::io::ErrorKind,
        /// Its text, for logs only.
        message: String,
    },
    /// A metadata file could not be understood.
    #[error("corrupt object metadata: {reason}")]
    CorruptMeta {
        /// What is wrong.
        reason: String,
    },
    /// A config field is out of range.
    #[error("invalid erasure config {field}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The topology cannot be cut into sets.
    #[error("invalid topology: {reason}")]
    InvalidTopology {
        /// Why.
        reason: String,
    },
    /// Reed-Solomon refused the shards (a bug or corrupt metadata).
    #[error("erasure codec: {reason}")]
    Codec {
        /// The codec's error.
        reason: String,
    },
}

impl ErasureError {
    /// Too few disks answered (or the deadline came first): the cluster
    /// did not say no, it did not say anything; a later try may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ErasureError::Quorum(QuorumError::Unavailable(_))
                | ErasureError::DeadlineExceeded { .. }
        )
    }

    pub(crate) fn stream(e: std::io::Error) -> Self {
        ErasureError::Stream {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}
