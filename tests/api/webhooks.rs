//! Webhooks end to end: a local receiver, deliveries signed as Standard Webhooks says, retried
//! through the receiver's downtime, dead-lettered when the retries run out and revived by
//! `redeliverWebhook`, every attempt in `webhookDeliveries`; the tenant's own and its admins'
//! only; private targets refused where they are not allowed; and the relay holding no database
//! transaction while an endpoint takes its time. (`tests/node/webhooks.test.mjs` verifies the
//! signatures with the `standardwebhooks` package, an implementation independent of ours.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use voicegraph::domain::webhooks::sign;
use voicegraph::startup::Roles;

use crate::helpers::{short_call, TestApp, ADMIN_KEY};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    answered: u16,
}

/// How the receiver answers: the status for the next `n` requests (then 204), and whether it
/// holds each request until the test opens the gate.
#[derive(Default)]
struct Behaviour {
    fail_next: usize,
    fail_status: u16,
    always_fail: bool,
    held: bool,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// Requests that have arrived and are not answered yet.
    holding: Arc<std::sync::atomic::AtomicUsize>,
    gate: Arc<tokio::sync::Notify>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let (status, held) = {
        let mut b = r.behaviour.lock().unwrap();
        let status = if b.always_fail || b.fail_next > 0 {
            b.fail_next = b.fail_next.saturating_sub(1);
            b.fail_status
        } else {
            204
        };
        (status, b.held)
    };
    if held {
        let opened = r.gate.notified();
        tokio::pin!(opened);
        opened.as_mut().enable();
        r.holding.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if r.behaviour.lock().unwrap().held {
            opened.await;
        }
        r.holding.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    r.got.lock().unwrap().push(Received {
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        body,
        answered: status,
    });
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    async fn start() -> (Self, String) {
        let r = Receiver::default();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, url)
    }

    /// Answers every held request, and holds no more.
    fn open_gate(&self) {
        self.behaviour.lock().unwrap().held = false;
        self.gate.notify_waiters();
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was received (or panics after `secs`).
    async fn wait(
        &self,
        secs: u64,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.got();
            if done(&got) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not after {secs}s; received {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn accepted(got: &[Received]) -> Vec<&Received> {
    got.iter().filter(|r| r.answered < 300).collect()
}

async fn spawn(base_ms: u64, attempts: u32) -> TestApp {
    TestApp::spawn_with(Roles::ALL, |l| {
        l.set("webhook_retry_base_ms", base_ms.to_string())
            .set("webhook_max_attempts", attempts.to_string());
    })
    .await
}

async fn create_webhook(app: &TestApp, key: &str, url: &str, events: Value) -> (String, String) {
    let (_, body) = app
        .gql_as(
            Some(key),
            "mutation($u: String!, $e: [CallEventKind!]) { createWebhook(input: {url: $u, events: $e, description: \"crm\"}) { secret webhook { id url events description } } }",
            json!({ "u": url, "e": events }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body:#}");
    let w = &body["data"]["createWebhook"];
    (
        w["webhook"]["id"].as_str().unwrap().to_string(),
        w["secret"].as_str().unwrap().to_string(),
    )
}

const DELIVERIES: &str = "query($w: ID!, $f: WebhookDeliveryFilter) { webhookDeliveries(webhookId: $w, filter: $f, first: 100) { hasNextPage nodes { id messageId eventKind callId status attemptCount nextAttemptAt lastResponseStatus deliveredAt payload attempts { succeeded responseStatus latencyMs error nextRetryAt } } } }";

async fn deliveries(app: &TestApp, webhook: &str) -> Vec<Value> {
    app.gql_ok(DELIVERIES, json!({ "w": webhook })).await["webhookDeliveries"]["nodes"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn deliveries_are_signed_retried_through_downtime_and_logged() {
    let (receiver, url) = Receiver::start().await;
    // The endpoint is down for its first two requests.
    {
        let mut b = receiver.behaviour.lock().unwrap();
        b.fail_next = 2;
        b.fail_status = 503;
    }
    let app = spawn(100, 5).await;
    let (webhook, secret) = create_webhook(&app, ADMIN_KEY, &url, json!(null)).await;
    assert!(secret.starts_with("whsec_"));
    let call = app.submit_ok(short_call(), json!({})).await;
    app.wait_status(&call, "COMPLETED", 30).await;
    let got = receiver
        .wait(30, "three events accepted", |g| accepted(g).len() >= 3)
        .await;

    // Each request carries its signature over id, timestamp and body, with the secret.
    for r in &got {
        let ts: i64 = r.timestamp.parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
        assert!(r.id.starts_with("msg_"), "{r:?}");
        assert_eq!(r.signature, sign(&secret, &r.id, ts, &r.body), "{r:?}");
    }
    // The failed requests were retried under the same id, with the same body.
    let failed: Vec<&Received> = got.iter().filter(|r| r.answered == 503).collect();
    assert_eq!(failed.len(), 2);
    for f in &failed {
        let retry = accepted(&got)
            .into_iter()
            .find(|r| r.id == f.id)
            .expect("a failed delivery is retried until accepted");
        assert_eq!(retry.body, f.body);
    }
    // One message per event, each with the event and the call's summary.
    let bodies: HashMap<String, Value> = accepted(&got)
        .into_iter()
        .map(|r| {
            let v: Value = serde_json::from_str(&r.body).unwrap();
            (v["type"].as_str().unwrap().to_string(), v)
        })
        .collect();
    for kind in ["call.submitted", "call.processing", "call.completed"] {
        let v = bodies
            .get(kind)
            .unwrap_or_else(|| panic!("no {kind}: {bodies:#?}"));
        assert_eq!(v["data"]["call"]["id"], call.as_str(), "{v:#}");
        assert_eq!(v["data"]["event"]["callId"], call.as_str());
    }
    let completed = &bodies["call.completed"]["data"];
    assert_eq!(completed["event"]["status"], "COMPLETED");
    assert!(completed["call"]["summary"].is_string(), "{completed:#}");
    assert!(completed["call"]["durationMs"].is_number());

    // The log shows every attempt (an attempt is recorded once its answer is in: shortly
    // after the endpoint has answered).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = deliveries(&app, &webhook).await;
        if log.len() == 3 && log.iter().all(|d| d["status"] == "DELIVERED") {
            break log;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut retried = 0;
    for d in &log {
        assert_eq!(d["status"], "DELIVERED", "{d:#}");
        assert_eq!(d["callId"], call.as_str());
        assert!(d["deliveredAt"].is_string());
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.len() as i64, d["attemptCount"].as_i64().unwrap());
        let (last, before) = attempts.split_last().unwrap();
        assert_eq!(last["succeeded"], true);
        assert_eq!(last["responseStatus"], 204);
        assert!(last["nextRetryAt"].is_null());
        for a in before {
            retried += 1;
            assert_eq!(a["succeeded"], false);
            assert_eq!(a["responseStatus"], 503);
            assert_eq!(a["error"], "the endpoint answered 503");
            assert!(a["nextRetryAt"].is_string(), "{a:#}");
        }
    }
    assert_eq!(retried, 2);

    // A redelivery sends the same message again, and is logged.
    let first = &log[0];
    let before = receiver.got().len();
    let r = app
        .gql_ok(
            "mutation($d: ID!) { redeliverWebhook(deliveryId: $d) { id status } }",
            json!({ "d": first["id"] }),
        )
        .await;
    assert_eq!(r["redeliverWebhook"]["status"], "PENDING");
    let got = receiver
        .wait(10, "the redelivery", |g| g.len() > before)
        .await;
    let again = got.last().unwrap();
    assert_eq!(again.id, first["messageId"].as_str().unwrap());
    assert_eq!(Some(again.body.as_str()), first["payload"].as_str());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = deliveries(&app, &webhook).await;
        let d = log.iter().find(|d| d["id"] == first["id"]).unwrap();
        if d["status"] == "DELIVERED"
            && d["attemptCount"].as_i64() == first["attemptCount"].as_i64().map(|n| n + 1)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{d:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_delivery_whose_retries_run_out_is_dead_until_redelivered() {
    let (receiver, url) = Receiver::start().await;
    {
        let mut b = receiver.behaviour.lock().unwrap();
        b.always_fail = true;
        b.fail_status = 500;
    }
    let app = spawn(50, 3).await;
    // Only COMPLETED events.
    let (webhook, _) = create_webhook(&app, ADMIN_KEY, &url, json!(["COMPLETED"])).await;
    let call = app.submit_ok(short_call(), json!({})).await;
    app.wait_status(&call, "COMPLETED", 30).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let log = deliveries(&app, &webhook).await;
        if log.first().is_some_and(|d| d["status"] == "DEAD") {
            break log;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.len(), 1, "only the kinds asked for: {dead:#?}");
    let d = &dead[0];
    assert_eq!(d["eventKind"], "COMPLETED");
    assert_eq!(d["attemptCount"], 3);
    assert!(d["nextAttemptAt"].is_null());
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(attempts[..2].iter().all(|a| a["nextRetryAt"].is_string()));
    assert!(attempts[2]["nextRetryAt"].is_null());
    assert_eq!(receiver.got().len(), 3);
    // Filters.
    let by_status = app
        .gql_ok(
            DELIVERIES,
            json!({ "w": webhook, "f": { "status": ["DELIVERED"] } }),
        )
        .await;
    assert_eq!(by_status["webhookDeliveries"]["nodes"], json!([]));
    let by_call = app
        .gql_ok(
            DELIVERIES,
            json!({ "w": webhook, "f": { "callId": call, "status": ["DEAD"] } }),
        )
        .await;
    assert_eq!(
        by_call["webhookDeliveries"]["nodes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The endpoint is back: an admin sends the dead delivery again.
    receiver.behaviour.lock().unwrap().always_fail = false;
    app.gql_ok(
        "mutation($d: ID!) { redeliverWebhook(deliveryId: $d) { id } }",
        json!({ "d": d["id"] }),
    )
    .await;
    receiver
        .wait(10, "the redelivery accepted", |g| !accepted(g).is_empty())
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = deliveries(&app, &webhook).await;
        if log[0]["status"] == "DELIVERED" {
            assert_eq!(log[0]["attemptCount"], 4);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The outbox row that carried the dead delivery is dead-lettered, not retried forever.
    assert_eq!(
        app.state
            .metrics
            .outbox_dead_letters
            .with_label_values(&["webhook"])
            .get(),
        1
    );
}

async fn tenant_keys(app: &TestApp, name: &str) -> (String, String) {
    let t = app
        .gql_ok(
            "mutation($n: String!) { createTenant(input: {name: $n}) { tenant { id } } }",
            json!({ "n": name }),
        )
        .await["createTenant"]["tenant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut keys = Vec::new();
    for role in ["ADMIN", "ANALYST"] {
        keys.push(
            app.gql_ok(
                "mutation($t: ID!, $r: Role!) { createApiKey(input: {tenantId: $t, role: $r, name: \"k\"}) { secret } }",
                json!({ "t": t, "r": role }),
            )
            .await["createApiKey"]["secret"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    (keys[0].clone(), keys[1].clone())
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("none")
}

#[tokio::test]
async fn webhooks_are_the_tenants_own_and_for_its_admins_only() {
    let (receiver_a, url_a) = Receiver::start().await;
    let (receiver_b, url_b) = Receiver::start().await;
    let app = spawn(50, 3).await;
    let (admin_b, analyst_b) = tenant_keys(&app, "b").await;
    let (webhook_a, _) = create_webhook(&app, ADMIN_KEY, &url_a, json!(null)).await;
    let (webhook_b, _) = create_webhook(&app, &admin_b, &url_b, json!(null)).await;

    // An analyst may not manage or read webhooks.
    let (_, body) = app
        .gql_as(Some(&analyst_b), "{ webhooks { id } }", json!({}))
        .await;
    assert_eq!(code(&body), "FORBIDDEN", "{body:#}");
    let (_, body) = app
        .gql_as(
            Some(&analyst_b),
            "mutation($u: String!) { createWebhook(input: {url: $u}) { secret } }",
            json!({ "u": url_b }),
        )
        .await;
    assert_eq!(code(&body), "FORBIDDEN", "{body:#}");

    // Tenant A's calls go to A's endpoint only.
    let call = app.submit_ok(short_call(), json!({})).await;
    app.wait_status(&call, "COMPLETED", 30).await;
    receiver_a
        .wait(30, "A's three events", |g| accepted(g).len() >= 3)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver_b.got().is_empty(), "{:#?}", receiver_b.got());

    // B sees only its own endpoint, and nothing of A's.
    let (_, body) = app
        .gql_as(Some(&admin_b), "{ webhooks { id } }", json!({}))
        .await;
    assert_eq!(body["data"]["webhooks"], json!([{ "id": webhook_b }]));
    let (_, body) = app
        .gql_as(
            Some(&admin_b),
            "query($w: ID!) { webhook(id: $w) { id } }",
            json!({ "w": webhook_a }),
        )
        .await;
    assert!(body["data"]["webhook"].is_null(), "{body:#}");
    let (_, body) = app
        .gql_as(Some(&admin_b), DELIVERIES, json!({ "w": webhook_a }))
        .await;
    assert_eq!(code(&body), "NOT_FOUND", "{body:#}");
    let delivery = deliveries(&app, &webhook_a).await[0]["id"].clone();
    for (query, vars) in [
        (
            "mutation($d: ID!) { redeliverWebhook(deliveryId: $d) { id } }",
            json!({ "d": delivery }),
        ),
        (
            "mutation($w: ID!) { deleteWebhook(id: $w) { id } }",
            json!({ "w": webhook_a }),
        ),
        (
            "mutation($w: ID!) { rotateWebhookSecret(id: $w) { secret } }",
            json!({ "w": webhook_a }),
        ),
        (
            "mutation($w: ID!) { updateWebhook(id: $w, input: {description: \"x\"}) { id } }",
            json!({ "w": webhook_a }),
        ),
    ] {
        let (_, body) = app.gql_as(Some(&admin_b), query, vars).await;
        assert_eq!(code(&body), "NOT_FOUND", "{query}: {body:#}");
    }

    // Updating and rotating: two signatures for a while; deleting takes the log with it.
    let updated = app
        .gql_ok(
            "mutation($w: ID!) { updateWebhook(id: $w, input: {events: [FAILED], description: \"\"}) { events description } }",
            json!({ "w": webhook_a }),
        )
        .await;
    assert_eq!(
        updated["updateWebhook"],
        json!({ "events": ["FAILED"], "description": null })
    );
    let rotated = app
        .gql_ok(
            "mutation($w: ID!) { rotateWebhookSecret(id: $w) { secret webhook { previousSecretExpiresAt } } }",
            json!({ "w": webhook_a }),
        )
        .await;
    assert!(rotated["rotateWebhookSecret"]["webhook"]["previousSecretExpiresAt"].is_string());
    app.gql_ok(
        "mutation($w: ID!) { deleteWebhook(id: $w) { id } }",
        json!({ "w": webhook_a }),
    )
    .await;
    let body = app.gql(DELIVERIES, json!({ "w": webhook_a })).await;
    assert_eq!(code(&body), "NOT_FOUND");
}

#[tokio::test]
async fn bad_and_private_targets_are_refused() {
    let (receiver, url) = Receiver::start().await;
    let app = TestApp::spawn_with(Roles::ALL, |l| {
        l.set("webhook_allow_private", "false")
            .set("webhook_retry_base_ms", "50")
            .set("webhook_max_attempts", "2");
    })
    .await;
    let port = url.split(':').nth(2).unwrap().split('/').next().unwrap();
    for bad in [
        url.clone(),
        format!("http://localhost:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[::1]/hook".into(),
        "http://10.0.0.1/hook".into(),
        "ftp://example.com/hook".into(),
        "https://user:pw@example.com/hook".into(),
        "not a url".into(),
        format!("https://example.com/{}", "a".repeat(3000)),
    ] {
        let (status, body) = app
            .gql_as(
                Some(ADMIN_KEY),
                "mutation($u: String!) { createWebhook(input: {url: $u}) { secret } }",
                json!({ "u": bad }),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(code(&body), "BAD_USER_INPUT", "{bad}: {body:#}");
    }
    // A name that resolves to a private address later (as a rebinding name would) is refused
    // when the delivery is attempted: written past the registration check.
    let tenant: uuid::Uuid = app.gql_ok("{ viewer { tenant { id } } }", json!({})).await["viewer"]
        ["tenant"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let webhook = app
        .state
        .store
        .create_webhook(
            tenant,
            voicegraph::store::WebhookFields {
                url: format!("http://localhost:{port}/hook"),
                description: None,
                events: vec![voicegraph::domain::CallEventKind::Submitted],
            },
            voicegraph::domain::webhooks::new_secret(),
        )
        .await
        .unwrap();
    let _call = app.submit_ok(short_call(), json!({})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let d = loop {
        let log = deliveries(&app, &webhook.id.to_string()).await;
        if log.first().is_some_and(|d| d["status"] == "DEAD") {
            break log[0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{log:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = d["attempts"][0]["error"].as_str().unwrap();
    assert!(error.contains("not a public address"), "{error}");
    assert!(d["attempts"][0]["responseStatus"].is_null());
    assert!(receiver.got().is_empty());
}

#[tokio::test]
async fn the_relay_holds_no_transaction_while_an_endpoint_takes_its_time() {
    let (receiver, url) = Receiver::start().await;
    receiver.behaviour.lock().unwrap().held = true;
    // The endpoint may hold a request for as long as the test needs (below the relay's lease).
    let app = TestApp::spawn_with(Roles::ALL, |l| {
        l.set("webhook_retry_base_ms", "50")
            .set("webhook_timeout_ms", "40000");
    })
    .await;
    create_webhook(&app, ADMIN_KEY, &url, json!(["SUBMITTED"])).await;
    // Another endpoint, answering at once, takes every event.
    let (fast, fast_url) = Receiver::start().await;
    create_webhook(&app, ADMIN_KEY, &fast_url, json!(null)).await;
    let slow = app.submit_ok(short_call(), json!({})).await;
    // Wait until the endpoint holds the request.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.holding.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request reached the endpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Meanwhile jobs and events flow: both calls complete while the endpoint holds requests.
    let other = app.submit_ok(short_call(), json!({})).await;
    app.wait_status(&other, "COMPLETED", 30).await;
    app.wait_status(&slow, "COMPLETED", 30).await;
    assert!(receiver.got().is_empty(), "the endpoint is still answering");
    // The slow endpoint holds only its own deliveries: the other endpoint has every event of
    // both calls meanwhile.
    fast.wait(20, "the fast endpoint's deliveries", |g| {
        accepted(g)
            .iter()
            .filter(|r| r.body.contains("\"call.completed\""))
            .count()
            == 2
    })
    .await;
    assert!(
        receiver.got().is_empty(),
        "the slow endpoint is still answering"
    );
    if app.state.store.is_postgres() {
        use sea_orm::{ConnectionTrait, Statement};
        let db = app.owner_db().await;
        let row = db
            .query_one_raw(Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
                 AND state LIKE 'idle in transaction%'",
            ))
            .await
            .unwrap()
            .unwrap();
        let n: i64 = row.try_get("", "n").unwrap();
        assert_eq!(n, 0, "a transaction is open while the endpoint answers");
    }
    receiver.open_gate();
    receiver
        .wait(20, "both deliveries", |g| accepted(g).len() >= 2)
        .await;
}
