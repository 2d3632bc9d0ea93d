//! The directory blob store's signed URLs: GET downloads, PUT uploads of exactly the signed type
//! and length, streamed to a temporary file and moved into place only when complete, and only
//! where no object is stored yet (an upload URL works once).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::graphql::error_response;
use super::HttpState;
use crate::adapters::local::blobs::SignatureError;

fn refused(e: SignatureError) -> Response {
    let status = match e {
        SignatureError::BadKey => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    };
    error_response(status, "FORBIDDEN", &e.to_string())
}

pub async fn get(
    State(state): State<HttpState>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(store) = state.app.local_blobs.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // The type the link was signed with: the object is answered as that.
    let kind = q.get("type").map(String::as_str).unwrap_or("");
    if let Err(e) = store.verify_get(
        &key,
        kind,
        q.get("expires").map(String::as_str),
        q.get("signature").map(String::as_str),
    ) {
        return refused(e);
    }
    use crate::ports::BlobStore;
    match store.get(&key).await {
        Ok(Some(bytes)) => {
            let ct = header::HeaderValue::from_str(kind)
                .ok()
                .filter(|_| !kind.is_empty())
                .unwrap_or(header::HeaderValue::from_static("application/octet-stream"));
            (
                [
                    (header::CONTENT_TYPE, ct),
                    (
                        header::X_CONTENT_TYPE_OPTIONS,
                        header::HeaderValue::from_static("nosniff"),
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        Ok(None) => error_response(StatusCode::NOT_FOUND, "NOT_FOUND", "no such object"),
        Err(e) => {
            let id = uuid::Uuid::new_v4();
            tracing::error!(error_id = %id, error = ?e, "reading blob failed");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                &format!("internal error (error id {id})"),
            )
        }
    }
}

pub async fn put(
    State(state): State<HttpState>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(store) = state.app.local_blobs.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let declared: Option<u64> = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let Some(length) = declared else {
        return error_response(
            StatusCode::LENGTH_REQUIRED,
            "BAD_USER_INPUT",
            "Content-Length is required",
        );
    };
    if let Err(e) = store.verify_put(
        &key,
        content_type,
        &length.to_string(),
        q.get("expires").map(String::as_str),
        q.get("signature").map(String::as_str),
    ) {
        let msg = match e {
            SignatureError::Invalid => "the signature does not match (the Content-Type and Content-Length must be exactly those of createRecordingUpload)".to_string(),
            other => other.to_string(),
        };
        return error_response(StatusCode::FORBIDDEN, "FORBIDDEN", &msg);
    }
    // Refused before the body is read; a race with another upload is settled when committing.
    match store.exists(&key).await {
        Ok(false) => {}
        Ok(true) => return used(),
        Err(e) => return internal(e),
    }
    let temp = store.temp_path();
    let result: anyhow::Result<Option<Response>> = async {
        if let Some(dir) = temp.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file = tokio::fs::File::create(&temp).await?;
        let mut stream = body.into_data_stream();
        let mut written: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(_) => {
                    return Ok(Some(error_response(
                        StatusCode::BAD_REQUEST,
                        "BAD_USER_INPUT",
                        "the upload was interrupted",
                    )))
                }
            };
            written += chunk.len() as u64;
            if written > length {
                return Ok(Some(error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "BAD_USER_INPUT",
                    "the body is longer than the signed length",
                )));
            }
            file.write_all(&chunk).await?;
        }
        if written != length {
            return Ok(Some(error_response(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "the body is shorter than the signed length",
            )));
        }
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        if store.commit_temp_new(&temp, &key).await? {
            Ok(None)
        } else {
            Ok(Some(used()))
        }
    }
    .await;
    match result {
        Ok(None) => StatusCode::OK.into_response(),
        Ok(Some(refusal)) => {
            let _ = tokio::fs::remove_file(&temp).await;
            refusal
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            internal(e)
        }
    }
}

/// A second upload with a URL that already uploaded (or an upload racing it).
fn used() -> Response {
    error_response(
        StatusCode::CONFLICT,
        "CONFLICT",
        "this upload URL was already used: a signed upload URL uploads once; create another upload",
    )
}

fn internal(e: anyhow::Error) -> Response {
    let id = uuid::Uuid::new_v4();
    tracing::error!(error_id = %id, error = ?e, "storing upload failed");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        &format!("internal error (error id {id})"),
    )
}
