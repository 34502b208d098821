//! SFTP packet framing: whole packets read off the channel, a packet longer than the cap
//! ending the session before anything is allocated for it, and status replies built without
//! serde (for requests that do not decode).

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// SSH_FXP_STATUS.
const FXP_STATUS: u8 = 101;

/// Why the framing ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    PacketTooLong(u32),
    EmptyPacket,
    /// The read-ahead queue is full and the client has not taken a reply off the channel for
    /// `REPLY_STALL`: it will never read the replies its requests are waiting behind.
    RepliesNotRead,
}

impl Violation {
    /// What the client is told when it is disconnected.
    pub fn describe(self) -> &'static str {
        match self {
            Violation::PacketTooLong(_) => "SFTP packet too long",
            Violation::EmptyPacket => "empty SFTP packet",
            Violation::RepliesNotRead => "too many SFTP requests sent without reading the replies",
        }
    }
}

/// Request types of SFTP v3 that russh-sftp decodes (INIT, OPEN … SYMLINK, EXTENDED).
pub fn is_known_request(t: u8) -> bool {
    matches!(t, 1 | 3..=20 | 200)
}

/// Reads the next packet's body (type byte onwards) into a buffer of exactly its length, so
/// a write's data can be handed on as a slice of it. `Ok(None)` at the end of the stream,
/// including one that ends inside a packet.
pub async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    max_len: u32,
) -> Result<Option<Bytes>, Violation> {
    let Ok(len) = rd.read_u32().await else {
        return Ok(None);
    };
    if len == 0 {
        return Err(Violation::EmptyPacket);
    }
    if len > max_len {
        return Err(Violation::PacketTooLong(len));
    }
    let len = len as usize;
    let mut buf = BytesMut::with_capacity(len);
    let mut body = rd.take(len as u64);
    while buf.len() < len {
        match body.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
    Ok(Some(buf.freeze()))
}

/// An SSH_FXP_STATUS packet, length prefix included.
pub fn status_packet(id: u32, code: u32, msg: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + 1 + 4 + 4 + 4 + msg.len() + 4 + 2);
    let body_len = 1 + 4 + 4 + 4 + msg.len() + 4 + 2;
    b.put_u32(body_len as u32);
    b.put_u8(FXP_STATUS);
    b.put_u32(id);
    b.put_u32(code);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg.as_bytes());
    b.put_u32(2);
    b.put_slice(b"en");
    b.freeze()
}
