//! Prometheus metrics: HTTP requests, jobs, SQL statements, WebSocket connections, queue depth,
//! rate-limit refusals.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use super::HttpState;
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
}

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
        for m in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
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

pub async fn scrape(State(state): State<HttpState>) -> Response {
    if let Ok(depth) = state.app.queue.depth().await {
        state.app.metrics.queue_depth.set(depth as i64);
    }
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&state.app.metrics.registry.gather(), &mut buf);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}
