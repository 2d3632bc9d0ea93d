//! Revocation reaching live connections: a revoked key's WebSockets close with 4403 and its SSE
//! streams end with UNAUTHENTICATED, on every instance (two apps on one database, the key
//! revoked through one, the connections on the other), and no operation it sends runs. (Its
//! HTTP requests: `key_cache`.)

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use voicegraph::startup::Roles;

use crate::helpers::*;
use crate::realtime::{close_code, Sse};

const SERVE: Roles = Roles {
    serve: true,
    worker: false,
    relay: false,
};

/// A new key of the default tenant; returns (its id, its secret).
async fn new_key(app: &TestApp, role: &str, name: &str) -> (String, String) {
    let d = app
        .gql_ok(
            "mutation($r: Role!, $n: String!) { createApiKey(input: {role: $r, name: $n}) { secret apiKey { id } } }",
            json!({ "r": role, "n": name }),
        )
        .await;
    (
        d["createApiKey"]["apiKey"]["id"]
            .as_str()
            .unwrap()
            .to_string(),
        d["createApiKey"]["secret"].as_str().unwrap().to_string(),
    )
}

async fn revoke(app: &TestApp, id: &str) {
    let d = app
        .gql_ok(
            "mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }",
            json!({ "id": id }),
        )
        .await;
    assert!(d["revokeApiKey"]["revokedAt"].is_string(), "{d}");
}

/// Runs `{ viewer { role } }` on an open socket as operation `id`; returns the role.
async fn viewer_over(ws: &mut Subscription, id: &str) -> Value {
    ws.send(
        json!({ "id": id, "type": "subscribe", "payload": { "query": "{ viewer { role } }" } }),
    )
    .await;
    let next = ws.recv(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(next["id"], id);
    let complete = ws.recv(Duration::from_secs(5)).await.expect("complete");
    assert_eq!(complete["type"], "complete", "{complete}");
    next["payload"]["data"]["viewer"]["role"].clone()
}

async fn initialised(app: &TestApp, key: &str) -> Subscription {
    let mut ws = Subscription::connect(&app.addr, "graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {key}") } }))
        .await;
    let ack = ws.recv(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws
}

/// Waits until `app` watches `n` distinct keys for its open connections.
async fn watching(app: &TestApp, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.state.revocations.watched() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} keys watched, not {n}",
            app.state.revocations.watched()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_ends_its_sockets_and_streams_on_every_instance() {
    let a = TestApp::spawn_with(SERVE, |_| {}).await;
    let b = a.spawn_beside(SERVE, |_| {}).await;
    let (id, key) = new_key(&a, "VIEWER", "revoked soon").await;
    let (_, other) = new_key(&a, "VIEWER", "stays").await;

    // On instance B: a subscription and an operation over one socket, and an SSE stream.
    let mut ws = b
        .subscribe(&key, "subscription { callEvents { callId } }", json!({}))
        .await;
    assert_eq!(viewer_over(&mut ws, "q1").await, "VIEWER");
    let mut sse = Sse::new(
        Sse::open(
            &b,
            Some(&key),
            json!({ "query": "subscription { callEvents { callId } }" }),
        )
        .await,
    );
    // Another key's socket on B, and the revoked key's socket on A itself.
    let mut bystander = initialised(&b, &other).await;
    let mut on_a = initialised(&a, &key).await;
    watching(&b, 2).await;
    watching(&a, 1).await;

    let started = Instant::now();
    revoke(&a, &id).await;

    // HTTP refuses the key at once on the revoking instance, and within a second on the other
    // (when the database's notice arrives, or its cached copy expires; see `key_cache`).
    let revoked = Instant::now();
    for app in [&a, &b] {
        loop {
            let (status, body) = app
                .gql_as(Some(&key), "{ viewer { role } }", json!({}))
                .await;
            if status == 401 {
                assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
                break;
            }
            assert_eq!(status, 200, "{body}");
            assert!(
                std::ptr::eq(app, &b) && revoked.elapsed() < Duration::from_secs(1),
                "the key still works {:?} after its revocation",
                revoked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The revoking instance closes its socket at once; the other within its check interval.
    let (code, reason) = close_code(&mut on_a, Duration::from_secs(5)).await;
    assert_eq!(
        (code, reason.as_str()),
        (4403, "Forbidden: the API key was revoked")
    );
    let (code, reason) = close_code(&mut ws, Duration::from_secs(5)).await;
    let closed_after = started.elapsed();
    assert_eq!(
        (code, reason.as_str()),
        (4403, "Forbidden: the API key was revoked")
    );
    let mut ended = Vec::new();
    while let Some(e) = sse.next(Duration::from_secs(5)).await {
        ended.push(e);
    }
    assert_eq!(ended.len(), 2, "an error, then complete: {ended:?}");
    assert_eq!(ended[0].0, "next");
    let error: Value = serde_json::from_str(&ended[0].1).unwrap();
    assert_eq!(
        error["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{error}"
    );
    assert_eq!(error["errors"][0]["message"], "the API key was revoked");
    assert_eq!(ended[1].0, "complete");
    eprintln!("a revoked key's socket on another instance closed after {closed_after:?}");
    assert!(
        closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}"
    );

    // Other keys' connections go on; the revoked key cannot open new ones.
    assert_eq!(viewer_over(&mut bystander, "q2").await, "VIEWER");
    let mut again = Subscription::connect(&b.addr, "graphql-transport-ws").await;
    again
        .send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {key}") } }))
        .await;
    let (code, _) = close_code(&mut again, Duration::from_secs(5)).await;
    assert_eq!(code, 4403);
    watching(&b, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_sent_after_revocation_never_runs() {
    // B's periodic check is far off: only the check of each new operation can refuse it.
    let a = TestApp::spawn_with(SERVE, |_| {}).await;
    let b = a
        .spawn_beside(SERVE, |l| {
            l.set("revocation_poll_ms", "600000");
        })
        .await;
    let (id, key) = new_key(&a, "ADMIN", "revoked soon").await;
    let mut ws = initialised(&b, &key).await;
    assert_eq!(viewer_over(&mut ws, "q1").await, "ADMIN");
    revoke(&a, &id).await;

    // A mutation the key could have run: it is refused, and the socket closed, before any answer.
    ws.send(json!({ "id": "m", "type": "subscribe", "payload": { "query": "mutation { createApiKey(input: {role: ADMIN, name: \"late\"}) { secret } }" } }))
        .await;
    let first = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut ws.ws))
        .await
        .expect("an answer in time")
        .expect("a message")
        .expect("a frame");
    match first {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4403);
            assert_eq!(frame.reason.as_str(), "Forbidden: the API key was revoked");
        }
        other => panic!("the operation was answered instead of refused: {other:?}"),
    }
    let keys = a.gql_ok("{ apiKeys { name } }", json!({})).await;
    assert!(
        !keys["apiKeys"].to_string().contains("late"),
        "no key was created: {keys}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_revocation_notice_ends_sockets_on_other_instances() {
    if std::env::var("VOICEGRAPH_TEST_DB").ok().as_deref() != Some("postgres") {
        eprintln!(
            "skipped: this test is about Postgres notifications (VOICEGRAPH_TEST_DB=postgres)"
        );
        return;
    }
    // B's periodic check is far off: only the database's notice can end the socket in time.
    let a = TestApp::spawn_with(SERVE, |_| {}).await;
    let b = a
        .spawn_beside(SERVE, |l| {
            l.set("revocation_poll_ms", "600000");
        })
        .await;
    crate::notifications::listening(&b).await;
    let (id, key) = new_key(&a, "VIEWER", "revoked soon").await;
    let mut ws = initialised(&b, &key).await;
    watching(&b, 1).await;
    let started = Instant::now();
    revoke(&a, &id).await;
    let (code, reason) = close_code(&mut ws, Duration::from_secs(30)).await;
    eprintln!("closed on the other instance after {:?}", started.elapsed());
    assert_eq!(
        (code, reason.as_str()),
        (4403, "Forbidden: the API key was revoked")
    );
    watching(&b, 0).await;
}

/// Statements the app issues in the next 400 ms.
async fn statements_over_400ms(app: &TestApp) -> u64 {
    let before = app.statements();
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.statements() - before
}

/// Waits for 400 ms in which the app issues no statement (start-up reads may still land in the
/// first ones); panics when none comes within 20 tries.
async fn goes_quiet(app: &TestApp, what: &str) {
    for _ in 0..20 {
        if statements_over_400ms(app).await == 0 {
            return;
        }
    }
    panic!("{what}: statements every 400 ms for 8 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_only_while_connections_are_open() {
    // Nothing else polls the database here: the relay is off and the watermark check is far off.
    let app = TestApp::spawn_with(SERVE, |l| {
        l.set("revocation_poll_ms", "50")
            .set("watermark_poll_ms", "600000");
    })
    .await;
    let (_, key) = new_key(&app, "VIEWER", "watched").await;
    goes_quiet(&app, "an idle instance").await;
    let ws = initialised(&app, &key).await;
    watching(&app, 1).await;
    let checks = statements_over_400ms(&app).await;
    assert!(checks >= 2, "{checks} checks in 400 ms at one per 50 ms");
    drop(ws);
    watching(&app, 0).await;
    // (A check already under way when the socket closed may still finish.)
    goes_quiet(&app, "no checks once the socket is closed").await;
}
