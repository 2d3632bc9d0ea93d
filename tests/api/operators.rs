//! What operators see: request ids (accepted, generated, echoed, named in errors and in every
//! log line of the request) and one structured access line per request.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::connections::ServerProcess;
use crate::helpers::{TestApp, ADMIN_KEY};

async fn post(app_url: &str, id: Option<&str>, query: &str) -> (Option<String>, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{app_url}/graphql"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "query": query }));
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let r = req.send().await.unwrap();
    let echoed = r
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    (echoed, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_or_made_echoed_and_named_in_errors() {
    let app = TestApp::spawn().await;
    let base = app.url("");
    let (echoed, body) = post(&base, Some("req-42/a.b:c"), "{ viewer { role } }").await;
    assert_eq!(echoed.as_deref(), Some("req-42/a.b:c"), "{body}");
    // Errors name the request they belong to.
    let (echoed, body) = post(&base, Some("req-43"), "{ call(id: \"nope\") { id } }").await;
    assert_eq!(echoed.as_deref(), Some("req-43"));
    assert_eq!(
        body["errors"][0]["extensions"]["requestId"], "req-43",
        "{body}"
    );
    // None, or one that is not plain: a fresh UUID.
    for sent in [None, Some("has space"), Some("<script>")] {
        let (echoed, body) = post(&base, sent, "{ call(id: \"nope\") { id } }").await;
        let echoed = echoed.expect("an id is always echoed");
        assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "{echoed}");
        assert_eq!(
            body["errors"][0]["extensions"]["requestId"],
            echoed.as_str()
        );
    }
    // Requests refused before GraphQL carry the header too.
    let r = reqwest::Client::new()
        .post(app.url("/graphql"))
        .header("x-request-id", "req-44")
        .bearer_auth("vg_not_a_key")
        .json(&json!({ "query": "{ viewer { role } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-request-id"], "req-44");
}

/// Lines of a JSON log, parsed.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// In production format: every line JSON (the start-up banner too), no colour codes, and one
/// access line per request with its id, operation, status, error codes and tenant; the request's
/// other lines name its id as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_access_line_per_request() {
    let server = ServerProcess::start(None, &[("log_format", "json")]).await;
    let base = format!("http://{}", server.addr);
    post(&base, Some("vg-access-1"), "query Who { viewer { role } }").await;
    post(
        &base,
        Some("vg-access-2"),
        "query Missing { call(id: \"nope\") { id } }",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (first, second) = loop {
        let lines = json_lines(&server.log());
        let access = |id: &str| {
            lines
                .iter()
                .filter(|l| l["target"] == "voicegraph::access" && l["span"]["request_id"] == id)
                .cloned()
                .collect::<Vec<_>>()
        };
        let (a, b) = (access("vg-access-1"), access("vg-access-2"));
        if !a.is_empty() && !b.is_empty() {
            assert_eq!((a.len(), b.len()), (1, 1), "one line per request");
            break (a[0].clone(), b[0].clone());
        }
        assert!(
            Instant::now() < deadline,
            "no access lines in:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let f = &first["fields"];
    assert_eq!(f["method"], "POST", "{first}");
    assert_eq!(f["path"], "/graphql");
    assert_eq!(f["status"], 200);
    assert_eq!(f["operations"], "Who");
    assert_eq!(f["error_codes"], "");
    assert!(
        uuid::Uuid::parse_str(f["tenant"].as_str().unwrap()).is_ok(),
        "{first}"
    );
    assert!(f["duration_ms"].as_f64().unwrap() >= 0.0);
    let f = &second["fields"];
    assert_eq!(f["operations"], "Missing", "{second}");
    assert!(!f["error_codes"].as_str().unwrap().is_empty(), "{second}");

    let log = server.log();
    assert!(!log.contains('\u{1b}'), "no colour codes in a file");
    let lines = json_lines(&log);
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "voicegraph is listening"),
        "the banner goes through the logger:\n{log}"
    );
}

/// Each query and mutation is timed under its operation's name, errors are counted by code, and
/// the build is named; names beyond the first 200 share the label `other`, so clients cannot
/// grow the metrics without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_are_timed_by_name_and_errors_counted_by_code() {
    let app = TestApp::spawn().await;
    let base = app.url("");
    post(&base, None, "query Who { viewer { role } }").await;
    post(&base, None, "{ viewer { role } }").await;
    post(&base, None, "query Missing { call(id: \"nope\") { id } }").await;
    for i in 0..voicegraph::http::metrics::OPERATION_LABELS + 20 {
        post(&base, None, &format!("query Op{i} {{ viewer {{ role }} }}")).await;
    }
    let metrics = app.get_text("/metrics").await;
    let count = |label: &str| -> u64 {
        let prefix =
            format!("voicegraph_graphql_request_duration_seconds_count{{operation=\"{label}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    assert_eq!(count("Who"), 1, "{metrics}");
    assert_eq!(count("anonymous"), 1);
    assert_eq!(count("Missing"), 1);
    // Who, Missing and 198 of the Op names got labels; the other 22 share one.
    assert_eq!(count("other"), 22);
    let labelled = metrics
        .lines()
        .filter(|l| l.starts_with("voicegraph_graphql_request_duration_seconds_count{"))
        .count();
    assert_eq!(labelled, voicegraph::http::metrics::OPERATION_LABELS + 2);
    assert!(
        metrics.lines().any(|l| l
            .starts_with("voicegraph_graphql_errors_total{code=\"BAD_USER_INPUT\"} 1")
            || l.starts_with("voicegraph_graphql_errors_total{code=\"NOT_FOUND\"} 1")),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "voicegraph_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    // The process itself.
    for series in [
        "voicegraph_process_cpu_seconds_total ",
        "voicegraph_process_resident_memory_bytes ",
        "voicegraph_process_open_fds ",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(series)),
            "{series}\n{metrics}"
        );
    }
}

/// The pipeline's latencies are measured: outbox deliveries by destination, the fan-out of
/// events to this instance's subscribers, the analysis by analyser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_latencies_are_measured() {
    let app = TestApp::spawn().await;
    let mut sub = app
        .subscribe(ADMIN_KEY, "subscription { callEvents { kind } }", json!({}))
        .await;
    let id = app.submit_ok(crate::helpers::short_call(), json!({})).await;
    loop {
        let d = sub.next_data(Duration::from_secs(30)).await;
        if d["callEvents"]["kind"] == "COMPLETED" {
            break;
        }
    }
    app.wait_status(&id, "COMPLETED", 30).await;
    let metrics = app.get_text("/metrics").await;
    let count = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    assert!(
        count("voicegraph_outbox_delivery_seconds_count{destination=\"jobs\"}") >= 1,
        "{metrics}"
    );
    assert!(count("voicegraph_outbox_delivery_seconds_count{destination=\"events\"}") >= 3);
    // PROCESSING and COMPLETED at least came after the subscription was following (SUBMITTED
    // may have reached it through the subscription's start-up replay, which is not fan-out).
    assert!(
        count("voicegraph_event_fanout_seconds_count") >= 2,
        "{metrics}"
    );
    assert_eq!(
        count("voicegraph_analysis_duration_seconds_count{analyzer=\"local\"}"),
        1
    );
}

/// `voicegraph_outbox_oldest_seconds`: the age of the oldest undelivered outbox row, rising while
/// one cannot be delivered and back to 0 once none is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_age_is_the_oldest_undelivered_row() {
    use sea_orm::sea_query::Expr;
    use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
    let app = TestApp::spawn().await;
    let gauge = |metrics: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("voicegraph_outbox_oldest_seconds "))
            .map(|v| v.trim().parse().unwrap())
            .expect("the gauge is exported")
    };
    let owner = app.owner_db().await;
    let written = chrono::Utc::now() - chrono::Duration::minutes(5);
    // A row no relay can deliver (no such destination): it fails and is retried, undelivered.
    let row = entities::outbox::ActiveModel {
        destination: Set("nowhere".into()),
        payload: Set(json!({})),
        created_at: Set(written),
        available_at: Set(written),
        attempts: Set(0),
        ..Default::default()
    }
    .insert(&owner)
    .await
    .unwrap();
    app.state.relay_wakeup.notify_one();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let age = gauge(&app.get_text("/metrics").await);
        if age >= 300.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the age never showed the row: {age}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    entities::outbox::Entity::update_many()
        .col_expr(
            entities::outbox::Column::SentAt,
            Expr::value(chrono::Utc::now()),
        )
        .filter(entities::outbox::Column::Id.eq(row.id))
        .exec(&owner)
        .await
        .unwrap();
    app.state.relay_wakeup.notify_one();
    loop {
        let age = gauge(&app.get_text("/metrics").await);
        if age == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the age stayed at {age}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
