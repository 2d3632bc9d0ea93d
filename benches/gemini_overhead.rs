//! What the Gemini adapter itself costs per call, beside the model's own time: cutting the
//! recording into per-channel windows (decode, resample, WAV), base64 and JSON for the requests,
//! parsing and checking the answers, stitching and grounding. Measured on a 5-minute and a
//! 60-minute stereo 8 kHz call against an in-process stand-in that answers at once, one window
//! at a time (the stand-in's own handling time is measured and subtracted).
//!
//! `cargo bench --bench gemini_overhead` (add `-- --minutes 5,60` to choose).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use voicegraph::adapters::gemini::insights::{GeminiInsights, GeminiInsightsConfig};
use voicegraph::adapters::gemini::{GeminiClient, GeminiConfig};
use voicegraph::adapters::local::acoustic::facts_file;
use voicegraph::domain::{AnalysisRequest, InsightsInput};
use voicegraph::ports::{Audio, InsightsSource};

const RATE: u32 = 8000;

/// Alternating 4 s turns with 0.5 s gaps, agent on the left, customer on the right.
fn write_call(path: &std::path::Path, minutes: u32) {
    let frames = u64::from(minutes) * 60 * u64::from(RATE);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let data = (frames * 4) as u32;
    f.write_all(b"RIFF").unwrap();
    f.write_all(&(data + 36).to_le_bytes()).unwrap();
    f.write_all(b"WAVEfmt ").unwrap();
    f.write_all(&16u32.to_le_bytes()).unwrap();
    for v in [1u16, 2] {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    f.write_all(&RATE.to_le_bytes()).unwrap();
    f.write_all(&(RATE * 4).to_le_bytes()).unwrap();
    for v in [4u16, 16] {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    f.write_all(b"data").unwrap();
    f.write_all(&data.to_le_bytes()).unwrap();
    let mut seed: u32 = 0x2545_f491;
    for i in 0..frames {
        let t = i as f64 / f64::from(RATE);
        let turn = (t / 4.5) as u64;
        let speaking = t - turn as f64 * 4.5 < 4.0;
        let who = (turn % 2) as usize;
        for ch in 0..2 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let noise = (seed as f64 / u32::MAX as f64) * 2.0 - 1.0;
            let amp = if speaking && ch == who {
                0.3 * (0.7 + 0.3 * (t * 25.0).sin())
            } else {
                0.001
            };
            f.write_all(&(((noise * amp) * 32767.0) as i16).to_le_bytes())
                .unwrap();
        }
    }
    f.flush().unwrap();
}

/// The window's offsets, from the adapter's text part: "…: 600.0s to 1200.0s of it."
fn window_span(request: &Value) -> (f64, f64) {
    let text = request["contents"][0]["parts"][0]["text"]
        .as_str()
        .unwrap_or("");
    let tail = text.split(": ").nth(1).unwrap_or("");
    let mut it = tail.split("s to ");
    let a: f64 = it.next().unwrap_or("0").parse().unwrap_or(0.0);
    let b: f64 = it
        .next()
        .and_then(|s| s.split('s').next())
        .unwrap_or("0")
        .parse()
        .unwrap_or(0.0);
    (a, b)
}

async fn stand_in(server_ns: Arc<AtomicU64>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route(
            "/v1beta/models/{call}",
            axum::routing::post(move |body: axum::body::Bytes| {
                let server_ns = server_ns.clone();
                async move {
                    let started = Instant::now();
                    let request: Value = serde_json::from_slice(&body).unwrap();
                    let (a, b) = window_span(&request);
                    // The answer a model gives: one segment per turn, about 12 words each.
                    let mut segments = Vec::new();
                    let mut t = (a / 4.5).floor() * 4.5;
                    while t < b {
                        let turn = (t / 4.5).round() as u64;
                        segments.push(json!({
                            "speaker": if turn % 2 == 0 { "agent" } else { "customer" },
                            "startSeconds": (t - a).max(0.0) + 0.2,
                            "endSeconds": (t + 4.0 - a).min(b - a) + 0.2,
                            "text": "thanks for calling, I can help you with the invoice you mentioned today",
                            "sentiment": 0.2,
                        }));
                        t += 4.5;
                    }
                    let answer = json!({
                        "segments": segments, "summary": "A billing call.", "sentiment": 0.1,
                        "topics": ["billing"], "language": "en",
                        "actionItems": [{"text": "send the invoice", "segments": [0]}],
                        "issues": [], "intent": "a question about an invoice",
                    });
                    let response = json!({
                        "candidates": [{"content": {"role": "model", "parts": [{"text": answer.to_string()}]}, "finishReason": "STOP"}],
                        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2},
                        "modelVersion": "stand-in",
                    });
                    let out = axum::Json(response);
                    server_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    out
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::main]
async fn main() {
    let minutes: Vec<u32> = std::env::args()
        .skip_while(|a| a != "--minutes")
        .nth(1)
        .map(|s| s.split(',').filter_map(|m| m.parse().ok()).collect())
        .unwrap_or_else(|| vec![5, 60]);
    let server_ns = Arc::new(AtomicU64::new(0));
    let url = stand_in(server_ns.clone()).await;
    let mut config = GeminiConfig::new(url, "bench-key".to_string().into(), "stand-in");
    // One request at a time, so that the stand-in's own time can be subtracted exactly.
    config.max_concurrent = 1;
    let client = GeminiClient::new(config).unwrap();
    let insights = GeminiInsights::new(
        client,
        GeminiInsightsConfig {
            model: "stand-in".into(),
            window_ms: 600_000,
            overlap_ms: 15_000,
            inline_limit_bytes: 64 * 1024 * 1024,
            parallel_windows: 1,
        },
    );
    println!("| call | windows | segments | adapter overhead | of which cutting windows | per call-minute |");
    println!("|---|---|---|---|---|---|");
    for m in minutes {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("call.wav");
        write_call(&path, m);
        let input = InsightsInput::of(facts_file(&path).unwrap(), AnalysisRequest::default());
        // Cutting alone, for the breakdown.
        let cut_dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let windows = voicegraph::adapters::local::acoustic::chunks::write_windows(
            &path,
            voicegraph::adapters::local::acoustic::chunks::Windows {
                window_ms: 600_000,
                overlap_ms: 15_000,
            },
            cut_dir.path(),
        )
        .unwrap();
        let cutting = started.elapsed();
        let mut best = Duration::MAX;
        let mut segments = 0;
        for _ in 0..3 {
            server_ns.store(0, Ordering::Relaxed);
            let started = Instant::now();
            let out = insights
                .insights(&Audio::File(path.clone()), input.clone())
                .await
                .unwrap();
            let server = Duration::from_nanos(server_ns.load(Ordering::Relaxed));
            let own = started.elapsed().saturating_sub(server);
            best = best.min(own);
            segments = out.segments.len();
        }
        println!(
            "| {m} min stereo 8 kHz | {} | {segments} | {:.0} ms | {:.0} ms | {:.1} ms |",
            windows.len(),
            best.as_secs_f64() * 1000.0,
            cutting.as_secs_f64() * 1000.0,
            best.as_secs_f64() * 1000.0 / f64::from(m),
        );
    }
}
