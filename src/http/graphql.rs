//! GraphQL over HTTP (the GraphQL-over-HTTP spec: status codes, `application/graphql-response+json`)
//! and over WebSocket (`graphql-transport-ws` and legacy `graphql-ws`, auth in `connection_init`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_graphql::http::{MultipartOptions, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql::parser::types::OperationType;
use async_graphql::{BatchRequest, BatchResponse, Data};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::body::Body;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{RawQuery, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use tokio_util::compat::TokioAsyncReadCompatExt;

use super::HttpState;
use crate::error::AppError;
use crate::graphql::loaders::Loaders;
use crate::services::auth::Caller;
use crate::state::AppState;

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

/// A response made of one GraphQL error with a code.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body =
        serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Result<Option<String>, Box<Response>> {
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

/// The caller named by the request's `Authorization` header; no header means anonymous (fields
/// that need a caller then answer `UNAUTHENTICATED`), a bad one is refused outright.
async fn caller_from_headers(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Caller>, Box<Response>> {
    let Some(token) = bearer(headers)? else {
        return Ok(None);
    };
    match app.auth.authenticate(&token).await {
        Ok(c) => Ok(Some(c)),
        Err(AppError::Internal(e)) => {
            let id = uuid::Uuid::new_v4();
            tracing::error!(error_id = %id, error = ?e, "authentication failed");
            Err(Box::new(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                &format!("internal error (error id {id})"),
            )))
        }
        Err(e) => Err(Box::new(error_response(
            StatusCode::UNAUTHORIZED,
            e.code(),
            &e.to_string(),
        ))),
    }
}

fn wants_graphql_response(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(GRAPHQL_RESPONSE))
}

fn respond(headers: &HeaderMap, resp: BatchResponse) -> Response {
    let modern = wants_graphql_response(headers);
    // A request error (nothing executed) is a 400 under the modern media type; field errors are 200.
    let request_error = match &resp {
        BatchResponse::Single(r) => r.is_err() && r.data == async_graphql::Value::Null,
        BatchResponse::Batch(rs) => rs
            .iter()
            .all(|r| r.is_err() && r.data == async_graphql::Value::Null),
    };
    let status = if modern && request_error {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let body = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{}".to_vec());
    let ct = if modern {
        GRAPHQL_RESPONSE
    } else {
        "application/json"
    };
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

async fn execute(state: &HttpState, caller: Option<Caller>, batch: BatchRequest) -> BatchResponse {
    let app = &state.app;
    let batch = batch.data(Loaders::new(&app.db, app.settings.loader_delay, true));
    let batch = match caller {
        Some(c) => batch.data(c),
        None => batch,
    };
    state.schema.execute_batch(batch).await
}

/// `POST /graphql`: JSON bodies or GraphQL multipart requests (file uploads).
pub async fn post(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let caller = match caller_from_headers(&state.app, &headers).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let settings = &state.app.settings;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let multipart = content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("multipart/form-data"));
    let limit = if multipart {
        settings.max_recording_bytes as usize + settings.max_request_bytes
    } else {
        settings.max_request_bytes
    };
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
                let why = if multipart {
                    format!(
                        "the recording is larger than {} bytes",
                        settings.max_recording_bytes
                    )
                } else {
                    format!(
                        "the request body is larger than {} bytes",
                        settings.max_request_bytes
                    )
                };
                return error_response(StatusCode::PAYLOAD_TOO_LARGE, "BAD_USER_INPUT", &why);
            }
            return error_response(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &format!("invalid GraphQL request: {msg}"),
            );
        }
    };
    respond(&headers, execute(&state, caller, batch).await)
}

/// `GET /graphql`: a query in the query string, or a WebSocket upgrade for subscriptions.
pub async fn get_or_ws(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    protocol: Result<GraphQLProtocol, StatusCode>,
) -> Response {
    if let (Ok(ws), Ok(protocol)) = (ws, protocol) {
        return websocket(state, headers, ws, protocol).await;
    }
    let caller = match caller_from_headers(&state.app, &headers).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let query = query.unwrap_or_default();
    if query.len() > state.app.settings.max_request_bytes {
        return error_response(
            StatusCode::URI_TOO_LONG,
            "BAD_USER_INPUT",
            "the query string is too long",
        );
    }
    let request = match get_request(&query) {
        Ok(r) => r,
        Err(msg) => return error_response(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", &msg),
    };
    // Only queries travel over GET (GraphQL-over-HTTP): they must have no side effects.
    if let Ok(doc) = async_graphql::parser::parse_query(&request.query) {
        let op = match &request.operation_name {
            Some(name) => doc
                .operations
                .iter()
                .find(|(n, _)| n.map(|n| n.as_str()) == Some(name.as_str())),
            // Several unnamed choices: execution refuses it ("operation name required").
            None if doc.operations.iter().count() > 1 => None,
            None => doc.operations.iter().next(),
        };
        if let Some((_, op)) = op {
            if op.node.ty != OperationType::Query {
                let mut r = error_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "BAD_USER_INPUT",
                    "only queries may be sent with GET; use POST for mutations and WebSocket for subscriptions",
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                return r;
            }
        }
    }
    respond(
        &headers,
        execute(&state, caller, BatchRequest::Single(request)).await,
    )
}

/// The GraphQL-over-HTTP GET parameters: `query`, `operationName`, and JSON `variables` and
/// `extensions`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetParams {
    query: Option<String>,
    operation_name: Option<String>,
    variables: Option<String>,
}

fn get_request(query_string: &str) -> Result<async_graphql::Request, String> {
    let p: GetParams = serde_urlencoded::from_str(query_string)
        .map_err(|e| format!("invalid query string: {e}"))?;
    let query = p.query.ok_or("the query parameter is required")?;
    let mut request = async_graphql::Request::new(query);
    if let Some(name) = p.operation_name.filter(|n| !n.is_empty()) {
        request = request.operation_name(name);
    }
    if let Some(vars) = p.variables.filter(|v| !v.is_empty()) {
        let json: serde_json::Value =
            serde_json::from_str(&vars).map_err(|e| format!("variables is not valid JSON: {e}"))?;
        request = request.variables(async_graphql::Variables::from_json(json));
    }
    Ok(request)
}

fn token_from_init(payload: &serde_json::Value) -> Option<String> {
    let obj = payload.as_object()?;
    let raw = ["Authorization", "authorization", "token", "apiKey"]
        .iter()
        .find_map(|k| obj.get(*k))
        .or_else(|| {
            obj.get("headers")
                .and_then(|h| h.get("Authorization").or_else(|| h.get("authorization")))
        })?
        .as_str()?;
    let token = match raw.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t,
        _ => raw,
    };
    Some(token.trim().to_string()).filter(|t| !t.is_empty())
}

async fn websocket(
    state: HttpState,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
    protocol: GraphQLProtocol,
) -> Response {
    // A token on the upgrade request works too (browsers cannot set headers on WebSockets).
    let header_caller = match caller_from_headers(&state.app, &headers).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let init_timeout = state.app.settings.ws_init_timeout;
    let app = state.app.clone();
    let schema = state.schema.clone();
    ws.protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(64 * 1024)
        .max_frame_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            let initialised = Arc::new(AtomicBool::new(false));
            let flag = initialised.clone();
            let auth = app.auth.clone();
            let mut data = Data::default();
            if let Some(c) = header_caller.clone() {
                data.insert(c);
            }
            let conn = GraphQLWebSocket::new(socket, schema, protocol)
                .with_data(data)
                .on_connection_init(move |payload| async move {
                    flag.store(true, Ordering::SeqCst);
                    let mut data = Data::default();
                    match token_from_init(&payload) {
                        Some(token) => {
                            let caller = auth
                                .authenticate(&token)
                                .await
                                .map_err(|e| async_graphql::Error::new(e.to_string()))?;
                            data.insert(caller);
                        }
                        None if header_caller.is_some() => {}
                        None => {
                            return Err(async_graphql::Error::new(
                                "authentication required: send {\"Authorization\": \"Bearer <API key>\"} in connection_init",
                            ))
                        }
                    }
                    Ok(data)
                })
                .keepalive_timeout(std::time::Duration::from_secs(60));
            app.metrics.ws_connections.inc();
            let watchdog = async {
                tokio::time::sleep(init_timeout).await;
                if initialised.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                tracing::debug!("closing a WebSocket that sent no connection_init in time");
            };
            tokio::select! {
                _ = conn.serve() => {}
                _ = watchdog => {}
            }
            app.metrics.ws_connections.dec();
        })
}
