//! wharf: an SFTP/FTPS ingestion gateway that streams partner uploads into S3 and emits
//! arrival events. The binary in `main.rs` is a thin shell over [`cli::main`].

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod db;
pub mod events;
pub mod ftps;
pub mod identity;
pub mod journal;
pub mod pgp;
pub mod scan;
pub mod session;
pub mod sftp;
pub mod storage;
pub mod telemetry;
pub mod testing;
