//! `wharf events list` and `wharf events replay`: what the outbox holds, and delivering
//! events again.

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde_json::json;

use crate::config::Config;
use crate::db::Db;
use crate::events::outbox::Outbox;
use crate::events::sinks;

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

fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| {
            format!("invalid time {s:?}: expected RFC 3339, e.g. 2026-11-26T09:00:00Z")
        })
}

pub async fn run(config: &Config, cmd: EventsCommand) -> anyhow::Result<()> {
    let sink_names: Vec<String> = sinks::configured(config.events.sinks.as_deref())
        .iter()
        .map(sinks::sink_name)
        .collect();
    match cmd {
        EventsCommand::List {
            pending,
            since,
            limit,
            json,
        } => {
            let since = since.as_deref().map(parse_time).transpose()?;
            if limit < 1 {
                bail!("--limit must be at least 1");
            }
            let outbox = Outbox::new(Db::open(&config.database).await?, sink_names);
            let events = outbox.list(pending, since, limit).await?;
            if json {
                let v: Vec<_> = events
                    .iter()
                    .map(|l| {
                        json!({
                            "id": l.event.id,
                            "type": l.event.kind,
                            "subject": l.event.subject,
                            "username": l.event.username,
                            "time": l.event.time,
                            "deliveries": l.deliveries.iter().map(|d| json!({
                                "sink": d.sink,
                                "state": d.state,
                                "attempts": d.attempts,
                                "last_error": d.last_error,
                                "delivered_at": d.delivered_at,
                            })).collect::<Vec<_>>(),
                            "event": serde_json::from_str::<serde_json::Value>(&l.event.body).unwrap_or_default(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if events.is_empty() {
                eprintln!("no events");
            } else {
                println!(
                    "{:<24} {:<36} {:<23} {:<16} {:<30} DELIVERIES",
                    "TIME", "ID", "TYPE", "USER", "SUBJECT"
                );
                for l in &events {
                    let d: Vec<String> = l
                        .deliveries
                        .iter()
                        .map(|d| format!("{}:{}", d.sink, d.state))
                        .collect();
                    println!(
                        "{:<24} {:<36} {:<23} {:<16} {:<30} {}",
                        l.event.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                        l.event.id,
                        l.event.kind,
                        l.event.username,
                        l.event.subject,
                        d.join(" ")
                    );
                }
            }
        }
        EventsCommand::Replay { id, since, sink } => {
            let since = since.as_deref().map(parse_time).transpose()?;
            let targets = match sink {
                Some(s) if !sink_names.contains(&s) => {
                    bail!(
                        "unknown sink {s:?}; configured sinks: {}",
                        sink_names.join(", ")
                    )
                }
                Some(s) => vec![s],
                None => sink_names.clone(),
            };
            let outbox = Outbox::new(Db::open(&config.database).await?, sink_names);
            let n = outbox.replay(id.as_deref(), since, &targets).await?;
            if n == 0 {
                match id {
                    Some(id) => bail!("no event with id {id:?}"),
                    None => eprintln!("no events since then"),
                }
            } else {
                eprintln!("queued {n} deliveries again ({})", targets.join(", "));
            }
        }
    }
    Ok(())
}
