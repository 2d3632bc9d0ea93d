//! The integrators' command-line client, for people and for scripts:
//!
//! - `voicegraph submit <file>` checks that the file is audio, uploads it through a signed URL
//!   (streamed from disk, with a progress bar on a terminal for large files), submits it and
//!   follows the call's events over WebSocket until it is analysed, then prints the results;
//! - `voicegraph calls list|get|watch` lists calls with filters, shows one, or follows events.
//!
//! With `--json` every line on standard output is one JSON object (`type`: `upload`,
//! `submitted`, `event`, `call`, `page`, `result` or `error`), for scripts. The exit code says
//! how it ended (see [`ExitKind`]); errors are worded by their cause.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{CallsArgs, CallsCommand, ClientArgs, SubmitArgs};

/// How a client command ended, as its exit code. Usage errors (a missing or unknown argument)
/// exit with 2, from the argument parser, before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// 0: done (the call completed, or was queued with `--no-wait`; the list or call printed).
    Done,
    /// 1: the server failed or answered something unexpected.
    Server,
    /// 3: the call was analysed and FAILED (its reason is printed).
    CallFailed,
    /// 4: the input was refused: not an audio file, too large, an unknown call, a bad value.
    Input,
    /// 5: authentication: the API key is missing, invalid or revoked, or its role may not do it.
    Auth,
    /// 6: the network: the server could not be reached or stopped answering.
    Network,
    /// 7: gave up waiting (`--timeout-secs`) before the call was analysed.
    Timeout,
}

impl ExitKind {
    pub fn code(self) -> u8 {
        match self {
            Self::Done => 0,
            Self::Server => 1,
            Self::CallFailed => 3,
            Self::Input => 4,
            Self::Auth => 5,
            Self::Network => 6,
            Self::Timeout => 7,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Server => "server",
            Self::CallFailed => "call_failed",
            Self::Input => "input",
            Self::Auth => "auth",
            Self::Network => "network",
            Self::Timeout => "timeout",
        }
    }
}

/// A client command's failure: its kind (the exit code) and a message worded by its cause.
#[derive(Debug)]
pub struct ClientError {
    pub kind: ExitKind,
    pub message: String,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClientError {}

fn fail(kind: ExitKind, message: impl Into<String>) -> ClientError {
    ClientError {
        kind,
        message: message.into(),
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        fail(ExitKind::Server, format!("writing the output: {e}"))
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

/// Reports `e` the way the command's output goes: one `error` object on standard output with
/// `--json`, else a line on standard error.
pub fn report(e: &ClientError, json: bool) {
    if json {
        println!(
            "{}",
            json!({ "type": "error", "kind": e.kind.label(), "exitCode": e.kind.code(), "message": e.message })
        );
    } else {
        eprintln!("voicegraph: {}", e.message);
    }
}

/// The API's base URL from `--url`: a trailing `/` or `/graphql` is allowed.
pub fn base_url(url: &str) -> ClientResult<String> {
    let url = url.trim().trim_end_matches('/');
    let url = url
        .strip_suffix("/graphql")
        .unwrap_or(url)
        .trim_end_matches('/');
    let parsed = url::Url::parse(url).map_err(|e| {
        fail(
            ExitKind::Input,
            format!("--url {url:?} is not a URL ({e}); e.g. http://127.0.0.1:8080"),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(fail(
            ExitKind::Input,
            format!("--url {url:?} must be an http:// or https:// URL, e.g. http://127.0.0.1:8080"),
        ));
    }
    Ok(url.to_string())
}

struct Api {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Api {
    fn new(args: &ClientArgs) -> ClientResult<Self> {
        let key = args.key.as_deref().unwrap_or("").trim().to_string();
        if key.is_empty() {
            return Err(fail(
                ExitKind::Auth,
                "no API key: pass --key or set VOICEGRAPH_API_KEY",
            ));
        }
        Ok(Self {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| fail(ExitKind::Server, format!("the HTTP client: {e}")))?,
            url: base_url(&args.url)?,
            key,
        })
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        let why = if e.is_connect() {
            "nothing answers there: is voicegraph running, and is --url right?"
        } else if e.is_timeout() {
            "it did not answer in time"
        } else {
            "the connection failed"
        };
        let cause = std::error::Error::source(e)
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        fail(
            ExitKind::Network,
            format!("cannot reach {}: {why}{cause}", self.url),
        )
    }

    async fn gql(&self, query: &str, variables: Value) -> ClientResult<Value> {
        let resp = self
            .http
            .post(format!("{}/graphql", self.url))
            .bearer_auth(&self.key)
            .json(&json!({ "query": query, "variables": variables }))
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body: Value = match resp.json().await {
            Ok(v) => v,
            Err(_) if status == 404 => {
                return Err(fail(
                    ExitKind::Input,
                    format!(
                        "{}/graphql is not found (404): is --url the base URL of a voicegraph API?",
                        self.url
                    ),
                ))
            }
            Err(_) => {
                return Err(fail(
                    ExitKind::Server,
                    format!(
                        "{} answered {status} with something that is not GraphQL: is --url a voicegraph API?",
                        self.url
                    ),
                ))
            }
        };
        if let Some(err) = body["errors"].get(0) {
            let code = err["extensions"]["code"].as_str().unwrap_or("");
            let message = err["message"].as_str().unwrap_or("the request failed");
            return Err(classify(code, message, retry.as_deref()));
        }
        if !status.is_success() {
            return Err(fail(
                ExitKind::Server,
                format!("the server answered {status}"),
            ));
        }
        Ok(body["data"].clone())
    }
}

/// A GraphQL error, by its code.
fn classify(code: &str, message: &str, retry_after: Option<&str>) -> ClientError {
    match code {
        "UNAUTHENTICATED" => fail(
            ExitKind::Auth,
            format!("the API key was refused ({message}): check --key or VOICEGRAPH_API_KEY"),
        ),
        "FORBIDDEN" => fail(
            ExitKind::Auth,
            format!(
                "the API key may not do this ({message}): an integrator or admin key is needed"
            ),
        ),
        "BAD_USER_INPUT"
        | "NOT_FOUND"
        | "PAYLOAD_TOO_LARGE"
        | "UNSUPPORTED_MEDIA_TYPE"
        | "CONFLICT"
        | "GRAPHQL_VALIDATION_FAILED"
        | "GRAPHQL_PARSE_FAILED" => fail(ExitKind::Input, format!("refused: {message} ({code})")),
        "RATE_LIMITED" | "TOO_MANY_REQUESTS" => fail(
            ExitKind::Server,
            format!(
                "rate limited: {message}{}",
                retry_after
                    .map(|s| format!("; retry after {s} s"))
                    .unwrap_or_default()
            ),
        ),
        "UNAVAILABLE" => fail(
            ExitKind::Server,
            format!("the service is unavailable for now ({message}); retry shortly"),
        ),
        _ => fail(
            ExitKind::Server,
            format!(
                "the server failed: {message} ({})",
                if code.is_empty() { "no code" } else { code }
            ),
        ),
    }
}

/// What the file is, from its first bytes (not its name): WAV, FLAC, MP3 or Ogg.
pub fn sniff_audio(head: &[u8]) -> Option<&'static str> {
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WAVE" {
        Some("audio/wav")
    } else if head.starts_with(b"fLaC") {
        Some("audio/flac")
    } else if head.starts_with(b"OggS") {
        Some("audio/ogg")
    } else if head.starts_with(b"ID3")
        || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0)
    {
        Some("audio/mpeg")
    } else {
        None
    }
}

async fn audio_file(path: &Path) -> ClientResult<(u64, &'static str)> {
    use tokio::io::AsyncReadExt;
    let shown = path.display();
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| fail(ExitKind::Input, format!("cannot read {shown}: {e}")))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| fail(ExitKind::Input, format!("cannot read {shown}: {e}")))?
        .len();
    if size == 0 {
        return Err(fail(ExitKind::Input, format!("{shown} is empty")));
    }
    let mut head = [0u8; 12];
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]).await {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(fail(ExitKind::Input, format!("cannot read {shown}: {e}"))),
        }
    }
    let kind = sniff_audio(&head[..read]).ok_or_else(|| {
        fail(
            ExitKind::Input,
            format!("{shown} is not a WAV, FLAC, MP3 or Ogg recording (by its first bytes); nothing was uploaded"),
        )
    })?;
    Ok((size, kind))
}

/// Writes one JSON object per line (`--json`) or text for a person.
struct Output<'a, W: Write + Send> {
    out: &'a mut W,
    json: bool,
}

impl<W: Write + Send> Output<'_, W> {
    fn object(&mut self, v: Value) -> ClientResult<()> {
        writeln!(self.out, "{v}")?;
        Ok(())
    }

    fn text(&mut self, line: std::fmt::Arguments<'_>) -> ClientResult<()> {
        if !self.json {
            writeln!(self.out, "{line}")?;
        }
        Ok(())
    }
}

/// The call's events: those so far first, then live (so none is missed after submitting).
const CALL_EVENTS: &str = "subscription($id: ID!, $after: String) { callUpdated(id: $id, after: $after) { id callId kind status cursor at } }";
const TENANT_EVENTS: &str = "subscription($after: String, $kinds: [CallEventKind!]) { callEvents(after: $after, filter: {kinds: $kinds}) { id callId kind status cursor at } }";
const CALL: &str = "query($id: ID!) { call(id: $id) { id externalId status error createdAt \
    durationMs summary tags sentiment { score label } topics actionItems \
    metrics { talkTime { speaker ms } silenceMs overlapMs interruptions longestMonologueMs } } }";

/// `voicegraph submit`: how it ended.
pub async fn submit(args: SubmitArgs, out: &mut (impl Write + Send)) -> ClientResult<ExitKind> {
    let started = Instant::now();
    let api = Api::new(&args.client)?;
    let mut out = Output {
        out,
        json: args.client.json,
    };
    let (size, ct) = audio_file(&args.file).await?;
    let name = args
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string);

    let up = api
        .gql(
            "mutation($ct: String!, $n: Int!, $f: String) { createRecordingUpload(input: {contentType: $ct, byteSize: $n, fileName: $f}) { recordingKey uploadUrl method headers { name value } } }",
            json!({ "ct": ct, "n": size, "f": name }),
        )
        .await?["createRecordingUpload"]
        .clone();
    if out.json {
        out.object(json!({ "type": "upload", "file": args.file.display().to_string(), "bytes": size, "contentType": ct }))?;
    }
    out.text(format_args!(
        "uploading {} ({size} bytes, {ct})",
        args.file.display()
    ))?;
    upload(&api, &up, &args.file, size, !out.json).await?;

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
        .await?["submitCall"]
        .clone();
    let id = submitted["call"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let status = submitted["call"]["status"]
        .as_str()
        .unwrap_or("QUEUED")
        .to_string();
    if out.json {
        out.object(json!({ "type": "submitted", "callId": id, "status": status, "deduplicated": submitted["deduplicated"] }))?;
    }
    let note = if submitted["deduplicated"] == true {
        " (a repeat: the first submission's call)"
    } else {
        ""
    };
    out.text(format_args!("call {id} {status}{note}"))?;
    if args.no_wait {
        return Ok(ExitKind::Done);
    }
    follow(
        &api,
        &id,
        status,
        None,
        args.timeout_secs,
        started,
        &mut out,
    )
    .await
}

/// Streams the file to the signed URL, with a progress bar on a terminal for large files.
async fn upload(api: &Api, up: &Value, file: &Path, size: u64, person: bool) -> ClientResult<()> {
    let opened = tokio::fs::File::open(file).await.map_err(|e| {
        fail(
            ExitKind::Input,
            format!("cannot read {}: {e}", file.display()),
        )
    })?;
    let bar = if person && size >= 1 << 20 && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let counted = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(opened).inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            counted.inc(bytes.len() as u64);
        }
    });
    let mut put = api
        .http
        .put(up["uploadUrl"].as_str().unwrap_or_default())
        .body(reqwest::Body::wrap_stream(stream));
    for h in up["headers"].as_array().into_iter().flatten() {
        put = put.header(
            h["name"].as_str().unwrap_or_default(),
            h["value"].as_str().unwrap_or_default(),
        );
    }
    let resp = put.send().await.map_err(|e| api.unreachable(&e))?;
    bar.finish_and_clear();
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let kind = if status.is_client_error() {
            ExitKind::Input
        } else {
            ExitKind::Server
        };
        return Err(fail(
            kind,
            format!("the upload was refused ({status}): {}", body.trim()),
        ));
    }
    Ok(())
}

/// Follows the call's events until it is analysed, then prints the results.
async fn follow<W: Write + Send>(
    api: &Api,
    id: &str,
    mut status: String,
    mut cursor: Option<String>,
    timeout_secs: u64,
    started: Instant,
    out: &mut Output<'_, W>,
) -> ClientResult<ExitKind> {
    let mut events = if status == "COMPLETED" || status == "FAILED" {
        None
    } else {
        Some(subscribe(api, CALL_EVENTS, json!({ "id": id, "after": cursor })).await?)
    };
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    while status != "COMPLETED" && status != "FAILED" {
        if Instant::now() > deadline {
            return Err(fail(
                ExitKind::Timeout,
                format!("gave up after {timeout_secs} s; the call {id} is {status}"),
            ));
        }
        let Some(socket) = events.as_mut() else {
            break;
        };
        // Events arrive as they happen; a periodic look at the call covers any that could not.
        match next_event(socket, Duration::from_secs(2)).await? {
            Next::Event(e) => {
                if e["callId"] == id {
                    cursor = e["cursor"].as_str().map(str::to_string);
                    status = e["status"].as_str().unwrap_or("").to_string();
                    print_event(out, &e, started)?;
                }
            }
            Next::Gone => {
                // The connection went away: resume after the last event seen.
                events =
                    Some(subscribe(api, CALL_EVENTS, json!({ "id": id, "after": cursor })).await?);
            }
            Next::Quiet => {
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
    let c = api.gql(CALL, json!({ "id": id })).await?["call"].clone();
    let failed = c["status"] == "FAILED";
    if out.json {
        out.object(json!({ "type": "result", "callId": id, "status": c["status"], "call": c }))?;
    } else if failed {
        out.text(format_args!(
            "FAILED: {}",
            c["error"].as_str().unwrap_or("unknown reason")
        ))?;
    } else {
        out.text(format_args!(
            "COMPLETED in {:.1}s",
            started.elapsed().as_secs_f64()
        ))?;
        print_results(out, &c)?;
    }
    Ok(if failed {
        ExitKind::CallFailed
    } else {
        ExitKind::Done
    })
}

fn print_event<W: Write + Send>(
    out: &mut Output<'_, W>,
    e: &Value,
    started: Instant,
) -> ClientResult<()> {
    if out.json {
        return out.object(json!({
            "type": "event", "callId": e["callId"], "kind": e["kind"], "status": e["status"],
            "cursor": e["cursor"], "at": e["at"], "elapsedSecs": started.elapsed().as_secs_f64(),
        }));
    }
    out.text(format_args!(
        "  {:>6.1}s  {}",
        started.elapsed().as_secs_f64(),
        e["kind"].as_str().unwrap_or("")
    ))
}

fn print_results<W: Write + Send>(out: &mut Output<'_, W>, c: &Value) -> ClientResult<()> {
    out.text(format_args!("  duration: {} ms", c["durationMs"]))?;
    if let Some(s) = c["summary"].as_str() {
        out.text(format_args!("  summary: {s}"))?;
    }
    let m = &c["metrics"];
    for t in m["talkTime"].as_array().into_iter().flatten() {
        out.text(format_args!(
            "  talk time {}: {} ms",
            t["speaker"].as_str().unwrap_or("?"),
            t["ms"]
        ))?;
    }
    if m.is_object() {
        out.text(format_args!(
            "  silence {} ms, overlap {} ms, interruptions {}, longest monologue {} ms",
            m["silenceMs"], m["overlapMs"], m["interruptions"], m["longestMonologueMs"]
        ))?;
    }
    if c["sentiment"].is_object() {
        out.text(format_args!(
            "  sentiment: {} ({})",
            c["sentiment"]["label"].as_str().unwrap_or(""),
            c["sentiment"]["score"]
        ))?;
    }
    for item in c["actionItems"].as_array().into_iter().flatten() {
        out.text(format_args!(
            "  action item: {}",
            item.as_str().unwrap_or("")
        ))?;
    }
    Ok(())
}

/// `voicegraph calls list|get|watch`.
pub async fn calls(args: CallsArgs, out: &mut (impl Write + Send)) -> ClientResult<ExitKind> {
    let api = Api::new(&args.client)?;
    let mut out = Output {
        out,
        json: args.client.json,
    };
    match args.command {
        CallsCommand::List {
            status,
            tags,
            text,
            external_id,
            first,
            after,
        } => {
            let status: Vec<String> = status.iter().map(|s| s.to_ascii_uppercase()).collect();
            let filter = json!({
                "status": if status.is_empty() { Value::Null } else { json!(status) },
                "tags": if tags.is_empty() { Value::Null } else { json!(tags) },
                "text": text,
                "externalId": external_id,
            });
            let d = api
                .gql(
                    "query($f: CallFilter, $first: Int, $after: String) { calls(filter: $f, first: $first, after: $after) { totalCount pageInfo { hasNextPage endCursor } nodes { id externalId status createdAt durationMs tags } } }",
                    json!({ "f": filter, "first": first, "after": after }),
                )
                .await?["calls"]
                .clone();
            for c in d["nodes"].as_array().into_iter().flatten() {
                if out.json {
                    out.object(json!({ "type": "call", "call": c }))?;
                } else {
                    out.text(format_args!(
                        "{}  {:<10} {}  {:>7} ms  {}  {}",
                        c["id"].as_str().unwrap_or(""),
                        c["status"].as_str().unwrap_or(""),
                        c["createdAt"].as_str().unwrap_or(""),
                        c["durationMs"]
                            .as_i64()
                            .map_or("-".into(), |d| d.to_string()),
                        c["externalId"].as_str().unwrap_or("-"),
                        c["tags"]
                            .as_array()
                            .map(|t| t
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(","))
                            .unwrap_or_default(),
                    ))?;
                }
            }
            let page = &d["pageInfo"];
            if out.json {
                out.object(json!({ "type": "page", "totalCount": d["totalCount"], "hasNextPage": page["hasNextPage"], "endCursor": page["endCursor"] }))?;
            } else {
                out.text(format_args!(
                    "{} of {} calls{}",
                    d["nodes"].as_array().map_or(0, Vec::len),
                    d["totalCount"],
                    match page["endCursor"].as_str() {
                        Some(c) if page["hasNextPage"] == true =>
                            format!("; next page: --after {c}"),
                        _ => String::new(),
                    }
                ))?;
            }
            Ok(ExitKind::Done)
        }
        CallsCommand::Get { id } => {
            let c = api.gql(CALL, json!({ "id": id })).await?["call"].clone();
            if c.is_null() {
                return Err(fail(
                    ExitKind::Input,
                    format!("no call {id} in the key's tenant"),
                ));
            }
            if out.json {
                out.object(json!({ "type": "call", "call": c }))?;
            } else {
                out.text(format_args!(
                    "call {id} {}{}",
                    c["status"].as_str().unwrap_or(""),
                    c["error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ))?;
                print_results(&mut out, &c)?;
            }
            Ok(ExitKind::Done)
        }
        CallsCommand::Watch {
            id,
            after,
            kinds,
            timeout_secs,
        } => {
            let started = Instant::now();
            if let Some(id) = id {
                // The call's events so far, then live ones until it is analysed.
                let mut cursor = after;
                let status = loop {
                    let c = api
                        .gql(
                            "query($id: ID!, $after: String) { call(id: $id) { status events(first: 100, after: $after) { id callId kind status cursor at } } }",
                            json!({ "id": id, "after": cursor }),
                        )
                        .await?["call"]
                        .clone();
                    if c.is_null() {
                        return Err(fail(
                            ExitKind::Input,
                            format!("no call {id} in the key's tenant"),
                        ));
                    }
                    let page = c["events"].as_array().cloned().unwrap_or_default();
                    for e in &page {
                        cursor = e["cursor"].as_str().map(str::to_string);
                        print_event(&mut out, e, started)?;
                    }
                    if page.len() < 100 {
                        break c["status"].as_str().unwrap_or("").to_string();
                    }
                };
                let timeout = timeout_secs.unwrap_or(u64::MAX / 4);
                return follow(&api, &id, status, cursor, timeout, started, &mut out).await;
            }
            let kinds: Vec<String> = kinds.iter().map(|k| k.to_ascii_uppercase()).collect();
            let variables = json!({
                "after": after,
                "kinds": if kinds.is_empty() { Value::Null } else { json!(kinds) },
            });
            let deadline = timeout_secs.map(|s| Instant::now() + Duration::from_secs(s));
            let mut cursor = after.clone();
            let mut events = subscribe(&api, TENANT_EVENTS, variables.clone()).await?;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(ExitKind::Done);
                }
                match next_event(&mut events, Duration::from_secs(1)).await? {
                    Next::Event(e) => {
                        cursor = e["cursor"].as_str().map(str::to_string).or(cursor);
                        if out.json {
                            out.object(json!({ "type": "event", "callId": e["callId"], "kind": e["kind"], "status": e["status"], "cursor": e["cursor"], "at": e["at"] }))?;
                        } else {
                            out.text(format_args!(
                                "{}  {}  {:<11} {}",
                                e["at"].as_str().unwrap_or(""),
                                e["callId"].as_str().unwrap_or(""),
                                e["kind"].as_str().unwrap_or(""),
                                e["cursor"].as_str().unwrap_or("")
                            ))?;
                        }
                        out.out.flush()?;
                    }
                    Next::Gone => {
                        let mut v = variables.clone();
                        v["after"] = json!(cursor);
                        events = subscribe(&api, TENANT_EVENTS, v).await?;
                    }
                    Next::Quiet => {}
                }
            }
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Next {
    Event(Value),
    /// The connection went away (resume from the last cursor).
    Gone,
    /// Nothing within the wait.
    Quiet,
}

async fn next_event(ws: &mut Socket, wait: Duration) -> ClientResult<Next> {
    match tokio::time::timeout(wait, ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => {
            let msg: Value = serde_json::from_str(&text).unwrap_or_default();
            match msg["type"].as_str() {
                Some("next") => {
                    let data = &msg["payload"]["data"];
                    if let Some(err) = msg["payload"]["errors"].get(0) {
                        return Err(classify(
                            err["extensions"]["code"].as_str().unwrap_or(""),
                            err["message"].as_str().unwrap_or("the subscription failed"),
                            None,
                        ));
                    }
                    let e = data["callUpdated"]
                        .as_object()
                        .or(data["callEvents"].as_object())
                        .cloned()
                        .map(Value::Object)
                        .unwrap_or_default();
                    Ok(Next::Event(e))
                }
                Some("error") => {
                    let err = &msg["payload"][0];
                    Err(classify(
                        err["extensions"]["code"].as_str().unwrap_or(""),
                        err["message"]
                            .as_str()
                            .unwrap_or("the subscription was refused"),
                        None,
                    ))
                }
                Some("ping") => {
                    ws.send(Message::text(json!({ "type": "pong" }).to_string()))
                        .await
                        .map_err(|_| fail(ExitKind::Network, "the WebSocket closed"))?;
                    Ok(Next::Quiet)
                }
                _ => Ok(Next::Quiet),
            }
        }
        Ok(Some(Ok(Message::Close(frame)))) => {
            match frame.map(|f| (u16::from(f.code), f.reason.to_string())) {
                Some((code, reason)) if (4400..4500).contains(&code) => Err(closed(code, &reason)),
                _ => Ok(Next::Gone),
            }
        }
        Ok(Some(Ok(_))) => Ok(Next::Quiet),
        Ok(None) | Ok(Some(Err(_))) => Ok(Next::Gone),
        Err(_) => Ok(Next::Quiet),
    }
}

/// A WebSocket closed by the server with a 44xx code: why, by the code.
fn closed(code: u16, reason: &str) -> ClientError {
    match code {
        4401 | 4403 => fail(
            ExitKind::Auth,
            format!("the API key was refused on the WebSocket ({code} {reason}): check --key or VOICEGRAPH_API_KEY"),
        ),
        4429 => fail(ExitKind::Server, format!("rate limited ({code} {reason}); retry shortly")),
        _ => fail(ExitKind::Input, format!("the WebSocket was closed: {code} {reason}")),
    }
}

async fn subscribe(api: &Api, query: &str, variables: Value) -> ClientResult<Socket> {
    let ws_url = format!("{}/graphql", api.url.replacen("http", "ws", 1));
    let mut req = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| fail(ExitKind::Input, format!("--url: {e}")))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().expect("a valid header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| {
        fail(
            ExitKind::Network,
            format!("cannot open a WebSocket to {ws_url}: {e}"),
        )
    })?;
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", api.key) } });
    ws.send(Message::text(init.to_string()))
        .await
        .map_err(|e| fail(ExitKind::Network, format!("the WebSocket to {ws_url}: {e}")))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                if v["type"] == "connection_ack" {
                    break;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1000, String::new()));
                return Err(closed(code, &reason));
            }
            Ok(Some(Ok(_))) => {}
            _ => {
                return Err(fail(
                    ExitKind::Network,
                    format!("{ws_url} did not accept the WebSocket (no connection_ack)"),
                ))
            }
        }
    }
    ws.send(Message::text(
        json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "variables": variables } }).to_string(),
    ))
    .await
    .map_err(|e| fail(ExitKind::Network, format!("the WebSocket to {ws_url}: {e}")))?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_is_known_by_its_first_bytes() {
        assert_eq!(sniff_audio(b"RIFF\x24\0\0\0WAVEfmt "), Some("audio/wav"));
        assert_eq!(sniff_audio(b"fLaC\0\0\0\x22"), Some("audio/flac"));
        assert_eq!(sniff_audio(b"OggS\0\x02"), Some("audio/ogg"));
        assert_eq!(sniff_audio(b"ID3\x04\0"), Some("audio/mpeg"));
        assert_eq!(sniff_audio(&[0xFF, 0xFB, 0x90, 0x64]), Some("audio/mpeg"));
        for not_audio in [
            &b"not audio at all"[..],
            b"RIFF\0\0\0\0AVI ",
            b"%PDF-1.7",
            b"",
            b"R",
        ] {
            assert_eq!(sniff_audio(not_audio), None, "{not_audio:?}");
        }
    }

    #[test]
    fn the_url_may_end_in_graphql_or_a_slash() {
        for url in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/graphql",
            "http://127.0.0.1:8080/graphql/",
            " http://127.0.0.1:8080//graphql ",
        ] {
            assert_eq!(base_url(url).unwrap(), "http://127.0.0.1:8080", "{url}");
        }
        assert_eq!(
            base_url("https://api.example.com/voicegraph/graphql").unwrap(),
            "https://api.example.com/voicegraph"
        );
        for bad in ["127.0.0.1:8080", "ftp://x", "http://", ""] {
            assert_eq!(base_url(bad).unwrap_err().kind, ExitKind::Input, "{bad}");
        }
    }

    #[test]
    fn errors_are_classified_by_code() {
        assert_eq!(classify("UNAUTHENTICATED", "m", None).kind, ExitKind::Auth);
        assert_eq!(classify("FORBIDDEN", "m", None).kind, ExitKind::Auth);
        assert_eq!(classify("BAD_USER_INPUT", "m", None).kind, ExitKind::Input);
        assert_eq!(classify("INTERNAL", "m", None).kind, ExitKind::Server);
        assert!(classify("RATE_LIMITED", "m", Some("2"))
            .message
            .contains("retry after 2 s"));
        assert_eq!(closed(4403, "Forbidden").kind, ExitKind::Auth);
        let codes: Vec<u8> = [
            ExitKind::Done,
            ExitKind::Server,
            ExitKind::CallFailed,
            ExitKind::Input,
            ExitKind::Auth,
            ExitKind::Network,
            ExitKind::Timeout,
        ]
        .iter()
        .map(|k| k.code())
        .collect();
        assert_eq!(codes, [0, 1, 3, 4, 5, 6, 7], "2 is the argument parser's");
    }
}
