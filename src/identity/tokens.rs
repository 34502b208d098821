//! Bearer tokens of the admin API (`wharf admin token …`): `wharf_<id>_<secret>`, 32 random
//! bytes behind a non-secret id. Only the SHA-256 of the whole token is stored (a token is
//! high-entropy, so no slow hash is needed); a presented token is looked up by its id and
//! compared in constant time, and a malformed, unknown, wrong, expired or revoked one costs
//! the same work as a right one.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::audit::{self, Actor, AppendAudit as _, Entry};
use super::expectations::from_us;
use crate::db::{on_pool, Db};

const PREFIX: &str = "wharf_";
/// Hex characters of the id.
const ID_LEN: usize = 16;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every GET.
    Read,
    /// Everything.
    Write,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Scope, TokenError> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            other => Err(TokenError::BadScope(other.into())),
        }
    }
}

/// A token as listed (never its secret or hash).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    /// The non-secret part that names it in the token itself (`wharf_<id>_…`).
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token name {0:?}: use 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit")]
    BadName(String),
    #[error("invalid --scope {0:?}: use read or write")]
    BadScope(String),
    #[error("a token named {0} already exists")]
    Exists(String),
    #[error("no token named {0}")]
    Unknown(String),
    #[error("admin tokens: {0}")]
    Database(#[from] sqlx::Error),
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Creates a token; its secret is returned once and never stored.
pub async fn add(
    db: &Db,
    name: &str,
    scope: Scope,
    expires: Option<Duration>,
    actor: &Actor,
) -> Result<(TokenInfo, SecretString), TokenError> {
    if super::validate_username(name).is_err() {
        return Err(TokenError::BadName(name.into()));
    }
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let mut id = [0u8; ID_LEN / 2];
    rand::thread_rng().fill_bytes(&mut id);
    let id = hex::encode(id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let token = format!("{PREFIX}{id}_{secret}");
    let expires_us = expires.map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    let begin = audit::begin(db);
    let (created, expires_at): (i64, Option<i64>) = on_pool!(db, p => {
        let mut tx = p.begin_with(begin).await?;
        let row: Option<(i64, Option<i64>)> = sqlx::query_as(
            "INSERT INTO admin_tokens (id, name, scope, hash, created_us, expires_us) \
             VALUES ($1, $2, $3, $4, (SELECT now_us FROM wharf_clock), \
             (SELECT now_us FROM wharf_clock) + $5) ON CONFLICT DO NOTHING RETURNING created_us, expires_us")
            .bind(&id)
            .bind(name)
            .bind(scope.name())
            .bind(sha256_hex(&token))
            .bind(expires_us)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Err(TokenError::Exists(name.into()));
        };
        tx.append_audit(&Entry::new(
            actor,
            "token.add",
            format!("token:{name}"),
            serde_json::json!({
                "id": id,
                "scope": scope.name(),
                "expires_at": row.1.map(from_us),
            }),
        ))
        .await?;
        tx.commit().await?;
        row
    });
    Ok((
        TokenInfo {
            id,
            name: name.into(),
            scope,
            created_at: from_us(created),
            expires_at: expires_at.map(from_us),
            last_used_at: None,
        },
        SecretString::from(token),
    ))
}

type Row = (String, String, String, i64, Option<i64>, Option<i64>);
/// A token's row with its hash and the database's time now.
type AuthRow = (
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    String,
    i64,
);

fn info(r: Row) -> TokenInfo {
    TokenInfo {
        id: r.0,
        name: r.1,
        scope: if r.2 == "write" {
            Scope::Write
        } else {
            Scope::Read
        },
        created_at: from_us(r.3),
        expires_at: r.4.map(from_us),
        last_used_at: r.5.map(from_us),
    }
}

/// Every token, by name.
pub async fn list(db: &Db) -> Result<Vec<TokenInfo>, TokenError> {
    let rows: Vec<Row> = on_pool!(db, p => sqlx::query_as(
        "SELECT id, name, scope, created_us, expires_us, last_used_us FROM admin_tokens ORDER BY name")
        .fetch_all(p)
        .await?);
    Ok(rows.into_iter().map(info).collect())
}

/// Revokes a token: requests carrying it are refused from then on.
pub async fn remove(db: &Db, name: &str, actor: &Actor) -> Result<(), TokenError> {
    let begin = audit::begin(db);
    on_pool!(db, p => {
        let mut tx = p.begin_with(begin).await?;
        let id: Option<String> = sqlx::query_scalar("DELETE FROM admin_tokens WHERE name = $1 RETURNING id")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(id) = id else {
            return Err(TokenError::Unknown(name.into()));
        };
        tx.append_audit(&Entry::new(actor, "token.remove", format!("token:{name}"), serde_json::json!({ "id": id })))
            .await?;
        tx.commit().await?;
    });
    Ok(())
}

/// Why a presented token was refused (said only in logs: every refusal looks the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    Unknown,
    Wrong,
    Expired,
}

/// Splits `wharf_<id>_<secret>` into its id, or a stand-in id that matches no token.
fn token_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(PREFIX)?;
    let id = rest.get(..ID_LEN)?;
    let secret = rest.get(ID_LEN..)?.strip_prefix('_')?;
    let ok = id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && (40..=64).contains(&secret.len());
    ok.then_some(id)
}

/// Checks a presented token: the same query, hash and comparison whatever is wrong with it.
pub async fn authenticate(db: &Db, presented: &SecretString) -> Result<TokenInfo, Refused> {
    let presented = presented.expose_secret();
    let id = token_id(presented);
    let lookup = id.unwrap_or("-");
    let row: Option<AuthRow> = on_pool!(db, p => sqlx::query_as(
            "SELECT id, name, scope, created_us, expires_us, last_used_us, hash, (SELECT now_us FROM wharf_clock) \
             FROM admin_tokens WHERE id = $1")
            .bind(lookup)
            .fetch_optional(p)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot read admin tokens");
                Refused::Unknown
            })?);
    let want = row
        .as_ref()
        .and_then(|r| hex::decode(&r.6).ok())
        .unwrap_or_else(|| vec![0u8; 32]);
    let got = Sha256::digest(presented.as_bytes());
    let equal: bool = got.as_slice().ct_eq(want.as_slice()).into();
    match (id, row) {
        (None, _) => Err(Refused::Malformed),
        (_, None) => Err(Refused::Unknown),
        _ if !equal => Err(Refused::Wrong),
        (_, Some(r)) if r.4.is_some_and(|e| e <= r.7) => Err(Refused::Expired),
        (_, Some(r)) => Ok(info((r.0, r.1, r.2, r.3, r.4, r.5))),
    }
}

/// Records that a token was used (callers keep this to about once a minute per token).
pub async fn touch(db: &Db, id: &str) -> Result<(), sqlx::Error> {
    on_pool!(db, p => sqlx::query(
        "UPDATE admin_tokens SET last_used_us = (SELECT now_us FROM wharf_clock) WHERE id = $1")
        .bind(id)
        .execute(p)
        .await
        .map(drop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids() {
        let secret = "A".repeat(43);
        assert_eq!(
            token_id(&format!("wharf_0123456789abcdef_{secret}")),
            Some("0123456789abcdef")
        );
        for bad in [
            String::new(),
            "wharf_".into(),
            format!("wharf_0123456789ABCDEF_{secret}"),
            format!("wharf_0123456789abcde_{secret}"),
            format!("wharf_0123456789abcdef{secret}"),
            "wharf_0123456789abcdef_short".into(),
            format!("other_0123456789abcdef_{secret}"),
        ] {
            assert_eq!(token_id(&bad), None, "{bad}");
        }
    }
}
