//! Administration below both front-ends: the functions `wharf user|ban|expect|events|admin|
//! audit …` and the admin API call. Each takes a typed request (and, for a change, the actor
//! making it), validates it, makes the change with its audit record in one transaction and
//! returns a typed result — or a `ManageError` whose kind is stable (the API's problem `type`)
//! and whose message is the one the CLI prints.

mod accounts;
mod ops;
pub mod views;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

pub use accounts::{AccountChanges, Created, FolderSpec, KeyInput, NewAccount, PasswordChoice};
pub use ops::{parse_time, EventsPage, ReplayRequest};

use super::{AccountStore, Hasher};
use crate::config::{Config, DatabaseConfig, SecurityConfig};
use crate::db::Db;

/// What went wrong, as a stable name (the admin API's problem `type`) and an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidUsername,
    InvalidAddress,
    InvalidPermissions,
    InvalidHome,
    InvalidSshKey,
    InvalidPassword,
    InvalidFolder,
    InvalidPattern,
    InvalidReceipt,
    InvalidDuplicates,
    InvalidDecryptTarget,
    InvalidPgpKey,
    InvalidExpectation,
    InvalidTime,
    InvalidDuration,
    InvalidSize,
    InvalidTokenName,
    InvalidRequest,
    NothingToChange,
    HasFolders,
    UnknownSink,
    UnknownUser,
    UnknownKey,
    UnknownFolder,
    UnknownPgpKey,
    UnknownExpectation,
    UnknownEvent,
    UnknownToken,
    NotBanned,
    UserExists,
    KeyExists,
    FolderExists,
    FolderOverlaps,
    PgpKeyExists,
    ExpectationExists,
    TokenExists,
    DatabaseUnavailable,
    Internal,
}

impl ErrorKind {
    /// Every kind, for the API's documentation.
    pub const ALL: [ErrorKind; 38] = [
        ErrorKind::InvalidUsername,
        ErrorKind::InvalidAddress,
        ErrorKind::InvalidPermissions,
        ErrorKind::InvalidHome,
        ErrorKind::InvalidSshKey,
        ErrorKind::InvalidPassword,
        ErrorKind::InvalidFolder,
        ErrorKind::InvalidPattern,
        ErrorKind::InvalidReceipt,
        ErrorKind::InvalidDuplicates,
        ErrorKind::InvalidDecryptTarget,
        ErrorKind::InvalidPgpKey,
        ErrorKind::InvalidExpectation,
        ErrorKind::InvalidTime,
        ErrorKind::InvalidDuration,
        ErrorKind::InvalidSize,
        ErrorKind::InvalidTokenName,
        ErrorKind::InvalidRequest,
        ErrorKind::NothingToChange,
        ErrorKind::HasFolders,
        ErrorKind::UnknownSink,
        ErrorKind::UnknownUser,
        ErrorKind::UnknownKey,
        ErrorKind::UnknownFolder,
        ErrorKind::UnknownPgpKey,
        ErrorKind::UnknownExpectation,
        ErrorKind::UnknownEvent,
        ErrorKind::UnknownToken,
        ErrorKind::NotBanned,
        ErrorKind::UserExists,
        ErrorKind::KeyExists,
        ErrorKind::FolderExists,
        ErrorKind::FolderOverlaps,
        ErrorKind::PgpKeyExists,
        ErrorKind::ExpectationExists,
        ErrorKind::TokenExists,
        ErrorKind::DatabaseUnavailable,
        ErrorKind::Internal,
    ];

    /// The stable name: `unknown-user`, `invalid-ssh-key`, …
    pub fn slug(self) -> &'static str {
        use ErrorKind::*;
        match self {
            InvalidUsername => "invalid-username",
            InvalidAddress => "invalid-address",
            InvalidPermissions => "invalid-permissions",
            InvalidHome => "invalid-home",
            InvalidSshKey => "invalid-ssh-key",
            InvalidPassword => "invalid-password",
            InvalidFolder => "invalid-folder",
            InvalidPattern => "invalid-pattern",
            InvalidReceipt => "invalid-receipt",
            InvalidDuplicates => "invalid-duplicates",
            InvalidDecryptTarget => "invalid-decrypt-target",
            InvalidPgpKey => "invalid-pgp-key",
            InvalidExpectation => "invalid-expectation",
            InvalidTime => "invalid-time",
            InvalidDuration => "invalid-duration",
            InvalidSize => "invalid-size",
            InvalidTokenName => "invalid-token-name",
            InvalidRequest => "invalid-request",
            NothingToChange => "nothing-to-change",
            HasFolders => "has-folders",
            UnknownSink => "unknown-sink",
            UnknownUser => "unknown-user",
            UnknownKey => "unknown-key",
            UnknownFolder => "unknown-folder",
            UnknownPgpKey => "unknown-pgp-key",
            UnknownExpectation => "unknown-expectation",
            UnknownEvent => "unknown-event",
            UnknownToken => "unknown-token",
            NotBanned => "not-banned",
            UserExists => "user-exists",
            KeyExists => "key-exists",
            FolderExists => "folder-exists",
            FolderOverlaps => "folder-overlaps",
            PgpKeyExists => "pgp-key-exists",
            ExpectationExists => "expectation-exists",
            TokenExists => "token-exists",
            DatabaseUnavailable => "database-unavailable",
            Internal => "internal",
        }
    }

    /// The HTTP status the admin API answers with.
    pub fn status(self) -> u16 {
        use ErrorKind::*;
        match self {
            InvalidRequest => 400,
            UnknownUser | UnknownKey | UnknownFolder | UnknownPgpKey | UnknownExpectation
            | UnknownEvent | UnknownToken | NotBanned => 404,
            UserExists | KeyExists | FolderExists | FolderOverlaps | PgpKeyExists
            | ExpectationExists | TokenExists | HasFolders => 409,
            DatabaseUnavailable => 503,
            Internal => 500,
            _ => 422,
        }
    }
}

/// A refused or failed administrative operation: `message` is what the CLI prints after
/// `error: ` (one line) and the API's problem `detail`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ManageError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ManageError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ManageError {
        ManageError {
            kind,
            message: message.into(),
        }
    }

    /// `e` and its causes on one line (`a: b: c`, a cause already quoted left out), as the
    /// CLI has always printed errors.
    pub fn from_error(kind: ErrorKind, e: &(dyn std::error::Error + 'static)) -> ManageError {
        ManageError::new(kind, one_line(None, e))
    }
}

/// `context: e: cause: …` on one line, without repeating a cause already quoted.
pub fn one_line(context: Option<&str>, e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = context.unwrap_or_default().to_string();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&s);
        }
        cause = c.source();
    }
    out.replace('\n', " ")
}

fn sqlx_kind(e: &sqlx::Error) -> ErrorKind {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            ErrorKind::DatabaseUnavailable
        }
        _ => ErrorKind::Internal,
    }
}

impl From<sqlx::Error> for ManageError {
    fn from(e: sqlx::Error) -> Self {
        ManageError::from_error(sqlx_kind(&e), &e)
    }
}

impl From<super::StoreError> for ManageError {
    fn from(e: super::StoreError) -> Self {
        use super::StoreError as S;
        let kind = match &e {
            S::DuplicateUser(_) => ErrorKind::UserExists,
            S::UnknownUser(_) => ErrorKind::UnknownUser,
            S::DuplicateKey { .. } => ErrorKind::KeyExists,
            S::UnknownKey { .. } => ErrorKind::UnknownKey,
            S::Unavailable(_) => ErrorKind::DatabaseUnavailable,
            S::Corrupt { .. } => ErrorKind::Internal,
            S::Database(d) => sqlx_kind(d),
        };
        ManageError::from_error(kind, &e)
    }
}

impl From<super::folders::FolderError> for ManageError {
    fn from(e: super::folders::FolderError) -> Self {
        use super::folders::FolderError as F;
        let kind = match &e {
            F::BadPath(_) => ErrorKind::InvalidFolder,
            F::Overlaps(..) => ErrorKind::FolderOverlaps,
            F::Exists(_) => ErrorKind::FolderExists,
            F::Unknown(_) => ErrorKind::UnknownFolder,
            F::Corrupt(_) => ErrorKind::Internal,
            F::BadPattern(..) => ErrorKind::InvalidPattern,
            F::BadReceipt(_) => ErrorKind::InvalidReceipt,
            F::BadDuplicates(_) => ErrorKind::InvalidDuplicates,
            F::DecryptTargetMissing(_) | F::DecryptTargetWritable(..) => {
                ErrorKind::InvalidDecryptTarget
            }
        };
        ManageError::from_error(kind, &e)
    }
}

impl From<super::expectations::ExpectError> for ManageError {
    fn from(e: super::expectations::ExpectError) -> Self {
        use super::expectations::ExpectError as X;
        let kind = match &e {
            X::Exists(_) => ErrorKind::ExpectationExists,
            X::Unknown(_) => ErrorKind::UnknownExpectation,
            X::UnknownUser(_) => ErrorKind::UnknownUser,
            X::Database(d) => sqlx_kind(d),
            _ => ErrorKind::InvalidExpectation,
        };
        ManageError::from_error(kind, &e)
    }
}

impl From<super::tokens::TokenError> for ManageError {
    fn from(e: super::tokens::TokenError) -> Self {
        use super::tokens::TokenError as T;
        let kind = match &e {
            T::BadName(_) => ErrorKind::InvalidTokenName,
            T::BadScope(_) => ErrorKind::InvalidRequest,
            T::Exists(_) => ErrorKind::TokenExists,
            T::Unknown(_) => ErrorKind::UnknownToken,
            T::Database(d) => sqlx_kind(d),
        };
        ManageError::from_error(kind, &e)
    }
}

impl From<crate::db::DbError> for ManageError {
    fn from(e: crate::db::DbError) -> Self {
        ManageError::from_error(ErrorKind::DatabaseUnavailable, &e)
    }
}

/// The database a manager works on: open already (the server), or opened on first use (the
/// CLI, so that a refused input never needs the database).
enum DbSource {
    Open(Db),
    Lazy(Box<DatabaseConfig>, OnceCell<Db>),
}

/// The administrative operations, on one database with one configuration.
pub struct Manager {
    db: DbSource,
    store: OnceCell<Arc<dyn AccountStore>>,
    default_home: String,
    /// The directory relative homes were resolved against (the process's, at start).
    cwd: Option<PathBuf>,
    security: SecurityConfig,
    hasher: OnceCell<Hasher>,
    sinks: Vec<String>,
    retention: Duration,
}

impl Manager {
    /// For the CLI: the database is opened (and migrated) when an operation first needs it.
    pub fn new(config: &Config) -> Manager {
        Manager::build(
            config,
            DbSource::Lazy(Box::new(config.database.clone()), OnceCell::new()),
        )
    }

    /// For the server: on its open database, with its password hasher.
    pub fn with_db(config: &Config, db: Db, hasher: Hasher) -> Manager {
        let m = Manager::build(config, DbSource::Open(db));
        let _ = m.hasher.set(hasher);
        m
    }

    fn build(config: &Config, db: DbSource) -> Manager {
        Manager {
            db,
            store: OnceCell::new(),
            default_home: config.storage.default_home.clone(),
            cwd: std::env::current_dir().ok(),
            security: config.security.clone(),
            hasher: OnceCell::new(),
            sinks: crate::events::sinks::configured(config.events.sinks.as_deref())
                .iter()
                .map(crate::events::sinks::sink_name)
                .collect(),
            retention: config.audit.retention.0,
        }
    }

    /// The database, opened and migrated on first use.
    pub async fn db(&self) -> Result<&Db, ManageError> {
        match &self.db {
            DbSource::Open(db) => Ok(db),
            DbSource::Lazy(cfg, cell) => Ok(cell.get_or_try_init(|| Db::open(cfg)).await?),
        }
    }

    async fn store(&self) -> Result<&Arc<dyn AccountStore>, ManageError> {
        let db = self.db().await?;
        Ok(self
            .store
            .get_or_init(|| async { db.account_store() })
            .await)
    }

    fn cwd(&self) -> Result<&PathBuf, ManageError> {
        self.cwd.as_ref().ok_or_else(|| {
            ManageError::new(
                ErrorKind::Internal,
                "current directory: the working directory is not readable",
            )
        })
    }

    async fn hasher(&self) -> Result<&Hasher, ManageError> {
        self.hasher
            .get_or_try_init(|| async {
                let security = self.security.clone();
                tokio::task::spawn_blocking(move || Hasher::from_config(&security))
                    .await
                    .map_err(|e| ManageError::new(ErrorKind::Internal, e.to_string()))?
                    .map_err(|e| ManageError::from_error(ErrorKind::Internal, &e))
            })
            .await
    }

    /// The configured event sinks' names.
    pub fn sinks(&self) -> &[String] {
        &self.sinks
    }

    /// Closes the database if this manager opened it.
    pub async fn close(&self) {
        if let DbSource::Lazy(_, cell) = &self.db {
            if let Some(db) = cell.get() {
                db.close().await;
            }
        }
    }
}
