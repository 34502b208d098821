//! The built-in `decrypt` sink: for an arrival whose folder has `--decrypt-to` and whose name
//! has a PGP suffix, the arrival's event transaction records a decryption job and a delivery
//! to this sink. Delivering it runs the job (any instance may claim it, like any delivery,
//! and a crashed instance's claim lapses to another), and records its outcome event
//! (`wharf.decrypt.completed` or `.failed`) in the transaction that deletes the job: one
//! outcome per job, however often a crash makes it run again.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::Semaphore;

use super::decrypt::{decrypt, Checks, Failure, Plain};
use super::Keyring;
use crate::events::outbox::{Outbox, DECRYPT};
use crate::events::sinks::{DeliveryError, EventSink};
use crate::events::{Decryption, Event, COMPLETED};
use crate::identity::AccountStore;
use crate::session::intent::DecryptTarget;
use crate::storage::{Home, Storage, UploadContext, UploadScope, UploadTracker};

/// Attempts at a job whose storage keeps failing before it is given up (`storage_error`).
const MAX_ATTEMPTS: i32 = 6;

pub struct DecryptSink {
    pub outbox: Outbox,
    pub storage: Storage,
    pub accounts: Arc<dyn AccountStore>,
    pub keyring: Arc<Keyring>,
    /// Decryptions running at once on this instance.
    pub slots: Arc<Semaphore>,
    pub tracker: Option<Arc<dyn UploadTracker>>,
    /// The events' `source`.
    pub source: String,
    pub max_expansion: u64,
}

fn retriable(e: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::retriable(e.to_string())
}

impl DecryptSink {
    async fn run(
        &self,
        event: &Event,
        job: &DecryptTarget,
        sha256: Option<String>,
    ) -> Result<Plain, Failure> {
        let home = |uri: &str| {
            Home::parse_uri(uri).map_err(|e| Failure::Storage(format!("stored job: {e}")))
        };
        let source = self.storage.backend(&home(&job.source_home)?);
        let target = self.storage.backend(&home(&job.target_home)?);
        // The account's keys as they are now (an admin may have added the partner's key
        // after the upload; a removed key no longer vouches for anything).
        let keys = match self.accounts.get(&event.username).await {
            Ok(Some(a)) => a.pgp.keys,
            Ok(None) => Vec::new(),
            Err(e) => return Err(Failure::Storage(format!("reading the account's keys: {e}"))),
        };
        let signers = keys
            .iter()
            .filter_map(|k| match super::public_key(k) {
                Ok(pk) => Some((k.fingerprint.clone(), pk)),
                Err(e) => {
                    tracing::warn!(username = %event.username, fingerprint = %k.fingerprint, error = %e, "a stored PGP key is unreadable; ignored");
                    None
                }
            })
            .collect();
        let ctx = UploadContext {
            scope: UploadScope::new(),
            tracker: self.tracker.clone(),
            note: json!({ "decrypt": event.id, "username": event.username }),
        };
        decrypt(
            self.keyring.clone(),
            Checks {
                signers,
                require_signature: job.require_signature,
                source_sha256: sha256,
                max_expansion: self.max_expansion,
            },
            (source, &job.source_path),
            (target.clone(), &job.target_path),
            ctx,
        )
        .await
    }
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
        // Attempts are counted before they run: a file whose decryption keeps ending the
        // process (or whose instances keep stopping under it) is given up, not retried on
        // every instance for ever.
        let result = if attempts >= MAX_ATTEMPTS {
            Err(Failure::Storage(format!(
                "given up after {attempts} attempts that ended without an outcome (the instance running it stopped)"
            )))
        } else {
            self.outbox
                .decrypt_attempt(&event.id)
                .await
                .map_err(retriable)?;
            self.run(event, &job, sha256).await
        };
        if result.is_ok() {
            crate::testing::crash_point("decrypt.after_commit");
        }
        if let Err(f @ Failure::Storage(_)) = &result {
            if attempts + 1 < MAX_ATTEMPTS {
                return Err(retriable(format!(
                    "decrypting {}: {f}",
                    job.source_client_path
                )));
            }
        }
        let backend = |uri: &str| Home::parse_uri(uri).ok().map(|h| self.storage.backend(&h));
        let locate = |uri: &str, path: &str| {
            backend(uri)
                .map(|b| b.location(path))
                .unwrap_or_else(|| crate::storage::Location {
                    uri: String::new(),
                    bucket: None,
                    key: path.to_string(),
                })
        };
        let source_loc = locate(&job.source_home, &job.source_path);
        let target_loc = locate(&job.target_home, &job.target_path);
        let outcome = match &result {
            Ok(p) => Ok((&p.stored, p.signer.as_deref())),
            Err(f) => Err((f.code(), f.to_string())),
        };
        let outcome_event = Event::decryption(
            &self.source,
            &Decryption {
                username: &event.username,
                arrival_event_id: &event.id,
                source_path: &job.source_client_path,
                source: &source_loc,
                path: &job.target_client_path,
                target: &target_loc,
                outcome,
                started_at,
                finished_at: crate::identity::now(),
            },
        );
        self.outbox
            .record_job_outcome(&outcome_event, &event.id)
            .await
            .map_err(retriable)?;
        match &result {
            Ok(p) => tracing::info!(
                activity = "DECRYPT", outcome = "completed", username = %event.username,
                path = %job.source_client_path, target = %job.target_client_path,
                bytes = p.stored.bytes, signer = p.signer.as_deref().unwrap_or("none"),
                "decrypted"
            ),
            Err(f) => tracing::warn!(
                activity = "DECRYPT", outcome = "failed", username = %event.username,
                path = %job.source_client_path, failure_code = f.code(), error = %f,
                "decryption failed"
            ),
        }
        Ok(())
    }

    /// One attempt may take as long as the file takes to decrypt: the dispatcher renews the
    /// claim while it runs, so this only sets how far ahead it is renewed (and so how soon
    /// a crashed instance's job is taken over).
    fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(2)
    }
}
