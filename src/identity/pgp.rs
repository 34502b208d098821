//! An account's PGP settings: the partner's signing keys (public, armored, with the
//! fingerprint they are known by) and, for an account without folders, where its encrypted
//! arrivals are decrypted to. Stored as one JSON column; parsing and checking keys is
//! `crate::pgp`'s.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One partner signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerKey {
    /// The primary key's fingerprint, upper-case hex (as `gpg --fingerprint` prints it,
    /// without spaces).
    pub fingerprint: String,
    /// The key's user IDs, for people to recognise it.
    #[serde(default)]
    pub user_ids: Vec<String>,
    /// The transferable public key, ASCII-armored.
    pub armored: String,
    pub added_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountPgp {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<PartnerKey>,
    /// For an account without folders: the client path its encrypted arrivals are
    /// decrypted into (a folder's own setting is in its rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decrypt_to: Option<String>,
    /// With `decrypt_to`: only files signed by one of `keys` are decrypted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_signature: bool,
}

impl AccountPgp {
    /// The `pgp` column.
    pub fn to_column(&self) -> String {
        serde_json::to_string(self).expect("pgp settings serialise")
    }

    pub fn from_column(s: &str) -> Result<AccountPgp, String> {
        if s.trim().is_empty() {
            return Ok(AccountPgp::default());
        }
        serde_json::from_str(s).map_err(|e| format!("stored PGP settings are unreadable: {e}"))
    }

    /// Normalises a fingerprint as an admin may type it (spaces, lower case, `0x`).
    pub fn normalise_fingerprint(s: &str) -> String {
        let s = s.trim();
        let s = s.strip_prefix("0x").unwrap_or(s);
        s.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase()
    }
}
