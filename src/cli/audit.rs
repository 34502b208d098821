//! `wharf audit list|verify|prune`: the audit trail of administrative changes.

use std::io::Write as _;

use anyhow::{bail, Context as _};
use clap::Subcommand;

use crate::config::Config;
use crate::identity::audit::{Actor, Filter};
use crate::identity::manage::{parse_time, Manager};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Every change recorded, oldest first: time, actor, action, target, changed fields
    List {
        /// Only changes at or after this time (RFC 3339)
        #[arg(long, value_name = "RFC3339")]
        since: Option<String>,
        /// Only changes by this actor (cli:USER@HOST, token:NAME, server:HOST)
        #[arg(long, value_name = "ACTOR")]
        actor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain: reports the first row changed, deleted or inserted out of order
    /// (and exits non-zero); on success prints the chain's end to keep elsewhere
    Verify {
        /// A chain end printed by an earlier verify (SEQ:HASH): the chain must still hold it
        #[arg(long, value_name = "SEQ:HASH")]
        checkpoint: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove rows older than audit.retention now (serve does it every hour), re-anchoring
    /// the chain
    Prune,
}

/// Rows fetched per query while listing.
const PAGE: i64 = 1000;

pub async fn run(config: &Config, cmd: AuditCommand) -> anyhow::Result<()> {
    let m = Manager::new(config);
    match cmd {
        AuditCommand::List { since, actor, json } => {
            let mut filter = Filter {
                since: since.as_deref().map(parse_time).transpose()?,
                actor,
                after: None,
            };
            let mut out = std::io::stdout().lock();
            let mut first = true;
            if json {
                write!(out, "[")?;
            }
            loop {
                let rows = m.audit(&filter, PAGE).await?;
                let Some(last) = rows.last() else { break };
                filter.after = Some(last.seq);
                for r in &rows {
                    if json {
                        let sep = if first { "\n" } else { ",\n" };
                        write!(out, "{sep}  {}", serde_json::to_string(r)?)?;
                    } else {
                        writeln!(
                            out,
                            "{:>6} {} {:<28} {:<18} {:<28} {}",
                            r.seq,
                            r.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            r.actor,
                            r.action,
                            r.target,
                            r.changes
                        )?;
                    }
                    first = false;
                }
            }
            if json {
                writeln!(out, "{}]", if first { "" } else { "\n" })?;
            } else if first {
                eprintln!("no audit records");
            }
        }
        AuditCommand::Verify { checkpoint, json } => {
            let checkpoint = checkpoint
                .map(|c| {
                    let (seq, hash) = c.split_once(':').context("expected SEQ:HASH")?;
                    let seq: i64 = seq.parse().context("expected SEQ:HASH")?;
                    anyhow::Ok((seq, hash.to_ascii_lowercase()))
                })
                .transpose()
                .context("invalid --checkpoint")?;
            let report = m.verify_audit(checkpoint).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            if let Some(p) = &report.problem {
                bail!("audit trail broken at row {}: {}", p.seq, p.message);
            }
            if !json {
                println!(
                    "audit trail intact: {} row(s){}; chain end {}:{}",
                    report.rows,
                    match (&report.first_seq, &report.anchor) {
                        (Some(f), _) => format!(" from row {f}"),
                        (None, _) => String::new(),
                    },
                    report.head_seq,
                    report.head_hash
                );
            }
        }
        AuditCommand::Prune => match m.prune_audit(&Actor::cli()).await? {
            Some(p) => eprintln!(
                "pruned {} row(s) through row {} (the chain now starts after {}:{})",
                p.rows, p.through_seq, p.through_seq, p.anchor_hash
            ),
            None => eprintln!("nothing older than audit.retention"),
        },
    }
    m.close().await;
    Ok(())
}
