//! Turns the ends of uploads into outbox events: completed and failed uploads, temp-name
//! uploads (`*.filepart`, …) that arrive only when renamed to their final name. Each
//! arrival is recorded in the transaction that clears its commit intent.

use async_trait::async_trait;

use super::outbox::OutboxError;
use super::outbox::{Outbox, Staged};
use super::{Arrival, Event};
use crate::session::{
    Intent, RecordError, SessionInfo, StagedFacts, UploadObserver, UploadOutcome, UploadRecord,
};

fn unavailable(e: OutboxError) -> RecordError {
    RecordError::Unavailable(e.to_string())
}
use crate::storage::Location;

#[derive(Clone)]
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

    pub fn is_temp(&self, path: &str) -> bool {
        self.temp_suffixes
            .iter()
            .any(|s| !s.is_empty() && path.ends_with(s.as_str()))
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The completed event of a file that arrived with `facts` at `location`.
    fn arrival_event(
        &self,
        session: &SessionInfo,
        path: &str,
        location: &Location,
        facts: &StagedFacts,
        etag: Option<&str>,
    ) -> Event {
        Event::build(
            &self.source,
            &Arrival {
                session,
                path,
                location,
                bytes: facts.bytes,
                sha256: Some(&facts.sha256),
                etag,
                started_at: facts.started_at,
                finished_at: crate::identity::now(),
                failure: None,
            },
        )
    }

    /// Records a completed upload: its arrival event, or (under a temp name) the facts its
    /// rename will need; `intent` is cleared in the same transaction.
    pub async fn arrived(
        &self,
        session: &SessionInfo,
        client_path: &str,
        location: &Location,
        facts: &StagedFacts,
        etag: Option<&str>,
        intent: Option<&Intent>,
    ) -> Result<(), RecordError> {
        let intent = intent.map(Intent::key);
        if self.is_temp(client_path) {
            // No arrival yet: remember the content for the rename that completes it.
            return self
                .outbox
                .stage(
                    &location.uri,
                    &Staged {
                        etag: etag.map(String::from),
                        ..facts.clone()
                    },
                    intent.map(|(l, i, _)| (l, i)),
                )
                .await
                .map_err(unavailable);
        }
        let event = self.arrival_event(session, client_path, location, facts, etag);
        self.outbox
            .record(&event, None, intent)
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl UploadObserver for OutboxObserver {
    async fn completed(
        &self,
        r: &UploadRecord,
        intent: Option<&Intent>,
    ) -> Result<(), RecordError> {
        let UploadOutcome::Completed(stored) = &r.outcome else {
            return Ok(());
        };
        let facts = StagedFacts {
            bytes: stored.bytes,
            sha256: stored.sha256.clone(),
            etag: stored.etag.clone(),
            started_at: r.started_at,
        };
        if self.is_temp(&r.path) {
            return self
                .arrived(
                    &r.session,
                    &r.path,
                    &stored.location,
                    &facts,
                    stored.etag.as_deref(),
                    intent,
                )
                .await;
        }
        let event = Event::from_record(&self.source, r);
        self.outbox
            .record(&event, None, intent.map(Intent::key))
            .await
            .map_err(unavailable)
    }

    async fn failed(&self, r: &UploadRecord) {
        let event = Event::from_record(&self.source, r);
        if let Err(e) = self.outbox.record(&event, None, None).await {
            tracing::error!(path = %r.path, error = %e, "could not record a failed upload event");
        }
    }

    fn is_arrival(&self, from: &str, to: &str) -> bool {
        self.is_temp(from) && !self.is_temp(to)
    }

    async fn arrived_before(&self, location: &Location) -> Result<bool, RecordError> {
        self.outbox
            .arrived_before(&location.uri)
            .await
            .map_err(unavailable)
    }

    fn final_name<'a>(&self, name: &'a str) -> &'a str {
        self.temp_suffixes
            .iter()
            .filter(|s| !s.is_empty())
            .find_map(|s| name.strip_suffix(s.as_str()))
            .unwrap_or(name)
    }

    async fn staged(&self, location: &Location) -> Result<Option<StagedFacts>, RecordError> {
        self.outbox.staged(&location.uri).await.map_err(unavailable)
    }

    async fn renamed(
        &self,
        session: &SessionInfo,
        from: (&str, &Location),
        to: (&str, &Location),
        etag: Option<&str>,
        facts: Option<&StagedFacts>,
        intent: Option<&Intent>,
    ) -> Result<(), RecordError> {
        let intent_key = intent.map(Intent::key);
        match (self.is_temp(from.0), self.is_temp(to.0)) {
            (true, false) => {
                let Some(facts) = facts else {
                    return Err(RecordError::UnknownFacts);
                };
                // The object now at the final key (an S3 copy has its own ETag).
                let event = self.arrival_event(session, to.0, to.1, facts, etag);
                self.outbox
                    .record(&event, Some(&from.1.uri), intent_key)
                    .await
                    .map_err(unavailable)
            }
            (true, true) => self
                .outbox
                .restage(&from.1.uri, &to.1.uri)
                .await
                .map_err(unavailable),
            // A file that already arrived, renamed to a temp name: remember what it holds, so
            // renaming it back announces exactly that.
            (false, true) => {
                if let Ok(Some(f)) = self.outbox.last_arrival(&from.1.uri).await {
                    let staged = Staged {
                        etag: etag.map(String::from),
                        ..f
                    };
                    self.outbox
                        .stage(&to.1.uri, &staged, None)
                        .await
                        .map_err(unavailable)?;
                }
                Ok(())
            }
            // Renaming an arrived file to another final name is not an arrival.
            (false, false) => Ok(()),
        }
    }

    async fn removed(&self, session: &SessionInfo, path: &str, location: &Location) {
        if self.is_temp(path) {
            // Never announced, so nothing to retract: only forget what was staged.
            if let Err(e) = self.outbox.unstage(&location.uri).await {
                tracing::warn!(path, error = %e, "could not forget a deleted temp upload");
            }
            return;
        }
        let now = crate::identity::now();
        let event = Event::build_as(
            &self.source,
            super::DELETED,
            &Arrival {
                session,
                path,
                location,
                bytes: 0,
                sha256: None,
                etag: None,
                started_at: now,
                finished_at: now,
                failure: None,
            },
        );
        if let Err(e) = self.outbox.record(&event, None, None).await {
            tracing::error!(path, error = %e, "could not record a file deleted event");
        }
    }

    async fn downloaded(&self, r: &UploadRecord) {
        let event = Event::from_download(&self.source, r);
        if let Err(e) = self.outbox.record(&event, None, None).await {
            tracing::error!(path = %r.path, error = %e, "could not record a download event");
        }
    }
}
