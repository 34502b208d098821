//! Renames on S3: CopyObject (UploadPartCopy above 5 GiB, tracked like an upload) pinned to
//! the source ETag and marked with the commit intent it is made under; then delete.

use super::*;

impl S3Backend {
    /// Copies `from` to `to`; returns the copy's ETag. `ctx.if_match` pins the source to the
    /// object with that ETag; `ctx.intent` is kept in the copy's metadata, so a copy whose
    /// answer was lost (or whose process died) is told from an older object at `to`.
    pub(super) async fn copy(
        &self,
        from: &str,
        to: &str,
        size: u64,
        ctx: &RenameContext,
    ) -> Result<Option<String>> {
        let source = format!(
            "{}/{}",
            self.bucket,
            percent_encoding::utf8_percent_encode(from, COPY_SOURCE)
        );
        let c = &self.s3.client;
        let if_match = ctx.if_match.as_deref().map(quoted);
        let ours = |h: &aws_sdk_s3::operation::head_object::HeadObjectOutput| match &ctx.intent {
            Some(i) => h.metadata().and_then(|m| m.get(INTENT_META)) == Some(i),
            None => false,
        };
        if size <= MAX_COPY_OBJECT {
            let mut req = c
                .copy_object()
                .bucket(&self.bucket)
                .key(to)
                .copy_source(&source)
                .set_copy_source_if_match(if_match)
                .checksum_algorithm(ChecksumAlgorithm::Sha256);
            if let Some(i) = &ctx.intent {
                req = req
                    .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
                    .metadata(INTENT_META, i);
            }
            return match req
                .customize()
                .config_override(self.s3.attempt_limit(10))
                .send()
                .await
            {
                Ok(r) => Ok(r
                    .copy_object_result()
                    .and_then(|o| o.e_tag())
                    .map(str::to_string)),
                Err(e) if refused(&e) || ctx.intent.is_none() => Err(sdk_err(e, "CopyObject")),
                // Not definite: the copy's metadata says whether it went through.
                Err(e) => {
                    let e = sdk_err(e, "CopyObject");
                    match settle_by_content(c, &self.bucket, to, ours).await? {
                        Some(etag) => Ok(etag),
                        None => Err(e),
                    }
                }
            };
        }
        // Tracked before it exists, like an upload: only aborted (a dead instance's copy is
        // settled by its intent).
        let pending = super::super::creating_id();
        let mut note = ctx.note.clone();
        if let Some(o) = note.as_object_mut() {
            o.insert("kind".into(), serde_json::json!("copy"));
        }
        if let Some(t) = &ctx.tracker {
            t.creating(&LiveUpload {
                upload_id: pending.clone(),
                bucket: self.bucket.clone(),
                key: to.to_string(),
                note,
            })
            .await
            .map_err(|why| {
                StorageError::new(
                    ErrorKind::Unavailable,
                    format!("cannot record the copy: {why}"),
                )
            })?;
        }
        let mut create = c
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(to)
            .checksum_algorithm(ChecksumAlgorithm::Sha256);
        if let Some(i) = &ctx.intent {
            create = create.metadata(INTENT_META, i);
        }
        let id = match create.send().await {
            Ok(up) => up.upload_id().unwrap_or_default().to_string(),
            Err(e) => {
                if let (Some(t), true) = (&ctx.tracker, refused(&e)) {
                    t.ended(&pending).await;
                }
                return Err(sdk_err(e, "CreateMultipartUpload"));
            }
        };
        if let Some(t) = &ctx.tracker {
            if let Err(why) = t.started(&pending, &id).await {
                abort_unrecorded(c, &self.bucket, to, &id, &pending, &**t).await;
                return Err(StorageError::new(
                    ErrorKind::Unavailable,
                    format!("cannot record the copy: {why}"),
                ));
            }
        }
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
                    .set_copy_source_if_match(ctx.if_match.as_deref().map(quoted))
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
            match c
                .complete_multipart_upload()
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
            {
                Ok(done) => Ok(done.e_tag().map(str::to_string)),
                Err(e) if refused(&e) && e.code() != Some("NoSuchUpload") => {
                    Err(sdk_err(e, "CompleteMultipartUpload"))
                }
                Err(e) => {
                    let e = sdk_err(e, "CompleteMultipartUpload");
                    match settle_by_content(c, &self.bucket, to, ours).await? {
                        Some(etag) => Ok(etag),
                        None => Err(e),
                    }
                }
            }
        }
        .await;
        let ended = match &res {
            Ok(_) => true,
            Err(e) if e.kind == ErrorKind::Indeterminate => false,
            Err(_) => abort_multipart(c, &self.bucket, to, &id).await != Abort::Failed,
        };
        if let (Some(t), true) = (&ctx.tracker, ended) {
            t.ended(&id).await;
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
