//! The reconciler: on every instance, at start and every `recovery.interval`, finishes what
//! dead instances left (claiming each piece of work for a while, so two instances never do
//! the same), and prunes what is no longer needed.
//!
//! - A commit intent of a dead instance (or one older than 15 minutes, whose clearing was
//!   lost while its instance lives on): if the object there is the one the intent
//!   describes, its arrival is announced (exactly once: the event is recorded in the
//!   transaction that clears the intent, and a rename's source is removed); if it is not,
//!   the commit never happened, and an upload is announced as failed.
//! - A multipart upload a dead instance tracked is aborted and announced as failed; one no
//!   instance tracks, older than `recovery.orphan_grace`, is aborted; so are local temporary
//!   files of that age.
//! - Events whose deliveries are all done, older than `events.retention`, are deleted, and
//!   so are staged temp-name uploads older than `recovery.staged_ttl`.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Journal;
use crate::db::on_pool;
use crate::events::arrivals::OutboxObserver;
use crate::events::outbox::micros;
use crate::events::{Arrival, Event};
use crate::session::{Intent, IntentKind, StagedFacts};
use crate::storage::{Home, LiveUpload, Location, Storage, RESERVED_PREFIX};

/// How long a claimed piece of work is reserved to the instance working on it.
const CLAIM: Duration = Duration::from_secs(300);
/// Work taken per kind and round.
const BATCH: i64 = 100;
/// A commit intent this old is settled even though its instance is alive.
const FORSAKEN_INTENT: Duration = Duration::from_secs(15 * 60);

pub struct Reconciler {
    pub journal: Journal,
    pub storage: Storage,
    pub observer: OutboxObserver,
    /// The homes to sweep for untracked multipart uploads and temp files, besides the
    /// accounts' own: the default home's base.
    pub default_home: Home,
    pub interval: Duration,
    pub orphan_grace: Duration,
    pub staged_ttl: Duration,
    pub retention: Duration,
}

impl Reconciler {
    /// Runs a round now, then every `interval`, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        // The untracked sweeps list buckets and walk directories: not every round.
        let sweep_every = self.orphan_grace.min(Duration::from_secs(600)) / 2;
        let mut last_sweep: Option<tokio::time::Instant> = None;
        loop {
            self.round().await;
            if last_sweep.is_none_or(|t| t.elapsed() >= sweep_every) {
                self.sweep_untracked().await;
                last_sweep = Some(tokio::time::Instant::now());
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// One pass over the dead instances' intents and uploads, and the pruning.
    pub async fn round(&self) {
        match self.stale("commit_intents").await {
            Ok(rows) => {
                for (key, detail) in rows {
                    match serde_json::from_str::<Intent>(&detail) {
                        Ok(i) => self.settle_intent(&i).await,
                        Err(e) => {
                            tracing::error!(location = %key, error = %e, "unreadable commit intent")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read commit intents"),
        }
        match self.stale("live_uploads").await {
            Ok(rows) => {
                for (id, detail) in rows {
                    match serde_json::from_str::<LiveUpload>(&detail) {
                        Ok(u) => self.settle_upload(&u).await,
                        Err(e) => {
                            tracing::error!(upload_id = %id, error = %e, "unreadable live upload")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read live uploads"),
        }
        self.prune().await;
    }

    /// Claims up to `BATCH` rows of `table` whose instance is dead: `(key, detail)`.
    async fn stale(&self, table: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
        let key = if table == "commit_intents" {
            "location"
        } else {
            "id"
        };
        let now = micros(Utc::now());
        let alive_since = now - self.journal.dead_after().as_micros() as i64;
        // A commit takes seconds; an intent this old whose instance still runs lost its
        // clearing (a database error at the wrong moment) and would lock its name for ever.
        let forsaken_before = if table == "commit_intents" {
            now - FORSAKEN_INTENT.as_micros() as i64
        } else {
            i64::MIN
        };
        let candidates: Vec<(String, String)> = on_pool!(self.journal.db(), p => {
            sqlx::query_as(&format!(
                "SELECT t.{key}, t.detail FROM {table} t WHERE t.claim_until_us < $1 \
                 AND (t.created_us < $3 OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = t.instance AND i.heartbeat_us > $2)) \
                 ORDER BY t.created_us LIMIT {BATCH}"
            ))
            .bind(now)
            .bind(alive_since)
            .bind(forsaken_before)
            .fetch_all(p)
            .await?
        });
        let mut claimed = Vec::new();
        for (k, detail) in candidates {
            let _w = self.journal.inner.outbox.writing().await;
            let until = now + CLAIM.as_micros() as i64;
            let n = on_pool!(self.journal.db(), p => sqlx::query(&format!(
                "UPDATE {table} SET claimed_by = $1, claim_until_us = $2 WHERE {key} = $3 AND claim_until_us < $4"
            ))
            .bind(self.journal.instance())
            .bind(until)
            .bind(&k)
            .bind(now)
            .execute(p)
            .await?
            .rows_affected());
            if n == 1 {
                claimed.push((k, detail));
            }
        }
        Ok(claimed)
    }

    /// Finishes a commit a dead instance left: announces what is there, or the failure.
    async fn settle_intent(&self, i: &Intent) {
        let home = match Home::parse_uri(&i.home) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(location = %i.location, error = %e, "commit intent with a bad home");
                return;
            }
        };
        let backend = self.storage.backend(&home);
        let found = match backend.fingerprint(&i.path).await {
            Ok(f) => f,
            // Storage unreachable: try again next round (the claim lapses).
            Err(e) => {
                tracing::warn!(location = %i.location, error = %e, "cannot check a commit left by a dead instance; will retry");
                return;
            }
        };
        let matches = found.as_ref().is_some_and(|f| {
            f.size == i.bytes
                && match (&i.crc64nvme, &f.crc64nvme, &f.sha256) {
                    (Some(want), Some(got), _) => want == got,
                    (None, _, Some(sha)) => *sha == i.sha256,
                    // An S3 copy (a rename) keeps no whole-file checksum we can compare.
                    (None, _, None) => i.kind == IntentKind::Rename,
                    _ => false,
                }
        });
        let session = i.session();
        let location = backend.location(&i.path);
        let key = i.key();
        let outbox = self.observer.outbox();
        let res = if matches {
            let facts = StagedFacts {
                bytes: i.bytes,
                sha256: i.sha256.clone(),
                etag: found.as_ref().and_then(|f| f.etag.clone()),
                started_at: i.started_at,
            };
            let etag = facts.etag.clone();
            match i.kind {
                IntentKind::Upload => self
                    .observer
                    .arrived(
                        &session,
                        &i.client_path,
                        &location,
                        &facts,
                        etag.as_deref(),
                        Some(i),
                    )
                    .await
                    .map_err(|e| e.to_string()),
                IntentKind::Rename => {
                    let from = i.from_path.as_deref().unwrap_or_default();
                    let from_loc = backend.location(from);
                    // The copy is there; the source may still be (S3 copies, then deletes).
                    if let Err(e) = backend.delete(from).await {
                        if e.kind != crate::storage::ErrorKind::NotFound {
                            tracing::warn!(location = %i.location, error = %e, "cannot remove a renamed file's source");
                        }
                    }
                    let event = Event::build(
                        self.observer.source(),
                        &Arrival {
                            session: &session,
                            path: &i.client_path,
                            location: &location,
                            bytes: i.bytes,
                            sha256: Some(&i.sha256),
                            etag: etag.as_deref(),
                            started_at: i.started_at,
                            finished_at: crate::identity::now(),
                            failure: None,
                        },
                    );
                    outbox
                        .record(&event, Some(&from_loc.uri), Some(key))
                        .await
                        .map_err(|e| e.to_string())
                }
            }
        } else {
            match i.kind {
                // The upload never became visible: say so, and leave nothing open.
                IntentKind::Upload => {
                    if let (Some(id), Some(bucket)) = (&i.upload_id, &location.bucket) {
                        crate::storage::s3::abort_multipart(
                            self.storage.s3().client(),
                            bucket,
                            &location.key,
                            id,
                        )
                        .await;
                    }
                    let event = failed_event(
                        self.observer.source(),
                        &session,
                        &i.client_path,
                        &location,
                        i.bytes,
                        i.started_at,
                    );
                    outbox
                        .record(&event, None, Some(key))
                        .await
                        .map_err(|e| e.to_string())
                }
                // The rename never happened: the file is still under its temp name.
                IntentKind::Rename => self.clear((key.0, key.1)).await,
            }
        };
        if res.is_ok() {
            // The intent settled this upload's multipart upload too: it must not also be
            // announced as interrupted.
            if let Some(id) = &i.upload_id {
                self.forget_upload(id).await;
            }
        }
        match res {
            Ok(()) => tracing::warn!(
                activity = "RECOVERED",
                location = %i.location,
                kind = ?i.kind,
                outcome = if matches { "announced" } else { "not committed" },
                "settled a commit left by a dead instance"
            ),
            Err(e) => {
                tracing::error!(location = %i.location, error = %e, "cannot settle a commit left by a dead instance; will retry")
            }
        }
    }

    async fn clear(&self, (location, id): (&str, &str)) -> Result<(), String> {
        let _w = self.journal.inner.outbox.writing().await;
        on_pool!(self.journal.db(), p => sqlx::query("DELETE FROM commit_intents WHERE location = $1 AND id = $2")
            .bind(location).bind(id).execute(p).await.map(drop).map_err(|e| e.to_string()))
    }

    async fn forget_upload(&self, upload_id: &str) {
        let _w = self.journal.inner.outbox.writing().await;
        let _ = on_pool!(self.journal.db(), p => sqlx::query("DELETE FROM live_uploads WHERE id = $1")
            .bind(upload_id).execute(p).await.map(drop));
    }

    /// Whether a commit intent is about this multipart upload (it settles it).
    async fn has_intent(&self, upload_id: &str) -> bool {
        let n: Result<i64, sqlx::Error> = on_pool!(self.journal.db(), p => {
            sqlx::query_scalar("SELECT COUNT(*) FROM commit_intents WHERE detail LIKE $1 ESCAPE '\\'")
                .bind(format!(
                    "%\"upload_id\":\"{}\"%",
                    upload_id.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
                ))
                .fetch_one(p)
                .await
        });
        n.map_or(true, |n| n > 0)
    }

    /// Aborts a multipart upload a dead instance left open and announces the upload failed.
    async fn settle_upload(&self, u: &LiveUpload) {
        if self.has_intent(&u.upload_id).await {
            return; // settled with its intent
        }
        let aborted = crate::storage::s3::abort_multipart(
            self.storage.s3().client(),
            &u.bucket,
            &u.key,
            &u.upload_id,
        )
        .await;
        if !aborted {
            return; // the claim lapses; next round tries again
        }
        let n = &u.note;
        if let Some(username) = n["username"].as_str() {
            let session = crate::session::SessionInfo {
                id: n["session_id"].as_str().unwrap_or_default().to_string(),
                protocol: if n["protocol"] == "ftps" {
                    crate::session::Protocol::Ftps
                } else {
                    crate::session::Protocol::Sftp
                },
                client_ip: n["client_ip"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
                username: username.to_string(),
            };
            let location = Location {
                uri: n["location"].as_str().unwrap_or_default().to_string(),
                bucket: Some(u.bucket.clone()),
                key: u.key.clone(),
            };
            let started_at = n["started_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(Utc::now);
            let event = failed_event(
                self.observer.source(),
                &session,
                n["path"].as_str().unwrap_or_default(),
                &location,
                0,
                started_at,
            );
            if let Err(e) = self.observer.outbox().record(&event, None, None).await {
                tracing::error!(upload_id = %u.upload_id, error = %e, "cannot announce an interrupted upload; will retry");
                return;
            }
        }
        self.forget_upload(&u.upload_id).await;
        tracing::warn!(activity = "RECOVERED", bucket = %u.bucket, key = %u.key, upload_id = %u.upload_id, outcome = "aborted", "aborted a multipart upload left by a dead instance");
    }

    /// Multipart uploads no instance tracks and local temporary files, older than the grace.
    async fn sweep_untracked(&self) {
        let mut homes: Vec<Home> = vec![self.default_home.clone()];
        if let Ok(accounts) = self.homes().await {
            homes.extend(accounts);
        }
        let tracked: HashSet<String> = on_pool!(self.journal.db(), p => {
            sqlx::query_scalar::<_, String>("SELECT id FROM live_uploads").fetch_all(p).await
        })
        .unwrap_or_default()
        .into_iter()
        .collect();
        let cutoff = SystemTime::now() - self.orphan_grace;
        let mut s3_seen = HashSet::new();
        let mut local_seen = HashSet::new();
        for home in homes {
            match &home {
                Home::S3 { bucket, prefix } => {
                    if s3_seen.insert((bucket.clone(), prefix.clone())) {
                        self.sweep_s3(bucket, prefix, &tracked, cutoff).await;
                    }
                }
                Home::Local { dir } => {
                    if local_seen.insert(dir.clone()) {
                        let dir = dir.clone();
                        let removed =
                            tokio::task::spawn_blocking(move || sweep_temp_files(&dir, cutoff))
                                .await
                                .unwrap_or(0);
                        if removed > 0 {
                            tracing::warn!(
                                activity = "RECOVERED",
                                removed,
                                outcome = "removed",
                                "removed stale temporary upload files"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Every account's home and every partner folder's location.
    async fn homes(&self) -> Result<Vec<Home>, sqlx::Error> {
        let rows: Vec<(String, String)> = on_pool!(self.journal.inner.outbox.db(), p => {
            sqlx::query_as("SELECT home, folders FROM accounts").fetch_all(p).await?
        });
        let mut homes = Vec::new();
        for (home, folders) in rows {
            homes.extend(Home::parse_uri(&home).ok());
            if let Ok(folders) = crate::identity::folders::from_column(&folders) {
                homes.extend(folders.into_iter().map(|f| f.home));
            }
        }
        Ok(homes)
    }

    async fn sweep_s3(
        &self,
        bucket: &str,
        prefix: &str,
        tracked: &HashSet<String>,
        cutoff: SystemTime,
    ) {
        let client = self.storage.s3().client();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = match client
                .list_multipart_uploads()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(bucket, prefix, error = %aws_sdk_s3::error::DisplayErrorContext(&e), "cannot list multipart uploads (s3:ListBucketMultipartUploads)");
                    return;
                }
            };
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let old = u
                    .initiated()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .is_some_and(|t| t < cutoff);
                if old
                    && !tracked.contains(id)
                    && crate::storage::s3::abort_multipart(client, bucket, key, id).await
                {
                    tracing::warn!(
                        activity = "RECOVERED",
                        bucket,
                        key,
                        upload_id = id,
                        outcome = "aborted",
                        "aborted an orphaned multipart upload"
                    );
                }
            }
            if page.is_truncated() != Some(true) {
                return;
            }
            key_marker = page.next_key_marker().map(String::from);
            id_marker = page.next_upload_id_marker().map(String::from);
        }
    }

    /// Deletes events whose deliveries are all done and that are older than the retention,
    /// and staged temp-name uploads never renamed.
    async fn prune(&self) {
        let now = Utc::now();
        let events_before = micros(now) - self.retention.as_micros() as i64;
        let staged_before = micros(now) - self.staged_ttl.as_micros() as i64;
        let outbox = self.observer.outbox();
        let _w = outbox.writing().await;
        let res: Result<(u64, u64), sqlx::Error> = on_pool!(outbox.db(), p => async {
            let events = sqlx::query("DELETE FROM events WHERE created_us < $1 AND NOT EXISTS (SELECT 1 FROM event_deliveries d WHERE d.event_seq = events.seq AND d.state = 'pending')")
                .bind(events_before).execute(p).await?.rows_affected();
            let staged = sqlx::query("DELETE FROM staged_uploads WHERE created_us < $1")
                .bind(staged_before).execute(p).await?.rows_affected();
            Ok((events, staged))
        }.await);
        match res {
            Ok((0, 0)) => {}
            Ok((events, staged)) => {
                tracing::info!(events, staged, "pruned old events and staged uploads")
            }
            Err(e) => tracing::warn!(error = %e, "cannot prune old events"),
        }
    }
}

/// A `wharf.upload.failed` for an upload a dead instance left unfinished.
fn failed_event(
    source: &str,
    session: &crate::session::SessionInfo,
    path: &str,
    location: &Location,
    bytes: u64,
    started_at: chrono::DateTime<Utc>,
) -> Event {
    Event::build(
        source,
        &Arrival {
            session,
            path,
            location,
            bytes,
            sha256: None,
            etag: None,
            started_at,
            finished_at: crate::identity::now(),
            failure: Some((
                "interrupted",
                "the server handling the upload stopped before the file was published",
            )),
        },
    )
}

/// Removes `.wharf-upload-*` files older than `cutoff` under `dir`; how many.
fn sweep_temp_files(dir: &std::path::Path, cutoff: SystemTime) -> usize {
    let mut removed = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                dirs.push(e.path());
            } else if m.is_file()
                && e.file_name().to_string_lossy().starts_with(RESERVED_PREFIX)
                && m.modified().is_ok_and(|t| t < cutoff)
                && std::fs::remove_file(e.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}
