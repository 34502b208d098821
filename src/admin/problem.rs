//! Errors as `application/problem+json` (RFC 9457), one stable `type` per kind of error, and
//! the extractors that turn malformed requests into such problems instead of axum's text.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::identity::manage::{ErrorKind, ManageError};

/// Problem types are `urn:wharf:problem:<slug>` (the slugs are listed in the README).
pub const TYPE_PREFIX: &str = "urn:wharf:problem:";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:wharf:problem:<slug>`: stable, one per kind of error (`unknown-user`,
    /// `invalid-ssh-key`, `unauthorized`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    pub status: u16,
    /// What is wrong, in the words the CLI uses.
    pub detail: String,
}

impl Problem {
    pub fn new(status: u16, slug: &str, detail: impl Into<String>) -> Problem {
        let title = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error")
            .to_string();
        Problem {
            kind: format!("{TYPE_PREFIX}{slug}"),
            title,
            status,
            detail: detail.into(),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Problem {
        Problem::new(400, "invalid-request", detail)
    }

    pub fn unauthorized() -> Problem {
        Problem::new(
            401,
            "unauthorized",
            "a valid admin token is required: Authorization: Bearer wharf_…",
        )
    }
}

impl From<ManageError> for Problem {
    fn from(e: ManageError) -> Problem {
        if e.kind == ErrorKind::Internal || e.kind == ErrorKind::DatabaseUnavailable {
            tracing::error!(error = %e.message, kind = e.kind.slug(), "admin API request failed");
        }
        Problem::new(e.kind.status(), e.kind.slug(), e.message)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut r = (status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wharf admin\""),
            );
        }
        r
    }
}

/// What a handler returns.
pub type ApiResult<T> = Result<T, Problem>;

fn rejection(status: StatusCode, text: String) -> Problem {
    match status.as_u16() {
        413 => Problem::new(413, "payload-too-large", text),
        415 => Problem::new(
            415,
            "unsupported-media-type",
            "send the body as JSON (Content-Type: application/json)",
        ),
        _ => Problem::invalid(text),
    }
}

/// A JSON body: malformed, oversized or mistyped ones become problems; a string holding a
/// NUL character is refused (no database can store one).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .is_some_and(|v| v == "application/json" || v.ends_with("+json"));
        if !json {
            return Err(rejection(StatusCode::UNSUPPORTED_MEDIA_TYPE, String::new()));
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(e) => return Err(rejection(e.status(), e.body_text())),
        };
        if bytes.windows(6).any(|w| w == b"\\u0000") {
            return Err(Problem::invalid("NUL characters are not allowed"));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> Problem {
    rejection(e.status(), e.body_text())
}

/// Query parameters, refused as a problem when they do not parse.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| Problem::invalid(e.body_text()))
    }
}

/// Path parameters, refused as a problem when they do not decode.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| Problem::invalid(e.body_text()))
    }
}

/// The error answers every operation may give (documented on each).
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum Errors {
    /// Malformed request: unparsable JSON, parameters or path.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// No valid token (missing, wrong, expired or revoked).
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// A read token on a write operation.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// No such account, key, folder, expectation, event or ban.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// It exists already, or the account's folders stand in the way.
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem),
    /// The body is larger than the admin API accepts (1 MiB).
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// The body is not JSON.
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// A value is not valid: the detail says which, as the CLI does.
    #[response(status = 422, content_type = "application/problem+json")]
    Invalid(Problem),
    /// The database is unavailable, or the request took too long.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}
