//! The JSON-lines sink: one event per line, appended, flushed and fsynced before it counts
//! as delivered. The embedded default writes `./events.jsonl`.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{DeliveryError, EventSink};
use crate::events::Event;

pub struct JsonlSink {
    name: String,
    path: PathBuf,
    /// One writer at a time, so lines never interleave.
    lock: Arc<Mutex<()>>,
}

impl JsonlSink {
    pub fn new(name: String, path: PathBuf) -> Self {
        JsonlSink {
            name,
            path,
            lock: Arc::new(Mutex::new(())),
        }
    }
}

#[async_trait]
impl EventSink for JsonlSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, event: &Event) -> Result<(), DeliveryError> {
        let path = self.path.clone();
        let lock = self.lock.clone();
        let mut line = event.body.clone().into_bytes();
        line.push(b'\n');
        tokio::task::spawn_blocking(move || {
            let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(&line)?;
            f.sync_data()
        })
        .await
        .map_err(|e| DeliveryError::retriable(e.to_string()))?
        .map_err(|e| DeliveryError::retriable(format!("{}: {e}", self.path.display())))
    }
}
