//! AWS: CloudWatch in, Glue out. The only crate that links the AWS SDK.
//!
//! [`cloudwatch::CloudWatchSource`] polls `GetMetricData` and yields the
//! sidecar's telemetry windows; [`glue::GlueActuator`] turns each recovery
//! action into Glue API calls. Both plug into the sidecar's seams
//! (`TelemetrySource`, `Actuator`), so every Glue call goes through the same
//! breaker, bulkhead, learned timeout, jittered retries and idempotency key as
//! any other actuator. The SDK's own retries are switched off for that reason:
//! one retry policy, the sidecar's, governs every call, and [`errors`] says
//! explicitly which AWS errors are worth a retry.
//!
//! `aws-sdk-cloudwatch` is pinned to `=1.99.0`: from 1.100 on it speaks only
//! the RPC-v2 CBOR protocol, which the local AWS API server the tests run
//! against (moto) does not serve; 1.99.0 speaks the query protocol, which AWS
//! still accepts.

pub mod cloudwatch;
pub mod errors;
pub mod evidence;
pub mod glue;
pub mod sidecar;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use selfheal_sidecar::config::AwsConfig;
use std::time::Duration;

pub use aws_config::SdkConfig;

/// Full-jitter backoff of a throttled CloudWatch poll and of a
/// `retry_with_backoff` on Glue: retry n waits up to min(60 s, 1 s · 2^n).
pub const BACKOFF: selfheal_guard::retry::RetryPolicy =
    selfheal_guard::retry::RetryPolicy { max_attempts: u32::MAX, base_ms: 1000, cap_ms: 60_000 };
/// The SDK crates themselves, for embedders and for the end-to-end tests
/// (which set up Glue tables and publish metrics with them): a crate that
/// reaches the SDK through here needs no SDK dependency of its own, so
/// `--no-default-features` builds and tests stay free of the SDK.
pub use aws_sdk_cloudwatch;
pub use aws_sdk_glue;

/// The SDK configuration: the standard credential chain, region and profile,
/// with the overrides of `[aws]` (region, profile, endpoint URL; the
/// `AWS_ENDPOINT_URL` environment variable is honoured by the chain itself).
/// SDK retries are off: the sidecar's guardrails retry.
pub async fn sdk_config(c: &AwsConfig) -> SdkConfig {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).retry_config(RetryConfig::disabled()).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(r) = &c.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(p) = &c.profile {
        loader = loader.profile_name(p);
    }
    if let Some(u) = &c.endpoint_url {
        loader = loader.endpoint_url(u);
    }
    loader.load().await
}
