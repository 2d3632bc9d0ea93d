//! The Gemini client against the stand-in server: the documented request, retries and their
//! spacing, what counts as permanent, the concurrency limit, and the Files API round trip.

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use secrecy::SecretString;
use serde_json::json;
use voicegraph::adapters::gemini::{
    FileRef, GeminiClient, GeminiConfig, GeminiError, GenerateRequest, Part, Usage,
};

use crate::gemini_server::{FileOutcome, GeminiServer, Reply};

const MODEL: &str = "gemini-2.5-flash";

fn config(server: &GeminiServer) -> GeminiConfig {
    let mut config = GeminiConfig::new(server.base_url(), SecretString::from(server.key()), MODEL);
    config.connect_timeout = Duration::from_secs(5);
    config.request_timeout = Duration::from_secs(20);
    config.max_concurrent = 4;
    config.max_attempts = 5;
    config.backoff_base = Duration::from_millis(20);
    config.backoff_max = Duration::from_secs(2);
    config.file_poll_interval = Duration::from_millis(10);
    config.file_active_timeout = Duration::from_secs(10);
    config
}

fn client(server: &GeminiServer) -> GeminiClient {
    GeminiClient::new(config(server)).unwrap()
}

fn schema() -> serde_json::Value {
    json!({
        "type": "OBJECT",
        "properties": {
            "summary": {"type": "STRING"},
            "sentiment": {"type": "NUMBER"},
        },
        "required": ["summary"],
    })
}

fn request() -> GenerateRequest {
    GenerateRequest {
        system_instruction: None,
        parts: vec![Part::Text("Summarise the call.".into())],
        response_schema: schema(),
        temperature: None,
        max_output_tokens: None,
    }
}

fn permanent(result: Result<impl std::fmt::Debug, GeminiError>) -> String {
    match result {
        Err(GeminiError::Permanent { message }) => message,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

fn transient(result: Result<impl std::fmt::Debug, GeminiError>) -> (String, Option<Duration>) {
    match result {
        Err(GeminiError::Transient {
            message,
            retry_after,
        }) => (message, retry_after),
        other => panic!("expected a transient error, got {other:?}"),
    }
}

#[tokio::test]
async fn generate_sends_the_documented_request_and_reads_the_answer() {
    let server = GeminiServer::start().await;
    let answer = json!({"summary": "A refund was agreed.", "sentiment": 0.4});
    server.push([Reply::json(answer.clone(), (1200, 40, 1290))]);
    let audio: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let req = GenerateRequest {
        system_instruction: Some("You analyse sales calls.".into()),
        parts: vec![
            Part::Text("Summarise the call.".into()),
            Part::InlineData {
                mime_type: "audio/wav".into(),
                data: Bytes::from(audio.clone()),
            },
            Part::FileData {
                mime_type: "audio/mpeg".into(),
                file_uri: format!("{}/v1beta/files/abc", server.base_url()),
            },
        ],
        response_schema: schema(),
        temperature: Some(0.25),
        max_output_tokens: Some(2048),
    };

    let generated = client(&server).generate(&req).await.unwrap();

    assert_eq!(generated.json, answer);
    assert_eq!(
        generated.usage,
        Usage {
            prompt_tokens: 1200,
            output_tokens: 40,
            total_tokens: 1290,
            thoughts_tokens: 50,
        }
    );
    assert_eq!(
        generated.model_version.as_deref(),
        Some("gemini-2.5-flash-001")
    );
    assert_eq!(generated.attempts, 1);
    assert_eq!(generated.raw["responseId"], "resp-1");
    assert_eq!(generated.raw["candidates"][0]["finishReason"], "STOP");
    assert_eq!(generated.raw["usageMetadata"]["promptTokenCount"], 1200);

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(sent.query, None, "the key goes in a header, not the URL");
    assert_eq!(sent.header("x-goog-api-key"), Some(server.key()));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    let body = sent.json.as_ref().expect("a JSON body");
    let config = &body["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(config["responseSchema"], schema());
    assert!((config["temperature"].as_f64().unwrap() - 0.25).abs() < 1e-6);
    assert_eq!(config["maxOutputTokens"], 2048);
    assert_eq!(
        body["systemInstruction"],
        json!({"parts": [{"text": "You analyse sales calls."}]})
    );
    let contents = body["contents"].as_array().unwrap();
    assert_eq!(contents.len(), 1);
    assert_eq!(contents[0]["role"], "user");
    let parts = contents[0]["parts"].as_array().unwrap();
    assert_eq!(parts[0], json!({"text": "Summarise the call."}));
    assert_eq!(parts[1]["inlineData"]["mimeType"], "audio/wav");
    assert_eq!(
        parts[2],
        json!({"fileData": {"mimeType": "audio/mpeg", "fileUri": format!("{}/v1beta/files/abc", server.base_url())}})
    );
    assert_eq!(sent.inline_data, vec![("audio/wav".to_string(), audio)]);
}

#[tokio::test]
async fn the_answer_text_parts_are_joined_and_optional_fields_left_out() {
    let server = GeminiServer::start().await;
    server.push([Reply::text("  {\"summary\": \"ok\"}\n")]);
    let generated = client(&server).generate(&request()).await.unwrap();
    assert_eq!(generated.json, json!({"summary": "ok"}));
    let body = server.requests()[0].json.clone().unwrap();
    assert!(body.get("systemInstruction").is_none());
    let config = body["generationConfig"].as_object().unwrap();
    let mut keys: Vec<_> = config.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["responseMimeType", "responseSchema"]);
}

#[tokio::test]
async fn a_429_with_retry_info_waits_at_least_the_delay_asked() {
    let server = GeminiServer::start().await;
    server.push([
        Reply::rate_limited("0.2s"),
        Reply::json(json!({"summary": "ok"}), (5, 5, 10)),
    ]);
    let generated = client(&server).generate(&request()).await.unwrap();
    assert_eq!(generated.attempts, 2);
    assert_eq!(generated.json, json!({"summary": "ok"}));
    let requests = server.generate_requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_millis(200), "retried after {gap:?}");
}

#[tokio::test]
async fn a_retry_after_header_is_honoured() {
    let server = GeminiServer::start().await;
    server.push([Reply::unavailable().with_retry_after("1")]);
    let generated = client(&server).generate(&request()).await.unwrap();
    assert_eq!(generated.attempts, 2);
    let requests = server.generate_requests();
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
}

#[tokio::test]
async fn a_wait_longer_than_backoff_max_ends_the_retries_with_the_delay() {
    let server = GeminiServer::start().await;
    server.push([Reply::rate_limited("3600s")]);
    let started = Instant::now();
    let (message, retry_after) = transient(client(&server).generate(&request()).await);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(retry_after, Some(Duration::from_secs(3600)));
    assert!(message.contains("429 RESOURCE_EXHAUSTED"), "{message}");
    assert_eq!(server.generate_requests().len(), 1);
}

#[tokio::test]
async fn unavailable_twice_then_an_answer() {
    let server = GeminiServer::start().await;
    server.push([Reply::unavailable(), Reply::unavailable()]);
    let generated = client(&server).generate(&request()).await.unwrap();
    assert_eq!(generated.attempts, 3);
    assert_eq!(generated.json, json!({"ok": true}));
    assert_eq!(server.generate_requests().len(), 3);
}

#[tokio::test]
async fn internal_errors_until_the_attempts_run_out_are_transient() {
    let server = GeminiServer::start().await;
    server.push(std::iter::repeat_n(Reply::internal(), 10));
    let mut config = config(&server);
    config.max_attempts = 3;
    let client = GeminiClient::new(config).unwrap();
    let (message, retry_after) = transient(client.generate(&request()).await);
    assert!(message.contains("500 INTERNAL"), "{message}");
    assert!(message.contains("3 attempts"), "{message}");
    assert_eq!(retry_after, None);
    assert_eq!(server.generate_requests().len(), 3);
}

#[tokio::test]
async fn invalid_argument_is_permanent_with_the_apis_message_and_not_retried() {
    let server = GeminiServer::start().await;
    server.push([Reply::error(
        400,
        "INVALID_ARGUMENT",
        "Request contains an invalid argument.",
    )]);
    let message = permanent(client(&server).generate(&request()).await);
    assert_eq!(
        message,
        "Gemini refused the request (400 INVALID_ARGUMENT): Request contains an invalid argument."
    );
    assert_eq!(server.generate_requests().len(), 1);
}

#[tokio::test]
async fn a_wrong_key_is_permanent_and_not_echoed() {
    let server = GeminiServer::start().await;
    let mut config = config(&server);
    config.api_key = SecretString::from("AIzaSy-wrong-key-0000");
    let result = GeminiClient::new(config)
        .unwrap()
        .generate(&request())
        .await;
    let message = permanent(result);
    assert!(message.contains("400 INVALID_ARGUMENT"), "{message}");
    assert!(message.contains("API key not valid"), "{message}");
    assert!(!message.contains("wrong-key"), "{message}");
    assert_eq!(server.generate_requests().len(), 1);
}

#[tokio::test]
async fn max_tokens_is_permanent() {
    let server = GeminiServer::start().await;
    server.push([Reply::max_tokens()]);
    let message = permanent(client(&server).generate(&request()).await);
    assert!(message.contains("MAX_TOKENS"), "{message}");
    assert_eq!(server.generate_requests().len(), 1);
}

#[tokio::test]
async fn safety_and_other_stops_are_permanent() {
    let server = GeminiServer::start().await;
    let reasons = [
        "SAFETY",
        "RECITATION",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "OTHER",
    ];
    server.push(reasons.map(Reply::stopped));
    let client = client(&server);
    for reason in reasons {
        let message = permanent(client.generate(&request()).await);
        assert!(
            message.contains(&format!("finishReason {reason}")),
            "{message}"
        );
    }
    assert_eq!(server.generate_requests().len(), reasons.len());
}

#[tokio::test]
async fn a_blocked_prompt_is_permanent() {
    let server = GeminiServer::start().await;
    server.push([Reply::Blocked {
        block_reason: "PROHIBITED_CONTENT",
    }]);
    let message = permanent(client(&server).generate(&request()).await);
    assert!(
        message.contains("blockReason PROHIBITED_CONTENT"),
        "{message}"
    );
}

#[tokio::test]
async fn an_answer_that_is_not_json_is_permanent() {
    let server = GeminiServer::start().await;
    server.push([Reply::text(
        "Sure! Here is the summary: the caller was happy.",
    )]);
    let message = permanent(client(&server).generate(&request()).await);
    assert!(message.contains("not valid JSON"), "{message}");
    assert!(!message.contains("caller was happy"), "{message}");
    assert_eq!(server.generate_requests().len(), 1);
}

#[tokio::test]
async fn no_more_than_max_concurrent_requests_are_in_flight() {
    let server = GeminiServer::start().await;
    // Each request waits for a second one in flight, so a pair is always seen together, then
    // lingers so that a third, were it let through, would be counted too.
    server.hold_until_in_flight(2, Duration::from_secs(3), Duration::from_millis(60));
    let mut config = config(&server);
    config.max_concurrent = 2;
    let client = GeminiClient::new(config).unwrap();
    let req = request();
    let results = futures::future::join_all((0..6).map(|_| client.generate(&req))).await;
    for result in results {
        assert_eq!(result.unwrap().json, json!({"ok": true}));
    }
    assert_eq!(server.generate_requests().len(), 6);
    assert_eq!(server.max_in_flight(), 2);
}

#[tokio::test]
async fn the_permit_is_not_held_while_backing_off() {
    let server = GeminiServer::start().await;
    // The first call is told to wait 1.5 s; meanwhile a second call, with the only permit
    // free again, gets through at once. (The semaphore is fair, so the order of the requests
    // would be the same were the permit held while sleeping: only the time tells.)
    server.push([Reply::rate_limited("1.5s")]);
    let mut config = config(&server);
    config.max_concurrent = 1;
    let client = GeminiClient::new(config).unwrap();
    let mut second_req = request();
    second_req.parts = vec![Part::Text("second".into())];
    let first_req = request();
    let first = client.generate(&first_req);
    let second = async {
        while server.generate_requests().is_empty() {
            tokio::task::yield_now().await;
        }
        client.generate(&second_req).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.unwrap().attempts, 2);
    assert_eq!(second.unwrap().attempts, 1);
    let texts: Vec<_> = server
        .generate_requests()
        .iter()
        .map(|r| r.json.as_ref().unwrap()["contents"][0]["parts"][0]["text"].clone())
        .collect();
    assert_eq!(
        texts,
        ["Summarise the call.", "second", "Summarise the call."]
    );
    let requests = server.generate_requests();
    let wait = Duration::from_millis(1500);
    let second_after = requests[1].at - requests[0].at;
    assert!(
        second_after < wait,
        "the second call waited {second_after:?}, as if for the first's backoff"
    );
    assert!(requests[2].at - requests[0].at >= wait);
}

#[tokio::test]
async fn a_server_that_never_answers_is_transient() {
    let server = GeminiServer::start().await;
    server.push([Reply::Hang, Reply::Hang]);
    let mut config = config(&server);
    config.request_timeout = Duration::from_millis(300);
    config.max_attempts = 2;
    let client = GeminiClient::new(config).unwrap();
    let (message, _) = transient(client.generate(&request()).await);
    assert!(message.contains("did not answer within 300ms"), "{message}");
    assert_eq!(server.generate_requests().len(), 2);
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = GeminiConfig::new(
        format!("http://127.0.0.1:{port}"),
        SecretString::from("AIzaSy-unused"),
        MODEL,
    );
    config.max_attempts = 2;
    config.backoff_base = Duration::from_millis(10);
    let client = GeminiClient::new(config).unwrap();
    let (message, _) = transient(client.generate(&request()).await);
    assert!(message.contains("cannot connect"), "{message}");
    assert!(!message.contains("AIzaSy"), "{message}");
}

async fn temp_audio(len: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("call.mp3");
    let bytes: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect();
    tokio::fs::write(&path, &bytes).await.unwrap();
    (dir, path, bytes)
}

#[tokio::test]
async fn a_file_is_uploaded_resumably_polled_until_active_and_deleted() {
    let server = GeminiServer::start().await;
    server.set_file_plan(2, FileOutcome::Active);
    let (_dir, path, bytes) = temp_audio(3_000_017).await;
    let client = client(&server);

    let file: FileRef = client
        .upload_file(&path, "audio/mpeg", "call 42")
        .await
        .unwrap();

    assert!(file.name.starts_with("files/"), "{file:?}");
    let id = file.name.trim_start_matches("files/");
    assert_eq!(file.uri, format!("{}/v1beta/files/{id}", server.base_url()));
    assert_eq!(file.mime_type, "audio/mpeg");
    let stored = server.file(&file.name).expect("the server holds the file");
    assert_eq!(stored.bytes.len(), bytes.len());
    assert!(
        stored.bytes == bytes,
        "the stored bytes differ from the file"
    );
    assert_eq!(stored.display_name, "call 42");

    let requests = server.requests();
    let steps: Vec<_> = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let get = format!("GET /v1beta/{}", file.name);
    assert_eq!(
        steps,
        [
            "POST /upload/v1beta/files",
            "POST /upload/v1beta/files",
            &get,
            &get,
            &get,
        ]
    );
    let start = &requests[0];
    assert_eq!(start.header("x-goog-api-key"), Some(server.key()));
    assert_eq!(start.header("x-goog-upload-protocol"), Some("resumable"));
    assert_eq!(start.header("x-goog-upload-command"), Some("start"));
    assert_eq!(
        start.header("x-goog-upload-header-content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(
        start.header("x-goog-upload-header-content-type"),
        Some("audio/mpeg")
    );
    assert_eq!(start.header("content-type"), Some("application/json"));
    assert_eq!(
        start.json,
        Some(json!({"file": {"displayName": "call 42"}}))
    );
    let upload = &requests[1];
    assert!(upload.query.as_deref().unwrap().contains("upload_id="));
    assert_eq!(
        upload.header("x-goog-upload-command"),
        Some("upload, finalize")
    );
    assert_eq!(upload.header("x-goog-upload-offset"), Some("0"));
    assert_eq!(
        upload.header("content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(
        upload.header("x-goog-api-key"),
        None,
        "the upload URL is the credential"
    );
    assert_eq!(upload.body_len, bytes.len());
    for poll in &requests[2..] {
        assert_eq!(poll.header("x-goog-api-key"), Some(server.key()));
    }

    client.delete_file(&file.name).await.unwrap();
    assert!(server.file(&file.name).is_none());
    let last = server.requests().pop().unwrap();
    assert_eq!(last.method, "DELETE");
    assert_eq!(last.path, format!("/v1beta/{}", file.name));
    assert_eq!(last.header("x-goog-api-key"), Some(server.key()));
    // Deleting again finds nothing, which counts as deleted.
    client.delete_file(&file.name).await.unwrap();
    assert!(permanent(client.delete_file("../models/x").await).contains("not a Gemini file name"));
}

#[tokio::test]
async fn a_file_that_fails_processing_is_permanent_and_deleted() {
    let server = GeminiServer::start().await;
    server.set_file_plan(1, FileOutcome::Failed);
    let (_dir, path, _) = temp_audio(10_000).await;
    let message = permanent(
        client(&server)
            .upload_file(&path, "audio/mpeg", "bad")
            .await,
    );
    assert!(message.contains("FAILED"), "{message}");
    assert!(message.contains("could not be decoded"), "{message}");
    let last = server.requests().pop().unwrap();
    assert_eq!(last.method, "DELETE");
}

#[tokio::test]
async fn a_file_that_stays_processing_past_the_deadline_is_transient() {
    let server = GeminiServer::start().await;
    server.set_file_plan(usize::MAX, FileOutcome::Active);
    let (_dir, path, _) = temp_audio(1_000).await;
    let mut config = config(&server);
    config.file_active_timeout = Duration::from_millis(100);
    let client = GeminiClient::new(config).unwrap();
    let (message, _) = transient(client.upload_file(&path, "audio/mpeg", "slow").await);
    assert!(message.contains("still PROCESSING"), "{message}");
    assert_eq!(server.requests().pop().unwrap().method, "DELETE");
}

#[tokio::test]
async fn a_missing_file_is_permanent_before_any_request() {
    let server = GeminiServer::start().await;
    let message = permanent(
        client(&server)
            .upload_file(
                std::path::Path::new("/nonexistent/call.mp3"),
                "audio/mpeg",
                "x",
            )
            .await,
    );
    assert!(message.contains("/nonexistent/call.mp3"), "{message}");
    assert!(server.requests().is_empty());
}

/// The stand-in must refuse what Google refuses, or the tests above would prove little.
#[tokio::test]
async fn the_test_server_refuses_what_google_refuses() {
    let server = GeminiServer::start().await;
    let http = reqwest::Client::new();
    let url = format!(
        "{}/v1beta/models/{MODEL}:generateContent",
        server.base_url()
    );
    let good = json!({"contents": [{"parts": [{"text": "hi"}]}]});
    let send = |key: Option<&str>, body: serde_json::Value| {
        let mut rb = http.post(&url).json(&body);
        if let Some(key) = key {
            rb = rb.header("x-goog-api-key", key);
        }
        async move {
            let resp = rb.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap();
            (status, body)
        }
    };
    let (status, body) = send(None, good.clone()).await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    let (status, body) = send(Some("nope"), good.clone()).await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    let key = Some(server.key());
    assert_eq!(send(key, good.clone()).await.0, 200);
    let snake = json!({"contents": [{"parts": [{"inline_data": {"mime_type": "audio/wav", "data": "AAE="}}]}]});
    assert_eq!(
        send(key, snake).await.0,
        200,
        "proto names are accepted too"
    );
    for bad in [
        json!({"contents": []}),
        json!({"contents": [{"parts": [{"text": "hi"}]}], "generation_config": {"response_mime_type": "application/json", "responseSchemaa": {}}}),
        json!({"contents": [{"parts": [{"inlineData": {"mimeType": "audio/wav", "data": "not base64!"}}]}]}),
        json!({"contents": [{"parts": [{"text": "hi", "fileData": {"fileUri": "x"}}]}]}),
        json!({"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"responseSchema": {"type": "OBJECT"}}}),
        json!({"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 0}}),
        json!({"prompt": "hi"}),
    ] {
        let (status, body) = send(key, bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT", "{bad}");
    }
    let inline = server.generate_requests()[3].inline_data.clone();
    assert_eq!(
        inline,
        vec![(
            "audio/wav".to_string(),
            base64::engine::general_purpose::STANDARD
                .decode("AAE=")
                .unwrap()
        )]
    );
}
