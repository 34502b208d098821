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
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::db::{on_pool, Db};
use crate::events::outbox::{micros, next_batch, Outbox};
use crate::session::{CommitJournal, Intent, JournalError};
use crate::storage::{LiveUpload, UploadTracker};

/// `insert_intents` on Postgres: a batch (arrays in arrival order) in one statement; a
/// location held already, or taken by an earlier intent of the batch, is skipped.
const LOCK_PG: &str = "INSERT INTO commit_intents (location, id, instance, detail, created_us, remember_name, receipt, decrypt) \
SELECT t.location, t.id, $7, t.detail, $8, t.remember_name, t.receipt, t.decrypt FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[]) WITH ORDINALITY AS t(location, id, detail, remember_name, receipt, decrypt, ord) ORDER BY t.ord \
ON CONFLICT (location) DO NOTHING RETURNING id";

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
    /// Where `try_lock` queues intents for the batch writer, started on first use.
    locker: std::sync::OnceLock<mpsc::UnboundedSender<LockRequest>>,
}

/// An intent to write, its JSON detail, and where to say whether it took the lock.
type LockRequest = (Intent, String, oneshot::Sender<Result<bool, String>>);

/// Intents written in one statement at most.
const LOCK_BATCH: usize = 128;

/// Writes queued intents: whatever is waiting when a write starts goes into it, so concurrent
/// commits share one flush to disk (the group commit the outbox does for events), and a lone
/// one is not delayed. A batch that fails is retried one intent at a time.
async fn lock_loop(journal: Journal, mut rx: mpsc::UnboundedReceiver<LockRequest>) {
    while let Some(batch) = next_batch(&mut rx, LOCK_BATCH).await {
        match journal.insert_intents(&batch).await {
            Ok(took) => {
                for (intent, _, reply) in batch {
                    let _ = reply.send(Ok(took.contains(&intent.id)));
                }
            }
            Err(e) if batch.len() == 1 => {
                for (_, _, reply) in batch {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
            // One at a time, so one bad intent fails alone.
            Err(_) => {
                for req in batch {
                    let res = journal.insert_intents(std::slice::from_ref(&req)).await;
                    let _ = req.2.send(
                        res.map(|took| took.contains(&req.0.id))
                            .map_err(|e| e.to_string()),
                    );
                }
            }
        }
    }
}

impl Journal {
    /// A journal for this process, a new instance with an id of its own.
    pub fn new(outbox: Outbox, heartbeat: Duration) -> Journal {
        Journal {
            inner: Arc::new(Inner {
                outbox,
                instance: uuid::Uuid::now_v7().to_string(),
                heartbeat,
                locker: std::sync::OnceLock::new(),
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

    /// Writes `intent` unless another holds its location: whether it took the lock.
    async fn try_lock(&self, intent: &Intent, detail: &str) -> Result<bool, String> {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            let req = (intent.clone(), detail.to_string(), oneshot::channel().0);
            let took = self
                .insert_intents(&[req])
                .await
                .map_err(|e| e.to_string())?;
            return Ok(took.contains(&intent.id));
        };
        let locker = self.inner.locker.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            rt.spawn(lock_loop(self.clone(), rx));
            tx
        });
        let (tx, rx) = oneshot::channel();
        locker
            .send((intent.clone(), detail.to_string(), tx))
            .map_err(|_| "the intent writer has stopped".to_string())?;
        rx.await
            .map_err(|_| "the intent writer has stopped".to_string())?
    }

    /// Writes a batch of intents in one transaction; returns the ids of those that took
    /// their location (the others found it held, by another commit or one earlier in the
    /// batch).
    async fn insert_intents(&self, batch: &[LockRequest]) -> Result<Vec<String>, sqlx::Error> {
        let _w = self.inner.outbox.writing().await;
        let now = micros(Utc::now());
        let receipt = |i: &Intent| {
            i.receipt
                .as_ref()
                .and_then(|r| serde_json::to_string(r).ok())
        };
        let decrypt = |i: &Intent| {
            i.decrypt
                .as_ref()
                .and_then(|d| serde_json::to_string(d).ok())
        };
        // On the durable pool: an intent lost in a database crash after its object became
        // visible would leave that object without an event. (Heartbeats and the multipart
        // uploads in progress go through the bookkeeping pool: losing one is harmless.)
        match self.inner.outbox.db() {
            Db::Postgres(p) => {
                sqlx::query_scalar(LOCK_PG)
                    .bind(
                        batch
                            .iter()
                            .map(|(i, _, _)| i.location.as_str())
                            .collect::<Vec<_>>(),
                    )
                    .bind(
                        batch
                            .iter()
                            .map(|(i, _, _)| i.id.as_str())
                            .collect::<Vec<_>>(),
                    )
                    .bind(batch.iter().map(|(_, d, _)| d.as_str()).collect::<Vec<_>>())
                    .bind(
                        batch
                            .iter()
                            .map(|(i, _, _)| i.remember_name)
                            .collect::<Vec<_>>(),
                    )
                    .bind(batch.iter().map(|(i, _, _)| receipt(i)).collect::<Vec<_>>())
                    .bind(batch.iter().map(|(i, _, _)| decrypt(i)).collect::<Vec<_>>())
                    .bind(&self.inner.instance)
                    .bind(now)
                    .fetch_all(p)
                    .await
            }
            Db::Sqlite(p) => {
                let mut tx = p.begin_with("BEGIN IMMEDIATE").await?;
                let mut took = Vec::new();
                for (i, detail, _) in batch {
                    let n = sqlx::query("INSERT INTO commit_intents (location, id, instance, detail, created_us, remember_name, receipt, decrypt) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (location) DO NOTHING")
                        .bind(&i.location).bind(&i.id).bind(&self.inner.instance).bind(detail).bind(now).bind(i.remember_name)
                        .bind(receipt(i)).bind(decrypt(i))
                        .execute(&mut *tx).await?.rows_affected();
                    if n == 1 {
                        took.push(i.id.clone());
                    }
                }
                tx.commit().await?;
                Ok(took)
            }
        }
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
                Err(e) => return Err(JournalError::Database(e)),
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
