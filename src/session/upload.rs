//! The streaming upload pipeline between a protocol front-end and storage: a bounded reorder
//! window for pipelined writes, a bounded channel to a task that feeds the storage `Upload`
//! (so a protocol handler never waits for S3), progress for `stat`, and abort on drop.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::scan::{ScanStream, Verdict};
use crate::storage::{ErrorKind, Sealed, StorageError, Stored, Upload};

/// How far past the next expected offset pipelined writes may arrive.
pub const REORDER_WINDOW: u64 = 8 << 20;
/// Out-of-order bytes one connection may have waiting, over all its open files.
pub const REORDER_PER_CONNECTION: usize = 16 << 20;
/// Out-of-order bytes the whole process may have waiting.
pub const REORDER_PER_PROCESS: usize = 256 << 20;
/// Writes queued between the protocol handler and the storage task (each at most one SFTP
/// write, 255 KiB, or one FTPS chunk, 256 KiB).
const QUEUE_DEPTH: usize = 1;

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
    /// Everything in storage, nothing visible: the facts the commit will publish, and the
    /// scan's verdict (when the file is scanned).
    Seal(oneshot::Sender<Result<(Sealed, Option<Verdict>), StorageError>>),
    Commit(oneshot::Sender<Result<Stored, StorageError>>),
}

/// In-progress uploads of this process, by location, so `stat` of a path being uploaded
/// reports the bytes received so far, whichever session asks.
pub struct UploadRegistry {
    inflight: Mutex<HashMap<String, Vec<Arc<AtomicU64>>>>,
    /// Upload tasks, so shutdown can wait for their aborts to reach storage.
    pub tasks: TaskTracker,
    /// Out-of-order bytes held by every upload of this process (`REORDER_PER_PROCESS`).
    reorder: Arc<Semaphore>,
}

impl Default for UploadRegistry {
    fn default() -> Self {
        UploadRegistry {
            inflight: Mutex::default(),
            tasks: TaskTracker::new(),
            reorder: Arc::new(Semaphore::new(REORDER_PER_PROCESS)),
        }
    }
}

/// Bytes held for reordering, paid for from the connection's and the process's budgets.
/// Taken without waiting: the bytes that would free them come later on the same channel.
struct ReorderHold {
    connection: Arc<Semaphore>,
    process: Arc<Semaphore>,
    held: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl ReorderHold {
    fn take(&mut self, len: usize) -> Result<(), String> {
        let n = u32::try_from(len).map_err(|_| "write too large".to_string())?;
        let c = self.connection.clone().try_acquire_many_owned(n).map_err(|_| {
            format!(
                "more than {} MiB of out-of-order writes held for this connection (random access is not supported)",
                REORDER_PER_CONNECTION >> 20
            )
        })?;
        let p = self
            .process
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| {
                "the server holds too many out-of-order writes; send the file sequentially"
                    .to_string()
            })?;
        match &mut self.held {
            Some((hc, hp)) => {
                hc.merge(c);
                hp.merge(p);
            }
            None => self.held = Some((c, p)),
        }
        Ok(())
    }

    fn release(&mut self, len: usize) {
        if let Some((c, p)) = &mut self.held {
            let n = len.min(c.num_permits());
            drop(c.split(n));
            drop(p.split(n));
            if c.num_permits() == 0 {
                self.held = None;
            }
        }
    }
}

impl UploadRegistry {
    pub fn progress(&self, location: &str) -> Option<u64> {
        let map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        map.get(location)
            .and_then(|v| v.iter().map(|p| p.load(Ordering::Relaxed)).max())
    }

    /// A budget for one connection's out-of-order writes, shared by its files.
    pub fn connection_reorder_budget() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(REORDER_PER_CONNECTION))
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
    /// Writes that arrived ahead of `next_offset`: non-overlapping, inside the window, paid
    /// for by `reorder`.
    pending: BTreeMap<u64, Bytes>,
    reorder: ReorderHold,
    failed: Option<String>,
    registration: Registration,
    result: Option<tokio::task::JoinHandle<Option<StorageError>>>,
}

impl UploadPipeline {
    /// `connection_reorder`: the budget the connection's out-of-order writes share
    /// (`UploadRegistry::connection_reorder_budget`).
    /// `scan`: where the bytes are also sent, in order as they go to storage, when the file
    /// is scanned; its verdict comes with `seal`.
    pub fn start(
        upload: Box<dyn Upload>,
        location: String,
        registry: &Arc<UploadRegistry>,
        connection_reorder: Arc<Semaphore>,
        scan: Option<Box<dyn ScanStream>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let result = registry.tasks.spawn(feed(upload, scan, rx));
        UploadPipeline {
            tx: Some(tx),
            next_offset: 0,
            pending: BTreeMap::new(),
            reorder: ReorderHold {
                connection: connection_reorder,
                process: registry.reorder.clone(),
                held: None,
            },
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
    /// storage side is applying backpressure. A write that overlaps one already received or
    /// held is refused when it arrives, and so is one that would hold more out-of-order bytes
    /// than the window or the budgets allow.
    pub async fn write(&mut self, offset: u64, data: Bytes) -> Result<(), UploadError> {
        if let Some(f) = &self.failed {
            return Err(UploadError::Unsupported(f.clone()));
        }
        if data.is_empty() {
            return Ok(());
        }
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return Err(self.fail(format!(
                "write at offset {offset} ends past the largest file size"
            )));
        };
        if offset < self.next_offset {
            return Err(self.fail(format!("write at offset {offset} rewrites data already received (random access is not supported; upload the file sequentially)")));
        }
        if end - self.next_offset > REORDER_WINDOW {
            return Err(self.fail(format!("write at offset {offset} leaves a gap past the reorder window after offset {} (random access is not supported)", self.next_offset)));
        }
        if offset > self.next_offset {
            let before = self.pending.range(..offset).next_back();
            let after = self.pending.range(offset..).next();
            let overlaps = before.is_some_and(|(&at, b)| at + b.len() as u64 > offset)
                || after.is_some_and(|(&at, _)| at < end);
            if overlaps {
                return Err(self.fail(format!(
                    "write at offset {offset} overlaps another write (random access is not supported)"
                )));
            }
            if let Err(why) = self.reorder.take(data.len()) {
                return Err(self.fail(why));
            }
            self.pending.insert(offset, data);
            return Ok(());
        }
        if self
            .pending
            .first_key_value()
            .is_some_and(|(&at, _)| at < end)
        {
            return Err(self.fail(format!(
                "write at offset {offset} overlaps another write (random access is not supported)"
            )));
        }
        self.push(data).await?;
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.next_offset {
                break;
            }
            let chunk = entry.remove();
            self.reorder.release(chunk.len());
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
        self.reorder.held = None;
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

    /// Puts everything received into storage, not yet visible (`Upload::seal`): everything
    /// received must be contiguous. `commit` then publishes it. With the scan's verdict, when
    /// the file is scanned.
    pub async fn seal(&mut self) -> Result<(Sealed, Option<Verdict>), UploadError> {
        if let Some(f) = &self.failed {
            return Err(UploadError::Unsupported(f.clone()));
        }
        if let Some((&at, _)) = self.pending.first_key_value() {
            let why = format!(
                "file closed with a gap: no data between offsets {} and {at}",
                self.next_offset
            );
            return Err(self.fail(why));
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let sent = match &self.tx {
            Some(tx) => tx.send(Msg::Seal(reply_tx)).await.is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.storage_failure().await);
        }
        match reply_rx.await {
            Ok(Ok(sealed)) => Ok(sealed),
            Ok(Err(e)) => {
                self.tx = None;
                self.failed = Some(e.message.clone());
                Err(UploadError::Storage(e))
            }
            Err(_) => Err(self.storage_failure().await),
        }
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

/// Feeds queued bytes into storage (and the scanner, when the file is scanned: the same
/// buffers, no copy, sent to both at once; a scanner that falls behind slows the upload
/// down); aborts if the queue closes before a commit.
async fn feed(
    mut upload: Box<dyn Upload>,
    mut scan: Option<Box<dyn ScanStream>>,
    mut rx: mpsc::Receiver<Msg>,
) -> Option<StorageError> {
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Data(b) => {
                let stored = match scan.as_mut() {
                    Some(s) => tokio::join!(s.write(&b), upload.write(b.clone())).1,
                    None => upload.write(b).await,
                };
                if let Err(e) = stored {
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
            Msg::Seal(reply) => match upload.seal().await {
                Ok(sealed) => {
                    let verdict = match scan.take() {
                        Some(s) => Some(s.finish().await),
                        None => None,
                    };
                    let _ = reply.send(Ok((sealed, verdict)));
                }
                Err(e) => {
                    // The storage upload aborted itself.
                    let _ = reply.send(Err(StorageError::new(e.kind, e.message.clone())));
                    return Some(e);
                }
            },
            Msg::Commit(reply) => {
                let _ = reply.send(upload.commit().await);
                return None;
            }
        }
    }
    upload.abort().await;
    None
}
