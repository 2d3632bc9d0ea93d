//! THE composition root: settings in, `AppState` out. The one `match` per backend lives here;
//! production mode refuses the embedded backends here, with the variable to set.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::adapters::aws;
use crate::adapters::gemini::insights::{GeminiInsights, GeminiInsightsConfig};
use crate::adapters::gemini::{GeminiClient, GeminiConfig};
use crate::adapters::local::acoustic::LocalAcoustics;
use crate::adapters::local::blobs::FsBlobStore;
use crate::adapters::local::bus::InProcessBus;
use crate::adapters::local::lexicon::LexiconInsights;
use crate::adapters::local::limiter::InProcessLimiter;
use crate::adapters::redis::{RedisDocumentStore, RedisFanout, RedisFeed};
use crate::adapters::redis_limiter::{RedisLimiter, SLOT_LEASE};
use crate::adapters::s3::S3BlobStore;
use crate::adapters::secrets_manager;
use crate::adapters::sns::SnsPublisher;
use crate::adapters::sqs::SqsQueue;
use crate::config::{AnalyzerKind, Layers, Settings};
use crate::http::metrics::Metrics;
use crate::ports::{
    Acoustics, Analyzer, BlobStore, DocumentStore, EventFeed, EventPublisher, JobQueue, RateLimiter,
};
use crate::services::analysis::Pipeline;
use crate::services::auth::Authenticator;
use crate::services::jwt::JwtVerifier;
use crate::services::limits::{LimitMetrics, Limits};
use crate::services::live::EventHub;
use crate::services::revocation::Revocations;
use crate::state::{AppState, Realtime};
use crate::store::documents::DbDocumentStore;
use crate::store::queue::EmbeddedQueue;
use crate::store::{ConnectSettings, Store};

/// Which database, as chosen by `VOICEGRAPH_DATABASE_URL`.
pub enum DatabaseBackend {
    Sqlite(String),
    Postgres(String),
}

/// Which blob store, as chosen by `VOICEGRAPH_BLOB_URL`.
pub enum BlobBackend {
    Directory(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

fn refuse_embedded(settings: &Settings, what: &str, variable: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !settings.is_production(),
        "VOICEGRAPH_ENV=production refuses the embedded {what}: set {variable}"
    );
    Ok(())
}

pub fn database_backend(settings: &Settings) -> anyhow::Result<DatabaseBackend> {
    let url = settings.database_url();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(DatabaseBackend::Postgres(url))
    } else if url.starts_with("sqlite:") {
        refuse_embedded(
            settings,
            "SQLite database",
            "VOICEGRAPH_DATABASE_URL=postgres://…",
        )?;
        Ok(DatabaseBackend::Sqlite(url))
    } else {
        anyhow::bail!("VOICEGRAPH_DATABASE_URL must start with postgres:// or sqlite://")
    }
}

pub fn blob_backend(settings: &Settings) -> anyhow::Result<BlobBackend> {
    match settings.blob_url.as_deref() {
        None => {
            refuse_embedded(
                settings,
                "directory blob store",
                "VOICEGRAPH_BLOB_URL=s3://bucket/prefix",
            )?;
            Ok(BlobBackend::Directory(settings.data_dir.join("blobs")))
        }
        Some(url) if url.starts_with("file://") => {
            refuse_embedded(
                settings,
                "directory blob store",
                "VOICEGRAPH_BLOB_URL=s3://bucket/prefix",
            )?;
            Ok(BlobBackend::Directory(
                url.trim_start_matches("file://").into(),
            ))
        }
        Some(url) if url.starts_with("s3://") => {
            let (bucket, prefix) = S3BlobStore::parse_url(url)?;
            Ok(BlobBackend::S3 { bucket, prefix })
        }
        Some(_) => anyhow::bail!("VOICEGRAPH_BLOB_URL must be s3://bucket/prefix or file://dir"),
    }
}

/// Types the settings; when `VOICEGRAPH_SECRET_ID` names a Secrets Manager secret, its JSON keys
/// are merged over everything else first (read once, at start-up). Then the password secrets
/// (`VOICEGRAPH_DATABASE_PASSWORD_SECRET_ID` and its kin) are read and their passwords put into
/// the URLs they belong to.
pub async fn load_settings(mut layers: Layers) -> anyhow::Result<Settings> {
    let first = layers.settings()?;
    let password_secrets = [
        ("database_url", "database_password_secret_id"),
        (
            "migrate_database_url",
            "migrate_database_password_secret_id",
        ),
        ("redis_url", "redis_password_secret_id"),
    ];
    let any_password = |s: &Settings| {
        s.database_password_secret_id.is_some()
            || s.migrate_database_password_secret_id.is_some()
            || s.redis_password_secret_id.is_some()
    };
    if first.secret_id.is_none() && !any_password(&first) {
        return Ok(first);
    }
    let sdk = aws::sdk_config().await;
    if let Some(secret_id) = &first.secret_id {
        let secret = secrets_manager::fetch(&sdk, secret_id)
            .await
            .with_context(|| format!("reading VOICEGRAPH_SECRET_ID={secret_id}"))?;
        layers.merge_json(&secret);
    }
    for (url_key, secret_key) in password_secrets {
        let Some(secret_id) = layers.get(secret_key) else {
            continue;
        };
        let variable = format!("VOICEGRAPH_{}", secret_key.to_ascii_uppercase());
        let url_variable = format!("VOICEGRAPH_{}", url_key.to_ascii_uppercase());
        let url = layers
            .get(url_key)
            .with_context(|| format!("{variable} is set but {url_variable} is not"))?;
        let password = secrets_manager::fetch_password(&sdk, &secret_id)
            .await
            .with_context(|| format!("reading {variable}={secret_id}"))?;
        let url = with_password(&url, &password).with_context(|| url_variable.clone())?;
        layers.set(url_key, url);
    }
    layers.settings()
}

/// `url` with its password replaced by `password` (percent-encoded as the URL needs). Errors
/// never quote the URL, which may hold another password.
fn with_password(url: &str, password: &str) -> anyhow::Result<String> {
    // Everything but the unreserved characters, encoded ourselves: `Url::set_password` leaves a
    // `%` as it is, so a password holding one would be read back as something else.
    const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let encoded = percent_encoding::utf8_percent_encode(password, USERINFO).to_string();
    let mut parsed = url::Url::parse(url).map_err(|e| anyhow::anyhow!("is not a URL ({e})"))?;
    parsed
        .set_password(Some(&encoded))
        .map_err(|()| anyhow::anyhow!("cannot hold a password (it has no host)"))?;
    Ok(parsed.into())
}

/// Connects to `url` (the settings' database by default), counting every statement into the
/// metrics.
pub async fn connect_to(
    settings: &Settings,
    url: Option<&str>,
    metrics: &Metrics,
) -> anyhow::Result<Store> {
    let backend = database_backend(settings)?;
    if let DatabaseBackend::Sqlite(_) = backend {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    }
    let url = match (url, &backend) {
        (Some(url), _) => url.to_string(),
        (None, DatabaseBackend::Sqlite(url) | DatabaseBackend::Postgres(url)) => url.clone(),
    };
    Store::connect(ConnectSettings {
        url,
        max_connections: settings.db_max_connections,
        on_statement: Some(metrics.db_statements.clone()),
    })
    .await
}

/// Connects to the settings' database as the service runs.
pub async fn connect(settings: &Settings, metrics: &Metrics) -> anyhow::Result<Store> {
    connect_to(settings, None, metrics).await
}

/// `voicegraph migrate` (and, in development, every start): migrates as the owner
/// (`VOICEGRAPH_MIGRATE_DATABASE_URL`, else the service's own connection `db`) and grants the
/// runtime role (`VOICEGRAPH_DATABASE_RUNTIME_ROLE`) what it needs.
pub async fn migrate_as_owner(settings: &Settings, metrics: &Metrics) -> anyhow::Result<()> {
    migrate_with(settings, None, metrics).await
}

async fn migrate_with(
    settings: &Settings,
    db: Option<&Store>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let owned;
    let owner = match (&settings.migrate_database_url, db) {
        (Some(url), _) => {
            owned = connect_to(settings, Some(url), metrics).await?;
            &owned
        }
        (None, Some(db)) => db,
        (None, None) => {
            owned = connect(settings, metrics).await?;
            &owned
        }
    };
    let lock = owner.lock_migrations().await?;
    owner.migrate().await?;
    if let Some(role) = &settings.database_runtime_role {
        anyhow::ensure!(
            owner.is_postgres(),
            "VOICEGRAPH_DATABASE_RUNTIME_ROLE applies to Postgres only"
        );
        if let Some(password) = runtime_password(settings, role) {
            owner.ensure_runtime_role(role, &password).await?;
        }
        owner.grant_runtime_role(role).await?;
    }
    if let Some(lock) = lock {
        let _ = lock.close().await;
    }
    Ok(())
}

/// The password of the service's database URL when that URL logs in as the runtime role `role`
/// and is not the owner's URL too: `voicegraph migrate` creates the role with it, or sets it.
fn runtime_password(settings: &Settings, role: &str) -> Option<String> {
    settings.migrate_database_url.as_ref()?;
    let url = url::Url::parse(settings.database_url.as_deref()?).ok()?;
    let password = url.password()?;
    let password = percent_encoding::percent_decode_str(password)
        .decode_utf8()
        .ok()?
        .into_owned();
    (url.username() == role).then_some(password)
}

/// What a process does with events, so that it is wired (and, in production, refused) only for
/// what it uses.
#[derive(Debug, Clone, Copy)]
pub struct EventRoles {
    /// It serves subscribers and so needs the event feed (a Redis subscription when
    /// `VOICEGRAPH_REDIS_URL` is set); workers and relays read no events and open no subscription.
    pub subscribes: bool,
    /// It delivers the outbox's events (the relay) and so needs the publisher (the SNS topic in
    /// production); serving instances and workers only write events into the outbox.
    pub publishes: bool,
}

/// Builds every backend from the settings. `public_url` is where clients reach this instance.
pub async fn build_state(
    settings: Settings,
    public_url: &str,
    roles: EventRoles,
) -> anyhow::Result<AppState> {
    let EventRoles {
        subscribes,
        publishes,
    } = roles;
    let metrics = Arc::new(Metrics::new());
    let db = connect(&settings, &metrics).await?;
    if !settings.is_production() {
        migrate_with(&settings, Some(&db), &metrics).await?;
    }

    let uses_aws = settings.job_queue_url.is_some()
        || settings.events_topic_arn.is_some()
        || settings.realtime_queue_url.is_some()
        || settings
            .blob_url
            .as_deref()
            .is_some_and(|u| u.starts_with("s3://"));
    let sdk = if uses_aws {
        Some(aws::sdk_config().await)
    } else {
        None
    };
    let shutdown = CancellationToken::new();
    // Postgres notifies what the roles would otherwise poll for; one listener per process.
    db.listen(settings.notify_fallback, shutdown.clone()).await;

    let queue: Arc<dyn JobQueue> = match (&settings.job_queue_url, &sdk) {
        (Some(url), Some(sdk)) => Arc::new(
            SqsQueue::connect(aws::sqs_client(sdk), url.clone())
                .await
                .with_context(|| format!("VOICEGRAPH_JOB_QUEUE_URL={url}"))?,
        ),
        _ => {
            refuse_embedded(&settings, "job queue", "VOICEGRAPH_JOB_QUEUE_URL")?;
            Arc::new(EmbeddedQueue::new(&db, "jobs", settings.job_max_receives))
        }
    };

    let bus = InProcessBus::new(settings.event_buffer);
    let fanout: Option<Arc<dyn EventPublisher>> = match &settings.redis_url {
        Some(url) => Some(Arc::new(
            RedisFanout::connect(url, &settings.redis_channel)
                .await
                .context("VOICEGRAPH_REDIS_URL")?,
        )),
        None => None,
    };
    let publisher: Arc<dyn EventPublisher> = match (&settings.events_topic_arn, &sdk, &fanout) {
        (Some(arn), Some(sdk), _) => Arc::new(SnsPublisher::new(aws::sns_client(sdk), arn.clone())),
        // Without a topic, events go straight to Redis (one relay, no SNS in between).
        (None, _, Some(fanout)) => {
            if publishes {
                refuse_embedded(&settings, "event publisher", "VOICEGRAPH_EVENTS_TOPIC_ARN")?;
            }
            fanout.clone()
        }
        // Nothing in this process publishes (or it is development): the in-process bus.
        _ => {
            if publishes {
                refuse_embedded(&settings, "event publisher", "VOICEGRAPH_EVENTS_TOPIC_ARN")?;
            }
            Arc::new(bus.clone())
        }
    };
    let feed: Arc<dyn EventFeed> = match &settings.redis_url {
        Some(url) if subscribes => RedisFeed::start(
            url,
            &settings.redis_channel,
            settings.event_buffer,
            shutdown.clone(),
        )
        .context("VOICEGRAPH_REDIS_URL")?,
        // Nothing in this process reads events: the in-process bus, never subscribed to.
        Some(_) => Arc::new(bus),
        None => {
            if subscribes {
                refuse_embedded(&settings, "event feed", "VOICEGRAPH_REDIS_URL")?;
            }
            Arc::new(bus)
        }
    };
    let realtime = match (&settings.realtime_queue_url, &sdk, &fanout) {
        (Some(url), Some(sdk), Some(fanout)) => Some(Arc::new(Realtime {
            sqs: aws::sqs_client(sdk),
            queue_url: url.clone(),
            fanout: fanout.clone(),
        })),
        (Some(_), _, None) => anyhow::bail!(
            "VOICEGRAPH_REALTIME_QUEUE_URL needs VOICEGRAPH_REDIS_URL to fan events out"
        ),
        _ => None,
    };

    let (blobs, local_blobs): (Arc<dyn BlobStore>, Option<Arc<FsBlobStore>>) =
        match blob_backend(&settings)? {
            BlobBackend::Directory(root) => {
                let key = match &settings.blob_signing_key {
                    Some(k) => k.expose_secret().as_bytes().to_vec(),
                    None => FsBlobStore::load_or_create_key(
                        &settings.data_dir.join(".blob-signing-key"),
                    )?,
                };
                let store = Arc::new(FsBlobStore::new(root, key, public_url)?);
                (store.clone(), Some(store))
            }
            BlobBackend::S3 { bucket, prefix } => {
                let sdk = sdk.as_ref().context("S3 needs the AWS SDK configuration")?;
                (
                    Arc::new(S3BlobStore::new(aws::s3_client(sdk), bucket, prefix)),
                    None,
                )
            }
        };

    let documents: Arc<dyn DocumentStore> = match &settings.redis_url {
        Some(url) => Arc::new(
            RedisDocumentStore::connect(url, &settings.redis_channel)
                .await
                .context("VOICEGRAPH_REDIS_URL")?,
        ),
        None => Arc::new(DbDocumentStore::new(&db)),
    };
    let settings_event_buffer = settings.event_buffer;

    // Counted in Redis when there is one, so that every instance sees the same counts.
    let limiter: Arc<dyn RateLimiter> = match &settings.redis_url {
        Some(url) => Arc::new(
            RedisLimiter::connect(url, &settings.redis_channel, SLOT_LEASE, shutdown.clone())
                .await
                .context("VOICEGRAPH_REDIS_URL")?,
        ),
        None => Arc::new(InProcessLimiter::new()),
    };
    let limits = Arc::new(Limits::new(
        limiter,
        &settings,
        LimitMetrics {
            refused: metrics.rate_limited.clone(),
            errors: metrics.rate_limiter_errors.clone(),
        },
    ));

    let acoustics: Arc<dyn Acoustics> = Arc::new(LocalAcoustics);
    let local_analyzer: Arc<dyn Analyzer> = Arc::new(Pipeline {
        acoustics: acoustics.clone(),
        insights: Arc::new(LexiconInsights),
    });
    let gemini_analyzer: Option<Arc<dyn Analyzer>> = match settings.gemini_api_key.clone() {
        None => None,
        Some(key) => {
            let mut config = GeminiConfig::new(
                settings.gemini_base_url.clone(),
                key,
                settings.gemini_model.clone(),
            );
            config.max_concurrent = settings.gemini_max_concurrent.max(1);
            config.max_attempts = settings.gemini_max_attempts.max(1);
            config.backoff_base = settings.gemini_backoff_base;
            config.request_timeout = settings.gemini_request_timeout;
            let client = GeminiClient::new(config).context("VOICEGRAPH_GEMINI_*")?;
            let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            Some(Arc::new(Pipeline {
                acoustics: acoustics.clone(),
                insights: Arc::new(GeminiInsights::new(
                    client,
                    GeminiInsightsConfig {
                        model: settings.gemini_model.clone(),
                        window_ms: ms(settings.gemini_chunk),
                        overlap_ms: ms(settings.gemini_chunk_overlap),
                        inline_limit_bytes: settings.gemini_inline_limit_bytes,
                        parallel_windows: settings.gemini_max_concurrent.max(1),
                    },
                )),
            }))
        }
    };
    let analyzer: Arc<dyn Analyzer> = match settings.analyzer {
        AnalyzerKind::Local => local_analyzer.clone(),
        AnalyzerKind::Gemini => gemini_analyzer.clone().context(
            "VOICEGRAPH_ANALYZER=gemini needs VOICEGRAPH_GEMINI_API_KEY (or `gemini_api_key` in the VOICEGRAPH_SECRET_ID secret)",
        )?,
    };

    let auth = Arc::new(Authenticator::new(
        db.clone(),
        JwtVerifier::from_settings(&settings)?,
        settings.key_cache_ttl,
    ));

    let revocations = Revocations::new(db.clone(), settings.revocation_poll);

    let webhooks = Arc::new(crate::adapters::webhook_http::WebhookClient::new(
        settings.webhook_allow_private,
        settings.webhook_timeout,
    )?);
    let responses = crate::graphql::response_cache::ResponseCache::new(
        &db,
        settings.response_cache_bytes,
        metrics.response_cache.clone(),
    );
    Ok(AppState {
        responses,
        settings: Arc::new(settings),
        store: db,
        auth,
        queue,
        publisher,
        feed,
        blobs,
        analyzer,
        local_analyzer,
        gemini_analyzer,
        acoustics,
        local_blobs,
        realtime,
        shutdown,
        relay_wakeup: Arc::new(Notify::new()),
        watermark: Arc::new(watch::channel(0).0),
        hub: Arc::new(EventHub::new(settings_event_buffer)),
        revocations,
        documents,
        metrics,
        limits,
        webhooks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_goes_into_the_url_and_comes_back_out_the_same() {
        let password = "a%41 b'c@d:e/f?g#h~";
        let url = with_password(
            "postgres://voicegraph_app:old@db:5432/vg?sslmode=require",
            password,
        )
        .unwrap();
        assert!(
            url.starts_with("postgres://voicegraph_app:a%2541%20b"),
            "{url}"
        );
        assert!(url.ends_with("@db:5432/vg?sslmode=require"), "{url}");
        let mut l = Layers::default();
        l.set("database_url", url.clone())
            .set("migrate_database_url", "postgres://voicegraph_owner@db/vg");
        let s = l.settings().unwrap();
        assert_eq!(
            runtime_password(&s, "voicegraph_app").as_deref(),
            Some(password)
        );
        assert_eq!(runtime_password(&s, "someone_else"), None);
        assert!(with_password("not a url", "x").is_err());
        let e = with_password("mailto:hunter2@example.com", "x").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
