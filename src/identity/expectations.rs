//! Expected arrivals (`wharf expect …`): a file an account should send in each window of a
//! schedule — a cron expression in the partner's time zone — by a deadline, with a grace
//! after it. The definitions and their windows' arithmetic (DST by the tz database: a
//! deadline is wall-clock time after the window opens, so "by 06:00" stays 06:00 on the day
//! clocks change), stored next to the accounts; `events/expectations.rs` evaluates them.

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeZone as _, Timelike as _, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::audit::{self, Actor, AppendAudit as _, Entry};
use crate::db::{on_pool, Db};

/// An expectation as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Expectation {
    pub name: String,
    pub username: String,
    /// Client path of the folder the file must arrive in (anywhere in the account: none).
    pub folder: Option<String>,
    /// Glob on the file name, matched whatever the case.
    pub pattern: String,
    pub schedule: String,
    pub timezone: String,
    /// How long after a window opens the file is due (`6h`).
    #[serde(with = "secs")]
    #[schema(value_type = String)]
    pub deadline: Duration,
    /// How long after the deadline a late file still meets the window (`2h`).
    #[serde(with = "secs")]
    #[schema(value_type = String)]
    pub grace: Duration,
    pub min_files: u32,
    pub min_bytes: u64,
    #[serde(skip)]
    #[schema(ignore)]
    pub created_us: i64,
    #[serde(skip)]
    #[schema(ignore)]
    pub windows_until_us: i64,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// One window of an expectation, in microseconds of the database's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub opens_us: i64,
    pub deadline_us: i64,
    pub closes_us: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    #[error("invalid --schedule {0:?}: {1} (a cron expression: minute hour day month weekday, with an optional leading second)")]
    BadSchedule(String, String),
    #[error("unknown --timezone {0:?}: use an IANA name such as Europe/Amsterdam or UTC")]
    BadTimezone(String),
    #[error("invalid --pattern {0:?}: {1}")]
    BadPattern(String, String),
    #[error("invalid --folder {0:?}: use an absolute path such as /inbound")]
    BadFolder(String),
    #[error("invalid expectation name {0:?}: letters, digits, '.', '_' and '-' only")]
    BadName(String),
    #[error("--min-files must be at least 1")]
    BadMinFiles,
    #[error("expectation {0} already exists")]
    Exists(String),
    #[error("no expectation {0}")]
    Unknown(String),
    #[error("no user {0}")]
    UnknownUser(String),
    #[error("expectations database: {0}")]
    Database(#[from] sqlx::Error),
}

impl Expectation {
    /// Checks every field a person typed.
    pub fn validate(&self) -> Result<(), ExpectError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ExpectError::BadName(self.name.clone()));
        }
        self.cron()?;
        self.tz()?;
        glob::Pattern::new(&self.pattern)
            .map_err(|e| ExpectError::BadPattern(self.pattern.clone(), e.msg.into()))?;
        if let Some(f) = &self.folder {
            crate::identity::folders::parse_path(f)
                .map_err(|_| ExpectError::BadFolder(f.clone()))?;
        }
        if self.min_files == 0 {
            return Err(ExpectError::BadMinFiles);
        }
        Ok(())
    }

    fn cron(&self) -> Result<croner::Cron, ExpectError> {
        croner::Cron::from_str(&self.schedule)
            .map_err(|e| ExpectError::BadSchedule(self.schedule.clone(), e.to_string()))
    }

    fn tz(&self) -> Result<Tz, ExpectError> {
        self.timezone
            .parse::<Tz>()
            .map_err(|_| ExpectError::BadTimezone(self.timezone.clone()))
    }

    /// The windows that open after `after_us` and no later than `until_us`, at most `max`.
    pub fn windows(
        &self,
        after_us: i64,
        until_us: i64,
        max: usize,
    ) -> Result<Vec<Window>, ExpectError> {
        let (cron, tz) = (self.cron()?, self.tz()?);
        // Occurrences are whole seconds: searching from a fraction of one would carry it
        // over (and an occurrence in the same second as `after_us` is at or before it).
        let after = from_us(after_us);
        let after = after.with_nanosecond(0).unwrap_or(after);
        let mut t = tz.from_utc_datetime(&after.naive_utc());
        let mut out = Vec::new();
        while out.len() < max {
            let Ok(next) = cron.find_next_occurrence(&t, false) else {
                break;
            };
            let opens_us = next.with_timezone(&Utc).timestamp_micros();
            if opens_us > until_us {
                break;
            }
            let deadline = wall_clock_after(&next, self.deadline);
            let closes = wall_clock_after(&next, self.deadline + self.grace);
            out.push(Window {
                opens_us,
                deadline_us: deadline.timestamp_micros(),
                closes_us: closes.timestamp_micros(),
            });
            t = next;
        }
        Ok(out)
    }

    /// Whether an arrival of `bytes` at client path `path` counts for this expectation.
    pub fn matches(&self, path: &str, bytes: u64) -> bool {
        if bytes < self.min_bytes {
            return false;
        }
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        if let Some(folder) = &self.folder {
            let folder = folder.trim_end_matches('/');
            let inside = dir == folder || dir.starts_with(&format!("{folder}/"));
            if !inside {
                return false;
            }
        }
        let options = glob::MatchOptions {
            case_sensitive: false,
            ..glob::MatchOptions::new()
        };
        glob::Pattern::new(&self.pattern).is_ok_and(|p| p.matches_with(name, options))
    }
}

/// `d` of wall-clock time after `start` in its zone: 00:00 + 6 h is 06:00 local even on the
/// day clocks move. A local time that does not exist (the hour skipped in spring) is taken
/// as the first instant after the gap; one that happens twice (autumn), the first.
pub fn wall_clock_after(start: &DateTime<Tz>, d: Duration) -> DateTime<Utc> {
    let naive: NaiveDateTime =
        start.naive_local() + chrono::Duration::from_std(d).unwrap_or_default();
    let tz = start.timezone();
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        chrono::LocalResult::None => {
            // In the gap: the first minute that exists after it.
            let mut probe = naive;
            for _ in 0..(48 * 60) {
                probe += chrono::Duration::minutes(1);
                probe = probe.with_second(0).unwrap_or(probe);
                if let chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) =
                    tz.from_local_datetime(&probe)
                {
                    return t.with_timezone(&Utc);
                }
            }
            Utc.from_utc_datetime(&naive)
        }
    }
}

pub fn from_us(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

/// An expectation's row.
type Row = (
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    i64,
    i64,
    i32,
    i64,
    i64,
    i64,
);

const COLUMNS: &str = "name, username, folder, pattern, schedule, timezone, deadline_s, grace_s, min_files, min_bytes, created_us, windows_until_us";

fn from_row(r: Row) -> Expectation {
    Expectation {
        name: r.0,
        username: r.1,
        folder: r.2,
        pattern: r.3,
        schedule: r.4,
        timezone: r.5,
        deadline: Duration::from_secs(r.6.max(0) as u64),
        grace: Duration::from_secs(r.7.max(0) as u64),
        min_files: r.8.max(1) as u32,
        min_bytes: r.9.max(0) as u64,
        created_us: r.10,
        windows_until_us: r.11,
    }
}

/// Adds `e` (validated), for an existing account; its windows start with the first that
/// opens after now (by the database's clock). Recorded in the audit trail as `actor`'s.
pub async fn add(db: &Db, e: &Expectation, actor: &Actor) -> Result<(), ExpectError> {
    e.validate()?;
    let exists: i64 = on_pool!(db, p => sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE username = $1")
        .bind(&e.username).fetch_one(p).await?);
    if exists == 0 {
        return Err(ExpectError::UnknownUser(e.username.clone()));
    }
    let q = format!("INSERT INTO expectations ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, (SELECT now_us FROM wharf_clock), (SELECT now_us FROM wharf_clock)) ON CONFLICT (name) DO NOTHING");
    let entry = Entry::new(
        actor,
        "expectation.add",
        format!("expectation:{}", e.name),
        serde_json::to_value(e).unwrap_or_default(),
    );
    let begin = audit::begin(db);
    on_pool!(db, p => {
        let mut tx = p.begin_with(begin).await?;
        let n = sqlx::query(&q)
            .bind(&e.name).bind(&e.username).bind(&e.folder).bind(&e.pattern).bind(&e.schedule)
            .bind(&e.timezone).bind(e.deadline.as_secs() as i64).bind(e.grace.as_secs() as i64)
            .bind(e.min_files as i32).bind(e.min_bytes as i64)
            .execute(&mut *tx).await?.rows_affected();
        if n == 0 {
            return Err(ExpectError::Exists(e.name.clone()));
        }
        tx.append_audit(&entry).await?;
        tx.commit().await?;
    });
    Ok(())
}

/// Every expectation (of `user`, when given), by name.
pub async fn list(db: &Db, user: Option<&str>) -> Result<Vec<Expectation>, ExpectError> {
    let q = format!(
        "SELECT {COLUMNS} FROM expectations WHERE $1 IS NULL OR username = $1 ORDER BY name"
    );
    let rows: Vec<Row> = on_pool!(db, p => sqlx::query_as(&q).bind(user).fetch_all(p).await?);
    Ok(rows.into_iter().map(from_row).collect())
}

/// Removes an expectation and its windows, recorded as `actor`'s.
pub async fn remove(db: &Db, name: &str, actor: &Actor) -> Result<(), ExpectError> {
    let begin = audit::begin(db);
    on_pool!(db, p => {
        let mut tx = p.begin_with(begin).await?;
        let n = sqlx::query("DELETE FROM expectations WHERE name = $1")
            .bind(name).execute(&mut *tx).await?.rows_affected();
        if n == 0 {
            return Err(ExpectError::Unknown(name.into()));
        }
        tx.append_audit(&Entry::new(actor, "expectation.remove", format!("expectation:{name}"), serde_json::json!({})))
            .await?;
        tx.commit().await?;
    });
    Ok(())
}

/// A window as `wharf expect status` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WindowStatus {
    pub expectation: String,
    pub opens_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub closes_at: DateTime<Utc>,
    pub state: String,
    pub late: bool,
    pub met_by: Vec<String>,
}

/// A window's row: expectation, opens, deadline, closes, state, late, met by.
type WindowRow = (String, i64, i64, i64, String, bool, Option<String>);

/// The `limit` most recent windows of each expectation (or of `name`), newest first.
pub async fn status(
    db: &Db,
    name: Option<&str>,
    limit: i64,
) -> Result<Vec<WindowStatus>, ExpectError> {
    if let Some(n) = name {
        if !list(db, None).await?.iter().any(|e| e.name == n) {
            return Err(ExpectError::Unknown(n.into()));
        }
    }
    let rows: Vec<WindowRow> = on_pool!(db, p => sqlx::query_as(
        "SELECT w.expectation, w.opens_us, w.deadline_us, w.closes_us, w.state, w.late, w.met_by FROM expectation_windows w \
         WHERE ($1 IS NULL OR w.expectation = $1) \
         AND (SELECT COUNT(*) FROM expectation_windows n WHERE n.expectation = w.expectation AND n.opens_us > w.opens_us) < $2 \
         ORDER BY w.expectation, w.opens_us DESC")
        .bind(name).bind(limit).fetch_all(p).await?);
    Ok(rows
        .into_iter()
        .map(|(e, o, d, c, state, late, met)| WindowStatus {
            expectation: e,
            opens_at: from_us(o),
            deadline: from_us(d),
            closes_at: from_us(c),
            state,
            late,
            met_by: met
                .and_then(|m| serde_json::from_str(&m).ok())
                .unwrap_or_default(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daily(schedule: &str, deadline: u64, grace: u64) -> Expectation {
        Expectation {
            name: "acme-settlement".into(),
            username: "acme-pay".into(),
            folder: Some("/inbound".into()),
            pattern: "settlement_*.csv".into(),
            schedule: schedule.into(),
            timezone: "Europe/Amsterdam".into(),
            deadline: Duration::from_secs(deadline),
            grace: Duration::from_secs(grace),
            min_files: 1,
            min_bytes: 0,
            created_us: 0,
            windows_until_us: 0,
        }
    }

    fn us(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
    }

    fn at(us: i64) -> String {
        from_us(us).to_rfc3339()
    }

    /// A window across the last Sunday of March in Europe/Amsterdam: it opens at 00:00 CET
    /// (23:00 UTC the day before); "by 06:00" is 06:00 CEST that morning (04:00 UTC: five
    /// hours later, the clocks having jumped from 02:00 to 03:00), and the grace of 2 h ends
    /// at 08:00 CEST. The day before and the day after keep their own offsets.
    #[test]
    fn windows_follow_the_time_zone_across_dst() {
        let e = daily("0 0 * * *", 6 * 3600, 2 * 3600);
        let w = e
            .windows(us("2027-03-26T12:00:00Z"), us("2027-03-29T12:00:00Z"), 10)
            .unwrap();
        let got: Vec<(String, String, String)> = w
            .iter()
            .map(|w| (at(w.opens_us), at(w.deadline_us), at(w.closes_us)))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "2027-03-26T23:00:00+00:00".into(),
                    "2027-03-27T05:00:00+00:00".into(),
                    "2027-03-27T07:00:00+00:00".into()
                ),
                (
                    "2027-03-27T23:00:00+00:00".into(),
                    "2027-03-28T04:00:00+00:00".into(),
                    "2027-03-28T06:00:00+00:00".into()
                ),
                (
                    "2027-03-28T22:00:00+00:00".into(),
                    "2027-03-29T04:00:00+00:00".into(),
                    "2027-03-29T06:00:00+00:00".into()
                ),
            ]
        );
        // Weekdays only: the weekend has no window.
        let e = daily("0 0 * * 1-5", 6 * 3600, 2 * 3600);
        let w = e
            .windows(us("2027-03-26T12:00:00Z"), us("2027-03-29T12:00:00Z"), 10)
            .unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(at(w[0].opens_us), "2027-03-28T22:00:00+00:00");
    }

    /// A deadline that falls in the hour that does not exist (02:30 on the last Sunday of
    /// March) is the first instant after the gap (03:00 CEST).
    #[test]
    fn a_deadline_in_the_skipped_hour_is_the_end_of_the_gap() {
        let e = daily("0 0 * * *", 2 * 3600 + 1800, 0);
        let w = e
            .windows(us("2027-03-27T22:30:00Z"), us("2027-03-28T00:00:00Z"), 1)
            .unwrap();
        assert_eq!(at(w[0].deadline_us), "2027-03-28T01:00:00+00:00");
    }

    /// Windows open on whole seconds, whatever fraction of a second the search starts from:
    /// none is skipped between two rounds.
    #[test]
    fn windows_open_on_whole_seconds() {
        let mut e = daily("* * * * * *", 1, 0);
        e.timezone = "UTC".into();
        let w = e
            .windows(us("2027-01-01T00:00:10.6Z"), us("2027-01-01T00:00:13Z"), 10)
            .unwrap();
        let opens: Vec<String> = w.iter().map(|w| at(w.opens_us)).collect();
        assert_eq!(
            opens,
            vec![
                "2027-01-01T00:00:11+00:00",
                "2027-01-01T00:00:12+00:00",
                "2027-01-01T00:00:13+00:00"
            ]
        );
    }

    #[test]
    fn arrivals_match_folder_pattern_and_size() {
        let mut e = daily("0 0 * * *", 3600, 0);
        e.min_bytes = 10;
        assert!(e.matches("/inbound/settlement_2027-03-29.csv", 100));
        assert!(e.matches("/inbound/2027/SETTLEMENT_X.CSV", 100));
        assert!(!e.matches("/inbound/settlement_x.csv", 5));
        assert!(!e.matches("/inbound/statement_x.csv", 100));
        assert!(!e.matches("/inboundx/settlement_x.csv", 100));
        assert!(!e.matches("/other/settlement_x.csv", 100));
    }

    #[test]
    fn bad_definitions_are_refused() {
        let ok = daily("0 0 * * 1-5", 3600, 0);
        assert!(ok.validate().is_ok());
        let mut e = ok.clone();
        e.schedule = "every day".into();
        assert!(matches!(e.validate(), Err(ExpectError::BadSchedule(..))));
        let mut e = ok.clone();
        e.timezone = "Mars/Olympus".into();
        assert!(matches!(e.validate(), Err(ExpectError::BadTimezone(..))));
        let mut e = ok.clone();
        e.pattern = "[a-".into();
        assert!(matches!(e.validate(), Err(ExpectError::BadPattern(..))));
        let mut e = ok;
        e.name = "has space".into();
        assert!(matches!(e.validate(), Err(ExpectError::BadName(..))));
    }
}
