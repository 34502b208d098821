//! `wharf user …`, `wharf user key …` and `wharf user dir …`: partner account administration
//! (`wharf user pgp …` is in `pgp.rs`).

use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use secrecy::SecretString;
use serde_json::json;

use crate::config::Config;
use crate::db::Db;
use crate::identity::keys::{parse_authorized_keys, AccountKey};
use crate::identity::password::generate_password;
use crate::identity::{
    folders, parse_cidr, validate_username, Account, AccountStore, Folder, Hasher, Permissions,
};
use crate::storage::Home;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account
    Add {
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// s3://bucket/prefix/, file:///dir or a path relative to storage.default_home
        #[arg(long, value_name = "URI")]
        home: Option<String>,
        #[command(flatten)]
        password: PasswordSource,
        /// OpenSSH public key file (authorized_keys format); repeatable
        #[arg(long = "ssh-key", value_name = "FILE")]
        ssh_keys: Vec<String>,
        /// Only these addresses may log in (CIDR or address); repeatable
        #[arg(long = "allow-ip", value_name = "CIDR")]
        allow_ip: Vec<String>,
        /// Comma list of list,upload,download,overwrite,delete,rename,mkdir
        #[arg(long, value_name = "LIST")]
        permissions: Option<String>,
        /// Create the account disabled
        #[arg(long)]
        disabled: bool,
    },
    /// List accounts
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one account and its keys
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Change an account's home, permissions or allowed addresses
    Set {
        name: String,
        #[arg(long, value_name = "URI")]
        home: Option<String>,
        #[arg(long, value_name = "LIST")]
        permissions: Option<String>,
        /// Add an allowed address range; repeatable
        #[arg(long = "allow-ip", value_name = "CIDR")]
        allow_ip: Vec<String>,
        /// Remove every allowed address range (any address may log in)
        #[arg(long)]
        clear_allow_ip: bool,
        /// For an account without folders: decrypt PGP files that arrive (.pgp, .gpg, .asc)
        /// into this client path (a folder's own --decrypt-to is set with `user dir add`)
        #[arg(long, value_name = "VPATH")]
        decrypt_to: Option<String>,
        /// With --decrypt-to: decrypt only files signed by one of the account's PGP keys
        #[arg(long)]
        require_signature: bool,
        /// Stop decrypting the account's arrivals
        #[arg(long, conflicts_with_all = ["decrypt_to", "require_signature"])]
        no_decrypt: bool,
        /// For an account without folders: what an arrival whose content (size and SHA-256)
        /// already arrived is: allow, flag (its event says so) or refuse (a folder's own is
        /// set with `user dir add`)
        #[arg(long, value_name = "POLICY")]
        duplicates: Option<String>,
        /// How far back an earlier arrival counts for --duplicates (default 31d)
        #[arg(long, value_name = "DURATION")]
        duplicate_window: Option<crate::config::HumanDuration>,
        /// For an account without folders: scan its uploads for malware (scan.clamd) even
        /// when scan.by_default is false
        #[arg(long, conflicts_with = "no_scan")]
        scan: bool,
        /// For an account without folders: do not scan its uploads
        #[arg(long)]
        no_scan: bool,
    },
    /// Set a new password
    Passwd {
        name: String,
        #[command(flatten)]
        password: RequiredPasswordSource,
    },
    /// Allow the account to log in
    Enable { name: String },
    /// Refuse logins to the account
    Disable { name: String },
    /// Delete the account and its keys (its files stay in storage)
    Rm { name: String },
    /// Manage the account's SSH public keys
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage the account's folders (logical directories, each on its own storage)
    #[command(subcommand)]
    Dir(DirCommand),
    /// Manage the partner's PGP signing keys (files signed with them are verified)
    #[command(subcommand)]
    Pgp(super::pgp::UserPgpCommand),
}

// Parsed once per command: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum DirCommand {
    /// Map the client path VPATH (such as /inbound) to LOCATION: s3://bucket/prefix/,
    /// file:///dir or a path relative to storage.default_home. An account with folders sees
    /// only its folders.
    Add {
        name: String,
        vpath: String,
        location: String,
        /// Comma list of list,upload,download,overwrite,delete,rename,mkdir (default: the
        /// account's permissions)
        #[arg(long, value_name = "LIST")]
        permissions: Option<String>,
        /// Only file names matching one of these globs are accepted (e.g. '*.csv,*.xml')
        #[arg(long, value_name = "PATTERNS")]
        allow: Option<String>,
        /// File names matching one of these globs are refused
        #[arg(long, value_name = "PATTERNS")]
        deny: Option<String>,
        /// Largest upload accepted (e.g. 10MiB); a larger one is cut and nothing is stored
        #[arg(long, value_name = "SIZE")]
        max_size: Option<crate::config::ByteSize>,
        /// Refuse a file name that already arrived in this folder, even after it was moved away
        #[arg(long)]
        no_reuse_names: bool,
        /// Write a JSON receipt for each arrival at this client path ({name}: the file's name),
        /// e.g. /outbound/receipts/{name}.receipt.json
        #[arg(long, value_name = "PATH")]
        receipt: Option<String>,
        /// Decrypt PGP files that arrive here (.pgp, .gpg, .asc) into the folder at this
        /// client path, under their name without the suffix
        #[arg(long, value_name = "VPATH")]
        decrypt_to: Option<String>,
        /// With --decrypt-to: decrypt only files signed by one of the account's PGP keys
        #[arg(long, requires = "decrypt_to")]
        require_signature: bool,
        /// What an arrival whose content (size and SHA-256) already arrived in this folder
        /// is: allow (default), flag (its event says so) or refuse (nothing is stored)
        #[arg(long, value_name = "POLICY")]
        duplicates: Option<String>,
        /// How far back an earlier arrival counts for --duplicates (default 31d)
        #[arg(long, value_name = "DURATION")]
        duplicate_window: Option<crate::config::HumanDuration>,
        /// Scan uploads here for malware (scan.clamd) even when scan.by_default is false
        #[arg(long, conflicts_with = "no_scan")]
        scan: bool,
        /// Do not scan uploads here
        #[arg(long)]
        no_scan: bool,
    },
    /// List the account's folders
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove the folder at VPATH (its files stay in storage)
    Rm { name: String, vpath: String },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add OpenSSH public key line(s) from FILE, or stdin with '-'
    Add { name: String, file: String },
    /// List keys with their SHA256 fingerprints
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove the key with this fingerprint (SHA256:… as ssh-keygen -lf prints it)
    Rm { name: String, fingerprint: String },
}

#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct PasswordSource {
    /// Read the password from standard input
    #[arg(long)]
    password_stdin: bool,
    /// Generate a strong password and print it once on stdout
    #[arg(long)]
    generate_password: bool,
}

#[derive(Debug, Args)]
#[group(multiple = false, required = true)]
pub struct RequiredPasswordSource {
    /// Read the password from standard input
    #[arg(long)]
    password_stdin: bool,
    /// Generate a strong password and print it once on stdout
    #[arg(long)]
    generate_password: bool,
}

pub async fn run(config: &Config, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            home,
            password,
            ssh_keys,
            allow_ip,
            permissions,
            disabled,
        } => {
            validate_username(&name)?;
            let cwd = std::env::current_dir().context("current directory")?;
            let home =
                Home::for_account(home.as_deref(), &config.storage.default_home, &name, &cwd)?;
            let mut account = Account::new(name, home);
            account.enabled = !disabled;
            if let Some(p) = permissions {
                account.permissions = parse_permissions(&p)?;
            }
            account.allowed_cidrs = allow_ip
                .iter()
                .map(|c| parse_cidr(c))
                .collect::<Result<_, _>>()?;
            if password.password_stdin && ssh_keys.iter().any(|k| k == "-") {
                bail!("--password-stdin and --ssh-key - cannot both read standard input");
            }
            let mut keys = Vec::new();
            for file in &ssh_keys {
                keys.extend(read_keys(file)?);
            }
            let generated =
                password_from(config, password.password_stdin, password.generate_password)?;
            if let Some((hash, _)) = &generated {
                account.password_hash = Some(hash.clone());
            }
            let store = open_store(config).await?;
            store.create(&account, &keys).await?;
            if let Some((_, Some(pw))) = generated {
                println!("{pw}");
            }
            eprintln!(
                "created user {} (home {}, {} key(s))",
                account.username,
                account.home,
                keys.len()
            );
        }
        UserCommand::List { json } => {
            let store = open_store(config).await?;
            let accounts = store.list().await?;
            if json {
                let v: Vec<_> = accounts.iter().map(|a| account_json(a, None)).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if accounts.is_empty() {
                eprintln!("no users");
            } else {
                println!(
                    "{:<24} {:<8} {:<40} PERMISSIONS",
                    "USERNAME", "ENABLED", "HOME"
                );
                for a in &accounts {
                    println!(
                        "{:<24} {:<8} {:<40} {}",
                        a.username,
                        if a.enabled { "yes" } else { "no" },
                        a.home.to_uri(),
                        a.permissions
                    );
                }
            }
        }
        UserCommand::Show { name, json } => {
            let store = open_store(config).await?;
            let account = get(&*store, &name).await?;
            let keys = store.list_keys(&name).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&account_json(&account, Some(&keys)))?
                );
            } else {
                print_account(&account, &keys);
            }
        }
        UserCommand::Set {
            name,
            home,
            permissions,
            allow_ip,
            clear_allow_ip,
            decrypt_to,
            require_signature,
            no_decrypt,
            duplicates,
            duplicate_window,
            scan,
            no_scan,
        } => {
            if home.is_none()
                && permissions.is_none()
                && allow_ip.is_empty()
                && !clear_allow_ip
                && decrypt_to.is_none()
                && !require_signature
                && !no_decrypt
                && duplicates.is_none()
                && duplicate_window.is_none()
                && !scan
                && !no_scan
            {
                bail!(
                    "nothing to change: give --home, --permissions, --allow-ip, --clear-allow-ip, --decrypt-to, --no-decrypt, --duplicates or --duplicate-window"
                );
            }
            let duplicates = duplicates
                .as_deref()
                .map(str::parse::<folders::Duplicates>)
                .transpose()?;
            let decrypt_to = decrypt_to
                .as_deref()
                .map(|p| folders::parse_path(p).map(|p| p.to_string()))
                .transpose()?;
            let permissions = permissions.as_deref().map(parse_permissions).transpose()?;
            let cidrs: Vec<_> = allow_ip
                .iter()
                .map(|c| parse_cidr(c))
                .collect::<Result<_, _>>()?;
            let new_home = match &home {
                Some(h) => {
                    let cwd = std::env::current_dir().context("current directory")?;
                    Some(Home::for_account(
                        Some(h),
                        &config.storage.default_home,
                        &name,
                        &cwd,
                    )?)
                }
                None => None,
            };
            let store = open_store(config).await?;
            let mut account = get(&*store, &name).await?;
            if let Some(h) = new_home {
                account.home = h;
            }
            if let Some(p) = permissions {
                account.permissions = p;
            }
            if clear_allow_ip {
                account.allowed_cidrs.clear();
            }
            for c in cidrs {
                if !account.allowed_cidrs.contains(&c) {
                    account.allowed_cidrs.push(c);
                }
            }
            if no_decrypt {
                account.pgp.decrypt_to = None;
                account.pgp.require_signature = false;
            }
            if let Some(to) = decrypt_to {
                // The plaintext would land in the partner's own writable home.
                if account.folders.is_empty() {
                    bail!(
                        "--decrypt-to {to}: verified plaintext must go to a folder the partner can only read, and {name} has no folders; set up folders (wharf user dir add {name} /inbound LOCATION --decrypt-to /clear, after wharf user dir add {name} /clear LOCATION --permissions list,download)"
                    );
                }
                account.pgp.decrypt_to = Some(to);
            }
            if scan || no_scan {
                if !account.folders.is_empty() {
                    bail!("{name} has folders: set --scan or --no-scan on each folder (wharf user dir add)");
                }
                account.rules.scan = Some(scan);
            }
            if duplicates.is_some() || duplicate_window.is_some() {
                if !account.folders.is_empty() {
                    bail!(
                        "{name} has folders: set --duplicates on each folder (wharf user dir add)"
                    );
                }
                if let Some(d) = duplicates {
                    account.rules.duplicates = d;
                }
                if let Some(w) = duplicate_window {
                    account.rules.duplicate_window_s = Some(w.0.as_secs());
                }
            }
            if require_signature {
                if account.pgp.decrypt_to.is_none() {
                    bail!("--require-signature needs --decrypt-to (where files are decrypted)");
                }
                account.pgp.require_signature = true;
            }
            if account.pgp.decrypt_to.is_some() && !account.folders.is_empty() {
                bail!(
                    "{name} has folders: set --decrypt-to on the folder the files arrive in (wharf user dir add)"
                );
            }
            store.update(&account).await?;
            eprintln!("updated user {name}");
        }
        UserCommand::Passwd { name, password } => {
            let store = open_store(config).await?;
            let mut account = get(&*store, &name).await?;
            let (hash, generated) =
                password_from(config, password.password_stdin, password.generate_password)?
                    .ok_or_else(|| anyhow!("give --password-stdin or --generate-password"))?;
            account.password_hash = Some(hash);
            store.update(&account).await?;
            if let Some(pw) = generated {
                println!("{pw}");
            }
            eprintln!("password of {name} changed");
        }
        UserCommand::Enable { name } => set_enabled(config, &name, true).await?,
        UserCommand::Disable { name } => set_enabled(config, &name, false).await?,
        UserCommand::Rm { name } => {
            let store = open_store(config).await?;
            store.delete(&name).await?;
            eprintln!("removed user {name} (files in storage were kept)");
        }
        UserCommand::Dir(cmd) => dir(config, cmd).await?,
        UserCommand::Key(cmd) => run_key(config, cmd).await?,
        UserCommand::Pgp(cmd) => super::pgp::run_user(config, cmd).await?,
    }
    Ok(())
}

async fn run_key(config: &Config, cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Add { name, file } => {
            let keys = read_keys(&file)?;
            let store = open_store(config).await?;
            store.add_keys(&name, &keys).await?;
            for k in &keys {
                println!("{} {}", k.fingerprint, k.algorithm);
            }
            eprintln!("added {} key(s) to {name}", keys.len());
        }
        KeyCommand::List { name, json } => {
            let store = open_store(config).await?;
            let keys = store.list_keys(&name).await?;
            if json {
                let v: Vec<_> = keys.iter().map(key_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for k in &keys {
                    println!("{} {} {}", k.fingerprint, k.algorithm, k.comment);
                }
                if keys.is_empty() {
                    eprintln!("{name} has no keys");
                }
            }
        }
        KeyCommand::Rm { name, fingerprint } => {
            let store = open_store(config).await?;
            store.remove_key(&name, &fingerprint).await?;
            eprintln!("removed key {fingerprint} from {name}");
        }
    }
    Ok(())
}

pub(super) async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn AccountStore>> {
    Ok(Db::open(&config.database).await?.account_store())
}

pub(super) async fn get(store: &dyn AccountStore, name: &str) -> anyhow::Result<Account> {
    store
        .get(name)
        .await?
        .ok_or_else(|| crate::identity::StoreError::UnknownUser(name.into()).into())
}

async fn set_enabled(config: &Config, name: &str, enabled: bool) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let mut account = get(&*store, name).await?;
    account.enabled = enabled;
    store.update(&account).await?;
    eprintln!(
        "user {name} {}",
        if enabled { "enabled" } else { "disabled" }
    );
    Ok(())
}

fn parse_permissions(s: &str) -> anyhow::Result<Permissions> {
    Ok(s.parse::<Permissions>()?)
}

/// The new hash, and the plaintext when it was generated (to print once).
fn password_from(
    config: &Config,
    stdin: bool,
    generate: bool,
) -> anyhow::Result<Option<(crate::identity::PasswordHash, Option<String>)>> {
    let (pw, generated) = if stdin {
        (read_password_stdin()?, None)
    } else if generate {
        let pw = generate_password();
        (SecretString::from(pw.clone()), Some(pw))
    } else {
        return Ok(None);
    };
    let hasher = Hasher::from_config(&config.security)?;
    Ok(Some((hasher.hash(&pw)?, generated)))
}

fn read_password_stdin() -> anyhow::Result<SecretString> {
    let mut buf = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut buf)
        .context("reading the password from standard input")?;
    let pw = buf
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(&buf);
    if pw.is_empty() {
        bail!("no password on standard input");
    }
    if pw.contains('\n') {
        bail!("the password on standard input must be a single line");
    }
    Ok(SecretString::from(pw.to_owned()))
}

/// A key file's content, or standard input's with `-` (at most 1 MiB either way).
pub(super) fn read_input(file: &str) -> anyhow::Result<String> {
    let mut s = String::new();
    if file == "-" {
        std::io::stdin()
            .take(1 << 20)
            .read_to_string(&mut s)
            .context("reading keys from standard input")?;
    } else {
        std::fs::File::open(Path::new(file))
            .and_then(|f| f.take(1 << 20).read_to_string(&mut s))
            .with_context(|| format!("cannot read key file {file}"))?;
    }
    Ok(s)
}

fn read_keys(file: &str) -> anyhow::Result<Vec<AccountKey>> {
    let text = read_input(file)?;
    parse_authorized_keys(&text).with_context(|| {
        if file == "-" {
            "standard input".to_string()
        } else {
            file.to_string()
        }
    })
}

async fn dir(config: &Config, cmd: DirCommand) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    match cmd {
        DirCommand::Add {
            name,
            vpath,
            location,
            permissions,
            allow,
            deny,
            max_size,
            no_reuse_names,
            receipt,
            decrypt_to,
            require_signature,
            duplicates,
            duplicate_window,
            scan,
            no_scan,
        } => {
            let mut account = get(&*store, &name).await?;
            let cwd = std::env::current_dir().context("current directory")?;
            let home =
                Home::for_account(Some(&location), &config.storage.default_home, &name, &cwd)?;
            let permissions = match permissions {
                Some(p) => parse_permissions(&p)?,
                None => account.permissions,
            };
            let rules = folders::Rules {
                allow: folders::Rules::patterns(allow.as_deref().unwrap_or(""))?,
                deny: folders::Rules::patterns(deny.as_deref().unwrap_or(""))?,
                max_size: max_size.map(|s| s.0),
                no_reuse_names,
                receipt: receipt
                    .as_deref()
                    .map(folders::Rules::receipt)
                    .transpose()?,
                decrypt_to: decrypt_to
                    .as_deref()
                    .map(|p| folders::parse_path(p).map(|p| p.to_string()))
                    .transpose()?,
                require_signature,
                duplicates: duplicates
                    .as_deref()
                    .map(str::parse)
                    .transpose()?
                    .unwrap_or_default(),
                duplicate_window_s: duplicate_window.map(|w| w.0.as_secs()),
                scan: (scan || no_scan).then_some(scan),
            };
            let folder = Folder {
                path: folders::parse_path(&vpath)?,
                home,
                permissions,
                rules,
            };
            let shown = format!(
                "{} -> {} ({}{})",
                folder.path,
                folder.home,
                folder.permissions,
                rules_text(&folder.rules)
            );
            folders::add(&mut account.folders, folder)?;
            folders::check_decrypt_targets(&account.folders)?;
            store.update(&account).await?;
            eprintln!("added folder {shown} to user {name}");
        }
        DirCommand::List { name, json } => {
            let account = get(&*store, &name).await?;
            if json {
                let v: Vec<_> = account.folders.iter().map(folder_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if account.folders.is_empty() {
                eprintln!("no folders: {name} sees its home {} at /", account.home);
            } else {
                println!("{:<24} {:<48} PERMISSIONS AND RULES", "PATH", "LOCATION");
                for f in &account.folders {
                    println!(
                        "{:<24} {:<48} {}{}",
                        f.path.to_string(),
                        f.home.to_uri(),
                        f.permissions,
                        rules_text(&f.rules)
                    );
                }
            }
        }
        DirCommand::Rm { name, vpath } => {
            let mut account = get(&*store, &name).await?;
            folders::remove(&mut account.folders, &folders::parse_path(&vpath)?)?;
            folders::check_decrypt_targets(&account.folders)?;
            store.update(&account).await?;
            eprintln!("removed folder {vpath} from user {name}");
        }
    }
    Ok(())
}

fn folder_json(f: &Folder) -> serde_json::Value {
    json!({
        "path": f.path.to_string(),
        "location": f.home.to_uri(),
        "permissions": f.permissions.iter().map(|p| p.name()).collect::<Vec<_>>(),
        "allow": f.rules.allow,
        "deny": f.rules.deny,
        "max_size": f.rules.max_size,
        "no_reuse_names": f.rules.no_reuse_names,
        "receipt": f.rules.receipt,
        "decrypt_to": f.rules.decrypt_to,
        "require_signature": f.rules.require_signature,
        "duplicates": f.rules.duplicates.name(),
        "scan": f.rules.scan,
        "duplicate_window_s": f.rules.duplicate_window().as_secs(),
    })
}

/// `; allow *.csv; deny tmp-*; max 10485760 bytes`, or nothing.
fn rules_text(r: &folders::Rules) -> String {
    let mut out = String::new();
    if !r.allow.is_empty() {
        out.push_str(&format!("; allow {}", r.allow.join(",")));
    }
    if !r.deny.is_empty() {
        out.push_str(&format!("; deny {}", r.deny.join(",")));
    }
    if let Some(m) = r.max_size {
        out.push_str(&format!("; max {m} bytes"));
    }
    if r.no_reuse_names {
        out.push_str("; no reused names");
    }
    if let Some(t) = &r.receipt {
        out.push_str(&format!("; receipts {t}"));
    }
    if let Some(t) = &r.decrypt_to {
        out.push_str(&format!("; decrypt to {t}"));
        if r.require_signature {
            out.push_str(" (signed only)");
        }
    }
    match r.scan {
        Some(true) => out.push_str("; scanned"),
        Some(false) => out.push_str("; not scanned"),
        None => {}
    }
    if !r.duplicates.is_allow() {
        out.push_str(&format!(
            "; {} duplicates within {}",
            r.duplicates.name(),
            humantime::format_duration(r.duplicate_window())
        ));
    }
    out
}

fn account_json(a: &Account, keys: Option<&[AccountKey]>) -> serde_json::Value {
    let mut v = json!({
        "username": a.username,
        "enabled": a.enabled,
        "home": a.home.to_uri(),
        "permissions": a.permissions.iter().map(|p| p.name()).collect::<Vec<_>>(),
        "allowed_ips": a.allowed_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "has_password": a.password_hash.is_some(),
        "created_at": a.created_at,
        "updated_at": a.updated_at,
        "last_login_at": a.last_login_at,
        "folders": a.folders.iter().map(folder_json).collect::<Vec<_>>(),
        "pgp_keys": a.pgp.keys.iter().map(|k| &k.fingerprint).collect::<Vec<_>>(),
        "decrypt_to": a.pgp.decrypt_to,
        "require_signature": a.pgp.require_signature,
        "duplicates": a.rules.duplicates.name(),
        "duplicate_window_s": a.rules.duplicate_window().as_secs(),
    });
    if let Some(keys) = keys {
        v["keys"] = keys.iter().map(key_json).collect();
    }
    v
}

fn key_json(k: &AccountKey) -> serde_json::Value {
    json!({
        "fingerprint": k.fingerprint,
        "algorithm": k.algorithm,
        "comment": k.comment,
        "created_at": k.created_at,
    })
}

fn print_account(a: &Account, keys: &[AccountKey]) {
    let ips = if a.allowed_cidrs.is_empty() {
        "any".to_string()
    } else {
        a.allowed_cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("username:    {}", a.username);
    println!("enabled:     {}", if a.enabled { "yes" } else { "no" });
    println!("home:        {}", a.home);
    println!("permissions: {}", a.permissions);
    println!("allowed ips: {ips}");
    println!(
        "password:    {}",
        if a.password_hash.is_some() {
            "set"
        } else {
            "none"
        }
    );
    println!("created:     {}", a.created_at.to_rfc3339());
    println!("updated:     {}", a.updated_at.to_rfc3339());
    println!(
        "last login:  {}",
        a.last_login_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "never".into())
    );
    if !a.folders.is_empty() {
        println!(
            "folders:     {} (the home above is not shown to the partner)",
            a.folders.len()
        );
        for f in &a.folders {
            println!(
                "  {} -> {} ({}{})",
                f.path,
                f.home,
                f.permissions,
                rules_text(&f.rules)
            );
        }
    }
    if let Some(to) = &a.pgp.decrypt_to {
        println!(
            "decrypt to:  {to}{}",
            if a.pgp.require_signature {
                " (signed files only)"
            } else {
                ""
            }
        );
    }
    if !a.rules.duplicates.is_allow() && a.folders.is_empty() {
        println!(
            "duplicates:  {} within {}",
            a.rules.duplicates.name(),
            humantime::format_duration(a.rules.duplicate_window())
        );
    }
    println!("keys:        {}", keys.len());
    for k in keys {
        println!("  {} {} {}", k.fingerprint, k.algorithm, k.comment);
    }
    println!("pgp keys:    {}", a.pgp.keys.len());
    for k in &a.pgp.keys {
        println!("  {} {}", k.fingerprint, k.user_ids.join(", "));
    }
}
