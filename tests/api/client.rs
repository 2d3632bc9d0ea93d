//! `voicegraph submit`, the integrators' client: upload through the signed URL, submit, follow
//! the events to the end, print the results; a failed call and a bad key end in errors.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use voicegraph::cli::SubmitArgs;
use voicegraph::domain::{Analysis, AnalysisRequest};
use voicegraph::ports::{AnalyzeError, Analyzer, Audio};
use voicegraph::startup::Roles;

use crate::helpers::*;

fn args(app: &TestApp, file: &std::path::Path, key: &str) -> SubmitArgs {
    SubmitArgs {
        file: file.to_path_buf(),
        url: format!("http://{}", app.addr),
        key: key.into(),
        external_id: Some("cli-1".into()),
        tags: vec!["cli".into(), "tour".into()],
        idempotency_key: None,
        no_wait: false,
        timeout_secs: 60,
    }
}

fn recording(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("call.wav");
    std::fs::write(&path, short_call()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_follows_the_call_to_its_results() {
    let app = TestApp::spawn().await;
    let file = recording(app.dir.path());
    let mut out = Vec::new();
    let completed = voicegraph::client::submit(args(&app, &file, ADMIN_KEY), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(completed, "{text}");
    for line in [
        "SUBMITTED",
        "PROCESSING",
        "COMPLETED in",
        "duration: 2000 ms",
        "talk time agent",
        "interruptions 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let d = app.gql_ok("{ calls(filter: {externalId: \"cli-1\"}) { nodes { status tags recording { contentType } } } }", json!({})).await;
    let call = &d["calls"]["nodes"][0];
    assert_eq!(call["status"], "COMPLETED");
    assert_eq!(call["tags"], json!(["cli", "tour"]));
    assert_eq!(call["recording"]["contentType"], "audio/wav");
}

struct Unavailable;

#[async_trait]
impl Analyzer for Unavailable {
    fn name(&self) -> String {
        "unavailable".into()
    }
    async fn analyze(&self, _: Audio, _: AnalysisRequest) -> Result<Analysis, AnalyzeError> {
        Err(AnalyzeError::Permanent("the recording is unusable".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_reports_a_failed_call_and_refusals() {
    let app = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: false,
            relay: true,
        },
        |_| {},
    )
    .await;
    let mut broken = app.state.clone();
    broken.analyzer = Arc::new(Unavailable);
    let token = CancellationToken::new();
    let worker = tokio::spawn(voicegraph::worker::run(
        broken,
        token.clone(),
        Duration::from_secs(5),
    ));
    let file = recording(app.dir.path());
    let mut out = Vec::new();
    let completed = voicegraph::client::submit(args(&app, &file, ADMIN_KEY), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!completed, "{text}");
    assert!(text.contains("FAILED: the recording is unusable"), "{text}");
    token.cancel();
    worker.await.unwrap();

    let err = voicegraph::client::submit(args(&app, &file, "vg_wrong"), &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("invalid or revoked API key"),
        "{err:#}"
    );
    let text_file = app.dir.path().join("notes.txt");
    std::fs::write(&text_file, "not audio at all").unwrap();
    let err = voicegraph::client::submit(args(&app, &text_file, ADMIN_KEY), &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("not decodable audio"),
        "{err:#}"
    );
}
