//! The SQL behind both account stores. SQLite and Postgres take the same statements here
//! (`$n` placeholders, `RETURNING`), so one macro writes both `AccountStore` impls; every
//! write appends its audit record (when given) in its own transaction.

use chrono::{DateTime, Utc};

use super::{parse_cidr, Account, AccountKey, PasswordHash, StoreError};
use crate::storage::Home;

#[derive(sqlx::FromRow)]
pub(super) struct AccountRow {
    pub username: String,
    pub password_hash: Option<String>,
    pub enabled: bool,
    pub home: String,
    pub permissions: String,
    pub allowed_cidrs: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub folders: String,
    pub pgp: String,
    pub rules: String,
}

impl TryFrom<AccountRow> for Account {
    type Error = StoreError;
    fn try_from(r: AccountRow) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            username: r.username.clone(),
            reason,
        };
        let password_hash = r
            .password_hash
            .clone()
            .map(PasswordHash::from_phc)
            .transpose()
            .map_err(corrupt)?;
        let home = Home::parse_uri(&r.home).map_err(|e| corrupt(e.to_string()))?;
        let permissions = r.permissions.parse().map_err(|e| corrupt(format!("{e}")))?;
        let allowed_cidrs = r
            .allowed_cidrs
            .split(',')
            .filter(|s| !s.is_empty())
            .map(parse_cidr)
            .collect::<Result<_, _>>()
            .map_err(|e| corrupt(e.to_string()))?;
        let folders =
            super::folders::from_column(&r.folders).map_err(|e| corrupt(e.to_string()))?;
        let pgp = super::pgp::AccountPgp::from_column(&r.pgp).map_err(corrupt)?;
        let rules = serde_json::from_str(&r.rules).map_err(|e| corrupt(e.to_string()))?;
        Ok(Account {
            pgp,
            rules,
            username: r.username,
            folders,
            password_hash,
            enabled: r.enabled,
            home,
            permissions,
            allowed_cidrs,
            created_at: r.created_at,
            updated_at: r.updated_at,
            last_login_at: r.last_login_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct KeyRow {
    pub fingerprint: String,
    pub algorithm: String,
    pub public_key: String,
    pub comment: String,
    pub created_at: DateTime<Utc>,
}

impl From<KeyRow> for AccountKey {
    fn from(r: KeyRow) -> Self {
        AccountKey {
            fingerprint: r.fingerprint,
            algorithm: r.algorithm,
            public_key: r.public_key,
            comment: r.comment,
            created_at: Some(r.created_at),
        }
    }
}

pub(super) fn cidrs_column(a: &Account) -> String {
    a.allowed_cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn map_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            StoreError::Unavailable(e)
        }
        other => StoreError::Database(other),
    }
}

/// Appends `audit` (when given) in the store's transaction.
pub(super) async fn append_audit<C>(
    conn: &mut C,
    audit: Option<&super::audit::Entry>,
) -> Result<(), StoreError>
where
    C: super::audit::AppendAudit + Send,
{
    if let Some(e) = audit {
        conn.append_audit(e).await.map_err(map_err)?;
    }
    Ok(())
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

pub(super) const SELECT_ACCOUNT: &str = "SELECT username, password_hash, enabled, home, permissions, allowed_cidrs, created_at, updated_at, last_login_at, folders, pgp, rules FROM accounts";
pub(super) const INSERT_ACCOUNT: &str = "INSERT INTO accounts (username, password_hash, enabled, home, permissions, allowed_cidrs, created_at, updated_at, folders, pgp, rules) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id";
pub(super) const UPDATE_ACCOUNT: &str = "UPDATE accounts SET password_hash = $2, enabled = $3, home = $4, permissions = $5, allowed_cidrs = $6, updated_at = $7, folders = $8, pgp = $9, rules = $10 WHERE username = $1";
pub(super) const ACCOUNT_ID: &str = "SELECT id FROM accounts WHERE username = $1";
pub(super) const INSERT_KEY: &str = "INSERT INTO account_keys (account_id, fingerprint, algorithm, public_key, comment, created_at) VALUES ($1, $2, $3, $4, $5, $6)";
pub(super) const SELECT_KEYS: &str = "SELECT k.fingerprint, k.algorithm, k.public_key, k.comment, k.created_at FROM account_keys k JOIN accounts a ON a.id = k.account_id WHERE a.username = $1";

/// Implements `AccountStore` for a struct with a `pool: sqlx::Pool<$db>` field; `$begin` is
/// the statement that opens a write transaction.
macro_rules! sql_account_store {
    ($store:ty, $db:ty, $begin:expr) => {
        impl $store {
            async fn account_id(
                conn: &mut <$db as sqlx::Database>::Connection,
                username: &str,
            ) -> Result<i64, $crate::identity::StoreError> {
                sqlx::query_scalar::<_, i64>($crate::identity::sql::ACCOUNT_ID)
                    .bind(username)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err($crate::identity::sql::map_err)?
                    .ok_or_else(|| $crate::identity::StoreError::UnknownUser(username.into()))
            }

            async fn insert_keys(
                conn: &mut <$db as sqlx::Database>::Connection,
                account_id: i64,
                username: &str,
                keys: &[$crate::identity::AccountKey],
            ) -> Result<(), $crate::identity::StoreError> {
                let now = $crate::identity::now();
                for k in keys {
                    sqlx::query($crate::identity::sql::INSERT_KEY)
                        .bind(account_id)
                        .bind(&k.fingerprint)
                        .bind(&k.algorithm)
                        .bind(&k.public_key)
                        .bind(&k.comment)
                        .bind(now)
                        .execute(&mut *conn)
                        .await
                        .map_err(|e| {
                            if $crate::identity::sql::is_unique_violation(&e) {
                                $crate::identity::StoreError::DuplicateKey {
                                    username: username.into(),
                                    fingerprint: k.fingerprint.clone(),
                                }
                            } else {
                                $crate::identity::sql::map_err(e)
                            }
                        })?;
                }
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::identity::AccountStore for $store {
            async fn create_audited(
                &self,
                a: &$crate::identity::Account,
                keys: &[$crate::identity::AccountKey],
                audit: Option<&$crate::identity::audit::Entry>,
            ) -> Result<(), $crate::identity::StoreError> {
                use $crate::identity::{sql, StoreError};
                let mut tx = self.pool.begin_with($begin).await.map_err(sql::map_err)?;
                let id: i64 = sqlx::query_scalar(sql::INSERT_ACCOUNT)
                    .bind(&a.username)
                    .bind(a.password_hash.as_ref().map(|h| h.as_phc()))
                    .bind(a.enabled)
                    .bind(a.home.to_uri())
                    .bind(a.permissions.to_string())
                    .bind(sql::cidrs_column(a))
                    .bind(a.created_at)
                    .bind(a.updated_at)
                    .bind($crate::identity::folders::to_column(&a.folders))
                    .bind(a.pgp.to_column())
                    .bind(serde_json::to_string(&a.rules).unwrap_or_else(|_| "{}".into()))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| {
                        if sql::is_unique_violation(&e) {
                            StoreError::DuplicateUser(a.username.clone())
                        } else {
                            sql::map_err(e)
                        }
                    })?;
                Self::insert_keys(&mut tx, id, &a.username, keys).await?;
                sql::append_audit(&mut *tx, audit).await?;
                tx.commit().await.map_err(sql::map_err)
            }

            async fn get(
                &self,
                username: &str,
            ) -> Result<Option<$crate::identity::Account>, $crate::identity::StoreError> {
                use $crate::identity::sql;
                let q = format!("{} WHERE username = $1", sql::SELECT_ACCOUNT);
                sqlx::query_as::<_, sql::AccountRow>(&q)
                    .bind(username)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(sql::map_err)?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn list(
                &self,
            ) -> Result<Vec<$crate::identity::Account>, $crate::identity::StoreError> {
                use $crate::identity::sql;
                let q = format!("{} ORDER BY username", sql::SELECT_ACCOUNT);
                sqlx::query_as::<_, sql::AccountRow>(&q)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(sql::map_err)?
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect()
            }

            async fn list_page(
                &self,
                after: Option<&str>,
                limit: i64,
            ) -> Result<Vec<$crate::identity::Account>, $crate::identity::StoreError> {
                use $crate::identity::sql;
                let q = format!(
                    "{} WHERE ($1 IS NULL OR username > $1) ORDER BY username LIMIT $2",
                    sql::SELECT_ACCOUNT
                );
                sqlx::query_as::<_, sql::AccountRow>(&q)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(sql::map_err)?
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect()
            }

            async fn update_audited(
                &self,
                a: &$crate::identity::Account,
                audit: Option<&$crate::identity::audit::Entry>,
            ) -> Result<(), $crate::identity::StoreError> {
                use $crate::identity::{sql, StoreError};
                let mut tx = self.pool.begin_with($begin).await.map_err(sql::map_err)?;
                let done = sqlx::query(sql::UPDATE_ACCOUNT)
                    .bind(&a.username)
                    .bind(a.password_hash.as_ref().map(|h| h.as_phc()))
                    .bind(a.enabled)
                    .bind(a.home.to_uri())
                    .bind(a.permissions.to_string())
                    .bind(sql::cidrs_column(a))
                    .bind($crate::identity::now())
                    .bind($crate::identity::folders::to_column(&a.folders))
                    .bind(a.pgp.to_column())
                    .bind(serde_json::to_string(&a.rules).unwrap_or_else(|_| "{}".into()))
                    .execute(&mut *tx)
                    .await
                    .map_err(sql::map_err)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::UnknownUser(a.username.clone()));
                }
                sql::append_audit(&mut *tx, audit).await?;
                tx.commit().await.map_err(sql::map_err)
            }

            async fn delete_audited(
                &self,
                username: &str,
                audit: Option<&$crate::identity::audit::Entry>,
            ) -> Result<(), $crate::identity::StoreError> {
                use $crate::identity::{sql, StoreError};
                let mut tx = self.pool.begin_with($begin).await.map_err(sql::map_err)?;
                let done = sqlx::query("DELETE FROM accounts WHERE username = $1")
                    .bind(username)
                    .execute(&mut *tx)
                    .await
                    .map_err(sql::map_err)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::UnknownUser(username.into()));
                }
                sql::append_audit(&mut *tx, audit).await?;
                tx.commit().await.map_err(sql::map_err)
            }

            async fn add_keys_audited(
                &self,
                username: &str,
                keys: &[$crate::identity::AccountKey],
                audit: Option<&$crate::identity::audit::Entry>,
            ) -> Result<(), $crate::identity::StoreError> {
                use $crate::identity::sql;
                let mut tx = self.pool.begin_with($begin).await.map_err(sql::map_err)?;
                let id = Self::account_id(&mut tx, username).await?;
                Self::insert_keys(&mut tx, id, username, keys).await?;
                sql::append_audit(&mut *tx, audit).await?;
                tx.commit().await.map_err(sql::map_err)
            }

            async fn list_keys(
                &self,
                username: &str,
            ) -> Result<Vec<$crate::identity::AccountKey>, $crate::identity::StoreError> {
                use $crate::identity::sql;
                let mut conn = self.pool.acquire().await.map_err(sql::map_err)?;
                Self::account_id(&mut conn, username).await?;
                let q = format!("{} ORDER BY k.id", sql::SELECT_KEYS);
                Ok(sqlx::query_as::<_, sql::KeyRow>(&q)
                    .bind(username)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(sql::map_err)?
                    .into_iter()
                    .map(Into::into)
                    .collect())
            }

            async fn remove_key_audited(
                &self,
                username: &str,
                fingerprint: &str,
                audit: Option<&$crate::identity::audit::Entry>,
            ) -> Result<(), $crate::identity::StoreError> {
                use $crate::identity::{sql, StoreError};
                let mut tx = self.pool.begin_with($begin).await.map_err(sql::map_err)?;
                let id = Self::account_id(&mut tx, username).await?;
                let done = sqlx::query(
                    "DELETE FROM account_keys WHERE account_id = $1 AND fingerprint = $2",
                )
                .bind(id)
                .bind(fingerprint)
                .execute(&mut *tx)
                .await
                .map_err(sql::map_err)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::UnknownKey {
                        username: username.into(),
                        fingerprint: fingerprint.into(),
                    });
                }
                sql::append_audit(&mut *tx, audit).await?;
                tx.commit().await.map_err(sql::map_err)
            }

            async fn find_key(
                &self,
                username: &str,
                fingerprint: &str,
            ) -> Result<Option<$crate::identity::AccountKey>, $crate::identity::StoreError> {
                use $crate::identity::sql;
                let q = format!("{} AND k.fingerprint = $2", sql::SELECT_KEYS);
                Ok(sqlx::query_as::<_, sql::KeyRow>(&q)
                    .bind(username)
                    .bind(fingerprint)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(sql::map_err)?
                    .map(Into::into))
            }

            async fn record_login(
                &self,
                username: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::identity::StoreError> {
                use $crate::identity::sql;
                sqlx::query("UPDATE accounts SET last_login_at = $2 WHERE username = $1")
                    .bind(username)
                    .bind(at)
                    .execute(&self.pool)
                    .await
                    .map_err(sql::map_err)?;
                Ok(())
            }
        }
    };
}
pub(super) use sql_account_store;
