//! What admins ask of the outbox (`wharf events …` and the admin API): events with their
//! delivery state, filtered and paged newest first; arrivals by account, folder, name pattern
//! and time; and replays, recorded in the audit trail in the transaction that queues them.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::outbox::{from_micros, EventRow};
use super::Event;
use crate::db::{on_pool, Db};
use crate::identity::audit::{self, Actor, AppendAudit as _, Entry};

/// Events an arrivals query reads at most per call before it answers with what it found and a
/// cursor to go on from (a folder or pattern that matches rarely must not scan the outbox).
const ARRIVAL_SCAN: i64 = 5000;

/// The event types that say a file arrived (its bytes are now at `path`).
pub const ARRIVAL_TYPES: [&str; 3] = [super::COMPLETED, super::RENAMED, super::DECRYPT_COMPLETED];

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only events some sink has not received yet.
    pub pending: bool,
    /// Recorded at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Recorded before this time.
    pub until: Option<DateTime<Utc>>,
    pub username: Option<String>,
    /// The CloudEvents type (`wharf.upload.completed`).
    pub kind: Option<String>,
    /// Older than this position (paging: the `next` of the previous page).
    pub before: Option<i64>,
}

/// One event with the state of its deliveries (the JSON of `wharf events list --json`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub subject: String,
    pub username: String,
    /// When it was recorded, by the database's clock.
    pub time: DateTime<Utc>,
    pub deliveries: Vec<DeliveryView>,
    /// The CloudEvent as sinks receive it.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub sink: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

const EVENT_COLUMNS: &str =
    "e.seq, e.id, e.type, e.username, e.subject, e.created_us, e.body, e.location";

/// Up to `limit` events matching `filter`, newest first, each with its position (for paging).
pub async fn list(
    db: &Db,
    filter: &EventFilter,
    limit: i64,
) -> Result<Vec<(i64, EventView)>, sqlx::Error> {
    let pending = if filter.pending {
        " AND EXISTS (SELECT 1 FROM event_deliveries p WHERE p.event_seq = e.seq AND p.state = 'pending')"
    } else {
        ""
    };
    let q = format!(
        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.created_us >= $1 AND e.created_us < $2 AND e.seq < $3 \
         AND ($4 IS NULL OR e.username = $4) AND ($5 IS NULL OR e.type = $5){pending} ORDER BY e.seq DESC LIMIT $6"
    );
    let rows: Vec<EventRow> = on_pool!(db, p => sqlx::query_as(&q)
        .bind(filter.since.map_or(i64::MIN, |t| t.timestamp_micros()))
        .bind(filter.until.map_or(i64::MAX, |t| t.timestamp_micros()))
        .bind(filter.before.unwrap_or(i64::MAX))
        .bind(filter.username.as_deref())
        .bind(filter.kind.as_deref())
        .bind(limit)
        .fetch_all(p)
        .await?);
    let events: Vec<(i64, Event)> = rows.into_iter().map(EventRow::into_event).collect();
    let mut deliveries = deliveries_of(db, events.iter().map(|(s, _)| *s).collect()).await?;
    Ok(events
        .into_iter()
        .map(|(seq, e)| {
            let view = EventView {
                event: serde_json::from_str(&e.body).unwrap_or_default(),
                id: e.id,
                kind: e.kind,
                subject: e.subject,
                username: e.username,
                time: e.time,
                deliveries: deliveries.remove(&seq).unwrap_or_default(),
            };
            (seq, view)
        })
        .collect())
}

/// The deliveries of these events, by sink name.
async fn deliveries_of(
    db: &Db,
    seqs: Vec<i64>,
) -> Result<std::collections::HashMap<i64, Vec<DeliveryView>>, sqlx::Error> {
    let mut out: std::collections::HashMap<i64, Vec<DeliveryView>> = Default::default();
    for chunk in seqs.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let q = format!(
            "SELECT event_seq, sink, state, attempts, last_error, delivered_us FROM event_deliveries \
             WHERE event_seq IN ({}) ORDER BY event_seq, sink",
            marks.join(", ")
        );
        type Row = (i64, String, String, i32, Option<String>, Option<i64>);
        let rows: Vec<Row> = on_pool!(db, p => {
            let mut query = sqlx::query_as(&q);
            for s in chunk {
                query = query.bind(*s);
            }
            query.fetch_all(p).await?
        });
        for (seq, sink, state, attempts, last_error, delivered) in rows {
            out.entry(seq).or_default().push(DeliveryView {
                sink,
                state,
                attempts,
                last_error,
                delivered_at: delivered.map(from_micros),
            });
        }
    }
    Ok(out)
}

/// Which arrivals to find.
#[derive(Debug, Clone, Default)]
pub struct ArrivalFilter {
    pub username: Option<String>,
    /// The client path of the folder it arrived in (or below).
    pub folder: Option<String>,
    /// A glob on the file name, matched whatever the case (as folders' `--allow`).
    pub pattern: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub before: Option<i64>,
}

/// A file that arrived: an upload completed, a rename onto a final name, or a decrypted
/// plaintext.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Arrival {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub username: String,
    /// The client path it arrived at.
    pub path: String,
    /// Where it is stored (`s3://bucket/key` or `file:///…`).
    pub location: Option<String>,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    /// When its event was recorded, by the database's clock.
    pub time: DateTime<Utc>,
}

/// Arrivals matching `filter`, newest first: up to `limit`, and the position to go on from
/// when there may be more (older) ones. A call reads a bounded number of events, so a page
/// can hold fewer than `limit` and still have a next one.
pub async fn arrivals(
    db: &Db,
    filter: &ArrivalFilter,
    limit: i64,
) -> Result<(Vec<Arrival>, Option<i64>), sqlx::Error> {
    let pattern = filter
        .pattern
        .as_deref()
        .map(glob::Pattern::new)
        .transpose()
        .ok()
        .flatten();
    let folder = filter
        .folder
        .as_deref()
        .map(|f| f.trim_end_matches('/').to_string());
    let options = glob::MatchOptions {
        case_sensitive: false,
        ..glob::MatchOptions::new()
    };
    let types = ARRIVAL_TYPES
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let q = format!(
        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.type IN ({types}) AND e.created_us >= $1 AND e.created_us < $2 \
         AND e.seq < $3 AND ($4 IS NULL OR e.username = $4) ORDER BY e.seq DESC LIMIT $5"
    );
    let mut before = filter.before.unwrap_or(i64::MAX);
    let mut scanned = 0;
    let mut found = Vec::new();
    loop {
        let batch = (ARRIVAL_SCAN - scanned).min(500);
        let rows: Vec<EventRow> = on_pool!(db, p => sqlx::query_as(&q)
            .bind(filter.since.map_or(i64::MIN, |t| t.timestamp_micros()))
            .bind(filter.until.map_or(i64::MAX, |t| t.timestamp_micros()))
            .bind(before)
            .bind(filter.username.as_deref())
            .bind(batch)
            .fetch_all(p)
            .await?);
        let exhausted = (rows.len() as i64) < batch;
        for row in rows {
            scanned += 1;
            before = row.seq;
            let (_, e) = row.into_event();
            let inside = folder.as_deref().is_none_or(|f| {
                f.is_empty()
                    || e.subject
                        .strip_prefix(f)
                        .is_some_and(|rest| rest.starts_with('/'))
            });
            let name = e.subject.rsplit('/').next().unwrap_or_default();
            let named = pattern
                .as_ref()
                .is_none_or(|p| p.matches_with(name, options));
            if !(inside && named) {
                continue;
            }
            let body: serde_json::Value = serde_json::from_str(&e.body).unwrap_or_default();
            let data = &body["data"];
            found.push(Arrival {
                event_id: e.id,
                kind: e.kind,
                username: e.username,
                path: e.subject,
                location: data["location"].as_str().map(str::to_string).or(e.location),
                bytes: data["bytes"].as_u64(),
                sha256: data["sha256"].as_str().map(str::to_string),
                time: e.time,
            });
            if found.len() as i64 >= limit {
                return Ok((found, Some(before)));
            }
        }
        if exhausted {
            return Ok((found, None));
        }
        if scanned >= ARRIVAL_SCAN {
            return Ok((found, Some(before)));
        }
    }
}

/// Queues events again for `sinks` (by id, or every event since a time) in one transaction,
/// with an audit record of `actor`'s when `actor` is given and anything was queued. Returns
/// how many deliveries were queued.
pub async fn replay(
    db: &Db,
    id: Option<&str>,
    since: Option<DateTime<Utc>>,
    sinks: &[String],
    actor: Option<&Actor>,
) -> Result<u64, sqlx::Error> {
    let (filter, arg) = match (id, since) {
        (Some(id), _) => ("e.id = $2", id.to_string()),
        (None, Some(t)) => (
            "e.created_us >= CAST($2 AS BIGINT)",
            t.timestamp_micros().to_string(),
        ),
        (None, None) => return Ok(0),
    };
    let q = format!(
        "INSERT INTO event_deliveries (event_seq, sink, username, next_at_us) \
         SELECT e.seq, $1, e.username, (SELECT now_us FROM wharf_clock) FROM events e WHERE {filter} \
         ON CONFLICT (event_seq, sink) DO UPDATE SET state = 'pending', attempts = 0, \
         next_at_us = excluded.next_at_us, last_error = NULL, lease_owner = NULL, lease_until_us = 0, delivered_us = NULL"
    );
    let begin = audit::begin(db);
    let n: u64 = on_pool!(db, p => {
        let mut tx = p.begin_with(begin).await?;
        let mut n = 0;
        for sink in sinks {
            n += sqlx::query(&q).bind(sink).bind(&arg).execute(&mut *tx).await?.rows_affected();
        }
        if let (Some(actor), true) = (actor, n > 0) {
            tx.append_audit(&Entry::new(
                actor,
                "events.replay",
                match id {
                    Some(id) => format!("event:{id}"),
                    None => "events".to_string(),
                },
                serde_json::json!({ "id": id, "since": since, "sinks": sinks, "queued": n }),
            ))
            .await?;
        }
        tx.commit().await?;
        n
    });
    if let Db::Postgres(pool) = db {
        let _ = sqlx::query("SELECT pg_notify('wharf_events', '')")
            .execute(pool)
            .await;
    }
    Ok(n)
}
