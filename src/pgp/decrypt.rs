//! Streaming decryption from storage to storage: the encrypted object is read in chunks
//! (one read ahead), decrypted and decompressed by rPGP on a blocking thread, and its
//! plaintext written through an ordinary storage upload (multipart on S3, bounded by the
//! upload memory like any upload). The upload is committed only once the whole message was
//! read (so the integrity check, MDC or AEAD, passed), the signature was checked and the
//! encrypted object was still the one that arrived; otherwise it is aborted, and no plaintext
//! exists. Nothing touches the local disk.

use std::io::{BufRead, Read};
use std::sync::Arc;

use bytes::Bytes;
use pgp::composed::{DecryptionOptions, Message, SignedPublicKey, TheRing};
use pgp::types::{Seipdv1ReadMode, VerifyingKey};
use sha2::Digest as _;
use tokio::sync::mpsc;

use super::Keyring;
use crate::storage::{Backend, StorageError, Stored, UploadContext};

/// Encrypted bytes read from storage at a time (and one such read ahead).
const READ_CHUNK: u32 = 4 << 20;
/// Plaintext handed to the upload at a time.
const WRITE_CHUNK: usize = 256 << 10;

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
        }
    }
}

/// What a decryption is checked against.
pub struct Checks {
    /// The partner's keys: (primary fingerprint, key).
    pub signers: Vec<(String, SignedPublicKey)>,
    pub require_signature: bool,
    /// The SHA-256 (hex) the encrypted file had when it arrived: a file replaced since is
    /// not decrypted under the old arrival.
    pub source_sha256: Option<String>,
    /// The plaintext may be at most this many times the encrypted size (with a floor), so a
    /// small compressed file cannot fill storage.
    pub max_expansion: u64,
}

/// A decryption that produced a committed plaintext object.
#[derive(Debug)]
pub struct Plain {
    pub stored: Stored,
    /// The fingerprint of the account key that signed it, if signed.
    pub signer: Option<String>,
}

/// Plaintext below this is always allowed, whatever the expansion.
const EXPANSION_FLOOR: u64 = 64 << 20;

/// Decrypts `source` (at `source_path`) into a new object at `target_path` of `target`.
pub async fn decrypt(
    keyring: Arc<Keyring>,
    checks: Checks,
    (source, source_path): (Arc<dyn Backend>, &str),
    (target, target_path): (Arc<dyn Backend>, &str),
    ctx: UploadContext,
) -> Result<Plain, Failure> {
    let storage = |what: &str, e: StorageError| Failure::Storage(format!("{what}: {e}"));
    let meta = source.stat(source_path).await.map_err(|e| {
        if e.kind == crate::storage::ErrorKind::NotFound {
            Failure::Superseded("the encrypted file was removed before it was decrypted".into())
        } else {
            storage("reading the encrypted file", e)
        }
    })?;
    let limit = meta
        .size
        .saturating_mul(checks.max_expansion)
        .max(EXPANSION_FLOOR);
    let mut up = target
        .begin_upload(target_path, ctx)
        .await
        .map_err(|e| storage("writing the plaintext", e))?;

    // Encrypted bytes in: read ahead one chunk, hashed as they go.
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(1);
    let feeder = tokio::spawn(feed(
        source.clone(),
        source_path.to_string(),
        meta.size,
        checks.source_sha256.clone(),
        in_tx,
    ));
    // Plaintext out.
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(4);
    let signers = checks.signers;
    let require = checks.require_signature;
    let worker = tokio::task::spawn_blocking(move || {
        let input = ChannelReader {
            rx: in_rx,
            chunk: Bytes::new(),
        };
        run(input, &keyring, &signers, require, limit, out_tx)
    });
    let mut write_err = None;
    let mut written = 0u64;
    while let Some(b) = out_rx.recv().await {
        written += b.len() as u64;
        if let Err(e) = up.write(b).await {
            write_err = Some(e);
            break;
        }
        if written >= 8 << 20 {
            crate::testing::crash_point("decrypt.writing");
        }
    }
    drop(out_rx);
    let outcome = worker
        .await
        .unwrap_or_else(|e| Err(Failure::Corrupt(format!("the decryption failed: {e}"))));
    let fed = feeder
        .await
        .unwrap_or_else(|e| Err(Failure::Storage(format!("reading the encrypted file: {e}"))));
    let failure = match (write_err, fed, outcome) {
        (Some(e), _, _) => Err(storage("writing the plaintext", e)),
        // A read that failed makes the message look cut short: say what really happened.
        (None, Err(f), _) => Err(f),
        (None, Ok(()), Err(f)) => Err(f),
        (None, Ok(()), Ok(signer)) => Ok(signer),
    };
    match failure {
        Ok(signer) => {
            let stored = up
                .commit()
                .await
                .map_err(|e| storage("writing the plaintext", e))?;
            Ok(Plain { stored, signer })
        }
        Err(f) => {
            up.abort().await;
            Err(f)
        }
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

/// The encrypted bytes as a blocking reader for rPGP.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl std::fmt::Debug for ChannelReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelReader")
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = {
            let chunk = self.fill_buf()?;
            let n = buf.len().min(chunk.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

/// rPGP reads through `fill_buf` straight from the chunks storage returned: no copy into a
/// buffer of its own.
impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.chunk = c,
                None => break,
            }
        }
        Ok(&self.chunk)
    }

    fn consume(&mut self, n: usize) {
        let _ = self.chunk.split_to(n.min(self.chunk.len()));
    }
}

/// The blocking part: parse, decrypt, decompress, stream the literal data out, then check the
/// signature. Returns the signer's fingerprint (of the account's key), if signed.
fn run(
    input: ChannelReader,
    keyring: &Keyring,
    signers: &[(String, SignedPublicKey)],
    require_signature: bool,
    limit: u64,
    out: mpsc::Sender<Bytes>,
) -> Result<Option<String>, Failure> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| Failure::Corrupt(format!("{what}: {e}"));
    let (msg, _) =
        Message::from_reader(input).map_err(|e| corrupt("not an OpenPGP message", &e))?;
    if !msg.is_encrypted() {
        return Err(Failure::Corrupt(
            "not an encrypted OpenPGP message (nothing to decrypt)".into(),
        ));
    }
    if keyring.is_empty() {
        return Err(Failure::NoKey(
            "no decryption key is configured (pgp.keys)".into(),
        ));
    }
    let recipients = recipients(&msg);
    let ring = TheRing {
        secret_keys: keyring.keys().iter().collect(),
        key_passwords: vec![keyring.passphrase()],
        // Streaming: the plaintext goes to an upload that is committed only after the
        // integrity check at the end passed, and aborted otherwise; nothing unauthenticated
        // is ever visible.
        // GnuPG 2.4 writes its own AEAD (OCB) packets to keys that advertise AEAD: also
        // authenticated, so accepted.
        decrypt_options: DecryptionOptions::new()
            .set_seipdv1_read_mode(Seipdv1ReadMode::Streaming)
            .enable_gnupg_aead(),
        ..Default::default()
    };
    let mut msg = match msg.decrypt_the_ring(ring, true) {
        Ok((m, _)) => m,
        Err(pgp::errors::Error::MissingKey) => {
            return Err(Failure::NoKey(format!(
                "encrypted to {recipients}, none of which is a key of this deployment (wharf pgp keys lists them)"
            )))
        }
        Err(e) => return Err(corrupt("cannot decrypt", &e)),
    };
    while msg.is_compressed() {
        msg = msg
            .decompress()
            .map_err(|e| corrupt("cannot decompress", &e))?;
    }
    if msg.is_signed() {
        msg = msg
            .decompress()
            .map_err(|e| corrupt("cannot decompress", &e))?;
    }
    let mut total = 0u64;
    let mut buf = vec![0u8; WRITE_CHUNK];
    loop {
        let n = match msg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt("the encrypted file is damaged or cut short", &e)),
        };
        total += n as u64;
        if total > limit {
            return Err(Failure::Corrupt(format!(
                "the plaintext is larger than {limit} bytes (pgp.max_expansion times the encrypted file): refused as a decompression bomb"
            )));
        }
        if out
            .blocking_send(Bytes::copy_from_slice(&buf[..n]))
            .is_err()
        {
            return Err(Failure::Storage("writing the plaintext stopped".into()));
        }
    }
    if !msg.is_signed() {
        if require_signature {
            return Err(Failure::Unsigned(
                "the file is not signed, and this folder requires a signature by one of the account's keys"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let mut keys: Vec<(&str, &dyn VerifyingKey)> = Vec::new();
    for (fpr, k) in signers {
        keys.push((fpr, k));
        for sub in &k.public_subkeys {
            keys.push((fpr, sub));
        }
    }
    let refs: Vec<&dyn VerifyingKey> = keys.iter().map(|(_, k)| *k).collect();
    let results = msg
        .verify_nested(&refs)
        .map_err(|e| Failure::BadSignature(format!("cannot check the signature: {e}")))?;
    match results
        .iter()
        .position(|r| matches!(r, pgp::composed::VerificationResult::Valid(_)))
    {
        Some(i) => Ok(Some(keys[i].0.to_string())),
        None => Err(Failure::BadSignature(if signers.is_empty() {
            "the file is signed, but the account has no PGP keys to check it with (wharf user pgp add)".into()
        } else {
            format!(
                "the signature is not valid for any of the account's keys ({})",
                signers
                    .iter()
                    .map(|(f, _)| f.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })),
    }
}

/// The key IDs an encrypted message names as recipients, for error messages.
fn recipients(msg: &Message<'_>) -> String {
    let Message::Encrypted { esk, .. } = msg else {
        return "no key".into();
    };
    let ids: Vec<String> = esk
        .iter()
        .filter_map(|e| match e {
            pgp::composed::Esk::PublicKeyEncryptedSessionKey(p) => p
                .id()
                .ok()
                .map(|id| format!("key {}", hex::encode_upper(id))),
            pgp::composed::Esk::SymKeyEncryptedSessionKey(_) => Some("a password".into()),
        })
        .collect();
    if ids.is_empty() {
        "no key".into()
    } else {
        ids.join(", ")
    }
}
