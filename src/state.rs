//! What every handler, resolver, worker and relay shares: the settings and one handle per port.

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tokio::sync::{watch, Notify};

use crate::adapters::local::blobs::FsBlobStore;
use crate::config::Settings;
use crate::http::metrics::Metrics;
use crate::ports::{Analyzer, BlobStore, EventFeed, EventPublisher, JobQueue};

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: DatabaseConnection,
    pub queue: Arc<dyn JobQueue>,
    pub publisher: Arc<dyn EventPublisher>,
    pub feed: Arc<dyn EventFeed>,
    pub blobs: Arc<dyn BlobStore>,
    pub analyzer: Arc<dyn Analyzer>,
    /// Set when blobs live in a directory: the app then serves their signed URLs itself.
    pub local_blobs: Option<Arc<FsBlobStore>>,
    /// Nudges this process's relay right after a commit that wrote outbox rows.
    pub relay_wakeup: Arc<Notify>,
    /// The last event position this instance knows is committed (see `services::events`).
    pub watermark: Arc<watch::Sender<i64>>,
    pub metrics: Arc<Metrics>,
}
