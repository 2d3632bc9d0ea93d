//! Uploads are checked once and then immutable: `submitCall(input: {recordingKey})` copies the
//! upload where no URL can write and checks and hashes the copy, which the call is analysed and
//! served from; a signed upload URL uploads once; an upload makes one call, and resubmitting it
//! with its idempotency key returns that call. On the directory store and on S3.

use entities::outbox;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use voicegraph::config::Layers;
use voicegraph::startup::Roles;

use crate::backends;
use crate::helpers::*;
use crate::require;

/// Serves and relays, but analyses nothing until a worker is started beside it.
const NO_WORKER: Roles = Roles {
    serve: true,
    worker: false,
    relay: true,
};
const WORKER: Roles = Roles {
    serve: false,
    worker: true,
    relay: false,
};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// PUTs `body` to an upload's signed URL with the headers it asks for.
async fn put(app: &TestApp, up: &Value, body: Vec<u8>) -> reqwest::StatusCode {
    let mut req = app.client.put(up["uploadUrl"].as_str().unwrap()).body(body);
    for h in up["headers"].as_array().unwrap() {
        req = req.header(h["name"].as_str().unwrap(), h["value"].as_str().unwrap());
    }
    req.send().await.expect("upload request").status()
}

const SUBMIT: &str = "mutation($k: String!, $i: String) { submitCall(input: {recordingKey: $k, idempotencyKey: $i}) { deduplicated call { id recording { byteSize sha256 } } } }";

async fn submit(app: &TestApp, key: &Value, idempotency: Option<&str>) -> Value {
    app.gql(SUBMIT, json!({ "k": key, "i": idempotency })).await
}

async fn submit_ok(app: &TestApp, key: &Value, idempotency: Option<&str>) -> (String, bool) {
    let body = submit(app, key, idempotency).await;
    assert!(body.get("errors").is_none(), "{body:#}");
    let s = &body["data"]["submitCall"];
    (
        s["call"]["id"].as_str().unwrap().to_string(),
        s["deduplicated"].as_bool().unwrap(),
    )
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("none")
}

/// The whole story on one store: the upload is replaced after `submitCall` (through its URL,
/// refused with `refused`, and then behind the URL's back, as anything with write access to
/// the store could) and the call still analyses and serves the bytes it was checked with.
async fn replaced_upload_changes_nothing(tweak: impl Fn(&mut Layers), refused: u16) {
    let app = TestApp::spawn_with(NO_WORKER, &tweak).await;
    let audio = short_call();
    let up = app.upload(&audio).await;
    let key = up["recordingKey"].clone();
    let body = submit(&app, &key, Some("u-1")).await;
    assert!(body.get("errors").is_none(), "{body:#}");
    let call = &body["data"]["submitCall"]["call"];
    let id = call["id"].as_str().unwrap().to_string();
    assert_eq!(call["recording"]["sha256"], sha256(&audio).as_str());
    assert_eq!(call["recording"]["byteSize"], audio.len());

    // The zeros of the probe: refused through the URL...
    let zeros = vec![0u8; audio.len()];
    assert_eq!(put(&app, &up, zeros.clone()).await.as_u16(), refused);
    // ...and written all the same behind its back: the call does not read the upload.
    app.state
        .blobs
        .put(key.as_str().unwrap(), zeros.clone().into(), "audio/wav")
        .await
        .unwrap();
    assert_eq!(
        app.state.blobs.get(key.as_str().unwrap()).await.unwrap(),
        Some(zeros.into())
    );
    let worker = app.spawn_beside(WORKER, &tweak).await;
    app.wait_status(&id, "COMPLETED", 60).await;
    let c = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { durationMs metrics { interruptions } recording { byteSize sha256 url } } }",
            json!({ "id": id }),
        )
        .await["call"]
        .clone();
    assert_eq!(c["durationMs"], 2000);
    assert_eq!(c["metrics"]["interruptions"], 1);
    assert_eq!(c["recording"]["sha256"], sha256(&audio).as_str());
    assert_eq!(c["recording"]["byteSize"], audio.len());
    let served = app
        .client
        .get(c["recording"]["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        sha256(&served),
        sha256(&audio),
        "the recording serves the checked bytes"
    );
    // Resubmitting with the idempotency key is the same call, without reading the upload.
    assert_eq!(submit_ok(&app, &key, Some("u-1")).await, (id, true));
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_replaced_after_submit_changes_nothing_for_the_call() {
    replaced_upload_changes_nothing(|_| {}, 409).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_an_upload_replaced_after_submit_changes_nothing_for_the_call() {
    let _ = require!(backends::aws_endpoint());
    let bucket = backends::create_bucket(&backends::sdk().await).await;
    // S3 answers a second upload with the URL 412: its `If-None-Match: *` is signed.
    replaced_upload_changes_nothing(
        |l| {
            l.set("blob_url", format!("s3://{bucket}/vg"));
        },
        412,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_upload_url_uploads_once() {
    let app = TestApp::spawn_with(NO_WORKER, |_| {}).await;
    let audio = short_call();
    let up = app.upload(&audio).await;
    let key = up["recordingKey"].as_str().unwrap().to_string();
    // Again, with the same bytes or others: refused, and the first upload stays.
    for body in [audio.clone(), vec![7u8; audio.len()]] {
        let resp = app
            .client
            .put(up["uploadUrl"].as_str().unwrap())
            .header("Content-Type", "audio/wav")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 409);
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["errors"][0]["extensions"]["code"], "CONFLICT", "{err}");
    }
    assert_eq!(
        app.state.blobs.get(&key).await.unwrap(),
        Some(audio.clone().into())
    );

    // Racing uploads with one URL: exactly one stores its bytes.
    let up2 = app
        .gql_ok(
            "mutation($n: Int!) { createRecordingUpload(input: {contentType: \"audio/wav\", byteSize: $n}) { recordingKey uploadUrl headers { name value } } }",
            json!({ "n": audio.len() }),
        )
        .await["createRecordingUpload"]
        .clone();
    let bodies: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; audio.len()]).collect();
    let statuses =
        futures::future::join_all(bodies.iter().map(|b| put(&app, &up2, b.clone()))).await;
    let won: Vec<usize> = (0..4).filter(|i| statuses[*i] == 200).collect();
    assert_eq!(won.len(), 1, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    assert_eq!(
        app.state
            .blobs
            .get(up2["recordingKey"].as_str().unwrap())
            .await
            .unwrap(),
        Some(bodies[won[0]].clone().into())
    );

    // After submitting, the upload is kept until its URL has expired, then deleted through the
    // outbox: the URL can never upload there again.
    submit_ok(&app, &up["recordingKey"], None).await;
    assert!(app.state.blobs.size(&key).await.unwrap().is_some());
    let expires: chrono::DateTime<chrono::Utc> = up["expiresAt"].as_str().unwrap().parse().unwrap();
    let deletions = outbox::Entity::find()
        .filter(outbox::Column::Destination.eq("blob_delete"))
        .all(app.state.store.connection())
        .await
        .unwrap();
    let deletion = deletions
        .iter()
        .find(|r| r.payload["keys"] == json!([key]))
        .unwrap_or_else(|| panic!("no deletion of the upload queued: {deletions:?}"));
    assert!(
        deletion.available_at > expires,
        "deleted at {} while its URL works until {expires}",
        deletion.available_at
    );
    assert!(deletion.sent_at.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upload_makes_one_call() {
    let app = TestApp::spawn_with(NO_WORKER, |_| {}).await;
    let tenant = app.gql_ok("{ viewer { tenant { id } } }", json!({})).await["viewer"]["tenant"]
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let recordings = app.dir.path().join("blobs/recordings").join(&tenant);
    let stored = || std::fs::read_dir(&recordings).map_or(0, |d| d.count());
    let audio = short_call();

    // Without an idempotency key, a second submission of the upload is a CONFLICT naming the call.
    let up = app.upload(&audio).await;
    let (first, dedup) = submit_ok(&app, &up["recordingKey"], None).await;
    assert!(!dedup);
    for idempotency in [None, Some("late")] {
        let body = submit(&app, &up["recordingKey"], idempotency).await;
        assert_eq!(code(&body), "CONFLICT", "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(&first), "{message}");
    }

    // With one: the same again is the same call, even once the upload itself is gone.
    let up = app.upload(&audio).await;
    let (second, dedup) = submit_ok(&app, &up["recordingKey"], Some("k")).await;
    assert!(!dedup);
    assert_eq!(
        submit_ok(&app, &up["recordingKey"], Some("k")).await,
        (second.clone(), true)
    );
    app.state
        .blobs
        .delete(up["recordingKey"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        submit_ok(&app, &up["recordingKey"], Some("k")).await,
        (second.clone(), true)
    );
    // Another upload of the same bytes with the key: the same call; of other bytes: CONFLICT.
    let same = app.upload(&audio).await;
    assert_eq!(
        submit_ok(&app, &same["recordingKey"], Some("k")).await,
        (second.clone(), true)
    );
    let other = app.upload(&wav(1.0, 1, 8000, &[(0, 0.1, 0.6)])).await;
    let body = submit(&app, &other["recordingKey"], Some("k")).await;
    assert_eq!(code(&body), "CONFLICT", "{body}");

    // Concurrent submissions of one upload: one call.
    let up = app.upload(&audio).await;
    let answers =
        futures::future::join_all((0..4).map(|_| submit(&app, &up["recordingKey"], None))).await;
    let made: Vec<&Value> = answers
        .iter()
        .filter(|b| b.get("errors").is_none())
        .collect();
    assert_eq!(made.len(), 1, "{answers:#?}");
    assert!(
        answers
            .iter()
            .all(|b| b.get("errors").is_none() || code(b) == "CONFLICT"),
        "{answers:#?}"
    );

    // Three calls, three recordings: no copy of a refused or repeated submission is left.
    let total = app.gql_ok("{ calls { totalCount } }", json!({})).await;
    assert_eq!(total["calls"]["totalCount"], 3);
    assert_eq!(stored(), 3);
    // A failed check leaves nothing either, and the upload can then not be used again.
    let junk = b"not audio at all".repeat(100);
    let up = app.upload(&junk).await;
    let body = submit(&app, &up["recordingKey"], None).await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(stored(), 3);
    assert_eq!(put(&app, &up, junk).await, 409);
}
