//! Accounts, their passwords, SSH keys, folders and PGP keys: validated as `wharf user …`
//! always has (same order, same messages), written with their audit records.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Value};

use super::views::{AccountView, FolderView};
use super::{ErrorKind, ManageError, Manager};
use crate::identity::audit::{Actor, Entry};
use crate::identity::keys::{parse_authorized_keys, AccountKey};
use crate::identity::password::{generate_password, PasswordError};
use crate::identity::pgp::{AccountPgp, PartnerKey};
use crate::identity::{
    folders, parse_cidr, validate_username, Account, Folder, PasswordHash, Permissions,
};
use crate::storage::Home;

/// Public key lines and where they came from (a file name, "standard input", "request"),
/// or why they could not be read.
#[derive(Debug, Clone)]
pub struct KeyInput {
    pub label: String,
    pub text: Result<String, String>,
}

impl KeyInput {
    pub fn new(label: impl Into<String>, text: impl Into<String>) -> KeyInput {
        KeyInput {
            label: label.into(),
            text: Ok(text.into()),
        }
    }
}

/// The password an operation sets.
#[derive(Default)]
pub enum PasswordChoice {
    #[default]
    None,
    /// Given by the admin (stored hashed).
    Given(SecretString),
    /// Generated (24 characters from the OS CSPRNG) and returned once.
    Generate,
    /// The admin's input could not be read: why.
    Unreadable(String),
}

/// A new account, as `wharf user add` and `POST /v1/accounts` give it.
#[derive(Default)]
pub struct NewAccount {
    pub username: String,
    /// `s3://…`, `file:///…` or a path relative to `storage.default_home`.
    pub home: Option<String>,
    pub password: PasswordChoice,
    pub keys: Vec<KeyInput>,
    pub allow_ip: Vec<String>,
    /// A comma list of permissions.
    pub permissions: Option<String>,
    pub disabled: bool,
}

/// What creating an account made.
pub struct Created {
    pub account: Account,
    pub keys: Vec<AccountKey>,
    /// The generated password, to show once.
    pub password: Option<SecretString>,
}

/// Changes to an account (`wharf user set`, `PATCH /v1/accounts/{username}`).
#[derive(Debug, Clone, Default)]
pub struct AccountChanges {
    pub home: Option<String>,
    pub permissions: Option<String>,
    /// Addresses to add to the allowed ones.
    pub allow_ip: Vec<String>,
    /// Remove every allowed address first.
    pub clear_allow_ip: bool,
    pub decrypt_to: Option<String>,
    pub require_signature: bool,
    pub no_decrypt: bool,
    pub duplicates: Option<String>,
    pub duplicate_window: Option<Duration>,
    /// Scan (true) or not (false) the uploads of an account without folders.
    pub scan: Option<bool>,
}

/// A folder to add (`wharf user dir add`, `POST /v1/accounts/{username}/folders`).
#[derive(Debug, Clone, Default)]
pub struct FolderSpec {
    pub path: String,
    pub location: String,
    pub permissions: Option<String>,
    /// Comma lists of globs.
    pub allow: Option<String>,
    pub deny: Option<String>,
    pub max_size: Option<u64>,
    pub no_reuse_names: bool,
    pub receipt: Option<String>,
    pub decrypt_to: Option<String>,
    pub require_signature: bool,
    pub duplicates: Option<String>,
    pub duplicate_window: Option<Duration>,
    pub scan: Option<bool>,
}

fn parse_permissions(s: &str) -> Result<Permissions, ManageError> {
    s.parse::<Permissions>()
        .map_err(|e| ManageError::from_error(ErrorKind::InvalidPermissions, &e))
}

fn parse_cidrs(list: &[String]) -> Result<Vec<ipnet::IpNet>, ManageError> {
    list.iter()
        .map(|c| parse_cidr(c).map_err(|e| ManageError::from_error(ErrorKind::InvalidAddress, &e)))
        .collect()
}

fn parse_keys(input: &KeyInput) -> Result<Vec<AccountKey>, ManageError> {
    let text = input
        .text
        .as_ref()
        .map_err(|why| ManageError::new(ErrorKind::InvalidSshKey, why.clone()))?;
    parse_authorized_keys(text)
        .map_err(|e| ManageError::new(ErrorKind::InvalidSshKey, one_line_ctx(&input.label, &e)))
}

fn one_line_ctx(context: &str, e: &(dyn std::error::Error + 'static)) -> String {
    super::one_line(Some(context), e)
}

fn password_error(e: PasswordError) -> ManageError {
    let kind = match e {
        PasswordError::Empty | PasswordError::TooLong => ErrorKind::InvalidPassword,
        _ => ErrorKind::Internal,
    };
    ManageError::from_error(kind, &e)
}

fn home_error(e: crate::storage::HomeError) -> ManageError {
    ManageError::from_error(ErrorKind::InvalidHome, &e)
}

/// The fields of an account that changed, `{"field": {"from": …, "to": …}}` (never a
/// password hash: the view has none).
fn diff(before: &Account, after: &Account) -> Value {
    let (b, a) = (
        serde_json::to_value(AccountView::new(before, None)).unwrap_or_default(),
        serde_json::to_value(AccountView::new(after, None)).unwrap_or_default(),
    );
    let mut out = serde_json::Map::new();
    if let (Some(b), Some(a)) = (b.as_object(), a.as_object()) {
        for (k, v) in a {
            if matches!(
                k.as_str(),
                "updated_at" | "created_at" | "last_login_at" | "has_password"
            ) {
                continue;
            }
            if b.get(k) != Some(v) {
                out.insert(
                    k.clone(),
                    json!({ "from": b.get(k).cloned().unwrap_or(Value::Null), "to": v }),
                );
            }
        }
    }
    Value::Object(out)
}

fn target(username: &str) -> String {
    format!("account:{username}")
}

impl Manager {
    /// The new hash, and the plaintext when it was generated (to show once).
    async fn password(
        &self,
        choice: PasswordChoice,
    ) -> Result<Option<(PasswordHash, Option<SecretString>)>, ManageError> {
        let (pw, generated) = match choice {
            PasswordChoice::None => return Ok(None),
            PasswordChoice::Unreadable(why) => {
                return Err(ManageError::new(ErrorKind::InvalidPassword, why))
            }
            PasswordChoice::Given(pw) => (pw, None),
            PasswordChoice::Generate => {
                let pw = generate_password();
                (SecretString::from(pw.clone()), Some(SecretString::from(pw)))
            }
        };
        let hasher = self.hasher().await?.clone();
        let hash = tokio::task::spawn_blocking(move || hasher.hash(&pw))
            .await
            .map_err(|e| ManageError::new(ErrorKind::Internal, e.to_string()))?
            .map_err(password_error)?;
        Ok(Some((hash, generated)))
    }

    async fn account_or_unknown(&self, name: &str) -> Result<Account, ManageError> {
        self.store()
            .await?
            .get(name)
            .await?
            .ok_or_else(|| crate::identity::StoreError::UnknownUser(name.into()).into())
    }

    /// Creates an account (with its keys and password), checked in the order `wharf user add`
    /// always has: name, home, permissions, addresses, keys, password; then the database.
    pub async fn create_account(
        &self,
        req: NewAccount,
        actor: &Actor,
    ) -> Result<Created, ManageError> {
        validate_username(&req.username)
            .map_err(|e| ManageError::from_error(ErrorKind::InvalidUsername, &e))?;
        let home = Home::for_account(
            req.home.as_deref(),
            &self.default_home,
            &req.username,
            self.cwd()?,
        )
        .map_err(home_error)?;
        let mut account = Account::new(req.username, home);
        account.enabled = !req.disabled;
        if let Some(p) = &req.permissions {
            account.permissions = parse_permissions(p)?;
        }
        account.allowed_cidrs = parse_cidrs(&req.allow_ip)?;
        let mut keys = Vec::new();
        for input in &req.keys {
            keys.extend(parse_keys(input)?);
        }
        let how = match req.password {
            PasswordChoice::Generate => Some("generated"),
            PasswordChoice::Given(_) => Some("set"),
            _ => None,
        };
        let generated = self.password(req.password).await?;
        let mut password = None;
        if let Some((hash, plain)) = generated {
            account.password_hash = Some(hash);
            password = plain;
        }
        let view = AccountView::new(&account, None);
        let entry = Entry::new(
            actor,
            "account.create",
            target(&account.username),
            json!({
                "home": view.home,
                "permissions": view.permissions,
                "allowed_ips": view.allowed_ips,
                "enabled": view.enabled,
                "password": how,
                "keys": keys.iter().map(|k| &k.fingerprint).collect::<Vec<_>>(),
            }),
        );
        self.store()
            .await?
            .create_audited(&account, &keys, Some(&entry))
            .await?;
        Ok(Created {
            account,
            keys,
            password,
        })
    }

    /// One account and its SSH keys.
    pub async fn account(&self, name: &str) -> Result<(Account, Vec<AccountKey>), ManageError> {
        let account = self.account_or_unknown(name).await?;
        let keys = self.store().await?.list_keys(name).await?;
        Ok((account, keys))
    }

    /// Every account, by username.
    pub async fn accounts(&self) -> Result<Vec<Account>, ManageError> {
        Ok(self.store().await?.list().await?)
    }

    /// At most `limit` accounts after `after`, by username.
    pub async fn accounts_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Account>, ManageError> {
        Ok(self.store().await?.list_page(after, limit).await?)
    }

    /// Changes an account's home, permissions, allowed addresses, decryption, duplicates or
    /// scanning, as `wharf user set` does.
    pub async fn update_account(
        &self,
        name: &str,
        c: AccountChanges,
        actor: &Actor,
    ) -> Result<Account, ManageError> {
        if c.home.is_none()
            && c.permissions.is_none()
            && c.allow_ip.is_empty()
            && !c.clear_allow_ip
            && c.decrypt_to.is_none()
            && !c.require_signature
            && !c.no_decrypt
            && c.duplicates.is_none()
            && c.duplicate_window.is_none()
            && c.scan.is_none()
        {
            return Err(ManageError::new(
                ErrorKind::NothingToChange,
                "nothing to change: give --home, --permissions, --allow-ip, --clear-allow-ip, --decrypt-to, --no-decrypt, --duplicates or --duplicate-window",
            ));
        }
        let duplicates = c
            .duplicates
            .as_deref()
            .map(str::parse::<folders::Duplicates>)
            .transpose()?;
        let decrypt_to = c
            .decrypt_to
            .as_deref()
            .map(|p| folders::parse_path(p).map(|p| p.to_string()))
            .transpose()?;
        let permissions = c
            .permissions
            .as_deref()
            .map(parse_permissions)
            .transpose()?;
        let cidrs = parse_cidrs(&c.allow_ip)?;
        let new_home = match &c.home {
            Some(h) => Some(
                Home::for_account(Some(h), &self.default_home, name, self.cwd()?)
                    .map_err(home_error)?,
            ),
            None => None,
        };
        let before = self.account_or_unknown(name).await?;
        let mut account = before.clone();
        if let Some(h) = new_home {
            account.home = h;
        }
        if let Some(p) = permissions {
            account.permissions = p;
        }
        if c.clear_allow_ip {
            account.allowed_cidrs.clear();
        }
        for cidr in cidrs {
            if !account.allowed_cidrs.contains(&cidr) {
                account.allowed_cidrs.push(cidr);
            }
        }
        if c.no_decrypt {
            account.pgp.decrypt_to = None;
            account.pgp.require_signature = false;
        }
        if let Some(to) = decrypt_to {
            // The plaintext would land in the partner's own writable home.
            if account.folders.is_empty() {
                return Err(ManageError::new(
                    ErrorKind::InvalidDecryptTarget,
                    format!("--decrypt-to {to}: verified plaintext must go to a folder the partner can only read, and {name} has no folders; set up folders (wharf user dir add {name} /inbound LOCATION --decrypt-to /clear, after wharf user dir add {name} /clear LOCATION --permissions list,download)"),
                ));
            }
            account.pgp.decrypt_to = Some(to);
        }
        if let Some(scan) = c.scan {
            if !account.folders.is_empty() {
                return Err(ManageError::new(
                    ErrorKind::HasFolders,
                    format!("{name} has folders: set --scan or --no-scan on each folder (wharf user dir add)"),
                ));
            }
            account.rules.scan = Some(scan);
        }
        if duplicates.is_some() || c.duplicate_window.is_some() {
            if !account.folders.is_empty() {
                return Err(ManageError::new(
                    ErrorKind::HasFolders,
                    format!(
                        "{name} has folders: set --duplicates on each folder (wharf user dir add)"
                    ),
                ));
            }
            if let Some(d) = duplicates {
                account.rules.duplicates = d;
            }
            if let Some(w) = c.duplicate_window {
                account.rules.duplicate_window_s = Some(w.as_secs());
            }
        }
        if c.require_signature {
            if account.pgp.decrypt_to.is_none() {
                return Err(ManageError::new(
                    ErrorKind::InvalidDecryptTarget,
                    "--require-signature needs --decrypt-to (where files are decrypted)",
                ));
            }
            account.pgp.require_signature = true;
        }
        if account.pgp.decrypt_to.is_some() && !account.folders.is_empty() {
            return Err(ManageError::new(
                ErrorKind::HasFolders,
                format!("{name} has folders: set --decrypt-to on the folder the files arrive in (wharf user dir add)"),
            ));
        }
        let entry = Entry::new(
            actor,
            "account.update",
            target(name),
            diff(&before, &account),
        );
        self.store()
            .await?
            .update_audited(&account, Some(&entry))
            .await?;
        Ok(account)
    }

    /// Sets a new password (the account is looked up first, as `wharf user passwd` does);
    /// returns a generated one, to show once.
    pub async fn set_password(
        &self,
        name: &str,
        choice: PasswordChoice,
        actor: &Actor,
    ) -> Result<Option<SecretString>, ManageError> {
        let mut account = self.account_or_unknown(name).await?;
        let how = match choice {
            PasswordChoice::Generate => "generated",
            _ => "changed",
        };
        let (hash, generated) = self.password(choice).await?.ok_or_else(|| {
            ManageError::new(
                ErrorKind::InvalidPassword,
                "give --password-stdin or --generate-password",
            )
        })?;
        account.password_hash = Some(hash);
        let entry = Entry::new(
            actor,
            "account.password",
            target(name),
            json!({ "password": how }),
        );
        self.store()
            .await?
            .update_audited(&account, Some(&entry))
            .await?;
        Ok(generated)
    }

    /// Allows (`true`) or refuses logins to an account.
    pub async fn set_enabled(
        &self,
        name: &str,
        enabled: bool,
        actor: &Actor,
    ) -> Result<Account, ManageError> {
        let before = self.account_or_unknown(name).await?;
        let mut account = before.clone();
        account.enabled = enabled;
        let action = if enabled {
            "account.enable"
        } else {
            "account.disable"
        };
        let entry = Entry::new(actor, action, target(name), diff(&before, &account));
        self.store()
            .await?
            .update_audited(&account, Some(&entry))
            .await?;
        Ok(account)
    }

    /// Deletes an account and its keys (its files stay in storage).
    pub async fn delete_account(&self, name: &str, actor: &Actor) -> Result<(), ManageError> {
        let entry = Entry::new(actor, "account.delete", target(name), json!({}));
        Ok(self
            .store()
            .await?
            .delete_audited(name, Some(&entry))
            .await?)
    }

    /// Adds the SSH keys in `input` (all or none).
    pub async fn add_keys(
        &self,
        name: &str,
        input: &KeyInput,
        actor: &Actor,
    ) -> Result<Vec<AccountKey>, ManageError> {
        let keys = parse_keys(input)?;
        let entry = Entry::new(
            actor,
            "key.add",
            target(name),
            json!({ "keys": keys.iter().map(|k| json!({"fingerprint": k.fingerprint, "algorithm": k.algorithm, "comment": k.comment})).collect::<Vec<_>>() }),
        );
        self.store()
            .await?
            .add_keys_audited(name, &keys, Some(&entry))
            .await?;
        Ok(keys)
    }

    pub async fn keys(&self, name: &str) -> Result<Vec<AccountKey>, ManageError> {
        Ok(self.store().await?.list_keys(name).await?)
    }

    pub async fn remove_key(
        &self,
        name: &str,
        fingerprint: &str,
        actor: &Actor,
    ) -> Result<(), ManageError> {
        let entry = Entry::new(
            actor,
            "key.remove",
            target(name),
            json!({ "fingerprint": fingerprint }),
        );
        Ok(self
            .store()
            .await?
            .remove_key_audited(name, fingerprint, Some(&entry))
            .await?)
    }

    /// Adds a folder, checked as `wharf user dir add` always has.
    pub async fn add_folder(
        &self,
        name: &str,
        spec: FolderSpec,
        actor: &Actor,
    ) -> Result<Folder, ManageError> {
        let mut account = self.account_or_unknown(name).await?;
        let home = Home::for_account(Some(&spec.location), &self.default_home, name, self.cwd()?)
            .map_err(home_error)?;
        let permissions = match &spec.permissions {
            Some(p) => parse_permissions(p)?,
            None => account.permissions,
        };
        let rules = folders::Rules {
            allow: folders::Rules::patterns(spec.allow.as_deref().unwrap_or(""))?,
            deny: folders::Rules::patterns(spec.deny.as_deref().unwrap_or(""))?,
            max_size: spec.max_size,
            no_reuse_names: spec.no_reuse_names,
            receipt: spec
                .receipt
                .as_deref()
                .map(folders::Rules::receipt)
                .transpose()?,
            decrypt_to: spec
                .decrypt_to
                .as_deref()
                .map(|p| folders::parse_path(p).map(|p| p.to_string()))
                .transpose()?,
            require_signature: spec.require_signature,
            duplicates: spec
                .duplicates
                .as_deref()
                .map(str::parse)
                .transpose()?
                .unwrap_or_default(),
            duplicate_window_s: spec.duplicate_window.map(|w| w.as_secs()),
            scan: spec.scan,
        };
        let folder = Folder {
            path: folders::parse_path(&spec.path)?,
            home,
            permissions,
            rules,
        };
        let entry = Entry::new(
            actor,
            "folder.add",
            target(name),
            json!({ "folder": FolderView::new(&folder) }),
        );
        folders::add(&mut account.folders, folder.clone())?;
        folders::check_decrypt_targets(&account.folders)?;
        self.store()
            .await?
            .update_audited(&account, Some(&entry))
            .await?;
        Ok(folder)
    }

    pub async fn folders(&self, name: &str) -> Result<Account, ManageError> {
        self.account_or_unknown(name).await
    }

    /// Removes the folder at `vpath` (its files stay in storage).
    pub async fn remove_folder(
        &self,
        name: &str,
        vpath: &str,
        actor: &Actor,
    ) -> Result<(), ManageError> {
        let mut account = self.account_or_unknown(name).await?;
        let path = folders::parse_path(vpath)?;
        folders::remove(&mut account.folders, &path)?;
        folders::check_decrypt_targets(&account.folders)?;
        let entry = Entry::new(
            actor,
            "folder.remove",
            target(name),
            json!({ "path": path.to_string() }),
        );
        self.store()
            .await?
            .update_audited(&account, Some(&entry))
            .await?;
        Ok(())
    }

    /// Adds a partner's armored OpenPGP public key (its self-signatures checked).
    pub async fn add_pgp_key(
        &self,
        name: &str,
        input: &KeyInput,
        actor: &Actor,
    ) -> Result<PartnerKey, ManageError> {
        let text = input
            .text
            .as_ref()
            .map_err(|why| ManageError::new(ErrorKind::InvalidPgpKey, why.clone()))?;
        let key = crate::pgp::parse_partner_key(text.as_bytes()).map_err(|e| {
            let context = format!("{}: cannot use this key", input.label);
            let mut out = context;
            for cause in e.chain() {
                let s = cause.to_string();
                if !out.contains(&s) {
                    out.push_str(": ");
                    out.push_str(&s);
                }
            }
            ManageError::new(ErrorKind::InvalidPgpKey, out.replace('\n', " "))
        })?;
        let mut account = self.account_or_unknown(name).await?;
        if account
            .pgp
            .keys
            .iter()
            .any(|k| k.fingerprint == key.fingerprint)
        {
            return Err(ManageError::new(
                ErrorKind::PgpKeyExists,
                format!("{name} already has the key {}", key.fingerprint),
            ));
        }
        account.pgp.keys.push(key.clone());
        let entry = Entry::new(
            actor,
            "pgp_key.add",
            target(name),
            json!({ "fingerprint": key.fingerprint, "user_ids": key.user_ids }),
        );
        self.store()
            .await?
            .update_audited(&account, Some(&entry))
            .await?;
        Ok(key)
    }

    pub async fn pgp_keys(&self, name: &str) -> Result<Vec<PartnerKey>, ManageError> {
        Ok(self.account_or_unknown(name).await?.pgp.keys)
    }

    /// Removes a partner PGP key (the fingerprint as an admin may type it); returns the
    /// fingerprint normalised.
    pub async fn remove_pgp_key(
        &self,
        name: &str,
        fingerprint: &str,
        actor: &Actor,
    ) -> Result<String, ManageError> {
        let fpr = AccountPgp::normalise_fingerprint(fingerprint);
        let mut account = self.account_or_unknown(name).await?;
        let before = account.pgp.keys.len();
        account.pgp.keys.retain(|k| k.fingerprint != fpr);
        if account.pgp.keys.len() == before {
            return Err(ManageError::new(
                ErrorKind::UnknownPgpKey,
                format!("{name} has no PGP key {fpr}"),
            ));
        }
        let entry = Entry::new(
            actor,
            "pgp_key.remove",
            target(name),
            json!({ "fingerprint": fpr }),
        );
        self.store()
            .await?
            .update_audited(&account, Some(&entry))
            .await?;
        Ok(fpr)
    }
}
