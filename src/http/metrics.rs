//! Prometheus metrics: HTTP requests and connections, GraphQL operations by name and errors by
//! code, the build, jobs, SQL statements, WebSocket connections,
//! queue depth, rate-limit refusals; who may scrape them on the main listener, and the separate
//! metrics listener.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use super::HttpState;
use crate::config::Settings;
use crate::state::AppState;
use crate::worker::Outcome;

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub jobs: IntCounterVec,
    pub job_seconds: Histogram,
    pub db_statements: IntCounter,
    pub ws_connections: IntGauge,
    pub sse_streams: IntGauge,
    /// Live subscriptions of this instance (WebSocket and SSE), from the moment they joined
    /// their group.
    pub subscriptions: IntGauge,
    /// Shared executions: one per distinct (tenant, role, document, variables) being watched.
    pub subscription_groups: IntGauge,
    /// Database reads that filled a gap in the instance's event hub.
    pub hub_gap_reads: IntCounter,
    /// Database reads that replayed events to one subscriber (a cursor, or a lagging client).
    pub subscription_replays: IntCounter,
    pub queue_depth: IntGauge,
    /// Requests, operations and connections refused by a rate limit or cap, by limit.
    pub rate_limited: IntCounterVec,
    /// Rate limiter failures that let a request through unlimited.
    pub rate_limiter_errors: IntCounter,
    /// Open HTTP connections (WebSockets and streams included).
    pub http_connections: IntGauge,
    /// Of those, the ones serving a request or upgraded (never evicted).
    pub http_connections_active: IntGauge,
    /// Connections closed at accept because a cap was reached, by cap (`total`, `per_address`).
    pub http_connections_refused: IntCounterVec,
    /// Half-open or idle connections closed to make room for a new one at the total cap.
    pub http_connections_evicted: IntCounter,
    /// Connections cut by a timeout, by what timed out (`headers`, `keep_alive`, `body`, `write`).
    pub http_timeouts: IntCounterVec,
    /// Failed `accept` calls other than the peer's own (e.g. out of file descriptors).
    pub http_accept_errors: IntCounter,
    /// Queries and mutations executing now (subscriptions aside).
    pub operations_in_flight: IntGauge,
    /// Operations stopped by an execution limit, by limit (`timeout`, `response_size`).
    pub operations_stopped: IntCounterVec,
    /// Time to execute a query or mutation, by operation name (see [`Metrics::operation`]).
    pub operation_seconds: HistogramVec,
    /// GraphQL errors answered, by code.
    pub graphql_errors: IntCounterVec,
    /// Response cache lookups and stores, by outcome (`hit`, `miss`, `stale`, `stored`).
    pub response_cache: IntCounterVec,
    /// From an outbox row being due to its delivery, by destination (`jobs`, `events`,
    /// `blob_delete`).
    pub outbox_delivery_seconds: HistogramVec,
    /// Age of the oldest outbox row not delivered yet (0 when none), as the relay last saw it.
    pub outbox_oldest_seconds: prometheus::Gauge,
    /// Outbox rows given up on (their destination's retries ran out), by destination.
    pub outbox_dead_letters: IntCounterVec,
    /// Webhook attempts, by outcome (`delivered`, `failed`, `refused`).
    pub webhook_attempts: IntCounterVec,
    /// From an event being recorded to an endpoint accepting its delivery.
    pub webhook_delivery_seconds: Histogram,
    /// From an event being recorded to its result being published to this instance's
    /// subscribers.
    pub event_fanout_seconds: Histogram,
    /// Time an analyser took on one call, by analyser.
    pub analysis_seconds: HistogramVec,
    /// The operation names given a label of their own so far (at most [`OPERATION_LABELS`]).
    operation_names: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Distinct operation names a process labels; any further one counts as `other`, so that
/// clients choosing names cannot grow the metrics without bound.
pub const OPERATION_LABELS: usize = 200;

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("voicegraph".into()), None).expect("valid prefix");
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests"),
            &["route", "status"],
        )
        .expect("metric");
        let jobs = IntCounterVec::new(
            Opts::new("jobs_total", "Jobs processed by outcome"),
            &["outcome"],
        )
        .expect("metric");
        let job_seconds = Histogram::with_opts(
            HistogramOpts::new("job_duration_seconds", "Time to process one job").buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )
        .expect("metric");
        let db_statements =
            IntCounter::new("db_statements_total", "SQL statements executed").expect("metric");
        let ws_connections = IntGauge::new(
            "websocket_connections",
            "Open GraphQL WebSocket connections",
        )
        .expect("metric");
        let sse_streams = IntGauge::new("sse_streams", "Open GraphQL SSE streams").expect("metric");
        let subscriptions = IntGauge::new(
            "subscriptions",
            "Live GraphQL subscriptions (WebSocket and SSE)",
        )
        .expect("metric");
        let subscription_groups = IntGauge::new(
            "subscription_groups",
            "Shared subscription executions (distinct tenant, role, document and variables)",
        )
        .expect("metric");
        let hub_gap_reads = IntCounter::new(
            "event_hub_gap_reads_total",
            "Database reads that filled a gap in the instance's event sequence",
        )
        .expect("metric");
        let subscription_replays = IntCounter::new(
            "subscription_replays_total",
            "Database reads that replayed events to one subscriber",
        )
        .expect("metric");
        let queue_depth =
            IntGauge::new("job_queue_depth", "Jobs waiting or leased").expect("metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests, operations and connections refused by a rate limit or cap",
            ),
            &["limit"],
        )
        .expect("metric");
        let rate_limiter_errors = IntCounter::new(
            "rate_limiter_errors_total",
            "Rate limiter failures that let a request through unlimited",
        )
        .expect("metric");
        let http_connections =
            IntGauge::new("http_connections", "Open HTTP connections").expect("metric");
        let http_connections_active = IntGauge::new(
            "http_connections_active",
            "Open HTTP connections serving a request or upgraded to a WebSocket",
        )
        .expect("metric");
        let http_connections_refused = IntCounterVec::new(
            Opts::new(
                "http_connections_refused_total",
                "Connections refused at accept because a cap was reached",
            ),
            &["cap"],
        )
        .expect("metric");
        let http_connections_evicted = IntCounter::new(
            "http_connections_evicted_total",
            "Half-open or idle connections closed to admit a new one at the connection cap",
        )
        .expect("metric");
        let http_timeouts = IntCounterVec::new(
            Opts::new(
                "http_timeouts_total",
                "Connections cut by a timeout (headers, keep_alive, body, write)",
            ),
            &["phase"],
        )
        .expect("metric");
        let http_accept_errors = IntCounter::new(
            "http_accept_errors_total",
            "Failed accept calls (e.g. out of file descriptors)",
        )
        .expect("metric");
        let operations_in_flight = IntGauge::new(
            "graphql_operations_in_flight",
            "GraphQL queries and mutations executing",
        )
        .expect("metric");
        let operations_stopped = IntCounterVec::new(
            Opts::new(
                "graphql_operations_stopped_total",
                "GraphQL operations stopped by an execution limit (timeout, response_size)",
            ),
            &["limit"],
        )
        .expect("metric");
        let operation_seconds = HistogramVec::new(
            HistogramOpts::new(
                "graphql_request_duration_seconds",
                "Time to execute a GraphQL query or mutation, by operation name (anonymous, or \
                 other beyond the first 200 names)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["operation"],
        )
        .expect("metric");
        let response_cache = IntCounterVec::new(
            Opts::new(
                "graphql_response_cache_total",
                "GraphQL response cache lookups (hit, miss, stale) and answers stored",
            ),
            &["outcome"],
        )
        .expect("metric");
        let graphql_errors = IntCounterVec::new(
            Opts::new("graphql_errors_total", "GraphQL errors answered, by code"),
            &["code"],
        )
        .expect("metric");
        let latency = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ];
        let outbox_delivery_seconds = HistogramVec::new(
            HistogramOpts::new(
                "outbox_delivery_seconds",
                "From an outbox row being due to its delivery, by destination",
            )
            .buckets(latency.clone()),
            &["destination"],
        )
        .expect("metric");
        let outbox_oldest_seconds = prometheus::Gauge::new(
            "outbox_oldest_seconds",
            "Age of the oldest outbox row not delivered yet (0 when none), as this process's relay last saw it",
        )
        .expect("metric");
        let outbox_dead_letters = IntCounterVec::new(
            Opts::new(
                "outbox_dead_letters_total",
                "Outbox rows given up on (their destination's retries ran out), by destination",
            ),
            &["destination"],
        )
        .expect("metric");
        let webhook_attempts = IntCounterVec::new(
            Opts::new(
                "webhook_attempts_total",
                "Webhook delivery attempts, by outcome (delivered, failed, refused)",
            ),
            &["outcome"],
        )
        .expect("metric");
        let webhook_delivery_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "webhook_delivery_seconds",
                "From an event being recorded to an endpoint accepting its delivery",
            )
            .buckets(latency.clone()),
        )
        .expect("metric");
        let event_fanout_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "event_fanout_seconds",
                "From an event being recorded to its result reaching this instance's subscribers",
            )
            .buckets(latency),
        )
        .expect("metric");
        let analysis_seconds = HistogramVec::new(
            HistogramOpts::new(
                "analysis_duration_seconds",
                "Time an analyser took on one call, by analyser",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
            ]),
            &["analyzer"],
        )
        .expect("metric");
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "The running build (always 1)"),
            &["version"],
        )
        .expect("metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // The process: CPU seconds, resident memory, open and maximum file descriptors,
        // threads, start time (Linux; elsewhere it reports nothing).
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        for m in [
            Box::new(operation_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(graphql_errors.clone()),
            Box::new(response_cache.clone()),
            Box::new(build_info),
            Box::new(outbox_delivery_seconds.clone()),
            Box::new(outbox_oldest_seconds.clone()),
            Box::new(outbox_dead_letters.clone()),
            Box::new(webhook_attempts.clone()),
            Box::new(webhook_delivery_seconds.clone()),
            Box::new(event_fanout_seconds.clone()),
            Box::new(analysis_seconds.clone()),
            Box::new(operations_in_flight.clone()),
            Box::new(operations_stopped.clone()),
            Box::new(http_requests.clone()),
            Box::new(jobs.clone()),
            Box::new(job_seconds.clone()),
            Box::new(db_statements.clone()),
            Box::new(ws_connections.clone()),
            Box::new(sse_streams.clone()),
            Box::new(subscriptions.clone()),
            Box::new(subscription_groups.clone()),
            Box::new(hub_gap_reads.clone()),
            Box::new(subscription_replays.clone()),
            Box::new(queue_depth.clone()),
            Box::new(rate_limited.clone()),
            Box::new(rate_limiter_errors.clone()),
            Box::new(http_connections.clone()),
            Box::new(http_connections_active.clone()),
            Box::new(http_connections_refused.clone()),
            Box::new(http_connections_evicted.clone()),
            Box::new(http_timeouts.clone()),
            Box::new(http_accept_errors.clone()),
            Box::new(crate::adapters::aws::AWS_REQUESTS.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Self {
            registry,
            http_requests,
            jobs,
            job_seconds,
            db_statements,
            ws_connections,
            sse_streams,
            subscriptions,
            subscription_groups,
            hub_gap_reads,
            subscription_replays,
            queue_depth,
            rate_limited,
            rate_limiter_errors,
            http_connections,
            http_connections_active,
            http_connections_refused,
            http_connections_evicted,
            http_timeouts,
            http_accept_errors,
            operations_in_flight,
            operations_stopped,
            operation_seconds,
            graphql_errors,
            response_cache,
            outbox_delivery_seconds,
            outbox_oldest_seconds,
            outbox_dead_letters,
            webhook_attempts,
            webhook_delivery_seconds,
            event_fanout_seconds,
            analysis_seconds,
            operation_names: Default::default(),
        }
    }

    /// Records an executed query or mutation: its time under its name's label, and its errors
    /// by code.
    pub fn operation(&self, name: Option<&str>, took: Duration, codes: &[String]) {
        let label = match name {
            None => "anonymous",
            Some(n) => {
                let mut names = self.operation_names.lock().expect("operation names");
                if names.contains(n) || (names.len() < OPERATION_LABELS && names.insert(n.into())) {
                    n
                } else {
                    "other"
                }
            }
        };
        self.operation_seconds
            .with_label_values(&[label])
            .observe(took.as_secs_f64());
        for code in codes {
            self.graphql_errors
                .with_label_values(&[code.as_str()])
                .inc();
        }
    }

    pub fn job_finished(&self, outcome: &Outcome, took: Duration) {
        let label = match outcome {
            Outcome::Completed => "completed",
            Outcome::Skipped => "skipped",
            Outcome::WillRetry(_) => "retry",
            Outcome::Failed(_) => "failed",
            Outcome::Fenced => "fenced",
        };
        self.jobs.with_label_values(&[label]).inc();
        self.job_seconds.observe(took.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub async fn track(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    state
        .app
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .inc();
    resp
}

/// Who may read `/metrics` on the main listener: anyone (development without a separate metrics
/// listener), holders of `VOICEGRAPH_METRICS_TOKEN`, or nobody (404: production, or when
/// `VOICEGRAPH_METRICS_LISTEN` serves them elsewhere).
#[derive(Clone)]
pub enum Access {
    Open,
    /// The SHA-256 of the token, compared with the presented one's (so timing reveals nothing).
    Token([u8; 32]),
    Hidden,
}

impl Access {
    pub fn from_settings(settings: &Settings) -> Self {
        match &settings.metrics_token {
            Some(t) => Access::Token(Sha256::digest(t.expose_secret().as_bytes()).into()),
            None if settings.metrics_listen.is_some() || settings.is_production() => Access::Hidden,
            None => Access::Open,
        }
    }
}

/// Refuses a scrape without `Authorization: Bearer <VOICEGRAPH_METRICS_TOKEN>` (401).
pub async fn require_token(expected: [u8; 32], req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| Sha256::digest(token.trim().as_bytes()));
    if presented.is_some_and(|p| p.as_slice() == expected) {
        return next.run(req).await;
    }
    let mut r = super::graphql::error_response(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "/metrics needs `Authorization: Bearer <metrics token>`",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"metrics\""),
    );
    r
}

/// The Prometheus text exposition of this process's metrics.
pub async fn render(app: &AppState) -> Response {
    if let Ok(depth) = app.queue.depth().await {
        app.metrics.queue_depth.set(depth as i64);
    }
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&app.metrics.registry.gather(), &mut buf);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}

pub async fn scrape(State(state): State<HttpState>) -> Response {
    render(&state.app).await
}

/// The application of the separate metrics listener (`VOICEGRAPH_METRICS_LISTEN`): `/metrics`
/// only, open to whoever can reach that address.
pub fn router(app: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(app): State<AppState>| async move { render(&app).await }),
        )
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_open_only_in_development_without_a_listener_or_token() {
        let access = |vars: &[(&str, &str)]| {
            let mut l = crate::config::Layers::default();
            for (k, v) in vars {
                l.set(k, *v);
            }
            Access::from_settings(&l.settings().unwrap())
        };
        assert!(matches!(access(&[]), Access::Open));
        assert!(matches!(access(&[("env", "production")]), Access::Hidden));
        assert!(matches!(
            access(&[("metrics_listen", "127.0.0.1:9090")]),
            Access::Hidden
        ));
        let token = access(&[("env", "production"), ("metrics_token", "t0k")]);
        assert!(matches!(token, Access::Token(d) if d == <[u8; 32]>::from(Sha256::digest(b"t0k"))));
    }
}
