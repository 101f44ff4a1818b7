//! The S3 front end: [`S3Front`] (s3s's [`S3`] trait over the
//! [`ObjectLayer`]), [`IamAuth`] (SigV4 secrets from the IAM cache) and
//! [`IamAccess`] (each request checked against its user's policy).
//!
//! The request path never waits on the cluster to authenticate: a key in
//! the IAM cache answers from memory; a miss reads under IAM's short miss
//! deadline and its bounded slots (see `disk-io-iam`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use disk_io::Deadline;
use disk_io_iam::{Access, Iam, Lookup};
use futures_util::StreamExt;
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use crate::objects::{Body, ObjectError, ObjectHead, ObjectLayer};

/// Request counter, labels `op` and `outcome` (`ok` or the S3 error code).
pub const S3_REQUESTS: &str = "diskio_s3_requests_total";
/// Request latency histogram (to the response head), label `op`.
pub const S3_REQUEST_SECONDS: &str = "diskio_s3_request_seconds";
/// Object bytes received and sent, label `direction` (`in`, `out`).
pub const S3_BYTES: &str = "diskio_s3_bytes_total";

fn to_s3(e: ObjectError) -> S3Error {
    use ObjectError as E;
    let (code, msg) = match &e {
        E::NoSuchBucket => (S3ErrorCode::NoSuchBucket, None),
        E::NoSuchKey => (S3ErrorCode::NoSuchKey, None),
        E::NoSuchUpload => (S3ErrorCode::NoSuchUpload, None),
        E::BucketExists => (S3ErrorCode::BucketAlreadyOwnedByYou, None),
        E::BucketNotEmpty => (S3ErrorCode::BucketNotEmpty, None),
        E::InvalidBucketName(m) => (S3ErrorCode::InvalidBucketName, Some(m.clone())),
        E::InvalidKey(m) => (S3ErrorCode::InvalidArgument, Some(m.clone())),
        E::InvalidArgument(m) => (S3ErrorCode::InvalidArgument, Some(m.clone())),
        E::InvalidPart(m) => (S3ErrorCode::InvalidPart, Some(m.clone())),
        E::InvalidPartOrder => (S3ErrorCode::InvalidPartOrder, None),
        E::EntityTooSmall { .. } => (S3ErrorCode::EntityTooSmall, Some(e.to_string())),
        E::IncompleteBody { .. } => (S3ErrorCode::IncompleteBody, Some(e.to_string())),
        E::MetadataTooLarge => (S3ErrorCode::MetadataTooLarge, None),
        // Nothing refused the request; clients retry a 503.
        E::Unavailable(_) => (S3ErrorCode::ServiceUnavailable, Some(e.to_string())),
        E::Erasure(disk_io_erasure::ErasureError::VersionChanged { .. }) => {
            (S3ErrorCode::ServiceUnavailable, Some(e.to_string()))
        }
        E::NotImplemented(what) => (S3ErrorCode::NotImplemented, Some((*what).to_string())),
        E::Erasure(_) | E::Corrupt(_) => (S3ErrorCode::InternalError, Some(e.to_string())),
    };
    if matches!(
        code,
        S3ErrorCode::InternalError | S3ErrorCode::ServiceUnavailable
    ) {
        tracing::warn!(error = %e, "S3 request failed");
    }
    match msg {
        Some(m) => S3Error::with_message(code, m),
        None => S3Error::new(code),
    }
}

/// Count and time one request.
fn observe<T>(op: &'static str, start: Instant, r: &S3Result<T>) {
    let outcome = match r {
        Ok(_) => "ok".to_string(),
        Err(e) => e.code().as_str().to_string(),
    };
    metrics::counter!(S3_REQUESTS, "op" => op, "outcome" => outcome).increment(1);
    metrics::histogram!(S3_REQUEST_SECONDS, "op" => op).record(start.elapsed().as_secs_f64());
}

/// The S3 implementation.
pub struct S3Front {
    objects: Arc<ObjectLayer>,
}

impl S3Front {
    /// S3 over `objects`.
    pub fn new(objects: Arc<ObjectLayer>) -> S3Front {
        S3Front { objects }
    }
}

fn metadata_in(m: Option<Metadata>) -> BTreeMap<String, String> {
    m.map(|m| m.into_iter().collect()).unwrap_or_default()
}

fn metadata_out(head: &ObjectHead) -> Option<Metadata> {
    (!head.metadata.is_empty()).then(|| head.metadata.clone().into_iter().collect())
}

fn etag(s: &str) -> Option<ETag> {
    Some(ETag::Strong(s.to_string()))
}

/// A PUT body as an `AsyncRead` (counting the bytes into the metric).
fn body_reader(body: Option<StreamingBlob>) -> impl tokio::io::AsyncRead + Unpin + Send {
    let stream = match body {
        Some(b) => b
            .map(|r| {
                r.inspect(|b| {
                    metrics::counter!(S3_BYTES, "direction" => "in").increment(b.len() as u64)
                })
                .map_err(std::io::Error::other)
            })
            .boxed(),
        None => futures_util::stream::empty().boxed(),
    };
    tokio_util::io::StreamReader::new(stream)
}

fn length(l: Option<i64>) -> S3Result<Option<u64>> {
    l.map(|l| u64::try_from(l).map_err(|_| s3_error!(InvalidArgument, "negative content length")))
        .transpose()
}

#[async_trait::async_trait]
impl S3 for S3Front {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let start = Instant::now();
        let r = async {
            let user = req.extensions.get::<Arc<disk_io_iam::User>>().cloned();
            let buckets = self.objects.list_buckets().await.map_err(to_s3)?;
            let buckets = buckets
                .into_iter()
                .filter(|(b, _)| {
                    user.as_ref().is_none_or(|u| {
                        u.policy.allows(b, Access::Read) || u.policy.allows(b, Access::Write)
                    })
                })
                .map(|(name, created)| Bucket {
                    name: Some(name),
                    creation_date: Some(Timestamp::from(created)),
                    ..Default::default()
                })
                .collect();
            Ok(S3Response::new(ListBucketsOutput {
                buckets: Some(buckets),
                ..Default::default()
            }))
        }
        .await;
        observe("list_buckets", start, &r);
        r
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let start = Instant::now();
        let r = async {
            self.objects
                .make_bucket(&req.input.bucket)
                .await
                .map_err(to_s3)?;
            Ok(S3Response::new(CreateBucketOutput {
                location: Some(format!("/{}", req.input.bucket)),
            }))
        }
        .await;
        observe("create_bucket", start, &r);
        r
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let start = Instant::now();
        let r = async {
            self.objects
                .head_bucket(&req.input.bucket)
                .await
                .map_err(to_s3)?;
            Ok(S3Response::new(HeadBucketOutput::default()))
        }
        .await;
        observe("head_bucket", start, &r);
        r
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let start = Instant::now();
        let r = async {
            self.objects
                .head_bucket(&req.input.bucket)
                .await
                .map_err(to_s3)?;
            Ok(S3Response::new(GetBucketLocationOutput::default()))
        }
        .await;
        observe("get_bucket_location", start, &r);
        r
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let start = Instant::now();
        let r = async {
            self.objects
                .delete_bucket(&req.input.bucket)
                .await
                .map_err(to_s3)?;
            Ok(S3Response::new(DeleteBucketOutput::default()))
        }
        .await;
        observe("delete_bucket", start, &r);
        r
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let start = Instant::now();
        let r = async {
            let i = req.input;
            let len = length(i.content_length)?;
            let mut reader = body_reader(i.body);
            let etag_hex = self
                .objects
                .put_object(
                    &i.bucket,
                    &i.key,
                    Body {
                        reader: &mut reader,
                        length: len,
                    },
                    i.content_type,
                    metadata_in(i.metadata),
                )
                .await
                .map_err(to_s3)?;
            Ok(S3Response::new(PutObjectOutput {
                e_tag: etag(&etag_hex),
                ..Default::default()
            }))
        }
        .await;
        observe("put_object", start, &r);
        r
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let start = Instant::now();
        let r = async {
            let i = req.input;
            let head = self
                .objects
                .head_object(&i.bucket, &i.key)
                .await
                .map_err(to_s3)?;
            Ok(S3Response::new(HeadObjectOutput {
                content_length: Some(head.size as i64),
                content_type: head.content_type.clone(),
                e_tag: etag(&head.etag),
                last_modified: Some(Timestamp::from(head.modified)),
                metadata: metadata_out(&head),
                parts_count: head.parts.map(|p| p as i32),
                accept_ranges: Some("bytes".into()),
                ..Default::default()
            }))
        }
        .await;
        observe("head_object", start, &r);
        r
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let start = Instant::now();
        let r = self.get(req.input).await;
        observe("get_object", start, &r);
        r
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let start = Instant::now();
        let r = async {
            self.objects
                .delete_object(&req.input.bucket, &req.input.key)
                .await
                .map_err(to_s3)?;
            Ok(S3Response::new(DeleteObjectOutput::default()))
        }
        .await;
        observe("delete_object", start, &r);
        r
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let start = Instant::now();
        let r = async {
            let i = req.input;
            let token = match &i.continuation_token {
                Some(t) => Some(
                    hex::decode(t)
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .ok_or_else(|| s3_error!(InvalidArgument, "bad continuation token"))?,
                ),
                None => None,
            };
            let after = match (token, i.start_after.clone()) {
                (Some(t), Some(s)) => Some(t.max(s)),
                (t, s) => t.or(s),
            };
            let max_keys = match i.max_keys {
                Some(k) if k < 0 => return Err(s3_error!(InvalidArgument, "negative max-keys")),
                Some(k) => k as usize,
                None => 1000,
            };
            let prefix = i.prefix.clone().unwrap_or_default();
            let l = self
                .objects
                .list_objects(
                    &i.bucket,
                    &prefix,
                    i.delimiter.as_deref(),
                    after.as_deref(),
                    max_keys,
                )
                .await
                .map_err(to_s3)?;
            let contents: Vec<Object> = l
                .objects
                .iter()
                .map(|o| Object {
                    key: Some(o.key.clone()),
                    size: Some(o.head.size as i64),
                    e_tag: etag(&o.head.etag),
                    last_modified: Some(Timestamp::from(o.head.modified)),
                    ..Default::default()
                })
                .collect();
            let prefixes: Vec<CommonPrefix> = l
                .prefixes
                .iter()
                .map(|p| CommonPrefix {
                    prefix: Some(p.clone()),
                })
                .collect();
            let count = (contents.len() + prefixes.len()) as i32;
            Ok(S3Response::new(ListObjectsV2Output {
                name: Some(i.bucket),
                prefix: i.prefix,
                delimiter: i.delimiter,
                max_keys: Some(max_keys.min(self.objects.config().max_list_keys) as i32),
                key_count: Some(count),
                continuation_token: i.continuation_token,
                start_after: i.start_after,
                is_truncated: Some(l.next_token.is_some()),
                next_continuation_token: l.next_token.map(hex::encode),
                contents: Some(contents),
                common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
                ..Default::default()
            }))
        }
        .await;
        observe("list_objects_v2", start, &r);
        r
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let start = Instant::now();
        let r = async {
            let i = req.input;
            let id = self
                .objects
                .create_upload(&i.bucket, &i.key, i.content_type, metadata_in(i.metadata))
                .await
                .map_err(to_s3)?;
            Ok(S3Response::new(CreateMultipartUploadOutput {
                bucket: Some(i.bucket),
                key: Some(i.key),
                upload_id: Some(id),
                ..Default::default()
            }))
        }
        .await;
        observe("create_multipart_upload", start, &r);
        r
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let start = Instant::now();
        let r = async {
            let i = req.input;
            let len = length(i.content_length)?;
            let mut reader = body_reader(i.body);
            let e = self
                .objects
                .upload_part(
                    &i.bucket,
                    &i.key,
                    &i.upload_id,
                    i.part_number,
                    Body {
                        reader: &mut reader,
                        length: len,
                    },
                )
                .await
                .map_err(to_s3)?;
            Ok(S3Response::new(UploadPartOutput {
                e_tag: etag(&e),
                ..Default::default()
            }))
        }
        .await;
        observe("upload_part", start, &r);
        r
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let start = Instant::now();
        let r = async {
            let i = req.input;
            let parts = i
                .multipart_upload
                .and_then(|m| m.parts)
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    let n = p
                        .part_number
                        .ok_or_else(|| s3_error!(InvalidPart, "a part without its number"))?;
                    let e = p
                        .e_tag
                        .map(|e| e.value().to_string())
                        .ok_or_else(|| s3_error!(InvalidPart, "a part without its ETag"))?;
                    Ok((n, e))
                })
                .collect::<S3Result<Vec<_>>>()?;
            let e = self
                .objects
                .complete_upload(&i.bucket, &i.key, &i.upload_id, &parts)
                .await
                .map_err(to_s3)?;
            Ok(S3Response::new(CompleteMultipartUploadOutput {
                bucket: Some(i.bucket.clone()),
                key: Some(i.key.clone()),
                e_tag: etag(&e),
                location: Some(format!("/{}/{}", i.bucket, i.key)),
                ..Default::default()
            }))
        }
        .await;
        observe("complete_multipart_upload", start, &r);
        r
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let start = Instant::now();
        let r = async {
            let i = req.input;
            self.objects
                .abort_upload(&i.bucket, &i.key, &i.upload_id)
                .await
                .map_err(to_s3)?;
            Ok(S3Response::new(AbortMultipartUploadOutput::default()))
        }
        .await;
        observe("abort_multipart_upload", start, &r);
        r
    }
}

impl S3Front {
    async fn get(&self, i: GetObjectInput) -> S3Result<S3Response<GetObjectOutput>> {
        let head = self
            .objects
            .head_object(&i.bucket, &i.key)
            .await
            .map_err(to_s3)?;
        let (range, content_range) = match i.range {
            // Nothing to cut out of an empty object: all of it, 200.
            _ if head.size == 0 => (0..0, None),
            None => (0..head.size, None),
            Some(r) => {
                let rg = r.check(head.size)?;
                let cr = format!(
                    "bytes {}-{}/{}",
                    rg.start,
                    rg.end.saturating_sub(1),
                    head.size
                );
                (rg, Some(cr))
            }
        };
        let len = range.end - range.start;
        let (mut tx, rx) = tokio::io::duplex(self.objects.config().get_buffer);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let objects = self.objects.clone();
        let (b, k, h) = (i.bucket.clone(), i.key.clone(), head.clone());
        tokio::spawn(async move {
            let r = objects.read_object(&b, &k, &h, range, &mut tx).await;
            if let Err(e) = &r {
                tracing::warn!(bucket = %b, key = %k, error = %e, "GET failed while streaming");
            }
            let _ = done_tx.send(r);
        });
        let mut stream = tokio_util::io::ReaderStream::new(rx);
        // The first chunk (or the end) before the head goes out, so a
        // failure before any byte is an S3 error, not a cut body.
        let first = if len == 0 {
            None
        } else {
            match stream.next().await {
                Some(Ok(b)) => Some(b),
                Some(Err(e)) => {
                    return Err(S3Error::with_message(
                        S3ErrorCode::InternalError,
                        e.to_string(),
                    ))
                }
                None => match done_rx.await {
                    Ok(Err(e)) => return Err(to_s3(e)),
                    _ => {
                        return Err(S3Error::with_message(
                            S3ErrorCode::InternalError,
                            "object ended early",
                        ))
                    }
                },
            }
        };
        let tail = futures_util::stream::once(async move {
            match done_rx.await {
                Ok(Err(e)) => Some(Err(std::io::Error::other(e.to_string()))),
                _ => None,
            }
        })
        .filter_map(|x| async move { x });
        let body = futures_util::stream::iter(first.map(Ok::<Bytes, std::io::Error>))
            .chain(stream)
            .chain(tail)
            .inspect(|r| {
                if let Ok(b) = r {
                    metrics::counter!(S3_BYTES, "direction" => "out").increment(b.len() as u64);
                }
            });
        let partial = content_range.is_some();
        let mut resp = S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(body)),
            content_length: Some(len as i64),
            content_range,
            content_type: head.content_type.clone(),
            e_tag: etag(&head.etag),
            last_modified: Some(Timestamp::from(head.modified)),
            metadata: metadata_out(&head),
            parts_count: head.parts.map(|p| p as i32),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        });
        if partial {
            resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        Ok(resp)
    }
}

/// SigV4 secrets from the IAM cache (a miss reads under IAM's own short
/// deadline). A disabled or unknown key is `InvalidAccessKeyId`; an IAM
/// that cannot answer in time is `ServiceUnavailable` (retryable), never a
/// hang.
pub struct IamAuth {
    iam: Arc<Iam>,
    miss: Duration,
}

impl IamAuth {
    /// Auth over `iam`; a cache miss reads for at most `miss`.
    pub fn new(iam: Arc<Iam>, miss: Duration) -> IamAuth {
        IamAuth { iam, miss }
    }
}

async fn lookup(iam: &Iam, key: &str, miss: Duration) -> S3Result<Arc<disk_io_iam::User>> {
    let found = match iam.cached(key) {
        Lookup::Found(u) => Lookup::Found(u),
        // A miss, or a key the cache knows disabled/absent: one bounded read
        // (the negative cache keeps floods of unknown keys off the store).
        _ => iam.lookup(key, Deadline::after(miss)).await.map_err(|e| {
            tracing::warn!(error = %e, "IAM lookup failed");
            s3_error!(
                ServiceUnavailable,
                "credentials could not be checked in time"
            )
        })?,
    };
    match found {
        Lookup::Found(u) => Ok(u),
        Lookup::Disabled | Lookup::Unknown => Err(s3_error!(InvalidAccessKeyId)),
    }
}

#[async_trait::async_trait]
impl S3Auth for IamAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let u = lookup(&self.iam, access_key, self.miss).await?;
        Ok(SecretKey::from(u.secret_key.as_str()))
    }
}

/// Per-request authorisation: a signed request, by an enabled user whose
/// policy allows the bucket (reads for GET/HEAD/LIST, writes otherwise).
/// Listing buckets needs only a valid user (the list shows what its policy
/// allows).
pub struct IamAccess {
    iam: Arc<Iam>,
    miss: Duration,
}

impl IamAccess {
    /// Access control over `iam`; a cache miss reads for at most `miss`.
    pub fn new(iam: Arc<Iam>, miss: Duration) -> IamAccess {
        IamAccess { iam, miss }
    }
}

fn is_read(op: &str) -> bool {
    matches!(
        op,
        "GetObject"
            | "HeadObject"
            | "HeadBucket"
            | "ListObjects"
            | "ListObjectsV2"
            | "GetBucketLocation"
            | "ListParts"
            | "ListMultipartUploads"
            | "ListBuckets"
    )
}

#[async_trait::async_trait]
impl s3s::access::S3Access for IamAccess {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        let key = match cx.credentials() {
            Some(c) => c.access_key.clone(),
            None => return Err(s3_error!(AccessDenied, "Signature is required")),
        };
        let user = lookup(&self.iam, &key, self.miss).await?;
        let access = if is_read(cx.s3_op().name()) {
            Access::Read
        } else {
            Access::Write
        };
        let allowed = match cx.s3_path() {
            s3s::path::S3Path::Root => true,
            s3s::path::S3Path::Bucket { bucket } | s3s::path::S3Path::Object { bucket, .. } => {
                user.policy.allows(bucket, access)
            }
        };
        cx.extensions_mut().insert(user);
        if !allowed {
            return Err(s3_error!(AccessDenied));
        }
        Ok(())
    }
}
