//! Subscriptions for browsers and long-lived clients: graphql-transport-ws close codes as the
//! protocol defines them, server pings and the keep-alive timeout, operations over the socket,
//! shared executions per document, catch-up for subscribers that fall behind, reconnecting with
//! a cursor, going away on shutdown, graphql-sse, and WebSocket origins.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use voicegraph::graphql::live::{Live, LiveItem};
use voicegraph::services::auth::{Caller, Role};
use voicegraph::startup::Roles;

use crate::helpers::*;

const SERVE_RELAY: Roles = Roles {
    serve: true,
    worker: false,
    relay: true,
};

/// The next message as it came, without answering pings; `None` on timeout or end.
async fn raw(ws: &mut Subscription, timeout: Duration) -> Option<Message> {
    tokio::time::timeout(timeout, ws.ws.next())
        .await
        .ok()??
        .ok()
}

/// Reads until the server closes; returns the close code and reason (panics on a timeout or an
/// end without a close frame).
pub(crate) async fn close_code(ws: &mut Subscription, within: Duration) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, ws.ws.next()).await {
            Err(_) => panic!("not closed within {within:?}"),
            Ok(None) | Ok(Some(Err(_))) => panic!("the socket ended without a close frame"),
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return (frame.code.into(), frame.reason.to_string())
            }
            Ok(Some(Ok(Message::Close(None)))) => panic!("a close frame without a code"),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn init(ws: &mut Subscription, key: &str) {
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {key}") } }))
        .await;
    let ack = ws.recv(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(ack["type"], "connection_ack", "{ack}");
}

async fn connected(app: &TestApp, key: &str) -> Subscription {
    let mut ws = Subscription::connect(&app.addr, "graphql-transport-ws").await;
    init(&mut ws, key).await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_follow_graphql_transport_ws() {
    let app = TestApp::spawn_with(SERVE_RELAY, |l| {
        l.set("ws_init_timeout_secs", "1");
    })
    .await;
    let addr = app.addr.clone();
    let transport = |_: &TestApp| Subscription::connect(&addr, "graphql-transport-ws");
    let sub = |id: &str| json!({ "id": id, "type": "subscribe", "payload": { "query": "subscription { callEvents { kind } }" } });

    // 4408: no connection_init in time (and not before the timeout).
    let mut ws = transport(&app).await;
    let started = tokio::time::Instant::now();
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await.0, 4408);
    assert!(started.elapsed() >= Duration::from_millis(800));

    // 4401: subscribing before the connection was acknowledged.
    let mut ws = transport(&app).await;
    ws.send(sub("1")).await;
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await.0, 4401);

    // 4403: a bad token, or none at all.
    for payload in [
        json!({ "Authorization": "Bearer vg_nope" }),
        json!({}),
        Value::Null,
    ] {
        let mut ws = transport(&app).await;
        ws.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        let (code, reason) = close_code(&mut ws, Duration::from_secs(5)).await;
        assert_eq!(code, 4403, "{payload}: {reason}");
    }
    let mut ws = transport(&app).await;
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": "Bearer vg_nope" } }))
        .await;
    let (_, reason) = close_code(&mut ws, Duration::from_secs(5)).await;
    assert!(reason.contains("invalid or revoked API key"), "{reason}");

    // 4429: a second connection_init.
    let mut ws = connected(&app, ADMIN_KEY).await;
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {ADMIN_KEY}") } }))
        .await;
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await.0, 4429);

    // 4409: a subscription id that is already running.
    let mut ws = connected(&app, ADMIN_KEY).await;
    ws.send(sub("dup")).await;
    ws.send(sub("dup")).await;
    let (code, reason) = close_code(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(code, 4409);
    assert_eq!(reason, "Subscriber for dup already exists");

    // 4400: anything that is not a protocol message.
    for bad in [
        Message::text("not json"),
        Message::text(json!({ "type": "nonsense" }).to_string()),
        Message::text(json!({ "no": "type" }).to_string()),
        Message::text(json!({ "type": "subscribe", "payload": { "query": "{ __typename }" } }).to_string()),
        Message::text(json!({ "type": "subscribe", "id": "", "payload": { "query": "{ __typename }" } }).to_string()),
        Message::text(json!({ "type": "subscribe", "id": "x".repeat(200), "payload": { "query": "{ __typename }" } }).to_string()),
        Message::text(json!({ "type": "subscribe", "id": "1", "payload": "{ __typename }" }).to_string()),
        Message::binary(vec![1, 2, 3]),
    ] {
        let mut ws = connected(&app, ADMIN_KEY).await;
        ws.ws.send(bad.clone()).await.unwrap();
        let (code, reason) = close_code(&mut ws, Duration::from_secs(5)).await;
        assert_eq!(code, 4400, "{bad:?}: {reason}");
    }

    // 4406: no subprotocol that the server speaks.
    let req = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .unwrap();
    let (socket, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut ws = Subscription { ws: socket };
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await.0, 4406);

    // And a well-behaved connection still works after all that.
    let mut ws = connected(&app, ADMIN_KEY).await;
    ws.send(
        json!({ "id": "q", "type": "subscribe", "payload": { "query": "{ viewer { role } }" } }),
    )
    .await;
    let next = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(next["payload"]["data"]["viewer"]["role"], "ADMIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_and_closes_only_clients_that_stop_answering() {
    let app = TestApp::spawn_with(SERVE_RELAY, |l| {
        l.set("ws_ping_interval_ms", "150")
            .set("ws_pong_timeout_ms", "400");
    })
    .await;
    // A client that answers (the helper pongs while it reads) stays for many intervals: it
    // reads the whole time, so a slow machine cannot make it look silent.
    app.submit_ok(short_call(), json!({})).await;
    let mut answering = app
        .subscribe(
            ADMIN_KEY,
            "subscription { callEvents(after: \"0\") { kind } }",
            json!({}),
        )
        .await;
    let e = answering.next_data(Duration::from_secs(10)).await;
    assert_eq!(e["callEvents"]["kind"], "SUBMITTED");
    assert!(answering.recv(Duration::from_millis(2000)).await.is_none());
    answering
        .send(json!({ "id": "q", "type": "subscribe", "payload": { "query": "{ viewer { role } }" } }))
        .await;
    let still = answering
        .recv(Duration::from_secs(5))
        .await
        .expect("still open");
    assert_eq!(
        still["payload"]["data"]["viewer"]["role"], "ADMIN",
        "{still}"
    );

    // A client that reads but never answers sees pings, then a close for the keep-alive.
    let mut silent = Subscription::connect(&app.addr, "graphql-transport-ws").await;
    silent
        .send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {ADMIN_KEY}") } }))
        .await;
    let mut pings = 0;
    let code = loop {
        match raw(&mut silent, Duration::from_secs(5)).await {
            Some(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "ping" {
                    pings += 1;
                }
            }
            Some(Message::Close(Some(f))) => break u16::from(f.code),
            Some(_) => {}
            None => panic!("neither closed nor pinged"),
        }
    };
    assert_eq!(code, 3008);
    assert!(pings >= 1, "pinged {pings} times");

    // The legacy protocol gets `ka` messages.
    let mut legacy = Subscription::connect(&app.addr, "graphql-ws").await;
    legacy
        .send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {ADMIN_KEY}") } }))
        .await;
    let mut kas = 0;
    while kas < 3 {
        match raw(&mut legacy, Duration::from_secs(3)).await {
            Some(Message::Text(t)) if t.contains("\"ka\"") => kas += 1,
            Some(_) => {}
            None => panic!("no keep-alive from the server"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_mutations_and_refusals_over_the_socket() {
    let app = TestApp::spawn_with(SERVE_RELAY, |_| {}).await;
    let mut ws = connected(&app, ADMIN_KEY).await;
    // A query: one `next`, then `complete`.
    ws.send(json!({ "id": "q", "type": "subscribe", "payload": { "query": "query { viewer { role } }" } }))
        .await;
    let next = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (next["type"].as_str(), next["id"].as_str()),
        (Some("next"), Some("q"))
    );
    let done = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(done, json!({ "id": "q", "type": "complete" }));
    // A mutation likewise.
    ws.send(json!({ "id": "m", "type": "subscribe", "payload": { "query": "mutation { createTenant(input: {name: \"over-ws\"}) { tenant { name } } }" } }))
        .await;
    let next = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        next["payload"]["data"]["createTenant"]["tenant"]["name"],
        "over-ws"
    );
    assert_eq!(
        ws.recv(Duration::from_secs(5)).await.unwrap()["type"],
        "complete"
    );
    // A document that does not validate: one `error` with the errors, nothing after it.
    ws.send(json!({ "id": "v", "type": "subscribe", "payload": { "query": "subscription { callEvents { nope } }" } }))
        .await;
    let err = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["id"], "v");
    assert_eq!(
        err["payload"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    // One that does not parse: the position, not the document.
    ws.send(json!({ "id": "p", "type": "subscribe", "payload": { "query": "subscription { callEvents { " } }))
        .await;
    let err = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(
        err["payload"][0]["extensions"]["code"],
        "GRAPHQL_PARSE_FAILED"
    );
    assert!(!err["payload"][0]["message"]
        .as_str()
        .unwrap()
        .contains('\n'));
    assert!(
        err["payload"][0]["locations"][0]["line"].is_number(),
        "{err}"
    );
    // A subscription the resolver refuses (no such call): a `next` with the error, `complete`.
    ws.send(json!({ "id": "n", "type": "subscribe", "payload": { "query": "subscription { callUpdated(id: \"00000000-0000-0000-0000-000000000000\") { kind } }" } }))
        .await;
    let next = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(
        next["payload"]["errors"][0]["extensions"]["code"],
        "NOT_FOUND"
    );
    assert_eq!(
        ws.recv(Duration::from_secs(5)).await.unwrap()["type"],
        "complete"
    );
    // The id may be used again once its operation is over; `complete` from the client stops a
    // running subscription without an answer.
    ws.send(json!({ "id": "q", "type": "subscribe", "payload": { "query": "subscription { callEvents { kind } }" } }))
        .await;
    ws.send(json!({ "id": "q", "type": "complete" })).await;
    ws.send(
        json!({ "id": "q", "type": "subscribe", "payload": { "query": "{ viewer { role } }" } }),
    )
    .await;
    assert_eq!(
        ws.recv(Duration::from_secs(5)).await.unwrap()["type"],
        "next"
    );
    assert_eq!(
        ws.recv(Duration::from_secs(5)).await.unwrap()["type"],
        "complete"
    );

    // The per-connection cap on running operations.
    let app = TestApp::spawn_with(SERVE_RELAY, |l| {
        l.set("ws_max_subscriptions", "2");
    })
    .await;
    let mut ws = connected(&app, ADMIN_KEY).await;
    for id in ["a", "b", "c"] {
        ws.send(json!({ "id": id, "type": "subscribe", "payload": { "query": "subscription { callEvents { kind } }" } }))
            .await;
    }
    let err = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (err["type"].as_str(), err["id"].as_str()),
        (Some("error"), Some("c")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_one_document_share_one_execution() {
    let app = TestApp::spawn_with(SERVE_RELAY, |_| {}).await;
    let doc = "subscription($after: String) { callEvents(after: $after) { kind callId call { status } } }";
    // Five subscribers of one tenant and role, with different cursors: one execution.
    let mut subs = Vec::new();
    for _ in 0..5 {
        subs.push(app.subscribe(ADMIN_KEY, doc, json!({ "after": "0" })).await);
    }
    let id = app.submit_ok(short_call(), json!({})).await;
    for s in &mut subs {
        let e = s.next_data(Duration::from_secs(10)).await;
        assert_eq!(e["callEvents"]["callId"], id.as_str());
        assert_eq!(e["callEvents"]["call"]["status"], "QUEUED");
    }
    let m = &app.state.metrics;
    assert_eq!(m.subscription_groups.get(), 1);
    assert_eq!(m.subscriptions.get(), 5);
    // Another tenant's subscriber has its own.
    let (_, other) = tenant_key(&app, "other", "VIEWER").await;
    let mut theirs = app.subscribe(&other, doc, json!({})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while m.subscription_groups.get() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no second group");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(theirs.recv(Duration::from_millis(300)).await.is_none());
    // Leaving ends the executions.
    drop(subs);
    drop(theirs);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while m.subscription_groups.get() > 0 || m.subscriptions.get() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "groups {} subscriptions {} left",
            m.subscription_groups.get(),
            m.subscriptions.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A tenant with one key of `role`; returns (tenant id, key).
pub(crate) async fn tenant_key(app: &TestApp, name: &str, role: &str) -> (String, String) {
    let t = app
        .gql_ok(
            "mutation($n: String!) { createTenant(input: {name: $n}) { tenant { id } } }",
            json!({ "n": name }),
        )
        .await["createTenant"]["tenant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let k = app
        .gql_ok(
            "mutation($t: ID!, $r: Role!) { createApiKey(input: {tenantId: $t, role: $r, name: \"k\"}) { secret } }",
            json!({ "t": t, "r": role }),
        )
        .await["createApiKey"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    (t, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_behind_its_group_catches_up_from_the_database() {
    // Groups keep two results for slow members: this one is not read while 30 events happen.
    let app = TestApp::spawn_with(SERVE_RELAY, |l| {
        l.set("subscription_buffer", "2");
    })
    .await;
    let tenant: uuid::Uuid = app.gql_ok("{ viewer { tenant { id } } }", json!({})).await["viewer"]
        ["tenant"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let live = Live::new(
        voicegraph::graphql::build_schema(Some(app.state.clone())),
        app.state.clone(),
    );
    let caller = Caller {
        tenant_id: tenant,
        role: Role::Viewer,
        key_id: None,
        platform_admin: false,
        expires_at: None,
        subject: None,
    };
    let doc = "subscription { callEvents(after: \"0\") { cursor kind } }";
    let mut slow = live.subscribe(caller.clone(), async_graphql::Request::new(doc));
    let mut fast = live.subscribe(caller, async_graphql::Request::new(doc));
    let id = app.submit_ok(short_call(), json!({})).await;
    let first = tokio::time::timeout(Duration::from_secs(10), slow.next())
        .await
        .unwrap();
    assert!(matches!(first, Some(LiveItem::Next(_))));
    let replays = app.state.metrics.subscription_replays.get();
    for i in 0..30 {
        app.gql_ok(
            "mutation($id: ID!, $t: [String!]!) { tagCall(id: $id, tags: $t) { id } }",
            json!({ "id": id, "t": [format!("t{i}")] }),
        )
        .await;
    }
    let cursors = |items: Vec<LiveItem>| -> Vec<i64> {
        items
            .into_iter()
            .map(|i| match i {
                LiveItem::Next(p) => serde_json::from_str::<Value>(&p).unwrap()["data"]
                    ["callEvents"]["cursor"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
                LiveItem::Error(e) => panic!("{e}"),
            })
            .collect()
    };
    let mut got_fast = Vec::new();
    while got_fast.len() < 31 {
        got_fast.push(
            tokio::time::timeout(Duration::from_secs(10), fast.next())
                .await
                .expect("in time")
                .unwrap(),
        );
    }
    let mut got_slow = Vec::new();
    while got_slow.len() < 30 {
        got_slow.push(
            tokio::time::timeout(Duration::from_secs(10), slow.next())
                .await
                .expect("in time")
                .unwrap(),
        );
    }
    assert_eq!(cursors(got_fast), (1..=31).collect::<Vec<_>>());
    assert_eq!(cursors(got_slow), (2..=31).collect::<Vec<_>>());
    assert!(
        app.state.metrics.subscription_replays.get() > replays,
        "the slow subscriber did not replay"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), slow.next())
            .await
            .is_err(),
        "nothing more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_database_read_per_gap_for_all_subscribers() {
    // No relay here: another process sequences and publishes, so every event reaches this
    // instance as a gap its hub fills from the database.
    let app = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: false,
            relay: false,
        },
        |_| {},
    )
    .await;
    let mut subs = Vec::new();
    for i in 0..12 {
        // Two documents: two groups, twelve subscribers.
        let doc = if i % 2 == 0 {
            "subscription { callEvents(after: \"0\") { kind callId } }"
        } else {
            "subscription { callEvents(after: \"0\") { callId kind } }"
        };
        subs.push(app.subscribe(ADMIN_KEY, doc, json!({})).await);
    }
    // Every subscription is live before anything happens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.state.metrics.subscriptions.get() < 12 {
        assert!(tokio::time::Instant::now() < deadline, "not all subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.state.metrics.subscription_groups.get(), 2);
    let id = app.submit_ok(short_call(), json!({})).await;
    let gap_reads = app.state.metrics.hub_gap_reads.get();
    let replays = app.state.metrics.subscription_replays.get();
    let other = voicegraph::wiring::build_state(
        layers(app.dir.path()).settings().unwrap(),
        "http://unused",
        voicegraph::wiring::EventRoles {
            subscribes: false,
            publishes: true,
        },
    )
    .await
    .unwrap();
    assert!(voicegraph::relay::relay_once(&other).await.unwrap() >= 1);
    for s in &mut subs {
        let e = s.next_data(Duration::from_secs(5)).await;
        assert_eq!(e["callEvents"]["callId"], id.as_str());
    }
    let reads = app.state.metrics.hub_gap_reads.get() - gap_reads;
    assert!(
        (1..=2).contains(&reads),
        "{reads} gap reads for 12 subscribers"
    );
    assert_eq!(
        app.state.metrics.subscription_replays.get(),
        replays,
        "no subscriber read on its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_the_last_cursor_misses_nothing() {
    let app = TestApp::spawn_with(SERVE_RELAY, |_| {}).await;
    let doc = "subscription($after: String) { callEvents(after: $after) { cursor kind callId } }";
    let mut ws = app.subscribe(ADMIN_KEY, doc, json!({ "after": "0" })).await;
    let a = app.submit_ok(short_call(), json!({})).await;
    let first = ws.next_data(Duration::from_secs(10)).await["callEvents"].clone();
    assert_eq!(first["callId"], a.as_str());
    // The connection drops; meanwhile more happens.
    drop(ws);
    let b = app.submit_ok(short_call(), json!({})).await;
    app.gql_ok(
        "mutation($id: ID!) { tagCall(id: $id, tags: [\"x\"]) { id } }",
        json!({ "id": a }),
    )
    .await;
    let mut again = app
        .subscribe(ADMIN_KEY, doc, json!({ "after": first["cursor"] }))
        .await;
    let c = app.submit_ok(short_call(), json!({})).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(again.next_data(Duration::from_secs(10)).await["callEvents"].clone());
    }
    let got: Vec<(String, String)> = seen
        .iter()
        .map(|e| {
            (
                e["callId"].as_str().unwrap().into(),
                e["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (b.clone(), "SUBMITTED".to_string()),
            (a.clone(), "TAGGED".to_string()),
            (c.clone(), "SUBMITTED".to_string())
        ]
    );
    let cursors: Vec<i64> = seen
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    assert!(again.recv(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_closes_sockets_with_going_away() {
    let app = TestApp::spawn_with(SERVE_RELAY, |_| {}).await;
    let mut ws = app
        .subscribe(ADMIN_KEY, "subscription { callEvents { kind } }", json!({}))
        .await;
    app.token.cancel();
    let (code, _) = close_code(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(code, 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_from_foreign_origins_are_refused() {
    let app = TestApp::spawn_with(SERVE_RELAY, |l| {
        l.set("cors_origins", "https://app.example.com");
    })
    .await;
    let try_origin = |origin: Option<&str>| {
        let mut req = format!("ws://{}/graphql", app.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    for refused in ["https://evil.example.com", "http://localhost:3000"] {
        match try_origin(Some(refused)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "{refused}")
            }
            other => panic!("{refused}: {other:?}"),
        }
    }
    let same = format!("http://{}", app.addr);
    for allowed in [Some("https://app.example.com"), Some(same.as_str()), None] {
        let (socket, _) = try_origin(allowed)
            .await
            .unwrap_or_else(|e| panic!("{allowed:?}: {e}"));
        let mut ws = Subscription { ws: socket };
        init(&mut ws, ADMIN_KEY).await;
    }
}

// ---------------------------------------------------------------------------------------------
// graphql-sse.
// ---------------------------------------------------------------------------------------------

/// An SSE stream's events as (event, data) pairs; comments counted apart.
pub(crate) struct Sse {
    resp: reqwest::Response,
    buf: String,
    comments: usize,
}

impl Sse {
    pub(crate) async fn open(app: &TestApp, key: Option<&str>, body: Value) -> reqwest::Response {
        let mut req = app
            .client
            .post(app.url("/graphql"))
            .header("accept", "text/event-stream")
            .json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send().await.unwrap()
    }

    pub(crate) fn new(resp: reqwest::Response) -> Self {
        Self {
            resp,
            buf: String::new(),
            comments: 0,
        }
    }

    /// The next event, or `None` when the stream ended (or nothing came in time).
    pub(crate) async fn next(&mut self, timeout: Duration) -> Option<(String, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = None;
                let mut data = String::new();
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(e) = line.strip_prefix("event:") {
                        event = Some(e.trim().to_string());
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim());
                    }
                }
                if let Some(e) = event {
                    return Some((e, data));
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_and_operations_over_sse() {
    let app = TestApp::spawn_with(SERVE_RELAY, |l| {
        l.set("ws_ping_interval_ms", "100");
    })
    .await;
    // A subscription: `next` events as they happen, with the same cursors as the WebSocket.
    let resp = Sse::open(
        &app,
        Some(ADMIN_KEY),
        json!({ "query": "subscription($a: String) { callEvents(after: $a) { kind callId cursor } }", "variables": { "a": "0" } }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = Sse::new(resp);
    let id = app.submit_ok(short_call(), json!({})).await;
    let (event, data) = stream.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(event, "next");
    let v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["data"]["callEvents"]["callId"], id.as_str());
    assert_eq!(v["data"]["callEvents"]["kind"], "SUBMITTED");
    // Idle: keep-alive comments every interval (the first one opened the stream).
    let opened = stream.comments;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stream.next(Duration::from_millis(50)).await;
    assert!(stream.comments > opened, "{} comments", stream.comments);

    // A query: one `next`, then `complete`, then the end.
    let mut q = Sse::new(
        Sse::open(
            &app,
            Some(ADMIN_KEY),
            json!({ "query": "{ viewer { role } }" }),
        )
        .await,
    );
    let (e, d) = q.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(e, "next");
    assert_eq!(
        serde_json::from_str::<Value>(&d).unwrap()["data"]["viewer"]["role"],
        "ADMIN"
    );
    assert_eq!(
        q.next(Duration::from_secs(5)).await.unwrap(),
        ("complete".into(), String::new())
    );
    assert!(q.next(Duration::from_secs(5)).await.is_none());

    // A document that does not validate: its errors in a `next`, then `complete`.
    let mut bad = Sse::new(
        Sse::open(
            &app,
            Some(ADMIN_KEY),
            json!({ "query": "subscription { callEvents { nope } }" }),
        )
        .await,
    );
    let (e, d) = bad.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(e, "next");
    let v: Value = serde_json::from_str(&d).unwrap();
    assert_eq!(
        v["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED",
        "{v}"
    );
    assert!(v.get("data").is_none());
    assert_eq!(
        bad.next(Duration::from_secs(5)).await.unwrap().0,
        "complete"
    );

    // Without credentials, or with bad ones: 401 before any stream.
    let q = json!({ "query": "subscription { callEvents { kind } }" });
    assert_eq!(Sse::open(&app, None, q.clone()).await.status(), 401);
    assert_eq!(
        Sse::open(&app, Some("vg_nope"), q.clone()).await.status(),
        401
    );

    // A server going away ends the stream without `complete`, so clients retry elsewhere.
    let mut live = Sse::new(Sse::open(&app, Some(ADMIN_KEY), q).await);
    app.token.cancel();
    while let Some((e, _)) = live.next(Duration::from_secs(10)).await {
        assert_ne!(e, "complete", "a shutdown is not a completion");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_operations_on_one_socket_never_starves_the_pool() {
    // Two database connections for everything. Each operation's stream reads the database while
    // the socket goes on to check the next operation's key, which needs a connection too: the
    // streams must progress (and give their connections back) on their own.
    let app = TestApp::spawn_with(SERVE_RELAY, |l| {
        l.set("db_max_connections", "2");
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(app.submit_ok(short_call(), json!({})).await);
    }
    let mut ws = Subscription::connect(&app.addr, "graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {ADMIN_KEY}") } }))
        .await;
    assert_eq!(
        ws.recv(Duration::from_secs(10)).await.unwrap()["type"],
        "connection_ack"
    );
    for (i, id) in ids.iter().enumerate() {
        ws.send(json!({ "id": format!("s{i}"), "type": "subscribe", "payload": { "query": "subscription($id: ID!) { callUpdated(id: $id) { kind callId } }", "variables": { "id": id } } })).await;
        ws.send(json!({ "id": format!("q{i}"), "type": "subscribe", "payload": { "query": "query($id: ID!) { call(id: $id) { id status } }", "variables": { "id": id } } })).await;
    }
    let (mut updates, mut answers) = (0, 0);
    while updates < ids.len() || answers < ids.len() {
        let msg = ws
            .recv(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{updates} updates and {answers} answers, then silence"));
        assert_ne!(msg["type"], "error", "{msg}");
        if msg["type"] != "next" {
            continue;
        }
        assert!(msg["payload"].get("errors").is_none(), "{msg}");
        let id = msg["id"].as_str().unwrap();
        if id.starts_with('s') {
            assert_eq!(
                msg["payload"]["data"]["callUpdated"]["kind"], "SUBMITTED",
                "{msg}"
            );
            updates += 1;
        } else {
            assert_eq!(msg["payload"]["data"]["call"]["status"], "QUEUED", "{msg}");
            answers += 1;
        }
    }
}

/// Scale-in: an instance told to stop (SIGTERM) finishes the requests it took, closes its
/// sockets with 1001, and its subscriber, reconnecting to another instance from its last cursor,
/// sees every event of every call once and in order. The drain is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaled_in_instance_loses_no_request_and_no_event() {
    let leaving = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: false,
            relay: false,
        },
        |_| {},
    )
    .await;
    let staying = leaving.spawn_beside(Roles::ALL, |_| {}).await;
    let doc = "subscription($after: String) { callEvents(after: $after) { kind cursor callId } }";
    let mut ws = leaving
        .subscribe(ADMIN_KEY, doc, json!({ "after": "0" }))
        .await;
    let mut calls = Vec::new();
    for _ in 0..3 {
        calls.push(staying.submit_ok(short_call(), json!({})).await);
    }
    let mut seen: Vec<(String, String, i64)> = Vec::new();
    let event = |v: &Value| {
        let e = &v["callEvents"];
        (
            e["callId"].as_str().unwrap().to_string(),
            e["kind"].as_str().unwrap().to_string(),
            e["cursor"].as_str().unwrap().parse::<i64>().unwrap(),
        )
    };
    // At least one event before the instance leaves.
    seen.push(event(&ws.next_data(Duration::from_secs(30)).await));

    // Requests in flight when it is told to stop are answered; later ones find it gone.
    let client = reqwest::Client::new();
    let in_flight: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            let url = leaving.url("/graphql");
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({ "query": "{ calls(first: 5) { nodes { id } } }" }))
                    .send()
                    .await
            })
        })
        .collect();
    // And one surely taken: its headers and half its body are in when the stop comes.
    let body = json!({ "query": "{ viewer { role } }" }).to_string();
    let mut raw = tokio::net::TcpStream::connect(&leaving.addr).await.unwrap();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        leaving.addr,
        body.len()
    );
    let (first, rest) = body.split_at(body.len() / 2);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(format!("{head}{first}").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    leaving.token.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    raw.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"role\""), "{answer}");
    // The subscriber reads what the instance still sends, then its 1001.
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "next" {
                    seen.push(event(&v["payload"]["data"]));
                }
            }
            Ok(Some(Ok(Message::Close(Some(frame))))) => break u16::from(frame.code),
            Ok(Some(Ok(_))) => {}
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, 1001);
    for r in in_flight {
        match r.await.unwrap() {
            Ok(resp) => assert_eq!(resp.status(), 200, "a request it took is answered"),
            Err(e) => assert!(e.is_connect(), "a request was cut: {e}"),
        }
    }
    // The data directory is shared with the instance that stays: kept until the end.
    let _data_dir = { leaving }.stop().await;
    let drained = started.elapsed();
    assert!(drained < Duration::from_secs(15), "drained in {drained:?}");

    // Reconnect to the instance that stays, from the last cursor seen.
    let last = seen.last().unwrap().2.to_string();
    let mut again = staying
        .subscribe(ADMIN_KEY, doc, json!({ "after": last }))
        .await;
    for _ in 0..2 {
        calls.push(staying.submit_ok(short_call(), json!({})).await);
    }
    for id in &calls {
        staying.wait_status(id, "COMPLETED", 60).await;
    }
    // Every call: SUBMITTED, PROCESSING, COMPLETED.
    while seen.len() < calls.len() * 3 {
        seen.push(event(&again.next_data(Duration::from_secs(30)).await));
    }
    assert!(
        again.recv(Duration::from_millis(500)).await.is_none(),
        "nothing more"
    );
    let cursors: Vec<i64> = seen.iter().map(|e| e.2).collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "once each, in order: {cursors:?}"
    );
    for id in &calls {
        let kinds: Vec<&str> = seen
            .iter()
            .filter(|e| &e.0 == id)
            .map(|e| e.1.as_str())
            .collect();
        assert_eq!(kinds, ["SUBMITTED", "PROCESSING", "COMPLETED"], "{id}");
    }
    eprintln!("drained in {drained:?}");
}
