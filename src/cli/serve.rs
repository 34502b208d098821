//! `wharf serve`: run the gateway until SIGTERM/SIGINT.

use std::io::Write as _;

use crate::app::{shutdown_signal, App};
use crate::config::Config;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let app = App::build(config).await?;
    let addr = app.sftp_addr()?;
    tracing::info!(protocol = "sftp", %addr, "listening");
    // A stable line on stdout for scripts and tests that bind port 0.
    println!("sftp listening on {addr}");
    let _ = std::io::stdout().flush();
    app.run(shutdown_signal()).await
}
