//! The protocol-neutral file operations both front-ends call: every path through the jail
//! to its folder, every operation checked against that folder's permissions and rules,
//! storage errors turned into the four outcomes a client can be told. Commits (closes and
//! renames onto final names) are `commit.rs`; downloads `read.rs`.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::intent::JournalError;
use super::path::{PathError, VirtualPath};
use super::upload::{UploadError, UploadPipeline};
use super::view::Known;
use super::{Mount, Session};
use crate::config::SetstatPolicy;
use crate::identity::Permission;
use crate::storage::{Capacity, DirEntry, DirStream, ErrorKind, Meta, StorageError, UploadContext};

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

    pub(super) fn denied(what: &str, perm: Permission) -> Self {
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
pub(super) fn storage(e: StorageError, path: &VirtualPath) -> FsError {
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
        ErrorKind::Indeterminate => {
            tracing::error!(activity = "ERROR", path = %path, error = %error_chain(&e), "storage's answer was not definite");
            format!("{path}: {UNCONFIRMED}")
        }
    };
    FsError::new(kind, message)
}

/// What a client is told when the outcome of its commit could not be settled in time.
pub(super) const UNCONFIRMED: &str = "the outcome could not be confirmed (storage or the database did not answer in time); the file is announced if it was stored: check before sending it again";

/// A commit that could not be journaled: the client may retry.
pub(super) fn journal_error(e: JournalError, path: &VirtualPath) -> FsError {
    match e {
        JournalError::Busy | JournalError::Taken => {
            FsError::new(FsErrorKind::Failure, format!("{path}: {e}"))
        }
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
pub(super) fn split_parent(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

/// The session view's key for a client path: its parent directory and name, as the client
/// sees them (so two folders' directories never share an entry).
pub(super) fn view_key(path: &VirtualPath) -> (String, String) {
    (
        path.parent().to_string(),
        path.file_name().unwrap_or_default().to_string(),
    )
}

/// Where a client path lives.
pub(super) enum Place<'a> {
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
    pub(super) upload: Option<OpenUpload>,
    session: Arc<Session>,
}

pub(super) struct OpenUpload {
    pub(super) pipeline: UploadPipeline,
    pub(super) location: crate::storage::Location,
    pub(super) started_at: DateTime<Utc>,
    pub(super) started: Instant,
    /// The id of this upload's failed event, whoever records it (this session, or the
    /// reconciler of an instance that took its multipart upload over): one upload never gets
    /// two.
    pub(super) failed_event_id: String,
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

impl Session {
    pub(super) fn require(m: &Mount, perm: Permission, what: &str) -> Result<(), FsError> {
        if m.permissions.has(perm) {
            Ok(())
        } else {
            Err(FsError::denied(what, perm))
        }
    }

    /// Where `path` lives: in which folder, or above them; a path in neither does not exist.
    pub(super) fn place(&self, path: &VirtualPath) -> Result<Place<'_>, FsError> {
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
    pub(super) fn folder(
        &self,
        path: &VirtualPath,
        what: &str,
    ) -> Result<(&Mount, String), FsError> {
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
    pub(super) fn check_name(&self, m: &Mount, path: &VirtualPath) -> Result<(), FsError> {
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
    pub(super) async fn check_reuse(
        &self,
        m: &Mount,
        rel: &str,
        path: &VirtualPath,
    ) -> Result<(), FsError> {
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
        let failed_event_id = uuid::Uuid::now_v7().to_string();
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
                "event_id": failed_event_id,
            }),
        };
        let upload = m
            .backend
            .begin_upload(&rel, ctx)
            .await
            .map_err(|e| storage(e, path))?;
        // Scanned as the bytes arrive (waiting here while scan.max_concurrent run).
        let scan = match (
            &self.ctx.scanner,
            m.rules.scan.unwrap_or(self.ctx.scan.by_default),
        ) {
            (Some(s), true) => Some(s.start().await),
            _ => None,
        };
        tracing::info!(parent: &self.span,activity = "OPEN", path = %path, mode = "write");
        Ok(WriteFile {
            path: path.clone(),
            upload: Some(OpenUpload {
                pipeline: UploadPipeline::start(
                    upload,
                    location.uri.clone(),
                    &self.ctx.uploads,
                    self.quota.reorder.clone(),
                    scan,
                ),
                location,
                started_at,
                started: Instant::now(),
                failed_event_id,
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
