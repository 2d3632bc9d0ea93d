//! The production stack in one process: Postgres, SQS (with its dead-letter queue), SNS with an
//! SQS subscription read by the realtime relay, Redis fan-out and S3 — all real servers (AWS
//! through the emulator). Submit by presigned S3 upload, watch the events over WebSocket, query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use voicegraph::domain::{Analysis, AnalysisRequest, CallStatus, EventEnvelope};
use voicegraph::ports::{AnalyzeError, Analyzer, Audio, EventPublisher};
use voicegraph::startup::Roles;

use crate::backends::ProductionStack;
use crate::helpers::*;
use crate::require;

async fn production_app(stack: &ProductionStack) -> TestApp {
    production_app_with(stack, Roles::ALL).await
}

pub(crate) async fn production_app_with(stack: &ProductionStack, roles: Roles) -> TestApp {
    // Production does not migrate at start-up: `voicegraph migrate` does, as a deploy step.
    let settings = {
        let mut l = voicegraph::config::Layers::default();
        for (k, v) in stack.vars() {
            l.set(k, v);
        }
        l.settings().unwrap()
    };
    let metrics = voicegraph::http::metrics::Metrics::new();
    voicegraph::wiring::migrate_as_owner(&settings, &metrics)
        .await
        .unwrap();
    TestApp::spawn_with(roles, |l| {
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
    // Ready once the Redis subscription is up, which happens right after start.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = app.get_json("/readyz").await;
        if ready["ready"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut sub = app
        .subscribe(
            ADMIN_KEY,
            "subscription { callEvents(after: \"0\") { kind cursor callId call { status } } }",
            json!({}),
        )
        .await;
    let audio = short_call();
    let up = app.upload(&audio).await;
    let url = up["uploadUrl"].as_str().unwrap();
    assert!(url.contains(&stack.bucket), "a presigned S3 URL: {url}");
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
    assert_eq!(result["durationMs"], 2000);

    // Production hides introspection: the schema is not described.
    let intro = app.gql("{ __schema { types { name } } }", json!({})).await;
    assert!(intro["data"]["__schema"]["types"].is_null(), "{intro}");
    let t = app
        .gql("{ __type(name: \"Call\") { fields { name } } }", json!({}))
        .await;
    assert!(t["data"]["__type"].is_null(), "{t}");
}

struct Unavailable;

#[async_trait]
impl Analyzer for Unavailable {
    fn name(&self) -> String {
        "unavailable".into()
    }
    async fn analyze(&self, _: Audio, _: AnalysisRequest) -> Result<Analysis, AnalyzeError> {
        Err(AnalyzeError::Transient(anyhow::anyhow!(
            "analysis service unavailable"
        )))
    }
}

/// On SQS: a job that keeps failing is retried until its last receive, its call becomes FAILED
/// with the reason, the job is removed (not dead-lettered: the call says what happened), and
/// `retryCall` queues it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_ends_with_its_call_failed_and_retry_call_queues_it_again() {
    let stack = require!(ProductionStack::create(None, 3, 10).await);
    let app = production_app_with(
        &stack,
        Roles {
            serve: true,
            worker: false,
            relay: true,
        },
    )
    .await;
    let id = app.submit_ok(short_call(), json!({})).await;
    let mut broken = app.state.clone();
    broken.analyzer = Arc::new(Unavailable);
    let token = CancellationToken::new();
    let worker = tokio::spawn(voicegraph::worker::run(
        broken,
        token.clone(),
        Duration::from_secs(5),
    ));
    app.wait_status(&id, "FAILED", 60).await;
    let d = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { error attempts } }",
            json!({ "id": id }),
        )
        .await;
    assert!(
        d["call"]["error"]
            .as_str()
            .unwrap()
            .contains("analysis service unavailable"),
        "{d}"
    );
    assert_eq!(d["call"]["attempts"], 3);
    // The job is done with: gone from the queue, and not in the dead-letter queue (which only
    // gets jobs whose outcome could not be recorded).
    let sqs = aws_sdk_sqs::Client::new(&crate::backends::sdk().await);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.state.queue.depth().await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the job is still queued"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = sqs
        .receive_message()
        .queue_url(&stack.dlq_url)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    assert!(got.messages().is_empty(), "{:?}", got.messages());
    token.cancel();
    worker.await.unwrap();
    let r = app
        .gql_ok(
            "mutation($id: ID!) { retryCall(id: $id) { status } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(r["retryCall"]["status"], "QUEUED");
    let mut queued = false;
    for _ in 0..40 {
        if app.state.queue.depth().await.unwrap() > 0 {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(queued, "retryCall sends a new job to SQS");
}

/// Records every event it is asked to publish.
#[derive(Default)]
struct Counting(Mutex<HashMap<i64, usize>>);

#[async_trait]
impl EventPublisher for Counting {
    async fn publish(&self, event: &EventEnvelope) -> anyhow::Result<()> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        *self.0.lock().unwrap().entry(event.id).or_default() += 1;
        Ok(())
    }
}

/// Many relays on one Postgres: outbox rows are claimed with SKIP LOCKED, so in the normal case no
/// event is published twice, and positions stay dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_relays_on_postgres_do_not_double_send() {
    let Some(url) = crate::backends::fresh_postgres_db().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut l = layers(dir.path());
    // Its own database, as the owner (the suite's runtime-role settings name another one).
    l.set("database_url", url)
        .set("migrate_database_url", "")
        .set("database_runtime_role", "");
    let settings = l.settings().unwrap();
    let publishers: Vec<Arc<Counting>> = (0..3).map(|_| Arc::new(Counting::default())).collect();
    let mut states = Vec::new();
    for p in &publishers {
        let mut st = voicegraph::wiring::build_state(
            settings.clone(),
            "http://unused",
            voicegraph::wiring::EventRoles {
                subscribes: false,
                publishes: true,
            },
        )
        .await
        .unwrap();
        st.publisher = p.clone();
        states.push(st);
    }
    let store = &states[0].store;
    let (tenant, call) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    {
        // 300 events of one call, each with its outbox row, as the store writes them.
        use sea_orm::{ConnectionTrait, TransactionTrait};
        let txn = store.connection().begin().await.unwrap();
        txn.execute_unprepared(&format!(
            "SELECT set_config('voicegraph.tenant_id', '{tenant}', true);
             WITH e AS (
                 INSERT INTO call_events (tenant_id, call_id, kind, status, created_at)
                 SELECT '{tenant}', '{call}', 'TAGGED', '{}', now() FROM generate_series(1, 300)
                 RETURNING id)
             INSERT INTO outbox (destination, payload, created_at, available_at, attempts)
             SELECT 'events', json_build_object('event_id', id)::jsonb, now(), now(), 0 FROM e",
            CallStatus::Queued.as_str()
        ))
        .await
        .unwrap();
        txn.commit().await.unwrap();
    }
    let runs = states.iter().map(|st| async move {
        loop {
            let n = voicegraph::relay::relay_once(st).await.unwrap();
            if n == 0 {
                break;
            }
        }
    });
    futures::future::join_all(runs).await;
    let mut total: HashMap<i64, usize> = HashMap::new();
    let mut relays_that_sent = 0;
    for p in &publishers {
        let seen = p.0.lock().unwrap();
        if !seen.is_empty() {
            relays_that_sent += 1;
        }
        for (id, n) in seen.iter() {
            *total.entry(*id).or_default() += n;
        }
    }
    assert_eq!(total.len(), 300, "every event was published");
    assert!(
        total.values().all(|n| *n == 1),
        "an event was published twice"
    );
    assert!(relays_that_sent >= 2, "the relays shared the work");
    assert_eq!(store.max_seq().await.unwrap(), 300);
}
