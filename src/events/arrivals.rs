//! Turns the ends of uploads into outbox events: completed and failed uploads, temp-name
//! uploads (`*.filepart`, …) that arrive only when renamed to their final name.

use async_trait::async_trait;

use super::outbox::{Outbox, Staged};
use super::{Arrival, Event};
use crate::session::{SessionInfo, UploadObserver, UploadOutcome, UploadRecord};
use crate::storage::Location;

pub struct OutboxObserver {
    outbox: Outbox,
    source: String,
    temp_suffixes: Vec<String>,
}

impl OutboxObserver {
    pub fn new(outbox: Outbox, source: String, temp_suffixes: Vec<String>) -> Self {
        OutboxObserver {
            outbox,
            source,
            temp_suffixes,
        }
    }

    fn is_temp(&self, path: &str) -> bool {
        self.temp_suffixes
            .iter()
            .any(|s| !s.is_empty() && path.ends_with(s.as_str()))
    }
}

#[async_trait]
impl UploadObserver for OutboxObserver {
    async fn completed(&self, r: &UploadRecord) -> Result<(), String> {
        let UploadOutcome::Completed(stored) = &r.outcome else {
            return Ok(());
        };
        if self.is_temp(&r.path) {
            // No arrival yet: remember the content for the rename that completes it.
            return self
                .outbox
                .stage(
                    &stored.location.uri,
                    &Staged {
                        bytes: stored.bytes,
                        sha256: stored.sha256.clone(),
                        etag: stored.etag.clone(),
                        started_at: r.started_at,
                    },
                )
                .await
                .map_err(|e| e.to_string());
        }
        let event = Event::from_record(&self.source, r);
        self.outbox
            .record(&event, None)
            .await
            .map_err(|e| e.to_string())
    }

    async fn failed(&self, r: &UploadRecord) {
        let event = Event::from_record(&self.source, r);
        if let Err(e) = self.outbox.record(&event, None).await {
            tracing::error!(path = %r.path, error = %e, "could not record a failed upload event");
        }
    }

    async fn renamed(
        &self,
        session: &SessionInfo,
        from: (&str, &Location),
        to: (&str, &Location),
        etag: Option<&str>,
    ) -> Result<(), String> {
        match (self.is_temp(from.0), self.is_temp(to.0)) {
            (true, false) => {
                let staged = self
                    .outbox
                    .staged(&from.1.uri)
                    .await
                    .map_err(|e| e.to_string())?;
                let now = crate::identity::now();
                let (bytes, sha256, started_at) = match &staged {
                    Some(s) => (s.bytes, Some(s.sha256.as_str()), s.started_at),
                    // Uploaded before wharf knew of it (or by another route): size unknown.
                    None => (0, None, now),
                };
                let event = Event::build(
                    &self.source,
                    &Arrival {
                        session,
                        path: to.0,
                        location: to.1,
                        bytes,
                        sha256,
                        // The object now at the final key (an S3 copy has its own ETag).
                        etag,
                        started_at,
                        finished_at: now,
                        failure: None,
                    },
                );
                self.outbox
                    .record(&event, Some(&from.1.uri))
                    .await
                    .map_err(|e| e.to_string())
            }
            (true, true) => self
                .outbox
                .restage(&from.1.uri, &to.1.uri)
                .await
                .map_err(|e| e.to_string()),
            // Renaming an arrived file, or to a temp name, is not an arrival.
            _ => Ok(()),
        }
    }

    async fn removed(&self, path: &str, location: &Location) {
        if self.is_temp(path) {
            if let Err(e) = self.outbox.unstage(&location.uri).await {
                tracing::warn!(path, error = %e, "could not forget a deleted temp upload");
            }
        }
    }
}
