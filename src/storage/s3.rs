//! `Backend` on S3 (or any S3-compatible server): small files in one PutObject, large ones as
//! multipart uploads with parts sent concurrently while the client keeps writing, checksums
//! on every request (SHA-256 on a PutObject; CRC64NVME per part and for the full object on a
//! multipart upload), and AbortMultipartUpload on every failure path.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use base64::Engine as _;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{
    Backend, ContentHash, DirEntry, DirStream, ErrorKind, Fingerprint, LiveUpload, Location, Meta,
    Result, Sealed, StorageError, Stored, Upload, UploadContext, UploadScope, UploadTracker,
    LIST_PAGE, MAX_FILLING_PARTS,
};
use crate::config::S3Config;

/// S3's limit on key length.
const MAX_KEY_LEN: usize = 1024;
/// CopyObject handles sources up to this size; larger ones are copied part by part.
const MAX_COPY_OBJECT: u64 = 5 << 30;
const COPY_PART_SIZE: u64 = 1 << 30;

fn attempt_timeout(t: Duration) -> aws_sdk_s3::config::timeout::TimeoutConfig {
    aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(t.min(Duration::from_secs(10)))
        .operation_attempt_timeout(t)
        .build()
}

/// The first bytes of an upload that may be buffered from the small-file pool, without
/// reserving a whole part.
pub const SMALL_HEAD: usize = 1 << 20;

/// How long an upload waits for a part while its connection fills others (`UploadScope`).
const FILL_WAIT: Duration = Duration::from_secs(10);

/// The S3 client and the memory budget shared by every upload of this process.
///
/// The budget (`storage.upload_memory`) is two pools. Whole parts come from `parts`, reserved
/// before a part is filled: an upload never waits for memory while it holds an unfilled part,
/// so uploads cannot deadlock waiting on each other's half-filled parts, however many there
/// are. The first `SMALL_HEAD` bytes of an upload come from `heads` when it has room at once
/// (never waiting there), so small files do not queue behind large ones; when it has none, or
/// the file grows past the head, the upload reserves a whole part instead.
pub struct S3Storage {
    client: Client,
    part_size: usize,
    max_inflight_parts: usize,
    request_timeout: Duration,
    /// Whole parts, in KiB.
    parts: Arc<Semaphore>,
    /// Heads of uploads, in bytes.
    heads: Arc<Semaphore>,
}

/// The budget an upload holds for the part it is filling (and, once sent, for that part
/// until S3 has it): head bytes, or a whole part.
struct Held {
    permit: OwnedSemaphorePermit,
    whole_part: bool,
}

/// How `upload_memory` is split: the heads pool, the rest for whole parts.
pub fn heads_pool(upload_memory: u64) -> u64 {
    (upload_memory / 8).min(64 << 20)
}

impl S3Storage {
    /// Builds the client from the standard AWS credential chain; nothing is contacted yet.
    pub async fn new(cfg: &S3Config, upload_memory: u64) -> Self {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .load()
            .await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.force_path_style)
            // wharf sets SHA-256 checksums itself; the SDK's own CRC would buffer and hash twice.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // Every attempt is bounded: a request S3 accepts and never answers (garage did this
            // under load: request headers taken, no reply, for good) is retried by the SDK's
            // standard retries and then fails, instead of holding the session and the upload
            // forever.
            .timeout_config(attempt_timeout(cfg.request_timeout.0))
            .interceptor(RequestMetrics);
        if !cfg.endpoint.is_empty() {
            b = b.endpoint_url(cfg.endpoint.clone());
        }
        let part_size = cfg.part_size.0 as usize;
        let heads = heads_pool(upload_memory);
        let parts_kib = ((upload_memory - heads) / 1024).clamp(1, u64::from(u32::MAX >> 3));
        S3Storage {
            client: Client::from_conf(b.build()),
            part_size,
            max_inflight_parts: cfg.max_inflight_parts.max(1),
            request_timeout: cfg.request_timeout.0,
            parts: Arc::new(Semaphore::new(parts_kib as usize)),
            heads: Arc::new(Semaphore::new(heads as usize)),
        }
    }

    /// A longer per-attempt limit, `factor` × `request_timeout`, for calls S3 may legitimately
    /// take long over (server-side copies, assembling a large object).
    fn attempt_limit(&self, factor: u32) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default()
            .timeout_config(attempt_timeout(self.request_timeout * factor))
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// HeadBucket: the endpoint answers, the credentials work and the bucket exists.
    pub async fn probe(&self, bucket: &str) -> Result<()> {
        self.client
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| sdk_err(e, &format!("bucket {bucket}")))?;
        Ok(())
    }

    /// Reserves a whole part, waiting while other uploads hold the budget. The caller holds
    /// no part budget while it waits (at most a head), so every wait ends when some part
    /// reaches S3.
    async fn reserve_part(&self) -> Result<OwnedSemaphorePermit> {
        let kib = self.part_size.div_ceil(1024).max(1) as u32;
        self.parts
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| StorageError::new(ErrorKind::Aborted, "shutting down"))
    }

    /// `len` more bytes of an upload's head, if the heads pool has them now.
    fn try_head(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        self.heads
            .clone()
            .try_acquire_many_owned(u32::try_from(len).ok()?)
            .ok()
    }

    /// Budget not reserved right now: (parts in KiB, head bytes). For tests and metrics.
    pub fn available_memory(&self) -> (usize, usize) {
        (
            self.parts.available_permits(),
            self.heads.available_permits(),
        )
    }
}

/// Times every S3 call (all its attempts) and counts those that fail (other than "not found"),
/// by operation.
#[derive(Debug)]
struct RequestMetrics;

#[derive(Debug, Clone)]
struct CallStarted(std::time::Instant);

impl aws_smithy_types::config_bag::Storable for CallStarted {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl aws_sdk_s3::config::Intercept for RequestMetrics {
    fn name(&self) -> &'static str {
        "wharf-request-metrics"
    }

    fn read_before_execution(
        &self,
        _: &aws_sdk_s3::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        cfg.interceptor_state()
            .store_put(CallStarted(std::time::Instant::now()));
        Ok(())
    }

    fn read_after_execution(
        &self,
        ctx: &aws_sdk_s3::config::interceptors::FinalizerInterceptorContextRef<'_>,
        _: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| m.name().to_string())
            .unwrap_or_else(|| "unknown".into());
        let labels = crate::telemetry::metrics::OperationLabels { operation };
        let m = crate::telemetry::metrics::metrics();
        if let Some(CallStarted(t)) = cfg.load::<CallStarted>() {
            m.s3_duration
                .get_or_create(&labels)
                .observe(t.elapsed().as_secs_f64());
        }
        // "Not found" answers are how wharf asks whether something exists, not failures.
        let failed = ctx.output_or_error().is_some_and(|r| r.is_err())
            && ctx.response().map(|r| r.status().as_u16()) != Some(404);
        if failed {
            m.s3_errors.get_or_create(&labels).inc();
        }
        Ok(())
    }
}

/// One account home in a bucket.
pub struct S3Backend {
    s3: Arc<S3Storage>,
    bucket: String,
    prefix: String,
}

fn sdk_err<E>(e: SdkError<E>, what: &str) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = e.code().unwrap_or_default().to_string();
    let kind = match code.as_str() {
        "NoSuchKey" | "NotFound" => ErrorKind::NotFound,
        _ => match &e {
            SdkError::ServiceError(s)
                if s.raw().status().as_u16() == 404 && code != "NoSuchBucket" =>
            {
                ErrorKind::NotFound
            }
            _ => ErrorKind::Unavailable,
        },
    };
    let msg = format!("S3 {what}: {}", DisplayErrorContext(&e));
    StorageError::with_source(kind, msg, e)
}

/// A part as the chunks it was received in. It goes to S3 as they are, without first being
/// copied into one buffer, and can be replayed for a retry.
struct Part(Arc<[Bytes]>);

impl Part {
    fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    fn crc64nvme_b64(&self) -> String {
        let mut crc = crc64nvme();
        for c in self.0.iter() {
            crc.update(c);
        }
        crc64nvme_b64(crc.finalize())
    }

    fn stream(&self) -> ByteStream {
        let chunks = self.0.clone();
        ByteStream::new(aws_smithy_types::body::SdkBody::retryable(move || {
            aws_smithy_types::body::SdkBody::from_body_1_x(Chunks {
                chunks: chunks.clone(),
                next: 0,
            })
        }))
    }
}

/// An HTTP body that yields a part's chunks in order, with its exact length known.
struct Chunks {
    chunks: Arc<[Bytes]>,
    next: usize,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Bytes>, Self::Error>>> {
        let frame = self.chunks.get(self.next).cloned();
        self.next += 1;
        std::task::Poll::Ready(frame.map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.chunks.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest = self.chunks.get(self.next..).unwrap_or_default();
        http_body::SizeHint::with_exact(rest.iter().map(|b| b.len() as u64).sum())
    }
}

fn crc64nvme() -> crc_fast::Digest {
    crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme)
}

/// S3's encoding of a CRC64NVME: the big-endian bytes, base64.
fn crc64nvme_b64(crc: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

fn sha256_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|d| SystemTime::try_from(*d).ok())
}

fn unquote(etag: Option<&str>) -> Option<String> {
    etag.map(|e| e.trim_matches('"').to_string())
}

impl S3Backend {
    pub fn new(s3: Arc<S3Storage>, bucket: String, prefix: String) -> Self {
        S3Backend { s3, bucket, prefix }
    }

    fn key(&self, path: &str) -> Result<String> {
        let key = format!("{}{path}", self.prefix);
        if key.len() > MAX_KEY_LEN {
            return Err(StorageError::new(
                ErrorKind::InvalidName,
                format!("name too long: S3 keys are limited to {MAX_KEY_LEN} bytes"),
            ));
        }
        Ok(key)
    }

    /// The listing prefix of a directory: `prefix/dir/`, or the home prefix itself.
    fn dir_prefix(&self, dir: &str) -> Result<String> {
        if dir.is_empty() {
            Ok(self.prefix.clone())
        } else {
            self.key(&format!("{dir}/"))
        }
    }

    async fn head(&self, key: &str) -> Result<Option<Meta>> {
        match self
            .s3
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(h) => Ok(Some(Meta {
                is_dir: false,
                size: h.content_length().unwrap_or(0).max(0) as u64,
                modified: to_system_time(h.last_modified()),
            })),
            Err(e) => {
                let e = sdk_err(e, "HeadObject");
                if e.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Up to `max` keys under `prefix`.
    async fn keys_under(&self, prefix: &str, max: i32) -> Result<Vec<String>> {
        let out = self
            .s3
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(max)
            .send()
            .await
            .map_err(|e| sdk_err(e, "ListObjectsV2"))?;
        Ok(out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect())
    }

    /// Whether anything (a marker or any object) exists under `dir/`.
    async fn dir_exists(&self, dir: &str) -> Result<bool> {
        if dir.is_empty() {
            return Ok(true);
        }
        Ok(!self.keys_under(&self.dir_prefix(dir)?, 1).await?.is_empty())
    }

    /// Copies an object; returns the copy's ETag.
    /// Copies `from` to `to`; `if_match` pins the source to the object with that ETag.
    async fn copy(
        &self,
        from: &str,
        to: &str,
        size: u64,
        if_match: Option<&str>,
    ) -> Result<Option<String>> {
        let source = format!(
            "{}/{}",
            self.bucket,
            percent_encoding::utf8_percent_encode(from, COPY_SOURCE)
        );
        let c = &self.s3.client;
        if size <= MAX_COPY_OBJECT {
            let r = c
                .copy_object()
                .bucket(&self.bucket)
                .key(to)
                .copy_source(&source)
                .set_copy_source_if_match(if_match.map(quoted))
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .customize()
                .config_override(self.s3.attempt_limit(10))
                .send()
                .await
                .map_err(|e| sdk_err(e, "CopyObject"))?;
            return Ok(r
                .copy_object_result()
                .and_then(|o| o.e_tag())
                .map(str::to_string));
        }
        let up = c
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(to)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| sdk_err(e, "CreateMultipartUpload"))?;
        let id = up.upload_id().unwrap_or_default().to_string();
        let res: Result<Option<String>> = async {
            let mut parts = Vec::new();
            let mut start = 0u64;
            let mut n = 1;
            while start < size {
                let end = (start + COPY_PART_SIZE).min(size) - 1;
                let r = c
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(to)
                    .upload_id(&id)
                    .part_number(n)
                    .copy_source(&source)
                    .set_copy_source_if_match(if_match.map(quoted))
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .customize()
                    .config_override(self.s3.attempt_limit(10))
                    .send()
                    .await
                    .map_err(|e| sdk_err(e, "UploadPartCopy"))?;
                let res = r.copy_part_result();
                parts.push(
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(res.and_then(|p| p.e_tag()).map(str::to_string))
                        .set_checksum_sha256(
                            res.and_then(|p| p.checksum_sha256()).map(str::to_string),
                        )
                        .build(),
                );
                start = end + 1;
                n += 1;
            }
            c.complete_multipart_upload()
                .bucket(&self.bucket)
                .key(to)
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .customize()
                .config_override(self.s3.attempt_limit(5))
                .send()
                .await
                .map_err(|e| sdk_err(e, "CompleteMultipartUpload"))
                .map(|done| done.e_tag().map(str::to_string))
        }
        .await;
        if res.is_err() {
            abort_multipart(c, &self.bucket, to, &id).await;
        }
        res
    }
}

/// An ETag as S3 headers carry it, in double quotes.
fn quoted(etag: &str) -> String {
    if etag.starts_with('"') {
        etag.to_string()
    } else {
        format!("\"{etag}\"")
    }
}

/// Characters escaped in `x-amz-copy-source` (everything but unreserved characters and `/`).
const COPY_SOURCE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Aborts a multipart upload, trying for about half a minute; true once S3 no longer has it.
/// One that still fails is left to the reconciler (and the bucket's lifecycle rule).
pub(crate) async fn abort_multipart(c: &Client, bucket: &str, key: &str, upload_id: &str) -> bool {
    // A leaked multipart upload costs money and hides data: try hard.
    for attempt in 0..7 {
        match c
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => return true,
            Err(e) if e.code() == Some("NoSuchUpload") => return true,
            Err(e) => {
                tracing::warn!(bucket, key, upload_id, attempt, error = %DisplayErrorContext(&e), "AbortMultipartUpload failed");
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
        }
    }
    false
}

#[async_trait]
impl Backend for S3Backend {
    fn remote(&self) -> bool {
        true
    }

    fn location(&self, path: &str) -> Location {
        let key = format!("{}{path}", self.prefix);
        Location {
            uri: format!("s3://{}/{key}", self.bucket),
            bucket: Some(self.bucket.clone()),
            key,
        }
    }

    async fn stat(&self, path: &str) -> Result<Meta> {
        if path.is_empty() {
            return Ok(Meta::dir());
        }
        // One ListObjectsV2 of the keys that begin with this path answers both questions a
        // HEAD and a directory probe would (a file `key`, a directory `key/`), in one request.
        let key = self.key(path)?;
        let page = self
            .s3
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&key)
            .delimiter("/")
            .max_keys(100)
            .send()
            .await
            .map_err(|e| sdk_err(e, "ListObjectsV2"))?;
        if let Some(o) = page
            .contents()
            .iter()
            .find(|o| o.key() == Some(key.as_str()))
        {
            return Ok(Meta {
                is_dir: false,
                size: o.size().unwrap_or(0).max(0) as u64,
                modified: to_system_time(o.last_modified()),
            });
        }
        let dir = format!("{key}/");
        if page
            .common_prefixes()
            .iter()
            .any(|p| p.prefix() == Some(dir.as_str()))
        {
            return Ok(Meta::dir());
        }
        if page.is_truncated() == Some(true) {
            // More than a page of names beginning with this one: ask directly.
            if let Some(m) = self.head(&key).await? {
                return Ok(m);
            }
            if self.dir_exists(path).await? {
                return Ok(Meta::dir());
            }
        }
        Err(StorageError::new(
            ErrorKind::NotFound,
            format!("{path}: no such file or directory"),
        ))
    }

    async fn fingerprint(&self, path: &str) -> Result<Option<Fingerprint>> {
        let key = self.key(path)?;
        match self
            .s3
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
        {
            Ok(h) => Ok(Some(Fingerprint {
                size: h.content_length().unwrap_or(0).max(0) as u64,
                // A composite checksum (`…-N`, a multipart object's part digests) is no
                // file's SHA-256.
                sha256: h
                    .checksum_sha256()
                    .filter(|c| !c.contains('-'))
                    .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
                    .map(hex::encode),
                crc64nvme: h.checksum_crc64_nvme().map(String::from),
                etag: unquote(h.e_tag()),
            })),
            Err(e) => {
                let e = sdk_err(e, "HeadObject");
                if e.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn open_dir(&self, dir: &str) -> Result<Box<dyn DirStream>> {
        let mut stream = S3DirStream {
            s3: self.s3.clone(),
            bucket: self.bucket.clone(),
            prefix: self.dir_prefix(dir)?,
            token: None,
            first: None,
            done: false,
        };
        // The first page now: a missing directory is refused at open, not on the first read.
        let (entries, seen) = stream.fetch().await?;
        if !seen && !dir.is_empty() {
            return Err(StorageError::new(
                ErrorKind::NotFound,
                format!("{dir}: no such directory"),
            ));
        }
        stream.first = Some(entries);
        Ok(Box::new(stream))
    }

    async fn read(&self, path: &str, offset: u64, len: u32) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset.saturating_add(u64::from(len)) - 1;
        let res = self
            .s3
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(path)?)
            .range(format!("bytes={offset}-{end}"))
            .send()
            .await;
        match res {
            Ok(o) => o.body.collect().await.map(|b| b.into_bytes()).map_err(|e| {
                StorageError::with_source(ErrorKind::Unavailable, "S3 GetObject body", e)
            }),
            Err(e) if e.code() == Some("InvalidRange") => Ok(Bytes::new()),
            Err(e) => Err(sdk_err(e, "GetObject")),
        }
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let key = self.key(path)?;
        if self.head(&key).await?.is_none() {
            let kind = if self.dir_exists(path).await? {
                ErrorKind::IsDirectory
            } else {
                ErrorKind::NotFound
            };
            return Err(StorageError::new(kind, format!("{path}: not a file")));
        }
        self.s3
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_err(e, "DeleteObject"))?;
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str, if_match: Option<&str>) -> Result<Option<String>> {
        let src = self.key(from)?;
        let dst = self.key(to)?;
        let Some(meta) = self.head(&src).await? else {
            return Err(if self.dir_exists(from).await? {
                StorageError::new(
                    ErrorKind::Unsupported,
                    "renaming directories is not supported on S3 storage",
                )
            } else {
                StorageError::new(ErrorKind::NotFound, format!("{from}: no such file"))
            });
        };
        if self.dir_exists(to).await? {
            return Err(StorageError::new(
                ErrorKind::IsDirectory,
                format!("{to} is a directory"),
            ));
        }
        let etag = self.copy(&src, &dst, meta.size, if_match).await?;
        crate::testing::crash_point("rename.after_copy");
        self.s3
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&src)
            .send()
            .await
            .map_err(|e| sdk_err(e, "DeleteObject"))?;
        Ok(etag)
    }

    async fn mkdir(&self, dir: &str) -> Result<()> {
        if self.head(&self.key(dir)?).await?.is_some() || self.dir_exists(dir).await? {
            return Err(StorageError::new(
                ErrorKind::AlreadyExists,
                format!("{dir} already exists"),
            ));
        }
        let marker = self.dir_prefix(dir)?;
        self.s3
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(marker)
            .body(ByteStream::from(Bytes::new()))
            .checksum_sha256(sha256_b64(b""))
            .send()
            .await
            .map_err(|e| sdk_err(e, "PutObject"))?;
        Ok(())
    }

    async fn rmdir(&self, dir: &str) -> Result<()> {
        let p = self.dir_prefix(dir)?;
        let keys = self.keys_under(&p, 2).await?;
        if keys.is_empty() {
            return Err(StorageError::new(
                ErrorKind::NotFound,
                format!("{dir}: no such directory"),
            ));
        }
        if keys.iter().any(|k| *k != p) {
            return Err(StorageError::new(
                ErrorKind::NotEmpty,
                format!("{dir} is not empty"),
            ));
        }
        self.s3
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&p)
            .send()
            .await
            .map_err(|e| sdk_err(e, "DeleteObject"))?;
        Ok(())
    }

    async fn begin_upload(&self, path: &str, ctx: UploadContext) -> Result<Box<dyn Upload>> {
        let key = self.key(path)?;
        Ok(Box::new(S3Upload {
            s3: self.s3.clone(),
            scope: ctx.scope,
            tracker: ctx.tracker,
            note: ctx.note,
            sealed: None,
            filling: None,
            bucket: self.bucket.clone(),
            location: self.location(path),
            key,
            hash: ContentHash::default(),
            crc: crc64nvme(),
            bytes: 0,
            chunks: Vec::new(),
            buffered: 0,
            held: None,
            multipart: None,
            finished: false,
        }))
    }
}

/// A directory listed one ListObjectsV2 page at a time.
struct S3DirStream {
    s3: Arc<S3Storage>,
    bucket: String,
    prefix: String,
    token: Option<String>,
    /// The first page, fetched at open.
    first: Option<Vec<DirEntry>>,
    done: bool,
}

impl S3DirStream {
    /// One page: its entries in key order, and whether it held any key or prefix at all (the
    /// directory's own marker included).
    async fn fetch(&mut self) -> Result<(Vec<DirEntry>, bool)> {
        let page = self
            .s3
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .delimiter("/")
            .max_keys(LIST_PAGE as i32)
            .set_continuation_token(self.token.take())
            .send()
            .await
            .map_err(|e| sdk_err(e, "ListObjectsV2"))?;
        let p = self.prefix.as_str();
        let seen = !page.contents().is_empty() || !page.common_prefixes().is_empty();
        let mut out = Vec::with_capacity(page.contents().len() + page.common_prefixes().len());
        for o in page.contents() {
            let Some(name) = o.key().and_then(|k| k.strip_prefix(p)) else {
                continue;
            };
            if name.is_empty() || name.contains('/') {
                continue; // the directory's own marker
            }
            out.push(DirEntry {
                name: name.to_string(),
                meta: Meta {
                    is_dir: false,
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: to_system_time(o.last_modified()),
                },
            });
        }
        for cp in page.common_prefixes() {
            if let Some(name) = cp
                .prefix()
                .and_then(|k| k.strip_prefix(p))
                .map(|n| n.trim_end_matches('/'))
                .filter(|n| !n.is_empty())
            {
                out.push(DirEntry {
                    name: name.to_string(),
                    meta: Meta::dir(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => self.token = Some(t.to_string()),
            _ => self.done = true,
        }
        Ok((out, seen))
    }
}

#[async_trait]
impl DirStream for S3DirStream {
    async fn next_page(&mut self) -> Result<Option<Vec<DirEntry>>> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        if self.done {
            return Ok(None);
        }
        Ok(Some(self.fetch().await?.0))
    }

    fn done(&self) -> bool {
        self.first.is_none() && self.done
    }
}

struct Multipart {
    upload_id: String,
    next_part: i32,
    /// Parts being sent; each holds its memory permit until S3 has it.
    inflight: JoinSet<Result<CompletedPart>>,
    done: Vec<CompletedPart>,
}

struct S3Upload {
    s3: Arc<S3Storage>,
    scope: Arc<UploadScope>,
    tracker: Option<Arc<dyn UploadTracker>>,
    note: serde_json::Value,
    /// Set by `seal`: the facts `commit` publishes.
    sealed: Option<Sealed>,
    /// The connection's count of parts being filled, while this upload fills one.
    filling: Option<OwnedSemaphorePermit>,
    bucket: String,
    key: String,
    location: Location,
    hash: ContentHash,
    /// The whole object's CRC64NVME: a multipart upload's full-object checksum.
    crc: crc_fast::Digest,
    bytes: u64,
    /// The current part, as received (no copy until it is sealed).
    chunks: Vec<Bytes>,
    buffered: usize,
    held: Option<Held>,
    multipart: Option<Multipart>,
    finished: bool,
}

impl S3Upload {
    fn take_part(&mut self) -> (Part, Option<Held>) {
        self.buffered = 0;
        // Sent (or about to be): no longer a part being filled.
        self.filling = None;
        (
            Part(std::mem::take(&mut self.chunks).into()),
            self.held.take(),
        )
    }

    /// Makes sure `len` more bytes of the current part are paid for: from the heads pool while
    /// the first part is small and the pool has room at once, else by reserving the whole part
    /// (waiting if need be, holding at most head bytes meanwhile).
    async fn make_room(&mut self, len: usize) -> Result<()> {
        if self.held.as_ref().is_some_and(|h| h.whole_part) {
            return Ok(());
        }
        if self.multipart.is_none() && self.buffered + len <= SMALL_HEAD {
            if let Some(more) = self.s3.try_head(len) {
                match &mut self.held {
                    Some(h) => h.permit.merge(more),
                    None => {
                        self.held = Some(Held {
                            permit: more,
                            whole_part: false,
                        })
                    }
                }
                return Ok(());
            }
        }
        let filling = self.scope.filling.clone().try_acquire_owned().map_err(|_| {
            StorageError::new(
                ErrorKind::Busy,
                format!("too many uploads in progress on this connection (at most {MAX_FILLING_PARTS} larger than 1 MiB at once)"),
            )
        })?;
        // While this connection's other uploads fill parts, they wait behind this one (the
        // connection's requests are served in order): waiting for good could leave them, and
        // every upload waiting for the memory they hold, stuck.
        let permit = if self.scope.filling() > 1 {
            tokio::time::timeout(FILL_WAIT, self.s3.reserve_part())
                .await
                .map_err(|_| {
                    StorageError::new(
                        ErrorKind::Busy,
                        "the server's upload memory is in use by other uploads",
                    )
                })??
        } else {
            self.s3.reserve_part().await?
        };
        self.filling = Some(filling);
        // The head bytes are now paid for by the part: give them back.
        self.held = Some(Held {
            permit,
            whole_part: true,
        });
        Ok(())
    }

    /// Sends the buffered part (starting the multipart upload on the first one), waiting while
    /// `max_inflight_parts` parts of this upload are already on their way.
    async fn send_part(&mut self) -> Result<()> {
        if self.multipart.is_none() {
            let up = self
                .s3
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                .checksum_type(ChecksumType::FullObject)
                .send()
                .await
                .map_err(|e| sdk_err(e, "CreateMultipartUpload"))?;
            let upload_id = up.upload_id().map(str::to_string).ok_or_else(|| {
                StorageError::new(ErrorKind::Unavailable, "S3 returned no upload id")
            })?;
            if let Some(t) = &self.tracker {
                let live = LiveUpload {
                    upload_id: upload_id.clone(),
                    bucket: self.bucket.clone(),
                    key: self.key.clone(),
                    note: self.note.clone(),
                };
                if let Err(why) = t.started(&live).await {
                    abort_multipart(&self.s3.client, &self.bucket, &self.key, &upload_id).await;
                    return Err(StorageError::new(
                        ErrorKind::Unavailable,
                        format!("cannot record the multipart upload: {why}"),
                    ));
                }
            }
            self.multipart = Some(Multipart {
                upload_id,
                next_part: 1,
                inflight: JoinSet::new(),
                done: Vec::new(),
            });
        }
        let max_inflight = self.s3.max_inflight_parts;
        let (body, permit) = self.take_part();
        let mp = self.multipart.as_mut().expect("multipart started above");
        while mp.inflight.len() >= max_inflight {
            collect_one(mp).await?;
        }
        // Surface a failed part early instead of at commit.
        while let Some(res) = mp.inflight.try_join_next() {
            mp.done.push(join_result(res)?);
        }
        let n = mp.next_part;
        mp.next_part += 1;
        if n == 3 {
            // Parts 1 and 2 are on their way or in S3.
            crate::testing::crash_point("upload.mid_multipart");
        }
        let client = self.s3.client.clone();
        let (bucket, key, id) = (self.bucket.clone(), self.key.clone(), mp.upload_id.clone());
        mp.inflight.spawn(async move {
            let _permit = permit;
            let sum = body.crc64nvme_b64();
            let len = body.len() as i64;
            let r = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .part_number(n)
                .content_length(len)
                .checksum_crc64_nvme(&sum)
                .body(body.stream())
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| sdk_err(e, "UploadPart"))?;
            Ok(CompletedPart::builder()
                .part_number(n)
                .set_e_tag(r.e_tag().map(str::to_string))
                .checksum_crc64_nvme(r.checksum_crc64_nvme().unwrap_or(&sum))
                .build())
        });
        Ok(())
    }

    async fn abort_inner(&mut self) {
        self.finished = true;
        self.chunks.clear();
        self.held = None;
        self.filling = None;
        if let Some(mut mp) = self.multipart.take() {
            mp.inflight.abort_all();
            while mp.inflight.join_next().await.is_some() {}
            if abort_multipart(&self.s3.client, &self.bucket, &self.key, &mp.upload_id).await {
                if let Some(t) = &self.tracker {
                    t.ended(&mp.upload_id).await;
                }
            }
        }
    }

    /// Whether the object now at the key is this upload's: after a CompleteMultipartUpload
    /// whose answer was lost (a timeout), S3 may well have completed it.
    async fn completed_anyway(&self, crc: &str) -> Option<Option<String>> {
        let h = self
            .s3
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .ok()?;
        let same = h.checksum_crc64_nvme() == Some(crc)
            && h.content_length().unwrap_or(-1) == self.bytes as i64;
        same.then(|| unquote(h.e_tag()))
    }
}

async fn collect_one(mp: &mut Multipart) -> Result<()> {
    if let Some(res) = mp.inflight.join_next().await {
        mp.done.push(join_result(res)?);
    }
    Ok(())
}

fn join_result(
    res: std::result::Result<Result<CompletedPart>, tokio::task::JoinError>,
) -> Result<CompletedPart> {
    res.map_err(|e| StorageError::new(ErrorKind::Aborted, format!("part upload task: {e}")))?
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, mut data: Bytes) -> Result<()> {
        if self.finished || self.sealed.is_some() {
            return Err(StorageError::new(
                ErrorKind::Aborted,
                "upload already finished",
            ));
        }
        self.hash.update(&data);
        self.crc.update(&data);
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            let take = (self.s3.part_size - self.buffered).min(data.len());
            let chunk = data.split_to(take);
            self.make_room(chunk.len()).await?;
            self.buffered += chunk.len();
            self.chunks.push(chunk);
            if self.buffered == self.s3.part_size {
                if let Err(e) = self.send_part().await {
                    self.abort_inner().await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn seal(&mut self) -> Result<Sealed> {
        if let Some(s) = &self.sealed {
            return Ok(s.clone());
        }
        if self.finished {
            return Err(StorageError::new(
                ErrorKind::Aborted,
                "upload already finished",
            ));
        }
        if self.multipart.is_some() {
            let sent: Result<()> = async {
                if self.buffered > 0 {
                    self.send_part().await?;
                }
                if let Some(mp) = self.multipart.as_mut() {
                    while !mp.inflight.is_empty() {
                        collect_one(mp).await?;
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = sent {
                self.abort_inner().await;
                return Err(e);
            }
        }
        let sealed = Sealed {
            bytes: self.bytes,
            sha256: self.hash.clone().hex(),
            crc64nvme: self
                .multipart
                .as_ref()
                .map(|_| crc64nvme_b64(self.crc.finalize())),
            upload_id: self.multipart.as_ref().map(|m| m.upload_id.clone()),
        };
        self.sealed = Some(sealed.clone());
        Ok(sealed)
    }

    async fn commit(mut self: Box<Self>) -> Result<Stored> {
        let sealed = self.seal().await?;
        let res = if let Some(mp) = self.multipart.as_mut() {
            let crc = sealed.crc64nvme.clone().unwrap_or_default();
            let mut parts = std::mem::take(&mut mp.done);
            parts.sort_by_key(|p| p.part_number());
            let done = self
                .s3
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(&mp.upload_id)
                // S3 checks the parts it assembled against the CRC of every byte the
                // client sent, end to end.
                .checksum_crc64_nvme(&crc)
                .checksum_type(ChecksumType::FullObject)
                .mpu_object_size(self.bytes as i64)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .customize()
                // S3 may take minutes to assemble a large object.
                .config_override(self.s3.attempt_limit(5))
                .send()
                .await
                .map(|r| unquote(r.e_tag()))
                .map_err(|e| sdk_err(e, "CompleteMultipartUpload"));
            match done {
                Ok(etag) => Ok(etag),
                // The answer may have been lost after S3 did complete it: the object there
                // says.
                Err(e) => match self.completed_anyway(&crc).await {
                    Some(etag) => {
                        tracing::warn!(key = %self.key, error = %e, "CompleteMultipartUpload failed but the object is there with this upload's checksum: completed");
                        Ok(etag)
                    }
                    None if e.kind == ErrorKind::NotFound => Err(StorageError::with_source(
                        ErrorKind::Superseded,
                        "a newer upload of this file replaced it in storage before it was published; upload it again if it is the one to keep",
                        e,
                    )),
                    None => Err(e),
                },
            }
        } else {
            // Everything fits in one part: one PutObject with the whole-object checksum.
            let (body, _permit) = self.take_part();
            // The whole-object hash is this body's hash: no second pass.
            let digest = self.hash.clone().digest();
            self.s3
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_length(body.len() as i64)
                .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(digest))
                .body(body.stream())
                .customize()
                // The signed x-amz-checksum-sha256 header already protects the body: hashing
                // it again for SigV4 would be a third SHA-256 pass over every byte.
                .disable_payload_signing()
                .send()
                .await
                .map(|r| unquote(r.e_tag()))
                .map_err(|e| sdk_err(e, "PutObject"))
        };

        match res {
            Ok(etag) => {
                self.finished = true;
                if let Some(mp) = self.multipart.take() {
                    if let Some(t) = &self.tracker {
                        t.ended(&mp.upload_id).await;
                    }
                }
                Ok(Stored {
                    bytes: sealed.bytes,
                    sha256: sealed.sha256,
                    etag,
                    location: self.location.clone(),
                })
            }
            Err(e) => {
                self.abort_inner().await;
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_inner().await;
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Dropped mid-upload (task cancelled): abort in the background so nothing is orphaned.
        if let Some(mut mp) = self.multipart.take() {
            mp.inflight.abort_all();
            let client = self.s3.client.clone();
            let (bucket, key, tracker) =
                (self.bucket.clone(), self.key.clone(), self.tracker.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if abort_multipart(&client, &bucket, &key, &mp.upload_id).await {
                        if let Some(t) = tracker {
                            t.ended(&mp.upload_id).await;
                        }
                    }
                });
            }
        }
    }
}
