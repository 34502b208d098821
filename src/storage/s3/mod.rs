//! `Backend` on S3 (or any S3-compatible server): small files in one PutObject, large ones as
//! multipart uploads with parts sent concurrently while the client keeps writing, checksums
//! on every request (SHA-256 on a PutObject; CRC64NVME per part and for the full object on a
//! multipart upload), and AbortMultipartUpload on every failure path.
//!
//! Here the client and the upload memory budget (`S3Storage`); `backend.rs` the `Backend`,
//! `copy.rs` renames, `list.rs` listings, `upload.rs` uploads, `metrics.rs` the per-call
//! metrics interceptor.

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
    Abort, Backend, ContentHash, DirEntry, DirStream, ErrorKind, Fingerprint, LiveUpload, Location,
    Meta, RenameContext, Renamed, Result, Sealed, StorageError, Stored, Upload, UploadContext,
    UploadScope, UploadTracker, LIST_PAGE, MAX_FILLING_PARTS,
};
use crate::config::S3Config;

mod backend;
mod copy;
mod list;
mod metrics;
mod upload;

use list::S3DirStream;
use metrics::RequestMetrics;
pub(crate) use upload::abort_multipart;
use upload::{abort_unrecorded, refused, settle_by_content, S3Upload};

/// The S3 object metadata (`x-amz-meta-…`) a copy made under a commit intent carries.
const INTENT_META: &str = "wharf-intent";

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

/// What one attempt at sending a body may take: this, plus a second per `BODY_FLOOR_RATE`
/// bytes (at most `request_timeout`).
const BODY_BASE: Duration = Duration::from_secs(15);
/// Bytes per second below which an attempt at sending a body is given up and retried.
const BODY_FLOOR_RATE: f64 = (1 << 20) as f64;

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

    /// The per-attempt limit of a request on an upload's way carrying `len` bytes of body (a
    /// part, a small file's PutObject; none for CreateMultipartUpload): `BODY_BASE` plus a
    /// second per `BODY_FLOOR_RATE` bytes, within `request_timeout`. A request S3 took and
    /// never answers is retried after seconds, not after the minute a large part may need: a
    /// partner waits that long for its upload, and a draining instance's `shutdown_grace`
    /// (45 s in the deploy recipe) would cut it.
    fn body_limit(&self, len: usize) -> aws_sdk_s3::config::Builder {
        let t = BODY_BASE + Duration::from_secs_f64(len as f64 / BODY_FLOOR_RATE);
        aws_sdk_s3::config::Builder::default()
            .timeout_config(attempt_timeout(t.min(self.request_timeout)))
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

/// A lookup's error: "not found" is an answer (`None`), anything else an error.
fn absent<T>(e: StorageError) -> Result<Option<T>> {
    if e.kind == ErrorKind::NotFound {
        Ok(None)
    } else {
        Err(e)
    }
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|d| SystemTime::try_from(*d).ok())
}

fn unquote(etag: Option<&str>) -> Option<String> {
    etag.map(|e| e.trim_matches('"').to_string())
}
