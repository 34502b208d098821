//! The `wharf` command line: argument definitions, config loading, and dispatch to one
//! module per command group.

mod admin;
mod audit;
mod ban;
mod events;
mod expect;
mod hostkey;
mod migrate;
mod pgp;
mod serve;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "wharf",
    version,
    about = "SFTP/FTPS ingestion gateway: partners upload, files land in S3, pipelines get an event"
)]
pub struct Cli {
    /// TOML config file (every key can also be set as WHARF_SECTION__KEY)
    #[arg(long, global = true, env = "WHARF_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (SFTP, and FTPS when configured) until SIGTERM/SIGINT
    Serve,
    /// Apply database migrations (every other command also does it)
    Migrate,
    /// Manage partner accounts
    #[command(subcommand)]
    User(user::UserCommand),
    /// Arrival events in the outbox
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// The server's SSH host keys
    #[command(subcommand)]
    Hostkey(HostkeyCommand),
    /// Expected arrivals: files a partner should send by a deadline, on a schedule
    #[command(subcommand)]
    Expect(expect::ExpectCommand),
    /// Addresses banned for repeated failed logins
    #[command(subcommand)]
    Ban(ban::BanCommand),
    /// PGP decryption keys of this deployment
    #[command(subcommand)]
    Pgp(pgp::PgpCommand),
    /// The admin API's tokens
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// The audit trail of every administrative change (CLI, admin API, bans)
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// (internal) decrypts one file under hard limits, for `serve`: see src/pgp/worker.rs
    #[command(name = "pgp-decrypt-worker", hide = true)]
    PgpDecryptWorker,
}

#[derive(Debug, Subcommand)]
pub enum HostkeyCommand {
    /// Print the SHA256 fingerprints of the host keys (creating them if missing)
    List,
}

/// Runs the CLI and turns any error into one line on stderr and a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::PgpDecryptWorker) {
        return crate::pgp::worker::main();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `a: b: c` on a single line, without repeating a cause already quoted in its context.
/// A key file's content, or standard input's with `-` (at most 1 MiB either way): shared by
/// `user key add` and `user pgp add`, so that neither command group imports the other.
fn read_input(file: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use std::io::Read as _;
    let mut s = String::new();
    if file == "-" {
        std::io::stdin()
            .take(1 << 20)
            .read_to_string(&mut s)
            .context("reading keys from standard input")?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(1 << 20).read_to_string(&mut s))
            .with_context(|| format!("cannot read key file {file}"))?;
    }
    Ok(s)
}

fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    let level = match cli.command {
        Command::Serve => config.log.level.clone(),
        _ => "warn".to_string(),
    };
    crate::telemetry::init(&config.log, &level);
    match cli.command {
        Command::Serve => serve::run(config).await,
        Command::Hostkey(HostkeyCommand::List) => hostkey::list(&config),
        Command::Events(cmd) => events::run(&config, cmd).await,
        Command::Migrate => migrate::run(&config).await,
        Command::User(cmd) => user::run(&config, cmd).await,
        Command::Ban(cmd) => ban::run(&config, cmd).await,
        Command::Expect(cmd) => expect::run(&config, cmd).await,
        Command::Pgp(cmd) => pgp::run(&config, cmd).await,
        Command::Admin(cmd) => admin::run(&config, cmd).await,
        Command::Audit(cmd) => audit::run(&config, cmd).await,
        Command::PgpDecryptWorker => Ok(()),
    }
}
