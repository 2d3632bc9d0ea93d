//! The AWS SDK configuration shared by every AWS adapter: the SDK's usual chain (credentials,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`), so the same binary talks to AWS or to an emulator.

use aws_config::{BehaviorVersion, SdkConfig};

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
            .build(),
    )
}
