//! What every handler, resolver, worker and relay shares: the settings and one handle per port.

use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::adapters::local::blobs::FsBlobStore;
use crate::config::Settings;
use crate::http::metrics::Metrics;
use crate::ports::{
    Acoustics, Analyzer, BlobStore, DocumentStore, EventFeed, EventPublisher, JobQueue,
    WebhookSender,
};
use crate::services::auth::Authenticator;
use crate::services::limits::Limits;
use crate::services::live::EventHub;
use crate::services::revocation::Revocations;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    /// The application database; the only way to it.
    pub store: Store,
    /// Turns bearer tokens (API keys, JWTs) into callers.
    pub auth: Arc<Authenticator>,
    pub queue: Arc<dyn JobQueue>,
    pub publisher: Arc<dyn EventPublisher>,
    pub feed: Arc<dyn EventFeed>,
    pub blobs: Arc<dyn BlobStore>,
    /// The deployment's default analyser (`VOICEGRAPH_ANALYZER`): submitted calls get it.
    pub analyzer: Arc<dyn Analyzer>,
    /// The local analyser, for `reanalyzeCall(analyzer: LOCAL)` when the default is another.
    pub local_analyzer: Arc<dyn Analyzer>,
    /// Gemini, when the deployment has a key for it (whatever the default).
    pub gemini_analyzer: Option<Arc<dyn Analyzer>>,
    /// Decodes and checks recordings (uploads at submission; the analysis reads its facts too).
    pub acoustics: Arc<dyn Acoustics>,
    /// Set when blobs live in a directory: the app then serves their signed URLs itself.
    pub local_blobs: Option<Arc<FsBlobStore>>,
    /// The SNS→Redis fan-out this process's `relay` role runs, when configured.
    pub realtime: Option<Arc<Realtime>>,
    /// Cancelled when the process stops; every background task watches it.
    pub shutdown: CancellationToken,
    /// Nudges this process's relay right after a commit that wrote outbox rows.
    pub relay_wakeup: Arc<Notify>,
    /// The last event position this instance knows is committed (see `services::events`).
    pub watermark: Arc<watch::Sender<i64>>,
    /// This instance's ordered copy of the event sequence, read by every subscriber.
    pub hub: Arc<EventHub>,
    /// The API keys of this instance's open WebSockets and SSE streams, checked for revocation.
    pub revocations: Arc<Revocations>,
    /// Where persisted GraphQL documents are shared between instances.
    pub documents: Arc<dyn DocumentStore>,
    pub metrics: Arc<Metrics>,
    /// Rate limits, cost budgets and connection caps (counted in Redis or in process).
    pub limits: Arc<Limits>,
    /// Delivers webhooks, guarded against requests to private addresses.
    pub webhooks: Arc<dyn WebhookSender>,
    /// Answers to repeated queries while the database is unchanged (Postgres; see
    /// `graphql::response_cache`).
    pub responses: Option<Arc<crate::graphql::response_cache::ResponseCache>>,
}

/// The realtime queue (subscribed to the events topic) and where its events go.
pub struct Realtime {
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub fanout: Arc<dyn EventPublisher>,
}
