//! SFTP packet framing in front of russh-sftp: packets longer than the cap end the session
//! before anything is allocated for them, and request types russh-sftp cannot parse get an
//! OP_UNSUPPORTED reply with their own request id instead of a desynchronised stream.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

/// SSH_FXP_STATUS and SSH_FX_OP_UNSUPPORTED.
const FXP_STATUS: u8 = 101;
const FX_OP_UNSUPPORTED: u32 = 8;

/// Request types of SFTP v3 that russh-sftp decodes (INIT, OPEN … SYMLINK, EXTENDED).
fn is_known_request(t: u8) -> bool {
    matches!(t, 1 | 3..=20 | 200)
}

fn unsupported_reply(id: u32, t: u8) -> Vec<u8> {
    let msg = format!("SFTP request type {t} is not supported");
    let mut b = BytesMut::new();
    let body_len = 1 + 4 + 4 + 4 + msg.len() + 4 + 2;
    b.put_u32(body_len as u32);
    b.put_u8(FXP_STATUS);
    b.put_u32(id);
    b.put_u32(FX_OP_UNSUPPORTED);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg.as_bytes());
    b.put_u32(2);
    b.put_slice(b"en");
    b.to_vec()
}

/// Why the framing pump ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    PacketTooLong(u32),
    EmptyPacket,
}

/// Returns the stream russh-sftp should serve. `on_violation` is called (once) when the
/// client breaks the framing rules; the channel is closed either way.
pub fn capped<S>(
    channel: S,
    max_len: u32,
    on_violation: impl FnOnce(Violation) + Send + 'static,
) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (sftp_side, pump_side) = tokio::io::duplex(2 * max_len as usize);
    let (mut ch_rd, mut ch_wr) = tokio::io::split(channel);
    let (mut p_rd, mut p_wr) = tokio::io::split(pump_side);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
    let inject_tx = out_tx.clone();

    tokio::spawn(async move {
        let inbound = async move {
            let mut buf = BytesMut::new();
            while let Ok(len) = ch_rd.read_u32().await {
                if len == 0 || len > max_len {
                    on_violation(if len == 0 {
                        Violation::EmptyPacket
                    } else {
                        Violation::PacketTooLong(len)
                    });
                    break;
                }
                buf.clear();
                buf.reserve(len as usize);
                let mut rd = (&mut ch_rd).take(u64::from(len));
                while buf.len() < len as usize {
                    match rd.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                if buf.len() < len as usize {
                    break;
                }
                let t = buf[0];
                if !is_known_request(t) {
                    let id = buf
                        .get(1..5)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    if inject_tx.send(unsupported_reply(id, t)).await.is_err() {
                        break;
                    }
                    continue;
                }
                if p_wr.write_u32(len).await.is_err() || p_wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
            // russh-sftp ends its loop on EOF; dropping alone would not deliver one.
            let _ = p_wr.shutdown().await;
        };
        // russh-sftp's replies, whole packets at a time, so injected replies never split one.
        let replies = async move {
            while let Ok(len) = p_rd.read_u32().await {
                let mut packet = Vec::with_capacity(4 + len as usize);
                packet.extend_from_slice(&len.to_be_bytes());
                packet.resize(4 + len as usize, 0);
                if p_rd.read_exact(&mut packet[4..]).await.is_err()
                    || out_tx.send(packet).await.is_err()
                {
                    break;
                }
            }
        };
        let writer = async move {
            while let Some(packet) = out_rx.recv().await {
                if ch_wr.write_all(&packet).await.is_err() {
                    break;
                }
            }
            let _ = ch_wr.shutdown().await;
        };
        tokio::join!(inbound, replies, writer);
    });
    sftp_side
}
