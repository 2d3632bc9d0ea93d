//! Redaction end to end: a call whose transcript plants a card number, its security code, an
//! e-mail address, a phone number and a Social Security number, and whose recording carries a
//! 440 Hz marker exactly where the customer says them. Under a policy that redacts the
//! transcript and the audio and deletes the original, none of the planted values is left in any
//! stored artefact — every row of every table, the results document, the recording, the events
//! and the webhook payloads — and the marker is nowhere in the recording, replaced by the tone.

use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{TestApp, ADMIN_KEY};

const RATE: u32 = 16_000;
const SECONDS: f64 = 24.0;
const MARKER_HZ: f64 = 440.0;

/// What the customer says (channel 1), and when.
const PLANTED: [(f64, f64, &str); 3] = [
    (3.5, 8.5, "4111 1111 1111 1111, security code 737"),
    (
        11.5,
        16.5,
        "jane.doe@example.com or call me on (415) 555-0123",
    ),
    (19.5, 22.5, "It is 123-45-6789"),
];
/// Where the 440 Hz marker is in the recording: inside the stretch where each planted value is
/// said, as its place in its segment's text puts it (the card, its code, the e-mail address,
/// the phone number, the Social Security number).
const MARKERS: [(f64, f64); 5] = [
    (3.7, 5.8),
    (8.15, 8.45),
    (11.7, 13.3),
    (15.3, 16.3),
    (20.8, 22.3),
];
const AGENT: [(f64, f64, &str); 3] = [
    (0.5, 3.0, "Can I take your card number please?"),
    (
        9.0,
        11.0,
        "Thanks. An email and a phone number to reach you?",
    ),
    (17.0, 19.0, "And your social security number?"),
];
/// The planted values as they could be stored.
const VALUES: [&str; 7] = [
    "4111 1111 1111 1111",
    "4111111111111111",
    "code 737",
    "jane.doe@example.com",
    "jane.doe",
    "555-0123",
    "123-45-6789",
];

/// Stereo 16-bit WAV: speech-like noise bursts per segment, the customer's planted stretches
/// carrying the marker tone on top.
fn recording() -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
    let mut seed: u32 = 0x2545_f491;
    for i in 0..(SECONDS * RATE as f64) as usize {
        let t = i as f64 / RATE as f64;
        for ch in 0..2 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = ((seed >> 16) as f64 / 65536.0) * 2.0 - 1.0;
            let speaking = if ch == 0 {
                AGENT.iter().any(|(a, b, _)| t >= *a && t < *b)
            } else {
                PLANTED.iter().any(|(a, b, _)| t >= *a && t < *b)
            };
            let marker = ch == 1 && MARKERS.iter().any(|(a, b)| t >= *a && t < *b);
            let mut v = if speaking {
                noise * 6000.0
            } else {
                noise * 15.0
            };
            if marker {
                v += 8000.0 * (2.0 * std::f64::consts::PI * MARKER_HZ * t).sin();
            }
            w.write_sample(v.clamp(-32767.0, 32767.0) as i16).unwrap();
        }
    }
    w.finalize().unwrap();
    out.into_inner()
}

fn transcript() -> Value {
    let mut segments: Vec<(f64, &str, &str)> = AGENT
        .iter()
        .map(|(a, _, text)| (*a, "agent", *text))
        .chain(PLANTED.iter().map(|(a, _, text)| (*a, "customer", *text)))
        .collect();
    segments.sort_by(|x, y| x.0.total_cmp(&y.0));
    let ends = |start: f64| {
        AGENT
            .iter()
            .map(|(a, b, _)| (*a, *b))
            .chain(PLANTED.iter().map(|(a, b, _)| (*a, *b)))
            .find(|(a, _)| *a == start)
            .unwrap()
            .1
    };
    json!({
        "segments": segments.iter().map(|(start, speaker, text)| json!({
            "speaker": speaker,
            "startMs": (start * 1000.0) as i64,
            "endMs": (ends(*start) * 1000.0) as i64,
            "text": text,
        })).collect::<Vec<_>>()
    })
}

/// The magnitude of `hz` in `samples` (Goertzel), normalised by their count.
fn goertzel(samples: &[f64], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / RATE as f64;
    let (mut s1, mut s2) = (0.0, 0.0);
    for x in samples {
        let s = x + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2).sqrt() / samples.len() as f64
}

/// Whether a planted value shows in `text`. The 3-digit security code counts only as a token of
/// its own (not inside longer numbers, ids or fractions of a second).
fn leaks(text: &str) -> Vec<&'static str> {
    let mut found: Vec<&'static str> = VALUES
        .iter()
        .copied()
        .filter(|v| text.contains(v))
        .collect();
    let b = text.as_bytes();
    for (i, _) in text.match_indices("737") {
        let before = i.checked_sub(1).map(|j| b[j]);
        let after = b.get(i + 3).copied();
        let part_of = |c: Option<u8>| {
            c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b':' || c == b'-')
        };
        if !part_of(before) && !part_of(after) {
            found.push("737");
        }
    }
    found
}

/// Every row of every table, as JSON text.
async fn rows(app: &TestApp) -> String {
    use sea_orm::{FromQueryResult, JsonValue, Statement};
    let db = app.owner_db().await;
    let backend = db.get_database_backend();
    let mut all = String::new();
    for table in [
        "calls",
        "call_segments",
        "call_events",
        "analyses",
        "outbox",
        "jobs",
        "webhook_deliveries",
        "webhook_attempts",
        "audit_log",
        "redaction_policies",
    ] {
        let got = JsonValue::find_by_statement(Statement::from_string(
            backend,
            format!("SELECT * FROM {table}"),
        ))
        .all(&db)
        .await
        .unwrap_or_else(|e| panic!("{table}: {e}"));
        all.push_str(&format!("{table}: {}\n", Value::Array(got)));
    }
    all
}

/// Every file the embedded blob store holds.
fn blobs(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("blobs")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// The admin's tenant.
async fn tenant(app: &TestApp) -> String {
    gql(app, "{ viewer { tenant { id } } }", json!({})).await["viewer"]["tenant"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn gql(app: &TestApp, query: &str, vars: Value) -> Value {
    let (_, body) = app.gql_as(Some(ADMIN_KEY), query, vars).await;
    assert!(body.get("errors").is_none(), "{body:#}");
    body["data"].clone()
}

/// A local endpoint that keeps every delivery's body.
async fn receiver() -> (Arc<Mutex<Vec<String>>>, String) {
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push(body);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (got, url)
}

const CALL: &str =
    "query($id: ID!) { call(id: $id) { status summary topics actionItems issues intent \
    redaction { transcript audio deleteOriginal } \
    redactions { kind field start end startMs endMs } \
    transcript { text segments { speaker startMs endMs text } } \
    recording { url contentType sha256 } resultUrl events { kind } } }";

#[tokio::test]
async fn planted_personal_data_is_gone_from_every_stored_artefact() {
    let app = TestApp::spawn().await;
    let (hooks, url) = receiver().await;
    let set = gql(
        &app,
        "mutation { setRedactionPolicy(input: {transcript: true, audio: true, deleteOriginal: true}) { transcript audio deleteOriginal } }",
        json!({}),
    )
    .await;
    assert_eq!(
        set["setRedactionPolicy"],
        json!({ "transcript": true, "audio": true, "deleteOriginal": true })
    );
    gql(
        &app,
        "mutation($u: String!) { createWebhook(input: {url: $u}) { webhook { id } } }",
        json!({ "u": url }),
    )
    .await;
    let original = recording();
    let (status, body) = app
        .submit(
            ADMIN_KEY,
            original.clone(),
            "audio/wav",
            json!({ "transcript": transcript() }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["submitCall"]["call"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.wait_status(&id, "COMPLETED", 60).await;
    let call = gql(&app, CALL, json!({ "id": id })).await["call"].clone();

    // What the API answers: placeholders, and where each datum was.
    let segments = call["transcript"]["segments"].as_array().unwrap();
    let texts: Vec<&str> = segments
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    assert!(
        texts.contains(&"[CARD_NUMBER], security code [SECURITY_CODE]"),
        "{texts:?}"
    );
    assert!(
        texts.contains(&"[EMAIL] or call me on [PHONE]"),
        "{texts:?}"
    );
    assert!(texts.contains(&"It is [NATIONAL_ID]"), "{texts:?}");
    let kinds: Vec<&str> = call["redactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["field"].as_str().unwrap().starts_with("segments"))
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "CARD_NUMBER",
            "SECURITY_CODE",
            "EMAIL",
            "PHONE",
            "NATIONAL_ID"
        ],
        "{call:#}"
    );
    for r in call["redactions"].as_array().unwrap() {
        let field = r["field"].as_str().unwrap();
        if let Some(i) = field
            .strip_prefix("segments[")
            .and_then(|f| f.strip_suffix("].text"))
        {
            let text = segments[i.parse::<usize>().unwrap()]["text"]
                .as_str()
                .unwrap();
            let (s, e) = (
                r["start"].as_u64().unwrap() as usize,
                r["end"].as_u64().unwrap() as usize,
            );
            let placeholder: String = text.chars().skip(s).take(e - s).collect();
            assert_eq!(placeholder, format!("[{}]", r["kind"].as_str().unwrap()));
            assert!(r["startMs"].as_i64().unwrap() < r["endMs"].as_i64().unwrap());
        }
    }
    assert_eq!(call["redaction"]["deleteOriginal"], true);
    assert_eq!(call["recording"]["contentType"], "audio/wav");

    // The recording is the redacted copy: the marker is nowhere, the tone is where it was, and
    // the speech around it is kept.
    let redacted = app
        .client
        .get(call["recording"]["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_ne!(redacted.as_ref(), original.as_slice());
    let reader = hound::WavReader::new(Cursor::new(redacted.to_vec())).unwrap();
    assert_eq!(reader.spec().channels, 2);
    let samples: Vec<f64> = reader
        .into_samples::<i16>()
        .map(|s| s.unwrap() as f64 / 32768.0)
        .collect();
    let customer: Vec<f64> = samples.iter().skip(1).step_by(2).copied().collect();
    let window = |a: f64, b: f64| &customer[(a * RATE as f64) as usize..(b * RATE as f64) as usize];
    let half_second = (RATE / 2) as usize;
    for (i, chunk) in customer.chunks(half_second).enumerate() {
        assert!(
            goertzel(chunk, MARKER_HZ) < 0.01,
            "the marker is audible at {} s: {}",
            i as f64 * 0.5,
            goertzel(chunk, MARKER_HZ)
        );
    }
    for (a, b) in MARKERS {
        assert!(
            goertzel(window(a, b), 1000.0) > 0.05,
            "no tone over {a}..{b} s"
        );
    }
    let speech_after = window(17.2, 18.8);
    let rms = (speech_after.iter().map(|x| x * x).sum::<f64>() / speech_after.len() as f64).sqrt();
    assert!(
        rms < 0.01,
        "the customer is silent while the agent speaks: {rms}"
    );
    let agent: Vec<f64> = samples.iter().step_by(2).copied().collect();
    let agent_speech = &agent[(1.0 * RATE as f64) as usize..(2.5 * RATE as f64) as usize];
    let rms = (agent_speech.iter().map(|x| x * x).sum::<f64>() / agent_speech.len() as f64).sqrt();
    assert!(rms > 0.05, "the agent's first words are kept: {rms}");

    // The original is deleted (through the outbox), and no stored object is it or says any
    // planted value.
    let original_key = format!("recordings/{}/{id}", tenant(&app).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.state.blobs.get(&original_key).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the original is still stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every delivery of the call's events has arrived.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !hooks
        .lock()
        .unwrap()
        .iter()
        .any(|b| b.contains("\"call.completed\""))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no call.completed delivery"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = blobs(app.dir.path());
    assert!(!stored.is_empty());
    for (path, bytes) in &stored {
        assert_ne!(
            bytes.as_slice(),
            original.as_slice(),
            "{} is the original",
            path.display()
        );
        let text = String::from_utf8_lossy(bytes);
        assert!(
            leaks(&text).is_empty(),
            "{}: {:?}",
            path.display(),
            leaks(&text)
        );
    }
    let results = app
        .client
        .get(call["resultUrl"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        results.contains("[CARD_NUMBER]") && results.contains("\"redactions\""),
        "{results}"
    );
    let answered = call.to_string();
    let delivered = hooks.lock().unwrap().join("\n");
    let rows = rows(&app).await;
    assert!(
        rows.contains("[CARD_NUMBER]"),
        "the rows hold the redacted transcript"
    );
    for (what, text) in [
        ("the API's answer", &answered),
        ("the results document", &results),
        ("the webhook payloads", &delivered),
        ("the database rows", &rows),
    ] {
        assert!(leaks(text).is_empty(), "{what}: {:?}\n{text}", leaks(text));
    }
}

#[tokio::test]
async fn a_call_overrides_its_tenants_policy_and_deleting_it_removes_the_kept_original() {
    let app = TestApp::spawn().await;
    // deleteOriginal means nothing without audio: refused.
    let (_, body) = app
        .gql_as(
            Some(ADMIN_KEY),
            "mutation { setRedactionPolicy(input: {transcript: true, audio: false, deleteOriginal: true}) { audio } }",
            json!({}),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    gql(
        &app,
        "mutation { setRedactionPolicy(input: {transcript: true, audio: false, deleteOriginal: false}) { audio } }",
        json!({}),
    )
    .await;
    assert_eq!(
        gql(
            &app,
            "{ redactionPolicy { transcript audio deleteOriginal } }",
            json!({})
        )
        .await["redactionPolicy"],
        json!({ "transcript": true, "audio": false, "deleteOriginal": false })
    );
    let original = recording();
    // This call's audio is redacted too, and its original kept.
    let (_, body) = app
        .submit(
            ADMIN_KEY,
            original.clone(),
            "audio/wav",
            json!({ "transcript": transcript(), "redaction": { "audio": true } }),
        )
        .await;
    let id = body["data"]["submitCall"]["call"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // And this one's nothing at all.
    let (_, body) = app
        .submit(
            ADMIN_KEY,
            original.clone(),
            "audio/wav",
            json!({ "transcript": transcript(), "redaction": { "transcript": false } }),
        )
        .await;
    let plain = body["data"]["submitCall"]["call"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Deleting the original of a call whose audio is not redacted is refused.
    let (_, body) = app
        .submit(
            ADMIN_KEY,
            original.clone(),
            "audio/wav",
            json!({ "redaction": { "deleteOriginal": true } }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    app.wait_status(&id, "COMPLETED", 60).await;
    app.wait_status(&plain, "COMPLETED", 60).await;

    let call = gql(&app, CALL, json!({ "id": id })).await["call"].clone();
    assert_eq!(
        call["redaction"],
        json!({ "transcript": true, "audio": true, "deleteOriginal": false })
    );
    assert!(
        !leaks(&call.to_string()).iter().any(|l| *l != "737"),
        "{call:#}"
    );
    assert_eq!(call["recording"]["contentType"], "audio/wav");
    let tenant = tenant(&app).await;
    let original_key = format!("recordings/{tenant}/{id}");
    let kept = app.state.blobs.get(&original_key).await.unwrap();
    assert_eq!(
        kept.as_deref(),
        Some(original.as_slice()),
        "the original is kept"
    );

    let plain = gql(&app, CALL, json!({ "id": plain })).await["call"].clone();
    assert!(plain["redaction"].is_null());
    assert_eq!(plain["redactions"], json!([]));
    assert!(plain.to_string().contains("4111 1111 1111 1111"));

    // Deleting the call removes the redacted copy and the kept original.
    gql(
        &app,
        "mutation($id: ID!) { deleteCall(id: $id) { deletedId } }",
        json!({ "id": id }),
    )
    .await;
    let redacted_key = format!("tenants/{tenant}/calls/{id}/recording-redacted.wav");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = (
            app.state.blobs.get(&original_key).await.unwrap().is_some(),
            app.state.blobs.get(&redacted_key).await.unwrap().is_some(),
        );
        if left == (false, false) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still stored: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
