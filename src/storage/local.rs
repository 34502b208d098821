//! `Backend` on a local directory (the embedded default): uploads go to a hidden temporary
//! file in the target directory, are fsynced, then renamed into place on commit.

use std::io::{ErrorKind as IoKind, SeekFrom};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{
    Backend, Capacity, ContentHash, DirEntry, DirStream, ErrorKind, Fingerprint, Location, Meta,
    RenameContext, Renamed, Result, Sealed, StorageError, Stored, Upload, UploadContext, LIST_PAGE,
    RESERVED_PREFIX,
};

/// Files under one account's home directory.
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: PathBuf) -> Self {
        LocalBackend { root }
    }

    /// The file for `path`, refusing to pass through symlinks so nothing placed in the home
    /// by other means can lead outside it.
    async fn resolve(&self, path: &str) -> Result<PathBuf> {
        let mut p = self.root.clone();
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            p.push(seg);
            if let Ok(m) = tokio::fs::symlink_metadata(&p).await {
                if m.file_type().is_symlink() {
                    return Err(StorageError::new(
                        ErrorKind::NotFound,
                        format!("{path}: symbolic links are not followed"),
                    ));
                }
            }
        }
        Ok(p)
    }

    async fn ensure_root(&self) -> Result<()> {
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| io_err(e, "home directory"))
    }
}

/// The local storage root is a directory (created when missing, as uploads would).
pub async fn probe(dir: &Path) -> Result<()> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io_err(e, &format!("directory {}", dir.display())))
}

fn io_err(e: std::io::Error, what: &str) -> StorageError {
    let kind = match e.kind() {
        IoKind::NotFound => ErrorKind::NotFound,
        IoKind::AlreadyExists => ErrorKind::AlreadyExists,
        IoKind::DirectoryNotEmpty => ErrorKind::NotEmpty,
        IoKind::IsADirectory => ErrorKind::IsDirectory,
        IoKind::NotADirectory => ErrorKind::NotDirectory,
        IoKind::InvalidFilename => ErrorKind::InvalidName,
        _ => ErrorKind::Unavailable,
    };
    StorageError::with_source(kind, format!("{what}: {e}"), e)
}

fn meta_of(m: &std::fs::Metadata) -> Meta {
    Meta {
        is_dir: m.is_dir(),
        size: if m.is_dir() { 0 } else { m.len() },
        modified: m.modified().ok(),
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self, path: &str) -> Location {
        let full = self.root.join(path);
        Location {
            uri: url::Url::from_file_path(&full)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| full.display().to_string()),
            bucket: None,
            key: full.display().to_string(),
        }
    }

    async fn stat(&self, path: &str) -> Result<Meta> {
        if path.is_empty() {
            self.ensure_root().await?;
        }
        let p = self.resolve(path).await?;
        let m = tokio::fs::metadata(&p).await.map_err(|e| io_err(e, path))?;
        Ok(meta_of(&m))
    }

    async fn open_dir(&self, dir: &str) -> Result<Box<dyn DirStream>> {
        if dir.is_empty() {
            self.ensure_root().await?;
        }
        let p = self.resolve(dir).await?;
        let label = dir.to_string();
        let rd = tokio::task::spawn_blocking(move || std::fs::read_dir(&p))
            .await
            .map_err(|e| StorageError::new(ErrorKind::Unavailable, e.to_string()))?
            .map_err(|e| io_err(e, &label))?;
        Ok(Box::new(LocalDirStream {
            rd: Some(rd),
            dir: dir.to_string(),
        }))
    }

    async fn read(&self, path: &str, offset: u64, len: u32) -> Result<Bytes> {
        let p = self.resolve(path).await?;
        let mut f = tokio::fs::File::open(&p)
            .await
            .map_err(|e| io_err(e, path))?;
        f.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| io_err(e, path))?;
        let mut buf = Vec::with_capacity(len as usize);
        f.take(u64::from(len))
            .read_to_end(&mut buf)
            .await
            .map_err(|e| io_err(e, path))?;
        Ok(Bytes::from(buf))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let p = self.resolve(path).await?;
        let m = tokio::fs::metadata(&p).await.map_err(|e| io_err(e, path))?;
        if m.is_dir() {
            return Err(StorageError::new(
                ErrorKind::IsDirectory,
                format!("{path} is a directory"),
            ));
        }
        tokio::fs::remove_file(&p)
            .await
            .map_err(|e| io_err(e, path))
    }

    async fn rename(&self, from: &str, to: &str, _ctx: &RenameContext) -> Result<Renamed> {
        let src = self.resolve(from).await?;
        let dst = self.resolve(to).await?;
        let m = tokio::fs::metadata(&src)
            .await
            .map_err(|e| io_err(e, from))?;
        if let Ok(d) = tokio::fs::metadata(&dst).await {
            if d.is_dir() {
                return Err(StorageError::new(
                    ErrorKind::IsDirectory,
                    format!("{to} is a directory"),
                ));
            }
            if m.is_dir() {
                return Err(StorageError::new(
                    ErrorKind::AlreadyExists,
                    format!("{to} already exists"),
                ));
            }
        }
        if let Some(parent) = dst.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_err(e, to))?;
        }
        tokio::fs::rename(&src, &dst)
            .await
            .map_err(|e| io_err(e, from))?;
        Ok(Renamed::default())
    }

    async fn mkdir(&self, dir: &str) -> Result<()> {
        self.ensure_root().await?;
        let p = self.resolve(dir).await?;
        if let Some(parent) = p.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_err(e, dir))?;
        }
        tokio::fs::create_dir(&p).await.map_err(|e| io_err(e, dir))
    }

    async fn rmdir(&self, dir: &str) -> Result<()> {
        let p = self.resolve(dir).await?;
        tokio::fs::remove_dir(&p).await.map_err(|e| io_err(e, dir))
    }

    async fn begin_upload(&self, path: &str, _ctx: UploadContext) -> Result<Box<dyn Upload>> {
        let target = self.resolve(path).await?;
        let parent = target
            .parent()
            .ok_or_else(|| StorageError::new(ErrorKind::InvalidName, "no parent directory"))?
            .to_path_buf();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| io_err(e, path))?;
        if tokio::fs::metadata(&target).await.is_ok_and(|m| m.is_dir()) {
            return Err(StorageError::new(
                ErrorKind::IsDirectory,
                format!("{path} is a directory"),
            ));
        }
        let temp = parent.join(format!(
            "{RESERVED_PREFIX}{}",
            uuid::Uuid::now_v7().simple()
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await
            .map_err(|e| io_err(e, path))?
            .into_std()
            .await;
        Ok(Box::new(LocalUpload {
            file: Some(file),
            batch: Vec::new(),
            batched: 0,
            done: false,
            temp,
            target,
            location: self.location(path),
            hash: ContentHash::default(),
            bytes: 0,
        }))
    }

    async fn fingerprint(&self, path: &str) -> Result<Option<Fingerprint>> {
        let p = self.resolve(path).await?;
        let digest =
            tokio::task::spawn_blocking(move || -> std::io::Result<Option<(u64, String)>> {
                use std::io::Read as _;
                let mut f = match std::fs::File::open(&p) {
                    Ok(f) => f,
                    Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                if f.metadata()?.is_dir() {
                    return Ok(None);
                }
                let mut hash = ContentHash::default();
                let mut buf = vec![0u8; 1 << 20];
                let mut size = 0u64;
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                    size += n as u64;
                }
                Ok(Some((size, hash.hex())))
            })
            .await
            .map_err(|e| StorageError::new(ErrorKind::Unavailable, e.to_string()))?
            .map_err(|e| io_err(e, path))?;
        Ok(digest.map(|(size, sha256)| Fingerprint {
            size,
            sha256: Some(sha256),
            crc64nvme: None,
            etag: None,
            intent: None,
        }))
    }

    async fn capacity(&self) -> Result<Option<Capacity>> {
        self.ensure_root().await?;
        let root = self.root.clone();
        let st = tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&root))
            .await
            .map_err(|e| StorageError::new(ErrorKind::Unavailable, e.to_string()))?
            .map_err(|e| io_err(e.into(), "file system of the home"))?;
        let unit = st.fragment_size() as u64;
        Ok(Some(Capacity {
            block_size: unit,
            total: st.blocks() as u64 * unit,
            free: st.blocks_free() as u64 * unit,
            available: st.blocks_available() as u64 * unit,
            files: st.files() as u64,
            files_free: st.files_available() as u64,
            name_max: st.name_max() as u64,
        }))
    }
}

/// A local directory read a page at a time on the blocking pool.
struct LocalDirStream {
    /// `None` at the end, and while a page is being read.
    rd: Option<std::fs::ReadDir>,
    dir: String,
}

#[async_trait]
impl DirStream for LocalDirStream {
    async fn next_page(&mut self) -> Result<Option<Vec<DirEntry>>> {
        let Some(mut rd) = self.rd.take() else {
            return Ok(None);
        };
        let (rd, page) = tokio::task::spawn_blocking(move || {
            let mut page = Vec::new();
            let mut ended = false;
            while page.len() < LIST_PAGE {
                let Some(entry) = rd.next() else {
                    ended = true;
                    break;
                };
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => return (None, Err(e)),
                };
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if name.starts_with(RESERVED_PREFIX) {
                    continue;
                }
                // Not followed: the file's own metadata (a symlink is left out).
                let Ok(m) = entry.path().symlink_metadata() else {
                    continue;
                };
                if m.file_type().is_symlink() || !(m.is_file() || m.is_dir()) {
                    continue;
                }
                page.push(DirEntry {
                    name,
                    meta: meta_of(&m),
                });
            }
            (if ended { None } else { Some(rd) }, Ok(page))
        })
        .await
        .map_err(|e| StorageError::new(ErrorKind::Unavailable, e.to_string()))?;
        self.rd = rd;
        let page = page.map_err(|e| io_err(e, &self.dir))?;
        if page.is_empty() && self.rd.is_none() {
            return Ok(None);
        }
        Ok(Some(page))
    }

    fn done(&self) -> bool {
        self.rd.is_none()
    }
}

/// Bytes gathered before one write to the file: fewer trips to the blocking pool, and the
/// received buffers are written as they are, without another copy.
const WRITE_BATCH: usize = 4 << 20;

struct LocalUpload {
    /// `None` while a batch is being written on the blocking pool, and after the end.
    file: Option<std::fs::File>,
    batch: Vec<Bytes>,
    batched: usize,
    done: bool,
    temp: PathBuf,
    target: PathBuf,
    location: Location,
    hash: ContentHash,
    bytes: u64,
}

impl LocalUpload {
    async fn flush_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut file = self
            .file
            .take()
            .ok_or_else(|| StorageError::new(ErrorKind::Aborted, "upload already finished"))?;
        let batch = std::mem::take(&mut self.batch);
        self.batched = 0;
        let (file, res) = tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let res = batch.iter().try_for_each(|b| file.write_all(b));
            (file, res)
        })
        .await
        .map_err(|e| StorageError::new(ErrorKind::Unavailable, format!("writing upload: {e}")))?;
        self.file = Some(file);
        res.map_err(|e| io_err(e, "writing upload"))
    }
}

#[async_trait]
impl Upload for LocalUpload {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        if self.done || self.file.is_none() {
            return Err(StorageError::new(
                ErrorKind::Aborted,
                "upload already finished",
            ));
        }
        self.hash.update(&data);
        self.bytes += data.len() as u64;
        self.batched += data.len();
        self.batch.push(data);
        if self.batched >= WRITE_BATCH {
            self.flush_batch().await?;
        }
        Ok(())
    }

    async fn sync(&mut self) -> Result<()> {
        self.flush_batch().await?;
        let file = self
            .file
            .take()
            .ok_or_else(|| StorageError::new(ErrorKind::Aborted, "upload already finished"))?;
        let (file, res) = tokio::task::spawn_blocking(move || {
            let res = file.sync_data();
            (file, res)
        })
        .await
        .map_err(|e| StorageError::new(ErrorKind::Unavailable, format!("syncing upload: {e}")))?;
        self.file = Some(file);
        res.map_err(|e| io_err(e, "syncing upload"))
    }

    async fn seal(&mut self) -> Result<Sealed> {
        if self.done {
            return Err(StorageError::new(
                ErrorKind::Aborted,
                "upload already finished",
            ));
        }
        if self.file.is_some() {
            let res: Result<()> = async {
                self.flush_batch().await?;
                let file = self.file.take().ok_or_else(|| {
                    StorageError::new(ErrorKind::Aborted, "upload already finished")
                })?;
                tokio::task::spawn_blocking(move || file.sync_all())
                    .await
                    .map_err(|e| StorageError::new(ErrorKind::Unavailable, e.to_string()))?
                    .map_err(|e| io_err(e, "syncing upload"))
            }
            .await;
            if let Err(e) = res {
                self.done = true;
                let _ = tokio::fs::remove_file(&self.temp).await;
                return Err(e);
            }
        }
        Ok(Sealed {
            bytes: self.bytes,
            sha256: self.hash.clone().hex(),
            crc64nvme: None,
            upload_id: None,
        })
    }

    async fn commit(mut self: Box<Self>) -> Result<Stored> {
        let sealed = self.seal().await?;
        let res: Result<()> = async {
            if tokio::fs::metadata(&self.target)
                .await
                .is_ok_and(|m| m.is_dir())
            {
                return Err(StorageError::new(
                    ErrorKind::IsDirectory,
                    "target became a directory",
                ));
            }
            tokio::fs::rename(&self.temp, &self.target)
                .await
                .map_err(|e| io_err(e, "publishing upload"))?;
            sync_dir(self.target.parent()).await;
            Ok(())
        }
        .await;
        self.done = true;
        if let Err(e) = res {
            let _ = tokio::fs::remove_file(&self.temp).await;
            return Err(e);
        }
        Ok(Stored {
            bytes: sealed.bytes,
            sha256: sealed.sha256,
            etag: None,
            location: self.location.clone(),
        })
    }

    async fn abort(mut self: Box<Self>) {
        self.done = true;
        self.file.take();
        let _ = tokio::fs::remove_file(&self.temp).await;
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Makes the rename itself durable.
async fn sync_dir(dir: Option<&Path>) {
    if let Some(d) = dir {
        if let Ok(f) = tokio::fs::File::open(d).await {
            let _ = f.sync_all().await;
        }
    }
}
