//! Gemini over REST: structured `generateContent` calls and the Files API, behind one retry
//! policy (exponential backoff with full jitter, never sooner than the server asks) and a
//! per-process limit on concurrent model requests. The API key travels only in the
//! `x-goog-api-key` header: never in a URL, a log line, an error or `Debug` output.

pub mod insights;
pub mod wire;

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use wire::{
    Blob, Content, CreateFileRequest, ErrorEnvelope, FileData, FileEnvelope,
    GenerateContentRequest, GenerateContentResponse, GenerationConfig, NewFile, PartOut,
};

/// Google's endpoint for the Gemini API.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// The most of any response body this client reads; a longer one is refused unread.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// The most of the API's own error message an error carries (quota messages run long).
const MAX_API_MESSAGE_CHARS: usize = 1_000;

const API_KEY_HEADER: &str = "x-goog-api-key";

/// How to reach Gemini and how hard to try.
#[derive(Clone)]
pub struct GeminiConfig {
    /// Scheme and host, e.g. `https://generativelanguage.googleapis.com` (a trailing slash is
    /// ignored); the client appends `/v1beta/…` and `/upload/v1beta/…`.
    pub base_url: String,
    /// Sent as `x-goog-api-key`, nowhere else.
    pub api_key: SecretString,
    /// The model id, e.g. `gemini-2.5-flash` (a `models/` prefix is accepted).
    pub model: String,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one whole exchange, sending the request to reading the last byte.
    pub request_timeout: Duration,
    /// Model requests in flight at once from this process; the rest wait for a turn.
    pub max_concurrent: usize,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// The first retry waits up to this long; each further one up to twice as long as the last.
    pub backoff_base: Duration,
    /// The most any backoff waits; a server asking for a longer wait ends the retries at once
    /// (a `Transient` error carrying its `retry_after`), so a caller can reschedule the work.
    pub backoff_max: Duration,
    /// How often an uploaded file's state is polled until it is `ACTIVE`.
    pub file_poll_interval: Duration,
    /// How long an uploaded file may stay `PROCESSING` before the upload counts as failed.
    pub file_active_timeout: Duration,
}

impl GeminiConfig {
    /// The documented defaults for everything but where to go, with which key and model.
    pub fn new(
        base_url: impl Into<String>,
        api_key: SecretString,
        model: impl Into<String>,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            api_key,
            model: model.into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
            max_concurrent: 4,
            max_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            file_poll_interval: Duration::from_secs(1),
            file_active_timeout: Duration::from_secs(600),
        }
    }
}

impl fmt::Debug for GeminiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeminiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"[redacted]")
            .field("model", &self.model)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_concurrent", &self.max_concurrent)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("file_poll_interval", &self.file_poll_interval)
            .field("file_active_timeout", &self.file_active_timeout)
            .finish()
    }
}

/// One piece of the prompt.
#[derive(Clone)]
pub enum Part {
    Text(String),
    /// Media sent in the request itself, base64-encoded (requests are limited to about 20 MB).
    InlineData {
        mime_type: String,
        data: Bytes,
    },
    /// Media uploaded with [`GeminiClient::upload_file`], by its `uri`.
    FileData {
        mime_type: String,
        file_uri: String,
    },
}

impl fmt::Debug for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Text(text) => f.debug_tuple("Text").field(&text.len()).finish(),
            Part::InlineData { mime_type, data } => f
                .debug_struct("InlineData")
                .field("mime_type", mime_type)
                .field("bytes", &data.len())
                .finish(),
            Part::FileData {
                mime_type,
                file_uri,
            } => f
                .debug_struct("FileData")
                .field("mime_type", mime_type)
                .field("file_uri", file_uri)
                .finish(),
        }
    }
}

/// A request for structured output: the parts form one user turn, and the answer must be JSON
/// following `response_schema` (Gemini's OpenAPI-subset schema; `Value::Null` for any JSON).
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub system_instruction: Option<String>,
    pub parts: Vec<Part>,
    pub response_schema: Value,
    pub temperature: Option<f32>,
    pub max_output_tokens: Option<u32>,
}

/// Tokens as `usageMetadata` counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// `promptTokenCount`.
    pub prompt_tokens: i64,
    /// `candidatesTokenCount`: the answer, thoughts excluded.
    pub output_tokens: i64,
    /// `totalTokenCount`.
    pub total_tokens: i64,
    /// `thoughtsTokenCount` (thinking models; billed as output), 0 when absent.
    pub thoughts_tokens: i64,
}

/// A structured answer.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The answer's text parts, concatenated and parsed.
    pub json: Value,
    pub usage: Usage,
    pub model_version: Option<String>,
    /// The whole response body.
    pub raw: Value,
    /// Attempts made, the successful one included.
    pub attempts: u32,
}

/// Why a call failed, sorted by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeminiError {
    /// Worth trying again later: rate limits and server errors (429, 500, 502, 503, 504) after
    /// the attempts ran out, timeouts, connection errors. `retry_after` is the wait the server
    /// last asked for, if it asked.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Trying again will not help: the request was refused (other 4xx), the model would not or
    /// could not answer (`finishReason` other than `STOP`, a blocked prompt, no candidates), or
    /// its answer is not JSON.
    #[error("{message}")]
    Permanent { message: String },
}

impl GeminiError {
    pub fn is_transient(&self) -> bool {
        matches!(self, GeminiError::Transient { .. })
    }

    fn permanent(message: impl Into<String>) -> Self {
        GeminiError::Permanent {
            message: message.into(),
        }
    }
}

/// An uploaded file, ready (`ACTIVE`) to be referred to in a [`Part::FileData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// `files/{id}`, for [`GeminiClient::delete_file`].
    pub name: String,
    pub uri: String,
    pub mime_type: String,
}

/// A Gemini client. Clones share the connection pool and the concurrency limit.
#[derive(Clone)]
pub struct GeminiClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    model: String,
    key: HeaderValue,
    permits: Semaphore,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    request_timeout: Duration,
    poll_interval: Duration,
    active_timeout: Duration,
}

impl fmt::Debug for GeminiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeminiClient")
            .field("base_url", &self.inner.base)
            .field("model", &self.inner.model)
            .field("max_attempts", &self.inner.max_attempts)
            .finish_non_exhaustive()
    }
}

/// How one attempt failed.
enum Failure {
    Retry {
        message: String,
        after: Option<Duration>,
    },
    Stop(String),
}

/// A response read whole (within [`MAX_RESPONSE_BYTES`]).
struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl GeminiClient {
    pub fn new(config: GeminiConfig) -> anyhow::Result<Self> {
        let base = config.base_url.trim_end_matches('/').to_string();
        let url = Url::parse(&base).with_context(|| format!("Gemini base URL {base:?}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            bail!("Gemini base URL {base:?} must be http(s) with no query");
        }
        let model = config
            .model
            .strip_prefix("models/")
            .unwrap_or(&config.model)
            .to_string();
        if model.is_empty()
            || !model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            bail!("Gemini model {model:?} is not a model id such as gemini-2.5-flash");
        }
        let secret = config.api_key.expose_secret();
        if secret.is_empty() {
            bail!("the Gemini API key is empty");
        }
        let mut key = HeaderValue::from_str(secret).map_err(|_| {
            anyhow::anyhow!("the Gemini API key has characters a header cannot carry")
        })?;
        key.set_sensitive(true);
        if config.max_concurrent == 0 || config.max_attempts == 0 {
            bail!("Gemini max_concurrent and max_attempts must be at least 1");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // The key header would follow a redirect anywhere; the API never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("voicegraph/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the Gemini HTTP client")?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                model,
                key,
                permits: Semaphore::new(config.max_concurrent),
                max_attempts: config.max_attempts,
                backoff_base: config.backoff_base,
                backoff_max: config.backoff_max,
                request_timeout: config.request_timeout,
                poll_interval: config.file_poll_interval,
                active_timeout: config.file_active_timeout,
            }),
        })
    }

    /// `POST {base}/v1beta/models/{model}:generateContent`, asking for `application/json` that
    /// follows the request's schema, retried as the module header says; the answer's text
    /// parts are concatenated and parsed as JSON.
    pub async fn generate(&self, req: &GenerateRequest) -> Result<Generated, GeminiError> {
        if req.parts.is_empty() {
            return Err(GeminiError::permanent(
                "a Gemini request needs at least one part",
            ));
        }
        let body = Bytes::from(
            serde_json::to_vec(&request_body(req))
                .map_err(|e| GeminiError::permanent(format!("encoding the request: {e}")))?,
        );
        let inner = &self.inner;
        let url = format!(
            "{}/v1beta/models/{}:generateContent",
            inner.base, inner.model
        );
        let (url, body) = (&url, &body);
        let ((response, raw), attempts) = self
            .with_retry("generateContent", true, move || async move {
                let ex = self
                    .exchange(
                        inner
                            .http
                            .post(url)
                            .header(API_KEY_HEADER, inner.key.clone())
                            .header(CONTENT_TYPE, "application/json")
                            .body(body.clone()),
                    )
                    .await?;
                if !ex.status.is_success() {
                    return Err(refusal(&ex));
                }
                // A success that is not a response is the server's fault, not the request's.
                let unreadable = |e: serde_json::Error| Failure::Retry {
                    message: format!(
                        "Gemini answered {} with a body that is not a GenerateContentResponse: {e}",
                        ex.status
                    ),
                    after: None,
                };
                let raw: Value = serde_json::from_slice(&ex.body).map_err(unreadable)?;
                let response: GenerateContentResponse =
                    serde_json::from_slice(&ex.body).map_err(unreadable)?;
                Ok((response, raw))
            })
            .await?;
        structured(response, raw, attempts)
    }

    /// Uploads the file at `path` with the Files API's resumable protocol (the bytes streamed
    /// from disk), then polls `files.get` until the file is `ACTIVE`. A `FAILED` file, or one
    /// still processing after `file_active_timeout`, is deleted again and reported.
    pub async fn upload_file(
        &self,
        path: &Path,
        mime_type: &str,
        display_name: &str,
    ) -> Result<FileRef, GeminiError> {
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| GeminiError::permanent(format!("cannot read {}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(GeminiError::permanent(format!(
                "{} is not a file",
                path.display()
            )));
        }
        let size = meta.len();
        let (file, _) = self
            .with_retry("files upload", false, || {
                self.upload_once(path, size, mime_type, display_name)
            })
            .await?;
        let deadline = Instant::now() + self.inner.active_timeout;
        let mut file = file;
        loop {
            let name = file.name.clone();
            if !valid_file_name(&name) {
                return Err(GeminiError::permanent(format!(
                    "Gemini named the uploaded file {name:?}, not files/{{id}}"
                )));
            }
            match file.state.as_deref() {
                Some("ACTIVE") => {
                    let Some(uri) = file.uri.filter(|u| !u.is_empty()) else {
                        return Err(GeminiError::permanent(format!(
                            "Gemini's file {name} is ACTIVE but has no uri"
                        )));
                    };
                    return Ok(FileRef {
                        name,
                        uri,
                        mime_type: file
                            .mime_type
                            .filter(|m| !m.is_empty())
                            .unwrap_or_else(|| mime_type.to_string()),
                    });
                }
                Some("FAILED") => {
                    self.delete_quietly(&name).await;
                    let why = file.error.map(|e| e.message).unwrap_or_default();
                    return Err(GeminiError::permanent(format!(
                        "Gemini could not process the file {name} (state FAILED): {why}"
                    )));
                }
                _ => {}
            }
            if Instant::now() + self.inner.poll_interval > deadline {
                self.delete_quietly(&name).await;
                return Err(GeminiError::Transient {
                    message: format!(
                        "Gemini's file {name} was still {} after {:?}",
                        file.state.as_deref().unwrap_or("STATE_UNSPECIFIED"),
                        self.inner.active_timeout
                    ),
                    retry_after: None,
                });
            }
            tokio::time::sleep(self.inner.poll_interval).await;
            file = self
                .with_retry("files.get", false, || self.get_file_once(&name))
                .await?
                .0;
        }
    }

    /// `DELETE {base}/v1beta/{name}`. A file already gone (404) counts as deleted.
    pub async fn delete_file(&self, name: &str) -> Result<(), GeminiError> {
        if !valid_file_name(name) {
            return Err(GeminiError::permanent(format!(
                "{name:?} is not a Gemini file name (files/{{id}})"
            )));
        }
        let inner = &self.inner;
        let url = format!("{}/v1beta/{name}", inner.base);
        let url = &url;
        self.with_retry("files.delete", false, move || async move {
            let ex = self
                .exchange(
                    inner
                        .http
                        .delete(url)
                        .header(API_KEY_HEADER, inner.key.clone()),
                )
                .await?;
            if ex.status.is_success() || ex.status == StatusCode::NOT_FOUND {
                Ok(())
            } else {
                Err(refusal(&ex))
            }
        })
        .await
        .map(|_| ())
    }

    async fn delete_quietly(&self, name: &str) {
        if let Err(e) = self.delete_file(name).await {
            tracing::warn!(file = name, error = %e, "could not delete a Gemini file; it expires by itself");
        }
    }

    /// One resumable upload: start a session, then send every byte and finalize.
    async fn upload_once(
        &self,
        path: &Path,
        size: u64,
        mime_type: &str,
        display_name: &str,
    ) -> Result<wire::File, Failure> {
        let inner = &self.inner;
        let start = inner
            .http
            .post(format!("{}/upload/v1beta/files", inner.base))
            .header(API_KEY_HEADER, inner.key.clone())
            .header("X-Goog-Upload-Protocol", "resumable")
            .header("X-Goog-Upload-Command", "start")
            .header("X-Goog-Upload-Header-Content-Length", size)
            .header("X-Goog-Upload-Header-Content-Type", mime_type)
            .json(&CreateFileRequest {
                file: NewFile { display_name },
            });
        let ex = self.exchange(start).await?;
        if !ex.status.is_success() {
            return Err(refusal(&ex));
        }
        let upload_url = ex
            .headers
            .get("x-goog-upload-url")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Failure::Retry {
                message: "Gemini started an upload but sent no x-goog-upload-url".into(),
                after: None,
            })?;
        let upload_url = Url::parse(upload_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                Failure::Stop("Gemini's x-goog-upload-url is not an http(s) URL".into())
            })?;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Failure::Stop(format!("cannot read {}: {e}", path.display())))?;
        // As documented, the upload URL alone authorizes the bytes: the key is not sent there.
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file.take(size)));
        let upload = inner
            .http
            .post(upload_url)
            .header(CONTENT_LENGTH, size)
            .header("X-Goog-Upload-Offset", "0")
            .header("X-Goog-Upload-Command", "upload, finalize")
            .body(body);
        let ex = self.exchange(upload).await?;
        if !ex.status.is_success() {
            return Err(refusal(&ex));
        }
        serde_json::from_slice::<FileEnvelope>(&ex.body)
            .map(|e| e.file)
            .map_err(|e| Failure::Retry {
                message: format!("Gemini's answer to the upload is not a File: {e}"),
                after: None,
            })
    }

    async fn get_file_once(&self, name: &str) -> Result<wire::File, Failure> {
        let inner = &self.inner;
        let ex = self
            .exchange(
                inner
                    .http
                    .get(format!("{}/v1beta/{name}", inner.base))
                    .header(API_KEY_HEADER, inner.key.clone()),
            )
            .await?;
        if !ex.status.is_success() {
            return Err(refusal(&ex));
        }
        serde_json::from_slice(&ex.body).map_err(|e| Failure::Retry {
            message: format!("Gemini's answer to files.get is not a File: {e}"),
            after: None,
        })
    }

    /// Sends one request and reads the whole response, bounded.
    async fn exchange(&self, request: reqwest::RequestBuilder) -> Result<Exchange, Failure> {
        let timeout = self.inner.request_timeout;
        let mut resp = request.send().await.map_err(|e| transport(e, timeout))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large(status));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport(e, timeout))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large(status));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Exchange {
            status,
            headers,
            body: body.into(),
        })
    }

    /// Runs `attempt` until it succeeds, fails for good, or `max_attempts` are spent, sleeping
    /// between attempts. With `limited`, each attempt holds one of the `max_concurrent` permits,
    /// and only while it runs: never while sleeping.
    async fn with_retry<T, F, Fut>(
        &self,
        operation: &str,
        limited: bool,
        mut attempt: F,
    ) -> Result<(T, u32), GeminiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let inner = &self.inner;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = {
                let _permit = if limited {
                    Some(
                        inner
                            .permits
                            .acquire()
                            .await
                            .expect("the Gemini semaphore is never closed"),
                    )
                } else {
                    None
                };
                attempt().await
            };
            let (message, after) = match outcome {
                Ok(value) => return Ok((value, attempts)),
                Err(Failure::Stop(message)) => return Err(GeminiError::Permanent { message }),
                Err(Failure::Retry { message, after }) => (message, after),
            };
            if attempts >= inner.max_attempts {
                return Err(GeminiError::Transient {
                    message: format!("{message} (gave up after {attempts} attempts)"),
                    retry_after: after,
                });
            }
            if let Some(asked) = after.filter(|a| *a > inner.backoff_max) {
                return Err(GeminiError::Transient {
                    message: format!(
                        "{message} (the server asks to wait {asked:?}, longer than backoff_max)"
                    ),
                    retry_after: Some(asked),
                });
            }
            let delay = backoff(inner.backoff_base, inner.backoff_max, attempts)
                .max(after.unwrap_or_default());
            tracing::warn!(
                operation,
                attempt = attempts,
                delay_ms = delay.as_millis() as u64,
                error = %message,
                "Gemini request failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// The wire body for `req`: one user turn, JSON output.
fn request_body(req: &GenerateRequest) -> GenerateContentRequest<'_> {
    let parts = req
        .parts
        .iter()
        .map(|part| match part {
            Part::Text(text) => PartOut::Text(text),
            Part::InlineData { mime_type, data } => PartOut::InlineData(Blob { mime_type, data }),
            Part::FileData {
                mime_type,
                file_uri,
            } => PartOut::FileData(FileData {
                mime_type,
                file_uri,
            }),
        })
        .collect();
    GenerateContentRequest {
        contents: vec![Content {
            role: Some("user"),
            parts,
        }],
        system_instruction: req.system_instruction.as_deref().map(|text| Content {
            role: None,
            parts: vec![PartOut::Text(text)],
        }),
        generation_config: GenerationConfig {
            response_mime_type: "application/json",
            response_schema: Some(&req.response_schema).filter(|s| !s.is_null()),
            temperature: req.temperature,
            max_output_tokens: req.max_output_tokens,
        },
    }
}

/// The structured answer in a successful response, or why there is none.
fn structured(
    response: GenerateContentResponse,
    raw: Value,
    attempts: u32,
) -> Result<Generated, GeminiError> {
    if let Some(reason) = response
        .prompt_feedback
        .as_ref()
        .and_then(|f| f.block_reason.as_deref())
    {
        return Err(GeminiError::permanent(format!(
            "Gemini blocked the prompt (promptFeedback.blockReason {reason})"
        )));
    }
    let Some(candidate) = response.candidates.first() else {
        return Err(GeminiError::permanent("Gemini returned no candidates"));
    };
    match candidate.finish_reason.as_deref() {
        None | Some("STOP") => {}
        Some("MAX_TOKENS") => {
            return Err(GeminiError::permanent(
                "Gemini's answer was cut off at the output token limit (finishReason MAX_TOKENS)",
            ))
        }
        Some(reason) => {
            let detail = candidate
                .finish_message
                .as_deref()
                .map(|m| format!(": {}", truncate(m)))
                .unwrap_or_default();
            return Err(GeminiError::permanent(format!(
                "Gemini stopped without an answer (finishReason {reason}){detail}"
            )));
        }
    }
    let text: String = candidate
        .content
        .iter()
        .flat_map(|c| &c.parts)
        .filter(|p| p.thought != Some(true))
        .filter_map(|p| p.text.as_deref())
        .collect();
    if text.trim().is_empty() {
        return Err(GeminiError::permanent("Gemini's answer has no text"));
    }
    // The error gives a position, never the text (it may quote a call's transcript).
    let json = serde_json::from_str(&text).map_err(|e| {
        GeminiError::permanent(format!(
            "Gemini's answer is not valid JSON ({e}; {} bytes)",
            text.len()
        ))
    })?;
    let usage = response.usage_metadata.unwrap_or_default();
    Ok(Generated {
        json,
        usage: Usage {
            prompt_tokens: usage.prompt_token_count,
            output_tokens: usage.candidates_token_count,
            total_tokens: usage.total_token_count,
            thoughts_tokens: usage.thoughts_token_count,
        },
        model_version: response.model_version,
        raw,
        attempts,
    })
}

/// Whether a status is worth another attempt: rate limits and the server's own troubles.
fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// A non-success answer as a failure, with the API's own status name and message.
fn refusal(ex: &Exchange) -> Failure {
    let error = serde_json::from_slice::<ErrorEnvelope>(&ex.body)
        .map(|e| e.error)
        .unwrap_or_default();
    let code = ex.status.as_u16();
    let status = match error.status.as_str() {
        "" => ex.status.canonical_reason().unwrap_or("error").to_string(),
        name => name.to_string(),
    };
    let message = match error.message.trim() {
        "" => "no error message".to_string(),
        m => truncate(m),
    };
    if retryable(ex.status) {
        let info = error.retry_delay().and_then(proto_duration);
        let header = retry_after_header(&ex.headers);
        Failure::Retry {
            message: format!("Gemini is unavailable ({code} {status}): {message}"),
            after: info.max(header),
        }
    } else {
        Failure::Stop(format!(
            "Gemini refused the request ({code} {status}): {message}"
        ))
    }
}

fn too_large(status: StatusCode) -> Failure {
    Failure::Stop(format!(
        "Gemini's answer ({status}) is larger than {MAX_RESPONSE_BYTES} bytes"
    ))
}

/// A transport error as a failure. URLs are left out: an upload URL is a credential.
fn transport(e: reqwest::Error, timeout: Duration) -> Failure {
    let e = e.without_url();
    if e.is_builder() {
        return Failure::Stop(format!("building the Gemini request: {}", chain(&e)));
    }
    let what = if e.is_timeout() {
        format!("Gemini did not answer within {timeout:?}")
    } else if e.is_connect() {
        "cannot connect to Gemini".to_string()
    } else {
        "the exchange with Gemini failed".to_string()
    };
    Failure::Retry {
        message: format!("{what}: {}", chain(&e)),
        after: None,
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn truncate(message: &str) -> String {
    match message.char_indices().nth(MAX_API_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &message[..end]),
        None => message.to_string(),
    }
}

/// Full jitter: uniformly up to `min(max, base · 2^(failed − 1))`.
fn backoff(base: Duration, max: Duration, failed: u32) -> Duration {
    use rand::Rng;
    let factor = 1u32
        .checked_shl(failed.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let cap = base.saturating_mul(factor).min(max);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

/// A protobuf JSON Duration: decimal seconds with an `s` suffix (`"17s"`, `"0.2s"`).
fn proto_duration(text: &str) -> Option<Duration> {
    let seconds = text.trim().strip_suffix('s')?;
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty())
        || !digits(whole)
        || !digits(fraction)
        || fraction.len() > 9
    {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().ok()?
    };
    Some(Duration::new(whole, nanos))
}

/// `Retry-After`: delay-seconds or an HTTP-date.
fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (when.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// `files/{id}`, the id as the Files API makes them (kept loose: letters, digits, `-`, `_`).
fn valid_file_name(name: &str) -> bool {
    name.strip_prefix("files/").is_some_and(|id| {
        !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AIzaSy-very-secret-test-key";

    fn config() -> GeminiConfig {
        GeminiConfig::new(
            DEFAULT_BASE_URL,
            SecretString::from(KEY),
            "gemini-2.5-flash",
        )
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let config = config();
        let client = GeminiClient::new(config.clone()).unwrap();
        for text in [
            format!("{config:?}"),
            format!("{config:#?}"),
            format!("{client:?}"),
            format!("{client:#?}"),
        ] {
            assert!(!text.contains(KEY), "{text}");
            assert!(!text.contains("very-secret"), "{text}");
        }
        assert!(format!("{config:?}").contains("[redacted]"));
    }

    #[test]
    fn construction_errors_do_not_quote_the_key() {
        let mut bad = config();
        bad.api_key = SecretString::from("secret\nwith-newline");
        let e = format!("{:#}", GeminiClient::new(bad).unwrap_err());
        assert!(!e.contains("secret"), "{e}");

        let mut bad = config();
        bad.model = "../../files".into();
        assert!(GeminiClient::new(bad).is_err());
        let mut bad = config();
        bad.max_concurrent = 0;
        assert!(GeminiClient::new(bad).is_err());
        let mut ok = config();
        ok.model = "models/gemini-2.5-pro".into();
        ok.base_url = "http://127.0.0.1:1/".into();
        let client = GeminiClient::new(ok).unwrap();
        assert_eq!(client.inner.model, "gemini-2.5-pro");
        assert_eq!(client.inner.base, "http://127.0.0.1:1");
    }

    #[test]
    fn protobuf_durations_parse() {
        assert_eq!(proto_duration("17s"), Some(Duration::from_secs(17)));
        assert_eq!(proto_duration("0.2s"), Some(Duration::from_millis(200)));
        assert_eq!(proto_duration("1.000000001s"), Some(Duration::new(1, 1)));
        assert_eq!(proto_duration(".5s"), Some(Duration::from_millis(500)));
        for bad in [
            "",
            "s",
            "17",
            "-1s",
            "1.2.3s",
            "1.0000000001s",
            "abc s",
            "1e3s",
        ] {
            assert_eq!(proto_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after_header(&headers), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        headers.insert(RETRY_AFTER, later.replace("+0000", "GMT").parse().unwrap());
        let got = retry_after_header(&headers).unwrap();
        assert!(
            got > Duration::from_secs(100) && got <= Duration::from_secs(120),
            "{got:?}"
        );
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after_header(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after_header(&headers), None);
    }

    #[test]
    fn backoff_is_capped_and_grows() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for failed in 1..40 {
            let cap = base.saturating_mul(1 << (failed - 1).min(20)).min(max);
            for _ in 0..20 {
                assert!(backoff(base, max, failed) <= cap);
            }
        }
        assert_eq!(backoff(Duration::ZERO, max, 3), Duration::ZERO);
    }

    #[test]
    fn file_names_are_checked() {
        assert!(valid_file_name("files/abc-123"));
        for bad in [
            "files/",
            "abc",
            "files/../models",
            "files/a/b",
            "files/a?x=1",
        ] {
            assert!(!valid_file_name(bad), "{bad}");
        }
    }
}
