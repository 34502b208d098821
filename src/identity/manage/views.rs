//! What accounts, keys, folders and PGP keys look like outside: the JSON of the CLI's
//! `--json` and of the admin API are these, one shape for both (never a password hash).

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::identity::keys::AccountKey;
use crate::identity::pgp::PartnerKey;
use crate::identity::{Account, Folder};

/// A partner account.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccountView {
    pub username: String,
    pub enabled: bool,
    /// Its home: `s3://bucket/prefix/` or `file:///dir/` (not shown to a partner with folders).
    pub home: String,
    pub permissions: Vec<String>,
    /// CIDRs it may log in from; empty: anywhere.
    pub allowed_ips: Vec<String>,
    pub has_password: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub folders: Vec<FolderView>,
    /// Fingerprints of the partner's PGP signing keys.
    pub pgp_keys: Vec<String>,
    /// For an account without folders: where its encrypted arrivals are decrypted to.
    pub decrypt_to: Option<String>,
    pub require_signature: bool,
    /// For an account without folders: `allow`, `flag` or `refuse`.
    pub duplicates: String,
    pub duplicate_window_s: u64,
    /// For an account without folders: whether its uploads are scanned (null: as
    /// `scan.by_default` says).
    pub scan: Option<bool>,
    /// Its SSH keys (when one account is shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<KeyView>>,
}

impl AccountView {
    pub fn new(a: &Account, keys: Option<&[AccountKey]>) -> AccountView {
        AccountView {
            username: a.username.clone(),
            enabled: a.enabled,
            home: a.home.to_uri(),
            permissions: a.permissions.iter().map(|p| p.name().to_string()).collect(),
            allowed_ips: a.allowed_cidrs.iter().map(ToString::to_string).collect(),
            has_password: a.password_hash.is_some(),
            created_at: a.created_at,
            updated_at: a.updated_at,
            last_login_at: a.last_login_at,
            folders: a.folders.iter().map(FolderView::new).collect(),
            pgp_keys: a.pgp.keys.iter().map(|k| k.fingerprint.clone()).collect(),
            decrypt_to: a.pgp.decrypt_to.clone(),
            require_signature: a.pgp.require_signature,
            duplicates: a.rules.duplicates.name().into(),
            duplicate_window_s: a.rules.duplicate_window().as_secs(),
            scan: a.rules.scan,
            keys: keys.map(|k| k.iter().map(KeyView::new).collect()),
        }
    }
}

/// One of an account's folders.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FolderView {
    /// The client path (`/inbound`).
    pub path: String,
    pub location: String,
    pub permissions: Vec<String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub max_size: Option<u64>,
    pub no_reuse_names: bool,
    pub receipt: Option<String>,
    pub decrypt_to: Option<String>,
    pub require_signature: bool,
    pub duplicates: String,
    pub scan: Option<bool>,
    pub duplicate_window_s: u64,
}

impl FolderView {
    pub fn new(f: &Folder) -> FolderView {
        FolderView {
            path: f.path.to_string(),
            location: f.home.to_uri(),
            permissions: f.permissions.iter().map(|p| p.name().to_string()).collect(),
            allow: f.rules.allow.clone(),
            deny: f.rules.deny.clone(),
            max_size: f.rules.max_size,
            no_reuse_names: f.rules.no_reuse_names,
            receipt: f.rules.receipt.clone(),
            decrypt_to: f.rules.decrypt_to.clone(),
            require_signature: f.rules.require_signature,
            duplicates: f.rules.duplicates.name().into(),
            scan: f.rules.scan,
            duplicate_window_s: f.rules.duplicate_window().as_secs(),
        }
    }
}

/// An SSH public key of an account.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    /// `SHA256:…`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    pub algorithm: String,
    pub comment: String,
    pub created_at: Option<DateTime<Utc>>,
}

impl KeyView {
    pub fn new(k: &AccountKey) -> KeyView {
        KeyView {
            fingerprint: k.fingerprint.clone(),
            algorithm: k.algorithm.clone(),
            comment: k.comment.clone(),
            created_at: k.created_at,
        }
    }
}

/// A partner's PGP signing key.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PgpKeyView {
    /// Upper-case hex, as `gpg --fingerprint` prints it without spaces.
    pub fingerprint: String,
    pub user_ids: Vec<String>,
    pub added_at: DateTime<Utc>,
}

impl PgpKeyView {
    pub fn new(k: &PartnerKey) -> PgpKeyView {
        PgpKeyView {
            fingerprint: k.fingerprint.clone(),
            user_ids: k.user_ids.clone(),
            added_at: k.added_at,
        }
    }
}
