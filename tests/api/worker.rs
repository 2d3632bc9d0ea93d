//! The worker: a job whose worker died mid-way is leased again and the call completes once; a
//! stale attempt cannot overwrite a newer one; failures retry, then fail with the reason; a job
//! whose deliveries recorded nothing is dead-lettered and its call marked FAILED by the
//! dead-letter reader; `retryCall` brings a failed call back; shutdown drains or releases.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use voicegraph::domain::{Analysis, AnalysisRequest, JobMessage};
use voicegraph::ports::{AnalyzeError, Analyzer, Audio, Lease};
use voicegraph::startup::Roles;
use voicegraph::state::AppState;
use voicegraph::worker::{self, Outcome};

use crate::helpers::*;

fn no_worker() -> Roles {
    Roles {
        serve: true,
        worker: false,
        relay: true,
    }
}

async fn lease(state: &AppState) -> Lease {
    for _ in 0..100 {
        let got = state
            .queue
            .receive(1, state.settings.job_visibility, Duration::from_millis(100))
            .await
            .unwrap();
        if let Some(l) = got.into_iter().next() {
            return l;
        }
    }
    panic!("no job was queued");
}

async fn event_kinds(app: &TestApp, id: &str) -> Vec<String> {
    let d = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { events { kind } } }",
            json!({ "id": id }),
        )
        .await;
    d["call"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until every event has been sequenced, so that `events` shows all of them.
async fn settle(app: &TestApp) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    voicegraph::relay::relay_once(&app.state).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_abandoned_mid_way_is_leased_again_and_completes_once() {
    let app = TestApp::spawn_with(no_worker(), |l| {
        l.set("job_visibility_secs", "1");
    })
    .await;
    let id = app.submit_ok(short_call(), json!({})).await;
    // A worker leases the job, marks the call PROCESSING, then dies (its lease is never renewed).
    let dead = lease(&app.state).await;
    let (_, _, attempt) = worker::start_attempt(&app.state, &dead)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(attempt, 1);
    assert_eq!(app.call_status(&id).await, "PROCESSING");
    drop(dead);
    // Another worker picks it up once the lease has lapsed.
    let token = CancellationToken::new();
    let w = tokio::spawn(worker::run(
        app.state.clone(),
        token.clone(),
        Duration::from_secs(5),
    ));
    app.wait_status(&id, "COMPLETED", 30).await;
    token.cancel();
    w.await.unwrap();
    settle(&app).await;
    let d = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { attempts transcript { segments { startMs } } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(d["call"]["attempts"], 2);
    assert_eq!(
        d["call"]["transcript"]["segments"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        event_kinds(&app, &id).await,
        ["SUBMITTED", "PROCESSING", "PROCESSING", "COMPLETED"]
    );
    assert_eq!(app.state.queue.depth().await.unwrap(), 0);
}

/// An analyser that waits for a permit, then answers with a marked summary.
struct Gate {
    permits: Arc<Semaphore>,
    mark: &'static str,
}

#[async_trait]
impl Analyzer for Gate {
    fn name(&self) -> String {
        "gate".into()
    }
    async fn analyze(
        &self,
        audio: Audio,
        request: AnalysisRequest,
    ) -> Result<Analysis, AnalyzeError> {
        self.permits.acquire().await.unwrap().forget();
        let local = voicegraph::services::analysis::Pipeline {
            acoustics: Arc::new(voicegraph::adapters::local::acoustic::LocalAcoustics),
            insights: Arc::new(voicegraph::adapters::local::lexicon::LexiconInsights),
        };
        let mut a = local.analyze(audio, request).await?;
        a.summary = Some(self.mark.into());
        Ok(a)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_attempt_cannot_overwrite_a_newer_one() {
    let app = TestApp::spawn_with(no_worker(), |_| {}).await;
    let id = app.submit_ok(short_call(), json!({})).await;
    let first = lease(&app.state).await;
    let gate = Arc::new(Semaphore::new(0));
    let mut frozen = app.state.clone();
    frozen.analyzer = Arc::new(Gate {
        permits: gate.clone(),
        mark: "stale",
    });
    let stale_lease = first.clone();
    let stale = tokio::spawn(async move { worker::process_one(&frozen, &stale_lease).await });
    // The job is delivered again (as after a lapsed lease) and a healthy worker finishes it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut healthy = app.state.clone();
    healthy.analyzer = Arc::new(Gate {
        permits: Arc::new(Semaphore::new(10)),
        mark: "fresh",
    });
    let redelivered = Lease {
        receive_count: 2,
        ..first
    };
    assert_eq!(
        worker::process_one(&healthy, &redelivered).await.unwrap(),
        Outcome::Completed
    );
    // The frozen worker wakes up: its write is fenced off.
    gate.add_permits(1);
    assert_eq!(stale.await.unwrap().unwrap(), Outcome::Fenced);
    settle(&app).await;
    let d = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { status summary attempts } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(d["call"]["summary"], "fresh");
    assert_eq!(d["call"]["attempts"], 2);
    let kinds = event_kinds(&app, &id).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "COMPLETED").count(),
        1,
        "{kinds:?}"
    );
    // A duplicate job for the finished call is skipped without new events.
    app.state
        .queue
        .send(
            &JobMessage {
                tenant_id: redelivered.message.tenant_id,
                call_id: redelivered.message.call_id,
                analysis_id: redelivered.message.analysis_id,
                traceparent: None,
            },
            None,
        )
        .await
        .unwrap();
    let dup = lease(&app.state).await;
    assert_eq!(
        worker::process_one(&app.state, &dup).await.unwrap(),
        Outcome::Skipped
    );
    settle(&app).await;
    assert_eq!(event_kinds(&app, &id).await, kinds);
}

struct Broken {
    permanent: bool,
}

#[async_trait]
impl Analyzer for Broken {
    fn name(&self) -> String {
        "broken".into()
    }
    async fn analyze(&self, _: Audio, _: AnalysisRequest) -> Result<Analysis, AnalyzeError> {
        if self.permanent {
            Err(AnalyzeError::Permanent("the recording is unusable".into()))
        } else {
            Err(AnalyzeError::Transient(anyhow::anyhow!(
                "analysis service unavailable"
            )))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_then_fail_with_the_reason_and_retry_call_brings_it_back() {
    let app = TestApp::spawn_with(no_worker(), |l| {
        l.set("job_max_receives", "3");
    })
    .await;
    let id = app.submit_ok(short_call(), json!({})).await;
    let mut broken = app.state.clone();
    broken.analyzer = Arc::new(Broken { permanent: false });
    let token = CancellationToken::new();
    let w = tokio::spawn(worker::run(broken, token.clone(), Duration::from_secs(5)));
    app.wait_status(&id, "FAILED", 30).await;
    token.cancel();
    w.await.unwrap();
    settle(&app).await;
    let d = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { error attempts } }",
            json!({ "id": id }),
        )
        .await;
    assert!(d["call"]["error"]
        .as_str()
        .unwrap()
        .contains("analysis service unavailable"));
    assert_eq!(d["call"]["attempts"], 3);
    assert_eq!(
        event_kinds(&app, &id).await,
        [
            "SUBMITTED",
            "PROCESSING",
            "RETRYING",
            "PROCESSING",
            "RETRYING",
            "PROCESSING",
            "FAILED"
        ]
    );
    // The job is done with: neither waiting nor dead-lettered (the call says it failed).
    let queue = voicegraph::store::queue::EmbeddedQueue::new(&app.state.store, "jobs", 3);
    assert!(app
        .state
        .queue
        .receive(1, Duration::from_secs(1), Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    assert!(queue.dead_letters().await.unwrap().is_empty());

    // retryCall queues it again; a healthy worker completes it.
    let r = app
        .gql_ok(
            "mutation($id: ID!) { retryCall(id: $id) { status error } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(r["retryCall"]["status"], "QUEUED");
    assert!(r["retryCall"]["error"].is_null());
    let token = CancellationToken::new();
    let w = tokio::spawn(worker::run(
        app.state.clone(),
        token.clone(),
        Duration::from_secs(5),
    ));
    app.wait_status(&id, "COMPLETED", 30).await;
    token.cancel();
    w.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_fails_at_once() {
    let app = TestApp::spawn_with(no_worker(), |_| {}).await;
    let id = app.submit_ok(short_call(), json!({})).await;
    let mut broken = app.state.clone();
    broken.analyzer = Arc::new(Broken { permanent: true });
    let l = lease(&app.state).await;
    assert_eq!(
        worker::process_one(&broken, &l).await.unwrap(),
        Outcome::Failed("the recording is unusable".into())
    );
    assert_eq!(app.call_status(&id).await, "FAILED");
    assert_eq!(app.state.queue.depth().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_jobs_or_releases_them() {
    let app = TestApp::spawn_with(no_worker(), |_| {}).await;
    let id = app.submit_ok(short_call(), json!({})).await;
    let gate = Arc::new(Semaphore::new(0));
    let mut slow = app.state.clone();
    slow.analyzer = Arc::new(Gate {
        permits: gate.clone(),
        mark: "drained",
    });

    // Draining: the in-flight job finishes after shutdown was asked for.
    let token = CancellationToken::new();
    let w = tokio::spawn(worker::run(
        slow.clone(),
        token.clone(),
        Duration::from_secs(10),
    ));
    app.wait_status(&id, "PROCESSING", 10).await;
    token.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !w.is_finished(),
        "the worker must wait for its in-flight job"
    );
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), w)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(app.call_status(&id).await, "COMPLETED");

    // Releasing: past the grace period the job is given back at once.
    let id2 = app.submit_ok(short_call(), json!({})).await;
    let token = CancellationToken::new();
    let w = tokio::spawn(worker::run(slow, token.clone(), Duration::from_millis(300)));
    app.wait_status(&id2, "PROCESSING", 10).await;
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), w)
        .await
        .unwrap()
        .unwrap();
    let again = app
        .state
        .queue
        .receive(1, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "the released job is visible again");
    assert_eq!(again[0].receive_count, 2);
}
