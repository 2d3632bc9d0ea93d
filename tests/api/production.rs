//! The production stack in one process: Postgres, SQS (with its dead-letter queue), SNS with an
//! SQS subscription read by the realtime relay, Redis fan-out and S3 — all real servers (AWS
//! through the emulator). Submit by presigned S3 upload, watch the events over WebSocket, query.

use std::time::Duration;

use serde_json::json;
use voicegraph::startup::Roles;

use crate::backends::ProductionStack;
use crate::helpers::*;
use crate::require;

async fn production_app(stack: &ProductionStack) -> TestApp {
    // Production does not migrate at start-up: `voicegraph migrate` does, as a deploy step.
    let settings = {
        let mut l = voicegraph::config::Layers::default();
        l.set("database_url", stack.database_url.clone());
        l.settings().unwrap()
    };
    let metrics = voicegraph::http::metrics::Metrics::new();
    let db = voicegraph::wiring::connect(&settings, &metrics)
        .await
        .unwrap();
    voicegraph::wiring::migrate(&db).await.unwrap();
    TestApp::spawn_with(Roles::ALL, |l| {
        for (k, v) in stack.vars() {
            l.set(k, v);
        }
        l.set("job_visibility_secs", "10");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_stack_runs_the_whole_flow() {
    let stack = require!(ProductionStack::create(None, 3, 10).await);
    let app = production_app(&stack).await;
    let ready: serde_json::Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true, "{ready}");

    let mut sub = app
        .subscribe(
            ADMIN_KEY,
            "subscription { callEvents { kind cursor callId call { status } } }",
            json!({}),
        )
        .await;
    let audio = short_call();
    let up = app
        .gql_ok(
            "mutation($n: Int!) { createRecordingUpload(input: {contentType: \"audio/wav\", byteSize: $n}) { recordingKey uploadUrl headers { name value } } }",
            json!({ "n": audio.len() }),
        )
        .await["createRecordingUpload"]
        .clone();
    let url = up["uploadUrl"].as_str().unwrap();
    assert!(url.contains(&stack.bucket), "a presigned S3 URL: {url}");
    let mut put = app.client.put(url).body(audio.clone());
    for h in up["headers"].as_array().unwrap() {
        put = put.header(h["name"].as_str().unwrap(), h["value"].as_str().unwrap());
    }
    let put = put.send().await.unwrap();
    assert!(put.status().is_success(), "{:?}", put.text().await);
    let d = app
        .gql_ok("mutation($k: String!) { submitCall(input: {recordingKey: $k, tags: [\"prod\"]}) { call { id } } }", json!({ "k": up["recordingKey"] }))
        .await;
    let id = d["submitCall"]["call"]["id"].as_str().unwrap().to_string();

    let mut kinds = Vec::new();
    while kinds.last().map(String::as_str) != Some("COMPLETED") {
        let e = sub.next_data(Duration::from_secs(60)).await["callEvents"].clone();
        assert_eq!(e["callId"], id.as_str());
        kinds.push(e["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, ["SUBMITTED", "PROCESSING", "COMPLETED"]);

    let c = app
        .gql_ok("query($id: ID!) { call(id: $id) { status durationMs recording { url } resultUrl metrics { interruptions } transcript { segments { speaker } } } }", json!({ "id": id }))
        .await["call"]
        .clone();
    assert_eq!(c["status"], "COMPLETED");
    assert_eq!(c["durationMs"], 2000);
    assert_eq!(c["metrics"]["interruptions"], 1);
    let got = app
        .client
        .get(c["recording"]["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        got.as_ref(),
        audio.as_slice(),
        "the presigned GET serves the recording"
    );
    let result: serde_json::Value = app
        .client
        .get(c["resultUrl"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(result["duration_ms"], 2000);

    // Production hides introspection: the schema is not described.
    let intro = app.gql("{ __schema { types { name } } }", json!({})).await;
    assert!(intro["data"]["__schema"]["types"].is_null(), "{intro}");
    let t = app
        .gql("{ __type(name: \"Call\") { fields { name } } }", json!({}))
        .await;
    assert!(t["data"]["__type"].is_null(), "{t}");
}
