//! Call use cases: presigned uploads, submission (idempotent, transactional outbox), retry, tags,
//! deletion, lookup and listing with filters and keyset pagination. Every query is scoped to the
//! caller's tenant. A recording is checked once, where no URL can write: an upload is copied to
//! the call's own key at submission and checked and hashed there, and the call is analysed and
//! served from that copy.

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use entities::{call_events, call_segments, calls};
use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::adapters::local::acoustic;
use crate::domain::{
    event_kind, AudioInfo, CallDirection, CallStatus, JobMessage, TranscriptInput,
};
use crate::error::{AppError, AppResult};
use crate::ports::PresignedPut;
use crate::services::auth::{Caller, Permission};
use crate::services::events::{
    enqueue_blob_delete, enqueue_blob_delete_at, enqueue_job, record_event,
};
use crate::state::AppState;

/// Content types accepted for recordings (the bytes are checked too).
pub const AUDIO_TYPES: &[&str] = &[
    "audio/wav",
    "audio/x-wav",
    "audio/wave",
    "audio/vnd.wave",
    "audio/flac",
    "audio/x-flac",
    "audio/mpeg",
    "audio/mp3",
    "audio/ogg",
    "audio/vorbis",
    "application/octet-stream",
];

const MAX_TAGS: usize = 50;
const MAX_METADATA_BYTES: usize = 64 * 1024;
const MAX_TRANSCRIPT_BYTES: usize = 1024 * 1024;

/// A call as submitted, before validation.
#[derive(Debug, Clone, Default)]
pub struct SubmitCall {
    pub external_id: Option<String>,
    pub direction: Option<CallDirection>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub agent: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub metadata: Option<serde_json::Value>,
    pub channels: Option<Vec<String>>,
    pub transcript: Option<TranscriptInput>,
    pub language: Option<String>,
    pub idempotency_key: Option<String>,
}

/// Where the recording comes from.
pub enum Recording {
    /// Sent inline (multipart upload).
    Bytes {
        data: Bytes,
        content_type: Option<String>,
    },
    /// Uploaded before through `createRecordingUpload`.
    Key(String),
}

fn check_text(value: Option<String>, field: &str, max: usize) -> AppResult<Option<String>> {
    let Some(v) = value else { return Ok(None) };
    let v = v.trim().to_string();
    if v.is_empty() {
        return Ok(None);
    }
    if v.chars().count() > max {
        return Err(AppError::bad_input(format!(
            "{field} is longer than {max} characters"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(AppError::bad_input(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(Some(v))
}

/// Tags: 1–64 characters of letters, digits and `-_.:/ `, at most 50, deduplicated in order.
pub fn check_tags(tags: Vec<String>) -> AppResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for tag in tags {
        let tag = tag.trim().to_string();
        if tag.is_empty() || tag.chars().count() > 64 {
            return Err(AppError::bad_input("tags must be 1 to 64 characters"));
        }
        if !tag
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | ' '))
        {
            return Err(AppError::bad_input(format!(
                "tag {tag:?} may only contain letters, digits, spaces and - _ . : /"
            )));
        }
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    if out.len() > MAX_TAGS {
        return Err(AppError::bad_input(format!(
            "a call has at most {MAX_TAGS} tags"
        )));
    }
    Ok(out)
}

fn check_channels(channels: Option<Vec<String>>) -> AppResult<Option<Vec<String>>> {
    let Some(channels) = channels else {
        return Ok(None);
    };
    if channels.is_empty() {
        return Ok(None);
    }
    if channels.len() > 2 {
        return Err(AppError::bad_input(
            "channels names at most 2 speakers (left, right)",
        ));
    }
    channels
        .into_iter()
        .map(|c| {
            check_text(Some(c), "a channel name", 64)?
                .ok_or_else(|| AppError::bad_input("channel names must not be empty"))
        })
        .collect::<AppResult<Vec<_>>>()
        .map(Some)
}

fn check_transcript(t: Option<TranscriptInput>) -> AppResult<Option<TranscriptInput>> {
    let Some(t) = t else { return Ok(None) };
    let size = t.text.as_ref().map_or(0, String::len)
        + t.segments
            .iter()
            .map(|s| s.text.len() + s.speaker.len())
            .sum::<usize>();
    if size > MAX_TRANSCRIPT_BYTES {
        return Err(AppError::bad_input("the transcript is larger than 1 MiB"));
    }
    if t.segments.len() > 20_000 {
        return Err(AppError::bad_input(
            "the transcript has more than 20000 segments",
        ));
    }
    for s in &t.segments {
        if let (Some(a), Some(b)) = (s.start_ms, s.end_ms) {
            if a < 0 || b < a {
                return Err(AppError::bad_input(
                    "transcript segments need 0 <= startMs <= endMs",
                ));
            }
        }
    }
    if t.text.as_deref().is_none_or(|x| x.trim().is_empty()) && t.segments.is_empty() {
        return Ok(None);
    }
    Ok(Some(t))
}

fn check_metadata(m: Option<serde_json::Value>) -> AppResult<Option<serde_json::Value>> {
    match m {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v @ serde_json::Value::Object(_)) => {
            if serde_json::to_vec(&v).map_or(usize::MAX, |b| b.len()) > MAX_METADATA_BYTES {
                return Err(AppError::bad_input("metadata is larger than 64 KiB"));
            }
            Ok(Some(v))
        }
        Some(_) => Err(AppError::bad_input("metadata must be a JSON object")),
    }
}

fn check_content_type(ct: &str) -> AppResult<String> {
    let base = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if AUDIO_TYPES.contains(&base.as_str()) {
        Ok(base)
    } else {
        Err(AppError::bad_input(format!(
            "content type {ct:?} is not an accepted audio type ({})",
            AUDIO_TYPES.join(", ")
        )))
    }
}

fn upload_prefix(tenant: Uuid) -> String {
    format!("uploads/{tenant}/")
}

/// Where a call's recording is stored: a key no signed URL can write.
fn recording_key(tenant: Uuid, call: Uuid) -> String {
    format!("recordings/{tenant}/{call}")
}

/// How long after its submission an upload is kept: past the end of its URL's lifetime (with a
/// margin for clock skew), so that the URL can never upload there again (each upload URL works
/// once, and only where no object is stored).
fn upload_retention(url_expiry: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(url_expiry).unwrap_or(chrono::Duration::hours(1))
        + chrono::Duration::minutes(1)
}

pub async fn create_recording_upload(
    state: &AppState,
    caller: &Caller,
    content_type: &str,
    byte_size: i64,
    file_name: Option<String>,
) -> AppResult<(String, PresignedPut)> {
    caller.require(Permission::SubmitCalls)?;
    let content_type = check_content_type(content_type)?;
    let max = state.settings.max_recording_bytes;
    if byte_size <= 0 || byte_size as u64 > max {
        return Err(AppError::bad_input(format!(
            "byteSize must be between 1 and {max} bytes"
        )));
    }
    check_text(file_name, "fileName", 255)?;
    let key = format!("{}{}", upload_prefix(caller.tenant_id), Uuid::new_v4());
    let put = state
        .blobs
        .presign_put(
            &key,
            &content_type,
            byte_size as u64,
            state.settings.url_expiry,
        )
        .await?;
    Ok((key, put))
}

/// Submits a call. Returns the call and whether it was a repeat of an earlier submission.
pub async fn submit_call(
    state: &AppState,
    caller: &Caller,
    input: SubmitCall,
    recording: Recording,
) -> AppResult<(calls::Model, bool)> {
    caller.require(Permission::SubmitCalls)?;
    let external_id = check_text(input.external_id, "externalId", 200)?;
    let from = check_text(input.from, "from", 64)?;
    let to = check_text(input.to, "to", 64)?;
    let agent = check_text(input.agent, "agent", 200)?;
    let language = check_text(input.language, "language", 35)?;
    let idempotency_key = check_text(input.idempotency_key, "idempotencyKey", 200)?;
    let tags = check_tags(input.tags)?;
    let metadata = check_metadata(input.metadata)?;
    let channels = check_channels(input.channels)?;
    let transcript = check_transcript(input.transcript)?;
    let max = state.settings.max_recording_bytes;

    let call_id = Uuid::new_v4();
    let recording_key = recording_key(caller.tenant_id, call_id);
    let (checked, upload_key) = match recording {
        Recording::Bytes { data, content_type } => {
            let ct = match content_type {
                Some(ct) => check_content_type(&ct)?,
                None => "application/octet-stream".into(),
            };
            (check_bytes(data, ct, max).await?, None)
        }
        Recording::Key(key) => {
            if !key.starts_with("uploads/") || !crate::adapters::local::blobs::valid_key(&key) {
                return Err(AppError::bad_input(
                    "recordingKey is not an upload key (use createRecordingUpload)",
                ));
            }
            // Another tenant's upload is, for this caller, an upload that does not exist.
            if !key.starts_with(&upload_prefix(caller.tenant_id)) {
                return Err(AppError::not_found("upload"));
            }
            // Repeating the submission of an upload answers with the call it made (its bytes
            // were pinned then), even after the upload itself was removed.
            if let Some(idem) = &idempotency_key {
                if let Some(existing) =
                    find_by_idempotency(&state.db, caller.tenant_id, idem).await?
                {
                    if existing.upload_key.as_deref() == Some(key.as_str()) {
                        return Ok((existing, true));
                    }
                }
            }
            if let Some(other) = find_by_upload(&state.db, caller.tenant_id, &key).await? {
                return Err(already_submitted(&other));
            }
            let checked = copy_uploaded(state, &key, &recording_key, max).await?;
            (checked, Some(key))
        }
    };
    let Checked {
        info,
        sha,
        size,
        declared_type,
        inline,
    } = checked;
    let recording_type = if declared_type == "application/octet-stream" {
        match info.format.as_str() {
            "wav" => "audio/wav",
            "flac" => "audio/flac",
            "mp3" => "audio/mpeg",
            "ogg" => "audio/ogg",
            _ => "application/octet-stream",
        }
        .to_string()
    } else {
        declared_type
    };
    // From here on the object at `recording_key` (the upload's copy, or the inline bytes once
    // stored) belongs to this submission: it is removed again unless the call is created.
    let discard = || async {
        if let Err(e) = state.blobs.delete(&recording_key).await {
            tracing::warn!(key = %recording_key, error = %format!("{e:#}"), "removing an unused recording failed");
        }
    };
    if let Some(key) = &idempotency_key {
        if let Some(existing) = find_by_idempotency(&state.db, caller.tenant_id, key).await? {
            if upload_key.is_some() {
                discard().await;
            }
            return same_recording(existing, &sha);
        }
    }

    if let Some(data) = inline {
        state
            .blobs
            .put(&recording_key, data, &recording_type)
            .await?;
    }

    let now = Utc::now();
    let txn = state.db.begin().await?;
    let inserted = calls::ActiveModel {
        id: Set(call_id),
        tenant_id: Set(caller.tenant_id),
        external_id: Set(external_id),
        idempotency_key: Set(idempotency_key.clone()),
        status: Set(CallStatus::Queued.as_str().into()),
        direction: Set(input.direction.map(|d| d.as_str().to_string())),
        from_number: Set(from),
        to_number: Set(to),
        agent: Set(agent),
        started_at: Set(input.started_at),
        duration_ms: Set(info.duration_ms),
        channels: Set(channels.map(|c| serde_json::json!(c))),
        recording_key: Set(Some(recording_key.clone())),
        recording_type: Set(Some(recording_type)),
        recording_bytes: Set(Some(size as i64)),
        recording_sha256: Set(Some(sha.clone())),
        result_key: Set(None),
        language: Set(language),
        transcript_text: Set(None),
        transcript_input: Set(transcript.map(|t| serde_json::to_value(t).unwrap_or_default())),
        summary: Set(None),
        sentiment_score: Set(None),
        sentiment_label: Set(None),
        topics: Set(serde_json::json!([])),
        action_items: Set(serde_json::json!([])),
        metrics: Set(None),
        tags: Set(serde_json::json!(tags)),
        metadata: Set(metadata),
        analyzer: Set(None),
        attempts: Set(0),
        error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        completed_at: Set(None),
        upload_key: Set(upload_key.clone()),
    }
    .insert(&txn)
    .await;
    let call = match inserted {
        Ok(call) => call,
        Err(e) => {
            drop(txn);
            discard().await;
            // Two submissions with one idempotency key, or of one upload, raced: the other won.
            if let Some(key) = &idempotency_key {
                if let Some(existing) =
                    find_by_idempotency(&state.db, caller.tenant_id, key).await?
                {
                    if existing.upload_key.is_some() && existing.upload_key == upload_key {
                        return Ok((existing, true));
                    }
                    return same_recording(existing, &sha);
                }
            }
            if let Some(key) = &upload_key {
                if let Some(other) = find_by_upload(&state.db, caller.tenant_id, key).await? {
                    return Err(already_submitted(&other));
                }
            }
            return Err(e.into());
        }
    };
    record_event(
        &txn,
        caller.tenant_id,
        call_id,
        event_kind::SUBMITTED,
        CallStatus::Queued,
        None,
    )
    .await?;
    enqueue_job(
        &txn,
        &JobMessage {
            tenant_id: caller.tenant_id,
            call_id,
        },
    )
    .await?;
    if let Some(key) = upload_key {
        enqueue_blob_delete_at(
            &txn,
            vec![key],
            now + upload_retention(state.settings.url_expiry),
        )
        .await?;
    }
    txn.commit().await?;
    state.relay_wakeup.notify_one();
    tracing::info!(call = %call_id, tenant = %caller.tenant_id, bytes = size, "call submitted");
    Ok((call, false))
}

/// A recording whose bytes were checked: decodable audio within the limits.
struct Checked {
    info: AudioInfo,
    sha: String,
    size: u64,
    declared_type: String,
    /// The bytes to store, for an inline upload; an upload's copy is already stored.
    inline: Option<Bytes>,
}

fn check_size(size: u64, max: u64) -> AppResult<()> {
    if size == 0 {
        return Err(AppError::bad_input("the recording is empty"));
    }
    if size > max {
        return Err(AppError::bad_input(format!(
            "the recording is larger than {max} bytes"
        )));
    }
    Ok(())
}

/// Checks a recording sent inline: size, then a decode of its first packets.
async fn check_bytes(data: Bytes, declared_type: String, max: u64) -> AppResult<Checked> {
    check_size(data.len() as u64, max)?;
    let probe_bytes = data.clone();
    let (info, sha) = tokio::task::spawn_blocking(move || {
        acoustic::probe(&probe_bytes).map(|info| (info, hex::encode(Sha256::digest(&probe_bytes))))
    })
    .await
    .map_err(anyhow::Error::from)?
    .map_err(|e| AppError::bad_input(e.to_string()))?;
    Ok(Checked {
        info,
        sha,
        size: data.len() as u64,
        declared_type,
        inline: Some(data),
    })
}

/// Copies the upload at `upload_key` to `recording_key`, where no URL can write, and checks the
/// copy: what is checked is what the call is analysed from, whatever happens to the upload
/// afterwards. The copy is removed again when it fails the check.
async fn copy_uploaded(
    state: &AppState,
    upload_key: &str,
    recording_key: &str,
    max: u64,
) -> AppResult<Checked> {
    let nothing =
        || AppError::bad_input("nothing was uploaded at recordingKey (or it was already deleted)");
    // Refuses an oversized upload before copying it.
    match state.blobs.size(upload_key).await? {
        Some(size) => check_size(size, max)?,
        None => return Err(nothing()),
    }
    if !state.blobs.copy(upload_key, recording_key).await? {
        return Err(nothing());
    }
    let checked = check_stored(state, recording_key, max).await;
    if checked.is_err() {
        let _ = state.blobs.delete(recording_key).await;
    }
    checked
}

/// Checks a stored recording: streamed to a temporary file, never held in memory.
async fn check_stored(state: &AppState, key: &str, max: u64) -> AppResult<Checked> {
    let file = tempfile::NamedTempFile::new().map_err(anyhow::Error::from)?;
    let size = state
        .blobs
        .download(key, file.path())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the copy of an upload at {key} is missing"))?;
    check_size(size, max)?;
    let (info, sha) = tokio::task::spawn_blocking(move || -> AppResult<(AudioInfo, String)> {
        let info =
            acoustic::probe_file(file.path()).map_err(|e| AppError::bad_input(e.to_string()))?;
        let mut hasher = Sha256::new();
        let mut f = std::fs::File::open(file.path()).map_err(anyhow::Error::from)?;
        std::io::copy(&mut f, &mut hasher).map_err(anyhow::Error::from)?;
        Ok((info, hex::encode(hasher.finalize())))
    })
    .await
    .map_err(anyhow::Error::from)??;
    Ok(Checked {
        info,
        sha,
        size,
        declared_type: "application/octet-stream".into(),
        inline: None,
    })
}

fn already_submitted(other: &calls::Model) -> AppError {
    AppError::Conflict(format!(
        "recordingKey was already submitted, as call {}: an upload makes one call (create another upload for another call)",
        other.id
    ))
}

async fn find_by_upload(
    db: &DatabaseConnection,
    tenant: Uuid,
    upload_key: &str,
) -> AppResult<Option<calls::Model>> {
    Ok(calls::Entity::find()
        .filter(calls::Column::TenantId.eq(tenant))
        .filter(calls::Column::UploadKey.eq(upload_key))
        .one(db)
        .await?)
}

fn same_recording(existing: calls::Model, sha: &str) -> AppResult<(calls::Model, bool)> {
    if existing.recording_sha256.as_deref() == Some(sha) {
        Ok((existing, true))
    } else {
        Err(AppError::Conflict(
            "idempotencyKey was already used for a different recording".into(),
        ))
    }
}

async fn find_by_idempotency(
    db: &DatabaseConnection,
    tenant: Uuid,
    key: &str,
) -> AppResult<Option<calls::Model>> {
    Ok(calls::Entity::find()
        .filter(calls::Column::TenantId.eq(tenant))
        .filter(calls::Column::IdempotencyKey.eq(key))
        .one(db)
        .await?)
}

pub async fn get_call(
    db: &DatabaseConnection,
    caller: &Caller,
    id: Uuid,
) -> AppResult<Option<calls::Model>> {
    caller.require(Permission::ReadCalls)?;
    Ok(calls::Entity::find_by_id(id)
        .filter(calls::Column::TenantId.eq(caller.tenant_id))
        .one(db)
        .await?)
}

async fn require_call(
    db: &DatabaseConnection,
    caller: &Caller,
    id: Uuid,
) -> AppResult<calls::Model> {
    calls::Entity::find_by_id(id)
        .filter(calls::Column::TenantId.eq(caller.tenant_id))
        .one(db)
        .await?
        .ok_or_else(|| AppError::not_found("call"))
}

/// Puts a failed call back on the queue.
pub async fn retry_call(state: &AppState, caller: &Caller, id: Uuid) -> AppResult<calls::Model> {
    caller.require(Permission::ManageCalls)?;
    let txn = state.db.begin().await?;
    let updated = calls::Entity::update_many()
        .col_expr(
            calls::Column::Status,
            Expr::value(CallStatus::Queued.as_str()),
        )
        .col_expr(calls::Column::Error, Expr::value(Option::<String>::None))
        .col_expr(calls::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(calls::Column::Id.eq(id))
        .filter(calls::Column::TenantId.eq(caller.tenant_id))
        .filter(calls::Column::Status.eq(CallStatus::Failed.as_str()))
        .exec(&txn)
        .await?;
    if updated.rows_affected == 0 {
        drop(txn);
        let call = require_call(&state.db, caller, id).await?;
        return Err(AppError::Conflict(format!(
            "only FAILED calls can be retried; this one is {}",
            call.status
        )));
    }
    record_event(
        &txn,
        caller.tenant_id,
        id,
        event_kind::RETRIED,
        CallStatus::Queued,
        None,
    )
    .await?;
    enqueue_job(
        &txn,
        &JobMessage {
            tenant_id: caller.tenant_id,
            call_id: id,
        },
    )
    .await?;
    txn.commit().await?;
    state.relay_wakeup.notify_one();
    require_call(&state.db, caller, id).await
}

/// Adds tags to a call (existing tags stay).
pub async fn tag_call(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    tags: Vec<String>,
) -> AppResult<calls::Model> {
    caller.require(Permission::TagCalls)?;
    let new_tags = check_tags(tags)?;
    let call = require_call(&state.db, caller, id).await?;
    let mut all: Vec<String> = serde_json::from_value(call.tags.clone()).unwrap_or_default();
    for t in new_tags {
        if !all.contains(&t) {
            all.push(t);
        }
    }
    let all = check_tags(all)?;
    let status = CallStatus::parse(&call.status).unwrap_or(CallStatus::Queued);
    let txn = state.db.begin().await?;
    let mut active: calls::ActiveModel = call.into();
    active.tags = Set(serde_json::json!(all));
    active.updated_at = Set(Utc::now());
    let call = active.update(&txn).await?;
    record_event(
        &txn,
        caller.tenant_id,
        id,
        event_kind::TAGGED,
        status,
        Some(serde_json::json!({ "tags": all })),
    )
    .await?;
    txn.commit().await?;
    state.relay_wakeup.notify_one();
    Ok(call)
}

/// Deletes a call with its segments and events; its recording and results are deleted through
/// the outbox. A `DELETED` event remains so that subscribers learn of it.
pub async fn delete_call(state: &AppState, caller: &Caller, id: Uuid) -> AppResult<calls::Model> {
    caller.require(Permission::ManageCalls)?;
    let call = require_call(&state.db, caller, id).await?;
    let txn = state.db.begin().await?;
    call_segments::Entity::delete_many()
        .filter(call_segments::Column::CallId.eq(id))
        .exec(&txn)
        .await?;
    call_events::Entity::delete_many()
        .filter(call_events::Column::CallId.eq(id))
        .filter(call_events::Column::TenantId.eq(caller.tenant_id))
        .exec(&txn)
        .await?;
    let deleted = calls::Entity::delete_many()
        .filter(calls::Column::Id.eq(id))
        .filter(calls::Column::TenantId.eq(caller.tenant_id))
        .exec(&txn)
        .await?;
    if deleted.rows_affected == 0 {
        return Err(AppError::not_found("call"));
    }
    let status = CallStatus::parse(&call.status).unwrap_or(CallStatus::Queued);
    record_event(
        &txn,
        caller.tenant_id,
        id,
        event_kind::DELETED,
        status,
        None,
    )
    .await?;
    enqueue_blob_delete(
        &txn,
        [call.recording_key.clone(), call.result_key.clone()]
            .into_iter()
            .flatten()
            .collect(),
    )
    .await?;
    txn.commit().await?;
    state.relay_wakeup.notify_one();
    Ok(call)
}

/// Filters for listing calls and statistics.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub statuses: Vec<CallStatus>,
    /// Calls carrying every one of these tags.
    pub tags: Vec<String>,
    pub directions: Vec<CallDirection>,
    pub agent: Option<String>,
    pub external_id: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub started_after: Option<DateTime<Utc>>,
    pub started_before: Option<DateTime<Utc>>,
    /// Case-insensitive text in the summary or transcript.
    pub text: Option<String>,
}

fn like_pattern(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

impl CallFilter {
    pub fn condition(&self, tenant: Uuid) -> AppResult<Condition> {
        let mut c = Condition::all().add(calls::Column::TenantId.eq(tenant));
        if !self.statuses.is_empty() {
            c = c.add(calls::Column::Status.is_in(self.statuses.iter().map(|s| s.as_str())));
        }
        if !self.directions.is_empty() {
            c = c.add(calls::Column::Direction.is_in(self.directions.iter().map(|s| s.as_str())));
        }
        for tag in check_tags(self.tags.clone())? {
            let json = serde_json::to_string(&tag).map_err(anyhow::Error::from)?;
            c = c.add(
                Expr::col(calls::Column::Tags)
                    .cast_as("TEXT")
                    .like(LikeExpr::new(like_pattern(&json)).escape('\\')),
            );
        }
        if let Some(agent) = &self.agent {
            c = c.add(calls::Column::Agent.eq(agent.as_str()));
        }
        if let Some(ext) = &self.external_id {
            c = c.add(calls::Column::ExternalId.eq(ext.as_str()));
        }
        if let Some(t) = self.created_after {
            c = c.add(calls::Column::CreatedAt.gte(t));
        }
        if let Some(t) = self.created_before {
            c = c.add(calls::Column::CreatedAt.lt(t));
        }
        if let Some(t) = self.started_after {
            c = c.add(calls::Column::StartedAt.gte(t));
        }
        if let Some(t) = self.started_before {
            c = c.add(calls::Column::StartedAt.lt(t));
        }
        if let Some(text) = self
            .text
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            if text.chars().count() > 200 {
                return Err(AppError::bad_input(
                    "text filter is longer than 200 characters",
                ));
            }
            let pattern = like_pattern(&text.to_lowercase());
            let lower = |col: calls::Column| Expr::expr(Func::lower(Expr::col(col)));
            c = c.add(
                Condition::any()
                    .add(
                        lower(calls::Column::Summary)
                            .like(LikeExpr::new(pattern.clone()).escape('\\')),
                    )
                    .add(
                        lower(calls::Column::TranscriptText)
                            .like(LikeExpr::new(pattern).escape('\\')),
                    ),
            );
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrderField {
    #[default]
    CreatedAt,
    UpdatedAt,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Order {
    pub field: OrderField,
    pub descending: bool,
}

/// A position in a listing: the ordering value and the id that breaks ties.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Cursor {
    t: DateTime<Utc>,
    id: Uuid,
}

fn encode_cursor(call: &calls::Model, field: OrderField) -> String {
    let t = match field {
        OrderField::CreatedAt => call.created_at,
        OrderField::UpdatedAt => call.updated_at,
    };
    let json = serde_json::to_vec(&Cursor { t, id: call.id }).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(s: &str) -> AppResult<Cursor> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| AppError::bad_input("invalid cursor"))
}

/// One page of calls.
pub struct CallPage {
    pub calls: Vec<(String, calls::Model)>,
    pub has_next_page: bool,
    pub has_previous_page: bool,
}

pub struct PageArgs {
    pub first: Option<i32>,
    pub after: Option<String>,
    pub last: Option<i32>,
    pub before: Option<String>,
}

pub async fn list_calls(
    state: &AppState,
    caller: &Caller,
    filter: &CallFilter,
    order: Order,
    page: PageArgs,
) -> AppResult<CallPage> {
    caller.require(Permission::ReadCalls)?;
    let max = state.settings.max_page_size;
    if page.first.is_some() && page.last.is_some() {
        return Err(AppError::bad_input("pass first or last, not both"));
    }
    let check = |n: i32, name: &str| -> AppResult<usize> {
        if n < 0 || n as usize > max {
            Err(AppError::bad_input(format!(
                "{name} must be between 0 and {max}"
            )))
        } else {
            Ok(n as usize)
        }
    };
    let backward = page.last.is_some();
    let limit = match (page.first, page.last) {
        (Some(n), _) => check(n, "first")?,
        (_, Some(n)) => check(n, "last")?,
        _ => std::cmp::min(20, max),
    };
    let col = match order.field {
        OrderField::CreatedAt => calls::Column::CreatedAt,
        OrderField::UpdatedAt => calls::Column::UpdatedAt,
    };
    let mut cond = filter.condition(caller.tenant_id)?;
    // Forward pages walk in the requested order; backward pages walk it in reverse.
    let keyset = |cursor: &Cursor, towards_end: bool| -> Condition {
        let ahead = towards_end != order.descending;
        if ahead {
            Condition::any().add(col.gt(cursor.t)).add(
                Condition::all()
                    .add(col.eq(cursor.t))
                    .add(calls::Column::Id.gt(cursor.id)),
            )
        } else {
            Condition::any().add(col.lt(cursor.t)).add(
                Condition::all()
                    .add(col.eq(cursor.t))
                    .add(calls::Column::Id.lt(cursor.id)),
            )
        }
    };
    if let Some(after) = &page.after {
        cond = cond.add(keyset(&decode_cursor(after)?, true));
    }
    if let Some(before) = &page.before {
        cond = cond.add(keyset(&decode_cursor(before)?, false));
    }
    let walk_desc = order.descending != backward;
    let mut query = calls::Entity::find().filter(cond);
    query = if walk_desc {
        query.order_by_desc(col).order_by_desc(calls::Column::Id)
    } else {
        query.order_by_asc(col).order_by_asc(calls::Column::Id)
    };
    let mut rows = query.limit(limit as u64 + 1).all(&state.db).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    if backward {
        rows.reverse();
    }
    Ok(CallPage {
        calls: rows
            .into_iter()
            .map(|c| (encode_cursor(&c, order.field), c))
            .collect(),
        has_next_page: if backward {
            page.before.is_some()
        } else {
            more
        },
        has_previous_page: if backward { more } else { page.after.is_some() },
    })
}

pub async fn count_calls(state: &AppState, caller: &Caller, filter: &CallFilter) -> AppResult<u64> {
    caller.require(Permission::ReadCalls)?;
    Ok(calls::Entity::find()
        .filter(filter.condition(caller.tenant_id)?)
        .count(&state.db)
        .await?)
}

/// Segments of some calls (for a DataLoader), in order.
pub async fn segments_of_calls(
    db: &DatabaseConnection,
    tenant: Uuid,
    call_ids: &[Uuid],
) -> anyhow::Result<Vec<call_segments::Model>> {
    Ok(call_segments::Entity::find()
        .filter(call_segments::Column::TenantId.eq(tenant))
        .filter(call_segments::Column::CallId.is_in(call_ids.iter().copied()))
        .order_by_asc(call_segments::Column::CallId)
        .order_by_asc(call_segments::Column::Idx)
        .all(db)
        .await?)
}

/// Calls by id (for a DataLoader).
pub async fn calls_by_ids(
    db: &DatabaseConnection,
    tenant: Uuid,
    ids: &[Uuid],
) -> anyhow::Result<Vec<calls::Model>> {
    Ok(calls::Entity::find()
        .filter(calls::Column::TenantId.eq(tenant))
        .filter(calls::Column::Id.is_in(ids.iter().copied()))
        .all(db)
        .await?)
}
