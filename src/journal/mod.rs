//! What survives a process that dies at the wrong moment, kept in the accounts database: each
//! instance's heartbeat, commit intents (written before an object becomes visible, cleared
//! with its arrival event, which also turns what they ask for — a receipt, a decryption —
//! into work; also the lock that lets one writer at a time commit a location),
//! and the S3 multipart uploads in progress. The reconciler (`reconciler.rs`) finishes what
//! an instance whose heartbeat stopped left behind.

pub mod reconciler;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::db::{on_pool, Db};
use crate::events::outbox::{micros, Outbox};
use crate::session::{CommitJournal, Intent, JournalError};
use crate::storage::{LiveUpload, UploadTracker};

/// How long a commit waits for another commit of the same location to finish.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// This instance's view of the journal. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    outbox: Outbox,
    instance: String,
    heartbeat: Duration,
}

impl Journal {
    /// A journal for this process, a new instance with an id of its own.
    pub fn new(outbox: Outbox, heartbeat: Duration) -> Journal {
        Journal {
            inner: Arc::new(Inner {
                outbox,
                instance: uuid::Uuid::now_v7().to_string(),
                heartbeat,
            }),
        }
    }

    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    fn db(&self) -> &Db {
        self.inner.outbox.bookkeeping()
    }

    /// An instance silent for this long is taken for dead.
    pub fn dead_after(&self) -> Duration {
        self.inner.heartbeat * 3
    }

    /// Says this instance is alive.
    pub async fn beat(&self) -> Result<(), sqlx::Error> {
        let _w = self.inner.outbox.writing().await;
        let now = micros(Utc::now());
        on_pool!(self.db(), p => sqlx::query("INSERT INTO instances (id, heartbeat_us) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET heartbeat_us = excluded.heartbeat_us")
            .bind(&self.inner.instance).bind(now).execute(p).await.map(drop)?);
        Ok(())
    }

    /// Beats every `heartbeat` until `stop`, then leaves the instance list (what it still
    /// had under way is then taken over at once).
    pub async fn run_heartbeat(self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.beat().await {
                tracing::warn!(error = %e, "cannot record this instance's heartbeat");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.inner.heartbeat) => {}
            }
        }
        let _w = self.inner.outbox.writing().await;
        let _ = on_pool!(self.db(), p => sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(&self.inner.instance).execute(p).await.map(drop));
    }

    async fn try_lock(&self, intent: &Intent, detail: &str) -> Result<bool, sqlx::Error> {
        let _w = self.inner.outbox.writing().await;
        let now = micros(Utc::now());
        // On the durable pool: an intent lost in a database crash after its object became
        // visible would leave that object without an event. (Heartbeats and the multipart
        // uploads in progress go through the bookkeeping pool: losing one is harmless.)
        let n = on_pool!(self.inner.outbox.db(), p => sqlx::query("INSERT INTO commit_intents (location, id, instance, detail, created_us, remember_name, receipt, decrypt) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (location) DO NOTHING")
            .bind(&intent.location).bind(&intent.id).bind(&self.inner.instance).bind(detail).bind(now).bind(intent.remember_name)
            .bind(intent.receipt.as_ref().and_then(|r| serde_json::to_string(r).ok()))
            .bind(intent.decrypt.as_ref().and_then(|d| serde_json::to_string(d).ok()))
            .execute(p).await?.rows_affected());
        Ok(n == 1)
    }
}

#[async_trait]
impl CommitJournal for Journal {
    async fn begin(&self, intent: &Intent) -> Result<(), JournalError> {
        let detail =
            serde_json::to_string(intent).map_err(|e| JournalError::Database(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut wait = Duration::from_millis(20);
        loop {
            match self.try_lock(intent, &detail).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(JournalError::Database(e.to_string())),
            }
            if tokio::time::Instant::now() + wait > deadline {
                return Err(JournalError::Busy);
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(500));
        }
    }

    async fn cancel(&self, intent: &Intent) {
        let _w = self.inner.outbox.writing().await;
        let res = on_pool!(self.db(), p => sqlx::query("DELETE FROM commit_intents WHERE location = $1 AND id = $2")
            .bind(&intent.location).bind(&intent.id).execute(p).await.map(drop));
        if let Err(e) = res {
            tracing::warn!(location = %intent.location, error = %e, "cannot clear a commit intent; the reconciler will");
        }
    }

    fn tracker(&self) -> Option<Arc<dyn UploadTracker>> {
        Some(Arc::new(self.clone()))
    }
}

#[async_trait]
impl UploadTracker for Journal {
    async fn started(&self, u: &LiveUpload) -> Result<(), String> {
        let detail = serde_json::to_string(u).map_err(|e| e.to_string())?;
        let _w = self.inner.outbox.writing().await;
        let now = micros(Utc::now());
        on_pool!(self.db(), p => sqlx::query("INSERT INTO live_uploads (id, instance, detail, created_us) VALUES ($1, $2, $3, $4)")
            .bind(&u.upload_id).bind(&self.inner.instance).bind(&detail).bind(now)
            .execute(p).await.map(drop).map_err(|e| e.to_string()))
    }

    async fn ended(&self, upload_id: &str) {
        let _w = self.inner.outbox.writing().await;
        let res = on_pool!(self.db(), p => sqlx::query("DELETE FROM live_uploads WHERE id = $1")
            .bind(upload_id).execute(p).await.map(drop));
        if let Err(e) = res {
            tracing::warn!(upload_id, error = %e, "cannot forget a finished multipart upload");
        }
    }
}
