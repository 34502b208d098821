//! `wharf ban list | rm`: addresses banned for repeated failed logins.

use clap::Subcommand;

use crate::config::Config;
use crate::db::Db;
use crate::identity::bans;

#[derive(Debug, Subcommand)]
pub enum BanCommand {
    /// Banned addresses, with when each ban ends
    List {
        /// One JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Lift the ban on an address (every instance notices within seconds)
    Rm {
        /// The banned address, as `ban list` shows it
        address: String,
    },
}

pub async fn run(config: &Config, cmd: BanCommand) -> anyhow::Result<()> {
    let db = Db::open(&config.database).await?;
    match cmd {
        BanCommand::List { json } => {
            let now = chrono::Utc::now();
            let active: Vec<_> = bans::list(&db)
                .await?
                .into_iter()
                .filter(|b| b.until > now)
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&active)?);
            } else if active.is_empty() {
                println!("no banned addresses");
            } else {
                println!("{:<40} {:<25} {:>8}", "ADDRESS", "UNTIL", "FAILURES");
                for b in active {
                    println!(
                        "{:<40} {:<25} {:>8}",
                        b.address,
                        b.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        b.failures
                    );
                }
            }
        }
        BanCommand::Rm { address } => {
            let ip: std::net::IpAddr = address
                .parse()
                .map_err(|_| anyhow::anyhow!("{address:?} is not an IP address"))?;
            if bans::remove(&db, &ip.to_string()).await? {
                println!("ban on {ip} lifted");
            } else {
                anyhow::bail!("{ip} is not banned");
            }
        }
    }
    db.close().await;
    Ok(())
}
