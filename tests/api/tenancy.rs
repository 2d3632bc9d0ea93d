//! Tenant isolation as an attacker would probe it: several tenants with calls and keys of every
//! role; every root field of the schema tried by every caller with every id of every other
//! tenant. Nothing of another tenant may show, and every refusal is `NOT_FOUND` or `FORBIDDEN`
//! (never `INTERNAL`). Also: the README's permission table is the one the services check.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

#[test]
fn the_readme_permission_table_is_the_one_the_services_check() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (start, end) = ("<!-- permissions:start -->\n", "<!-- permissions:end -->");
    let a = readme.find(start).expect("start marker") + start.len();
    let b = readme.find(end).expect("end marker");
    let table = voicegraph::services::auth::permission_table();
    if std::env::var("VOICEGRAPH_UPDATE_README").is_ok() {
        std::fs::write(&path, format!("{}{}{}", &readme[..a], table, &readme[b..])).unwrap();
        return;
    }
    assert_eq!(
        &readme[a..b],
        table,
        "the README's permission table is stale: run `VOICEGRAPH_UPDATE_README=1 cargo test --test api tenancy::the_readme`"
    );
}

const ROLES: [&str; 4] = ["ADMIN", "INTEGRATOR", "ANALYST", "VIEWER"];

/// What one tenant owns, and the strings that would give it away.
struct Tenant {
    n: usize,
    id: String,
    keys: Vec<(String, String, String)>, // (role, key id, secret)
    calls: Vec<String>,
    upload_key: String,
    recording_url: String,
    category: String,
    webhook: String,
    delivery: String,
}

impl Tenant {
    fn markers(&self) -> Vec<String> {
        let mut m = vec![
            self.id.clone(),
            format!("t{}-call", self.n),
            format!("tenant-t{}", self.n),
            format!("owner-t{}", self.n),
            self.upload_key.clone(),
            self.category.clone(),
            format!("t{}-category", self.n),
            self.webhook.clone(),
            self.delivery.clone(),
            format!("t{}-hook", self.n),
        ];
        m.extend(self.calls.iter().cloned());
        m.extend(self.keys.iter().map(|(_, id, _)| id.clone()));
        m
    }
    fn secret(&self, role: &str) -> &str {
        &self.keys.iter().find(|(r, _, _)| r == role).unwrap().2
    }
}

/// Tries operations as one caller and checks each answer.
struct Probe<'a> {
    app: &'a TestApp,
    tried: usize,
    refusals: HashMap<String, usize>,
    covered: BTreeSet<String>,
}

impl Probe<'_> {
    /// Runs `query` as `key`; the answer must not mention anything of `others`, and its errors
    /// must all be NOT_FOUND or FORBIDDEN (or BAD_USER_INPUT for inputs refused whatever the
    /// tenant). Records which root field was exercised.
    async fn check(
        &mut self,
        key: &str,
        root: &str,
        query: &str,
        vars: Value,
        others: &[String],
    ) -> Value {
        self.covered.insert(root.to_string());
        self.tried += 1;
        let (status, body) = self.app.gql_as(Some(key), query, vars.clone()).await;
        let text = body.to_string();
        for m in others {
            assert!(
                !text.contains(m.as_str()),
                "{root} leaked {m}: {query} {vars} -> {text}"
            );
        }
        assert!(status.is_success(), "{root}: {status} {text}");
        for e in body["errors"].as_array().into_iter().flatten() {
            let code = e["extensions"]["code"]
                .as_str()
                .unwrap_or("none")
                .to_string();
            assert!(
                ["NOT_FOUND", "FORBIDDEN"].contains(&code.as_str()),
                "{root}: refused with {code}: {query} {vars} -> {text}"
            );
            *self.refusals.entry(code).or_default() += 1;
        }
        body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_operation_reaches_another_tenant() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("error")
        .try_init();
    let app = TestApp::spawn().await;
    let mut tenants = Vec::new();
    for n in 0..3 {
        let id = app
            .gql_ok(
                "mutation($n: String!) { createTenant(input: {name: $n}) { tenant { id } } }",
                json!({ "n": format!("tenant {n}") }),
            )
            .await["createTenant"]["tenant"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let mut keys = Vec::new();
        for role in ROLES {
            let d = app
                .gql_ok(
                    "mutation($t: ID!, $r: Role!) { createApiKey(input: {tenantId: $t, role: $r, name: \"k\"}) { secret apiKey { id } } }",
                    json!({ "t": id, "r": role }),
                )
                .await;
            keys.push((
                role.to_string(),
                d["createApiKey"]["apiKey"]["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                d["createApiKey"]["secret"].as_str().unwrap().to_string(),
            ));
        }
        let integrator = keys[1].2.clone();
        let category = app
            .gql_as(
                Some(&keys[0].2),
                "mutation($n: String!) { createCategory(input: {name: $n, keywords: [\"hello\", \"tone\"]}) { id } }",
                json!({ "n": format!("t{n}-category") }),
            )
            .await
            .1["data"]["createCategory"]["id"]
            .as_str()
            .expect("a category")
            .to_string();
        // An endpoint that takes every event (nothing listens there: its deliveries retry).
        let webhook = app
            .gql_as(
                Some(&keys[0].2),
                "mutation($u: String!) { createWebhook(input: {url: $u}) { webhook { id } } }",
                json!({ "u": format!("http://127.0.0.1:9/t{n}-hook") }),
            )
            .await
            .1["data"]["createWebhook"]["webhook"]["id"]
            .as_str()
            .expect("a webhook")
            .to_string();
        let mut calls = Vec::new();
        for i in 0..2 {
            let (status, body) = app
                .submit(
                    &integrator,
                    short_call(),
                    "audio/wav",
                    json!({ "externalId": format!("t{n}-call-{i}"), "tags": [format!("tenant-t{n}")], "metadata": { "owner": format!("owner-t{n}") } }),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            calls.push(
                body["data"]["submitCall"]["call"]["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        let (_, up) = app
            .gql_as(
                Some(&integrator),
                "mutation { createRecordingUpload(input: {contentType: \"audio/wav\", byteSize: 100}) { recordingKey } }",
                json!({}),
            )
            .await;
        tenants.push(Tenant {
            n,
            id,
            keys,
            calls,
            upload_key: up["data"]["createRecordingUpload"]["recordingKey"]
                .as_str()
                .unwrap()
                .to_string(),
            recording_url: String::new(),
            category,
            webhook,
            delivery: String::new(),
        });
    }
    for t in &mut tenants {
        for c in &t.calls {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let (_, d) = app
                    .gql_as(
                        Some(t.secret("ADMIN")),
                        "query($id: ID!) { call(id: $id) { status } }",
                        json!({ "id": c }),
                    )
                    .await;
                if d["data"]["call"]["status"] == "COMPLETED" {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{c}: {d}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let (_, d) = app
            .gql_as(
                Some(t.secret("ADMIN")),
                "query($id: ID!) { call(id: $id) { recording { url } } }",
                json!({ "id": t.calls[0] }),
            )
            .await;
        t.recording_url = d["data"]["call"]["recording"]["url"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, d) = app
            .gql_as(
                Some(t.secret("ADMIN")),
                "query($w: ID!) { webhookDeliveries(webhookId: $w, first: 1) { nodes { id } } }",
                json!({ "w": t.webhook }),
            )
            .await;
        t.delivery = d["data"]["webhookDeliveries"]["nodes"][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("a delivery: {d}"))
            .to_string();
        // A tagged call has one more kind of event.
        app.gql_as(
            Some(t.secret("ADMIN")),
            "mutation($id: ID!) { tagCall(id: $id, tags: [\"x\"]) { id } }",
            json!({ "id": t.calls[0] }),
        )
        .await;
    }

    let mut probe = Probe {
        app: &app,
        tried: 0,
        refusals: HashMap::new(),
        covered: BTreeSet::new(),
    };
    let mut ids_tried = 0;
    for t in &tenants {
        for (role, _, key) in &t.keys {
            for v in tenants.iter().filter(|v| v.n != t.n) {
                let others = v.markers();
                // Queries over everything the caller may see.
                probe
                    .check(key, "calls", "{ calls(first: 100) { totalCount nodes { id externalId tags metadata events { kind analysisId call { id } } transcript { segments { speaker } } categories { name category { id name } segments { index } } quotes { text } analyses { id status } } } }", json!({}), &others)
                    .await;
                probe
                    .check(
                        key,
                        "categories",
                        "{ categories { id name keywords } }",
                        json!({}),
                        &others,
                    )
                    .await;
                let d = probe
                    .check(key, "updateCategory", "mutation($id: ID!) { updateCategory(id: $id, input: {name: \"pwned\"}) { id name } }", json!({ "id": v.category }), &others)
                    .await;
                assert!(
                    d["data"].is_null() || d["data"]["updateCategory"].is_null(),
                    "{d}"
                );
                probe
                    .check(
                        key,
                        "deleteCategory",
                        "mutation($id: ID!) { deleteCategory(id: $id) { id } }",
                        json!({ "id": v.category }),
                        &others,
                    )
                    .await;
                ids_tried += 2;
                // Webhooks: the other tenant's endpoint and delivery, by id, in every field.
                probe
                    .check(
                        key,
                        "webhooks",
                        "{ webhooks { id url description } }",
                        json!({}),
                        &others,
                    )
                    .await;
                let by_id = json!({ "id": v.webhook });
                probe
                    .check(
                        key,
                        "webhook",
                        "query($id: ID!) { webhook(id: $id) { id url } }",
                        by_id.clone(),
                        &others,
                    )
                    .await;
                probe
                    .check(key, "webhookDeliveries", "query($id: ID!) { webhookDeliveries(webhookId: $id) { nodes { id callId payload attempts { error } } } }", by_id.clone(), &others)
                    .await;
                probe
                    .check(key, "updateWebhook", "mutation($id: ID!) { updateWebhook(id: $id, input: {url: \"http://127.0.0.1:9/pwned\"}) { id url } }", by_id.clone(), &others)
                    .await;
                probe
                    .check(key, "rotateWebhookSecret", "mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret webhook { id } } }", by_id.clone(), &others)
                    .await;
                probe
                    .check(
                        key,
                        "redeliverWebhook",
                        "mutation($id: ID!) { redeliverWebhook(deliveryId: $id) { id status } }",
                        json!({ "id": v.delivery }),
                        &others,
                    )
                    .await;
                probe
                    .check(
                        key,
                        "deleteWebhook",
                        "mutation($id: ID!) { deleteWebhook(id: $id) { id } }",
                        by_id,
                        &others,
                    )
                    .await;
                probe
                    .check(key, "createWebhook", "mutation($u: String!) { createWebhook(input: {url: $u}) { secret webhook { id url } } }", json!({ "u": format!("http://127.0.0.1:9/probe-{}-{role}-{}", t.n, v.n) }), &others)
                    .await;
                ids_tried += 5;
                // The redaction policy is the caller's tenant's own.
                probe
                    .check(
                        key,
                        "redactionPolicy",
                        "{ redactionPolicy { transcript audio deleteOriginal } }",
                        json!({}),
                        &others,
                    )
                    .await;
                probe
                    .check(key, "setRedactionPolicy", "mutation { setRedactionPolicy(input: {transcript: true, audio: false, deleteOriginal: false}) { transcript } }", json!({}), &others)
                    .await;
                probe
                    .check(key, "createCategory", "mutation($n: String!) { createCategory(input: {name: $n, keywords: [\"x\"]}) { id name } }", json!({ "n": format!("probe {} {role} {}", t.n, v.n) }), &others)
                    .await;
                probe
                    .check(key, "calls", "query($x: String) { calls(filter: {externalId: $x}) { totalCount nodes { id } } }", json!({ "x": format!("t{}-call-0", v.n) }), &others)
                    .await;
                probe
                    .check(
                        key,
                        "callStats",
                        "{ callStats { total talkTime { speaker } } }",
                        json!({}),
                        &others,
                    )
                    .await;
                probe
                    .check(
                        key,
                        "viewer",
                        "{ viewer { role tenant { id name } } }",
                        json!({}),
                        &others,
                    )
                    .await;
                probe
                    .check(
                        key,
                        "apiKeys",
                        "{ apiKeys { id tenantId name } }",
                        json!({}),
                        &others,
                    )
                    .await;
                probe
                    .check(
                        key,
                        "auditLog",
                        "{ auditLog(first: 100) { entries { tenantId target details actor { keyId } } } }",
                        json!({}),
                        &others,
                    )
                    .await;
                ids_tried += 1;
                probe
                    .check(
                        key,
                        "auditLog",
                        "query($t: ID) { auditLog(tenantId: $t) { entries { tenantId target details } } }",
                        json!({ "t": v.id }),
                        &others,
                    )
                    .await;
                // Every id of the other tenant, in every field that takes one.
                for id in &v.calls {
                    ids_tried += 1;
                    let vars = json!({ "id": id });
                    let d = probe
                        .check(
                            key,
                            "call",
                            "query($id: ID!) { call(id: $id) { id status events { kind } } }",
                            vars.clone(),
                            &others,
                        )
                        .await;
                    assert!(d["data"]["call"].is_null(), "{d}");
                    let d = probe
                        .check(
                            key,
                            "node",
                            "query($id: ID!) { node(id: $id) { id } }",
                            vars.clone(),
                            &others,
                        )
                        .await;
                    assert!(d["data"]["node"].is_null(), "{d}");
                    probe.check(key, "tagCall", "mutation($id: ID!) { tagCall(id: $id, tags: [\"pwned\"]) { id tags } }", vars.clone(), &others).await;
                    probe
                        .check(
                            key,
                            "reanalyzeCall",
                            "mutation($id: ID!) { reanalyzeCall(id: $id, analyzer: LOCAL) { id } }",
                            vars.clone(),
                            &others,
                        )
                        .await;
                    probe
                        .check(
                            key,
                            "retryCall",
                            "mutation($id: ID!) { retryCall(id: $id) { id } }",
                            vars.clone(),
                            &others,
                        )
                        .await;
                    probe
                        .check(
                            key,
                            "deleteCall",
                            "mutation($id: ID!) { deleteCall(id: $id) { deletedId } }",
                            vars.clone(),
                            &others,
                        )
                        .await;
                }
                for (_, key_id, _) in &v.keys {
                    ids_tried += 1;
                    probe
                        .check(
                            key,
                            "revokeApiKey",
                            "mutation($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }",
                            json!({ "id": key_id }),
                            &others,
                        )
                        .await;
                    let d = probe
                        .check(
                            key,
                            "node",
                            "query($id: ID!) { node(id: $id) { id } }",
                            json!({ "id": key_id }),
                            &others,
                        )
                        .await;
                    assert!(d["data"]["node"].is_null(), "{d}");
                }
                ids_tried += 1;
                probe.check(key, "createApiKey", "mutation($t: ID!) { createApiKey(input: {tenantId: $t, role: ADMIN, name: \"pwn\"}) { secret apiKey { id tenantId } } }", json!({ "t": v.id }), &others).await;
                probe
                    .check(
                        key,
                        "createTenant",
                        "mutation { createTenant(input: {name: \"pwn\"}) { tenant { id } } }",
                        json!({}),
                        &others,
                    )
                    .await;
                ids_tried += 1;
                probe.check(key, "submitCall", "mutation($k: String!) { submitCall(input: {recordingKey: $k}) { call { id } } }", json!({ "k": v.upload_key }), &others).await;
                probe.check(key, "createRecordingUpload", "mutation { createRecordingUpload(input: {contentType: \"audio/wav\", byteSize: 10}) { recordingKey } }", json!({}), &others).await;
                // A signed URL opens its own object only: the victim's key under this
                // tenant's signature is refused.
                let own_key = t
                    .recording_url
                    .split("/blobs/")
                    .nth(1)
                    .unwrap()
                    .split('?')
                    .next()
                    .unwrap();
                let victim_key = v
                    .recording_url
                    .split("/blobs/")
                    .nth(1)
                    .unwrap()
                    .split('?')
                    .next()
                    .unwrap();
                let forged = t.recording_url.replace(own_key, victim_key);
                let r = app.client.get(&forged).send().await.unwrap();
                assert_eq!(
                    r.status(),
                    403,
                    "{role}: a forged URL opened another tenant's recording"
                );
            }
            // Subscriptions: another tenant's call, and replays that would show others' events.
            let others: Vec<String> = tenants
                .iter()
                .filter(|v| v.n != t.n)
                .flat_map(|v| v.markers())
                .collect();
            let mut ws = Subscription::connect(&app.addr, "graphql-transport-ws").await;
            ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {key}") } })).await;
            assert_eq!(
                ws.recv(Duration::from_secs(5)).await.unwrap()["type"],
                "connection_ack"
            );
            let mut expected = 0;
            for v in tenants.iter().filter(|v| v.n != t.n) {
                for id in &v.calls {
                    expected += 1;
                    ws.send(json!({ "id": format!("u{expected}"), "type": "subscribe", "payload": { "query": "subscription($id: ID!) { callUpdated(id: $id) { kind callId } }", "variables": { "id": id } } })).await;
                    ws.send(json!({ "id": format!("f{expected}"), "type": "subscribe", "payload": { "query": "subscription($id: ID!) { callEvents(after: \"0\", filter: {callId: $id}) { kind callId } }", "variables": { "id": id } } })).await;
                }
            }
            ws.send(json!({ "id": "all", "type": "subscribe", "payload": { "query": "subscription { callEvents(after: \"0\") { kind callId call { id externalId tags } } }" } })).await;
            probe.covered.insert("callUpdated".into());
            probe.covered.insert("callEvents".into());
            let mut not_found = 0;
            let mut own_events = 0;
            let mut other_messages = Vec::new();
            // Until every answer expected has come (2 calls × SUBMITTED, PROCESSING, COMPLETED,
            // and one TAGGED, all of its own tenant), then a little longer for any extra one.
            let mut settle = Duration::from_secs(30);
            while let Some(msg) = ws.recv(settle).await {
                probe.tried += 1;
                let text = msg.to_string();
                for m in &others {
                    assert!(
                        !text.contains(m.as_str()),
                        "subscription leaked {m}: {text}"
                    );
                }
                if msg["type"] != "next" {
                    other_messages.push(text.clone());
                }
                if msg["type"] == "next" {
                    if let Some(code) = msg["payload"]["errors"][0]["extensions"]["code"].as_str() {
                        assert_eq!(code, "NOT_FOUND", "{text}");
                        not_found += 1;
                    } else {
                        assert_eq!(msg["id"], "all", "{text}");
                        own_events += 1;
                    }
                }
                if not_found == expected && own_events >= 7 {
                    settle = Duration::from_millis(300);
                }
            }
            assert_eq!(not_found, expected, "every foreign callUpdated refused");
            // 2 calls × (SUBMITTED, PROCESSING, COMPLETED) + 1 TAGGED, all of its own tenant.
            assert_eq!(own_events, 7, "{role} of t{}: {other_messages:?}", t.n);
        }
    }

    // Every root field of the schema was tried.
    let schema = app
        .gql_ok(
            "{ __schema { queryType { fields { name } } mutationType { fields { name } } subscriptionType { fields { name } } } }",
            json!({}),
        )
        .await;
    let mut roots = BTreeSet::new();
    for kind in ["queryType", "mutationType", "subscriptionType"] {
        for f in schema["__schema"][kind]["fields"].as_array().unwrap() {
            roots.insert(f["name"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        probe.covered,
        roots,
        "root fields of the schema this test does not try yet: {:?}",
        roots.difference(&probe.covered).collect::<Vec<_>>()
    );
    // Nothing changed hands: each tenant still has its calls, untagged by others, and no key
    // was made or revoked across tenants.
    for t in &tenants {
        let d = app
            .gql_as(
                Some(t.secret("ADMIN")),
                "{ calls { totalCount nodes { tags analyses { id } } } apiKeys { revokedAt } categories { id name } webhooks { id url previousSecretExpiresAt } }",
                json!({}),
            )
            .await
            .1;
        assert_eq!(d["data"]["calls"]["totalCount"], 2, "{d}");
        assert!(
            d["data"]["categories"]
                .as_array()
                .unwrap()
                .iter()
                .any(
                    |c| c["id"] == t.category.as_str() && c["name"] == format!("t{}-category", t.n)
                ),
            "its category is untouched: {d}"
        );
        assert!(
            d["data"]["calls"]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["analyses"].as_array().unwrap().len() == 1),
            "no call was re-analysed from another tenant: {d}"
        );
        assert!(!d.to_string().contains("pwned"), "{d}");
        assert!(
            d["data"]["webhooks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["id"] == t.webhook.as_str()
                    && w["url"] == format!("http://127.0.0.1:9/t{}-hook", t.n)
                    && w["previousSecretExpiresAt"].is_null()),
            "its webhook is untouched (not updated, rotated or deleted): {d}"
        );
        assert_eq!(d["data"]["apiKeys"].as_array().unwrap().len(), 4, "{d}");
        assert!(
            d["data"]["apiKeys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["revokedAt"].is_null()),
            "{d}"
        );
    }
    println!(
        "tenancy: {} tenants × {} keys each, {} requests and messages, {} foreign ids tried, refusals {:?}, 0 leaks",
        tenants.len(),
        ROLES.len(),
        probe.tried,
        ids_tried,
        probe.refusals
    );
}
