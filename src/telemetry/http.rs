//! The operations endpoint on `metrics.listen`: `/metrics` (Prometheus text), `/healthz`
//! (the process is up) and `/readyz` (every dependency answers, else 503 naming what is down).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::metrics;

/// How long one readiness check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection to this endpoint is closed after this long, whatever it is doing.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);
/// How long the checks' outcome answers `/readyz` before they run again. A balancer checks
/// each of its backends on its own (three per instance in the recipe in `deploy/`, each every
/// second): without this, each of its checks would cost a database round trip and an S3
/// HeadBucket. Checks that come while the checks run wait for that run's outcome.
const CHECKS_REUSED_FOR: Duration = Duration::from_secs(1);

/// What each check said in one run of the checks: its name and what is wrong, if anything.
type Outcome = Vec<(&'static str, Result<(), String>)>;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One readiness check: a name and a probe that says what is wrong.
pub struct Check {
    pub name: &'static str,
    pub probe: Box<dyn Fn() -> BoxFuture<Result<(), String>> + Send + Sync>,
}

pub struct Endpoint {
    pub checks: Vec<Check>,
    /// Set when a shutdown begins: `/readyz` answers 503 `draining` from then on, so load
    /// balancers stop sending new connections while the listeners are still open.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Brings gauges read from elsewhere (the outbox) up to date before a scrape.
    pub refresh: Box<dyn Fn() -> BoxFuture<()> + Send + Sync>,
    /// The last run of `checks` (see `CHECKS_REUSED_FOR`).
    pub checked: tokio::sync::Mutex<Option<(tokio::time::Instant, Outcome)>>,
}

/// Serves until `stop`.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>, stop: CancellationToken) {
    loop {
        let (sock, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(handle(req, &endpoint).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), service);
            let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(req: Request<Incoming>, endpoint: &Endpoint) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            (endpoint.refresh)().await;
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics().encode(),
            )
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => readiness(endpoint).await,
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Runs every check at once, each within `CHECK_TIMEOUT`.
async fn run_checks(checks: &[Check]) -> Outcome {
    let outcome = futures::future::join_all(checks.iter().map(|c| async {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, (c.probe)()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        };
        (c.name, outcome)
    }))
    .await;
    for (name, r) in &outcome {
        if let Err(e) = r {
            tracing::warn!(check = name, error = %e, "not ready");
        }
    }
    outcome
}

/// 503 `draining`, once a shutdown has begun.
fn draining(endpoint: &Endpoint) -> Option<Response<Full<Bytes>>> {
    if !endpoint.draining.load(std::sync::atomic::Ordering::Acquire) {
        return None;
    }
    let body = serde_json::json!({ "status": "draining", "checks": {} });
    Some(reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "application/json",
        format!("{body}\n"),
    ))
}

async fn readiness(endpoint: &Endpoint) -> Response<Full<Bytes>> {
    if let Some(r) = draining(endpoint) {
        return r;
    }
    let results = {
        let mut last = endpoint.checked.lock().await;
        match &*last {
            Some((at, outcome)) if at.elapsed() < CHECKS_REUSED_FOR => outcome.clone(),
            _ => {
                let outcome = run_checks(&endpoint.checks).await;
                *last = Some((tokio::time::Instant::now(), outcome.clone()));
                outcome
            }
        }
    };
    // A shutdown that began while the checks ran (or while this check waited for another's
    // run, up to `CHECK_TIMEOUT`) is answered as such: the balancer must not read a stale
    // "ready" after the instance said it is draining.
    if let Some(r) = draining(endpoint) {
        return r;
    }
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    for (name, outcome) in results {
        let v = match outcome {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                ready = false;
                e
            }
        };
        checks.insert(name.into(), v.into());
    }
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "unavailable" },
        "checks": checks,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    reply(status, "application/json", format!("{body}\n"))
}
