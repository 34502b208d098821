//! What operators see: logging setup (`tracing` to stderr, pretty or one JSON object per line,
//! `RUST_LOG` overriding the configured level), the metrics registry, and the `/metrics`,
//! `/healthz` and `/readyz` endpoint.

pub mod http;
pub mod metrics;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Admin commands pass a quieter default level than `serve`
/// so their stdout/stderr stay readable; `RUST_LOG` overrides either.
pub fn init(cfg: &LogConfig, default_level: &str) {
    // The FTP and TLS libraries log per-connection chatter (and, through their spans, whole
    // internal structures) at info and warn: keep only their errors unless RUST_LOG asks.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| {
            EnvFilter::try_new(format!(
                "{default_level},libunftp=error,unftp_core=error,rustls=error"
            ))
        })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.with_target(false).try_init(),
    };
}
