//! Every S3 call timed (all its attempts), and those that fail counted, by operation.

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

    fn read_after_execution(
        &self,
        ctx: &aws_sdk_s3::config::interceptors::FinalizerInterceptorContextRef<'_>,
        _: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| m.name().to_string())
            .unwrap_or_else(|| "unknown".into());
        let labels = crate::telemetry::metrics::OperationLabels { operation };
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
