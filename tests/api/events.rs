//! Subscriptions: live events through to COMPLETED, replay from a cursor without gap or
//! duplicate, a lagging subscriber catching up from the database, and events published by another
//! process reaching this instance's subscribers.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use voicegraph::services::events::{self, EventFilter, Watch};
use voicegraph::startup::Roles;

use crate::helpers::*;

const EVENTS: &str = "subscription($after: String) { callEvents(after: $after) { id cursor kind status callId call { status summary transcript { segments { speaker } } } } }";

async fn collect_until(sub: &mut Subscription, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        out.push(sub.next_data(Duration::from_secs(30)).await["callEvents"].clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_to_completed_and_replay_from_a_cursor() {
    let app = TestApp::spawn().await;
    // A fresh database: replaying from the start is "from now", with no race against the submit.
    let mut live = app
        .subscribe(ADMIN_KEY, EVENTS, json!({ "after": "0" }))
        .await;
    let id = app.submit_ok(short_call(), json!({})).await;
    let first = collect_until(&mut live, 3).await;
    let kinds: Vec<_> = first.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["SUBMITTED", "PROCESSING", "COMPLETED"]);
    assert!(first.iter().all(|e| e["callId"] == id.as_str()));
    // The worker writes the database before it publishes: COMPLETED comes with the results.
    let done = &first[2];
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["call"]["status"], "COMPLETED");
    assert!(done["call"]["summary"].is_string());
    assert_eq!(
        done["call"]["transcript"]["segments"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let cursors: Vec<i64> = first
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(cursors.windows(2).all(|w| w[1] == w[0] + 1), "{cursors:?}");

    // A client that saw only SUBMITTED reconnects with its cursor: the rest is replayed, then live.
    let mut resumed = app
        .subscribe(ADMIN_KEY, EVENTS, json!({ "after": first[0]["cursor"] }))
        .await;
    let replayed = collect_until(&mut resumed, 2).await;
    assert_eq!(
        replayed.iter().map(|e| e["id"].clone()).collect::<Vec<_>>(),
        vec![first[1]["id"].clone(), first[2]["id"].clone()]
    );
    let second = app.submit_ok(short_call(), json!({})).await;
    let more = collect_until(&mut resumed, 3).await;
    assert!(
        more.iter().all(|e| e["callId"] == second.as_str()),
        "{more:?}"
    );
    let again = collect_until(&mut live, 3).await;
    assert_eq!(
        again.iter().map(|e| e["id"].clone()).collect::<Vec<_>>(),
        more.iter().map(|e| e["id"].clone()).collect::<Vec<_>>()
    );
    // Nothing else (no duplicates) arrives.
    assert!(resumed.recv(Duration::from_millis(700)).await.is_none());

    // Replay from the very start gives all six, in order.
    let mut all = app
        .subscribe(ADMIN_KEY, EVENTS, json!({ "after": "0" }))
        .await;
    let six = collect_until(&mut all, 6).await;
    let seqs: Vec<i64> = six
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_updated_follows_one_call() {
    let app = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: false,
            relay: true,
        },
        |_| {},
    )
    .await;
    let a = app.submit_ok(short_call(), json!({})).await;
    let b = app.submit_ok(short_call(), json!({})).await;
    // Subscribing replays the call's own events first, so acting right after subscribing (no
    // wait, no sleep) loses nothing: SUBMITTED comes whether or not it was sequenced yet.
    let mut sub = app
        .subscribe(
            ADMIN_KEY,
            "subscription($id: ID!) { callUpdated(id: $id) { kind status callId cursor } }",
            json!({ "id": a }),
        )
        .await;
    let token = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(voicegraph::worker::run(
        app.state.clone(),
        token.clone(),
        Duration::from_secs(5),
    ));
    let s = sub.next_data(Duration::from_secs(30)).await["callUpdated"].clone();
    let p = sub.next_data(Duration::from_secs(30)).await["callUpdated"].clone();
    let c = sub.next_data(Duration::from_secs(30)).await["callUpdated"].clone();
    assert_eq!(
        (s["kind"].as_str(), p["kind"].as_str(), c["kind"].as_str()),
        (Some("SUBMITTED"), Some("PROCESSING"), Some("COMPLETED"))
    );
    assert_eq!(c["callId"], a.as_str());
    app.wait_status(&b, "COMPLETED", 30).await;
    assert!(
        sub.recv(Duration::from_millis(500)).await.is_none(),
        "events of another call leaked in"
    );
    let missing = app
        .subscribe(
            ADMIN_KEY,
            "subscription { callUpdated(id: \"00000000-0000-0000-0000-000000000000\") { kind } }",
            json!({}),
        )
        .await;
    let mut missing = missing;
    let err = missing.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        err["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{err}"
    );
    // With a cursor, only what came after it: resuming after SUBMITTED gives the other two.
    let mut resumed = app
        .subscribe(
            ADMIN_KEY,
            "subscription($id: ID!, $after: String) { callUpdated(id: $id, after: $after) { kind } }",
            json!({ "id": a, "after": s["cursor"] }),
        )
        .await;
    let kinds = [
        resumed.next_data(Duration::from_secs(10)).await["callUpdated"]["kind"].clone(),
        resumed.next_data(Duration::from_secs(10)).await["callUpdated"]["kind"].clone(),
    ];
    assert_eq!(kinds, [json!("PROCESSING"), json!("COMPLETED")]);
    assert!(resumed.recv(Duration::from_millis(300)).await.is_none());
    token.cancel();
    worker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_subscriber_catches_up_from_the_database() {
    // A 16-event buffer that the subscriber below is too slow to keep up with.
    let app = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: false,
            relay: true,
        },
        |l| {
            l.set("event_buffer", "16");
        },
    )
    .await;
    let viewer = app.gql_ok("{ viewer { tenant { id } } }", json!({})).await;
    let tenant = viewer["viewer"]["tenant"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let watch = Watch {
        tenant,
        filter: EventFilter::default(),
        after: None,
        replay_call: false,
    };
    let stream = events::stream(app.state.clone(), watch);
    futures::pin_mut!(stream);
    // Start it (it subscribes on first poll), then stop reading.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.next())
            .await
            .is_err()
    );
    let id = app.submit_ok(short_call(), json!({})).await;
    for i in 0..60 {
        app.gql_ok(
            "mutation($id: ID!, $t: [String!]!) { tagCall(id: $id, tags: $t) { id } }",
            json!({ "id": id, "t": [format!("t{}", i % 10)] }),
        )
        .await;
    }
    // 61 events, far more than the buffer; all must come, in order, once.
    let mut seqs = Vec::new();
    while seqs.len() < 61 {
        let e = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        seqs.push(e.seq);
    }
    assert_eq!(seqs, (1..=61).collect::<Vec<i64>>());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_relayed_by_another_process_reach_subscribers() {
    // This instance runs no relay: the events are sequenced and published by a second "process"
    // (its own state and bus on the same data dir), and arrive here through the watermark.
    let app = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: false,
            relay: false,
        },
        |_| {},
    )
    .await;
    let mut sub = app
        .subscribe(
            ADMIN_KEY,
            "subscription { callEvents { kind callId } }",
            json!({}),
        )
        .await;
    let id = app.submit_ok(short_call(), json!({})).await;
    assert!(
        sub.recv(Duration::from_millis(400)).await.is_none(),
        "nothing is published without a relay"
    );
    let other = voicegraph::wiring::build_state(
        layers(app.dir.path()).settings().unwrap(),
        "http://unused",
        voicegraph::wiring::EventRoles {
            subscribes: false,
            publishes: true,
        },
    )
    .await
    .unwrap();
    assert!(voicegraph::relay::relay_once(&other).await.unwrap() >= 2);
    let e = sub.next_data(Duration::from_secs(5)).await;
    assert_eq!(e["callEvents"]["kind"], "SUBMITTED");
    assert_eq!(e["callEvents"]["callId"], id.as_str());
}

/// A message that is not ours (another deployment on the same Redis channel) must not move a
/// subscriber's cursor past events it has yet to see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_event_far_ahead_does_not_swallow_real_ones() {
    let app = TestApp::spawn().await;
    let mut sub = app
        .subscribe(
            ADMIN_KEY,
            "subscription { callEvents(after: \"0\") { kind cursor callId } }",
            json!({}),
        )
        .await;
    let stray = voicegraph::domain::EventEnvelope {
        seq: 1_000_000,
        id: 1_000_000,
        tenant_id: uuid::Uuid::new_v4(),
        call_id: uuid::Uuid::new_v4(),
        kind: "SUBMITTED".into(),
        status: voicegraph::domain::CallStatus::Queued,
        at: chrono::Utc::now(),
        analysis_id: None,
        traceparent: None,
    };
    app.state.publisher.publish(&stray).await.unwrap();
    let id = app.submit_ok(short_call(), json!({})).await;
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let e = sub.next_data(Duration::from_secs(20)).await["callEvents"].clone();
        assert_eq!(e["callId"], id.as_str(), "{e}");
        kinds.push(e["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, ["SUBMITTED", "PROCESSING", "COMPLETED"]);
}

/// `kinds` takes `CallEventKind` values, filters replayed and live events alike, and refuses a
/// kind that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_events_filter_by_kind() {
    let app = TestApp::spawn().await;
    let id = app.submit_ok(short_call(), json!({})).await;
    app.wait_status(&id, "COMPLETED", 30).await;
    // From the start: SUBMITTED is replayed, PROCESSING and COMPLETED are left out (whether
    // they are replayed or still arrive live), and the later TAGGED arrives live.
    let mut sub = app
        .subscribe(
            ADMIN_KEY,
            "subscription($after: String) { callEvents(after: $after, filter: {kinds: [SUBMITTED, TAGGED]}) { kind callId } }",
            json!({ "after": "0" }),
        )
        .await;
    let first = sub.next_data(Duration::from_secs(30)).await["callEvents"].clone();
    assert_eq!(first, json!({ "kind": "SUBMITTED", "callId": id }));
    app.gql_ok(
        "mutation($id: ID!) { tagCall(id: $id, tags: [\"seen\"]) { id } }",
        json!({ "id": id }),
    )
    .await;
    let second = sub.next_data(Duration::from_secs(30)).await["callEvents"].clone();
    assert_eq!(second, json!({ "kind": "TAGGED", "callId": id }));
    assert!(sub.recv(Duration::from_millis(500)).await.is_none());

    // A kind that does not exist is refused, where a string filter silently matched nothing.
    let mut unknown = app
        .subscribe(
            ADMIN_KEY,
            "subscription { callEvents(filter: {kinds: [FINISHED]}) { kind } }",
            json!({}),
        )
        .await;
    let err = unknown.recv(Duration::from_secs(5)).await.unwrap();
    // Refused before it starts: an `error` message carrying the validation errors.
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(
        err["payload"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED",
        "{err}"
    );
    assert!(
        err["payload"][0]["message"]
            .as_str()
            .unwrap()
            .contains("\"CallEventKind\" does not contain the value \"FINISHED\""),
        "{err}"
    );
}
