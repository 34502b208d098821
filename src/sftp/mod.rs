//! The SFTP front-end: russh transport and authentication (`server.rs`), host keys
//! (`hostkeys.rs`), packet framing (`framing.rs`), the request loop (`dispatch.rs`) and the
//! SFTP subsystem (`subsystem.rs`).

pub mod dispatch;
pub mod framing;
pub mod hostkeys;
pub mod server;
pub mod subsystem;

pub use server::{SftpContext, SftpServer};
