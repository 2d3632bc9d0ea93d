//! `voicegraph submit`: the integrators' client. Uploads a recording through a signed URL
//! (streamed from disk), submits it, and follows the call's events over WebSocket until it is
//! analysed, then prints the results.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::SubmitArgs;

struct Api {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Api {
    async fn gql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!("{}/graphql", self.url))
            .bearer_auth(&self.key)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.url))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("unexpected answer ({status})"))?;
        if let Some(err) = body["errors"].get(0) {
            bail!(
                "{} ({})",
                err["message"].as_str().unwrap_or("request failed"),
                err["extensions"]["code"].as_str().unwrap_or("ERROR")
            );
        }
        Ok(body["data"].clone())
    }
}

fn content_type(path: &std::path::Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("wav") | Some("wave") => "audio/wav",
        Some("flac") => "audio/flac",
        Some("mp3") => "audio/mpeg",
        Some("ogg") | Some("oga") => "audio/ogg",
        _ => "application/octet-stream",
    }
}

/// The call's events: those so far first, then live (so none is missed after submitting).
const EVENTS: &str = "subscription($id: ID!, $after: String) { callUpdated(id: $id, after: $after) { callId kind status cursor } }";
const RESULT: &str = "query($id: ID!) { call(id: $id) { status error durationMs summary \
    sentiment { score label } topics actionItems \
    metrics { talkTime { speaker ms } silenceMs overlapMs interruptions longestMonologueMs } } }";

/// Runs the client; returns whether the call completed (false: it failed).
pub async fn submit(args: SubmitArgs, out: &mut (impl Write + Send)) -> anyhow::Result<bool> {
    let started = Instant::now();
    let api = Api {
        http: reqwest::Client::new(),
        url: args.url.trim_end_matches('/').to_string(),
        key: args.key.clone(),
    };
    let meta = tokio::fs::metadata(&args.file)
        .await
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let ct = content_type(&args.file);
    let name = args
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string);

    let up = api
        .gql(
            "mutation($ct: String!, $n: Int!, $f: String) { createRecordingUpload(input: {contentType: $ct, byteSize: $n, fileName: $f}) { recordingKey uploadUrl method headers { name value } } }",
            json!({ "ct": ct, "n": meta.len(), "f": name }),
        )
        .await
        .context("createRecordingUpload")?["createRecordingUpload"]
        .clone();
    writeln!(
        out,
        "uploading {} ({} bytes, {ct})",
        args.file.display(),
        meta.len()
    )?;
    let file = tokio::fs::File::open(&args.file).await?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let mut put = api
        .http
        .put(up["uploadUrl"].as_str().unwrap_or_default())
        .body(body);
    for h in up["headers"].as_array().into_iter().flatten() {
        put = put.header(
            h["name"].as_str().unwrap_or_default(),
            h["value"].as_str().unwrap_or_default(),
        );
    }
    let put = put.send().await.context("uploading the recording")?;
    if !put.status().is_success() {
        bail!(
            "the upload was refused ({}): {}",
            put.status(),
            put.text().await.unwrap_or_default()
        );
    }

    let submitted = api
        .gql(
            "mutation($input: SubmitCallInput!) { submitCall(input: $input) { deduplicated call { id status } } }",
            json!({ "input": {
                "recordingKey": up["recordingKey"],
                "externalId": args.external_id,
                "tags": args.tags,
                "idempotencyKey": args.idempotency_key,
            } }),
        )
        .await
        .context("submitCall")?["submitCall"]
        .clone();
    let id = submitted["call"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let note = if submitted["deduplicated"] == true {
        " (a repeat: the first submission's call)"
    } else {
        ""
    };
    writeln!(
        out,
        "call {id} {}{note}",
        submitted["call"]["status"].as_str().unwrap_or("")
    )?;
    if args.no_wait {
        return Ok(true);
    }
    let mut cursor: Option<String> = None;
    let mut events = subscribe(&api, &id, None).await?;
    let events = &mut events;

    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut status = submitted["call"]["status"]
        .as_str()
        .unwrap_or("QUEUED")
        .to_string();
    while status != "COMPLETED" && status != "FAILED" {
        if Instant::now() > deadline {
            bail!(
                "gave up after {} s; the call is {status}",
                args.timeout_secs
            );
        }
        // Events arrive as they happen; a periodic look at the call covers any that could not.
        match tokio::time::timeout(Duration::from_secs(2), events.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let msg: Value = serde_json::from_str(&text).unwrap_or_default();
                match msg["type"].as_str() {
                    Some("next") => {
                        let e = &msg["payload"]["data"]["callUpdated"];
                        if e["callId"] == id.as_str() {
                            cursor = e["cursor"].as_str().map(str::to_string);
                            status = e["status"].as_str().unwrap_or("").to_string();
                            writeln!(
                                out,
                                "  {:>6.1}s  {}",
                                started.elapsed().as_secs_f64(),
                                e["kind"].as_str().unwrap_or("")
                            )?;
                        }
                    }
                    Some("error") => bail!("the subscription was refused: {}", msg["payload"]),
                    Some("ping") => {
                        events
                            .send(Message::text(json!({ "type": "pong" }).to_string()))
                            .await?
                    }
                    _ => {}
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(None) | Ok(Some(Err(_))) => {
                // The connection went away: resume after the last event seen.
                *events = subscribe(&api, &id, cursor.as_deref()).await?;
            }
            Err(_) => {
                let d = api
                    .gql(
                        "query($id: ID!) { call(id: $id) { status } }",
                        json!({ "id": id }),
                    )
                    .await?;
                status = d["call"]["status"].as_str().unwrap_or(&status).to_string();
            }
        }
    }

    let c = api.gql(RESULT, json!({ "id": id })).await?["call"].clone();
    if c["status"] == "FAILED" {
        writeln!(
            out,
            "FAILED: {}",
            c["error"].as_str().unwrap_or("unknown reason")
        )?;
        return Ok(false);
    }
    writeln!(out, "COMPLETED in {:.1}s", started.elapsed().as_secs_f64())?;
    writeln!(out, "  duration: {} ms", c["durationMs"])?;
    if let Some(s) = c["summary"].as_str() {
        writeln!(out, "  summary: {s}")?;
    }
    let m = &c["metrics"];
    for t in m["talkTime"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  talk time {}: {} ms",
            t["speaker"].as_str().unwrap_or("?"),
            t["ms"]
        )?;
    }
    writeln!(
        out,
        "  silence {} ms, overlap {} ms, interruptions {}, longest monologue {} ms",
        m["silenceMs"], m["overlapMs"], m["interruptions"], m["longestMonologueMs"]
    )?;
    if c["sentiment"].is_object() {
        writeln!(
            out,
            "  sentiment: {} ({})",
            c["sentiment"]["label"].as_str().unwrap_or(""),
            c["sentiment"]["score"]
        )?;
    }
    for item in c["actionItems"].as_array().into_iter().flatten() {
        writeln!(out, "  action item: {}", item.as_str().unwrap_or(""))?;
    }
    Ok(true)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe(api: &Api, call_id: &str, after: Option<&str>) -> anyhow::Result<Socket> {
    let ws_url = format!("{}/graphql", api.url.replacen("http", "ws", 1));
    let mut req = ws_url
        .as_str()
        .into_client_request()
        .context("the API URL")?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .with_context(|| format!("cannot open a WebSocket to {ws_url}"))?;
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", api.key) } });
    ws.send(Message::text(init.to_string())).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                if v["type"] == "connection_ack" {
                    break;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                bail!(
                    "the server refused the connection: {}",
                    frame.map(|f| f.reason.to_string()).unwrap_or_default()
                )
            }
            Ok(Some(Ok(_))) => {}
            _ => bail!("no connection_ack from the server"),
        }
    }
    ws.send(Message::text(
        json!({ "id": "1", "type": "subscribe", "payload": { "query": EVENTS, "variables": { "id": call_id, "after": after } } }).to_string(),
    ))
    .await?;
    Ok(ws)
}
