//! Checksums a partner can ask for instead of downloading a file (FTPS `HASH` and `XSHA256`,
//! SFTP `check-file-name`/`check-file-handle`, SSH `sha256sum`/`sha1sum`): the SHA-256 recorded
//! when the file arrived, while it still describes what storage holds, otherwise a hash of the
//! file read back from storage. Reading back is bounded: `STREAMS_PER_CONNECTION` and
//! `MAX_STREAMS` at once (waiting at most `STREAM_WAIT` for a turn), `MAX_STREAMED_BYTES` per
//! request, one `BLOCK` in memory per stream.
//!
//! Who may ask: a folder's `download` permission allows any checksum (the partner could read
//! the bytes anyway). A folder with `list` but not `download` answers only the SHA-256 wharf
//! recorded for the file as it arrived: the partner learns the digest of what it sent itself,
//! never of content it may not read (a pipeline's file, a replaced object), and never makes
//! wharf read anything back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use super::fs::{storage, FsError, FsErrorKind};
use super::path::VirtualPath;
use super::{Mount, Session};
use crate::identity::Permission;

/// Files read back for hashing at once, per instance.
pub const MAX_STREAMS: usize = 4;
/// Files read back for hashing at once, per connection (an SSH connection's channels and exec
/// requests together; an FTPS control connection answers one command at a time anyway).
pub const STREAMS_PER_CONNECTION: usize = 1;
/// How long a request waits for its turn to read a file back before it is refused as busy.
pub const STREAM_WAIT: Duration = Duration::from_secs(30);
/// The most a single request may make wharf read back: past it, a clear refusal. A SHA-256
/// recorded at arrival is answered whatever the size.
pub const MAX_STREAMED_BYTES: u64 = 1 << 30;
/// The most per-block digests one request may ask for (SFTP `check-file` with a block size).
pub const MAX_BLOCK_HASHES: u64 = 1024;
/// The smallest block size `check-file` accepts (its draft's minimum).
pub const MIN_BLOCK_SIZE: u64 = 256;
/// What one read back holds in memory: one storage read of this size at a time.
const BLOCK: u32 = 4 << 20;

static STREAMS: Semaphore = Semaphore::const_new(MAX_STREAMS);

/// The hash algorithms wharf computes. SHA-256 is what wharf records at arrival; SHA-1 is
/// offered for clients that know no other (rclone's `sha1sum`, the FTP HASH draft's
/// mandatory algorithm) and is always computed by reading the file back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Sha256,
    Sha1,
}

impl Algo {
    pub const ALL: [Algo; 2] = [Algo::Sha256, Algo::Sha1];

    /// The IANA "Hash Function Textual Name" (FTP `HASH`, `FEAT`, `OPTS HASH`).
    pub fn iana(self) -> &'static str {
        match self {
            Algo::Sha256 => "SHA-256",
            Algo::Sha1 => "SHA-1",
        }
    }

    /// The name SFTP's `check-file` uses.
    pub fn sftp(self) -> &'static str {
        match self {
            Algo::Sha256 => "sha256",
            Algo::Sha1 => "sha1",
        }
    }

    /// The coreutils program that prints it.
    pub fn program(self) -> &'static str {
        match self {
            Algo::Sha256 => "sha256sum",
            Algo::Sha1 => "sha1sum",
        }
    }

    pub fn from_iana(name: &str) -> Option<Algo> {
        Algo::ALL
            .into_iter()
            .find(|a| a.iana().eq_ignore_ascii_case(name.trim()))
    }

    pub fn from_sftp(name: &str) -> Option<Algo> {
        Algo::ALL
            .into_iter()
            .find(|a| a.sftp().eq_ignore_ascii_case(name.trim()))
    }

    pub fn from_program(name: &str) -> Option<Algo> {
        Algo::ALL.into_iter().find(|a| a.program() == name)
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Algo::Sha256 => &digest::SHA256,
            Algo::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        }
    }

    /// A running hash of this algorithm.
    pub fn hasher(self) -> Hasher {
        Hasher(digest::Context::new(self.digest()))
    }
}

/// A running hash (of a client's stdin, say).
#[derive(Clone)]
pub struct Hasher(digest::Context);

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Vec<u8> {
        self.0.finish().as_ref().to_vec()
    }
}

/// Which bytes to hash: `len` bytes from `offset` (to the end when `None`, or when the file is
/// shorter), in one digest or one per `block` bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Part {
    pub offset: u64,
    pub len: Option<u64>,
    pub block: Option<u64>,
}

impl Part {
    /// The whole file, one digest.
    pub fn whole() -> Part {
        Part::default()
    }

    /// Whether this covers a file of `size` bytes whole, in one digest.
    fn is_whole(&self, size: u64) -> bool {
        self.offset == 0
            && self.len.is_none_or(|l| l >= size)
            && self.block.is_none_or(|b| b >= size)
    }
}

/// Where a checksum came from (the log's `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The SHA-256 recorded when the file arrived, checked against what storage holds.
    Arrival,
    /// The full-object SHA-256 storage keeps (an S3 object put in one request).
    Storage,
    /// The file read back from storage and hashed.
    Stream,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Arrival => "arrival",
            Source::Storage => "storage",
            Source::Stream => "stream",
        }
    }
}

/// A checksum answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algo: Algo,
    /// One digest over the bytes hashed, or one per block.
    pub digests: Vec<Vec<u8>>,
    /// The bytes hashed: `offset..end`.
    pub offset: u64,
    pub end: u64,
    pub source: Source,
    /// Files being read back on this instance when this one started (itself included; 0 when
    /// nothing was read back).
    pub streams_running: usize,
    /// How long the request waited for its turn to read the file back.
    pub waited_ms: u64,
    /// How long it held that turn, reading and hashing (0 when nothing was read back).
    pub read_ms: u64,
}

impl Checksum {
    /// The (first) digest in lower-case hex.
    pub fn hex(&self) -> String {
        self.digests.first().map(hex::encode).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumErrorKind {
    NotFound,
    Denied,
    /// A directory has no checksum.
    IsDirectory,
    /// The server is reading back as many files as it may; the client may retry.
    Busy,
    /// More than one request may make wharf read back.
    TooLarge,
    Failure,
}

impl ChecksumErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ChecksumErrorKind::NotFound => "not_found",
            ChecksumErrorKind::Denied => "denied",
            ChecksumErrorKind::IsDirectory => "is_directory",
            ChecksumErrorKind::Busy => "busy",
            ChecksumErrorKind::TooLarge => "too_large",
            ChecksumErrorKind::Failure => "failure",
        }
    }
}

/// Why a checksum was not answered. `message` is safe to show to the partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumError {
    pub kind: ChecksumErrorKind,
    pub message: String,
}

impl ChecksumError {
    fn new(kind: ChecksumErrorKind, message: impl Into<String>) -> Self {
        ChecksumError {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ChecksumError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ChecksumError {}

impl From<FsError> for ChecksumError {
    fn from(e: FsError) -> Self {
        let kind = match e.kind {
            FsErrorKind::NotFound => ChecksumErrorKind::NotFound,
            FsErrorKind::PermissionDenied => ChecksumErrorKind::Denied,
            FsErrorKind::Unsupported | FsErrorKind::Failure => ChecksumErrorKind::Failure,
        };
        ChecksumError::new(kind, e.message)
    }
}

/// One connection's turns at reading files back (`STREAMS_PER_CONNECTION`), shared by all its
/// sessions.
pub struct HashStreams(Arc<Semaphore>);

impl HashStreams {
    pub fn per_connection() -> Arc<HashStreams> {
        Arc::new(HashStreams(Arc::new(Semaphore::new(
            STREAMS_PER_CONNECTION,
        ))))
    }

    /// A turn on this connection and on the instance, waiting at most `STREAM_WAIT` in all.
    async fn turn(&self) -> Option<(OwnedSemaphorePermit, SemaphorePermit<'static>)> {
        tokio::time::timeout(STREAM_WAIT, async {
            let connection = self.0.clone().acquire_owned().await.ok()?;
            let instance = STREAMS.acquire().await.ok()?;
            Some((connection, instance))
        })
        .await
        .ok()
        .flatten()
    }
}

/// Files being read back for hashing on this instance now.
pub fn streams_running() -> usize {
    MAX_STREAMS - STREAMS.available_permits()
}

/// What storage holds at a path: its size and what identifies its content.
struct StoredFile {
    size: u64,
    etag: Option<String>,
    sha256: Option<String>,
}

impl Session {
    /// The `algo` checksum of `part` of the file at `path`, as the partner may have it: from
    /// the SHA-256 recorded at arrival when it still describes the stored file, else read back
    /// (one of `streams`' turns). Logged as `activity=CHECKSUM`.
    pub async fn checksum(
        &self,
        path: &VirtualPath,
        algo: Algo,
        part: Part,
        streams: &HashStreams,
    ) -> Result<Checksum, ChecksumError> {
        let started = Instant::now();
        let res = self.compute_checksum(path, algo, part, streams).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        match &res {
            Ok(c) => tracing::info!(parent: &self.span,
                activity = "CHECKSUM",
                path = %path,
                algorithm = algo.iana(),
                source = c.source.name(),
                offset = c.offset,
                bytes = c.end - c.offset,
                blocks = c.digests.len(),
                streams_running = c.streams_running,
                waited_ms = c.waited_ms,
                read_ms = c.read_ms,
                duration_ms,
            ),
            Err(e) => tracing::info!(parent: &self.span,
                activity = "CHECKSUM",
                path = %path,
                algorithm = algo.iana(),
                outcome = "refused",
                reason = e.kind.name(),
                error = %e.message,
                duration_ms,
            ),
        }
        res
    }

    async fn compute_checksum(
        &self,
        path: &VirtualPath,
        algo: Algo,
        part: Part,
        streams: &HashStreams,
    ) -> Result<Checksum, ChecksumError> {
        let (m, rel) = self.folder(path, "hashing")?;
        if rel.is_empty() {
            return Err(is_directory(path));
        }
        let may_read = m.permissions.has(Permission::Download);
        if !may_read && !m.permissions.has(Permission::List) {
            return Err(ChecksumError::new(
                ChecksumErrorKind::Denied,
                format!("{path}: permission denied: a checksum needs the download permission (or list, for a file as it arrived)"),
            ));
        }
        let stored = self.stored(m, &rel, path).await?;
        if algo == Algo::Sha256 && part.is_whole(stored.size) {
            if let Some(sha256) = self.arrival_digest(m, &rel, path, &stored).await {
                return Ok(whole(algo, &sha256, stored.size, Source::Arrival));
            }
            if let Some(sha256) = stored.sha256.as_deref().filter(|_| may_read) {
                return Ok(whole(algo, sha256, stored.size, Source::Storage));
            }
        }
        if !may_read {
            return Err(ChecksumError::new(
                ChecksumErrorKind::Denied,
                format!(
                    "{path}: permission denied: without the download permission, only the SHA-256 of a whole file as it arrived is answered{}",
                    if algo == Algo::Sha256 && part.is_whole(stored.size) {
                        " (wharf has no record of this file's content)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        self.read_back(m, &rel, path, algo, part, stored.size, streams)
            .await
    }

    /// Size, ETag and any full-object SHA-256 of the file at `rel` (a local file: its size
    /// only; reading it through is what `read_back` is bounded for).
    async fn stored(
        &self,
        m: &Mount,
        rel: &str,
        path: &VirtualPath,
    ) -> Result<StoredFile, ChecksumError> {
        if m.backend.remote() {
            if let Some(fp) = m
                .backend
                .fingerprint(rel)
                .await
                .map_err(|e| storage(e, path))?
            {
                return Ok(StoredFile {
                    size: fp.size,
                    etag: fp.etag,
                    sha256: fp.sha256,
                });
            }
            // No object: a directory (a prefix), or nothing.
            return match m.backend.stat(rel).await {
                Ok(meta) if meta.is_dir => Err(is_directory(path)),
                Ok(_) => Err(not_found(path)),
                Err(e) => Err(storage(e, path).into()),
            };
        }
        let meta = m.backend.stat(rel).await.map_err(|e| storage(e, path))?;
        if meta.is_dir {
            return Err(is_directory(path));
        }
        Ok(StoredFile {
            size: meta.size,
            etag: None,
            sha256: None,
        })
    }

    /// The SHA-256 the last arrival at `rel` recorded (for a temp name, the one its upload
    /// recorded for the rename that will make it arrive), when it still describes what storage
    /// holds: the same size and, on S3, the same ETag (or the object's own full SHA-256).
    /// Local files have no ETag: the size decides there.
    async fn arrival_digest(
        &self,
        m: &Mount,
        rel: &str,
        path: &VirtualPath,
        stored: &StoredFile,
    ) -> Option<String> {
        let location = m.backend.location(rel);
        let known = if self.ctx.observer.is_temp(&path.to_string()) {
            self.ctx.observer.staged(&location).await
        } else {
            self.ctx.observer.last_arrival(&location).await
        };
        let facts = match known {
            Ok(f) => f?,
            Err(e) => {
                tracing::warn!(parent: &self.span, activity = "ERROR", error = %e, "cannot read the recorded arrival; hashing from storage");
                return None;
            }
        };
        let same_content = if m.backend.remote() {
            (facts.etag.is_some() && facts.etag == stored.etag)
                || stored.sha256.as_deref() == Some(facts.sha256.as_str())
        } else {
            true
        };
        (facts.bytes == stored.size && same_content && facts.sha256.len() == 64)
            .then_some(facts.sha256)
    }

    /// Reads `part` of the file back from storage and hashes it, within the bounds.
    #[allow(clippy::too_many_arguments)]
    async fn read_back(
        &self,
        m: &Mount,
        rel: &str,
        path: &VirtualPath,
        algo: Algo,
        part: Part,
        size: u64,
        streams: &HashStreams,
    ) -> Result<Checksum, ChecksumError> {
        let offset = part.offset.min(size);
        let end = part
            .len
            .map_or(size, |l| offset.saturating_add(l).min(size));
        let len = end - offset;
        if len > MAX_STREAMED_BYTES {
            return Err(ChecksumError::new(
                ChecksumErrorKind::TooLarge,
                format!(
                    "{path}: {len} bytes is more than wharf reads back for a checksum ({MAX_STREAMED_BYTES} bytes at most){}",
                    if algo == Algo::Sha256 {
                        ""
                    } else {
                        "; the SHA-256 recorded at arrival is answered whatever the size"
                    }
                ),
            ));
        }
        let block = part.block.unwrap_or(len.max(1));
        if block < MIN_BLOCK_SIZE && part.block.is_some() {
            return Err(ChecksumError::new(
                ChecksumErrorKind::Failure,
                format!("block size {block} is too small (at least {MIN_BLOCK_SIZE})"),
            ));
        }
        if len.div_ceil(block) > MAX_BLOCK_HASHES {
            return Err(ChecksumError::new(
                ChecksumErrorKind::TooLarge,
                format!(
                    "{path}: {} blocks of {block} bytes; at most {MAX_BLOCK_HASHES} block checksums per request",
                    len.div_ceil(block)
                ),
            ));
        }
        let waiting = Instant::now();
        let Some(_turn) = streams.turn().await else {
            return Err(ChecksumError::new(
                ChecksumErrorKind::Busy,
                format!(
                    "{path}: the server is reading back as many files for checksums as it may ({MAX_STREAMS} at once, {STREAMS_PER_CONNECTION} per connection); try again later"
                ),
            ));
        };
        let running = streams_running();
        let waited_ms = waiting.elapsed().as_millis() as u64;
        let reading = Instant::now();
        let mut digests = Vec::new();
        let mut hash = algo.hasher();
        let mut pos = offset;
        // Where the current block ends.
        let mut block_end = offset.saturating_add(block).min(end);
        while pos < end {
            let want = (end - pos).min(u64::from(BLOCK)) as u32;
            let data = m
                .backend
                .read(rel, pos, want)
                .await
                .map_err(|e| storage(e, path))?;
            if data.is_empty() {
                return Err(ChecksumError::new(
                    ChecksumErrorKind::Failure,
                    format!("{path}: the file changed while it was read; try again"),
                ));
            }
            let mut rest = &data[..(data.len() as u64).min(end - pos) as usize];
            while !rest.is_empty() {
                let take = ((block_end - pos) as usize).min(rest.len());
                hash.update(&rest[..take]);
                rest = &rest[take..];
                pos += take as u64;
                if pos == block_end {
                    digests.push(std::mem::replace(&mut hash, algo.hasher()).finish());
                    block_end = pos.saturating_add(block).min(end);
                }
            }
        }
        if digests.is_empty() {
            // Nothing to read: the digest of no bytes (a whole empty file), as sha256sum says.
            digests.push(hash.finish());
        }
        Ok(Checksum {
            algo,
            digests,
            offset,
            end,
            source: Source::Stream,
            streams_running: running,
            waited_ms,
            read_ms: reading.elapsed().as_millis() as u64,
        })
    }
}

fn whole(algo: Algo, hex_digest: &str, size: u64, source: Source) -> Checksum {
    Checksum {
        algo,
        digests: vec![hex::decode(hex_digest).unwrap_or_default()],
        offset: 0,
        end: size,
        source,
        streams_running: 0,
        waited_ms: 0,
        read_ms: 0,
    }
}

fn is_directory(path: &VirtualPath) -> ChecksumError {
    ChecksumError::new(
        ChecksumErrorKind::IsDirectory,
        format!("{path}: is a directory"),
    )
}

fn not_found(path: &VirtualPath) -> ChecksumError {
    ChecksumError::new(
        ChecksumErrorKind::NotFound,
        format!("{path}: no such file or directory"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names() {
        assert_eq!(Algo::from_iana("sha-256"), Some(Algo::Sha256));
        assert_eq!(Algo::from_iana("SHA-1"), Some(Algo::Sha1));
        assert_eq!(Algo::from_iana("MD5"), None);
        assert_eq!(Algo::from_sftp(" sha256"), Some(Algo::Sha256));
        assert_eq!(Algo::from_sftp("md5"), None);
        assert_eq!(Algo::from_program("sha1sum"), Some(Algo::Sha1));
        assert_eq!(Algo::from_program("md5sum"), None);
    }

    #[test]
    fn digests_of_nothing_match_coreutils() {
        assert_eq!(
            hex::encode(Algo::Sha256.hasher().finish()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(Algo::Sha1.hasher().finish()),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
    }

    #[test]
    fn whole_parts() {
        assert!(Part::whole().is_whole(10));
        assert!(Part {
            len: Some(10),
            ..Part::default()
        }
        .is_whole(10));
        assert!(!Part {
            offset: 1,
            ..Part::default()
        }
        .is_whole(10));
        assert!(!Part {
            block: Some(256),
            ..Part::default()
        }
        .is_whole(1000));
    }
}
