//! The streaming upload pipeline between a protocol front-end and storage: a bounded reorder
//! window for pipelined writes, a bounded channel to a task that feeds the storage `Upload`
//! (so a protocol handler never waits for S3), progress for `stat`, and abort on drop.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::storage::{ErrorKind, StorageError, Stored, Upload};

/// How far past the next expected offset pipelined writes may arrive.
pub const REORDER_WINDOW: u64 = 8 << 20;
/// Writes queued between the protocol handler and the storage task.
const QUEUE_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A write that needs random access (a rewrite, or a gap past the window).
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

enum Msg {
    Data(Bytes),
    /// fsync: answered once every byte queued before it is in storage.
    Sync(oneshot::Sender<Result<(), StorageError>>),
    Commit(oneshot::Sender<Result<Stored, StorageError>>),
}

/// In-progress uploads of this process, by location, so `stat` of a path being uploaded
/// reports the bytes received so far, whichever session asks.
#[derive(Default)]
pub struct UploadRegistry {
    inflight: Mutex<HashMap<String, Vec<Arc<AtomicU64>>>>,
    /// Upload tasks, so shutdown can wait for their aborts to reach storage.
    pub tasks: TaskTracker,
}

impl UploadRegistry {
    pub fn progress(&self, location: &str) -> Option<u64> {
        let map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        map.get(location)
            .and_then(|v| v.iter().map(|p| p.load(Ordering::Relaxed)).max())
    }

    fn register(self: &Arc<Self>, location: String) -> Registration {
        let progress = Arc::new(AtomicU64::new(0));
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(location.clone())
            .or_default()
            .push(progress.clone());
        Registration {
            registry: self.clone(),
            location,
            progress,
        }
    }
}

struct Registration {
    registry: Arc<UploadRegistry>,
    location: String,
    progress: Arc<AtomicU64>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self
            .registry
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(v) = map.get_mut(&self.location) {
            v.retain(|p| !Arc::ptr_eq(p, &self.progress));
            if v.is_empty() {
                map.remove(&self.location);
            }
        }
    }
}

/// One file being written. Dropping it without `commit` aborts the storage upload.
pub struct UploadPipeline {
    tx: Option<mpsc::Sender<Msg>>,
    next_offset: u64,
    pending: BTreeMap<u64, Bytes>,
    pending_bytes: u64,
    failed: Option<String>,
    registration: Registration,
    result: Option<tokio::task::JoinHandle<Option<StorageError>>>,
}

impl UploadPipeline {
    pub fn start(
        upload: Box<dyn Upload>,
        location: String,
        registry: &Arc<UploadRegistry>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let result = registry.tasks.spawn(feed(upload, rx));
        UploadPipeline {
            tx: Some(tx),
            next_offset: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            failed: None,
            registration: registry.register(location),
            result: Some(result),
        }
    }

    /// Contiguous bytes received so far.
    pub fn received(&self) -> u64 {
        self.next_offset
    }

    /// Accepts `data` at `offset`. Returns once the bytes are queued; waits only when the
    /// storage side is applying backpressure.
    pub async fn write(&mut self, offset: u64, data: Bytes) -> Result<(), UploadError> {
        if let Some(f) = &self.failed {
            return Err(UploadError::Unsupported(f.clone()));
        }
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        if offset < self.next_offset
            || self.pending.contains_key(&offset)
            || end - self.next_offset > REORDER_WINDOW
        {
            let why = if offset < self.next_offset {
                format!("write at offset {offset} rewrites data already received (random access is not supported; upload the file sequentially)")
            } else {
                format!("write at offset {offset} leaves a gap past the reorder window after offset {} (random access is not supported)", self.next_offset)
            };
            return Err(self.fail(why));
        }
        if offset > self.next_offset {
            self.pending_bytes += data.len() as u64;
            self.pending.insert(offset, data);
            return Ok(());
        }
        self.push(data).await?;
        while let Some(entry) = self.pending.first_entry() {
            let at = *entry.key();
            if at > self.next_offset {
                break;
            }
            let chunk = entry.remove();
            self.pending_bytes -= chunk.len() as u64;
            if at < self.next_offset {
                let why =
                    format!("overlapping writes at offset {at} (random access is not supported)");
                return Err(self.fail(why));
            }
            self.push(chunk).await?;
        }
        Ok(())
    }

    async fn push(&mut self, data: Bytes) -> Result<(), UploadError> {
        let len = data.len() as u64;
        let sent = match &self.tx {
            Some(tx) => tx.send(Msg::Data(data)).await.is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.storage_failure().await);
        }
        self.next_offset += len;
        self.registration
            .progress
            .store(self.next_offset, Ordering::Relaxed);
        Ok(())
    }

    fn fail(&mut self, why: String) -> UploadError {
        self.failed = Some(why.clone());
        // Closing the queue makes the storage task abort.
        self.tx = None;
        self.pending.clear();
        UploadError::Unsupported(why)
    }

    /// The storage task ended early: report why.
    async fn storage_failure(&mut self) -> UploadError {
        self.tx = None;
        let err = match self.result.take() {
            Some(h) => h.await.ok().flatten(),
            None => None,
        };
        let e = err.unwrap_or_else(|| StorageError::new(ErrorKind::Aborted, "upload aborted"));
        self.failed = Some(e.message.clone());
        UploadError::Storage(e)
    }

    /// Completes the upload: everything received must be contiguous. On success the content
    /// is visible in storage.
    pub async fn commit(mut self) -> Result<Stored, UploadError> {
        if let Some(f) = self.failed.take() {
            return Err(UploadError::Unsupported(f));
        }
        if let Some((&at, _)) = self.pending.first_key_value() {
            let why = format!(
                "file closed with a gap: no data between offsets {} and {at}",
                self.next_offset
            );
            return Err(self.fail(why));
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let sent = match self.tx.take() {
            Some(tx) => tx.send(Msg::Commit(reply_tx)).await.is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.storage_failure().await);
        }
        match reply_rx.await {
            Ok(res) => res.map_err(UploadError::Storage),
            Err(_) => Err(self.storage_failure().await),
        }
    }

    /// Returns once every contiguous byte received so far has been handed to storage and made
    /// as durable as the backend can before commit (`Upload::sync`). Writes still waiting in
    /// the reorder window are not covered.
    pub async fn sync(&mut self) -> Result<(), UploadError> {
        if let Some(f) = &self.failed {
            return Err(UploadError::Unsupported(f.clone()));
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let sent = match &self.tx {
            Some(tx) => tx.send(Msg::Sync(reply_tx)).await.is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.storage_failure().await);
        }
        match reply_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.tx = None;
                self.failed = Some(e.message.clone());
                Err(UploadError::Storage(e))
            }
            Err(_) => Err(self.storage_failure().await),
        }
    }

    /// Discards the upload and waits until storage has dropped it.
    pub async fn abort(mut self) {
        self.tx = None;
        if let Some(h) = self.result.take() {
            let _ = h.await;
        }
    }
}

/// Feeds queued bytes into storage; aborts if the queue closes before a commit.
async fn feed(mut upload: Box<dyn Upload>, mut rx: mpsc::Receiver<Msg>) -> Option<StorageError> {
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Data(b) => {
                if let Err(e) = upload.write(b).await {
                    // The storage upload aborts itself on a failed write.
                    return Some(e);
                }
            }
            Msg::Sync(reply) => {
                if let Err(e) = upload.sync().await {
                    let _ = reply.send(Err(StorageError::new(e.kind, e.message.clone())));
                    upload.abort().await;
                    return Some(e);
                }
                let _ = reply.send(Ok(()));
            }
            Msg::Commit(reply) => {
                let _ = reply.send(upload.commit().await);
                return None;
            }
        }
    }
    upload.abort().await;
    None
}
