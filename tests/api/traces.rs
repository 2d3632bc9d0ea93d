//! Traces over OTLP. Separate `serve`, `worker` and `relay` processes of the real binary, on the
//! production stack (Postgres, SQS, SNS with its raw-delivery SQS queue, Redis and S3 through the
//! emulator), export their spans to an OTLP/HTTP receiver in the test; one call's trace runs from
//! the `submitCall` request through the relay's job, the worker's analysis, the relay's
//! publication of the `COMPLETED` event and its fan-out to the delivery to a subscriber, each
//! span the child of the one before. Without `VOICEGRAPH_OTLP_ENDPOINT` nothing is sent. Also:
//! the trace context on SQS and SNS message attributes and through Redis, in one process.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;
use serde_json::{json, Value};
use tokio::sync::Notify;
use uuid::Uuid;
use voicegraph::domain::{CallStatus, EventEnvelope, JobMessage};
use voicegraph::ports::{EventFeed, EventPublisher, JobQueue};

use crate::backends::{self, ProductionStack};
use crate::helpers::*;
use crate::require;

const BIN: &str = env!("CARGO_BIN_EXE_voicegraph");
/// How long any one step may take on a loaded machine before the test gives up.
const PATIENCE: Duration = Duration::from_secs(120);

/// A span as the receiver got it (ids in lower-case hex, as in a `traceparent`).
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace: String,
    id: String,
    /// Empty for a root.
    parent: String,
    attributes: HashMap<String, String>,
}

impl Span {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// An OTLP/HTTP (protobuf) trace receiver on a port of its own.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<Notify>,
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(n)) => n.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

impl Receiver {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let (s, r) = (spans.clone(), requests.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: bytes::Bytes| {
                let (spans, requests) = (s.clone(), r.clone());
                async move {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let request = match ExportTraceServiceRequest::decode(body) {
                        Ok(r) => r,
                        Err(e) => {
                            return (
                                axum::http::StatusCode::BAD_REQUEST,
                                e.to_string().into_bytes(),
                            )
                        }
                    };
                    let mut got = Vec::new();
                    for rs in request.resource_spans {
                        let resource = rs
                            .resource
                            .map(|r| attributes(&r.attributes))
                            .unwrap_or_default();
                        let service = resource.get("service.name").cloned().unwrap_or_default();
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                got.push(Span {
                                    service: service.clone(),
                                    name: span.name,
                                    trace: hex::encode(&span.trace_id),
                                    id: hex::encode(&span.span_id),
                                    parent: hex::encode(&span.parent_span_id),
                                    attributes: attributes(&span.attributes),
                                });
                            }
                        }
                    }
                    spans.lock().unwrap().extend(got);
                    (
                        axum::http::StatusCode::OK,
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.notified().await })
                .await
                .unwrap();
        });
        Self {
            url,
            spans,
            requests,
            stop,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `serve`, `worker` and `relay` as separate processes of the binary, logging into a temp dir.
struct Cluster {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    children: Vec<(String, Child)>,
}

impl Cluster {
    fn spawn(&mut self, role: &str, extra: &[(&str, String)]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{role}.log"))).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg(role)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // The spans the test looks for are at `info`, the default.
            .env_remove("RUST_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(format!("VOICEGRAPH_{}", k.to_uppercase()), v);
        }
        self.children
            .push((role.to_string(), cmd.spawn().expect("spawn voicegraph")));
    }

    fn log(&self, role: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{role}.log"))).unwrap_or_default()
    }

    /// SIGTERM to every process, then waits for each to exit by itself (they flush their spans
    /// on the way out).
    async fn terminate(&mut self) {
        for (_, child) in &self.children {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        for (role, child) in &mut self.children {
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{role} did not stop after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert!(status.success(), "{role} exited with {status}");
        }
        let logs: Vec<String> = self.children.iter().map(|(r, _)| self.log(r)).collect();
        for log in logs {
            // The exporter logs its failures through the logger.
            let failed = log.lines().any(|l| {
                l.contains("opentelemetry") && (l.contains(" WARN ") || l.contains(" ERROR "))
                    || l.contains("flushing the last spans")
            });
            assert!(!failed, "an export failed: {log}");
        }
        self.children.clear();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A migrated production stack, its processes started with `extra` settings and `env`, serve
/// ready; returns the cluster, serve's port and the deployment's Redis channel.
async fn cluster(
    stack: &ProductionStack,
    extra: &[(&str, String)],
    env: &[(&str, &str)],
) -> (Cluster, u16, String) {
    let status = Command::new(BIN)
        .arg("migrate")
        .env("VOICEGRAPH_DATABASE_URL", &stack.database_url)
        .env("VOICEGRAPH_MIGRATE_DATABASE_URL", &stack.owner_database_url)
        .env("VOICEGRAPH_DATABASE_RUNTIME_ROLE", backends::RUNTIME_ROLE)
        .status()
        .unwrap();
    assert!(status.success());
    let channel = format!("vg-test:{}", Uuid::new_v4());
    let mut vars: Vec<(String, String)> = stack
        .vars()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    vars.extend(
        [
            ("bootstrap_admin_key", ADMIN_KEY),
            ("job_visibility_secs", "20"),
            ("relay_poll_ms", "100"),
            ("db_max_connections", "4"),
            ("log_format", "text"),
            ("metrics_token", "trace-test"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    vars.push(("redis_channel".into(), channel.clone()));
    for (k, v) in extra {
        vars.push((k.to_string(), v.clone()));
    }
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend(
        vars.into_iter()
            .map(|(k, v)| (format!("VOICEGRAPH_{}", k.to_uppercase()), v)),
    );
    let mut cluster = Cluster {
        dir: tempfile::tempdir().unwrap(),
        env,
        children: Vec::new(),
    };
    let port = free_port();
    cluster.spawn("serve", &[("listen", format!("127.0.0.1:{port}"))]);
    cluster.spawn("worker", &[]);
    cluster.spawn("relay", &[]);
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let ready = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "serve never became ready: {}",
            cluster.log("serve")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (cluster, port, channel)
}

/// Waits until serve counts `n` live subscriptions: from then on every event reaches them live.
async fn wait_subscribed(client: &reqwest::Client, port: u16, n: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let metrics = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .bearer_auth("trace-test")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics
            .lines()
            .any(|l| l == format!("voicegraph_subscriptions {n}"))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscription never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every message published on a Redis channel, from now on.
async fn redis_messages(channel: &str) -> Arc<Mutex<Vec<Value>>> {
    let client = redis::Client::open(backends::redis_url().unwrap()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(channel).await.unwrap();
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(m) = messages.next().await {
            let v: Value = serde_json::from_slice(m.get_payload_bytes()).unwrap();
            sink.lock().unwrap().push(v);
        }
    });
    got
}

/// Submits a call (the recording as a multipart upload) with `request_id` as its `X-Request-Id`;
/// returns its id.
async fn submit(client: &reqwest::Client, port: u16, request_id: &str) -> String {
    let ops = json!({
        "query": "mutation Submit($input: SubmitCallInput!) { submitCall(input: $input) { call { id } } }",
        "variables": { "input": { "recording": null, "externalId": request_id } },
    });
    let form = reqwest::multipart::Form::new()
        .text("operations", ops.to_string())
        .text(
            "map",
            json!({ "0": ["variables.input.recording"] }).to_string(),
        )
        .part(
            "0",
            reqwest::multipart::Part::bytes(short_call())
                .file_name("call.wav")
                .mime_str("audio/wav")
                .unwrap(),
        );
    let body: Value = client
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .bearer_auth(ADMIN_KEY)
        .header("x-request-id", request_id)
        .header("apollo-require-preflight", "true")
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["submitCall"]["call"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs one call to `COMPLETED` on the cluster with a live subscriber; returns the call's id and
/// the `COMPLETED` event as it was published on Redis.
async fn one_call(port: u16, channel: &str, request_id: &str) -> (String, Value) {
    let client = reqwest::Client::new();
    let on_redis = redis_messages(channel).await;
    let mut sub = Subscription::connect(&format!("127.0.0.1:{port}"), "graphql-transport-ws").await;
    sub.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {ADMIN_KEY}") } }))
        .await;
    assert_eq!(
        sub.recv(Duration::from_secs(30)).await.unwrap()["type"],
        "connection_ack"
    );
    sub.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { callEvents { kind callId } }" } }))
        .await;
    wait_subscribed(&client, port, 1).await;

    let id = submit(&client, port, request_id).await;
    loop {
        let e = sub.next_data(PATIENCE).await["callEvents"].clone();
        assert_eq!(e["callId"], id.as_str(), "{e}");
        if e["kind"] == "COMPLETED" {
            break;
        }
    }
    // The fan-out's message, which may reach Redis after the subscriber had the event from the
    // database.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let completed = loop {
        let found = on_redis
            .lock()
            .unwrap()
            .iter()
            .find(|m| m["call_id"] == id.as_str() && m["kind"] == "COMPLETED")
            .cloned();
        if let Some(m) = found {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "COMPLETED never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (id, completed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_submit_call_through_every_process_to_the_subscriber() {
    let stack = require!(ProductionStack::create(None, 3, 20).await);
    let receiver = Receiver::start().await;
    let (mut cluster, port, channel) =
        cluster(&stack, &[("otlp_endpoint", receiver.url.clone())], &[]).await;
    let request_id = format!("trace-{}", Uuid::new_v4());
    let (id, on_redis) = one_call(port, &channel, &request_id).await;
    cluster.terminate().await;

    let spans = receiver.spans();
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let parent = |s: &Span, name: &str, service: &str| -> Span {
        let p = by_id
            .get(s.parent.as_str())
            .unwrap_or_else(|| panic!("the parent of {s:?} was not exported"));
        assert_eq!(
            (p.name.as_str(), p.service.as_str()),
            (name, service),
            "the parent of {s:?}"
        );
        assert_eq!(p.trace, s.trace, "{p:?} and its child {s:?}");
        (*p).clone()
    };
    let of_call = |name: &str, kind: Option<&str>| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.name == name && s.attr("call") == id)
            .filter(|s| kind.is_none_or(|k| s.attr("kind") == k))
            .collect()
    };

    // The subscriber's delivery of COMPLETED, back to the submission.
    let delivered = of_call("deliver event", Some("COMPLETED"));
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let delivery = delivered[0];
    assert_eq!(delivery.service, "voicegraph-serve");
    assert_eq!(delivery.attr("voicegraph.subscribers"), "1");
    let source = delivery.attr("voicegraph.event_source");
    let (published, job) = match source {
        // On Redis, through the fan-out.
        "feed" => {
            let fanout = parent(delivery, "fan out event", "voicegraph-relay");
            let published = parent(&fanout, "publish event", "voicegraph-relay");
            let job = parent(&published, "job", "voicegraph-worker");
            (published, job)
        }
        // Read from the database first (Postgres announced its position before the fan-out's
        // message came): the context stored with the event, the worker's.
        "database" => {
            let job = parent(delivery, "job", "voicegraph-worker");
            let published = of_call("publish event", Some("COMPLETED"));
            assert_eq!(published.len(), 1, "{published:?}");
            assert_eq!(published[0].parent, job.id, "{published:?}");
            (published[0].clone(), job)
        }
        other => panic!("an event source of {other:?}: {delivery:?}"),
    };
    assert_eq!(published.attr("kind"), "COMPLETED");
    // The fan-out continued the publication's trace, and Redis carried the fan-out's context on.
    let fanouts: Vec<&Span> = of_call("fan out event", Some("COMPLETED"))
        .into_iter()
        .filter(|f| f.parent == published.id)
        .collect();
    assert!(!fanouts.is_empty(), "no fan-out of {published:?}");
    let carried = on_redis["traceparent"]
        .as_str()
        .expect("a traceparent on Redis");
    assert!(
        fanouts
            .iter()
            .any(|f| carried == format!("00-{}-{}-01", f.trace, f.id)),
        "{carried} names none of {fanouts:?}"
    );
    let sent = parent(&job, "send job", "voicegraph-relay");
    let request = parent(&sent, "request", "voicegraph-serve");
    assert_eq!(request.attr("request_id"), request_id);
    assert_eq!(request.attr("graphql.operation.name"), "Submit");
    assert_eq!(request.parent, "", "the request is the trace's root");
    // The submission's own event hangs off the request.
    let submitted = of_call("publish event", Some("SUBMITTED"));
    assert!(
        submitted.iter().any(|s| s.parent == request.id),
        "{submitted:?}"
    );
    // One trace for all of it.
    for s in spans.iter().filter(|s| s.attr("call") == id) {
        assert_eq!(s.trace, request.trace, "{s:?}");
    }
    let services: std::collections::BTreeSet<&str> =
        spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        ["voicegraph-relay", "voicegraph-serve", "voicegraph-worker"].into()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_setting_no_span_is_sent_and_no_context_travels() {
    let stack = require!(ProductionStack::create(None, 3, 20).await);
    let receiver = Receiver::start().await;
    // The OpenTelemetry SDK's own variables do not turn exporting on: only the setting does.
    let standard = format!("{}/v1/traces", receiver.url);
    let (mut cluster, port, channel) = cluster(
        &stack,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", standard.as_str()),
        ],
    )
    .await;
    let (_, on_redis) = one_call(port, &channel, "untraced").await;
    assert!(on_redis.get("traceparent").is_none(), "{on_redis}");
    cluster.terminate().await;
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 0);
    assert!(receiver.spans().is_empty());
}

/// An event that comes on the feed (Redis) is delivered in a span continuing the context the
/// feed brought: the fan-out's. (On Postgres the instance usually reads an event from the
/// database before the fan-out's message arrives, as in the test above; here no database
/// announces it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_from_the_feed_continues_the_context_redis_brought() {
    let Some(redis_url) = backends::redis_url() else {
        return;
    };
    let receiver = Receiver::start().await;
    let data = tempfile::tempdir().unwrap();
    let channel = format!("vg-test:{}", Uuid::new_v4());
    let port = free_port();
    let mut serve = Cluster {
        dir: tempfile::tempdir().unwrap(),
        env: [
            (
                "VOICEGRAPH_DATA_DIR",
                data.path().to_string_lossy().to_string(),
            ),
            ("VOICEGRAPH_LISTEN", format!("127.0.0.1:{port}")),
            ("VOICEGRAPH_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY.to_string()),
            ("VOICEGRAPH_REDIS_URL", redis_url.clone()),
            ("VOICEGRAPH_REDIS_CHANNEL", channel.clone()),
            ("VOICEGRAPH_OTLP_ENDPOINT", receiver.url.clone()),
            ("VOICEGRAPH_METRICS_TOKEN", "trace-test".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec(),
        children: Vec::new(),
    };
    serve.spawn("serve", &[]);
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "serve never became ready: {}",
            serve.log("serve")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys: Value = client
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "query": "{ apiKeys { tenantId } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tenant: Uuid = keys["data"]["apiKeys"][0]["tenantId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut sub = Subscription::connect(&format!("127.0.0.1:{port}"), "graphql-transport-ws").await;
    sub.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {ADMIN_KEY}") } }))
        .await;
    assert_eq!(
        sub.recv(Duration::from_secs(30)).await.unwrap()["type"],
        "connection_ack"
    );
    sub.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { callEvents { kind callId } }" } }))
        .await;
    wait_subscribed(&client, port, 1).await;

    // The first position of a fresh database, as a fan-out would publish it.
    let fanout = voicegraph::adapters::redis::RedisFanout::connect(&redis_url, &channel)
        .await
        .unwrap();
    let e = EventEnvelope {
        seq: 1,
        tenant_id: tenant,
        ..event(Some(A))
    };
    fanout.publish(&e).await.unwrap();
    let got = sub.next_data(PATIENCE).await["callEvents"].clone();
    assert_eq!(got["callId"], e.call_id.to_string());
    serve.terminate().await;

    let spans = receiver.spans();
    let delivery = spans
        .iter()
        .find(|s| s.name == "deliver event" && s.attr("call") == e.call_id.to_string())
        .unwrap_or_else(|| panic!("no delivery span among {spans:?}"));
    assert_eq!(delivery.attr("voicegraph.event_source"), "feed");
    assert_eq!(
        (delivery.trace.as_str(), delivery.parent.as_str()),
        ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    );
}

fn event(traceparent: Option<&str>) -> EventEnvelope {
    EventEnvelope {
        seq: 7,
        id: 7,
        tenant_id: Uuid::new_v4(),
        call_id: Uuid::new_v4(),
        kind: "COMPLETED".into(),
        status: CallStatus::Completed,
        at: chrono::Utc::now(),
        analysis_id: None,
        traceparent: traceparent.map(str::to_string),
    }
}

const A: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const B: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A job's trace context goes out as its `traceparent` message attribute, and a job received
/// with one is leased with it (over the body's); a malformed one is no reason to refuse the job.
#[tokio::test]
async fn jobs_carry_their_trace_context_as_an_sqs_message_attribute() {
    require!(backends::aws_endpoint());
    let sdk = backends::sdk().await;
    let (url, _) =
        backends::create_queue_with_dlq(&sdk, &backends::unique("vg-trace-jobs"), 3, 5).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = voicegraph::adapters::sqs::SqsQueue::connect(sqs.clone(), url.clone())
        .await
        .unwrap();
    let job = JobMessage {
        tenant_id: Uuid::new_v4(),
        call_id: Uuid::new_v4(),
        analysis_id: None,
        traceparent: Some(A.into()),
    };
    queue
        .send_batch(&[(job.clone(), "k".into())])
        .await
        .pop()
        .unwrap()
        .unwrap();
    let got = sqs
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("All")
        .visibility_timeout(0)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(got.len(), 1, "{got:?}");
    let attr = &got[0].message_attributes().unwrap()["traceparent"];
    assert_eq!((attr.data_type(), attr.string_value()), ("String", Some(A)));
    let lease = queue
        .receive(1, Duration::from_secs(5), Duration::from_secs(2))
        .await
        .unwrap()
        .pop()
        .expect("the job");
    assert_eq!(lease.message, job);
    queue.ack(&lease).await.unwrap();

    // Sent by another client: the attribute wins over the body, malformed or not.
    for (body, attribute, leased) in [(Some(A), B, B), (None, "garbage", "garbage")] {
        let sent = JobMessage {
            traceparent: body.map(str::to_string),
            ..job.clone()
        };
        sqs.send_message()
            .queue_url(&url)
            .message_body(serde_json::to_string(&sent).unwrap())
            .message_attributes(
                "traceparent",
                aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(attribute)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        let lease = queue
            .receive(1, Duration::from_secs(5), Duration::from_secs(2))
            .await
            .unwrap()
            .pop()
            .expect("the job");
        assert_eq!(lease.message.traceparent.as_deref(), Some(leased));
        assert_eq!(lease.message.call_id, job.call_id);
        queue.ack(&lease).await.unwrap();
    }
}

/// An event published to SNS carries its trace context as a message attribute, which raw
/// delivery hands on to the realtime queue; the fan-out forwards the event to the feed with the
/// attribute's context (over the body's), and Redis carries it to every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_their_trace_context_through_sns_the_fan_out_and_redis() {
    require!(backends::aws_endpoint());
    let Some(redis_url) = backends::redis_url() else {
        return;
    };
    let sdk = backends::sdk().await;
    let (topic, queue_url) =
        backends::create_topic_with_queue(&sdk, &backends::unique("vg-trace-events")).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sns = voicegraph::adapters::sns::SnsPublisher::new(aws_sdk_sns::Client::new(&sdk), topic);
    let sent = event(Some(A));
    sns.publish(&sent).await.unwrap();
    let got = sqs
        .receive_message()
        .queue_url(&queue_url)
        .message_attribute_names("All")
        .visibility_timeout(0)
        .wait_time_seconds(5)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(got.len(), 1, "{got:?}");
    let attr = &got[0].message_attributes().unwrap()["traceparent"];
    assert_eq!(attr.string_value(), Some(A));
    let body: EventEnvelope = serde_json::from_str(got[0].body().unwrap()).unwrap();
    assert_eq!(body, sent);

    // The fan-out, into Redis, as the relay runs it (this process exports no spans, so the
    // context goes on as it came).
    let channel = format!("vg-test:{}", Uuid::new_v4());
    let token = tokio_util::sync::CancellationToken::new();
    let feed =
        voicegraph::adapters::redis::RedisFeed::start(&redis_url, &channel, 16, token.clone())
            .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while feed.ready().is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Redis subscription"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rx = feed.subscribe();
    let fanout = voicegraph::adapters::redis::RedisFanout::connect(&redis_url, &channel)
        .await
        .unwrap();
    // Another publisher's message: the event says A, the attribute B.
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(serde_json::to_string(&event(Some(A))).unwrap())
        .message_attributes(
            "traceparent",
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(B)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let mut forwarded = Vec::new();
    while forwarded.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "forwarded so far: {forwarded:?}"
        );
        voicegraph::realtime::run_once(&sqs, &queue_url, &fanout, Duration::from_secs(1))
            .await
            .unwrap();
        // What Redis brought back so far (the rest comes while the next round waits).
        while let Ok(e) = rx.try_recv() {
            forwarded.push(e.traceparent.clone().unwrap_or_default());
        }
    }
    token.cancel();
    forwarded.sort();
    // The first message's attribute said A; the second's said B (its body, A).
    assert_eq!(forwarded, [B, A]);
}
