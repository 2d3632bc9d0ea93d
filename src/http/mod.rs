//! The axum router: GraphQL over HTTP (JSON, multipart, GET) and WebSocket, the playground (when
//! enabled), health, readiness, metrics (as `VOICEGRAPH_METRICS_*` allow), and the signed blob
//! URLs of the directory store; rate limits at its edge; `server` runs it with connection caps
//! and timeouts.

pub mod access;
pub mod blobs;
pub mod cors;
pub mod graphql;
pub mod health;
pub mod metrics;
pub mod playground;
pub mod ratelimit;
pub mod server;
pub mod sse;
pub mod ws;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::graphql::documents::{Documents, TrustedDocuments};
use crate::graphql::limits::DocumentLimits;
use crate::graphql::live::Live;
use crate::graphql::AppSchema;
use crate::state::AppState;

/// What every HTTP handler shares: one pointer, so that the state axum clones for each request
/// and each middleware costs one reference count (cloning the whole `AppState`, a few dozen,
/// was ~15 % of the CPU of a request answered from the response cache).
#[derive(Clone)]
pub struct HttpState(Arc<HttpShared>);

impl std::ops::Deref for HttpState {
    type Target = HttpShared;

    fn deref(&self) -> &HttpShared {
        &self.0
    }
}

pub struct HttpShared {
    pub app: AppState,
    pub schema: AppSchema,
    /// Live subscriptions, shared by every WebSocket and SSE stream of this instance.
    pub live: Arc<Live>,
    /// How each request's document is chosen (text, persisted hash, trusted id).
    pub documents: Arc<Documents>,
}

/// The HTTP application of `serve`. Fails when the trusted documents manifest cannot be read.
pub fn router(app: AppState, schema: AppSchema) -> anyhow::Result<Router> {
    let trusted = match &app.settings.trusted_documents {
        Some(path) => {
            let t = TrustedDocuments::load(path)?;
            tracing::info!(documents = t.len(), path = %path.display(), "only trusted documents will run");
            Some(t)
        }
        None => None,
    };
    let documents = Arc::new(Documents::new(
        app.documents.clone(),
        trusted,
        app.settings.trusted_documents_exempt_platform_admins,
        DocumentLimits::from_settings(&app.settings),
    ));
    let state = HttpState(Arc::new(HttpShared {
        app: app.clone(),
        live: Live::new(schema.clone(), app.clone()),
        schema,
        documents,
    }));
    let mut router = Router::new()
        .route("/graphql", get(graphql::get_or_ws).post(graphql::post))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if app.settings.playground {
        router = router
            .route("/", get(playground::page))
            .route("/playground/examples.json", get(playground::examples))
            .route("/playground/assets/{name}", get(playground::asset))
            .route("/dashboard", get(playground::dashboard));
    }
    match metrics::Access::from_settings(&app.settings) {
        metrics::Access::Open => router = router.route("/metrics", get(metrics::scrape)),
        metrics::Access::Token(expected) => {
            router = router.route(
                "/metrics",
                get(metrics::scrape).layer(axum::middleware::from_fn(move |req, next| {
                    metrics::require_token(expected, req, next)
                })),
            )
        }
        metrics::Access::Hidden => {}
    }
    if app.local_blobs.is_some() {
        router = router.route("/blobs/{*key}", get(blobs::get).put(blobs::put));
    }
    Ok(router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(cors::layer(&app.settings))
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn(access::layer))
        .with_state(state))
}
