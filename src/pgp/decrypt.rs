//! Streaming decryption from storage to storage: the encrypted object is read in chunks
//! (one read ahead) and piped through a decryption worker process (`worker.rs`: rPGP under
//! hard limits, so a hostile file can end only that process), whose plaintext is written
//! through an ordinary storage upload (multipart on S3, bounded by the upload memory like any
//! upload). The upload is sealed only once the whole message was read (so the integrity
//! check, MDC or AEAD, passed), the signature was checked and the encrypted object was still
//! the one that arrived; otherwise it is aborted, and no plaintext exists. Publishing it is
//! the caller's (`sink.rs`), under a commit intent. Nothing touches the local disk.

use std::os::fd::AsFd as _;
use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::worker::{Limit, Reply, Request, SUBCOMMAND};
use super::Keyring;
use crate::storage::{Backend, Sealed, StorageError, Upload, UploadContext};

/// Encrypted bytes read from storage at a time (and one such read ahead).
const READ_CHUNK: u32 = 4 << 20;
/// Plaintext read from the worker at a time.
const WRITE_CHUNK: usize = 1 << 20;
/// The pipes to and from the worker (Linux's default most a user may set,
/// /proc/sys/fs/pipe-max-size).
const PIPE_SIZE: i32 = 1 << 20;
/// What the worker may say on stderr (its reply is the last line).
const REPLY_MAX: usize = 64 << 10;

/// Why a decryption did not produce plaintext. `code()` is the event's `failure_code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    NoKey(String),
    #[error("{0}")]
    BadSignature(String),
    #[error("{0}")]
    Unsigned(String),
    #[error("{0}")]
    Corrupt(String),
    /// Reading the encrypted file or writing the plaintext failed; may be retried.
    #[error("{0}")]
    Storage(String),
    /// The encrypted file was replaced or removed after it arrived (a later arrival of the
    /// name is decrypted on its own).
    #[error("{0}")]
    Superseded(String),
    /// The plaintext is not accepted where it goes (the target folder's rules).
    #[error("{0}")]
    Refused(String),
    /// The plaintext's content scan refused it (`infected`), or could not judge it where
    /// the policy refuses that (`too_large_to_scan`, `scan_unavailable`).
    #[error("{1}")]
    Scan(&'static str, String),
}

impl Failure {
    pub fn code(&self) -> &'static str {
        match self {
            Failure::NoKey(_) => "no_key",
            Failure::BadSignature(_) => "bad_signature",
            Failure::Unsigned(_) => "unsigned",
            Failure::Corrupt(_) => "corrupt",
            Failure::Storage(_) => "storage_error",
            Failure::Superseded(_) => "superseded",
            Failure::Refused(_) => "refused",
            Failure::Scan(code, _) => code,
        }
    }
}

/// What a decryption is checked against.
pub struct Checks {
    /// The partner's keys: (primary fingerprint, armored public key).
    pub signers: Vec<(String, String)>,
    pub require_signature: bool,
    /// The SHA-256 (hex) the encrypted file had when it arrived: a file replaced since is
    /// not decrypted under the old arrival.
    pub source_sha256: Option<String>,
    /// The plaintext may be at most this many times the encrypted size (with a floor), so a
    /// small compressed file cannot fill storage.
    pub max_expansion: u64,
    /// The plaintext may be at most this large (the target folder's `--max-size`).
    pub max_size: Option<u64>,
    /// The worker's address space (`pgp.worker_memory`).
    pub worker_memory: u64,
}

/// A decryption whose plaintext is in storage, sealed and not yet visible.
pub struct Plain {
    pub upload: Box<dyn Upload>,
    pub sealed: Sealed,
    /// The fingerprint of the account key that signed it, if signed.
    pub signer: Option<String>,
    /// What the plaintext's content scan found, when it was scanned.
    pub verdict: Option<crate::scan::Verdict>,
}

/// Plaintext below this is always allowed, whatever the expansion.
const EXPANSION_FLOOR: u64 = 64 << 20;

/// Decrypts `source` (at `source_path`) into a new upload at `target_path` of `target`,
/// sealed (everything in storage, nothing visible).
pub async fn decrypt(
    keyring: Arc<Keyring>,
    checks: Checks,
    (source, source_path): (Arc<dyn Backend>, &str),
    (target, target_path): (Arc<dyn Backend>, &str),
    ctx: UploadContext,
    mut scan: Option<Box<dyn crate::scan::ScanStream>>,
) -> Result<Plain, Failure> {
    let storage = |what: &str, e: StorageError| Failure::Storage(format!("{what}: {e}"));
    let meta = source.stat(source_path).await.map_err(|e| {
        if e.kind == crate::storage::ErrorKind::NotFound {
            Failure::Superseded("the encrypted file was removed before it was decrypted".into())
        } else {
            storage("reading the encrypted file", e)
        }
    })?;
    let expansion = meta
        .size
        .saturating_mul(checks.max_expansion)
        .max(EXPANSION_FLOOR);
    let limit = Limit {
        expansion,
        max_size: checks.max_size,
    };
    let mut up = target
        .begin_upload(target_path, ctx)
        .await
        .map_err(|e| storage("writing the plaintext", e))?;
    let mut request = Request {
        secret_keys: keyring.unlocked().iter().map(|k| k.to_string()).collect(),
        signers: checks.signers,
        require_signature: checks.require_signature,
        limit: expansion,
        max_size: checks.max_size,
        memory: checks.worker_memory,
    };
    let mut child = match spawn_worker() {
        Ok(c) => c,
        Err(e) => {
            up.abort().await;
            return Err(Failure::Storage(format!(
                "cannot start the decryption worker: {e}"
            )));
        }
    };
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        up.abort().await;
        return Err(Failure::Storage(
            "the decryption worker has no pipes".into(),
        ));
    };

    // Pipes of PIPE_SIZE instead of Linux's 64 KiB: each side wakes once per PIPE_SIZE, not
    // per 64 KiB. Where the size cannot be raised, the default still works.
    for fd in [stdin.as_fd(), stdout.as_fd()] {
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    }
    // Encrypted bytes in: read ahead one chunk, hashed as they go, behind the request.
    let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(1);
    let feeder = tokio::spawn(feed(
        source.clone(),
        source_path.to_string(),
        meta.size,
        checks.source_sha256.clone(),
        in_tx,
    ));
    let header = zeroize::Zeroizing::new(serde_json::to_vec(&request).unwrap_or_default());
    zeroize::Zeroize::zeroize(&mut request.secret_keys);
    drop(request);
    let pipe_in = tokio::spawn(async move {
        stdin
            .write_all(&(header.len() as u32).to_be_bytes())
            .await?;
        stdin.write_all(&header).await?;
        while let Some(chunk) = in_rx.recv().await {
            stdin.write_all(&chunk).await?;
        }
        stdin.shutdown().await
    });
    let reply = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = (&mut stderr)
            .take(REPLY_MAX as u64)
            .read_to_end(&mut buf)
            .await;
        buf
    });
    // Plaintext out.
    let mut write_err = None;
    let mut written = 0u64;
    let mut buf = vec![0u8; WRITE_CHUNK];
    loop {
        let n = match stdout.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                write_err = Some(Failure::Storage(format!("reading the plaintext: {e}")));
                break;
            }
        };
        written += n as u64;
        if written > limit.bytes() {
            write_err = Some(limit.exceeded());
            break;
        }
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        if let Some(s) = scan.as_mut() {
            s.write(&chunk).await;
        }
        if let Err(e) = up.write(chunk).await {
            write_err = Some(storage("writing the plaintext", e));
            break;
        }
        if written >= 8 << 20 {
            crate::testing::crash_point("decrypt.writing");
        }
    }
    drop(stdout);
    if write_err.is_some() {
        let _ = child.start_kill();
    }
    let status = child.wait().await;
    let reply = reply.await.unwrap_or_default();
    let _ = pipe_in.await;
    let fed = feeder
        .await
        .unwrap_or_else(|e| Err(Failure::Storage(format!("reading the encrypted file: {e}"))));
    let outcome = worker_outcome(status, &reply);
    let failure = match (write_err, fed, outcome) {
        (Some(f), _, _) => Err(f),
        // A read that failed makes the message look cut short: say what really happened.
        (None, Err(f), _) => Err(f),
        (None, Ok(()), Err(f)) => Err(f),
        (None, Ok(()), Ok(signer)) => Ok(signer),
    };
    match failure {
        Ok(signer) => match up.seal().await {
            Ok(sealed) => Ok(Plain {
                upload: up,
                sealed,
                signer,
                verdict: match scan {
                    Some(s) => Some(s.finish().await),
                    None => None,
                },
            }),
            Err(e) => {
                up.abort().await;
                Err(storage("writing the plaintext", e))
            }
        },
        Err(f) => {
            up.abort().await;
            Err(f)
        }
    }
}

/// This binary as a decryption worker: nothing of the gateway's environment (credentials,
/// database URLs) is passed on.
fn spawn_worker() -> std::io::Result<tokio::process::Child> {
    let exe = std::env::current_exe()?;
    tokio::process::Command::new(exe)
        .arg(SUBCOMMAND)
        .env_clear()
        // One malloc arena: the address-space limit counts what each reserves.
        .env("MALLOC_ARENA_MAX", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// What the worker's exit and its last line on stderr say.
fn worker_outcome(
    status: std::io::Result<std::process::ExitStatus>,
    stderr: &[u8],
) -> Result<Option<String>, Failure> {
    let text = String::from_utf8_lossy(stderr);
    let reply = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Reply>(l).ok());
    match (status, reply) {
        (Ok(s), Some(r)) if s.success() => match r.failure {
            None => Ok(r.signer),
            Some((code, message)) => Err(Failure::from_code(&code, message)),
        },
        (Ok(s), _) => {
            use std::os::unix::process::ExitStatusExt as _;
            let how = match s.signal() {
                Some(sig) => format!("was ended by signal {sig}"),
                None => format!("exited with {s}"),
            };
            tracing::warn!(status = %s, stderr = %text.chars().take(2000).collect::<String>(), "the decryption worker ended abnormally");
            Err(Failure::Corrupt(format!(
                "the decryption {how}: the file needs more than a decryption may use (its stack or pgp.worker_memory); refused as hostile"
            )))
        }
        (Err(e), _) => Err(Failure::Storage(format!("the decryption worker: {e}"))),
    }
}

/// Reads the encrypted object in order into `tx`; checks at the end that it is the content
/// that arrived.
async fn feed(
    source: Arc<dyn Backend>,
    path: String,
    size: u64,
    expect: Option<String>,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), Failure> {
    let mut offset = 0u64;
    let mut hash = sha2::Sha256::new();
    loop {
        let chunk = source
            .read(&path, offset, READ_CHUNK)
            .await
            .map_err(|e| Failure::Storage(format!("reading the encrypted file: {e}")))?;
        if chunk.is_empty() {
            break;
        }
        offset += chunk.len() as u64;
        hash.update(&chunk);
        if tx.send(chunk).await.is_err() {
            // The decryption stopped early (it failed, and says why).
            return Ok(());
        }
    }
    let changed = || {
        Failure::Superseded(
            "the encrypted file changed after it arrived (replaced or rewritten); \
             a later arrival is decrypted on its own"
                .into(),
        )
    };
    if offset != size {
        return Err(changed());
    }
    if let Some(expect) = expect {
        if hex::encode(hash.finalize()) != expect {
            return Err(changed());
        }
    }
    Ok(())
}
