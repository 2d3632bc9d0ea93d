//! The integrators' client: `voicegraph submit` uploads through the signed URL, submits, follows
//! the events to the end and prints the results; `voicegraph calls` lists, shows and watches.
//! Failures end in errors worded by cause and exit codes of their own; `--json` speaks one
//! object per line. In-process, and as the real binary.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use voicegraph::cli::{ClientArgs, SubmitArgs};
use voicegraph::client::ExitKind;
use voicegraph::domain::{Analysis, AnalysisRequest};
use voicegraph::ports::{AnalyzeError, Analyzer, Audio};
use voicegraph::startup::Roles;

use crate::helpers::*;

fn args(app: &TestApp, file: &std::path::Path, key: &str) -> SubmitArgs {
    SubmitArgs {
        file: file.to_path_buf(),
        client: ClientArgs {
            url: format!("http://{}", app.addr),
            key: Some(key.into()),
            json: false,
        },
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
    let outcome = voicegraph::client::submit(args(&app, &file, ADMIN_KEY), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(outcome, ExitKind::Done, "{text}");
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
    let outcome = voicegraph::client::submit(args(&app, &file, ADMIN_KEY), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(outcome, ExitKind::CallFailed, "{text}");
    assert!(text.contains("FAILED: the recording is unusable"), "{text}");
    // The binary says so in its exit code, and as JSON.
    let run = binary(
        &app,
        &["submit", file.to_str().unwrap(), "--json"],
        ADMIN_KEY,
    );
    assert_eq!(run.code, 3, "{run:?}");
    let last = run.objects.last().unwrap();
    assert_eq!(last["type"], "result");
    assert_eq!(last["status"], "FAILED");
    assert_eq!(last["call"]["error"], "the recording is unusable");
    token.cancel();
    worker.await.unwrap();

    let err = voicegraph::client::submit(args(&app, &file, "vg_wrong"), &mut Vec::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ExitKind::Auth);
    assert!(err.message.contains("the API key was refused"), "{err}");
    assert!(err.message.contains("--key or VOICEGRAPH_API_KEY"), "{err}");
    let text_file = app.dir.path().join("notes.txt");
    std::fs::write(&text_file, "not audio at all").unwrap();
    // Sent to a listener nobody serves: a connection the client made would wait in its
    // backlog, so an empty backlog shows the file was refused before anything was sent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut refused = args(&app, &text_file, ADMIN_KEY);
    refused.client.url = format!("http://{}", listener.local_addr().unwrap());
    let err = voicegraph::client::submit(refused, &mut Vec::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ExitKind::Input);
    assert!(
        err.message
            .contains("is not a WAV, FLAC, MP3 or Ogg recording"),
        "{err}"
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "refused before anything was sent"
    );
}

/// A run of the real binary: exit code, standard output's lines as JSON (when they are), and
/// standard error.
#[derive(Debug)]
struct Run {
    code: i32,
    objects: Vec<serde_json::Value>,
    stdout: String,
    stderr: String,
}

fn binary(app: &TestApp, args: &[&str], key: &str) -> Run {
    binary_at(&format!("http://{}/graphql", app.addr), args, key)
}

fn binary_at(url: &str, args: &[&str], key: &str) -> Run {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voicegraph"))
        .args(args)
        .env_clear()
        .env("VOICEGRAPH_URL", url)
        .env("VOICEGRAPH_API_KEY", key)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        objects: stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        stdout,
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// For scripts: every line of `--json` output is an object; the exit code tells success, a
/// refused input, a refused key, an unreachable server and a usage error apart; `calls list`,
/// `get` and `watch` follow the same conventions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_speaks_json_and_exits_by_cause() {
    let app = TestApp::spawn().await;
    let file = recording(app.dir.path());
    let path = file.to_str().unwrap();

    let run = binary(
        &app,
        &["submit", path, "--json", "--tag", "script"],
        ADMIN_KEY,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.objects.len(),
        run.stdout.lines().count(),
        "every line is JSON: {}",
        run.stdout
    );
    let types: Vec<&str> = run
        .objects
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(types[..2], ["upload", "submitted"], "{types:?}");
    assert_eq!(types.last(), Some(&"result"));
    assert!(
        types[2..types.len() - 1].iter().all(|t| *t == "event"),
        "{types:?}"
    );
    assert_eq!(run.objects[0]["contentType"], "audio/wav");
    let id = run.objects[1]["callId"].as_str().unwrap().to_string();
    let kinds: Vec<&str> = run
        .objects
        .iter()
        .filter(|o| o["type"] == "event")
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"SUBMITTED"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"COMPLETED"), "{kinds:?}");
    let result = run.objects.last().unwrap();
    assert_eq!(result["status"], "COMPLETED");
    assert_eq!(result["call"]["durationMs"], 2000);

    // Failures, each with its own code; with --json the error is an object on standard output.
    let notes = app.dir.path().join("notes.txt");
    std::fs::write(&notes, "not audio at all").unwrap();
    for (args, key, code, kind) in [
        (vec!["submit", path, "--json"], "vg_wrong", 5, "auth"),
        (
            vec!["submit", notes.to_str().unwrap(), "--json"],
            ADMIN_KEY,
            4,
            "input",
        ),
        (
            vec![
                "calls",
                "get",
                "00000000-0000-0000-0000-000000000000",
                "--json",
            ],
            ADMIN_KEY,
            4,
            "input",
        ),
    ] {
        let run = binary(&app, &args, key);
        assert_eq!(run.code, code, "{args:?}: {run:?}");
        assert_eq!(run.objects.len(), 1, "{run:?}");
        assert_eq!(run.objects[0]["type"], "error");
        assert_eq!(run.objects[0]["kind"], kind);
        assert_eq!(run.objects[0]["exitCode"], code);
    }
    // Without --json, a sentence on standard error that names the cause.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = binary_at(
        &format!("http://127.0.0.1:{port}"),
        &["submit", path],
        ADMIN_KEY,
    );
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains("cannot reach http://127.0.0.1:"),
        "{run:?}"
    );
    assert!(run.stderr.contains("is voicegraph running"), "{run:?}");
    let run = binary(&app, &["submit", path], "vg_wrong");
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("the API key was refused"), "{run:?}");
    let run = binary(&app, &["submit"], ADMIN_KEY);
    assert_eq!(
        run.code, 2,
        "a usage error is the argument parser's: {run:?}"
    );

    // calls list, get and watch.
    let run = binary(
        &app,
        &["calls", "list", "--tag", "script", "--json"],
        ADMIN_KEY,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.objects.len(), 2, "{run:?}");
    assert_eq!(run.objects[0]["type"], "call");
    assert_eq!(run.objects[0]["call"]["id"], id.as_str());
    assert_eq!(run.objects[1]["type"], "page");
    assert_eq!(run.objects[1]["totalCount"], 1);
    let run = binary(&app, &["calls", "list", "--status", "completed"], ADMIN_KEY);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&id) && run.stdout.contains("1 of 1 calls"),
        "{run:?}"
    );
    let run = binary(&app, &["calls", "get", &id, "--json"], ADMIN_KEY);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.objects[0]["call"]["status"], "COMPLETED");
    let run = binary(&app, &["calls", "watch", &id, "--json"], ADMIN_KEY);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.objects.last().unwrap()["type"], "result");
    assert_eq!(
        run.objects
            .iter()
            .filter(|o| o["kind"] == "COMPLETED")
            .count(),
        1,
        "the call's events so far, once: {run:?}"
    );
    let run = binary(
        &app,
        &[
            "calls",
            "watch",
            "--after",
            "0",
            "--kind",
            "completed",
            "--timeout-secs",
            "2",
            "--json",
        ],
        ADMIN_KEY,
    );
    assert_eq!(run.code, 0, "{run:?}");
    let completed: Vec<_> = run
        .objects
        .iter()
        .filter(|o| o["type"] == "event")
        .collect();
    assert_eq!(completed.len(), 1, "{run:?}");
    assert_eq!(completed[0]["callId"], id.as_str());
}
