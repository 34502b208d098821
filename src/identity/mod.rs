//! Partner accounts: the `Account` model, usernames, permissions, allowed addresses, public
//! keys, password hashes, folders (`folders.rs`) and PGP signing keys (`pgp.rs`), and the `AccountStore` seam with its
//! SQLite and Postgres stores; the administration both front-ends (CLI, admin API) call
//! (`manage/`), its audit trail (`audit.rs`) and the admin API's tokens (`tokens.rs`).

pub mod audit;
pub mod auth;
pub mod bans;
pub mod expectations;
pub mod folders;
pub mod keys;
pub mod manage;
pub mod password;
pub mod permissions;
pub mod pgp;
mod postgres;
mod sql;
mod sqlite;
pub mod tokens;

use std::net::IpAddr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ipnet::IpNet;

pub use folders::Folder;
pub use keys::AccountKey;
pub use password::{Hasher, PasswordHash};
pub use permissions::{Permission, Permissions};
pub use postgres::PgAccountStore;
pub use sqlite::SqliteAccountStore;

use crate::storage::Home;

/// A partner account as the gateway and the CLI see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub username: String,
    pub password_hash: Option<PasswordHash>,
    pub enabled: bool,
    pub home: Home,
    pub permissions: Permissions,
    /// Empty means any address may log in.
    pub allowed_cidrs: Vec<IpNet>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// Partner folders: when any, the partner sees only these (each on its own storage, with
    /// its own permissions) and `home`/`permissions` do not apply.
    pub folders: Vec<Folder>,
    /// The partner's PGP signing keys; where an account without folders decrypts to.
    pub pgp: pgp::AccountPgp,
    /// For an account without folders: the rules of its home (what a folder's rules are for
    /// a folder; today `--duplicates` and `--duplicate-window`).
    pub rules: folders::Rules,
}

impl Account {
    pub fn new(username: String, home: Home) -> Self {
        let now = now();
        Account {
            username,
            password_hash: None,
            enabled: true,
            home,
            permissions: Permissions::default(),
            allowed_cidrs: Vec::new(),
            created_at: now,
            updated_at: now,
            last_login_at: None,
            folders: Vec::new(),
            pgp: Default::default(),
            rules: Default::default(),
        }
    }

    /// Whether a client at `ip` may log in to this account.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.allowed_cidrs.is_empty() || self.allowed_cidrs.iter().any(|n| n.contains(&ip))
    }
}

/// The current time at the microsecond precision both databases keep, so what is written
/// compares equal to what is read back.
pub fn now() -> DateTime<Utc> {
    use chrono::{DurationRound, TimeDelta};
    let t = Utc::now();
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid username {0:?}: use 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit")]
pub struct InvalidUsername(pub String);

pub fn validate_username(name: &str) -> Result<(), InvalidUsername> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
        });
    if ok {
        Ok(())
    } else {
        Err(InvalidUsername(name.into()))
    }
}

// Parsed where settings are read too (`security.proxy_trusted`), so they live below both.
pub use crate::config::{parse_cidr, InvalidCidr};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("user {0:?} already exists")]
    DuplicateUser(String),
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("user {username:?} already has key {fingerprint}")]
    DuplicateKey {
        username: String,
        fingerprint: String,
    },
    #[error("user {username:?} has no key {fingerprint}")]
    UnknownKey {
        username: String,
        fingerprint: String,
    },
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("stored account {username:?} is corrupt: {reason}")]
    Corrupt { username: String, reason: String },
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

/// Where accounts live. One contract (tests/it/accounts.rs) runs against every implementation.
/// Every write has an `_audited` form that appends an audit record (`audit.rs`) in the
/// transaction of the change; the plain forms write without one.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates the account and its keys together; nothing is written if any part fails.
    async fn create(&self, account: &Account, keys: &[AccountKey]) -> Result<(), StoreError> {
        self.create_audited(account, keys, None).await
    }
    async fn create_audited(
        &self,
        account: &Account,
        keys: &[AccountKey],
        audit: Option<&audit::Entry>,
    ) -> Result<(), StoreError>;
    async fn get(&self, username: &str) -> Result<Option<Account>, StoreError>;
    async fn list(&self) -> Result<Vec<Account>, StoreError>;
    /// At most `limit` accounts whose usernames sort after `after`, by username.
    async fn list_page(&self, after: Option<&str>, limit: i64) -> Result<Vec<Account>, StoreError>;
    /// Writes every mutable field of `account` (found by username) and bumps `updated_at`.
    async fn update(&self, account: &Account) -> Result<(), StoreError> {
        self.update_audited(account, None).await
    }
    async fn update_audited(
        &self,
        account: &Account,
        audit: Option<&audit::Entry>,
    ) -> Result<(), StoreError>;
    async fn delete(&self, username: &str) -> Result<(), StoreError> {
        self.delete_audited(username, None).await
    }
    async fn delete_audited(
        &self,
        username: &str,
        audit: Option<&audit::Entry>,
    ) -> Result<(), StoreError>;
    /// Adds all keys or none.
    async fn add_keys(&self, username: &str, keys: &[AccountKey]) -> Result<(), StoreError> {
        self.add_keys_audited(username, keys, None).await
    }
    async fn add_keys_audited(
        &self,
        username: &str,
        keys: &[AccountKey],
        audit: Option<&audit::Entry>,
    ) -> Result<(), StoreError>;
    async fn list_keys(&self, username: &str) -> Result<Vec<AccountKey>, StoreError>;
    async fn remove_key(&self, username: &str, fingerprint: &str) -> Result<(), StoreError> {
        self.remove_key_audited(username, fingerprint, None).await
    }
    async fn remove_key_audited(
        &self,
        username: &str,
        fingerprint: &str,
        audit: Option<&audit::Entry>,
    ) -> Result<(), StoreError>;
    async fn find_key(
        &self,
        username: &str,
        fingerprint: &str,
    ) -> Result<Option<AccountKey>, StoreError>;
    async fn record_login(&self, username: &str, at: DateTime<Utc>) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["acme", "a", "acme-pay.eu_1", "9lives", &"a".repeat(64)] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-acme",
            ".acme",
            "_a",
            "Acme",
            "ac me",
            "a/b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_and_ip_checks() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_cidr("203.0.113.7").unwrap().to_string(),
            "203.0.113.7/32"
        );
        assert_eq!(
            parse_cidr("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
        let mut a = Account::new(
            "a".into(),
            Home::Local {
                dir: "/tmp/a".into(),
            },
        );
        assert!(a.allows_ip("192.0.2.1".parse().unwrap()));
        a.allowed_cidrs = vec![parse_cidr("192.0.2.0/24").unwrap()];
        assert!(a.allows_ip("192.0.2.1".parse().unwrap()));
        assert!(a.allows_ip("::ffff:192.0.2.9".parse().unwrap()));
        assert!(!a.allows_ip("198.51.100.1".parse().unwrap()));
    }
}
