//! The SFTP front-end: russh transport and authentication (`server.rs`), host keys
//! (`hostkeys.rs`), packet framing (`framing.rs`), the request loop (`dispatch.rs`), the
//! SFTP subsystem (`subsystem.rs`) and the checksum commands SSH exec answers (`exec.rs`).

pub mod dispatch;
pub mod exec;
pub mod framing;
pub mod hostkeys;
pub mod server;
pub mod subsystem;

pub use server::{SftpContext, SftpServer};
