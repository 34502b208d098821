//! The outbox: events and their per-sink deliveries in the accounts database. Recording is
//! one transaction; claiming takes, per sink, only the oldest pending event of each account
//! (so delivery keeps commit order per account) under a lease, with `FOR UPDATE SKIP LOCKED`
//! on Postgres so instances never hold the same delivery at once. The work an arrival asks
//! for beyond its event (a receipt, a decryption job) is recorded in the same transaction.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::Row as _;
use tokio::sync::{mpsc, Notify};

use super::Event;
use crate::db::{on_pool, Db};

/// SQLite must take its write lock when the transaction starts: a deferred transaction that
/// reads first and writes later fails outright (SQLITE_BUSY_SNAPSHOT, no busy wait) whenever
/// an upload committed an event in between.
pub(crate) fn begin(db: &Db) -> &'static str {
    match db {
        Db::Sqlite(_) => "BEGIN IMMEDIATE",
        Db::Postgres(_) => "BEGIN",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("event outbox: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event outbox: the committer has stopped")]
    Closed,
    /// The statement that recorded a group of deliveries failed: each of them gets its error.
    #[error("event outbox: {0}")]
    Group(Arc<sqlx::Error>),
}

/// The commit intent an event settles (`journal/`): the event is recorded only in the
/// transaction that deletes this intent *as held by `owner`*, so an instance whose work was
/// taken over (its heartbeat lapsed: a paused VM, a partition) records nothing.
#[derive(Debug, Clone)]
pub struct IntentRef {
    pub location: String,
    pub id: String,
    /// The instance that must hold the intent.
    pub owner: String,
    /// Whether the intent asks for more than its clearing (a name to remember, a receipt,
    /// a decryption).
    pub extras: bool,
    /// The content's key in its folder's digest index, and how long it counts there
    /// (microseconds): recorded with an announcing event.
    pub digest: Option<(String, i64)>,
}

impl IntentRef {
    /// `intent` as held by `owner`.
    pub fn of(intent: &crate::session::Intent, owner: &str) -> IntentRef {
        IntentRef {
            location: intent.location.clone(),
            id: intent.id.clone(),
            owner: owner.to_string(),
            extras: intent.extras(),
            digest: intent.digest_key().zip(
                intent
                    .digest
                    .as_ref()
                    .map(|d| (d.window_s as i64).saturating_mul(1_000_000)),
            ),
        }
    }
}

/// How a commit intent taken over by a reconciler was settled (`intent_outcomes`).
pub const ANNOUNCED: &str = "announced";
pub const NOT_COMMITTED: &str = "not_committed";

/// An event to record, with what its transaction also settles.
#[derive(Clone)]
struct Record {
    event: Event,
    staged_remove: Option<String>,
    /// The commit intent this event settles.
    intent: Option<IntentRef>,
    /// The decryption job (its arrival's event id) this event is the outcome of: deleted in
    /// the same transaction, and the event recorded only if the job was still there.
    settles_job: Option<String>,
    /// A reconciler's settlement of a taken-over intent: how it was settled, kept for the
    /// intent's first owner.
    outcome: Option<&'static str>,
}

impl Record {
    /// Asks only for its event, the event's deliveries, the clearing of its intent and the
    /// digest it puts in its folder's duplicate index.
    fn plain(&self) -> bool {
        self.staged_remove.is_none()
            && self.settles_job.is_none()
            && self.outcome.is_none()
            && !self
                .intent
                .as_ref()
                .is_some_and(|i| i.extras && super::announces(&self.event.kind))
    }
}

/// Waits for the next queued item, then takes whatever else is already waiting, up to `max`
/// in all (group commit: a lone item is not delayed). `None` once the queue is closed.
pub(crate) async fn next_batch<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    max: usize,
) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

type Queued = (Record, tokio::sync::oneshot::Sender<Result<bool>>);

/// Records at most this many events in one transaction.
const GROUP: usize = 256;

/// Commits queued records: whatever is waiting when a transaction starts goes into it, so
/// concurrent closes share one flush to disk, and a lone one is not delayed. A group whose
/// transaction fails is retried one record at a time, so one bad record fails alone.
async fn commit_loop(outbox: Outbox, mut rx: mpsc::UnboundedReceiver<Queued>) {
    while let Some(mut group) = next_batch(&mut rx, GROUP).await {
        let records: Vec<Record> = group.iter().map(|(r, _)| r.clone()).collect();
        match outbox.commit_records(&records).await {
            Ok(done) => {
                for ((_, reply), recorded) in group.into_iter().zip(done) {
                    let _ = reply.send(Ok(recorded));
                }
            }
            Err(e) if group.len() == 1 => {
                if let Some((_, reply)) = group.pop() {
                    let _ = reply.send(Err(e));
                }
            }
            // One at a time, so one bad record fails alone. A group whose COMMIT went
            // through but whose answer was lost is harmless to retry: an event already there
            // is not recorded twice, and an intent already cleared records nothing.
            Err(_) => {
                for (r, reply) in group {
                    let res = outbox.commit_records(std::slice::from_ref(&r)).await;
                    let _ = reply.send(res.map(|done| done.first().copied().unwrap_or(false)));
                }
            }
        }
    }
}

/// A run's deliveries acknowledged up to `last_seq`, to record (`Outbox::delivered`).
struct DeliveredUpTo {
    sink: String,
    lease: String,
    username: String,
    last_seq: i64,
}

type QueuedDelivered = (DeliveredUpTo, tokio::sync::oneshot::Sender<Result<bool>>);

/// Records acknowledged deliveries: whatever runs ended while one statement was in flight go
/// into the next one (the dispatcher delivers many accounts' runs at once, and each used to
/// cost a statement of its own), and a lone one is not delayed.
async fn delivered_loop(outbox: Outbox, mut rx: mpsc::UnboundedReceiver<QueuedDelivered>) {
    while let Some(group) = next_batch(&mut rx, GROUP).await {
        let (items, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        match outbox.mark_delivered(&items).await {
            Ok(done) => {
                for (reply, mine) in replies.into_iter().zip(done) {
                    let _ = reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(OutboxError::Group(e.clone())));
                }
            }
        }
    }
}

/// `mark_delivered` on Postgres: one statement for a group (arrays, `$5` the item's place),
/// returning the places of the items that were still their claim's.
const DELIVERED_PG: &str = "WITH input AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int4[]) AS t(sink, lease, username, last_seq, ord)), \
done AS (UPDATE event_deliveries d SET state = 'delivered', attempts = d.attempts + 1, delivered_us = (SELECT now_us FROM wharf_clock), lease_owner = NULL, lease_until_us = 0, last_error = NULL \
FROM input i WHERE d.sink = i.sink AND d.lease_owner = i.lease AND d.username = i.username AND d.state = 'pending' AND d.event_seq <= i.last_seq RETURNING i.ord) \
SELECT DISTINCT ord FROM done";
/// `mark_delivered` on SQLite, one item at a time in one transaction.
const DELIVERED: &str = "UPDATE event_deliveries SET state = 'delivered', attempts = attempts + 1, delivered_us = (SELECT now_us FROM wharf_clock), lease_owner = NULL, lease_until_us = 0, last_error = NULL WHERE sink = $1 AND lease_owner = $2 AND username = $3 AND state = 'pending' AND event_seq <= $4";

pub type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// The queue of the writer task kept in `cell` (the group committer, the delivery recorder),
/// the task started with `run` on first use; `None` outside a runtime (the caller writes
/// alone then).
fn started<T: Send + 'static, F>(
    cell: &std::sync::OnceLock<mpsc::UnboundedSender<T>>,
    run: impl FnOnce(mpsc::UnboundedReceiver<T>) -> F,
) -> Option<&mpsc::UnboundedSender<T>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Handle::try_current().ok()?;
    Some(cell.get_or_init(|| {
        let (tx, rx) = mpsc::unbounded_channel();
        rt.spawn(run(rx));
        tx
    }))
}

/// Queues `item` for a writer task and waits for its answer.
async fn ask<T, R>(
    writer: &mpsc::UnboundedSender<(T, tokio::sync::oneshot::Sender<Result<R>>)>,
    item: T,
) -> Result<R> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if writer.send((item, tx)).is_err() {
        return Err(OutboxError::Closed);
    }
    rx.await.map_err(|_| OutboxError::Closed)?
}

pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

/// A delivery handed to a dispatcher.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub seq: i64,
    pub event: Event,
    pub attempts: i32,
    /// How old the event is, by the database's clock.
    pub age: std::time::Duration,
    /// The claim this delivery belongs to.
    pub lease: String,
}

/// One event with the state of its deliveries, for `wharf events list`.
#[derive(Debug, Clone)]
pub struct Listed {
    pub event: Event,
    pub deliveries: Vec<DeliveryState>,
}

#[derive(Debug, Clone)]
pub struct DeliveryState {
    pub sink: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A temp-name upload waiting for the rename that makes it arrive.
pub type Staged = crate::session::StagedFacts;

/// The database's clock (`wharf_clock`, microseconds): every time one instance compares with
/// another's is read from it, never from a host's clock.
pub const NOW: &str = "(SELECT now_us FROM wharf_clock)";
/// The database's time now, in microseconds.
pub const NOW_QUERY: &str = "SELECT now_us FROM wharf_clock";

/// Deletes a commit intent (`journal/`) held by its owner in the transaction that records
/// its outcome, returning what the intent asked for besides: `(location, id, owner)`.
pub(crate) const CLEAR_INTENT: &str = "DELETE FROM commit_intents WHERE location = $1 AND id = $2 AND instance = $3 RETURNING remember_name, receipt, decrypt";
/// The built-in sink that writes receipts; it gets a delivery only for arrivals whose intent
/// names a receipt.
pub const RECEIPTS: &str = "receipts";
const RECEIPT_TARGET: &str =
    "INSERT INTO receipts (event_id, target) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING";
/// The NOTIFY payload of a transaction that may have queued work for a built-in sink (after
/// the sender's origin and a space; alone from an older instance).
pub const BUILTIN_WORK: &str = "builtin";

/// What a NOTIFY on `wharf_events` says to the instance whose outbox has origin `own`:
/// `None` when that instance sent it itself (its workers were woken in process already),
/// else whether the events may have work for a built-in sink. A payload without an origin
/// (the CLI's, an older instance's) is always someone else's.
pub fn notified(payload: &str, own: &str) -> Option<bool> {
    let (origin, rest) = payload.split_once(' ').unwrap_or((payload, ""));
    if origin == own {
        return None;
    }
    Some(payload == BUILTIN_WORK || rest == BUILTIN_WORK)
}

/// Whether `sink` is built in (its deliveries come only from arrivals that ask for them).
pub fn is_builtin(sink: &str) -> bool {
    sink == RECEIPTS || sink == DECRYPT
}

/// The built-in sink that decrypts PGP arrivals (`pgp/`); it gets a delivery only for
/// arrivals whose intent names a decryption.
pub const DECRYPT: &str = "decrypt";
const DECRYPT_JOB: &str =
    "INSERT INTO decrypt_jobs (event_id, job) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING";
/// A delivery of event `$1` to built-in sink `$2`.
const BUILTIN_DELIVERY: &str = "INSERT INTO event_deliveries (event_seq, sink, username, next_at_us) VALUES ($1, $2, $3, (SELECT now_us FROM wharf_clock)) ON CONFLICT (event_seq, sink) DO NOTHING";
const REMEMBER_NAME: &str = "INSERT INTO arrived_names (location, arrived_us) VALUES ($1, (SELECT now_us FROM wharf_clock)) ON CONFLICT (location) DO NOTHING";
/// An arrival's digest in its folder's index, until `$4` µs from now.
const DIGEST: &str = "INSERT INTO arrived_digests (digest_key, event_id, path, arrived_us, expires_us) VALUES ($1, $2, $3, (SELECT now_us FROM wharf_clock), (SELECT now_us FROM wharf_clock) + $4) ON CONFLICT DO NOTHING";
/// Whether a decryption job is there (locked until the transaction ends, on Postgres).
const JOB_THERE_PG: &str = "SELECT attempts FROM decrypt_jobs WHERE event_id = $1 FOR UPDATE";
const JOB_THERE: &str = "SELECT attempts FROM decrypt_jobs WHERE event_id = $1";
/// … and no commit of its plaintext is under way.
const JOB_IDLE: &str = "SELECT attempts FROM decrypt_jobs WHERE event_id = $1 AND NOT EXISTS (SELECT 1 FROM commit_intents WHERE job = $1)";
pub(crate) const SETTLED: &str = "INSERT INTO intent_outcomes (intent_id, outcome, created_us) VALUES ($1, $2, (SELECT now_us FROM wharf_clock)) ON CONFLICT (intent_id) DO NOTHING";

/// An `events` row; both databases decode it the same way (the outbox's claims, and the
/// lists of `query.rs`).
#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    pub(super) seq: i64,
    id: String,
    #[sqlx(rename = "type")]
    kind: String,
    username: String,
    subject: String,
    created_us: i64,
    body: String,
    location: Option<String>,
}

impl EventRow {
    pub(super) fn into_event(self) -> (i64, Event) {
        (
            self.seq,
            Event {
                id: self.id,
                kind: self.kind,
                username: self.username,
                subject: self.subject,
                time: from_micros(self.created_us),
                body: self.body,
                location: self.location,
            },
        )
    }
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    event: EventRow,
    attempts: i32,
    age_us: i64,
}

/// `sink, state, attempts, last_error, delivered_us`
type DeliveryRow = (String, String, i32, Option<String>, Option<i64>);

/// An event, unless one with its id is there already (a retry after a lost answer).
const INSERT_EVENT: &str = "INSERT INTO events (id, type, username, subject, created_us, body, location) VALUES ($1, $2, $3, $4, (SELECT now_us FROM wharf_clock), $5, $6) ON CONFLICT (id) DO NOTHING RETURNING seq";
const INSERT_DELIVERY: &str =
    "INSERT INTO event_deliveries (event_seq, sink, username, next_at_us) VALUES ($1, $2, $3, (SELECT now_us FROM wharf_clock))";
/// `commit_plain`: a group of events (arrays in commit order, each with the intent it clears,
/// `''` for none), a delivery of each to every sink (`$9`), the content digests of the
/// arrivals among them in their folders' duplicate index (`$11`, `''` for none, counting for
/// `$12` microseconds), and the NOTIFY that wakes other instances (`$13`: this outbox's
/// origin), in one statement (so one implicit transaction). An event with an intent is recorded (and its digest) only if its
/// intent, held by this instance (`$10`), was deleted here (fencing); an event whose id is
/// there already is not recorded again (a retry after a lost answer).
/// Data-modifying `WITH` parts always run to completion; the sequence numbers follow the
/// arrays' order, which keeps commit order per account. Returns, per input in order, whether
/// it was recorded (or already was, for one without an intent).
const RECORD_PLAIN: &str = "WITH input AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $11::text[], $12::int8[]) WITH ORDINALITY AS t(id, type, username, subject, body, location, loc, intent_id, digest_key, digest_window, ord)), \
clock AS (SELECT now_us FROM wharf_clock), \
cleared AS (DELETE FROM commit_intents ci USING input WHERE input.loc <> '' AND ci.location = input.loc AND ci.id = input.intent_id AND ci.instance = $10 RETURNING input.ord), \
ev AS (INSERT INTO events (id, type, username, subject, created_us, body, location) SELECT i.id, i.type, i.username, i.subject, (SELECT now_us FROM clock), i.body, NULLIF(i.location, '') FROM input i WHERE i.loc = '' OR i.ord IN (SELECT ord FROM cleared) ORDER BY i.ord ON CONFLICT (id) DO NOTHING RETURNING seq, username), \
deliveries AS (INSERT INTO event_deliveries (event_seq, sink, username, next_at_us) SELECT ev.seq, s.sink, ev.username, (SELECT now_us FROM clock) FROM ev CROSS JOIN unnest($9::text[]) AS s(sink)), \
digests AS (INSERT INTO arrived_digests (digest_key, event_id, path, arrived_us, expires_us) SELECT i.digest_key, i.id, i.subject, (SELECT now_us FROM clock), (SELECT now_us FROM clock) + i.digest_window FROM input i WHERE i.digest_key <> '' AND i.ord IN (SELECT ord FROM cleared) ON CONFLICT DO NOTHING) \
SELECT (i.loc = '' OR i.ord IN (SELECT ord FROM cleared)) AS recorded FROM input i CROSS JOIN (SELECT pg_notify('wharf_events', $13)) n ORDER BY i.ord";
/// The due, unclaimed heads (each account's oldest pending delivery) on SQLite, found one
/// account at a time through the queue index, so a claim costs the number of accounts with
/// pending deliveries, not the backlog.
const CLAIM_HEAD: &str = "WITH RECURSIVE accounts(username) AS (SELECT MIN(a0.username) FROM event_deliveries a0 WHERE a0.sink = $1 AND a0.state = 'pending' \
UNION ALL SELECT (SELECT MIN(x.username) FROM event_deliveries x WHERE x.sink = $1 AND x.state = 'pending' AND x.username > a.username) FROM accounts a WHERE a.username IS NOT NULL) \
SELECT d.event_seq, d.username FROM accounts a JOIN event_deliveries d ON d.sink = $1 AND d.event_seq = (SELECT MIN(y.event_seq) FROM event_deliveries y WHERE y.sink = $1 AND y.state = 'pending' AND y.username = a.username) \
WHERE a.username IS NOT NULL AND d.state = 'pending' AND d.next_at_us <= $2 AND d.lease_until_us <= $2 ORDER BY d.event_seq LIMIT $3";
/// An account's pending deliveries in commit order (the head and what follows it), those no
/// other claim holds.
const CLAIM_RUN: &str = "UPDATE event_deliveries SET lease_owner = $4, lease_until_us = $5 WHERE sink = $1 AND state = 'pending' AND lease_until_us <= $6 AND event_seq IN (SELECT event_seq FROM event_deliveries WHERE sink = $1 AND username = $2 AND state = 'pending' ORDER BY event_seq LIMIT $3)";
const CLAIMED: &str = "SELECT e.seq, e.id, e.type, e.username, e.subject, e.created_us, e.body, e.location, d.attempts, $3 - e.created_us AS age_us FROM event_deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.sink = $1 AND d.state = 'pending' AND d.lease_owner = $2 ORDER BY e.seq";

/// `claim` on Postgres in one statement, its cost bounded by the accounts with pending
/// deliveries and what it claims, never by the whole backlog or history:
/// - `clock`: the database's time, the only one leases are judged by;
/// - `accounts`: each account with a pending delivery, found by skipping through the queue
///   index one account at a time (a loose index scan);
/// - `firsts`: each such account's oldest pending delivery, its head;
/// - `heads`: the heads that are due and unclaimed, locked, skipping those another instance is
///   claiming right now (a head delivered or claimed meanwhile fails the re-check);
/// - `runs`: each head's account's first `$3` pending deliveries;
/// - the lease on those of them no other claim holds (a replayed older event may become an
///   account's head while a later run of it is leased), and their events in commit order.
///
/// Parameters: sink, accounts, run, lease token, lease length (µs). Public only so a test can
/// check its plan.
#[doc(hidden)]
pub const CLAIM_PG: &str = "WITH RECURSIVE clock AS (SELECT now_us FROM wharf_clock), accounts(username) AS (\
(SELECT a0.username FROM event_deliveries a0 WHERE a0.sink = $1 AND a0.state = 'pending' ORDER BY a0.username LIMIT 1) \
UNION ALL SELECT (SELECT x.username FROM event_deliveries x WHERE x.sink = $1 AND x.state = 'pending' AND x.username > a.username ORDER BY x.username LIMIT 1) FROM accounts a WHERE a.username IS NOT NULL), \
firsts AS (SELECT f.event_seq FROM accounts a CROSS JOIN LATERAL (SELECT y.event_seq FROM event_deliveries y WHERE y.sink = $1 AND y.state = 'pending' AND y.username = a.username ORDER BY y.event_seq LIMIT 1) f), \
heads AS (SELECT d.event_seq, d.username FROM event_deliveries d WHERE d.sink = $1 AND d.event_seq = ANY (ARRAY(SELECT event_seq FROM firsts)) AND d.state = 'pending' AND d.next_at_us <= (SELECT now_us FROM clock) AND d.lease_until_us <= (SELECT now_us FROM clock) ORDER BY d.event_seq LIMIT $2 FOR UPDATE SKIP LOCKED), \
runs AS (SELECT r.event_seq FROM heads h CROSS JOIN LATERAL (SELECT x.event_seq FROM event_deliveries x WHERE x.sink = $1 AND x.username = h.username AND x.state = 'pending' ORDER BY x.event_seq LIMIT $3) r), \
leased AS (UPDATE event_deliveries u SET lease_owner = $4, lease_until_us = (SELECT now_us FROM clock) + $5 WHERE u.sink = $1 AND u.state = 'pending' AND u.lease_until_us <= (SELECT now_us FROM clock) AND u.event_seq = ANY (ARRAY(SELECT event_seq FROM runs)) RETURNING u.event_seq, u.attempts) \
SELECT e.seq, e.id, e.type, e.username, e.subject, e.created_us, e.body, e.location, l.attempts, (SELECT now_us FROM clock) - e.created_us AS age_us FROM leased l JOIN events e ON e.seq = l.event_seq ORDER BY e.seq";

/// The outbox on the accounts database.
#[derive(Clone)]
pub struct Outbox {
    db: Db,
    /// Claims and delivery outcomes: losing one in a crash only means a redelivery, so
    /// they skip the per-commit flush that recording an event needs.
    bookkeeping: Db,
    sinks: Arc<Vec<String>>,
    /// SQLite has one writer at a time, and a writer that finds the file locked sleeps in
    /// growing steps (up to 100 ms) before retrying. Queueing this process's writers here
    /// instead hands the lock over at once, in order.
    sqlite_writer: Arc<tokio::sync::Mutex<()>>,
    /// Woken on every recorded event so dispatchers on this instance deliver at once.
    pub wake: Arc<Notify>,
    /// Woken only when a recorded event asks for a built-in sink's work (a receipt, a
    /// decryption): those sinks' workers would otherwise run two idle queries per event.
    pub wake_builtin: Arc<Notify>,
    /// Where `record` queues events for the group committer.
    committer: Arc<std::sync::OnceLock<mpsc::UnboundedSender<Queued>>>,
    /// Where `delivered` queues acknowledged deliveries for their writer.
    recorder: Arc<std::sync::OnceLock<mpsc::UnboundedSender<QueuedDelivered>>>,
    /// Names this process in its NOTIFYs, so its own listener skips them (`notified`).
    origin: Arc<str>,
}

impl Outbox {
    /// `sinks` are the names every new event is queued for.
    pub fn new(db: Db, sinks: Vec<String>) -> Self {
        Outbox {
            bookkeeping: db.bookkeeping(),
            db,
            sinks: Arc::new(sinks),
            sqlite_writer: Arc::default(),
            wake: Arc::new(Notify::new()),
            wake_builtin: Arc::new(Notify::new()),
            committer: Arc::default(),
            recorder: Arc::default(),
            origin: uuid::Uuid::new_v4().simple().to_string().into(),
        }
    }

    /// The origin this process's NOTIFYs carry (see `notified`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The NOTIFY payload of a commit of this process.
    fn notify_payload(&self, builtin: bool) -> String {
        if builtin {
            format!("{} {BUILTIN_WORK}", self.origin)
        } else {
            self.origin.to_string()
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The pool whose commits are not flushed one by one (see `Db::bookkeeping`): what a
    /// crash of wharf (not of the database) never loses.
    pub fn bookkeeping(&self) -> &Db {
        &self.bookkeeping
    }

    /// Held for the length of a write on SQLite (one writer at a time, handed over in
    /// order); nothing on Postgres. Every writer of this database in the process takes it.
    pub(crate) async fn writing(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.db {
            Db::Sqlite(_) => Some(self.sqlite_writer.lock().await),
            Db::Postgres(_) => None,
        }
    }

    /// Writes the event and one pending delivery per sink, atomically. `staged_remove` also
    /// deletes a staged temp upload in the same transaction (a rename that arrives), and
    /// `intent` the commit intent the event settles: then the event is recorded only if this
    /// transaction deleted that intent as held by its owner. Returns whether the event is
    /// recorded: false only when the intent was not there any more (another instance took
    /// the work over, or an earlier attempt whose answer was lost recorded it). Concurrent
    /// calls share one transaction (group commit: one flush to disk for all of them); a lone
    /// call is committed at once.
    pub async fn record(
        &self,
        e: &Event,
        staged_remove: Option<&str>,
        intent: Option<&IntentRef>,
    ) -> Result<bool> {
        self.enqueue(Record {
            event: e.clone(),
            staged_remove: staged_remove.map(String::from),
            intent: intent.cloned(),
            settles_job: None,
            outcome: None,
        })
        .await
    }

    /// A reconciler's settlement of an intent it took over: `e` (if any) recorded in the
    /// transaction that deletes the intent, with `outcome` kept for the intent's first owner.
    pub async fn settle(
        &self,
        e: Option<&Event>,
        staged_remove: Option<&str>,
        intent: &IntentRef,
        outcome: &'static str,
    ) -> Result<bool> {
        let Some(e) = e else {
            let _writing = self.writing().await;
            return Ok(on_pool!(&self.db, pool => {
                let mut tx = pool.begin_with(begin(&self.db)).await?;
                let cleared = sqlx::query(CLEAR_INTENT)
                    .bind(&intent.location).bind(&intent.id).bind(&intent.owner)
                    .fetch_optional(&mut *tx).await?.is_some();
                if cleared {
                    sqlx::query(SETTLED).bind(&intent.id).bind(outcome).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                cleared
            }));
        };
        self.enqueue(Record {
            event: e.clone(),
            staged_remove: staged_remove.map(String::from),
            intent: Some(intent.clone()),
            settles_job: None,
            outcome: Some(outcome),
        })
        .await
    }

    /// Records `e`, the outcome of the decryption job of arrival `job`, and deletes the job
    /// in the same transaction; when the job is already gone (another run recorded its
    /// outcome) nothing is recorded. So each job has exactly one outcome event. A plaintext's
    /// `intent` (fenced as `record`'s) is cleared with it; without one, the job is settled
    /// only while no commit of its plaintext is under way. `outcome` marks a reconciler's
    /// settlement of an intent it took over.
    pub async fn record_job_outcome(
        &self,
        e: &Event,
        job: &str,
        intent: Option<&IntentRef>,
        outcome: Option<&'static str>,
    ) -> Result<bool> {
        self.enqueue(Record {
            event: e.clone(),
            staged_remove: None,
            intent: intent.cloned(),
            settles_job: Some(job.to_string()),
            outcome,
        })
        .await
    }

    async fn enqueue(&self, r: Record) -> Result<bool> {
        let Some(committer) = started(&self.committer, |rx| commit_loop(self.clone(), rx)) else {
            let done = self.commit_records(std::slice::from_ref(&r)).await?;
            return Ok(done.first().copied().unwrap_or(false));
        };
        ask(committer, r).await
    }

    /// One transaction for all of `records`; whether each was recorded.
    async fn commit_records(&self, records: &[Record]) -> Result<Vec<bool>> {
        let _writing = self.writing().await;
        // Whether any of them may ask for a receipt or a decryption.
        let builtin = records
            .iter()
            .any(|r| r.intent.as_ref().is_some_and(|i| i.extras));
        let done = match &self.db {
            Db::Postgres(pool) if records.iter().all(Record::plain) => {
                self.commit_plain(pool, records).await?
            }
            _ => self.commit_each(records, builtin).await?,
        };
        self.wake.notify_waiters();
        if builtin {
            self.wake_builtin.notify_waiters();
        }
        Ok(done)
    }

    /// Records that ask only for an event, its deliveries and the clearing of an intent (all
    /// of a busy instance's small uploads), on Postgres: one statement for the whole group,
    /// one round trip instead of three per event plus the transaction's own.
    async fn commit_plain(&self, pool: &sqlx::PgPool, records: &[Record]) -> Result<Vec<bool>> {
        let n = records.len();
        let mut cols: [Vec<&str>; 8] = std::array::from_fn(|_| Vec::with_capacity(n));
        // The digest an announcing event puts in its folder's duplicate index.
        let mut digest_keys = Vec::with_capacity(n);
        let mut digest_windows = Vec::with_capacity(n);
        let mut owner = "";
        for r in records {
            let e = &r.event;
            let (loc, id) = r
                .intent
                .as_ref()
                .map_or(("", ""), |i| (i.location.as_str(), i.id.as_str()));
            if let Some(i) = &r.intent {
                owner = i.owner.as_str();
            }
            let digest = r
                .intent
                .as_ref()
                .and_then(|i| i.digest.as_ref())
                .filter(|_| super::announces(&e.kind));
            digest_keys.push(digest.map_or("", |(k, _)| k.as_str()));
            digest_windows.push(digest.map_or(0, |(_, w)| *w));
            let row = [
                e.id.as_str(),
                e.kind.as_str(),
                e.username.as_str(),
                e.subject.as_str(),
                e.body.as_str(),
                e.location.as_deref().unwrap_or(""),
                loc,
                id,
            ];
            for (c, v) in cols.iter_mut().zip(row) {
                c.push(v);
            }
        }
        let mut q = sqlx::query_scalar::<_, bool>(RECORD_PLAIN);
        for c in cols {
            q = q.bind(c);
        }
        Ok(q.bind(self.sinks.as_slice())
            .bind(owner)
            .bind(digest_keys)
            .bind(digest_windows)
            .bind(self.origin.as_ref())
            .fetch_all(pool)
            .await?)
    }

    /// Records one by one in one transaction (SQLite, and records that settle more than an
    /// intent).
    async fn commit_each(&self, records: &[Record], builtin: bool) -> Result<Vec<bool>> {
        let mut done = Vec::with_capacity(records.len());
        on_pool!(&self.db, pool => {
            let mut tx = pool.begin_with(begin(&self.db)).await?;
            for r in records {
                let e = &r.event;
                // A job's outcome only while the job is there (and, without a plaintext
                // intent of its own, while no commit of its plaintext is under way).
                if let Some(job) = &r.settles_job {
                    let q = match (&r.intent, &self.db) {
                        (Some(_), Db::Postgres(_)) => JOB_THERE_PG,
                        (Some(_), Db::Sqlite(_)) => JOB_THERE,
                        (None, _) => JOB_IDLE,
                    };
                    let there: Option<i32> = sqlx::query_scalar(q).bind(job).fetch_optional(&mut *tx).await?;
                    if there.is_none() {
                        done.push(false);
                        continue;
                    }
                }
                // Fencing: nothing is recorded for an intent this owner no longer holds.
                let extras: Option<(bool, Option<String>, Option<String>)> = match &r.intent {
                    Some(i) => match sqlx::query_as(CLEAR_INTENT)
                        .bind(&i.location)
                        .bind(&i.id)
                        .bind(&i.owner)
                        .fetch_optional(&mut *tx)
                        .await?
                    {
                        Some(x) => Some(x),
                        None => {
                            done.push(false);
                            continue;
                        }
                    },
                    None => None,
                };
                if let Some(job) = &r.settles_job {
                    sqlx::query("DELETE FROM decrypt_jobs WHERE event_id = $1")
                        .bind(job)
                        .execute(&mut *tx)
                        .await?;
                }
                done.push(true);
                let Some(seq): Option<i64> = sqlx::query_scalar(INSERT_EVENT)
                    .bind(&e.id)
                    .bind(&e.kind)
                    .bind(&e.username)
                    .bind(&e.subject)
                    .bind(&e.body)
                    .bind(&e.location)
                    .fetch_optional(&mut *tx)
                    .await?
                else {
                    continue; // recorded by an earlier attempt whose answer was lost
                };
                for sink in self.sinks.iter() {
                    sqlx::query(INSERT_DELIVERY)
                        .bind(seq)
                        .bind(sink)
                        .bind(&e.username)
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some(loc) = &r.staged_remove {
                    sqlx::query("DELETE FROM staged_uploads WHERE location = $1")
                        .bind(loc)
                        .execute(&mut *tx)
                        .await?;
                }
                if let (Some(i), Some((remember, receipt, decrypt))) = (&r.intent, extras) {
                    if let (Some((key, window)), true) = (&i.digest, super::announces(&e.kind)) {
                        sqlx::query(DIGEST).bind(key).bind(&e.id).bind(&e.subject).bind(window).execute(&mut *tx).await?;
                    }
                    if super::announces(&e.kind) {
                        if remember {
                            sqlx::query(REMEMBER_NAME).bind(&i.location).execute(&mut *tx).await?;
                        }
                        if let Some(target) = receipt {
                            sqlx::query(RECEIPT_TARGET).bind(&e.id).bind(target).execute(&mut *tx).await?;
                            sqlx::query(BUILTIN_DELIVERY).bind(seq).bind(RECEIPTS).bind(&e.username).execute(&mut *tx).await?;
                        }
                        if let Some(job) = decrypt {
                            sqlx::query(DECRYPT_JOB).bind(&e.id).bind(job).execute(&mut *tx).await?;
                            sqlx::query(BUILTIN_DELIVERY).bind(seq).bind(DECRYPT).bind(&e.username).execute(&mut *tx).await?;
                        }
                    }
                    if let Some(outcome) = r.outcome {
                        sqlx::query(SETTLED).bind(&i.id).bind(outcome).execute(&mut *tx).await?;
                    }
                }
            }
            if matches!(self.db, Db::Postgres(_)) {
                // Other instances LISTEN for this; it is sent when the transaction commits.
                sqlx::query("SELECT pg_notify('wharf_events', $1)")
                    .bind(self.notify_payload(builtin))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(done)
    }

    /// Records `e` with the move of expectation window `(name, opens_us)` from state `from`
    /// (`any`: open or late) to `to`, in one transaction: nothing (false) when the window is
    /// no longer in `from` (another instance moved it first).
    pub async fn record_window(
        &self,
        e: &Event,
        (name, opens_us): (&str, i64),
        from: &str,
        to: &str,
        met_by: Option<&str>,
        late: bool,
    ) -> std::result::Result<bool, sqlx::Error> {
        let _writing = self.writing().await;
        let moved = on_pool!(&self.db, pool => {
            let mut tx = pool.begin_with(begin(&self.db)).await?;
            let n = sqlx::query("UPDATE expectation_windows SET state = $3, met_by = COALESCE($4, met_by), late = $5, settled_us = (SELECT now_us FROM wharf_clock) \
                WHERE expectation = $1 AND opens_us = $2 AND (state = $6 OR ($6 = 'any' AND state IN ('open', 'late')))")
                .bind(name).bind(opens_us).bind(to).bind(met_by).bind(late).bind(from)
                .execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                tx.rollback().await?;
                false
            } else {
                if let Some(seq) = sqlx::query_scalar::<_, i64>(INSERT_EVENT)
                    .bind(&e.id).bind(&e.kind).bind(&e.username).bind(&e.subject).bind(&e.body).bind(&e.location)
                    .fetch_optional(&mut *tx).await?
                {
                    for sink in self.sinks.iter() {
                        sqlx::query(INSERT_DELIVERY).bind(seq).bind(sink).bind(&e.username).execute(&mut *tx).await?;
                    }
                }
                if matches!(self.db, Db::Postgres(_)) {
                    sqlx::query("SELECT pg_notify('wharf_events', $1)")
                        .bind(self.notify_payload(false))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                true
            }
        });
        if moved {
            self.wake.notify_waiters();
        }
        Ok(moved)
    }

    /// Claims, for `sink`, up to `accounts` accounts whose oldest pending delivery is due and
    /// unclaimed, and for each the first `run` pending deliveries in commit order, under a
    /// lease of `lease` (by the database's clock). Returns them in commit order. A claim always
    /// takes the oldest events of an account, so while one instance holds an account's head no
    /// other instance can take any of that account's events: per-account order holds across
    /// instances.
    pub async fn claim(
        &self,
        sink: &str,
        lease: std::time::Duration,
        accounts: i64,
        run: i64,
    ) -> Result<Vec<Claimed>> {
        let _writing = self.writing().await;
        let token = uuid::Uuid::now_v7().to_string();
        let lease_us = lease.as_micros() as i64;
        let claimed = |r: ClaimedRow| {
            let age = std::time::Duration::from_micros(r.age_us.max(0) as u64);
            let (seq, event) = r.event.into_event();
            Claimed {
                seq,
                event,
                attempts: r.attempts,
                age,
                lease: token.clone(),
            }
        };
        if let Db::Postgres(pool) = &self.bookkeeping {
            return Ok(sqlx::query_as::<_, ClaimedRow>(CLAIM_PG)
                .bind(sink)
                .bind(accounts)
                .bind(run)
                .bind(&token)
                .bind(lease_us)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(claimed)
                .collect());
        }
        // SQLite: one writer at a time (`writing`), so heads need no row locks.
        let rows = on_pool!(&self.bookkeeping, pool => {
            let mut tx = pool.begin_with(begin(&self.bookkeeping)).await?;
            let now: i64 = sqlx::query_scalar(NOW_QUERY).fetch_one(&mut *tx).await?;
            let heads = sqlx::query(CLAIM_HEAD)
                .bind(sink)
                .bind(now)
                .bind(accounts)
                .fetch_all(&mut *tx)
                .await?;
            for h in &heads {
                let username: String = h.try_get(1)?;
                sqlx::query(CLAIM_RUN)
                    .bind(sink)
                    .bind(&username)
                    .bind(run)
                    .bind(&token)
                    .bind(now + lease_us)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            if heads.is_empty() {
                return Ok(Vec::new());
            }
            sqlx::query_as::<_, ClaimedRow>(CLAIMED)
                .bind(sink)
                .bind(&token)
                .bind(now)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(claimed)
                .collect::<Vec<_>>()
        });
        Ok(rows)
    }

    /// Gives an account's still-claimed deliveries back unattempted (an earlier event of
    /// the account failed).
    pub async fn release(&self, sink: &str, lease: &str, username: &str) -> Result<()> {
        let _writing = self.writing().await;
        on_pool!(&self.bookkeeping, pool => {
            sqlx::query("UPDATE event_deliveries SET lease_owner = NULL, lease_until_us = 0 WHERE sink = $1 AND lease_owner = $2 AND username = $3 AND state = 'pending'")
                .bind(sink).bind(lease).bind(username).execute(pool).await?;
        });
        Ok(())
    }

    /// Keeps this claim's deliveries reserved for `hold` more (by the database's clock).
    /// False when the claim is no longer this worker's (its lease ran out and another
    /// instance took the account).
    pub async fn extend(&self, sink: &str, lease: &str, hold: std::time::Duration) -> Result<bool> {
        let _writing = self.writing().await;
        let n = on_pool!(&self.bookkeeping, pool => {
            sqlx::query("UPDATE event_deliveries SET lease_until_us = (SELECT now_us FROM wharf_clock) + $3 WHERE sink = $1 AND lease_owner = $2 AND state = 'pending'")
                .bind(sink).bind(lease).bind(hold.as_micros() as i64).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// Records that the sink acknowledged this claim's deliveries up to `last_seq` for
    /// `username` (those before it were delivered in order or are dead). False when none of
    /// them was this worker's any more. Concurrent calls share one statement.
    pub async fn delivered(
        &self,
        sink: &str,
        lease: &str,
        username: &str,
        last_seq: i64,
    ) -> Result<bool> {
        let item = DeliveredUpTo {
            sink: sink.to_string(),
            lease: lease.to_string(),
            username: username.to_string(),
            last_seq,
        };
        let Some(recorder) = started(&self.recorder, |rx| delivered_loop(self.clone(), rx)) else {
            return Ok(self.mark_delivered(&[item]).await?[0]);
        };
        ask(recorder, item).await
    }

    /// Marks each item's deliveries delivered, in one statement on Postgres; whether each
    /// item's were still its claim's.
    async fn mark_delivered(
        &self,
        items: &[DeliveredUpTo],
    ) -> std::result::Result<Vec<bool>, sqlx::Error> {
        if let Db::Postgres(pool) = &self.bookkeeping {
            let col = |f: fn(&DeliveredUpTo) -> &str| items.iter().map(f).collect::<Vec<_>>();
            let places: Vec<i32> = sqlx::query_scalar(DELIVERED_PG)
                .bind(col(|i| &i.sink))
                .bind(col(|i| &i.lease))
                .bind(col(|i| &i.username))
                .bind(items.iter().map(|i| i.last_seq).collect::<Vec<_>>())
                .bind((0..items.len() as i32).collect::<Vec<_>>())
                .fetch_all(pool)
                .await?;
            let mut done = vec![false; items.len()];
            for p in places {
                if let Some(d) = done.get_mut(p as usize) {
                    *d = true;
                }
            }
            return Ok(done);
        }
        let _writing = self.writing().await;
        Ok(on_pool!(&self.bookkeeping, pool => {
            let mut tx = pool.begin_with(begin(&self.bookkeeping)).await?;
            let mut done = Vec::with_capacity(items.len());
            for i in items {
                let n = sqlx::query(DELIVERED)
                    .bind(&i.sink).bind(&i.lease).bind(&i.username).bind(i.last_seq)
                    .execute(&mut *tx).await?.rows_affected();
                done.push(n > 0);
            }
            tx.commit().await?;
            done
        }))
    }

    /// A failed attempt of this claim: retry after `delay` (by the database's clock), or give
    /// up (`dead`). False when the claim was no longer this worker's (nothing is changed then).
    pub async fn failed(
        &self,
        seq: i64,
        sink: &str,
        lease: &str,
        error: &str,
        delay: std::time::Duration,
        dead: bool,
    ) -> Result<bool> {
        let _writing = self.writing().await;
        let state = if dead { "dead" } else { "pending" };
        let n = on_pool!(&self.bookkeeping, pool => {
            sqlx::query("UPDATE event_deliveries SET state = $3, attempts = attempts + 1, next_at_us = (SELECT now_us FROM wharf_clock) + $4, last_error = $5, lease_owner = NULL, lease_until_us = 0 WHERE event_seq = $1 AND sink = $2 AND lease_owner = $6")
                .bind(seq).bind(sink).bind(state).bind(delay.as_micros() as i64).bind(error).bind(lease).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// Pending deliveries per sink, and the age of the oldest one (by the database's clock).
    pub async fn pending(&self, sink: &str) -> Result<(i64, Option<std::time::Duration>)> {
        let (n, age): (i64, Option<i64>) = on_pool!(&self.db, pool => {
            sqlx::query_as("SELECT COUNT(*), (SELECT now_us FROM wharf_clock) - MIN(e.created_us) FROM event_deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.sink = $1 AND d.state = 'pending'")
                .bind(sink).fetch_one(pool).await?
        });
        Ok((
            n,
            age.map(|us| std::time::Duration::from_micros(us.max(0) as u64)),
        ))
    }

    /// Sets the outbox gauges of every sink (pending count, age of the oldest) from the
    /// database; a sink whose figures cannot be read keeps its last ones.
    pub async fn export_pending(&self) {
        let m = crate::telemetry::metrics::metrics();
        for sink in self.sinks.iter() {
            match self.pending(sink).await {
                Ok((n, oldest)) => {
                    let labels = crate::telemetry::metrics::SinkLabels { sink: sink.clone() };
                    m.outbox_pending.get_or_create(&labels).set(n);
                    let age = oldest.map_or(0.0, |a| a.as_secs_f64());
                    m.outbox_oldest_age.get_or_create(&labels).set(age);
                }
                Err(e) => {
                    tracing::warn!(sink = %sink, error = %e, "cannot read the outbox for metrics")
                }
            }
        }
    }

    /// Sets the expected-arrival gauges (windows of the last 7 days by state).
    pub async fn export_expectations(&self) {
        let rows: std::result::Result<Vec<(String, i64)>, sqlx::Error> = on_pool!(&self.db, pool => {
            sqlx::query_as("SELECT state, COUNT(*) FROM expectation_windows WHERE opens_us > (SELECT now_us FROM wharf_clock) - 7 * 86400000000 GROUP BY state")
                .fetch_all(pool).await
        });
        if let Ok(rows) = rows {
            let m = crate::telemetry::metrics::metrics();
            for state in ["open", "met", "late", "missed"] {
                let n = rows.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
                m.expectation_windows
                    .get_or_create(&crate::telemetry::metrics::StateLabels { state })
                    .set(n);
            }
        }
    }

    /// Events newest first, optionally only those with a pending delivery or since a time.
    pub async fn list(
        &self,
        pending_only: bool,
        since: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<Listed>> {
        let since = since.map(micros).unwrap_or(i64::MIN);
        let filter = if pending_only {
            " AND EXISTS (SELECT 1 FROM event_deliveries p WHERE p.event_seq = e.seq AND p.state = 'pending')"
        } else {
            ""
        };
        let q = format!("SELECT e.seq, e.id, e.type, e.username, e.subject, e.created_us, e.body, e.location FROM events e WHERE e.created_us >= $1{filter} ORDER BY e.seq DESC LIMIT $2");
        let events: Vec<(i64, Event)> = on_pool!(&self.db, pool => {
            sqlx::query_as::<_, EventRow>(&q).bind(since).bind(limit).fetch_all(pool).await?
                .into_iter()
                .map(EventRow::into_event)
                .collect()
        });
        let mut out = Vec::with_capacity(events.len());
        for (seq, event) in events {
            let rows: Vec<DeliveryRow> = on_pool!(&self.db, pool => {
                sqlx::query_as("SELECT sink, state, attempts, last_error, delivered_us FROM event_deliveries WHERE event_seq = $1 ORDER BY sink")
                    .bind(seq).fetch_all(pool).await?
            });
            out.push(Listed {
                event,
                deliveries: rows
                    .into_iter()
                    .map(
                        |(sink, state, attempts, last_error, delivered)| DeliveryState {
                            sink,
                            state,
                            attempts,
                            last_error,
                            delivered_at: delivered.map(from_micros),
                        },
                    )
                    .collect(),
            });
        }
        Ok(out)
    }

    /// Queues events again for `sinks`: by id, or every event since a time. Returns how many
    /// deliveries were queued.
    pub async fn replay(
        &self,
        id: Option<&str>,
        since: Option<DateTime<Utc>>,
        sinks: &[String],
    ) -> Result<u64> {
        Ok(super::query::replay(&self.db, id, since, sinks, None).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::notified;

    #[test]
    fn an_instance_skips_its_own_notifies_only() {
        assert_eq!(notified("abc", "abc"), None);
        assert_eq!(notified("abc builtin", "abc"), None);
        assert_eq!(notified("xyz", "abc"), Some(false));
        assert_eq!(notified("xyz builtin", "abc"), Some(true));
        // The CLI's, and an older instance's, carry no origin.
        assert_eq!(notified("", "abc"), Some(false));
        assert_eq!(notified("builtin", "abc"), Some(true));
    }
}
