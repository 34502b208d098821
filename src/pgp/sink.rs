//! The built-in `decrypt` sink: for an arrival whose folder has `--decrypt-to` and whose name
//! has a PGP suffix, the arrival's event transaction records a decryption job and a delivery
//! to this sink. Delivering it runs the job (any instance may claim it, like any delivery,
//! and a crashed instance's claim lapses to another): the file is decrypted by a worker
//! process under hard limits (`worker.rs`), and its plaintext committed like an arrival —
//! under a commit intent and lock on the target, with the target folder's rules — with its
//! `wharf.decrypt.completed` recorded in the transaction that clears that intent and deletes
//! the job. So nothing is visible without its event, each job has exactly one outcome, and a
//! job given up leaves no plaintext. The target must be a folder the partner can only read.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::Semaphore;

use super::decrypt::{decrypt, Checks, Failure, Plain};
use super::Keyring;
use crate::events::outbox::{IntentRef, Outbox, DECRYPT};
use crate::events::sinks::{DeliveryError, EventSink};
use crate::events::{Decryption, Event, COMPLETED};
use crate::identity::folders::Duplicates;
use crate::identity::{folders, AccountStore};
use crate::session::intent::{DecryptJob, DecryptTarget, DigestCheck};
use crate::session::{CommitJournal, Intent, IntentKind, JournalError, Settlement};
use crate::storage::{ErrorKind, Home, Location, Storage, Stored, UploadContext, UploadScope};

/// Attempts at a job whose storage keeps failing before it is given up (`storage_error`).
const MAX_ATTEMPTS: i32 = 6;

pub struct DecryptSink {
    pub outbox: Outbox,
    pub storage: Storage,
    pub accounts: Arc<dyn AccountStore>,
    pub keyring: Arc<Keyring>,
    /// Decryptions running at once on this instance.
    pub slots: Arc<Semaphore>,
    pub journal: Arc<dyn CommitJournal>,
    /// This instance: the holder its plaintext intents must have when their outcome is
    /// recorded.
    pub instance: String,
    /// The events' `source`.
    pub source: String,
    pub max_expansion: u64,
    /// The worker's address space (`pgp.worker_memory`).
    pub worker_memory: u64,
    /// Malware scanning of plaintexts bound for a scanned folder.
    pub scanner: Option<Arc<dyn crate::scan::Scanner>>,
    pub scan: crate::config::ScanConfig,
}

fn retriable(e: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::retriable(e.to_string())
}

/// How a decryption that produced plaintext ended.
enum Published {
    /// Its completed event is recorded.
    Recorded(Stored, Option<String>),
    /// Settled elsewhere: by a reconciler that took the commit over, or by another run.
    Elsewhere,
}

impl DecryptSink {
    /// Runs the job: decrypts, then publishes the plaintext under a commit intent.
    async fn run(
        &self,
        event: &Event,
        job: &DecryptTarget,
        sha256: Option<String>,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Published, Failure> {
        let home = |uri: &str| {
            Home::parse_uri(uri).map_err(|e| Failure::Storage(format!("stored job: {e}")))
        };
        let source = self.storage.backend(&home(&job.source_home)?);
        let target_home = home(&job.target_home)?;
        let target = self.storage.backend(&target_home);
        // The account as it is now: its keys (an admin may have added the partner's key after
        // the upload; a removed key no longer vouches for anything), and the target folder.
        let account = match self.accounts.get(&event.username).await {
            Ok(Some(a)) => a,
            Ok(None) => return Err(Failure::Refused("the account no longer exists".into())),
            Err(e) => return Err(Failure::Storage(format!("reading the account: {e}"))),
        };
        let plain_path = folders::parse_path(&job.target_client_path)
            .map_err(|e| Failure::Refused(e.to_string()))?;
        let Some(folder) =
            folders::containing(&account.folders, &plain_path).filter(|f| f.home == target_home)
        else {
            return Err(Failure::Refused(format!(
                "{} is in none of the account's folders: verified plaintext goes only to a folder the partner can only read (wharf user dir add … --permissions list,download)",
                job.target_client_path
            )));
        };
        if let Err(e) = check_read_only(folder) {
            return Err(Failure::Refused(e.to_string()));
        }
        let name = plain_path.file_name().unwrap_or_default();
        if let Some(why) = folder.rules.refuse_name(name) {
            return Err(Failure::Refused(format!(
                "{}: {why}",
                job.target_client_path
            )));
        }
        let signers = account
            .pgp
            .keys
            .iter()
            .filter(|k| {
                let ok = super::public_key(k).is_ok();
                if !ok {
                    tracing::warn!(username = %event.username, fingerprint = %k.fingerprint, "a stored PGP key is unreadable; ignored");
                }
                ok
            })
            .map(|k| (k.fingerprint.clone(), k.armored.clone()))
            .collect();
        let ctx = UploadContext {
            scope: UploadScope::new(),
            tracker: self.journal.tracker(),
            note: json!({ "kind": "decrypt", "decrypt": event.id, "username": event.username }),
        };
        // A plaintext bound for a scanned folder is scanned before it is published (the
        // ciphertext cannot be).
        let scan = match (
            &self.scanner,
            folder.rules.scan.unwrap_or(self.scan.by_default),
        ) {
            (Some(s), true) => Some(s.start().await),
            _ => None,
        };
        let Plain {
            upload,
            sealed,
            signer,
            verdict,
        } = decrypt(
            self.keyring.clone(),
            Checks {
                signers,
                require_signature: job.require_signature,
                source_sha256: sha256,
                max_expansion: self.max_expansion,
                max_size: folder.rules.max_size,
                worker_memory: self.worker_memory,
            },
            (source, &job.source_path),
            (target.clone(), &job.target_path),
            ctx,
            scan,
        )
        .await?;
        let scan_field = match verdict {
            None => None,
            Some(v) => {
                use crate::config::ScanPolicy;
                use crate::scan::Verdict;
                let refuse = |code: &'static str, why: String| Failure::Scan(code, why);
                let refusal = match &v {
                    Verdict::Clean { .. } => None,
                    Verdict::Infected { signature, .. } => Some(refuse(
                        "infected",
                        format!("the plaintext was rejected by the content scan ({signature})"),
                    )),
                    Verdict::Oversize { limit } if self.scan.oversize == ScanPolicy::Refuse => {
                        Some(refuse(
                            "too_large_to_scan",
                            format!("the plaintext is larger than the content scanner takes ({limit} bytes)"),
                        ))
                    }
                    Verdict::Unavailable(why) if self.scan.unavailable == ScanPolicy::Refuse => {
                        Some(refuse(
                            "scan_unavailable",
                            format!("the content scanner is unavailable: {why}"),
                        ))
                    }
                    _ => None,
                };
                if let Some(f) = refusal {
                    upload.abort().await;
                    return Err(f);
                }
                Some(v.event_field())
            }
        };
        // Published like an arrival: intent (the lock), the folder's rules under it, publish,
        // then the outcome with the job's deletion and the intent's clearing.
        let target_loc = target.location(&job.target_path);
        let intent = Intent {
            id: uuid::Uuid::now_v7().to_string(),
            kind: IntentKind::Decrypt,
            event_id: uuid::Uuid::now_v7().to_string(),
            failed_event_id: uuid::Uuid::now_v7().to_string(),
            location: target_loc.uri.clone(),
            home: job.target_home.clone(),
            path: job.target_path.clone(),
            client_path: job.target_client_path.clone(),
            from_path: None,
            from_client_path: None,
            username: event.username.clone(),
            session_id: String::new(),
            protocol: String::new(),
            client_ip: String::new(),
            bytes: sealed.bytes,
            sha256: sealed.sha256.clone(),
            crc64nvme: sealed.crc64nvme.clone(),
            upload_id: sealed.upload_id.clone(),
            started_at,
            remember_name: folder.rules.no_reuse_names,
            receipt: None,
            decrypt: None,
            job: Some(DecryptJob {
                arrival_event_id: event.id.clone(),
                target: job.clone(),
                signer: signer.clone(),
                started_at,
            }),
            digest: (!folder.rules.duplicates.is_allow()).then(|| DigestCheck {
                scope: folder.home.to_uri(),
                refuse: folder.rules.duplicates == Duplicates::Refuse,
                window_s: folder.rules.duplicate_window().as_secs(),
            }),
            duplicate_of: None,
            scan: scan_field,
        };
        let mut intent = intent;
        let mut held = match self.journal.begin(&intent).await {
            Ok(h) => h,
            Err(e) => {
                upload.abort().await;
                return Err(Failure::Storage(format!("publishing the plaintext: {e}")));
            }
        };
        // A plaintext is checked for duplicates in its own folder, like an upload there.
        if let Some(dup) = held.duplicate.take() {
            if intent.digest.as_ref().is_some_and(|d| d.refuse) {
                self.journal.cancel(&intent).await;
                upload.abort().await;
                return Err(Failure::Refused(format!(
                    "{}: the same plaintext already arrived in that folder as {} at {}; refused as a duplicate",
                    job.target_client_path,
                    dup.path,
                    dup.arrived_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
            intent.duplicate_of = Some(dup);
        }
        if folder.rules.no_reuse_names
            && matches!(
                self.outbox.arrivals().arrived_before(&target_loc.uri).await,
                Ok(true) | Err(_)
            )
        {
            self.journal.cancel(&intent).await;
            upload.abort().await;
            return Err(Failure::Refused(format!(
                "{}: a file of this name already arrived in that folder, which accepts each name once",
                job.target_client_path
            )));
        }
        if let Err(e) = self.journal.confirm(&intent, &mut held).await {
            upload.abort().await;
            if !matches!(e, JournalError::Taken) {
                self.journal.cancel(&intent).await;
            }
            return Err(Failure::Storage(format!("publishing the plaintext: {e}")));
        }
        crate::testing::crash_point("decrypt.before_commit");
        let stored = match upload.commit().await {
            Ok(s) => s,
            Err(e) if e.kind == ErrorKind::Indeterminate => {
                self.journal.hand_over(&intent).await;
                return Ok(Published::Elsewhere);
            }
            Err(e) => {
                self.journal.cancel(&intent).await;
                return Err(Failure::Storage(format!("publishing the plaintext: {e}")));
            }
        };
        crate::testing::crash_point("decrypt.after_commit");
        let outcome = completed_event(&self.source, &self.storage, &intent, &stored, &target_loc);
        let fence = IntentRef::of(&intent, &self.instance);
        for attempt in 0..5u32 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(250 << attempt)).await;
            }
            match self
                .outbox
                .record_job_outcome(&outcome, &event.id, Some(&fence), None)
                .await
            {
                Ok(true) => return Ok(Published::Recorded(stored, signer)),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(event_id = %event.id, error = %e, "the decryption's outcome could not be recorded; finding out what became of it")
                }
            }
            match self.journal.settlement(&intent, &intent.event_id).await {
                Ok(Settlement::Recorded | Settlement::Announced) => {
                    return Ok(Published::Recorded(stored, signer))
                }
                // Still held, so the job was gone (another run recorded its outcome): this
                // plaintext was never announced, and must not stay.
                Ok(Settlement::Held) => {
                    if let Err(e) = target.delete(&job.target_path).await {
                        tracing::error!(path = %job.target_client_path, error = %e, "cannot remove a plaintext whose job was settled elsewhere; the reconciler will");
                        self.journal.hand_over(&intent).await;
                    } else {
                        self.journal.cancel(&intent).await;
                    }
                    return Ok(Published::Elsewhere);
                }
                Ok(Settlement::NotCommitted | Settlement::Unknown) => {
                    return Ok(Published::Elsewhere)
                }
                Ok(Settlement::Elsewhere) | Err(_) => {}
            }
        }
        self.journal.hand_over(&intent).await;
        Ok(Published::Elsewhere)
    }
}

/// A target folder's permissions may not let the partner write there (checked again at
/// decryption time: an admin may have changed them).
fn check_read_only(f: &folders::Folder) -> Result<(), folders::FolderError> {
    let probe = folders::Folder {
        rules: folders::Rules {
            decrypt_to: Some(f.path.to_string()),
            ..Default::default()
        },
        ..f.clone()
    };
    folders::check_decrypt_targets(std::slice::from_ref(&probe))
}

/// The `wharf.decrypt.completed` of a plaintext committed under `intent` (by the sink, or by
/// a reconciler that took its commit over).
pub fn completed_event(
    source: &str,
    storage: &Storage,
    intent: &Intent,
    stored: &Stored,
    target: &Location,
) -> Event {
    let job = intent.job.as_ref();
    let t = job.map(|j| &j.target);
    let source_loc = t
        .and_then(|t| Home::parse_uri(&t.source_home).ok().map(|h| (h, t)))
        .map(|(h, t)| storage.backend(&h).location(&t.source_path))
        .unwrap_or_else(|| Location {
            uri: String::new(),
            bucket: None,
            key: String::new(),
        });
    Event::decryption(
        source,
        &intent.event_id,
        &Decryption {
            username: &intent.username,
            arrival_event_id: job.map(|j| j.arrival_event_id.as_str()).unwrap_or_default(),
            source_path: t.map(|t| t.source_client_path.as_str()).unwrap_or_default(),
            source: &source_loc,
            path: &intent.client_path,
            target,
            outcome: Ok((stored, job.and_then(|j| j.signer.as_deref()))),
            started_at: job.map_or(intent.started_at, |j| j.started_at),
            finished_at: crate::identity::now(),
            duplicate_of: intent.duplicate_of.as_ref(),
            scan: intent.scan.as_ref(),
        },
    )
}

#[async_trait]
impl EventSink for DecryptSink {
    fn name(&self) -> &str {
        DECRYPT
    }

    async fn deliver(&self, event: &Event) -> Result<(), DeliveryError> {
        if event.kind != COMPLETED {
            return Ok(());
        }
        // Done already (a redelivery after its record was lost), or none asked.
        let Some((job, attempts)) = self
            .outbox
            .arrivals()
            .decrypt_job(&event.id)
            .await
            .map_err(retriable)?
        else {
            return Ok(());
        };
        let job: DecryptTarget = serde_json::from_str(&job)
            .map_err(|e| DeliveryError::Permanent(format!("unreadable decryption job: {e}")))?;
        let ce: serde_json::Value = serde_json::from_str(&event.body)
            .map_err(|e| DeliveryError::Permanent(format!("unreadable event: {e}")))?;
        let sha256 = ce["data"]["sha256"].as_str().map(String::from);
        let _slot = self.slots.acquire().await.map_err(retriable)?;
        let started_at = crate::identity::now();
        // Attempts are counted before they run: a file whose instances keep stopping under
        // it is given up, not retried on every instance for ever.
        let result = if attempts >= MAX_ATTEMPTS {
            Err(Failure::Storage(format!(
                "given up after {attempts} attempts that ended without an outcome (the instance running it stopped)"
            )))
        } else {
            self.outbox
                .arrivals()
                .decrypt_attempt(&event.id)
                .await
                .map_err(retriable)?;
            self.run(event, &job, sha256, started_at).await
        };
        if let Err(f @ Failure::Storage(_)) = &result {
            if attempts + 1 < MAX_ATTEMPTS {
                return Err(retriable(format!(
                    "decrypting {}: {f}",
                    job.source_client_path
                )));
            }
        }
        let f = match result {
            Ok(Published::Recorded(stored, signer)) => {
                tracing::info!(
                    activity = "DECRYPT", outcome = "completed", username = %event.username,
                    path = %job.source_client_path, target = %job.target_client_path,
                    bytes = stored.bytes, signer = signer.as_deref().unwrap_or("none"),
                    "decrypted"
                );
                return Ok(());
            }
            Ok(Published::Elsewhere) => return Ok(()),
            Err(f) => f,
        };
        let locate = |uri: &str, path: &str| {
            Home::parse_uri(uri)
                .map(|h| self.storage.backend(&h).location(path))
                .unwrap_or_else(|_| Location {
                    uri: String::new(),
                    bucket: None,
                    key: path.to_string(),
                })
        };
        let source_loc = locate(&job.source_home, &job.source_path);
        let target_loc = locate(&job.target_home, &job.target_path);
        let failed = Event::decryption(
            &self.source,
            &uuid::Uuid::now_v7().to_string(),
            &Decryption {
                username: &event.username,
                arrival_event_id: &event.id,
                source_path: &job.source_client_path,
                source: &source_loc,
                path: &job.target_client_path,
                target: &target_loc,
                outcome: Err((f.code(), f.to_string())),
                started_at,
                finished_at: crate::identity::now(),
                duplicate_of: None,
                scan: None,
            },
        );
        // Recorded only while no commit of a plaintext of this job is under way (a
        // reconciler settling one decides then).
        if !self
            .outbox
            .record_job_outcome(&failed, &event.id, None, None)
            .await
            .map_err(retriable)?
            && self
                .outbox
                .arrivals()
                .decrypt_job(&event.id)
                .await
                .map_err(retriable)?
                .is_some()
        {
            return Err(retriable(
                "a commit of this job's plaintext is being settled; trying again",
            ));
        }
        tracing::warn!(
            activity = "DECRYPT", outcome = "failed", username = %event.username,
            path = %job.source_client_path, failure_code = f.code(), error = %f,
            "decryption failed"
        );
        Ok(())
    }

    /// One attempt may take as long as the file takes to decrypt: the dispatcher renews the
    /// claim while it runs, so this only sets how far ahead it is renewed (and so how soon
    /// a crashed instance's job is taken over).
    fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(2)
    }
}
