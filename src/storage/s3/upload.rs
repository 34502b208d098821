//! `S3Upload`: a file as one PutObject, or as a multipart upload whose parts go out while
//! the client keeps writing; every failure path aborts it.

use super::*;

/// A part as the chunks it was received in. It goes to S3 as they are, without first being
/// copied into one buffer, and can be replayed for a retry.
pub(super) struct Part(Arc<[Bytes]>);

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

/// Aborts a multipart upload, trying for about half a minute. One that still fails is left
/// to the reconciler (and the bucket's lifecycle rule).
pub(crate) async fn abort_multipart(c: &Client, bucket: &str, key: &str, upload_id: &str) -> Abort {
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
            Ok(_) => return Abort::Done,
            Err(e) if e.code() == Some("NoSuchUpload") => return Abort::Gone,
            Err(e) => {
                tracing::warn!(bucket, key, upload_id, attempt, error = %DisplayErrorContext(&e), "AbortMultipartUpload failed");
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
        }
    }
    Abort::Failed
}

/// A multipart upload whose tracking row could not be renamed from `pending` to its id (the
/// tracker's `started` failed): aborted, and once it is, its row ended under both names, as
/// the renaming may have been made with its answer lost.
pub(super) async fn abort_unrecorded(
    c: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    pending: &str,
    tracker: &dyn UploadTracker,
) {
    if abort_multipart(c, bucket, key, upload_id).await != Abort::Failed {
        tracker.ended(pending).await;
        tracker.ended(upload_id).await;
    }
}

/// Whether an S3 error says for sure that the request was not carried out (a 4xx refusal),
/// as opposed to an answer that is not definite (a timeout, a 5xx, a connection cut or an
/// unreadable answer), after which the request may or may not have been carried out.
pub(super) fn refused<E>(e: &SdkError<E>) -> bool {
    match e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            (400..500).contains(&status) && status != 408 && status != 429
        }
        SdkError::ConstructionFailure(_) => true,
        _ => false,
    }
}

/// How often, and how far apart, what an object holds is read after an answer that was not
/// definite, before the commit is called indeterminate.
const SETTLE_READS: u32 = 5;

/// The content at `key` after an answer that was not definite: `Some(etag)` when it is the
/// one `matches` recognises, `None` when it is not there (twice, two seconds apart: a request
/// still in flight has had time to land) or holds something else; an error when storage could
/// not be read at all.
pub(super) async fn settle_by_content(
    c: &Client,
    bucket: &str,
    key: &str,
    matches: impl Fn(&aws_sdk_s3::operation::head_object::HeadObjectOutput) -> bool,
) -> Result<Option<Option<String>>> {
    let mut absent = 0;
    let mut last_err = None;
    for attempt in 0..SETTLE_READS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt.min(3))).await;
        }
        match c
            .head_object()
            .bucket(bucket)
            .key(key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
        {
            Ok(h) if matches(&h) => return Ok(Some(unquote(h.e_tag()))),
            Ok(_) => return Ok(None),
            Err(e) => {
                let e = sdk_err(e, "HeadObject");
                if e.kind == ErrorKind::NotFound {
                    absent += 1;
                    if absent >= 2 {
                        return Ok(None);
                    }
                } else {
                    last_err = Some(e);
                }
            }
        }
    }
    Err(StorageError::new(
        ErrorKind::Indeterminate,
        format!(
            "the commit's outcome is unknown: storage's answer was lost and the object could not be read ({})",
            last_err.map(|e| e.message).unwrap_or_else(|| "not found once".into())
        ),
    ))
}

struct Multipart {
    upload_id: String,
    next_part: i32,
    /// Parts being sent; each holds its memory permit until S3 has it.
    inflight: JoinSet<Result<CompletedPart>>,
    done: Vec<CompletedPart>,
}

pub(super) struct S3Upload {
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
    pub(super) fn new(
        s3: Arc<S3Storage>,
        ctx: UploadContext,
        bucket: String,
        key: String,
        location: Location,
    ) -> S3Upload {
        S3Upload {
            s3,
            scope: ctx.scope,
            tracker: ctx.tracker,
            note: ctx.note,
            sealed: None,
            filling: None,
            bucket,
            location,
            key,
            hash: ContentHash::default(),
            crc: crc64nvme(),
            bytes: 0,
            chunks: Vec::new(),
            buffered: 0,
            held: None,
            multipart: None,
            finished: false,
        }
    }

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
            // Tracked before it exists: whatever happens next, the reconciler knows an upload
            // at this key is wharf's.
            let pending = super::super::creating_id();
            if let Some(t) = &self.tracker {
                let live = LiveUpload {
                    upload_id: pending.clone(),
                    bucket: self.bucket.clone(),
                    key: self.key.clone(),
                    note: self.note.clone(),
                };
                t.creating(&live).await.map_err(|why| {
                    StorageError::new(
                        ErrorKind::Unavailable,
                        format!("cannot record the multipart upload: {why}"),
                    )
                })?;
            }
            let created = self
                .s3
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                .checksum_type(ChecksumType::FullObject)
                .customize()
                .config_override(self.s3.body_limit(0))
                .send()
                .await;
            let upload_id = match created {
                Ok(up) => up.upload_id().map(str::to_string).ok_or_else(|| {
                    StorageError::new(ErrorKind::Unavailable, "S3 returned no upload id")
                })?,
                Err(e) => {
                    // The row stays unless S3 refused: after an answer that was lost it may
                    // have created one, which the reconciler finds by key once this
                    // instance is gone.
                    if let (Some(t), true) = (&self.tracker, refused(&e)) {
                        t.ended(&pending).await;
                    }
                    return Err(sdk_err(e, "CreateMultipartUpload"));
                }
            };
            if let Some(t) = &self.tracker {
                if let Err(why) = t.started(&pending, &upload_id).await {
                    let (c, b, k) = (&self.s3.client, &self.bucket, &self.key);
                    abort_unrecorded(c, b, k, &upload_id, &pending, &**t).await;
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
        let limit = self.s3.body_limit(body.len());
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
                .config_override(limit)
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
            if abort_multipart(&self.s3.client, &self.bucket, &self.key, &mp.upload_id).await
                != Abort::Failed
            {
                if let Some(t) = &self.tracker {
                    t.ended(&mp.upload_id).await;
                }
            }
        }
    }

    /// Settles a CompleteMultipartUpload whose answer was an error: S3 may well have
    /// completed it (an answer lost after the work was done, or a retry of an attempt that
    /// went through: NoSuchUpload). The object at the key says; when it is not there, the
    /// upload is aborted so that it can never complete later.
    async fn settle_complete(&mut self, crc: &str, e: StorageError) -> Result<Option<String>> {
        let s3 = self.s3.clone();
        let c = &s3.client;
        let size = self.bytes as i64;
        let ours = |h: &aws_sdk_s3::operation::head_object::HeadObjectOutput| {
            h.checksum_crc64_nvme() == Some(crc) && h.content_length().unwrap_or(-1) == size
        };
        if let Some(etag) = settle_by_content(c, &self.bucket, &self.key, &ours).await? {
            tracing::warn!(key = %self.key, error = %e, "CompleteMultipartUpload failed but the object is there with this upload's checksum: completed");
            return Ok(etag);
        }
        let Some(upload_id) = self.multipart.as_ref().map(|m| m.upload_id.clone()) else {
            return Err(e);
        };
        match abort_multipart(c, &self.bucket, &self.key, &upload_id).await {
            // Not completed, and now it never will be.
            Abort::Done => {
                self.finish_tracking().await;
                Err(e)
            }
            // Completed by the attempt whose answer was lost, then replaced; or never ours.
            Abort::Gone => {
                self.finish_tracking().await;
                if let Some(etag) = settle_by_content(c, &self.bucket, &self.key, &ours).await? {
                    return Ok(etag);
                }
                Err(StorageError::with_source(
                    ErrorKind::Superseded,
                    "a newer upload of this file replaced it in storage before it was published; upload it again if it is the one to keep",
                    e,
                ))
            }
            Abort::Failed => Err(StorageError::with_source(
                ErrorKind::Indeterminate,
                "the commit's outcome is unknown: storage's answer was lost and the upload could not be aborted",
                e,
            )),
        }
    }

    /// The multipart upload is over (completed, or aborted or gone): stop tracking it.
    async fn finish_tracking(&mut self) {
        self.finished = true;
        if let Some(mp) = self.multipart.take() {
            if let Some(t) = &self.tracker {
                t.ended(&mp.upload_id).await;
            }
        }
    }

    /// Settles a PutObject whose answer was an error: the object at the key says whether it
    /// went through.
    async fn settle_put(&self, sha256_b64: &str, e: StorageError) -> Result<Option<String>> {
        let size = self.bytes as i64;
        let ours = |h: &aws_sdk_s3::operation::head_object::HeadObjectOutput| {
            h.checksum_sha256() == Some(sha256_b64) && h.content_length().unwrap_or(-1) == size
        };
        match settle_by_content(&self.s3.client, &self.bucket, &self.key, ours).await? {
            Some(etag) => {
                tracing::warn!(key = %self.key, error = %e, "PutObject failed but the object is there with this upload's checksum: stored");
                Ok(etag)
            }
            None => Err(e),
        }
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
                .await;
            match done {
                Ok(r) => Ok(unquote(r.e_tag())),
                // An answer that is not definite, or NoSuchUpload (a retry of an attempt
                // that went through): the object there says.
                Err(e) => {
                    let e = sdk_err(e, "CompleteMultipartUpload");
                    match self.settle_complete(&crc, e).await {
                        Ok(etag) => Ok(etag),
                        Err(e) if e.kind == ErrorKind::Indeterminate => {
                            // Left as it is for the reconciler, which settles the commit
                            // by the object (and aborts the upload if it is not there).
                            self.finished = true;
                            self.multipart = None;
                            return Err(e);
                        }
                        Err(e) => Err(e),
                    }
                }
            }
        } else {
            // Everything fits in one part: one PutObject with the whole-object checksum.
            let (body, _permit) = self.take_part();
            let limit = self.s3.body_limit(body.len());
            // The whole-object hash is this body's hash: no second pass.
            let digest = self.hash.clone().digest();
            let sha256_b64 = base64::engine::general_purpose::STANDARD.encode(digest);
            let put = self
                .s3
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_length(body.len() as i64)
                .checksum_sha256(&sha256_b64)
                .body(body.stream())
                .customize()
                .config_override(limit)
                // The signed x-amz-checksum-sha256 header already protects the body: hashing
                // it again for SigV4 would be a third SHA-256 pass over every byte.
                .disable_payload_signing()
                .send()
                .await;
            match put {
                Ok(r) => Ok(unquote(r.e_tag())),
                Err(e) if refused(&e) => Err(sdk_err(e, "PutObject")),
                Err(e) => {
                    let e = sdk_err(e, "PutObject");
                    self.settle_put(&sha256_b64, e).await
                }
            }
        };

        match res {
            Ok(etag) => {
                self.finish_tracking().await;
                Ok(Stored {
                    bytes: sealed.bytes,
                    sha256: sealed.sha256,
                    etag,
                    location: self.location.clone(),
                })
            }
            Err(e) if e.kind == ErrorKind::Indeterminate => {
                self.finished = true;
                Err(e)
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
                    if abort_multipart(&client, &bucket, &key, &mp.upload_id).await != Abort::Failed
                    {
                        if let Some(t) = tracker {
                            t.ended(&mp.upload_id).await;
                        }
                    }
                });
            }
        }
    }
}
