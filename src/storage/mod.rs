//! Where accounts' files live: the `Backend` seam (S3 and local directories), streaming
//! `Upload`s, and home URIs. Storage knows paths inside a home, never protocols.

mod home;
pub mod local;
pub mod s3;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use home::{Home, HomeError};
pub use local::LocalBackend;
pub use s3::{S3Backend, S3Storage};

/// Names that wharf uses for its own in-progress files; never shown to or accepted from clients.
pub const RESERVED_PREFIX: &str = ".wharf-upload-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    NotEmpty,
    IsDirectory,
    NotDirectory,
    InvalidName,
    Unsupported,
    /// The storage service failed or could not be reached.
    Unavailable,
    /// The upload was abandoned (client gone, shutdown) before commit.
    Aborted,
    /// The server cannot take this on now (its upload memory, a connection's share of it);
    /// the message says what, and the client may retry.
    Busy,
    /// Another upload of the same name replaced this one in storage before it was published
    /// (S3 servers such as garage keep the upload started last).
    Superseded,
    /// Storage's answer to a commit was not definite (a timeout, a 5xx, a reset connection)
    /// and what it holds could not be read either: the commit may or may not have happened.
    Indeterminate,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StorageError {
    pub kind: ErrorKind,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StorageError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        StorageError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StorageError {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What `stat` and `list` know about a file or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub is_dir: bool,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

impl Meta {
    pub fn dir() -> Meta {
        Meta {
            is_dir: true,
            size: 0,
            modified: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub meta: Meta,
}

/// Where a committed file is, in the terms pipelines use (event `location`, `bucket`, `key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub uri: String,
    pub bucket: Option<String>,
    pub key: String,
}

/// A committed upload.
#[derive(Clone, PartialEq, Eq)]
pub struct Stored {
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the whole content, computed while streaming.
    pub sha256: String,
    pub etag: Option<String>,
    pub location: Location,
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Stored({} bytes, {}, {})",
            self.bytes, self.sha256, self.location.uri
        )
    }
}

/// One account home's files. Paths are relative to the home (`""` is the home itself,
/// `a/b/c.csv` a file), already normalised by the session's jail; a backend never addresses
/// anything outside its home.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The event location of `path`.
    fn location(&self, path: &str) -> Location;
    /// Whether each request goes over the network (S3): worth a session's short-lived view
    /// of what it listed, where a local `stat` is cheaper than any bookkeeping.
    fn remote(&self) -> bool {
        false
    }
    async fn stat(&self, path: &str) -> Result<Meta>;
    /// The entries of `dir`, a page at a time (at most `LIST_PAGE` each), so a directory of a
    /// million objects costs one page of memory and its first entries come at once. A missing
    /// directory is `NotFound` here, not on the first page.
    async fn open_dir(&self, dir: &str) -> Result<Box<dyn DirStream>>;
    /// Every entry of `dir`, sorted by name (all pages of `open_dir`; for small directories).
    async fn list(&self, dir: &str) -> Result<Vec<DirEntry>> {
        let mut stream = self.open_dir(dir).await?;
        let mut out = Vec::new();
        while let Some(page) = stream.next_page().await? {
            out.extend(page);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
    /// Up to `len` bytes at `offset`; empty at or past the end.
    async fn read(&self, path: &str, offset: u64, len: u32) -> Result<Bytes>;
    async fn delete(&self, path: &str) -> Result<()>;
    /// Replaces `to` if it is a file. Says the ETag of the object now at `to`, where the
    /// backend has one (S3 copies it to a new key, which gets its own).
    async fn rename(&self, from: &str, to: &str, ctx: &RenameContext) -> Result<Renamed>;
    async fn mkdir(&self, dir: &str) -> Result<()>;
    /// Removes an empty directory.
    async fn rmdir(&self, dir: &str) -> Result<()>;
    /// Starts a streaming upload; nothing is visible at `path` until `commit`.
    async fn begin_upload(&self, path: &str, ctx: UploadContext) -> Result<Box<dyn Upload>>;
    /// What identifies the content at `path` (its size and whatever checksums storage keeps),
    /// to tell after a crash whether a commit happened; `None` when nothing is there.
    async fn fingerprint(&self, path: &str) -> Result<Option<Fingerprint>>;
    /// Size and free space of what holds the home, where that is finite (a local file
    /// system); `None` for storage without a capacity (S3).
    async fn capacity(&self) -> Result<Option<Capacity>> {
        Ok(None)
    }
    /// Aborts the storage upload `upload_id` at `path` (an S3 multipart upload), for the
    /// reconciler.
    async fn abort_pending(&self, _path: &str, _upload_id: &str) -> Abort {
        Abort::Gone
    }
    /// The storage uploads in progress at exactly `path` (S3 multipart upload ids).
    async fn pending_uploads(&self, _path: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// What aborting a storage upload came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// Aborted now: it can never complete.
    Done,
    /// Storage has no such upload (completed or aborted already).
    Gone,
    /// Storage kept failing; it may still be there.
    Failed,
}

/// What a rename is done with besides its paths.
#[derive(Clone, Default)]
pub struct RenameContext {
    /// Refuse (`Unavailable`, as a failed precondition) unless the source still has this
    /// ETag, so facts known of it describe what is renamed (S3; local files have no ETag).
    pub if_match: Option<String>,
    /// The commit intent the rename is made under, recorded with the copy where storage
    /// copies (S3 object metadata), so a reconciler tells the copy from an older object.
    pub intent: Option<String>,
    /// Told about a copy that outlives a request (an S3 multipart copy of a large object).
    pub tracker: Option<Arc<dyn UploadTracker>>,
    /// Who is renaming, as the tracker keeps it.
    pub note: serde_json::Value,
}

/// A rename done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renamed {
    /// The ETag of the object now at the target, where storage has one.
    pub etag: Option<String>,
    /// The target holds the source's content but the source could not be removed (an S3
    /// copy whose delete kept failing).
    pub source_left: bool,
}

/// Whole parts one connection may be filling at once (reserved from the upload memory and not
/// yet sent).
pub const MAX_FILLING_PARTS: usize = 8;

/// The uploads of one connection, for the upload memory they hold. A connection's requests
/// are served in order, so an upload of it that waits for memory also holds up its other
/// uploads: while they hold parts being filled, it waits only `FILL_WAIT` before giving up,
/// and it never holds more than `MAX_FILLING_PARTS` of them.
pub struct UploadScope {
    filling: Arc<tokio::sync::Semaphore>,
}

impl UploadScope {
    pub fn new() -> Arc<Self> {
        Arc::new(UploadScope {
            filling: Arc::new(tokio::sync::Semaphore::new(MAX_FILLING_PARTS)),
        })
    }

    /// Parts this connection's uploads are filling now.
    pub fn filling(&self) -> usize {
        MAX_FILLING_PARTS - self.filling.available_permits()
    }
}

/// What storage says of an object's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub size: u64,
    /// Lower-case hex SHA-256 of the whole content, where storage has it (an S3 object put
    /// in one request, a local file read through).
    pub sha256: Option<String>,
    /// The full-object CRC64NVME (base64) of an S3 multipart object.
    pub crc64nvme: Option<String>,
    pub etag: Option<String>,
    /// The commit intent a copy was made under (a rename on S3), where storage keeps it.
    pub intent: Option<String>,
}

/// What `statvfs` reports of a file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub block_size: u64,
    pub total: u64,
    pub free: u64,
    /// Free for an unprivileged writer, which wharf is.
    pub available: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u64,
}

/// Entries a directory page holds at most.
pub const LIST_PAGE: usize = 500;

/// A directory being listed (`Backend::open_dir`).
#[async_trait]
pub trait DirStream: Send {
    /// The next entries, or `None` after the last. S3 pages come in key order; a local
    /// directory's in the order the file system keeps them.
    async fn next_page(&mut self) -> Result<Option<Vec<DirEntry>>>;
    /// Whether every page has been handed out (known without another request).
    fn done(&self) -> bool;
}

/// What an upload is started with besides its path.
#[derive(Clone)]
pub struct UploadContext {
    /// The connection's share of the upload memory (see `UploadScope`).
    pub scope: Arc<UploadScope>,
    /// Told about storage uploads that outlive a request (S3 multipart uploads), so those a
    /// dead process leaves can be found and aborted.
    pub tracker: Option<Arc<dyn UploadTracker>>,
    /// Who is uploading, as the tracker keeps it (opaque to storage).
    pub note: serde_json::Value,
}

impl UploadContext {
    /// No tracker: for tests and tools.
    pub fn untracked() -> Self {
        UploadContext {
            scope: UploadScope::new(),
            tracker: None,
            note: serde_json::Value::Null,
        }
    }
}

/// An S3 multipart upload in progress, as the tracker records it. `note["kind"]` says what
/// it is for: an upload (none, or `"upload"`: a failed event is announced if it is cut off),
/// a rename's copy (`"copy"`) or a decryption's plaintext (`"decrypt"`): those are only
/// aborted.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LiveUpload {
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub note: serde_json::Value,
}

/// Keeps the list of storage uploads in progress where a reconciler can find them. wharf
/// only ever aborts uploads listed here: an upload under a shared prefix that no row names
/// (a pipeline's own) is left alone.
#[async_trait]
pub trait UploadTracker: Send + Sync {
    /// Called before a multipart upload is created at `upload.bucket`/`upload.key`, under a
    /// placeholder `upload.upload_id` (`creating:…`), so that one whose process dies before
    /// `started` is still known to be wharf's. An error fails the upload, and leaves no row
    /// even when the insert was made and only its answer was lost.
    async fn creating(&self, upload: &LiveUpload) -> Result<(), String>;
    /// The placeholder `pending` is now the multipart upload `upload_id`. An error fails the
    /// upload; the renaming may have been made all the same, so once the upload is aborted
    /// both names are `ended`.
    async fn started(&self, pending: &str, upload_id: &str) -> Result<(), String>;
    /// The upload was completed or aborted.
    async fn ended(&self, upload_id: &str);
}

/// The placeholder a multipart upload is tracked under until S3 names it.
pub fn creating_id() -> String {
    format!("creating:{}", uuid::Uuid::now_v7().simple())
}

/// Everything received is in storage and nothing is visible yet: what `commit` will publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the whole content.
    pub sha256: String,
    /// The full-object CRC64NVME (base64) S3 checks a multipart upload against.
    pub crc64nvme: Option<String>,
    /// The S3 multipart upload the commit completes.
    pub upload_id: Option<String>,
}

/// A streaming upload. Dropping it without `commit` aborts it.
#[async_trait]
pub trait Upload: Send {
    /// Appends bytes. Waits only when the upload's memory budget is used up (backpressure).
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Makes the bytes written so far as durable as the backend can before `commit` (an
    /// SFTP client's fsync). Nothing becomes visible. The default does nothing: on S3 the
    /// bytes are in parts being uploaded or in memory, and an upload that never commits is
    /// aborted whatever was synced.
    async fn sync(&mut self) -> Result<()> {
        Ok(())
    }
    /// Puts everything written into storage without making it visible (the last part sent,
    /// the temporary file synced) and says what the commit will publish. Writing after it
    /// fails.
    async fn seal(&mut self) -> Result<Sealed>;
    /// Makes the content visible at its path, atomically (sealing it first if need be).
    async fn commit(self: Box<Self>) -> Result<Stored>;
    /// Discards everything written; leaves nothing behind.
    async fn abort(self: Box<Self>);
}

/// Builds the backend for an account's home, sharing clients and memory budgets.
#[derive(Clone)]
pub struct Storage {
    s3: Arc<S3Storage>,
}

impl Storage {
    pub fn new(s3: S3Storage) -> Self {
        Storage { s3: Arc::new(s3) }
    }

    pub fn backend(&self, home: &Home) -> Arc<dyn Backend> {
        match home {
            Home::S3 { bucket, prefix } => Arc::new(S3Backend::new(
                self.s3.clone(),
                bucket.clone(),
                prefix.clone(),
            )),
            Home::Local { dir } => Arc::new(LocalBackend::new(dir.clone())),
        }
    }

    pub fn s3(&self) -> &S3Storage {
        &self.s3
    }

    /// Whether the storage behind `home` answers (readiness): its bucket exists and the
    /// credentials reach it, or its local directory exists or can be created.
    pub async fn probe(&self, home: &Home) -> Result<()> {
        match home {
            Home::S3 { bucket, .. } => self.s3.probe(bucket).await,
            Home::Local { dir } => local::probe(dir).await,
        }
    }
}

/// A running SHA-256 of an upload, shared by the backends. aws-lc's assembly runs about 1.7×
/// the speed of the `sha2` crate on CPUs without SHA extensions, and every uploaded byte goes
/// through it.
#[derive(Clone)]
pub(crate) struct ContentHash(aws_lc_rs::digest::Context);

impl Default for ContentHash {
    fn default() -> Self {
        ContentHash(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
}

impl ContentHash {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn hex(self) -> String {
        hex::encode(self.digest())
    }

    pub fn digest(self) -> [u8; 32] {
        let d = self.0.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}
