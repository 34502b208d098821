//! The audit trail: every change an admin makes (CLI or admin API) and every ban the server
//! sets or prunes, appended to `audit_log` in the transaction that makes the change, each row
//! hashed (SHA-256) over its content and the previous row's hash; listing it, verifying the
//! chain, and pruning it past `audit.retention` with the chain re-anchored.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::db::{on_pool, Db};

/// The `prev_hash` of the first row ever appended.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Rows read per query when the whole chain is walked.
const PAGE: i64 = 1000;

/// Who made a change: `cli:<os user>@<host>`, `token:<name>` (admin API) or
/// `server:<host>` (bans the server sets and prunes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// The person running this CLI process: the login name of its real user, on this host.
    pub fn cli() -> Actor {
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| format!("uid{uid}"));
        Actor(format!("cli:{user}@{}", hostname()))
    }

    /// An admin API request authenticated with the token named `name`.
    pub fn token(name: &str) -> Actor {
        Actor(format!("token:{name}"))
    }

    /// The server itself (a ban after repeated failed logins, a pruning).
    pub fn server() -> Actor {
        Actor(format!("server:{}", hostname()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// One change to record: never a password, a hash or a token in `changes`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub actor: String,
    /// `account.create`, `folder.add`, `ban.set`, …
    pub action: String,
    /// What was changed: `account:acme`, `address:192.0.2.7`, `token:ci`, …
    pub target: String,
    /// The fields changed (a JSON object).
    pub changes: serde_json::Value,
}

impl Entry {
    pub fn new(
        actor: &Actor,
        action: &str,
        target: impl Into<String>,
        changes: serde_json::Value,
    ) -> Entry {
        Entry {
            actor: actor.0.clone(),
            action: action.into(),
            target: target.into(),
            changes,
        }
    }
}

/// The hash of one row: SHA-256 over a canonical serialization of its sequence number, time,
/// actor, action, target, changes (the stored JSON text, byte for byte) and the previous
/// row's hash — a JSON array, which escapes every string one way only.
pub fn row_hash(
    seq: i64,
    at_us: i64,
    actor: &str,
    action: &str,
    target: &str,
    changes: &str,
    prev_hash: &str,
) -> String {
    let canonical = serde_json::to_string(&(seq, at_us, actor, action, target, changes, prev_hash))
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(b"wharf-audit-v1\n");
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// Appends an audit row inside the caller's transaction: the head row is locked (Postgres
/// `FOR UPDATE`; SQLite's write transactions are `BEGIN IMMEDIATE`), so appends on every
/// instance happen one after the other and each links to the one before. The time is the
/// database's clock.
#[async_trait::async_trait]
pub trait AppendAudit {
    /// Returns the new row's sequence number.
    async fn append_audit(&mut self, entry: &Entry) -> Result<i64, sqlx::Error>;
}

const HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
const CLOCK: &str = "SELECT now_us FROM wharf_clock";
const INSERT: &str = "INSERT INTO audit_log (seq, at_us, actor, action, target, changes, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const MOVE_HEAD: &str = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";

macro_rules! append_audit_impl {
    ($conn:ty, $lock:expr) => {
        #[async_trait::async_trait]
        impl AppendAudit for $conn {
            async fn append_audit(&mut self, entry: &Entry) -> Result<i64, sqlx::Error> {
                let head: (i64, String) = sqlx::query_as(&format!("{HEAD}{}", $lock))
                    .fetch_one(&mut *self)
                    .await?;
                let at_us: i64 = sqlx::query_scalar(CLOCK).fetch_one(&mut *self).await?;
                let seq = head.0 + 1;
                let changes = entry.changes.to_string();
                let hash = row_hash(
                    seq,
                    at_us,
                    &entry.actor,
                    &entry.action,
                    &entry.target,
                    &changes,
                    &head.1,
                );
                sqlx::query(INSERT)
                    .bind(seq)
                    .bind(at_us)
                    .bind(&entry.actor)
                    .bind(&entry.action)
                    .bind(&entry.target)
                    .bind(&changes)
                    .bind(&head.1)
                    .bind(&hash)
                    .execute(&mut *self)
                    .await?;
                sqlx::query(MOVE_HEAD)
                    .bind(seq)
                    .bind(&hash)
                    .execute(&mut *self)
                    .await?;
                Ok(seq)
            }
        }
    };
}
append_audit_impl!(sqlx::SqliteConnection, "");
append_audit_impl!(sqlx::PgConnection, " FOR UPDATE");

/// The statement that opens a write transaction: SQLite must take its write lock at once
/// (a deferred transaction that reads the head first could not write it later).
pub fn begin(db: &Db) -> &'static str {
    match db {
        Db::Sqlite(_) => "BEGIN IMMEDIATE",
        Db::Postgres(_) => "BEGIN",
    }
}

/// Appends `entry` alone, in a transaction of its own (a change that is itself only the
/// record, or none).
pub async fn append(db: &Db, entry: &Entry) -> Result<i64, sqlx::Error> {
    let begin = begin(db);
    on_pool!(db, p => {
        let mut tx = p.begin_with(begin).await?;
        let seq = tx.append_audit(entry).await?;
        tx.commit().await?;
        Ok(seq)
    })
}

/// One row as `wharf audit list` and `GET /v1/audit` show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Row {
    pub seq: i64,
    /// When it was appended, by the database's clock.
    pub time: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// The fields changed (never a password, hash or token).
    #[schema(value_type = Object)]
    pub changes: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

type RawRow = (i64, i64, String, String, String, String, String, String);

const COLUMNS: &str = "seq, at_us, actor, action, target, changes, prev_hash, hash";

fn to_row(r: RawRow) -> Row {
    Row {
        seq: r.0,
        time: crate::identity::expectations::from_us(r.1),
        actor: r.2,
        action: r.3,
        target: r.4,
        changes: serde_json::from_str(&r.5).unwrap_or(serde_json::Value::String(r.5)),
        prev_hash: r.6,
        hash: r.7,
    }
}

/// Which rows to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Rows appended at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Rows of this actor only (`cli:alice@host`, `token:ci`, `server:gw-1`).
    pub actor: Option<String>,
    /// Rows after this sequence number (paging).
    pub after: Option<i64>,
}

/// Up to `limit` rows matching `filter`, oldest first.
pub async fn list(db: &Db, filter: &Filter, limit: i64) -> Result<Vec<Row>, sqlx::Error> {
    let q = format!(
        "SELECT {COLUMNS} FROM audit_log WHERE seq > $1 AND at_us >= $2 AND ($3 IS NULL OR actor = $3) ORDER BY seq LIMIT $4"
    );
    let since = filter.since.map_or(i64::MIN, |t| t.timestamp_micros());
    let rows: Vec<RawRow> = on_pool!(db, p => sqlx::query_as(&q)
        .bind(filter.after.unwrap_or(i64::MIN))
        .bind(since)
        .bind(filter.actor.as_deref())
        .bind(limit)
        .fetch_all(p)
        .await?);
    Ok(rows.into_iter().map(to_row).collect())
}

/// What `wharf audit verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Rows checked.
    pub rows: u64,
    pub first_seq: Option<i64>,
    /// The chain's end as recorded (the head), and its hash: keep these outside the database
    /// to detect a rewrite of the whole chain later (`--checkpoint SEQ:HASH`).
    pub head_seq: i64,
    pub head_hash: String,
    /// Where the chain starts after pruning (the last row pruned and its hash).
    pub anchor: Option<(i64, String)>,
    /// The first thing wrong, if any.
    pub problem: Option<Problem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The first row concerned.
    pub seq: i64,
    pub kind: ProblemKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Its content (time, actor, action, target, changes or position) is not what was hashed.
    Changed,
    /// Rows are missing from the chain.
    Deleted,
    /// It does not link to the row before it: inserted out of order, or the row before it
    /// was replaced.
    OutOfOrder,
    /// The chain does not end where wharf last appended, or a pruning's anchor is gone.
    Head,
    /// The external checkpoint given does not match.
    Checkpoint,
}

/// Walks the whole chain (from its anchor, if it was pruned) and checks every row's hash and
/// link, that no sequence number is missing, that it ends at the recorded head, that every
/// pruning recorded in it left its anchor, and, when given, that row `checkpoint.0` has hash
/// `checkpoint.1` (a value kept outside the database).
pub async fn verify(db: &Db, checkpoint: Option<(i64, String)>) -> Result<Report, sqlx::Error> {
    let head: (i64, String) = on_pool!(db, p => sqlx::query_as(HEAD).fetch_one(p).await?);
    let anchors: Vec<(i64, String)> = on_pool!(db, p => sqlx::query_as(
        "SELECT seq, hash FROM audit_anchors ORDER BY seq")
        .fetch_all(p)
        .await?);
    let anchor = anchors.last().cloned();
    let (mut expected_seq, mut expected_prev) = match &anchor {
        Some((seq, hash)) => (seq + 1, hash.clone()),
        None => (1, GENESIS.to_string()),
    };
    let mut report = Report {
        rows: 0,
        first_seq: None,
        head_seq: head.0,
        head_hash: head.1.clone(),
        anchor: anchor.clone(),
        problem: None,
    };
    let problem =
        |seq: i64, kind: ProblemKind, message: String| Some(Problem { seq, kind, message });
    let mut checkpoint_seen = false;
    let mut after = i64::MIN;
    'walk: loop {
        let q = format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
        let page: Vec<RawRow> =
            on_pool!(db, p => sqlx::query_as(&q).bind(after).bind(PAGE).fetch_all(p).await?);
        let Some(last) = page.last() else { break };
        after = last.0;
        for r in page {
            let (seq, at_us, actor, action, target, changes, prev, hash) = r;
            report.first_seq.get_or_insert(seq);
            report.rows += 1;
            if seq < expected_seq {
                report.problem = problem(
                    seq,
                    ProblemKind::OutOfOrder,
                    format!(
                        "row {seq} lies before the start of the chain (row {expected_seq}): it was inserted out of order"
                    ),
                );
                break 'walk;
            }
            if seq > expected_seq {
                report.problem = problem(
                    expected_seq,
                    ProblemKind::Deleted,
                    if seq == expected_seq + 1 {
                        format!("row {expected_seq} was deleted")
                    } else {
                        format!("rows {expected_seq} to {} were deleted", seq - 1)
                    },
                );
                break 'walk;
            }
            if row_hash(seq, at_us, &actor, &action, &target, &changes, &prev) != hash {
                report.problem = problem(
                    seq,
                    ProblemKind::Changed,
                    format!(
                        "row {seq} was changed: its content (time, actor, action, target, changes or position) is not what was hashed"
                    ),
                );
                break 'walk;
            }
            if prev != expected_prev {
                report.problem = problem(
                    seq,
                    ProblemKind::OutOfOrder,
                    format!(
                        "row {seq} does not follow row {}: it was inserted out of order, or the row before it was replaced",
                        seq - 1
                    ),
                );
                break 'walk;
            }
            if action == "audit.prune" {
                let recorded = serde_json::from_str::<serde_json::Value>(&changes)
                    .ok()
                    .and_then(|c| {
                        Some((
                            c["through_seq"].as_i64()?,
                            c["anchor_hash"].as_str()?.to_string(),
                        ))
                    });
                if let Some(a) = recorded {
                    if !anchors.contains(&a) {
                        report.problem = problem(
                            seq,
                            ProblemKind::Head,
                            format!(
                                "row {seq} records a pruning through row {} whose anchor is missing or was changed",
                                a.0
                            ),
                        );
                        break 'walk;
                    }
                }
            }
            if let Some((cseq, chash)) = &checkpoint {
                if *cseq == seq {
                    checkpoint_seen = true;
                    if *chash != hash {
                        report.problem = problem(
                            seq,
                            ProblemKind::Checkpoint,
                            format!("row {seq} does not have the checkpoint's hash: the chain was rewritten from there or before"),
                        );
                        break 'walk;
                    }
                }
            }
            expected_seq = seq + 1;
            expected_prev = hash;
        }
    }
    if report.problem.is_none() {
        let last_seq = expected_seq - 1;
        if head.0 > last_seq {
            report.problem = problem(
                last_seq + 1,
                ProblemKind::Deleted,
                if head.0 == last_seq + 1 {
                    format!(
                        "row {} was deleted (the last row wharf appended)",
                        last_seq + 1
                    )
                } else {
                    format!(
                        "rows {} to {} were deleted (the last rows wharf appended)",
                        last_seq + 1,
                        head.0
                    )
                },
            );
        } else if head.0 < last_seq {
            report.problem = problem(
                head.0 + 1,
                ProblemKind::OutOfOrder,
                format!(
                    "row {} was inserted after the last row wharf appended (row {})",
                    head.0 + 1,
                    head.0
                ),
            );
        } else if head.1 != expected_prev {
            report.problem = problem(
                last_seq,
                ProblemKind::Head,
                format!("row {last_seq} is not the row wharf last appended: it was replaced"),
            );
        }
    }
    if report.problem.is_none() {
        if let Some((cseq, chash)) = &checkpoint {
            let pruned_ok = anchors.iter().any(|(s, h)| s == cseq && h == chash)
                || (*cseq == 0 && chash == GENESIS);
            let pruned_before = anchor.as_ref().is_some_and(|(s, _)| cseq < s);
            if !checkpoint_seen && !pruned_ok && !pruned_before {
                report.problem = problem(
                    *cseq,
                    ProblemKind::Checkpoint,
                    format!("row {cseq} of the checkpoint is not in the chain"),
                );
            }
        }
    }
    Ok(report)
}

/// What a pruning removed.
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    /// The last row removed; the chain now starts at the next.
    pub through_seq: i64,
    pub rows: i64,
    /// Its hash: the `prev_hash` of the first row kept.
    pub anchor_hash: String,
}

/// Removes the rows older than `retention` from the oldest end (never a row after one that is
/// kept), records the anchor the chain now starts from, and appends an `audit.prune` row
/// saying so — all in one transaction, under the head's lock.
pub async fn prune(
    db: &Db,
    retention: Duration,
    actor: &Actor,
) -> Result<Option<Pruned>, sqlx::Error> {
    let keep_us = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    let begin = begin(db);
    on_pool!(db, p => {
        let mut tx = p.begin_with(begin).await?;
        let lock = if matches!(db, Db::Postgres(_)) { " FOR UPDATE" } else { "" };
        let _: (i64, String) = sqlx::query_as(&format!("{HEAD}{lock}")).fetch_one(&mut *tx).await?;
        let now: i64 = sqlx::query_scalar(CLOCK).fetch_one(&mut *tx).await?;
        let cutoff = now.saturating_sub(keep_us);
        // The oldest end only: up to the first row that is kept.
        let through: Option<i64> = sqlx::query_scalar(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM audit_log WHERE at_us >= $1) \
             THEN (SELECT MIN(seq) FROM audit_log WHERE at_us >= $1) - 1 \
             ELSE (SELECT MAX(seq) FROM audit_log) END")
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await?;
        let first: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM audit_log")
            .fetch_one(&mut *tx)
            .await?;
        let (Some(through), Some(first)) = (through, first) else {
            return Ok(None);
        };
        if through < first {
            return Ok(None);
        }
        let anchor_hash: String = sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1")
            .bind(through)
            .fetch_one(&mut *tx)
            .await?;
        let rows = sqlx::query("DELETE FROM audit_log WHERE seq <= $1")
            .bind(through)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
        sqlx::query("INSERT INTO audit_anchors (seq, hash, pruned, at_us) VALUES ($1, $2, $3, $4)")
            .bind(through)
            .bind(&anchor_hash)
            .bind(rows)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let pruned = Pruned { through_seq: through, rows, anchor_hash };
        tx.append_audit(&Entry::new(
            actor,
            "audit.prune",
            "audit_log",
            serde_json::json!({
                "through_seq": pruned.through_seq,
                "rows": pruned.rows,
                "anchor_hash": pruned.anchor_hash,
                "retention": humantime::format_duration(retention).to_string(),
            }),
        ))
        .await?;
        tx.commit().await?;
        Ok(Some(pruned))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_covers_every_field_and_the_link() {
        let base = row_hash(
            1,
            10,
            "cli:a@h",
            "account.create",
            "account:x",
            "{}",
            GENESIS,
        );
        assert_eq!(base.len(), 64);
        for other in [
            row_hash(
                2,
                10,
                "cli:a@h",
                "account.create",
                "account:x",
                "{}",
                GENESIS,
            ),
            row_hash(
                1,
                11,
                "cli:a@h",
                "account.create",
                "account:x",
                "{}",
                GENESIS,
            ),
            row_hash(
                1,
                10,
                "cli:b@h",
                "account.create",
                "account:x",
                "{}",
                GENESIS,
            ),
            row_hash(
                1,
                10,
                "cli:a@h",
                "account.delete",
                "account:x",
                "{}",
                GENESIS,
            ),
            row_hash(
                1,
                10,
                "cli:a@h",
                "account.create",
                "account:y",
                "{}",
                GENESIS,
            ),
            row_hash(
                1,
                10,
                "cli:a@h",
                "account.create",
                "account:x",
                "{ }",
                GENESIS,
            ),
            row_hash(
                1,
                10,
                "cli:a@h",
                "account.create",
                "account:x",
                "{}",
                &"1".repeat(64),
            ),
            // Fields cannot be shifted into each other.
            row_hash(
                1,
                10,
                "cli:a@haccount.create",
                "",
                "account:x",
                "{}",
                GENESIS,
            ),
        ] {
            assert_ne!(base, other);
        }
    }
}
