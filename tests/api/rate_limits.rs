//! Rate limits as clients meet them: requests per second per key and per tenant (429 with
//! `Retry-After` and the `RateLimit-*` fields, `RATE_LIMITED`), failed authentications and
//! requests without credentials per client address (through a trusted proxy hop), the GraphQL
//! cost budget over HTTP, WebSocket and SSE, caps on a key's sockets and subscriptions, and all
//! of it counted across two instances sharing Redis.
//!
//! Tenants and keys are made on an app with the suite's generous limits; the app under test then
//! starts on the same data with low ones. Refilling quotas are slow (one unit per 5 to 20 s), so
//! that a slow machine cannot turn a refusal into a pass.

use std::time::Duration;

use futures::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use voicegraph::config::Layers;
use voicegraph::startup::Roles;

use crate::backends;
use crate::helpers::*;
use crate::require;

const SERVE: Roles = Roles {
    serve: true,
    worker: false,
    relay: false,
};

/// `{ calls(first: 3) { edges { node { id status } } } }` costs 4 × 3 + 1.
const EXPENSIVE: &str = "{ calls(first: 3) { edges { node { id status } } } }";
const EXPENSIVE_COST: u64 = 13;
/// Costs 2.
const CHEAP: &str = "{ viewer { role } }";

struct Key {
    secret: String,
    id: String,
}

/// Makes `tenants` tenants with `keys` admin keys each on an app with the suite's limits, stops
/// it, and hands back its data dir and the keys.
async fn with_keys(tenants: usize, keys: usize) -> (tempfile::TempDir, Vec<Vec<Key>>) {
    let setup = TestApp::spawn_with(SERVE, |_| {}).await;
    let mut all = Vec::new();
    for t in 0..tenants {
        let tenant = setup
            .gql_ok(
                "mutation($n: String!) { createTenant(input: {name: $n}) { tenant { id } } }",
                json!({ "n": format!("tenant {t}") }),
            )
            .await["createTenant"]["tenant"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let mut of_tenant = Vec::new();
        for k in 0..keys {
            let made = setup
                .gql_ok(
                    "mutation($t: ID!, $n: String!) { createApiKey(input: {tenantId: $t, role: ADMIN, name: $n}) { secret apiKey { id } } }",
                    json!({ "t": tenant, "n": format!("key {k}") }),
                )
                .await["createApiKey"]
                .clone();
            of_tenant.push(Key {
                secret: made["secret"].as_str().unwrap().to_string(),
                id: made["apiKey"]["id"].as_str().unwrap().to_string(),
            });
        }
        all.push(of_tenant);
    }
    (setup.stop().await, all)
}

/// A request from `addr` (as the trusted proxy says in `X-Forwarded-For`), with `key` if any.
async fn post(
    app: &TestApp,
    key: Option<&str>,
    from: Option<&str>,
    body: Value,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = app.client.post(app.url("/graphql")).json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(addr) = from {
        req = req.header("x-forwarded-for", format!("198.51.100.200, {addr}"));
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.expect("json body"))
}

async fn query(app: &TestApp, key: &str, q: &str) -> (StatusCode, HeaderMap, Value) {
    post(app, Some(key), None, json!({ "query": q })).await
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
        .to_str()
        .unwrap()
}

fn header_u64(h: &HeaderMap, name: &str) -> u64 {
    header(h, name).parse().expect("a number")
}

/// Asserts a 429 refusal by `limit`; returns its `Retry-After` in seconds, if any.
fn assert_refused(status: StatusCode, h: &HeaderMap, body: &Value, limit: &str) -> Option<u64> {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body:#}");
    let error = &body["errors"][0];
    assert_eq!(error["extensions"]["code"], "RATE_LIMITED", "{body:#}");
    assert_eq!(error["extensions"]["limit"], limit, "{body:#}");
    assert!(body.get("data").is_none(), "{body:#}");
    let retry = h
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    assert_eq!(
        retry,
        error["extensions"]["retryAfter"].as_u64(),
        "the header and the error agree"
    );
    retry
}

fn assert_ok(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert!(body.get("errors").is_none(), "{body:#}");
}

/// A `graphql-transport-ws` socket from `from` (through the trusted proxy), not yet initialised.
async fn socket(app: &TestApp, from: Option<&str>) -> Subscription {
    let mut req = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    if let Some(addr) = from {
        req.headers_mut()
            .insert("x-forwarded-for", addr.parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket connects");
    Subscription { ws }
}

/// Sends `connection_init` with `key`; returns `Ok` on `connection_ack`, else the close code
/// and reason.
async fn init(ws: &mut Subscription, key: &str) -> Result<(), (u16, String)> {
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {key}") } }))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, ws.ws.next()).await {
            Err(_) => panic!("no answer to connection_init"),
            Ok(None) | Ok(Some(Err(_))) => panic!("the socket ended without a close frame"),
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return Err((frame.code.into(), frame.reason.to_string()))
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "connection_ack", "{v}");
                return Ok(());
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn connected(app: &TestApp, key: &str) -> Subscription {
    let mut ws = socket(app, None).await;
    init(&mut ws, key).await.expect("connection_ack");
    ws
}

/// Waits until a key's live subscriptions, as the limiter counts them (on every instance), are
/// `want`.
async fn subscriptions_become(app: &TestApp, key: &Key, want: u64) {
    let limiter = app.state.limits.limiter().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held = limiter.held(&format!("subs:key:{}", key.id)).await.unwrap();
        if held == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{held} subscriptions held, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn subscribe(id: &str) -> Value {
    json!({ "id": id, "type": "subscribe", "payload": { "query": "subscription { callEvents { kind } }" } })
}

/// Opens an SSE stream of `query` with `key`; returns the response (its body not read).
async fn sse(app: &TestApp, key: &str, query: &str) -> reqwest::Response {
    app.client
        .post(app.url("/graphql"))
        .header("accept", "text/event-stream")
        .bearer_auth(key)
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_gets_429_with_the_ratelimit_fields() {
    let (dir, keys) = with_keys(1, 2).await;
    // One request per 20 s, three at once.
    let app = TestApp::spawn_in(dir, SERVE, |l| {
        l.set("rate_limit_rps", "0.05").set("rate_limit_burst", "3");
    })
    .await;
    let (k1, k2) = (&keys[0][0].secret, &keys[0][1].secret);
    for left in [2, 1, 0] {
        let (status, h, body) = query(&app, k1, CHEAP).await;
        assert_ok(status, &body);
        assert_eq!(header_u64(&h, "ratelimit-limit"), 3);
        assert_eq!(header_u64(&h, "ratelimit-remaining"), left);
        assert!((1..=60).contains(&header_u64(&h, "ratelimit-reset")));
        assert_eq!(
            header(&h, "ratelimit-policy"),
            "1;w=20;burst=3;comment=\"key\""
        );
    }
    let (status, h, body) = query(&app, k1, CHEAP).await;
    let retry = assert_refused(status, &h, &body, "key").expect("Retry-After");
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(header_u64(&h, "ratelimit-remaining"), 0);
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("this key's requests"), "{message}");

    // Another key of the tenant has its own quota; operations sent on a socket count too.
    let (status, _, body) = query(&app, k2, CHEAP).await;
    assert_ok(status, &body);
    let mut ws = connected(&app, k2).await;
    for id in ["a", "b"] {
        ws.send(json!({ "id": id, "type": "subscribe", "payload": { "query": CHEAP } }))
            .await;
        let next = ws.recv(Duration::from_secs(5)).await.unwrap();
        assert_eq!((&next["id"], &next["type"]), (&json!(id), &json!("next")));
        let done = ws.recv(Duration::from_secs(5)).await.unwrap();
        assert_eq!(done["type"], "complete");
    }
    ws.send(json!({ "id": "c", "type": "subscribe", "payload": { "query": CHEAP } }))
        .await;
    let refused = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (&refused["id"], &refused["type"]),
        (&json!("c"), &json!("error"))
    );
    assert_eq!(refused["payload"][0]["extensions"]["code"], "RATE_LIMITED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_of_the_tenant_is_throttled_by_the_tenant_limit() {
    let (dir, keys) = with_keys(2, 2).await;
    let app = TestApp::spawn_in(dir, SERVE, |l| {
        l.set("tenant_rate_limit_rps", "0.05")
            .set("tenant_rate_limit_burst", "3");
    })
    .await;
    for left in [2, 1, 0] {
        let (status, h, body) = query(&app, &keys[0][0].secret, CHEAP).await;
        assert_ok(status, &body);
        // The fields report the quota closest to running out: the tenant's.
        assert_eq!(header_u64(&h, "ratelimit-remaining"), left);
        assert!(header(&h, "ratelimit-policy").contains("comment=\"tenant\""));
    }
    let (status, h, body) = query(&app, &keys[0][1].secret, CHEAP).await;
    assert_refused(status, &h, &body, "tenant").expect("Retry-After");
    let (status, _, body) = query(&app, &keys[1][0].secret, CHEAP).await;
    assert_ok(status, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_lock_the_address_out() {
    let (dir, keys) = with_keys(1, 1).await;
    let app = TestApp::spawn_in(dir, SERVE, |l| {
        l.set("trusted_proxy_hops", "1")
            .set("auth_failures_per_minute", "3");
    })
    .await;
    let good = &keys[0][0].secret;
    let flood = futures::future::join_all((0..20).map(|i| {
        let app = &app;
        async move {
            let wrong = format!("vg_wrong_key_{i}");
            post(
                app,
                Some(&wrong),
                Some("203.0.113.9"),
                json!({ "query": CHEAP }),
            )
            .await
        }
    }))
    .await;
    let unauthenticated = flood
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(unauthenticated, 3, "three failures, then the lockout");
    for (status, h, body) in flood
        .iter()
        .filter(|(s, _, _)| *s != StatusCode::UNAUTHORIZED)
    {
        let retry = assert_refused(*status, h, body, "auth-failures").expect("Retry-After");
        assert!((1..=20).contains(&retry), "Retry-After {retry}");
    }
    // Locked out: even a good key from that address, on HTTP and on a socket.
    let (status, h, body) = post(
        &app,
        Some(good),
        Some("203.0.113.9"),
        json!({ "query": CHEAP }),
    )
    .await;
    assert_refused(status, &h, &body, "auth-failures");
    let mut ws = socket(&app, Some("203.0.113.9")).await;
    let (code, reason) = init(&mut ws, good).await.expect_err("refused");
    assert_eq!(code, 4429, "{reason}");
    assert!(reason.contains("failed authentications"), "{reason}");
    // Requests without credentials and other addresses are not locked out.
    let (status, _, body) = post(
        &app,
        None,
        Some("203.0.113.9"),
        json!({ "query": "{ __typename }" }),
    )
    .await;
    assert_ok(status, &body);
    let (status, _, body) = post(
        &app,
        Some(good),
        Some("203.0.113.10"),
        json!({ "query": CHEAP }),
    )
    .await;
    assert_ok(status, &body);
    let (status, _, _) = post(
        &app,
        Some("vg_wrong"),
        Some("203.0.113.10"),
        json!({ "query": CHEAP }),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_credentials_are_limited_per_address() {
    let app = TestApp::spawn_with(SERVE, |l| {
        l.set("trusted_proxy_hops", "1")
            .set("address_rate_limit_rps", "0.05")
            .set("address_rate_limit_burst", "2");
    })
    .await;
    let anonymous = json!({ "query": "{ __typename }" });
    // Browser apps may read the fields (a page on localhost is allowed in development).
    let resp = app
        .client
        .post(app.url("/graphql"))
        .header("origin", "http://localhost:3000")
        .header("x-forwarded-for", "192.0.2.99")
        .json(&anonymous)
        .send()
        .await
        .unwrap();
    let exposed = resp
        .headers()
        .get("access-control-expose-headers")
        .expect("exposed headers")
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in ["retry-after", "ratelimit-remaining", "ratelimit-policy"] {
        assert!(exposed.contains(h), "{exposed}");
    }
    for _ in 0..2 {
        let (status, h, body) = post(&app, None, Some("192.0.2.20"), anonymous.clone()).await;
        assert_ok(status, &body);
        assert!(header(&h, "ratelimit-policy").contains("comment=\"address\""));
    }
    let (status, h, body) = post(&app, None, Some("192.0.2.20"), anonymous.clone()).await;
    assert_refused(status, &h, &body, "address").expect("Retry-After");
    // A WebSocket upgrade is such a request too.
    let mut req = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    req.headers_mut()
        .insert("x-forwarded-for", "192.0.2.20".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429)
        }
        other => panic!("the upgrade was not refused: {other:?}"),
    }
    let (status, _, body) = post(&app, None, Some("192.0.2.21"), anonymous.clone()).await;
    assert_ok(status, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_budget_refuses_operations_before_they_run() {
    let (dir, keys) = with_keys(1, 4).await;
    // 13 per minute: one unit every 4.6 s.
    let app = TestApp::spawn_in(dir, SERVE, |l| {
        l.set("cost_budget_per_minute", EXPENSIVE_COST.to_string());
    })
    .await;
    let key = &keys[0][0].secret;
    let (status, _, body) = query(&app, key, EXPENSIVE).await;
    assert_ok(status, &body);
    let (status, h, body) = query(&app, key, EXPENSIVE).await;
    let retry = assert_refused(status, &h, &body, "key-cost").expect("Retry-After");
    assert!((50..=60).contains(&retry), "Retry-After {retry}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("costs 13"), "{message}");
    assert_eq!(header_u64(&h, "ratelimit-limit"), EXPENSIVE_COST);
    // A cheap operation waits for its two units, then runs.
    let (status, h, body) = query(&app, key, CHEAP).await;
    let retry = assert_refused(status, &h, &body, "key-cost").expect("Retry-After");
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (status, _, body) = query(&app, key, CHEAP).await;
    assert_ok(status, &body);

    // In a batch, operations over the budget are refused one by one; a 429 when all are.
    let key = &keys[0][1].secret;
    let batch = |ops: &[&str]| Value::Array(ops.iter().map(|q| json!({ "query": q })).collect());
    let (status, _, body) = post(&app, Some(key), None, batch(&[EXPENSIVE, CHEAP])).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert!(body[0].get("errors").is_none(), "{body:#}");
    assert_eq!(body[1]["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    let (status, h, body) = post(&app, Some(key), None, batch(&[CHEAP, CHEAP])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body:#}");
    assert!(h.get("retry-after").is_some());
    assert_eq!(body[0]["errors"][0]["extensions"]["code"], "RATE_LIMITED");

    // On a socket: an `error` for the operation over the budget, the socket stays.
    let key = &keys[0][2].secret;
    let mut ws = connected(&app, key).await;
    ws.send(json!({ "id": "big", "type": "subscribe", "payload": { "query": EXPENSIVE } }))
        .await;
    assert_eq!(
        ws.recv(Duration::from_secs(5)).await.unwrap()["type"],
        "next"
    );
    assert_eq!(
        ws.recv(Duration::from_secs(5)).await.unwrap()["type"],
        "complete"
    );
    ws.send(subscribe("sub")).await;
    let refused = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "RATE_LIMITED");
    assert_eq!(refused["payload"][0]["extensions"]["limit"], "key-cost");

    // Over SSE: a 429 before the stream.
    let key = &keys[0][3].secret;
    let (status, _, body) = query(&app, key, EXPENSIVE).await;
    assert_ok(status, &body);
    let resp = sse(&app, key, "subscription { callEvents { kind } }").await;
    let status = resp.status();
    let h = resp.headers().clone();
    let body: Value = resp.json().await.unwrap();
    assert_refused(status, &h, &body, "key-cost").expect("Retry-After");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_cost_budget_counts_every_key() {
    let (dir, keys) = with_keys(2, 2).await;
    let app = TestApp::spawn_in(dir, SERVE, |l| {
        l.set("tenant_cost_budget_per_minute", EXPENSIVE_COST.to_string());
    })
    .await;
    let (status, _, body) = query(&app, &keys[0][0].secret, EXPENSIVE).await;
    assert_ok(status, &body);
    let (status, h, body) = query(&app, &keys[0][1].secret, CHEAP).await;
    assert_refused(status, &h, &body, "tenant-cost").expect("Retry-After");
    let (status, _, body) = query(&app, &keys[1][0].secret, CHEAP).await;
    assert_ok(status, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_per_key_are_capped() {
    let (dir, keys) = with_keys(1, 2).await;
    let app = TestApp::spawn_in(dir, SERVE, |l| {
        l.set("max_sockets_per_key", "2");
    })
    .await;
    let key = &keys[0][0].secret;
    let first = connected(&app, key).await;
    let _second = connected(&app, key).await;
    let mut third = socket(&app, None).await;
    let (code, reason) = init(&mut third, key).await.expect_err("refused");
    assert_eq!(code, 4429);
    assert!(reason.contains("at most 2"), "{reason}");
    // An SSE stream is one of the key's sockets too.
    let resp = sse(&app, key, CHEAP).await;
    let status = resp.status();
    let h = resp.headers().clone();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(assert_refused(status, &h, &body, "sockets"), None);
    // Other keys are not affected.
    let _other = connected(&app, &keys[0][1].secret).await;
    // A closed socket gives its place back.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut ws = socket(&app, None).await;
        match init(&mut ws, key).await {
            Ok(()) => break,
            Err((4429, _)) => {}
            Err(other) => panic!("unexpected close {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_key_are_capped() {
    let (dir, keys) = with_keys(1, 1).await;
    let app = TestApp::spawn_in(dir, SERVE, |l| {
        l.set("max_subscriptions_per_key", "2");
    })
    .await;
    let key = &keys[0][0];
    let mut ws = connected(&app, &key.secret).await;
    ws.send(subscribe("1")).await;
    ws.send(subscribe("2")).await;
    subscriptions_become(&app, key, 2).await;
    ws.send(subscribe("3")).await;
    let refused = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (&refused["id"], &refused["type"]),
        (&json!("3"), &json!("error"))
    );
    assert_eq!(refused["payload"][0]["extensions"]["code"], "RATE_LIMITED");
    assert_eq!(
        refused["payload"][0]["extensions"]["limit"],
        "subscriptions"
    );
    // Over SSE too; queries are not subscriptions.
    let resp = sse(&app, &key.secret, "subscription { callEvents { kind } }").await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    ws.send(json!({ "id": "q", "type": "subscribe", "payload": { "query": CHEAP } }))
        .await;
    assert_eq!(
        ws.recv(Duration::from_secs(5)).await.unwrap()["type"],
        "next"
    );
    // A completed subscription gives its place back.
    ws.send(json!({ "id": "1", "type": "complete" })).await;
    subscriptions_become(&app, key, 1).await;
    ws.send(subscribe("4")).await;
    subscriptions_become(&app, key, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_and_rates_count_across_two_instances_sharing_redis() {
    let url = require!(backends::redis_url());
    let (dir, keys) = with_keys(1, 2).await;
    let channel = format!("vg-test:{}", uuid::Uuid::new_v4());
    let path = dir.path().to_path_buf();
    let shared = |l: &mut Layers| {
        l.set("redis_url", url.clone())
            .set("redis_channel", channel.clone())
            .set("max_sockets_per_key", "2")
            .set("max_subscriptions_per_key", "2")
            .set("rate_limit_rps", "0.05")
            .set("rate_limit_burst", "3");
    };
    let a = TestApp::spawn_in(dir, SERVE, shared).await;
    let b = TestApp::spawn_with(SERVE, |l| {
        // The same data (and database) as `a`.
        l.set("data_dir", path.to_string_lossy().to_string());
        if let Some((db, _)) = postgres_database(&path) {
            l.set("database_url", db);
        }
        shared(l);
    })
    .await;
    let (k1, k2) = (&keys[0][0], &keys[0][1]);

    // Sockets: one on each instance, then neither takes a third.
    let mut on_a = connected(&a, &k1.secret).await;
    let mut on_b = connected(&b, &k1.secret).await;
    for app in [&a, &b] {
        let mut ws = socket(app, None).await;
        let (code, _) = init(&mut ws, &k1.secret).await.expect_err("refused");
        assert_eq!(code, 4429);
    }
    // Subscriptions: one on each instance, then a third is refused.
    on_a.send(subscribe("1")).await;
    subscriptions_become(&a, k1, 1).await;
    on_b.send(subscribe("1")).await;
    subscriptions_become(&a, k1, 2).await;
    on_a.send(subscribe("2")).await;
    let refused = on_a.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (&refused["id"], &refused["type"]),
        (&json!("2"), &json!("error"))
    );
    assert_eq!(
        refused["payload"][0]["extensions"]["limit"],
        "subscriptions"
    );
    // Requests (operations on sockets included, as above): the key's burst of three is spent
    // across both instances.
    for app in [&a, &b, &a] {
        let (status, _, body) = query(app, &k2.secret, CHEAP).await;
        assert_ok(status, &body);
    }
    for app in [&b, &a] {
        let (status, h, body) = query(app, &k2.secret, CHEAP).await;
        assert_refused(status, &h, &body, "key").expect("Retry-After");
    }
}
