//! Malware scanning before commit: the `Scanner` seam the upload pipeline (`session/`) tees
//! an upload's bytes into as they arrive, whose verdict is known before anything becomes
//! visible; `clamd.rs` implements it on ClamAV's daemon. Storage and the protocol
//! front-ends never learn about it.

pub mod clamd;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean {
        engine: &'static str,
        signature_db: String,
    },
    Infected {
        engine: &'static str,
        signature: String,
    },
    /// Larger than the scanner takes (`scan.max_bytes`): not scanned.
    Oversize { limit: u64 },
    /// The scanner could not be reached or did not answer in time.
    Unavailable(String),
}

impl Verdict {
    /// The event's `scan` field (never for an infected file a partner is told about: the
    /// client hears only "rejected by content scan").
    pub fn event_field(&self) -> serde_json::Value {
        match self {
            Verdict::Clean {
                engine,
                signature_db,
            } => json!({"engine": engine, "result": "clean", "signature_db": signature_db}),
            Verdict::Infected { engine, signature } => {
                json!({"engine": engine, "result": "infected", "signature": signature})
            }
            Verdict::Oversize { limit } => {
                json!({"result": "skipped", "reason": format!("larger than {limit} bytes (scan.max_bytes)")})
            }
            Verdict::Unavailable(why) => json!({"result": "unavailable", "reason": why}),
        }
    }

    pub fn result(&self) -> &'static str {
        match self {
            Verdict::Clean { .. } => "clean",
            Verdict::Infected { .. } => "infected",
            Verdict::Oversize { .. } => "skipped",
            Verdict::Unavailable(_) => "unavailable",
        }
    }
}

/// Where scans run.
#[async_trait]
pub trait Scanner: Send + Sync {
    /// Starts scanning one file: waits while `scan.max_concurrent` scans run on this
    /// instance (backpressure on the uploads that need one).
    async fn start(&self) -> Box<dyn ScanStream>;
}

/// One file being scanned: its bytes in order, then the verdict.
#[async_trait]
pub trait ScanStream: Send {
    /// The next bytes of the file. Never fails: a scanner that stops answering makes the
    /// verdict `Unavailable`, and a file past the limit `Oversize`.
    async fn write(&mut self, data: &Bytes);
    /// The verdict, once every byte was written.
    async fn finish(self: Box<Self>) -> Verdict;
}
