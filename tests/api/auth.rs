//! Authentication and authorisation: bearer keys over HTTP and WebSocket, key management,
//! tenant isolation and roles.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use voicegraph::startup::Roles;

use crate::helpers::{short_call, Subscription, TestApp, ADMIN_KEY};

/// The API alone: no worker analysing calls, no relay.
const SERVE: Roles = Roles {
    serve: true,
    worker: false,
    relay: false,
};

/// Asserts the body has errors and that the first one has `code`; returns its message.
fn expect_code(body: &Value, code: &str) -> String {
    assert!(
        body["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "expected a {code} error: {body:#}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["code"], code,
        "unexpected error: {body:#}"
    );
    body["errors"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn gql_ok_as(app: &TestApp, key: &str, query: &str, variables: Value) -> Value {
    let (status, body) = app.gql_as(Some(key), query, variables).await;
    assert_eq!(status, 200, "{body:#}");
    assert!(body.get("errors").is_none(), "unexpected errors: {body:#}");
    body["data"].clone()
}

async fn create_tenant(app: &TestApp, name: &str) -> String {
    let d = app
        .gql_ok(
            "mutation($n: String!) { createTenant(input: {name: $n}) { tenant { id name } } }",
            json!({ "n": name }),
        )
        .await;
    assert_eq!(d["createTenant"]["tenant"]["name"], name);
    d["createTenant"]["tenant"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A key of `role` in `tenant`, made by the platform admin; returns (key id, secret).
async fn create_key(app: &TestApp, tenant: &str, role: &str, name: &str) -> (String, String) {
    let d = app
        .gql_ok(
            &format!(
                "mutation($t: ID!, $n: String!) {{ createApiKey(input: {{tenantId: $t, role: {role}, name: $n}}) {{ secret apiKey {{ id tenantId role name prefix revokedAt }} }} }}"
            ),
            json!({ "t": tenant, "n": name }),
        )
        .await;
    let p = &d["createApiKey"];
    assert_eq!(p["apiKey"]["tenantId"], tenant);
    assert_eq!(p["apiKey"]["role"], role);
    assert_eq!(p["apiKey"]["name"], name);
    assert!(p["apiKey"]["revokedAt"].is_null());
    (
        p["apiKey"]["id"].as_str().unwrap().to_string(),
        p["secret"].as_str().unwrap().to_string(),
    )
}

/// A new tenant with one key of `role`; returns (tenant id, secret).
async fn tenant_with(app: &TestApp, name: &str, role: &str) -> (String, String) {
    let tenant = create_tenant(app, name).await;
    let (_, secret) = create_key(app, &tenant, role, &format!("{name} {role}")).await;
    (tenant, secret)
}

async fn post_with_auth(app: &TestApp, authorization: &str, query: &str) -> (u16, Value) {
    let resp = app
        .client
        .post(app.url("/graphql"))
        .header("Authorization", authorization)
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(ct.starts_with("application/json"), "{ct}");
    (status, resp.json().await.expect("a JSON error body"))
}

/// Reads messages until `timeout`; fails if any is a `connection_ack`. Returns what came (the
/// last message, if any) and whether the server closed the connection.
async fn expect_no_ack(ws: &mut Subscription, timeout: Duration) -> (Vec<Value>, bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, ws.ws.next()).await {
            Err(_) => return (got, false),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return (got, true),
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_ne!(
                    v["type"], "connection_ack",
                    "no ack without valid credentials"
                );
                got.push(v);
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP credentials.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_and_malformed_credentials() {
    let app = TestApp::spawn_with(SERVE, |_| {}).await;

    // No header: the request runs; protected fields are UNAUTHENTICATED.
    let (status, body) = app
        .gql_as(None, "{ calls { totalCount } }", json!({}))
        .await;
    assert_eq!(status, 200);
    expect_code(&body, "UNAUTHENTICATED");
    assert!(body["data"].is_null(), "{body:#}");
    let (status, body) = app
        .gql_as(None, "{ __typename viewer { role } }", json!({}))
        .await;
    assert_eq!(status, 200);
    expect_code(&body, "UNAUTHENTICATED");
    for mutation in [
        "mutation { createTenant(input: {name: \"anon\"}) { tenant { id } } }",
        "mutation { createApiKey(input: {role: ADMIN, name: \"anon\"}) { secret } }",
        "mutation { createRecordingUpload(input: {contentType: \"audio/wav\", byteSize: 10}) { uploadUrl } }",
    ] {
        let (status, body) = app.gql_as(None, mutation, json!({})).await;
        assert_eq!(status, 200);
        expect_code(&body, "UNAUTHENTICATED");
    }
    // An anonymous upload is refused too.
    let resp = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({ "query": "mutation { submitCall(input: {recordingKey: \"x\"}) { call { id } } }" }))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    expect_code(&body, "UNAUTHENTICATED");

    // A wrong key: 401 with a JSON error.
    let (status, body) = app
        .gql_as(
            Some("vg_not_a_real_key"),
            "{ calls { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 401);
    expect_code(&body, "UNAUTHENTICATED");
    assert!(body.get("data").is_none_or(Value::is_null), "{body:#}");
    // Almost the admin key.
    let almost = format!("{ADMIN_KEY}x");
    let (status, body) = app.gql_as(Some(&almost), "{ __typename }", json!({})).await;
    assert_eq!(status, 401);
    expect_code(&body, "UNAUTHENTICATED");

    // Malformed headers: 401 as well.
    for header in [
        "Basic xyz".to_string(),
        "Bearer".to_string(),
        "Bearer    ".to_string(),
        ADMIN_KEY.to_string(),
        format!("Token {ADMIN_KEY}"),
    ] {
        let (status, body) = post_with_auth(&app, &header, "{ __typename }").await;
        assert_eq!(status, 401, "Authorization: {header:?}: {body:#}");
        expect_code(&body, "UNAUTHENTICATED");
    }
    // The scheme is case-insensitive.
    let (status, body) =
        post_with_auth(&app, &format!("bearer {ADMIN_KEY}"), "{ viewer { role } }").await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["data"]["viewer"]["role"], "ADMIN");

    // GET is checked the same way.
    let resp = app
        .client
        .get(app.url("/graphql"))
        .query(&[("query", "{__typename}")])
        .bearer_auth("vg_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_keys_lifecycle() {
    let app = TestApp::spawn_with(SERVE, |_| {}).await;
    let d = app
        .gql_ok(
            "{ viewer { role platformAdmin tenant { name } } }",
            json!({}),
        )
        .await;
    assert_eq!(d["viewer"]["platformAdmin"], true);
    assert_eq!(d["viewer"]["tenant"]["name"], "default");

    let tenant = create_tenant(&app, "acme").await;
    let (viewer_id, viewer) = create_key(&app, &tenant, "VIEWER", "dashboard").await;
    let (_, admin) = create_key(&app, &tenant, "ADMIN", "acme admin").await;
    for secret in [&viewer, &admin] {
        assert!(secret.starts_with("vg_"), "{secret}");
        assert!(secret.len() >= 32, "{secret}");
    }
    assert_ne!(viewer, admin);

    // The new key works, in its tenant, with its role.
    let d = gql_ok_as(
        &app,
        &viewer,
        "{ viewer { tenant { id name } role platformAdmin } }",
        json!({}),
    )
    .await;
    assert_eq!(d["viewer"]["tenant"]["name"], "acme");
    assert_eq!(d["viewer"]["tenant"]["id"], tenant);
    assert_eq!(d["viewer"]["role"], "VIEWER");
    assert_eq!(d["viewer"]["platformAdmin"], false);

    // The tenant's admin lists its keys: prefixes only, never secrets.
    let d = gql_ok_as(
        &app,
        &admin,
        "{ apiKeys { id tenantId name prefix role revokedAt } }",
        json!({}),
    )
    .await;
    let keys = d["apiKeys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{d:#}");
    let listed = d.to_string();
    assert!(!listed.contains(&viewer), "a secret leaked: {listed}");
    assert!(!listed.contains(&admin), "a secret leaked: {listed}");
    let v = keys.iter().find(|k| k["id"] == viewer_id).expect("listed");
    let prefix = v["prefix"].as_str().unwrap();
    assert!(
        viewer.starts_with(prefix) && prefix.len() < viewer.len() && prefix.len() >= 4,
        "{prefix}"
    );
    assert_eq!(v["tenantId"], tenant);
    // The platform admin's list is of its own tenant: acme's keys are not in it.
    let d = app.gql_ok("{ apiKeys { id } }", json!({})).await;
    assert!(!d.to_string().contains(&viewer_id), "{d}");

    // Revoking the key stops it at once.
    let d = gql_ok_as(
        &app,
        &admin,
        "mutation($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }",
        json!({ "id": viewer_id }),
    )
    .await;
    assert!(d["revokeApiKey"]["revokedAt"].is_string(), "{d:#}");
    let (status, body) = app
        .gql_as(Some(&viewer), "{ viewer { role } }", json!({}))
        .await;
    assert_eq!(status, 401, "{body:#}");
    expect_code(&body, "UNAUTHENTICATED");
    // ... and over WebSocket too.
    let mut ws = Subscription::connect(&app.addr, "graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {viewer}") } }))
        .await;
    expect_no_ack(&mut ws, Duration::from_secs(2)).await;
    // The other key still works; the list shows the revocation.
    let d = gql_ok_as(&app, &admin, "{ apiKeys { id revokedAt } }", json!({})).await;
    let v = d["apiKeys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == viewer_id)
        .unwrap()
        .clone();
    assert!(v["revokedAt"].is_string());

    // Names are checked.
    for bad in ["", "   ", &"n".repeat(101)] {
        let body = app
            .gql(
                "mutation($n: String!) { createTenant(input: {name: $n}) { tenant { id } } }",
                json!({ "n": bad }),
            )
            .await;
        expect_code(&body, "BAD_USER_INPUT");
    }
    // Keys for a tenant that does not exist.
    let body = app
        .gql(
            "mutation($t: ID!) { createApiKey(input: {tenantId: $t, role: VIEWER, name: \"x\"}) { secret } }",
            json!({ "t": uuid::Uuid::new_v4().to_string() }),
        )
        .await;
    expect_code(&body, "NOT_FOUND");
}

// ---------------------------------------------------------------------------------------------
// Tenant isolation.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_see_or_touch_each_others_calls() {
    let app = TestApp::spawn().await;
    let (_, a) = tenant_with(&app, "tenant-a", "INTEGRATOR").await;
    // B is an admin: it may do everything, but only in its own tenant.
    let (_, b) = tenant_with(&app, "tenant-b", "ADMIN").await;

    let events = "subscription { callEvents(after: \"0\") { callId kind } }";
    let mut sub_a = app.subscribe(&a, events, json!({})).await;
    let mut sub_b = app.subscribe(&b, events, json!({})).await;

    let (status, body) = app.submit(&a, short_call(), "audio/wav", json!({})).await;
    assert_eq!(status, 200, "{body:#}");
    assert!(body.get("errors").is_none(), "{body:#}");
    let id = body["data"]["submitCall"]["call"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A sees its call's events.
    let first = sub_a.next_data(Duration::from_secs(5)).await;
    assert_eq!(first["callEvents"]["callId"], id);
    assert_eq!(first["callEvents"]["kind"], "SUBMITTED");

    // A reads it.
    let d = gql_ok_as(
        &app,
        &a,
        "query($id: ID!) { call(id: $id) { id } calls { totalCount } }",
        json!({ "id": id }),
    )
    .await;
    assert_eq!(d["call"]["id"], id);
    assert_eq!(d["calls"]["totalCount"], 1);

    // B does not.
    let d = gql_ok_as(
        &app,
        &b,
        "query($id: ID!) { call(id: $id) { id } node(id: $id) { id } calls { totalCount nodes { id } } callStats { total } }",
        json!({ "id": id }),
    )
    .await;
    assert!(d["call"].is_null(), "{d:#}");
    assert!(d["node"].is_null(), "{d:#}");
    assert_eq!(d["calls"]["totalCount"], 0);
    assert_eq!(d["calls"]["nodes"], json!([]));
    assert_eq!(d["callStats"]["total"], 0);
    for m in [
        "mutation($id: ID!) { tagCall(id: $id, tags: [\"mine\"]) { id } }",
        "mutation($id: ID!) { deleteCall(id: $id) { deletedId } }",
        "mutation($id: ID!) { retryCall(id: $id) { id } }",
    ] {
        let (status, body) = app.gql_as(Some(&b), m, json!({ "id": id })).await;
        assert_eq!(status, 200);
        expect_code(&body, "NOT_FOUND");
    }
    // B cannot subscribe to A's call either.
    let mut one = app
        .subscribe(
            &b,
            "subscription($id: ID!) { callUpdated(id: $id) { kind } }",
            json!({ "id": id }),
        )
        .await;
    let msg = one.recv(Duration::from_secs(3)).await.expect("an answer");
    let errors = if msg["type"] == "error" {
        msg["payload"].clone()
    } else {
        assert_eq!(msg["type"], "next", "{msg}");
        assert!(msg["payload"]["data"].is_null(), "{msg}");
        msg["payload"]["errors"].clone()
    };
    assert_eq!(errors[0]["extensions"]["code"], "NOT_FOUND", "{msg}");

    // B's live stream got nothing of A's call, and a replay from the start has nothing either.
    // Wait until A's call has been processed so that there are several events to leak.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let d = gql_ok_as(
            &app,
            &a,
            "query($id: ID!) { call(id: $id) { status } }",
            json!({ "id": id }),
        )
        .await;
        if d["call"]["status"] == "COMPLETED" || d["call"]["status"] == "FAILED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leaked = sub_b.recv(Duration::from_millis(700)).await;
    assert!(leaked.is_none(), "tenant B received {leaked:?}");
    let mut replay = app
        .subscribe(
            &b,
            "subscription { callEvents(after: \"0\") { callId kind } }",
            json!({}),
        )
        .await;
    let leaked = replay.recv(Duration::from_millis(700)).await;
    assert!(leaked.is_none(), "tenant B's replay received {leaked:?}");
    // A's replay has them.
    let mut replay_a = app
        .subscribe(
            &a,
            "subscription { callEvents(after: \"0\") { callId kind } }",
            json!({}),
        )
        .await;
    let got = replay_a.next_data(Duration::from_secs(5)).await;
    assert_eq!(got["callEvents"]["callId"], id);

    // The call is still there for A after B's attempts.
    let d = gql_ok_as(
        &app,
        &a,
        "query($id: ID!) { call(id: $id) { id tags } }",
        json!({ "id": id }),
    )
    .await;
    assert_eq!(d["call"]["id"], id);
    assert_eq!(d["call"]["tags"], json!([]));
}

// ---------------------------------------------------------------------------------------------
// Roles.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_keys_may_do() {
    let app = TestApp::spawn_with(SERVE, |_| {}).await;
    let tenant = create_tenant(&app, "roles").await;
    let (_, viewer) = create_key(&app, &tenant, "VIEWER", "v").await;
    let (_, analyst) = create_key(&app, &tenant, "ANALYST", "a").await;
    let (_, integrator) = create_key(&app, &tenant, "INTEGRATOR", "i").await;
    let (_, admin) = create_key(&app, &tenant, "ADMIN", "ad").await;
    let default_tenant = app.gql_ok("{ viewer { tenant { id } } }", json!({})).await["viewer"]
        ["tenant"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Viewer: reads, nothing else.
    gql_ok_as(&app, &viewer, "{ calls { totalCount } }", json!({})).await;
    let (status, body) = app
        .submit(&viewer, short_call(), "audio/wav", json!({}))
        .await;
    assert_eq!(status, 200);
    expect_code(&body, "FORBIDDEN");
    let forbidden_for_viewer = [
        "mutation { createApiKey(input: {role: VIEWER, name: \"x\"}) { secret } }",
        "mutation { createRecordingUpload(input: {contentType: \"audio/wav\", byteSize: 10}) { uploadUrl } }",
        "{ callStats { total } }",
        "{ apiKeys { id } }",
    ];
    for q in forbidden_for_viewer {
        let (_, body) = app.gql_as(Some(&viewer), q, json!({})).await;
        expect_code(&body, "FORBIDDEN");
    }

    // An integrator submits; the analyst reads stats and tags but cannot delete or submit.
    let (status, body) = app
        .submit(&integrator, short_call(), "audio/wav", json!({}))
        .await;
    assert_eq!(status, 200);
    assert!(body.get("errors").is_none(), "{body:#}");
    let call = body["data"]["submitCall"]["call"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let d = gql_ok_as(&app, &analyst, "{ callStats { total } }", json!({})).await;
    assert_eq!(d["callStats"]["total"], 1);
    gql_ok_as(
        &app,
        &analyst,
        "mutation($id: ID!) { tagCall(id: $id, tags: [\"reviewed\"]) { tags } }",
        json!({ "id": call }),
    )
    .await;
    let (_, body) = app
        .submit(&analyst, short_call(), "audio/wav", json!({}))
        .await;
    expect_code(&body, "FORBIDDEN");
    for (key, q) in [
        (
            &viewer,
            "mutation($id: ID!) { tagCall(id: $id, tags: [\"x\"]) { id } }",
        ),
        (
            &viewer,
            "mutation($id: ID!) { deleteCall(id: $id) { deletedId } }",
        ),
        (&viewer, "mutation($id: ID!) { retryCall(id: $id) { id } }"),
        (
            &analyst,
            "mutation($id: ID!) { deleteCall(id: $id) { deletedId } }",
        ),
        (&analyst, "mutation($id: ID!) { retryCall(id: $id) { id } }"),
    ] {
        let (_, body) = app.gql_as(Some(key), q, json!({ "id": call })).await;
        expect_code(&body, "FORBIDDEN");
    }
    // Integrators and analysts manage no keys.
    for key in [&integrator, &analyst] {
        let (_, body) = app
            .gql_as(
                Some(key),
                "mutation { createApiKey(input: {role: VIEWER, name: \"x\"}) { secret } }",
                json!({}),
            )
            .await;
        expect_code(&body, "FORBIDDEN");
    }

    // A tenant admin manages its own tenant's keys only, and creates no tenants.
    let d = gql_ok_as(
        &app,
        &admin,
        "mutation { createApiKey(input: {role: VIEWER, name: \"own\"}) { secret apiKey { tenantId } } }",
        json!({}),
    )
    .await;
    assert_eq!(d["createApiKey"]["apiKey"]["tenantId"], tenant);
    let (_, body) = app
        .gql_as(
            Some(&admin),
            "mutation { createTenant(input: {name: \"mine\"}) { tenant { id } } }",
            json!({}),
        )
        .await;
    expect_code(&body, "FORBIDDEN");
    let (_, body) = app
        .gql_as(
            Some(&admin),
            "mutation($t: ID!) { createApiKey(input: {tenantId: $t, role: ADMIN, name: \"escalate\"}) { secret } }",
            json!({ "t": default_tenant }),
        )
        .await;
    expect_code(&body, "FORBIDDEN");
    // Nor can it revoke keys of another tenant (the platform admin's own key, say).
    let d = app.gql_ok("{ apiKeys { id } }", json!({})).await;
    let platform_key = d["apiKeys"][0]["id"].as_str().unwrap().to_string();
    let (_, body) = app
        .gql_as(
            Some(&admin),
            "mutation($id: ID!) { revokeApiKey(id: $id) { id } }",
            json!({ "id": platform_key }),
        )
        .await;
    expect_code(&body, "NOT_FOUND");
    app.gql_ok("{ viewer { role } }", json!({})).await;
    // A tenant admin's key is not a platform admin.
    let d = gql_ok_as(&app, &admin, "{ viewer { platformAdmin role } }", json!({})).await;
    assert_eq!(d["viewer"]["platformAdmin"], false);
    assert_eq!(d["viewer"]["role"], "ADMIN");
}

// ---------------------------------------------------------------------------------------------
// WebSocket.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_init_needs_a_valid_key() {
    let app = TestApp::spawn_with(SERVE, |_| {}).await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        // No token.
        let mut ws = Subscription::connect(&app.addr, protocol).await;
        ws.send(json!({ "type": "connection_init", "payload": {} }))
            .await;
        let (got, closed) = expect_no_ack(&mut ws, Duration::from_secs(3)).await;
        assert!(
            closed || got.iter().any(|m| m["type"] == "connection_error"),
            "{protocol}: no token must close or error: {got:?}"
        );
        // No payload at all.
        let mut ws = Subscription::connect(&app.addr, protocol).await;
        ws.send(json!({ "type": "connection_init" })).await;
        let (got, closed) = expect_no_ack(&mut ws, Duration::from_secs(3)).await;
        assert!(
            closed || got.iter().any(|m| m["type"] == "connection_error"),
            "{got:?}"
        );
        // A bad token.
        let mut ws = Subscription::connect(&app.addr, protocol).await;
        ws.send(
            json!({ "type": "connection_init", "payload": { "Authorization": "Bearer vg_nope" } }),
        )
        .await;
        let (got, closed) = expect_no_ack(&mut ws, Duration::from_secs(3)).await;
        assert!(
            closed || got.iter().any(|m| m["type"] == "connection_error"),
            "{protocol}: a bad token must close or error: {got:?}"
        );
    }
    // Subscribing without connection_init gets nothing either.
    let mut ws = Subscription::connect(&app.addr, "graphql-transport-ws").await;
    ws.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { callEvents { kind } }" } }))
        .await;
    let (got, _) = expect_no_ack(&mut ws, Duration::from_secs(2)).await;
    assert!(got.iter().all(|m| m["type"] != "next"), "{got:?}");

    // A bad token on the upgrade request itself is refused before the upgrade.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/graphql", app.addr),
    )
    .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    req.headers_mut()
        .insert("Authorization", "Bearer vg_nope".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());

    // A good token works (the check is not refusing everything).
    let mut ws = Subscription::connect(&app.addr, "graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {ADMIN_KEY}") } }))
        .await;
    let ack = ws.recv(Duration::from_secs(3)).await.expect("ack");
    assert_eq!(ack["type"], "connection_ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_graphql_ws_protocol_works() {
    let app = TestApp::spawn().await;
    let mut ws = Subscription::connect(&app.addr, "graphql-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {ADMIN_KEY}") } }))
        .await;
    let ack = ws.recv(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws.send(json!({ "id": "1", "type": "start", "payload": { "query": "subscription { callEvents(after: \"0\") { callId kind status } }" } }))
        .await;
    let id = app.submit_ok(short_call(), json!({})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let data = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = ws.recv(left).await.expect("a data message in time");
        if msg["type"] == "ka" {
            continue;
        }
        break msg;
    };
    assert_eq!(data["type"], "data", "{data}");
    assert_eq!(data["id"], "1");
    assert_eq!(
        data["payload"]["data"]["callEvents"]["callId"], id,
        "{data}"
    );
    assert_eq!(data["payload"]["data"]["callEvents"]["kind"], "SUBMITTED");

    // `stop` ends the subscription with `complete`.
    ws.send(json!({ "id": "1", "type": "stop" })).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = ws.recv(left).await.expect("complete");
        if msg["type"] == "complete" {
            assert_eq!(msg["id"], "1");
            break;
        }
        assert!(
            ["ka", "data"].contains(&msg["type"].as_str().unwrap()),
            "{msg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_without_connection_init_are_closed_after_the_timeout() {
    let app = TestApp::spawn_with(Roles::ALL, |l| {
        l.set("ws_init_timeout_secs", "1");
    })
    .await;
    // A connection that initialises in time stays open past the timeout.
    let mut live = app
        .subscribe(
            ADMIN_KEY,
            "subscription { callEvents(after: \"0\") { kind } }",
            json!({}),
        )
        .await;

    let mut idle = Subscription::connect(&app.addr, "graphql-transport-ws").await;
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), idle.ws.next()).await;
    let elapsed = started.elapsed();
    match end {
        Err(_) => panic!("a WebSocket that never sent connection_init is still open after 5 s"),
        Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {}
        Ok(Some(Ok(other))) => panic!("unexpected message {other:?}"),
    }
    assert!(
        elapsed >= Duration::from_millis(800),
        "closed after {elapsed:?}: too early for a 1 s timeout"
    );
    assert!(elapsed < Duration::from_secs(4), "closed after {elapsed:?}");

    // The initialised one is still served.
    app.submit_ok(short_call(), json!({})).await;
    let d = live.next_data(Duration::from_secs(5)).await;
    assert_eq!(d["callEvents"]["kind"], "SUBMITTED");
}
