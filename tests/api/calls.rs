//! Submitting calls (multipart and signed upload), every field of the result, idempotency,
//! pagination and filters, tags, deletion, statistics and the DataLoader statement budget.

use serde_json::json;
use voicegraph::startup::Roles;

use crate::helpers::*;

const DETAILS: &str = include_str!("../../playground/05-call-details.graphql");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_submission_is_analysed_and_every_field_resolves() {
    let app = TestApp::spawn().await;
    let audio = short_call();
    let id = app
        .submit_ok(
            audio.clone(),
            json!({
                "externalId": "crm-42", "direction": "INBOUND", "from": "+4411", "to": "+4422",
                "agent": "Ada", "startedAt": "2026-11-24T09:00:00Z", "tags": ["vip", "demo"],
                "metadata": { "campaign": "spring", "n": 3 }, "language": "en",
                "transcript": { "text": "agent: Thanks for calling, happy to help.\ncustomer: The invoice is wrong, this is terrible." }
            }),
        )
        .await;
    app.wait_status(&id, "COMPLETED", 30).await;
    let c = app.gql_ok(DETAILS, json!({ "id": id })).await["call"].clone();
    assert_eq!(c["externalId"], "crm-42");
    assert_eq!(c["direction"], "INBOUND");
    assert_eq!(
        (c["from"].as_str(), c["to"].as_str(), c["agent"].as_str()),
        (Some("+4411"), Some("+4422"), Some("Ada"))
    );
    assert_eq!(c["startedAt"], "2026-11-24T09:00:00+00:00");
    assert_eq!(c["durationMs"], 2000);
    assert_eq!(c["tags"], json!(["vip", "demo"]));
    assert_eq!(c["metadata"], json!({ "campaign": "spring", "n": 3 }));
    assert_eq!(c["attempts"], 1);
    assert_eq!(c["analyzer"], "local");
    assert!(c["error"].is_null());
    assert!(c["completedAt"].is_string());
    assert_eq!(c["recording"]["contentType"], "audio/wav");
    assert_eq!(c["recording"]["byteSize"], audio.len());
    assert_eq!(c["transcript"]["language"], "en");

    // Ground truth: agent speaks 0.2–1.2 s, customer 1.0–1.8 s.
    let m = &c["metrics"];
    let talk = |who: &str| {
        m["talkTime"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["speaker"] == who)
            .unwrap()["ms"]
            .as_i64()
            .unwrap()
    };
    assert!((talk("agent") - 1000).abs() <= 80, "{m}");
    assert!((talk("customer") - 800).abs() <= 80, "{m}");
    assert!((m["overlapMs"].as_i64().unwrap() - 200).abs() <= 80, "{m}");
    assert_eq!(m["interruptions"], 1, "{m}");
    assert!((m["silenceMs"].as_i64().unwrap() - 400).abs() <= 100, "{m}");

    let segments = c["transcript"]["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 2, "{segments:?}");
    assert_eq!(segments[0]["speaker"], "agent");
    assert_eq!(segments[0]["channel"], 0);
    assert_eq!(segments[1]["speaker"], "customer");
    assert!(segments[0]["text"]
        .as_str()
        .unwrap()
        .contains("happy to help"));
    assert!(segments[0]["sentiment"].as_f64().unwrap() > 0.0);
    assert!(segments[1]["sentiment"].as_f64().unwrap() < 0.0);
    assert!(c["sentiment"]["label"].is_string());
    assert!(c["summary"].as_str().unwrap().contains("agent"));
    assert!(c["topics"].is_array() && c["actionItems"].is_array());

    // Events are listed once the relay has sequenced them, which may come a moment after the
    // call's status changed: wait for the third.
    let mut kinds: Vec<String> = Vec::new();
    for _ in 0..200 {
        let d = app
            .gql_ok(
                "query($id: ID!) { call(id: $id) { events { kind } } }",
                json!({ "id": id }),
            )
            .await;
        kinds = d["call"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect();
        if kinds.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(kinds, ["SUBMITTED", "PROCESSING", "COMPLETED"]);

    // Signed URLs serve the recording and the results.
    let bytes = app
        .client
        .get(c["recording"]["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(bytes.status(), 200);
    assert_eq!(bytes.bytes().await.unwrap().as_ref(), audio.as_slice());
    let result: serde_json::Value = app
        .client
        .get(c["resultUrl"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(result["schemaVersion"], 2);
    assert_eq!(result["callId"], id.as_str());
    assert_eq!(result["durationMs"], 2000);
    assert_eq!(result["segments"].as_array().unwrap().len(), 2);
    assert_eq!(result["segments"][0]["grounded"], true);
    assert!(result["metrics"]["talkTime"].is_array());
    assert!(
        result.get("usage").is_none(),
        "the local analyser spends no tokens"
    );

    // node() resolves the same call.
    let n = app
        .gql_ok(
            "query($id: ID!) { node(id: $id) { id ... on Call { status } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(n["node"]["status"], "COMPLETED");
}

/// `DateTime` accepts RFC 3339 with any offset and answers in UTC; anything else is
/// BAD_USER_INPUT naming the format, in variables and in literals alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_times_are_normalised_to_utc_and_bad_ones_name_the_format() {
    let app = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: false,
            relay: false,
        },
        |_| {},
    )
    .await;
    let id = app
        .submit_ok(
            short_call(),
            json!({ "startedAt": "2026-11-24T10:00:00+01:00" }),
        )
        .await;
    let c = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { startedAt } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(c["call"]["startedAt"], "2026-11-24T09:00:00+00:00");
    // Filters compare instants, whatever offset they are written with.
    let started_after = |t: &'static str| {
        let app = &app;
        async move {
            app.gql_ok(
                "query($t: DateTime) { calls(filter: {startedAfter: $t}) { totalCount } }",
                json!({ "t": t }),
            )
            .await["calls"]["totalCount"]
                .as_i64()
                .unwrap()
        }
    };
    assert_eq!(started_after("2026-11-24T09:30:00+01:00").await, 1);
    assert_eq!(started_after("2026-11-24T09:30:00Z").await, 0);

    let (status, body) = app
        .submit(
            ADMIN_KEY,
            short_call(),
            "audio/wav",
            json!({ "startedAt": "2026-11-24 09:00" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let literal = app
        .gql(
            "{ calls(filter: {createdAfter: \"2026-11-24T09:00:00\"}) { totalCount } }",
            json!({}),
        )
        .await;
    for body in [body, literal] {
        let err = &body["errors"][0];
        assert_eq!(err["extensions"]["code"], "BAD_USER_INPUT", "{body}");
        assert!(
            err["message"].as_str().unwrap().contains("RFC 3339"),
            "{body}"
        );
    }
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_upload_then_submit_by_key() {
    let app = TestApp::spawn().await;
    let audio = wav(1.5, 1, 16000, &[(0, 0.3, 1.0)]);
    let up = app
        .gql_ok(
            "mutation($n: Int!) { createRecordingUpload(input: {contentType: \"audio/wav\", byteSize: $n}) { recordingKey uploadUrl method headers { name value } expiresAt } }",
            json!({ "n": audio.len() }),
        )
        .await["createRecordingUpload"]
        .clone();
    assert_eq!(up["method"], "PUT");
    let mut put = app
        .client
        .put(up["uploadUrl"].as_str().unwrap())
        .body(audio.clone());
    for h in up["headers"].as_array().unwrap() {
        put = put.header(h["name"].as_str().unwrap(), h["value"].as_str().unwrap());
    }
    assert_eq!(put.send().await.unwrap().status(), 200);
    let d = app
        .gql_ok(
            "mutation($k: String!) { submitCall(input: {recordingKey: $k, channels: [\"caller\"]}) { call { id status recording { byteSize } } } }",
            json!({ "k": up["recordingKey"] }),
        )
        .await;
    let id = d["submitCall"]["call"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        d["submitCall"]["call"]["recording"]["byteSize"],
        audio.len()
    );
    app.wait_status(&id, "COMPLETED", 30).await;
    let c = app.gql_ok("query($id: ID!) { call(id: $id) { durationMs metrics { talkTime { speaker ms } overlapMs interruptions } recording { download(expiresIn: 60) { url expiresAt } } resultDownload(expiresIn: 120) { expiresAt } } }", json!({ "id": id })).await;
    let at = |v: &serde_json::Value| {
        v.as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    let left =
        (at(&c["call"]["recording"]["download"]["expiresAt"]) - chrono::Utc::now()).num_seconds();
    assert!((55..=60).contains(&left), "{left}");
    let left = (at(&c["call"]["resultDownload"]["expiresAt"]) - chrono::Utc::now()).num_seconds();
    assert!((115..=120).contains(&left), "{left}");
    let dl = app
        .client
        .get(c["call"]["recording"]["download"]["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(dl.bytes().await.unwrap().as_ref(), audio.as_slice());
    assert_eq!(c["call"]["durationMs"], 1500);
    let tt = &c["call"]["metrics"]["talkTime"][0];
    assert_eq!(tt["speaker"], "caller");
    assert!((tt["ms"].as_i64().unwrap() - 700).abs() <= 80, "{tt}");
    assert_eq!(c["call"]["metrics"]["overlapMs"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_deduplicates_and_conflicts() {
    let app = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: false,
            relay: true,
        },
        |_| {},
    )
    .await;
    let a = short_call();
    let (_, first) = app
        .submit(
            ADMIN_KEY,
            a.clone(),
            "audio/wav",
            json!({ "idempotencyKey": "k-1" }),
        )
        .await;
    let (_, again) = app
        .submit(
            ADMIN_KEY,
            a.clone(),
            "audio/wav",
            json!({ "idempotencyKey": "k-1" }),
        )
        .await;
    assert_eq!(first["data"]["submitCall"]["deduplicated"], false);
    assert_eq!(again["data"]["submitCall"]["deduplicated"], true);
    assert_eq!(
        first["data"]["submitCall"]["call"]["id"],
        again["data"]["submitCall"]["call"]["id"]
    );
    let other = wav(2.0, 2, 8000, &[(0, 0.1, 0.5)]);
    let (_, conflict) = app
        .submit(
            ADMIN_KEY,
            other,
            "audio/wav",
            json!({ "idempotencyKey": "k-1" }),
        )
        .await;
    assert_eq!(
        conflict["errors"][0]["extensions"]["code"], "CONFLICT",
        "{conflict}"
    );

    // Concurrent repeats create one call.
    let b = wav(1.0, 1, 8000, &[(0, 0.1, 0.6)]);
    let results = futures::future::join_all((0..6).map(|_| {
        app.submit(
            ADMIN_KEY,
            b.clone(),
            "audio/wav",
            json!({ "idempotencyKey": "k-2" }),
        )
    }))
    .await;
    let ids: std::collections::HashSet<_> = results
        .iter()
        .map(|(_, r)| {
            r["data"]["submitCall"]["call"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    let total = app.gql_ok("{ calls { totalCount } }", json!({})).await;
    assert_eq!(total["calls"]["totalCount"], 2);
    // One job per call, not per request.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.state.queue.depth().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_filters_and_ordering() {
    let app = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: false,
            relay: false,
        },
        |_| {},
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let tags = if i % 2 == 0 {
            json!(["even"])
        } else {
            json!(["odd"])
        };
        let dir = if i < 2 { "INBOUND" } else { "OUTBOUND" };
        ids.push(app.submit_ok(short_call(), json!({ "externalId": format!("ext-{i}"), "tags": tags, "direction": dir, "agent": format!("agent-{}", i % 2) })).await);
    }
    let page = |first: Option<i64>,
                after: Option<String>,
                last: Option<i64>,
                before: Option<String>,
                dir: &str| {
        let q = format!("query($first: Int, $after: String, $last: Int, $before: String) {{ calls(first: $first, after: $after, last: $last, before: $before, orderBy: {{field: CREATED_AT, direction: {dir}}}) {{ totalCount pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }} edges {{ cursor node {{ id }} }} nodes {{ id }} }} }}");
        let app = &app;
        async move {
            app.gql_ok(
                &q,
                json!({ "first": first, "after": after, "last": last, "before": before }),
            )
            .await["calls"]
                .clone()
        }
    };
    let ids_of = |p: &serde_json::Value| -> Vec<String> {
        p["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["id"].as_str().unwrap().to_string())
            .collect()
    };

    // Oldest first, forward in pages of 2.
    let p1 = page(Some(2), None, None, None, "ASC").await;
    assert_eq!(p1["totalCount"], 5);
    assert_eq!(ids_of(&p1), ids[0..2]);
    assert_eq!(p1["pageInfo"]["hasNextPage"], true);
    assert_eq!(p1["pageInfo"]["hasPreviousPage"], false);
    assert_eq!(p1["nodes"].as_array().unwrap().len(), 2);
    let p2 = page(
        Some(2),
        p1["pageInfo"]["endCursor"].as_str().map(String::from),
        None,
        None,
        "ASC",
    )
    .await;
    assert_eq!(ids_of(&p2), ids[2..4]);
    assert_eq!(p2["pageInfo"]["hasPreviousPage"], true);
    let p3 = page(
        Some(2),
        p2["pageInfo"]["endCursor"].as_str().map(String::from),
        None,
        None,
        "ASC",
    )
    .await;
    assert_eq!(ids_of(&p3), ids[4..5]);
    assert_eq!(p3["pageInfo"]["hasNextPage"], false);
    // Backward from the end.
    let b1 = page(None, None, Some(2), None, "ASC").await;
    assert_eq!(ids_of(&b1), ids[3..5]);
    assert_eq!(b1["pageInfo"]["hasPreviousPage"], true);
    let b2 = page(
        None,
        None,
        Some(2),
        b1["pageInfo"]["startCursor"].as_str().map(String::from),
        "ASC",
    )
    .await;
    assert_eq!(ids_of(&b2), ids[1..3]);
    assert_eq!(b2["pageInfo"]["hasNextPage"], true);
    // Newest first by default.
    let d = page(Some(5), None, None, None, "DESC").await;
    let mut rev = ids.clone();
    rev.reverse();
    assert_eq!(ids_of(&d), rev);

    let count = |filter: serde_json::Value| {
        let app = &app;
        async move {
            app.gql_ok("query($f: CallFilter) { calls(filter: $f, first: 100) { totalCount edges { node { id } } } }", json!({ "f": filter }))
                .await["calls"]["totalCount"]
                .as_i64()
                .unwrap()
        }
    };
    assert_eq!(count(json!({ "tags": ["even"] })).await, 3);
    assert_eq!(count(json!({ "tags": ["odd"] })).await, 2);
    assert_eq!(count(json!({ "tags": ["even", "odd"] })).await, 0);
    assert_eq!(count(json!({ "externalId": "ext-3" })).await, 1);
    assert_eq!(count(json!({ "direction": ["INBOUND"] })).await, 2);
    assert_eq!(count(json!({ "agent": "agent-1" })).await, 2);
    assert_eq!(count(json!({ "status": ["QUEUED"] })).await, 5);
    assert_eq!(count(json!({ "status": ["COMPLETED"] })).await, 0);
    assert_eq!(
        count(json!({ "createdAfter": "2000-01-01T00:00:00Z" })).await,
        5
    );
    assert_eq!(
        count(json!({ "createdBefore": "2000-01-01T00:00:00Z" })).await,
        0
    );
    let bad = app
        .gql(
            "{ calls(after: \"not-a-cursor\") { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(bad["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_search_tags_stats_and_delete() {
    let app = TestApp::spawn().await;
    let a = app.submit_ok(short_call(), json!({ "transcript": { "text": "agent: Your REFUND is approved, wonderful.\ncustomer: Thank you, great." } })).await;
    let b = app.submit_ok(short_call(), json!({ "transcript": { "text": "agent: The outage is awful.\ncustomer: This is bad and slow." } })).await;
    app.wait_status(&a, "COMPLETED", 30).await;
    app.wait_status(&b, "COMPLETED", 30).await;

    let found = app
        .gql_ok(
            "{ calls(filter: {text: \"refund\"}) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(found["calls"]["edges"].as_array().unwrap().len(), 1);
    assert_eq!(found["calls"]["edges"][0]["node"]["id"], a.as_str());

    let tagged = app
        .gql_ok(
            "mutation($id: ID!) { tagCall(id: $id, tags: [\"reviewed\", \"reviewed\"]) { tags } }",
            json!({ "id": a }),
        )
        .await;
    assert_eq!(tagged["tagCall"]["tags"], json!(["reviewed"]));
    let retry = app
        .gql(
            "mutation($id: ID!) { retryCall(id: $id) { id } }",
            json!({ "id": a }),
        )
        .await;
    assert_eq!(retry["errors"][0]["extensions"]["code"], "CONFLICT");

    let s = app
        .gql_ok(
            include_str!("../../playground/07-call-stats.graphql"),
            json!({}),
        )
        .await["callStats"]
        .clone();
    assert_eq!(s["total"], 2);
    assert_eq!(
        s["byStatus"],
        json!([{ "status": "COMPLETED", "count": 2 }])
    );
    assert_eq!(s["totalDurationMs"], 4000.0);
    assert_eq!(s["averageDurationMs"], 2000.0);
    assert_eq!(s["interruptions"], 2);
    let labels: Vec<_> = s["bySentiment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    assert!(
        labels.contains(&"POSITIVE") && labels.contains(&"NEGATIVE"),
        "{s}"
    );
    let share: f64 = s["talkTime"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["share"].as_f64().unwrap())
        .sum();
    assert!((share - 1.0).abs() < 1e-9);
    assert_eq!(s["daily"].as_array().unwrap().len(), 1);
    assert_eq!(s["daily"][0]["completed"], 2);

    // Delete removes rows, recording and results.
    let urls = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { recording { url contentType } resultUrl } }",
            json!({ "id": b }),
        )
        .await;
    // Before: the links answer with what they hold (a player or browser knows what it got).
    for (url, kind) in [
        (
            &urls["call"]["recording"]["url"],
            urls["call"]["recording"]["contentType"].as_str().unwrap(),
        ),
        (&urls["call"]["resultUrl"], "application/json"),
    ] {
        let r = app.client.get(url.as_str().unwrap()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], kind, "{url}");
    }
    assert!(urls["call"]["recording"]["contentType"]
        .as_str()
        .unwrap()
        .starts_with("audio/"));
    let d = app
        .gql_ok(
            "mutation($id: ID!) { deleteCall(id: $id) { deletedId } }",
            json!({ "id": b }),
        )
        .await;
    assert_eq!(d["deleteCall"]["deletedId"], b.as_str());
    let gone = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { id } }",
            json!({ "id": b }),
        )
        .await;
    assert!(gone["call"].is_null());
    for url in [
        &urls["call"]["recording"]["url"],
        &urls["call"]["resultUrl"],
    ] {
        let mut status = 0;
        for _ in 0..50 {
            status = app
                .client
                .get(url.as_str().unwrap())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if status == 404 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(status, 404, "blob still there: {url}");
    }
    let again = app
        .gql(
            "mutation($id: ID!) { deleteCall(id: $id) { deletedId } }",
            json!({ "id": b }),
        )
        .await;
    assert_eq!(again["errors"][0]["extensions"]["code"], "NOT_FOUND");
}

/// Nested lists go through DataLoaders: the statements for a page do not grow with its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_100_costs_the_same_statements_as_a_page_of_2() {
    let app = TestApp::spawn_with(Roles::ALL, |l| {
        l.set("worker_concurrency", "4");
    })
    .await;
    let audio = wav(0.6, 2, 8000, &[(0, 0.05, 0.3), (1, 0.3, 0.55)]);
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(
            app.submit_ok(audio.clone(), json!({ "tags": ["bulk"] }))
                .await,
        );
    }
    for id in &ids {
        app.wait_status(id, "COMPLETED", 120).await;
    }
    let dir = app.stop().await;
    // Only the API role, and no background polling, so that every statement counted is ours.
    let app = TestApp::spawn_in(
        dir,
        Roles {
            serve: true,
            worker: false,
            relay: false,
        },
        |l| {
            // On SQLite the key is then read on every request, as the budget below counts it;
            // on Postgres it is cached (the notifications invalidate it) and costs nothing.
            l.set("watermark_poll_ms", "3600000")
                .set("key_cache_ttl_ms", "0");
        },
    )
    .await;
    let q = "query($n: Int!) { calls(first: $n) { edges { node { id tags transcript { segments { speaker startMs } } events { kind call { id } } } } } }";
    // The instance reads the event watermark once at start (the poll above keeps it from doing
    // so again); wait for that read, which completes before the value is published, so that it
    // is not counted below.
    let mut watermark = app.state.watermark.subscribe();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        watermark.wait_for(|top| *top > 0),
    )
    .await
    .expect("the watermark is read at start")
    .unwrap();
    // A request writes its key's last-used time when that is over a minute old. Refresh it
    // now, so that no request measured below crosses the minute and writes it (the submissions
    // above can take about that long on a loaded machine).
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    entities::api_keys::Entity::update_many()
        .col_expr(
            entities::api_keys::Column::LastUsedAt,
            Expr::value(chrono::Utc::now()),
        )
        .filter(entities::api_keys::Column::RevokedAt.is_null())
        .exec(&app.owner_db().await)
        .await
        .unwrap();
    app.gql_ok(q, json!({ "n": 1 })).await; // warm-up
    let s0 = app.statements();
    let two = app.gql_ok(q, json!({ "n": 2 })).await;
    let s1 = app.statements();
    let hundred = app.gql_ok(q, json!({ "n": 100 })).await;
    let s2 = app.statements();
    assert_eq!(two["calls"]["edges"].as_array().unwrap().len(), 2);
    let edges = hundred["calls"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 100);
    assert!(edges.iter().all(|e| e["node"]["transcript"]["segments"]
        .as_array()
        .unwrap()
        .len()
        == 2));
    assert!(edges
        .iter()
        .all(|e| e["node"]["events"].as_array().unwrap().len() == 3));
    let (small, large) = (s1 - s0, s2 - s1);
    println!("SQL statements: page of 2 = {small}, page of 100 = {large}");
    assert_eq!(small, large, "statements grew with the page size");
    // The page, its segments, its events (and on SQLite the key); on Postgres each runs in a
    // transaction of the tenant, which sets it first (`set_config`, one statement each).
    let budget = if app.state.store.is_postgres() { 6 } else { 4 };
    assert!(large <= budget, "{large} statements for one page");
}

/// What each field of `Call` is asked with in [`every_field_reads_the_same_alone_as_with_all`].
const CALL_FIELDS: &[(&str, &str)] = &[
    ("id", "id"),
    ("externalId", "externalId"),
    ("status", "status"),
    ("direction", "direction"),
    ("from", "from"),
    ("to", "to"),
    ("agent", "agent"),
    ("startedAt", "startedAt"),
    ("durationMs", "durationMs"),
    ("channels", "channels"),
    ("recording", "recording { contentType byteSize sha256 url download { url } }"),
    ("resultUrl", "resultUrl"),
    ("resultDownload", "resultDownload { url }"),
    (
        "transcript",
        "transcript { text language segments { index speaker channel startMs endMs text sentiment grounded } }",
    ),
    ("summary", "summary"),
    ("sentiment", "sentiment { score label }"),
    ("topics", "topics"),
    ("actionItems", "actionItems"),
    ("issues", "issues"),
    ("quotes", "quotes { kind text segments { index text } }"),
    ("intent", "intent"),
    ("outcome", "outcome"),
    (
        "categories",
        "categories { name category { id name } segments { index } }",
    ),
    (
        "analyses",
        "analyses { id analyzer status current attempts usage { totalTokens } }",
    ),
    (
        "metrics",
        "metrics { talkTime { speaker ms } silenceMs overlapMs interruptions longestMonologueMs }",
    ),
    ("tags", "tags"),
    ("metadata", "metadata"),
    ("redaction", "redaction { transcript audio deleteOriginal }"),
    ("redactions", "redactions { kind field start end startMs endMs }"),
    ("events", "events { kind status analysisId call { id summary } }"),
    ("analyzer", "analyzer"),
    ("usage", "usage { totalTokens }"),
    ("error", "error"),
    ("attempts", "attempts"),
    ("createdAt", "createdAt"),
    ("updatedAt", "updatedAt"),
    ("completedAt", "completedAt"),
];

/// Signed URLs carry their expiry, which moves with the clock: compare their presence.
fn without_urls(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::String(s) if s.starts_with("http") => json!("<url>"),
        serde_json::Value::Array(a) => a.iter().map(without_urls).collect(),
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, v)| (k.clone(), without_urls(v)))
            .collect(),
        other => other.clone(),
    }
}

/// `call` and `calls` read only the large columns the selection needs: every field of `Call`,
/// asked alone (by id and in a page), answers what it answers beside every other field. A field
/// added to `Call` fails this test until it is listed in `CALL_FIELDS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_reads_the_same_alone_as_with_all() {
    let app = TestApp::spawn().await;
    app.gql_ok(
        "mutation { createCategory(input: {name: \"Billing\", keywords: [\"invoice\"]}) { id } }",
        json!({}),
    )
    .await;
    let id = app
        .submit_ok(
            short_call(),
            json!({
                "externalId": "crm-7", "direction": "OUTBOUND", "from": "+4411", "to": "+4422",
                "agent": "Ada", "startedAt": "2026-11-24T09:00:00Z", "tags": ["vip"],
                "metadata": { "campaign": "autumn" }, "language": "en",
                "channels": ["agent", "customer"],
                "transcript": { "text": "agent: Thanks for calling, I will send the invoice today.\ncustomer: The invoice is wrong, this is terrible." }
            }),
        )
        .await;
    app.wait_status(&id, "COMPLETED", 30).await;
    // Every event sequenced, so that `events` is the same from one query to the next.
    for _ in 0..200 {
        let d = app
            .gql_ok(
                "query($id: ID!) { call(id: $id) { events { kind } } }",
                json!({ "id": id }),
            )
            .await;
        if d["call"]["events"].as_array().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let introspected = app
        .gql_ok("{ __type(name: \"Call\") { fields { name } } }", json!({}))
        .await;
    let names: Vec<&str> = introspected["__type"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    let listed: Vec<&str> = CALL_FIELDS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names, listed,
        "CALL_FIELDS lists every field of Call, in order"
    );

    let all = CALL_FIELDS
        .iter()
        .map(|(_, s)| *s)
        .collect::<Vec<_>>()
        .join(" ");
    let by_id = format!("query($id: ID!) {{ call(id: $id) {{ {all} }} }}");
    let full = without_urls(&app.gql_ok(&by_id, json!({ "id": id })).await["call"]);
    assert_eq!(full["summary"].as_str().map(str::is_empty), Some(false));
    assert_eq!(full["tags"], json!(["vip"]));
    assert_eq!(full["categories"][0]["name"], "Billing", "{full}");
    assert_eq!(
        full["transcript"]["text"].as_str().map(str::is_empty),
        Some(false)
    );
    for (name, selection) in CALL_FIELDS {
        let alone = app
            .gql_ok(
                &format!("query($id: ID!) {{ call(id: $id) {{ {selection} }} }}"),
                json!({ "id": id }),
            )
            .await;
        assert_eq!(
            without_urls(&alone["call"][name]),
            full[name],
            "call {{ {name} }}"
        );
        let page = app
            .gql_ok(
                &format!(
                    "{{ calls(first: 5) {{ nodes {{ {selection} }} edges {{ node {{ id }} }} }} }}"
                ),
                json!({}),
            )
            .await;
        assert_eq!(
            without_urls(&page["calls"]["nodes"][0][name]),
            full[name],
            "calls {{ nodes {{ {name} }} }}"
        );
    }
}
