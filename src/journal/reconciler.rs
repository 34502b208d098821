//! The reconciler: on every instance, at start and every `recovery.interval`, takes over and
//! finishes what dead instances left, and prunes what is no longer needed. "Dead" is judged
//! by the database's clock alone (an instance silent for its own lapse: three of its
//! heartbeats), only by an instance that has itself been heard from for that long, and never
//! of itself. Taking work over moves it to this instance in one conditional statement, so
//! the instance it came from — alive after all (paused, cut off) — can no longer record an
//! outcome for it (`journal/`: the fence).
//!
//! - A commit intent of a dead instance (or one older than 15 minutes, whose clearing was
//!   lost while its instance lives on, or one its instance handed over after an answer that
//!   was not definite): if what storage holds there is what the intent describes (a checksum
//!   or the copy's intent id says so; size alone never does), its arrival is announced; if
//!   not, the commit never happened: an upload's multipart upload is aborted and the upload
//!   announced as failed. Either way with the intent's own event ids, so its first owner can
//!   never add a second, and with the outcome kept for that owner.
//! - A multipart upload a dead instance tracked is aborted (and, for an upload, announced as
//!   failed with the upload's own failed-event id); one it was about to create is looked for
//!   at its exact key. Multipart uploads no row names are never touched: a prefix may be
//!   shared with a pipeline's own uploads. Local temporary files (wharf's own reserved names)
//!   older than `recovery.orphan_grace` are removed.
//! - Events whose deliveries are all done, older than `events.retention`, are deleted, and
//!   so are staged temp-name uploads older than `recovery.staged_ttl`, kept outcomes, and
//!   arrivals' digests past their folder's duplicate window.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Journal;
use crate::db::on_pool;
use crate::events::arrivals::OutboxObserver;
use crate::events::outbox::{ANNOUNCED, NOT_COMMITTED};
use crate::events::{Arrival, Event};
use crate::session::{Intent, IntentKind, StagedFacts};
use crate::storage::{Abort, Home, LiveUpload, Location, Storage, RESERVED_PREFIX};

/// How long a piece of work this instance took over waits before it is tried again, when
/// settling it failed (storage unreachable).
const RETRY: Duration = Duration::from_secs(60);
/// Work taken per kind and round.
const BATCH: i64 = 100;
/// A commit intent this old is settled even though its instance is alive.
const FORSAKEN_INTENT: Duration = Duration::from_secs(15 * 60);

/// Whether the row `t` of another instance may be taken over (`$1` this instance, `$2` the
/// lapse of an instance that recorded none, `$3` the age at which a commit intent is settled
/// anyway, `$4` how long this instance has itself been heard from): it is older than `$3`;
/// or its instance is gone (left the list at its shutdown) or handed it over; or its
/// instance has been silent for its own lapse by the database's clock, and this instance has
/// been heard from for at least as long (after a database outage every heartbeat is stale,
/// and no instance is dead).
const TAKEABLE: &str = "({t}.created_us < (SELECT now_us FROM wharf_clock) - $3 \
OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = {t}.instance) \
OR EXISTS (SELECT 1 FROM instances i WHERE i.id = {t}.instance \
  AND i.heartbeat_us <= (SELECT now_us FROM wharf_clock) - CASE WHEN i.lapse_us > 0 THEN i.lapse_us ELSE $2 END \
  AND CASE WHEN i.lapse_us > 0 THEN i.lapse_us ELSE $2 END <= $4))";

/// Rows of `{table}` this instance may take over (`$5` the batch): another instance's that
/// is `TAKEABLE`, and this instance's own taken-over rows whose retry time has come.
fn stale_rows(table: &str, key: &str) -> String {
    let takeable = TAKEABLE.replace("{t}", "t");
    format!(
        "SELECT t.{key}, t.instance, t.detail FROM {table} t \
         WHERE (t.instance <> $1 AND {takeable}) \
         OR (t.instance = $1 AND t.claimed_by = $1 AND t.claim_until_us < (SELECT now_us FROM wharf_clock)) \
         ORDER BY t.created_us LIMIT $5"
    )
}

/// Moves one row found by `stale_rows` to this instance, re-checking in the same statement
/// that it is still what it was (`$5` key, `$6` the instance it was found with, `$7` how long
/// until it is retried if settling it fails).
fn take_row(table: &str, key: &str) -> String {
    let takeable = TAKEABLE.replace("{t}", table);
    format!(
        "UPDATE {table} SET instance = $1, claimed_by = $1, claim_until_us = (SELECT now_us FROM wharf_clock) + $7 \
         WHERE {key} = $5 AND instance = $6 AND ( \
           ($6 <> $1 AND {takeable}) \
           OR ($6 = $1 AND claimed_by = $1 AND claim_until_us < (SELECT now_us FROM wharf_clock)))"
    )
}

pub struct Reconciler {
    pub journal: Journal,
    pub storage: Storage,
    pub observer: OutboxObserver,
    /// The homes to sweep for stale temporary files, besides the accounts' own: the default
    /// home's base.
    pub default_home: Home,
    pub interval: Duration,
    pub orphan_grace: Duration,
    pub staged_ttl: Duration,
    pub retention: Duration,
}

/// A row taken over: its key, and its detail.
type Taken = (String, String);

impl Reconciler {
    /// Runs a round now, then every `interval`, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        // The temp-file sweep walks directories: not every round.
        let sweep_every = self.orphan_grace.min(Duration::from_secs(600)) / 2;
        let mut last_sweep: Option<tokio::time::Instant> = None;
        loop {
            self.round().await;
            if last_sweep.is_none_or(|t| t.elapsed() >= sweep_every) {
                self.sweep_temp_files().await;
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
        self.take_over().await;
        self.prune().await;
    }

    async fn take_over(&self) {
        match self.take("commit_intents", "location").await {
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
        match self.take("live_uploads", "id").await {
            Ok(rows) => {
                for (id, detail) in rows {
                    match serde_json::from_str::<LiveUpload>(&detail) {
                        Ok(u) => self.settle_upload(&id, &u).await,
                        Err(e) => {
                            tracing::error!(upload_id = %id, error = %e, "unreadable live upload")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read live uploads"),
        }
    }

    /// Takes over up to `BATCH` rows of `table` whose instance is dead: `(key, detail)`.
    async fn take(&self, table: &str, key: &str) -> Result<Vec<Taken>, sqlx::Error> {
        let me = self.journal.instance();
        let lapse = self.journal.dead_after().as_micros() as i64;
        let forsaken = if table == "commit_intents" {
            FORSAKEN_INTENT.as_micros() as i64
        } else {
            i64::MAX / 2
        };
        let heard = self.journal.beating_for().as_micros() as i64;
        let candidates: Vec<(String, String, String)> = on_pool!(self.journal.inner.outbox.db(), p => {
            sqlx::query_as(&stale_rows(table, key))
                .bind(me).bind(lapse).bind(forsaken).bind(heard).bind(BATCH)
                .fetch_all(p)
                .await?
        });
        let take = take_row(table, key);
        let mut taken = Vec::new();
        for (k, owner, detail) in candidates {
            let _w = self.journal.inner.outbox.writing().await;
            let n = on_pool!(self.journal.inner.outbox.db(), p => sqlx::query(&take)
                .bind(me).bind(lapse).bind(forsaken).bind(heard)
                .bind(&k).bind(&owner).bind(RETRY.as_micros() as i64)
                .execute(p)
                .await?
                .rows_affected());
            if n == 1 {
                if owner != me {
                    tracing::warn!(activity = "RECOVERED", table, key = %k, from = %owner, "took over work left by an instance that is gone or silent");
                }
                taken.push((k, detail));
            }
        }
        Ok(taken)
    }

    /// Finishes a commit another instance left: announces what is there, or the failure.
    async fn settle_intent(&self, i: &Intent) {
        // Intents written before events had ids of their own.
        let mut i = i.clone();
        for id in [&mut i.event_id, &mut i.failed_event_id] {
            if id.is_empty() {
                *id = uuid::Uuid::now_v7().to_string();
            }
        }
        let i = &i;
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
            // Storage unreachable: try again after RETRY.
            Err(e) => {
                tracing::warn!(location = %i.location, error = %e, "cannot check a commit left by another instance; will retry");
                return;
            }
        };
        let mut matches = found.as_ref().is_some_and(|f| i.matches(f));
        let mut found = found;
        if !matches && matches!(i.kind, IntentKind::Upload | IntentKind::Decrypt) {
            // Not there: make sure it never completes after this (abort its multipart
            // upload first). An upload already gone may have completed a moment ago.
            if let Some(id) = &i.upload_id {
                match backend.abort_pending(&i.path, id).await {
                    Abort::Done => {}
                    Abort::Gone => match backend.fingerprint(&i.path).await {
                        Ok(f) => {
                            matches = f.as_ref().is_some_and(|f| i.matches(f));
                            found = f;
                        }
                        Err(e) => {
                            tracing::warn!(location = %i.location, error = %e, "cannot check a commit left by another instance; will retry");
                            return;
                        }
                    },
                    Abort::Failed => {
                        tracing::warn!(location = %i.location, "cannot abort a commit's multipart upload; will retry");
                        return;
                    }
                }
            }
        }
        let session = i.session();
        let location = backend.location(&i.path);
        let outbox = self.observer.outbox();
        let res = if matches {
            let facts = StagedFacts {
                bytes: i.bytes,
                sha256: i.sha256.clone(),
                etag: found.as_ref().and_then(|f| f.etag.clone()),
                started_at: i.started_at,
                scan: i.scan.clone(),
            };
            let etag = facts.etag.clone();
            match i.kind {
                IntentKind::Upload => {
                    self.observer
                        .arrived(
                            &session,
                            &i.client_path,
                            &location,
                            &facts,
                            etag.as_deref(),
                            i,
                            Some(ANNOUNCED),
                        )
                        .await
                }
                IntentKind::Decrypt => self.settle_decryption(i, &backend, &location, &facts).await,
                IntentKind::Rename => {
                    let from = i.from_path.as_deref().unwrap_or_default();
                    let from_loc = backend.location(from);
                    // The copy is there; the source may still be (S3 copies, then deletes).
                    if let Err(e) = backend.delete(from).await {
                        if e.kind != crate::storage::ErrorKind::NotFound {
                            tracing::warn!(location = %i.location, error = %e, "cannot remove a renamed file's source");
                        }
                    }
                    self.observer
                        .arrived_by_rename(
                            &session,
                            (i.from_client_path.as_deref().unwrap_or_default(), &from_loc),
                            (&i.client_path, &location),
                            &facts,
                            etag.as_deref(),
                            i,
                            Some(ANNOUNCED),
                        )
                        .await
                }
            }
            .map_err(|e| e.to_string())
        } else {
            match i.kind {
                // The upload never became visible (and its multipart upload, aborted above,
                // never will): say so.
                IntentKind::Upload => {
                    let event = failed_event(
                        self.observer.source(),
                        &i.failed_event_id,
                        &session,
                        &i.client_path,
                        &location,
                        i.bytes,
                        i.started_at,
                    );
                    outbox
                        .settle(Some(&event), None, &self.observer.fence(i), NOT_COMMITTED)
                        .await
                        .map_err(|e| e.to_string())
                }
                // The rename never happened: the file is still under its old name. A
                // decryption's plaintext never became visible: its job stays, to be run again.
                IntentKind::Rename | IntentKind::Decrypt => outbox
                    .settle(None, None, &self.observer.fence(i), NOT_COMMITTED)
                    .await
                    .map_err(|e| e.to_string()),
            }
        };
        if matches!(res, Ok(true)) {
            // The intent settled this upload's multipart upload too: it must not also be
            // announced as interrupted.
            if let Some(id) = &i.upload_id {
                self.forget_upload(id).await;
            }
        }
        match res {
            Ok(true) => tracing::warn!(
                activity = "RECOVERED",
                location = %i.location,
                kind = ?i.kind,
                outcome = if matches { "announced" } else { "not committed" },
                "settled a commit left by another instance"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(location = %i.location, error = %e, "cannot settle a commit left by another instance; will retry")
            }
        }
    }

    /// Announces a decryption's plaintext that is there, with its job's outcome; a plaintext
    /// whose job was settled meanwhile (given up) was never announced and is removed.
    async fn settle_decryption(
        &self,
        i: &Intent,
        backend: &std::sync::Arc<dyn crate::storage::Backend>,
        location: &Location,
        facts: &StagedFacts,
    ) -> Result<bool, crate::session::RecordError> {
        let Some(job) = &i.job else {
            return Ok(false);
        };
        let stored = crate::storage::Stored {
            bytes: facts.bytes,
            sha256: facts.sha256.clone(),
            etag: facts.etag.clone(),
            location: location.clone(),
        };
        let event = crate::pgp::sink::completed_event(
            self.observer.source(),
            &self.storage,
            i,
            &stored,
            location,
        );
        let outbox = self.observer.outbox();
        let fence = self.observer.fence(i);
        let unavailable = |e: crate::events::outbox::OutboxError| {
            crate::session::RecordError::Unavailable(e.to_string())
        };
        if outbox
            .record_job_outcome(&event, &job.arrival_event_id, Some(&fence), Some(ANNOUNCED))
            .await
            .map_err(unavailable)?
        {
            return Ok(true);
        }
        match outbox.arrivals().decrypt_job(&job.arrival_event_id).await {
            Ok(None) => {}
            // Still there: the intent was not this instance's any more.
            _ => return Ok(false),
        }
        if let Err(e) = backend.delete(&i.path).await {
            if e.kind != crate::storage::ErrorKind::NotFound {
                return Err(crate::session::RecordError::Unavailable(e.to_string()));
            }
        }
        outbox
            .settle(None, None, &fence, NOT_COMMITTED)
            .await
            .map_err(unavailable)
    }

    async fn forget_upload(&self, upload_id: &str) {
        let _w = self.journal.inner.outbox.writing().await;
        let _ = on_pool!(self.journal.bookkeeping(), p => sqlx::query("DELETE FROM live_uploads WHERE id = $1")
            .bind(upload_id).execute(p).await.map(drop));
    }

    /// Whether a commit intent is about this multipart upload (it settles it).
    async fn has_intent(&self, upload_id: &str) -> bool {
        let n: Result<i64, sqlx::Error> = on_pool!(self.journal.inner.outbox.db(), p => {
            sqlx::query_scalar("SELECT COUNT(*) FROM commit_intents WHERE upload_id = $1")
                .bind(upload_id)
                .fetch_one(p)
                .await
        });
        n.map_or(true, |n| n > 0)
    }

    /// Every upload id some row names (tracked uploads, and commits completing one).
    async fn known_uploads(&self) -> Result<HashSet<String>, sqlx::Error> {
        let rows: Vec<String> = on_pool!(self.journal.inner.outbox.db(), p => {
            sqlx::query_scalar("SELECT id FROM live_uploads UNION SELECT upload_id FROM commit_intents WHERE upload_id IS NOT NULL")
                .fetch_all(p)
                .await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Whether a multipart upload of the same key is being created by a live instance under
    /// a row other than `row_id` (its S3 upload id not known yet).
    async fn creating_elsewhere(&self, row_id: &str, u: &LiveUpload) -> Result<bool, sqlx::Error> {
        let rows: Vec<(String, String)> = on_pool!(self.journal.inner.outbox.db(), p => {
            sqlx::query_as("SELECT l.id, l.detail FROM live_uploads l JOIN instances i ON i.id = l.instance \
                WHERE l.id LIKE 'creating:%' AND l.id <> $1 \
                AND i.heartbeat_us > (SELECT now_us FROM wharf_clock) - CASE WHEN i.lapse_us > 0 THEN i.lapse_us ELSE $2 END")
                .bind(row_id)
                .bind(self.journal.dead_after().as_micros() as i64)
                .fetch_all(p)
                .await?
        });
        Ok(rows.iter().any(|(_, d)| {
            serde_json::from_str::<LiveUpload>(d)
                .is_ok_and(|o| o.bucket == u.bucket && o.key == u.key)
        }))
    }

    /// Aborts a multipart upload another instance left open (or, for one it was about to
    /// create, whatever upload no row names at its exact key) and, for an upload, announces
    /// the upload failed.
    async fn settle_upload(&self, row_id: &str, u: &LiveUpload) {
        let backend = self.storage.backend(&Home::S3 {
            bucket: u.bucket.clone(),
            prefix: String::new(),
        });
        let aborted = if row_id.starts_with("creating:") {
            let Ok(known) = self.known_uploads().await else {
                return;
            };
            // Another upload of the same key being created right now has no id yet: what
            // is open there may be its; try again once it is named.
            match self.creating_elsewhere(row_id, u).await {
                Ok(false) => {}
                Ok(true) | Err(_) => return,
            }
            let open = match backend.pending_uploads(&u.key).await {
                Ok(open) => open,
                Err(e) => {
                    tracing::warn!(bucket = %u.bucket, key = %u.key, error = %e, "cannot list multipart uploads; will retry");
                    return;
                }
            };
            for id in open.iter().filter(|id| !known.contains(*id)) {
                if backend.abort_pending(&u.key, id).await == Abort::Failed {
                    return;
                }
                tracing::warn!(activity = "RECOVERED", bucket = %u.bucket, key = %u.key, upload_id = %id, outcome = "aborted", "aborted a multipart upload an instance created as it stopped");
            }
            true
        } else {
            if self.has_intent(row_id).await {
                return; // settled with its intent
            }
            match backend.abort_pending(&u.key, row_id).await {
                Abort::Done => true,
                // Completed or aborted by its instance: its own commit or abort announces it.
                Abort::Gone => false,
                Abort::Failed => return,
            }
        };
        let n = &u.note;
        let kind = n["kind"].as_str().unwrap_or(if n.get("decrypt").is_some() {
            "decrypt"
        } else {
            "upload"
        });
        if aborted && kind == "upload" {
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
                // The upload's own failed-event id: its instance, if it lives on, records the
                // same failure under the same id, and only one is kept.
                let id = n["event_id"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
                let event = failed_event(
                    self.observer.source(),
                    &id,
                    &session,
                    n["path"].as_str().unwrap_or_default(),
                    &location,
                    0,
                    started_at,
                );
                if let Err(e) = self.observer.outbox().record(&event, None, None).await {
                    tracing::error!(upload_id = %row_id, error = %e, "cannot announce an interrupted upload; will retry");
                    return;
                }
            }
        }
        self.forget_upload(row_id).await;
        if aborted {
            tracing::warn!(activity = "RECOVERED", bucket = %u.bucket, key = %u.key, upload_id = %row_id, kind, outcome = "aborted", "aborted a multipart upload left by another instance");
        }
    }

    /// Local temporary files (wharf's reserved names) older than the grace.
    async fn sweep_temp_files(&self) {
        let mut homes: Vec<Home> = vec![self.default_home.clone()];
        if let Ok(accounts) = self.homes().await {
            homes.extend(accounts);
        }
        let cutoff = SystemTime::now() - self.orphan_grace;
        let mut seen = HashSet::new();
        for home in homes {
            let Home::Local { dir } = &home else {
                continue;
            };
            if !seen.insert(dir.clone()) {
                continue;
            }
            let dir = dir.clone();
            let removed = tokio::task::spawn_blocking(move || sweep_temp_files(&dir, cutoff))
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

    /// Deletes events whose deliveries are all done and that are older than the retention,
    /// staged temp-name uploads never renamed, and kept outcomes of taken-over intents (by
    /// the database's clock).
    async fn prune(&self) {
        let outbox = self.observer.outbox();
        let events_age = self.retention.as_micros() as i64;
        let staged_age = self.staged_ttl.as_micros() as i64;
        let _w = outbox.writing().await;
        let res: Result<(u64, u64), sqlx::Error> = on_pool!(outbox.db(), p => async {
            let events = sqlx::query("DELETE FROM events WHERE created_us < (SELECT now_us FROM wharf_clock) - $1 AND NOT EXISTS (SELECT 1 FROM event_deliveries d WHERE d.event_seq = events.seq AND d.state = 'pending')")
                .bind(events_age).execute(p).await?.rows_affected();
            let staged = sqlx::query("DELETE FROM staged_uploads WHERE created_us < (SELECT now_us FROM wharf_clock) - $1")
                .bind(staged_age).execute(p).await?.rows_affected();
            sqlx::query("DELETE FROM intent_outcomes WHERE created_us < (SELECT now_us FROM wharf_clock) - $1")
                .bind(staged_age).execute(p).await?;
            sqlx::query("DELETE FROM arrived_digests WHERE expires_us < (SELECT now_us FROM wharf_clock)")
                .execute(p).await?;
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

/// A `wharf.upload.failed` for an upload another instance left unfinished.
fn failed_event(
    source: &str,
    id: &str,
    session: &crate::session::SessionInfo,
    path: &str,
    location: &Location,
    bytes: u64,
    started_at: chrono::DateTime<Utc>,
) -> Event {
    Event::build_with(
        source,
        crate::events::FAILED,
        id,
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
            duplicate_of: None,
            scan: None,
        },
        None,
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
