//! The SFTP subsystem: SFTP requests turned into `session::fs` calls, handles, status
//! codes, the OpenSSH extensions wharf offers (limits, posix-rename, fsync, statvfs) and
//! `check-file-name`/`check-file-handle` (checksums, `session::checksum`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use russh_sftp::server::StatusReply;

use crate::session::checksum::{Algo, ChecksumError, ChecksumErrorKind, HashStreams, Part};
use crate::session::{
    DirListing, FileSlot, FsError, FsErrorKind, ReadFile, Session, WriteFile, MAX_OPEN_FILES,
};
use crate::storage::{Capacity, Meta};

/// The largest SFTP packet a client may send (and the cap the framing enforces).
pub const MAX_PACKET_LEN: u32 = 256 * 1024;
/// Advertised in limits@openssh.com so OpenSSH clients send large writes instead of 32 KiB.
const MAX_WRITE_LEN: u64 = 255 * 1024;
const MAX_READ_LEN: u64 = 255 * 1024;
/// Directory entries per READDIR reply.
const READDIR_BATCH: usize = 128;

const POSIX_RENAME: &str = "posix-rename@openssh.com";
const FSYNC: &str = "fsync@openssh.com";
const STATVFS: &str = "statvfs@openssh.com";
const FSTATVFS: &str = "fstatvfs@openssh.com";
/// Refused with OP_UNSUPPORTED: object storage has neither hard links nor a copy that a
/// pipeline would not mistake for an arrival.
const HARDLINK: &str = "hardlink@openssh.com";
const COPY_DATA: &str = "copy-data";
/// Checksums (draft-ietf-secsh-filexfer-extensions-00, section 3), answered with
/// `check-file` replies.
const CHECK_FILE_NAME: &str = "check-file-name";
const CHECK_FILE_HANDLE: &str = "check-file-handle";

/// statvfs flags (as in OpenSSH's sftp-server).
const ST_RDONLY: u64 = 1;
const ST_NOSUID: u64 = 2;
/// What statvfs reports for storage without a capacity (S3): 1 PiB in 4 KiB blocks, free.
const UNLIMITED_BLOCKS: u64 = 1 << 38;

enum Open {
    Write(WriteFile),
    Read(ReadFile),
    /// A listing and what is left of its current page.
    Dir(DirListing, std::collections::VecDeque<File>),
}

pub struct SftpHandler {
    session: Arc<Session>,
    handles: HashMap<String, Open>,
    /// Each handle's place in the connection's `MAX_OPEN_FILES`, shared by its channels.
    slots: HashMap<String, FileSlot>,
    next_handle: u64,
    /// The connection's turns at reading files back for checksums.
    streams: Arc<HashStreams>,
}

impl SftpHandler {
    pub fn new(session: Arc<Session>, streams: Arc<HashStreams>) -> Self {
        SftpHandler {
            session,
            handles: HashMap::new(),
            slots: HashMap::new(),
            next_handle: 1,
            streams,
        }
    }

    /// A place for one more handle on this connection, or the refusal to send.
    fn slot(&self) -> Result<FileSlot, StatusReply> {
        self.session.quota.open_file().ok_or_else(|| {
            StatusCode::Failure.with_message(format!(
                "too many open files (at most {MAX_OPEN_FILES} per connection)"
            ))
        })
    }

    fn insert(&mut self, open: Open, slot: FileSlot) -> String {
        let h = self.next_handle.to_string();
        self.next_handle += 1;
        self.handles.insert(h.clone(), open);
        self.slots.insert(h.clone(), slot);
        h
    }

    fn remove(&mut self, handle: &str) -> Option<Open> {
        self.slots.remove(handle);
        self.handles.remove(handle)
    }

    /// SSH_FXP_WRITE with the data as it arrived (`dispatch` slices it out of the packet).
    pub async fn write_bytes(
        &mut self,
        id: u32,
        handle: &str,
        offset: u64,
        data: Bytes,
    ) -> Result<Status, StatusReply> {
        let Some(Open::Write(f)) = self.handles.get_mut(handle) else {
            return Err(bad_handle());
        };
        self.session.write(f, offset, data).await.map_err(reply)?;
        Ok(ok(id))
    }
}

fn reply(e: FsError) -> StatusReply {
    let code = match e.kind {
        FsErrorKind::NotFound => StatusCode::NoSuchFile,
        FsErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        FsErrorKind::Unsupported => StatusCode::OpUnsupported,
        FsErrorKind::Failure => StatusCode::Failure,
    };
    code.with_message(e.message)
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

fn bad_handle() -> StatusReply {
    StatusCode::Failure.with_message("invalid handle")
}

fn attrs(m: &Meta) -> FileAttributes {
    let mtime = m
        .modified
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32);
    FileAttributes {
        size: Some(m.size),
        uid: Some(0),
        gid: Some(0),
        permissions: Some(if m.is_dir { 0o040_755 } else { 0o100_644 }),
        atime: mtime,
        mtime,
        ..FileAttributes::empty()
    }
}

/// The statvfs@openssh.com reply: eleven uint64s, as OpenSSH's sftp-server sends them.
fn statvfs_reply(cap: Option<Capacity>, writable: bool) -> Vec<u8> {
    let c = cap.unwrap_or(Capacity {
        block_size: 4096,
        total: UNLIMITED_BLOCKS * 4096,
        free: UNLIMITED_BLOCKS * 4096,
        available: UNLIMITED_BLOCKS * 4096,
        files: UNLIMITED_BLOCKS,
        files_free: UNLIMITED_BLOCKS,
        name_max: 255,
    });
    let unit = c.block_size.max(1);
    let flag = ST_NOSUID | if writable { 0 } else { ST_RDONLY };
    [
        unit,
        unit,
        c.total / unit,
        c.free / unit,
        c.available / unit,
        c.files,
        c.files_free,
        c.files_free,
        0,
        flag,
        c.name_max,
    ]
    .iter()
    .flat_map(|v| v.to_be_bytes())
    .collect()
}

/// Reads one SSH string from an extended request's payload.
fn take_string(data: &mut &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let s = data.get(4..4usize.checked_add(len)?)?;
    *data = &data[4 + len..];
    String::from_utf8(s.to_vec()).ok()
}

fn take_u64(data: &mut &[u8]) -> Option<u64> {
    let v = u64::from_be_bytes(data.get(..8)?.try_into().ok()?);
    *data = &data[8..];
    Some(v)
}

fn take_u32(data: &mut &[u8]) -> Option<u32> {
    let v = u32::from_be_bytes(data.get(..4)?.try_into().ok()?);
    *data = &data[4..];
    Some(v)
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn checksum_reply(e: ChecksumError) -> StatusReply {
    let code = match e.kind {
        ChecksumErrorKind::NotFound => StatusCode::NoSuchFile,
        ChecksumErrorKind::Denied => StatusCode::PermissionDenied,
        ChecksumErrorKind::IsDirectory
        | ChecksumErrorKind::Busy
        | ChecksumErrorKind::TooLarge
        | ChecksumErrorKind::Failure => StatusCode::Failure,
    };
    code.with_message(e.message)
}

/// A `check-file-name`/`check-file-handle` request after its name.
struct CheckFile {
    target: String,
    algorithms: String,
    part: Part,
}

fn parse_check_file(data: &[u8]) -> Result<CheckFile, StatusReply> {
    let malformed = || StatusCode::BadMessage.with_message("malformed check-file request");
    let mut rest = data;
    let target = take_string(&mut rest).ok_or_else(malformed)?;
    let algorithms = take_string(&mut rest).ok_or_else(malformed)?;
    let offset = take_u64(&mut rest).ok_or_else(malformed)?;
    let len = take_u64(&mut rest).ok_or_else(malformed)?;
    let block = take_u32(&mut rest).ok_or_else(malformed)?;
    if block != 0 && u64::from(block) < crate::session::checksum::MIN_BLOCK_SIZE {
        return Err(StatusCode::BadMessage.with_message(format!(
            "block-size {block} is invalid: 0 (one checksum) or at least {}",
            crate::session::checksum::MIN_BLOCK_SIZE
        )));
    }
    Ok(CheckFile {
        target,
        algorithms,
        part: Part {
            offset,
            len: (len != 0).then_some(len),
            block: (block != 0).then_some(u64::from(block)),
        },
    })
}

impl russh_sftp::server::Handler for SftpHandler {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.with_message("operation not supported")
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        let mut v = Version::new();
        v.extensions
            .insert(russh_sftp::extensions::LIMITS.into(), "1".into());
        v.extensions.insert(POSIX_RENAME.into(), "1".into());
        v.extensions.insert(FSYNC.into(), "1".into());
        v.extensions.insert(STATVFS.into(), "2".into());
        v.extensions.insert(FSTATVFS.into(), "2".into());
        v.extensions.insert(CHECK_FILE_NAME.into(), "1".into());
        v.extensions.insert(CHECK_FILE_HANDLE.into(), "1".into());
        Ok(v)
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = self.session.resolve(&path).map_err(reply)?;
        Ok(Name {
            id,
            files: vec![File::dummy(p.to_string())],
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let p = self.session.resolve(&path).map_err(reply)?;
        let m = self.session.stat(&p).await.map_err(reply)?;
        Ok(Attrs {
            id,
            attrs: attrs(&m),
        })
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.stat(id, path).await
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let m = match self.handles.get(&handle) {
            Some(Open::Write(f)) => Meta {
                is_dir: false,
                size: f.received(),
                modified: Some(std::time::SystemTime::now()),
            },
            Some(Open::Read(f)) => Meta {
                is_dir: false,
                size: f.size,
                modified: None,
            },
            Some(Open::Dir(..)) => Meta::dir(),
            None => return Err(bad_handle()),
        };
        Ok(Attrs {
            id,
            attrs: attrs(&m),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let p = self.session.resolve(&path).map_err(reply)?;
        self.session.setstat(&p).map_err(reply)?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let p = match self.handles.get(&handle) {
            Some(Open::Write(f)) => f.path.clone(),
            Some(Open::Read(f)) => f.path.clone(),
            Some(Open::Dir(..)) => return Ok(ok(id)),
            None => return Err(bad_handle()),
        };
        self.session.setstat(&p).map_err(reply)?;
        Ok(ok(id))
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let p = self.session.resolve(&filename).map_err(reply)?;
        let slot = self.slot()?;
        let writing = pflags.intersects(
            OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE,
        );
        let open = if writing {
            if pflags.contains(OpenFlags::APPEND) {
                return Err(StatusCode::OpUnsupported
                    .with_message("appending to files is not supported; upload the whole file"));
            }
            let exclusive = pflags.contains(OpenFlags::EXCLUDE);
            Open::Write(
                self.session
                    .open_write(&p, exclusive)
                    .await
                    .map_err(reply)?,
            )
        } else {
            Open::Read(self.session.open_read(&p).await.map_err(reply)?)
        };
        Ok(Handle {
            id,
            handle: self.insert(open, slot),
        })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        self.write_bytes(id, &handle, offset, Bytes::from(data))
            .await
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let Some(Open::Read(f)) = self.handles.get_mut(&handle) else {
            return Err(bad_handle());
        };
        let len = len.min(MAX_READ_LEN as u32);
        let data = self.session.read(f, offset, len).await.map_err(reply)?;
        if data.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        Ok(Data {
            id,
            data: data.to_vec(),
        })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.remove(&handle) {
            Some(Open::Write(f)) => {
                self.session.close_write(f).await.map_err(reply)?;
                Ok(ok(id))
            }
            Some(Open::Read(f)) => {
                self.session.close_read(f).await;
                Ok(ok(id))
            }
            Some(_) => Ok(ok(id)),
            None => Err(bad_handle()),
        }
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let p = self.session.resolve(&path).map_err(reply)?;
        let slot = self.slot()?;
        let listing = self.session.open_dir(&p).await.map_err(reply)?;
        Ok(Handle {
            id,
            handle: self.insert(Open::Dir(listing, Default::default()), slot),
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir(listing, left)) = self.handles.get_mut(&handle) else {
            return Err(bad_handle());
        };
        // Pages are fetched as READDIR asks for them: a prefix of a million objects answers
        // its first READDIR after one ListObjectsV2.
        while left.is_empty() {
            match listing.next_entries().await.map_err(reply)? {
                Some(page) => {
                    left.extend(page.into_iter().map(|e| File::new(e.name, attrs(&e.meta))))
                }
                None => return Err(StatusCode::Eof.into()),
            }
        }
        let n = left.len().min(READDIR_BATCH);
        let files: Vec<File> = left.drain(..n).collect();
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let p = self.session.resolve(&filename).map_err(reply)?;
        self.session.remove(&p).await.map_err(reply)?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let p = self.session.resolve(&path).map_err(reply)?;
        self.session.mkdir(&p).await.map_err(reply)?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let p = self.session.resolve(&path).map_err(reply)?;
        self.session.rmdir(&p).await.map_err(reply)?;
        Ok(ok(id))
    }

    /// SFTP v3 RENAME: refuses to replace an existing file (posix-rename does replace).
    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let from = self.session.resolve(&oldpath).map_err(reply)?;
        let to = self.session.resolve(&newpath).map_err(reply)?;
        if from != to && self.session.stat(&to).await.is_ok() {
            return Err(StatusCode::Failure.with_message(format!("{to}: already exists")));
        }
        self.session.rename(&from, &to).await.map_err(reply)?;
        Ok(ok(id))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        match request.as_str() {
            russh_sftp::extensions::LIMITS => {
                let limits = russh_sftp::extensions::LimitsExtension {
                    max_packet_len: u64::from(MAX_PACKET_LEN),
                    max_read_len: MAX_READ_LEN,
                    max_write_len: MAX_WRITE_LEN,
                    max_open_handles: MAX_OPEN_FILES as u64,
                };
                let data = russh_sftp::ser::to_bytes(&limits)
                    .map_err(|_| StatusCode::Failure.with_message("encoding limits"))?
                    .to_vec();
                Ok(Packet::ExtendedReply(ExtendedReply { id, data }))
            }
            POSIX_RENAME => {
                let mut rest = data.as_slice();
                let (Some(old), Some(new)) = (take_string(&mut rest), take_string(&mut rest))
                else {
                    return Err(StatusCode::BadMessage.with_message("malformed posix-rename"));
                };
                let from = self.session.resolve(&old).map_err(reply)?;
                let to = self.session.resolve(&new).map_err(reply)?;
                self.session.rename(&from, &to).await.map_err(reply)?;
                Ok(Packet::Status(ok(id)))
            }
            FSYNC => {
                let mut rest = data.as_slice();
                let Some(handle) = take_string(&mut rest) else {
                    return Err(StatusCode::BadMessage.with_message("malformed fsync"));
                };
                match self.handles.get_mut(&handle) {
                    Some(Open::Write(f)) => self.session.sync(f).await.map_err(reply)?,
                    Some(_) => {}
                    None => return Err(bad_handle()),
                }
                Ok(Packet::Status(ok(id)))
            }
            STATVFS | FSTATVFS => {
                let mut rest = data.as_slice();
                let Some(target) = take_string(&mut rest) else {
                    return Err(StatusCode::BadMessage.with_message("malformed statvfs"));
                };
                if request == STATVFS {
                    let p = self.session.resolve(&target).map_err(reply)?;
                    self.session.stat(&p).await.map_err(reply)?;
                } else if !self.handles.contains_key(&target) {
                    return Err(bad_handle());
                }
                let cap = self.session.capacity().await.map_err(reply)?;
                Ok(Packet::ExtendedReply(ExtendedReply {
                    id,
                    data: statvfs_reply(cap, self.session.can_upload()),
                }))
            }
            CHECK_FILE_NAME | CHECK_FILE_HANDLE => self.check_file(id, &request, &data).await,
            HARDLINK => Err(StatusCode::OpUnsupported
                .with_message("hard links are not supported: upload the file under each name")),
            COPY_DATA => Err(StatusCode::OpUnsupported
                .with_message("server-side copies are not supported: upload the file again")),
            other => Err(StatusCode::OpUnsupported
                .with_message(format!("extension {other} is not supported"))),
        }
    }
}

impl SftpHandler {
    /// `check-file-name`/`check-file-handle`: the first algorithm of the client's list that
    /// wharf computes, over the range (and blocks) asked for, in a `check-file` reply: its
    /// name, then the digests back to back.
    async fn check_file(
        &mut self,
        id: u32,
        request: &str,
        data: &[u8],
    ) -> Result<Packet, StatusReply> {
        let req = parse_check_file(data)?;
        let path = if request == CHECK_FILE_NAME {
            self.session.resolve(&req.target).map_err(reply)?
        } else {
            match self.handles.get(&req.target) {
                Some(Open::Read(f)) => f.path.clone(),
                Some(_) => {
                    return Err(StatusCode::PermissionDenied
                        .with_message("check-file-handle needs a file opened for reading"))
                }
                None => return Err(bad_handle()),
            }
        };
        let Some(algo) = req.algorithms.split(',').find_map(Algo::from_sftp) else {
            let offered: Vec<&str> = Algo::ALL.iter().map(|a| a.sftp()).collect();
            return Err(StatusCode::OpUnsupported.with_message(format!(
                "none of the hash algorithms {:?} is offered: wharf computes {}",
                req.algorithms,
                offered.join(",")
            )));
        };
        let sum = self
            .session
            .checksum(&path, algo, req.part, &self.streams)
            .await
            .map_err(checksum_reply)?;
        let mut out = Vec::with_capacity(64 + sum.digests.len() * 32);
        put_string(&mut out, b"check-file");
        put_string(&mut out, algo.sftp().as_bytes());
        for d in &sum.digests {
            out.extend_from_slice(d);
        }
        Ok(Packet::ExtendedReply(ExtendedReply { id, data: out }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &[u8], algos: &[u8], offset: u64, len: u64, block: u32) -> Vec<u8> {
        let mut v = Vec::new();
        put_string(&mut v, target);
        put_string(&mut v, algos);
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&block.to_be_bytes());
        v
    }

    #[test]
    fn check_file_requests_are_parsed() {
        let r = parse_check_file(&request(b"/in/a.csv", b"md5,sha256", 0, 0, 0)).unwrap();
        assert_eq!(
            (r.target.as_str(), r.algorithms.as_str()),
            ("/in/a.csv", "md5,sha256")
        );
        assert_eq!(r.part, Part::whole());
        let r = parse_check_file(&request(b"x", b"sha1", 10, 20, 256)).unwrap();
        assert_eq!(
            r.part,
            Part {
                offset: 10,
                len: Some(20),
                block: Some(256)
            }
        );
        assert!(parse_check_file(&request(b"x", b"sha1", 0, 0, 255)).is_err());
        let good = request(b"x", b"sha1", 0, 0, 0);
        for cut in 0..good.len() {
            assert!(parse_check_file(&good[..cut]).is_err(), "cut at {cut}");
        }
        // A string length running past the packet (or past usize) is malformed, not a panic.
        assert!(parse_check_file(&[0xff, 0xff, 0xff, 0xff, 0]).is_err());
    }
}
