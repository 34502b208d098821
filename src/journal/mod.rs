//! What survives a process that dies at the wrong moment, kept in the accounts database: each
//! instance's heartbeat, commit intents (written before an object becomes visible, cleared
//! with its arrival event, which also turns what they ask for — a receipt, a decryption —
//! into work; also the lock that lets one writer at a time commit a location, and the fence
//! that lets only its holder record an outcome), and the S3 multipart uploads in progress.
//! The reconciler (`reconciler.rs`) takes over and finishes what an instance whose heartbeat
//! stopped left behind. Every time compared here is the database's (`wharf_clock`), never
//! a host's: hosts' clocks may disagree by any amount.

pub mod arrivals;
pub mod reconciler;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::db::{on_pool, Db};
use crate::events::outbox::{next_batch, Outbox};
use crate::session::{CommitJournal, DuplicateOf, Held, Intent, JournalError, Settlement};
use crate::storage::{LiveUpload, UploadTracker};

/// This instance's heartbeat, with how long it may stay silent before it is taken for dead
/// (`$1` id, `$2` lapse in µs): written by the database's clock.
const BEAT: &str = "INSERT INTO instances (id, heartbeat_us, lapse_us) VALUES ($1, (SELECT now_us FROM wharf_clock), $2) ON CONFLICT (id) DO UPDATE SET heartbeat_us = excluded.heartbeat_us, lapse_us = excluded.lapse_us";

/// `insert_intents` on Postgres: a batch (arrays) in one statement, with this instance's
/// heartbeat (an intent is taken over only once its holder has been silent for its lapse, so
/// the lapse counts from here). Rows go in location order, so two instances writing
/// intents for the same locations in opposite orders never deadlock; a location (or a
/// digest) held already, or taken by an earlier intent of the batch, is skipped.
const LOCK_PG: &str = "WITH beat AS (INSERT INTO instances (id, heartbeat_us, lapse_us) VALUES ($8, (SELECT now_us FROM wharf_clock), $9) ON CONFLICT (id) DO UPDATE SET heartbeat_us = excluded.heartbeat_us, lapse_us = excluded.lapse_us) \
INSERT INTO commit_intents (location, id, instance, detail, created_us, remember_name, receipt, decrypt, upload_id, job, digest_key) \
SELECT t.location, t.id, $8, t.detail, (SELECT now_us FROM wharf_clock), t.remember_name, t.receipt, t.decrypt, t.upload_id, t.job, t.digest_key FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::text[], $10::text[], $11::text[]) WITH ORDINALITY AS t(location, id, detail, remember_name, receipt, decrypt, upload_id, job, digest_key, ord) ORDER BY t.location, t.ord \
ON CONFLICT DO NOTHING RETURNING id, digest_key";
/// The earliest arrival of each of a batch's contents in its folder, within its window. A
/// statement of its own, after the intents: only a snapshot taken once the digest lock is
/// held sees what the previous holder recorded.
const DUPLICATES_PG: &str = "SELECT DISTINCT ON (digest_key) digest_key, event_id, path, arrived_us FROM arrived_digests WHERE digest_key = ANY($1) AND expires_us > (SELECT now_us FROM wharf_clock) ORDER BY digest_key, arrived_us";
const LOCK_ONE: &str = "INSERT INTO commit_intents (location, id, instance, detail, created_us, remember_name, receipt, decrypt, upload_id, job, digest_key) VALUES ($1, $2, $3, $4, (SELECT now_us FROM wharf_clock), $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING";
/// The earliest arrival of a content in a folder, within its window.
const DUPLICATE: &str = "SELECT event_id, path, arrived_us FROM arrived_digests WHERE digest_key = $1 AND expires_us > (SELECT now_us FROM wharf_clock) ORDER BY arrived_us LIMIT 1";
/// What became of an intent: who holds it, how a reconciler settled it, and whether its
/// owner's event is there.
const SETTLEMENT: &str = "SELECT (SELECT instance FROM commit_intents WHERE location = $1 AND id = $2), (SELECT outcome FROM intent_outcomes WHERE intent_id = $2), EXISTS (SELECT 1 FROM events WHERE id = $3)";

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
    /// A pool of one connection for the heartbeat alone, so that bookkeeping load never makes
    /// a live instance look dead.
    pulse: Db,
    /// Where `try_lock` queues intents for the batch writer, started on first use.
    locker: std::sync::OnceLock<mpsc::UnboundedSender<LockRequest>>,
    /// When this instance's heartbeats last went through, and since when they have without a
    /// gap (by this host's monotonic clock: only ever compared with itself).
    beats: Mutex<Beats>,
}

#[derive(Default)]
struct Beats {
    last: Option<Instant>,
    since: Option<Instant>,
}

/// An intent to write, its JSON detail, and where to say whether it took the lock (and
/// what its content duplicates, if it asked).
type LockRequest = (
    Intent,
    String,
    oneshot::Sender<Result<Option<Taken>, String>>,
);

/// An intent that took its lock, with the earlier arrival of its content, if any.
type Taken = Option<DuplicateOf>;

/// `(event_id, path, arrived_us)` of an earlier arrival.
type DuplicateRow = (Option<String>, Option<String>, Option<i64>);

fn duplicate_of((event_id, path, arrived): DuplicateRow) -> Option<DuplicateOf> {
    Some(DuplicateOf {
        event_id: event_id?,
        path: path?,
        arrived_at: crate::events::outbox::from_micros(arrived?),
    })
}

/// Intents written in one statement at most.
const LOCK_BATCH: usize = 128;

/// Writes queued intents: whatever is waiting when a write starts goes into it, so concurrent
/// commits share one flush to disk (the group commit the outbox does for events), and a lone
/// one is not delayed. A batch that fails is retried one intent at a time. An intent whose
/// commit stopped waiting (its session was dropped, or timed out) while it was being written,
/// or whose write failed (it may have been made with only its answer lost), is cleared again
/// before the next batch (see `Answer`): otherwise nothing clears it until the reconciler
/// takes it for forsaken (15 minutes on), and every upload to its location until then waits
/// out `LOCK_WAIT` and is refused.
async fn lock_loop(journal: Journal, mut rx: mpsc::UnboundedReceiver<LockRequest>) {
    while let Some(batch) = next_batch(&mut rx, LOCK_BATCH).await {
        let mut abandoned = Vec::new();
        let mut answer = |(intent, _, reply): LockRequest, res: Result<Option<Taken>, String>| {
            // A failed write may have been made with only its answer lost: its commit fails
            // (it never goes on to make anything visible), so its intent goes too.
            let (failed, took) = (res.is_err(), matches!(res, Ok(Some(_))));
            let unheard = reply.send(res).is_err();
            if failed || (unheard && took) {
                abandoned.push(intent);
            }
        };
        match journal.insert_intents(&batch).await {
            Ok(mut took) => {
                for req in batch {
                    let res = Ok(took.remove(&req.0.id));
                    answer(req, res);
                }
            }
            Err(e) if batch.len() == 1 => {
                for req in batch {
                    answer(req, Err(e.to_string()));
                }
            }
            // One at a time, so one bad intent fails alone; each cleared first, as the
            // batch may have been written with only its answer lost (it would find its own
            // intent holding the location).
            Err(_) => {
                for req in batch {
                    let res = match journal.clear(&req.0).await {
                        Ok(()) => journal
                            .insert_intents(std::slice::from_ref(&req))
                            .await
                            .map(|mut took| took.remove(&req.0.id))
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    answer(req, res);
                }
            }
        }
        for intent in abandoned {
            tracing::debug!(location = %intent.location, "a commit stopped waiting for its intent; clearing it");
            journal.cancel(&intent).await;
        }
    }
}

/// The answer to an intent queued for the batch writer. A commit that stops waiting for it
/// leaves no lock behind: if the writer has not answered yet, it sees nobody is listening and
/// clears the intent itself (`lock_loop`); if the answer came but was never read, the intent
/// is cleared here.
struct Answer<'a> {
    rx: oneshot::Receiver<Result<Option<Taken>, String>>,
    journal: &'a Journal,
    intent: &'a Intent,
    received: bool,
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        if self.received {
            return;
        }
        // Closed first: from here on the writer's answer fails, and it clears the intent.
        self.rx.close();
        if let Ok(Ok(Some(_))) = self.rx.try_recv() {
            let (journal, intent) = (self.journal.clone(), self.intent.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { journal.cancel(&intent).await });
            }
        }
    }
}

impl Journal {
    /// Deletes `intent`, if this instance still holds it. Safe to run late (in `keep_trying`,
    /// or after a failed write): every commit writes an intent with an id of its own, never
    /// reused, so this can never remove a later commit's lock.
    async fn clear(&self, intent: &Intent) -> Result<(), sqlx::Error> {
        let _w = self.inner.outbox.writing().await;
        on_pool!(self.inner.outbox.db(), p => sqlx::query("DELETE FROM commit_intents WHERE location = $1 AND id = $2 AND instance = $3")
            .bind(&intent.location).bind(&intent.id).bind(&self.inner.instance).execute(p).await.map(drop))
    }

    /// Runs `op` again in the background, backing off from 1 s to 30 s, until it goes
    /// through (about 18 minutes in all): for rows that must not outlive their work while this
    /// instance lives, written off during an outage of the database.
    fn keep_trying<F, Fut>(&self, what: &'static str, op: F)
    where
        F: Fn(Journal) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), sqlx::Error>> + Send,
    {
        let journal = self.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut wait = Duration::from_secs(1);
                for _ in 0..40 {
                    tokio::time::sleep(wait).await;
                    if op(journal.clone()).await.is_ok() {
                        return;
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                tracing::error!("gave up trying to {what}");
            });
        }
    }

    /// Deletes the tracking row of a multipart upload that is over.
    async fn forget(&self, upload_id: &str) -> Result<(), sqlx::Error> {
        let _w = self.inner.outbox.writing().await;
        on_pool!(self.bookkeeping(), p => sqlx::query("DELETE FROM live_uploads WHERE id = $1")
            .bind(upload_id).execute(p).await.map(drop))
    }

    /// A journal for this process, a new instance with an id of its own.
    pub fn new(outbox: Outbox, heartbeat: Duration) -> Journal {
        let pulse = outbox.db().unflushed(1);
        Journal {
            inner: Arc::new(Inner {
                outbox,
                instance: uuid::Uuid::now_v7().to_string(),
                heartbeat,
                pulse,
                locker: std::sync::OnceLock::new(),
                beats: Mutex::default(),
            }),
        }
    }

    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The pool whose commits are not flushed one by one: heartbeats' neighbours, claims,
    /// multipart uploads in progress. Intents go through the durable pool.
    fn bookkeeping(&self) -> &Db {
        self.inner.outbox.bookkeeping()
    }

    /// An instance silent for this long (of the database's time) is taken for dead.
    pub fn dead_after(&self) -> Duration {
        self.inner.heartbeat * 3
    }

    /// How long this instance's heartbeats have gone through without a gap: another instance
    /// is judged dead only by one that has itself been heard for that long (after an outage
    /// of the database every instance's heartbeat is stale, and none is dead).
    pub fn beating_for(&self) -> Duration {
        let b = self.inner.beats.lock().unwrap_or_else(|e| e.into_inner());
        match (b.last, b.since) {
            (Some(last), Some(since)) if last.elapsed() < self.inner.heartbeat * 2 => {
                since.elapsed()
            }
            _ => Duration::ZERO,
        }
    }

    fn heard(&self, at: Instant) {
        let mut b = self.inner.beats.lock().unwrap_or_else(|e| e.into_inner());
        let gap = b
            .last
            .is_none_or(|last| at.saturating_duration_since(last) > self.inner.heartbeat * 2);
        if gap || b.since.is_none() {
            b.since = Some(at);
        }
        b.last = Some(at);
    }

    /// Says this instance is alive (on its own connection, bounded by one heartbeat).
    pub async fn beat(&self) -> Result<(), String> {
        let sent = Instant::now();
        let _w = self.inner.outbox.writing().await;
        let lapse = self.dead_after().as_micros() as i64;
        let res = tokio::time::timeout(self.inner.heartbeat, async {
            on_pool!(&self.inner.pulse, p => sqlx::query(BEAT)
                    .bind(&self.inner.instance).bind(lapse).execute(p).await.map(drop))
        })
        .await;
        match res {
            Ok(Ok(())) => {
                self.heard(sent);
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the database did not answer within a heartbeat".into()),
        }
    }

    /// Beats every `heartbeat` until `stop`. Leaving the instance list is `leave`, once
    /// everything this instance runs has stopped.
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
    }

    /// Leaves the instance list: what this instance still had under way is taken over at
    /// once by the others.
    pub async fn leave(&self) {
        let _w = self.inner.outbox.writing().await;
        let _ = on_pool!(&self.inner.pulse, p => sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(&self.inner.instance).execute(p).await.map(drop));
    }

    /// Writes `intent` unless another holds its location (or its digest): whether it took
    /// the lock, with the earlier arrival of its content if any.
    async fn try_lock(&self, intent: &Intent, detail: &str) -> Result<Option<Taken>, String> {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            let req = (intent.clone(), detail.to_string(), oneshot::channel().0);
            let mut took = self
                .insert_intents(&[req])
                .await
                .map_err(|e| e.to_string())?;
            return Ok(took.remove(&intent.id));
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
        let mut answer = Answer {
            rx,
            journal: self,
            intent,
            received: false,
        };
        let res = (&mut answer.rx).await;
        answer.received = true;
        res.map_err(|_| "the intent writer has stopped".to_string())?
    }

    /// Writes a batch of intents in one transaction, with this instance's heartbeat; returns
    /// those that took their location (the others found it held, by another commit or one
    /// earlier in the batch), by id, with the earlier arrival of their content.
    async fn insert_intents(
        &self,
        batch: &[LockRequest],
    ) -> Result<std::collections::HashMap<String, Taken>, sqlx::Error> {
        let _w = self.inner.outbox.writing().await;
        let lapse = self.dead_after().as_micros() as i64;
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
        // visible would leave that object without an event.
        match self.inner.outbox.db() {
            Db::Postgres(p) => {
                let col = |f: &dyn Fn(&LockRequest) -> Option<String>| {
                    batch.iter().map(f).collect::<Vec<_>>()
                };
                let rows: Vec<(String, Option<String>)> = sqlx::query_as(LOCK_PG)
                    .bind(col(&|(i, _, _)| Some(i.location.clone())))
                    .bind(col(&|(i, _, _)| Some(i.id.clone())))
                    .bind(col(&|(_, d, _)| Some(d.clone())))
                    .bind(
                        batch
                            .iter()
                            .map(|(i, _, _)| i.remember_name)
                            .collect::<Vec<_>>(),
                    )
                    .bind(col(&|(i, _, _)| receipt(i)))
                    .bind(col(&|(i, _, _)| decrypt(i)))
                    .bind(col(&|(i, _, _)| i.upload_id.clone()))
                    .bind(&self.inner.instance)
                    .bind(lapse)
                    .bind(col(&|(i, _, _)| {
                        i.job.as_ref().map(|j| j.arrival_event_id.clone())
                    }))
                    .bind(col(&|(i, _, _)| i.digest_key()))
                    .fetch_all(p)
                    .await?;
                let keys: Vec<&str> = rows.iter().filter_map(|(_, k)| k.as_deref()).collect();
                let mut found: std::collections::HashMap<String, DuplicateOf> =
                    std::collections::HashMap::new();
                if !keys.is_empty() {
                    let dups: Vec<(String, String, String, i64)> = sqlx::query_as(DUPLICATES_PG)
                        .bind(&keys)
                        .fetch_all(p)
                        .await?;
                    for (key, event_id, path, at) in dups {
                        let dup = duplicate_of((Some(event_id), Some(path), Some(at)));
                        if let Some(d) = dup {
                            found.insert(key, d);
                        }
                    }
                }
                Ok(rows
                    .into_iter()
                    .map(|(id, key)| {
                        let dup = key.and_then(|k| found.get(&k).cloned());
                        (id, dup)
                    })
                    .collect())
            }
            Db::Sqlite(p) => {
                let mut tx = p.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query(BEAT)
                    .bind(&self.inner.instance)
                    .bind(lapse)
                    .execute(&mut *tx)
                    .await?;
                let mut took = std::collections::HashMap::new();
                let mut sorted: Vec<&LockRequest> = batch.iter().collect();
                sorted.sort_by(|a, b| a.0.location.cmp(&b.0.location));
                for (i, detail, _) in sorted {
                    let n = sqlx::query(LOCK_ONE)
                        .bind(&i.location)
                        .bind(&i.id)
                        .bind(&self.inner.instance)
                        .bind(detail)
                        .bind(i.remember_name)
                        .bind(receipt(i))
                        .bind(decrypt(i))
                        .bind(&i.upload_id)
                        .bind(i.job.as_ref().map(|j| &j.arrival_event_id))
                        .bind(i.digest_key())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if n == 1 {
                        let dup = match i.digest_key() {
                            Some(k) => sqlx::query_as::<_, DuplicateRow>(DUPLICATE)
                                .bind(k)
                                .fetch_optional(&mut *tx)
                                .await?
                                .and_then(duplicate_of),
                            None => None,
                        };
                        took.insert(i.id.clone(), dup);
                    }
                }
                tx.commit().await?;
                Ok(took)
            }
        }
    }

    /// Whether `intent` is still this instance's, beating with the answer.
    async fn holds(&self, intent: &Intent) -> Result<bool, sqlx::Error> {
        let _w = self.inner.outbox.writing().await;
        let lapse = self.dead_after().as_micros() as i64;
        let q =
            "SELECT COUNT(*) FROM commit_intents WHERE location = $1 AND id = $2 AND instance = $3";
        let n: i64 = match self.inner.outbox.db() {
            Db::Postgres(p) => {
                sqlx::query_scalar(&format!(
                    "WITH beat AS (INSERT INTO instances (id, heartbeat_us, lapse_us) VALUES ($3, (SELECT now_us FROM wharf_clock), $4) ON CONFLICT (id) DO UPDATE SET heartbeat_us = excluded.heartbeat_us, lapse_us = excluded.lapse_us) {q}"
                ))
                .bind(&intent.location)
                .bind(&intent.id)
                .bind(&self.inner.instance)
                .bind(lapse)
                .fetch_one(p)
                .await?
            }
            Db::Sqlite(p) => {
                let mut tx = p.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query(BEAT)
                    .bind(&self.inner.instance)
                    .bind(lapse)
                    .execute(&mut *tx)
                    .await?;
                let n = sqlx::query_scalar(q)
                    .bind(&intent.location)
                    .bind(&intent.id)
                    .bind(&self.inner.instance)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                n
            }
        };
        Ok(n > 0)
    }
}

#[async_trait]
impl CommitJournal for Journal {
    async fn begin(&self, intent: &Intent) -> Result<Held, JournalError> {
        let detail =
            serde_json::to_string(intent).map_err(|e| JournalError::Database(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut wait = Duration::from_millis(20);
        loop {
            let since = Instant::now();
            match self.try_lock(intent, &detail).await {
                Ok(Some(duplicate)) => return Ok(Held { since, duplicate }),
                Ok(None) => {}
                Err(e) => return Err(JournalError::Database(e)),
            }
            if tokio::time::Instant::now() + wait > deadline {
                return Err(JournalError::Busy);
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(500));
        }
    }

    async fn confirm(&self, intent: &Intent, held: &mut Held) -> Result<(), JournalError> {
        // Another instance takes an intent over only once its holder has been silent for
        // `dead_after` of the database's time, counted from the heartbeat written with the
        // statement sent at `held.since`: until half of that has passed on this host's
        // monotonic clock (which a paused process's clock keeps counting), nobody can have.
        if held.since.elapsed() < self.dead_after() / 2 {
            return Ok(());
        }
        let since = Instant::now();
        match self.holds(intent).await {
            Ok(true) => {
                held.since = since;
                Ok(())
            }
            Ok(false) => Err(JournalError::Taken),
            Err(e) => Err(JournalError::Database(e.to_string())),
        }
    }

    async fn cancel(&self, intent: &Intent) {
        if let Err(e) = self.clear(intent).await {
            // The intent must not outlive its commit (the reconciler takes over a live
            // instance's intents only once they are forsaken): keep trying, through an outage.
            tracing::warn!(location = %intent.location, error = %e, "cannot clear a commit intent; retrying");
            let intent = intent.clone();
            self.keep_trying("clear a commit intent", move |j| {
                let intent = intent.clone();
                async move { j.clear(&intent).await }
            });
        }
    }

    async fn hand_over(&self, intent: &Intent) {
        let _w = self.inner.outbox.writing().await;
        let res = on_pool!(self.inner.outbox.db(), p => sqlx::query("UPDATE commit_intents SET instance = '' WHERE location = $1 AND id = $2 AND instance = $3")
            .bind(&intent.location).bind(&intent.id).bind(&self.inner.instance).execute(p).await.map(drop));
        match res {
            Ok(()) => {
                tracing::warn!(location = %intent.location, "storage's answer was not definite: the commit is left to the reconciler, which settles it by what storage holds")
            }
            Err(e) => {
                tracing::warn!(location = %intent.location, error = %e, "cannot hand a commit over to the reconciler; it settles it once 15 minutes old")
            }
        }
    }

    async fn settlement(
        &self,
        intent: &Intent,
        event_id: &str,
    ) -> Result<Settlement, JournalError> {
        let (holder, outcome, recorded): (Option<String>, Option<String>, bool) =
            on_pool!(self.inner.outbox.db(), p => sqlx::query_as(SETTLEMENT)
                .bind(&intent.location).bind(&intent.id).bind(event_id)
                .fetch_one(p).await)
            .map_err(|e| JournalError::Database(e.to_string()))?;
        Ok(match (recorded, holder, outcome.as_deref()) {
            // A taker records the arrival under the intent's own event id: its settlement
            // says who did (the owner must then check what it published since).
            (_, _, Some(crate::events::outbox::ANNOUNCED)) => Settlement::Announced,
            (true, _, _) => Settlement::Recorded,
            (_, Some(h), _) if h == self.inner.instance => Settlement::Held,
            (_, _, Some(crate::events::outbox::NOT_COMMITTED)) => Settlement::NotCommitted,
            (_, Some(_), _) => Settlement::Elsewhere,
            _ => Settlement::Unknown,
        })
    }

    fn tracker(&self) -> Option<Arc<dyn UploadTracker>> {
        Some(Arc::new(self.clone()))
    }
}

#[async_trait]
impl UploadTracker for Journal {
    async fn creating(&self, u: &LiveUpload) -> Result<(), String> {
        let detail = serde_json::to_string(u).map_err(|e| e.to_string())?;
        let inserted = {
            let _w = self.inner.outbox.writing().await;
            // Durable: once the multipart upload exists, this row is all that says it is
            // wharf's (the reconciler never aborts an upload no row names).
            on_pool!(self.inner.outbox.db(), p => sqlx::query("INSERT INTO live_uploads (id, instance, detail, created_us) VALUES ($1, $2, $3, (SELECT now_us FROM wharf_clock))")
                .bind(&u.upload_id).bind(&self.inner.instance).bind(&detail)
                .execute(p).await.map(drop).map_err(|e| e.to_string()))
        };
        if inserted.is_err() {
            // The insert may have committed with its answer lost. The upload fails here and
            // is never created, so the row goes: the reconciler takes over only the rows of
            // instances that are gone, and would never remove this live one's.
            self.ended(&u.upload_id).await;
        }
        inserted
    }

    async fn started(&self, pending: &str, upload_id: &str) -> Result<(), String> {
        let _w = self.inner.outbox.writing().await;
        let n = on_pool!(self.bookkeeping(), p => sqlx::query("UPDATE live_uploads SET id = $2 WHERE id = $1 AND instance = $3")
            .bind(pending).bind(upload_id).bind(&self.inner.instance)
            .execute(p).await.map(|r| r.rows_affected()).map_err(|e| e.to_string()))?;
        if n == 0 {
            return Err("the upload was taken over by another server".into());
        }
        Ok(())
    }

    async fn ended(&self, upload_id: &str) {
        if let Err(e) = self.forget(upload_id).await {
            // The row must not outlive the upload (the reconciler only takes a dead
            // instance's rows over): keep trying in the background, through an outage.
            tracing::warn!(upload_id, error = %e, "cannot forget a finished multipart upload; retrying");
            let id = upload_id.to_string();
            self.keep_trying("forget a finished multipart upload", move |j| {
                let id = id.clone();
                async move { j.forget(&id).await }
            });
        }
    }
}
