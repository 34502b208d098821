//! The expectation evaluator: on every instance, every `expectations.interval`, writes the
//! windows whose opening has passed (by the database's clock, including those that passed
//! while every instance was down), matches each open window against the account's arrivals
//! (their events' database times), and moves it on: met (`wharf.expectation.met`, naming the
//! arrivals, `late: true` after the deadline), late at the deadline
//! (`wharf.expectation.late`), missed at the end of the grace (`wharf.expectation.missed`).
//! Each move is a conditional update in the transaction that records its event, so each
//! window's events are recorded once however many instances evaluate it.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::outbox::{Outbox, NOW_QUERY};
use super::{rfc3339, Event};
use crate::db::on_pool;
use crate::identity::expectations::{self, from_us, Expectation};

pub const MET: &str = "wharf.expectation.met";
pub const LATE: &str = "wharf.expectation.late";
pub const MISSED: &str = "wharf.expectation.missed";

/// Windows written per expectation and round at most (a schedule every second, after a long
/// outage, catches up over several rounds).
const CATCH_UP: usize = 500;
/// Windows evaluated per round at most.
const BATCH: i64 = 500;

pub struct Evaluator {
    pub outbox: Outbox,
    pub source: String,
    pub interval: Duration,
}

/// A window to evaluate, with its expectation.
struct Due {
    e: Expectation,
    opens_us: i64,
    deadline_us: i64,
    closes_us: i64,
    state: String,
}

impl Evaluator {
    pub async fn run(self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "cannot evaluate expected arrivals; retrying");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// Writes the windows that opened and moves every open one on.
    pub async fn round(&self) -> Result<(), sqlx::Error> {
        let db = self.outbox.db();
        let now: i64 = on_pool!(db, p => sqlx::query_scalar(NOW_QUERY).fetch_one(p).await?);
        let all = match expectations::list(db, None).await {
            Ok(all) => all,
            Err(expectations::ExpectError::Database(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        for e in &all {
            let windows = match e.windows(e.windows_until_us, now, CATCH_UP) {
                Ok(w) => w,
                Err(err) => {
                    tracing::warn!(expectation = %e.name, error = %err, "an expectation's schedule cannot be read");
                    continue;
                }
            };
            let until = windows.last().map_or(now, |w| {
                if windows.len() == CATCH_UP {
                    w.opens_us
                } else {
                    now
                }
            });
            let _w = self.outbox.writing().await;
            on_pool!(db, p => {
                let mut tx = p.begin().await?;
                for w in &windows {
                    sqlx::query("INSERT INTO expectation_windows (expectation, opens_us, deadline_us, closes_us) VALUES ($1, $2, $3, $4) ON CONFLICT (expectation, opens_us) DO NOTHING")
                        .bind(&e.name).bind(w.opens_us).bind(w.deadline_us).bind(w.closes_us)
                        .execute(&mut *tx).await?;
                }
                sqlx::query("UPDATE expectations SET windows_until_us = $2 WHERE name = $1 AND windows_until_us < $2")
                    .bind(&e.name).bind(until).execute(&mut *tx).await?;
                tx.commit().await?;
            });
        }
        let rows: Vec<(String, i64, i64, i64, String)> = on_pool!(db, p => sqlx::query_as(
            "SELECT expectation, opens_us, deadline_us, closes_us, state FROM expectation_windows \
             WHERE state IN ('open', 'late') AND opens_us <= $1 ORDER BY opens_us LIMIT $2")
            .bind(now).bind(BATCH).fetch_all(p).await?);
        for (name, opens_us, deadline_us, closes_us, state) in rows {
            let Some(e) = all.iter().find(|e| e.name == name) else {
                continue;
            };
            let due = Due {
                e: e.clone(),
                opens_us,
                deadline_us,
                closes_us,
                state,
            };
            self.evaluate(&due, now).await?;
        }
        Ok(())
    }

    /// Moves one window on, as far as what arrived and the time allow.
    async fn evaluate(&self, w: &Due, now: i64) -> Result<(), sqlx::Error> {
        let db = self.outbox.db();
        // The account's arrivals since the window opened, up to its end (or now).
        let until = now.min(w.closes_us);
        let arrivals: Vec<(String, i64, String)> = on_pool!(db, p => sqlx::query_as(
            "SELECT id, created_us, body FROM events WHERE username = $1 AND created_us >= $2 AND created_us <= $3 \
             AND type IN ('wharf.upload.completed', 'wharf.file.renamed') ORDER BY created_us, seq")
            .bind(&w.e.username).bind(w.opens_us).bind(until).fetch_all(p).await?);
        let mut met_by = Vec::new();
        let mut met_at = None;
        for (id, at, body) in arrivals {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            let d = &v["data"];
            let (Some(path), Some(bytes)) = (d["path"].as_str(), d["bytes"].as_u64()) else {
                continue;
            };
            if w.e.matches(path, bytes) {
                met_by.push(id);
                if met_by.len() >= w.e.min_files as usize {
                    met_at = Some(at);
                    break;
                }
            }
        }
        if let Some(at) = met_at {
            let late = at > w.deadline_us;
            if late && w.state == "open" {
                // It came after the deadline: it was late first.
                self.transition(w, "open", "late", LATE, w.deadline_us, &[], false)
                    .await?;
            }
            return self
                .transition(w, "any", "met", MET, at, &met_by, late)
                .await
                .map(drop);
        }
        if now > w.deadline_us && w.state == "open" {
            self.transition(w, "open", "late", LATE, w.deadline_us, &[], false)
                .await?;
        }
        if now > w.closes_us {
            self.transition(w, "late", "missed", MISSED, w.closes_us, &[], false)
                .await?;
        }
        Ok(())
    }

    /// Records the window's move from `from` (`any`: open or late) to `to` with its event
    /// of type `kind` at time `at`; nothing when another instance moved it first.
    #[allow(clippy::too_many_arguments)]
    async fn transition(
        &self,
        w: &Due,
        from: &str,
        to: &str,
        kind: &str,
        at: i64,
        met_by: &[String],
        late: bool,
    ) -> Result<bool, sqlx::Error> {
        let event = window_event(&self.source, kind, w, at, met_by, late);
        let met = (to == "met").then(|| serde_json::to_string(met_by).unwrap_or_default());
        let moved = self
            .outbox
            .record_window(
                &event,
                (&w.e.name, w.opens_us),
                from,
                to,
                met.as_deref(),
                late,
            )
            .await?;
        if moved {
            tracing::info!(activity = "EXPECTATION", expectation = %w.e.name, state = to, late, opens_at = %rfc3339(from_us(w.opens_us)), "expected arrival window moved on");
        }
        Ok(moved)
    }
}

/// An expectation window's event.
fn window_event(
    source: &str,
    kind: &str,
    w: &Due,
    at: i64,
    met_by: &[String],
    late: bool,
) -> Event {
    let mut data = json!({
        "expectation": w.e.name,
        "username": w.e.username,
        "folder": w.e.folder,
        "pattern": w.e.pattern,
        "schedule": w.e.schedule,
        "timezone": w.e.timezone,
        "min_files": w.e.min_files,
        "min_bytes": w.e.min_bytes,
        "opens_at": rfc3339(from_us(w.opens_us)),
        "deadline": rfc3339(from_us(w.deadline_us)),
        "closes_at": rfc3339(from_us(w.closes_us)),
    });
    if kind == MET {
        data["arrival_event_ids"] = json!(met_by);
        data["late"] = json!(late);
    }
    Event::other(source, kind, &w.e.username, &w.e.name, from_us(at), data)
}
