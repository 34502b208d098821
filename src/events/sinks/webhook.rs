//! The webhook sink: `POST` of the CloudEvent with `Content-Type: application/cloudevents+json`
//! and `Wharf-Signature: sha256=<hex HMAC-SHA256 of the exact body>`; 2xx is delivered,
//! anything else (or a timeout, or a redirect, which is not followed) is retried, honouring
//! `Retry-After` up to the dispatcher's longest backoff.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::{DeliveryError, EventSink};
use crate::config::SinkConfig;
use crate::events::Event;

pub const SIGNATURE_HEADER: &str = "Wharf-Signature";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct WebhookSink {
    name: String,
    timeout: Duration,
    url: String,
    secret: SecretString,
    client: reqwest::Client,
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookSink {
    pub fn new(name: String, c: &SinkConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(c.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT))
            // A redirect would send the signed event somewhere nobody configured: a 3xx is a
            // failed delivery like any other non-2xx.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(WebhookSink {
            name,
            timeout: c.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT),
            url: c.url.clone().unwrap_or_default(),
            secret: c
                .secret
                .clone()
                .unwrap_or_else(|| SecretString::from(String::new())),
            client,
        })
    }
}

#[async_trait]
impl EventSink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn deliver(&self, event: &Event) -> Result<(), DeliveryError> {
        let body = event.body.clone();
        let sig = signature(self.secret.expose_secret(), body.as_bytes());
        let res = self
            .client
            .post(&self.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/cloudevents+json",
            )
            .header(SIGNATURE_HEADER, sig)
            .header("Wharf-Event-Id", &event.id)
            .body(body)
            .send()
            .await
            .map_err(|e| DeliveryError::retriable(format!("POST failed: {}", without_url(&e))))?;
        let status = res.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = res
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(DeliveryError::Retriable {
            message: format!("webhook answered {status}"),
            retry_after,
        })
    }
}

/// reqwest's errors include the URL, which may carry credentials in its query string.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request error"
    };
    let mut detail = String::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        detail = s.to_string();
        src = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} ({detail})")
    }
}
