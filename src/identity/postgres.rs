//! `AccountStore` on Postgres: production, shared by every wharf instance.

use sqlx::PgPool;

/// Accounts in a Postgres database.
#[derive(Clone)]
pub struct PgAccountStore {
    pool: PgPool,
}

impl PgAccountStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

super::sql::sql_account_store!(PgAccountStore, sqlx::Postgres, "BEGIN");
