//! The connection lifecycle every protocol's listener shares: the accept loop (backing off
//! on accept errors), admission through the `Gate` (limits, PROXY header), one span per
//! connection with its `CONNECTED` and `DISCONNECTED` lines, the login deadline, and the
//! forced end at shutdown. A front-end only says how to start its protocol on a socket and
//! how to cut it (`FrontEnd`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::Gate;
use crate::telemetry::metrics::metrics;

/// How long a connection that was cut may take to wind down before it is left behind.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// Who is connected, as the front-end gets it when its protocol starts.
pub struct Conn {
    /// The session id (logs, events).
    pub id: String,
    /// The client: the socket's peer, or the PROXY header's source.
    pub client: SocketAddr,
    /// Every line about this connection is logged inside it.
    pub span: tracing::Span,
    /// Set by the front-end once the client has logged in; until then `login_timeout` runs.
    pub authed: Arc<AtomicBool>,
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A connection its front-end is serving.
pub struct Running {
    /// Resolves, with the reason logged in `DISCONNECTED`, when the connection ends by itself.
    pub ended: BoxFuture<String>,
    /// Ends the connection from the server's side (login timeout, shutdown), telling the
    /// client why where the protocol can.
    pub cut: Box<dyn FnOnce(&'static str) -> BoxFuture<()> + Send>,
}

/// A protocol front-end, as the shared accept loop drives it.
pub trait FrontEnd: Send + Sync + 'static {
    /// The protocol's name in logs and metrics (`sftp`, `ftps`).
    fn protocol(&self) -> &'static str;

    /// Starts the protocol on an admitted connection. Bounded by `login_timeout`; an error is
    /// the reason the connection ended before it could be served.
    fn start(
        self: Arc<Self>,
        sock: TcpStream,
        conn: &Conn,
    ) -> impl Future<Output = Result<Running, String>> + Send;
}

/// Accepts connections on `listener` until `stop` is cancelled, then stops accepting and lets
/// the connections finish until `force` is cancelled, when the rest are cut. Returns once
/// every connection has ended.
pub async fn serve<F: FrontEnd>(
    front: Arc<F>,
    listener: TcpListener,
    gate: Arc<Gate>,
    login_timeout: Duration,
    stop: CancellationToken,
    force: CancellationToken,
) {
    let protocol = front.protocol();
    let connections = TaskTracker::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((sock, peer)) => {
                backoff = Duration::from_millis(10);
                match gate.admit(peer) {
                    Ok(admitted) => {
                        let (front, gate, force) = (front.clone(), gate.clone(), force.clone());
                        connections.spawn(async move {
                            connection(front, gate, sock, peer, admitted, login_timeout, force)
                                .await
                        });
                    }
                    Err(why) => {
                        tracing::warn!(activity = "ERROR", protocol, client_ip = %peer.ip(), reason = why, "connection refused");
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors or similar: wait instead of spinning or dying.
                tracing::warn!(protocol, error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn connection<F: FrontEnd>(
    front: Arc<F>,
    gate: Arc<Gate>,
    mut sock: TcpStream,
    peer: SocketAddr,
    mut admitted: super::limits::Admitted,
    login_timeout: Duration,
    force: CancellationToken,
) {
    let protocol = front.protocol();
    let _ = sock.set_nodelay(true);
    let client = match gate.client(&mut sock, peer, &mut admitted).await {
        Ok(client) => client,
        Err(why) => {
            tracing::warn!(activity = "ERROR", protocol, client_ip = %peer.ip(), reason = why, "connection refused");
            return;
        }
    };
    let _active = metrics().session(protocol);
    let started = Instant::now();
    let id = uuid::Uuid::now_v7().to_string();
    let span = tracing::info_span!("session", session_id = %id, protocol, client_ip = %client.ip(), username = tracing::field::Empty);
    span.in_scope(|| tracing::info!(activity = "CONNECTED"));
    let conn = Conn {
        id,
        client,
        span: span.clone(),
        authed: Arc::new(AtomicBool::new(false)),
    };
    let login_deadline = tokio::time::Instant::now() + login_timeout;
    let reason = match tokio::time::timeout_at(login_deadline, front.start(sock, &conn)).await {
        Err(_) => "login_timeout".to_string(),
        Ok(Err(why)) => why,
        Ok(Ok(running)) => supervise(running, &conn, login_deadline, force).await,
    };
    if reason == SHUTTING_DOWN {
        metrics()
            .sessions_cut_at_shutdown
            .get_or_create(&crate::telemetry::metrics::ProtocolLabels { protocol })
            .inc();
    }
    drop(admitted);
    span.in_scope(|| {
        tracing::info!(
            activity = "DISCONNECTED",
            reason,
            duration_ms = started.elapsed().as_millis() as u64
        )
    });
}

/// Why a session still running when the shutdown grace ended was cut.
const SHUTTING_DOWN: &str = "server shutting down";

/// Waits for the connection to end, cutting it at the login deadline (when the client has not
/// logged in by then) or at the forced end of a shutdown.
async fn supervise(
    running: Running,
    conn: &Conn,
    login_deadline: tokio::time::Instant,
    force: CancellationToken,
) -> String {
    let Running { mut ended, cut } = running;
    let deadline = tokio::time::sleep_until(login_deadline);
    tokio::pin!(deadline);
    let mut deadline_armed = true;
    let why = loop {
        tokio::select! {
            reason = &mut ended => return reason,
            _ = &mut deadline, if deadline_armed => {
                // A client that logged in before the deadline is not timed out; only
                // idle_timeout applies to it from here on.
                deadline_armed = false;
                if !conn.authed.load(Ordering::Acquire) {
                    break "login_timeout";
                }
            }
            _ = force.cancelled() => break SHUTTING_DOWN,
        }
    };
    cut(why).await;
    // Let the front-end wind down (and an upload cut by it abort); a client that never
    // reads is not waited for.
    let _ = tokio::time::timeout(WIND_DOWN, &mut ended).await;
    why.to_string()
}
