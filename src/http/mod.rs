//! The axum router: GraphQL over HTTP (JSON, multipart, GET) and WebSocket, the playground,
//! health, readiness, metrics, and the signed blob URLs of the directory store.

pub mod blobs;
pub mod graphql;
pub mod health;
pub mod metrics;
pub mod playground;

use axum::routing::get;
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::graphql::AppSchema;
use crate::state::AppState;

#[derive(Clone)]
pub struct HttpState {
    pub app: AppState,
    pub schema: AppSchema,
}

pub fn router(app: AppState, schema: AppSchema) -> Router {
    let state = HttpState {
        app: app.clone(),
        schema,
    };
    let mut router = Router::new()
        .route("/graphql", get(graphql::get_or_ws).post(graphql::post))
        .route("/", get(playground::page))
        .route("/playground/examples.json", get(playground::examples))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::scrape));
    if app.local_blobs.is_some() {
        router = router.route("/blobs/{*key}", get(blobs::get).put(blobs::put));
    }
    router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
