//! `wharf events list`, `wharf events arrivals` and `wharf events replay`: what the outbox
//! holds, the files that arrived, and delivering events again.

use clap::Subcommand;

use crate::config::Config;
use crate::events::query::{ArrivalFilter, EventFilter};
use crate::identity::audit::Actor;
use crate::identity::manage::{parse_time, Manager, ReplayRequest};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List events, newest first, with their delivery state per sink
    List {
        /// Only events that some sink has not received yet
        #[arg(long)]
        pending: bool,
        /// Only events at or after this time (RFC 3339)
        #[arg(long, value_name = "RFC3339")]
        since: Option<String>,
        /// Only events before this time (RFC 3339)
        #[arg(long, value_name = "RFC3339")]
        until: Option<String>,
        /// Only this account's events
        #[arg(long = "user", value_name = "ACCOUNT")]
        user: Option<String>,
        /// Only events of this type (e.g. wharf.upload.completed)
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Files that arrived (uploads completed, renames onto final names, decrypted
    /// plaintexts), newest first, while their events are kept (events.retention)
    Arrivals {
        #[arg(long = "user", value_name = "ACCOUNT")]
        user: Option<String>,
        /// Only files in this folder (client path) or below
        #[arg(long, value_name = "VPATH")]
        folder: Option<String>,
        /// Glob on the file name, matched whatever the case (e.g. 'settlement_*.csv')
        #[arg(long, value_name = "GLOB")]
        pattern: Option<String>,
        /// Arrived at or after this time (RFC 3339)
        #[arg(long, value_name = "RFC3339")]
        since: Option<String>,
        /// Arrived before this time (RFC 3339)
        #[arg(long, value_name = "RFC3339")]
        until: Option<String>,
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Deliver events again (running servers pick them up)
    Replay {
        /// The event with this id
        #[arg(
            long,
            value_name = "ID",
            conflicts_with = "since",
            required_unless_present = "since"
        )]
        id: Option<String>,
        /// Every event at or after this time (RFC 3339)
        #[arg(long, value_name = "RFC3339")]
        since: Option<String>,
        /// Only to this sink (default: every configured sink)
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
    },
}

pub async fn run(config: &Config, cmd: EventsCommand) -> anyhow::Result<()> {
    let m = Manager::new(config);
    match cmd {
        EventsCommand::List {
            pending,
            since,
            until,
            user,
            kind,
            limit,
            json,
        } => {
            let filter = EventFilter {
                pending,
                since: since.as_deref().map(parse_time).transpose()?,
                until: until.as_deref().map(parse_time).transpose()?,
                username: user,
                kind,
                before: None,
            };
            let events = m.events(&filter, limit).await?;
            if json {
                let v: Vec<_> = events
                    .iter()
                    .map(|(_, e)| serde_json::to_value(e).unwrap_or_default())
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if events.is_empty() {
                eprintln!("no events");
            } else {
                println!(
                    "{:<24} {:<36} {:<23} {:<16} {:<30} DELIVERIES",
                    "TIME", "ID", "TYPE", "USER", "SUBJECT"
                );
                for (_, e) in &events {
                    let d: Vec<String> = e
                        .deliveries
                        .iter()
                        .map(|d| format!("{}:{}", d.sink, d.state))
                        .collect();
                    println!(
                        "{:<24} {:<36} {:<23} {:<16} {:<30} {}",
                        e.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                        e.id,
                        e.kind,
                        e.username,
                        e.subject,
                        d.join(" ")
                    );
                }
            }
        }
        EventsCommand::Arrivals {
            user,
            folder,
            pattern,
            since,
            until,
            limit,
            json,
        } => {
            let filter = ArrivalFilter {
                username: user,
                folder,
                pattern,
                since: since.as_deref().map(parse_time).transpose()?,
                until: until.as_deref().map(parse_time).transpose()?,
                before: None,
            };
            let (found, more) = m.arrivals(&filter, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else if found.is_empty() {
                eprintln!("no arrivals");
            } else {
                println!(
                    "{:<24} {:<16} {:<40} {:>12} SHA256",
                    "TIME", "USER", "PATH", "BYTES"
                );
                for a in &found {
                    println!(
                        "{:<24} {:<16} {:<40} {:>12} {}",
                        a.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                        a.username,
                        a.path,
                        a.bytes.map(|b| b.to_string()).unwrap_or_default(),
                        a.sha256.as_deref().unwrap_or("")
                    );
                }
            }
            if more.is_some() {
                eprintln!("(more may match: narrow --since/--until or raise --limit)");
            }
        }
        EventsCommand::Replay { id, since, sink } => {
            let req = ReplayRequest { id, since, sink };
            let (n, targets) = m.replay(&req, &Actor::cli()).await?;
            if n == 0 {
                eprintln!("no events since then");
            } else {
                eprintln!("queued {n} deliveries again ({})", targets.join(", "));
            }
        }
    }
    m.close().await;
    Ok(())
}
