//! The database wharf keeps its state in (SQLite embedded, Postgres in production): connecting,
//! migrating, and handing out the stores built on it.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Connection as _, PgPool, SqlitePool};

use crate::config::{redact_url, DatabaseConfig};
use crate::identity::{AccountStore, PgAccountStore, SqliteAccountStore};

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database url {0}: expected sqlite://FILE or postgres://USER@HOST/DB")]
    Scheme(String),
    #[error("cannot connect to database {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error("migrating database {target} failed: {reason}")]
    Migrate { target: String, reason: String },
}

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds: for SQL that both databases
/// accept as written (`$1` placeholders work in both).
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// A connection back in its pool for less than this is handed out again without a ping.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Every pool's options. sqlx pings a connection (a round trip to the database) when it goes
/// back to its pool, and by default again when it is taken out: under load, one round trip in
/// three of every query, and a wake-up of the database and of wharf. A connection that passed
/// the first ping less than `PING_AFTER_IDLE` ago is handed out as is (HikariCP's
/// `aliveBypassWindowMs`, PgBouncer's `server_check_delay`); an older one is pinged first, so
/// one the database dropped while it sat idle is replaced, not used. A connection that breaks
/// within that second fails its query as it would have failed just after a ping, and sqlx drops
/// it when it comes back.
fn pool_options<DB: sqlx::Database>() -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn: &mut DB::Connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// A pool on one of the supported databases.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Db {
    /// Connects (creating a SQLite file when missing) and checks the database answers.
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Db, DbError> {
        let raw = cfg.url.expose_secret();
        let target = describe(raw);
        let unreachable = |e: sqlx::Error| DbError::Unreachable {
            target: target.clone(),
            reason: reason(e),
        };
        let timeout = cfg.connect_timeout.0.max(Duration::from_millis(100));
        if raw.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(raw)
                .map_err(unreachable)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let pool = pool_options::<sqlx::Sqlite>()
                .max_connections(cfg.max_connections.max(1))
                .acquire_timeout(timeout)
                .connect_with(opts)
                .await
                .map_err(unreachable)?;
            Ok(Db::Sqlite(pool))
        } else if raw.starts_with("postgres:") || raw.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(raw).map_err(unreachable)?;
            // One direct attempt first: the pool would retry until its timeout and then
            // report only that, hiding "connection refused" or "database does not exist".
            let probe = tokio::time::timeout(timeout, opts.connect())
                .await
                .map_err(|_| unreachable(sqlx::Error::PoolTimedOut))?
                .map_err(unreachable)?;
            let _ = probe.close().await;
            let pool = pool_options::<sqlx::Postgres>()
                .max_connections(cfg.max_connections.max(1))
                .acquire_timeout(timeout)
                .connect_with(opts)
                .await
                .map_err(unreachable)?;
            Ok(Db::Postgres(pool))
        } else {
            Err(DbError::Scheme(target))
        }
    }

    /// Applies pending migrations. Safe to run concurrently from several instances: sqlx
    /// takes an advisory lock on Postgres, and SQLite serialises writers.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let res = match self {
            Db::Sqlite(p) => SQLITE_MIGRATIONS.run(p).await,
            Db::Postgres(p) => PG_MIGRATIONS.run(p).await,
        };
        res.map_err(|e| DbError::Migrate {
            target: self.kind().into(),
            reason: e.to_string(),
        })
    }

    /// Connects and migrates: what every command that needs the database does first.
    pub async fn open(cfg: &DatabaseConfig) -> Result<Db, DbError> {
        let db = Db::connect(cfg).await?;
        db.migrate().await.map_err(|e| match e {
            DbError::Migrate { reason, .. } => DbError::Migrate {
                target: describe(cfg.url.expose_secret()),
                reason,
            },
            other => other,
        })?;
        Ok(db)
    }

    /// A second, small pool on the same database whose commits are not flushed to disk one
    /// by one (Postgres `synchronous_commit = off`, SQLite `synchronous = NORMAL` in WAL
    /// mode). Only for bookkeeping whose loss in a crash is harmless: delivery claims and
    /// outcomes, which at worst make an event be delivered again (at-least-once). Events
    /// themselves are always recorded through the durable pool.
    pub fn bookkeeping(&self) -> Db {
        self.unflushed(4)
    }

    /// A pool of its own, of `connections`, whose commits are not flushed one by one (see
    /// `bookkeeping`): for work that must not wait behind other work for a connection (an
    /// instance's heartbeat).
    pub fn unflushed(&self, connections: u32) -> Db {
        match self {
            Db::Sqlite(p) => {
                let opts = (*p.connect_options())
                    .clone()
                    .synchronous(SqliteSynchronous::Normal);
                let options = p.options();
                Db::Sqlite(
                    pool_options::<sqlx::Sqlite>()
                        .max_connections(connections)
                        .acquire_timeout(options.get_acquire_timeout())
                        .connect_lazy_with(opts),
                )
            }
            Db::Postgres(p) => {
                let opts = (*p.connect_options())
                    .clone()
                    .options([("synchronous_commit", "off")]);
                let options = p.options();
                Db::Postgres(
                    pool_options::<sqlx::Postgres>()
                        .max_connections(connections)
                        .acquire_timeout(options.get_acquire_timeout())
                        .connect_lazy_with(opts),
                )
            }
        }
    }

    /// A pool of its own on the same database, as durable as this one, of at most
    /// `connections`, opened when first used: for a front-end whose load must never take
    /// connections from partners' sessions (the admin API) and for the audit trail's pruning.
    pub fn own_pool(&self, connections: u32) -> Db {
        match self {
            Db::Sqlite(p) => {
                let opts = (*p.connect_options()).clone();
                Db::Sqlite(
                    pool_options::<sqlx::Sqlite>()
                        .max_connections(connections.max(1))
                        .acquire_timeout(p.options().get_acquire_timeout())
                        .connect_lazy_with(opts),
                )
            }
            Db::Postgres(p) => {
                let opts = (*p.connect_options()).clone();
                Db::Postgres(
                    pool_options::<sqlx::Postgres>()
                        .max_connections(connections.max(1))
                        .acquire_timeout(p.options().get_acquire_timeout())
                        .connect_lazy_with(opts),
                )
            }
        }
    }

    /// One round trip to the database (readiness).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.map(drop))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    pub fn account_store(&self) -> Arc<dyn AccountStore> {
        match self {
            Db::Sqlite(p) => Arc::new(SqliteAccountStore::new(p.clone())),
            Db::Postgres(p) => Arc::new(PgAccountStore::new(p.clone())),
        }
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

/// Names the database (host, port, database or file) without credentials.
fn describe(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(u) if u.scheme() == "sqlite" => raw.to_string(),
        Ok(u) => {
            let host = u.host_str().unwrap_or("localhost");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let user = if u.username().is_empty() {
                String::new()
            } else {
                format!("{}@", u.username())
            };
            format!("{}://{user}{host}{port}{}", u.scheme(), u.path())
        }
        Err(_) => redact_url(raw),
    }
}

/// sqlx's messages sometimes embed the options they were given; keep only the cause.
fn reason(e: sqlx::Error) -> String {
    match e {
        sqlx::Error::PoolTimedOut => "timed out waiting for the database to answer".into(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::Configuration(c) => format!("bad url: {c}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn describe_hides_passwords() {
        assert_eq!(
            describe("postgres://wharf:s3cret@db.example:6543/prod?sslmode=require"),
            "postgres://wharf@db.example:6543/prod"
        );
        assert_eq!(describe("sqlite://wharf.db"), "sqlite://wharf.db");
    }
}
