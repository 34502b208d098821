//! Commit intents: what a session writes down before an object becomes visible, so that a
//! process dying between the storage commit and the arrival event leaves enough for the
//! reconciler to finish the job (announce the object, or say it failed). The intent on a
//! location is also the lock that lets one writer at a time commit it. The `CommitJournal`
//! seam is implemented on the database (`journal/`).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Protocol, SessionInfo};
use crate::storage::UploadTracker;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntentKind {
    /// An upload's object is being published at `path`.
    Upload,
    /// A file is being renamed from `from_path` to `path` (a temp-name upload arriving).
    Rename,
}

/// One commit under way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Intent {
    pub id: String,
    pub kind: IntentKind,
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
    /// What an arrival's event transaction settles: the intent to clear, and whether it also
    /// asks for more (a name to remember, a receipt to write, a file to decrypt).
    pub fn key(&self) -> (&str, &str, bool) {
        (
            self.location.as_str(),
            self.id.as_str(),
            self.remember_name || self.receipt.is_some() || self.decrypt.is_some(),
        )
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

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another commit of the same location did not finish in time.
    #[error("another upload of this file is being committed; try again")]
    Busy,
    #[error("commit journal: {0}")]
    Database(String),
}

/// Where intents are kept.
#[async_trait]
pub trait CommitJournal: Send + Sync {
    /// Records `intent`, waiting (a bounded time) while another commit holds its location.
    async fn begin(&self, intent: &Intent) -> Result<(), JournalError>;
    /// The commit did not happen (or was undone): forgets the intent. Failures are logged;
    /// the reconciler settles a forgotten intent by looking at storage.
    async fn cancel(&self, intent: &Intent);
    /// Where storage reports multipart uploads in progress.
    fn tracker(&self) -> Option<Arc<dyn UploadTracker>>;
}

/// No journal (tests of the session layer, tools): commits are not journaled.
pub struct NoJournal;

#[async_trait]
impl CommitJournal for NoJournal {
    async fn begin(&self, _intent: &Intent) -> Result<(), JournalError> {
        Ok(())
    }
    async fn cancel(&self, _intent: &Intent) {}
    fn tracker(&self) -> Option<Arc<dyn UploadTracker>> {
        None
    }
}
