//! A stand-in for the Gemini API on 127.0.0.1:0 that speaks its documented REST wire format,
//! checks requests the way Google does (API key, JSON shape, base64), answers from a per-test
//! script, and records every request for assertions. It reads requests as plain JSON values,
//! independently of the client's own wire types.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Map, Value};

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The body, when it was JSON.
    pub json: Option<Value>,
    pub body_len: usize,
    /// For `generateContent`: each `inlineData` part's `mimeType` and decoded bytes.
    pub inline_data: Vec<(String, Vec<u8>)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the next `generateContent` answers.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with one candidate whose text is `text`.
    Answer {
        text: String,
        finish_reason: &'static str,
        /// prompt, candidates, total (any excess over the first two is reported as thoughts).
        usage: (i64, i64, i64),
    },
    /// 200 with one candidate that has a finish reason and no content.
    Stopped { finish_reason: &'static str },
    /// 200 with no candidates and `promptFeedback.blockReason`.
    Blocked { block_reason: &'static str },
    /// An error in Google's envelope.
    Error {
        status: u16,
        grpc_status: &'static str,
        message: String,
        retry_delay: Option<&'static str>,
        retry_after: Option<&'static str>,
    },
    /// Never answers.
    Hang,
}

impl Reply {
    pub fn json(value: Value, usage: (i64, i64, i64)) -> Self {
        Reply::Answer {
            text: value.to_string(),
            finish_reason: "STOP",
            usage,
        }
    }

    pub fn text(text: &str) -> Self {
        Reply::Answer {
            text: text.to_string(),
            finish_reason: "STOP",
            usage: (10, 5, 15),
        }
    }

    /// A truncated answer, as Gemini sends when `maxOutputTokens` runs out.
    pub fn max_tokens() -> Self {
        Reply::Answer {
            text: "{\"summary\": \"The caller asked ab".into(),
            finish_reason: "MAX_TOKENS",
            usage: (10, 8, 18),
        }
    }

    pub fn stopped(finish_reason: &'static str) -> Self {
        Reply::Stopped { finish_reason }
    }

    pub fn error(status: u16, grpc_status: &'static str, message: &str) -> Self {
        Reply::Error {
            status,
            grpc_status,
            message: message.to_string(),
            retry_delay: None,
            retry_after: None,
        }
    }

    /// 429 with a `RetryInfo` detail (and a `QuotaFailure` before it, as Google sends).
    pub fn rate_limited(retry_delay: &'static str) -> Self {
        Reply::Error {
            status: 429,
            grpc_status: "RESOURCE_EXHAUSTED",
            message: format!(
                "You exceeded your current quota, please check your plan and billing details. Please retry in {retry_delay}."
            ),
            retry_delay: Some(retry_delay),
            retry_after: None,
        }
    }

    pub fn unavailable() -> Self {
        Reply::error(
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
        )
    }

    pub fn internal() -> Self {
        Reply::error(
            500,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        )
    }

    pub fn with_retry_after(mut self, value: &'static str) -> Self {
        if let Reply::Error { retry_after, .. } = &mut self {
            *retry_after = Some(value);
        }
        self
    }
}

/// How an uploaded file's processing ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOutcome {
    Active,
    Failed,
}

/// A file the server holds.
#[derive(Clone, Debug)]
pub struct StoredFile {
    pub name: String,
    pub display_name: String,
    pub mime_type: String,
    pub bytes: Vec<u8>,
    polls_left: usize,
    outcome: FileOutcome,
}

struct Session {
    display_name: String,
    mime_type: String,
    length: u64,
}

/// `generateContent` requests wait until this many are in flight (or `max_wait` passes), then
/// `linger` longer: so the count a test sees is the most the client lets through at once.
#[derive(Clone, Copy)]
struct Hold {
    until_in_flight: usize,
    max_wait: Duration,
    linger: Duration,
}

/// Answers a `generateContent` request from what it carries: its JSON and its decoded inline
/// parts (a stand-in model). Consulted when no scripted reply is queued.
pub type Responder = Arc<dyn Fn(&Value, &[(String, Vec<u8>)]) -> Reply + Send + Sync>;

struct Inner {
    responder: Mutex<Option<Responder>>,
    base_url: String,
    key: String,
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    in_flight: tokio::sync::watch::Sender<usize>,
    max_in_flight: AtomicUsize,
    hold: Mutex<Option<Hold>>,
    sessions: Mutex<HashMap<String, Session>>,
    files: Mutex<HashMap<String, StoredFile>>,
    file_plan: Mutex<(usize, FileOutcome)>,
    next_id: AtomicUsize,
}

#[derive(Clone)]
pub struct GeminiServer {
    inner: Arc<Inner>,
}

pub const TEST_KEY: &str = "AIzaSyTEST-gemini-server-key";

impl GeminiServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Inner {
            responder: Mutex::new(None),
            base_url,
            key: TEST_KEY.to_string(),
            script: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            in_flight: tokio::sync::watch::Sender::new(0),
            max_in_flight: AtomicUsize::new(0),
            hold: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            file_plan: Mutex::new((0, FileOutcome::Active)),
            next_id: AtomicUsize::new(1),
        });
        let router = axum::Router::new()
            .route(
                "/v1beta/models/{call}",
                axum::routing::post(generate_content),
            )
            .route("/upload/v1beta/files", axum::routing::post(upload))
            .route(
                "/v1beta/files/{id}",
                axum::routing::get(get_file).delete(delete_file),
            )
            .fallback(not_found)
            .layer(DefaultBodyLimit::disable())
            .with_state(inner.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { inner }
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// Queues answers for the next `generateContent` calls; past the queue, a default success.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.script.lock().unwrap().extend(replies);
    }

    /// Past the scripted replies, answer each request with `f` (instead of the default success).
    pub fn answer_with(
        &self,
        f: impl Fn(&Value, &[(String, Vec<u8>)]) -> Reply + Send + Sync + 'static,
    ) {
        *self.inner.responder.lock().unwrap() = Some(Arc::new(f));
    }

    /// The bytes of every file uploaded and not deleted.
    pub fn live_files(&self) -> usize {
        self.inner.files.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// The recorded `generateContent` requests.
    pub fn generate_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with(":generateContent"))
            .collect()
    }

    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    /// See [`Hold`].
    pub fn hold_until_in_flight(&self, n: usize, max_wait: Duration, linger: Duration) {
        *self.inner.hold.lock().unwrap() = Some(Hold {
            until_in_flight: n,
            max_wait,
            linger,
        });
    }

    /// Files uploaded from now on answer `PROCESSING` to this many polls, then end so.
    pub fn set_file_plan(&self, processing_polls: usize, outcome: FileOutcome) {
        *self.inner.file_plan.lock().unwrap() = (processing_polls, outcome);
    }

    pub fn file(&self, name: &str) -> Option<StoredFile> {
        self.inner.files.lock().unwrap().get(name).cloned()
    }
}

impl Inner {
    fn record(&self, method: Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> usize {
        let is_json = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let mut requests = self.requests.lock().unwrap();
        requests.push(Recorded {
            at: Instant::now(),
            method,
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            headers: headers.clone(),
            json: is_json.then(|| serde_json::from_slice(body).ok()).flatten(),
            body_len: body.len(),
            inline_data: Vec::new(),
        });
        requests.len() - 1
    }

    /// Google takes the key from `x-goog-api-key` or `?key=`; the answer to a missing or
    /// wrong one.
    fn key_refusal(&self, headers: &HeaderMap, query: Option<&str>) -> Option<Response> {
        let from_query = query.and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("key="))
                .map(str::to_string)
        });
        let given = headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or(from_query);
        match given {
            None => Some(google_error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                vec![],
            )),
            Some(k) if k != self.key => Some(google_error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                vec![json!({
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                })],
            )),
            Some(_) => None,
        }
    }

    fn file_json(&self, file: &StoredFile, state: &str) -> Value {
        let id = file.name.trim_start_matches("files/");
        let mut value = json!({
            "name": file.name,
            "displayName": file.display_name,
            "mimeType": file.mime_type,
            "sizeBytes": file.bytes.len().to_string(),
            "createTime": "2025-01-01T00:00:00.000000Z",
            "updateTime": "2025-01-01T00:00:00.000000Z",
            "expirationTime": "2025-01-03T00:00:00.000000Z",
            "sha256Hash": "ZmFrZQ==",
            "uri": format!("{}/v1beta/files/{id}", self.base_url),
            "state": state,
            "source": "UPLOADED",
        });
        if state == "FAILED" {
            value["error"] = json!({"code": 3, "message": "The audio could not be decoded."});
        }
        value
    }
}

/// Counts a `generateContent` request in flight until dropped.
struct InFlight<'a>(&'a Inner);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

pub fn google_error(
    status: u16,
    grpc_status: &str,
    message: &str,
    details: Vec<Value>,
) -> Response {
    let mut error = json!({"code": status, "message": message, "status": grpc_status});
    if !details.is_empty() {
        error["details"] = Value::Array(details);
    }
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({ "error": error })),
    )
        .into_response()
}

fn invalid(message: impl AsRef<str>) -> Response {
    google_error(400, "INVALID_ARGUMENT", message.as_ref(), vec![])
}

async fn not_found(method: Method, uri: Uri) -> Response {
    google_error(
        404,
        "NOT_FOUND",
        &format!("{method} {} is not a Gemini API method.", uri.path()),
        vec![],
    )
}

async fn generate_content(
    State(s): State<Arc<Inner>>,
    Path(call): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let index = s.record(method, &uri, &headers, &body);
    let mut in_flight = 0;
    s.in_flight.send_modify(|n| {
        *n += 1;
        in_flight = *n;
    });
    let _guard = InFlight(&s);
    s.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
    let hold = *s.hold.lock().unwrap();
    if let Some(hold) = hold {
        let mut rx = s.in_flight.subscribe();
        let _ =
            tokio::time::timeout(hold.max_wait, rx.wait_for(|n| *n >= hold.until_in_flight)).await;
        tokio::time::sleep(hold.linger).await;
    }

    if let Some(refused) = s.key_refusal(&headers, query.as_deref()) {
        return refused;
    }
    // The model and method share one path segment: `{model}:generateContent`.
    let Some((model, rpc)) = call.split_once(':') else {
        return google_error(
            404,
            "NOT_FOUND",
            &format!("models/{call} is not found"),
            vec![],
        );
    };
    if rpc != "generateContent" {
        return google_error(
            404,
            "NOT_FOUND",
            &format!("No method {rpc} on models/{model}"),
            vec![],
        );
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return invalid(format!("Invalid JSON payload received. {e}")),
    };
    match validate_generate(&value) {
        Ok(inline) => s.requests.lock().unwrap()[index].inline_data = inline,
        Err(message) => return invalid(message),
    }

    let reply = s.script.lock().unwrap().pop_front();
    let responder = s.responder.lock().unwrap().clone();
    let reply = match (reply, responder) {
        (Some(r), _) => r,
        (None, Some(f)) => {
            // The audio the request carries: inline parts, then uploaded files by their URI.
            let mut audio = s.requests.lock().unwrap()[index].inline_data.clone();
            let prefix = format!("{}/v1beta/", s.base_url);
            for part in value["contents"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["parts"].as_array().into_iter().flatten())
            {
                if let Some(uri) = part["fileData"]["fileUri"].as_str() {
                    let name = uri.strip_prefix(&prefix).unwrap_or(uri);
                    if let Some(f) = s.files.lock().unwrap().get(name) {
                        audio.push((f.mime_type.clone(), f.bytes.clone()));
                    }
                }
            }
            f(&value, &audio)
        }
        (None, None) => Reply::json(json!({"ok": true}), (10, 2, 12)),
    };
    let response_id = format!("resp-{}", s.next_id.fetch_add(1, Ordering::SeqCst));
    let model_version = format!("{model}-001");
    match reply {
        Reply::Answer {
            text,
            finish_reason,
            usage: (prompt, candidates, total),
        } => {
            let mut usage = json!({
                "promptTokenCount": prompt,
                "candidatesTokenCount": candidates,
                "totalTokenCount": total,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
            });
            if total > prompt + candidates {
                usage["thoughtsTokenCount"] = json!(total - prompt - candidates);
            }
            axum::Json(json!({
                "candidates": [{
                    "content": {"parts": [{"text": text}], "role": "model"},
                    "finishReason": finish_reason,
                    "index": 0,
                }],
                "usageMetadata": usage,
                "modelVersion": model_version,
                "responseId": response_id,
            }))
            .into_response()
        }
        Reply::Stopped { finish_reason } => axum::Json(json!({
            "candidates": [{
                "finishReason": finish_reason,
                "index": 0,
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true},
                ],
            }],
            "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
            "modelVersion": model_version,
            "responseId": response_id,
        }))
        .into_response(),
        Reply::Blocked { block_reason } => axum::Json(json!({
            "promptFeedback": {"blockReason": block_reason, "safetyRatings": []},
            "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
            "modelVersion": model_version,
            "responseId": response_id,
        }))
        .into_response(),
        Reply::Error {
            status,
            grpc_status,
            message,
            retry_delay,
            retry_after,
        } => {
            let mut details = vec![];
            if let Some(delay) = retry_delay {
                details.push(json!({
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaValue": "10",
                    }],
                }));
                details.push(json!({
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
                }));
                details.push(json!({
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": delay,
                }));
            }
            let mut response = google_error(status, grpc_status, &message, details);
            if let Some(after) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", after.parse().unwrap());
            }
            response
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}

/// Proto JSON accepts a field by its JSON (camelCase) name or its proto (snake_case) name;
/// any other name is rejected, as Google does.
fn check_fields(object: &Map<String, Value>, at: &str, known: &[&str]) -> Result<(), String> {
    for name in object.keys() {
        let ok = known.iter().any(|k| name == k || *name == snake_case(k));
        if !ok {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
            ));
        }
    }
    Ok(())
}

fn snake_case(camel: &str) -> String {
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn field<'a>(object: &'a Map<String, Value>, camel: &str) -> Option<&'a Value> {
    object.get(camel).or_else(|| object.get(&snake_case(camel)))
}

/// Checks a `GenerateContentRequest`; answers the decoded inline data.
fn validate_generate(value: &Value) -> Result<Vec<(String, Vec<u8>)>, String> {
    let Some(request) = value.as_object() else {
        return Err("Invalid JSON payload received. Expected an object.".into());
    };
    check_fields(
        request,
        "",
        &[
            "contents",
            "systemInstruction",
            "generationConfig",
            "safetySettings",
            "tools",
            "toolConfig",
            "cachedContent",
        ],
    )?;
    let contents = field(request, "contents")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or("* GenerateContentRequest.contents: contents is not specified")?;
    let mut inline = Vec::new();
    for (i, content) in contents.iter().enumerate() {
        validate_content(content, &format!("contents[{i}]"), &mut inline)?;
    }
    if let Some(system) = field(request, "systemInstruction") {
        validate_content(system, "system_instruction", &mut inline)?;
    }
    if let Some(config) = field(request, "generationConfig") {
        let config = config
            .as_object()
            .ok_or("Invalid JSON payload received. generation_config: expected an object")?;
        check_fields(
            config,
            "generation_config",
            &[
                "stopSequences",
                "responseMimeType",
                "responseSchema",
                "responseJsonSchema",
                "candidateCount",
                "maxOutputTokens",
                "temperature",
                "topP",
                "topK",
                "seed",
                "thinkingConfig",
            ],
        )?;
        let mime = field(config, "responseMimeType").map(|m| m.as_str().unwrap_or("?"));
        if let Some(m) = mime {
            if !matches!(m, "text/plain" | "application/json" | "text/x.enum") {
                return Err(format!("* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are `text/plain`, `application/json`, and `text/x.enum`; got {m}"));
            }
        }
        if let Some(schema) = field(config, "responseSchema") {
            if !schema.is_object() {
                return Err("generation_config.response_schema: expected an object".into());
            }
            if mime != Some("application/json") && mime != Some("text/x.enum") {
                return Err("* GenerateContentRequest.generation_config.response_schema: response_mime_type should be set to `application/json` or `text/x.enum` when response_schema is set".into());
            }
        }
        if let Some(t) = field(config, "temperature") {
            if !t.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) {
                return Err(format!("* GenerateContentRequest.generation_config.temperature: must be in [0.0, 2.0], got {t}"));
            }
        }
        if let Some(n) = field(config, "maxOutputTokens") {
            if n.as_u64().is_none_or(|n| n == 0) {
                return Err(format!("* GenerateContentRequest.generation_config.max_output_tokens: must be a positive integer, got {n}"));
            }
        }
    }
    Ok(inline)
}

fn validate_content(
    content: &Value,
    at: &str,
    inline: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), String> {
    let content = content
        .as_object()
        .ok_or_else(|| format!("Invalid JSON payload received. {at}: expected an object"))?;
    check_fields(content, at, &["role", "parts"])?;
    if let Some(role) = field(content, "role") {
        if !matches!(role.as_str(), Some("user" | "model")) {
            return Err(format!(
                "* {at}.role: Please use a valid role: user, model."
            ));
        }
    }
    let parts = field(content, "parts")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            format!("* GenerateContentRequest.{at}.parts: contents.parts must not be empty.")
        })?;
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}.parts[{j}]");
        let part = part
            .as_object()
            .ok_or_else(|| format!("Invalid JSON payload received. {at}: expected an object"))?;
        check_fields(
            part,
            &at,
            &[
                "text",
                "inlineData",
                "fileData",
                "thought",
                "functionCall",
                "functionResponse",
            ],
        )?;
        let kinds = ["text", "inlineData", "fileData"]
            .iter()
            .filter(|k| field(part, k).is_some())
            .count();
        if kinds != 1 {
            return Err(format!("* GenerateContentRequest.{at}.data: required oneof field 'data' must have one initialized field"));
        }
        if let Some(text) = field(part, "text") {
            if !text.is_string() {
                return Err(format!("Invalid value at '{at}.text', expected a string"));
            }
        }
        if let Some(blob) = field(part, "inlineData") {
            let blob = blob
                .as_object()
                .ok_or_else(|| format!("{at}.inline_data: expected an object"))?;
            check_fields(blob, &format!("{at}.inline_data"), &["mimeType", "data"])?;
            let mime = field(blob, "mimeType")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .ok_or_else(|| {
                    format!("* GenerateContentRequest.{at}.inline_data.mime_type: required")
                })?;
            let data = field(blob, "data").and_then(Value::as_str).ok_or_else(|| {
                format!("* GenerateContentRequest.{at}.inline_data.data: required")
            })?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| format!("Invalid value at '{at}.inline_data.data' (TYPE_BYTES), Base64 decoding failed"))?;
            inline.push((mime.to_string(), bytes));
        }
        if let Some(file) = field(part, "fileData") {
            let file = file
                .as_object()
                .ok_or_else(|| format!("{at}.file_data: expected an object"))?;
            check_fields(file, &format!("{at}.file_data"), &["mimeType", "fileUri"])?;
            if field(file, "fileUri")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(format!(
                    "* GenerateContentRequest.{at}.file_data.file_uri: required"
                ));
            }
        }
    }
    Ok(())
}

/// `POST /upload/v1beta/files`: a session start, or (with `upload_id`) the bytes.
async fn upload(
    State(s): State<Arc<Inner>>,
    RawQuery(query): RawQuery,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.record(method, &uri, &headers, &body);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let upload_id = query.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("upload_id="))
            .map(str::to_string)
    });
    let Some(upload_id) = upload_id else {
        if let Some(refused) = s.key_refusal(&headers, query.as_deref()) {
            return refused;
        }
        if header("x-goog-upload-protocol") != Some("resumable")
            || header("x-goog-upload-command") != Some("start")
        {
            return invalid(
                "Uploads need X-Goog-Upload-Protocol: resumable and X-Goog-Upload-Command: start.",
            );
        }
        let Some(length) =
            header("x-goog-upload-header-content-length").and_then(|v| v.parse().ok())
        else {
            return invalid("X-Goog-Upload-Header-Content-Length is missing or not a number.");
        };
        let mut display_name = String::new();
        let mut mime_type = header("x-goog-upload-header-content-type")
            .unwrap_or("application/octet-stream")
            .to_string();
        if !body.is_empty() {
            let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&body) else {
                return invalid("Invalid JSON payload received.");
            };
            if let Err(e) = check_fields(&request, "", &["file"]) {
                return invalid(e);
            }
            if let Some(file) = request.get("file") {
                let Some(file) = file.as_object() else {
                    return invalid("Invalid JSON payload received. file: expected an object");
                };
                if let Err(e) = check_fields(file, "file", &["name", "displayName", "mimeType"]) {
                    return invalid(e);
                }
                if let Some(name) = field(file, "displayName").and_then(Value::as_str) {
                    display_name = name.to_string();
                }
                if let Some(m) = field(file, "mimeType").and_then(Value::as_str) {
                    mime_type = m.to_string();
                }
            }
        }
        let id = format!("up{}", s.next_id.fetch_add(1, Ordering::SeqCst));
        s.sessions.lock().unwrap().insert(
            id.clone(),
            Session {
                display_name,
                mime_type,
                length,
            },
        );
        return (
            [
                (
                    "x-goog-upload-url",
                    format!(
                        "{}/upload/v1beta/files?upload_id={id}&upload_protocol=resumable",
                        s.base_url
                    ),
                ),
                ("x-goog-upload-status", "active".to_string()),
                ("x-goog-upload-chunk-granularity", "8388608".to_string()),
            ],
            "",
        )
            .into_response();
    };

    let commands: Vec<&str> = header("x-goog-upload-command")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    if commands != ["upload", "finalize"] {
        return invalid(
            "This server takes the bytes in one X-Goog-Upload-Command: upload, finalize.",
        );
    }
    if header("x-goog-upload-offset") != Some("0") {
        return invalid("X-Goog-Upload-Offset must be 0 for the first bytes.");
    }
    let Some(session) = s.sessions.lock().unwrap().remove(&upload_id) else {
        return google_error(404, "NOT_FOUND", "No such upload session.", vec![]);
    };
    if body.len() as u64 != session.length {
        return invalid(format!(
            "Received {} bytes; X-Goog-Upload-Header-Content-Length said {}.",
            body.len(),
            session.length
        ));
    }
    let (polls, outcome) = *s.file_plan.lock().unwrap();
    let file = StoredFile {
        name: format!("files/t{:04}x", s.next_id.fetch_add(1, Ordering::SeqCst)),
        display_name: session.display_name,
        mime_type: session.mime_type,
        bytes: body.to_vec(),
        polls_left: polls,
        outcome,
    };
    let answer = json!({ "file": s.file_json(&file, "PROCESSING") });
    s.files.lock().unwrap().insert(file.name.clone(), file);
    ([("x-goog-upload-status", "final")], axum::Json(answer)).into_response()
}

async fn get_file(
    State(s): State<Arc<Inner>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.record(method, &uri, &headers, &body);
    if let Some(refused) = s.key_refusal(&headers, query.as_deref()) {
        return refused;
    }
    let mut files = s.files.lock().unwrap();
    let Some(file) = files.get_mut(&format!("files/{id}")) else {
        return google_error(404, "NOT_FOUND", "Requested entity was not found.", vec![]);
    };
    let state = if file.polls_left > 0 {
        file.polls_left -= 1;
        "PROCESSING"
    } else {
        match file.outcome {
            FileOutcome::Active => "ACTIVE",
            FileOutcome::Failed => "FAILED",
        }
    };
    axum::Json(s.file_json(file, state)).into_response()
}

async fn delete_file(
    State(s): State<Arc<Inner>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.record(method, &uri, &headers, &body);
    if let Some(refused) = s.key_refusal(&headers, query.as_deref()) {
        return refused;
    }
    match s.files.lock().unwrap().remove(&format!("files/{id}")) {
        Some(_) => axum::Json(json!({})).into_response(),
        None => google_error(404, "NOT_FOUND", "Requested entity was not found.", vec![]),
    }
}
