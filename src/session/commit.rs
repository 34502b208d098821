//! The commit protocol, read top to bottom: how a sealed upload (or a file about to be
//! renamed onto a final name) becomes an arrival a pipeline can rely on, exactly once,
//! whatever dies, pauses or answers late.
//!
//! 1. **Intent** (`CommitJournal::begin`): written before anything becomes visible. It is the
//!    lock on the location (one writer at a time) and the fence (only the instance holding
//!    it records an outcome). The folder rules that depend on what is there already
//!    (overwrite, a name accepted once) are checked under it.
//! 2. **Publish**: storage makes the content visible (PutObject, CompleteMultipartUpload, a
//!    local rename, a copy for a rename), only after `confirm` says the intent is still
//!    this instance's. An answer that is not definite is settled by reading what storage
//!    holds (`storage/`); one that cannot be settled hands the intent to the reconciler, and
//!    the client hears that the outcome is not confirmed.
//! 3. **Record**: the arrival event and the clearing of the intent, in one transaction, made
//!    only while the intent is held. An answer that is not definite (a lost reply, an
//!    outage) is settled by asking the database what became of the intent, for up to
//!    `recovery.settle_wait`: the client hears success only once the object and its event
//!    both exist.
//! 4. **Taken over**: an instance silent for too long (paused, cut off) may find its intent
//!    taken by another's reconciler. It records nothing twice: the taker's outcome stands
//!    (the event ids are the intent's, whoever records them), and content it published
//!    after the taker looked is announced under a new intent.
//! 5. **Undo**: a definite failure clears the intent with the upload's failed event, in one
//!    transaction, and leaves nothing in storage.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::fs::{
    journal_error, storage, view_key, FsError, FsErrorKind, OpenUpload, WriteFile, UNCONFIRMED,
};
use super::intent::{DigestCheck, DuplicateOf, Intent, IntentKind, JournalError, Settlement};
use super::path::VirtualPath;
use super::upload::{UploadError, UploadPipeline};
use super::{Mount, Session, StagedFacts, UploadOutcome, UploadRecord};
use crate::config::ScanPolicy;
use crate::identity::folders::Duplicates;
use crate::identity::Permission;
use crate::scan::Verdict;
use crate::storage::{ErrorKind, Location, Meta, RenameContext, Sealed, Stored};
use crate::telemetry::metrics::metrics;

/// Read-ahead of a file hashed from storage (a rename whose content nothing recorded).
const HASH_BLOCK: u32 = 4 << 20;

/// What a commit announces once its content is published.
enum Announcement<'a> {
    Upload(&'a UploadRecord),
    Rename {
        from: (&'a str, &'a Location),
        to: (&'a str, &'a Location),
        etag: Option<&'a str>,
        facts: &'a StagedFacts,
    },
}

/// An upload that ended without arriving, for its failed event.
struct Ended<'a> {
    path: &'a VirtualPath,
    location: &'a Location,
    started_at: DateTime<Utc>,
    received: u64,
    /// Shared with whoever else may announce the same failure.
    event_id: &'a str,
    /// What the content scan found, when it is why.
    scan: Option<serde_json::Value>,
}

impl Session {
    /// Completes an upload: puts everything into storage (not yet visible), writes down the
    /// intent to publish it, publishes it, then records its arrival and clears the intent in
    /// one transaction. The client's close succeeds only if all of that did; a process that
    /// dies in between leaves the intent for the reconciler to finish.
    pub async fn close_write(&self, mut file: WriteFile) -> Result<Stored, FsError> {
        let path = file.path.clone();
        let Some(OpenUpload {
            mut pipeline,
            location,
            started_at,
            started,
            failed_event_id,
        }) = file.upload.take()
        else {
            return Err(FsError::new(
                FsErrorKind::Failure,
                format!("{path}: upload ended"),
            ));
        };
        let received = pipeline.received();
        let ended = Ended {
            path: &path,
            location: &location,
            started_at,
            received,
            event_id: &failed_event_id,
            scan: None,
        };
        let (m, rel) = match self.folder(&path, "uploading") {
            Ok(found) => found,
            Err(e) => {
                pipeline.abort().await;
                return Err(e);
            }
        };
        let (sealed, verdict) = match pipeline.seal().await {
            Ok(s) => s,
            Err(e) => return Err(self.close_failed(&ended, e, None).await),
        };
        // Scanned: nothing is published that the scan refuses (or could not judge, unless
        // the policy lets it through).
        let mut ended = ended;
        let scan = match verdict {
            None => None,
            Some(v) => match self.scan_refusal(&path, &v) {
                None => Some(v.event_field()),
                Some((code, err)) => {
                    ended.scan = Some(v.event_field());
                    pipeline.abort().await;
                    self.record_failure(&ended, code, &err.message, None).await;
                    return Err(err);
                }
            },
        };
        let mut intent = self.upload_intent(m, &rel, &path, &ended, &sealed);
        intent.scan = scan;
        let mut held = match self.ctx.journal.begin(&intent).await {
            Ok(h) => h,
            Err(e) => {
                pipeline.abort().await;
                let err = journal_error(e, &path);
                self.record_failure(&ended, "storage_error", &err.message, None)
                    .await;
                return Err(err);
            }
        };
        // Under the commit lock (which holds the content's digest too, so two uploads of the
        // same bytes commit one after the other): the same content arrived here before.
        if let Some(dup) = held.duplicate.take() {
            let refuse = intent.digest.as_ref().is_some_and(|d| d.refuse);
            let err = duplicate_error(&path, &dup);
            intent.duplicate_of = Some(dup);
            if refuse {
                return Err(self
                    .refuse(pipeline, &ended, &intent, "duplicate", err)
                    .await);
            }
        }
        // Two handles (sessions, instances) may have passed the existence check at open: under
        // the commit lock, an account without `overwrite` still cannot replace a file.
        if !m.permissions.has(Permission::Overwrite) && m.backend.stat(&rel).await.is_ok() {
            let err = FsError::new(
                FsErrorKind::PermissionDenied,
                format!("{path}: already exists (another upload of it finished first); replacing an existing file needs the overwrite permission"),
            );
            return Err(self
                .refuse(pipeline, &ended, &intent, "already_exists", err)
                .await);
        }
        // Under the same lock: a folder that accepts a name once.
        if m.rules.no_reuse_names
            && matches!(
                self.ctx.observer.arrived_before(&location).await,
                Ok(true) | Err(_)
            )
        {
            let err = FsError::new(
                FsErrorKind::PermissionDenied,
                format!("{path}: a file of this name already arrived in this folder, which accepts each name once"),
            );
            return Err(self
                .refuse(pipeline, &ended, &intent, "name_reused", err)
                .await);
        }
        // Nothing is published unless the intent is still this instance's.
        if let Err(e) = self.ctx.journal.confirm(&intent, &mut held).await {
            pipeline.abort().await;
            let taken = matches!(e, JournalError::Taken);
            let err = journal_error(e, &path);
            match taken {
                // The taker settles it (with the same failed event).
                true => {
                    tracing::warn!(parent: &self.span, activity = "ERROR", path = %path, "this server was silent too long and another took the commit over; not publishing")
                }
                false => {
                    self.record_failure(&ended, "storage_error", &err.message, Some(&intent))
                        .await
                }
            }
            metrics().upload_failed(self.info.protocol.name());
            return Err(err);
        }
        crate::testing::crash_point("upload.before_commit");
        let res = pipeline.commit().await;
        crate::testing::crash_point("upload.after_commit");
        let stored = match res {
            Ok(s) => s,
            Err(UploadError::Storage(e)) if e.kind == ErrorKind::Indeterminate => {
                self.ctx.journal.hand_over(&intent).await;
                metrics().upload_failed(self.info.protocol.name());
                return Err(storage(e, &path));
            }
            Err(e) => {
                // Failed because another instance took the commit over (its multipart upload
                // aborted by the taker) after finding it published: its outcome is the answer.
                if self.taken_and_announced(&intent).await {
                    return self.taken_over_success(&path, &intent, &sealed);
                }
                return Err(self.close_failed(&ended, e, Some(&intent)).await);
            }
        };
        let rec = UploadRecord {
            event_id: intent.event_id.clone(),
            duplicate_of: intent.duplicate_of.clone(),
            scan: intent.scan.clone(),
            session: self.info.clone(),
            path: path.to_string(),
            started_at,
            finished_at: crate::identity::now(),
            outcome: UploadOutcome::Completed(stored.clone()),
        };
        if let Err(e) = self.announce(m, &intent, &Announcement::Upload(&rec)).await {
            metrics().upload_failed(self.info.protocol.name());
            return Err(e);
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
        metrics().upload_completed(self.info.protocol.name(), stored.bytes, started.elapsed());
        tracing::info!(parent: &self.span,
            activity = "CLOSE",
            path = %path,
            mode = "write",
            bytes = stored.bytes,
            bytes_in = stored.bytes,
            sha256 = %stored.sha256,
            duration_ms = started.elapsed().as_millis() as u64,
        );
        Ok(stored)
    }

    /// Records what a published commit announces, settling whatever is not definite: returns
    /// once the object and its event both exist, or says why the client cannot be told so.
    async fn announce(
        &self,
        m: &Mount,
        intent: &Intent,
        a: &Announcement<'_>,
    ) -> Result<(), FsError> {
        let path = intent.client_path.as_str();
        let deadline = Instant::now() + self.ctx.settle_wait;
        let mut wait = Duration::from_millis(100);
        loop {
            match self.record_announcement(intent, a).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(parent: &self.span, path, error = %e, "the arrival could not be recorded; finding out what became of it")
                }
            }
            match self.ctx.journal.settlement(intent, &intent.event_id).await {
                // An earlier attempt went through (its answer was lost).
                Ok(Settlement::Recorded) => return Ok(()),
                Ok(Settlement::Announced) => {
                    tracing::warn!(parent: &self.span, path, "another server took this commit over and announced it");
                    return self.announce_if_put_back(m, intent, a).await;
                }
                Ok(Settlement::NotCommitted) => return self.reannounce(m, intent, a).await,
                // Still this instance's (try again), or being settled by the taker (wait).
                Ok(Settlement::Held | Settlement::Elsewhere) => {}
                Ok(Settlement::Unknown) => {
                    tracing::error!(parent: &self.span, activity = "ERROR", path, "the commit's intent is gone with no outcome kept");
                    return Err(FsError::new(
                        FsErrorKind::Failure,
                        format!("{path}: {UNCONFIRMED}"),
                    ));
                }
                Err(e) => {
                    tracing::warn!(parent: &self.span, path, error = %e, "cannot read what became of the commit; retrying")
                }
            }
            if Instant::now() + wait >= deadline {
                // The object is there; the reconciler announces it once it settles the intent.
                self.ctx.journal.hand_over(intent).await;
                tracing::error!(parent: &self.span, activity = "ERROR", path, "the arrival could not be recorded in time; left to the reconciler");
                return Err(FsError::new(
                    FsErrorKind::Failure,
                    format!("{path}: {UNCONFIRMED}"),
                ));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Why a scanned file may not be published, with the client's message: infected, or not
    /// judged (too large, the scanner unavailable) where the policy refuses that.
    fn scan_refusal(&self, path: &VirtualPath, v: &Verdict) -> Option<(&'static str, FsError)> {
        let failure = |m: String| FsError::new(FsErrorKind::Failure, format!("{path}: {m}"));
        match v {
            Verdict::Clean { .. } => None,
            Verdict::Infected { signature, .. } => {
                tracing::warn!(parent: &self.span, activity = "REFUSED", reason = "infected", path = %path, signature = %signature);
                // Nothing a partner could probe signatures with: the name goes to the event.
                Some(("infected", failure("rejected by content scan".into())))
            }
            Verdict::Oversize { limit } => (self.ctx.scan.oversize == ScanPolicy::Refuse).then(|| {
                tracing::warn!(parent: &self.span, activity = "REFUSED", reason = "too_large_to_scan", path = %path, limit);
                (
                    "too_large_to_scan",
                    failure(format!(
                        "larger than the content scanner takes ({limit} bytes); not accepted"
                    )),
                )
            }),
            Verdict::Unavailable(why) => (self.ctx.scan.unavailable == ScanPolicy::Refuse).then(|| {
                tracing::error!(parent: &self.span, activity = "REFUSED", reason = "scan_unavailable", path = %path, error = %why);
                (
                    "scan_unavailable",
                    failure("the content scanner is unavailable; try again later".into()),
                )
            }),
        }
    }

    /// Whether `intent` was taken over by another instance, which announced what it found
    /// (so a storage error this instance got since is not the outcome).
    async fn taken_and_announced(&self, intent: &Intent) -> bool {
        match self.ctx.journal.settlement(intent, &intent.event_id).await {
            Ok(Settlement::Announced | Settlement::Recorded) => {
                tracing::warn!(parent: &self.span, path = %intent.client_path, "another server took this commit over and announced it");
                true
            }
            _ => false,
        }
    }

    /// The client's answer when the taker announced this upload: what was committed.
    fn taken_over_success(
        &self,
        path: &VirtualPath,
        intent: &Intent,
        sealed: &Sealed,
    ) -> Result<Stored, FsError> {
        tracing::info!(parent: &self.span, activity = "CLOSE", path = %path, mode = "write", bytes = sealed.bytes, sha256 = %sealed.sha256, "announced by the server that took the commit over");
        Ok(Stored {
            bytes: sealed.bytes,
            sha256: sealed.sha256.clone(),
            etag: None,
            location: crate::storage::Location {
                uri: intent.location.clone(),
                bucket: None,
                key: intent.path.clone(),
            },
        })
    }

    /// One attempt at recording `a` under `intent`: whether it was recorded.
    async fn record_announcement(
        &self,
        intent: &Intent,
        a: &Announcement<'_>,
    ) -> Result<bool, super::RecordError> {
        match a {
            Announcement::Upload(rec) => self.ctx.observer.completed(rec, Some(intent)).await,
            Announcement::Rename {
                from,
                to,
                etag,
                facts,
            } => {
                self.ctx
                    .observer
                    .renamed(&self.info, *from, *to, *etag, Some(facts), Some(intent))
                    .await
            }
        }
    }

    /// This instance was silent too long while publishing: another took the intent over,
    /// found nothing at the location and recorded the upload as failed; the content this
    /// instance published afterwards must not stay there unannounced. Under a new intent,
    /// what storage holds now is announced if it is this commit's, and left alone otherwise.
    async fn reannounce(
        &self,
        m: &Mount,
        old: &Intent,
        a: &Announcement<'_>,
    ) -> Result<(), FsError> {
        let path = old.client_path.as_str();
        tracing::warn!(parent: &self.span, path, "another server took this commit over while this one was unresponsive and found nothing yet; announcing what this one published since");
        let intent = Intent {
            id: uuid::Uuid::now_v7().to_string(),
            ..old.clone()
        };
        if !self.holds_its_content(m, old, &intent).await? {
            self.ctx.journal.cancel(&intent).await;
            return Err(FsError::new(
                FsErrorKind::Failure,
                format!("{path}: the commit was taken over by another server while this one was unresponsive, and did not land; send the file again"),
            ));
        }
        self.announce_under(&intent, a).await
    }

    /// This instance was silent too long while publishing, and another took the intent over
    /// and announced what it found. But a request of this commit's may have reached storage
    /// after the taker looked (a retry the S3 client sent once the paused process ran again,
    /// after answers were lost), putting this content back over a later arrival with no
    /// event saying so. Under a new intent and a new event id (the taker's announcement used
    /// this commit's), this content is announced again if storage holds it and the
    /// location's last arrival is not it; otherwise the taker's announcement stands.
    async fn announce_if_put_back(
        &self,
        m: &Mount,
        old: &Intent,
        a: &Announcement<'_>,
    ) -> Result<(), FsError> {
        let path = old.client_path.as_str();
        let intent = Intent {
            id: uuid::Uuid::now_v7().to_string(),
            event_id: uuid::Uuid::now_v7().to_string(),
            ..old.clone()
        };
        let ours = self.holds_its_content(m, old, &intent).await?;
        // Whether the location's last arrival (a temp name's staged upload) is this content,
        // read under the new intent, so no other commit of the location runs meanwhile. Not
        // knowing counts as not: an arrival announced twice is better than one unannounced.
        let last_is_ours = || async {
            let location = m.backend.location(&intent.path);
            let last = if self.ctx.observer.is_temp(path) {
                self.ctx.observer.staged(&location).await
            } else {
                self.ctx.observer.last_arrival(&location).await
            };
            matches!(last, Ok(Some(l)) if l.bytes == old.bytes && l.sha256 == old.sha256)
        };
        if !ours || last_is_ours().await {
            self.ctx.journal.cancel(&intent).await;
            return Ok(());
        }
        tracing::warn!(parent: &self.span, path, "this server's content reached storage after another server took the commit over, over a later arrival; announcing it again");
        self.announce_under(&intent, a).await
    }

    /// Takes `intent`, a new intent on `old`'s location, and says whether storage holds
    /// `old`'s content there. A read that fails hands the new intent to the reconciler.
    async fn holds_its_content(
        &self,
        m: &Mount,
        old: &Intent,
        intent: &Intent,
    ) -> Result<bool, FsError> {
        let vpath = VirtualPath::parse(&VirtualPath::root(), &old.client_path)?;
        self.ctx
            .journal
            .begin(intent)
            .await
            .map_err(|e| journal_error(e, &vpath))?;
        match m.backend.fingerprint(&intent.path).await {
            Ok(Some(f)) => Ok(old.matches(&f)),
            Ok(None) => Ok(false),
            Err(e) => {
                self.ctx.journal.hand_over(intent).await;
                Err(storage(e, &vpath))
            }
        }
    }

    /// Records `a` under `intent` (taken by `holds_its_content`); one that cannot be recorded
    /// is handed to the reconciler, and the client hears that the outcome is not confirmed.
    async fn announce_under(&self, intent: &Intent, a: &Announcement<'_>) -> Result<(), FsError> {
        match self.record_announcement(intent, a).await {
            Ok(true) => Ok(()),
            _ => {
                self.ctx.journal.hand_over(intent).await;
                Err(FsError::new(
                    FsErrorKind::Failure,
                    format!("{}: {UNCONFIRMED}", intent.client_path),
                ))
            }
        }
    }

    fn upload_intent(
        &self,
        m: &Mount,
        rel: &str,
        path: &VirtualPath,
        u: &Ended<'_>,
        sealed: &Sealed,
    ) -> Intent {
        Intent {
            id: uuid::Uuid::now_v7().to_string(),
            kind: IntentKind::Upload,
            event_id: uuid::Uuid::now_v7().to_string(),
            failed_event_id: u.event_id.to_string(),
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
            job: None,
            // A temp name is no arrival: its content is checked when it is renamed to one.
            digest: digest_check(m).filter(|_| !self.ctx.observer.is_temp(&path.to_string())),
            duplicate_of: None,
            scan: None,
        }
    }

    /// A commit refused under its lock (by the folder's rules): nothing is published, and the
    /// failed event clears the intent.
    async fn refuse(
        &self,
        pipeline: UploadPipeline,
        u: &Ended<'_>,
        intent: &Intent,
        code: &'static str,
        err: FsError,
    ) -> FsError {
        pipeline.abort().await;
        self.record_failure(u, code, &err.message, Some(intent))
            .await;
        err
    }

    /// An upload that could not be sealed or committed: logged, counted, announced (under
    /// `intent`, which the failed event clears, when it got that far).
    async fn close_failed(
        &self,
        u: &Ended<'_>,
        e: UploadError,
        intent: Option<&Intent>,
    ) -> FsError {
        let (code, err) = match e {
            UploadError::Unsupported(m) => (
                "unsupported_write",
                FsError::new(FsErrorKind::Unsupported, m),
            ),
            UploadError::Storage(e) if e.kind == ErrorKind::Superseded => {
                ("superseded", storage(e, u.path))
            }
            UploadError::Storage(e) => ("storage_error", storage(e, u.path)),
        };
        self.record_failure(u, code, &err.message, intent).await;
        err
    }

    async fn record_failure(
        &self,
        u: &Ended<'_>,
        code: &'static str,
        message: &str,
        intent: Option<&Intent>,
    ) {
        let rec = UploadRecord {
            event_id: u.event_id.to_string(),
            duplicate_of: intent.and_then(|i| i.duplicate_of.clone()),
            scan: u.scan.clone(),
            session: self.info.clone(),
            path: u.path.to_string(),
            started_at: u.started_at,
            finished_at: crate::identity::now(),
            outcome: UploadOutcome::Failed {
                location: u.location.clone(),
                bytes: u.received,
                code,
                message: message.to_string(),
            },
        };
        metrics().upload_failed(self.info.protocol.name());
        tracing::warn!(parent: &self.span, activity = "PARTIAL_CLOSE", path = %u.path, bytes = u.received, reason = %message);
        self.ctx.observer.failed(&rec, intent).await;
    }

    /// Abandons an upload (client gone, timeout, shutdown): nothing becomes visible.
    pub async fn abort_write(&self, mut file: WriteFile, code: &'static str, reason: &str) {
        if let Some(u) = file.upload.take() {
            self.abort_upload(&file.path, u, code, reason).await;
        }
    }

    pub(super) async fn abort_upload(
        &self,
        path: &VirtualPath,
        u: OpenUpload,
        code: &'static str,
        reason: &str,
    ) {
        let received = u.pipeline.received();
        u.pipeline.abort().await;
        self.record_failure(
            &Ended {
                path,
                location: &u.location,
                started_at: u.started_at,
                received,
                event_id: &u.failed_event_id,
                scan: None,
            },
            code,
            reason,
            None,
        )
        .await;
    }

    /// Renames a file; replacing an existing file needs the overwrite permission too. A file
    /// renamed onto a final name arrives there: the rename is journaled, locked and fenced
    /// like an upload's commit, checked against the folder's rules, and announced with the
    /// exact size and SHA-256 of what was renamed (`wharf.upload.completed` for a temp-name
    /// upload reaching its final name, `wharf.file.renamed` for a final name renamed onto
    /// another). Directories and renames to a temp name are not arrivals.
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
        let source = m.backend.stat(&src).await.map_err(|e| storage(e, from))?;
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
        if source.is_dir || self.ctx.observer.is_temp(&to_s) {
            // Not an arrival: nothing is announced (a temp name's facts move with it).
            let renamed = m
                .backend
                .rename(&src, &dst, &RenameContext::default())
                .await
                .map_err(|e| storage(e, from))?;
            tracing::info!(parent: &self.span, activity = "RENAME", path = %from, to = %to);
            self.view.forget();
            if let Err(why) = self
                .ctx
                .observer
                .renamed(
                    &self.info,
                    (&from_s, &from_loc),
                    (&to_s, &to_loc),
                    renamed.etag.as_deref(),
                    None,
                    None,
                )
                .await
            {
                tracing::warn!(parent: &self.span, path = %to, error = %why, "what is known of the renamed temp file was not kept; its arrival reads it from storage");
            }
            return Ok(());
        }
        self.check_reuse(m, &dst, to).await?;
        let facts = self.rename_facts(m, &src, from, &from_loc).await?;
        let intent = Intent {
            id: uuid::Uuid::now_v7().to_string(),
            kind: IntentKind::Rename,
            event_id: uuid::Uuid::now_v7().to_string(),
            failed_event_id: uuid::Uuid::now_v7().to_string(),
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
            job: None,
            digest: digest_check(m),
            duplicate_of: None,
            scan: facts.scan.clone(),
        };
        let mut intent = intent;
        let mut held = self
            .ctx
            .journal
            .begin(&intent)
            .await
            .map_err(|e| journal_error(e, to))?;
        if let Some(dup) = held.duplicate.take() {
            let err = duplicate_error(to, &dup);
            intent.duplicate_of = Some(dup);
            if intent.digest.as_ref().is_some_and(|d| d.refuse) {
                // Nothing of it stays: the temp file goes too.
                if let Err(e) = m.backend.delete(&src).await {
                    tracing::warn!(parent: &self.span, path = %from, error = %e, "cannot remove a duplicate refused on rename");
                }
                self.view.forget();
                let ended = Ended {
                    path: to,
                    location: &to_loc,
                    started_at: facts.started_at,
                    received: facts.bytes,
                    event_id: &intent.failed_event_id,
                    scan: None,
                };
                self.record_failure(&ended, "duplicate", &err.message, Some(&intent))
                    .await;
                return Err(err);
            }
        }
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
        if let Err(e) = self.ctx.journal.confirm(&intent, &mut held).await {
            if !matches!(e, JournalError::Taken) {
                self.ctx.journal.cancel(&intent).await;
            }
            return Err(journal_error(e, to));
        }
        let ctx = RenameContext {
            if_match: facts.etag.clone(),
            intent: Some(intent.id.clone()),
            tracker: self.ctx.journal.tracker(),
            note: serde_json::json!({
                "username": self.info.username,
                "path": to_s,
                "location": to_loc.uri,
            }),
        };
        let renamed = match m.backend.rename(&src, &dst, &ctx).await {
            Ok(r) => r,
            Err(e) if e.kind == ErrorKind::Indeterminate => {
                self.ctx.journal.hand_over(&intent).await;
                return Err(storage(e, from));
            }
            // The source may be gone because another instance took this rename over (this
            // one was silent too long) and finished it: its outcome is the answer.
            Err(e) => {
                if self.taken_and_announced(&intent).await {
                    return Ok(());
                }
                self.ctx.journal.cancel(&intent).await;
                return Err(storage(e, from));
            }
        };
        crate::testing::crash_point("rename.after_rename");
        if renamed.source_left {
            tracing::error!(parent: &self.span, activity = "ERROR", path = %from, to = %to, "the file arrived under its new name but its old name could not be removed");
        }
        tracing::info!(parent: &self.span, activity = "RENAME", path = %from, to = %to);
        let (from_dir, from_name) = view_key(from);
        self.view.removed(&from_dir, &from_name);
        let (to_dir, to_name) = view_key(to);
        self.view.wrote(
            &to_dir,
            &to_name,
            Meta {
                is_dir: false,
                size: facts.bytes,
                modified: Some(std::time::SystemTime::now()),
            },
        );
        let a = Announcement::Rename {
            from: (&from_s, &from_loc),
            to: (&to_s, &to_loc),
            etag: renamed.etag.as_deref(),
            facts: &facts,
        };
        self.announce(m, &intent, &a).await
    }

    /// Size and SHA-256 of a file about to arrive by a rename: what was recorded of it (when
    /// it was uploaded under a temp name, or when it last arrived), checked against what
    /// storage holds; read from storage when nothing recorded is known to describe it.
    async fn rename_facts(
        &self,
        m: &Mount,
        rel: &str,
        path: &VirtualPath,
        location: &Location,
    ) -> Result<StagedFacts, FsError> {
        let temp = self.ctx.observer.is_temp(&path.to_string());
        let known = if temp {
            self.ctx.observer.staged(location).await
        } else {
            self.ctx.observer.last_arrival(location).await
        }
        .ok()
        .flatten();
        if m.backend.remote() {
            let Some(fp) = m
                .backend
                .fingerprint(rel)
                .await
                .map_err(|e| storage(e, path))?
            else {
                return Err(FsError::new(
                    FsErrorKind::NotFound,
                    format!("{path}: no such file or directory"),
                ));
            };
            if let Some(f) = known.filter(|f| {
                f.bytes == fp.size
                    && ((f.etag.is_some() && f.etag == fp.etag)
                        || fp.sha256.as_deref() == Some(f.sha256.as_str()))
            }) {
                return Ok(StagedFacts { etag: fp.etag, ..f });
            }
            if let Some(sha256) = fp.sha256 {
                return Ok(StagedFacts {
                    bytes: fp.size,
                    sha256,
                    etag: fp.etag,
                    started_at: crate::identity::now(),
                    scan: None,
                });
            }
            let f = self.hash_stored(m, rel, path).await?;
            return Ok(StagedFacts { etag: fp.etag, ..f });
        }
        let meta = m.backend.stat(rel).await.map_err(|e| storage(e, path))?;
        if let Some(f) = known.filter(|f| temp && f.bytes == meta.size) {
            return Ok(f);
        }
        self.hash_stored(m, rel, path).await
    }

    /// Size and SHA-256 of a stored file, read through.
    async fn hash_stored(
        &self,
        m: &Mount,
        rel: &str,
        path: &VirtualPath,
    ) -> Result<StagedFacts, FsError> {
        let mut hash = crate::storage::ContentHash::default();
        let mut offset = 0u64;
        loop {
            let block = m
                .backend
                .read(rel, offset, HASH_BLOCK)
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
            scan: None,
        })
    }
}

/// Where a folder that flags or refuses duplicates keeps its arrivals' digests: its storage,
/// for its window.
pub(super) fn digest_check(m: &Mount) -> Option<DigestCheck> {
    (!m.rules.duplicates.is_allow()).then(|| DigestCheck {
        scope: m.home.to_uri(),
        refuse: m.rules.duplicates == Duplicates::Refuse,
        window_s: m.rules.duplicate_window().as_secs(),
    })
}

/// What a client is told of a file refused as a duplicate (and what its event says).
fn duplicate_error(path: &VirtualPath, dup: &DuplicateOf) -> FsError {
    FsError::new(
        FsErrorKind::Failure,
        format!(
            "{path}: the same content (size and SHA-256) already arrived in this folder as {} at {}; refused as a duplicate",
            dup.path,
            dup.arrived_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    )
}
