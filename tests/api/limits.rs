//! Limits and input validation: page sizes, query depth and aliases, request and upload sizes,
//! submission inputs, signed upload URLs, and production-mode start-up checks.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use voicegraph::startup::{Application, Roles};

use crate::helpers::{self, short_call, wav, TestApp, ADMIN_KEY};

/// The API alone: no worker analysing calls, no relay.
const SERVE: Roles = Roles {
    serve: true,
    worker: false,
    relay: false,
};

async fn serve() -> TestApp {
    TestApp::spawn_with(SERVE, |_| {}).await
}

/// The `extensions.code` of every error in a response body.
fn codes(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["extensions"]["code"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts the body has errors and that the first one has `code`; returns its message.
fn expect_code(body: &Value, code: &str) -> String {
    let errors = body["errors"].as_array();
    assert!(
        errors.is_some_and(|e| !e.is_empty()),
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

async fn tenant_id(app: &TestApp, key: &str) -> String {
    let (_, body) = app
        .gql_as(Some(key), "{ viewer { tenant { id } } }", json!({}))
        .await;
    body["data"]["viewer"]["tenant"]["id"]
        .as_str()
        .expect("tenant id")
        .to_string()
}

/// A new tenant and a key of `role` in it; returns (tenant id, secret).
async fn tenant_with_key(app: &TestApp, name: &str, role: &str) -> (String, String) {
    let d = app
        .gql_ok(
            "mutation($n: String!) { createTenant(input: {name: $n}) { tenant { id } } }",
            json!({ "n": name }),
        )
        .await;
    let tenant = d["createTenant"]["tenant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let d = app
        .gql_ok(
            &format!(
                "mutation($t: ID!) {{ createApiKey(input: {{tenantId: $t, role: {role}, name: \"k\"}}) {{ secret }} }}"
            ),
            json!({ "t": tenant }),
        )
        .await;
    let secret = d["createApiKey"]["secret"].as_str().unwrap().to_string();
    (tenant, secret)
}

/// `submitCall` by recording key (a plain JSON request).
async fn submit_key(app: &TestApp, key: &str, recording_key: &str) -> Value {
    let (status, body) = app
        .gql_as(
            Some(key),
            "mutation($k: String!) { submitCall(input: {recordingKey: $k}) { call { id status } } }",
            json!({ "k": recording_key }),
        )
        .await;
    assert_eq!(status, 200, "{body:#}");
    body
}

struct Upload {
    key: String,
    url: String,
    headers: Vec<(String, String)>,
}

async fn create_upload(app: &TestApp, content_type: &str, size: usize) -> Upload {
    let d = app
        .gql_ok(
            "mutation($ct: String!, $n: Int!) { createRecordingUpload(input: {contentType: $ct, byteSize: $n}) { recordingKey uploadUrl method headers { name value } expiresAt } }",
            json!({ "ct": content_type, "n": size }),
        )
        .await;
    let u = &d["createRecordingUpload"];
    assert_eq!(u["method"], "PUT");
    Upload {
        key: u["recordingKey"].as_str().unwrap().to_string(),
        url: u["uploadUrl"].as_str().unwrap().to_string(),
        headers: u["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["name"].as_str().unwrap().to_string(),
                    h["value"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
    }
}

impl Upload {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
}

/// PUT `body` to `url` with `content_type` (reqwest sets Content-Length from the body).
async fn put(url: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
    // A fresh connection each time: after an early refusal the server may close a connection
    // that a pooled client would otherwise try to reuse.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let resp = client
        .put(url)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .expect("PUT");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Pages, depth, aliases, syntax.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_size_and_first_last_are_checked() {
    let app = serve().await;
    let body = app
        .gql("{ calls(first: 101) { totalCount } }", json!({}))
        .await;
    expect_code(&body, "BAD_USER_INPUT");
    let body = app
        .gql("{ calls(last: 101) { totalCount } }", json!({}))
        .await;
    expect_code(&body, "BAD_USER_INPUT");
    let body = app
        .gql("{ calls(first: -1) { totalCount } }", json!({}))
        .await;
    expect_code(&body, "BAD_USER_INPUT");
    let body = app
        .gql("{ calls(first: 2, last: 2) { totalCount } }", json!({}))
        .await;
    let msg = expect_code(&body, "BAD_USER_INPUT");
    assert!(msg.contains("first") && msg.contains("last"), "{msg}");
    // The limit itself is fine.
    let d = app
        .gql_ok("{ calls(first: 100) { totalCount } }", json!({}))
        .await;
    assert_eq!(d["calls"]["totalCount"], 0);
}

/// `{ calls { nodes { events { call { events { call ... } } } } } }`, `depth` levels deep.
fn deep_query(depth: usize) -> String {
    // Levels: calls(1) nodes(2), then alternating events/call; the innermost field is `id`.
    // One event per level, so that the complexity (which multiplies through lists) stays low
    // and the depth is what is refused.
    let mut open = String::from("{ calls { nodes { ");
    let mut close = String::from(" } } }");
    let mut level = 2;
    let mut events = true;
    while level < depth - 1 {
        if events {
            open.push_str("events(first: 1) { ");
        } else {
            open.push_str("call { ");
        }
        close.push_str(" }");
        events = !events;
        level += 1;
    }
    // `id` exists on both Call and CallEvent.
    format!("{open}id{close}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_deeper_than_the_limit_are_refused() {
    let app = serve().await;
    // Well under the limit: runs.
    app.gql_ok(&deep_query(6), json!({})).await;
    let body = app.gql(&deep_query(20), json!({})).await;
    assert!(
        body["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "a document deeper than 16 must be refused: {body:#}"
    );
    assert!(body["data"].is_null(), "nothing runs: {body:#}");
    let msg = body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(msg.to_lowercase().contains("deep"), "{msg}");
}

fn aliases(n: usize) -> String {
    let fields: Vec<String> = (0..n).map(|i| format!("a{i}: __typename")).collect();
    format!("{{ {} }}", fields.join(" "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_aliases_are_refused() {
    let app = serve().await;
    let d = app.gql_ok(&aliases(30), json!({})).await;
    assert_eq!(d["a29"], "Query");
    let body = app.gql(&aliases(31), json!({})).await;
    expect_code(&body, "BAD_USER_INPUT");
    assert!(body["data"].is_null(), "{body:#}");
    // Aliases hidden in a fragment count too.
    let frag: Vec<String> = (0..31).map(|i| format!("f{i}: __typename")).collect();
    let q = format!("{{ ...F }} fragment F on Query {{ {} }}", frag.join(" "));
    let body = app.gql(&q, json!({})).await;
    expect_code(&body, "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syntax_errors_are_400_only_for_the_graphql_response_media_type() {
    let app = serve().await;
    let bad = json!({ "query": "{ calls { totalCount " });
    let resp = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .header("Accept", "application/graphql-response+json")
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/graphql-response+json"), "{ct}");
    let body: Value = resp.json().await.unwrap();
    assert!(body["errors"].as_array().is_some_and(|e| !e.is_empty()));

    let resp = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .header("Accept", "application/json")
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/json"), "{ct}");
    let body: Value = resp.json().await.unwrap();
    assert!(body["errors"].as_array().is_some_and(|e| !e.is_empty()));

    // A field error is not a request error: 200 even under the modern media type.
    let resp = app
        .client
        .post(app.url("/graphql"))
        .header("Accept", "application/graphql-response+json")
        .json(&json!({ "query": "{ __typename calls { totalCount } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(codes(&body), vec!["UNAUTHENTICATED"]);
}

// ---------------------------------------------------------------------------------------------
// GET, request size.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_runs_queries_but_not_mutations() {
    let app = serve().await;
    let resp = app
        .client
        .get(app.url("/graphql"))
        .query(&[("query", "{__typename}")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["__typename"], "Query");

    let mutation = "mutation { createApiKey(input: {role: VIEWER, name: \"via-get\"}) { secret } }";
    let resp = app
        .client
        .get(app.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .query(&[("query", mutation)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");

    // None of the refused mutations ran.
    let d = app.gql_ok("{ apiKeys { name } }", json!({})).await;
    let names: Vec<&str> = d["apiKeys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert!(!names.contains(&"via-get"), "{names:?}");
}

/// GET takes the standard `operationName` parameter (GraphQL over HTTP) to pick one operation
/// of a document: the query runs, the mutation is refused with 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_honours_operation_name() {
    let app = serve().await;
    let doc = "query Q { __typename } mutation M { createApiKey(input: {role: VIEWER, name: \"via-get\"}) { secret } }";
    let get = |op: &'static str| {
        app.client
            .get(app.url("/graphql"))
            .bearer_auth(ADMIN_KEY)
            .query(&[("query", doc), ("operationName", op)])
            .send()
    };
    // The query, picked by name, runs (several times: the answer must not depend on chance).
    for _ in 0..5 {
        let resp = get("Q").await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "operationName=Q: {body:#}");
        assert_eq!(
            body["data"]["__typename"], "Query",
            "operationName=Q: {body:#}"
        );
    }
    for _ in 0..5 {
        let resp = get("M").await.unwrap();
        let status = resp.status();
        let allow = resp.headers().get("allow").cloned();
        let body = resp.text().await.unwrap();
        assert_eq!(status, 405, "operationName=M: {body}");
        assert_eq!(allow.unwrap(), "POST");
    }
    let d = app.gql_ok("{ apiKeys { name } }", json!({})).await;
    assert!(!d.to_string().contains("via-get"), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_request_limit_are_413() {
    let app = TestApp::spawn_with(SERVE, |l| {
        l.set("max_request_bytes", "10000");
    })
    .await;
    // Just under the limit: fine.
    let small = format!("{{ __typename }} #{}", "x".repeat(9000));
    let (status, body) = app.gql_as(Some(ADMIN_KEY), &small, json!({})).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["data"]["__typename"], "Query");

    let big = format!("{{ __typename }} #{}", "x".repeat(20_000));
    let (status, body) = app.gql_as(Some(ADMIN_KEY), &big, json!({})).await;
    assert_eq!(status, 413, "{body:#}");
    assert_eq!(codes(&body), vec!["BAD_USER_INPUT"]);

    // The same without a Content-Length (a streamed body) is refused too, not a 5xx.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = json!({ "query": big })
        .to_string()
        .into_bytes()
        .chunks(4096)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let resp = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .header("Content-Type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    // A GET query string over the limit is refused as well.
    let resp = app
        .client
        .get(app.url("/graphql"))
        .query(&[("query", big.as_str())])
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
}

// ---------------------------------------------------------------------------------------------
// Uploads.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_over_the_size_limit_are_refused() {
    let app = TestApp::spawn_with(SERVE, |l| {
        l.set("max_recording_bytes", "50000");
    })
    .await;
    let audio = wav(6.0, 1, 8000, &[(0, 0.5, 2.0)]);
    assert!(audio.len() > 90_000, "{}", audio.len());
    let (status, body) = app.submit(ADMIN_KEY, audio, "audio/wav", json!({})).await;
    assert!(!status.is_server_error(), "{status} {body:#}");
    assert!(status == 200 || status == 413, "{status} {body:#}");
    let msg = expect_code(&body, "BAD_USER_INPUT");
    assert!(
        msg.contains("larger than") && msg.contains("bytes"),
        "the message should say the recording is too large: {msg}"
    );
    let d = app.gql_ok("{ calls { totalCount } }", json!({})).await;
    assert_eq!(d["calls"]["totalCount"], 0, "nothing was stored");

    // createRecordingUpload refuses sizes over the limit (and non-positive ones) up front.
    for size in [50_001, 0, -5] {
        let body = app
            .gql(
                "mutation($n: Int!) { createRecordingUpload(input: {contentType: \"audio/wav\", byteSize: $n}) { recordingKey } }",
                json!({ "n": size }),
            )
            .await;
        expect_code(&body, "BAD_USER_INPUT");
    }
}

/// A recording exactly as large as `max_recording_bytes` is within the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_of_exactly_the_size_limit_is_accepted() {
    let audio = short_call();
    let limit = audio.len();
    let app = TestApp::spawn_with(SERVE, |l| {
        l.set("max_recording_bytes", limit.to_string());
    })
    .await;
    let (status, body) = app.submit(ADMIN_KEY, audio, "audio/wav", json!({})).await;
    assert_eq!(
        status, 200,
        "a {limit}-byte recording with max_recording_bytes={limit} must be accepted: {body:#}"
    );
    assert!(body.get("errors").is_none(), "{body:#}");
    assert_eq!(body["data"]["submitCall"]["call"]["status"], "QUEUED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_undecodable_and_mistyped_recordings_are_refused() {
    let app = serve().await;
    let (status, body) = app
        .submit(ADMIN_KEY, Vec::new(), "audio/wav", json!({}))
        .await;
    assert_eq!(status, 200, "{body:#}");
    let msg = expect_code(&body, "BAD_USER_INPUT");
    assert!(msg.contains("empty"), "{msg}");

    let text = b"Agent: hello, this is not audio at all.\n".repeat(50);
    let (_, body) = app.submit(ADMIN_KEY, text, "audio/wav", json!({})).await;
    let msg = expect_code(&body, "BAD_USER_INPUT");
    assert!(msg.contains("not decodable"), "{msg}");

    let mut seed: u32 = 42;
    let noise: Vec<u8> = (0..20_000)
        .map(|_| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) as u8
        })
        .collect();
    let (_, body) = app.submit(ADMIN_KEY, noise, "audio/wav", json!({})).await;
    let msg = expect_code(&body, "BAD_USER_INPUT");
    assert!(msg.contains("not decodable"), "{msg}");

    // A WAV header followed by garbage is refused as well.
    let mut truncated = short_call();
    truncated.truncate(44);
    let (_, body) = app
        .submit(ADMIN_KEY, truncated, "audio/wav", json!({}))
        .await;
    expect_code(&body, "BAD_USER_INPUT");

    let (_, body) = app
        .submit(ADMIN_KEY, short_call(), "text/plain", json!({}))
        .await;
    let msg = expect_code(&body, "BAD_USER_INPUT");
    assert!(msg.contains("content type"), "{msg}");

    let d = app.gql_ok("{ calls { totalCount } }", json!({})).await;
    assert_eq!(d["calls"]["totalCount"], 0, "nothing was stored");
    // The same WAV with an audio type is accepted (the refusals above were about the input).
    let (status, body) = app
        .submit(ADMIN_KEY, short_call(), "audio/x-wav", json!({}))
        .await;
    assert_eq!(status, 200);
    assert!(body.get("errors").is_none(), "{body:#}");
}

// ---------------------------------------------------------------------------------------------
// submitCall inputs.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_needs_exactly_one_recording_source() {
    let app = serve().await;
    let upload = create_upload(&app, "audio/wav", short_call().len()).await;
    let (status, _) = put(&upload.url, "audio/wav", short_call()).await;
    assert_eq!(status, 200);

    // Both.
    let (_, body) = app
        .submit(
            ADMIN_KEY,
            short_call(),
            "audio/wav",
            json!({ "recordingKey": upload.key }),
        )
        .await;
    let msg = expect_code(&body, "BAD_USER_INPUT");
    assert!(msg.contains("exactly one"), "{msg}");
    // Neither.
    let (_, body) = app
        .gql_as(
            Some(ADMIN_KEY),
            "mutation { submitCall(input: {externalId: \"x\"}) { call { id } } }",
            json!({}),
        )
        .await;
    expect_code(&body, "BAD_USER_INPUT");
    let d = app.gql_ok("{ calls { totalCount } }", json!({})).await;
    assert_eq!(d["calls"]["totalCount"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_keys_must_be_real_uploads_of_the_callers_tenant() {
    let app = serve().await;
    // A real upload of tenant `default`.
    let upload = create_upload(&app, "audio/wav", short_call().len()).await;
    let (status, _) = put(&upload.url, "audio/wav", short_call()).await;
    assert_eq!(status, 200);

    // Another tenant cannot use it: for that tenant, no such upload exists.
    let (_, other) = tenant_with_key(&app, "other", "INTEGRATOR").await;
    let body = submit_key(&app, &other, &upload.key).await;
    let msg = expect_code(&body, "NOT_FOUND");
    assert!(msg.contains("upload"), "{msg}");

    // Made-up keys.
    let own = tenant_id(&app, ADMIN_KEY).await;
    for key in [
        format!("uploads/{own}/{}", uuid::Uuid::new_v4()),
        "recordings/whatever".to_string(),
        format!("uploads/{own}/../../.blob-signing-key"),
        String::new(),
    ] {
        let body = submit_key(&app, ADMIN_KEY, &key).await;
        expect_code(&body, "BAD_USER_INPUT");
    }
    // The owner can use it.
    let body = submit_key(&app, ADMIN_KEY, &upload.key).await;
    assert!(body.get("errors").is_none(), "{body:#}");
    assert_eq!(body["data"]["submitCall"]["call"]["status"], "QUEUED");
}

/// Keys under the caller's own upload prefix that are not valid object keys (a space, an empty
/// last segment, a `.` segment) are user errors, not internal ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_recording_keys_are_bad_input_not_internal() {
    let app = serve().await;
    let own = tenant_id(&app, ADMIN_KEY).await;
    let mut wrong = Vec::new();
    for key in [
        format!("uploads/{own}/no such key"),
        format!("uploads/{own}/"),
        format!("uploads/{own}/./x"),
        format!("uploads/{own}//x"),
    ] {
        let body = submit_key(&app, ADMIN_KEY, &key).await;
        if codes(&body) != ["BAD_USER_INPUT"] {
            wrong.push(format!("{key:?} -> {:?}", codes(&body)));
        }
    }
    assert!(
        wrong.is_empty(),
        "malformed recordingKeys must be BAD_USER_INPUT: {wrong:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_inputs_are_validated() {
    let app = serve().await;
    let submit = |input: Value| {
        let app = &app;
        async move {
            let (status, body) = app
                .submit(ADMIN_KEY, short_call(), "audio/wav", input)
                .await;
            assert_eq!(status, 200, "{body:#}");
            body
        }
    };
    // Metadata must be an object.
    for metadata in [json!(5), json!("text"), json!([1, 2])] {
        let body = submit(json!({ "metadata": metadata })).await;
        let msg = expect_code(&body, "BAD_USER_INPUT");
        assert!(msg.contains("metadata"), "{msg}");
    }
    // Metadata over 64 KiB.
    let body = submit(json!({ "metadata": { "blob": "x".repeat(70 * 1024) } })).await;
    expect_code(&body, "BAD_USER_INPUT");

    // At most 50 tags.
    let tags: Vec<String> = (0..51).map(|i| format!("t{i}")).collect();
    let body = submit(json!({ "tags": tags })).await;
    let msg = expect_code(&body, "BAD_USER_INPUT");
    assert!(msg.contains("50"), "{msg}");
    // Forbidden characters, empty and overlong tags.
    for tag in ["a<b", "x\"y", "", &"t".repeat(65)] {
        let body = submit(json!({ "tags": [tag] })).await;
        expect_code(&body, "BAD_USER_INPUT");
    }
    let d = app.gql_ok("{ calls { totalCount } }", json!({})).await;
    assert_eq!(d["calls"]["totalCount"], 0, "nothing was stored");

    // Exactly 50 tags and an object as metadata are fine.
    let tags: Vec<String> = (0..50).map(|i| format!("t{i}")).collect();
    let body = submit(json!({ "tags": tags, "metadata": { "crm": 7 } })).await;
    assert!(body.get("errors").is_none(), "{body:#}");
    let call = body["data"]["submitCall"]["call"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        body["data"]["submitCall"]["call"]["tags"]
            .as_array()
            .unwrap()
            .len(),
        50
    );
    // A 51st tag through tagCall is refused too.
    let body = app
        .gql(
            "mutation($id: ID!) { tagCall(id: $id, tags: [\"one-more\"]) { tags } }",
            json!({ "id": call }),
        )
        .await;
    expect_code(&body, "BAD_USER_INPUT");
    let body = app
        .gql(
            "mutation($id: ID!) { tagCall(id: $id, tags: [\"a<b\"]) { tags } }",
            json!({ "id": call }),
        )
        .await;
    expect_code(&body, "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ids_and_cursors_are_bad_input() {
    let app = serve().await;
    for q in [
        "{ call(id: \"not-an-id\") { id } }",
        "{ node(id: \"not-an-id\") { id } }",
        "{ calls(after: \"garbage\") { totalCount } }",
        "mutation { tagCall(id: \"nope\", tags: [\"a\"]) { id } }",
        "mutation { deleteCall(id: \"nope\") { deletedId } }",
        "mutation { retryCall(id: \"nope\") { id } }",
    ] {
        let body = app.gql(q, json!({})).await;
        expect_code(&body, "BAD_USER_INPUT");
    }

    // callEvents(after:) needs a cursor it handed out.
    for after in ["abc", "-1"] {
        let mut ws = app
            .subscribe(
                ADMIN_KEY,
                "subscription($a: String) { callEvents(after: $a) { cursor } }",
                json!({ "a": after }),
            )
            .await;
        let msg = ws
            .recv(Duration::from_secs(5))
            .await
            .expect("an answer to the subscription");
        let errors = if msg["type"] == "error" {
            msg["payload"].clone()
        } else {
            assert_eq!(msg["type"], "next", "{msg}");
            msg["payload"]["errors"].clone()
        };
        assert!(
            errors.as_array().is_some_and(|e| !e.is_empty()),
            "callEvents(after: {after:?}) must fail: {msg}"
        );
        assert_eq!(errors[0]["extensions"]["code"], "BAD_USER_INPUT", "{msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// Signed URLs of the directory blob store.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_upload_urls_bind_type_and_length() {
    let app = serve().await;
    let audio = short_call();
    let n = audio.len();
    let upload = create_upload(&app, "audio/wav", n).await;
    assert_eq!(upload.header("Content-Type"), "audio/wav");
    assert_eq!(upload.header("Content-Length"), n.to_string());

    // A different type.
    let (status, body) = put(&upload.url, "audio/mpeg", audio.clone()).await;
    assert_eq!(status, 403, "{body}");
    // Longer and shorter bodies (the client's Content-Length then differs from the signed one).
    let mut longer = audio.clone();
    longer.extend_from_slice(&[0; 100]);
    let (status, body) = put(&upload.url, "audio/wav", longer).await;
    assert!((400..500).contains(&status), "{status} {body}");
    let (status, body) = put(&upload.url, "audio/wav", audio[..n - 10].to_vec()).await;
    assert!((400..500).contains(&status), "{status} {body}");
    // Tampered signature, key or expiry.
    let sig_at = upload.url.find("signature=").unwrap() + "signature=".len();
    let mut tampered = upload.url.clone();
    let c = if &tampered[sig_at..sig_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    tampered.replace_range(sig_at..sig_at + 1, c);
    let (status, body) = put(&tampered, "audio/wav", audio.clone()).await;
    assert_eq!(status, 403, "{body}");
    let last = upload.key.chars().last().unwrap();
    let other_last = if last == 'a' { 'b' } else { 'a' };
    let other_key = format!("{}{other_last}", &upload.key[..upload.key.len() - 1]);
    let (status, body) = put(
        &upload.url.replace(&upload.key, &other_key),
        "audio/wav",
        audio.clone(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = put(
        &upload.url.replace("expires=", "expires=9"),
        "audio/wav",
        audio.clone(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let unsigned = upload.url.split('?').next().unwrap().to_string();
    let (status, body) = put(&unsigned, "audio/wav", audio.clone()).await;
    assert_eq!(status, 403, "{body}");

    // Nothing was stored by any of these.
    let body = submit_key(&app, ADMIN_KEY, &upload.key).await;
    expect_code(&body, "BAD_USER_INPUT");
    let (status, body) = put(
        &upload.url.replace(&upload.key, &other_key),
        "audio/wav",
        audio.clone(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let body = submit_key(&app, ADMIN_KEY, &other_key).await;
    expect_code(&body, "BAD_USER_INPUT");

    // The exact upload works, and the call can be submitted from it.
    let (status, body) = put(&upload.url, "audio/wav", audio.clone()).await;
    assert_eq!(status, 200, "{body}");
    let body = submit_key(&app, ADMIN_KEY, &upload.key).await;
    assert!(body.get("errors").is_none(), "{body:#}");
    let id = body["data"]["submitCall"]["call"]["id"].as_str().unwrap();
    let d = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { durationMs recording { byteSize url } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(d["call"]["recording"]["byteSize"], n);
    assert_eq!(d["call"]["durationMs"], 2000);
    let url = d["call"]["recording"]["url"].as_str().unwrap();
    let got = app.client.get(url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().to_vec(), audio);
}

/// Raw HTTP/1.1 PUTs whose body does not match their own Content-Length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_and_unsized_uploads_store_nothing() {
    let app = serve().await;
    let audio = short_call();
    let n = audio.len();
    let upload = create_upload(&app, "audio/wav", n).await;
    let path = upload.url.splitn(4, '/').nth(3).unwrap().to_string();

    // Content-Length as signed, but the body stops short and the client hangs up.
    let mut s = tokio::net::TcpStream::connect(&app.addr).await.unwrap();
    let head = format!(
        "PUT /{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: audio/wav\r\nContent-Length: {n}\r\n\r\n",
        app.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&audio[..n / 2]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer.split(' ').nth(1).unwrap_or("");
    assert!(
        status.starts_with('4'),
        "an interrupted upload must be refused with a 4xx: {answer}"
    );

    // Chunked, with no Content-Length: refused (the length is part of the signature).
    let mut s = tokio::net::TcpStream::connect(&app.addr).await.unwrap();
    let mut req = format!(
        "PUT /{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: audio/wav\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        app.addr,
        n + 100
    )
    .into_bytes();
    req.extend_from_slice(&audio);
    req.extend_from_slice(&[0; 100]);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer.split(' ').nth(1).unwrap_or("");
    assert!(status.starts_with('4'), "{answer}");

    // Nothing stored, nothing left behind.
    let body = submit_key(&app, ADMIN_KEY, &upload.key).await;
    expect_code(&body, "BAD_USER_INPUT");
    let tmp = app.dir.path().join("blobs").join(".tmp");
    let leftovers = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "temporary upload files were left in {tmp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_urls_serve_the_exact_bytes_and_check_expiry() {
    let app = serve().await;
    let audio = short_call();
    let id = app.submit_ok(audio.clone(), json!({})).await;
    let d = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { recording { contentType byteSize url short: url(expiresIn: 60) } } }",
            json!({ "id": id }),
        )
        .await;
    let rec = &d["call"]["recording"];
    assert_eq!(rec["contentType"], "audio/wav");
    assert_eq!(rec["byteSize"], audio.len());
    for field in ["url", "short"] {
        let url = rec[field].as_str().unwrap();
        let resp = app.client.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().to_vec(), audio, "{field}");
        // Tampered: refused.
        let resp = app
            .client
            .get(url.replace("expires=", "expires=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        let resp = app
            .client
            .get(url.split('?').next().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
    }
    // expiresIn must be 1..=86400.
    for bad in [0, -1, 86_401] {
        let body = app
            .gql(
                "query($id: ID!, $e: Int) { call(id: $id) { recording { url(expiresIn: $e) } } }",
                json!({ "id": id, "e": bad }),
            )
            .await;
        expect_code(&body, "BAD_USER_INPUT");
    }
}

// ---------------------------------------------------------------------------------------------
// Production mode.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_refuses_the_embedded_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = helpers::layers(dir.path());
    // The default database, whichever database the suite runs on.
    l.set("env", "production").set("database_url", "");
    let settings = l.settings().expect("settings");
    let err = match Application::build(settings, Roles::ALL).await {
        Ok(_) => panic!("production mode must refuse the embedded SQLite database"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("VOICEGRAPH_DATABASE_URL"), "{err}");
    assert!(err.contains("production"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_refuses_every_embedded_backend_by_name() {
    let Some(db) = crate::backends::fresh_postgres_db().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut l = helpers::layers(dir.path());
    l.set("env", "production").set("database_url", db);
    let err = match Application::build(l.settings().unwrap(), Roles::ALL).await {
        Ok(_) => panic!("production mode must refuse the embedded job queue"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("VOICEGRAPH_JOB_QUEUE_URL"), "{err}");
}

/// Production refuses an embedded backend only to a process that uses it: a worker needs
/// neither the topic nor Redis (the relay publishes what it writes into the outbox), a relay
/// needs the topic, a serving instance Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_asks_each_process_only_for_the_backends_it_uses() {
    let Some(stack) = crate::backends::ProductionStack::create(None, 5, 30).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layers = |drop: &[&str]| {
        let mut l = helpers::layers(dir.path());
        for (k, v) in stack.vars() {
            l.set(k, v);
        }
        for k in drop {
            l.set(k, "");
        }
        l
    };
    // Migrate first: production does not.
    let mut owner = layers(&[]);
    owner.set("env", "development");
    drop(
        Application::build(owner.settings().unwrap(), Roles::ALL)
            .await
            .expect("migrates"),
    );

    let worker = Roles {
        serve: false,
        worker: true,
        relay: false,
    };
    let app = Application::build(
        layers(&["events_topic_arn", "redis_url", "realtime_queue_url"])
            .settings()
            .unwrap(),
        worker,
    )
    .await
    .expect("a worker needs no topic and no Redis");
    drop(app);
    for (roles, missing, variable) in [
        (
            Roles {
                serve: false,
                worker: false,
                relay: true,
            },
            &["events_topic_arn"][..],
            "VOICEGRAPH_EVENTS_TOPIC_ARN",
        ),
        (
            Roles {
                serve: true,
                worker: false,
                relay: false,
            },
            &["redis_url", "realtime_queue_url"][..],
            "VOICEGRAPH_REDIS_URL",
        ),
    ] {
        let err = match Application::build(layers(missing).settings().unwrap(), roles).await {
            Ok(_) => panic!("{roles:?} without {variable} must be refused"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(variable), "{err}");
    }
}
