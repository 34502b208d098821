//! The dispatcher: one worker per sink that claims due deliveries from the outbox, delivers
//! them (events of different accounts concurrently, each account's in commit order), and
//! records the outcome: delivered, or retried with exponential backoff and jitter, or dead
//! once older than the sink's `max_age`. Wakes on new events of this instance, on Postgres
//! NOTIFY from other instances, and polls as the fallback.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio_util::sync::CancellationToken;

use super::outbox::{Claimed, Outbox};
use super::sinks::{DeliveryError, EventSink};
use crate::db::Db;
use crate::telemetry::metrics::metrics;

/// How often a worker looks for due deliveries when nothing woke it.
const POLL: Duration = Duration::from_secs(1);
/// Accounts claimed at once (delivered concurrently), and events per account (in order).
const ACCOUNTS: i64 = 32;
const RUN: i64 = 64;
/// Shortest time between two claims of a worker (a burst of events is claimed together).
const CLAIM_GAP: Duration = Duration::from_millis(20);
/// How long a NOTIFY waits for the ones after it before it wakes the workers: one claim per
/// instance per burst of other instances' events, not one per event.
const NOTIFY_COALESCE: Duration = Duration::from_millis(50);
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

pub struct SinkWorker {
    pub sink: Box<dyn EventSink>,
    pub max_age: Option<Duration>,
}

/// Time before attempt `n + 1` after `n` failures: 0.5 s doubling to 5 min, ±20 % jitter.
pub fn backoff(attempts: i32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempts.clamp(0, 20) as u32);
    let base = exp.min(BACKOFF_MAX);
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    base.mul_f64(jitter)
}

pub struct Dispatcher {
    outbox: Outbox,
    workers: Vec<Arc<SinkWorker>>,
    /// Claims outlive a crashed instance by this much before others take them over.
    lease: Duration,
}

impl Dispatcher {
    pub fn new(outbox: Outbox, workers: Vec<SinkWorker>, lease: Duration) -> Self {
        Dispatcher {
            outbox,
            workers: workers.into_iter().map(Arc::new).collect(),
            lease,
        }
    }

    /// Runs every sink's worker until `stop`; deliveries in flight finish first.
    pub async fn run(self, stop: CancellationToken) {
        if let Db::Postgres(pool) = self.outbox.db() {
            let pool = pool.clone();
            let wake = (self.outbox.wake.clone(), self.outbox.wake_builtin.clone());
            let origin = self.outbox.origin().to_string();
            let stop = stop.clone();
            tokio::spawn(async move { listen(pool, wake, origin, stop).await });
        }
        let mut tasks = Vec::new();
        for w in &self.workers {
            tasks.push(tokio::spawn(worker(
                self.outbox.clone(),
                w.clone(),
                self.lease,
                stop.clone(),
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Postgres LISTEN: other instances' new events wake this one's workers (the built-in sinks'
/// only for events that may have work for them), once per `NOTIFY_COALESCE`. This
/// instance's own NOTIFYs (`origin`) are skipped: its workers were woken in process.
async fn listen(
    pool: sqlx::PgPool,
    (wake, wake_builtin): (Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>),
    origin: String,
    stop: CancellationToken,
) {
    use super::outbox::notified;
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; polling meanwhile");
                tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(5)) => continue }
            }
        };
        if listener.listen("wharf_events").await.is_err() {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        'connection: loop {
            let mut builtin = tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.recv() => match n {
                    Ok(n) => match notified(n.payload(), &origin) {
                        Some(builtin) => builtin,
                        None => continue 'connection,
                    },
                    Err(_) => break,
                }
            };
            // A burst of other instances' commits wakes the workers once: the NOTIFYs that
            // come within NOTIFY_COALESCE of the first are taken with it.
            let until = tokio::time::Instant::now() + NOTIFY_COALESCE;
            let lost = loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(until) => break false,
                    n = listener.recv() => match n {
                        Ok(n) => builtin |= notified(n.payload(), &origin).unwrap_or(false),
                        Err(_) => break true,
                    }
                }
            };
            wake.notify_waiters();
            if builtin {
                wake_builtin.notify_waiters();
            }
            if lost {
                break 'connection;
            }
        }
    }
}

async fn worker(outbox: Outbox, w: Arc<SinkWorker>, lease: Duration, stop: CancellationToken) {
    let name = w.sink.name().to_string();
    let wake = if super::outbox::is_builtin(&name) {
        outbox.wake_builtin.clone()
    } else {
        outbox.wake.clone()
    };
    // Runs of different accounts in flight, each its own task. A run that ends lets its
    // account (and any other) be claimed again at the next claim: a slow account never holds
    // back the others' new events.
    let mut inflight = tokio::task::JoinSet::new();
    let mut last_claim = tokio::time::Instant::now() - CLAIM_GAP;
    let claims = metrics().event_claim(&name);
    // When the earliest retry this worker's runs scheduled is due.
    let mut retry: Option<tokio::time::Instant> = None;
    // Whether the last claim passed over accounts whose runs were in flight (or was not made
    // for lack of room): events recorded meanwhile wait for a claim when a run ends. Set at
    // every pass, before it is read. Otherwise a run that ends without leaving work behind
    // (see `RunEnd`) claims nothing: a lone arrival costs one claim, not two.
    let mut passed_over: bool;
    loop {
        // Register interest before looking, so an event recorded meanwhile still wakes us.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // Wake-ups are coalesced: at most one claim per CLAIM_GAP however many closes are
        // recorded and runs end (an event after a quiet spell is claimed at once). Runs that
        // end meanwhile are reaped, so their room counts at the claim.
        let gap_end = last_claim + CLAIM_GAP;
        loop {
            tokio::select! {
                Some(r) = inflight.join_next(), if !inflight.is_empty() => {
                    run_ended(&mut retry, r);
                }
                _ = tokio::time::sleep_until(gap_end) => break,
            }
        }
        let room = ACCOUNTS - inflight.len() as i64;
        // A retry this worker scheduled is claimed when it is due; one another instance
        // scheduled is that instance's to claim, and a claim a crashed instance held lapses
        // into the next poll: no query for the next due time after every claim.
        let now = tokio::time::Instant::now();
        if retry.is_some_and(|at| at <= now) {
            retry = None;
        }
        let wait = retry.map_or(POLL, |at| (at - now).min(POLL));
        if room > 0 && !stop.is_cancelled() {
            last_claim = tokio::time::Instant::now();
            passed_over = !inflight.is_empty();
            claims.inc();
            match outbox.claim(&name, lease, room, RUN).await {
                Ok(batch) => {
                    // Each account's events one after another, in commit order.
                    let mut runs: Vec<Vec<Claimed>> = Vec::new();
                    for c in batch {
                        match runs
                            .iter_mut()
                            .find(|r| r[0].event.username == c.event.username)
                        {
                            Some(r) => r.push(c),
                            None => runs.push(vec![c]),
                        }
                    }
                    for run in runs {
                        let w = w.clone();
                        let outbox = outbox.clone();
                        inflight.spawn(async move { deliver_run(&outbox, &w, run, lease).await });
                    }
                }
                Err(e) => tracing::warn!(sink = %name, error = %e, "cannot claim events; retrying"),
            }
        } else {
            // No room: whatever woke this claim waits for a run to end.
            passed_over = true;
        }
        if stop.is_cancelled() {
            // Deliveries in flight finish first.
            while inflight.join_next().await.is_some() {}
            return;
        }
        let mut poll = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(r) = inflight.join_next(), if !inflight.is_empty() => {
                    if run_ended(&mut retry, r) || passed_over {
                        break;
                    }
                    // A retry the run scheduled is claimed when it is due.
                    poll = retry.map_or(poll, |at| poll.min(at));
                }
                _ = &mut woken => break,
                _ = tokio::time::sleep_until(poll) => break,
            }
        }
    }
}

/// Keeps the earlier of `retry` and the retry an ended run scheduled; whether the run may
/// have left its account's work unclaimed.
fn run_ended(
    retry: &mut Option<tokio::time::Instant>,
    run: Result<RunEnd, tokio::task::JoinError>,
) -> bool {
    let Ok(run) = run else {
        return true;
    };
    if let Some(delay) = run.retry {
        let at = tokio::time::Instant::now() + delay;
        *retry = Some(retry.map_or(at, |r| r.min(at)));
    }
    run.more
}

/// How a run ended.
#[derive(Default)]
struct RunEnd {
    /// It stopped at a failed delivery, retried after this delay.
    retry: Option<Duration>,
    /// Its account may have deliveries due now: the run was full (`RUN`), or it gave its
    /// claim back without scheduling a retry.
    more: bool,
}

/// Deliveries recorded together (a crash redelivers at most these).
const RECORD_EVERY: usize = 32;

/// Delivers one account's claimed events in order; stops at the first failure and gives the
/// rest back, so nothing overtakes an event that is being retried. The claim is extended
/// whenever less than a sink timeout (plus 5 s) of it is left, so a slow sink never lets it
/// lapse under a run and another instance never sends the same events meanwhile; deliveries
/// are recorded every `RECORD_EVERY` events and at the end; and a worker that finds its claim
/// gone stops. A delivery in progress renews the claim on the same schedule.
async fn deliver_run(
    outbox: &Outbox,
    w: &SinkWorker,
    run: Vec<Claimed>,
    lease_for: Duration,
) -> RunEnd {
    let name = w.sink.name();
    let (Some(lease), Some(user)) = (
        run.first().map(|c| c.lease.clone()),
        run.first().map(|c| c.event.username.clone()),
    ) else {
        return RunEnd::default();
    };
    let full = run.len() as i64 >= RUN;
    // One attempt may take the sink's timeout: the claim must outlast it.
    let need = w.sink.timeout() + Duration::from_secs(5);
    let hold = lease_for.max(need);
    // The claim was made a moment ago for `lease_for`.
    let mut held_until =
        tokio::time::Instant::now() + lease_for.saturating_sub(Duration::from_secs(1));
    let mut unrecorded: Option<i64> = None;
    let mut since_record = 0;
    // Set when the run stops early: the retry's delay, if a delivery failed.
    let mut stopped: Option<Option<Duration>> = None;
    for c in &run {
        if held_until.saturating_duration_since(tokio::time::Instant::now()) < need {
            match renew(outbox, name, &lease, hold).await {
                Ok(Some(until)) => held_until = until,
                Ok(None) => {
                    tracing::warn!(sink = name, username = %user, "claim lost to another instance; stopping this run");
                    return RunEnd::default();
                }
                Err(e) => {
                    tracing::warn!(sink = name, error = %e, "cannot extend a claim; stopping this run");
                    stopped = Some(None);
                    break;
                }
            }
        }
        // A delivery that runs long (a large decryption) keeps the claim: it is renewed
        // while the attempt runs, so a live instance never loses it, and a crashed one's
        // lapses after one lease.
        let attempt = {
            let fut = deliver_one(outbox, w, c);
            tokio::pin!(fut);
            loop {
                let renew_at = held_until
                    .checked_sub(need)
                    .unwrap_or_else(tokio::time::Instant::now);
                tokio::select! {
                    a = &mut fut => break a,
                    _ = tokio::time::sleep_until(renew_at) => {
                        match renew(outbox, name, &lease, hold).await {
                            Ok(Some(until)) => held_until = until,
                            Ok(None) => {
                                tracing::warn!(sink = name, username = %user, "claim lost to another instance during a delivery; abandoning it");
                                return RunEnd::default();
                            }
                            Err(e) => {
                                tracing::warn!(sink = name, error = %e, "cannot extend a claim during a delivery; retrying");
                                held_until = tokio::time::Instant::now() + need + Duration::from_secs(1);
                            }
                        }
                    }
                }
            }
        };
        match attempt {
            Attempt::Delivered => {
                crate::testing::crash_point("delivery.after_send");
                unrecorded = Some(c.seq);
                since_record += 1;
                if since_record >= RECORD_EVERY {
                    since_record = 0;
                    if !record_delivered(outbox, name, &lease, &user, unrecorded.take()).await {
                        return RunEnd::default();
                    }
                }
            }
            Attempt::Dead => {}
            Attempt::Retry(delay) => {
                stopped = Some(Some(delay));
                break;
            }
            Attempt::Lost => return RunEnd::default(),
        }
    }
    if !record_delivered(outbox, name, &lease, &user, unrecorded).await {
        return RunEnd::default();
    }
    let Some(retry) = stopped else {
        return RunEnd {
            retry: None,
            more: full,
        };
    };
    if let Err(e) = outbox.release(name, &lease, &user).await {
        tracing::warn!(sink = name, error = %e, "could not release claims; they expire with the lease");
    }
    RunEnd {
        retry,
        more: retry.is_none(),
    }
}

/// Extends a claim to twice `hold` from now (by the database's clock): the new end by this
/// host's monotonic clock (counted from before the request, so never later than the
/// database's), or `None` when the claim is no longer this worker's (its lease ran out and
/// another instance took the account).
async fn renew(
    outbox: &Outbox,
    sink: &str,
    lease: &str,
    hold: Duration,
) -> Result<Option<tokio::time::Instant>, super::outbox::OutboxError> {
    let sent = tokio::time::Instant::now();
    let held = outbox.extend(sink, lease, hold * 2).await?;
    Ok(held.then(|| sent + hold * 2))
}

/// Records deliveries up to `last`; false when the claim was no longer this worker's.
async fn record_delivered(
    outbox: &Outbox,
    name: &str,
    lease: &str,
    user: &str,
    last: Option<i64>,
) -> bool {
    let Some(last) = last else {
        return true;
    };
    match outbox.delivered(name, lease, user, last).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(
                sink = name,
                "delivered after the claim was lost: they may be delivered again"
            );
            false
        }
        // The sink has them; they may be sent again after the lease: at-least-once.
        Err(e) => {
            tracing::warn!(sink = name, error = %e, "delivered but not recorded");
            true
        }
    }
}

enum Attempt {
    Delivered,
    /// Given up (older than `max_age`): it no longer holds the account's later events back.
    Dead,
    /// Failed; retried after this delay.
    Retry(Duration),
    /// The claim was no longer this worker's: nothing was recorded.
    Lost,
}

/// One attempt. Failures are recorded here; successes by the caller, in one transaction.
async fn deliver_one(outbox: &Outbox, w: &SinkWorker, c: &Claimed) -> Attempt {
    let name = w.sink.name();
    let attempt = c.attempts + 1;
    match w.sink.deliver(&c.event).await {
        Ok(()) => {
            tracing::info!(activity = "EVENT_DELIVERY", event_id = %c.event.id, sink = name, outcome = "delivered", attempt);
            metrics().delivery(name, "delivered").inc();
            Attempt::Delivered
        }
        Err(err) => {
            let (message, hint) = match &err {
                DeliveryError::Retriable {
                    message,
                    retry_after,
                } => (message.clone(), *retry_after),
                DeliveryError::Permanent(m) => (m.clone(), Some(BACKOFF_MAX)),
            };
            let dead = w.max_age.is_some_and(|max| c.age > max);
            // A sink's hint is capped: one answer must not hold an account's events for ever.
            let delay = backoff(c.attempts).max(hint.unwrap_or_default().min(BACKOFF_MAX));
            let outcome = if dead { "dead" } else { "retry" };
            tracing::warn!(activity = "EVENT_DELIVERY", event_id = %c.event.id, sink = name, outcome, attempt, error = %message, retry_in_ms = delay.as_millis() as u64);
            metrics().delivery(name, outcome).inc();
            match outbox
                .failed(c.seq, name, &c.lease, &message, delay, dead)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Attempt::Lost,
                Err(e) => {
                    tracing::warn!(event_id = %c.event.id, sink = name, error = %e, "could not record a failed delivery")
                }
            }
            if dead {
                Attempt::Dead
            } else {
                Attempt::Retry(delay)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_then_caps_with_jitter() {
        let first = backoff(0);
        assert!(first >= Duration::from_millis(400) && first <= Duration::from_millis(600));
        let later = backoff(5);
        assert!(later >= Duration::from_millis(12_800) && later <= Duration::from_millis(19_200));
        assert!(backoff(60) <= Duration::from_secs(360));
    }
}
