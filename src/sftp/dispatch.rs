//! The SFTP request loop of one session, in place of russh-sftp's: reads packets through the
//! framing cap into a byte-bounded read-ahead queue, answers each request in order, and hands
//! a write's data to the upload pipeline as a slice of the packet it arrived in (no copy, no
//! serde).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use russh_sftp::protocol::{Packet, Status, StatusCode};
use russh_sftp::server::{Handler, StatusReply};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::framing::{self, Violation};
use super::subsystem::SftpHandler;

const FXP_WRITE: u8 = 6;
const FX_BAD_MESSAGE: u32 = 5;
const FX_FAILURE: u32 = 4;
const FX_OP_UNSUPPORTED: u32 = 8;

/// Requests read ahead of the one being answered, in bytes (each packet's length plus
/// `QUEUED_OVERHEAD`). While a reply waits for the client's SSH window, the client's window
/// adjustment can only reach russh after the requests sent before it have been taken off the
/// channel: without this queue a client that sends many reads before reading any reply
/// (paramiko's `get` asks for the whole file at once) deadlocks the session.
pub const REQUEST_QUEUE_BYTES: usize = 1 << 20;
/// Of that, what large requests (writes) may take: a write waiting for storage backpressure
/// then holds two more behind it, not four megabytes' worth.
pub const LARGE_REQUEST_QUEUE_BYTES: usize = 256 << 10;
/// Requests over this size count as large.
const LARGE_REQUEST: usize = 4096;
/// What one queued request costs beyond its bytes (allocation, queue slot).
const QUEUED_OVERHEAD: usize = 96;
/// How long a reply may wait for the client to read it while the read-ahead queue is full
/// before the session is ended (`Violation::RepliesNotRead`) instead of hanging.
const REPLY_STALL: Duration = Duration::from_secs(30);

enum Incoming {
    Packet(Bytes, Vec<OwnedSemaphorePermit>),
    Violation(Violation),
}

/// Takes `cost` from `pool`, noting in `full` while it has to wait.
async fn take(
    pool: &Arc<Semaphore>,
    cost: usize,
    full: &AtomicBool,
) -> Option<OwnedSemaphorePermit> {
    let cost = cost.min(u32::MAX as usize) as u32;
    match pool.clone().try_acquire_many_owned(cost) {
        Ok(p) => Some(p),
        Err(_) => {
            full.store(true, Ordering::Release);
            let p = pool.clone().acquire_many_owned(cost).await.ok();
            full.store(false, Ordering::Release);
            p
        }
    }
}

/// Serves SFTP on `stream` until the client ends it or breaks the framing rules
/// (`on_violation` is told which). Dropping `handler` at the end aborts any upload still open.
pub async fn serve<S>(
    stream: S,
    mut handler: SftpHandler,
    max_len: u32,
    on_violation: impl FnOnce(Violation),
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(REQUEST_QUEUE_BYTES));
    let large = Arc::new(Semaphore::new(LARGE_REQUEST_QUEUE_BYTES));
    let queue_full = Arc::new(AtomicBool::new(false));
    let full = queue_full.clone();
    // Reads requests while the loop below answers earlier ones; the byte budget bounds what
    // is held, and a full budget stops reading (backpressure to the SSH channel).
    let reader = tokio::spawn(async move {
        loop {
            let item = match framing::read_packet(&mut rd, max_len).await {
                Ok(Some(body)) => {
                    let cost = body.len() + QUEUED_OVERHEAD;
                    let mut held = Vec::with_capacity(2);
                    if body.len() > LARGE_REQUEST {
                        let Some(p) =
                            take(&large, cost.min(LARGE_REQUEST_QUEUE_BYTES), &full).await
                        else {
                            return;
                        };
                        held.push(p);
                    }
                    let Some(p) = take(&budget, cost.min(REQUEST_QUEUE_BYTES), &full).await else {
                        return;
                    };
                    held.push(p);
                    Incoming::Packet(body, held)
                }
                Ok(None) => return,
                Err(v) => Incoming::Violation(v),
            };
            let last = matches!(item, Incoming::Violation(_));
            if tx.send(item).is_err() || last {
                return;
            }
        }
    });
    while let Some(item) = rx.recv().await {
        let (body, held) = match item {
            Incoming::Packet(body, permit) => (body, permit),
            Incoming::Violation(v) => {
                on_violation(v);
                break;
            }
        };
        let reply = respond(&mut handler, body).await;
        drop(held);
        let sent = async { wr.write_all(&reply).await.and(wr.flush().await) };
        tokio::pin!(sent);
        let sent = loop {
            match tokio::time::timeout(REPLY_STALL, &mut sent).await {
                Ok(r) => break Some(r),
                Err(_) if queue_full.load(Ordering::Acquire) => break None,
                Err(_) => {}
            }
        };
        match sent {
            Some(Ok(())) => {}
            Some(Err(_)) => break,
            None => {
                on_violation(Violation::RepliesNotRead);
                break;
            }
        }
    }
    reader.abort();
    drop(handler);
    let _ = wr.shutdown().await;
}

/// The request id of a packet body, when it is long enough to have one.
fn request_id(body: &[u8]) -> u32 {
    body.get(1..5)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// A request as wharf sees it before answering it.
pub enum Request {
    /// SSH_FXP_WRITE, decoded by wharf with its data sliced out of the packet.
    Write(Write),
    /// Any other request type russh-sftp decodes.
    Other(Packet),
    /// A request type russh-sftp has no decoder for.
    Unsupported(u8),
    /// A known type whose body does not decode.
    Malformed,
}

/// Decodes a packet body (type byte onwards). Pure: the fuzz target drives it directly.
pub fn decode(mut body: Bytes) -> Request {
    let t = body[0];
    if t == FXP_WRITE {
        body.advance(1);
        return parse_write(body).map_or(Request::Malformed, Request::Write);
    }
    if !framing::is_known_request(t) {
        return Request::Unsupported(t);
    }
    Packet::try_from(&mut body).map_or(Request::Malformed, Request::Other)
}

async fn respond(handler: &mut SftpHandler, body: Bytes) -> Bytes {
    let id = request_id(&body);
    let packet = match decode(body) {
        Request::Write(w) => match handler.write_bytes(w.id, &w.handle, w.offset, w.data).await {
            Ok(s) => Packet::Status(s),
            Err(e) => status(w.id, e),
        },
        Request::Other(request) => process(handler, request).await,
        Request::Unsupported(t) => {
            let msg = format!("SFTP request type {t} is not supported");
            return framing::status_packet(id, FX_OP_UNSUPPORTED, &msg);
        }
        Request::Malformed => {
            return framing::status_packet(id, FX_BAD_MESSAGE, "malformed request")
        }
    };
    Bytes::try_from(packet)
        .unwrap_or_else(|_| framing::status_packet(id, FX_FAILURE, "reply could not be encoded"))
}

pub struct Write {
    pub id: u32,
    pub handle: String,
    pub offset: u64,
    pub data: Bytes,
}

/// SSH_FXP_WRITE after its type byte: id, handle, offset, data. Bytes after the data are
/// ignored, as OpenSSH's sftp-server does: Go's pkg/sftp (rclone and many Go tools) sends
/// concurrent writes in packets longer than their data. Data running past the packet is
/// refused.
fn parse_write(mut b: Bytes) -> Option<Write> {
    let id = b.try_get_u32().ok()?;
    let handle_len = b.try_get_u32().ok()? as usize;
    if b.remaining() < handle_len {
        return None;
    }
    let handle = String::from_utf8(b.split_to(handle_len).to_vec()).ok()?;
    let offset = b.try_get_u64().ok()?;
    let data_len = b.try_get_u32().ok()? as usize;
    if b.remaining() < data_len {
        return None;
    }
    Some(Write {
        id,
        handle,
        offset,
        data: b.split_to(data_len),
    })
}

fn status(id: u32, e: StatusReply) -> Packet {
    let StatusReply {
        status_code,
        error_message,
        language_tag,
    } = e;
    Packet::Status(Status {
        id,
        status_code,
        error_message: error_message.unwrap_or_else(|| status_code.to_string()),
        language_tag: language_tag.unwrap_or_else(|| "en-US".to_string()),
    })
}

/// Every other request, decoded by russh-sftp and answered by the `Handler` methods.
async fn process(h: &mut SftpHandler, request: Packet) -> Packet {
    let id = request.get_request_id();
    let result: Result<Packet, StatusReply> = match request {
        Packet::Init(p) => h.init(p.version, p.extensions).await.map(Into::into),
        Packet::Open(p) => h
            .open(p.id, p.filename, p.pflags, p.attrs)
            .await
            .map(Into::into),
        Packet::Close(p) => h.close(p.id, p.handle).await.map(Into::into),
        Packet::Read(p) => h
            .read(p.id, p.handle, p.offset, p.len)
            .await
            .map(Into::into),
        Packet::Write(p) => h
            .write(p.id, p.handle, p.offset, p.data)
            .await
            .map(Into::into),
        Packet::Lstat(p) => h.lstat(p.id, p.path).await.map(Into::into),
        Packet::Fstat(p) => h.fstat(p.id, p.handle).await.map(Into::into),
        Packet::SetStat(p) => h.setstat(p.id, p.path, p.attrs).await.map(Into::into),
        Packet::FSetStat(p) => h.fsetstat(p.id, p.handle, p.attrs).await.map(Into::into),
        Packet::OpenDir(p) => h.opendir(p.id, p.path).await.map(Into::into),
        Packet::ReadDir(p) => h.readdir(p.id, p.handle).await.map(Into::into),
        Packet::Remove(p) => h.remove(p.id, p.filename).await.map(Into::into),
        Packet::MkDir(p) => h.mkdir(p.id, p.path, p.attrs).await.map(Into::into),
        Packet::RmDir(p) => h.rmdir(p.id, p.path).await.map(Into::into),
        Packet::RealPath(p) => h.realpath(p.id, p.path).await.map(Into::into),
        Packet::Stat(p) => h.stat(p.id, p.path).await.map(Into::into),
        Packet::Rename(p) => h.rename(p.id, p.oldpath, p.newpath).await.map(Into::into),
        Packet::ReadLink(p) => h.readlink(p.id, p.path).await.map(Into::into),
        Packet::Symlink(p) => h
            .symlink(p.id, p.linkpath, p.targetpath)
            .await
            .map(Into::into),
        Packet::Extended(p) => h.extended(p.id, p.request, p.data).await,
        _ => Err(StatusCode::BadMessage.into()),
    };
    result.unwrap_or_else(|e| status(id, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn write_body(handle: &[u8], offset: u64, data: &[u8], extra: &[u8]) -> Bytes {
        let mut b = bytes::BytesMut::new();
        b.put_u32(7);
        b.put_u32(handle.len() as u32);
        b.put_slice(handle);
        b.put_u64(offset);
        b.put_u32(data.len() as u32);
        b.put_slice(data);
        b.put_slice(extra);
        b.freeze()
    }

    #[test]
    fn a_write_is_parsed_without_copying_its_data() {
        let body = write_body(b"12", 4096, b"settlement", b"");
        let w = parse_write(body.clone()).expect("well-formed");
        assert_eq!((w.id, w.handle.as_str(), w.offset), (7, "12", 4096));
        assert_eq!(&w.data[..], b"settlement");
        // The data is a view into the packet buffer, not a copy of it.
        assert_eq!(w.data.as_ptr(), body[body.len() - 10..].as_ptr());
    }

    #[test]
    fn malformed_writes_are_refused() {
        let good = write_body(b"1", 0, b"abc", b"");
        for cut in 0..good.len() {
            assert!(parse_write(good.slice(..cut)).is_none(), "cut at {cut}");
        }
        assert!(parse_write(write_body(b"\xff", 0, b"abc", b"")).is_none());
        // A declared data length longer than what the packet holds.
        let mut long = write_body(b"1", 0, b"abc", b"").to_vec();
        let at = long.len() - 7;
        long[at..at + 4].copy_from_slice(&4u32.to_be_bytes());
        assert!(parse_write(Bytes::from(long)).is_none());
    }

    #[test]
    fn bytes_after_a_writes_data_are_ignored() {
        let w = parse_write(write_body(b"1", 32768, b"abc", b"\0\0\0\0pad")).expect("lenient");
        assert_eq!((w.offset, &w.data[..]), (32768, &b"abc"[..]));
    }
}
