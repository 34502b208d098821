//! `wharf expect add | list | status | rm`: expected arrivals (a partner's file due in each
//! window of a schedule, by a deadline).

use clap::Subcommand;

use crate::config::{ByteSize, Config, HumanDuration};
use crate::identity::audit::Actor;
use crate::identity::expectations::Expectation;
use crate::identity::manage::Manager;

#[derive(Debug, Subcommand)]
pub enum ExpectCommand {
    /// Expect a file from ACCOUNT in every window of SCHEDULE: met when a matching file
    /// arrives by the deadline, late at the deadline, missed at the end of the grace
    Add {
        name: String,
        /// The account the file comes from
        #[arg(long = "user", value_name = "ACCOUNT")]
        user: String,
        /// Only files in this folder (client path) count (default: anywhere in the account)
        #[arg(long, value_name = "VPATH")]
        folder: Option<String>,
        /// Glob on the file name, matched whatever the case (e.g. 'settlement_*.csv')
        #[arg(long, value_name = "GLOB")]
        pattern: String,
        /// When a window opens: cron (minute hour day month weekday, with an optional
        /// leading second), in --timezone
        #[arg(long, value_name = "CRON")]
        schedule: String,
        /// IANA time zone of the schedule and the deadline (e.g. Europe/Amsterdam)
        #[arg(long, value_name = "TZ")]
        timezone: String,
        /// How long after the window opens the file is due (wall-clock time: "by 06:00"
        /// stays 06:00 when the clocks change)
        #[arg(long, value_name = "DURATION")]
        deadline: HumanDuration,
        /// How long after the deadline a late file still meets the window before it is
        /// missed (default 0)
        #[arg(long, value_name = "DURATION")]
        grace: Option<HumanDuration>,
        /// Files needed to meet a window (default 1)
        #[arg(long, value_name = "N", default_value_t = 1)]
        min_files: u32,
        /// Smallest file that counts (e.g. 1KiB; default 0)
        #[arg(long, value_name = "SIZE")]
        min_bytes: Option<ByteSize>,
    },
    /// Expectations, with their schedules
    List {
        #[arg(long = "user", value_name = "ACCOUNT")]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Recent windows of every expectation (or of NAME): when each opened, its deadline, its
    /// state (open, met, late, missed) and the arrivals that met it
    Status {
        name: Option<String>,
        /// Windows per expectation (default 10)
        #[arg(long, default_value_t = 10)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Stop expecting (its windows go with it)
    Rm { name: String },
}

pub async fn run(config: &Config, cmd: ExpectCommand) -> anyhow::Result<()> {
    let m = Manager::new(config);
    // The database first, as always.
    m.db().await?;
    match cmd {
        ExpectCommand::Add {
            name,
            user,
            folder,
            pattern,
            schedule,
            timezone,
            deadline,
            grace,
            min_files,
            min_bytes,
        } => {
            let e = Expectation {
                name: name.clone(),
                username: user,
                folder,
                pattern,
                schedule,
                timezone,
                deadline: deadline.0,
                grace: grace.map(|g| g.0).unwrap_or_default(),
                min_files,
                min_bytes: min_bytes.map_or(0, |b| b.0),
                created_us: 0,
                windows_until_us: 0,
            };
            m.add_expectation(&e, &Actor::cli()).await?;
            eprintln!(
                "added expectation {name}: {} of {} by {} after {} ({}), grace {}",
                e.pattern,
                e.username,
                humantime::format_duration(e.deadline),
                e.schedule,
                e.timezone,
                humantime::format_duration(e.grace)
            );
        }
        ExpectCommand::List { user, json } => {
            let all = m.expectations(user.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no expectations");
            } else {
                for e in all {
                    println!(
                        "{}: {}{} {} — {} ({}), due {} after, grace {}, at least {} file(s) of {} bytes",
                        e.name,
                        e.username,
                        e.folder.as_deref().unwrap_or(""),
                        e.pattern,
                        e.schedule,
                        e.timezone,
                        humantime::format_duration(e.deadline),
                        humantime::format_duration(e.grace),
                        e.min_files,
                        e.min_bytes
                    );
                }
            }
        }
        ExpectCommand::Status { name, limit, json } => {
            let windows = m.expectation_status(name.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&windows)?);
            } else if windows.is_empty() {
                println!("no windows yet");
            } else {
                println!(
                    "{:<24} {:<22} {:<22} {:<8} MET BY",
                    "EXPECTATION", "OPENS", "DEADLINE", "STATE"
                );
                let t = |d: chrono::DateTime<chrono::Utc>| {
                    d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                };
                for w in windows {
                    let state = if w.state == "met" && w.late {
                        "met late".to_string()
                    } else {
                        w.state.clone()
                    };
                    println!(
                        "{:<24} {:<22} {:<22} {:<8} {}",
                        w.expectation,
                        t(w.opens_at),
                        t(w.deadline),
                        state,
                        w.met_by.join(",")
                    );
                }
            }
        }
        ExpectCommand::Rm { name } => {
            m.remove_expectation(&name, &Actor::cli()).await?;
            eprintln!("removed expectation {name}");
        }
    }
    m.close().await;
    Ok(())
}
