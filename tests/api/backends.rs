//! The real servers the production-stack tests talk to: Postgres, Redis and the AWS APIs through
//! moto's server. `scripts/test.sh` starts them and exports where they are; without them a test
//! is skipped with a note, except under CI (`CI=true`), where a missing service fails the test.

#![allow(dead_code)]

use aws_sdk_sqs::types::QueueAttributeName;

fn required(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok_and(|c| c == "true") => {
            panic!(
                "{var} is not set: under CI every backend must be available (run scripts/test.sh)"
            )
        }
        _ => {
            eprintln!(
                "skipping: {var} is not set (scripts/test.sh starts the services and sets it)"
            );
            None
        }
    }
}

/// `postgres://…` of a server where tests may create databases.
pub fn postgres_url() -> Option<String> {
    required("VOICEGRAPH_TEST_POSTGRES_URL")
}

/// `redis://…` of a Redis server.
pub fn redis_url() -> Option<String> {
    required("VOICEGRAPH_TEST_REDIS_URL")
}

/// The AWS emulator (moto) endpoint; the SDK reads it from `AWS_ENDPOINT_URL`.
pub fn aws_endpoint() -> Option<String> {
    required("AWS_ENDPOINT_URL")
}

/// Skips the test (returns) when a service is missing outside CI.
#[macro_export]
macro_rules! require {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return,
        }
    };
}

pub async fn sdk() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The ARN of a queue, which redrive policies and SNS subscriptions name it by.
async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone()
}

/// A queue with a dead-letter queue after `max_receives`; returns (queue URL, DLQ URL).
pub async fn create_queue_with_dlq(
    sdk: &aws_config::SdkConfig,
    name: &str,
    max_receives: u32,
    visibility_secs: u32,
) -> (String, String) {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = queue_arn(&sqs, &dlq_url).await;
    let redrive = serde_json::json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives.to_string() }).to_string();
    let url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_secs.to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    (url, dlq_url)
}

/// A plain queue; returns its URL.
pub async fn create_queue(sdk: &aws_config::SdkConfig, name: &str) -> String {
    aws_sdk_sqs::Client::new(sdk)
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap()
}

/// An SNS topic delivering raw messages to a new SQS queue; returns (topic ARN, queue URL).
pub async fn create_topic_with_queue(sdk: &aws_config::SdkConfig, name: &str) -> (String, String) {
    let sns = aws_sdk_sns::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let topic = sns
        .create_topic()
        .name(name)
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let url = create_queue(sdk, &format!("{name}-realtime")).await;
    let arn = queue_arn(&sqs, &url).await;
    let sub = sns
        .subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(arn)
        .send()
        .await
        .unwrap();
    sns.set_subscription_attributes()
        .subscription_arn(sub.subscription_arn.unwrap())
        .attribute_name("RawMessageDelivery")
        .attribute_value("true")
        .send()
        .await
        .unwrap();
    (topic, url)
}

/// A new S3 bucket; returns its name.
pub async fn create_bucket(sdk: &aws_config::SdkConfig) -> String {
    let name = unique("vg-test");
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket(&name).send().await.unwrap();
    name
}

/// The role the suite's apps run as on Postgres: no ownership, no superuser, no `BYPASSRLS`, so
/// that row-level security holds for everything they do. Granted its privileges per database by
/// the migrations step (`database_runtime_role`).
pub const RUNTIME_ROLE: &str = "voicegraph_test_runtime";

/// Creates the runtime role once per cluster (roles are cluster-wide; parallel tests race to it).
pub async fn ensure_runtime_role(admin: &sea_orm::DatabaseConnection) {
    sea_orm::ConnectionTrait::execute_unprepared(
        admin,
        &format!(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{RUNTIME_ROLE}') THEN
                     CREATE ROLE {RUNTIME_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
                 END IF;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
             END $$"
        ),
    )
    .await
    .expect("create the runtime role");
}

/// `url` (an owner's: `postgres://postgres@host/db`) with the runtime role as its user.
pub fn runtime_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a database URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{RUNTIME_ROLE}@{host}")
}

/// A fresh, empty Postgres database; returns its URL (the owner's).
pub async fn fresh_postgres_db() -> Option<String> {
    let base = postgres_url()?;
    let base = base.trim_end_matches('/').to_string();
    let name = format!("vg_t_{}", uuid::Uuid::new_v4().simple());
    let admin = sea_orm::Database::connect(format!("{base}/postgres"))
        .await
        .expect("postgres");
    sea_orm::ConnectionTrait::execute_unprepared(&admin, &format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create database");
    ensure_runtime_role(&admin).await;
    let _ = admin.close().await;
    Some(format!("{base}/{name}"))
}

/// Everything a production instance needs, created fresh in the emulator and on the servers.
pub struct ProductionStack {
    /// The service's URL: the runtime role's.
    pub database_url: String,
    /// The owner's, for `voicegraph migrate` and for tests that inspect every tenant's rows.
    pub owner_database_url: String,
    pub redis_url: String,
    pub job_queue_url: String,
    pub dlq_url: String,
    pub topic_arn: String,
    pub realtime_queue_url: String,
    pub bucket: String,
}

impl ProductionStack {
    /// `None` (skip) outside CI when a service is missing.
    pub async fn create(
        redis_url: Option<String>,
        max_receives: u32,
        visibility_secs: u32,
    ) -> Option<Self> {
        aws_endpoint()?;
        let redis_url = match redis_url {
            Some(u) => u,
            None => self::redis_url()?,
        };
        let owner_database_url = fresh_postgres_db().await?;
        let database_url = runtime_url(&owner_database_url);
        let sdk = sdk().await;
        let name = unique("vg");
        let (job_queue_url, dlq_url) =
            create_queue_with_dlq(&sdk, &format!("{name}-jobs"), max_receives, visibility_secs)
                .await;
        let (topic_arn, realtime_queue_url) =
            create_topic_with_queue(&sdk, &format!("{name}-events")).await;
        let bucket = create_bucket(&sdk).await;
        Some(Self {
            database_url,
            owner_database_url,
            redis_url,
            job_queue_url,
            dlq_url,
            topic_arn,
            realtime_queue_url,
            bucket,
        })
    }

    /// The settings as `VOICEGRAPH_*` variables (without the prefix), production mode.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("env", "production".into()),
            ("database_url", self.database_url.clone()),
            ("migrate_database_url", self.owner_database_url.clone()),
            ("database_runtime_role", RUNTIME_ROLE.to_string()),
            ("redis_url", self.redis_url.clone()),
            ("job_queue_url", self.job_queue_url.clone()),
            ("events_topic_arn", self.topic_arn.clone()),
            ("realtime_queue_url", self.realtime_queue_url.clone()),
            ("blob_url", format!("s3://{}/voicegraph", self.bucket)),
        ]
    }
}
