//! Turns the ends of uploads into outbox events: completed and failed uploads, temp-name
//! uploads (`*.filepart`, …) that arrive only when renamed to their final name, and final
//! names renamed onto others. Each arrival is recorded in the transaction that clears its
//! commit intent, and only while this instance holds that intent (the fence).

use async_trait::async_trait;

use super::outbox::{IntentRef, OutboxError};
use super::outbox::{Outbox, Staged};
use super::{Arrival, Event, COMPLETED, RENAMED};
use crate::session::{
    Intent, RecordError, SessionInfo, StagedFacts, UploadObserver, UploadOutcome, UploadRecord,
};
use crate::storage::Location;

fn unavailable(e: OutboxError) -> RecordError {
    RecordError::Unavailable(e.to_string())
}

#[derive(Clone)]
pub struct OutboxObserver {
    outbox: Outbox,
    source: String,
    temp_suffixes: Vec<String>,
    /// This instance (`journal/`): the holder an intent must have for a record made under it.
    instance: String,
}

impl OutboxObserver {
    pub fn new(
        outbox: Outbox,
        source: String,
        temp_suffixes: Vec<String>,
        instance: String,
    ) -> Self {
        OutboxObserver {
            outbox,
            source,
            temp_suffixes,
            instance,
        }
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// `intent` as the outbox fences on it: held by this instance.
    pub fn fence(&self, intent: &Intent) -> IntentRef {
        IntentRef::of(intent, &self.instance)
    }

    /// The event of a file that arrived with `facts` at `location` (a completed upload, or
    /// with `from`, a final name renamed onto another).
    #[allow(clippy::too_many_arguments)]
    fn arrival_event(
        &self,
        id: &str,
        session: &SessionInfo,
        path: &str,
        location: &Location,
        facts: &StagedFacts,
        etag: Option<&str>,
        from: Option<(&str, &Location)>,
        duplicate_of: Option<&crate::session::DuplicateOf>,
    ) -> Event {
        Event::build_with(
            &self.source,
            if from.is_some() { RENAMED } else { COMPLETED },
            id,
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
                duplicate_of,
                scan: facts.scan.as_ref(),
            },
            from,
        )
    }

    /// Records a completed upload: its arrival event, or (under a temp name) the facts its
    /// rename will need; `intent` is cleared in the same transaction, and `settled` marks a
    /// reconciler's settlement of an intent it took over. Whether it was recorded (false: the
    /// intent was not this instance's).
    #[allow(clippy::too_many_arguments)]
    pub async fn arrived(
        &self,
        session: &SessionInfo,
        client_path: &str,
        location: &Location,
        facts: &StagedFacts,
        etag: Option<&str>,
        intent: &Intent,
        settled: Option<&'static str>,
    ) -> Result<bool, RecordError> {
        let fence = self.fence(intent);
        if self.is_temp(client_path) {
            // No arrival yet: remember the content for the rename that completes it.
            return self
                .outbox
                .arrivals()
                .stage(
                    &location.uri,
                    &Staged {
                        etag: etag.map(String::from),
                        ..facts.clone()
                    },
                    Some(&fence),
                )
                .await
                .map_err(unavailable);
        }
        let event = self.arrival_event(
            &intent.event_id,
            session,
            client_path,
            location,
            facts,
            etag,
            None,
            intent.duplicate_of.as_ref(),
        );
        match settled {
            Some(outcome) => {
                self.outbox
                    .settle(Some(&event), None, &fence, outcome)
                    .await
            }
            None => self.outbox.record(&event, None, Some(&fence)).await,
        }
        .map_err(unavailable)
    }

    /// Records a rename onto a final name under `intent` (see `renamed`), or a reconciler's
    /// settlement of one (`settled`).
    #[allow(clippy::too_many_arguments)]
    pub async fn arrived_by_rename(
        &self,
        session: &SessionInfo,
        from: (&str, &Location),
        to: (&str, &Location),
        facts: &StagedFacts,
        etag: Option<&str>,
        intent: &Intent,
        settled: Option<&'static str>,
    ) -> Result<bool, RecordError> {
        // A temp-name upload reaching its final name is its arrival; a final name renamed
        // onto another is a rename, which says where the file came from.
        let renamed_from = (!self.is_temp(from.0)).then_some(from);
        let event = self.arrival_event(
            &intent.event_id,
            session,
            to.0,
            to.1,
            facts,
            etag,
            renamed_from,
            intent.duplicate_of.as_ref(),
        );
        let fence = self.fence(intent);
        match settled {
            Some(outcome) => {
                self.outbox
                    .settle(Some(&event), Some(&from.1.uri), &fence, outcome)
                    .await
            }
            None => {
                self.outbox
                    .record(&event, Some(&from.1.uri), Some(&fence))
                    .await
            }
        }
        .map_err(unavailable)
    }
}

#[async_trait]
impl UploadObserver for OutboxObserver {
    async fn completed(
        &self,
        r: &UploadRecord,
        intent: Option<&Intent>,
    ) -> Result<bool, RecordError> {
        let UploadOutcome::Completed(stored) = &r.outcome else {
            return Ok(true);
        };
        let facts = StagedFacts {
            bytes: stored.bytes,
            sha256: stored.sha256.clone(),
            etag: stored.etag.clone(),
            started_at: r.started_at,
            scan: r.scan.clone(),
        };
        match intent {
            Some(i) => {
                self.arrived(
                    &r.session,
                    &r.path,
                    &stored.location,
                    &facts,
                    stored.etag.as_deref(),
                    i,
                    None,
                )
                .await
            }
            None => {
                let event = Event::from_record(&self.source, r);
                self.outbox
                    .record(&event, None, None)
                    .await
                    .map_err(unavailable)
            }
        }
    }

    async fn failed(&self, r: &UploadRecord, intent: Option<&Intent>) {
        let event = Event::from_record(&self.source, r);
        let fence = intent.map(|i| self.fence(i));
        match self.outbox.record(&event, None, fence.as_ref()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(path = %r.path, "the failed upload's commit was taken over by another server, which announces it")
            }
            Err(e) => {
                // Through a database outage: the event has its id, so a retry never records
                // it twice.
                tracing::warn!(path = %r.path, error = %e, "could not record a failed upload event; retrying");
                let (outbox, path) = (self.outbox.clone(), r.path.clone());
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let mut wait = std::time::Duration::from_secs(1);
                        for _ in 0..40 {
                            tokio::time::sleep(wait).await;
                            if outbox.record(&event, None, fence.as_ref()).await.is_ok() {
                                return;
                            }
                            wait = (wait * 2).min(std::time::Duration::from_secs(30));
                        }
                        tracing::error!(path = %path, "gave up recording a failed upload event");
                    });
                }
            }
        }
    }

    fn is_temp(&self, path: &str) -> bool {
        self.temp_suffixes
            .iter()
            .any(|s| !s.is_empty() && path.ends_with(s.as_str()))
    }

    async fn arrived_before(&self, location: &Location) -> Result<bool, RecordError> {
        self.outbox
            .arrivals()
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
        self.outbox
            .arrivals()
            .staged(&location.uri)
            .await
            .map_err(unavailable)
    }

    async fn last_arrival(&self, location: &Location) -> Result<Option<StagedFacts>, RecordError> {
        self.outbox
            .arrivals()
            .last_arrival(&location.uri)
            .await
            .map_err(unavailable)
    }

    async fn renamed(
        &self,
        session: &SessionInfo,
        from: (&str, &Location),
        to: (&str, &Location),
        etag: Option<&str>,
        facts: Option<&StagedFacts>,
        intent: Option<&Intent>,
    ) -> Result<bool, RecordError> {
        if let (Some(facts), Some(intent)) = (facts, intent) {
            return self
                .arrived_by_rename(session, from, to, facts, etag, intent, None)
                .await;
        }
        match (self.is_temp(from.0), self.is_temp(to.0)) {
            (true, true) => self
                .outbox
                .arrivals()
                .restage(&from.1.uri, &to.1.uri)
                .await
                .map(|()| true)
                .map_err(unavailable),
            // A file that already arrived, renamed to a temp name: remember what it holds, so
            // renaming it back announces exactly that; nothing known, nothing kept (what an
            // earlier file of that temp name left is not this one's).
            (false, true) => match self.outbox.arrivals().last_arrival(&from.1.uri).await {
                Ok(Some(f)) => self
                    .outbox
                    .arrivals()
                    .stage(
                        &to.1.uri,
                        &Staged {
                            etag: etag.map(String::from),
                            ..f
                        },
                        None,
                    )
                    .await
                    .map_err(unavailable),
                _ => self
                    .outbox
                    .arrivals()
                    .unstage(&to.1.uri)
                    .await
                    .map(|()| true)
                    .map_err(unavailable),
            },
            // Onto a final name without facts: not an arrival (a directory).
            _ => Ok(true),
        }
    }

    async fn removed(&self, session: &SessionInfo, path: &str, location: &Location) {
        if self.is_temp(path) {
            // Never announced, so nothing to retract: only forget what was staged.
            if let Err(e) = self.outbox.arrivals().unstage(&location.uri).await {
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
                duplicate_of: None,
                scan: None,
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
