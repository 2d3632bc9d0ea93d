//! The AWS SDK configuration shared by every AWS adapter: the SDK's usual chain (credentials,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`), so the same binary talks to AWS or to an emulator. Every
//! client is built here, with an interceptor counting each operation it runs
//! (`voicegraph_aws_requests_total{service, operation}`): the calls a process makes, which
//! `tests/api/deploy.rs` holds against the instance roles of the deployment template.

use std::sync::LazyLock;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use prometheus::{IntCounterVec, Opts};

/// AWS operations run by this process (each execution once, however many attempts it took).
pub static AWS_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "aws_requests_total",
            "AWS API operations run by this process, by service and operation",
        ),
        &["service", "operation"],
    )
    .expect("valid metric")
});

#[derive(Debug)]
struct CountCalls;

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "voicegraph::CountCalls"
    }

    // After the operation's configuration is in the bag (it is not yet when execution starts).
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            AWS_REQUESTS
                .with_label_values(&[m.service(), m.name()])
                .inc();
        }
        Ok(())
    }
}

/// Loads the SDK configuration once; every client is built from it.
pub async fn sdk_config() -> SdkConfig {
    aws_config::load_defaults(BehaviorVersion::latest()).await
}

/// An S3 client; path-style addressing when an endpoint override points at an emulator or proxy
/// (virtual-host-style bucket names do not resolve there).
pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let path_style = sdk.endpoint_url().is_some();
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(path_style)
            .interceptor(CountCalls)
            .build(),
    )
}

pub fn sqs_client(sdk: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(sdk)
            .interceptor(CountCalls)
            .build(),
    )
}

pub fn sns_client(sdk: &SdkConfig) -> aws_sdk_sns::Client {
    aws_sdk_sns::Client::from_conf(
        aws_sdk_sns::config::Builder::from(sdk)
            .interceptor(CountCalls)
            .build(),
    )
}

pub fn secrets_client(sdk: &SdkConfig) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::from_conf(
        aws_sdk_secretsmanager::config::Builder::from(sdk)
            .interceptor(CountCalls)
            .build(),
    )
}
