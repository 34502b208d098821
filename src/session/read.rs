//! The read side of a session: a file open for download, read ahead in blocks (the next ones
//! fetched while the current one is sent, within a process-wide budget), and the download
//! event its end makes (completed with the SHA-256 of what was sent in order, or failed when
//! the client stopped short).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::fs::{storage, FsError, FsErrorKind};
use super::path::VirtualPath;
use super::{Session, UploadOutcome, UploadRecord};
use crate::identity::Permission;
use crate::storage::{Location, Stored};

/// A file open for reading. Its end is a download event (`close_read`, or a failed one when
/// it is dropped unclosed: the client went away).
pub struct ReadFile {
    pub path: VirtualPath,
    pub size: u64,
    /// Read-ahead: the last block fetched, so small sequential reads cost one request per block.
    cache: Option<(u64, Bytes)>,
    /// The blocks after it, being fetched while the client reads this one (a sequential read
    /// only; each holds one of `PREFETCH`'s permits until it is taken).
    ahead: VecDeque<Ahead>,
    /// Bytes handed to the client.
    sent: u64,
    /// SHA-256 of the bytes sent while the client reads in order from the start (every client
    /// we know does); dropped at the first read elsewhere.
    hash: Option<crate::storage::ContentHash>,
    /// The end of what has been read in order.
    next: u64,
    /// A storage error that cut the download.
    error: Option<String>,
    location: Location,
    started_at: DateTime<Utc>,
    started: Instant,
    /// Set once the download is reported, so dropping it reports nothing more.
    session: Option<Arc<Session>>,
}

impl ReadFile {
    /// What was sent, for the log and the event.
    fn note_sent(&mut self, offset: u64, data: &[u8]) {
        self.sent += data.len() as u64;
        let end = offset + data.len() as u64;
        if offset == self.next {
            if let Some(h) = &mut self.hash {
                h.update(data);
            }
            self.next = end;
        } else if end > self.next {
            // Not in order: the bytes sent can no longer be hashed as one file.
            self.hash = None;
            self.next = self.next.max(end);
        }
    }

    /// The download's outcome, or None when nothing was read (an open to look, not to fetch).
    fn outcome(&mut self) -> Option<UploadOutcome> {
        if let Some(message) = self.error.take() {
            return Some(UploadOutcome::Failed {
                location: self.location.clone(),
                bytes: self.sent,
                code: "storage_error",
                message,
            });
        }
        if self.sent == 0 && self.size > 0 {
            return None;
        }
        if self.next >= self.size {
            return Some(UploadOutcome::Completed(Stored {
                bytes: self.size,
                sha256: self.hash.take().map(|h| h.hex()).unwrap_or_default(),
                etag: None,
                location: self.location.clone(),
            }));
        }
        Some(UploadOutcome::Failed {
            location: self.location.clone(),
            bytes: self.sent,
            code: "partial_download",
            message: format!(
                "the client read {} of {} bytes before closing the file",
                self.sent, self.size
            ),
        })
    }
}

/// A block being fetched ahead of the client.
struct Ahead {
    start: u64,
    task: JoinHandle<crate::storage::Result<Bytes>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for ReadFile {
    fn drop(&mut self) {
        self.ahead.clear();
        let Some(session) = self.session.take() else {
            return;
        };
        // Every byte sent counts as a download even when the client never closed the file.
        let outcome = match self.outcome() {
            Some(UploadOutcome::Failed {
                location,
                bytes,
                code: "partial_download",
                ..
            }) => Some(UploadOutcome::Failed {
                location,
                bytes,
                code: "partial_download",
                message: "the file was not closed: the client disconnected or the transfer was cut"
                    .into(),
            }),
            other => other,
        };
        if let Some(outcome) = outcome {
            let (path, started_at) = (self.path.to_string(), self.started_at);
            session.clone().spawn_upload_task(async move {
                session.report_download(path, started_at, outcome).await;
            });
        }
    }
}

const READ_AHEAD: u32 = 4 << 20;
/// Blocks fetched ahead of the one being sent, per download: a client reading in order gets
/// its next bytes from memory while storage (S3's time to first byte) works on the ones after.
const BLOCKS_AHEAD: usize = 2;
/// Blocks fetched ahead over all downloads of the process (256 MiB): past it, downloads read
/// block by block as they come, so no number of open files makes wharf hold more.
const PREFETCH_BLOCKS: usize = 64;

fn prefetch_budget() -> Arc<Semaphore> {
    static BUDGET: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    BUDGET
        .get_or_init(|| Arc::new(Semaphore::new(PREFETCH_BLOCKS)))
        .clone()
}

impl Session {
    pub async fn open_read(self: &Arc<Self>, path: &VirtualPath) -> Result<ReadFile, FsError> {
        let (mount, rel) = self.folder(path, "downloading")?;
        Self::require(mount, Permission::Download, "downloading")?;
        let m = mount
            .backend
            .stat(&rel)
            .await
            .map_err(|e| storage(e, path))?;
        if m.is_dir {
            return Err(FsError::new(
                FsErrorKind::Failure,
                format!("{path}: is a directory"),
            ));
        }
        tracing::info!(parent: &self.span,activity = "OPEN", path = %path, mode = "read");
        Ok(ReadFile {
            path: path.clone(),
            size: m.size,
            cache: None,
            ahead: VecDeque::new(),
            sent: 0,
            hash: Some(Default::default()),
            next: 0,
            error: None,
            location: mount.backend.location(&rel),
            started_at: crate::identity::now(),
            started: Instant::now(),
            session: Some(self.clone()),
        })
    }

    /// Ends a download: logged like an upload's close, with the bytes sent, and announced
    /// (`wharf.download.completed` with the SHA-256 of what was sent when the client read
    /// the whole file in order, `wharf.download.failed` when it stopped short).
    pub async fn close_read(&self, mut f: ReadFile) {
        tracing::info!(parent: &self.span,
            activity = "CLOSE",
            path = %f.path,
            mode = "read",
            bytes_out = f.sent,
            duration_ms = f.started.elapsed().as_millis() as u64,
        );
        f.session = None;
        if let Some(outcome) = f.outcome() {
            self.report_download(f.path.to_string(), f.started_at, outcome)
                .await;
        }
    }

    async fn report_download(
        &self,
        path: String,
        started_at: DateTime<Utc>,
        outcome: UploadOutcome,
    ) {
        let record = UploadRecord {
            event_id: uuid::Uuid::now_v7().to_string(),
            duplicate_of: None,
            scan: None,
            session: self.info.clone(),
            path,
            started_at,
            finished_at: crate::identity::now(),
            outcome,
        };
        self.ctx.observer.downloaded(&record).await;
    }

    /// `len` bytes at `offset`, fewer only at the end of the file (empty there). Never a short
    /// read in the middle: libssh2 (curl) and others take one for an error, and OpenSSH's
    /// sftp-server never sends one.
    pub async fn read(&self, f: &mut ReadFile, offset: u64, len: u32) -> Result<Bytes, FsError> {
        let want = (len as u64).min(f.size.saturating_sub(offset)) as usize;
        let end = offset + want as u64;
        let res = self.read_exact(f, offset, end, want).await;
        match &res {
            Ok(b) => f.note_sent(offset, b),
            Err(e) => f.error = Some(e.message.clone()),
        }
        res
    }

    async fn read_exact(
        &self,
        f: &mut ReadFile,
        offset: u64,
        end: u64,
        want: usize,
    ) -> Result<Bytes, FsError> {
        let first = self.read_block(f, offset, end).await?;
        if first.len() >= want {
            return Ok(first);
        }
        // The request straddles the end of the read-ahead block.
        let mut out = bytes::BytesMut::with_capacity(want);
        out.extend_from_slice(&first);
        while out.len() < want {
            let more = self.read_block(f, offset + out.len() as u64, end).await?;
            if more.is_empty() {
                break; // The file shrank since it was opened.
            }
            out.extend_from_slice(&more);
        }
        Ok(out.freeze())
    }

    /// What the read-ahead block holds of `pos..end`, fetching the block at `pos` first when
    /// the cached one does not hold `pos` (from the blocks fetched ahead when one starts
    /// there), then, when the read goes on in order, starting the fetch of the next ones.
    async fn read_block(&self, f: &mut ReadFile, pos: u64, end: u64) -> Result<Bytes, FsError> {
        if pos >= end {
            return Ok(Bytes::new());
        }
        let cached = matches!(&f.cache, Some((start, block)) if pos >= *start && pos < start + block.len() as u64);
        if !cached {
            let (m, rel) = self.folder(&f.path, "downloading")?;
            let in_order =
                matches!(&f.cache, Some((start, block)) if pos == start + block.len() as u64);
            // Blocks fetched for another place than this one are of no use.
            while f.ahead.front().is_some_and(|a| a.start != pos) {
                f.ahead.pop_front();
            }
            let fetched = match f.ahead.pop_front() {
                Some(mut a) => match (&mut a.task).await {
                    Ok(res) => res,
                    // Cancelled or panicked: read it here instead.
                    Err(_) => m.backend.read(&rel, pos, READ_AHEAD).await,
                },
                None => m.backend.read(&rel, pos, READ_AHEAD).await,
            };
            let block = fetched.map_err(|e| storage(e, &f.path))?;
            let full = block.len() == READ_AHEAD as usize;
            f.cache = Some((pos, block));
            if in_order && full {
                let mut next = f.ahead.back().map_or(pos + u64::from(READ_AHEAD), |a| {
                    a.start + u64::from(READ_AHEAD)
                });
                while f.ahead.len() < BLOCKS_AHEAD && next < f.size {
                    let Ok(permit) = prefetch_budget().try_acquire_owned() else {
                        break;
                    };
                    let (backend, rel) = (m.backend.clone(), rel.clone());
                    let task =
                        tokio::spawn(async move { backend.read(&rel, next, READ_AHEAD).await });
                    f.ahead.push_back(Ahead {
                        start: next,
                        task,
                        _permit: permit,
                    });
                    next += u64::from(READ_AHEAD);
                }
            } else if !in_order {
                f.ahead.clear();
            }
        }
        let Some((start, block)) = &f.cache else {
            return Ok(Bytes::new());
        };
        let from = ((pos - start) as usize).min(block.len());
        let to = ((end - start) as usize).min(block.len());
        Ok(block.slice(from..to))
    }
}
