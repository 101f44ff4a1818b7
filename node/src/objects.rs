//! [`ObjectLayer`]: S3's object model over the erasure sets.
//!
//! Buckets are volumes on every disk of every set. An object is one
//! erasure object in its bucket; what S3 needs besides the bytes (ETag,
//! content type, user metadata) rides in the erasure metadata's `user`
//! map. A multipart upload stores its parts as erasure objects in the
//! reserved bucket [`MULTIPART_BUCKET`] (`uploads/<id>/part.<n>`, spread
//! over the sets by name) next to the upload's record
//! (`uploads/<id>/info`); completing it writes, as the object, a small
//! manifest naming each part's name, size and version, so completion
//! copies nothing and a GET streams the parts in order, each checked
//! against the version the manifest recorded.
//!
//! Decisions:
//! - The parts of a completed upload stay where they were uploaded; they
//!   are deleted (in the background) when the object is deleted or
//!   replaced. A node dying between the commit and that cleanup leaks
//!   them (no scanner collects orphans yet; listed in ARCHITECTURE.md).
//! - Keys the erasure layer cannot store as paths (empty components, a
//!   trailing `/`, `object.meta`) are refused with a typed error rather
//!   than escaped.
//! - Listing walks the directory tree of every set, merging entries in
//!   key order; each call visits at most `list_visit_limit` entries and
//!   returns a continuation token where it stopped.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use disk_io::Deadline;
use disk_io_erasure::{ErasureError, ErasureSets, ObjectInfo, PutOptions, SYSTEM_BUCKET};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, ReadBuf};
use uuid::Uuid;

/// Reserved bucket holding multipart uploads in progress and the parts of
/// completed ones.
pub const MULTIPART_BUCKET: &str = "disk-io-multipart";

/// User-metadata keys of the erasure metadata.
mod key {
    pub const ETAG: &str = "etag";
    pub const CONTENT_TYPE: &str = "content-type";
    /// S3 size of a multipart object (the erasure object is its manifest).
    pub const MPU_SIZE: &str = "mpu-size";
    pub const MPU_PARTS: &str = "mpu-parts";
    /// Prefix of the client's `x-amz-meta-*` entries.
    pub const USER: &str = "x-amz-meta-";
}

/// Bounds of the object layer.
#[derive(Clone, Debug)]
pub struct ObjectsConfig {
    /// Budget of one object PUT or GET (the whole transfer): a client
    /// slower than size / budget is cut off.
    pub transfer_budget: Duration,
    /// Budget of a metadata operation (stat, delete, bucket operations,
    /// one listing call, completing an upload).
    pub meta_budget: Duration,
    /// Most keys one listing returns (S3's `max-keys` is capped to it).
    pub max_list_keys: usize,
    /// Most directory entries one listing call visits before it returns a
    /// continuation token (so a sparse listing is bounded too).
    pub list_visit_limit: usize,
    /// Smallest part but the last of a multipart upload (S3: 5 MiB).
    pub min_part_size: u64,
    /// Most parts of one upload (S3: 10,000).
    pub max_parts: usize,
    /// Bytes buffered between the erasure read and the HTTP response.
    pub get_buffer: usize,
    /// Largest multipart manifest accepted.
    pub max_manifest: usize,
    /// Part lookups in flight while an upload completes.
    pub complete_concurrency: usize,
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        ObjectsConfig {
            transfer_budget: Duration::from_secs(15 * 60),
            meta_budget: Duration::from_secs(10),
            max_list_keys: 1000,
            list_visit_limit: 10_000,
            min_part_size: 5 << 20,
            max_parts: 10_000,
            get_buffer: 1 << 20,
            max_manifest: 4 << 20,
            complete_concurrency: 32,
        }
    }
}

/// What an object operation returns when it fails. Typed: the S3 front
/// maps variants to S3 error codes.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The bucket does not exist.
    #[error("no such bucket")]
    NoSuchBucket,
    /// The object does not exist.
    #[error("no such key")]
    NoSuchKey,
    /// The multipart upload does not exist (or belongs to another key).
    #[error("no such upload")]
    NoSuchUpload,
    /// The bucket exists already.
    #[error("bucket exists")]
    BucketExists,
    /// The bucket holds objects.
    #[error("bucket not empty")]
    BucketNotEmpty,
    /// The bucket name cannot be used.
    #[error("invalid bucket name: {0}")]
    InvalidBucketName(String),
    /// The key cannot be stored.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A request argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A part named in CompleteMultipartUpload is missing or has another
    /// ETag.
    #[error("invalid part: {0}")]
    InvalidPart(String),
    /// Parts not in ascending order.
    #[error("parts are not in ascending order")]
    InvalidPartOrder,
    /// A part but the last is smaller than `min_part_size`.
    #[error("part {part} of {size} bytes is below the minimum part size")]
    EntityTooSmall {
        /// Part number.
        part: i32,
        /// Its size.
        size: u64,
    },
    /// The body ended before (or went on past) its content length.
    #[error("body of {got} bytes where {expected} were declared")]
    IncompleteBody {
        /// Declared.
        expected: u64,
        /// Received (so far).
        got: u64,
    },
    /// The user metadata is too large.
    #[error("metadata too large")]
    MetadataTooLarge,
    /// Too few disks answered (or the deadline came first): nothing was
    /// refused; a retry may succeed.
    #[error("unavailable: {0}")]
    Unavailable(ErasureError),
    /// Any other erasure-layer failure.
    #[error(transparent)]
    Erasure(ErasureError),
    /// Stored data the layer cannot understand (a corrupt manifest).
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// Not supported by this node.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
}

impl From<ErasureError> for ObjectError {
    fn from(e: ErasureError) -> Self {
        if e.is_unavailable() {
            return ObjectError::Unavailable(e);
        }
        match e {
            ErasureError::ObjectNotFound => ObjectError::NoSuchKey,
            ErasureError::BucketNotFound => ObjectError::NoSuchBucket,
            ErasureError::BucketNotEmpty => ObjectError::BucketNotEmpty,
            ErasureError::InvalidObjectName { name, reason } => {
                ObjectError::InvalidKey(format!("{name:?}: {reason}"))
            }
            ErasureError::InvalidBucketName { name, reason } => {
                ObjectError::InvalidBucketName(format!("{name:?}: {reason}"))
            }
            ErasureError::UserMetaTooLarge { .. } => ObjectError::MetadataTooLarge,
            ErasureError::Stream { kind, message } => {
                ObjectError::InvalidArgument(format!("request body: {kind:?}: {message}"))
            }
            e => ObjectError::Erasure(e),
        }
    }
}

type Result<T, E = ObjectError> = std::result::Result<T, E>;

/// An object's S3 view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHead {
    /// S3 size.
    pub size: u64,
    /// ETag (without quotes).
    pub etag: String,
    /// Content type given at upload.
    pub content_type: Option<String>,
    /// `x-amz-meta-*` entries (without the prefix).
    pub metadata: BTreeMap<String, String>,
    /// Modification time.
    pub modified: SystemTime,
    /// Parts, for a multipart object.
    pub parts: Option<usize>,
    version: Uuid,
}

impl ObjectHead {
    fn from_info(info: &ObjectInfo) -> ObjectHead {
        let u = &info.user;
        ObjectHead {
            size: u
                .get(key::MPU_SIZE)
                .and_then(|s| s.parse().ok())
                .unwrap_or(info.size),
            etag: u.get(key::ETAG).cloned().unwrap_or_default(),
            content_type: u.get(key::CONTENT_TYPE).cloned(),
            metadata: u
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix(key::USER)
                        .map(|k| (k.to_string(), v.clone()))
                })
                .collect(),
            modified: info.modified,
            parts: u.get(key::MPU_PARTS).and_then(|s| s.parse().ok()),
            version: info.version,
        }
    }
}

/// One key of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    /// The key.
    pub key: String,
    /// Its head.
    pub head: ObjectHead,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Objects, in key order.
    pub objects: Vec<ListedObject>,
    /// Common prefixes (with a delimiter), in order.
    pub prefixes: Vec<String>,
    /// Where the next page starts, when there is one.
    pub next_token: Option<String>,
}

/// A multipart upload's record.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadInfo {
    bucket: String,
    key: String,
    user: BTreeMap<String, String>,
}

/// One part in a manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestPart {
    name: String,
    size: u64,
    version: Uuid,
}

/// What a completed multipart object's erasure object holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    upload: String,
    parts: Vec<ManifestPart>,
}

/// A PUT body with what the layer checks and learns while it streams.
pub struct Body<'a> {
    /// The bytes.
    pub reader: &'a mut (dyn AsyncRead + Unpin + Send),
    /// Declared length, checked against what arrives.
    pub length: Option<u64>,
}

/// S3's object model over the erasure sets (see the module docs).
pub struct ObjectLayer {
    sets: Arc<ErasureSets>,
    cfg: ObjectsConfig,
}

fn reserved(bucket: &str) -> bool {
    bucket == SYSTEM_BUCKET || bucket == MULTIPART_BUCKET
}

fn upload_dir(id: &str) -> String {
    format!("uploads/{id}")
}

fn part_name(id: &str, part: i32) -> String {
    format!("uploads/{id}/part.{part:05}")
}

fn check_upload_id(id: &str) -> Result<()> {
    Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| ObjectError::NoSuchUpload)
}

impl ObjectLayer {
    /// The layer over `sets`.
    pub fn new(sets: Arc<ErasureSets>, cfg: ObjectsConfig) -> ObjectLayer {
        ObjectLayer { sets, cfg }
    }

    /// The erasure sets underneath.
    pub fn sets(&self) -> &Arc<ErasureSets> {
        &self.sets
    }

    /// The bounds.
    pub fn config(&self) -> &ObjectsConfig {
        &self.cfg
    }

    fn meta_deadline(&self) -> Deadline {
        Deadline::after(self.cfg.meta_budget)
    }

    fn transfer_deadline(&self) -> Deadline {
        Deadline::after(self.cfg.transfer_budget)
    }

    /// Create the reserved multipart bucket (every node does at start).
    pub async fn init(&self, deadline: Deadline) -> Result<()> {
        self.sets.make_bucket(MULTIPART_BUCKET, deadline).await?;
        Ok(())
    }

    fn check_user_bucket(bucket: &str) -> Result<()> {
        if reserved(bucket) {
            return Err(ObjectError::InvalidBucketName(format!(
                "{bucket:?} is reserved"
            )));
        }
        Ok(())
    }

    /// Create a bucket; `BucketExists` when it is there already.
    pub async fn make_bucket(&self, bucket: &str) -> Result<()> {
        Self::check_user_bucket(bucket)?;
        let d = self.meta_deadline();
        if self.bucket_exists(bucket, d).await? {
            return Err(ObjectError::BucketExists);
        }
        self.sets.make_bucket(bucket, d).await?;
        Ok(())
    }

    async fn bucket_exists(&self, bucket: &str, d: Deadline) -> Result<bool> {
        Ok(self
            .sets
            .list_buckets(d)
            .await?
            .iter()
            .any(|(b, _)| b == bucket))
    }

    /// `NoSuchBucket` unless the bucket exists.
    pub async fn head_bucket(&self, bucket: &str) -> Result<()> {
        if reserved(bucket) || !self.bucket_exists(bucket, self.meta_deadline()).await? {
            return Err(ObjectError::NoSuchBucket);
        }
        Ok(())
    }

    /// The buckets (reserved ones left out), with creation times.
    pub async fn list_buckets(&self) -> Result<Vec<(String, SystemTime)>> {
        let mut all = self.sets.list_buckets(self.meta_deadline()).await?;
        all.retain(|(b, _)| !reserved(b));
        Ok(all)
    }

    /// Delete an empty bucket.
    pub async fn delete_bucket(&self, bucket: &str) -> Result<()> {
        Self::check_user_bucket(bucket)?;
        self.sets
            .delete_bucket(bucket, self.meta_deadline())
            .await?;
        Ok(())
    }

    async fn stat(&self, bucket: &str, key: &str, d: Deadline) -> Result<ObjectInfo> {
        Ok(self
            .sets
            .set_for(bucket, key)
            .stat_object(bucket, key, d)
            .await?)
    }

    /// An object's head.
    pub async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectHead> {
        Self::check_user_bucket(bucket).map_err(|_| ObjectError::NoSuchBucket)?;
        let info = self.stat(bucket, key, self.meta_deadline()).await?;
        Ok(ObjectHead::from_info(&info))
    }

    /// Store an object from `body`; its ETag (hex MD5 of the bytes).
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Body<'_>,
        content_type: Option<String>,
        metadata: BTreeMap<String, String>,
    ) -> Result<String> {
        Self::check_user_bucket(bucket)?;
        let mut user = user_meta(content_type, metadata);
        let previous = self.previous_manifest(bucket, key).await;
        let (etag, size) = self
            .put_hashed(
                bucket,
                key,
                body,
                std::mem::take(&mut user),
                self.transfer_deadline(),
            )
            .await?;
        tracing::debug!(bucket, key, size, "object stored");
        if let Some(m) = previous {
            self.spawn_delete_parts(m.parts.into_iter().map(|p| p.name).collect());
        }
        Ok(etag)
    }

    /// `put_object_with` with an MD5 of the bytes as ETag, checking the
    /// declared length.
    async fn put_hashed(
        &self,
        bucket: &str,
        name: &str,
        body: Body<'_>,
        user: BTreeMap<String, String>,
        deadline: Deadline,
    ) -> Result<(String, u64)> {
        let digest = Arc::new(std::sync::Mutex::new(Md5::new()));
        let mut reader = HashingReader {
            inner: body.reader,
            md5: digest.clone(),
            got: 0,
            expected: body.length,
        };
        let etag = Arc::new(std::sync::OnceLock::new());
        let (hash, out) = (digest.clone(), etag.clone());
        let opts = PutOptions {
            user,
            version: None,
            finish: Some(Box::new(move |_size| {
                let md5 = std::mem::take(&mut *hash.lock().expect("digest lock"));
                let hex = out.get_or_init(|| hex::encode(md5.finalize())).clone();
                BTreeMap::from([(key::ETAG.to_string(), hex)])
            })),
        };
        let r = self
            .sets
            .set_for(bucket, name)
            .put_object_with(bucket, name, &mut reader, opts, deadline)
            .await;
        // A short or long body is the answer only when the body is what
        // failed (or nothing did); a quorum failure stops reading early
        // and is reported as itself.
        if let (Some(expected), Ok(_) | Err(ErasureError::Stream { .. })) = (reader.expected, &r) {
            if reader.got != expected {
                return Err(ObjectError::IncompleteBody {
                    expected,
                    got: reader.got,
                });
            }
        }
        let report = r?;
        let etag = etag
            .get()
            .cloned()
            .ok_or_else(|| ObjectError::Corrupt("object stored without its digest".into()))?;
        Ok((etag, report.size))
    }

    /// The manifest of the object now at `key`, if it is a multipart one
    /// (so its parts can go once it is replaced or deleted).
    async fn previous_manifest(&self, bucket: &str, key: &str) -> Option<Manifest> {
        let d = self.meta_deadline();
        let info = self.stat(bucket, key, d).await.ok()?;
        info.user.get(key::MPU_PARTS)?;
        self.read_manifest(bucket, key, info.version, d).await.ok()
    }

    async fn read_small(
        &self,
        bucket: &str,
        name: &str,
        version: Option<Uuid>,
        max: usize,
        d: Deadline,
    ) -> Result<Vec<u8>> {
        let set = self.sets.set_for(bucket, name);
        let mut buf = Vec::new();
        let mut sink = CappedSink { buf: &mut buf, max };
        set.get_version(bucket, name, version, None, &mut sink, d)
            .await?;
        Ok(buf)
    }

    async fn read_manifest(
        &self,
        bucket: &str,
        key: &str,
        version: Uuid,
        d: Deadline,
    ) -> Result<Manifest> {
        let bytes = self
            .read_small(bucket, key, Some(version), self.cfg.max_manifest, d)
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ObjectError::Corrupt(format!("manifest: {e}")))
    }

    fn spawn_delete_parts(&self, names: Vec<String>) {
        let sets = self.sets.clone();
        let budget = self.cfg.meta_budget;
        tokio::spawn(async move {
            for name in names {
                let set = sets.set_for(MULTIPART_BUCKET, &name);
                if let Err(e) = set
                    .delete_object(MULTIPART_BUCKET, &name, Deadline::after(budget))
                    .await
                {
                    if !matches!(e, ErasureError::ObjectNotFound) {
                        tracing::warn!(part = %name, error = %e, "part not deleted");
                    }
                }
            }
        });
    }

    /// Stream `range` (inclusive S3 range resolved to `start..end`) of an
    /// object into `out`, as of version `head`: a replaced object fails
    /// with `VersionChanged` before a byte is written.
    pub async fn read_object(
        &self,
        bucket: &str,
        key: &str,
        head: &ObjectHead,
        range: std::ops::Range<u64>,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> Result<()> {
        let d = self.transfer_deadline();
        let len = range.end - range.start;
        if head.parts.is_none() {
            let set = self.sets.set_for(bucket, key);
            set.get_version(
                bucket,
                key,
                Some(head.version),
                Some((range.start, len)),
                out,
                d,
            )
            .await?;
            return Ok(());
        }
        let manifest = self.read_manifest(bucket, key, head.version, d).await?;
        let mut at = 0u64;
        for p in &manifest.parts {
            let (p_start, p_end) = (at, at + p.size);
            at = p_end;
            let (s, e) = (range.start.max(p_start), range.end.min(p_end));
            if s >= e {
                continue;
            }
            let set = self.sets.set_for(MULTIPART_BUCKET, &p.name);
            set.get_version(
                MULTIPART_BUCKET,
                &p.name,
                Some(p.version),
                Some((s - p_start, e - s)),
                out,
                d,
            )
            .await?;
        }
        if at != head.size {
            return Err(ObjectError::Corrupt(format!(
                "manifest parts sum to {at} bytes, object says {}",
                head.size
            )));
        }
        Ok(())
    }

    /// Delete an object (S3: deleting a missing key succeeds).
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<()> {
        Self::check_user_bucket(bucket).map_err(|_| ObjectError::NoSuchBucket)?;
        let previous = self.previous_manifest(bucket, key).await;
        match self
            .sets
            .set_for(bucket, key)
            .delete_object(bucket, key, self.meta_deadline())
            .await
        {
            Ok(()) | Err(ErasureError::ObjectNotFound) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(m) = previous {
            self.spawn_delete_parts(m.parts.into_iter().map(|p| p.name).collect());
        }
        Ok(())
    }

    /// Start a multipart upload; its id.
    pub async fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        content_type: Option<String>,
        metadata: BTreeMap<String, String>,
    ) -> Result<String> {
        Self::check_user_bucket(bucket)?;
        disk_io_erasure::check_object_name(key)?;
        let d = self.meta_deadline();
        if !self.bucket_exists(bucket, d).await? {
            return Err(ObjectError::NoSuchBucket);
        }
        let id = Uuid::new_v4().to_string();
        let info = UploadInfo {
            bucket: bucket.to_string(),
            key: key.to_string(),
            user: user_meta(content_type, metadata),
        };
        let bytes = serde_json::to_vec(&info).expect("upload info serializes");
        let name = format!("{}/info", upload_dir(&id));
        self.sets
            .set_for(MULTIPART_BUCKET, &name)
            .put_object(MULTIPART_BUCKET, &name, &mut bytes.as_slice(), d)
            .await?;
        Ok(id)
    }

    async fn upload_info(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        d: Deadline,
    ) -> Result<UploadInfo> {
        check_upload_id(id)?;
        let name = format!("{}/info", upload_dir(id));
        let bytes = match self
            .read_small(MULTIPART_BUCKET, &name, None, 64 << 10, d)
            .await
        {
            Err(ObjectError::NoSuchKey) => return Err(ObjectError::NoSuchUpload),
            r => r?,
        };
        let info: UploadInfo = serde_json::from_slice(&bytes)
            .map_err(|e| ObjectError::Corrupt(format!("upload record: {e}")))?;
        if info.bucket != bucket || info.key != key {
            return Err(ObjectError::NoSuchUpload);
        }
        Ok(info)
    }

    /// Store one part; its ETag.
    pub async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        part: i32,
        body: Body<'_>,
    ) -> Result<String> {
        if part < 1 || part as usize > self.cfg.max_parts {
            return Err(ObjectError::InvalidArgument(format!(
                "part number {part} outside 1..={}",
                self.cfg.max_parts
            )));
        }
        self.upload_info(bucket, key, id, self.meta_deadline())
            .await?;
        let name = part_name(id, part);
        let (etag, _) = self
            .put_hashed(
                MULTIPART_BUCKET,
                &name,
                body,
                BTreeMap::new(),
                self.transfer_deadline(),
            )
            .await?;
        Ok(etag)
    }

    /// Complete an upload from `parts` (number, ETag), in ascending order;
    /// the object's ETag.
    pub async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        parts: &[(i32, String)],
    ) -> Result<String> {
        let d = self.meta_deadline();
        let info = self.upload_info(bucket, key, id, d).await?;
        if parts.is_empty() || parts.len() > self.cfg.max_parts {
            return Err(ObjectError::InvalidArgument(format!(
                "{} parts (1..={} allowed)",
                parts.len(),
                self.cfg.max_parts
            )));
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(ObjectError::InvalidPartOrder);
        }
        // Bounded fan-out: each stat is a quorum read on one set.
        use futures_util::StreamExt;
        let names: Vec<String> = parts.iter().map(|(n, _)| part_name(id, *n)).collect();
        let stats: Vec<_> = futures_util::stream::iter(
            names
                .into_iter()
                .map(|name| async move { (self.stat(MULTIPART_BUCKET, &name, d).await, name) }),
        )
        .buffered(self.cfg.complete_concurrency)
        .collect()
        .await;
        let mut manifest = Manifest {
            upload: id.to_string(),
            parts: Vec::with_capacity(parts.len()),
        };
        let mut md5s = Md5::new();
        let mut total = 0u64;
        for (i, ((n, etag), (st, name))) in parts.iter().zip(stats).enumerate() {
            let st = match st {
                Err(ObjectError::NoSuchKey) => {
                    return Err(ObjectError::InvalidPart(format!(
                        "part {n} was not uploaded"
                    )))
                }
                r => r?,
            };
            let have = st.user.get(key::ETAG).map(String::as_str).unwrap_or("");
            if have != etag.trim_matches('"') {
                return Err(ObjectError::InvalidPart(format!(
                    "part {n}: ETag does not match"
                )));
            }
            if i + 1 < parts.len() && st.size < self.cfg.min_part_size {
                return Err(ObjectError::EntityTooSmall {
                    part: *n,
                    size: st.size,
                });
            }
            md5s.update(
                hex::decode(have).map_err(|_| ObjectError::Corrupt(format!("part {n} ETag")))?,
            );
            total += st.size;
            manifest.parts.push(ManifestPart {
                name,
                size: st.size,
                version: st.version,
            });
        }
        let etag = format!("{}-{}", hex::encode(md5s.finalize()), parts.len());
        let mut user = info.user;
        user.insert(key::ETAG.into(), etag.clone());
        user.insert(key::MPU_SIZE.into(), total.to_string());
        user.insert(key::MPU_PARTS.into(), parts.len().to_string());
        let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
        let previous = self.previous_manifest(bucket, key).await;
        let opts = PutOptions {
            user,
            finish: None,
            version: None,
        };
        self.sets
            .set_for(bucket, key)
            .put_object_with(bucket, key, &mut bytes.as_slice(), opts, d)
            .await?;
        // Close the upload before answering: once its record is gone no
        // retried Complete, Abort or UploadPart can touch the parts the
        // manifest now names.
        let info_name = format!("{}/info", upload_dir(id));
        let cleanup = Deadline::after(self.cfg.meta_budget);
        match self
            .sets
            .set_for(MULTIPART_BUCKET, &info_name)
            .delete_object(MULTIPART_BUCKET, &info_name, cleanup)
            .await
        {
            Ok(()) | Err(ErasureError::ObjectNotFound) => {}
            Err(e) => tracing::warn!(upload = %id, error = %e, "upload record not deleted"),
        }
        // Parts uploaded but not listed go; so do the parts of the object
        // this one replaced, unless this manifest names them too (a
        // retried Complete of the same upload).
        let listed: std::collections::HashSet<String> =
            manifest.parts.iter().map(|p| p.name.clone()).collect();
        let mut gone: Vec<String> = match self.upload_entries(id, cleanup).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(upload = %id, error = %e, "unlisted parts not collected");
                Vec::new()
            }
        };
        if let Some(m) = previous {
            gone.extend(m.parts.into_iter().map(|p| p.name));
        }
        gone.retain(|n| !listed.contains(n) && *n != info_name);
        self.spawn_delete_parts(gone);
        Ok(etag)
    }

    /// Every object under the upload's directory (info and parts), on
    /// every set.
    async fn upload_entries(&self, id: &str, d: Deadline) -> Result<Vec<String>> {
        let dir = upload_dir(id);
        let mut names = std::collections::BTreeSet::new();
        for r in futures_util::future::join_all(
            self.sets
                .sets()
                .iter()
                .map(|s| s.list(MULTIPART_BUCKET, &dir, d)),
        )
        .await
        {
            match r {
                Ok(es) => names.extend(es.into_iter().map(|e| format!("{dir}/{e}"))),
                Err(ErasureError::BucketNotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Abort an upload: its record and parts go.
    pub async fn abort_upload(&self, bucket: &str, key: &str, id: &str) -> Result<()> {
        let d = self.meta_deadline();
        self.upload_info(bucket, key, id, d).await?;
        let names = self.upload_entries(id, d).await?;
        let info = format!("{}/info", upload_dir(id));
        self.sets
            .set_for(MULTIPART_BUCKET, &info)
            .delete_object(MULTIPART_BUCKET, &info, d)
            .await?;
        self.spawn_delete_parts(names.into_iter().filter(|n| *n != info).collect());
        Ok(())
    }

    /// Entries directly under `dir` on any set (merged, sorted); a missing
    /// directory is empty.
    async fn list_dir(&self, bucket: &str, dir: &str, d: Deadline) -> Result<Vec<String>> {
        let mut all = std::collections::BTreeSet::new();
        for r in
            futures_util::future::join_all(self.sets.sets().iter().map(|s| s.list(bucket, dir, d)))
                .await
        {
            all.extend(r?);
        }
        Ok(all.into_iter().collect())
    }

    /// One page of ListObjectsV2: keys with `prefix`, after `after`, at
    /// most `max_keys` (capped to `max_list_keys`); with `delimiter` `/`
    /// keys below the next `/` roll up into common prefixes. Other
    /// delimiters are refused.
    pub async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max_keys: usize,
    ) -> Result<Listing> {
        Self::check_user_bucket(bucket).map_err(|_| ObjectError::NoSuchBucket)?;
        let roll_up = match delimiter {
            None | Some("") => false,
            Some("/") => true,
            Some(_) => return Err(ObjectError::NotImplemented("delimiters other than '/'")),
        };
        let d = self.meta_deadline();
        if !self.bucket_exists(bucket, d).await? {
            return Err(ObjectError::NoSuchBucket);
        }
        let max_keys = max_keys.min(self.cfg.max_list_keys);
        let mut out = Listing::default();
        if max_keys == 0 {
            return Ok(out);
        }
        let after = after.unwrap_or("");
        // No stored key has an empty component: a prefix with one matches
        // nothing.
        if prefix.starts_with('/') || prefix.contains("//") {
            return Ok(out);
        }
        let (base, filter) = match prefix.rsplit_once('/') {
            Some((b, f)) => (b.to_string(), f.to_string()),
            None => (String::new(), prefix.to_string()),
        };
        if !base.is_empty() && disk_io_erasure::check_object_name(&base).is_err() {
            return Ok(out);
        }
        let keep = Keep { after, roll_up };
        // Pending items, largest first (pop gives the smallest); only items
        // that can still yield something past `after` are pushed, so every
        // pop costs I/O and moves the listing forward.
        let mut stack: Vec<Item> = Vec::new();
        let mut visited = 0usize;
        let top = self.list_dir(bucket, &base, d).await?;
        push_children(&mut stack, &base, top, &filter, &keep);
        // The last item fully handled: every page ends past it.
        let mut last = String::new();
        while let Some(item) = stack.pop() {
            if out.objects.len() + out.prefixes.len() >= max_keys
                || visited >= self.cfg.list_visit_limit
            {
                debug_assert!(!last.is_empty(), "a page stopped before handling anything");
                out.next_token = Some(last);
                return Ok(out);
            }
            visited += 1;
            match item {
                Item::Key(k) => {
                    match self.stat(bucket, &k, d).await {
                        Ok(info) => {
                            out.objects.push(ListedObject {
                                head: ObjectHead::from_info(&info),
                                key: k.clone(),
                            });
                        }
                        Err(ObjectError::NoSuchKey) => {}
                        Err(e) => return Err(e),
                    }
                    last = k;
                }
                Item::Tree(p) => {
                    let dir = &p[..p.len() - 1];
                    let children = self.list_dir(bucket, dir, d).await?;
                    if roll_up {
                        if !children.is_empty() {
                            out.prefixes.push(p.clone());
                        }
                    } else {
                        push_children(&mut stack, dir, children, "", &keep);
                    }
                    last = p;
                }
            }
        }
        Ok(out)
    }
}

/// Which pending items can still yield something after `after`.
struct Keep<'a> {
    after: &'a str,
    roll_up: bool,
}

impl Keep<'_> {
    fn keeps(&self, item: &Item) -> bool {
        match item {
            Item::Key(k) => k.as_str() > self.after,
            // A directory whose keys all sort at or before `after` goes;
            // rolled up, one `after` names itself was returned already.
            Item::Tree(p) => {
                p.as_str() > self.after
                    || (self.after.starts_with(p.as_str()) && (!self.roll_up || self.after != p))
            }
        }
    }
}

/// A pending listing item: an object key or a directory (`…/`).
#[derive(Debug, PartialEq, Eq)]
enum Item {
    Key(String),
    Tree(String),
}

impl Item {
    fn text(&self) -> &str {
        match self {
            Item::Key(s) | Item::Tree(s) => s,
        }
    }
}

/// Push the items of `dir`'s entries starting with `filter`, keeping the
/// stack sorted largest first. Every entry may be an object (`dir/e`) and
/// a directory (`dir/e/`); ordering both by their text gives S3's byte
/// order of keys, since every key below `dir/e/` starts with it.
fn push_children(
    stack: &mut Vec<Item>,
    dir: &str,
    entries: Vec<String>,
    filter: &str,
    keep: &Keep<'_>,
) {
    let mut items: Vec<Item> = Vec::with_capacity(entries.len() * 2);
    for e in entries.into_iter().filter(|e| e.starts_with(filter)) {
        let full = if dir.is_empty() {
            e
        } else {
            format!("{dir}/{e}")
        };
        items.push(Item::Tree(format!("{full}/")));
        items.push(Item::Key(full));
    }
    items.retain(|i| keep.keeps(i));
    items.sort_by(|a, b| b.text().cmp(a.text()));
    // Everything already on the stack sorts after this directory's items
    // (they came from a later sibling), so appending keeps the order.
    debug_assert!(
        stack
            .last()
            .zip(items.first())
            .is_none_or(|(top, first)| top.text() > first.text()),
        "listing stack out of order"
    );
    stack.extend(items);
}

fn user_meta(
    content_type: Option<String>,
    metadata: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut user: BTreeMap<String, String> = metadata
        .into_iter()
        .map(|(k, v)| (format!("{}{}", key::USER, k.to_ascii_lowercase()), v))
        .collect();
    if let Some(ct) = content_type {
        user.insert(key::CONTENT_TYPE.into(), ct);
    }
    user
}

/// A PUT body's reader that hashes what passes (MD5, the S3 ETag) and
/// checks it against the declared length.
struct HashingReader<'a> {
    inner: &'a mut (dyn AsyncRead + Unpin + Send),
    md5: Arc<std::sync::Mutex<Md5>>,
    got: u64,
    expected: Option<u64>,
}

impl AsyncRead for HashingReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut *this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                this.got += new.len() as u64;
                if let Some(exp) = this.expected {
                    if this.got > exp || (new.is_empty() && this.got < exp) {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("body of {} bytes where {exp} were declared", this.got),
                        )));
                    }
                }
                if !new.is_empty() {
                    this.md5.lock().expect("digest lock").update(new);
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// An in-memory sink refusing more than `max` bytes.
struct CappedSink<'a> {
    buf: &'a mut Vec<u8>,
    max: usize,
}

impl tokio::io::AsyncWrite for CappedSink<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.buf.len() + data.len() > self.max {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "document larger than its limit",
            )));
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mut stack: Vec<Item>) -> Vec<String> {
        let mut v = Vec::new();
        while let Some(i) = stack.pop() {
            v.push(i.text().to_string());
        }
        v
    }

    #[test]
    fn children_sort_in_s3_key_order() {
        let mut st = Vec::new();
        let keep = Keep {
            after: "",
            roll_up: false,
        };
        push_children(
            &mut st,
            "d",
            vec!["a".into(), "a-c".into(), "b".into()],
            "",
            &keep,
        );
        // "d/a" < "d/a-c" < "d/a/" ('-' is below '/') < "d/b" < "d/b/".
        assert_eq!(drain(st), ["d/a", "d/a-c", "d/a-c/", "d/a/", "d/b", "d/b/"]);
    }

    #[test]
    fn filter_keeps_matching_entries() {
        let mut st = Vec::new();
        let keep = Keep {
            after: "",
            roll_up: false,
        };
        push_children(&mut st, "", vec!["ab".into(), "b".into()], "a", &keep);
        assert_eq!(drain(st), ["ab", "ab/"]);
    }

    #[test]
    fn items_at_or_before_the_token_are_not_pushed() {
        let entries = || vec!["a".to_string(), "b".to_string(), "c".to_string()];
        // A key token: its own directory may still hold later keys.
        let mut st = Vec::new();
        push_children(
            &mut st,
            "",
            entries(),
            "",
            &Keep {
                after: "b",
                roll_up: false,
            },
        );
        assert_eq!(drain(st), ["b/", "c", "c/"]);
        // Rolled up, a prefix token was returned already.
        let mut st = Vec::new();
        push_children(
            &mut st,
            "",
            entries(),
            "",
            &Keep {
                after: "b/",
                roll_up: true,
            },
        );
        assert_eq!(drain(st), ["c", "c/"]);
        // Not rolled up, a directory token is descended into again.
        let mut st = Vec::new();
        push_children(
            &mut st,
            "",
            entries(),
            "",
            &Keep {
                after: "b/",
                roll_up: false,
            },
        );
        assert_eq!(drain(st), ["b/", "c", "c/"]);
        // A start-after inside a prefix keeps the prefix.
        let mut st = Vec::new();
        push_children(
            &mut st,
            "",
            entries(),
            "",
            &Keep {
                after: "a/x",
                roll_up: true,
            },
        );
        assert_eq!(drain(st), ["a/", "b", "b/", "c", "c/"]);
    }
}
