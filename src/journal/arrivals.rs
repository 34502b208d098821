//! The arrival bookkeeping that outlives an event's transaction: temp-name uploads staged
//! until their rename, the names that arrived in folders that accept a name once, and the
//! receipts and decryption jobs arrivals ask for, until they are done. Their rows are written
//! with the arrival's event (`events/outbox.rs`, which clears the commit intent in the same
//! transaction); this reads and settles them afterwards.

use chrono::{DateTime, Utc};

use crate::db::on_pool;
use crate::events::outbox::{
    begin, from_micros, micros, IntentRef, Outbox, Result, Staged, ANNOUNCED, CLEAR_INTENT, SETTLED,
};

/// `bytes, sha256, etag, started_us, scan` of a staged temp-name upload.
type StagedRow = (i64, String, Option<String>, i64, Option<String>);

/// The arrival bookkeeping of an outbox's database (`Outbox::arrivals`).
pub struct Arrivals<'a>(&'a Outbox);

impl Outbox {
    /// The bookkeeping of arrivals on this outbox's database.
    pub fn arrivals(&self) -> Arrivals<'_> {
        Arrivals(self)
    }
}

impl Arrivals<'_> {
    /// Where the receipt of event `event_id` goes (JSON of a `ReceiptTarget`), until written.
    pub async fn receipt_target(&self, event_id: &str) -> Result<Option<String>> {
        Ok(on_pool!(self.0.db(), pool => {
            sqlx::query_scalar("SELECT target FROM receipts WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// The decryption job of arrival `event_id` (JSON of a `DecryptTarget`) and the attempts
    /// made at it, until its outcome is recorded.
    pub async fn decrypt_job(&self, event_id: &str) -> Result<Option<(String, i32)>> {
        Ok(on_pool!(self.0.db(), p =>
            sqlx::query_as("SELECT job, attempts FROM decrypt_jobs WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(p)
                .await?))
    }

    /// One more attempt at the decryption job of `event_id` (counted before it runs, so an
    /// attempt a crash cut short counts too).
    pub async fn decrypt_attempt(&self, event_id: &str) -> Result<()> {
        let _writing = self.0.writing().await;
        on_pool!(self.0.bookkeeping(), p =>
            sqlx::query("UPDATE decrypt_jobs SET attempts = attempts + 1 WHERE event_id = $1")
                .bind(event_id)
                .execute(p)
                .await
                .map(drop)?);
        Ok(())
    }

    /// The receipt of `event_id` is written.
    pub async fn receipt_written(&self, event_id: &str) -> Result<()> {
        let _writing = self.0.writing().await;
        on_pool!(self.0.bookkeeping(), pool => {
            sqlx::query("DELETE FROM receipts WHERE event_id = $1")
                .bind(event_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Whether a file ever arrived at `location` in a folder that accepts a name once.
    pub async fn arrived_before(&self, location: &str) -> Result<bool> {
        let n: i64 = on_pool!(self.0.db(), pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM arrived_names WHERE location = $1")
                .bind(location)
                .fetch_one(pool)
                .await?
        });
        Ok(n > 0)
    }

    /// Remembers a temp-name upload until its rename, clearing its commit `intent` in the
    /// same transaction (fenced as `record` is: false, and nothing staged, when the intent is
    /// no longer its owner's). `outcome` marks a reconciler's settlement for the intent's
    /// first owner; an owner's own staging is marked too, so an owner whose answer was lost
    /// learns that it went through.
    pub async fn stage(
        &self,
        location: &str,
        s: &Staged,
        intent: Option<&IntentRef>,
    ) -> Result<bool> {
        let _writing = self.0.writing().await;
        Ok(on_pool!(self.0.db(), pool => {
            let mut tx = pool.begin_with(begin(self.0.db())).await?;
            let mut owned = true;
            if let Some(i) = intent {
                owned = sqlx::query(CLEAR_INTENT)
                    .bind(&i.location).bind(&i.id).bind(&i.owner)
                    .fetch_optional(&mut *tx).await?.is_some();
                if owned {
                    sqlx::query(SETTLED).bind(&i.id).bind(ANNOUNCED).execute(&mut *tx).await?;
                }
            }
            if owned {
                sqlx::query("INSERT INTO staged_uploads (location, bytes, sha256, etag, started_us, created_us, scan) VALUES ($1, $2, $3, $4, $5, (SELECT now_us FROM wharf_clock), $6) ON CONFLICT (location) DO UPDATE SET bytes = excluded.bytes, sha256 = excluded.sha256, etag = excluded.etag, started_us = excluded.started_us, created_us = excluded.created_us, scan = excluded.scan")
                    .bind(location).bind(s.bytes as i64).bind(&s.sha256).bind(&s.etag).bind(micros(s.started_at))
                    .bind(s.scan.as_ref().map(|v| v.to_string()))
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            owned
        }))
    }

    /// The facts of the last arrival announced at `location` (a completed upload or a
    /// rename onto it), from its event: to stage a file renamed from a final name to a temp
    /// one, or to announce a final name renamed onto another.
    pub async fn last_arrival(&self, location: &str) -> Result<Option<Staged>> {
        let body: Option<String> = on_pool!(self.0.db(), pool => {
            sqlx::query_scalar("SELECT body FROM events WHERE location = $1 AND type IN ('wharf.upload.completed', 'wharf.file.renamed') ORDER BY seq DESC LIMIT 1")
                .bind(location)
                .fetch_optional(pool).await?
        });
        let Some(v) = body.and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok()) else {
            return Ok(None);
        };
        let d = &v["data"];
        let (Some(bytes), Some(sha256)) = (d["bytes"].as_u64(), d["sha256"].as_str()) else {
            return Ok(None);
        };
        Ok(Some(Staged {
            bytes,
            sha256: sha256.to_string(),
            etag: d["etag"].as_str().map(String::from),
            started_at: d["started_at"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(Utc::now),
            scan: Some(d["scan"].clone()).filter(|v| !v.is_null()),
        }))
    }

    /// The temp-name upload staged at `location`, if any.
    pub async fn staged(&self, location: &str) -> Result<Option<Staged>> {
        let row: Option<StagedRow> = on_pool!(self.0.db(), pool => {
            sqlx::query_as("SELECT bytes, sha256, etag, started_us, scan FROM staged_uploads WHERE location = $1")
                .bind(location).fetch_optional(pool).await?
        });
        Ok(row.map(|(bytes, sha256, etag, started, scan)| Staged {
            bytes: bytes.max(0) as u64,
            sha256,
            etag,
            started_at: from_micros(started),
            scan: scan.and_then(|s| serde_json::from_str(&s).ok()),
        }))
    }

    /// Forgets a staged temp upload (its file was deleted).
    pub async fn unstage(&self, location: &str) -> Result<()> {
        let _writing = self.0.writing().await;
        on_pool!(self.0.db(), pool => {
            sqlx::query("DELETE FROM staged_uploads WHERE location = $1").bind(location).execute(pool).await?;
        });
        Ok(())
    }

    /// Moves a staged upload to a new temp name (a rename between two temp names).
    pub async fn restage(&self, from: &str, to: &str) -> Result<()> {
        let _writing = self.0.writing().await;
        on_pool!(self.0.db(), pool => {
            let mut tx = pool.begin_with(begin(self.0.db())).await?;
            sqlx::query("DELETE FROM staged_uploads WHERE location = $1").bind(to).execute(&mut *tx).await?;
            sqlx::query("UPDATE staged_uploads SET location = $2 WHERE location = $1").bind(from).bind(to).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }
}
