//! Request ids and the access log. Every request gets an id: the client's `X-Request-Id` when it
//! is a plausible one (1 to 128 of `A-Z a-z 0-9 . _ : / -`), else a fresh UUID. The id is put
//! back on the request (handlers read it from there), echoed on the response, carried by the
//! request's tracing span (so every log line of the request names it), and added to the
//! extensions of every GraphQL error as `requestId`. When the request is answered, one line of
//! the `voicegraph::access` target records it: method, path, status, duration, and for GraphQL
//! the operation names, error codes and tenant (health checks at `debug`, the rest at `info`).
//! When traces are exported, the request's span is its trace's server span (continuing the
//! client's `traceparent` header, if it sends one).

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::KeyValue;
use tracing::Instrument;
use uuid::Uuid;

use crate::telemetry::{self, TRACEPARENT};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What a GraphQL handler tells the access log about the request it answered (a response
/// extension).
#[derive(Debug, Clone, Default)]
pub struct AccessInfo {
    pub operations: Vec<String>,
    pub error_codes: Vec<String>,
    pub tenant: Option<Uuid>,
}

/// Whether a client's request id is one to keep.
fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
}

/// A client's W3C `traceparent` header: the request's span continues the client's trace.
fn request_traceparent(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(TRACEPARENT).and_then(|v| v.to_str().ok())
}

/// The request's id, as the middleware left it on the request.
pub fn request_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(REQUEST_ID).and_then(|v| v.to_str().ok())
}

pub async fn layer(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = match request_id(req.headers()) {
        Some(id) if acceptable(id) => id.to_string(),
        _ => Uuid::new_v4().to_string(),
    };
    let value = HeaderValue::from_str(&id).expect("a request id is a valid header value");
    req.headers_mut().insert(REQUEST_ID, value.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let probe = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
    // Probes and scrapes, logged at `debug`, are traced only when `debug` is on too.
    let span = if probe {
        tracing::debug_span!("request", request_id = %id)
    } else {
        tracing::info_span!("request", request_id = %id)
    };
    telemetry::continue_trace(&span, request_traceparent(req.headers()));
    telemetry::set_attributes(
        &span,
        [
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("url.path", path.clone()),
        ],
    );
    let mut resp = next.run(req).instrument(span.clone()).await;
    resp.headers_mut().insert(REQUEST_ID, value);
    let info = resp
        .extensions()
        .get::<AccessInfo>()
        .cloned()
        .unwrap_or_default();
    let status = resp.status().as_u16();
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let tenant = info.tenant.map(|t| t.to_string());
    telemetry::set_attributes(
        &span,
        [KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        )],
    );
    if !info.operations.is_empty() {
        telemetry::set_attributes(
            &span,
            [KeyValue::new(
                "graphql.operation.name",
                info.operations.join(","),
            )],
        );
    }
    let _entered = span.enter();
    if probe {
        tracing::debug!(target: "voicegraph::access", %method, %path, status, duration_ms, "request");
    } else {
        tracing::info!(
            target: "voicegraph::access",
            %method,
            %path,
            status,
            duration_ms,
            operations = %info.operations.join(","),
            error_codes = %info.error_codes.join(","),
            tenant = tenant.as_deref().unwrap_or(""),
            "request"
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_request_ids_are_kept_only_when_plain() {
        for ok in [
            "abc",
            "4bf92f35-77b3-4da6-a3ce-929d0e0e4736",
            "req:1/2_3.4",
            &"a".repeat(128),
        ] {
            assert!(super::acceptable(ok), "{ok}");
        }
        for bad in ["", "a b", "x\ny", "é", &"a".repeat(129), "<script>"] {
            assert!(!super::acceptable(bad), "{bad}");
        }
    }
}
