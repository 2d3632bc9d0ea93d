//! THE composition root: settings in, `AppState` out. The one `match` per backend lives here;
//! production mode refuses the embedded backends here, with the variable to set.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};
use secrecy::ExposeSecret;
use tokio::sync::{watch, Notify};

use crate::adapters::local::analyzer::LocalAnalyzer;
use crate::adapters::local::blobs::FsBlobStore;
use crate::adapters::local::bus::InProcessBus;
use crate::adapters::local::queue::EmbeddedQueue;
use crate::config::{AnalyzerKind, Settings};
use crate::http::metrics::Metrics;
use crate::ports::{Analyzer, BlobStore, EventFeed, EventPublisher, JobQueue};
use crate::state::AppState;

/// Which database, as chosen by `VOICEGRAPH_DATABASE_URL`.
pub enum DatabaseBackend {
    Sqlite(String),
    Postgres(String),
}

/// Which blob store, as chosen by `VOICEGRAPH_BLOB_URL`.
pub enum BlobBackend {
    Directory(std::path::PathBuf),
}

fn refuse_embedded(settings: &Settings, what: &str, variable: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !settings.is_production(),
        "VOICEGRAPH_ENV=production refuses the embedded {what}: set {variable}"
    );
    Ok(())
}

fn not_in_this_build(variable: &str, what: &str) -> anyhow::Error {
    anyhow::anyhow!("{variable} is set, but this build has no {what} adapter yet; unset it to use the embedded backend")
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
            Err(not_in_this_build("VOICEGRAPH_BLOB_URL", "S3"))
        }
        Some(_) => anyhow::bail!("VOICEGRAPH_BLOB_URL must be s3://bucket/prefix or file://dir"),
    }
}

/// Connects, counting every statement into the metrics, and prepares SQLite for several roles.
pub async fn connect(settings: &Settings, metrics: &Metrics) -> anyhow::Result<DatabaseConnection> {
    let backend = database_backend(settings)?;
    let url = match &backend {
        DatabaseBackend::Sqlite(url) => {
            std::fs::create_dir_all(&settings.data_dir)
                .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
            url.clone()
        }
        DatabaseBackend::Postgres(url) => url.clone(),
    };
    let mut opts = ConnectOptions::new(url);
    opts.max_connections(16)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    let mut db = Database::connect(opts)
        .await
        .context("connecting to the database")?;
    if let DatabaseBackend::Sqlite(_) = backend {
        // WAL lets readers run beside the one writer; the setting persists in the file.
        db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
    }
    let counter = metrics.db_statements.clone();
    db.set_metric_callback(move |info| {
        if std::env::var_os("VG_TRACE_SQL").is_some() {
            eprintln!(
                "SQL {:?} {} params={}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis()
                    % 100000,
                info.statement.sql.chars().take(40).collect::<String>(),
                info.statement.sql.matches('?').count()
            );
        }
        counter.inc()
    });
    Ok(db)
}

pub async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    Migrator::up(db, None).await.context("running migrations")
}

/// Builds every backend from the settings. `public_url` is where clients reach this instance.
pub async fn build_state(settings: Settings, public_url: &str) -> anyhow::Result<AppState> {
    let metrics = Arc::new(Metrics::new());
    let db = connect(&settings, &metrics).await?;
    if !settings.is_production() {
        migrate(&db).await?;
    }

    if settings.job_queue_url.is_some() {
        return Err(not_in_this_build("VOICEGRAPH_JOB_QUEUE_URL", "SQS"));
    }
    refuse_embedded(&settings, "job queue", "VOICEGRAPH_JOB_QUEUE_URL")?;
    let queue: Arc<dyn JobQueue> = Arc::new(EmbeddedQueue::new(
        db.clone(),
        "jobs",
        settings.job_max_receives,
    ));

    if settings.events_topic_arn.is_some() {
        return Err(not_in_this_build("VOICEGRAPH_EVENTS_TOPIC_ARN", "SNS"));
    }
    if settings.redis_url.is_some() {
        return Err(not_in_this_build("VOICEGRAPH_REDIS_URL", "Redis"));
    }
    refuse_embedded(&settings, "event publisher", "VOICEGRAPH_EVENTS_TOPIC_ARN")?;
    refuse_embedded(&settings, "event feed", "VOICEGRAPH_REDIS_URL")?;
    let bus = InProcessBus::new(settings.event_buffer);
    let publisher: Arc<dyn EventPublisher> = Arc::new(bus.clone());
    let feed: Arc<dyn EventFeed> = Arc::new(bus);

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
        };

    let analyzer: Arc<dyn Analyzer> = match settings.analyzer {
        AnalyzerKind::Local => Arc::new(LocalAnalyzer),
        AnalyzerKind::Gemini => {
            return Err(not_in_this_build("VOICEGRAPH_ANALYZER=gemini", "Gemini"))
        }
    };

    Ok(AppState {
        settings: Arc::new(settings),
        db,
        queue,
        publisher,
        feed,
        blobs,
        analyzer,
        local_blobs,
        relay_wakeup: Arc::new(Notify::new()),
        watermark: Arc::new(watch::channel(0).0),
        metrics,
    })
}
