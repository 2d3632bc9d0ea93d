//! The contract of the `BlobStore` port. Each contract is a generic async function over
//! `&dyn BlobStore` plus an HTTP client for its signed URLs; each runs against the directory store
//! (whose URLs the running app serves) and against S3 (moto in the test environment).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use voicegraph::adapters::s3::S3BlobStore;
use voicegraph::ports::{BlobStore, PresignedPut};

use crate::backends;
use crate::helpers::TestApp;

/// Whether the server behind the signed URLs verifies their signatures itself. The app serving
/// the directory store does, and so does S3; moto, the S3 emulator of the test environment,
/// accepts any query-string signature (it only checks `Authorization` headers), so against it
/// the contract checks what the URL's signature covers instead of the refusal. Set
/// `VOICEGRAPH_TEST_S3_CHECKS_SIGNATURES=true` when `AWS_ENDPOINT_URL` is real S3 (or a
/// server that checks presigned URLs) to run the refusals there too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signatures {
    Checked,
    NotChecked,
}

/// Not text, so that no encoding step could go unnoticed.
fn payload(len: usize) -> Bytes {
    (0..len).map(|i| (i * 31 % 256) as u8).collect()
}

fn key(name: &str) -> String {
    format!("recordings/{}/{name}", uuid::Uuid::new_v4().simple())
}

/// The URL with one character of its signature changed.
fn tamper(url: &str) -> String {
    let at = url
        .to_ascii_lowercase()
        .find("signature=")
        .expect("a signed URL has a signature")
        + "signature=".len();
    let old = url[at..].chars().next().expect("a non-empty signature");
    let new = if old == '0' { '1' } else { '0' };
    format!("{}{new}{}", &url[..at], &url[at + old.len_utf8()..])
}

fn query(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map_or("", |(_, q)| q);
    serde_urlencoded::from_str(q).expect("a URL-encoded query")
}

async fn upload(
    http: &reqwest::Client,
    put: &PresignedPut,
    headers: &[(String, String)],
    body: Bytes,
) -> reqwest::StatusCode {
    assert_eq!(put.method, "PUT");
    let mut req = http.put(&put.url);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    req.body(body)
        .send()
        .await
        .expect("upload request")
        .status()
}

fn with_header(headers: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            if n.eq_ignore_ascii_case(name) {
                (n.clone(), value.to_string())
            } else {
                (n.clone(), v.clone())
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The contracts.
// ---------------------------------------------------------------------------------------------

/// `put` stores exact bytes (and replaces them), `get`/`size` see them and report `None` for a
/// missing object, and `delete` succeeds twice.
pub async fn contract_round_trip(store: &dyn BlobStore, _http: &reqwest::Client) {
    let k = key("call.wav");
    assert_eq!(store.get(&k).await.expect("get missing"), None);
    assert_eq!(store.size(&k).await.expect("size missing"), None);

    let bytes = payload(70_001);
    store
        .put(&k, bytes.clone(), "audio/wav")
        .await
        .expect("put");
    assert_eq!(store.get(&k).await.expect("get"), Some(bytes.clone()));
    assert_eq!(store.size(&k).await.expect("size"), Some(70_001));

    let smaller = Bytes::from_static(b"{\"summary\":\"short\"}");
    store
        .put(&k, smaller.clone(), "application/json")
        .await
        .expect("overwrite");
    assert_eq!(store.get(&k).await.expect("get"), Some(smaller.clone()));
    assert_eq!(
        store.size(&k).await.expect("size"),
        Some(smaller.len() as u64)
    );

    let empty = key("empty");
    store
        .put(&empty, Bytes::new(), "application/octet-stream")
        .await
        .expect("put empty");
    assert_eq!(
        store.get(&empty).await.expect("get empty"),
        Some(Bytes::new())
    );
    assert_eq!(store.size(&empty).await.expect("size empty"), Some(0));

    store.delete(&k).await.expect("delete");
    store.delete(&k).await.expect("deleting twice succeeds");
    assert_eq!(store.get(&k).await.expect("get deleted"), None);
    assert_eq!(store.size(&k).await.expect("size deleted"), None);
    assert_eq!(
        store.get(&empty).await.expect("get other"),
        Some(Bytes::new()),
        "deleting one object leaves the others"
    );
    store.delete(&empty).await.expect("delete empty");
}

/// A presigned GET downloads the exact bytes over plain HTTP; a URL whose signature was changed
/// is refused with 403.
pub async fn contract_presign_get(
    store: &dyn BlobStore,
    http: &reqwest::Client,
    signatures: Signatures,
) {
    let k = key("call.wav");
    let bytes = payload(4_096);
    store
        .put(&k, bytes.clone(), "audio/wav")
        .await
        .expect("put");
    let url = store
        .presign_get(&k, Duration::from_secs(60), "audio/wav")
        .await
        .expect("presign_get");

    let resp = http.get(&url).send().await.expect("download");
    assert!(resp.status().is_success(), "{} for {url}", resp.status());
    assert_eq!(
        resp.headers()["content-type"],
        "audio/wav",
        "the link answers with the type it was signed with"
    );
    assert_eq!(resp.bytes().await.expect("body"), bytes);

    match signatures {
        Signatures::Checked => {
            let bad = tamper(&url);
            assert_ne!(bad, url);
            let resp = http.get(&bad).send().await.expect("tampered download");
            assert_eq!(resp.status(), 403, "a tampered URL must be refused: {bad}");
        }
        Signatures::NotChecked => {
            let q = query(&url);
            assert_eq!(
                q.get("X-Amz-Expires").map(String::as_str),
                Some("60"),
                "{url}"
            );
            assert!(q.contains_key("X-Amz-Signature"), "{url}");
        }
    }

    store.delete(&k).await.expect("delete");
    let resp = http.get(&url).send().await.expect("download deleted");
    match signatures {
        Signatures::Checked => assert_eq!(resp.status(), 404, "a deleted object is gone: {url}"),
        // S3 answers 404 to a caller who may list the bucket and 403 to one who may not; moto
        // answers a signed link carrying `response-content-type` to a missing key with 403.
        Signatures::NotChecked => assert!(
            resp.status().is_client_error(),
            "a deleted object is gone: {} for {url}",
            resp.status()
        ),
    }
}

/// A presigned PUT takes exactly the signed bytes with the returned headers, after which `get`
/// returns them; an upload with another Content-Type or length is refused and stores nothing.
pub async fn contract_presign_put(
    store: &dyn BlobStore,
    http: &reqwest::Client,
    signatures: Signatures,
) {
    let bytes = payload(10_000);
    let len = bytes.len() as u64;
    let k = key("upload.wav");
    let before = Utc::now();
    let put = store
        .presign_put(&k, "audio/wav", len, Duration::from_secs(300))
        .await
        .expect("presign_put");
    assert_eq!(put.method, "PUT");
    let header = |name: &str| {
        put.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        header("Content-Type"),
        Some("audio/wav"),
        "{:?}",
        put.headers
    );
    assert_eq!(header("Content-Length"), Some("10000"), "{:?}", put.headers);
    let lifetime = put.expires_at - before;
    assert!(
        (298..=301).contains(&lifetime.num_seconds()),
        "expires_at is about 300 s ahead: {lifetime}"
    );
    assert_eq!(store.get(&k).await.expect("get before upload"), None);

    let status = upload(http, &put, &put.headers, bytes.clone()).await;
    assert!(status.is_success(), "upload refused with {status}");
    assert_eq!(
        store.get(&k).await.expect("get uploaded"),
        Some(bytes.clone())
    );
    assert_eq!(store.size(&k).await.expect("size uploaded"), Some(len));

    match signatures {
        Signatures::Checked => {
            let other = key("other-type.wav");
            let put = store
                .presign_put(&other, "audio/wav", len, Duration::from_secs(300))
                .await
                .expect("presign_put");
            let mpeg = with_header(&put.headers, "Content-Type", "audio/mpeg");
            let status = upload(http, &put, &mpeg, bytes.clone()).await;
            assert!(
                status.is_client_error(),
                "an upload of another Content-Type must be refused, got {status}"
            );
            assert_eq!(store.get(&other).await.expect("get refused"), None);

            let short = bytes.slice(..9_000);
            let shorter = with_header(&put.headers, "Content-Length", "9000");
            let status = upload(http, &put, &shorter, short).await;
            assert!(
                status.is_client_error(),
                "an upload of another length must be refused, got {status}"
            );
            assert_eq!(store.get(&other).await.expect("get refused"), None);
        }
        Signatures::NotChecked => {
            // What the server would check: the signature covers both headers.
            let q = query(&put.url);
            let signed = q.get("X-Amz-SignedHeaders").expect("signed headers");
            let signed: Vec<&str> = signed.split(';').collect();
            assert!(
                signed.contains(&"content-type") && signed.contains(&"content-length"),
                "the type and length must be signed: {signed:?}"
            );
            assert_eq!(q.get("X-Amz-Expires").map(String::as_str), Some("300"));
        }
    }
    store.delete(&k).await.expect("delete");
}

/// A presigned PUT uploads once: a second upload with the URL, of the same bytes or others, is
/// refused while the first is stored, and the first stays.
pub async fn contract_presign_put_once(store: &dyn BlobStore, http: &reqwest::Client) {
    let bytes = payload(4_000);
    let k = key("once.wav");
    let put = store
        .presign_put(&k, "audio/wav", 4_000, Duration::from_secs(300))
        .await
        .expect("presign_put");
    let status = upload(http, &put, &put.headers, bytes.clone()).await;
    assert!(status.is_success(), "upload refused with {status}");
    for again in [bytes.clone(), Bytes::from(vec![0u8; 4_000])] {
        let status = upload(http, &put, &put.headers, again).await;
        assert!(
            status.is_client_error(),
            "a second upload with the URL must be refused, got {status}"
        );
    }
    assert_eq!(store.get(&k).await.expect("get"), Some(bytes));
    store.delete(&k).await.expect("delete");
}

/// `copy` makes a separate object with the same bytes (replacing what was at the destination),
/// which later writes to the source do not change; a missing source is `false` and creates
/// nothing; invalid keys are errors.
pub async fn contract_copy(store: &dyn BlobStore, _http: &reqwest::Client) {
    let from = key("upload.wav");
    let to = key("recording.wav");
    let bytes = payload(2 * 1024 * 1024 + 3);
    store
        .put(&from, bytes.clone(), "audio/wav")
        .await
        .expect("put");
    store
        .put(&to, Bytes::from_static(b"old"), "audio/wav")
        .await
        .expect("put destination");
    assert!(store.copy(&from, &to).await.expect("copy"), "copied");
    assert_eq!(store.get(&to).await.expect("get copy"), Some(bytes.clone()));
    assert_eq!(
        store.size(&to).await.expect("size"),
        Some(bytes.len() as u64)
    );

    store
        .put(&from, Bytes::from_static(b"replaced"), "audio/wav")
        .await
        .expect("overwrite source");
    store.delete(&from).await.expect("delete source");
    assert_eq!(
        store.get(&to).await.expect("get copy"),
        Some(bytes),
        "the copy does not follow its source"
    );

    let nowhere = key("nowhere.wav");
    assert!(!store.copy(&from, &nowhere).await.expect("copy missing"));
    assert_eq!(store.get(&nowhere).await.expect("get"), None);
    assert!(store.copy("../x", &nowhere).await.is_err());
    assert!(store.copy(&to, "a//b").await.is_err());
    store.delete(&to).await.expect("delete copy");
}

/// Keys that could escape the store's root or alias another key are errors everywhere.
pub async fn contract_invalid_keys(store: &dyn BlobStore, _http: &reqwest::Client) {
    let minute = Duration::from_secs(60);
    for bad in ["../x", "", "a//b", "/abs", "a/../../b", "sp ace"] {
        assert!(
            store
                .put(bad, Bytes::from_static(b"x"), "text/plain")
                .await
                .is_err(),
            "put {bad:?}"
        );
        assert!(store.get(bad).await.is_err(), "get {bad:?}");
        assert!(store.size(bad).await.is_err(), "size {bad:?}");
        assert!(store.delete(bad).await.is_err(), "delete {bad:?}");
        assert!(
            store.presign_get(bad, minute, "audio/wav").await.is_err(),
            "presign_get {bad:?}"
        );
        assert!(
            store
                .presign_put(bad, "text/plain", 1, minute)
                .await
                .is_err(),
            "presign_put {bad:?}"
        );
    }
}

/// `download` streams an object into a file and reports its size; a missing object is `None`.
pub async fn contract_download(store: &dyn BlobStore, _http: &reqwest::Client) {
    let k = key("large.wav");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.wav");
    assert_eq!(
        store.download(&k, &dest).await.expect("download missing"),
        None
    );
    let bytes = payload(3 * 1024 * 1024 + 17);
    store
        .put(&k, bytes.clone(), "audio/wav")
        .await
        .expect("put");
    let n = store
        .download(&k, &dest)
        .await
        .expect("download")
        .expect("present");
    assert_eq!(n, bytes.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes.as_ref());
    assert!(
        store.download("../x", &dest).await.is_err(),
        "invalid keys are refused"
    );
}

pub async fn contract_ping(store: &dyn BlobStore, _http: &reqwest::Client) {
    store.ping().await.expect("ping");
}

// ---------------------------------------------------------------------------------------------
// The directory store, behind a running app that serves its signed URLs.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fs_round_trip() {
    let app = TestApp::spawn().await;
    contract_round_trip(&*app.state.blobs, &app.client).await;
}

#[tokio::test]
async fn fs_download() {
    let app = TestApp::spawn().await;
    contract_download(&*app.state.blobs, &app.client).await;
}

#[tokio::test]
async fn fs_presign_get() {
    let app = TestApp::spawn().await;
    contract_presign_get(&*app.state.blobs, &app.client, Signatures::Checked).await;
}

#[tokio::test]
async fn fs_presign_put() {
    let app = TestApp::spawn().await;
    contract_presign_put(&*app.state.blobs, &app.client, Signatures::Checked).await;
}

#[tokio::test]
async fn fs_presign_put_once() {
    let app = TestApp::spawn().await;
    contract_presign_put_once(&*app.state.blobs, &app.client).await;
}

#[tokio::test]
async fn fs_copy() {
    let app = TestApp::spawn().await;
    contract_copy(&*app.state.blobs, &app.client).await;
}

#[tokio::test]
async fn fs_invalid_keys() {
    let app = TestApp::spawn().await;
    contract_invalid_keys(&*app.state.blobs, &app.client).await;
}

#[tokio::test]
async fn fs_ping() {
    let app = TestApp::spawn().await;
    contract_ping(&*app.state.blobs, &app.client).await;
}

// ---------------------------------------------------------------------------------------------
// S3, each test in a new bucket under the prefix `pre/fix`.
// ---------------------------------------------------------------------------------------------

async fn s3_store() -> (S3BlobStore, String) {
    let sdk = backends::sdk().await;
    let bucket = backends::create_bucket(&sdk).await;
    let store = S3BlobStore::new(
        voicegraph::adapters::aws::s3_client(&sdk),
        bucket.clone(),
        "pre/fix".into(),
    );
    (store, bucket)
}

fn s3_signatures() -> Signatures {
    if std::env::var("VOICEGRAPH_TEST_S3_CHECKS_SIGNATURES").is_ok_and(|v| v == "true") {
        Signatures::Checked
    } else {
        Signatures::NotChecked
    }
}

#[tokio::test]
async fn s3_download() {
    let _ = crate::require!(backends::aws_endpoint());
    let (store, _) = s3_store().await;
    contract_download(&store, &reqwest::Client::new()).await;
}

#[tokio::test]
async fn s3_round_trip() {
    let _ = crate::require!(backends::aws_endpoint());
    let (store, _) = s3_store().await;
    contract_round_trip(&store, &reqwest::Client::new()).await;
}

#[tokio::test]
async fn s3_presign_get() {
    let _ = crate::require!(backends::aws_endpoint());
    let (store, _) = s3_store().await;
    contract_presign_get(&store, &reqwest::Client::new(), s3_signatures()).await;
}

#[tokio::test]
async fn s3_presign_put() {
    let _ = crate::require!(backends::aws_endpoint());
    let (store, _) = s3_store().await;
    contract_presign_put(&store, &reqwest::Client::new(), s3_signatures()).await;
}

#[tokio::test]
async fn s3_presign_put_once() {
    let _ = crate::require!(backends::aws_endpoint());
    let (store, _) = s3_store().await;
    contract_presign_put_once(&store, &reqwest::Client::new()).await;
    // S3 itself refuses the second upload: the URL's signature covers `If-None-Match: *`,
    // which the client is told to send.
    let put = store
        .presign_put(&key("x.wav"), "audio/wav", 1, Duration::from_secs(60))
        .await
        .unwrap();
    let signed = query(&put.url)["X-Amz-SignedHeaders"].clone();
    assert!(signed.split(';').any(|h| h == "if-none-match"), "{signed}");
    assert!(
        put.headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("if-none-match") && v == "*"),
        "{:?}",
        put.headers
    );
}

#[tokio::test]
async fn s3_copy() {
    let _ = crate::require!(backends::aws_endpoint());
    let (store, _) = s3_store().await;
    contract_copy(&store, &reqwest::Client::new()).await;
}

#[tokio::test]
async fn s3_invalid_keys() {
    let _ = crate::require!(backends::aws_endpoint());
    let (store, _) = s3_store().await;
    contract_invalid_keys(&store, &reqwest::Client::new()).await;
}

#[tokio::test]
async fn s3_ping() {
    let _ = crate::require!(backends::aws_endpoint());
    let (store, _) = s3_store().await;
    contract_ping(&store, &reqwest::Client::new()).await;

    let sdk = backends::sdk().await;
    let missing = S3BlobStore::new(
        voicegraph::adapters::aws::s3_client(&sdk),
        backends::unique("vg-missing"),
        String::new(),
    );
    let e = missing
        .ping()
        .await
        .expect_err("ping of a missing bucket fails");
    assert!(format!("{e:#}").contains("vg-missing"), "{e:#}");
}

/// Objects live under the prefix, joined with exactly one `/`, where other tools find them.
#[tokio::test]
async fn s3_objects_live_under_the_prefix() {
    let _ = crate::require!(backends::aws_endpoint());
    let sdk = backends::sdk().await;
    let bucket = backends::create_bucket(&sdk).await;
    let client = voicegraph::adapters::aws::s3_client(&sdk);
    let store = S3BlobStore::new(client.clone(), bucket.clone(), "/pre/fix/".into());
    store
        .put("r/1.wav", Bytes::from_static(b"RIFF"), "audio/wav")
        .await
        .expect("put");
    let head = client
        .head_object()
        .bucket(&bucket)
        .key("pre/fix/r/1.wav")
        .send()
        .await
        .expect("the object is at pre/fix/r/1.wav");
    assert_eq!(head.content_type(), Some("audio/wav"));
    assert_eq!(head.content_length(), Some(4));

    let (parsed_bucket, prefix) =
        S3BlobStore::parse_url(&format!("s3://{bucket}/pre/fix/")).expect("parse");
    let from_url = S3BlobStore::new(client, parsed_bucket, prefix);
    assert_eq!(
        from_url.get("r/1.wav").await.expect("get"),
        Some(Bytes::from_static(b"RIFF"))
    );
    assert!(S3BlobStore::parse_url("s3:///pre/fix").is_err());
}
