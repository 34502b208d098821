//! Who may call the admin API: a bearer token checked on every request (the same work
//! whatever is wrong with it), its scope against the method, and failed attempts counted
//! toward the address's ban as failed logins are.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;

use super::problem::Problem;
use super::{AdminState, Peer};
use crate::identity::audit::Actor;
use crate::identity::tokens::{self, Scope};

/// The username failed attempts count under (for the per-name slow-down).
const BAN_NAME: &str = "<admin-api>";
/// A token's `last_used_at` is written at most this often per instance.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

fn bearer(req: &Request) -> Option<SecretString> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| SecretString::from(token.trim().to_string()))
}

/// Checks the token (except for `/openapi.json`, which is public) and hands the handler its
/// actor.
pub async fn authenticate(
    State(s): State<Arc<AdminState>>,
    mut req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == "/openapi.json" {
        return next.run(req).await;
    }
    let ip = req.extensions().get::<Peer>().map(|p| p.0.ip());
    if let Some(ip) = ip {
        // Refused before the token is looked at, as a banned address's logins are.
        if s.bans.is_banned(ip).await {
            tracing::warn!(activity = "AUTH_FAILURE", protocol = "admin", client_ip = %ip, reason = "banned", "admin API request refused");
            return Problem::unauthorized().into_response();
        }
    }
    let Some(token) = bearer(&req) else {
        return Problem::unauthorized().into_response();
    };
    let info = match tokens::authenticate(&s.db, &token).await {
        Ok(info) => info,
        Err(why) => {
            tracing::warn!(activity = "AUTH_FAILURE", protocol = "admin", client_ip = ?ip, reason = ?why, "admin API token refused");
            if let Some(ip) = ip {
                s.bans.failed(ip, BAN_NAME).await;
            }
            return Problem::unauthorized().into_response();
        }
    };
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if !reads && info.scope == Scope::Read {
        return Problem::new(
            403,
            "forbidden",
            format!(
                "token {} may only read (scope read); this operation needs a write token",
                info.name
            ),
        )
        .into_response();
    }
    touch(&s, &info.id);
    req.extensions_mut().insert(Actor::token(&info.name));
    next.run(req).await
}

/// Records the token's use in the background, at most once a minute: the answer never waits
/// for it.
fn touch(s: &Arc<AdminState>, id: &str) {
    {
        let mut seen = s.touched.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get(id).is_some_and(|t| t.elapsed() < TOUCH_EVERY) {
            return;
        }
        if seen.len() > 10_000 {
            seen.clear();
        }
        seen.insert(id.to_string(), Instant::now());
    }
    let (db, id) = (s.db.clone(), id.to_string());
    tokio::spawn(async move {
        if let Err(e) = tokens::touch(&db, &id).await {
            tracing::debug!(error = %e, "cannot record an admin token's use");
        }
    });
}
