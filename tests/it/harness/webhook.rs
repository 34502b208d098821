//! A local HTTP receiver standing in for a pipeline's webhook: records every request and
//! answers with a status the test can change (to simulate the pipeline being down).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: String,
    pub status: u16,
    /// When the request had arrived (before any `delay_ms`).
    pub at: std::time::Instant,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("webhook body is JSON")
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub status: Arc<AtomicU16>,
    /// Header lines (each ending in CRLF) sent with every reply.
    reply_headers: Arc<Mutex<String>>,
    /// How long to take before answering each request, in milliseconds.
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    log: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let log = Arc::new(Mutex::new(Vec::new()));
        let reply_headers = Arc::new(Mutex::new("retry-after: 0\r\n".to_string()));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (st, lg, rh, dl) = (
            status.clone(),
            log.clone(),
            reply_headers.clone(),
            delay_ms.clone(),
        );
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (st, lg, rh, dl) = (st.clone(), lg.clone(), rh.clone(), dl.clone());
                tokio::spawn(async move {
                    let (rd, mut wr) = sock.into_split();
                    let mut rd = BufReader::new(rd);
                    loop {
                        let mut line = String::new();
                        if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut headers = HashMap::new();
                        loop {
                            let mut h = String::new();
                            if rd.read_line(&mut h).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                            }
                        }
                        let len: usize = headers
                            .get("content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0u8; len];
                        if rd.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let at = std::time::Instant::now();
                        let delay = dl.load(Ordering::SeqCst);
                        if delay > 0 {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                        }
                        let status = st.load(Ordering::SeqCst);
                        lg.lock().unwrap().push(Received {
                            headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                            status,
                            at,
                        });
                        let extra = rh.lock().unwrap().clone();
                        let reply =
                            format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n{extra}\r\n");
                        if wr.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver {
            addr,
            status,
            reply_headers,
            delay_ms,
            log,
        }
    }

    /// Replaces the header lines sent with every reply (`"retry-after: 0\r\n"` by default).
    pub fn set_reply_headers(&self, lines: &str) {
        *self.reply_headers.lock().unwrap() = lines.to_string();
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn all(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Requests answered with 2xx (what the pipeline accepted).
    pub fn accepted(&self) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Waits until at least `n` events were accepted.
    pub async fn wait_accepted(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.accepted();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
