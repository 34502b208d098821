//! The NATS JetStream sink: publish to `<subject_prefix>.<type>` in `stream` (created when
//! missing) with `Nats-Msg-Id` = event id, delivered only once JetStream acknowledges it.

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{DeliveryError, EventSink};
use crate::config::SinkConfig;
use crate::events::Event;

pub const DEFAULT_SUBJECT_PREFIX: &str = "events";
pub const DEFAULT_STREAM: &str = "WHARF_EVENTS";

pub struct NatsSink {
    name: String,
    url: String,
    subject_prefix: String,
    stream: String,
    js: OnceCell<async_nats::jetstream::Context>,
}

impl NatsSink {
    pub fn new(name: String, c: &SinkConfig) -> Self {
        NatsSink {
            name,
            url: c.url.clone().unwrap_or_default(),
            subject_prefix: c
                .subject_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_SUBJECT_PREFIX.into()),
            stream: c.stream.clone().unwrap_or_else(|| DEFAULT_STREAM.into()),
            js: OnceCell::new(),
        }
    }

    /// Connects and makes sure the stream exists, once; a failure is retried on the next
    /// delivery.
    async fn context(&self) -> Result<&async_nats::jetstream::Context, DeliveryError> {
        self.js
            .get_or_try_init(|| async {
                let client = async_nats::connect(&self.url)
                    .await
                    .map_err(|e| DeliveryError::retriable(format!("NATS connect: {e}")))?;
                let js = async_nats::jetstream::new(client);
                let subjects = vec![format!("{}.>", self.subject_prefix)];
                js.get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: self.stream.clone(),
                    subjects,
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    DeliveryError::retriable(format!("JetStream stream {}: {e}", self.stream))
                })?;
                Ok(js)
            })
            .await
    }
}

#[async_trait]
impl EventSink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, event: &Event) -> Result<(), DeliveryError> {
        let js = self.context().await?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.as_str());
        headers.insert("Content-Type", "application/cloudevents+json");
        let subject = format!("{}.{}", self.subject_prefix, event.kind);
        let ack = js
            .publish_with_headers(subject, headers, event.body.clone().into())
            .await
            .map_err(|e| DeliveryError::retriable(format!("JetStream publish: {e}")))?;
        ack.await
            .map_err(|e| DeliveryError::retriable(format!("JetStream ack: {e}")))?;
        Ok(())
    }
}
