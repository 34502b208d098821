//! Every S3 call timed (all its attempts), and those that fail counted, by operation; every
//! attempt that fails (and is retried) logged and counted.

use super::*;

/// Times every S3 call (all its attempts) and counts those that fail (other than "not found"),
/// by operation.
#[derive(Debug)]
pub(super) struct RequestMetrics;

#[derive(Debug, Clone)]
struct CallStarted(std::time::Instant);

impl aws_smithy_types::config_bag::Storable for CallStarted {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

#[derive(Debug, Clone)]
struct AttemptStarted(std::time::Instant);

impl aws_smithy_types::config_bag::Storable for AttemptStarted {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

fn operation(cfg: &aws_sdk_s3::config::ConfigBag) -> String {
    cfg.load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
        .map(|m| m.name().to_string())
        .unwrap_or_else(|| "unknown".into())
}

impl aws_sdk_s3::config::Intercept for RequestMetrics {
    fn name(&self) -> &'static str {
        "wharf-request-metrics"
    }

    fn read_before_execution(
        &self,
        _: &aws_sdk_s3::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        cfg.interceptor_state()
            .store_put(CallStarted(std::time::Instant::now()));
        Ok(())
    }

    fn read_before_attempt(
        &self,
        _: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        cfg.interceptor_state()
            .store_put(AttemptStarted(std::time::Instant::now()));
        Ok(())
    }

    /// An attempt that timed out, lost its connection or got a 5xx (or 408/429) answer: the
    /// SDK retries it, and nothing else would show that a call took a whole attempt timeout
    /// longer than it should have.
    fn read_after_attempt(
        &self,
        ctx: &aws_sdk_s3::config::interceptors::FinalizerInterceptorContextRef<'_>,
        _: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let status = ctx.response().map(|r| r.status().as_u16());
        let failed = match status {
            Some(s) => s >= 500 || s == 408 || s == 429,
            None => ctx.output_or_error().is_some_and(|r| r.is_err()),
        };
        if !failed {
            return Ok(());
        }
        let operation = operation(cfg);
        let took_ms = cfg
            .load::<AttemptStarted>()
            .map_or(0, |AttemptStarted(t)| t.elapsed().as_millis() as u64);
        let error = match ctx.output_or_error() {
            Some(Err(e)) => format!("{}", DisplayErrorContext(e)),
            _ => String::new(),
        };
        tracing::warn!(operation = %operation, status, took_ms, error = %error, "S3 request attempt failed");
        crate::telemetry::metrics::metrics()
            .s3_attempt_failures
            .get_or_create(&crate::telemetry::metrics::OperationLabels { operation })
            .inc();
        Ok(())
    }

    fn read_after_execution(
        &self,
        ctx: &aws_sdk_s3::config::interceptors::FinalizerInterceptorContextRef<'_>,
        _: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let labels = crate::telemetry::metrics::OperationLabels {
            operation: operation(cfg),
        };
        let m = crate::telemetry::metrics::metrics();
        if let Some(CallStarted(t)) = cfg.load::<CallStarted>() {
            m.s3_duration
                .get_or_create(&labels)
                .observe(t.elapsed().as_secs_f64());
        }
        // "Not found" answers are how wharf asks whether something exists, not failures.
        let failed = ctx.output_or_error().is_some_and(|r| r.is_err())
            && ctx.response().map(|r| r.status().as_u16()) != Some(404);
        if failed {
            m.s3_errors.get_or_create(&labels).inc();
        }
        Ok(())
    }
}
