//! `wharf serve`: run the gateway until SIGTERM/SIGINT.

use std::io::Write as _;

use crate::app::{shutdown_signal, App};
use crate::config::{Config, LogFormat};

pub async fn run(config: Config) -> anyhow::Result<()> {
    let json = matches!(config.log.format, LogFormat::Json);
    let app = App::build(config).await?;
    // Stable lines on stdout for scripts and tests that bind port 0, sftp last; in JSON mode
    // they are JSON objects too, so every line the process prints parses.
    let announce = |what: &str, addr: std::net::SocketAddr| {
        if json {
            println!(
                "{}",
                serde_json::json!({"message": "listening", "listener": what, "addr": addr.to_string()})
            );
        } else {
            println!("{what} listening on {addr}");
        }
    };
    if let Some(addr) = app.metrics_addr() {
        let addr = addr?;
        tracing::info!(%addr, "metrics, /healthz and /readyz listening");
        announce("metrics", addr);
    }
    if let Some(addr) = app.ftps_addr() {
        let addr = addr?;
        tracing::info!(protocol = "ftps", %addr, "listening");
        announce("ftps", addr);
    }
    if let Some(addr) = app.ftps_implicit_addr() {
        let addr = addr?;
        tracing::info!(protocol = "ftps", %addr, "listening (implicit TLS)");
        announce("ftps-implicit", addr);
    }
    if let Some(addr) = app.admin_addr() {
        let addr = addr?;
        let scheme = if app.admin_tls() { "https" } else { "http" };
        tracing::info!(%addr, scheme, "admin API listening");
        announce("admin", addr);
    }
    let addr = app.sftp_addr()?;
    tracing::info!(protocol = "sftp", %addr, "listening");
    announce("sftp", addr);
    let _ = std::io::stdout().flush();
    app.run(shutdown_signal()).await
}
