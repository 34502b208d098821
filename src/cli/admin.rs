//! `wharf admin token add|list|rm`: the bearer tokens of the admin API.

use clap::Subcommand;
use secrecy::ExposeSecret as _;

use crate::config::{Config, HumanDuration};
use crate::identity::audit::Actor;
use crate::identity::manage::Manager;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Tokens for the admin API ([admin] in the configuration)
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once on stdout (only its SHA-256 is kept)
    Add {
        name: String,
        /// read: every GET; write: everything
        #[arg(long, value_name = "SCOPE")]
        scope: String,
        /// Refuse the token after this long (e.g. 90d; default: never)
        #[arg(long, value_name = "DURATION")]
        expires: Option<HumanDuration>,
    },
    /// List tokens (never their secrets)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: requests carrying it are refused from now on
    Rm { name: String },
}

pub async fn run(config: &Config, cmd: AdminCommand) -> anyhow::Result<()> {
    let m = Manager::new(config);
    let AdminCommand::Token(cmd) = cmd;
    match cmd {
        TokenCommand::Add {
            name,
            scope,
            expires,
        } => {
            let (info, secret) = m
                .add_token(&name, &scope, expires.map(|e| e.0), &Actor::cli())
                .await?;
            println!("{}", secret.expose_secret());
            eprintln!(
                "created {} token {} (expires {})",
                info.scope.name(),
                info.name,
                info.expires_at
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "never".into())
            );
        }
        TokenCommand::List { json } => {
            let tokens = m.tokens().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else if tokens.is_empty() {
                eprintln!("no tokens");
            } else {
                let t = |d: Option<chrono::DateTime<chrono::Utc>>, none: &str| {
                    d.map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_else(|| none.to_string())
                };
                println!(
                    "{:<24} {:<6} {:<18} {:<21} {:<21} LAST USED",
                    "NAME", "SCOPE", "ID", "CREATED", "EXPIRES"
                );
                for k in &tokens {
                    println!(
                        "{:<24} {:<6} {:<18} {:<21} {:<21} {}",
                        k.name,
                        k.scope.name(),
                        k.id,
                        t(Some(k.created_at), ""),
                        t(k.expires_at, "never"),
                        t(k.last_used_at, "never")
                    );
                }
            }
        }
        TokenCommand::Rm { name } => {
            m.remove_token(&name, &Actor::cli()).await?;
            eprintln!("revoked token {name}");
        }
    }
    m.close().await;
    Ok(())
}
