//! The admin API (`[admin]`): an HTTP(S) front-end, like sftp/ and ftps/, over the functions
//! the CLI calls (`identity::manage`); bounded like every listener (connections, requests in
//! flight, body size, page size, header and request time) and kept off the partners' database
//! pool; its OpenAPI 3.1 document generated from the handlers.

mod api;
mod auth;
pub mod problem;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::OpenApi as _;

use crate::config::AdminConfig;
use crate::db::Db;
use crate::identity::bans::Bans;
use crate::identity::manage::Manager;
use problem::Problem;

/// Largest request body (an armored PGP key with many signatures fits).
pub const MAX_BODY: usize = 1 << 20;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// Requests handled at once (each may hold a database connection and hash a password).
const MAX_IN_FLIGHT: usize = 4;
/// Database connections of the admin API's own pool (never the partners').
pub const POOL_CONNECTIONS: u32 = 4;
/// A request (waiting for its turn included) answered 503 after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A request's headers must arrive within this (an idle keep-alive connection is closed).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this, whatever it is doing.
const CONNECTION_LIMIT: Duration = Duration::from_secs(300);
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct AdminState {
    /// The functions the CLI calls, on the admin API's own pool.
    pub manager: Arc<Manager>,
    /// The admin API's own pool.
    pub db: Db,
    /// The instance's bans, shared with SFTP and FTPS logins.
    pub bans: Arc<Bans>,
    /// The SSH host keys' (algorithm, fingerprint).
    pub host_keys: Vec<(String, String)>,
    touched: Mutex<HashMap<String, Instant>>,
    in_flight: Arc<Semaphore>,
}

impl AdminState {
    pub fn new(
        manager: Arc<Manager>,
        db: Db,
        bans: Arc<Bans>,
        host_keys: Vec<(String, String)>,
    ) -> AdminState {
        AdminState {
            manager,
            db,
            bans,
            host_keys,
            touched: Mutex::default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }
}

/// The client's address, for bans and logs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

struct SecurityScheme;

impl utoipa::Modify for SecurityScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme as S};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            S::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An admin token from `wharf admin token add NAME --scope read|write`",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "wharf admin API",
        description = "Partner accounts, their keys, folders and PGP keys, bans, expected arrivals, events and arrivals of a wharf SFTP/FTPS gateway: what `wharf user|ban|expect|events …` do, for automation. Every change is recorded in the audit trail with the token's name. Errors are `application/problem+json` (RFC 9457) with a stable `type` per error (`urn:wharf:problem:<slug>`).",
        license(name = "Apache-2.0")
    ),
    modifiers(&SecurityScheme),
    tags(
        (name = "accounts", description = "Partner accounts"),
        (name = "keys", description = "Accounts' SSH public keys"),
        (name = "folders", description = "Accounts' folders and their rules"),
        (name = "pgp", description = "Partners' PGP signing keys"),
        (name = "bans", description = "Addresses banned for repeated failed logins"),
        (name = "expectations", description = "Expected arrivals"),
        (name = "events", description = "Events, arrivals and replays"),
        (name = "host-keys", description = "The server's SSH host keys"),
        (name = "audit", description = "The audit trail")
    )
)]
struct ApiDoc;

fn parts() -> (Router<Arc<AdminState>>, utoipa::openapi::OpenApi) {
    let (router, mut api) = utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(api::routes())
        .split_for_parts();
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    (router, api)
}

/// The OpenAPI 3.1 document of the admin API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts().1
}

/// The OpenAPI document as served at `/openapi.json` and committed as docs/openapi.json.
pub fn openapi_json() -> String {
    let mut s = serde_json::to_string_pretty(&openapi()).unwrap_or_default();
    s.push('\n');
    s
}

/// Every route, behind the guard (bounds, NUL check, log) and the token check.
pub fn router(state: Arc<AdminState>) -> Router {
    let (api, _) = parts();
    let doc = openapi_json();
    api.route(
        "/openapi.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    doc,
                )
            }
        }),
    )
    .fallback(|| async { Problem::new(404, "not-found", "no such operation: see /openapi.json") })
    .method_not_allowed_fallback(|| async {
        Problem::new(
            405,
            "method-not-allowed",
            "this operation does not take that method: see /openapi.json",
        )
    })
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ))
    .layer(DefaultBodyLimit::max(MAX_BODY))
    .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
    .with_state(state)
}

fn has_nul(uri: &axum::http::Uri) -> bool {
    let decoded = |s: &str| percent_encoding::percent_decode_str(s).any(|b| b == 0);
    decoded(uri.path()) || uri.query().is_some_and(decoded)
}

/// Bounds every request (its turn among `MAX_IN_FLIGHT`, `REQUEST_TIMEOUT`), refuses NUL
/// characters in paths and queries (no database stores them), and logs it.
async fn guard(State(s): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let peer = req.extensions().get::<Peer>().map(|p| p.0.ip());
    let resp = if has_nul(req.uri()) {
        Problem::invalid("NUL characters are not allowed").into_response()
    } else {
        let work = async {
            let _permit = s.in_flight.acquire().await;
            next.run(req).await
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Problem::new(
                503,
                "timeout",
                format!("no answer within {REQUEST_TIMEOUT:?}; a change may or may not have been made (see the audit trail)"),
            )
            .into_response(),
        }
    };
    tracing::info!(
        activity = "ADMIN",
        method = %method,
        path = %path,
        client_ip = ?peer,
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        "admin API request"
    );
    resp
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on admin.listen = {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot use admin.cert {cert} / admin.key {key}: {reason}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The admin listener, bound.
pub struct AdminServer {
    listener: TcpListener,
    tls: Option<(PathBuf, PathBuf)>,
    router: Router,
}

impl AdminServer {
    /// Binds `admin.listen` and checks the certificate and key load (when set).
    pub async fn bind(cfg: &AdminConfig, state: Arc<AdminState>) -> Result<Self, AdminError> {
        let tls = cfg.cert.clone().zip(cfg.key.clone());
        if let Some((cert, key)) = &tls {
            tls_acceptor(cert, key)?;
        }
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .map_err(|source| AdminError::Bind {
                addr: cfg.listen.clone(),
                source,
            })?;
        Ok(AdminServer {
            listener,
            tls,
            router: router(state),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `stop`, then lets requests under way finish (5 s at most).
    pub async fn run(self, stop: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let tracker = TaskTracker::new();
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (sock, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin API: accept failed; backing off");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (router, tls, stop) = (self.router.clone(), self.tls.clone(), stop.clone());
            tracker.spawn(async move {
                let _permit = permit;
                serve_connection(sock, peer, router, tls, stop).await;
            });
        }
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }
}

/// Re-read for each connection, so a renewed certificate applies without a restart.
fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, AdminError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let bad = |reason: String| AdminError::Tls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, private)
    .map_err(|e| bad(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn serve_connection(
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    tls: Option<(PathBuf, PathBuf)>,
    stop: CancellationToken,
) {
    let svc = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(Peer(peer));
        hyper::service::Service::call(&svc, req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    match tls {
        None => {
            let conn = builder.serve_connection(TokioIo::new(sock), service);
            drive(conn, stop).await;
        }
        Some((cert, key)) => {
            let acceptor = match tls_acceptor(&cert, &key) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "admin API: TLS unavailable");
                    return;
                }
            };
            let stream = match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(sock)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, client_ip = %peer.ip(), "admin API: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            drive(conn, stop).await;
        }
    }
}

async fn drive<I, S>(conn: hyper::server::conn::http1::Connection<I, S>, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = tokio::time::sleep(CONNECTION_LIMIT) => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    /// docs/openapi.json is the document the server serves: regenerate it with
    /// `WHARF_BLESS=1 cargo test --lib openapi_document` after changing an operation.
    #[test]
    fn openapi_document_in_docs_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
        let now = super::openapi_json();
        if std::env::var_os("WHARF_BLESS").is_some_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &now).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == now,
            "docs/openapi.json is stale: regenerate it with \
             `WHARF_BLESS=1 cargo test --lib openapi_document` and commit it"
        );
    }

    #[test]
    fn openapi_document_is_3_1_with_every_operation_secured() {
        let doc: serde_json::Value = serde_json::from_str(&super::openapi_json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 15, "{paths:?}");
        for (path, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                assert!(
                    op["security"].is_array(),
                    "{method} {path} has no security requirement"
                );
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path} does not document 401"
                );
            }
        }
    }
}
