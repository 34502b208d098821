//! Hand-made SFTP packets, for what stock clients never send.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// One SFTP packet: length, type, request id, body.
pub fn packet(kind: u8, id: u32, body: &[u8]) -> Vec<u8> {
    let mut p = ((body.len() + 5) as u32).to_be_bytes().to_vec();
    p.push(kind);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(body);
    p
}

pub fn string(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// Reads one reply packet: (type, request id, rest).
pub async fn reply<R: AsyncRead + Unpin>(r: &mut R) -> (u8, u32, Vec<u8>) {
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), r.read_exact(&mut len))
        .await
        .expect("a reply within 10 s")
        .expect("session still open");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut body).await.unwrap();
    let id = u32::from_be_bytes(body[1..5].try_into().unwrap());
    (body[0], id, body[5..].to_vec())
}

pub const FXP_OPEN: u8 = 3;
pub const FXP_CLOSE: u8 = 4;
pub const FXP_WRITE: u8 = 6;
pub const FXP_MKDIR: u8 = 14;
pub const FXP_STAT: u8 = 17;
pub const FXP_STATUS: u8 = 101;
pub const FXP_HANDLE: u8 = 102;
pub const FXP_EXTENDED: u8 = 200;
pub const FXP_EXTENDED_REPLY: u8 = 201;
