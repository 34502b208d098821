//! `AccountStore` on SQLite: the embedded default (`sqlite://wharf.db`).

use sqlx::SqlitePool;

/// Accounts in a SQLite database file.
#[derive(Clone)]
pub struct SqliteAccountStore {
    pool: SqlitePool,
}

impl SqliteAccountStore {
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

super::sql::sql_account_store!(SqliteAccountStore, sqlx::Sqlite, "BEGIN IMMEDIATE");
