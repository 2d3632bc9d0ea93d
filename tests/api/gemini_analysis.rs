//! Calls analysed with Gemini end to end — submitted over GraphQL, analysed by the worker, read
//! back — against the stand-in server (`gemini_server`), which answers like a model that listens:
//! it runs voice activity detection on each audio part it is sent and transcribes what it hears
//! there, with drifted timestamps, so that windows, stitching and grounding are checked for real.

use std::time::Duration;

use serde_json::{json, Value};
use voicegraph::adapters::gemini::insights::PROMPT_VERSION;
use voicegraph::startup::Roles;

use crate::gemini_server::{FileOutcome, GeminiServer, Reply, TEST_KEY};
use crate::helpers::*;

const MODEL: &str = "gemini-2.5-flash";

/// A stand-in model: per audio part (one per channel), a segment per stretch of speech it hears,
/// shifted by `drift_ms`; plus `extra` segments as given (window-relative seconds). Its action
/// item cites the first segment, its issue the last.
fn listening_model(
    drift_ms: i64,
    extra: Vec<Value>,
) -> impl Fn(&Value, &[(String, Vec<u8>)]) -> Reply {
    move |request, audio| {
        let speakers: Vec<String> = request["generationConfig"]["responseSchema"]["properties"]
            ["segments"]["items"]["properties"]["speaker"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let mut segments = Vec::new();
        for (c, (_, bytes)) in audio.iter().enumerate() {
            let facts = voicegraph::adapters::local::acoustic::facts(bytes).unwrap();
            for &(a, b) in &facts.speech[0] {
                segments.push(json!({
                    "speaker": speakers[c],
                    "startSeconds": (a + drift_ms) as f64 / 1000.0,
                    "endSeconds": (b + drift_ms) as f64 / 1000.0,
                    "text": format!("{} speaks", speakers[c]),
                    "sentiment": 0.5,
                }));
            }
        }
        segments.extend(extra.iter().cloned());
        let last = segments.len().saturating_sub(1);
        Reply::json(
            json!({
                "segments": segments,
                "summary": "The customer asked about an invoice.",
                "sentiment": 0.4,
                "topics": ["billing", "Billing", "invoice"],
                "actionItems": [{"text": "send the invoice", "segments": [0]}],
                "issues": [{"text": "an invoice is wrong", "segments": [last]}],
                "intent": "a question about an invoice",
                "outcome": "RESOLVED",
                "language": "en",
            }),
            (1000, 200, 1300),
        )
    }
}

async fn gemini_app(
    server: &GeminiServer,
    tweak: impl FnOnce(&mut voicegraph::config::Layers),
) -> TestApp {
    let (base, key) = (server.base_url().to_string(), server.key().to_string());
    TestApp::spawn_with(Roles::ALL, move |l| {
        l.set("analyzer", "gemini")
            .set("gemini_base_url", base)
            .set("gemini_api_key", key)
            .set("gemini_backoff_base_ms", "20")
            .set("job_max_receives", "2");
        tweak(l);
    })
    .await
}

const CALL_QUERY: &str =
    "query($id: ID!) { call(id: $id) { status error analyzer summary topics actionItems
    sentiment { score label } durationMs
    transcript { text language segments { speaker channel startMs endMs text sentiment grounded } }
    metrics { talkTime { speaker ms } } } }";

async fn call(app: &TestApp, id: &str) -> Value {
    app.gql_ok(CALL_QUERY, json!({ "id": id })).await["call"].clone()
}

/// agent 0.5–2.0 s, customer 2.5–4.0 s, then both silent to 6 s.
fn exchange() -> Vec<u8> {
    wav(6.0, 2, 8000, &[(0, 0.5, 2.0), (1, 2.5, 4.0)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_comes_back_transcribed_grounded_and_summarised() {
    let server = GeminiServer::start().await;
    // 300 ms of drift on every timestamp, and words the model put where the agent is silent.
    server.answer_with(listening_model(
        300,
        vec![json!({"speaker": "agent", "startSeconds": 4.6, "endSeconds": 5.5, "text": "phantom", "sentiment": 0.0})],
    ));
    let app = gemini_app(&server, |_| {}).await;
    let id = app.submit_ok(exchange(), json!({})).await;
    app.wait_status(&id, "COMPLETED", 60).await;
    let c = call(&app, &id).await;
    assert_eq!(c["analyzer"], format!("gemini:{MODEL}"));
    assert_eq!(c["summary"], "The customer asked about an invoice.");
    assert_eq!(c["topics"], json!(["billing", "invoice"]), "deduplicated");
    assert_eq!(c["actionItems"], json!(["send the invoice"]));
    assert_eq!(c["sentiment"]["label"], "POSITIVE");
    assert_eq!(c["transcript"]["language"], "en");
    let segments = c["transcript"]["segments"].as_array().unwrap();
    let spans: Vec<(String, i64, i64, bool)> = segments
        .iter()
        .map(|s| {
            (
                s["speaker"].as_str().unwrap().to_string(),
                s["startMs"].as_i64().unwrap(),
                s["endMs"].as_i64().unwrap(),
                s["grounded"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(spans.len(), 3, "{spans:?}");
    // The drifted boundaries snapped back onto the speech the audio has.
    let near = |a: i64, b: i64| (a - b).abs() <= 60;
    assert!(
        spans[0].0 == "agent" && near(spans[0].1, 500) && near(spans[0].2, 2000),
        "{spans:?}"
    );
    assert!(
        spans[1].0 == "customer" && near(spans[1].1, 2500) && near(spans[1].2, 4000),
        "{spans:?}"
    );
    assert!(spans[0].3 && spans[1].3);
    // The phantom words are kept where the model put them, and flagged.
    assert_eq!((spans[2].1, spans[2].2, spans[2].3), (4600, 5500, false));
    assert_eq!(segments[1]["channel"], 1);
    assert_eq!(segments[0]["text"], "agent speaks");
    assert!(c["transcript"]["text"]
        .as_str()
        .unwrap()
        .contains("customer: customer speaks"));
    // Talk time is the audio's, not the model's (which claimed the phantom 0.9 s too).
    let talk = c["metrics"]["talkTime"].as_array().unwrap();
    assert!(near(talk[0]["ms"].as_i64().unwrap(), 1500), "{talk:?}");
    assert_eq!(c["durationMs"], 6000);

    // What was sent: one request, the key in its header, each channel as its own WAV part.
    let requests = server.generate_requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.path, format!("/v1beta/models/{MODEL}:generateContent"));
    assert_eq!(r.header("x-goog-api-key"), Some(TEST_KEY));
    let body = r.json.as_ref().unwrap();
    assert_eq!(
        body["generationConfig"]["responseMimeType"],
        "application/json"
    );
    assert_eq!(
        body["generationConfig"]["responseSchema"]["properties"]["segments"]["items"]["properties"]
            ["speaker"]["enum"],
        json!(["agent", "customer"])
    );
    assert!(body["systemInstruction"]["parts"][0]["text"]
        .as_str()
        .unwrap()
        .contains("phone calls"));
    assert_eq!(r.inline_data.len(), 2);
    for (c, (mime, bytes)) in r.inline_data.iter().enumerate() {
        assert_eq!(mime, "audio/wav");
        let facts = voicegraph::adapters::local::acoustic::facts(bytes).unwrap();
        assert_eq!(facts.channels(), 1);
        assert!((facts.duration_ms - 6000).abs() <= 10);
        // Each part holds its own channel only.
        let (start, _) = facts.speech[0][0];
        assert!(
            near(start, if c == 0 { 500 } else { 2500 }),
            "{:?}",
            facts.speech
        );
    }
    let texts: Vec<&str> = body["contents"][0]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["text"].as_str())
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("only agent is heard")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("only customer is heard")),
        "{texts:?}"
    );

    // The results document carries the token usage; the raw response is kept beside it.
    let results = download_results(&app, &id).await;
    // Its insights cite the grounded segments: the agent's first words, the phantom ones.
    assert_eq!(
        results["actionItems"],
        json!([{"text": "send the invoice", "segments": [0]}])
    );
    assert_eq!(
        results["issues"],
        json!([{"text": "an invoice is wrong", "segments": [2]}])
    );
    assert_eq!(results["intent"], "a question about an invoice");
    assert_eq!(results["outcome"], "RESOLVED");
    assert_eq!(results["model"], MODEL);
    assert_eq!(results["promptVersion"], PROMPT_VERSION);
    assert_eq!(
        results["usage"],
        json!({"promptTokens": 1000, "outputTokens": 300, "totalTokens": 1300})
    );
    let raw = app
        .state
        .blobs
        .get(&format!(
            "results/{}/{id}/{}.model.json",
            tenant_of(&app).await,
            results["analysisId"].as_str().unwrap()
        ))
        .await
        .unwrap()
        .expect("raw responses stored");
    let raw: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(raw[0]["modelVersion"], format!("{MODEL}-001"));

    // Tokens are kept with the call and summed in the statistics: the cost per call-minute.
    let d = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { usage { promptTokens outputTokens totalTokens } }
               callStats { tokens { totalTokens analysedCalls tokensPerCallMinute } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        d["call"]["usage"],
        json!({"promptTokens": 1000.0, "outputTokens": 300.0, "totalTokens": 1300.0})
    );
    let tokens = &d["callStats"]["tokens"];
    assert_eq!(
        (
            tokens["totalTokens"].as_f64(),
            tokens["analysedCalls"].as_i64()
        ),
        (Some(1300.0), Some(1))
    );
    // 1,300 tokens for a 6-second call: 13,000 per call-minute.
    assert!(
        (tokens["tokensPerCallMinute"].as_f64().unwrap() - 13_000.0).abs() < 1.0,
        "{tokens}"
    );
}

async fn tenant_of(app: &TestApp) -> String {
    app.gql_ok("{ viewer { tenant { id } } }", json!({})).await["viewer"]["tenant"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn download_results(app: &TestApp, id: &str) -> Value {
    let url = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { resultUrl } }",
            json!({ "id": id }),
        )
        .await["call"]["resultUrl"]
        .as_str()
        .unwrap()
        .to_string();
    app.client
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_call_is_analysed_in_windows_and_stitched_once() {
    let server = GeminiServer::start().await;
    server.answer_with(listening_model(0, vec![]));
    // 10 s windows overlapping by 4 s: a 25 s call is windows at 0, 6, 12 and 18 s.
    let app = gemini_app(&server, |l| {
        l.set("gemini_chunk_secs", "10")
            .set("gemini_chunk_overlap_secs", "4");
    })
    .await;
    let bursts = [
        (0, 1.0, 2.5),
        (1, 5.0, 7.5),
        (0, 9.0, 11.0),
        (1, 13.5, 15.0),
        (0, 17.0, 19.5),
        (1, 22.0, 24.0),
    ];
    let id = app.submit_ok(wav(25.0, 2, 8000, &bursts), json!({})).await;
    app.wait_status(&id, "COMPLETED", 60).await;
    let c = call(&app, &id).await;
    let segments = c["transcript"]["segments"].as_array().unwrap();
    let starts: Vec<i64> = segments
        .iter()
        .map(|s| s["startMs"].as_i64().unwrap())
        .collect();
    // Every stretch of speech once — overlaps included — on the call's own timeline.
    assert_eq!(starts.len(), bursts.len(), "{segments:#?}");
    for (s, (ch, a, _)) in segments.iter().zip(bursts) {
        assert_eq!(s["channel"], ch);
        assert!(
            (s["startMs"].as_i64().unwrap() - (a * 1000.0) as i64).abs() <= 60,
            "{segments:#?}"
        );
        assert_eq!(s["grounded"], true);
    }
    let requests = server.generate_requests();
    assert_eq!(requests.len(), 4);
    let mut windows: Vec<String> = requests
        .iter()
        .map(|r| {
            r.json.as_ref().unwrap()["contents"][0]["parts"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    windows.sort();
    assert!(
        windows[0].starts_with("Window 1 of 4 of a 25.0-second call: 0.0s to 10.0s"),
        "{windows:?}"
    );
    assert!(
        windows[3].starts_with("Window 4 of 4 of a 25.0-second call: 18.0s to 25.0s"),
        "{windows:?}"
    );
    // Usage is summed over the windows.
    let results = download_results(&app, &id).await;
    assert_eq!(results["usage"]["totalTokens"], 4 * 1300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_over_the_inline_limit_goes_through_the_files_api_and_is_deleted() {
    let server = GeminiServer::start().await;
    server.answer_with(listening_model(0, vec![]));
    server.set_file_plan(1, FileOutcome::Active);
    let app = gemini_app(&server, |l| {
        l.set("gemini_inline_limit_bytes", "1000");
    })
    .await;
    let id = app.submit_ok(exchange(), json!({})).await;
    app.wait_status(&id, "COMPLETED", 60).await;
    let c = call(&app, &id).await;
    assert_eq!(c["transcript"]["segments"].as_array().unwrap().len(), 2);
    let requests = server.generate_requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].inline_data.is_empty());
    let parts = requests[0].json.as_ref().unwrap()["contents"][0]["parts"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        parts.iter().filter(|p| p.get("fileData").is_some()).count(),
        2
    );
    let uploads = server
        .requests()
        .iter()
        .filter(|r| {
            r.path == "/upload/v1beta/files" && r.header("x-goog-upload-command") == Some("start")
        })
        .count();
    assert_eq!(uploads, 2, "one upload per channel");
    assert_eq!(
        server.live_files(),
        0,
        "uploaded audio is deleted after the request"
    );
}

/// Each failure mode ends in a clear state: retried where that can help, the API's own message
/// in `Call.error` where it cannot, never a half-filled call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_end_in_clear_states() {
    let server = GeminiServer::start().await;
    server.answer_with(listening_model(0, vec![]));
    let app = gemini_app(&server, |l| {
        l.set("gemini_max_attempts", "3");
    })
    .await;

    // Refused by the API: no retry; the call fails with its message.
    server.push([Reply::error(
        400,
        "INVALID_ARGUMENT",
        "Request contains an invalid argument.",
    )]);
    let id = app.submit_ok(exchange(), json!({})).await;
    app.wait_status(&id, "FAILED", 60).await;
    let c = call(&app, &id).await;
    let error = c["error"].as_str().unwrap();
    assert!(
        error.contains("INVALID_ARGUMENT")
            && error.contains("Request contains an invalid argument."),
        "{error}"
    );
    assert!(
        c["transcript"].is_null() && c["summary"].is_null(),
        "nothing half-filled: {c:#}"
    );
    assert_eq!(server.generate_requests().len(), 1);

    // Rate limited, then answered: retried after the delay asked, and completed.
    let before = server.generate_requests().len();
    server.push([Reply::rate_limited("0.2s")]);
    let id = app.submit_ok(exchange(), json!({})).await;
    app.wait_status(&id, "COMPLETED", 60).await;
    let sent = server.generate_requests();
    assert_eq!(sent.len() - before, 2);
    assert!(sent[before + 1].at - sent[before].at >= Duration::from_millis(200));

    // Cut off by the token limit; not JSON; not the schema: each fails for good, saying why.
    for (reply, why) in [
        (Reply::max_tokens(), "MAX_TOKENS"),
        (Reply::text("this is not JSON"), "JSON"),
        (
            Reply::json(
                json!({"segments": [{"speaker": "narrator", "startSeconds": 0, "endSeconds": 1, "text": "x", "sentiment": 0}],
                       "summary": "s", "sentiment": 0, "topics": [], "actionItems": [],
                       "issues": [], "intent": ""}),
                (1, 1, 2),
            ),
            "unknown speaker",
        ),
    ] {
        server.push([reply]);
        let id = app.submit_ok(exchange(), json!({})).await;
        app.wait_status(&id, "FAILED", 60).await;
        let c = call(&app, &id).await;
        assert!(c["error"].as_str().unwrap().contains(why), "{why}: {c:#}");
        assert!(c["transcript"].is_null(), "{c:#}");
    }

    // Unavailable for every attempt of one job: the job is retried later, and then succeeds.
    let before = server.generate_requests().len();
    server.push([
        Reply::unavailable(),
        Reply::unavailable(),
        Reply::unavailable(),
    ]);
    let id = app.submit_ok(exchange(), json!({})).await;
    app.wait_status(&id, "COMPLETED", 60).await;
    assert_eq!(
        server.generate_requests().len() - before,
        4,
        "3 attempts, then the retried job's one"
    );
    let c = app
        .gql_ok(
            "query($id: ID!) { call(id: $id) { attempts } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(c["call"]["attempts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_without_a_key_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    ensure_database(dir.path()).await;
    let mut l = layers(dir.path());
    l.set("analyzer", "gemini");
    let err = match voicegraph::startup::Application::build(l.settings().unwrap(), Roles::ALL).await
    {
        Ok(_) => panic!("a Gemini analyser needs a key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("VOICEGRAPH_GEMINI_API_KEY"), "{err}");
}

/// `listening_model`, matching the first category it is given on the customer's segment.
fn categorising_model() -> impl Fn(&Value, &[(String, Vec<u8>)]) -> Reply {
    let listen = listening_model(0, Vec::new());
    move |request, audio| {
        let reply = listen(request, audio);
        let Reply::Answer {
            text,
            finish_reason,
            usage,
        } = reply
        else {
            return reply;
        };
        let mut answer: Value = serde_json::from_str(&text).unwrap();
        let schema = &request["generationConfig"]["responseSchema"]["properties"];
        if let Some(name) = schema["categories"]["items"]["properties"]["name"]["enum"][0].as_str()
        {
            let customer = answer["segments"]
                .as_array()
                .unwrap()
                .iter()
                .position(|s| s["speaker"] == "customer")
                .unwrap();
            answer["categories"] = json!([{ "name": name, "segments": [customer] }]);
        }
        Reply::Answer {
            text: answer.to_string(),
            finish_reason,
            usage,
        }
    }
}

const INSIGHTS_QUERY: &str = "query($id: ID!) { call(id: $id) { status analyzer usage { totalTokens }
    intent outcome issues actionItems
    transcript { segments { index speaker } }
    quotes { kind text segments { index speaker } }
    categories { name category { id } segments { index speaker startMs endMs } }
    analyses { id analyzer model promptVersion status error current usage { promptTokens outputTokens totalTokens } resultDownload { url } }
    events(first: 100) { kind analysisId } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insights_cite_segments_and_every_analysis_is_kept_across_analysers() {
    let server = GeminiServer::start().await;
    server.answer_with(categorising_model());
    let app = gemini_app(&server, |_| {}).await;
    let billing = app
        .gql_ok(
            "mutation { createCategory(input: {name: \"Billing\", instructions: \"The caller disputes an invoice.\", keywords: [\"invoice\"]}) { id } }",
            json!({}),
        )
        .await["createCategory"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = app.submit_ok(exchange(), json!({})).await;
    app.wait_status(&id, "COMPLETED", 60).await;
    let c = app.gql_ok(INSIGHTS_QUERY, json!({ "id": id })).await["call"].clone();
    assert_eq!(c["intent"], "a question about an invoice", "{c}");
    assert_eq!(c["outcome"], "RESOLVED");
    assert_eq!(c["issues"], json!(["an invoice is wrong"]));
    assert_eq!(
        c["quotes"],
        json!([
            { "kind": "ACTION_ITEM", "text": "send the invoice", "segments": [{ "index": 0, "speaker": "agent" }] },
            { "kind": "ISSUE", "text": "an invoice is wrong", "segments": [{ "index": 1, "speaker": "customer" }] },
        ])
    );
    let m = &c["categories"][0];
    assert_eq!(
        (&m["name"], &m["category"]["id"]),
        (&json!("Billing"), &json!(billing))
    );
    assert_eq!(m["segments"][0]["index"], 1, "{m}");
    assert_eq!(m["segments"][0]["speaker"], "customer");
    // On the speech the audio has: the customer speaks 2.5–4.0 s.
    assert!(
        (m["segments"][0]["startMs"].as_i64().unwrap() - 2500).abs() <= 60,
        "{m}"
    );
    let a = &c["analyses"][0];
    assert_eq!(
        (
            &a["analyzer"],
            &a["model"],
            &a["promptVersion"],
            &a["status"]
        ),
        (
            &json!("GEMINI"),
            &json!(MODEL),
            &json!(PROMPT_VERSION),
            &json!("COMPLETED")
        )
    );
    assert_eq!(a["usage"]["totalTokens"], 1300.0);
    // The instructions reached the model.
    assert!(server.generate_requests().iter().any(|r| r
        .json
        .as_ref()
        .is_some_and(|j| j.to_string().contains("The caller disputes an invoice."))));

    // Again with the local analyser, then with the default (Gemini): three analyses kept.
    app.gql_ok(
        "mutation($id: ID!) { reanalyzeCall(id: $id, analyzer: LOCAL) { id } }",
        json!({ "id": id }),
    )
    .await;
    app.wait_status(&id, "COMPLETED", 60).await;
    let local = app.gql_ok(INSIGHTS_QUERY, json!({ "id": id })).await["call"].clone();
    assert_eq!(local["analyzer"], "local", "{local}");
    assert!(local["usage"].is_null() && local["intent"].is_null());
    assert_eq!(
        local["categories"],
        json!([]),
        "no transcript, no keyword to match"
    );
    app.gql_ok(
        "mutation($id: ID!) { reanalyzeCall(id: $id) { id } }",
        json!({ "id": id }),
    )
    .await;
    app.wait_status(&id, "COMPLETED", 60).await;
    let again = app.gql_ok(INSIGHTS_QUERY, json!({ "id": id })).await["call"].clone();
    let kinds: Vec<(Value, Value, Value)> = again["analyses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["analyzer"].clone(),
                a["status"].clone(),
                a["current"].clone(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (json!("GEMINI"), json!("COMPLETED"), json!(false)),
            (json!("LOCAL"), json!("COMPLETED"), json!(false)),
            (json!("GEMINI"), json!("COMPLETED"), json!(true)),
        ]
    );
    assert_eq!(again["categories"][0]["name"], "Billing");
    // What was spent: both of Gemini's analyses count.
    let stats = app
        .gql_ok(
            "{ callStats { tokens { totalTokens analysedCalls } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        stats["callStats"]["tokens"],
        json!({ "totalTokens": 2600.0, "analysedCalls": 1 })
    );
    // Each analysis's results document is its own.
    let first_doc: Value = app
        .client
        .get(c["analyses"][0]["resultDownload"]["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first_doc["analysisId"], c["analyses"][0]["id"]);
    assert_eq!(first_doc["categories"][0]["categoryId"], billing.as_str());
    assert_eq!(first_doc["issues"][0]["segments"], json!([1]));

    // A re-analysis the API refuses fails with its message; the call keeps the latest results.
    server.push([Reply::error(
        400,
        "INVALID_ARGUMENT",
        "Request contains an invalid argument.",
    )]);
    app.gql_ok(
        "mutation($id: ID!) { reanalyzeCall(id: $id, analyzer: GEMINI) { id } }",
        json!({ "id": id }),
    )
    .await;
    app.wait_status(&id, "FAILED", 60).await;
    let failed = app.gql_ok(INSIGHTS_QUERY, json!({ "id": id })).await["call"].clone();
    for field in [
        "intent",
        "outcome",
        "quotes",
        "categories",
        "transcript",
        "usage",
    ] {
        assert_eq!(failed[field], again[field], "{field} is kept");
    }
    let last = &failed["analyses"][3];
    assert_eq!(
        (&last["status"], &last["current"]),
        (&json!("FAILED"), &json!(true))
    );
    assert!(
        last["error"].as_str().unwrap().contains("INVALID_ARGUMENT"),
        "{last}"
    );
}
