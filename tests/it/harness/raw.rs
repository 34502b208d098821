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
    reply_within(r, Duration::from_secs(10)).await
}

/// `reply`, waiting up to `within` for it.
pub async fn reply_within<R: AsyncRead + Unpin>(r: &mut R, within: Duration) -> (u8, u32, Vec<u8>) {
    let mut len = [0u8; 4];
    tokio::time::timeout(within, r.read_exact(&mut len))
        .await
        .unwrap_or_else(|_| panic!("no reply within {within:?}"))
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
pub const FXP_OPENDIR: u8 = 11;
pub const FXP_READDIR: u8 = 12;
pub const FXP_NAME: u8 = 104;
pub const FXP_EXTENDED: u8 = 200;
pub const FXP_EXTENDED_REPLY: u8 = 201;

/// The INIT/VERSION exchange on a fresh sftp channel.
pub async fn init<S: AsyncRead + tokio::io::AsyncWrite + Unpin>(ch: &mut S) {
    use tokio::io::AsyncWriteExt as _;
    ch.write_all(&[0, 0, 0, 5, 1, 0, 0, 0, 3]).await.unwrap();
    let mut hdr = [0u8; 5];
    ch.read_exact(&mut hdr).await.unwrap();
    assert_eq!(hdr[4], 2, "expected SSH_FXP_VERSION");
    let mut rest = vec![0u8; u32::from_be_bytes(hdr[..4].try_into().unwrap()) as usize - 1];
    ch.read_exact(&mut rest).await.unwrap();
}

/// A status reply's code and message.
pub fn status(rest: &[u8]) -> (u32, String) {
    let code = u32::from_be_bytes(rest[..4].try_into().unwrap());
    let len = u32::from_be_bytes(rest[4..8].try_into().unwrap()) as usize;
    (
        code,
        String::from_utf8_lossy(&rest[8..8 + len]).into_owned(),
    )
}

/// OPEN of `name` for writing (WRITE|CREAT|TRUNC): the handle, or the status refusing it.
pub async fn open_write<S: AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ch: &mut S,
    id: u32,
    name: &[u8],
) -> Result<Vec<u8>, (u32, String)> {
    use tokio::io::AsyncWriteExt as _;
    let mut body = string(name);
    body.extend_from_slice(&0x1au32.to_be_bytes());
    body.extend_from_slice(&0u32.to_be_bytes());
    ch.write_all(&packet(FXP_OPEN, id, &body)).await.unwrap();
    let (t, rid, rest) = reply(ch).await;
    assert_eq!(rid, id);
    match t {
        FXP_HANDLE => {
            let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            Ok(rest[4..4 + n].to_vec())
        }
        FXP_STATUS => Err(status(&rest)),
        other => panic!("unexpected reply type {other}"),
    }
}

/// A WRITE packet's body for `handle`.
pub fn write_body(handle: &[u8], offset: u64, data: &[u8]) -> Vec<u8> {
    let mut body = string(handle);
    body.extend_from_slice(&offset.to_be_bytes());
    body.extend_from_slice(&string(data));
    body
}
