//! Where events go: the `EventSink` seam and one file per sink (webhook, NATS JetStream,
//! JSON lines). Sinks only deliver; the dispatcher owns retries and bookkeeping.

pub mod jsonl;
pub mod nats;
pub mod receipts;
pub mod webhook;

use std::time::Duration;

use async_trait::async_trait;

use super::Event;
use crate::config::{SinkConfig, SinkKind};

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Try again later (sink down, timeout, non-2xx); `retry_after` is the sink's own hint.
    #[error("{message}")]
    Retriable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// This event can never be delivered as it is (still retried, with the longest backoff,
    /// since an event is never dropped silently).
    #[error("{0}")]
    Permanent(String),
}

impl DeliveryError {
    pub fn retriable(message: impl Into<String>) -> Self {
        DeliveryError::Retriable {
            message: message.into(),
            retry_after: None,
        }
    }
}

#[async_trait]
pub trait EventSink: Send + Sync {
    fn name(&self) -> &str;
    /// Returns only once the sink has the event durably (2xx, JetStream ack, fsync).
    async fn deliver(&self, event: &Event) -> Result<(), DeliveryError>;
    /// The longest one delivery may take (the dispatcher holds its claim at least this long).
    fn timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// The configured sinks, or the embedded default (one jsonl sink at `events.jsonl`).
pub fn configured(sinks: Option<&[SinkConfig]>) -> Vec<SinkConfig> {
    match sinks {
        Some(s) => s.to_vec(),
        None => vec![SinkConfig {
            name: Some("local".into()),
            kind: SinkKind::Jsonl,
            path: Some("events.jsonl".into()),
            url: None,
            secret: None,
            timeout: None,
            subject_prefix: None,
            stream: None,
            max_age: None,
        }],
    }
}

/// A sink's name: its `name`, or its type.
pub fn sink_name(c: &SinkConfig) -> String {
    c.sink_name()
}

pub fn build(c: &SinkConfig) -> anyhow::Result<Box<dyn EventSink>> {
    let name = sink_name(c);
    Ok(match c.kind {
        SinkKind::Jsonl => Box::new(jsonl::JsonlSink::new(
            name,
            c.path.clone().unwrap_or_else(|| "events.jsonl".into()),
        )),
        SinkKind::Webhook => Box::new(webhook::WebhookSink::new(name, c)?),
        SinkKind::Nats => Box::new(nats::NatsSink::new(name, c)),
    })
}
