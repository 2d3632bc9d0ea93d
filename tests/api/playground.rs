//! The playground and the schema file: every example operation under `playground/` executes
//! against a running app, the page is served, and `schema/schema.graphql` is not stale.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

fn operations(doc: &str) -> Vec<(String, String)> {
    doc.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let kind = words.next()?;
            let name = words.next()?.split(['(', '{']).next()?.to_string();
            ["query", "mutation", "subscription"]
                .contains(&kind)
                .then(|| (kind.to_string(), name))
        })
        .collect()
}

fn variables(doc: &str, subst: &[(&str, String)]) -> Value {
    let line = doc
        .lines()
        .find_map(|l| l.strip_prefix("# variables: "))
        .expect("a `# variables:` line");
    let mut text = line.to_string();
    for (placeholder, value) in subst {
        text = text.replace(placeholder, value);
    }
    serde_json::from_str(&text).expect("variables are JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_operation_executes() {
    let app = TestApp::spawn().await;
    let call = app
        .submit_ok(short_call(), json!({ "tags": ["demo"] }))
        .await;
    app.wait_status(&call, "COMPLETED", 30).await;
    let audio = short_call();
    let up = app.upload(&audio).await;
    let tenant = app
        .gql_ok(
            "mutation { createTenant(input: {name: \"Example\"}) { tenant { id } } }",
            json!({}),
        )
        .await["createTenant"]["tenant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = app.gql_ok("mutation { createApiKey(input: {role: VIEWER, name: \"to revoke\"}) { apiKey { id } } }", json!({})).await["createApiKey"]["apiKey"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let subst = [
        ("<CALL_ID>", call.clone()),
        (
            "<RECORDING_KEY>",
            up["recordingKey"].as_str().unwrap().to_string(),
        ),
        ("<TENANT_ID>", tenant),
        ("<API_KEY_ID>", key),
    ];

    let mut ran = 0;
    for (file, doc) in voicegraph::http::playground::EXAMPLES {
        let vars = variables(doc, &subst);
        for (kind, name) in operations(doc) {
            let body = match kind.as_str() {
                "subscription" => {
                    let mut sub = app.subscribe(ADMIN_KEY, doc, vars.clone()).await;
                    // The operation is chosen by name in the payload for multi-operation files.
                    let msg = sub.recv(Duration::from_secs(10)).await.expect("an event");
                    assert_eq!(msg["type"], "next", "{file} {name}: {msg}");
                    msg["payload"].clone()
                }
                _ if vars.get("recording").is_some() => {
                    let ops = json!({ "query": doc, "operationName": name, "variables": vars });
                    let form = reqwest::multipart::Form::new()
                        .text("operations", ops.to_string())
                        .text("map", json!({ "0": ["variables.recording"] }).to_string())
                        .part(
                            "0",
                            reqwest::multipart::Part::bytes(audio.clone())
                                .file_name("call.wav")
                                .mime_str("audio/wav")
                                .unwrap(),
                        );
                    app.client
                        .post(app.url("/graphql"))
                        .bearer_auth(ADMIN_KEY)
                        .header("apollo-require-preflight", "true")
                        .multipart(form)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap()
                }
                _ => app
                    .client
                    .post(app.url("/graphql"))
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({ "query": doc, "operationName": name, "variables": vars }))
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap(),
            };
            // Only a business-rule refusal is acceptable: retrying a call that did not fail.
            if let Some(errors) = body.get("errors") {
                assert_eq!(name, "RetryCall", "{file} {name}: {body:#}");
                assert_eq!(
                    errors[0]["extensions"]["code"], "CONFLICT",
                    "{file} {name}: {body:#}"
                );
            } else {
                assert!(body["data"].is_object(), "{file} {name}: {body:#}");
            }
            ran += 1;
        }
    }
    assert!(ran >= 13, "only {ran} operations ran");
}

#[test]
fn every_playground_file_is_embedded() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("playground");
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".graphql"))
        .collect();
    let embedded: BTreeSet<String> = voicegraph::http::playground::EXAMPLES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(
        on_disk, embedded,
        "add new playground files to src/http/playground.rs"
    );
}

#[test]
fn schema_file_is_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/schema.graphql");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == voicegraph::graphql::sdl(),
        "schema/schema.graphql is stale: run `cargo run -- print-schema --output schema/schema.graphql`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_page_health_and_metrics_are_served() {
    let app = TestApp::spawn().await;
    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("graphiql") && html.contains("API key"));
    let examples = app.get_json("/playground/examples.json").await;
    assert_eq!(
        examples.as_array().unwrap().len(),
        voicegraph::http::playground::EXAMPLES.len()
    );
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    let ready = app.get_json("/readyz").await;
    assert_eq!(ready["ready"], true, "{ready}");
    app.gql_ok("{ viewer { role } }", json!({})).await;
    let metrics = app.get_text("/metrics").await;
    assert!(metrics.contains("voicegraph_http_requests_total"));
    assert!(metrics.contains("voicegraph_db_statements_total"));
    assert!(metrics.contains("voicegraph_job_queue_depth"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_errors_hide_their_cause_behind_an_error_id() {
    let app = TestApp::spawn().await;
    let call = app.submit_ok(short_call(), json!({})).await;
    app.wait_status(&call, "COMPLETED", 30).await;
    // Break the result object behind the call's back: resolving its URL still works (signing
    // needs no object), but deleting the blob directory makes readiness fail with a reason.
    std::fs::remove_dir_all(app.dir.path().join("blobs")).unwrap();
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    // A database failure inside a resolver reaches the client as INTERNAL with an error id only.
    sea_orm::ConnectionTrait::execute_unprepared(&app.owner_db().await, "DROP TABLE call_segments")
        .await
        .unwrap();
    let body = app
        .gql(
            "query($id: ID!) { call(id: $id) { transcript { segments { speaker } } } }",
            json!({ "id": call }),
        )
        .await;
    let err = &body["errors"][0];
    assert_eq!(err["extensions"]["code"], "INTERNAL", "{body}");
    assert!(err["extensions"]["errorId"].is_string());
    assert!(
        !err["message"].as_str().unwrap().contains("call_segments"),
        "{body}"
    );
}

/// The playground loads the schema with GraphiQL's introspection query, whose type references
/// nest nine `ofType` levels deep: the depth limit must let it through in development.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_introspection_fits_the_limits() {
    let app = TestApp::spawn_with(
        voicegraph::startup::Roles {
            serve: true,
            worker: false,
            relay: false,
        },
        |_| {},
    )
    .await;
    let type_ref = format!(
        "kind name {}{}",
        "ofType { kind name ".repeat(9),
        "}".repeat(9)
    );
    let query = format!(
        "query IntrospectionQuery {{ __schema {{ queryType {{ name }} mutationType {{ name }} subscriptionType {{ name }} \
         types {{ ...FullType }} directives {{ name locations args {{ ...InputValue }} }} }} }} \
         fragment FullType on __Type {{ kind name description fields(includeDeprecated: true) {{ name args {{ ...InputValue }} type {{ ...TypeRef }} isDeprecated deprecationReason }} \
         inputFields {{ ...InputValue }} interfaces {{ ...TypeRef }} enumValues(includeDeprecated: true) {{ name }} possibleTypes {{ ...TypeRef }} }} \
         fragment InputValue on __InputValue {{ name type {{ ...TypeRef }} defaultValue }} \
         fragment TypeRef on __Type {{ {type_ref} }}"
    );
    let (status, body) = app.gql_as(None, &query, json!({})).await;
    assert_eq!(status, 200);
    assert!(body.get("errors").is_none(), "{body}");
    let types = body["data"]["__schema"]["types"].as_array().unwrap();
    assert!(types.iter().any(|t| t["name"] == "Call"));
    assert_eq!(
        body["data"]["__schema"]["subscriptionType"]["name"],
        "Subscription"
    );
}

/// The page's script and styles are the bundles built with the binary, served from this origin
/// under a policy that lets the page reach nothing else; the page names nothing off-origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_is_served_whole_from_this_origin() {
    let app = TestApp::spawn().await;
    let page = app.client.get(app.url("/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self' ws: wss:",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    assert!(
        !html.contains("<script>"),
        "no inline script (the policy would refuse it)"
    );
    assert_eq!(
        voicegraph::http::playground::ASSETS,
        "built",
        "the playground's assets were not built with this binary (Node.js and npm are needed)"
    );
    for (name, kind, at_least) in [
        ("playground.js", "text/javascript", 100_000),
        ("playground.css", "text/css", 10_000),
        ("page.css", "text/css", 100),
        ("playground.js.LEGAL.txt", "text/plain", 100),
        ("dashboard.js", "text/javascript", 100_000),
        ("dashboard.css", "text/css", 100),
    ] {
        let r = app
            .client
            .get(app.url(&format!("/playground/assets/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let body = r.bytes().await.unwrap();
        assert!(body.len() >= at_least, "{name}: {} bytes", body.len());
    }
    let script = app
        .client
        .get(app.url("/playground/assets/playground.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!script.contains("unpkg.com") && !script.contains("cdn.jsdelivr"));
    let dashboard = app.client.get(app.url("/dashboard")).send().await.unwrap();
    assert_eq!(dashboard.status(), 200);
    assert_eq!(dashboard.headers()["content-security-policy"], csp.as_str());
    let html = dashboard.text().await.unwrap();
    assert!(html.contains("/playground/assets/dashboard.js") && !html.contains("<script>"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    let missing = app
        .client
        .get(app.url("/playground/assets/../Cargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// The upload example, followed literally: its `byteSize` is the sample's, so the signed PUT of
/// `playground/samples/call.wav` with the returned headers is accepted, and the upload submits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_example_uploads_the_sample_as_written() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sample = std::fs::read(root.join("playground/samples/call.wav")).unwrap();
    let doc = voicegraph::http::playground::EXAMPLES
        .iter()
        .find(|(n, _)| *n == "02-create-upload.graphql")
        .unwrap()
        .1;
    assert!(
        doc.contains(&format!("{} bytes", sample.len())),
        "the comment names the size"
    );
    let app = TestApp::spawn().await;
    let up = app.gql_ok(doc, json!({})).await["createRecordingUpload"].clone();
    let mut put = app
        .client
        .put(up["uploadUrl"].as_str().unwrap())
        .body(sample);
    // What the comment's curl sends.
    put = put.header("Content-Type", "audio/wav");
    for h in up["headers"].as_array().unwrap() {
        assert!(
            ["Content-Type", "Content-Length"].contains(&h["name"].as_str().unwrap()),
            "the example's curl sends every header the URL needs: {h}"
        );
    }
    let r = put.send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let submit = voicegraph::http::playground::EXAMPLES
        .iter()
        .find(|(n, _)| *n == "03-submit-uploaded.graphql")
        .unwrap()
        .1;
    let vars = variables(
        submit,
        &[(
            "<RECORDING_KEY>",
            up["recordingKey"].as_str().unwrap().to_string(),
        )],
    );
    let d = app.gql_ok(submit, vars).await;
    assert_eq!(d["submitCall"]["call"]["status"], "QUEUED", "{d}");
}
