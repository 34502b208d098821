//! A logged-in partner's session, shared by every protocol: who it is, its jailed view of
//! its home or its folders (`VirtualPath`, `Mount`), their permissions, and the file
//! operations of `fs.rs` with the streaming upload pipeline of `upload.rs`; plus the
//! admission every listener shares (`limits.rs`: connection limits, and the PROXY protocol
//! header of `proxy.rs`).

pub mod checksum;
pub mod commit;
pub mod fs;
pub mod intent;
pub mod limits;
pub mod listener;
pub mod path;
pub mod proxy;
pub mod read;
pub mod targets;
pub mod upload;
pub mod view;

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::SetstatPolicy;
use crate::identity::Account;
use crate::storage::{Backend, Stored};

pub use fs::{DirListing, FsError, FsErrorKind, WriteFile};
pub use intent::{
    CommitJournal, DigestCheck, DuplicateOf, Held, Intent, IntentKind, JournalError, NoJournal,
    Settlement,
};
pub use path::VirtualPath;
pub use read::ReadFile;
pub use upload::UploadRegistry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Sftp,
    Ftps,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Sftp => "sftp",
            Protocol::Ftps => "ftps",
        }
    }
}

/// Who is connected, for logs and events.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: String,
    pub protocol: Protocol,
    pub client_ip: IpAddr,
    pub username: String,
}

/// A finished or failed upload, as the observer sees it.
#[derive(Debug, Clone)]
pub struct UploadRecord {
    /// The id its event gets: decided before it is recorded, so a retry after a lost answer
    /// finds it.
    pub event_id: String,
    /// What the content scan found (the event's `scan` field), when the file was scanned.
    pub scan: Option<serde_json::Value>,
    /// The earlier arrival whose content this one repeats (a folder that flags or refuses
    /// duplicates), for its event.
    pub duplicate_of: Option<intent::DuplicateOf>,
    pub session: SessionInfo,
    /// The client-visible path, `/in/x.csv`.
    pub path: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: UploadOutcome,
}

#[derive(Debug, Clone)]
pub enum UploadOutcome {
    Completed(Stored),
    Failed {
        location: crate::storage::Location,
        bytes: u64,
        code: &'static str,
        message: String,
    },
}

/// Why an arrival could not be recorded (the client's close or rename then fails).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The database holding the events did not take it.
    #[error("arrival record: {0}")]
    Unavailable(String),
    /// A temp-name upload renamed to its final name, with nothing known of its content.
    #[error("the arriving file's size and SHA-256 are unknown")]
    UnknownFacts,
}

/// What is known of a temp-name upload until the rename that makes it arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFacts {
    pub bytes: u64,
    pub sha256: String,
    pub etag: Option<String>,
    pub started_at: DateTime<Utc>,
    /// What the content scan found when it was uploaded (its arrival's `scan` field).
    pub scan: Option<serde_json::Value>,
}

/// Told about every upload's end. `completed` runs before the client's close is answered and
/// its error fails the close: this is where the durable arrival record is written, and the
/// commit's intent cleared with it. Every record made under an intent is fenced: it is made
/// only if this instance still holds the intent, and says so (`Ok(false)`: another instance
/// took the commit over, or an earlier attempt whose answer was lost made it).
#[async_trait]
pub trait UploadObserver: Send + Sync {
    /// Records a completed upload (event id `record.event_id`): its arrival event, or under
    /// a temp name the facts its rename will need.
    async fn completed(
        &self,
        record: &UploadRecord,
        intent: Option<&Intent>,
    ) -> Result<bool, RecordError>;
    /// Records a failed upload (event id `record.event_id`, shared with whoever else may
    /// announce the same failure); with `intent`, only while this instance holds it, which
    /// it clears.
    async fn failed(&self, record: &UploadRecord, intent: Option<&Intent>);
    /// A file was renamed (`(client path, location)` before and after; `etag` of the object
    /// at its new location, where storage has one). A rename onto a final name arrives here
    /// with `facts` of its content and the `intent` it was committed under (whose
    /// `event_id` its event gets). Runs before the client is answered.
    async fn renamed(
        &self,
        session: &SessionInfo,
        from: (&str, &crate::storage::Location),
        to: (&str, &crate::storage::Location),
        etag: Option<&str>,
        facts: Option<&StagedFacts>,
        intent: Option<&Intent>,
    ) -> Result<bool, RecordError>;
    /// Whether `path` is a temporary name (its upload arrives only when renamed).
    fn is_temp(&self, _path: &str) -> bool {
        false
    }
    /// Whether a file ever arrived at `location` (for folders that accept a name once).
    async fn arrived_before(
        &self,
        _location: &crate::storage::Location,
    ) -> Result<bool, RecordError> {
        Ok(false)
    }
    /// The name a file will arrive under: `name` without a temp suffix (`x.csv.filepart` ->
    /// `x.csv`), so folder rules judge what the pipeline will see.
    fn final_name<'a>(&self, name: &'a str) -> &'a str {
        name
    }
    /// What is known of the temp-name upload at `location`.
    async fn staged(
        &self,
        _location: &crate::storage::Location,
    ) -> Result<Option<StagedFacts>, RecordError> {
        Ok(None)
    }
    /// What the last arrival announced at `location` held.
    async fn last_arrival(
        &self,
        _location: &crate::storage::Location,
    ) -> Result<Option<StagedFacts>, RecordError> {
        Ok(None)
    }
    /// A file was deleted by the partner. Failures are logged, not reported: the file is
    /// gone either way.
    async fn removed(&self, session: &SessionInfo, path: &str, location: &crate::storage::Location);
    /// A download ended: `record` holds what was sent (`Completed`, its `sha256` empty when
    /// the client did not read the file in order) or why it did not complete (`Failed`).
    async fn downloaded(&self, _record: &UploadRecord) {}
}

/// Logs uploads and records nothing (no event outbox configured).
pub struct LogOnlyObserver;

#[async_trait]
impl UploadObserver for LogOnlyObserver {
    async fn completed(
        &self,
        _record: &UploadRecord,
        _intent: Option<&Intent>,
    ) -> Result<bool, RecordError> {
        Ok(true)
    }
    async fn failed(&self, _record: &UploadRecord, _intent: Option<&Intent>) {}
    async fn renamed(
        &self,
        _session: &SessionInfo,
        _from: (&str, &crate::storage::Location),
        _to: (&str, &crate::storage::Location),
        _etag: Option<&str>,
        _facts: Option<&StagedFacts>,
        _intent: Option<&Intent>,
    ) -> Result<bool, RecordError> {
        Ok(true)
    }
    async fn removed(
        &self,
        _session: &SessionInfo,
        _path: &str,
        _location: &crate::storage::Location,
    ) {
    }
}

/// What every session of this process shares.
pub struct SessionContext {
    pub uploads: Arc<UploadRegistry>,
    pub observer: Arc<dyn UploadObserver>,
    pub journal: Arc<dyn CommitJournal>,
    pub setstat: SetstatPolicy,
    /// File name suffixes of PGP files (`pgp.suffixes`), decrypted in folders that say where.
    pub pgp_suffixes: Vec<String>,
    /// How long a close waits for an outcome that was not definite to be settled
    /// (`recovery.settle_wait`).
    pub settle_wait: std::time::Duration,
    /// Malware scanning before commit, when `scan.clamd` is set.
    pub scanner: Option<Arc<dyn crate::scan::Scanner>>,
    /// `[scan]`: what a file that could not be judged meets, and who is scanned by default.
    pub scan: crate::config::ScanConfig,
}

/// Open files (handles) one connection may hold, over all its SFTP channels.
pub const MAX_OPEN_FILES: usize = 256;

/// What one connection may hold, shared by all its sessions (an SSH connection opens one per
/// SFTP channel): open files, and out-of-order write bytes.
pub struct ConnectionQuota {
    open_files: std::sync::atomic::AtomicUsize,
    reorder: Arc<tokio::sync::Semaphore>,
    uploads: Arc<crate::storage::UploadScope>,
}

impl ConnectionQuota {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnectionQuota {
            open_files: std::sync::atomic::AtomicUsize::new(0),
            reorder: UploadRegistry::connection_reorder_budget(),
            uploads: crate::storage::UploadScope::new(),
        })
    }

    /// One more open file, or `None` at `MAX_OPEN_FILES`. Freed when the slot is dropped.
    pub fn open_file(self: &Arc<Self>) -> Option<FileSlot> {
        use std::sync::atomic::Ordering;
        self.open_files
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_OPEN_FILES).then_some(n + 1)
            })
            .ok()
            .map(|_| FileSlot(self.clone()))
    }

    pub fn open_files(&self) -> usize {
        self.open_files.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// One open file counted against its connection's `MAX_OPEN_FILES`.
pub struct FileSlot(Arc<ConnectionQuota>);

impl Drop for FileSlot {
    fn drop(&mut self) {
        self.0
            .open_files
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// One folder a session sees: the account's home at `/` for an account without folders, or
/// each of its folders (`wharf user dir`) at its path.
pub struct Mount {
    pub path: path::VirtualPath,
    pub home: crate::storage::Home,
    pub permissions: crate::identity::Permissions,
    pub rules: crate::identity::folders::Rules,
    backend: Arc<dyn Backend>,
}

impl Mount {
    /// The folders `account` sees, on `storage`.
    pub fn of(account: &Account, storage: &crate::storage::Storage) -> Vec<Mount> {
        if account.folders.is_empty() {
            return vec![Mount {
                path: path::VirtualPath::root(),
                home: account.home.clone(),
                permissions: account.permissions,
                rules: crate::identity::folders::Rules {
                    decrypt_to: account.pgp.decrypt_to.clone(),
                    require_signature: account.pgp.require_signature,
                    ..account.rules.clone()
                },
                backend: storage.backend(&account.home),
            }];
        }
        account
            .folders
            .iter()
            .map(|f| Mount {
                path: f.path.clone(),
                home: f.home.clone(),
                permissions: f.permissions,
                rules: f.rules.clone(),
                backend: storage.backend(&f.home),
            })
            .collect()
    }
}

/// One authenticated partner session.
pub struct Session {
    pub info: SessionInfo,
    pub account: Account,
    /// Shared with the connection's other sessions.
    pub quota: Arc<ConnectionQuota>,
    /// What the partner sees: its home, or its folders.
    mounts: Vec<Mount>,
    ctx: Arc<SessionContext>,
    /// What this session listed and wrote a moment ago (remote storage only).
    view: view::View,
    /// Parent of every activity line, so each carries who did it.
    span: tracing::Span,
}

impl Session {
    pub fn new(
        info: SessionInfo,
        account: Account,
        mounts: Vec<Mount>,
        ctx: Arc<SessionContext>,
        quota: Arc<ConnectionQuota>,
    ) -> Self {
        let span = tracing::info_span!(
            "session",
            session_id = %info.id,
            protocol = info.protocol.name(),
            client_ip = %info.client_ip,
            username = %info.username,
        );
        Session {
            info,
            account,
            quota,
            mounts,
            view: view::View::default(),
            ctx,
            span,
        }
    }
}

impl Session {
    /// Runs upload bookkeeping (an abort from a `Drop`) where shutdown will wait for it.
    pub fn spawn_upload_task<F>(self: Arc<Self>, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.ctx.uploads.tasks.spawn_on(fut, &rt);
        }
    }
}
