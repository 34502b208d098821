//! libunftp's storage interface onto a wharf session: every FTP file operation goes through
//! the same jail, permissions, streaming upload pipeline and arrival events as SFTP, and the
//! `HASH`/`XSHA256` checksums through the session's (`session::checksum`).

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use unftp_core::storage::{
    Error, ErrorKind, FileHash, Fileinfo, ListKind, Metadata, Result, StorageBackend,
};

use super::FtpsUser;
use crate::session::checksum::{Algo, ChecksumError, ChecksumErrorKind, Part};
use crate::session::fs::{FsError, FsErrorKind};
use crate::session::path::VirtualPath;
use crate::session::Session;

/// Bytes read from the data connection before they are handed to the upload pipeline.
const CHUNK: usize = 256 << 10;

#[derive(Debug, Default)]
pub struct SessionStorage;

#[derive(Debug, Clone)]
pub struct Meta(crate::storage::Meta);

impl Metadata for Meta {
    fn len(&self) -> u64 {
        self.0.size
    }
    fn is_dir(&self) -> bool {
        self.0.is_dir
    }
    fn is_file(&self) -> bool {
        !self.0.is_dir
    }
    fn is_symlink(&self) -> bool {
        false
    }
    fn modified(&self) -> Result<SystemTime> {
        Ok(self.0.modified.unwrap_or(SystemTime::UNIX_EPOCH))
    }
    fn gid(&self) -> u32 {
        0
    }
    fn uid(&self) -> u32 {
        0
    }
}

fn ftp_err(e: FsError) -> Error {
    let kind = match e.kind {
        FsErrorKind::NotFound => ErrorKind::PermanentFileNotAvailable,
        FsErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        FsErrorKind::Unsupported => ErrorKind::CommandNotImplemented,
        FsErrorKind::Failure => ErrorKind::LocalError,
    };
    Error::new(kind, e)
}

/// A checksum refusal in the HASH draft's terms (see `StorageBackend::hash`).
fn hash_err(e: ChecksumError) -> Error {
    let kind = match e.kind {
        ChecksumErrorKind::NotFound => ErrorKind::PermanentFileNotAvailable,
        ChecksumErrorKind::Denied => ErrorKind::PermissionDenied,
        ChecksumErrorKind::IsDirectory => ErrorKind::FileNameNotAllowedError,
        ChecksumErrorKind::Busy => ErrorKind::TransientFileNotAvailable,
        ChecksumErrorKind::TooLarge => ErrorKind::RefusedByPolicy,
        ChecksumErrorKind::Failure => ErrorKind::LocalError,
    };
    Error::new(kind, e)
}

/// What `HASH` offers, SHA-256 (recorded at arrival) first.
const HASH_ALGORITHMS: [&str; 2] = ["SHA-256", "SHA-1"];

fn path_of(s: &Session, p: &Path) -> Result<VirtualPath> {
    let text = p.to_str().ok_or_else(|| {
        Error::new(
            ErrorKind::FileNameNotAllowedError,
            "file names must be UTF-8",
        )
    })?;
    s.resolve(text)
        .map_err(|e| Error::new(ErrorKind::FileNameNotAllowedError, e))
}

/// One page of a listing as the FTP command writes it, each line ending in CRLF.
fn listing_lines(page: &[crate::storage::DirEntry], kind: ListKind) -> bytes::Bytes {
    use std::fmt::Write as _;
    let mut out = String::new();
    for e in page {
        match kind {
            ListKind::List => {
                let info = Fileinfo {
                    path: PathBuf::from(&e.name),
                    metadata: Meta(e.meta.clone()),
                };
                let _ = write!(out, "{info}\r\n");
            }
            ListKind::Nlst => {
                let _ = write!(out, "{}\r\n", e.name);
            }
            ListKind::Mlsd => {
                // RFC 3659 facts, as libunftp writes them for MLST.
                let kind = if e.meta.is_dir { "dir" } else { "file" };
                let _ = write!(out, "type={kind};size={};", e.meta.size);
                if let Some(t) = e.meta.modified {
                    let t: chrono::DateTime<chrono::Utc> = t.into();
                    let _ = write!(out, "modify={};", t.format("%Y%m%d%H%M%S"));
                }
                let _ = write!(out, " {}\r\n", e.name);
            }
        }
    }
    bytes::Bytes::from(out)
}

#[async_trait]
impl StorageBackend<FtpsUser> for SessionStorage {
    type Metadata = Meta;

    fn hash_algorithms(&self) -> &'static [&'static str] {
        &HASH_ALGORITHMS
    }

    /// `HASH` and `XSHA256`: the session's checksum of the whole file (ended early when wharf
    /// ends the connection).
    async fn hash<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpsUser,
        path: P,
        algorithm: &str,
    ) -> Result<FileHash> {
        let s = &user.session;
        let p = path_of(s, path.as_ref())?;
        let algo = Algo::from_iana(algorithm)
            .ok_or_else(|| Error::from(ErrorKind::CommandNotImplemented))?;
        let sum = tokio::select! {
            r = s.checksum(&p, algo, Part::whole(), &user.streams) => r.map_err(hash_err)?,
            _ = user.cut.cancelled() => return Err(Error::from(ErrorKind::ConnectionClosed)),
        };
        Ok(FileHash {
            hex: sum.hex(),
            size: sum.end,
        })
    }

    async fn metadata<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpsUser,
        path: P,
    ) -> Result<Meta> {
        let s = &user.session;
        let p = path_of(s, path.as_ref())?;
        if p.is_root() {
            return Ok(Meta(crate::storage::Meta::dir()));
        }
        s.stat(&p).await.map(Meta).map_err(ftp_err)
    }

    async fn list<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpsUser,
        path: P,
    ) -> Result<Vec<Fileinfo<PathBuf, Meta>>> {
        let s = &user.session;
        let p = path_of(s, path.as_ref())?;
        let mut listing = s.open_dir(&p).await.map_err(ftp_err)?;
        let mut out = Vec::new();
        while let Some(page) = listing.next_entries().await.map_err(ftp_err)? {
            out.extend(page.into_iter().map(|e| Fileinfo {
                path: PathBuf::from(e.name),
                metadata: Meta(e.meta),
            }));
        }
        Ok(out)
    }

    /// LIST, NLST and MLSD as the data connection takes them: one page of the directory in
    /// memory at a time, the first lines sent after one storage request.
    async fn list_stream<P>(
        &self,
        user: &FtpsUser,
        path: P,
        kind: ListKind,
    ) -> Result<Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>>
    where
        P: AsRef<Path> + Send + Debug,
    {
        let s = &user.session;
        let p = path_of(s, path.as_ref())?;
        let listing = s.open_dir(&p).await.map_err(ftp_err)?;
        let pages = futures::stream::try_unfold(listing, move |mut l| async move {
            match l.next_entries().await {
                Ok(Some(page)) => Ok(Some((listing_lines(&page, kind), l))),
                Ok(None) => Ok(None),
                Err(e) => Err(std::io::Error::other(e.message)),
            }
        });
        Ok(Some(Box::new(tokio_util::io::StreamReader::new(Box::pin(
            pages,
        )))))
    }

    async fn get<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpsUser,
        path: P,
        start_pos: u64,
    ) -> Result<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        let s = user.session.clone();
        let p = path_of(&s, path.as_ref())?;
        let mut f = s.open_read(&p).await.map_err(ftp_err)?;
        // Streams the file through a pipe, one ranged read at a time.
        let (mut tx, rx) = tokio::io::duplex(CHUNK);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let mut offset = start_pos;
            loop {
                match s.read(&mut f, offset, CHUNK as u32).await {
                    Ok(b) if b.is_empty() => break,
                    Ok(b) => {
                        offset += b.len() as u64;
                        if tx.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            s.close_read(f).await;
            let _ = tx.shutdown().await;
        });
        Ok(Box::new(rx))
    }

    async fn put<P: AsRef<Path> + Send + Debug, R: AsyncRead + Send + Sync + Unpin + 'static>(
        &self,
        user: &FtpsUser,
        mut input: R,
        path: P,
        start_pos: u64,
    ) -> Result<u64> {
        let s = user.session.clone();
        let p = path_of(&s, path.as_ref())?;
        if start_pos != 0 {
            // REST before STOR, or APPE: uploads are streamed once, front to back.
            return Err(Error::new(
                ErrorKind::CommandNotImplemented,
                "resuming or appending to uploads is not supported: upload the whole file again",
            ));
        }
        // Dropped without a close (a cancelled transfer, a failed write), it aborts itself.
        let mut file = s.open_write(&p, false).await.map_err(ftp_err)?;
        let mut offset = 0u64;
        let mut eof = false;
        while !eof {
            // Each chunk is filled before it is handed on: a TLS read yields one record (at
            // most 16 KiB), and a chunk sent after one read would keep its whole allocation
            // alive for a fraction of the bytes the upload's budget counts.
            let mut buf = BytesMut::with_capacity(CHUNK);
            while buf.len() < CHUNK {
                let read = tokio::select! {
                    r = input.read_buf(&mut buf) => r,
                    _ = user.cut.cancelled() => {
                        s.abort_write(file, "partial_upload", "the server ended the connection (shutdown)")
                            .await;
                        return Err(Error::from(ErrorKind::ConnectionClosed));
                    }
                };
                match read {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // A TLS data connection cut without close_notify ends up here too.
                        s.abort_write(file, "partial_upload", &format!("data connection: {e}"))
                            .await;
                        return Err(Error::new(ErrorKind::ConnectionClosed, e));
                    }
                }
            }
            if buf.is_empty() {
                break;
            }
            let n = buf.len() as u64;
            s.write(&mut file, offset, buf.freeze())
                .await
                .map_err(ftp_err)?;
            offset += n;
        }
        s.close_write(file).await.map_err(ftp_err)?;
        Ok(offset)
    }

    async fn del<P: AsRef<Path> + Send + Debug>(&self, user: &FtpsUser, path: P) -> Result<()> {
        let s = &user.session;
        let p = path_of(s, path.as_ref())?;
        s.remove(&p).await.map_err(ftp_err)
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpsUser, path: P) -> Result<()> {
        let s = &user.session;
        let p = path_of(s, path.as_ref())?;
        s.mkdir(&p).await.map_err(ftp_err)
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpsUser,
        from: P,
        to: P,
    ) -> Result<()> {
        let s = &user.session;
        let (f, t) = (path_of(s, from.as_ref())?, path_of(s, to.as_ref())?);
        s.rename(&f, &t).await.map_err(ftp_err)
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpsUser, path: P) -> Result<()> {
        let s = &user.session;
        let p = path_of(s, path.as_ref())?;
        s.rmdir(&p).await.map_err(ftp_err)
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpsUser, path: P) -> Result<()> {
        let s = &user.session;
        let p = path_of(s, path.as_ref())?;
        if p.is_root() {
            return Ok(());
        }
        match s.stat(&p).await {
            Ok(m) if m.is_dir => Ok(()),
            Ok(_) => Err(Error::from(ErrorKind::PermanentDirectoryNotAvailable)),
            Err(e) => Err(ftp_err(e)),
        }
    }
}
