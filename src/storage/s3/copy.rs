//! Renames on S3: CopyObject (UploadPartCopy above 5 GiB) pinned to the source ETag, then delete.

use super::*;

impl S3Backend {
    /// Copies an object; returns the copy's ETag.
    /// Copies `from` to `to`; `if_match` pins the source to the object with that ETag.
    pub(super) async fn copy(
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
