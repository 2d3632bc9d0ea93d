//! GraphQL over Server-Sent Events, the graphql-sse protocol's "distinct connections" mode: a
//! `POST` (or `GET`) with `Accept: text/event-stream` answers with a stream of `next` events
//! and a final `complete`. Same auth, cursors, shared groups and limits as the WebSocket; a
//! comment line every ping interval keeps proxies from cutting an idle stream; a stream ends
//! with an `UNAUTHENTICATED` error when its JWT expires or its API key is revoked. A stream
//! counts among its key's sockets (and subscriptions); over a cap or the cost budget it is
//! refused with 429 before it starts.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::parser::types::OperationType;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use tokio::time::Instant;

use super::graphql::{error_response, json_params, read_body};
use super::ratelimit::{admit, too_many_requests, Admitted, ClientAddr};
use super::HttpState;
use crate::graphql::budget::CostCharge;
use crate::graphql::documents::Params;
use crate::graphql::live::{is_request_error, operation_type, result_json, LiveItem};
use crate::graphql::loaders::Loaders;
use crate::services::auth::Caller;
use crate::services::revocation::until_revoked;

/// `POST /graphql` with `Accept: text/event-stream`: the request in a JSON body.
pub async fn post(state: HttpState, addr: ClientAddr, headers: HeaderMap, body: Body) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BAD_USER_INPUT",
            "a graphql-sse request is a JSON body: send Content-Type: application/json",
        );
    }
    let (admitted, caller) = match required_caller(&state, &headers, addr).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let bytes = match read_body(body, state.app.settings.max_request_bytes).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let params = match json_params(&bytes, state.app.settings.max_batch_size) {
        Ok((mut p, false)) => p.remove(0),
        Ok((_, true)) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "a graphql-sse request carries one operation, not a batch",
            )
        }
        Err(r) => return *r,
    };
    stream_response(state, &admitted, caller, params).await
}

/// `GET /graphql` with `Accept: text/event-stream`: the request in the query string.
pub async fn get(state: HttpState, addr: ClientAddr, headers: HeaderMap, query: &str) -> Response {
    let (admitted, caller) = match required_caller(&state, &headers, addr).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match Params::from_query_string(query) {
        Ok(params) => stream_response(state, &admitted, caller, params).await,
        Err(msg) => error_response(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", &msg),
    }
}

async fn required_caller(
    state: &HttpState,
    headers: &HeaderMap,
    addr: ClientAddr,
) -> Result<(Admitted, Caller), Box<Response>> {
    let admitted = admit(&state.app, headers, addr).await?;
    match admitted.caller.clone() {
        Some(c) => Ok((admitted, c)),
        None => Err(Box::new(error_response(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "authentication required: send Authorization: Bearer <API key or JWT>",
        ))),
    }
}

fn event(name: &str, data: &str) -> Bytes {
    if data.is_empty() {
        Bytes::from(format!("event: {name}\ndata:\n\n"))
    } else {
        Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
    }
}

/// Answers with the stream, or with 429 before it when the caller has too many streams open, too
/// many subscriptions running, or no cost budget left for the operation.
async fn stream_response(
    state: HttpState,
    admitted: &Admitted,
    caller: Caller,
    params: Params,
) -> Response {
    let limits = &state.app.limits;
    let socket_slot = match limits.socket(&caller).await {
        Ok(slot) => slot,
        Err(r) => return too_many_requests(&r),
    };
    let charge = CostCharge::new();
    let mut subscription_slot = None;
    let items: BoxStream<'static, LiveItem> =
        match state.documents.resolve(params, Some(&caller)).await {
            Err(e) => stream::iter([LiveItem::Error(Arc::from(
                serde_json::json!([e.to_json()]).to_string(),
            ))])
            .boxed(),
            Ok(request) => {
                let mut request = request.data(charge.clone());
                match operation_type(&mut request) {
                    Some(OperationType::Subscription) => {
                        match limits.subscription(&caller).await {
                            Ok(slot) => subscription_slot = Some(slot),
                            Err(r) => return too_many_requests(&r),
                        }
                        let mut items = state.live.subscribe(caller.clone(), request).peekable();
                        // The operation is charged once it validated, before it runs; a document
                        // that does not validate yields its errors without a charge.
                        tokio::select! {
                            _ = charge.charged() => {}
                            _ = std::pin::Pin::new(&mut items).peek() => {}
                        }
                        items.boxed()
                    }
                    _ => {
                        let app = &state.app;
                        let request = request
                            .data(Loaders::new(&app.store, app.settings.loader_delay, true))
                            .data(caller.clone());
                        let resp =
                            crate::graphql::execute_bounded(&state.schema, app, request).await;
                        let item = if is_request_error(&resp) {
                            LiveItem::Error(Arc::from(
                                serde_json::to_string(&resp.errors).unwrap_or_default(),
                            ))
                        } else {
                            LiveItem::Next(Arc::from(result_json(&resp)))
                        };
                        stream::iter([item]).boxed()
                    }
                }
            }
        };
    if let Some(r) = charge.refusal() {
        return too_many_requests(&r);
    }
    let app = state.app.clone();
    let watch = caller.key_id.map(|k| app.revocations.watch(k));
    let expiry = caller.expires_at.map(|exp| {
        Instant::now()
            + (exp - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
    });
    let body = async_stream::stream! {
        let _open = StreamGauge::new(app.metrics.clone());
        // The key's places, given back when the stream ends.
        let _places = (socket_slot, subscription_slot);
        let mut items = items;
        let keepalive = app.settings.ws_ping_interval;
        let shutdown = app.shutdown.clone();
        // An empty comment first, so that every client sees the stream open at once.
        yield Ok::<Bytes, Infallible>(Bytes::from_static(b":\n\n"));
        // A server going away ends the stream without `complete`, so that the client retries
        // (on another instance) and resumes from its last cursor.
        let mut complete = true;
        loop {
            let until = expiry.map_or(Instant::now() + keepalive, |e| e.min(Instant::now() + keepalive));
            tokio::select! {
                _ = shutdown.cancelled() => {
                    complete = false;
                    break;
                }
                _ = until_revoked(watch.as_ref()) => {
                    let revoked = serde_json::json!({ "errors": [{
                        "message": "the API key was revoked",
                        "extensions": { "code": "UNAUTHENTICATED" },
                    }] });
                    yield Ok(event("next", &revoked.to_string()));
                    break;
                }
                item = items.next() => match item {
                    Some(LiveItem::Next(payload)) => yield Ok(event("next", &payload)),
                    // graphql-sse reports refusals as a `next` carrying the errors.
                    Some(LiveItem::Error(errors)) => {
                        yield Ok(event("next", &format!("{{\"errors\":{errors}}}")));
                        break;
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(until) => {
                    if expiry.is_some_and(|e| Instant::now() >= e) {
                        let expired = serde_json::json!({ "errors": [{
                            "message": "the token expired: subscribe again with a new one and resume from your last cursor",
                            "extensions": { "code": "UNAUTHENTICATED" },
                        }] });
                        yield Ok(event("next", &expired.to_string()));
                        break;
                    }
                    yield Ok(Bytes::from_static(b":\n\n"));
                }
            }
        }
        if complete {
            yield Ok(event("complete", ""));
        }
    };
    let mut response = (StatusCode::OK, Body::from_stream(body)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    admitted.decorate(&mut response);
    response
}

/// Counts an open SSE stream while it lives.
struct StreamGauge(Arc<crate::http::metrics::Metrics>);

impl StreamGauge {
    fn new(metrics: Arc<crate::http::metrics::Metrics>) -> Self {
        metrics.sse_streams.inc();
        Self(metrics)
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.sse_streams.dec();
    }
}
