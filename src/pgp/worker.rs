//! The decryption worker: a child process (`wharf pgp-decrypt-worker`, spawned by
//! `decrypt.rs` for each file) that parses, decrypts and checks one partner file under hard
//! limits, so that no input, however hostile, can take the gateway down — the worst it can
//! do is end this process, and its file is then refused as `corrupt`:
//!
//! - at most `MAX_OUTER` packets (and `MAX_OUTER_BYTES`) before the encrypted data (session
//!   keys a file could otherwise list by the million, each tried with every key);
//! - at most `MAX_LAYERS` nested layers of compression and signing inside it (GnuPG refuses
//!   more than 32, Sequoia 16; rPGP has no limit, and every layer it unwraps adds a reader
//!   every read goes through), and at most `MAX_SIGNATURES` signatures (each hashes the whole
//!   plaintext);
//! - the plaintext at most `limit` bytes (`pgp.max_expansion` times the encrypted file);
//! - the parsing on threads of `STACK` bytes, in an address space of `pgp.worker_memory`.
//!
//! Protocol: on stdin a 4-byte big-endian length and that much JSON (`Request`), then the
//! encrypted file until EOF; on stdout the plaintext; on stderr, last, one JSON line
//! (`Reply`). Secrets (the deployment's keys, unlocked) go through the pipe only.

use std::io::{BufRead, BufReader, Read, Write};

use pgp::composed::{
    DecryptionOptions, Deserializable as _, Message, SignedPublicKey, SignedSecretKey, TheRing,
};
use pgp::types::{Password, Seipdv1ReadMode, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::decrypt::Failure;

/// Packets allowed before the encrypted data, and their bytes.
pub const MAX_OUTER: usize = 64;
pub const MAX_OUTER_BYTES: usize = 1 << 20;
/// Nested compression and signature layers allowed inside the encrypted data.
pub const MAX_LAYERS: usize = 16;
/// Signatures allowed in all.
pub const MAX_SIGNATURES: usize = 16;
/// The parsing thread's stack.
const STACK: usize = 16 << 20;
/// Plaintext written to stdout at a time.
const WRITE_CHUNK: usize = 256 << 10;
/// The subcommand the worker runs as.
pub const SUBCOMMAND: &str = "pgp-decrypt-worker";

/// What the worker is asked to do.
#[derive(Serialize, Deserialize)]
pub struct Request {
    /// The deployment's secret keys, armored and unlocked (`Keyring::unlocked`).
    pub secret_keys: Vec<String>,
    /// The partner's keys: (primary fingerprint, armored public key).
    pub signers: Vec<(String, String)>,
    pub require_signature: bool,
    /// The most plaintext allowed: `pgp.max_expansion` times the encrypted file.
    pub limit: u64,
    /// The most the target folder accepts (`--max-size`), if less.
    pub max_size: Option<u64>,
    /// The worker's address space, in bytes.
    pub memory: u64,
}

/// How it ended.
#[derive(Serialize, Deserialize)]
pub struct Reply {
    /// The signer's fingerprint, when it decrypted and was signed.
    pub signer: Option<String>,
    /// `(failure code, message)` when it did not.
    pub failure: Option<(String, String)>,
}

impl Failure {
    /// A failure as the worker reports it.
    pub fn from_code(code: &str, message: String) -> Failure {
        match code {
            "no_key" => Failure::NoKey(message),
            "bad_signature" => Failure::BadSignature(message),
            "unsigned" => Failure::Unsigned(message),
            "storage_error" => Failure::Storage(message),
            "superseded" => Failure::Superseded(message),
            "refused" => Failure::Refused(message),
            _ => Failure::Corrupt(message),
        }
    }
}

/// The worker's `main`: never returns an error to a caller; its exit status is 0 whenever
/// it could write its reply.
pub fn main() -> std::process::ExitCode {
    let reply = match serve() {
        Ok(signer) => Reply {
            signer,
            failure: None,
        },
        Err(f) => Reply {
            signer: None,
            failure: Some((f.code().to_string(), f.to_string())),
        },
    };
    let line = serde_json::to_string(&reply).unwrap_or_default();
    let mut err = std::io::stderr().lock();
    if writeln!(err, "{line}").is_err() {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

fn serve() -> Result<Option<String>, Failure> {
    let mut input = BufReader::with_capacity(1 << 20, std::io::stdin());
    let mut len = [0u8; 4];
    input
        .read_exact(&mut len)
        .map_err(|e| Failure::Storage(format!("decryption worker: no request: {e}")))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 16 << 20 {
        return Err(Failure::Storage(
            "decryption worker: request too large".into(),
        ));
    }
    let mut header = vec![0u8; len];
    input
        .read_exact(&mut header)
        .map_err(|e| Failure::Storage(format!("decryption worker: no request: {e}")))?;
    let req: Request = serde_json::from_slice(&header)
        .map_err(|e| Failure::Storage(format!("decryption worker: bad request: {e}")))?;
    limit_memory(req.memory);
    let keys = req
        .secret_keys
        .iter()
        .map(|k| SignedSecretKey::from_armor_single(k.as_bytes()).map(|(k, _)| k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::Storage(format!("decryption worker: a key: {e}")))?;
    let signers = req
        .signers
        .iter()
        .filter_map(|(fpr, armored)| {
            SignedPublicKey::from_armor_single(armored.as_bytes())
                .ok()
                .map(|(k, _)| (fpr.clone(), k))
        })
        .collect::<Vec<_>>();
    let (require_signature, limit) = (
        req.require_signature,
        Limit {
            expansion: req.limit,
            max_size: req.max_size,
        },
    );
    // On a thread whose stack is known, not whatever the process's main thread got.
    std::thread::Builder::new()
        .name("pgp-decrypt".into())
        .stack_size(STACK)
        .spawn(move || {
            let mut out =
                Writer::start().map_err(|e| Failure::Storage(format!("decryption worker: {e}")))?;
            let expect = Expect {
                signers: &signers,
                require_signature,
                limit,
            };
            let res = run(input, &keys, expect, &mut out);
            let written = out.finish();
            match (res, written) {
                (Ok(_), Err(_)) => Err(Failure::Storage("writing the plaintext stopped".into())),
                (res, _) => res,
            }
        })
        .map_err(|e| Failure::Storage(format!("decryption worker: {e}")))?
        .join()
        .unwrap_or_else(|_| {
            Err(Failure::Corrupt(
                "the decryption failed unexpectedly".into(),
            ))
        })
}

/// The plaintext, written to standard output by a thread of its own, so the kernel's copy
/// into the pipe is not on the thread that hashes for the signature (the slowest of the
/// worker's). Pieces of `WRITE_CHUNK`, at most `HANDOFF_DEPTH` waiting, buffers reused.
struct Writer {
    tx: Option<PieceSender>,
    buf: Vec<u8>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Writer {
    fn start() -> std::io::Result<Writer> {
        let (tx, rx) = pieces();
        let thread = std::thread::Builder::new()
            .name("pgp-write".into())
            .spawn(move || {
                let mut out = RawStdout(std::io::stdout());
                while let Some(piece) = rx.recv() {
                    out.write_all(&piece)?;
                    rx.give_back(piece);
                }
                Ok(())
            })?;
        Ok(Writer {
            tx: Some(tx),
            buf: Vec::with_capacity(WRITE_CHUNK),
            thread: Some(thread),
        })
    }

    fn send(&mut self) -> std::io::Result<()> {
        let stopped = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the writer stopped");
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        let mut next = tx.buffer(WRITE_CHUNK);
        next.clear();
        let full = std::mem::replace(&mut self.buf, next);
        tx.send(full).map_err(|_| stopped())
    }

    /// Writes what is left and waits for the writing thread: whether everything was written.
    fn finish(mut self) -> std::io::Result<()> {
        let sent = if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        };
        drop(self.tx.take());
        let written = match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the writer failed"))),
            None => Ok(()),
        };
        sent.and(written)
    }
}

impl Write for Writer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() == WRITE_CHUNK {
            self.send()?;
        }
        let n = data.len().min(WRITE_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Standard output written straight to its descriptor: std's line buffering would split
/// each binary write at its last newline into two writes and a copy.
struct RawStdout(std::io::Stdout);

impl Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        nix::unistd::write(&self.0, buf).map_err(std::io::Error::from)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The address space this process may use: past it allocations fail and it ends, which the
/// gateway reports as a file that needs more than a decryption may use.
fn limit_memory(bytes: u64) {
    if bytes > 0 {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, bytes, bytes);
    }
}

fn corrupt(what: &str, e: &dyn std::fmt::Display) -> Failure {
    Failure::Corrupt(format!("{what}: {e}"))
}

/// Reads the packets before the encrypted data (at most `MAX_OUTER`, `MAX_OUTER_BYTES`)
/// into a buffer, leaving `input` at the first encrypted-data packet.
fn outer_packets<R: BufRead>(input: &mut R) -> Result<Vec<u8>, Failure> {
    let hostile = |why: String| Failure::Corrupt(format!("{why}: refused as hostile"));
    let mut prefix = Vec::new();
    for count in 0.. {
        let first = match input.fill_buf() {
            Ok([]) => return Ok(prefix),
            Ok(buf) => buf[0],
            Err(e) => return Err(corrupt("reading the encrypted file", &e)),
        };
        if first & 0x80 == 0 {
            // Not a packet: rPGP says what it is.
            return Ok(prefix);
        }
        let tag = if first & 0x40 != 0 {
            first & 0x3f
        } else {
            (first >> 2) & 0x0f
        };
        // Encrypted data (SED, SEIPD, GnuPG's OCB): from here on, rPGP reads.
        if matches!(tag, 9 | 18 | 20) {
            return Ok(prefix);
        }
        if count >= MAX_OUTER {
            return Err(hostile(format!(
                "more than {MAX_OUTER} packets before the encrypted data"
            )));
        }
        let mut head = vec![first];
        input.consume(1);
        let byte = |input: &mut R| -> Result<u8, Failure> {
            let mut b = [0u8; 1];
            input
                .read_exact(&mut b)
                .map_err(|e| corrupt("the encrypted file is cut short", &e))?;
            Ok(b[0])
        };
        let len: usize = if first & 0x40 != 0 {
            let l1 = byte(input)?;
            head.push(l1);
            match l1 {
                0..=191 => l1 as usize,
                192..=223 => {
                    let l2 = byte(input)?;
                    head.push(l2);
                    ((l1 as usize - 192) << 8) + l2 as usize + 192
                }
                255 => {
                    let mut n = 0usize;
                    for _ in 0..4 {
                        let b = byte(input)?;
                        head.push(b);
                        n = (n << 8) | b as usize;
                    }
                    n
                }
                // Partial lengths belong to data packets only.
                _ => {
                    return Err(hostile(format!(
                        "a packet of type {tag} before the encrypted data has a partial length"
                    )))
                }
            }
        } else {
            let n = match first & 3 {
                0 => 1,
                1 => 2,
                2 => 4,
                _ => {
                    return Err(hostile(format!(
                        "a packet of type {tag} before the encrypted data has no length"
                    )))
                }
            };
            let mut v = 0usize;
            for _ in 0..n {
                let b = byte(input)?;
                head.push(b);
                v = (v << 8) | b as usize;
            }
            v
        };
        if prefix.len() + head.len() + len > MAX_OUTER_BYTES {
            return Err(hostile(format!(
                "more than {MAX_OUTER_BYTES} bytes of packets before the encrypted data"
            )));
        }
        prefix.extend_from_slice(&head);
        let start = prefix.len();
        prefix.resize(start + len, 0);
        input
            .read_exact(&mut prefix[start..])
            .map_err(|e| corrupt("the encrypted file is cut short", &e))?;
    }
    Ok(prefix)
}

/// Opens the layers inside the decrypted message (compression, signing), at most
/// `MAX_LAYERS` deep and with at most `MAX_SIGNATURES` signatures, down to its literal data;
/// `opened` compression layers were opened above it.
fn open_layers(mut msg: Message<'_>, mut opened: usize) -> Result<Message<'_>, Failure> {
    let hostile = |why: String| Failure::Corrupt(format!("{why}: refused as hostile"));
    loop {
        // Walk the signed layers down to the innermost message not opened yet.
        let (mut depth, mut signatures) = (0usize, 0usize);
        let mut m = &msg;
        let compressed = loop {
            match m {
                Message::Signed { reader, .. } => {
                    depth += 1;
                    signatures += reader.num_signatures();
                    m = reader.get_ref();
                }
                Message::Compressed { .. } => break true,
                _ => break false,
            }
        };
        if signatures > MAX_SIGNATURES {
            return Err(hostile(format!("more than {MAX_SIGNATURES} signatures")));
        }
        if opened + depth + usize::from(compressed) > MAX_LAYERS {
            return Err(hostile(format!(
                "more than {MAX_LAYERS} nested layers of compression and signatures"
            )));
        }
        if !compressed {
            return Ok(msg);
        }
        msg = msg
            .decompress()
            .map_err(|e| corrupt("cannot decompress", &e))?;
        opened += 1;
    }
}

/// The most plaintext a decryption may write.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// `pgp.max_expansion` times the encrypted file (a bomb past it).
    pub expansion: u64,
    /// The target folder's `--max-size`.
    pub max_size: Option<u64>,
}

impl Limit {
    pub fn bytes(&self) -> u64 {
        self.max_size
            .map_or(self.expansion, |m| m.min(self.expansion))
    }

    pub fn exceeded(&self) -> Failure {
        match self.max_size {
            Some(m) if m < self.expansion => Failure::Refused(format!(
                "the plaintext is larger than its folder accepts ({m} bytes at most)"
            )),
            _ => Failure::Corrupt(format!(
                "the plaintext is larger than {} bytes (pgp.max_expansion times the encrypted file): refused as a decompression bomb",
                self.expansion
            )),
        }
    }
}

/// What a decrypted message is checked against.
#[derive(Clone, Copy)]
pub struct Expect<'a> {
    /// The partner's keys: (primary fingerprint, key).
    pub signers: &'a [(String, SignedPublicKey)],
    pub require_signature: bool,
    pub limit: Limit,
}

/// Parses, decrypts (with `keys`, unlocked) and checks one message from `input`, writing its
/// plaintext to `out`. Returns the signer's fingerprint (of the partner's keys), if signed.
pub fn run<R: BufRead + std::fmt::Debug + Send, W: Write>(
    mut input: R,
    keys: &[SignedSecretKey],
    expect: Expect<'_>,
    out: &mut W,
) -> Result<Option<String>, Failure> {
    // Armored (`gpg --armor`) or binary; the packets before the encrypted data are counted
    // either way, before rPGP sees any of them.
    let binary = match input.fill_buf() {
        Ok(buf) => buf.first().is_none_or(|b| b & 0x80 != 0),
        Err(e) => return Err(corrupt("reading the encrypted file", &e)),
    };
    let msg = if binary {
        let prefix = outer_packets(&mut input)?;
        Message::from_bytes(std::io::Cursor::new(prefix).chain(input))
    } else {
        let mut dearmor = pgp::armor::Dearmor::new(input);
        dearmor
            .read_header()
            .map_err(|e| corrupt("not an OpenPGP message", &e))?;
        let mut body = BufReader::new(dearmor);
        let prefix = outer_packets(&mut body)?;
        Message::from_bytes(std::io::Cursor::new(prefix).chain(body))
    }
    .map_err(|e| corrupt("not an OpenPGP message", &e))?;
    if !msg.is_encrypted() {
        return Err(Failure::Corrupt(
            "not an encrypted OpenPGP message (nothing to decrypt)".into(),
        ));
    }
    if keys.is_empty() {
        return Err(Failure::NoKey(
            "no decryption key is configured (pgp.keys)".into(),
        ));
    }
    let recipients = recipients(&msg);
    let no_password = Password::empty();
    let ring = TheRing {
        secret_keys: keys.iter().collect(),
        // The keys come unlocked.
        key_passwords: vec![&no_password],
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
    let msg = match msg.decrypt_the_ring(ring, true) {
        Ok((m, _)) => m,
        Err(pgp::errors::Error::MissingKey) => {
            return Err(Failure::NoKey(format!(
                "encrypted to {recipients}, none of which is a key of this deployment (wharf pgp keys lists them)"
            )))
        }
        Err(e) => return Err(corrupt("cannot decrypt", &e)),
    };
    // A compressed message (GnuPG's default) is read on two threads: one decrypts (checking
    // the MDC or AEAD tags at the end) and decompresses, the other hashes for the signature
    // and writes the plaintext, so neither waits for the other's work.
    if matches!(msg, Message::Compressed { .. }) {
        return split(msg, expect, out);
    }
    let msg = open_layers(msg, 0)?;
    literal(msg, expect, out)
}

/// The decompressed packets handed from the decrypting thread to the one that reads them, at
/// most this much at a time and `HANDOFF_DEPTH` such pieces waiting.
const HANDOFF_CHUNK: usize = 256 << 10;
const HANDOFF_DEPTH: usize = 4;

/// Reads a decrypted message whose top layer is a compressed packet on two threads: a
/// spawned one decrypts and decompresses (and reads on to the end of the encrypted data, so
/// the integrity check runs there), this one reads the layers inside the compressed packet
/// (signatures, literal data). The outcome is
/// the decryption's failure if it failed (the layers inside then saw the data cut short),
/// else that of the layers inside.
fn split<W: Write>(
    mut msg: Message<'_>,
    expect: Expect<'_>,
    out: &mut W,
) -> Result<Option<String>, Failure> {
    let (tx, rx) = pieces();
    // Set by the inner side when it no longer needs the rest: the decrypting side then stops
    // unless the inner side succeeded (the integrity check must still run to the end).
    let inner_failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let outer = std::thread::Builder::new()
            .name("pgp-decrypt-outer".into())
            .stack_size(STACK)
            .spawn_scoped(scope, || {
                let mut tx = Some(tx);
                let damaged = |e: std::io::Error| {
                    corrupt(
                        "the encrypted file is damaged, cut short or cannot be decompressed",
                        &e,
                    )
                };
                let mut body = pgp::packet::Decompressor::from_reader(&mut msg).map_err(damaged)?;
                // Once the inner side is gone, pieces are read into one buffer of its own.
                let mut spare = Vec::new();
                loop {
                    let mut chunk = match &tx {
                        Some(t) => t.buffer(HANDOFF_CHUNK),
                        None => std::mem::take(&mut spare),
                    };
                    chunk.resize(HANDOFF_CHUNK, 0);
                    let n = fill(&mut body, &mut chunk).map_err(damaged)?;
                    if n == 0 {
                        break;
                    }
                    chunk.truncate(n);
                    match &tx {
                        Some(t) => {
                            if t.send(chunk).is_err() {
                                tx = None;
                            }
                        }
                        None => spare = chunk,
                    }
                    if tx.is_none() && inner_failed.load(std::sync::atomic::Ordering::Acquire) {
                        return Ok(());
                    }
                }
                drop((body, tx));
                // What follows the compressed stream in the packet, and the rest of the
                // encrypted data, to its end, where the integrity check runs.
                std::io::copy(&mut msg, &mut std::io::sink()).map_err(damaged)?;
                Ok(())
            })
            .map_err(|e| Failure::Storage(format!("decryption worker: {e}")));
        let inner = (|| {
            let input = Handoff {
                rx,
                chunk: Vec::new(),
                pos: 0,
            };
            let inner = Message::from_bytes(input)
                .map_err(|e| corrupt("cannot read the compressed message", &e))?;
            let inner = open_layers(inner, 1)?;
            literal(inner, expect, out)
        })();
        if inner.is_err() {
            inner_failed.store(true, std::sync::atomic::Ordering::Release);
        }
        // Ends the hand-off whatever happened, so the decrypting side cannot wait on it.
        let outer = outer?.join().unwrap_or_else(|_| {
            Err(Failure::Corrupt(
                "the decryption failed unexpectedly".into(),
            ))
        });
        outer.and(inner)
    })
}

/// Reads from `r` until `buf` is full or the end; returns how much it read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Pieces of bytes handed from one thread to another, at most `HANDOFF_DEPTH` waiting. The
/// receiver gives each piece back when it is done with it, so the sender fills the same
/// buffers again instead of allocating one per piece. Used by the hand-off between the
/// decrypting and the hashing thread, and by the writer.
fn pieces() -> (PieceSender, PieceReceiver) {
    let (tx, rx) = std::sync::mpsc::sync_channel(HANDOFF_DEPTH);
    let (free_tx, free_rx) = std::sync::mpsc::channel();
    (
        PieceSender { tx, free: free_rx },
        PieceReceiver { rx, free: free_tx },
    )
}

#[derive(Debug)]
struct PieceSender {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl PieceSender {
    /// A buffer given back, still holding what it last held (filling it again over that costs
    /// no zeroing), or a new, empty one of `capacity`.
    fn buffer(&self, capacity: usize) -> Vec<u8> {
        self.free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(capacity))
    }

    /// Waits while `HANDOFF_DEPTH` pieces wait; an error once the receiver is gone.
    fn send(&self, piece: Vec<u8>) -> Result<(), std::sync::mpsc::SendError<Vec<u8>>> {
        self.tx.send(piece)
    }
}

#[derive(Debug)]
struct PieceReceiver {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    free: std::sync::mpsc::Sender<Vec<u8>>,
}

impl PieceReceiver {
    /// The next piece; `None` once the sender is gone and every piece was taken.
    fn recv(&self) -> Option<Vec<u8>> {
        self.rx.recv().ok()
    }

    /// A piece done with, for the sender to fill again.
    fn give_back(&self, piece: Vec<u8>) {
        let _ = self.free.send(piece);
    }
}

/// The receiving end of the hand-off, as the reader the layers inside are parsed from; the
/// sender gone is its end. Pieces read are given back.
#[derive(Debug)]
struct Handoff {
    rx: PieceReceiver,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for Handoff {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let have = self.fill_buf()?;
        let n = have.len().min(buf.len());
        buf[..n].copy_from_slice(&have[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Handoff {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Some(c) => {
                    let done = std::mem::replace(&mut self.chunk, c);
                    self.pos = 0;
                    if done.capacity() > 0 {
                        self.rx.give_back(done);
                    }
                }
                None => return Ok(&[]),
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.chunk.len());
    }
}

/// Reads an opened message's literal data into `out` (at most `limit`), then checks its
/// signatures against the partner's keys. Returns the signer's fingerprint, if signed.
fn literal<W: Write>(
    mut msg: Message<'_>,
    expect: Expect<'_>,
    out: &mut W,
) -> Result<Option<String>, Failure> {
    let Expect {
        signers,
        require_signature,
        limit,
    } = expect;
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
        if total > limit.bytes() {
            return Err(limit.exceeded());
        }
        if out.write_all(&buf[..n]).is_err() {
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
