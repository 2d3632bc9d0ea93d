//! Categories, quotes pointing at segments, and re-analysis keeping every analysis: through the
//! GraphQL API, with the local analyser (Gemini's side is in `gemini_analysis`).

use std::time::Duration;

use serde_json::{json, Value};
use voicegraph::startup::Roles;

use crate::helpers::{short_call, TestApp, ADMIN_KEY};

const TRANSCRIPT: &str = "agent: Thanks for calling, happy to help. I will send you a corrected invoice today.\ncustomer: The invoice is wrong, this is terrible.";

const CALL: &str = "query($id: ID!) { call(id: $id) {
    status error summary completedAt
    transcript { segments { index speaker text } }
    categories { name category { id name } segments { index speaker startMs endMs } }
    quotes { kind text segments { index speaker } }
    actionItems issues intent outcome
    analyses { id analyzer model promptVersion status error attempts current createdAt startedAt completedAt usage { totalTokens } resultDownload { url } }
    events(first: 100) { kind status analysisId }
} }";

async fn call(app: &TestApp, id: &str) -> Value {
    app.gql_ok(CALL, json!({ "id": id })).await["call"].clone()
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("none")
}

async fn create_category(app: &TestApp, input: Value) -> Value {
    app.gql(
        "mutation($i: CreateCategoryInput!) { createCategory(input: $i) { id name instructions keywords createdAt updatedAt } }",
        json!({ "i": input }),
    )
    .await
}

async fn key_with_role(app: &TestApp, role: &str) -> String {
    let tenant = app.gql_ok("{ viewer { tenant { id } } }", json!({})).await["viewer"]["tenant"]
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.gql_ok(
        "mutation($t: ID!, $r: Role!) { createApiKey(input: {tenantId: $t, role: $r, name: \"k\"}) { secret } }",
        json!({ "t": tenant, "r": role }),
    )
    .await["createApiKey"]["secret"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until the call's events include `n` of `kind` (events are listed once sequenced).
async fn wait_events(app: &TestApp, id: &str, kind: &str, n: usize) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = call(app, id).await;
        let seen = c["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .count();
        if seen >= n {
            return c;
        }
        assert!(tokio::time::Instant::now() < deadline, "{kind} × {n}: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn categories_are_created_changed_and_deleted_with_their_inputs_checked() {
    let app = TestApp::spawn().await;
    let created = create_category(
        &app,
        json!({ "name": " Billing ", "instructions": "The caller disputes a charge.", "keywords": ["invoice", "  refund  ", "Refund"] }),
    )
    .await;
    let billing = created["data"]["createCategory"].clone();
    assert_eq!(billing["name"], "Billing", "{created}");
    assert_eq!(billing["keywords"], json!(["invoice", "refund"]));
    assert_eq!(billing["instructions"], "The caller disputes a charge.");
    let id = billing["id"].as_str().unwrap().to_string();

    // Names are unique whatever their case; every field is bounded.
    let dup = create_category(&app, json!({ "name": "BILLING", "keywords": ["x"] })).await;
    assert_eq!(code(&dup), "CONFLICT", "{dup}");
    for bad in [
        json!({ "name": "", "keywords": ["x"] }),
        json!({ "name": "Nothing to match" }),
        json!({ "name": "Empty", "keywords": [], "instructions": "   " }),
        json!({ "name": "x".repeat(101), "keywords": ["x"] }),
        json!({ "name": "Long", "instructions": "y".repeat(1001) }),
        json!({ "name": "Many", "keywords": (0..51).map(|i| format!("k{i}")).collect::<Vec<_>>() }),
        json!({ "name": "Control", "keywords": ["a\u{7}b"] }),
    ] {
        let r = create_category(&app, bad.clone()).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{bad} -> {r}");
    }

    // Analysts and admins manage them; every role reads them.
    for (role, allowed) in [("ANALYST", true), ("INTEGRATOR", false), ("VIEWER", false)] {
        let key = key_with_role(&app, role).await;
        let (_, r) = app
            .gql_as(
                Some(&key),
                "mutation($n: String!) { createCategory(input: {name: $n, keywords: [\"k\"]}) { id } }",
                json!({ "n": format!("by {role}") }),
            )
            .await;
        if allowed {
            assert!(r["errors"].is_null(), "{role}: {r}");
        } else {
            assert_eq!(code(&r), "FORBIDDEN", "{role}: {r}");
        }
        let (_, r) = app
            .gql_as(Some(&key), "{ categories { name } }", json!({}))
            .await;
        assert!(r["errors"].is_null(), "{role}: {r}");
    }

    let r = app
        .gql(
            "mutation($id: ID!) { updateCategory(id: $id, input: {name: \"Invoices\", keywords: [\"invoice\", \"bill\"]}) { name instructions keywords } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        r["data"]["updateCategory"],
        json!({ "name": "Invoices", "instructions": "The caller disputes a charge.", "keywords": ["invoice", "bill"] }),
        "{r}"
    );
    // Taking another category's name, or leaving nothing to match, is refused.
    let r = app
        .gql(
            "mutation($id: ID!) { updateCategory(id: $id, input: {name: \"by analyst\"}) { name } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(code(&r), "CONFLICT", "{r}");
    let r = app
        .gql(
            "mutation($id: ID!) { updateCategory(id: $id, input: {instructions: \"\", keywords: []}) { name } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    let names: Vec<String> = app.gql_ok("{ categories { name } }", json!({})).await["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["Invoices", "by ANALYST"]);

    let r = app
        .gql(
            "mutation($id: ID!) { deleteCategory(id: $id) { name } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(r["data"]["deleteCategory"]["name"], "Invoices", "{r}");
    let r = app
        .gql(
            "mutation($id: ID!) { deleteCategory(id: $id) { name } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
    let r = app
        .gql(
            "mutation { updateCategory(id: \"nope\", input: {name: \"x\"}) { name } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_and_quotes_point_at_segments_and_every_analysis_is_kept() {
    let app = TestApp::spawn().await;
    let billing = create_category(&app, json!({ "name": "Billing", "keywords": ["invoice"] }))
        .await["data"]["createCategory"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = app
        .submit_ok(
            short_call(),
            json!({ "transcript": { "text": TRANSCRIPT } }),
        )
        .await;
    app.wait_status(&id, "COMPLETED", 30).await;
    let first = wait_events(&app, &id, "COMPLETED", 1).await;
    let segments = first["transcript"]["segments"].as_array().unwrap().clone();
    assert_eq!(segments.len(), 2, "{first}");

    // The category matched both segments that say "invoice", each given by its index.
    assert_eq!(first["categories"].as_array().unwrap().len(), 1, "{first}");
    let m = &first["categories"][0];
    assert_eq!(m["name"], "Billing");
    assert_eq!(m["category"]["id"], billing.as_str());
    assert_eq!(
        m["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["index"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 1],
        "{m}"
    );
    assert!(m["segments"][0]["endMs"].as_i64() > m["segments"][0]["startMs"].as_i64());
    // The action item quotes the agent's segment.
    let action = first["quotes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["kind"] == "ACTION_ITEM")
        .expect("an action item")
        .clone();
    assert!(
        action["text"].as_str().unwrap().contains("I will send"),
        "{action}"
    );
    assert_eq!(
        action["segments"],
        json!([{ "index": 0, "speaker": "agent" }])
    );
    assert_eq!(first["actionItems"][0], action["text"]);

    let analyses = first["analyses"].as_array().unwrap().clone();
    assert_eq!(analyses.len(), 1, "{first}");
    let a0 = analyses[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        (
            &analyses[0]["analyzer"],
            &analyses[0]["status"],
            &analyses[0]["current"],
            &analyses[0]["attempts"]
        ),
        (
            &json!("LOCAL"),
            &json!("COMPLETED"),
            &json!(true),
            &json!(1)
        )
    );
    assert!(analyses[0]["model"].is_null() && analyses[0]["usage"].is_null());
    assert!(analyses[0]["startedAt"].is_string() && analyses[0]["completedAt"].is_string());

    // A new category, then a re-analysis: queued, the results kept meanwhile.
    create_category(
        &app,
        json!({ "name": "Complaint", "keywords": ["terrible"] }),
    )
    .await;
    let r = app
        .gql(
            "mutation($id: ID!) { reanalyzeCall(id: $id, analyzer: LOCAL) { status summary transcript { segments { index } } categories { name } } }",
            json!({ "id": id }),
        )
        .await;
    let queued = &r["data"]["reanalyzeCall"];
    assert_eq!(queued["status"], "QUEUED", "{r}");
    assert_eq!(queued["summary"], first["summary"], "{r}");
    assert_eq!(
        queued["transcript"]["segments"].as_array().unwrap().len(),
        2
    );
    assert_eq!(queued["categories"], json!([{ "name": "Billing" }]));
    app.wait_status(&id, "COMPLETED", 30).await;
    let second = wait_events(&app, &id, "COMPLETED", 2).await;
    let names: Vec<&str> = second["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Billing", "Complaint"], "{second}");
    let complaint = second["categories"][1]["segments"].as_array().unwrap();
    assert_eq!(complaint.len(), 1);
    assert_eq!(complaint[0]["speaker"], "customer");

    let analyses = second["analyses"].as_array().unwrap().clone();
    assert_eq!(analyses.len(), 2, "{second}");
    assert_eq!(analyses[0]["id"], a0.as_str());
    let a1 = analyses[1]["id"].as_str().unwrap().to_string();
    assert_eq!(
        analyses
            .iter()
            .map(|a| (a["status"].clone(), a["current"].clone()))
            .collect::<Vec<_>>(),
        vec![
            (json!("COMPLETED"), json!(false)),
            (json!("COMPLETED"), json!(true))
        ]
    );
    // Events report each analysis as it runs.
    let of = |kind: &str| -> Vec<String> {
        second["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| e["analysisId"].as_str().unwrap_or("-").to_string())
            .collect()
    };
    assert_eq!(of("SUBMITTED"), vec![a0.clone()]);
    assert_eq!(of("REANALYZED"), vec![a1.clone()]);
    assert_eq!(of("PROCESSING"), vec![a0.clone(), a1.clone()]);
    assert_eq!(of("COMPLETED"), vec![a0.clone(), a1.clone()]);
    // Each analysis keeps its own results document.
    for (a, matched) in [(&analyses[0], 1), (&analyses[1], 2)] {
        let doc: Value = app
            .client
            .get(a["resultDownload"]["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["schemaVersion"], 2);
        assert_eq!(doc["analysisId"], a["id"]);
        assert_eq!(
            doc["categories"].as_array().unwrap().len(),
            matched,
            "{doc}"
        );
        assert_eq!(doc["actionItems"][0]["segments"], json!([0]), "{doc}");
    }

    // Gemini is refused on a deployment without a key; a missing call is NOT_FOUND.
    let r = app
        .gql(
            "mutation($id: ID!) { reanalyzeCall(id: $id, analyzer: GEMINI) { status } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    let r = app
        .gql(
            "mutation($id: ID!) { reanalyzeCall(id: $id) { status } }",
            json!({ "id": uuid::Uuid::new_v4().to_string() }),
        )
        .await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");

    // A deleted category leaves its matches, by name.
    app.gql_ok(
        "mutation($id: ID!) { deleteCategory(id: $id) { id } }",
        json!({ "id": billing }),
    )
    .await;
    let after = call(&app, &id).await;
    assert_eq!(after["categories"][0]["name"], "Billing");
    assert!(after["categories"][0]["category"].is_null(), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reanalysis_keeps_the_results_and_deletion_takes_every_version() {
    let app = TestApp::spawn().await;
    let id = app
        .submit_ok(
            short_call(),
            json!({ "transcript": { "text": TRANSCRIPT } }),
        )
        .await;
    app.wait_status(&id, "COMPLETED", 30).await;
    let first = wait_events(&app, &id, "COMPLETED", 1).await;
    let tenant: uuid::Uuid = app.gql_ok("{ viewer { tenant { id } } }", json!({})).await["viewer"]
        ["tenant"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let call_id: uuid::Uuid = id.parse().unwrap();
    let stored = app
        .state
        .store
        .get_call(tenant, call_id)
        .await
        .unwrap()
        .unwrap();
    // The recording vanishes from the blob store: the re-analysis cannot succeed.
    app.state
        .blobs
        .delete(stored.recording_key.as_deref().unwrap())
        .await
        .unwrap();
    app.gql_ok(
        "mutation($id: ID!) { reanalyzeCall(id: $id) { id } }",
        json!({ "id": id }),
    )
    .await;
    app.wait_status(&id, "FAILED", 30).await;
    let failed = wait_events(&app, &id, "FAILED", 1).await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("missing from the blob store"),
        "{failed}"
    );
    for field in [
        "summary",
        "completedAt",
        "transcript",
        "categories",
        "quotes",
        "actionItems",
    ] {
        assert_eq!(
            failed[field], first[field],
            "{field} is the first analysis's"
        );
    }
    let analyses = failed["analyses"].as_array().unwrap();
    assert_eq!(analyses.len(), 2);
    assert_eq!(analyses[0]["status"], "COMPLETED");
    assert_eq!(analyses[1]["status"], "FAILED");
    assert_eq!(analyses[1]["error"], failed["error"]);
    assert!(analyses[1]["resultDownload"].is_null());

    // Deleting the call removes every analysis's documents.
    let result_key = stored.result_key.clone().unwrap();
    assert!(app.state.blobs.get(&result_key).await.unwrap().is_some());
    app.gql_ok(
        "mutation($id: ID!) { deleteCall(id: $id) { deletedId } }",
        json!({ "id": id }),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.state.blobs.get(&result_key).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{result_key} outlived its call"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(app
        .state
        .store
        .analyses_of_calls(tenant, &[call_id])
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_reanalysed_only_once_its_analysis_ends() {
    // No worker: the submitted call stays QUEUED.
    let app = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: false,
            relay: true,
        },
        |_| {},
    )
    .await;
    let id = app.submit_ok(short_call(), json!({})).await;
    let (_, r) = app
        .gql_as(
            Some(ADMIN_KEY),
            "mutation($id: ID!) { reanalyzeCall(id: $id, analyzer: LOCAL) { status } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(code(&r), "CONFLICT", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("queued"),
        "{r}"
    );
    let viewer = key_with_role(&app, "VIEWER").await;
    let (_, r) = app
        .gql_as(
            Some(&viewer),
            "mutation($id: ID!) { reanalyzeCall(id: $id) { status } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
}
