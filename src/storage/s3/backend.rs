//! `S3Backend`: one account home in a bucket, as the `Backend` sessions use.

use super::*;

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
            Err(e) => absent(sdk_err(e, "HeadObject")),
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
                intent: h.metadata().and_then(|m| m.get(INTENT_META)).cloned(),
            })),
            Err(e) => absent(sdk_err(e, "HeadObject")),
        }
    }

    async fn open_dir(&self, dir: &str) -> Result<Box<dyn DirStream>> {
        let stream = S3DirStream::open(
            self.s3.clone(),
            self.bucket.clone(),
            self.dir_prefix(dir)?,
            dir,
        )
        .await?;
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

    async fn rename(&self, from: &str, to: &str, ctx: &RenameContext) -> Result<Renamed> {
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
        let etag = self.copy(&src, &dst, meta.size, ctx).await?;
        crate::testing::crash_point("rename.after_copy");
        // The copy is the rename: a source that cannot be removed is reported, not a failure
        // (the target already holds the file).
        let mut source_left = true;
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            match self
                .s3
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(&src)
                .send()
                .await
            {
                Ok(_) => {
                    source_left = false;
                    break;
                }
                Err(e) => {
                    tracing::warn!(key = %src, attempt, error = %DisplayErrorContext(&e), "cannot remove a renamed file's source");
                }
            }
        }
        Ok(Renamed { etag, source_left })
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

    async fn abort_pending(&self, path: &str, upload_id: &str) -> Abort {
        self.abort_at(path, upload_id).await
    }

    async fn pending_uploads(&self, path: &str) -> Result<Vec<String>> {
        self.uploads_at(path).await
    }

    async fn begin_upload(&self, path: &str, ctx: UploadContext) -> Result<Box<dyn Upload>> {
        let key = self.key(path)?;
        Ok(Box::new(S3Upload::new(
            self.s3.clone(),
            ctx,
            self.bucket.clone(),
            key,
            self.location(path),
        )))
    }
}

impl S3Backend {
    /// For the reconciler: a multipart upload at `path` (a key, for a home at the bucket's
    /// root) aborted.
    pub(super) async fn abort_at(&self, path: &str, upload_id: &str) -> Abort {
        match self.key(path) {
            Ok(key) => abort_multipart(&self.s3.client, &self.bucket, &key, upload_id).await,
            Err(_) => Abort::Gone,
        }
    }

    /// The multipart uploads in progress at exactly `path`.
    pub(super) async fn uploads_at(&self, path: &str) -> Result<Vec<String>> {
        let key = self.key(path)?;
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .s3
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&key)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| sdk_err(e, "ListMultipartUploads"))?;
            out.extend(
                page.uploads()
                    .iter()
                    .filter(|u| u.key() == Some(key.as_str()))
                    .filter_map(|u| u.upload_id().map(String::from)),
            );
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(String::from);
            id_marker = page.next_upload_id_marker().map(String::from);
        }
    }
}
