//! Call use cases: presigned uploads, submission (idempotent, transactional outbox), retry, tags,
//! deletion, lookup and listing with filters and keyset pagination. Every query is scoped to the
//! caller's tenant. A recording is checked once, where no URL can write: an upload is copied to
//! the call's own key at submission and checked and hashed there, and the call is analysed and
//! served from that copy.

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::redaction::RedactionOverride;
use crate::domain::{
    AudioInfo, CallColumns, CallDirection, CallRecord, SegmentRecord, TranscriptInput,
};
use crate::error::{AppError, AppResult};
use crate::ports::{AnalyzeError, Audio, PresignedPut};
use crate::services::auth::{Caller, Permission};
use crate::state::AppState;
use crate::store::{Change, Keyset, NewCall, PageQuery, Store};

pub use crate::store::{CallFilter, CallOrder as OrderField};

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
    /// Changes to the tenant's redaction policy for this call.
    pub redaction: RedactionOverride,
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

pub(crate) fn check_text(
    value: Option<String>,
    field: &str,
    max: usize,
) -> AppResult<Option<String>> {
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
) -> AppResult<(CallRecord, bool)> {
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
            (check_bytes(state, data, ct, max).await?, None)
        }
        Recording::Key(key) => {
            if !key.starts_with("uploads/") || !crate::ports::valid_key(&key) {
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
                if let Some(existing) = state
                    .store
                    .call_by_idempotency_key(caller.tenant_id, idem)
                    .await?
                {
                    if existing.upload_key.as_deref() == Some(key.as_str()) {
                        return Ok((existing, true));
                    }
                }
            }
            // An upload submitted before is refused by the call's unique upload key when it is
            // inserted (below); looked up here only when the copy fails, since it may have
            // been removed once its call was made.
            let checked = match copy_uploaded(state, &key, &recording_key, max).await {
                Ok(checked) => checked,
                Err(e) => {
                    if let Some(other) = state.store.call_by_upload(caller.tenant_id, &key).await? {
                        return Err(already_submitted(&other));
                    }
                    return Err(e);
                }
            };
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
        if let Some(existing) = state
            .store
            .call_by_idempotency_key(caller.tenant_id, key)
            .await?
        {
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

    let mut redaction = state
        .store
        .redaction_policy(caller.tenant_id)
        .await?
        .with(input.redaction);
    if input.redaction.delete_original == Some(true) {
        crate::services::redaction::check(redaction)?;
    }
    // The tenant's deleteOriginal means nothing for a call whose audio is not redacted.
    redaction.delete_original &= redaction.audio;
    let now = Utc::now();
    let inserted = state
        .store
        .submit_call(NewCall {
            id: call_id,
            tenant_id: caller.tenant_id,
            external_id,
            idempotency_key: idempotency_key.clone(),
            direction: input.direction,
            from,
            to,
            agent,
            started_at: input.started_at,
            duration_ms: info.duration_ms,
            channels,
            recording_key: recording_key.clone(),
            recording_type,
            recording_bytes: size as i64,
            recording_sha256: sha.clone(),
            language,
            transcript_input: transcript.map(|t| serde_json::to_value(t).unwrap_or_default()),
            tags,
            metadata,
            upload_key: upload_key.clone(),
            delete_upload_at: now + upload_retention(state.settings.url_expiry),
            analyzer: state.settings.analyzer.as_str().to_string(),
            redaction: redaction.any().then_some(redaction),
        })
        .await;
    let call = match inserted {
        Ok(call) => call,
        Err(e) => {
            discard().await;
            // Two submissions with one idempotency key, or of one upload, raced: the other won.
            if let Some(key) = &idempotency_key {
                if let Some(existing) = state
                    .store
                    .call_by_idempotency_key(caller.tenant_id, key)
                    .await?
                {
                    if existing.upload_key.is_some() && existing.upload_key == upload_key {
                        return Ok((existing, true));
                    }
                    return same_recording(existing, &sha);
                }
            }
            if let Some(key) = &upload_key {
                if let Some(other) = state.store.call_by_upload(caller.tenant_id, key).await? {
                    return Err(already_submitted(&other));
                }
            }
            return Err(e);
        }
    };
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

/// Decodes a recording's headers and first packets (the `Acoustics` port): one that does not
/// decode is the client's mistake, with the reason.
async fn probe(state: &AppState, audio: Audio) -> AppResult<AudioInfo> {
    state.acoustics.probe(audio).await.map_err(|e| match e {
        AnalyzeError::Permanent(reason) => AppError::bad_input(reason),
        AnalyzeError::Transient(e) => AppError::Internal(e),
    })
}

/// Checks a recording sent inline: size, then a decode of its first packets.
async fn check_bytes(
    state: &AppState,
    data: Bytes,
    declared_type: String,
    max: u64,
) -> AppResult<Checked> {
    check_size(data.len() as u64, max)?;
    let info = probe(state, Audio::Bytes(data.clone())).await?;
    let bytes = data.clone();
    let sha = tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&bytes)))
        .await
        .map_err(anyhow::Error::from)?;
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

/// Recordings up to this size are checked from memory, larger ones streamed from their file.
const SMALL_RECORDING: u64 = 4 * 1024 * 1024;

/// Checks a stored recording, a large one never held in memory: read in place when the store
/// keeps it on this machine's file system, else streamed to a temporary file first.
async fn check_stored(state: &AppState, key: &str, max: u64) -> AppResult<Checked> {
    let missing = || anyhow::anyhow!("the copy of an upload at {key} is missing");
    let (path, _temp) = match state.blobs.local_path(key) {
        Some(path) => (path, None),
        None => {
            let file = tempfile::NamedTempFile::new().map_err(anyhow::Error::from)?;
            state
                .blobs
                .download(key, file.path())
                .await?
                .ok_or_else(missing)?;
            (file.path().to_path_buf(), Some(file))
        }
    };
    // Hashed as it is read; a small recording is read once, into memory, for the probe too.
    let file = path.clone();
    let hashed =
        tokio::task::spawn_blocking(move || -> std::io::Result<(u64, String, Option<Bytes>)> {
            use std::io::Read;
            let mut hasher = Sha256::new();
            let mut f = std::fs::File::open(&file)?;
            if f.metadata()?.len() <= SMALL_RECORDING {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)?;
                hasher.update(&bytes);
                let size = bytes.len() as u64;
                return Ok((size, hex::encode(hasher.finalize()), Some(bytes.into())));
            }
            let size = std::io::copy(&mut f, &mut hasher)?;
            Ok((size, hex::encode(hasher.finalize()), None))
        })
        .await
        .map_err(anyhow::Error::from)?;
    let (size, sha, bytes) = match hashed {
        Ok(hashed) => hashed,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing().into()),
        Err(e) => return Err(anyhow::Error::from(e).into()),
    };
    check_size(size, max)?;
    let info = probe(
        state,
        match bytes {
            Some(bytes) => Audio::Bytes(bytes),
            None => Audio::File(path),
        },
    )
    .await?;
    Ok(Checked {
        info,
        sha,
        size,
        declared_type: "application/octet-stream".into(),
        inline: None,
    })
}

fn already_submitted(other: &CallRecord) -> AppError {
    AppError::Conflict(format!(
        "recordingKey was already submitted, as call {}: an upload makes one call (create another upload for another call)",
        other.id
    ))
}

fn same_recording(existing: CallRecord, sha: &str) -> AppResult<(CallRecord, bool)> {
    if existing.recording_sha256.as_deref() == Some(sha) {
        Ok((existing, true))
    } else {
        Err(AppError::Conflict(
            "idempotencyKey was already used for a different recording".into(),
        ))
    }
}

pub async fn get_call(store: &Store, caller: &Caller, id: Uuid) -> AppResult<Option<CallRecord>> {
    get_call_columns(store, caller, id, &CallColumns::ALL).await
}

/// A call of the caller's tenant with only the large fields `cols` names.
pub async fn get_call_columns(
    store: &Store,
    caller: &Caller,
    id: Uuid,
    cols: &CallColumns,
) -> AppResult<Option<CallRecord>> {
    caller.require(Permission::ReadCalls)?;
    store.get_call_columns(caller.tenant_id, id, cols).await
}

/// Puts a failed call back on the queue.
pub async fn retry_call(state: &AppState, caller: &Caller, id: Uuid) -> AppResult<CallRecord> {
    caller.require(Permission::ManageCalls)?;
    match state.store.retry_call(caller.tenant_id, id).await? {
        Change::Done(call) => {
            state.relay_wakeup.notify_one();
            Ok(call)
        }
        Change::Refused(call) => Err(AppError::Conflict(format!(
            "only FAILED calls can be retried; this one is {}",
            call.status
        ))),
        Change::Missing => Err(AppError::not_found("call")),
    }
}

/// Queues a new analysis of a finished call by `analyzer` (the deployment's default when
/// `None`), keeping every earlier one. CONFLICT while an analysis is queued or running;
/// BAD_USER_INPUT for Gemini on a deployment without a Gemini key.
pub async fn reanalyze_call(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    analyzer: Option<crate::config::AnalyzerKind>,
) -> AppResult<CallRecord> {
    caller.require(Permission::ManageCalls)?;
    let kind = analyzer.unwrap_or(state.settings.analyzer);
    if kind == crate::config::AnalyzerKind::Gemini && state.gemini_analyzer.is_none() {
        return Err(AppError::bad_input(
            "Gemini is not configured on this deployment (no VOICEGRAPH_GEMINI_API_KEY); use analyzer: LOCAL",
        ));
    }
    match state
        .store
        .reanalyze_call(caller.tenant_id, id, kind.as_str())
        .await?
    {
        Change::Done(call) => {
            state.relay_wakeup.notify_one();
            Ok(call)
        }
        Change::Refused(call) => Err(AppError::Conflict(format!(
            "the call has an analysis {} already; re-analyse it once that ends",
            call.status.to_lowercase()
        ))),
        Change::Missing => Err(AppError::not_found("call")),
    }
}

/// Adds tags to a call (existing tags stay).
pub async fn tag_call(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    tags: Vec<String>,
) -> AppResult<CallRecord> {
    caller.require(Permission::TagCalls)?;
    let new_tags = check_tags(tags)?;
    let merge = |mut all: Vec<String>| {
        for t in new_tags {
            if !all.contains(&t) {
                all.push(t);
            }
        }
        check_tags(all)
    };
    match state.store.tag_call(caller.tenant_id, id, merge).await? {
        Change::Done(call) => {
            state.relay_wakeup.notify_one();
            Ok(call)
        }
        Change::Refused(_) | Change::Missing => Err(AppError::not_found("call")),
    }
}

/// Deletes a call with its segments and events; its recording and results are deleted through
/// the outbox. A `DELETED` event remains so that subscribers learn of it.
pub async fn delete_call(state: &AppState, caller: &Caller, id: Uuid) -> AppResult<CallRecord> {
    caller.require(Permission::ManageCalls)?;
    match state.store.delete_call(caller.tenant_id, id).await? {
        Change::Done(call) => {
            state.relay_wakeup.notify_one();
            Ok(call)
        }
        Change::Refused(_) | Change::Missing => Err(AppError::not_found("call")),
    }
}

/// A filter as the store takes it: tags normalised, text bounded.
pub fn checked_filter(filter: &CallFilter) -> AppResult<CallFilter> {
    let mut f = filter.clone();
    f.tags = check_tags(f.tags)?;
    if let Some(text) = f.text.as_deref().map(str::trim) {
        if text.chars().count() > 200 {
            return Err(AppError::bad_input(
                "text filter is longer than 200 characters",
            ));
        }
    }
    Ok(f)
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

fn encode_cursor(call: &CallRecord, field: OrderField) -> String {
    let t = field.value_of(call);
    let json = serde_json::to_vec(&Cursor { t, id: call.id }).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(s: &str) -> AppResult<Keyset> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| serde_json::from_slice::<Cursor>(&b).ok())
        .map(|c| Keyset { t: c.t, id: c.id })
        .ok_or_else(|| AppError::bad_input("invalid cursor"))
}

/// One page of calls.
pub struct CallPage {
    pub calls: Vec<(String, std::sync::Arc<CallRecord>)>,
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
    cols: &CallColumns,
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
    let filter = checked_filter(filter)?;
    let query = PageQuery {
        order: order.field,
        descending: order.descending,
        after: page.after.as_deref().map(decode_cursor).transpose()?,
        before: page.before.as_deref().map(decode_cursor).transpose()?,
        backward,
        limit,
    };
    let mut rows = state
        .store
        .list_calls(caller.tenant_id, &filter, &query, cols)
        .await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    if backward {
        rows.reverse();
    }
    Ok(CallPage {
        calls: rows
            .into_iter()
            .map(|c| (encode_cursor(&c, order.field), std::sync::Arc::new(c)))
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
    state
        .store
        .count_calls(caller.tenant_id, &checked_filter(filter)?)
        .await
}

/// Segments of some calls (for a DataLoader), in order.
pub async fn segments_of_calls(
    store: &Store,
    tenant: Uuid,
    call_ids: &[Uuid],
) -> anyhow::Result<Vec<SegmentRecord>> {
    store.segments_of_calls(tenant, call_ids).await
}

/// Calls by id (for a DataLoader).
pub async fn calls_by_ids(
    store: &Store,
    tenant: Uuid,
    ids: &[Uuid],
) -> anyhow::Result<Vec<CallRecord>> {
    store.calls_by_ids(tenant, ids).await
}
