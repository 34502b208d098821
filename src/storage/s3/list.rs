//! Listings: a directory one ListObjectsV2 page at a time.

use super::*;

/// A directory listed one ListObjectsV2 page at a time.
pub(super) struct S3DirStream {
    s3: Arc<S3Storage>,
    bucket: String,
    prefix: String,
    token: Option<String>,
    /// The first page, fetched at open.
    first: Option<Vec<DirEntry>>,
    done: bool,
}

impl S3DirStream {
    /// Lists `prefix`, fetching the first page now: a missing directory is refused at open,
    /// not on the first read (`dir` names it in the error; the home always exists).
    pub(super) async fn open(
        s3: Arc<S3Storage>,
        bucket: String,
        prefix: String,
        dir: &str,
    ) -> Result<S3DirStream> {
        let mut stream = S3DirStream {
            s3,
            bucket,
            prefix,
            token: None,
            first: None,
            done: false,
        };
        let (entries, seen) = stream.fetch().await?;
        if !seen && !dir.is_empty() {
            return Err(StorageError::new(
                ErrorKind::NotFound,
                format!("{dir}: no such directory"),
            ));
        }
        stream.first = Some(entries);
        Ok(stream)
    }

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
