//! The built-in receipts sink: for an arrival in a folder with `--receipt`, writes a small
//! JSON receipt (name, bytes, SHA-256, arrival time, event id) into the partner's folders, so
//! the partner can fetch proof of what was received. It is delivered like any sink, at least
//! once and in order per account, from a delivery row the arrival's own event transaction
//! inserts (only for such arrivals): a receipt exists for every such event, crash or not. A
//! redelivery writes the same receipt again.

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;

use super::{DeliveryError, EventSink};
use crate::events::outbox::{Outbox, RECEIPTS};
use crate::events::{Event, COMPLETED};
use crate::session::intent::ReceiptTarget;
use crate::storage::{Home, Storage, UploadContext};

pub struct ReceiptSink {
    outbox: Outbox,
    storage: Storage,
}

impl ReceiptSink {
    pub fn new(outbox: Outbox, storage: Storage) -> Self {
        ReceiptSink { outbox, storage }
    }

    /// The receipt's content, from the arrival's event.
    fn receipt(event: &Event) -> Result<Vec<u8>, DeliveryError> {
        let ce: serde_json::Value = serde_json::from_str(&event.body)
            .map_err(|e| DeliveryError::Permanent(format!("unreadable event: {e}")))?;
        let d = &ce["data"];
        let path = d["path"].as_str().unwrap_or_default();
        let receipt = json!({
            "name": path.rsplit('/').next().unwrap_or_default(),
            "path": path,
            "bytes": d["bytes"],
            "sha256": d["sha256"],
            "arrived_at": d["finished_at"],
            "event_id": event.id,
            "username": d["username"],
        });
        let mut out = serde_json::to_vec_pretty(&receipt).expect("receipt serialises");
        out.push(b'\n');
        Ok(out)
    }
}

#[async_trait]
impl EventSink for ReceiptSink {
    fn name(&self) -> &str {
        RECEIPTS
    }

    async fn deliver(&self, event: &Event) -> Result<(), DeliveryError> {
        if event.kind != COMPLETED {
            return Ok(());
        }
        let target = self
            .outbox
            .arrivals()
            .receipt_target(&event.id)
            .await
            .map_err(|e| DeliveryError::retriable(e.to_string()))?;
        // Already written (a redelivery after the record of it was lost), or none asked.
        let Some(target) = target else {
            return Ok(());
        };
        let target: ReceiptTarget = serde_json::from_str(&target)
            .map_err(|e| DeliveryError::Permanent(format!("unreadable receipt target: {e}")))?;
        let home = Home::parse_uri(&target.home)
            .map_err(|e| DeliveryError::Permanent(format!("receipt target: {e}")))?;
        let body = Self::receipt(event)?;
        let backend = self.storage.backend(&home);
        let fail = |e: crate::storage::StorageError| {
            DeliveryError::retriable(format!("receipt {}: {e}", target.client_path))
        };
        let mut up = backend
            .begin_upload(&target.path, UploadContext::untracked())
            .await
            .map_err(fail)?;
        if let Err(e) = up.write(Bytes::from(body)).await {
            up.abort().await;
            return Err(fail(e));
        }
        up.commit().await.map_err(fail)?;
        tracing::info!(activity = "RECEIPT", path = %target.client_path, event_id = %event.id, "receipt written");
        self.outbox
            .arrivals()
            .receipt_written(&event.id)
            .await
            .map_err(|e| DeliveryError::retriable(e.to_string()))
    }
}
