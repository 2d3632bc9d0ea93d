//! GraphQL over HTTP for browsers: CSRF prevention, CORS, the GraphQL-over-HTTP status codes and
//! error codes, automatic persisted queries (shared through the database or Redis) and trusted
//! documents.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use voicegraph::startup::Roles;

use crate::helpers::*;

const SERVE: Roles = Roles {
    serve: true,
    worker: false,
    relay: false,
};

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

async fn key_count(app: &TestApp) -> usize {
    let d = app.gql_ok("{ apiKeys { id } }", json!({})).await;
    d["apiKeys"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_shaped_requests_do_not_execute() {
    let app = TestApp::spawn_with(SERVE, |_| {}).await;
    let mutation = r#"{"query":"mutation { createApiKey(input: {role: VIEWER, name: \"csrf\"}) { secret } }"}"#;
    let keys = key_count(&app).await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let mut req = app
            .client
            .post(app.url("/graphql"))
            .bearer_auth(ADMIN_KEY)
            .body(mutation);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400, "{content_type:?}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("Cross-Site Request Forgery"),
            "{body}"
        );
    }
    assert_eq!(key_count(&app).await, keys, "a blocked mutation ran");
    // A preflight header lets a non-JSON request through the CSRF check; it is then refused as
    // an unsupported media type, still without running anything.
    let resp = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "text/plain")
        .header("apollo-require-preflight", "true")
        .body(mutation)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/graphql")
        .body("{ __typename }")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    assert_eq!(key_count(&app).await, keys);
    // Multipart uploads need the header; with it they run (see `helpers::submit`).
    let (status, body) = app
        .submit(ADMIN_KEY, short_call(), "audio/wav", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    // Mutations never run over GET.
    let resp = app
        .client
        .get(app.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .query(&[(
            "query",
            "mutation { createApiKey(input: {role: VIEWER, name: \"get\"}) { secret } }",
        )])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(key_count(&app).await, keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_configured_origins_only() {
    let preflight = |app: &TestApp, origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    // Development without a list: pages on localhost.
    let dev = TestApp::spawn_with(SERVE, |_| {}).await;
    let r = preflight(&dev, "http://localhost:5173").await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    let r = preflight(&dev, "https://evil.example.com").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // A configured list replaces the localhost default.
    let app = TestApp::spawn_with(SERVE, |l| {
        l.set("cors_origins", "https://app.example.com");
    })
    .await;
    let r = preflight(&app, "https://app.example.com").await.unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    for refused in ["http://localhost:5173", "https://app.example.com.evil.io"] {
        let r = preflight(&app, refused).await.unwrap();
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{refused}"
        );
    }
    // The actual request carries the header too.
    let r = app
        .client
        .post(app.url("/graphql"))
        .header("origin", "https://app.example.com")
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
}

async fn post_raw(app: &TestApp, accept: &str, body: &str) -> (u16, String, Value) {
    let r = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .header("accept", accept)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    let text = r.text().await.unwrap();
    (
        status,
        ct,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

const MODERN: &str = "application/graphql-response+json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_over_http_status_codes_and_error_codes() {
    let app = TestApp::spawn_with(SERVE, |_| {}).await;
    // A parse error: a request error (no `data`), one line, a position, the code.
    let (status, ct, body) = post_raw(&app, MODERN, r#"{"query":"{ viewer { role "}"#).await;
    assert_eq!(status, 400);
    assert!(ct.starts_with(MODERN), "{ct}");
    assert!(body.get("data").is_none(), "{body}");
    let e = &body["errors"][0];
    assert_eq!(e["extensions"]["code"], "GRAPHQL_PARSE_FAILED", "{body}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Syntax Error:") && !msg.contains('\n'),
        "{msg}"
    );
    assert!(
        !msg.contains("viewer"),
        "the message quotes the document: {msg}"
    );
    assert_eq!(e["locations"][0]["line"], 1, "{body}");
    // The same under application/json: 200, still without `data`.
    let (status, ct, body) =
        post_raw(&app, "application/json", r#"{"query":"{ viewer { role "}"#).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/json"), "{ct}");
    assert!(body.get("data").is_none(), "{body}");
    // A validation error.
    let (status, _, body) = post_raw(&app, MODERN, r#"{"query":"{ nope }"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    assert!(body.get("data").is_none(), "{body}");
    // Variables of the wrong type.
    let (status, _, body) = post_raw(
        &app,
        MODERN,
        r#"{"query":"query($id: ID!) { call(id: $id) { id } }","variables":{"id":{"not":"an id"}}}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.get("data").is_none(), "{body}");
    // An unknown operation name.
    let (status, _, body) = post_raw(
        &app,
        MODERN,
        r#"{"query":"query A { __typename }","operationName":"B"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    // An execution error (not authenticated) with data: 200 under the modern type too.
    let r = app
        .client
        .post(app.url("/graphql"))
        .header("accept", MODERN)
        .json(&json!({ "query": "{ viewer { role } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(body.as_object().unwrap().contains_key("data"), "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    // Parameters of the wrong type, and bodies that are not JSON: 400.
    for bad in [
        r#"{"query":{"obj":1}}"#,
        r#"{"query":"{ __typename }","variables":"x"}"#,
        r#"{"query":"{ __typename }","extensions":0}"#,
        r#"{"query":"{ __typename }","operationName":false}"#,
        r#"{"variables":{}}"#,
        "{not json",
        "",
    ] {
        for accept in [MODERN, "application/json"] {
            let (status, _, body) = post_raw(&app, accept, bad).await;
            assert_eq!(status, 400, "{bad} {accept}: {body}");
        }
    }
    // Accept negotiation.
    let (status, ct, _) = post_raw(&app, "*/*", r#"{"query":"{ __typename }"}"#).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/json"));
    let (status, _, _) = post_raw(&app, "text/html", r#"{"query":"{ __typename }"}"#).await;
    assert_eq!(status, 406);
    let (status, _, _) = post_raw(&app, MODERN, r#"{"query":"{ __typename }"}"#).await;
    assert_eq!(status, 200);
    // A batch answers one result per entry.
    let (status, _, body) = post_raw(
        &app,
        MODERN,
        r#"[{"query":"{ __typename }"},{"query":"{ nope }"}]"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["data"]["__typename"], "Query");
    assert_eq!(
        body[1]["errors"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    // GET with JSON parameters.
    let r = app
        .client
        .get(app.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .query(&[
            (
                "query",
                "query($n: Int) { calls(first: $n) { totalCount } }",
            ),
            ("variables", r#"{"n": 1}"#),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["calls"]["totalCount"], 0);
}

fn apq(hash: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_persisted_queries_are_shared_by_every_instance() {
    let query = "query Mine { viewer { role } }";
    let hash = sha256(query);
    let app = TestApp::spawn_with(SERVE, |_| {}).await;
    // Unknown hash: PERSISTED_QUERY_NOT_FOUND, as Apollo's link expects.
    let (status, body) = post(&app, json!({ "extensions": apq(&hash) })).await;
    assert_eq!(status, 200);
    assert_eq!(body["errors"][0]["message"], "PersistedQueryNotFound");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_FOUND"
    );
    // A wrong hash for the text is refused and not stored.
    let (_, body) = post(
        &app,
        json!({ "query": "{ __typename }", "extensions": apq(&hash) }),
    )
    .await;
    assert_eq!(
        body["errors"][0]["message"],
        "provided sha does not match query"
    );
    let (_, body) = post(&app, json!({ "extensions": apq(&hash) })).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_FOUND"
    );
    // Registered with its text, then the hash alone runs it (POST and GET).
    let (_, body) = post(&app, json!({ "query": query, "extensions": apq(&hash) })).await;
    assert_eq!(body["data"]["viewer"]["role"], "ADMIN", "{body}");
    let (_, body) = post(&app, json!({ "extensions": apq(&hash) })).await;
    assert_eq!(body["data"]["viewer"]["role"], "ADMIN", "{body}");
    let r = app
        .client
        .get(app.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .query(&[("extensions", apq(&hash).to_string())])
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["viewer"]["role"], "ADMIN", "{body}");
    // Another instance on the same database knows it (the store is shared, not in memory).
    let dir = app.stop().await;
    let second = TestApp::spawn_in(dir, SERVE, |_| {}).await;
    let (_, body) = post(&second, json!({ "extensions": apq(&hash) })).await;
    assert_eq!(body["data"]["viewer"]["role"], "ADMIN", "{body}");
    // And over the WebSocket.
    let mut ws = Subscription::connect(&second.addr, "graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {ADMIN_KEY}") } }))
        .await;
    assert_eq!(
        ws.recv(Duration::from_secs(5)).await.unwrap()["type"],
        "connection_ack"
    );
    ws.send(json!({ "id": "1", "type": "subscribe", "payload": { "extensions": apq(&hash) } }))
        .await;
    let next = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(next["payload"]["data"]["viewer"]["role"], "ADMIN", "{next}");
    // Bad extensions are refused with a reason.
    let (_, body) = post(
        &second,
        json!({ "extensions": { "persistedQuery": { "version": 2, "sha256Hash": hash } } }),
    )
    .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
}

async fn post(app: &TestApp, body: Value) -> (u16, Value) {
    let r = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_documents_in_redis_are_shared() {
    let url = crate::require!(crate::backends::redis_url());
    use voicegraph::ports::DocumentStore;
    let prefix = format!("vg-test:{}", uuid::Uuid::new_v4());
    let a = voicegraph::adapters::redis::RedisDocumentStore::connect(&url, &prefix)
        .await
        .unwrap();
    let b = voicegraph::adapters::redis::RedisDocumentStore::connect(&url, &prefix)
        .await
        .unwrap();
    let doc = "{ __typename }";
    let hash = sha256(doc);
    assert_eq!(a.get(&hash).await.unwrap(), None);
    a.put(&hash, doc).await.unwrap();
    a.put(&hash, doc).await.unwrap();
    assert_eq!(b.get(&hash).await.unwrap().as_deref(), Some(doc));
    // Another deployment's prefix does not see it.
    let c = voicegraph::adapters::redis::RedisDocumentStore::connect(&url, "vg-test:other")
        .await
        .unwrap();
    assert_eq!(c.get(&hash).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_documents_run_when_a_manifest_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let listed = "query Role { viewer { role } }";
    let manifest = dir.path().join("persisted-documents.json");
    std::fs::write(
        &manifest,
        json!({ "abc123": listed, sha256("{ __typename }"): "{ __typename }" }).to_string(),
    )
    .unwrap();
    let path = manifest.to_string_lossy().to_string();
    let app = TestApp::spawn_with(SERVE, |l| {
        l.set("trusted_documents", path.clone());
    })
    .await;
    // The platform admin is not exempt by default: an unlisted mutation does not run.
    let t = app
        .gql(
            "mutation { createApiKey(input: {role: VIEWER, name: \"v\"}) { secret } }",
            json!({}),
        )
        .await;
    assert_eq!(
        t["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_IN_LIST",
        "{t}"
    );
    // A listed document runs by its text, by its id (documentId, Relay's doc_id, a `sha256:`
    // prefix) and by its hash in the APQ extension.
    for body in [
        json!({ "query": listed }),
        json!({ "documentId": "abc123" }),
        json!({ "doc_id": "abc123" }),
        json!({ "documentId": format!("sha256:{}", sha256("{ __typename }")) }),
        json!({ "extensions": apq(&sha256(listed)) }),
    ] {
        let (_, resp) = post(&app, body.clone()).await;
        assert!(resp["data"].is_object(), "{body}: {resp}");
    }
    // Anything else does not run.
    let (_, resp) = post(&app, json!({ "query": "{ calls { totalCount } }" })).await;
    assert_eq!(
        resp["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_IN_LIST"
    );
    assert!(resp.get("data").is_none());
    let (_, resp) = post(&app, json!({ "documentId": "nope" })).await;
    assert_eq!(
        resp["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_FOUND"
    );
    // Registering through APQ does not add to the list.
    let q = "{ calls { totalCount } }";
    let (_, resp) = post(&app, json!({ "query": q, "extensions": apq(&sha256(q)) })).await;
    assert_eq!(
        resp["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_IN_LIST"
    );

    // With the exemption, platform admins run anything; other callers still may not.
    let exempt = TestApp::spawn_with(SERVE, |l| {
        l.set("trusted_documents", path.clone())
            .set("trusted_documents_exempt_platform_admins", "true");
    })
    .await;
    let secret = exempt
        .gql_ok(
            "mutation { createApiKey(input: {role: ADMIN, name: \"a\"}) { secret } }",
            json!({}),
        )
        .await["createApiKey"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, resp) = exempt
        .gql_as(Some(&secret), "{ calls { totalCount } }", json!({}))
        .await;
    assert_eq!(
        resp["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_IN_LIST"
    );
    let (_, resp) = exempt.gql_as(Some(&secret), listed, json!({})).await;
    assert_eq!(resp["data"]["viewer"]["role"], "ADMIN");

    // A manifest that cannot be read stops the start, with the variable named.
    let bad = dir
        .path()
        .join("missing.json")
        .to_string_lossy()
        .to_string();
    let tmp = tempfile::tempdir().unwrap();
    let mut l = layers(tmp.path());
    l.set("trusted_documents", bad);
    ensure_database(tmp.path()).await;
    let app = voicegraph::startup::Application::build(l.settings().unwrap(), SERVE)
        .await
        .unwrap();
    let err = app.run_until_stopped().await.unwrap_err();
    assert!(
        format!("{err:#}").contains("VOICEGRAPH_TRUSTED_DOCUMENTS"),
        "{err:#}"
    );
}

#[test]
fn the_playground_manifest_is_up_to_date() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("playground/trusted-documents.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(
        committed,
        voicegraph::http::playground::trusted_documents(),
        "playground/trusted-documents.json is stale: run `cargo run -- print-trusted-documents --output playground/trusted-documents.json`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_examples_run_in_trusted_documents_mode() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("playground/trusted-documents.json")
        .to_string_lossy()
        .to_string();
    let app = TestApp::spawn_with(SERVE, |l| {
        l.set("trusted_documents", path);
    })
    .await;
    // The playground sends each example file whole, with an operation name.
    for (name, doc) in voicegraph::http::playground::EXAMPLES {
        let (_, body) = post(&app, json!({ "query": doc, "operationName": "__none__" })).await;
        let code = body["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or("");
        assert_ne!(code, "PERSISTED_QUERY_NOT_IN_LIST", "{name}: {body}");
    }
}
