//! The API-key cache: a cached key costs no statement per request and still records its use;
//! a key revoked on one instance is refused on another within a second (on Postgres when the
//! database's notice arrives, on SQLite when the cached copy expires); and while an instance
//! cannot hear the notices, it asks the database every time, and starts over once it can again.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use voicegraph::startup::Roles;
use voicegraph::store::Link;

use crate::helpers::*;
use crate::notifications::listening;

const SERVE: Roles = Roles {
    serve: true,
    worker: false,
    relay: false,
};

/// A request that needs its credentials and nothing from the database.
const PING: &str = "{ __typename }";

/// Nothing polls the database in these apps (on SQLite the watermark would), and no answer is
/// kept (on Postgres a kept answer costs a statement of its own: the snapshot).
fn quiet(l: &mut voicegraph::config::Layers) {
    l.set("watermark_poll_ms", "3600000")
        .set("response_cache_mb", "0");
}

/// A new key of the default tenant; returns (its id, its secret).
async fn new_key(app: &TestApp, name: &str) -> (String, String) {
    let d = app
        .gql_ok(
            "mutation($n: String!) { createApiKey(input: {role: VIEWER, name: $n}) { secret apiKey { id } } }",
            json!({ "n": name }),
        )
        .await;
    (
        d["createApiKey"]["apiKey"]["id"]
            .as_str()
            .unwrap()
            .to_string(),
        d["createApiKey"]["secret"].as_str().unwrap().to_string(),
    )
}

/// The status of a request with `key`.
async fn status_with(app: &TestApp, key: &str) -> u16 {
    let (status, body) = app.gql_as(Some(key), PING, json!({})).await;
    if status == 200 {
        assert_eq!(body["data"]["__typename"], "Query", "{body}");
    }
    status.as_u16()
}

/// The key's `lastUsedAt`, as the admin lists it.
async fn last_used(app: &TestApp, id: &str) -> Value {
    let keys = app.gql_ok("{ apiKeys { id lastUsedAt } }", json!({})).await;
    keys["apiKeys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .expect("the key is listed")["lastUsedAt"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_key_costs_no_statement_and_still_records_its_use() {
    // On SQLite a cached key is trusted for its time to live: an hour here, so that the
    // measurement below never crosses it (its expiry is the next test's subject).
    let app = TestApp::spawn_with(SERVE, |l| {
        quiet(l);
        l.set("key_cache_ttl_ms", "3600000");
    })
    .await;
    if app.state.store.is_postgres() {
        listening(&app).await;
    }
    let (id, key) = new_key(&app, "cached").await;
    assert_eq!(last_used(&app, &id).await, Value::Null);

    // The first request reads the key and records its use, after answering.
    let before = app.statements();
    assert_eq!(status_with(&app, &key).await, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while last_used(&app, &id).await.is_null() {
        assert!(
            Instant::now() < deadline,
            "the key's use was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.settled().await;
    assert!(app.statements() > before);

    // From then on the key costs nothing.
    let s0 = app.statements();
    for _ in 0..50 {
        assert_eq!(status_with(&app, &key).await, 200);
    }
    let statements = app.statements() - s0;
    eprintln!("50 requests with a cached key: {statements} statements");
    assert_eq!(
        statements, 0,
        "statements for 50 requests with a cached key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_instance_is_refused_on_another_within_a_second() {
    // Two instances on one database, each with its own cache; on SQLite with the default time to
    // live (1 s), which is what bounds the refusal there.
    let a = TestApp::spawn_with(SERVE, quiet).await;
    let b = a.spawn_beside(SERVE, quiet).await;
    let postgres = a.state.store.is_postgres();
    if postgres {
        listening(&a).await;
        listening(&b).await;
    }
    let (id, key) = new_key(&a, "revoked soon").await;
    // Cached on both instances.
    assert_eq!(status_with(&a, &key).await, 200);
    let read_on_b = Instant::now();
    assert_eq!(status_with(&b, &key).await, 200);
    b.settled().await;
    let s0 = b.statements();
    assert_eq!(status_with(&b, &key).await, 200);
    let statements = b.statements() - s0;
    // (On SQLite only while the copy B read is surely within its time to live, 1 s.)
    if postgres || read_on_b.elapsed() < Duration::from_millis(900) {
        assert_eq!(statements, 0, "B served the key from its cache");
    }

    let d = a
        .gql_ok(
            "mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }",
            json!({ "id": id }),
        )
        .await;
    let revoked = Instant::now();
    assert!(d["revokeApiKey"]["revokedAt"].is_string(), "{d}");
    // The revoking instance refuses it at once.
    assert_eq!(status_with(&a, &key).await, 401);
    // The other within a second.
    loop {
        let status = status_with(&b, &key).await;
        let after = revoked.elapsed();
        if status == 401 {
            eprintln!("refused on the other instance {after:?} after the revocation");
            break;
        }
        assert_eq!(status, 200);
        assert!(
            after < Duration::from_secs(1),
            "still accepted on the other instance {after:?} after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status_with(&b, &key).await, 401, "and refused from then on");
}

/// Runs `sql` as the superuser, on the server's `postgres` database.
async fn as_superuser(sql: &str) {
    let base = crate::backends::postgres_url().unwrap();
    let admin = sea_orm::Database::connect(format!("{}/postgres", base.trim_end_matches('/')))
        .await
        .unwrap();
    sea_orm::ConnectionTrait::execute_unprepared(&admin, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_listener_is_down_keys_are_read_every_time_and_then_afresh() {
    if std::env::var("VOICEGRAPH_TEST_DB").ok().as_deref() != Some("postgres") {
        eprintln!(
            "skipped: this test is about Postgres notifications (VOICEGRAPH_TEST_DB=postgres)"
        );
        return;
    }
    let app = TestApp::spawn_with(SERVE, quiet).await;
    assert_eq!(listening(&app).await, 1);
    let (id, key) = new_key(&app, "watched").await;
    let (_, other) = new_key(&app, "other").await;
    for k in [&key, &other] {
        assert_eq!(status_with(&app, k).await, 200);
    }
    // Pooled connections for what runs while new ones are refused below: requests one at a time,
    // and the watermark's read when the link changes.
    let names: Vec<String> = (0..4).map(|i| format!("warm {i}")).collect();
    let fresh = futures::future::join_all(names.iter().map(|n| new_key(&app, n))).await;
    futures::future::join_all(fresh.iter().map(|(_, k)| status_with(&app, k))).await;
    app.settled().await;
    let s0 = app.statements();
    assert_eq!(status_with(&app, &key).await, 200);
    assert_eq!(app.statements(), s0, "cached while the listener is up");

    // The listener loses its connection and cannot get another: the database refuses new
    // connections (the pool keeps the ones it has).
    let (_, db) = postgres_database(app.dir.path()).unwrap();
    as_superuser(&format!("REVOKE CONNECT ON DATABASE \"{db}\" FROM PUBLIC")).await;
    let mut link = app.state.store.notifications().watch_link();
    as_superuser(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{db}' AND query LIKE 'LISTEN%'"
    ))
    .await;
    tokio::time::timeout(Duration::from_secs(20), link.wait_for(|l| *l == Link::Down))
        .await
        .expect("the listener notices")
        .unwrap();

    // Every request now asks the database: a revocation it cannot hear of is refused at once.
    app.settled().await;
    let s0 = app.statements();
    assert_eq!(status_with(&app, &key).await, 200);
    assert!(app.statements() > s0, "the cache is bypassed while down");
    let owner = app.owner_db().await;
    sea_orm::ConnectionTrait::execute_unprepared(
        &owner,
        &format!("UPDATE api_keys SET revoked_at = now() WHERE id = '{id}'"),
    )
    .await
    .unwrap();
    assert_eq!(status_with(&app, &key).await, 401);

    // Connections allowed again, the listener reconnects, and the cache starts empty: the other
    // key (cached before) is read once more, then served from the cache again.
    as_superuser(&format!("GRANT CONNECT ON DATABASE \"{db}\" TO PUBLIC")).await;
    tokio::time::timeout(
        Duration::from_secs(60),
        link.wait_for(|l| *l == Link::Up { generation: 2 }),
    )
    .await
    .expect("the listener reconnects")
    .unwrap();
    app.settled().await;
    let s0 = app.statements();
    assert_eq!(status_with(&app, &other).await, 200);
    assert!(app.statements() > s0, "read again after the reconnect");
    app.settled().await;
    let s0 = app.statements();
    assert_eq!(status_with(&app, &other).await, 200);
    assert_eq!(app.statements(), s0, "then cached again");
}
