//! The limits a document meets before it runs (bytes and tokens before parsing; root fields,
//! directives, `__typename`, batch size; a complexity that multiplies through nested lists) and
//! while it runs (a time limit, a response-size limit), each naming its setting; and the paging
//! of the nested lists that declare those bounds.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use voicegraph::startup::Roles;

use crate::helpers::{short_call, TestApp, ADMIN_KEY};

const SERVE: Roles = Roles {
    serve: true,
    worker: false,
    relay: false,
};

/// The first error's code and the setting it names.
fn refusal(body: &Value) -> (String, String) {
    let e = &body["errors"][0]["extensions"];
    (
        e["code"].as_str().unwrap_or("").to_string(),
        e["limit"].as_str().unwrap_or("").to_string(),
    )
}

async fn post_json(app: &TestApp, body: String) -> (u16, Value) {
    let r = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The nested fan-out: `call { events { call { events … } } }`, `levels` times.
fn fan_out(levels: usize) -> String {
    let mut q = "id".to_string();
    for _ in 0..levels {
        q = format!("events {{ call {{ {q} }} }}");
    }
    format!("query($id: ID!) {{ call(id: $id) {{ {q} }} }}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_refused_before_parsing_and_before_running() {
    let app = TestApp::spawn_with(SERVE, |_| {}).await;
    let id = app.submit_ok(short_call(), json!({})).await;

    // 10,000 aliases: refused by the token count, before the parser runs.
    let aliases: String = (0..10_000).map(|i| format!(" a{i}: __typename")).collect();
    let t = Instant::now();
    let (status, body) = post_json(
        &app,
        json!({ "query": format!("{{{aliases}}}") }).to_string(),
    )
    .await;
    let took = t.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        refusal(&body),
        (
            "BAD_USER_INPUT".into(),
            "VOICEGRAPH_MAX_DOCUMENT_BYTES".into()
        ),
        "{body}"
    );
    println!(
        "a 10,000-alias document ({} bytes) refused in {took:?}",
        aliases.len() + 2
    );
    assert!(took < Duration::from_secs(2), "{took:?}");

    // Within the byte limit but over the token limit.
    let fields = format!("{{{}}}", " a".repeat(6_000));
    let (_, body) = post_json(&app, json!({ "query": fields }).to_string()).await;
    assert_eq!(
        refusal(&body),
        (
            "BAD_USER_INPUT".into(),
            "VOICEGRAPH_MAX_DOCUMENT_TOKENS".into()
        ),
        "{body}"
    );
    assert!(
        body["errors"][0]["message"].as_str().unwrap().len() < 100,
        "no echo: {body}"
    );

    // The fan-out: its complexity, multiplied through every `events`, is known before it runs.
    let t = Instant::now();
    let (_, body) = post_json(
        &app,
        json!({ "query": fan_out(7), "variables": { "id": id } }).to_string(),
    )
    .await;
    let took = t.elapsed();
    println!("the nested events fan-out (7 levels) refused in {took:?}");
    assert!(body["data"].is_null(), "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too complex"),
        "{body}"
    );
    // Two levels are fine.
    app.gql_ok(&fan_out(2), json!({ "id": id })).await;

    // Root fields, directives per field, `__typename`'s arguments and directives.
    let roots: String = (0..31).map(|i| format!(" r{i}: __typename")).collect();
    let (_, body) = post_json(&app, json!({ "query": format!("{{{roots}}}") }).to_string()).await;
    assert_eq!(refusal(&body).0, "BAD_USER_INPUT", "{body}");
    let (_, body) = post_json(
        &app,
        json!({ "query": "{ viewer @skip(if: false) @include(if: true) @skip(if: false) @include(if: true) @skip(if: false) { role } }" }).to_string(),
    )
    .await;
    assert_eq!(
        refusal(&body),
        (
            "BAD_USER_INPUT".into(),
            "VOICEGRAPH_MAX_DIRECTIVES_PER_FIELD".into()
        ),
        "{body}"
    );
    for q in [
        "{ __typename @aa }",
        "{ __typename(a: 1) }",
        "{ __typename @skip }",
    ] {
        let (_, body) = post_json(&app, json!({ "query": q }).to_string()).await;
        assert_eq!(refusal(&body).0, "GRAPHQL_VALIDATION_FAILED", "{q}: {body}");
    }
    let d = app
        .gql_ok(
            "{ a: __typename @include(if: true) b: __typename @skip(if: true) }",
            json!({}),
        )
        .await;
    assert_eq!(d, json!({ "a": "Query" }));

    // Array batches are capped (10 by default), before anything runs.
    let batch = |n: usize| Value::Array(vec![json!({ "query": "{ __typename }" }); n]).to_string();
    let (status, body) = post_json(&app, batch(10)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 10);
    let (status, body) = post_json(&app, batch(11)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("VOICEGRAPH_MAX_BATCH_SIZE"),
        "{body}"
    );

    // APQ: a document over the limits is refused before it is stored.
    let big = format!("{{{}}}", " a".repeat(6_000));
    let hash = voicegraph::graphql::documents::sha256_hex(&big);
    let (_, body) = post_json(
        &app,
        json!({ "query": big, "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } })
            .to_string(),
    )
    .await;
    assert_eq!(refusal(&body).1, "VOICEGRAPH_MAX_DOCUMENT_TOKENS", "{body}");
    let (_, body) = post_json(
        &app,
        json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } })
            .to_string(),
    )
    .await;
    assert_eq!(refusal(&body).0, "PERSISTED_QUERY_NOT_FOUND", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_run_within_a_time_limit_and_a_response_size() {
    // Every nested list waits 2 s for its batch: far past a 300 ms time limit.
    let app = TestApp::spawn_with(SERVE, |l| {
        l.set("loader_delay_ms", "2000")
            .set("request_timeout_ms", "300");
    })
    .await;
    let id = app.submit_ok(short_call(), json!({})).await;
    let t = Instant::now();
    let (_, body) = post_json(
        &app,
        json!({ "query": "query($id: ID!) { call(id: $id) { events { id } } }", "variables": { "id": id } })
            .to_string(),
    )
    .await;
    let took = t.elapsed();
    assert_eq!(
        refusal(&body),
        ("TIMEOUT".into(), "VOICEGRAPH_REQUEST_TIMEOUT_MS".into()),
        "{body}"
    );
    assert!(
        took < Duration::from_millis(1900),
        "stopped at the limit: {took:?}"
    );
    // Mutations are not cut: this one waits for its events past the limit, and completes.
    let t = Instant::now();
    let d = app
        .gql_ok(
            "mutation($id: ID!) { tagCall(id: $id, tags: [\"kept\"]) { tags events { kind } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(d["tagCall"]["tags"], json!(["kept"]));
    assert!(
        t.elapsed() > Duration::from_millis(300),
        "it ran past the limit"
    );

    let app = TestApp::spawn_with(SERVE, |l| {
        l.set("max_response_bytes", "200");
    })
    .await;
    app.gql_ok("{ viewer { role } }", json!({})).await;
    let many: String = (0..20).map(|i| format!(" t{i}: __typename")).collect();
    let (status, body) =
        post_json(&app, json!({ "query": format!("{{{many}}}") }).to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        refusal(&body),
        (
            "RESPONSE_TOO_LARGE".into(),
            "VOICEGRAPH_MAX_RESPONSE_BYTES".into()
        ),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_lists_page_within_their_declared_bounds() {
    let app = TestApp::spawn().await;
    let id = app.submit_ok(short_call(), json!({})).await;
    app.wait_status(&id, "COMPLETED", 60).await;
    for i in 0..4 {
        app.gql_ok(
            "mutation($id: ID!, $t: [String!]!) { tagCall(id: $id, tags: $t) { id } }",
            json!({ "id": id, "t": [format!("t{i}")] }),
        )
        .await;
    }
    let events = |first: i64, after: Option<String>| {
        let app = &app;
        let id = id.clone();
        async move {
            let d = app
                .gql_ok(
                    "query($id: ID!, $f: Int, $a: String) { call(id: $id) { events(first: $f, after: $a) { kind cursor } } }",
                    json!({ "id": id, "f": first, "a": after }),
                )
                .await;
            d["call"]["events"].as_array().unwrap().clone()
        }
    };
    // SUBMITTED, PROCESSING, COMPLETED and four TAGGED, once the relay sequenced them all.
    let mut all = Vec::new();
    for _ in 0..100 {
        all = events(100, None).await;
        if all.len() >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(all.len(), 7, "{all:?}");
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = events(3, after.clone()).await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        after = Some(page.last().unwrap()["cursor"].as_str().unwrap().to_string());
        paged.extend(page);
    }
    assert_eq!(paged, all, "pages of 3 give every event once, in order");

    let segments = |first: i64, offset: i64| {
        let app = &app;
        let id = id.clone();
        async move {
            let d = app
                .gql_ok(
                    "query($id: ID!, $f: Int, $o: Int) { call(id: $id) { transcript { segments(first: $f, offset: $o) { startMs channel } } } }",
                    json!({ "id": id, "f": first, "o": offset }),
                )
                .await;
            d["call"]["transcript"]["segments"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let whole = segments(1000, 0).await;
    assert!(whole.len() >= 2, "{whole:?}");
    assert_eq!(segments(1, 1).await, whole[1..2].to_vec());
    assert!(segments(10, whole.len() as i64).await.is_empty());

    for (q, vars) in [
        ("query($id: ID!) { call(id: $id) { events(first: 101) { id } } }", json!({ "id": id })),
        ("query($id: ID!) { call(id: $id) { events(first: -1) { id } } }", json!({ "id": id })),
        ("query($id: ID!) { call(id: $id) { events(after: \"x\") { id } } }", json!({ "id": id })),
        ("query($id: ID!) { call(id: $id) { transcript { segments(first: 1001) { startMs } } } }", json!({ "id": id })),
        ("query($id: ID!) { call(id: $id) { transcript { segments(offset: -1) { startMs } } } }", json!({ "id": id })),
    ] {
        let body = app.gql(q, vars).await;
        assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT", "{q}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_whose_client_goes_away_stops() {
    use tokio::io::AsyncWriteExt;
    // The query's nested list waits 60 s for its batch; its client leaves long before.
    let app = TestApp::spawn_with(SERVE, |l| {
        l.set("loader_delay_ms", "60000");
    })
    .await;
    let id = app.submit_ok(short_call(), json!({})).await;
    let body = json!({
        "query": "query($id: ID!) { call(id: $id) { events { id } } }",
        "variables": { "id": id },
    })
    .to_string();
    let request = format!(
        "POST /graphql HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let gauge = app.state.metrics.operations_in_flight.clone();
    let mut socket = tokio::net::TcpStream::connect(&app.addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    crate::connections::wait_until("the query runs", || gauge.get() == 1).await;
    let left = Instant::now();
    drop(socket);
    crate::connections::wait_until("the query stops", || gauge.get() == 0).await;
    println!("a query stopped {:?} after its client left", left.elapsed());
}
