//! `wharf pgp …`: the deployment's PGP decryption keys, and `wharf user pgp …`: partners'
//! signing keys.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;

use crate::config::Config;
use crate::identity::pgp::AccountPgp;

#[derive(Debug, Subcommand)]
pub enum PgpCommand {
    /// List the decryption keys `pgp.keys` names (fingerprints only), checking that each
    /// loads and that the passphrase unlocks it
    Keys {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserPgpCommand {
    /// Add the partner's OpenPGP public key (armored, as `gpg --export --armor` writes it)
    /// from FILE, or stdin with '-': files signed with it are verified
    Add { name: String, file: String },
    /// List the account's PGP keys
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove the key with this fingerprint
    Rm { name: String, fingerprint: String },
}

pub async fn run(config: &Config, cmd: PgpCommand) -> anyhow::Result<()> {
    match cmd {
        PgpCommand::Keys { json } => {
            let cwd = std::env::current_dir().context("current directory")?;
            let (_, keys) = crate::pgp::Keyring::load(&config.pgp, &cwd)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else if keys.is_empty() {
                eprintln!("no decryption keys: set pgp.keys to armored secret key files");
            } else {
                for k in &keys {
                    println!("{} {}", k.fingerprint, k.user_ids.join(", "));
                    for s in &k.subkeys {
                        println!("  sub {s}");
                    }
                }
            }
        }
    }
    Ok(())
}

pub async fn run_user(config: &Config, cmd: UserPgpCommand) -> anyhow::Result<()> {
    let store = super::user::open_store(config).await?;
    match cmd {
        UserPgpCommand::Add { name, file } => {
            let text = super::user::read_input(&file)?;
            let key = crate::pgp::parse_partner_key(text.as_bytes())
                .with_context(|| format!("{file}: cannot use this key"))?;
            let mut account = super::user::get(&*store, &name).await?;
            if account
                .pgp
                .keys
                .iter()
                .any(|k| k.fingerprint == key.fingerprint)
            {
                anyhow::bail!("{name} already has the key {}", key.fingerprint);
            }
            println!("{} {}", key.fingerprint, key.user_ids.join(", "));
            account.pgp.keys.push(key);
            store.update(&account).await?;
            eprintln!("added PGP key to {name}");
        }
        UserPgpCommand::List { name, json } => {
            let account = super::user::get(&*store, &name).await?;
            if json {
                let v: Vec<_> = account
                    .pgp
                    .keys
                    .iter()
                    .map(|k| {
                        json!({
                            "fingerprint": k.fingerprint,
                            "user_ids": k.user_ids,
                            "added_at": k.added_at,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if account.pgp.keys.is_empty() {
                eprintln!("{name} has no PGP keys");
            } else {
                for k in &account.pgp.keys {
                    println!("{} {}", k.fingerprint, k.user_ids.join(", "));
                }
            }
        }
        UserPgpCommand::Rm { name, fingerprint } => {
            let fpr = AccountPgp::normalise_fingerprint(&fingerprint);
            let mut account = super::user::get(&*store, &name).await?;
            let before = account.pgp.keys.len();
            account.pgp.keys.retain(|k| k.fingerprint != fpr);
            if account.pgp.keys.len() == before {
                anyhow::bail!("{name} has no PGP key {fpr}");
            }
            store.update(&account).await?;
            eprintln!("removed PGP key {fpr} from {name}");
        }
    }
    Ok(())
}
