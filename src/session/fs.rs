//! The protocol-neutral file operations both front-ends call: every path through the jail
//! to its folder, every operation checked against that folder's permissions and rules,
//! storage errors turned into the four outcomes a client can be told.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::intent::{DecryptTarget, Intent, IntentKind, JournalError, ReceiptTarget};
use super::path::{PathError, VirtualPath};
use super::upload::{UploadError, UploadPipeline};
use super::view::Known;
use super::{Mount, Session, StagedFacts, UploadOutcome, UploadRecord};
use crate::config::SetstatPolicy;
use crate::identity::Permission;
use crate::storage::{
    Capacity, DirEntry, DirStream, ErrorKind, Location, Meta, Sealed, StorageError, Stored,
    UploadContext,
};
use crate::telemetry::metrics::metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsErrorKind {
    NotFound,
    PermissionDenied,
    /// The operation cannot be done on this storage (random-access writes, append …).
    Unsupported,
    Failure,
}

/// An error the client is told about. `message` is safe to show to the partner: it never
/// names buckets, keys or internal hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    pub kind: FsErrorKind,
    pub message: String,
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FsError {}

impl FsError {
    pub fn new(kind: FsErrorKind, message: impl Into<String>) -> Self {
        FsError {
            kind,
            message: message.into(),
        }
    }

    fn denied(what: &str, perm: Permission) -> Self {
        FsError::new(
            FsErrorKind::PermissionDenied,
            format!(
                "permission denied: {what} needs the {} permission",
                perm.name()
            ),
        )
    }
}

impl From<PathError> for FsError {
    fn from(e: PathError) -> Self {
        FsError::new(FsErrorKind::PermissionDenied, e.to_string())
    }
}

/// Turns a storage error into what the client may see; the details go to the log.
fn storage(e: StorageError, path: &VirtualPath) -> FsError {
    let kind = match e.kind {
        ErrorKind::NotFound => FsErrorKind::NotFound,
        ErrorKind::InvalidName => FsErrorKind::PermissionDenied,
        ErrorKind::Unsupported => FsErrorKind::Unsupported,
        _ => FsErrorKind::Failure,
    };
    let message = match e.kind {
        ErrorKind::NotFound => format!("{path}: no such file or directory"),
        ErrorKind::AlreadyExists => format!("{path}: already exists"),
        ErrorKind::NotEmpty => format!("{path}: directory not empty"),
        ErrorKind::IsDirectory => format!("{path}: is a directory"),
        ErrorKind::NotDirectory => format!("{path}: not a directory"),
        ErrorKind::InvalidName | ErrorKind::Unsupported => format!("{path}: {}", e.message),
        ErrorKind::Aborted => format!("{path}: upload aborted"),
        ErrorKind::Superseded => format!("{path}: {}", e.message),
        ErrorKind::Busy => {
            tracing::warn!(activity = "ERROR", path = %path, error = %e.message, "upload refused: server busy");
            format!("{path}: {}; try again later", e.message)
        }
        ErrorKind::Unavailable => {
            tracing::error!(activity = "ERROR", path = %path, error = %error_chain(&e), "storage error");
            format!("{path}: storage error, try again later")
        }
    };
    FsError::new(kind, message)
}

/// A commit that could not be journaled: the client may retry.
fn journal_error(e: JournalError, path: &VirtualPath) -> FsError {
    match e {
        JournalError::Busy => FsError::new(FsErrorKind::Failure, format!("{path}: {e}")),
        JournalError::Database(why) => {
            tracing::error!(activity = "ERROR", path = %path, error = %why, "cannot journal a commit");
            FsError::new(
                FsErrorKind::Failure,
                format!("{path}: the arrival cannot be recorded now; try again later"),
            )
        }
    }
}

/// `a/b/c.csv` -> (`a/b`, `c.csv`); `c.csv` -> (``, `c.csv`).
fn split_parent(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

/// The session view's key for a client path: its parent directory and name, as the client
/// sees them (so two folders' directories never share an entry).
fn view_key(path: &VirtualPath) -> (String, String) {
    (
        path.parent().to_string(),
        path.file_name().unwrap_or_default().to_string(),
    )
}

/// Where a client path lives.
enum Place<'a> {
    /// In a folder (the home, for an account without folders), at this path relative to the
    /// folder's storage root.
    In(&'a Mount, String),
    /// A directory above the folders (`/`, or `/reports` for a folder `/reports/out`): it
    /// lists the folders below it and holds nothing else.
    Above,
}

/// One page of names: the listing of a directory above the folders.
struct FolderNames(Option<Vec<DirEntry>>);

#[async_trait::async_trait]
impl DirStream for FolderNames {
    async fn next_page(&mut self) -> crate::storage::Result<Option<Vec<DirEntry>>> {
        Ok(self.0.take())
    }

    fn done(&self) -> bool {
        self.0.is_none()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// A file open for writing: an upload in progress. Dropped without `close_write` or
/// `abort_write` (the client went away, a transfer was cut), it aborts itself: nothing becomes
/// visible and a failed event is written, whichever front-end dropped it.
pub struct WriteFile {
    pub path: VirtualPath,
    /// `None` once closed or aborted.
    upload: Option<OpenUpload>,
    session: Arc<Session>,
}

struct OpenUpload {
    pipeline: UploadPipeline,
    location: crate::storage::Location,
    started_at: DateTime<Utc>,
    started: Instant,
}

impl WriteFile {
    pub fn received(&self) -> u64 {
        self.upload.as_ref().map_or(0, |u| u.pipeline.received())
    }

    fn open(&mut self) -> Result<&mut OpenUpload, FsError> {
        let path = &self.path;
        self.upload
            .as_mut()
            .ok_or_else(|| FsError::new(FsErrorKind::Failure, format!("{path}: upload ended")))
    }
}

impl Drop for WriteFile {
    fn drop(&mut self) {
        if let Some(u) = self.upload.take() {
            let (session, path) = (self.session.clone(), self.path.clone());
            self.session.clone().spawn_upload_task(async move {
                session
                    .abort_upload(
                        &path,
                        u,
                        "partial_upload",
                        "the file was not closed: the client disconnected or the transfer was cut",
                    )
                    .await;
            });
        }
    }
}

/// A directory being listed: one page of entries in memory at a time.
pub struct DirListing {
    pub path: VirtualPath,
    stream: Box<dyn DirStream>,
}

impl DirListing {
    /// The next page of entries, `None` after the last.
    pub async fn next_entries(&mut self) -> Result<Option<Vec<DirEntry>>, FsError> {
        let path = self.path.clone();
        self.stream.next_page().await.map_err(|e| storage(e, &path))
    }
}

/// A file open for reading. Its end is a download event (`close_read`, or a failed one when
/// it is dropped unclosed: the client went away).
pub struct ReadFile {
    pub path: VirtualPath,
    pub size: u64,
    /// Read-ahead: the last block fetched, so small sequential reads cost one request per block.
    cache: Option<(u64, Bytes)>,
    /// Bytes handed to the client.
    sent: u64,
    /// SHA-256 of the bytes sent while the client reads in order from the start (every client
    /// we know does); dropped at the first read elsewhere.
    hash: Option<crate::storage::ContentHash>,
    /// The end of what has been read in order.
    next: u64,
    /// A storage error that cut the download.
    error: Option<String>,
    location: Location,
    started_at: DateTime<Utc>,
    started: Instant,
    /// Set once the download is reported, so dropping it reports nothing more.
    session: Option<Arc<Session>>,
}

impl ReadFile {
    /// What was sent, for the log and the event.
    fn note_sent(&mut self, offset: u64, data: &[u8]) {
        self.sent += data.len() as u64;
        let end = offset + data.len() as u64;
        if offset == self.next {
            if let Some(h) = &mut self.hash {
                h.update(data);
            }
            self.next = end;
        } else if end > self.next {
            // Not in order: the bytes sent can no longer be hashed as one file.
            self.hash = None;
            self.next = self.next.max(end);
        }
    }

    /// The download's outcome, or None when nothing was read (an open to look, not to fetch).
    fn outcome(&mut self) -> Option<UploadOutcome> {
        if let Some(message) = self.error.take() {
            return Some(UploadOutcome::Failed {
                location: self.location.clone(),
                bytes: self.sent,
                code: "storage_error",
                message,
            });
        }
        if self.sent == 0 && self.size > 0 {
            return None;
        }
        if self.next >= self.size {
            return Some(UploadOutcome::Completed(Stored {
                bytes: self.size,
                sha256: self.hash.take().map(|h| h.hex()).unwrap_or_default(),
                etag: None,
                location: self.location.clone(),
            }));
        }
        Some(UploadOutcome::Failed {
            location: self.location.clone(),
            bytes: self.sent,
            code: "partial_download",
            message: format!(
                "the client read {} of {} bytes before closing the file",
                self.sent, self.size
            ),
        })
    }
}

impl Drop for ReadFile {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        // Every byte sent counts as a download even when the client never closed the file.
        let outcome = match self.outcome() {
            Some(UploadOutcome::Failed {
                location,
                bytes,
                code: "partial_download",
                ..
            }) => Some(UploadOutcome::Failed {
                location,
                bytes,
                code: "partial_download",
                message: "the file was not closed: the client disconnected or the transfer was cut"
                    .into(),
            }),
            other => other,
        };
        if let Some(outcome) = outcome {
            let (path, started_at) = (self.path.to_string(), self.started_at);
            session.clone().spawn_upload_task(async move {
                session.report_download(path, started_at, outcome).await;
            });
        }
    }
}

const READ_AHEAD: u32 = 4 << 20;

impl Session {
    fn require(m: &Mount, perm: Permission, what: &str) -> Result<(), FsError> {
        if m.permissions.has(perm) {
            Ok(())
        } else {
            Err(FsError::denied(what, perm))
        }
    }

    /// Where `path` lives: in which folder, or above them; a path in neither does not exist.
    fn place(&self, path: &VirtualPath) -> Result<Place<'_>, FsError> {
        for m in &self.mounts {
            if let Some(rest) = path.strip_prefix(&m.path) {
                return Ok(Place::In(m, rest.relative()));
            }
        }
        if self.mounts.iter().any(|m| m.path.starts_with(path)) {
            return Ok(Place::Above);
        }
        Err(FsError::new(
            FsErrorKind::NotFound,
            format!("{path}: no such file or directory"),
        ))
    }

    /// The folder `path` is in and the path inside it, for `what` (which needs a folder).
    fn folder(&self, path: &VirtualPath, what: &str) -> Result<(&Mount, String), FsError> {
        let outside = || {
            FsError::new(
                FsErrorKind::PermissionDenied,
                format!(
                    "{path}: {what} is only possible inside a folder ({})",
                    self.folder_list()
                ),
            )
        };
        match self.place(path) {
            Ok(Place::In(m, rel)) => Ok((m, rel)),
            Ok(Place::Above) => Err(outside()),
            // A new name in a directory above the folders is refused, not "not found".
            Err(_) if !path.is_root() && matches!(self.place(&path.parent()), Ok(Place::Above)) => {
                Err(outside())
            }
            Err(e) => Err(e),
        }
    }

    /// Refuses a file name the folder's rules do not accept (judged without a temp suffix).
    fn check_name(&self, m: &Mount, path: &VirtualPath) -> Result<(), FsError> {
        let name = self
            .ctx
            .observer
            .final_name(path.file_name().unwrap_or_default());
        match m.rules.refuse_name(name) {
            None => Ok(()),
            Some(why) => {
                tracing::info!(parent: &self.span, activity = "REFUSED", reason = "name", path = %path, detail = %why);
                Err(FsError::new(
                    FsErrorKind::PermissionDenied,
                    format!("{path}: {why}"),
                ))
            }
        }
    }

    /// Refuses a name that already arrived in a folder that accepts a name once (a temp name
    /// is judged by the name it will arrive under).
    async fn check_reuse(&self, m: &Mount, rel: &str, path: &VirtualPath) -> Result<(), FsError> {
        if !m.rules.no_reuse_names {
            return Ok(());
        }
        let (dir, name) = split_parent(rel);
        let name = self.ctx.observer.final_name(name);
        let final_rel = if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        let arrived = self
            .ctx
            .observer
            .arrived_before(&m.backend.location(&final_rel))
            .await
            .map_err(|e| FsError::new(FsErrorKind::Failure, format!("{path}: {e}")))?;
        if arrived {
            tracing::info!(parent: &self.span, activity = "REFUSED", reason = "reused_name", path = %path);
            return Err(FsError::new(
                FsErrorKind::PermissionDenied,
                format!("{path}: a file named {name:?} already arrived in this folder, which accepts each name once"),
            ));
        }
        Ok(())
    }

    fn folder_list(&self) -> String {
        self.mounts
            .iter()
            .map(|m| m.path.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether this partner may upload at all (statvfs reports a read-only file system if not).
    pub fn can_upload(&self) -> bool {
        self.mounts
            .iter()
            .any(|m| m.permissions.has(Permission::Upload))
    }

    /// Resolves a client path (relative paths are relative to the home root).
    pub fn resolve(&self, input: &str) -> Result<VirtualPath, FsError> {
        Ok(VirtualPath::parse(&VirtualPath::root(), input)?)
    }

    /// An upload of `path` in progress on this instance counts, with the bytes received so far.
    pub async fn stat(&self, path: &VirtualPath) -> Result<Meta, FsError> {
        let (m, rel) = match self.place(path)? {
            Place::In(m, rel) => (m, rel),
            Place::Above => return Ok(Meta::dir()),
        };
        if let Some(bytes) = self.ctx.uploads.progress(&m.backend.location(&rel).uri) {
            return Ok(Meta {
                is_dir: false,
                size: bytes,
                modified: Some(std::time::SystemTime::now()),
            });
        }
        self.stat_stored(m, &rel, path).await
    }

    /// What storage holds at `rel` in `m` (the client's `path`), answered from this session's
    /// view when it can be.
    async fn stat_stored(&self, m: &Mount, rel: &str, path: &VirtualPath) -> Result<Meta, FsError> {
        if !m.backend.remote() || rel.is_empty() {
            return m.backend.stat(rel).await.map_err(|e| storage(e, path));
        }
        let (dir, _) = split_parent(rel);
        let (vdir, name) = view_key(path);
        let (vdir, name) = (vdir.as_str(), name.as_str());
        let missing = || {
            FsError::new(
                FsErrorKind::NotFound,
                format!("{path}: no such file or directory"),
            )
        };
        match self.view.lookup(vdir, name) {
            Known::Present(m) => return Ok(m),
            Known::Absent => return Err(missing()),
            Known::Unknown => {}
        }
        // A session that asks about a second name in a directory (a client stats every file
        // before putting it) gets the directory listed once: it answers the next stats too.
        // A one-file session asks about its one name only, which is cheaper than a listing.
        if self.view.worth_listing(vdir, name) {
            match m.backend.open_dir(dir).await {
                Ok(mut stream) => match stream.next_page().await {
                    Ok(Some(page)) if stream.done() => {
                        self.view.listed(vdir, &page);
                        return match page.into_iter().find(|e| e.name == name) {
                            Some(e) => Ok(e.meta),
                            None => Err(missing()),
                        };
                    }
                    Ok(_) => self.view.too_big(vdir),
                    Err(_) => {}
                },
                // No parent, no child.
                Err(e) if e.kind == ErrorKind::NotFound => return Err(storage(e, path)),
                Err(_) => {}
            }
        }
        match m.backend.stat(rel).await {
            Ok(meta) => {
                self.view.noted(vdir, name, Some(meta.clone()));
                Ok(meta)
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                self.view.noted(vdir, name, None);
                Err(storage(e, path))
            }
            Err(e) => Err(storage(e, path)),
        }
    }

    /// Opens a directory for listing, a page at a time (`next_entries`).
    pub async fn open_dir(&self, path: &VirtualPath) -> Result<DirListing, FsError> {
        let (m, rel) = match self.place(path)? {
            Place::In(m, rel) => (m, rel),
            Place::Above => {
                let mut names: Vec<&str> = self
                    .mounts
                    .iter()
                    .filter_map(|m| path.child_towards(&m.path))
                    .collect();
                names.sort_unstable();
                names.dedup();
                let entries = names
                    .into_iter()
                    .map(|n| DirEntry {
                        name: n.to_string(),
                        meta: Meta::dir(),
                    })
                    .collect();
                return Ok(DirListing {
                    path: path.clone(),
                    stream: Box::new(FolderNames(Some(entries))),
                });
            }
        };
        Self::require(m, Permission::List, "listing")?;
        match m.backend.open_dir(&rel).await {
            Ok(stream) => Ok(DirListing {
                path: path.clone(),
                stream,
            }),
            // A file is not a directory; say so rather than "no such file".
            Err(e) if e.kind == ErrorKind::NotFound && !rel.is_empty() => {
                match m.backend.stat(&rel).await {
                    Ok(m) if !m.is_dir => Err(FsError::new(
                        FsErrorKind::Failure,
                        format!("{path}: not a directory"),
                    )),
                    _ => Err(storage(e, path)),
                }
            }
            Err(e) => Err(storage(e, path)),
        }
    }

    /// Starts an upload to `path`. `exclusive` refuses an existing file (O_EXCL).
    pub async fn open_write(
        self: &Arc<Self>,
        path: &VirtualPath,
        exclusive: bool,
    ) -> Result<WriteFile, FsError> {
        let (m, rel) = self.folder(path, "uploading")?;
        Self::require(m, Permission::Upload, "uploading")?;
        if rel.is_empty() {
            return Err(FsError::new(
                FsErrorKind::Failure,
                format!("{path}: is a directory"),
            ));
        }
        self.check_name(m, path)?;
        self.check_reuse(m, &rel, path).await?;
        // What storage holds (an upload of this name still in progress is not a file yet: the
        // commit decides between them).
        match self.stat_stored(m, &rel, path).await {
            Ok(m) if m.is_dir => {
                return Err(FsError::new(
                    FsErrorKind::Failure,
                    format!("{path}: is a directory"),
                ))
            }
            Ok(_) if exclusive => {
                return Err(FsError::new(
                    FsErrorKind::Failure,
                    format!("{path}: already exists"),
                ))
            }
            Ok(_) => Self::require(m, Permission::Overwrite, "replacing an existing file")?,
            Err(e) if e.kind == FsErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let location = m.backend.location(&rel);
        let started_at = crate::identity::now();
        let ctx = UploadContext {
            scope: self.quota.uploads.clone(),
            tracker: self.ctx.journal.tracker(),
            // What the reconciler needs to announce the upload as failed if this process dies
            // with its multipart upload open.
            note: serde_json::json!({
                "username": self.info.username,
                "session_id": self.info.id,
                "protocol": self.info.protocol.name(),
                "client_ip": self.info.client_ip.to_string(),
                "path": path.to_string(),
                "location": location.uri,
                "bucket": location.bucket,
                "key": location.key,
                "started_at": started_at,
            }),
        };
        let upload = m
            .backend
            .begin_upload(&rel, ctx)
            .await
            .map_err(|e| storage(e, path))?;
        tracing::info!(parent: &self.span,activity = "OPEN", path = %path, mode = "write");
        Ok(WriteFile {
            path: path.clone(),
            upload: Some(OpenUpload {
                pipeline: UploadPipeline::start(
                    upload,
                    location.uri.clone(),
                    &self.ctx.uploads,
                    self.quota.reorder.clone(),
                ),
                location,
                started_at,
                started: Instant::now(),
            }),
            session: self.clone(),
        })
    }

    pub async fn write(&self, f: &mut WriteFile, offset: u64, data: Bytes) -> Result<(), FsError> {
        let path = f.path.clone();
        let max = match self.place(&path) {
            Ok(Place::In(m, _)) => m.rules.max_size,
            _ => None,
        };
        if let Some(max) = max.filter(|max| offset.saturating_add(data.len() as u64) > *max) {
            f.open()?;
            let why = format!("{path}: larger than this folder accepts ({max} bytes at most)");
            tracing::info!(parent: &self.span, activity = "REFUSED", reason = "size", path = %path, max_size = max);
            if let Some(u) = f.upload.take() {
                self.abort_upload(&path, u, "too_large", &why).await;
            }
            return Err(FsError::new(FsErrorKind::Failure, why));
        }
        let u = f.open()?;
        u.pipeline.write(offset, data).await.map_err(|e| match e {
            UploadError::Unsupported(m) => FsError::new(FsErrorKind::Unsupported, m),
            UploadError::Storage(e) => storage(e, &path),
        })
    }

    /// fsync: every byte received so far is in storage, as durable as it can be before the
    /// close (the file still becomes visible only at close).
    pub async fn sync(&self, f: &mut WriteFile) -> Result<(), FsError> {
        let path = f.path.clone();
        f.open()?.pipeline.sync().await.map_err(|e| match e {
            UploadError::Unsupported(m) => FsError::new(FsErrorKind::Unsupported, m),
            UploadError::Storage(e) => storage(e, &path),
        })
    }

    /// Size and free space of the home's storage (`None`: no capacity limit, as on S3).
    pub async fn capacity(&self) -> Result<Option<Capacity>, FsError> {
        self.mounts[0]
            .backend
            .capacity()
            .await
            .map_err(|e| storage(e, &VirtualPath::root()))
    }

    /// Completes an upload: puts everything into storage (not yet visible), writes down the
    /// intent to publish it, publishes it, then records its arrival and clears the intent in
    /// one transaction. The client's close succeeds only if all of that did; a process that
    /// dies in between leaves the intent for the reconciler to finish.
    pub async fn close_write(&self, mut file: WriteFile) -> Result<Stored, FsError> {
        let path = file.path.clone();
        let Some(mut u) = file.upload.take() else {
            return Err(FsError::new(
                FsErrorKind::Failure,
                format!("{path}: upload ended"),
            ));
        };
        let received = u.pipeline.received();
        let (m, rel) = match self.folder(&path, "uploading") {
            Ok(found) => found,
            Err(e) => {
                u.pipeline.abort().await;
                return Err(e);
            }
        };
        let sealed = match u.pipeline.seal().await {
            Ok(s) => s,
            Err(e) => {
                return Err(self
                    .close_failed(&path, (&u.location, u.started_at), received, e)
                    .await)
            }
        };
        let intent = self.upload_intent(m, &rel, &path, &u, &sealed);
        if let Err(e) = self.ctx.journal.begin(&intent).await {
            u.pipeline.abort().await;
            let err = journal_error(e, &path);
            self.record_failure(
                &path,
                (&u.location, u.started_at),
                received,
                "storage_error",
                &err.message,
            )
            .await;
            return Err(err);
        }
        // Two handles (sessions, instances) may have passed the existence check at open: under
        // the commit lock, an account without `overwrite` still cannot replace a file.
        if !m.permissions.has(Permission::Overwrite) && m.backend.stat(&rel).await.is_ok() {
            self.ctx.journal.cancel(&intent).await;
            u.pipeline.abort().await;
            let err = FsError::new(
                FsErrorKind::PermissionDenied,
                format!("{path}: already exists (another upload of it finished first); replacing an existing file needs the overwrite permission"),
            );
            self.record_failure(
                &path,
                (&u.location, u.started_at),
                received,
                "already_exists",
                &err.message,
            )
            .await;
            return Err(err);
        }
        // Under the same lock: a folder that accepts a name once.
        if m.rules.no_reuse_names
            && matches!(
                self.ctx.observer.arrived_before(&u.location).await,
                Ok(true) | Err(_)
            )
        {
            self.ctx.journal.cancel(&intent).await;
            u.pipeline.abort().await;
            let err = FsError::new(
                FsErrorKind::PermissionDenied,
                format!("{path}: a file of this name already arrived in this folder, which accepts each name once"),
            );
            self.record_failure(
                &path,
                (&u.location, u.started_at),
                received,
                "name_reused",
                &err.message,
            )
            .await;
            return Err(err);
        }
        crate::testing::crash_point("upload.before_commit");
        let res = u.pipeline.commit().await;
        crate::testing::crash_point("upload.after_commit");
        let finished_at = crate::identity::now();
        let record = |outcome| UploadRecord {
            session: self.info.clone(),
            path: path.to_string(),
            started_at: u.started_at,
            finished_at,
            outcome,
        };
        match res {
            Ok(stored) => {
                let rec = record(UploadOutcome::Completed(stored.clone()));
                if let Err(why) = self.ctx.observer.completed(&rec, Some(&intent)).await {
                    tracing::error!(parent: &self.span,activity = "ERROR", path = %path, error = %why, "arrival not recorded; removing the object");
                    metrics().upload_failed(self.info.protocol.name());
                    // The client is told the upload failed, so it must not stay visible
                    // without its event: it will be uploaded again.
                    match m.backend.delete(&rel).await {
                        Ok(()) => self.ctx.journal.cancel(&intent).await,
                        // The intent stays: the reconciler announces the object later.
                        Err(e) => {
                            tracing::error!(parent: &self.span,activity = "ERROR", path = %path, error = %e, "could not remove the unrecorded object; the reconciler will announce it")
                        }
                    }
                    return Err(FsError::new(
                        FsErrorKind::Failure,
                        format!("{path}: the file was stored but its arrival could not be recorded; upload it again"),
                    ));
                }
                let (vdir, name) = view_key(&path);
                self.view.wrote(
                    &vdir,
                    &name,
                    Meta {
                        is_dir: false,
                        size: stored.bytes,
                        modified: Some(std::time::SystemTime::now()),
                    },
                );
                metrics().upload_completed(
                    self.info.protocol.name(),
                    stored.bytes,
                    u.started.elapsed(),
                );
                tracing::info!(parent: &self.span,
                    activity = "CLOSE",
                    path = %path,
                    mode = "write",
                    bytes = stored.bytes,
                    bytes_in = stored.bytes,
                    sha256 = %stored.sha256,
                    duration_ms = u.started.elapsed().as_millis() as u64,
                );
                Ok(stored)
            }
            Err(e) => {
                // Storage refused the commit (an ambiguous answer was settled by looking at
                // the object): nothing was published.
                self.ctx.journal.cancel(&intent).await;
                Err(self
                    .close_failed(&path, (&u.location, u.started_at), received, e)
                    .await)
            }
        }
    }

    fn upload_intent(
        &self,
        m: &Mount,
        rel: &str,
        path: &VirtualPath,
        u: &OpenUpload,
        sealed: &Sealed,
    ) -> Intent {
        Intent {
            id: uuid::Uuid::now_v7().to_string(),
            kind: IntentKind::Upload,
            location: u.location.uri.clone(),
            home: m.home.to_uri(),
            path: rel.to_string(),
            client_path: path.to_string(),
            from_path: None,
            from_client_path: None,
            username: self.info.username.clone(),
            session_id: self.info.id.clone(),
            protocol: self.info.protocol.name().to_string(),
            client_ip: self.info.client_ip.to_string(),
            bytes: sealed.bytes,
            sha256: sealed.sha256.clone(),
            crc64nvme: sealed.crc64nvme.clone(),
            upload_id: sealed.upload_id.clone(),
            started_at: u.started_at,
            remember_name: m.rules.no_reuse_names,
            receipt: self.receipt_target(m, path.file_name().unwrap_or_default()),
            decrypt: self.decrypt_target(m, rel, path),
        }
    }

    /// Where the plaintext of `path` (at `rel` in `m`) goes, when `m` decrypts PGP files and
    /// the name has a PGP suffix: the folder `--decrypt-to` names, at the same path inside it
    /// without the suffix. A file arriving inside that target itself is not decrypted.
    fn decrypt_target(&self, m: &Mount, rel: &str, path: &VirtualPath) -> Option<DecryptTarget> {
        let to = m.rules.decrypt_to.as_ref()?;
        let lower = rel.to_ascii_lowercase();
        let suffix = self
            .ctx
            .pgp_suffixes
            .iter()
            .find(|s| lower.ends_with(&s.to_ascii_lowercase()))?;
        let plain_rel = &rel[..rel.len() - suffix.len()];
        if plain_rel.is_empty() || plain_rel.ends_with('/') {
            return None;
        }
        let to = VirtualPath::parse(&VirtualPath::root(), to).ok()?;
        if path.starts_with(&to) {
            return None;
        }
        let client = format!("{}/{plain_rel}", to.to_string().trim_end_matches('/'));
        let target = VirtualPath::parse(&VirtualPath::root(), &client)
            .ok()
            .and_then(|p| match self.place(&p) {
                Ok(Place::In(t, trel)) if !trel.is_empty() => Some(DecryptTarget {
                    source_home: m.home.to_uri(),
                    source_path: rel.to_string(),
                    source_client_path: path.to_string(),
                    target_home: t.home.to_uri(),
                    target_path: trel,
                    target_client_path: p.to_string(),
                    require_signature: m.rules.require_signature,
                }),
                _ => None,
            });
        if target.is_none() {
            tracing::warn!(parent: &self.span, decrypt_to = %client, "the decryption target is in none of the account's folders: the file is not decrypted");
        }
        target
    }

    /// Where the receipt of `name` arriving in `m` goes, when `m` writes receipts.
    fn receipt_target(&self, m: &Mount, name: &str) -> Option<ReceiptTarget> {
        let template = m.rules.receipt.as_ref()?;
        let client = template.replace("{name}", name);
        let target = VirtualPath::parse(&VirtualPath::root(), &client)
            .ok()
            .and_then(|p| match self.place(&p) {
                Ok(Place::In(t, rel)) if !rel.is_empty() => Some(ReceiptTarget {
                    home: t.home.to_uri(),
                    path: rel,
                    client_path: p.to_string(),
                }),
                _ => None,
            });
        if target.is_none() {
            tracing::warn!(parent: &self.span, receipt = %client, "the receipt path is in none of the account's folders: no receipt is written");
        }
        target
    }

    /// An upload that could not be sealed or committed: logged, counted, announced.
    async fn close_failed(
        &self,
        path: &VirtualPath,
        u: (&crate::storage::Location, DateTime<Utc>),
        received: u64,
        e: UploadError,
    ) -> FsError {
        let (code, err) = match e {
            UploadError::Unsupported(m) => (
                "unsupported_write",
                FsError::new(FsErrorKind::Unsupported, m),
            ),
            UploadError::Storage(e) if e.kind == ErrorKind::Superseded => {
                ("superseded", storage(e, path))
            }
            UploadError::Storage(e) => ("storage_error", storage(e, path)),
        };
        self.record_failure(path, u, received, code, &err.message)
            .await;
        err
    }

    async fn record_failure(
        &self,
        path: &VirtualPath,
        (location, started_at): (&crate::storage::Location, DateTime<Utc>),
        received: u64,
        code: &'static str,
        message: &str,
    ) {
        let rec = UploadRecord {
            session: self.info.clone(),
            path: path.to_string(),
            started_at,
            finished_at: crate::identity::now(),
            outcome: UploadOutcome::Failed {
                location: location.clone(),
                bytes: received,
                code,
                message: message.to_string(),
            },
        };
        metrics().upload_failed(self.info.protocol.name());
        tracing::warn!(parent: &self.span,activity = "PARTIAL_CLOSE", path = %path, bytes = received, reason = %message);
        self.ctx.observer.failed(&rec).await;
    }

    /// Abandons an upload (client gone, timeout, shutdown): nothing becomes visible.
    pub async fn abort_write(&self, mut file: WriteFile, code: &'static str, reason: &str) {
        if let Some(u) = file.upload.take() {
            self.abort_upload(&file.path, u, code, reason).await;
        }
    }

    async fn abort_upload(
        &self,
        path: &VirtualPath,
        u: OpenUpload,
        code: &'static str,
        reason: &str,
    ) {
        let received = u.pipeline.received();
        u.pipeline.abort().await;
        metrics().upload_failed(self.info.protocol.name());
        tracing::warn!(parent: &self.span,activity = "PARTIAL_CLOSE", path = %path, bytes = received, reason);
        let rec = UploadRecord {
            session: self.info.clone(),
            path: path.to_string(),
            started_at: u.started_at,
            finished_at: crate::identity::now(),
            outcome: UploadOutcome::Failed {
                location: u.location,
                bytes: received,
                code,
                message: reason.to_string(),
            },
        };
        self.ctx.observer.failed(&rec).await;
    }

    pub async fn open_read(self: &Arc<Self>, path: &VirtualPath) -> Result<ReadFile, FsError> {
        let (mount, rel) = self.folder(path, "downloading")?;
        Self::require(mount, Permission::Download, "downloading")?;
        let m = mount
            .backend
            .stat(&rel)
            .await
            .map_err(|e| storage(e, path))?;
        if m.is_dir {
            return Err(FsError::new(
                FsErrorKind::Failure,
                format!("{path}: is a directory"),
            ));
        }
        tracing::info!(parent: &self.span,activity = "OPEN", path = %path, mode = "read");
        Ok(ReadFile {
            path: path.clone(),
            size: m.size,
            cache: None,
            sent: 0,
            hash: Some(Default::default()),
            next: 0,
            error: None,
            location: mount.backend.location(&rel),
            started_at: crate::identity::now(),
            started: Instant::now(),
            session: Some(self.clone()),
        })
    }

    /// Ends a download: logged like an upload's close, with the bytes sent, and announced
    /// (`wharf.download.completed` with the SHA-256 of what was sent when the client read
    /// the whole file in order, `wharf.download.failed` when it stopped short).
    pub async fn close_read(&self, mut f: ReadFile) {
        tracing::info!(parent: &self.span,
            activity = "CLOSE",
            path = %f.path,
            mode = "read",
            bytes_out = f.sent,
            duration_ms = f.started.elapsed().as_millis() as u64,
        );
        f.session = None;
        if let Some(outcome) = f.outcome() {
            self.report_download(f.path.to_string(), f.started_at, outcome)
                .await;
        }
    }

    async fn report_download(
        &self,
        path: String,
        started_at: DateTime<Utc>,
        outcome: UploadOutcome,
    ) {
        let record = UploadRecord {
            session: self.info.clone(),
            path,
            started_at,
            finished_at: crate::identity::now(),
            outcome,
        };
        self.ctx.observer.downloaded(&record).await;
    }

    /// `len` bytes at `offset`, fewer only at the end of the file (empty there). Never a short
    /// read in the middle: libssh2 (curl) and others take one for an error, and OpenSSH's
    /// sftp-server never sends one.
    pub async fn read(&self, f: &mut ReadFile, offset: u64, len: u32) -> Result<Bytes, FsError> {
        let want = (len as u64).min(f.size.saturating_sub(offset)) as usize;
        let end = offset + want as u64;
        let res = self.read_exact(f, offset, end, want).await;
        match &res {
            Ok(b) => f.note_sent(offset, b),
            Err(e) => f.error = Some(e.message.clone()),
        }
        res
    }

    async fn read_exact(
        &self,
        f: &mut ReadFile,
        offset: u64,
        end: u64,
        want: usize,
    ) -> Result<Bytes, FsError> {
        let first = self.read_block(f, offset, end).await?;
        if first.len() >= want {
            return Ok(first);
        }
        // The request straddles the end of the read-ahead block.
        let mut out = bytes::BytesMut::with_capacity(want);
        out.extend_from_slice(&first);
        while out.len() < want {
            let more = self.read_block(f, offset + out.len() as u64, end).await?;
            if more.is_empty() {
                break; // The file shrank since it was opened.
            }
            out.extend_from_slice(&more);
        }
        Ok(out.freeze())
    }

    /// What the read-ahead block holds of `pos..end`, fetching the block at `pos` first when
    /// the cached one does not hold `pos`.
    async fn read_block(&self, f: &mut ReadFile, pos: u64, end: u64) -> Result<Bytes, FsError> {
        if pos >= end {
            return Ok(Bytes::new());
        }
        let cached = matches!(&f.cache, Some((start, block)) if pos >= *start && pos < start + block.len() as u64);
        if !cached {
            let (m, rel) = self.folder(&f.path, "downloading")?;
            let block = m
                .backend
                .read(&rel, pos, READ_AHEAD)
                .await
                .map_err(|e| storage(e, &f.path))?;
            f.cache = Some((pos, block));
        }
        let Some((start, block)) = &f.cache else {
            return Ok(Bytes::new());
        };
        let from = ((pos - start) as usize).min(block.len());
        let to = ((end - start) as usize).min(block.len());
        Ok(block.slice(from..to))
    }

    pub async fn remove(&self, path: &VirtualPath) -> Result<(), FsError> {
        let (m, rel) = self.folder(path, "deleting")?;
        Self::require(m, Permission::Delete, "deleting")?;
        if rel.is_empty() {
            return Err(FsError::new(
                FsErrorKind::PermissionDenied,
                format!("{path}: a folder cannot be deleted"),
            ));
        }
        m.backend.delete(&rel).await.map_err(|e| storage(e, path))?;
        tracing::info!(parent: &self.span,activity = "DELETE", path = %path);
        let (vdir, name) = view_key(path);
        self.view.removed(&vdir, &name);
        let location = m.backend.location(&rel);
        self.ctx
            .observer
            .removed(&self.info, &path.to_string(), &location)
            .await;
        Ok(())
    }

    /// Renames a file; replacing an existing file needs the overwrite permission too. A
    /// temp-name upload renamed to its final name arrives: the rename is journaled like an
    /// upload's commit, and its event carries the exact size and SHA-256 of what was renamed.
    pub async fn rename(&self, from: &VirtualPath, to: &VirtualPath) -> Result<(), FsError> {
        let (m, src) = self.folder(from, "renaming")?;
        let (to_m, dst) = self.folder(to, "renaming")?;
        Self::require(m, Permission::Rename, "renaming")?;
        if src.is_empty() || dst.is_empty() {
            return Err(FsError::new(
                FsErrorKind::PermissionDenied,
                "the home directory and folders cannot be renamed",
            ));
        }
        if !std::ptr::eq(m, to_m) {
            return Err(FsError::new(
                FsErrorKind::Unsupported,
                format!(
                    "{from} -> {to}: renaming between folders is not supported; upload the file into {} instead",
                    to_m.path
                ),
            ));
        }
        if from == to {
            return Ok(());
        }
        self.check_name(m, to)?;
        let may_overwrite = m.permissions.has(Permission::Overwrite);
        match m.backend.stat(&dst).await {
            Ok(meta) if !meta.is_dir => {
                Self::require(m, Permission::Overwrite, "replacing an existing file")?
            }
            _ => {}
        }
        let (from_s, to_s) = (from.to_string(), to.to_string());
        let from_loc = m.backend.location(&src);
        let to_loc = m.backend.location(&dst);
        let arrival = self.ctx.observer.is_arrival(&from_s, &to_s);
        let (facts, intent) = if arrival {
            let facts = self.rename_facts(m, &src, from, &from_loc).await?;
            let intent = Intent {
                id: uuid::Uuid::now_v7().to_string(),
                kind: IntentKind::Rename,
                location: to_loc.uri.clone(),
                home: m.home.to_uri(),
                path: dst.clone(),
                client_path: to_s.clone(),
                from_path: Some(src.clone()),
                from_client_path: Some(from_s.clone()),
                username: self.info.username.clone(),
                session_id: self.info.id.clone(),
                protocol: self.info.protocol.name().to_string(),
                client_ip: self.info.client_ip.to_string(),
                bytes: facts.bytes,
                sha256: facts.sha256.clone(),
                crc64nvme: None,
                upload_id: None,
                started_at: facts.started_at,
                remember_name: m.rules.no_reuse_names,
                receipt: self.receipt_target(m, to.file_name().unwrap_or_default()),
                decrypt: self.decrypt_target(m, &dst, to),
            };
            self.ctx
                .journal
                .begin(&intent)
                .await
                .map_err(|e| journal_error(e, to))?;
            if !may_overwrite && m.backend.stat(&dst).await.is_ok_and(|m| !m.is_dir) {
                self.ctx.journal.cancel(&intent).await;
                return Err(FsError::denied(
                    "replacing an existing file",
                    Permission::Overwrite,
                ));
            }
            if let Err(e) = self.check_reuse(m, &dst, to).await {
                self.ctx.journal.cancel(&intent).await;
                return Err(e);
            }
            (Some(facts), Some(intent))
        } else {
            (None, None)
        };
        let etag = match m
            .backend
            .rename(&src, &dst, facts.as_ref().and_then(|f| f.etag.as_deref()))
            .await
        {
            Ok(etag) => etag,
            Err(e) => {
                if let Some(i) = &intent {
                    self.ctx.journal.cancel(i).await;
                }
                return Err(storage(e, from));
            }
        };
        crate::testing::crash_point("rename.after_rename");
        tracing::info!(parent: &self.span,activity = "RENAME", path = %from, to = %to);
        let (from_dir, from_name) = view_key(from);
        self.view.removed(&from_dir, &from_name);
        match &facts {
            Some(f) => {
                let (to_dir, to_name) = view_key(to);
                let meta = Meta {
                    is_dir: false,
                    size: f.bytes,
                    modified: Some(std::time::SystemTime::now()),
                };
                self.view.wrote(&to_dir, &to_name, meta);
            }
            None => self.view.forget(),
        }
        if let Err(why) = self
            .ctx
            .observer
            .renamed(
                &self.info,
                (&from_s, &from_loc),
                (&to_s, &to_loc),
                etag.as_deref(),
                facts.as_ref(),
                intent.as_ref(),
            )
            .await
        {
            tracing::error!(parent: &self.span,activity = "ERROR", path = %to, error = %why, "arrival not recorded; undoing the rename");
            match m.backend.rename(&dst, &src, None).await {
                Ok(_) => {
                    if let Some(i) = &intent {
                        self.ctx.journal.cancel(i).await;
                    }
                }
                Err(e) => {
                    tracing::error!(parent: &self.span,activity = "ERROR", path = %to, error = %e, "could not undo the rename; the reconciler will announce it")
                }
            }
            return Err(FsError::new(
                FsErrorKind::Failure,
                format!("{from}: rename failed (its arrival could not be recorded); try again"),
            ));
        }
        Ok(())
    }

    /// Size and SHA-256 of a temp-name upload about to arrive: what was recorded when it was
    /// uploaded, or, when nothing was (it arrived by another route, or was renamed in from a
    /// final name), read from storage.
    async fn rename_facts(
        &self,
        m: &Mount,
        rel: &str,
        path: &VirtualPath,
        location: &crate::storage::Location,
    ) -> Result<StagedFacts, FsError> {
        if let Ok(Some(f)) = self.ctx.observer.staged(location).await {
            return Ok(f);
        }
        let meta = m.backend.stat(rel).await.map_err(|e| storage(e, path))?;
        let mut hash = crate::storage::ContentHash::default();
        let mut offset = 0u64;
        while offset < meta.size {
            let block = m
                .backend
                .read(rel, offset, READ_AHEAD)
                .await
                .map_err(|e| storage(e, path))?;
            if block.is_empty() {
                break;
            }
            hash.update(&block);
            offset += block.len() as u64;
        }
        Ok(StagedFacts {
            bytes: offset,
            sha256: hash.hex(),
            etag: None,
            started_at: crate::identity::now(),
        })
    }

    pub async fn mkdir(&self, path: &VirtualPath) -> Result<(), FsError> {
        let (m, rel) = match self.place(path) {
            Ok(Place::Above) => {
                return Err(FsError::new(
                    FsErrorKind::Failure,
                    format!("{path}: already exists"),
                ))
            }
            _ => self.folder(path, "creating directories")?,
        };
        Self::require(m, Permission::Mkdir, "creating directories")?;
        if rel.is_empty() {
            return Err(FsError::new(
                FsErrorKind::Failure,
                format!("{path}: already exists"),
            ));
        }
        m.backend.mkdir(&rel).await.map_err(|e| storage(e, path))?;
        tracing::info!(parent: &self.span,activity = "MKDIR", path = %path);
        let (vdir, name) = view_key(path);
        self.view.wrote(&vdir, &name, Meta::dir());
        Ok(())
    }

    pub async fn rmdir(&self, path: &VirtualPath) -> Result<(), FsError> {
        let (m, rel) = self.folder(path, "removing directories")?;
        Self::require(m, Permission::Delete, "removing directories")?;
        if rel.is_empty() {
            return Err(FsError::new(
                FsErrorKind::PermissionDenied,
                "the home directory and folders cannot be removed",
            ));
        }
        m.backend.rmdir(&rel).await.map_err(|e| storage(e, path))?;
        tracing::info!(parent: &self.span,activity = "RMDIR", path = %path);
        self.view.forget();
        Ok(())
    }

    /// chmod/chown/utime: a no-op by default, so clients that set times after an upload work.
    pub fn setstat(&self, path: &VirtualPath) -> Result<(), FsError> {
        match self.ctx.setstat {
            SetstatPolicy::Ignore => {
                tracing::info!(parent: &self.span, activity = "SETSTAT", path = %path, outcome = "ignored");
                Ok(())
            }
            SetstatPolicy::Refuse => {
                tracing::info!(parent: &self.span, activity = "SETSTAT", path = %path, outcome = "refused");
                Err(FsError::new(
                    FsErrorKind::PermissionDenied,
                    format!("{path}: changing attributes is not allowed"),
                ))
            }
        }
    }
}
