//! Proxies that stand for what goes wrong between wharf and what it depends on: one in
//! front of the S3 test server that lets S3 do a request and then loses its answer (a
//! connection cut after the work was done) or holds it back for good (a server that took the
//! request and never answers, as garage does under load), and one in front of Postgres that
//! takes the database away for a while (every connection cut, new ones refused) and brings it
//! back.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Which S3 operation a request is, from its first bytes (request line and headers).
fn operation(head: &[u8]) -> Option<&'static str> {
    let text = String::from_utf8_lossy(&head[..head.len().min(4096)]);
    let line = text.lines().next()?;
    let (method, rest) = line.split_once(' ')?;
    let target = rest.split(' ').next().unwrap_or_default();
    let lower = text.to_ascii_lowercase();
    Some(match method {
        "PUT" if lower.contains("\r\nx-amz-copy-source:") => {
            if target.contains("uploadId=") {
                "UploadPartCopy"
            } else {
                "CopyObject"
            }
        }
        "PUT" if target.contains("uploadId=") => "UploadPart",
        "PUT" => "PutObject",
        "POST" if target.contains("uploadId=") => "CompleteMultipartUpload",
        "POST" if target.contains("uploads") => "CreateMultipartUpload",
        "DELETE" if target.contains("uploadId=") => "AbortMultipartUpload",
        "DELETE" => "DeleteObject",
        "HEAD" => "HeadObject",
        "GET" => "Get",
        _ => return None,
    })
}

/// A proxy in front of the S3 test server that loses the answers to chosen operations after
/// S3 has carried them out.
pub struct S3Faults {
    pub endpoint: String,
    /// Answers still to lose, per operation.
    rules: Arc<Mutex<Vec<Rule>>>,
    lost: Arc<AtomicUsize>,
}

/// An operation, how many of its answers are still to be lost, and whether the connection is
/// then held open without an answer (instead of cut).
type Rule = (&'static str, usize, bool);

impl S3Faults {
    pub async fn start(upstream: &str) -> S3Faults {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let lost = Arc::new(AtomicUsize::new(0));
        let (r, n) = (rules.clone(), lost.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, r.clone(), n.clone()));
            }
        });
        S3Faults {
            endpoint: format!("http://{addr}"),
            rules,
            lost,
        }
    }

    /// Loses the answers to the next `n` requests of `op` (`PutObject`,
    /// `CompleteMultipartUpload`, `DeleteObject`, `CopyObject`, …).
    pub fn lose(&self, op: &'static str, n: usize) {
        self.rules.lock().unwrap().push((op, n, false));
    }

    /// The next `n` answers to `op` never come: S3 does the work, and the connection stays
    /// open and silent until the client gives up on it.
    pub fn hold(&self, op: &'static str, n: usize) {
        self.rules.lock().unwrap().push((op, n, true));
    }

    /// Answers lost so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    rules: Arc<Mutex<Vec<Rule>>>,
    lost: Arc<AtomicUsize>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // The next answer is lost: 1 cut, 2 held back.
    let lose_next = Arc::new(AtomicUsize::new(0));
    // Whether the client's next bytes start a request (none sent yet, or the last answered).
    let request_next = Arc::new(AtomicBool::new(true));
    let (flag, starts) = (lose_next.clone(), request_next.clone());
    let mut up = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = cr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if starts.swap(false, Ordering::SeqCst) {
                if let Some(op) = operation(&buf[..n]) {
                    let mut rules = rules.lock().unwrap();
                    if let Some(r) = rules.iter_mut().find(|(o, left, _)| *o == op && *left > 0) {
                        r.1 -= 1;
                        flag.store(if r.2 { 2 } else { 1 }, Ordering::SeqCst);
                    }
                }
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 64 << 10];
    let mut holding = false;
    loop {
        let n = tokio::select! {
            // The client gave up (a held answer) or closed its side.
            _ = &mut up => break,
            r = sr.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
        };
        if holding {
            continue;
        }
        match lose_next.swap(0, Ordering::SeqCst) {
            // S3 answers once it has done the work: lose the answer, cut the connection.
            1 => {
                lost.fetch_add(1, Ordering::SeqCst);
                break;
            }
            // Or keep the connection open and never answer.
            2 => {
                lost.fetch_add(1, Ordering::SeqCst);
                holding = true;
                continue;
            }
            _ => {}
        }
        request_next.store(true, Ordering::SeqCst);
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    up.abort();
}

/// A proxy in front of Postgres whose database can be taken away: `down` cuts every
/// connection through it and refuses new ones (what clients of a stopped server see) until
/// `up`. `lose_reply` lets Postgres carry out a statement and loses its answer (the COMMIT
/// happened; the client never hears).
pub struct PgOutage {
    pub port: u16,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// Statements (by a piece of their text) whose next answers are lost, and how many.
    lose: Arc<Mutex<Vec<(String, usize)>>>,
    lost: Arc<AtomicUsize>,
}

impl PgOutage {
    pub async fn start(upstream: &str) -> PgOutage {
        let upstream = upstream.to_string();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let lose: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
        let lost = Arc::new(AtomicUsize::new(0));
        let (d, c, rules, count) = (down.clone(), conns.clone(), lose.clone(), lost.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let task = tokio::spawn(pg_relay(client, server, rules.clone(), count.clone()));
                let mut conns = c.lock().unwrap();
                conns.retain(|h| !h.is_finished());
                conns.push(task.abort_handle());
            }
        });
        PgOutage {
            port,
            down,
            conns,
            lose,
            lost,
        }
    }

    /// `url` (a Postgres URL) through this proxy, without TLS (so the proxy sees what
    /// statements go by).
    pub fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.query_pairs_mut().append_pair("sslmode", "disable");
        u.to_string()
    }

    pub fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    /// Loses the answers to the next `n` executions of statements whose text contains `text`
    /// (the statement runs, and commits when it is a transaction of its own; the client
    /// hears nothing and its connection is cut).
    pub fn lose_reply(&self, text: &str, n: usize) {
        self.lose.lock().unwrap().push((text.to_string(), n));
    }

    /// Answers lost so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

async fn pg_relay(
    client: TcpStream,
    server: TcpStream,
    rules: Arc<Mutex<Vec<(String, usize)>>>,
    lost: Arc<AtomicUsize>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let lose_next = Arc::new(AtomicBool::new(false));
    let flag = lose_next.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        // The client's messages, parsed as they go by (they are forwarded untouched): the
        // text of each prepared statement by name, so that its executions are recognised
        // however long after its preparation (sqlx prepares a statement once per connection
        // and then sends only its name).
        let mut pending: Vec<u8> = Vec::new();
        let mut started = false;
        let mut statements: std::collections::HashMap<Vec<u8>, String> = Default::default();
        while let Ok(n) = cr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            let mut off = 0;
            loop {
                let rest = &pending[off..];
                // The startup message has no type byte.
                let head = usize::from(started);
                if rest.len() < head + 4 {
                    break;
                }
                let len = u32::from_be_bytes(rest[head..head + 4].try_into().unwrap()) as usize;
                if rest.len() < head + len {
                    break;
                }
                let body = &rest[head + 4..head + len];
                let executes = match (started, rest[0]) {
                    (false, _) => None,
                    // Parse: statement name, query text.
                    (true, b'P') => {
                        let mut parts = body.split(|&b| b == 0);
                        let name = parts.next().unwrap_or_default().to_vec();
                        let query = String::from_utf8_lossy(parts.next().unwrap_or_default());
                        statements.insert(name, query.into_owned());
                        None
                    }
                    // Bind: portal name, statement name.
                    (true, b'B') => {
                        let mut parts = body.split(|&b| b == 0);
                        let _portal = parts.next();
                        parts.next().and_then(|name| statements.get(name)).cloned()
                    }
                    // A simple query.
                    (true, b'Q') => Some(String::from_utf8_lossy(body).into_owned()),
                    _ => None,
                };
                started = true;
                off += head + len;
                if let Some(text) = executes {
                    let mut rules = rules.lock().unwrap();
                    if let Some(r) = rules
                        .iter_mut()
                        .find(|(t, left)| *left > 0 && text.contains(t.as_str()))
                    {
                        r.1 -= 1;
                        flag.store(true, Ordering::SeqCst);
                    }
                }
            }
            pending.drain(..off);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 64 << 10];
    // Bytes of the answer to a statement whose answer is to be lost, until ReadyForQuery
    // ('Z', length 5, status): by then the statement (and its implicit COMMIT) is done.
    let mut held: Vec<u8> = Vec::new();
    while let Ok(n) = sr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if lose_next.load(Ordering::SeqCst) {
            held.extend_from_slice(&buf[..n]);
            let done = held.len() >= 6 && {
                let tail = &held[held.len() - 6..];
                tail[0] == b'Z' && tail[1..5] == [0, 0, 0, 5]
            };
            if done {
                lost.fetch_add(1, Ordering::SeqCst);
                break;
            }
            continue;
        }
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    up.abort();
}
