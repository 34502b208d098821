//! Commit intents: what a session writes down before an object becomes visible, so that a
//! process dying between the storage commit and the arrival event leaves enough for the
//! reconciler to finish the job (announce the object, or say it failed). The intent on a
//! location is also the lock that lets one writer at a time commit it, and the fence: an
//! outcome is recorded only by the instance that holds it. The `CommitJournal` seam is
//! implemented on the database (`journal/`).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Protocol, SessionInfo};
use crate::storage::{Fingerprint, UploadTracker};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntentKind {
    /// An upload's object is being published at `path`.
    Upload,
    /// A file is being renamed from `from_path` to `path` (a temp-name upload arriving, or
    /// a final name renamed onto another).
    Rename,
    /// A decryption's plaintext is being published at `path` (`job` says which).
    Decrypt,
}

/// One commit under way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Intent {
    pub id: String,
    pub kind: IntentKind,
    /// The id of the event that announces the commit, whoever records it (the session, or a
    /// reconciler that took the commit over): one arrival never gets two.
    #[serde(default)]
    pub event_id: String,
    /// The id of the event that says the upload failed, shared the same way (and with the
    /// reconciler's announcement of an interrupted multipart upload).
    #[serde(default)]
    pub failed_event_id: String,
    /// The location (URI) being committed: the lock.
    pub location: String,
    /// The account's home (URI), to rebuild its storage.
    pub home: String,
    /// The target inside the home, and the client's path for it.
    pub path: String,
    pub client_path: String,
    /// A rename's source inside the home, and the client's path for it.
    pub from_path: Option<String>,
    pub from_client_path: Option<String>,
    pub username: String,
    pub session_id: String,
    pub protocol: String,
    pub client_ip: String,
    pub bytes: u64,
    pub sha256: String,
    /// The full-object CRC64NVME S3 holds for a multipart object (base64).
    pub crc64nvme: Option<String>,
    /// The S3 multipart upload being completed.
    pub upload_id: Option<String>,
    pub started_at: DateTime<Utc>,
    /// The folder accepts a name once: remember the location when the arrival is recorded.
    #[serde(default)]
    pub remember_name: bool,
    /// Where the arrival's receipt goes, for a folder with `--receipt`.
    #[serde(default)]
    pub receipt: Option<ReceiptTarget>,
    /// The decryption the arrival asks for, for a PGP file in a folder with `--decrypt-to`.
    #[serde(default)]
    pub decrypt: Option<DecryptTarget>,
    /// For a decryption's plaintext (`IntentKind::Decrypt`): the job it is the outcome of.
    #[serde(default)]
    pub job: Option<DecryptJob>,
    /// Where the content's digest is checked against earlier arrivals (a folder that flags
    /// or refuses duplicates).
    #[serde(default)]
    pub digest: Option<DigestCheck>,
    /// The earlier arrival this content repeats (found under the commit lock), which its
    /// event names.
    #[serde(default)]
    pub duplicate_of: Option<DuplicateOf>,
    /// What the content scan found (its event's `scan` field).
    #[serde(default)]
    pub scan: Option<serde_json::Value>,
}

/// A folder that flags or refuses duplicates: where its arrivals' digests are kept
/// (`scope`, the folder's storage) and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestCheck {
    pub scope: String,
    pub refuse: bool,
    pub window_s: u64,
}

/// The earlier arrival a file's content repeats: its event, its path, when it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateOf {
    pub event_id: String,
    pub path: String,
    pub arrived_at: DateTime<Utc>,
}

/// The decryption job a plaintext commit settles: its arrival's event id, what it decrypts
/// where, and who signed the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecryptJob {
    pub arrival_event_id: String,
    pub target: DecryptTarget,
    pub signer: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// A decryption to run once a file arrived (`pgp/`): where the encrypted file is and where
/// its plaintext goes (each a folder's storage as a home URI, the path inside it, and the
/// path the partner sees).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecryptTarget {
    pub source_home: String,
    pub source_path: String,
    pub source_client_path: String,
    pub target_home: String,
    pub target_path: String,
    pub target_client_path: String,
    /// Only a file signed by one of the account's keys is decrypted.
    pub require_signature: bool,
}

/// Where a receipt is written: a folder's storage (home URI), the path inside it, and the
/// path the partner sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptTarget {
    pub home: String,
    pub path: String,
    pub client_path: String,
}

impl Intent {
    /// The key its content is known by in its folder's digest index: the same bytes (size and
    /// SHA-256) in the same folder.
    pub fn digest_key(&self) -> Option<String> {
        self.digest
            .as_ref()
            .map(|d| format!("{}|{}|{}", d.scope, self.sha256, self.bytes))
    }

    /// Whether the intent asks for more than its clearing when its arrival is recorded (a
    /// name to remember, a receipt to write, a file to decrypt).
    pub fn extras(&self) -> bool {
        self.remember_name || self.receipt.is_some() || self.decrypt.is_some()
    }

    /// Whether what storage holds at the location (`f`) is what this intent commits: the
    /// same size and a whole-file checksum that says so, or (a copy) the intent it was made
    /// under. Size alone never does.
    pub fn matches(&self, f: &Fingerprint) -> bool {
        if f.size != self.bytes {
            return false;
        }
        if f.intent.as_deref() == Some(self.id.as_str()) {
            return true;
        }
        if let (Some(want), Some(got)) = (&self.crc64nvme, &f.crc64nvme) {
            return want == got;
        }
        f.sha256.as_deref() == Some(self.sha256.as_str())
    }

    /// The session the intent was written by, for its event.
    pub fn session(&self) -> SessionInfo {
        SessionInfo {
            id: self.session_id.clone(),
            protocol: if self.protocol == "ftps" {
                Protocol::Ftps
            } else {
                Protocol::Sftp
            },
            client_ip: self
                .client_ip
                .parse()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
            username: self.username.clone(),
        }
    }
}

/// When this instance last proved that it holds an intent: the moment it sent the statement
/// that did (its heartbeat is written with it). Until `dead_after` of the database's time has
/// passed since, no other instance can have taken the intent over.
#[derive(Debug, Clone)]
pub struct Held {
    pub since: std::time::Instant,
    /// The earlier arrival of the same content in the same folder, within its window, when
    /// the intent asked (`digest`): found in the statement that took the lock.
    pub duplicate: Option<DuplicateOf>,
}

/// What became of an intent whose outcome its owner could not record (the intent was not
/// there any more, or the database's answer was lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The event the owner recorded is there: an earlier attempt went through.
    Recorded,
    /// The intent is still the owner's: nothing was recorded yet.
    Held,
    /// Another instance took the intent over and announced the object it found (under the
    /// intent's event id; also what an owner's own staging of a temp name is marked as).
    Announced,
    /// Another instance took it over, found no object, and recorded the upload as failed.
    NotCommitted,
    /// Another instance holds it and has not settled it yet.
    Elsewhere,
    /// Gone, with no outcome kept.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another commit of the same location did not finish in time.
    #[error("another upload of this file is being committed; try again")]
    Busy,
    /// Another instance took this commit over (this one was silent too long: paused, or cut
    /// off from the database); it settles it.
    #[error("the commit was taken over by another server")]
    Taken,
    #[error("commit journal: {0}")]
    Database(String),
}

/// Where intents are kept.
#[async_trait]
pub trait CommitJournal: Send + Sync {
    /// Records `intent`, waiting (a bounded time) while another commit holds its location.
    async fn begin(&self, intent: &Intent) -> Result<Held, JournalError>;
    /// Before a step that cannot be undone (publishing in storage): makes sure the intent is
    /// still this instance's, asking the database only when `held` is too old to be sure.
    async fn confirm(&self, intent: &Intent, held: &mut Held) -> Result<(), JournalError>;
    /// The commit did not happen (or was undone): forgets the intent, if still held.
    /// Failures are logged; the reconciler settles a forgotten intent by looking at storage.
    async fn cancel(&self, intent: &Intent);
    /// Storage's answer was not definite and could not be settled: the reconciler settles
    /// the intent by what storage holds, as if its owner had died.
    async fn hand_over(&self, intent: &Intent);
    /// What became of `intent` (and of its owner's event `event_id`).
    async fn settlement(&self, intent: &Intent, event_id: &str)
        -> Result<Settlement, JournalError>;
    /// Where storage reports multipart uploads in progress.
    fn tracker(&self) -> Option<Arc<dyn UploadTracker>>;
}

/// No journal (tests of the session layer, tools): commits are not journaled.
pub struct NoJournal;

#[async_trait]
impl CommitJournal for NoJournal {
    async fn begin(&self, _intent: &Intent) -> Result<Held, JournalError> {
        Ok(Held {
            since: std::time::Instant::now(),
            duplicate: None,
        })
    }
    async fn confirm(&self, _intent: &Intent, _held: &mut Held) -> Result<(), JournalError> {
        Ok(())
    }
    async fn cancel(&self, _intent: &Intent) {}
    async fn hand_over(&self, _intent: &Intent) {}
    async fn settlement(
        &self,
        _intent: &Intent,
        _event_id: &str,
    ) -> Result<Settlement, JournalError> {
        Ok(Settlement::Unknown)
    }
    fn tracker(&self) -> Option<Arc<dyn UploadTracker>> {
        None
    }
}
