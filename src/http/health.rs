//! `/healthz` says the process is alive (cheap); `/readyz` checks every backend for the load
//! balancer: the database, the job queue, the blob store and the event feed's subscription.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::HttpState;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<HttpState>) -> Response {
    let app = &state.app;
    // Shutting down (SIGTERM): not ready from the first moment, whatever the backends say, so
    // that a load balancer still probing over a kept-alive connection stops sending requests.
    if app.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "draining": true })),
        )
            .into_response();
    }
    let timeout = std::time::Duration::from_secs(3);
    let check = |r: Result<anyhow::Result<()>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => serde_json::json!({ "ok": true }),
        Ok(Err(e)) => serde_json::json!({ "ok": false, "error": e.to_string() }),
        Err(_) => serde_json::json!({ "ok": false, "error": "timed out" }),
    };
    let (db, queue, store) = tokio::join!(
        tokio::time::timeout(timeout, async { app.store.ping().await }),
        tokio::time::timeout(timeout, async { app.queue.depth().await.map(|_| ()) }),
        tokio::time::timeout(timeout, app.blobs.ping()),
    );
    // The subscription that brings other instances' events (Redis), when there is one.
    let events = check(Ok(app.feed.ready()));
    let checks = serde_json::json!({
        "database": check(db),
        "queue": check(queue),
        "blobs": check(store),
        "events": events,
    });
    let ready = checks
        .as_object()
        .is_some_and(|m| m.values().all(|v| v["ok"] == true));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "checks": checks })),
    )
        .into_response()
}
