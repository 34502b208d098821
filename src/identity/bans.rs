//! Brute-force bans shared by every protocol: `security.ban_after_failures` failed logins
//! from one address within `ban_window` ban it for `ban_duration`. Bans live in the database
//! (all instances on it share them) and are cached here; each one set, lifted or pruned is in
//! the audit trail. Failures per username slow further attempts on that name without ever
//! locking its owner out.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use super::audit::{self, Actor, AppendAudit as _, Entry};
use crate::config::SecurityConfig;
use crate::db::{on_pool, Db};

/// How long the cached ban list is trusted before it is read again.
const REFRESH: Duration = Duration::from_secs(2);
/// Slowdown per failure beyond the threshold on one username, and its cap.
const USER_STEP: Duration = Duration::from_millis(250);
const USER_MAX: Duration = Duration::from_secs(3);
/// Addresses and usernames whose recent failures are counted, each map; past it the ones
/// without failures in the window go first, then the ones with the fewest failures.
const MAX_TRACKED: usize = 100_000;
/// Expired bans are kept this long (`wharf ban list` shows them), then deleted.
const KEEP_EXPIRED: chrono::Duration = chrono::Duration::days(1);
/// How often an instance deletes long-expired bans.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Ban {
    pub address: String,
    pub until: DateTime<Utc>,
    pub failures: i64,
    pub created: DateTime<Utc>,
}

#[derive(Default)]
struct State {
    by_address: HashMap<IpAddr, VecDeque<Instant>>,
    by_user: HashMap<String, VecDeque<Instant>>,
    banned: HashMap<IpAddr, DateTime<Utc>>,
    refreshed: Option<Instant>,
    pruned: Option<Instant>,
}

/// Keeps `map` at `MAX_TRACKED` entries: forgets the ones with no failure left in the window,
/// then the ones with the fewest failures (oldest first among equals). A spray of new names or
/// addresses, one failure each, cannot push out a username under attack or an address close
/// to its ban.
fn bound<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, VecDeque<Instant>>,
    window: Duration,
) {
    if map.len() <= MAX_TRACKED {
        return;
    }
    map.retain(|_, q| {
        prune(q, window);
        !q.is_empty()
    });
    if map.len() > MAX_TRACKED {
        let mut weakest: Vec<(usize, Instant, K)> = map
            .iter()
            .filter_map(|(k, q)| q.back().map(|t| (q.len(), *t, k.clone())))
            .collect();
        weakest.sort_by_key(|(n, t, _)| (*n, *t));
        // Down to 90%, so the sweep is not repeated for every new entry.
        let excess = map.len() - MAX_TRACKED * 9 / 10;
        for (_, _, k) in weakest.into_iter().take(excess) {
            map.remove(&k);
        }
    }
}

pub struct Bans {
    db: Db,
    after: u32,
    window: Duration,
    duration: Duration,
    state: Mutex<State>,
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

fn prune(q: &mut VecDeque<Instant>, window: Duration) {
    while q.front().is_some_and(|t| t.elapsed() > window) {
        q.pop_front();
    }
}

impl Bans {
    pub fn new(db: Db, cfg: &SecurityConfig) -> Arc<Bans> {
        Arc::new(Bans {
            db,
            after: cfg.ban_after_failures,
            window: cfg.ban_window.0,
            duration: cfg.ban_duration.0,
            state: Mutex::default(),
        })
    }

    fn enabled(&self) -> bool {
        self.after > 0
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `ip` is banned now (checked before any password is hashed).
    pub async fn is_banned(&self, ip: IpAddr) -> bool {
        if !self.enabled() {
            return false;
        }
        let stale = self.state().refreshed.is_none_or(|t| t.elapsed() > REFRESH);
        if stale {
            self.prune_expired().await;
            match active(&self.db).await {
                Ok(bans) => {
                    let now = Utc::now();
                    let active: HashMap<IpAddr, DateTime<Utc>> = bans
                        .into_iter()
                        .filter(|b| b.until > now)
                        .filter_map(|b| Some((b.address.parse().ok()?, b.until)))
                        .collect();
                    crate::telemetry::metrics::metrics()
                        .bans_active
                        .set(active.len() as i64);
                    let mut s = self.state();
                    s.banned = active;
                    s.refreshed = Some(Instant::now());
                }
                // The cache stays as it was: a database hiccup must not lift bans.
                Err(e) => tracing::warn!(error = %e, "cannot read bans; using the cached list"),
            }
        }
        self.state()
            .banned
            .get(&ip)
            .is_some_and(|u| *u > Utc::now())
    }

    /// How long to hold a login attempt for `username` (many recent failures on it, from
    /// anywhere, slow it down; its owner still gets in with the right password).
    pub fn user_delay(&self, username: &str) -> Duration {
        if !self.enabled() {
            return Duration::ZERO;
        }
        let mut s = self.state();
        let Some(q) = s.by_user.get_mut(username) else {
            return Duration::ZERO;
        };
        prune(q, self.window);
        let over = q.len().saturating_sub(self.after as usize) as u32;
        USER_STEP.saturating_mul(over).min(USER_MAX)
    }

    /// Records a failed login; bans the address once it reaches the threshold.
    pub async fn failed(&self, ip: IpAddr, username: &str) {
        if !self.enabled() {
            return;
        }
        let count = {
            let mut s = self.state();
            let user = s.by_user.entry(username.to_string()).or_default();
            user.push_back(Instant::now());
            prune(user, self.window);
            let q = s.by_address.entry(ip).or_default();
            q.push_back(Instant::now());
            prune(q, self.window);
            let n = q.len();
            // Bounded memory under a spray of usernames or addresses.
            let window = self.window;
            bound(&mut s.by_user, window);
            bound(&mut s.by_address, window);
            n
        };
        if count < self.after as usize {
            return;
        }
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(self.duration).unwrap_or_default();
        let audit = Entry::new(
            &Actor::server(),
            "ban.set",
            format!("address:{ip}"),
            serde_json::json!({ "until": until, "failures": count }),
        );
        let begin = audit::begin(&self.db);
        let res: Result<(), sqlx::Error> = on_pool!(&self.db, p => async {
            let mut tx = p.begin_with(begin).await?;
            sqlx::query(UPSERT)
                .bind(ip.to_string())
                .bind(micros(until))
                .bind(count as i64)
                .bind(micros(now))
                .execute(&mut *tx)
                .await?;
            tx.append_audit(&audit).await?;
            tx.commit().await
        }
        .await);
        if let Err(e) = res {
            tracing::error!(error = %e, client_ip = %ip, "cannot record a ban; banning on this instance only");
        }
        let mut s = self.state();
        s.banned.insert(ip, until);
        s.by_address.remove(&ip);
        crate::telemetry::metrics::metrics()
            .bans_active
            .set(s.banned.len() as i64);
        tracing::warn!(activity = "BAN", client_ip = %ip, failures = count, until = %until.to_rfc3339(), "address banned after repeated failed logins");
    }
}

impl Bans {
    /// Deletes bans expired for over a day, at most every `PRUNE_EVERY` per instance.
    async fn prune_expired(&self) {
        {
            let mut s = self.state();
            if s.pruned.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
                return;
            }
            s.pruned = Some(Instant::now());
        }
        const Q: &str = "DELETE FROM bans WHERE until_us < $1 RETURNING address";
        let cutoff = micros(Utc::now() - KEEP_EXPIRED);
        let begin = audit::begin(&self.db);
        let res: Result<(), sqlx::Error> = on_pool!(&self.db, p => async {
            let mut tx = p.begin_with(begin).await?;
            let gone: Vec<String> = sqlx::query_scalar(Q).bind(cutoff).fetch_all(&mut *tx).await?;
            if gone.is_empty() {
                return Ok(());
            }
            tx.append_audit(&Entry::new(
                &Actor::server(),
                "ban.prune",
                "bans",
                serde_json::json!({ "expired_before": from_micros(cutoff), "addresses": gone }),
            ))
            .await?;
            tx.commit().await
        }
        .await);
        if let Err(e) = res {
            tracing::warn!(error = %e, "cannot delete expired bans");
        }
    }
}

/// The bans in force now: what every instance reloads every `REFRESH`.
async fn active(db: &Db) -> Result<Vec<Ban>, sqlx::Error> {
    const Q: &str = "SELECT address, until_us, CAST(failures AS BIGINT), created_us FROM bans WHERE until_us > $1";
    let now = micros(Utc::now());
    let rows: Vec<(String, i64, i64, i64)> =
        on_pool!(db, p => sqlx::query_as(Q).bind(now).fetch_all(p).await?);
    Ok(rows
        .into_iter()
        .map(|(address, until, failures, created)| Ban {
            address,
            until: from_micros(until),
            failures,
            created: from_micros(created),
        })
        .collect())
}

const UPSERT: &str = "INSERT INTO bans (address, until_us, failures, created_us) VALUES ($1, $2, $3, $4) ON CONFLICT (address) DO UPDATE SET until_us = excluded.until_us, failures = excluded.failures, created_us = excluded.created_us";

/// Every ban on record (expired ones included until they are replaced or removed).
pub async fn list(db: &Db) -> Result<Vec<Ban>, sqlx::Error> {
    const Q: &str =
        "SELECT address, until_us, CAST(failures AS BIGINT), created_us FROM bans ORDER BY created_us";
    let rows: Vec<(String, i64, i64, i64)> =
        on_pool!(db, p => sqlx::query_as(Q).fetch_all(p).await?);
    Ok(rows
        .into_iter()
        .map(|(address, until, failures, created)| Ban {
            address,
            until: from_micros(until),
            failures,
            created: from_micros(created),
        })
        .collect())
}

/// Lifts a ban, recording who did; false when there was none for `address`.
pub async fn remove(db: &Db, address: &str, actor: &Actor) -> Result<bool, sqlx::Error> {
    const Q: &str = "DELETE FROM bans WHERE address = $1 RETURNING until_us";
    let begin = audit::begin(db);
    on_pool!(db, p => {
        let mut tx = p.begin_with(begin).await?;
        let until: Option<i64> = sqlx::query_scalar(Q).bind(address).fetch_optional(&mut *tx).await?;
        let Some(until) = until else {
            return Ok(false);
        };
        tx.append_audit(&Entry::new(
            actor,
            "ban.lift",
            format!("address:{address}"),
            serde_json::json!({ "until": from_micros(until) }),
        ))
        .await?;
        tx.commit().await?;
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_username_attacked_from_many_addresses_is_slowed_not_locked() {
        let pool = sqlx::SqlitePool::connect_lazy("sqlite::memory:").unwrap();
        let cfg = SecurityConfig {
            ban_after_failures: 3,
            ..SecurityConfig::default()
        };
        let bans = Bans::new(Db::Sqlite(pool), &cfg);
        for i in 0..8u8 {
            // One failure per address: no address reaches the ban threshold.
            bans.failed(IpAddr::from([10, 0, 0, i]), "acme").await;
        }
        assert_eq!(bans.user_delay("acme"), USER_STEP * 5);
        assert_eq!(bans.user_delay("someone-else"), Duration::ZERO);
        assert!(bans.state().banned.is_empty());
        for _ in 0..20 {
            bans.failed(IpAddr::from([10, 0, 1, 1]), "acme").await;
        }
        assert_eq!(bans.user_delay("acme"), USER_MAX);
    }

    #[tokio::test]
    async fn failure_counters_stay_bounded_and_keep_the_recent_ones() {
        let pool = sqlx::SqlitePool::connect_lazy("sqlite::memory:").unwrap();
        let cfg = SecurityConfig {
            ban_after_failures: 3,
            ..SecurityConfig::default()
        };
        let bans = Bans::new(Db::Sqlite(pool), &cfg);
        // A spray of names from as many addresses, with a username under attack among them.
        for i in 0..(MAX_TRACKED as u32 + 5000) {
            let ip = IpAddr::from(std::net::Ipv6Addr::from(
                (0x2001_0db8_u128 << 96) | u128::from(i),
            ));
            bans.failed(ip, &format!("user{i}")).await;
            if i == 10 {
                // Most of the spray comes after acme's failures.
                for _ in 0..20 {
                    bans.failed(IpAddr::from([10, 9, 9, 9]), "acme").await;
                }
            }
        }
        let s = bans.state();
        assert!(s.by_user.len() <= MAX_TRACKED && s.by_address.len() <= MAX_TRACKED);
        drop(s);
        // acme's failures survived the sweeps: it is still slowed (the spray's names, one
        // failure each, went first).
        assert!(bans.user_delay("acme") > Duration::ZERO);
    }
}
