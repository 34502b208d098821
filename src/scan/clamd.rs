//! `Scanner` on ClamAV's daemon: one `INSTREAM` session per file over TCP or a unix socket,
//! the bytes sent as they arrive (a chunk at a time, never the whole file), every step bounded
//! by `scan.timeout`, at most `scan.max_concurrent` at once, at most `scan.max_bytes` sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ScanStream, Scanner, Verdict};
use crate::telemetry::metrics::metrics;

const ENGINE: &str = "clamav";
/// How long the signature database's version is remembered.
const VERSION_TTL: Duration = Duration::from_secs(60);
/// Longest reply clamd sends.
const REPLY_MAX: usize = 4096;

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(String),
    Unix(std::path::PathBuf),
}

impl Endpoint {
    /// `tcp://host:port` or `unix:///path`.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        if let Some(addr) = s.strip_prefix("tcp://") {
            if addr.is_empty() {
                return Err(format!("{s}: no address"));
            }
            Ok(Endpoint::Tcp(addr.trim_end_matches('/').to_string()))
        } else if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{s}: the socket path must be absolute (unix:///run/clamav/clamd.ctl)"
                ));
            }
            Ok(Endpoint::Unix(path.into()))
        } else {
            Err(format!(
                "{s}: use tcp://HOST:PORT or unix:///PATH (ClamAV's clamd)"
            ))
        }
    }
}

trait Conn: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Conn for T {}

pub struct ClamdScanner {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    max_bytes: u64,
    timeout: Duration,
    slots: Arc<Semaphore>,
    version: Mutex<Option<(Instant, String)>>,
    /// Whether the last attempt reached clamd (a change is logged once).
    reachable: AtomicBool,
}

impl ClamdScanner {
    pub fn new(
        endpoint: Endpoint,
        max_bytes: u64,
        timeout: Duration,
        max_concurrent: usize,
    ) -> ClamdScanner {
        metrics().clamd_reachable.set(1);
        ClamdScanner {
            inner: Arc::new(Inner {
                endpoint,
                max_bytes,
                timeout,
                slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
                version: Mutex::new(None),
                reachable: AtomicBool::new(true),
            }),
        }
    }
}

impl Inner {
    async fn connect(&self) -> Result<Box<dyn Conn>, String> {
        let res: Result<Box<dyn Conn>, std::io::Error> =
            tokio::time::timeout(self.timeout, async {
                Ok(match &self.endpoint {
                    Endpoint::Tcp(a) => {
                        Box::new(tokio::net::TcpStream::connect(a).await?) as Box<dyn Conn>
                    }
                    Endpoint::Unix(p) => {
                        Box::new(tokio::net::UnixStream::connect(p).await?) as Box<dyn Conn>
                    }
                })
            })
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            });
        self.note(res.is_ok(), res.as_ref().err().map(|e| e.to_string()));
        res.map_err(|e| format!("cannot reach clamd: {e}"))
    }

    /// Logs (once per change) and exports whether clamd answers.
    fn note(&self, ok: bool, why: Option<String>) {
        metrics().clamd_reachable.set(i64::from(ok));
        if self.reachable.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!("clamd answers again: uploads are scanned");
            } else {
                tracing::error!(error = %why.unwrap_or_default(), endpoint = ?self.endpoint, "clamd is unreachable: uploads follow scan.unavailable");
            }
        }
    }

    /// The signature database's version (what clamd's `VERSION` says after the engine's).
    async fn version(&self) -> String {
        if let Some((at, v)) = self
            .version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            if at.elapsed() < VERSION_TTL {
                return v;
            }
        }
        let v = async {
            let mut c = self.connect().await.ok()?;
            tokio::time::timeout(self.timeout, async {
                c.write_all(b"zVERSION\0").await.ok()?;
                read_reply(&mut c).await.ok()
            })
            .await
            .ok()
            .flatten()
        }
        .await;
        let v = match v {
            Some(v) => v
                .split_once('/')
                .map_or(v.clone(), |(_, db)| db.to_string()),
            None => return "unknown".into(),
        };
        *self.version.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), v.clone()));
        v
    }
}

/// Reads clamd's reply, up to its NUL.
async fn read_reply(c: &mut Box<dyn Conn>) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while !out.ends_with(b"\0") {
        let n = c.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > REPLY_MAX {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out)
        .trim_end_matches(['\0', '\n'])
        .trim()
        .to_string())
}

#[async_trait]
impl Scanner for ClamdScanner {
    async fn start(&self) -> Box<dyn ScanStream> {
        let permit = self.inner.slots.clone().acquire_owned().await.ok();
        Box::new(ClamdStream {
            inner: self.inner.clone(),
            conn: None,
            sent: 0,
            state: State::Streaming,
            started: Instant::now(),
            _permit: permit,
        })
    }
}

enum State {
    Streaming,
    Oversize,
    Unavailable(String),
}

struct ClamdStream {
    inner: Arc<Inner>,
    conn: Option<Box<dyn Conn>>,
    sent: u64,
    state: State,
    started: Instant,
    _permit: Option<OwnedSemaphorePermit>,
}

impl ClamdStream {
    async fn open(&mut self) -> Result<(), String> {
        if self.conn.is_none() {
            let mut c = self.inner.connect().await?;
            tokio::time::timeout(self.inner.timeout, c.write_all(b"zINSTREAM\0"))
                .await
                .map_err(|_| "clamd did not take the request in time".to_string())?
                .map_err(|e| format!("clamd: {e}"))?;
            self.conn = Some(c);
        }
        Ok(())
    }

    async fn send(&mut self, data: &[u8]) -> Result<(), String> {
        self.open().await?;
        let timeout = self.inner.timeout;
        let Some(c) = self.conn.as_mut() else {
            return Err("clamd: no connection".into());
        };
        tokio::time::timeout(timeout, async {
            c.write_all(&(data.len() as u32).to_be_bytes()).await?;
            c.write_all(data).await
        })
        .await
        .map_err(|_| format!("clamd took no data for {timeout:?}"))?
        .map_err(|e| format!("clamd: {e}"))
    }

    fn give_up(&mut self, why: String) {
        self.inner.note(false, Some(why.clone()));
        self.conn = None;
        self.state = State::Unavailable(why);
    }
}

#[async_trait]
impl ScanStream for ClamdStream {
    async fn write(&mut self, data: &Bytes) {
        if !matches!(self.state, State::Streaming) || data.is_empty() {
            return;
        }
        if self.sent + data.len() as u64 > self.inner.max_bytes {
            self.state = State::Oversize;
            self.conn = None;
            return;
        }
        if let Err(why) = self.send(data).await {
            self.give_up(why);
            return;
        }
        self.sent += data.len() as u64;
        metrics().scanned_bytes.inc_by(data.len() as u64);
    }

    async fn finish(mut self: Box<Self>) -> Verdict {
        let verdict = match std::mem::replace(&mut self.state, State::Streaming) {
            State::Oversize => Verdict::Oversize {
                limit: self.inner.max_bytes,
            },
            State::Unavailable(why) => Verdict::Unavailable(why),
            State::Streaming => {
                let timeout = self.inner.timeout;
                let reply = async {
                    self.send(&[]).await?;
                    let Some(c) = self.conn.as_mut() else {
                        return Err("clamd: no connection".to_string());
                    };
                    tokio::time::timeout(timeout, read_reply(c))
                        .await
                        .map_err(|_| format!("clamd gave no verdict within {timeout:?}"))?
                        .map_err(|e| format!("clamd: {e}"))
                }
                .await;
                match reply {
                    Ok(r) if r.ends_with(" FOUND") => Verdict::Infected {
                        engine: ENGINE,
                        signature: r
                            .trim_start_matches("stream:")
                            .trim_end_matches(" FOUND")
                            .trim()
                            .to_string(),
                    },
                    Ok(r) if r.ends_with(": OK") => Verdict::Clean {
                        engine: ENGINE,
                        signature_db: self.inner.version().await,
                    },
                    Ok(r) if r.contains("size limit exceeded") => Verdict::Oversize {
                        limit: self.inner.max_bytes,
                    },
                    Ok(r) => {
                        self.inner.note(false, Some(r.clone()));
                        Verdict::Unavailable(format!("clamd: {r}"))
                    }
                    Err(why) => {
                        self.inner.note(false, Some(why.clone()));
                        Verdict::Unavailable(why)
                    }
                }
            }
        };
        let m = metrics();
        m.scans
            .get_or_create(&crate::telemetry::metrics::ResultLabels {
                result: verdict.result(),
            })
            .inc();
        m.scan_duration
            .observe(self.started.elapsed().as_secs_f64());
        verdict
    }
}
