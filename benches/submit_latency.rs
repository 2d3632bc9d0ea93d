//! Submit-to-COMPLETED latency of a 10-second stereo call in dev mode (every role in one process,
//! embedded backends): the time from sending `submitCall` to receiving the call's `COMPLETED`
//! event on a `callEvents` WebSocket subscription. Run with `cargo bench --bench submit_latency`.

use std::io::Cursor;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use voicegraph::config::Layers;
use voicegraph::startup::{Application, Roles};

const KEY: &str = "vg_bench_admin_key";
const RUNS: usize = 30;

fn ten_second_call() -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
    let mut seed: u32 = 1;
    for i in 0..160_000 {
        let t = i as f64 / 16000.0;
        for ch in 0..2 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = ((seed >> 16) as f64 / 65536.0) * 2.0 - 1.0;
            let speaking = if ch == 0 {
                (t % 4.0) < 2.2
            } else {
                (t % 4.0) >= 2.0
            };
            w.write_sample((noise * if speaking { 9000.0 } else { 20.0 }) as i16)
                .unwrap();
        }
    }
    w.finalize().unwrap();
    out.into_inner()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut layers = Layers::default();
    layers
        .set("data_dir", dir.path().to_string_lossy().to_string())
        .set("listen", "127.0.0.1:0")
        .set("bootstrap_admin_key", KEY);
    let app = Application::build(layers.settings().unwrap(), Roles::ALL)
        .await
        .unwrap();
    let addr = format!("127.0.0.1:{}", app.port());
    let token = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());

    let mut req = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {KEY}") } }).to_string())).await.unwrap();
    ws.next().await.unwrap().unwrap();
    ws.send(Message::text(json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { callEvents(filter: {kinds: [\"COMPLETED\"]}) { callId } }" } }).to_string())).await.unwrap();

    let audio = ten_second_call();
    let client = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let ops = json!({ "query": "mutation($r: Upload!) { submitCall(input: {recording: $r}) { call { id } } }", "variables": { "r": null } });
        let form = reqwest::multipart::Form::new()
            .text("operations", ops.to_string())
            .text("map", json!({ "0": ["variables.r"] }).to_string())
            .part(
                "0",
                reqwest::multipart::Part::bytes(audio.clone())
                    .file_name("call.wav")
                    .mime_str("audio/wav")
                    .unwrap(),
            );
        let started = Instant::now();
        let body: Value = client
            .post(format!("http://{addr}/graphql"))
            .bearer_auth(KEY)
            .header("apollo-require-preflight", "true")
            .multipart(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = body["data"]["submitCall"]["call"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["payload"]["data"]["callEvents"]["callId"] == id.as_str() {
                break;
            }
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = latencies.iter().map(|d| ms(*d)).sum::<f64>() / RUNS as f64;
    println!(
        "submit-to-COMPLETED, 10 s stereo 16 kHz WAV, {RUNS} runs: min {:.1} ms, p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms, mean {:.1} ms",
        ms(latencies[0]),
        ms(latencies[RUNS / 2]),
        ms(latencies[RUNS * 9 / 10]),
        ms(latencies[RUNS - 1]),
        mean
    );
    token.cancel();
    let _ = server.await;
}
