//! `wharf ban list | rm`: addresses banned for repeated failed logins.

use clap::Subcommand;

use crate::config::Config;
use crate::identity::audit::Actor;
use crate::identity::manage::Manager;

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
    let m = Manager::new(config);
    m.db().await?;
    match cmd {
        BanCommand::List { json } => {
            let active = m.bans().await?;
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
            let ip = m.lift_ban(&address, &Actor::cli()).await?;
            println!("ban on {ip} lifted");
        }
    }
    m.close().await;
    Ok(())
}
