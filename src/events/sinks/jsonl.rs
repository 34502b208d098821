//! The JSON-lines sink: one event per line, appended, flushed and fsynced before it counts
//! as delivered, and never twice: an event delivered again (its delivery could not be recorded
//! before a crash) whose line is already in the file is not written again. The embedded
//! default writes `./events.jsonl`.

use std::collections::{HashSet, VecDeque};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{DeliveryError, EventSink};
use crate::events::Event;

/// Ids of the events most recently written, remembered to skip a redelivery.
const REMEMBERED: usize = 100_000;
/// How much of the file's end is read at start to learn the ids already written.
const TAIL: u64 = 8 << 20;

pub struct JsonlSink {
    name: String,
    path: PathBuf,
    /// One writer at a time, so lines never interleave; the ids written lately.
    written: Arc<Mutex<Option<Written>>>,
}

#[derive(Default)]
struct Written {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Written {
    fn remember(&mut self, id: String) {
        if self.ids.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }

    /// The ids in the last `TAIL` bytes of the file.
    fn load(path: &Path) -> std::io::Result<Written> {
        let mut w = Written::default();
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(w),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail)?;
        for line in tail.split(|b| *b == b'\n') {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
                if let Some(id) = v["id"].as_str() {
                    w.remember(id.to_string());
                }
            }
        }
        Ok(w)
    }
}

impl JsonlSink {
    pub fn new(name: String, path: PathBuf) -> Self {
        JsonlSink {
            name,
            path,
            written: Arc::new(Mutex::new(None)),
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
        let written = self.written.clone();
        let id = event.id.clone();
        let mut line = event.body.clone().into_bytes();
        line.push(b'\n');
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut g = written.lock().unwrap_or_else(|e| e.into_inner());
            if g.is_none() {
                *g = Some(Written::load(&path)?);
            }
            let w = g.as_mut().expect("loaded above");
            if w.ids.contains(&id) {
                return Ok(()); // already in the file: a redelivery
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(&line)?;
            f.sync_data()?;
            w.remember(id);
            Ok(())
        })
        .await
        .map_err(|e| DeliveryError::retriable(e.to_string()))?
        .map_err(|e| DeliveryError::retriable(format!("{}: {e}", self.path.display())))
    }
}
