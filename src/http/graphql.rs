//! GraphQL over HTTP as the GraphQL-over-HTTP spec has it: `POST` with JSON (single or batched)
//! or the multipart request spec (uploads), `GET` for queries, `application/graphql-response+json`
//! with its status codes, Apollo-style CSRF prevention, persisted documents; and the doors to
//! the streaming transports on the same path (WebSocket upgrade, `Accept: text/event-stream`).

use async_graphql::http::MultipartOptions;
use async_graphql::parser::types::OperationType;
use async_graphql::{BatchRequest, Request};
use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{RawQuery, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use tokio_util::compat::TokioAsyncReadCompatExt;

use super::access::AccessInfo;
use super::ratelimit::{admit, set_fields, Admitted, ClientAddr};
use super::HttpState;
use crate::error::AppError;
use crate::graphql::budget::CostCharge;
use crate::graphql::documents::{DocumentError, Params};
use crate::graphql::live::{is_request_error, operation_type, result_json};
use crate::graphql::loaders::Loaders;
use crate::services::auth::Caller;
use crate::services::limits::Refusal;
use crate::state::AppState;

pub const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";
const JSON: &str = "application/json";

/// A response made of one GraphQL error with a code (requests refused before any GraphQL). It
/// closes the connection: the refusal may come before the request's body was read, and a
/// client that reused the connection would then see it cut under its next request.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body =
        serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    let mut r = (
        status,
        [
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
            (header::CONNECTION, "close"),
        ],
        body.to_string(),
    )
        .into_response();
    r.extensions_mut().insert(AccessInfo {
        error_codes: vec![code.to_string()],
        ..Default::default()
    });
    r
}

/// The bearer token of the `Authorization` header; a header of another form is refused.
pub(super) fn bearer(headers: &HeaderMap) -> Result<Option<String>, Box<Response>> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().unwrap_or("");
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim().to_string()))
        }
        _ => Err(Box::new(error_response(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "the Authorization header must be `Bearer <API key or JWT>`",
        ))),
    }
}

/// The caller of a token (an API key or a JWT).
pub async fn authenticate(app: &AppState, token: &str) -> Result<Caller, AppError> {
    app.auth.authenticate(token).await
}

/// The response that refuses a request whose credentials failed.
pub(super) fn auth_failure(e: AppError) -> Box<Response> {
    Box::new(match e {
        AppError::Internal(e) => {
            let id = uuid::Uuid::new_v4();
            tracing::error!(error_id = %id, error = ?e, "authentication failed");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                &format!("internal error (error id {id})"),
            )
        }
        AppError::Unavailable(message) => {
            tracing::warn!(error = %message, "authentication could not reach the database");
            let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", &message);
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::error::UNAVAILABLE_RETRY_AFTER_SECS),
            );
            r
        }
        e => error_response(StatusCode::UNAUTHORIZED, e.code(), &e.to_string()),
    })
}

/// The media types of the `Accept` header, without parameters, in the order given; `q=0` ones
/// are left out.
fn accepted(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| {
            let mut parts = item.split(';');
            let media = parts.next()?.trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (!media.is_empty() && !refused).then_some(media)
        })
        .collect()
}

/// Whether the client asked for a `text/event-stream` response (graphql-sse).
pub fn wants_event_stream(headers: &HeaderMap) -> bool {
    let types = accepted(headers);
    types.iter().any(|t| t == "text/event-stream")
        && !types.iter().any(|t| t == GRAPHQL_RESPONSE || t == JSON)
}

/// Which of the two GraphQL response media types the client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseType {
    /// `application/graphql-response+json`: request errors are 4xx.
    GraphQLResponse,
    /// `application/json`: every well-formed GraphQL response is 200.
    Json,
}

impl ResponseType {
    pub fn negotiate(headers: &HeaderMap) -> Result<Self, Box<Response>> {
        let types = accepted(headers);
        if types.is_empty() {
            return Ok(Self::Json);
        }
        for t in &types {
            match t.as_str() {
                GRAPHQL_RESPONSE => return Ok(Self::GraphQLResponse),
                JSON | "application/*" | "*/*" => return Ok(Self::Json),
                _ => {}
            }
        }
        Err(Box::new(error_response(
            StatusCode::NOT_ACCEPTABLE,
            "BAD_USER_INPUT",
            "this endpoint answers application/graphql-response+json or application/json (or text/event-stream for subscriptions)",
        )))
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::GraphQLResponse => "application/graphql-response+json; charset=utf-8",
            Self::Json => "application/json; charset=utf-8",
        }
    }
}

/// One entry of a (possibly batched) request, as it will be answered.
enum Answer {
    Executed(async_graphql::Response),
    /// A response without errors, already serialised (kept by, or served from, the response
    /// cache).
    Cached(std::sync::Arc<str>),
    /// Refused before execution (its document could not be chosen): a GraphQL error object.
    Refused(serde_json::Value),
}

impl Answer {
    fn request_error(&self) -> bool {
        match self {
            Self::Executed(r) => is_request_error(r),
            Self::Cached(_) => false,
            Self::Refused(_) => true,
        }
    }

    /// Whether a backend was unavailable for it (an `UNAVAILABLE` error), and whether that left
    /// it with no data at all.
    fn unavailable(&self) -> (bool, bool) {
        match self {
            Self::Executed(r) => {
                let unavailable = r.errors.iter().any(|e| {
                    e.extensions
                        .as_ref()
                        .and_then(|x| x.get("code"))
                        .is_some_and(|c| *c == async_graphql::Value::from("UNAVAILABLE"))
                });
                (
                    unavailable,
                    unavailable && r.data == async_graphql::Value::Null,
                )
            }
            Self::Cached(_) | Self::Refused(_) => (false, false),
        }
    }

    fn to_json(&self) -> String {
        match self {
            Self::Executed(r) => result_json(r),
            Self::Cached(body) => body.to_string(),
            Self::Refused(e) => serde_json::json!({ "errors": [e] }).to_string(),
        }
    }
}

fn respond(kind: ResponseType, answers: Vec<Answer>, batch: bool) -> Response {
    let request_error = answers.iter().all(Answer::request_error);
    // GraphQL-over-HTTP: under the modern media type a response without `data` (the request
    // was refused before execution) is a 400; one with `data`, even null, is a 200.
    let unavailable: Vec<(bool, bool)> = answers.iter().map(Answer::unavailable).collect();
    // A backend outage that left nothing answered is a 503 the client may retry after the
    // `Retry-After` it names; one that cost only some fields keeps its data (and the header).
    let status = if !unavailable.is_empty() && unavailable.iter().all(|(_, nothing)| *nothing) {
        StatusCode::SERVICE_UNAVAILABLE
    } else if kind == ResponseType::GraphQLResponse && request_error {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let body = if batch {
        format!(
            "[{}]",
            answers
                .iter()
                .map(Answer::to_json)
                .collect::<Vec<_>>()
                .join(",")
        )
    } else {
        answers
            .first()
            .map(Answer::to_json)
            .unwrap_or_else(|| "null".into())
    };
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(kind.content_type()),
    );
    if unavailable.iter().any(|(some, _)| *some) {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(crate::error::UNAVAILABLE_RETRY_AFTER_SECS),
        );
    }
    r
}

/// Executes each request with the HTTP request's DataLoaders (shared by a batch, caching), each
/// charged to the caller's cost budget; answers with 429 when the budget refused every one.
async fn execute(
    state: &HttpState,
    kind: ResponseType,
    admitted: &Admitted,
    requests: Vec<Result<Request, DocumentError>>,
    batch: bool,
) -> Response {
    // Made for the first request that executes (an answer from the response cache needs none).
    let loaders = std::sync::OnceLock::new();
    let mut answers = Vec::with_capacity(requests.len());
    let mut refusals = Vec::with_capacity(requests.len());
    let mut access = AccessInfo {
        tenant: admitted.caller.as_ref().map(|c| c.tenant_id),
        ..Default::default()
    };
    for r in requests {
        answers.push(match r {
            Ok(request) => {
                let (answer, refusal) =
                    answer(state, admitted, &loaders, &mut access, request).await;
                refusals.push(refusal);
                answer
            }
            Err(e) => {
                refusals.push(None);
                access.error_codes.push(e.code().to_string());
                Answer::Refused(e.to_json())
            }
        });
    }
    let mut response = respond(kind, answers, batch);
    response.extensions_mut().insert(access);
    admitted.decorate(&mut response);
    let refused: Option<Vec<Refusal>> = refusals.into_iter().collect();
    if let Some(refused) = refused.filter(|r| !r.is_empty()) {
        // Nothing ran: the client should wait as long as the longest refusal says.
        let longest = refused
            .iter()
            .max_by_key(|r| r.retry_after.unwrap_or(std::time::Duration::MAX))
            .unwrap_or(&refused[0]);
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let headers = response.headers_mut();
        if let Some(secs) = longest.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        set_fields(headers, &longest.report);
    }
    response
}

/// Executes one request, or serves its answer from the response cache (charged like an
/// execution); with the refusal when the cost budget refused it.
async fn answer(
    state: &HttpState,
    admitted: &Admitted,
    loaders: &std::sync::OnceLock<std::sync::Arc<Loaders>>,
    access: &mut AccessInfo,
    mut request: Request,
) -> (Answer, Option<Refusal>) {
    use crate::graphql::response_cache::{Found, Hint, Key};
    let app = &state.app;
    let cache = app.responses.as_ref();
    let key = cache.map(|_| Key::new(admitted.caller.as_ref(), &request));
    let charge = CostCharge::new();
    let started = std::time::Instant::now();
    // The snapshot read before executing, when the answer may be kept.
    let mut before = None;
    if let (Some(cache), Some(key)) = (cache, &key) {
        match cache.find(key) {
            Found::Entry(entry) => match cache.now().await {
                Some(now) if cache.current(&entry, &now) => {
                    return served(app, admitted, access, &charge, &entry, started).await;
                }
                now => before = now,
            },
            Found::Seen => {
                if crate::graphql::live::operation_type(&mut request) == Some(OperationType::Query)
                {
                    before = cache.now().await;
                }
            }
            Found::New => {}
        }
    }
    let name = crate::graphql::live::operation_name(&mut request);
    let keep = before.is_some()
        && crate::graphql::live::operation_type(&mut request) == Some(OperationType::Query);
    let hint = Hint::default();
    let loaders = loaders
        .get_or_init(|| Loaders::new(&app.store, app.settings.loader_delay, true))
        .clone();
    request = request.data(loaders).data(charge.clone());
    if keep {
        request = request.data(hint.clone());
    }
    if let Some(c) = &admitted.caller {
        request = request.data(c.clone());
    }
    let mut response = crate::graphql::execute_bounded(&state.schema, app, request).await;
    let took = started.elapsed();
    let mut codes = Vec::new();
    for e in &mut response.errors {
        let extensions = e.extensions.get_or_insert_with(Default::default);
        if let Some(async_graphql::Value::String(code)) = extensions.get("code") {
            codes.push(code.clone());
        }
        if let Some(id) = &admitted.request_id {
            extensions.set("requestId", id.as_str());
        }
    }
    app.metrics.operation(name.as_deref(), took, &codes);
    access.error_codes.extend(codes);
    let answer = match (cache, key, before) {
        (Some(cache), Some(key), Some(before))
            if keep
                && hint.cacheable()
                && response.errors.is_empty()
                && response.extensions.is_empty()
                && response.http_headers.is_empty() =>
        {
            let body: std::sync::Arc<str> = result_json(&response).into();
            cache
                .store(key, before, body.clone(), charge.complexity(), name.clone())
                .await;
            Answer::Cached(body)
        }
        _ => Answer::Executed(response),
    };
    access.operations.extend(name);
    (answer, charge.refusal())
}

/// A kept answer, charged its cost to the caller like its execution was.
async fn served(
    app: &AppState,
    admitted: &Admitted,
    access: &mut AccessInfo,
    charge: &CostCharge,
    entry: &crate::graphql::response_cache::Entry,
    started: std::time::Instant,
) -> (Answer, Option<Refusal>) {
    let mut codes = Vec::new();
    let answer = match &admitted.caller {
        Some(caller) => match app.limits.cost(caller, entry.complexity).await {
            Ok(report) => {
                charge.record(Ok(report));
                Answer::Cached(entry.body.clone())
            }
            Err(refusal) => {
                let mut e = crate::graphql::budget::refusal_error(&refusal);
                charge.record(Err(refusal));
                codes.push("RATE_LIMITED".to_string());
                if let Some(id) = &admitted.request_id {
                    e.extensions
                        .get_or_insert_with(Default::default)
                        .set("requestId", id.as_str());
                }
                Answer::Executed(async_graphql::Response::from_errors(vec![e]))
            }
        },
        None => Answer::Cached(entry.body.clone()),
    };
    app.metrics
        .operation(entry.operation.as_deref(), started.elapsed(), &codes);
    access.operations.extend(entry.operation.clone());
    access.error_codes.extend(codes);
    (answer, charge.refusal())
}

/// Apollo's CSRF prevention: a request a browser would send cross-site without a preflight
/// (no content type, or `text/plain`, `application/x-www-form-urlencoded`,
/// `multipart/form-data`) runs only with a header that forces one.
fn csrf_blocked(headers: &HeaderMap) -> bool {
    let preflighted = ["x-apollo-operation-name", "apollo-require-preflight"]
        .iter()
        .any(|h| {
            headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| !v.trim().is_empty())
        });
    if preflighted {
        return false;
    }
    let simple = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(ct) => {
            let media = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(
                media.as_str(),
                "" | "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
            )
        }
    };
    simple
}

const CSRF_MESSAGE: &str = "This operation has been blocked as a potential Cross-Site Request Forgery (CSRF). Send a `Content-Type` other than text/plain, application/x-www-form-urlencoded or multipart/form-data, or a non-empty `x-apollo-operation-name` or `apollo-require-preflight` header (required with multipart uploads).";

/// The request's media type, lower case without parameters, if it names one.
fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|m| !m.is_empty())
}

/// Whether a `charset` parameter, when present, is UTF-8 (the only encoding accepted).
fn utf8_charset(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    ct.split(';').skip(1).all(|p| {
        let mut kv = p.splitn(2, '=');
        let k = kv.next().unwrap_or("").trim();
        let v = kv.next().unwrap_or("").trim().trim_matches('"');
        !k.eq_ignore_ascii_case("charset")
            || v.eq_ignore_ascii_case("utf-8")
            || v.eq_ignore_ascii_case("utf8")
    })
}

/// Reads a whole body up to `limit` bytes; a larger `Content-Length` is refused before reading.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, Box<Response>> {
    let too_large = || {
        Box::new(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BAD_USER_INPUT",
            &format!("the request body is larger than {limit} bytes"),
        ))
    };
    if http_body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())
}

/// The parameters of a JSON body: one request object, or an array of at most `max_batch` of
/// them (a batch).
pub fn json_params(bytes: &[u8], max_batch: usize) -> Result<(Vec<Params>, bool), Box<Response>> {
    let bad = |msg: String| {
        Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            &msg,
        ))
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("a request body is required".into()));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
    match value {
        serde_json::Value::Array(items) => {
            if items.is_empty() {
                return Err(bad("an empty batch".into()));
            }
            if items.len() > max_batch {
                return Err(bad(batch_too_large(items.len(), max_batch)));
            }
            let params = items
                .into_iter()
                .map(Params::from_json)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("invalid GraphQL request: {e}")))?;
            Ok((params, true))
        }
        other => Params::from_json(other)
            .map(|p| (vec![p], false))
            .map_err(|e| bad(format!("invalid GraphQL request: {e}"))),
    }
}

fn batch_too_large(n: usize, max: usize) -> String {
    format!("a batch of {n} operations; at most {max} are allowed (VOICEGRAPH_MAX_BATCH_SIZE)")
}

/// `POST /graphql`: JSON bodies or GraphQL multipart requests (file uploads); with
/// `Accept: text/event-stream`, a graphql-sse stream.
pub async fn post(
    State(state): State<HttpState>,
    addr: ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if csrf_blocked(&headers) {
        return error_response(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", CSRF_MESSAGE);
    }
    if wants_event_stream(&headers) {
        return super::sse::post(state, addr, headers, body).await;
    }
    let kind = match ResponseType::negotiate(&headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if !utf8_charset(&headers) {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BAD_USER_INPUT",
            "request bodies must be UTF-8",
        );
    }
    let admitted = match admit(&state.app, &headers, addr).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let caller = admitted.caller.as_ref();
    match media_type(&headers).as_deref() {
        Some(JSON) => {
            let bytes = match read_body(body, state.app.settings.max_request_bytes).await {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let (params, batch) = match json_params(&bytes, state.app.settings.max_batch_size) {
                Ok(p) => p,
                Err(r) => return *r,
            };
            let mut requests = Vec::with_capacity(params.len());
            for p in params {
                match state.documents.resolve(p, caller).await {
                    // A request without a document is malformed, whatever the media type.
                    Err(DocumentError::Invalid(msg)) if !batch => {
                        return error_response(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", &msg)
                    }
                    r => requests.push(r),
                }
            }
            execute(&state, kind, &admitted, requests, batch).await
        }
        Some("multipart/form-data") => multipart(state, kind, &admitted, headers, body).await,
        Some(other) => error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BAD_USER_INPUT",
            &format!(
                "unsupported Content-Type {other:?}: send application/json (or multipart/form-data for uploads)"
            ),
        ),
        None => error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BAD_USER_INPUT",
            "a Content-Type is required: send application/json (or multipart/form-data for uploads)",
        ),
    }
}

/// The GraphQL multipart request spec (`operations`, `map`, files).
async fn multipart(
    state: HttpState,
    kind: ResponseType,
    admitted: &Admitted,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let settings = &state.app.settings;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let limit = settings.max_recording_bytes as usize + settings.max_request_bytes;
    let limited = http_body_util::Limited::new(body, limit);
    let stream = Body::new(limited)
        .into_data_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    let reader = tokio_util::io::StreamReader::new(stream).compat();
    // multer applies this to the whole body (operations, map, boundaries); the exact recording
    // limit is enforced when the upload is read.
    let options = MultipartOptions::default()
        .max_file_size(limit)
        .max_num_files(1);
    let batch = match async_graphql::http::receive_batch_body(content_type, reader, options).await {
        Ok(b) => b,
        Err(e) => {
            let msg = e.to_string();
            if msg.contains("length limit exceeded")
                || msg.contains("too large")
                || msg.contains("size limit")
            {
                let why = format!(
                    "the recording is larger than {} bytes",
                    settings.max_recording_bytes
                );
                return error_response(StatusCode::PAYLOAD_TOO_LARGE, "BAD_USER_INPUT", &why);
            }
            return error_response(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &format!("invalid GraphQL multipart request: {msg}"),
            );
        }
    };
    let (requests, is_batch) = match batch {
        BatchRequest::Single(r) => (vec![r], false),
        BatchRequest::Batch(rs) if rs.len() > settings.max_batch_size => {
            let why = batch_too_large(rs.len(), settings.max_batch_size);
            return error_response(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", &why);
        }
        BatchRequest::Batch(rs) => (rs, true),
    };
    let requests = requests
        .into_iter()
        .map(|r| {
            state
                .documents
                .check(&r, admitted.caller.as_ref())
                .map(|()| r)
        })
        .collect();
    execute(&state, kind, admitted, requests, is_batch).await
}

/// `GET /graphql`: a query in the query string, a WebSocket upgrade for subscriptions, or a
/// graphql-sse stream.
pub async fn get_or_ws(
    State(state): State<HttpState>,
    addr: ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Ok(ws) = ws {
        return super::ws::upgrade(state, addr, headers, ws).await;
    }
    let query = query.unwrap_or_default();
    if query.len() > state.app.settings.max_request_bytes {
        return error_response(
            StatusCode::URI_TOO_LONG,
            "BAD_USER_INPUT",
            "the query string is too long",
        );
    }
    if wants_event_stream(&headers) {
        return super::sse::get(state, addr, headers, &query).await;
    }
    let kind = match ResponseType::negotiate(&headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let admitted = match admit(&state.app, &headers, addr).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let params = match Params::from_query_string(&query) {
        Ok(p) => p,
        Err(msg) => return error_response(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", &msg),
    };
    let mut request = match state
        .documents
        .resolve(params, admitted.caller.as_ref())
        .await
    {
        Ok(r) => r,
        Err(DocumentError::Invalid(msg)) => {
            return error_response(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", &msg)
        }
        Err(e) => {
            let mut r = respond(kind, vec![Answer::Refused(e.to_json())], false);
            admitted.decorate(&mut r);
            return r;
        }
    };
    // Only queries travel over GET (GraphQL-over-HTTP): they must have no side effects.
    if let Some(ty) = operation_type(&mut request) {
        if ty != OperationType::Query {
            let mut r = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "BAD_USER_INPUT",
                "only queries may be sent with GET; use POST for mutations, and WebSocket or SSE for subscriptions",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
    }
    execute(&state, kind, &admitted, vec![Ok(request)], false).await
}
