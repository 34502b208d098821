//! `wharf user …`, `wharf user key …` and `wharf user dir …`: partner account administration
//! (`wharf user pgp …` is in `pgp.rs`), printing what `identity::manage` does.

use std::io::Read as _;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::Config;
use crate::identity::audit::Actor;
use crate::identity::keys::AccountKey;
use crate::identity::manage::views::{AccountView, FolderView, KeyView};
use crate::identity::manage::{
    AccountChanges, FolderSpec, KeyInput, Manager, NewAccount, PasswordChoice,
};
use crate::identity::{folders, Account, Folder};

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
    let m = Manager::new(config);
    let actor = Actor::cli();
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
            if password.password_stdin && ssh_keys.iter().any(|k| k == "-") {
                bail!("--password-stdin and --ssh-key - cannot both read standard input");
            }
            let keys = ssh_keys.iter().map(|f| key_input(f)).collect();
            let password = password_choice(password.password_stdin, password.generate_password);
            let created = m
                .create_account(
                    NewAccount {
                        username: name,
                        home,
                        password,
                        keys,
                        allow_ip,
                        permissions,
                        disabled,
                    },
                    &actor,
                )
                .await?;
            if let Some(pw) = &created.password {
                println!("{}", pw.expose_secret());
            }
            eprintln!(
                "created user {} (home {}, {} key(s))",
                created.account.username,
                created.account.home,
                created.keys.len()
            );
        }
        UserCommand::List { json } => {
            let accounts = m.accounts().await?;
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
            let (account, keys) = m.account(&name).await?;
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
            let changes = AccountChanges {
                home,
                permissions,
                allow_ip,
                clear_allow_ip,
                decrypt_to,
                require_signature,
                no_decrypt,
                duplicates,
                duplicate_window: duplicate_window.map(|w| w.0),
                scan: (scan || no_scan).then_some(scan),
            };
            m.update_account(&name, changes, &actor).await?;
            eprintln!("updated user {name}");
        }
        UserCommand::Passwd { name, password } => {
            // The account first, as always: an unknown user is said before stdin is read.
            m.account(&name).await?;
            let choice = password_choice(password.password_stdin, password.generate_password);
            if let Some(pw) = m.set_password(&name, choice, &actor).await? {
                println!("{}", pw.expose_secret());
            }
            eprintln!("password of {name} changed");
        }
        UserCommand::Enable { name } => {
            m.set_enabled(&name, true, &actor).await?;
            eprintln!("user {name} enabled");
        }
        UserCommand::Disable { name } => {
            m.set_enabled(&name, false, &actor).await?;
            eprintln!("user {name} disabled");
        }
        UserCommand::Rm { name } => {
            m.delete_account(&name, &actor).await?;
            eprintln!("removed user {name} (files in storage were kept)");
        }
        UserCommand::Dir(cmd) => dir(&m, &actor, cmd).await?,
        UserCommand::Key(cmd) => run_key(&m, &actor, cmd).await?,
        UserCommand::Pgp(cmd) => super::pgp::run_user(&m, &actor, cmd).await?,
    }
    m.close().await;
    Ok(())
}

async fn run_key(m: &Manager, actor: &Actor, cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Add { name, file } => {
            let input = key_input(&file);
            if let Err(why) = &input.text {
                bail!("{why}");
            }
            let keys = m.add_keys(&name, &input, actor).await?;
            for k in &keys {
                println!("{} {}", k.fingerprint, k.algorithm);
            }
            eprintln!("added {} key(s) to {name}", keys.len());
        }
        KeyCommand::List { name, json } => {
            let keys = m.keys(&name).await?;
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
            m.remove_key(&name, &fingerprint, actor).await?;
            eprintln!("removed key {fingerprint} from {name}");
        }
    }
    Ok(())
}

/// What `--password-stdin` or `--generate-password` ask for (stdin read now, its problems
/// said where `user add` has always said them).
fn password_choice(stdin: bool, generate: bool) -> PasswordChoice {
    if stdin {
        match read_password_stdin() {
            Ok(pw) => PasswordChoice::Given(pw),
            Err(e) => PasswordChoice::Unreadable(super::one_line(&e)),
        }
    } else if generate {
        PasswordChoice::Generate
    } else {
        PasswordChoice::None
    }
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

/// A key file (or stdin) as the shared functions take it: its text, or why it could not be
/// read, labelled as errors name it.
pub(super) fn key_input(file: &str) -> KeyInput {
    KeyInput {
        label: if file == "-" {
            "standard input".to_string()
        } else {
            file.to_string()
        },
        text: super::read_input(file).map_err(|e| super::one_line(&e)),
    }
}

async fn dir(m: &Manager, actor: &Actor, cmd: DirCommand) -> anyhow::Result<()> {
    // The database first, as always (a folder is checked against its account).
    m.db().await?;
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
            let spec = FolderSpec {
                path: vpath,
                location,
                permissions,
                allow,
                deny,
                max_size: max_size.map(|s| s.0),
                no_reuse_names,
                receipt,
                decrypt_to,
                require_signature,
                duplicates,
                duplicate_window: duplicate_window.map(|w| w.0),
                scan: (scan || no_scan).then_some(scan),
            };
            let folder = m.add_folder(&name, spec, actor).await?;
            let shown = format!(
                "{} -> {} ({}{})",
                folder.path,
                folder.home,
                folder.permissions,
                rules_text(&folder.rules)
            );
            eprintln!("added folder {shown} to user {name}");
        }
        DirCommand::List { name, json } => {
            let account = m.folders(&name).await?;
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
            m.remove_folder(&name, &vpath, actor).await?;
            eprintln!("removed folder {vpath} from user {name}");
        }
    }
    Ok(())
}

fn folder_json(f: &Folder) -> serde_json::Value {
    serde_json::to_value(FolderView::new(f)).unwrap_or_default()
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
    serde_json::to_value(AccountView::new(a, keys)).unwrap_or_default()
}

fn key_json(k: &AccountKey) -> serde_json::Value {
    serde_json::to_value(KeyView::new(k)).unwrap_or_default()
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
