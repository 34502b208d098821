//! Login decisions for every protocol: password and public-key checks against the account
//! store, with the same work (an argon2 verification) whatever the reason for a refusal.

use std::net::IpAddr;
use std::sync::Arc;

use russh::keys::PublicKey;
use secrecy::SecretString;

use super::bans::Bans;
use super::{keys, validate_username, Account, AccountStore, Hasher};

/// Why a login was refused. Logged for admins; never told to the client, which sees one
/// uniform refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownUser,
    BadPassword,
    NoPassword,
    UnknownKey,
    Disabled,
    AddressNotAllowed,
    /// The address is banned for repeated failures: refused before any hashing.
    Banned,
    /// The account store could not be asked.
    Unavailable,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::UnknownUser => "unknown_user",
            Refusal::BadPassword => "bad_password",
            Refusal::NoPassword => "no_password",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Disabled => "disabled",
            Refusal::AddressNotAllowed => "address_not_allowed",
            Refusal::Banned => "banned",
            Refusal::Unavailable => "store_unavailable",
        }
    }
}

#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn AccountStore>,
    hasher: Hasher,
    bans: Option<Arc<Bans>>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn AccountStore>, hasher: Hasher) -> Self {
        Authenticator {
            store,
            hasher,
            bans: None,
        }
    }

    /// Checks and records bans on every login (every protocol shares this authenticator).
    pub fn with_bans(mut self, bans: Arc<Bans>) -> Self {
        self.bans = Some(bans);
        self
    }

    async fn banned(&self, ip: IpAddr) -> bool {
        match &self.bans {
            Some(b) => b.is_banned(ip).await,
            None => false,
        }
    }

    async fn account(&self, username: &str) -> Result<Option<Account>, Refusal> {
        if validate_username(username).is_err() {
            return Ok(None);
        }
        self.store.get(username).await.map_err(|e| {
            tracing::error!(error = %e, "account store unavailable during login");
            Refusal::Unavailable
        })
    }

    fn admit(&self, account: &Account, ip: IpAddr) -> Result<(), Refusal> {
        if !account.enabled {
            return Err(Refusal::Disabled);
        }
        if !account.allows_ip(ip) {
            return Err(Refusal::AddressNotAllowed);
        }
        Ok(())
    }

    /// Checks a password. Every path runs one argon2 verification (against a dummy hash when
    /// there is no account or no password) so timing does not tell them apart.
    pub async fn password(
        &self,
        username: &str,
        password: &SecretString,
        ip: IpAddr,
    ) -> Result<Account, Refusal> {
        if self.banned(ip).await {
            return Err(Refusal::Banned);
        }
        if let Some(b) = &self.bans {
            let hold = b.user_delay(username);
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
        }
        let res = self.check_password(username, password, ip).await;
        if let (Err(why), Some(b)) = (&res, &self.bans) {
            if *why != Refusal::Unavailable {
                b.failed(ip, username).await;
            }
        }
        res
    }

    async fn check_password(
        &self,
        username: &str,
        password: &SecretString,
        ip: IpAddr,
    ) -> Result<Account, Refusal> {
        let account = match self.account(username).await {
            Ok(a) => a,
            Err(r) => {
                self.hasher.verify(None, password).await;
                return Err(r);
            }
        };
        let hash = account.as_ref().and_then(|a| a.password_hash.as_ref());
        let ok = self.hasher.verify(hash, password).await;
        let account = account.ok_or(Refusal::UnknownUser)?;
        if account.password_hash.is_none() {
            return Err(Refusal::NoPassword);
        }
        if !ok {
            return Err(Refusal::BadPassword);
        }
        self.admit(&account, ip)?;
        Ok(account)
    }

    /// Checks that `key` belongs to the account (a probe, or after the signature was verified).
    pub async fn public_key(
        &self,
        username: &str,
        key: &PublicKey,
        ip: IpAddr,
    ) -> Result<Account, Refusal> {
        if self.banned(ip).await {
            return Err(Refusal::Banned);
        }
        let account = self.account(username).await?.ok_or(Refusal::UnknownUser)?;
        let fp = keys::fingerprint(key);
        let stored = self
            .store
            .find_key(username, &fp)
            .await
            .map_err(|_| Refusal::Unavailable)?
            .ok_or(Refusal::UnknownKey)?;
        // The fingerprint matched; make sure the stored key really is this key.
        if stored.public_key != keys::account_key(key).public_key {
            return Err(Refusal::UnknownKey);
        }
        self.admit(&account, ip)?;
        Ok(account)
    }

    /// The signed login that follows an accepted offer of the same key moments later
    /// (`public_key` found `account` and the key then): the bans and the account's own rules
    /// are checked again; the account and its key are not looked up again.
    pub async fn offered_key_signed(
        &self,
        account: Account,
        ip: IpAddr,
    ) -> Result<Account, Refusal> {
        if self.banned(ip).await {
            return Err(Refusal::Banned);
        }
        self.admit(&account, ip)?;
        Ok(account)
    }

    /// Records a successful login in `last_login_at`, to the minute: a login within a minute
    /// of the recorded one writes nothing (one database write per login would be most of
    /// what a one-file-per-connection partner costs the database).
    pub async fn record_login(&self, username: &str, last: Option<chrono::DateTime<chrono::Utc>>) {
        let now = super::now();
        if last.is_some_and(|t| now.signed_duration_since(t) < chrono::Duration::seconds(60)) {
            return;
        }
        if let Err(e) = self.store.record_login(username, now).await {
            tracing::warn!(error = %e, "could not record last login");
        }
    }
}
