//! The process's Prometheus metrics: one registry, the metric families every layer updates,
//! and the text exposition served at `/metrics`. Labels never carry usernames or paths.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UploadLabels {
    pub protocol: &'static str,
    /// `completed` or `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub protocol: &'static str,
    /// `password`, `publickey` or `none`.
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// The S3 API operation, e.g. `PutObject`.
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub sink: String,
    /// `delivered`, `retry` or `dead`.
    pub outcome: &'static str,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn size_histogram() -> Histogram {
    // 1 KiB .. 16 GiB
    Histogram::new(exponential_buckets(1024.0, 4.0, 13))
}

pub struct Metrics {
    registry: Registry,
    pub sessions_active: Family<ProtocolLabels, Gauge>,
    pub uploads: Family<UploadLabels, Counter>,
    pub upload_bytes: Family<ProtocolLabels, Counter>,
    pub upload_duration: Family<ProtocolLabels, Histogram, fn() -> Histogram>,
    pub upload_size: Family<ProtocolLabels, Histogram, fn() -> Histogram>,
    pub auth_failures: Family<AuthLabels, Counter>,
    pub s3_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pub s3_errors: Family<OperationLabels, Counter>,
    pub s3_attempt_failures: Family<OperationLabels, Counter>,
    pub event_claims: Family<SinkLabels, Counter>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub outbox_pending: Family<SinkLabels, Gauge>,
    pub bans_active: Gauge,
    pub sessions_cut_at_shutdown: Family<ProtocolLabels, Counter>,
    pub outbox_oldest_age: Family<SinkLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub expectation_windows: Family<StateLabels, Gauge>,
    pub scans: Family<ResultLabels, Counter>,
    pub scan_duration: Histogram,
    pub scanned_bytes: Counter,
    pub clamd_reachable: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            sessions_active: Family::default(),
            uploads: Family::default(),
            upload_bytes: Family::default(),
            upload_duration: Family::new_with_constructor(duration_histogram),
            upload_size: Family::new_with_constructor(size_histogram),
            auth_failures: Family::default(),
            s3_duration: Family::new_with_constructor(duration_histogram),
            s3_errors: Family::default(),
            s3_attempt_failures: Family::default(),
            event_claims: Family::default(),
            deliveries: Family::default(),
            outbox_pending: Family::default(),
            bans_active: Gauge::default(),
            sessions_cut_at_shutdown: Family::default(),
            outbox_oldest_age: Family::default(),
            expectation_windows: Family::default(),
            scans: Family::default(),
            scan_duration: duration_histogram(),
            scanned_bytes: Counter::default(),
            clamd_reachable: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "wharf_sessions_active",
            "Connected client sessions",
            m.sessions_active.clone(),
        );
        r.register(
            "wharf_uploads",
            "Uploads ended, by outcome (completed: stored and recorded; failed: nothing visible)",
            m.uploads.clone(),
        );
        r.register(
            "wharf_upload_bytes",
            "Bytes of completed uploads",
            m.upload_bytes.clone(),
        );
        r.register(
            "wharf_upload_duration_seconds",
            "Time from open to the client's close being answered, completed uploads",
            m.upload_duration.clone(),
        );
        r.register(
            "wharf_upload_size_bytes",
            "Size of completed uploads",
            m.upload_size.clone(),
        );
        r.register(
            "wharf_auth_failures",
            "Refused login attempts, by method",
            m.auth_failures.clone(),
        );
        r.register(
            "wharf_s3_request_duration_seconds",
            "S3 request latency (all attempts and retries of one call), by operation",
            m.s3_duration.clone(),
        );
        r.register(
            "wharf_s3_request_errors",
            "S3 calls that failed after retries, by operation",
            m.s3_errors.clone(),
        );
        r.register(
            "wharf_s3_request_attempt_failures",
            "S3 request attempts that timed out, lost their connection or got a 5xx answer (retried while attempts remain), by operation",
            m.s3_attempt_failures.clone(),
        );
        r.register(
            "wharf_event_claims",
            "Claims of due deliveries this instance's dispatcher made in the outbox, by sink",
            m.event_claims.clone(),
        );
        r.register(
            "wharf_event_deliveries",
            "Event delivery attempts by sink and outcome (delivered, retry, dead)",
            m.deliveries.clone(),
        );
        r.register(
            "wharf_sessions_cut_at_shutdown",
            "Sessions still running when the shutdown grace ended, cut (their uploads aborted)",
            m.sessions_cut_at_shutdown.clone(),
        );
        r.register(
            "wharf_bans_active",
            "Addresses banned for repeated failed logins (all instances on the database)",
            m.bans_active.clone(),
        );
        r.register(
            "wharf_outbox_pending",
            "Events not yet delivered to the sink (whole database, all instances)",
            m.outbox_pending.clone(),
        );
        r.register(
            "wharf_outbox_oldest_pending_age_seconds",
            "Age of the oldest event not yet delivered to the sink (0 when none)",
            m.outbox_oldest_age.clone(),
        );
        r.register(
            "wharf_expectation_windows",
            "Expected-arrival windows of the last 7 days by state (open, met, late, missed; all instances)",
            m.expectation_windows.clone(),
        );
        for state in ["open", "met", "late", "missed"] {
            m.expectation_windows
                .get_or_create_owned(&StateLabels { state });
        }
        r.register(
            "wharf_scans",
            "Content scans by result (clean, infected, skipped: too large, unavailable)",
            m.scans.clone(),
        );
        r.register(
            "wharf_scan_duration_seconds",
            "Time from a scan's start to its verdict",
            m.scan_duration.clone(),
        );
        r.register(
            "wharf_scanned_bytes",
            "Bytes sent to the content scanner",
            m.scanned_bytes.clone(),
        );
        r.register(
            "wharf_clamd_reachable",
            "Whether clamd answered the last attempt (1) or not (0); /readyz does not depend on it",
            m.clamd_reachable.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Creates a protocol's series at zero, so they are scraped (and alert rules can refer
    /// to them) before anything happens.
    pub fn register_protocol(&self, protocol: &'static str) {
        let p = ProtocolLabels { protocol };
        self.sessions_active.get_or_create_owned(&p);
        self.sessions_cut_at_shutdown.get_or_create_owned(&p);
        self.upload_bytes.get_or_create_owned(&p);
        for outcome in ["completed", "failed"] {
            self.uploads
                .get_or_create_owned(&UploadLabels { protocol, outcome });
        }
        for method in ["password", "publickey"] {
            self.auth_failures
                .get_or_create_owned(&AuthLabels { protocol, method });
        }
    }

    /// Creates a sink's delivery and claim series at zero.
    pub fn register_sink(&self, sink: &str) {
        for outcome in ["delivered", "retry", "dead"] {
            self.delivery(sink, outcome);
        }
        self.event_claim(sink);
    }

    pub fn event_claim(&self, sink: &str) -> Counter {
        self.event_claims
            .get_or_create_owned(&SinkLabels { sink: sink.into() })
    }

    /// The registry in Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn upload_completed(&self, protocol: &'static str, bytes: u64, took: Duration) {
        let p = ProtocolLabels { protocol };
        self.uploads
            .get_or_create(&UploadLabels {
                protocol,
                outcome: "completed",
            })
            .inc();
        self.upload_bytes.get_or_create(&p).inc_by(bytes);
        self.upload_duration
            .get_or_create(&p)
            .observe(took.as_secs_f64());
        self.upload_size.get_or_create(&p).observe(bytes as f64);
    }

    pub fn upload_failed(&self, protocol: &'static str) {
        self.uploads
            .get_or_create(&UploadLabels {
                protocol,
                outcome: "failed",
            })
            .inc();
    }

    pub fn auth_failed(&self, protocol: &'static str, method: &'static str) {
        self.auth_failures
            .get_or_create(&AuthLabels { protocol, method })
            .inc();
    }

    pub fn delivery(&self, sink: &str, outcome: &'static str) -> Counter {
        self.deliveries.get_or_create_owned(&DeliveryLabels {
            sink: sink.to_string(),
            outcome,
        })
    }

    /// Counts a session as active until the returned guard is dropped.
    pub fn session(&'static self, protocol: &'static str) -> ActiveSession {
        let gauge = self
            .sessions_active
            .get_or_create_owned(&ProtocolLabels { protocol });
        gauge.inc();
        ActiveSession(gauge)
    }
}

pub struct ActiveSession(Gauge);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_documented_names_and_no_stray_total() {
        let m = Metrics::new();
        m.upload_completed("sftp", 2048, Duration::from_millis(5));
        m.upload_failed("sftp");
        m.auth_failed("sftp", "password");
        let text = m.encode();
        for line in [
            "wharf_uploads_total{protocol=\"sftp\",outcome=\"completed\"} 1",
            "wharf_uploads_total{protocol=\"sftp\",outcome=\"failed\"} 1",
            "wharf_upload_bytes_total{protocol=\"sftp\"} 2048",
            "wharf_auth_failures_total{protocol=\"sftp\",method=\"password\"} 1",
            "wharf_upload_size_bytes_count{protocol=\"sftp\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("wharf_sessions_active_total"));
        assert!(!text.contains("_seconds_total"));
    }
}
