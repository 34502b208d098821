//! Defines the service provider interface for storage back-end implementors.

use super::error::{Error, ErrorKind};
use crate::auth::UserDetail;
use async_trait::async_trait;
use chrono::{
    Datelike,
    prelude::{DateTime, Utc},
};
use md5::{Digest, Md5};
use std::{
    fmt::{self, Debug, Formatter, Write},
    io,
    path::Path,
    result,
    time::SystemTime,
};
use tokio::io::AsyncReadExt;

/// Indicates that the backend supports FTP `REST` offsets for both `RETR` downloads and `STOR`
/// uploads. Implementations must honor nonzero offsets in [`StorageBackend::get`] and
/// [`StorageBackend::put`] before advertising this feature.
pub const FEATURE_RESTART: u32 = 0b0000_0001;
/// Indicates that the backend supports the FTP `SITE MD5` command.
pub const FEATURE_SITEMD5: u32 = 0b0000_0010;

/// Result type returned by storage backend operations.
pub type Result<T> = result::Result<T, Error>;

/// wharf patch: a file's digest, as [`StorageBackend::hash`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHash {
    /// The digest in lower-case hexadecimal.
    pub hex: String,
    /// The size of the file hashed, in bytes (the `HASH` reply's range ends there).
    pub size: u64,
}

/// Represents the metadata of a _FTP File_
pub trait Metadata {
    /// Returns the length (size) of the file in bytes.
    fn len(&self) -> u64;

    /// Returns `self.len() == 0`.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns true if the path is a directory.
    fn is_dir(&self) -> bool;

    /// Returns true if the path is a file.
    fn is_file(&self) -> bool;

    /// Returns true if the path is a symbolic link.
    fn is_symlink(&self) -> bool;

    /// Returns the last modified time of the path.
    fn modified(&self) -> Result<SystemTime>;

    /// Returns the `gid` of the file.
    fn gid(&self) -> u32;

    /// Returns the `uid` of the file.
    fn uid(&self) -> u32;

    /// Returns the number of links to the file. The default implementation always returns `1`
    fn links(&self) -> u64 {
        1
    }

    /// Returns the Unix-style read, write, and execute permission bits for the path. The default
    /// displays as `rwxr-xr-x` (`0755`). Special permission bits are not represented by
    /// [`Permissions`]' display format.
    fn permissions(&self) -> Permissions {
        Permissions(0o7755)
    }

    /// If this is a symlink, return the path to its target
    fn readlink(&self) -> Option<&Path> {
        None
    }
}

/// Unix-style read, write, and execute permission bits used when formatting a file listing.
///
/// The value uses the conventional octal permission-bit layout. Its [`std::fmt::Display`] implementation
/// prints the user, group, and other `rwx` bits; special permission bits are ignored.
pub struct Permissions(
    /// The Unix-style permission bits.
    pub u32,
);

const PERM_READ: u32 = 0b100100100;
const PERM_WRITE: u32 = 0b010010010;
const PERM_EXEC: u32 = 0b001001001;
const PERM_USER: u32 = 0b111000000;
const PERM_GROUP: u32 = 0b000111000;
const PERM_OTHERS: u32 = 0b000000111;

impl std::fmt::Display for Permissions {
    fn fmt(&self, f: &mut Formatter<'_>) -> std::fmt::Result {
        f.write_char(if self.0 & PERM_USER & PERM_READ > 0 { 'r' } else { '-' })?;
        f.write_char(if self.0 & PERM_USER & PERM_WRITE > 0 { 'w' } else { '-' })?;
        f.write_char(if self.0 & PERM_USER & PERM_EXEC > 0 { 'x' } else { '-' })?;
        f.write_char(if self.0 & PERM_GROUP & PERM_READ > 0 { 'r' } else { '-' })?;
        f.write_char(if self.0 & PERM_GROUP & PERM_WRITE > 0 { 'w' } else { '-' })?;
        f.write_char(if self.0 & PERM_GROUP & PERM_EXEC > 0 { 'x' } else { '-' })?;
        f.write_char(if self.0 & PERM_OTHERS & PERM_READ > 0 { 'r' } else { '-' })?;
        f.write_char(if self.0 & PERM_OTHERS & PERM_WRITE > 0 { 'w' } else { '-' })?;
        f.write_char(if self.0 & PERM_OTHERS & PERM_EXEC > 0 { 'x' } else { '-' })?;
        Ok(())
    }
}

/// Fileinfo contains the path and `Metadata` of a file.
///
/// [`Metadata`]: crate::storage::Metadata
#[derive(Clone)]
pub struct Fileinfo<P, M>
where
    P: AsRef<Path>,
    M: Metadata,
{
    /// The full path to the file
    pub path: P,
    /// The file's metadata
    pub metadata: M,
}

impl<P, M> std::fmt::Display for Fileinfo<P, M>
where
    P: AsRef<Path>,
    M: Metadata,
{
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        let modified: String = self
            .metadata
            .modified()
            .map(|modified| {
                let modified = DateTime::<Utc>::from(modified);
                let now = Utc::now();
                if modified.year() == now.year() {
                    modified.format("%b %d %H:%M").to_string()
                } else {
                    modified.format("%b %d %Y").to_string()
                }
            })
            .unwrap_or_else(|_| "--- -- --:--".to_string());
        let basename = self.path.as_ref().components().next_back();
        let path = match basename {
            Some(v) => v.as_os_str().to_string_lossy(),
            None => {
                return Err(std::fmt::Error);
            }
        };
        let perms = format!("{}", self.metadata.permissions());
        let link_target = if self.metadata.is_symlink() {
            match self.metadata.readlink() {
                Some(t) => format!(" -> {}", t.display()),
                None => {
                    // We ought to log an error here, but don't have access to the logger variable
                    "".to_string()
                }
            }
        } else {
            "".to_string()
        };
        write!(
            f,
            "{filetype}{permissions} {links:>12} {owner:>12} {group:>12} {size:#14} {modified:>12} {path}{link_target}",
            filetype = if self.metadata.is_dir() {
                "d"
            } else if self.metadata.is_symlink() {
                "l"
            } else {
                "-"
            },
            permissions = perms,
            links = self.metadata.links(),
            owner = self.metadata.uid(),
            group = self.metadata.gid(),
            size = self.metadata.len(),
            modified = modified,
            path = path,
        )
    }
}

/// Implement this trait to provide a custom FTP virtual filesystem, then register it when
/// constructing a server with [`libunftp::ServerBuilder`](https://docs.rs/libunftp/latest/libunftp/struct.ServerBuilder.html).
#[async_trait]
pub trait StorageBackend<User: UserDetail>: Send + Sync + Debug {
    /// The concrete type of the _metadata_ used by this storage backend.
    type Metadata: Metadata + Sync + Send;

    /// Restricts this backend instance using the authenticated user's details.
    ///
    /// Once restricted, it may never be unrestricted.
    fn enter(&mut self, _user_detail: &User) -> io::Result<()> {
        Ok(())
    }

    /// Implement to set the name of the storage back-end. By default it returns the type signature.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// Returns the optional features supported by this backend.
    ///
    /// Set the corresponding bits from the `FEATURE_*` constants. The default advertises no
    /// optional features.
    fn supported_features(&self) -> u32 {
        0
    }

    /// Returns metadata for the path, or an error if it cannot be accessed.
    ///
    /// [`Metadata`]: crate::storage::Metadata
    async fn metadata<P: AsRef<Path> + Send + Debug>(&self, user: &User, path: P) -> Result<Self::Metadata>;

    /// Returns the lowercase hexadecimal MD5 digest for the file at `path`.
    ///
    /// Whether or not you want to implement the md5 method yourself,
    /// or you want to let your StorageBackend make use of the below
    /// default implementation, you must still explicitly enable the
    /// `FEATURE_SITEMD5` via [`supported_features`](Self::supported_features).
    ///
    /// Return the 32-character lowercase hexadecimal digest, as printed by `md5sum`.
    async fn md5<P: AsRef<Path> + Send + Debug>(&self, user: &User, path: P) -> Result<String>
    where
        P: AsRef<Path> + Send + Debug,
    {
        let mut md5sum = Md5::new();
        let mut reader = self.get(user, path, 0).await?;
        let mut buffer = vec![0_u8; 1024 * 1024 * 10];

        while let Ok(n) = reader.read(&mut buffer[..]).await {
            if n == 0 {
                break;
            }
            md5sum.update(&buffer[0..n]);
        }

        Ok(md5sum.finalize().iter().map(|byte| format!("{byte:02x}")).collect())
    }

    /// wharf patch: the hash algorithms [`hash`](StorageBackend::hash) computes, by their IANA
    /// "Hash Function Textual Names" (`"SHA-256"`, `"SHA-1"`). The first is what the `HASH`
    /// command (draft-bryan-ftpext-hash) uses until the client selects another with
    /// `OPTS HASH`. The default, none, offers neither `HASH` nor `XSHA256`.
    fn hash_algorithms(&self) -> &'static [&'static str] {
        &[]
    }

    /// wharf patch: the digest with `algorithm` (one of
    /// [`hash_algorithms`](StorageBackend::hash_algorithms)) of the whole file at `path`, for the
    /// `HASH` and `XSHA256` commands. The message of the error's source is shown to the client;
    /// its kind chooses the reply code: `PermanentFileNotAvailable` and `PermissionDenied` 550,
    /// `FileNameNotAllowedError` 553 (a directory), `TransientFileNotAvailable` 450 (busy),
    /// `RefusedByPolicy` 556 (too large to hash), anything else 451.
    async fn hash<P: AsRef<Path> + Send + Debug>(&self, user: &User, path: P, algorithm: &str) -> Result<FileHash> {
        let _ = (user, path, algorithm);
        Err(Error::from(ErrorKind::CommandNotImplemented))
    }

    /// Returns the entries in the directory at `path`.
    async fn list<P: AsRef<Path> + Send + Debug>(&self, user: &User, path: P) -> Result<Vec<Fileinfo<std::path::PathBuf, Self::Metadata>>>
    where
        <Self as StorageBackend<User>>::Metadata: Metadata;

    /// Formats the directory entries using the long-listing format produced by [`Fileinfo`], with
    /// each entry followed by CRLF.
    #[allow(clippy::type_complexity)]
    async fn list_fmt<P>(&self, user: &User, path: P) -> std::result::Result<std::io::Cursor<Vec<u8>>, Error>
    where
        P: AsRef<Path> + Send + Debug,
        Self::Metadata: Metadata + 'static,
    {
        let list = self.list(user, path).await?;

        let buffer = list.iter().fold(String::new(), |mut buf, fi| {
            let _ = write!(buf, "{}\r\n", fi);
            buf
        });

        let file_infos: Vec<u8> = buffer.into_bytes();

        Ok(std::io::Cursor::new(file_infos))
    }

    /// Returns each directory entry formatted using [`Fileinfo`].
    async fn list_vec<P>(&self, user: &User, path: P) -> std::result::Result<Vec<String>, Error>
    where
        P: AsRef<Path> + Send + Debug,
        Self::Metadata: Metadata + 'static,
    {
        let inlist = self.list(user, path).await?;
        let out = inlist.iter().map(|fi| fi.to_string()).collect::<Vec<String>>();

        Ok(out)
    }

    /// wharf patch: the bytes a LIST, NLST or MLSD writes on the data connection, as a stream
    /// the backend produces while the connection takes it, so a directory of a million entries
    /// is never held whole. `None` (the default) makes the server build the listing from
    /// [`list`](StorageBackend::list) as before.
    #[allow(clippy::type_complexity)]
    async fn list_stream<P>(&self, user: &User, path: P, kind: ListKind) -> Result<Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>>
    where
        P: AsRef<Path> + Send + Debug,
        Self::Metadata: Metadata + 'static,
    {
        let _ = (user, path, kind);
        Ok(None)
    }

    /// Returns an `NLST` listing containing only each entry's basename, with entries separated by
    /// CRLF. Storage errors are converted to a generic I/O error.
    #[allow(clippy::type_complexity)]
    async fn nlst<P>(&self, user: &User, path: P) -> std::result::Result<std::io::Cursor<Vec<u8>>, std::io::Error>
    where
        P: AsRef<Path> + Send + Debug,
        Self::Metadata: Metadata + 'static,
    {
        let list = self.list(user, path).await.map_err(|_| std::io::Error::from(std::io::ErrorKind::Other))?;

        let buffer = list.iter().fold(String::new(), |mut buf, fi| {
            let _ = write!(
                buf,
                "{}\r\n",
                fi.path.file_name().unwrap_or_else(|| std::ffi::OsStr::new("")).to_str().unwrap_or("")
            );
            buf
        });

        let file_infos: Vec<u8> = buffer.into_bytes();

        Ok(std::io::Cursor::new(file_infos))
    }

    /// Copies the file contents beginning at `start_pos` into `output` and returns the number of
    /// bytes copied. A nonzero offset is used for FTP `REST` only when this backend advertises
    /// [`FEATURE_RESTART`].
    async fn get_into<'a, P, W: ?Sized>(&self, user: &User, path: P, start_pos: u64, output: &'a mut W) -> Result<u64>
    where
        W: tokio::io::AsyncWrite + Unpin + Sync + Send,
        P: AsRef<Path> + Send + Debug,
    {
        let mut reader = self.get(user, path, start_pos).await?;
        Ok(tokio::io::copy(&mut reader, output).await.map_err(Error::from)?)
    }

    /// Returns a reader for the file contents beginning at `start_pos`. A nonzero offset is used
    /// for FTP `REST` only when this backend advertises [`FEATURE_RESTART`].
    async fn get<P: AsRef<Path> + Send + Debug>(&self, user: &User, path: P, start_pos: u64) -> Result<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>>;

    /// Writes all bytes from `input` to `path`, beginning at `start_pos`, and returns the number of
    /// bytes written. For FTP `REST` uploads, honor nonzero offsets when advertising
    /// [`FEATURE_RESTART`].
    async fn put<P: AsRef<Path> + Send + Debug, R: tokio::io::AsyncRead + Send + Sync + Unpin + 'static>(
        &self,
        user: &User,
        input: R,
        path: P,
        start_pos: u64,
    ) -> Result<u64>;

    /// Deletes the file at `path`.
    async fn del<P: AsRef<Path> + Send + Debug>(&self, user: &User, path: P) -> Result<()>;

    /// Creates a directory at `path`.
    async fn mkd<P: AsRef<Path> + Send + Debug>(&self, user: &User, path: P) -> Result<()>;

    /// Renames the entry at `from` to `to`.
    async fn rename<P: AsRef<Path> + Send + Debug>(&self, user: &User, from: P, to: P) -> Result<()>;

    /// Deletes the directory at `path`.
    async fn rmd<P: AsRef<Path> + Send + Debug>(&self, user: &User, path: P) -> Result<()>;

    /// Checks whether `path` can be used as the user's working directory.
    async fn cwd<P: AsRef<Path> + Send + Debug>(&self, user: &User, path: P) -> Result<()>;
}

// Maps IO errors to FTP errors in a sensible way.
// We try to capture all the permanent failures.
// The rest is assumed to be 'retryable' so they map to 4xx FTP reply, in this case a LocalError
impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        let kind = err.kind();
        let raw_os_error = err.raw_os_error();
        match (kind, raw_os_error) {
            (std::io::ErrorKind::NotFound, _) => Error::new(ErrorKind::PermanentFileNotAvailable, err),
            // Could also be a directory, but we don't know
            (std::io::ErrorKind::AlreadyExists, _) => Error::new(ErrorKind::PermanentFileNotAvailable, err),
            (std::io::ErrorKind::PermissionDenied, _) => Error::new(ErrorKind::PermissionDenied, err),
            // The below should be changed when the io_error_more issues are resolved (https://github.com/rust-lang/rust/issues/86442)
            // For each workaround, I mention the ErrorKind that can can replace it when stable
            // TODO: find a workaround for Windows
            // DirectoryNotEmpty
            #[cfg(unix)]
            (_, Some(libc::ENOTEMPTY)) => Error::new(ErrorKind::PermanentDirectoryNotEmpty, err),
            // NotADirectory
            #[cfg(unix)]
            (_, Some(libc::ENOTDIR)) => Error::new(ErrorKind::PermanentDirectoryNotAvailable, err),
            // IsADirectory, FileTooLarge, NotSeekable, InvalidFilename, FilesystemLoop
            #[cfg(unix)]
            (_, Some(libc::EISDIR) | Some(libc::EFBIG) | Some(libc::ESPIPE) | Some(libc::ENAMETOOLONG) | Some(libc::ELOOP)) => {
                Error::new(ErrorKind::PermanentFileNotAvailable, err)
            }
            // StorageFull
            #[cfg(unix)]
            (_, Some(libc::ENOSPC)) => Error::new(ErrorKind::InsufficientStorageSpaceError, err),
            // ReadOnlyFilesystem - Read-only filesystem can be considered a permission error
            #[cfg(unix)]
            (_, Some(libc::EROFS)) => Error::new(ErrorKind::PermissionDenied, err),
            // Retryable error: Client most likely forcefully aborted the connection or there was a network issue
            (std::io::ErrorKind::ConnectionReset, _) => Error::new(ErrorKind::ConnectionClosed, err),
            // Retryable error: Client most likely intentionally closed the connection
            (std::io::ErrorKind::BrokenPipe, _) => Error::new(ErrorKind::ConnectionClosed, err),
            // Retryable error: There was likely a network issue
            (std::io::ErrorKind::ConnectionAborted, _) => Error::new(ErrorKind::ConnectionClosed, err),
            // Other errors are assumed to be local transient problems, retryable for the client
            _ => Error::new(ErrorKind::LocalError, err),
        }
    }
}

/// wharf patch: which listing [`StorageBackend::list_stream`] is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `LIST`: one long-listing line per entry, as [`Fileinfo`] formats it.
    List,
    /// `NLST`: one name per line.
    Nlst,
    /// `MLSD`: one line of RFC 3659 facts and the name per entry.
    Mlsd,
}
