//! Events: CloudEvents built from finished uploads, downloads and deletes (`arrivals.rs`)
//! and from decryptions (`pgp/`), written to the database outbox before the client is
//! answered (`outbox.rs`), and delivered
//! at least once, in commit order per account, to every configured sink (`dispatcher.rs`,
//! `sinks/`); what admins list and replay (`query.rs`).

pub mod arrivals;
pub mod dispatcher;
pub mod expectations;
pub mod outbox;
pub mod query;
pub mod sinks;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::json;

use crate::session::{SessionInfo, UploadOutcome, UploadRecord};
use crate::storage::{Location, Stored};

pub const COMPLETED: &str = "wharf.upload.completed";
pub const FAILED: &str = "wharf.upload.failed";
pub const DOWNLOAD_COMPLETED: &str = "wharf.download.completed";
pub const DOWNLOAD_FAILED: &str = "wharf.download.failed";
pub const DELETED: &str = "wharf.file.deleted";
pub const DECRYPT_COMPLETED: &str = "wharf.decrypt.completed";
pub const DECRYPT_FAILED: &str = "wharf.decrypt.failed";
/// A file renamed from one final name onto another: the target now holds the bytes the
/// event describes, and the source name is gone.
pub const RENAMED: &str = "wharf.file.renamed";

/// Whether an event of type `kind` says what a location now holds (its arrival's facts are
/// looked up by location, and its intent's extras apply: a name to remember, …).
pub fn announces(kind: &str) -> bool {
    kind == COMPLETED || kind == RENAMED || kind == DECRYPT_COMPLETED
}

/// The outcome of an arrival's decryption (`pgp/`).
pub struct Decryption<'a> {
    pub username: &'a str,
    pub arrival_event_id: &'a str,
    /// The encrypted file, as the partner named it, and where it is.
    pub source_path: &'a str,
    pub source: &'a Location,
    /// The plaintext's client path and location.
    pub path: &'a str,
    pub target: &'a Location,
    /// The plaintext and its signer's fingerprint, or why there is none (code, message).
    pub outcome: Result<(&'a Stored, Option<&'a str>), (&'a str, String)>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The earlier arrival the plaintext repeats, in a folder that flags duplicates.
    pub duplicate_of: Option<&'a crate::session::DuplicateOf>,
    /// What the plaintext's content scan found, when it was scanned.
    pub scan: Option<&'a serde_json::Value>,
}

/// An event as stored in the outbox and delivered: `body` is the exact CloudEvent JSON that
/// every sink sends (and the webhook signs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub username: String,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub body: String,
    /// The location (URI) an arrival is about, for events that say what a location holds.
    pub location: Option<String>,
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    data: serde_json::Value,
}

/// The fields of `data` shared by completed and failed events.
pub struct Arrival<'a> {
    pub session: &'a SessionInfo,
    pub path: &'a str,
    pub location: &'a Location,
    pub bytes: u64,
    pub sha256: Option<&'a str>,
    pub etag: Option<&'a str>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub failure: Option<(&'a str, &'a str)>,
    /// The earlier arrival this one's content repeats (a folder that flags or refuses
    /// duplicates).
    pub duplicate_of: Option<&'a crate::session::DuplicateOf>,
    /// What the content scan found (`scan`), when the file was scanned.
    pub scan: Option<&'a serde_json::Value>,
}

pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Event {
    /// An upload's event: completed, or failed when `a.failure` says why.
    pub fn build(source: &str, a: &Arrival<'_>) -> Event {
        let kind = if a.failure.is_some() {
            FAILED
        } else {
            COMPLETED
        };
        Event::build_as(source, kind, a)
    }

    /// An event of type `kind` about `subject` for `username`'s pipelines, with `data` as it
    /// is (expected arrivals).
    pub fn other(
        source: &str,
        kind: &str,
        username: &str,
        subject: &str,
        time: DateTime<Utc>,
        data: serde_json::Value,
    ) -> Event {
        let id = uuid::Uuid::now_v7().to_string();
        let ce = CloudEvent {
            specversion: "1.0",
            id: &id,
            source,
            kind,
            subject,
            time: rfc3339(time),
            datacontenttype: "application/json",
            data,
        };
        Event {
            body: serde_json::to_string(&ce).expect("event serialises"),
            id,
            kind: kind.into(),
            username: username.into(),
            subject: subject.into(),
            time,
            location: None,
        }
    }

    /// An event of type `kind` with the data of `a`.
    pub fn build_as(source: &str, kind: &str, a: &Arrival<'_>) -> Event {
        Event::build_with(source, kind, &uuid::Uuid::now_v7().to_string(), a, None)
    }

    /// An event of type `kind` and id `id` with the data of `a` (and, for a rename, where the
    /// file came from: its client path and location).
    pub fn build_with(
        source: &str,
        kind: &str,
        id: &str,
        a: &Arrival<'_>,
        from: Option<(&str, &Location)>,
    ) -> Event {
        let mut data = json!({
            "username": a.session.username,
            "protocol": a.session.protocol.name(),
            "session_id": a.session.id,
            "client_ip": a.session.client_ip.to_string(),
            "path": a.path,
            "location": a.location.uri,
            "bucket": a.location.bucket,
            "key": a.location.key,
            "bytes": a.bytes,
            "sha256": a.sha256,
            "etag": a.etag,
            "started_at": rfc3339(a.started_at),
            "finished_at": rfc3339(a.finished_at),
            "failure_code": a.failure.map(|f| f.0),
            "failure_message": a.failure.map(|f| f.1),
        });
        if let Some(scan) = a.scan {
            data["scan"] = scan.clone();
        }
        if let Some(d) = a.duplicate_of {
            data["duplicate_of"] = json!({
                "event_id": d.event_id,
                "path": d.path,
                "arrived_at": rfc3339(d.arrived_at),
            });
        }
        if let Some((path, loc)) = from {
            data["from_path"] = json!(path);
            data["from_location"] = json!(loc.uri);
            data["from_key"] = json!(loc.key);
        }
        let ce = CloudEvent {
            specversion: "1.0",
            id,
            source,
            kind,
            subject: a.path,
            time: rfc3339(a.finished_at),
            datacontenttype: "application/json",
            data,
        };
        let body = serde_json::to_string(&ce).expect("event serialises");
        Event {
            id: id.to_string(),
            kind: kind.into(),
            username: a.session.username.clone(),
            subject: a.path.into(),
            time: a.finished_at,
            body,
            location: announces(kind).then(|| a.location.uri.clone()),
        }
    }

    /// A decryption's outcome: `wharf.decrypt.completed` or `wharf.decrypt.failed`, with id
    /// `id` (decided with the commit intent of its plaintext, when it has one).
    pub fn decryption(source: &str, id: &str, d: &Decryption<'_>) -> Event {
        let id = id.to_string();
        let (kind, subject) = match d.outcome {
            Ok(_) => (DECRYPT_COMPLETED, d.path),
            Err(_) => (DECRYPT_FAILED, d.source_path),
        };
        let (stored, signer, failure) = match &d.outcome {
            Ok((s, signer)) => (Some(*s), *signer, None),
            Err((code, message)) => (None, None, Some((*code, message.as_str()))),
        };
        let data = json!({
            "username": d.username,
            "arrival_event_id": d.arrival_event_id,
            "source_path": d.source_path,
            "source_location": d.source.uri,
            "source_bucket": d.source.bucket,
            "source_key": d.source.key,
            "path": d.path,
            "location": d.target.uri,
            "bucket": d.target.bucket,
            "key": d.target.key,
            "bytes": stored.map(|s| s.bytes),
            "sha256": stored.map(|s| s.sha256.as_str()),
            "etag": stored.and_then(|s| s.etag.as_deref()),
            "signer_fingerprint": signer,
            "signature": stored.map(|_| if signer.is_some() { "valid" } else { "none" }),
            "started_at": rfc3339(d.started_at),
            "finished_at": rfc3339(d.finished_at),
            "failure_code": failure.map(|f| f.0),
            "failure_message": failure.map(|f| f.1),
        });
        let mut data = data;
        if let Some(scan) = d.scan {
            data["scan"] = scan.clone();
        }
        if let Some(dup) = d.duplicate_of {
            data["duplicate_of"] = json!({
                "event_id": dup.event_id,
                "path": dup.path,
                "arrived_at": rfc3339(dup.arrived_at),
            });
        }
        let ce = CloudEvent {
            specversion: "1.0",
            id: &id,
            source,
            kind,
            subject,
            time: rfc3339(d.finished_at),
            datacontenttype: "application/json",
            data,
        };
        Event {
            id: id.clone(),
            kind: kind.into(),
            username: d.username.into(),
            subject: subject.into(),
            time: d.finished_at,
            body: serde_json::to_string(&ce).expect("event serialises"),
            location: d.outcome.is_ok().then(|| d.target.uri.clone()),
        }
    }

    /// The event for an upload's end (completed with its stored content, or failed).
    pub fn from_record(source: &str, r: &UploadRecord) -> Event {
        Event::from_record_as(source, r, (COMPLETED, FAILED))
    }

    /// The event for a download's end: `r` holds what was sent (its SHA-256 when the client
    /// read the whole file in order) or why it did not complete.
    pub fn from_download(source: &str, r: &UploadRecord) -> Event {
        Event::from_record_as(source, r, (DOWNLOAD_COMPLETED, DOWNLOAD_FAILED))
    }

    fn from_record_as(source: &str, r: &UploadRecord, kinds: (&str, &str)) -> Event {
        match &r.outcome {
            UploadOutcome::Completed(Stored {
                bytes,
                sha256,
                etag,
                location,
            }) => Event::build_with(
                source,
                kinds.0,
                &r.event_id,
                &Arrival {
                    session: &r.session,
                    path: &r.path,
                    location,
                    bytes: *bytes,
                    sha256: (!sha256.is_empty()).then_some(sha256.as_str()),
                    etag: etag.as_deref(),
                    started_at: r.started_at,
                    finished_at: r.finished_at,
                    failure: None,
                    duplicate_of: r.duplicate_of.as_ref(),
                    scan: r.scan.as_ref(),
                },
                None,
            ),
            UploadOutcome::Failed {
                location,
                bytes,
                code,
                message,
            } => Event::build_with(
                source,
                kinds.1,
                &r.event_id,
                &Arrival {
                    session: &r.session,
                    path: &r.path,
                    location,
                    bytes: *bytes,
                    sha256: None,
                    etag: None,
                    started_at: r.started_at,
                    finished_at: r.finished_at,
                    failure: Some((code, message)),
                    duplicate_of: r.duplicate_of.as_ref(),
                    scan: r.scan.as_ref(),
                },
                None,
            ),
        }
    }
}

/// `wharf://<hostname>` unless `[events] source` says otherwise.
pub fn default_source() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("wharf://{host}")
}
