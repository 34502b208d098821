//! `wharf pgp …`: the deployment's PGP decryption keys, and `wharf user pgp …`: partners'
//! signing keys.

use anyhow::Context as _;
use clap::Subcommand;

use crate::config::Config;
use crate::identity::audit::Actor;
use crate::identity::manage::views::PgpKeyView;
use crate::identity::manage::{KeyInput, Manager};

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

pub async fn run_user(m: &Manager, actor: &Actor, cmd: UserPgpCommand) -> anyhow::Result<()> {
    // The database first, as always.
    m.db().await?;
    match cmd {
        UserPgpCommand::Add { name, file } => {
            let input = KeyInput {
                label: file.clone(),
                text: super::read_input(&file).map_err(|e| super::one_line(&e)),
            };
            if let Err(why) = &input.text {
                anyhow::bail!("{why}");
            }
            let key = m.add_pgp_key(&name, &input, actor).await?;
            println!("{} {}", key.fingerprint, key.user_ids.join(", "));
            eprintln!("added PGP key to {name}");
        }
        UserPgpCommand::List { name, json } => {
            let keys = m.pgp_keys(&name).await?;
            if json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|k| serde_json::to_value(PgpKeyView::new(k)).unwrap_or_default())
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if keys.is_empty() {
                eprintln!("{name} has no PGP keys");
            } else {
                for k in &keys {
                    println!("{} {}", k.fingerprint, k.user_ids.join(", "));
                }
            }
        }
        UserPgpCommand::Rm { name, fingerprint } => {
            let fpr = m.remove_pgp_key(&name, &fingerprint, actor).await?;
            eprintln!("removed PGP key {fpr} from {name}");
        }
    }
    Ok(())
}
