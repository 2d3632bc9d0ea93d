//! The response cache (Postgres): a repeated query is answered from memory while no transaction
//! has committed, and never once one has — on this instance or any other.
//!
//! The tests that count hits need a database nothing else writes to while they run (any commit
//! in the cluster is a change of snapshot): their names end in `on_a_quiet_database`, and `scripts/test.sh`
//! runs them one at a time after the parallel suite.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;
use voicegraph::startup::Roles;

const SERVE: Roles = Roles {
    serve: true,
    worker: false,
    relay: false,
};

fn counted(app: &TestApp, outcome: &str) -> u64 {
    app.state
        .metrics
        .response_cache
        .with_label_values(&[outcome])
        .get()
}

const TAGS: &str = "query($id: ID!) { call(id: $id) { id status tags } }";

/// A completed call, and an API-only instance on its database (nothing in the background
/// writes: no worker, no relay, and the watermark read once).
async fn completed_call() -> (TestApp, String) {
    let app = TestApp::spawn().await;
    let id = app
        .submit_ok(short_call(), json!({ "tags": ["first"] }))
        .await;
    app.wait_status(&id, "COMPLETED", 120).await;
    // Every event sequenced and delivered, so that no background write follows.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = app
            .gql_ok(
                "query($id: ID!) { call(id: $id) { events { kind } } }",
                json!({ "id": id }),
            )
            .await;
        if events["call"]["events"].as_array().unwrap().len() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "events were never sequenced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, SERVE, |l| {
        l.set("watermark_poll_ms", "3600000");
    })
    .await;
    (app, id)
}

async fn set_tags(app: &TestApp, id: &str, tags: &[&str]) {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    // Straight to the table as its owner: the write of another instance, which this one hears
    // nothing about.
    app.owner_db()
        .await
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE calls SET tags = $1 WHERE id = $2::uuid",
            [
                serde_json::to_value(tags).unwrap().into(),
                id.to_string().into(),
            ],
        ))
        .await
        .unwrap();
}

async fn tags(app: &TestApp, key: &str, id: &str) -> Value {
    let (status, body) = app.gql_as(Some(key), TAGS, json!({ "id": id })).await;
    assert_eq!(status, 200, "{body:#}");
    assert!(body.get("errors").is_none(), "{body:#}");
    body["data"]["call"]["tags"].clone()
}

/// Asks `query` until an answer comes from the cache (a commit elsewhere in the cluster may
/// come between any two requests: then the next one is stored again).
async fn until_hit(app: &TestApp, query: &str, variables: Value) -> Value {
    for _ in 0..100 {
        let hits = counted(app, "hit");
        let body = app.gql_ok(query, variables.clone()).await;
        if counted(app, "hit") > hits {
            return body;
        }
    }
    panic!("100 requests of the same query and not one answered from the cache");
}

/// On SQLite (no snapshots to check an answer against) nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_postgres_keeps_answers() {
    let app = TestApp::spawn_with(SERVE, |_| {}).await;
    assert_eq!(app.state.responses.is_some(), app.state.store.is_postgres());
    let app = TestApp::spawn_with(SERVE, |l| {
        l.set("response_cache_mb", "0");
    })
    .await;
    assert!(app.state.responses.is_none());
}

/// Whatever the cache holds, every answer reflects every write committed before the request,
/// including writes this instance never heard of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_never_outlives_a_commit() {
    let (app, id) = completed_call().await;
    let postgres = app.state.store.is_postgres();
    for i in 0..30 {
        let tag = format!("t{i}");
        for _ in 0..3 {
            let _ = tags(&app, ADMIN_KEY, &id).await;
        }
        if postgres {
            set_tags(&app, &id, &[&tag]).await;
        } else {
            app.gql_ok(
                "mutation($id: ID!, $t: [String!]!) { tagCall(id: $id, tags: $t) { id } }",
                json!({ "id": id, "t": [tag] }),
            )
            .await;
        }
        let now = tags(&app, ADMIN_KEY, &id).await;
        assert!(
            now.as_array()
                .unwrap()
                .iter()
                .any(|t| t.as_str() == Some(&tag)),
            "after writing {tag}, answered {now}"
        );
    }
}

/// A repeated query is served from memory for one statement (the snapshot), is fresh right
/// after another connection's commit, and is charged to the cost budget like an execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_query_is_served_until_a_commit_on_a_quiet_database() {
    let (app, id) = completed_call().await;
    if !app.state.store.is_postgres() {
        return;
    }
    let first = tags(&app, ADMIN_KEY, &id).await;
    assert_eq!(first, json!(["first"]));
    let hit = until_hit(&app, TAGS, json!({ "id": id })).await;
    assert_eq!(hit["call"]["tags"], json!(["first"]));
    assert_eq!(hit["call"]["status"], "COMPLETED");
    // A hit costs one statement: the snapshot.
    let mut cheapest = u64::MAX;
    for _ in 0..20 {
        let (s0, h0) = (app.statements(), counted(&app, "hit"));
        let _ = tags(&app, ADMIN_KEY, &id).await;
        if counted(&app, "hit") > h0 {
            cheapest = cheapest.min(app.statements() - s0);
        }
    }
    assert_eq!(cheapest, 1, "statements for an answer from the cache");

    // Another instance's write (here the owner's connection): the very next request sees it.
    set_tags(&app, &id, &["second"]).await;
    let stale = counted(&app, "stale");
    assert_eq!(tags(&app, ADMIN_KEY, &id).await, json!(["second"]));
    assert!(
        counted(&app, "stale") > stale,
        "the kept answer was not found stale"
    );
    let hit = until_hit(&app, TAGS, json!({ "id": id })).await;
    assert_eq!(hit["call"]["tags"], json!(["second"]));
}

/// Answers are kept per caller: another tenant asking the same document gets its own answer,
/// never the first tenant's, and a signed URL (made for the moment it is asked) is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_kept_per_caller_and_never_with_a_signed_url_on_a_quiet_database() {
    let (app, id) = completed_call().await;
    if !app.state.store.is_postgres() {
        return;
    }
    let tenant = app
        .gql_ok(
            "mutation { createTenant(input: {name: \"other\"}) { tenant { id } } }",
            json!({}),
        )
        .await["createTenant"]["tenant"]["id"]
        .clone();
    let other = app
        .gql_ok(
            "mutation($t: ID!) { createApiKey(input: {tenantId: $t, role: ADMIN, name: \"k\"}) { secret } }",
            json!({ "t": tenant }),
        )
        .await["createApiKey"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let page = "{ calls(first: 10) { nodes { id } } }";
    let mine = until_hit(&app, page, json!({})).await;
    assert_eq!(mine["calls"]["nodes"][0]["id"], id.as_str());
    for _ in 0..5 {
        let (status, theirs) = app.gql_as(Some(&other), page, json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(theirs["data"]["calls"]["nodes"], json!([]), "{theirs}");
    }
    // The other tenant's key cannot read the call even once it was kept for the admin.
    let (_, theirs) = app.gql_as(Some(&other), TAGS, json!({ "id": id })).await;
    assert_eq!(theirs["data"]["call"], Value::Null, "{theirs}");

    let signed = "query($id: ID!) { call(id: $id) { recording { download { url expiresAt } } } }";
    let stored = counted(&app, "stored");
    for _ in 0..10 {
        let d = app.gql_ok(signed, json!({ "id": id })).await;
        assert!(d["call"]["recording"]["download"]["url"].is_string(), "{d}");
    }
    assert_eq!(
        counted(&app, "stored"),
        stored,
        "an answer with a signed URL was kept"
    );
}

/// A hit is charged its cost: the budget runs out as it would with executions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_the_cache_are_charged_on_a_quiet_database() {
    let (app, id) = completed_call().await;
    if !app.state.store.is_postgres() {
        return;
    }
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, SERVE, |l| {
        l.set("watermark_poll_ms", "3600000")
            .set("cost_budget_per_minute", "40");
    })
    .await;
    let mut served = 0;
    let hits = counted(&app, "hit");
    let refused = loop {
        let (status, body) = app.gql_as(Some(ADMIN_KEY), TAGS, json!({ "id": id })).await;
        if status == 429 {
            break body;
        }
        assert_eq!(status, 200, "{body:#}");
        served += 1;
        assert!(served < 100, "the budget never ran out");
    };
    assert_eq!(refused["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    let message = refused["errors"][0]["message"].as_str().unwrap();
    let cost: u64 = message
        .split("costs ")
        .nth(1)
        .and_then(|m| m.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cost in {message}"));
    // 40 a minute: what was served fits in it (with what refilled meanwhile).
    assert!(
        served * cost <= 40 + cost,
        "{served} answers of cost {cost}"
    );
    assert!(counted(&app, "hit") > hits, "no answer came from the cache");
}
