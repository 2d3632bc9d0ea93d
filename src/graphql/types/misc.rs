//! Inputs, payloads, statistics and admin types.

use async_graphql::{Enum, InputObject, SimpleObject, Upload, ID};

use super::Call;
use crate::domain::{
    CallDirection, CallEventKind, CallStatus, SentimentLabel, TranscriptInput,
    TranscriptSegmentInput,
};
use crate::graphql::scalars::{Json, Timestamp};
use crate::services::audit::AuditAction;
use crate::services::auth::Role;
use crate::services::stats::Stats;

/// A recording to upload before submitting it by key (`createRecordingUpload`).
#[derive(InputObject)]
pub struct CreateRecordingUploadInput {
    /// The recording's MIME type: `audio/wav`, `audio/x-wav`, `audio/wave`, `audio/vnd.wave`,
    /// `audio/flac`, `audio/x-flac`, `audio/mpeg`, `audio/mp3`, `audio/ogg`, `audio/vorbis` or
    /// `application/octet-stream` (parameters such as `;codecs=…` are ignored; another type is
    /// BAD_USER_INPUT). It is bound into the upload URL's signature.
    pub content_type: String,
    /// The file's exact size in bytes, from 1 to the server's recording limit (200 MiB unless
    /// configured; BAD_USER_INPUT otherwise). It is bound into the signature, so the upload must
    /// be exactly this long.
    pub byte_size: i64,
    /// The file's name, for your reference: checked (at most 255 characters, no control
    /// characters) but not stored.
    pub file_name: Option<String>,
}

/// An HTTP header.
#[derive(SimpleObject)]
pub struct HttpHeader {
    /// The header's name, e.g. `Content-Type`.
    pub name: String,
    /// Its value, to send exactly as given.
    pub value: String,
}

/// Where and how to upload a recording before `submitCall(input: {recordingKey})`: send the
/// file's bytes as the body of an HTTP `method` request to `uploadUrl` with exactly `headers`,
/// before `expiresAt`. The URL is signed; it needs no API key. It uploads once: a second
/// upload with it is refused (409 from this server's own store, 412 from S3), so an upload
/// that went wrong needs a new `createRecordingUpload`.
#[derive(SimpleObject)]
pub struct RecordingUpload {
    /// The key to pass as `SubmitCallInput.recordingKey` once the upload has succeeded.
    pub recording_key: String,
    /// The signed URL to send the file to.
    pub upload_url: String,
    /// The HTTP method to use: `PUT`.
    pub method: String,
    /// Headers the upload must carry, exactly as given (among them `Content-Type` and
    /// `Content-Length`, which the signature covers, and on S3 `If-None-Match: *`, which makes
    /// the URL upload once).
    pub headers: Vec<HttpHeader>,
    /// When the upload URL stops accepting the file.
    pub expires_at: Timestamp,
}

/// One utterance of a submitted transcript.
#[derive(InputObject)]
#[graphql(name = "TranscriptSegmentInput")]
pub struct TranscriptSegmentInputGql {
    /// Who spoke. A channel's speaker name (see `SubmitCallInput.channels`, matched ignoring
    /// case) ties the text to that channel's speech; under another name, the text goes to the
    /// speech that fits its time, or else to the next speech.
    pub speaker: String,
    /// Start, in milliseconds from the beginning of the recording; with `endMs`,
    /// 0 <= startMs <= endMs (BAD_USER_INPUT otherwise). Timed utterances go to the speech they
    /// overlap most; untimed ones go in order to their speaker's next speech segment.
    pub start_ms: Option<i64>,
    /// End, in milliseconds from the beginning of the recording.
    pub end_ms: Option<i64>,
    /// What was said.
    pub text: String,
}

/// A transcript the integrator already has; the analysis attaches its text to the speech it
/// detects. Give `segments` or `text` (when both are given, `segments` are used). At most 1 MiB
/// of text and 20000 segments (BAD_USER_INPUT otherwise).
#[derive(InputObject)]
#[graphql(name = "TranscriptInput")]
pub struct TranscriptInputGql {
    /// Free text, one utterance per line; lines like `Agent: words` are attributed to the
    /// speaker of that name.
    pub text: Option<String>,
    /// BCP-47 language tag of the transcript, e.g. `en-GB`; `SubmitCallInput.language` wins
    /// when both are given.
    pub language: Option<String>,
    /// Utterances, with or without times. Default: none.
    #[graphql(default)]
    pub segments: Vec<TranscriptSegmentInputGql>,
}

impl From<TranscriptInputGql> for TranscriptInput {
    fn from(t: TranscriptInputGql) -> Self {
        Self {
            text: t.text,
            language: t.language,
            segments: t
                .segments
                .into_iter()
                .map(|s| TranscriptSegmentInput {
                    speaker: s.speaker,
                    start_ms: s.start_ms,
                    end_ms: s.end_ms,
                    text: s.text,
                })
                .collect(),
        }
    }
}

/// A call to analyse: exactly one of `recording` (a multipart upload) or `recordingKey` (from
/// `createRecordingUpload`), plus what you know about the call. Text fields are trimmed, blank
/// ones count as not given, and control characters in them are BAD_USER_INPUT.
#[derive(InputObject)]
pub struct SubmitCallInput {
    /// The recording as a file of a GraphQL multipart request, up to the server's recording
    /// limit (200 MiB unless configured). Its content type must be one of those
    /// `CreateRecordingUploadInput.contentType` lists, or absent, and its bytes must decode as
    /// audio (BAD_USER_INPUT otherwise).
    pub recording: Option<Upload>,
    /// The `recordingKey` from `createRecordingUpload`, once the file is uploaded. The upload is
    /// copied to the call's own storage, where no URL can write, and checked and hashed there
    /// (see `Recording.sha256`); the call is analysed from that copy. NOT_FOUND for another
    /// tenant's upload; BAD_USER_INPUT when it is not an upload key, nothing was uploaded there,
    /// or the bytes do not decode as audio; CONFLICT when the upload was already submitted (an
    /// upload makes one call; the same `idempotencyKey` again returns that call).
    pub recording_key: Option<String>,
    /// Your own id for the call, at most 200 characters.
    pub external_id: Option<String>,
    /// Who placed the call.
    pub direction: Option<CallDirection>,
    /// The calling party, e.g. a phone number; at most 64 characters, stored as given.
    pub from: Option<String>,
    /// The called party, e.g. a phone number; at most 64 characters, stored as given.
    pub to: Option<String>,
    /// The agent's name or id, at most 200 characters.
    pub agent: Option<String>,
    /// When the call itself started.
    pub started_at: Option<Timestamp>,
    /// Tags to start with: each 1 to 64 characters of letters, digits, spaces and `- _ . : /`,
    /// at most 50; duplicates are dropped. Default: none.
    #[graphql(default)]
    pub tags: Vec<String>,
    /// Any JSON object of your own, up to 64 KiB serialised, returned as `Call.metadata`
    /// (another JSON type is BAD_USER_INPUT).
    pub metadata: Option<Json>,
    /// Speaker names per channel, left first: at most 2, each at most 64 characters. Defaults:
    /// stereo `agent` (left) and `customer` (right), mono `speaker`.
    pub channels: Option<Vec<String>>,
    /// A transcript you already have; its text is attached to the speech the analysis detects.
    pub transcript: Option<TranscriptInputGql>,
    /// BCP-47 language tag of the call, e.g. `en-GB` (at most 35 characters), if known.
    pub language: Option<String>,
    /// Makes retrying a submission safe: submitting again with the same key (at most 200
    /// characters, per tenant) and the same recording returns the first call with
    /// `deduplicated: true` and creates nothing; with a different recording it is CONFLICT.
    pub idempotency_key: Option<String>,
    /// Changes to the tenant's redaction policy (`redactionPolicy`) for this call; fields left
    /// out are as the tenant's. BAD_USER_INPUT for `deleteOriginal` without `audio`.
    pub redaction: Option<crate::graphql::redaction::RedactionOverrideInput>,
}

/// The result of `submitCall`.
#[derive(SimpleObject)]
pub struct SubmitCallPayload {
    /// The new call (`QUEUED`), or the earlier one when `deduplicated`.
    pub call: Call,
    /// True when the idempotency key was used before: the earlier call is returned and nothing
    /// new was created.
    pub deduplicated: bool,
}

/// The result of `deleteCall`.
#[derive(SimpleObject)]
pub struct DeleteCallPayload {
    /// The id of the deleted call.
    pub deleted_id: ID,
}

/// What to sort calls by.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Default)]
pub enum CallOrderField {
    /// Submission time (`createdAt`).
    #[default]
    CreatedAt,
    /// Time of the last change (`updatedAt`). A call moves in this order whenever it changes,
    /// so paging while calls change can skip or repeat one.
    UpdatedAt,
}

/// Sort direction.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Default)]
pub enum OrderDirection {
    /// Ascending: oldest first.
    Asc,
    /// Descending: newest first.
    #[default]
    Desc,
}

/// How to sort a listing of calls; calls with equal times are ordered by id, so that pages never
/// skip or repeat one.
#[derive(InputObject, Default)]
pub struct CallOrder {
    /// What to sort by. Default: `CREATED_AT`.
    #[graphql(default)]
    pub field: CallOrderField,
    /// Which way. Default: `DESC` (newest first).
    #[graphql(default)]
    pub direction: OrderDirection,
}

/// Selects calls of the caller's tenant. Every condition given must hold; a list matches any of
/// its values; an omitted or null condition matches every call.
#[derive(InputObject, Default)]
pub struct CallFilter {
    /// Calls in any of these statuses.
    pub status: Option<Vec<CallStatus>>,
    /// Calls carrying all of these tags (each a valid tag, BAD_USER_INPUT otherwise).
    pub tags: Option<Vec<String>>,
    /// Calls with any of these directions; calls submitted without one do not match.
    pub direction: Option<Vec<CallDirection>>,
    /// Calls whose `agent` is exactly this.
    pub agent: Option<String>,
    /// Calls whose `externalId` is exactly this.
    pub external_id: Option<String>,
    /// Calls submitted at or after this time.
    pub created_after: Option<Timestamp>,
    /// Calls submitted before this time.
    pub created_before: Option<Timestamp>,
    /// Calls that started at or after this time; calls without `startedAt` do not match.
    pub started_after: Option<Timestamp>,
    /// Calls that started before this time; calls without `startedAt` do not match.
    pub started_before: Option<Timestamp>,
    /// Calls whose summary or transcript text contains this, ignoring case (at most 200
    /// characters; blank is ignored).
    pub text: Option<String>,
}

impl From<CallFilter> for crate::services::calls::CallFilter {
    fn from(f: CallFilter) -> Self {
        Self {
            statuses: f.status.unwrap_or_default(),
            tags: f.tags.unwrap_or_default(),
            directions: f.direction.unwrap_or_default(),
            agent: f.agent,
            external_id: f.external_id,
            created_after: f.created_after.map(Into::into),
            created_before: f.created_before.map(Into::into),
            started_after: f.started_after.map(Into::into),
            started_before: f.started_before.map(Into::into),
            text: f.text,
        }
    }
}

/// Selects the events `callEvents` delivers, within the caller's tenant. Every condition given
/// must hold; a list matches any of its values; an omitted or null condition matches every
/// event.
#[derive(InputObject, Default)]
pub struct CallEventFilter {
    /// Only this call's events (BAD_USER_INPUT when it is not a valid ID).
    pub call_id: Option<ID>,
    /// Only events of these kinds, e.g. `[COMPLETED, FAILED]` (at most 20 entries).
    pub kinds: Option<Vec<CallEventKind>>,
    /// Only events after which the call has one of these statuses.
    pub status: Option<Vec<CallStatus>>,
}

/// How many of the selected calls have one status.
#[derive(SimpleObject)]
pub struct StatusCount {
    /// The status.
    pub status: CallStatus,
    /// Calls in it.
    pub count: i64,
}

/// How many of the selected calls have one sentiment label.
#[derive(SimpleObject)]
pub struct LabelCount {
    /// The label.
    pub label: SentimentLabel,
    /// Calls with it.
    pub count: i64,
}

/// Speech time of one speaker name, summed over the selected calls.
#[derive(SimpleObject)]
pub struct SpeakerTotal {
    /// The speaker's name (see `Call.channels`); calls that use the same name add up.
    pub speaker: String,
    /// Their speech time, in milliseconds.
    pub total_ms: f64,
    /// Their share of all speech in the selected calls, from 0 to 1 (0 when there was none).
    pub share: f64,
}

/// The selected calls submitted on one day (UTC).
#[derive(SimpleObject)]
pub struct DailyCallStats {
    /// The day, `YYYY-MM-DD` (UTC), of submission (`createdAt`).
    pub date: String,
    /// Calls submitted that day.
    pub total: i64,
    /// Of them, the ones `COMPLETED` now.
    pub completed: i64,
    /// Of them, the ones `FAILED` now.
    pub failed: i64,
    /// Sum of their known durations, in milliseconds.
    pub total_duration_ms: f64,
    /// Mean sentiment score (-1 to 1) of those that have one; null when none has.
    pub average_sentiment: Option<f64>,
}

/// Aggregates over the calls a filter selects. Durations are in milliseconds, as floats, since
/// sums can exceed a GraphQL `Int`. Metrics (talk time, silence, overlap, interruptions) and
/// sentiment count only calls that have them, which in practice are the `COMPLETED` ones.
#[derive(SimpleObject)]
pub struct CallStats {
    /// How many calls the filter selects.
    pub total: i64,
    /// Calls per status, sorted by status name; statuses without calls are left out.
    pub by_status: Vec<StatusCount>,
    /// Calls per sentiment label, sorted by label; labels without calls, and calls without
    /// sentiment, are left out.
    pub by_sentiment: Vec<LabelCount>,
    /// Sum of the known durations, in milliseconds.
    pub total_duration_ms: f64,
    /// Mean duration of the calls whose duration is known, in milliseconds; null when none is.
    pub average_duration_ms: Option<f64>,
    /// Speech time per speaker name, in the order the names first appear.
    pub talk_time: Vec<SpeakerTotal>,
    /// Total time in which no one speaks, in milliseconds.
    pub total_silence_ms: f64,
    /// Total time in which two speakers speak at once, in milliseconds.
    pub total_overlap_ms: f64,
    /// Total interruptions (a speaker starting while another is mid-turn).
    pub interruptions: i64,
    /// Mean sentiment score (-1 to 1) of the calls that have one; null when none has.
    pub average_sentiment: Option<f64>,
    /// One entry per UTC day of submission that has calls, oldest first; days without calls are
    /// left out.
    pub daily: Vec<DailyCallStats>,
    /// Tokens models spent on the selected calls, every analysis of each counted (re-analyses
    /// too: what was spent); calls only the local analyser analysed spend none.
    pub tokens: TokenTotals,
}

/// Tokens a model spent on one analysis, as its API reported them.
#[derive(SimpleObject)]
#[graphql(name = "TokenUsage")]
pub struct TokenUsageGql {
    /// Tokens of the request: the audio (32 per second per channel part) and the instructions.
    pub prompt_tokens: f64,
    /// Tokens of the answer, thinking included.
    pub output_tokens: f64,
    /// All tokens billed, as the API counts them.
    pub total_tokens: f64,
}

/// Tokens spent by a model, summed; floats, since sums can exceed a GraphQL `Int`.
#[derive(SimpleObject)]
pub struct TokenTotals {
    /// Tokens of the requests: audio and instructions.
    pub prompt_tokens: f64,
    /// Tokens of the answers, thinking included.
    pub output_tokens: f64,
    /// All tokens billed, as the API counts them.
    pub total_tokens: f64,
    /// How many of the calls a model analysed, once or more.
    pub analysed_calls: i64,
    /// Total tokens per minute of those calls' audio: the cost per call-minute, re-analyses
    /// included; null when no call was analysed by a model.
    pub tokens_per_call_minute: Option<f64>,
}

fn avg(sum: f64, n: i64) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}

impl From<Stats> for CallStats {
    fn from(s: Stats) -> Self {
        let speech: i64 = s.talk_time.iter().map(|(_, ms)| ms).sum();
        Self {
            total: s.total,
            by_status: s
                .by_status
                .into_iter()
                .map(|(status, count)| StatusCount { status, count })
                .collect(),
            by_sentiment: s
                .by_sentiment
                .into_iter()
                .map(|(label, count)| LabelCount { label, count })
                .collect(),
            total_duration_ms: s.total_duration_ms as f64,
            average_duration_ms: avg(s.total_duration_ms as f64, s.measured_calls),
            talk_time: s
                .talk_time
                .into_iter()
                .map(|(speaker, ms)| SpeakerTotal {
                    speaker,
                    total_ms: ms as f64,
                    share: if speech > 0 {
                        ms as f64 / speech as f64
                    } else {
                        0.0
                    },
                })
                .collect(),
            total_silence_ms: s.silence_ms as f64,
            total_overlap_ms: s.overlap_ms as f64,
            interruptions: s.interruptions,
            average_sentiment: avg(s.sentiment_sum, s.sentiment_n),
            daily: s
                .daily
                .into_iter()
                .map(|d| DailyCallStats {
                    date: d.date.to_string(),
                    total: d.total,
                    completed: d.completed,
                    failed: d.failed,
                    total_duration_ms: d.duration_ms as f64,
                    average_sentiment: avg(d.sentiment_sum, d.sentiment_n),
                })
                .collect(),
            tokens: TokenTotals {
                prompt_tokens: s.tokens.prompt_tokens as f64,
                output_tokens: s.tokens.output_tokens as f64,
                total_tokens: s.tokens.total_tokens as f64,
                analysed_calls: s.model_calls,
                tokens_per_call_minute: (s.model_duration_ms > 0).then(|| {
                    s.tokens.total_tokens as f64 / (s.model_duration_ms as f64 / 60_000.0)
                }),
            },
        }
    }
}

/// A tenant: an organisation whose calls, keys and events are kept apart from every other's.
#[derive(SimpleObject)]
pub struct Tenant {
    /// The tenant's id (for `createApiKey(input: {tenantId})`).
    pub id: ID,
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created_at: Timestamp,
}

impl From<crate::domain::TenantRecord> for Tenant {
    fn from(t: crate::domain::TenantRecord) -> Self {
        Self {
            id: ID(t.id.to_string()),
            name: t.name,
            created_at: t.created_at.into(),
        }
    }
}

/// An API key; its secret is shown only once, when it is created.
#[derive(SimpleObject)]
pub struct ApiKey {
    /// The key's id (for `revokeApiKey`); not the secret.
    pub id: ID,
    /// The tenant the key acts for.
    pub tenant_id: ID,
    /// The name given at creation, for people to recognise the key by.
    pub name: String,
    /// The first 10 characters of the secret (`vg_` and 7 more), to recognise it.
    pub prefix: String,
    /// What the key may do.
    pub role: Role,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was revoked; null while it works.
    pub revoked_at: Option<Timestamp>,
    /// When it last authenticated a request, to within a minute; null if never.
    pub last_used_at: Option<Timestamp>,
}

impl From<crate::domain::ApiKeyRecord> for ApiKey {
    fn from(k: crate::domain::ApiKeyRecord) -> Self {
        Self {
            id: ID(k.id.to_string()),
            tenant_id: ID(k.tenant_id.to_string()),
            name: k.name,
            prefix: k.prefix,
            role: Role::parse(&k.role).unwrap_or(Role::Viewer),
            created_at: k.created_at.into(),
            revoked_at: k.revoked_at.map(Into::into),
            last_used_at: k.last_used_at.map(Into::into),
        }
    }
}

/// A new tenant (`createTenant`).
#[derive(InputObject)]
pub struct CreateTenantInput {
    /// Its name: 1 to 100 characters after trimming, no control characters (BAD_USER_INPUT
    /// otherwise).
    pub name: String,
}

/// The result of `createTenant`.
#[derive(SimpleObject)]
pub struct CreateTenantPayload {
    /// The new tenant; it has no keys yet: create one with `createApiKey(input: {tenantId})`.
    pub tenant: Tenant,
}

/// A new API key (`createApiKey`).
#[derive(InputObject)]
pub struct CreateApiKeyInput {
    /// The tenant the key acts for. Default: the caller's tenant; another tenant needs the
    /// platform admin (FORBIDDEN otherwise) and must exist (NOT_FOUND otherwise).
    pub tenant_id: Option<ID>,
    /// What the key may do.
    pub role: Role,
    /// A name to recognise the key by: 1 to 100 characters after trimming, no control characters
    /// (BAD_USER_INPUT otherwise).
    pub name: String,
}

/// The result of `createApiKey`.
#[derive(SimpleObject)]
pub struct CreateApiKeyPayload {
    /// The key itself (`vg_` and 40 letters and digits); send it as
    /// `Authorization: Bearer <secret>`. Only a hash is stored, so it cannot be shown again.
    pub secret: String,
    /// The new key's record.
    pub api_key: ApiKey,
}

/// Who is calling.
#[derive(SimpleObject)]
pub struct Viewer {
    /// The caller's tenant.
    pub tenant: Tenant,
    /// The caller's role.
    pub role: Role,
    /// Whether the caller is the platform admin (the bootstrap key), who may create tenants and
    /// keys for any tenant.
    pub platform_admin: bool,
}

/// Who made a change recorded in the audit log. For a change the service made itself (the
/// tenant `default` and its platform-admin key, created at first start) every field but
/// `platformAdmin` is null.
#[derive(SimpleObject)]
pub struct AuditActor {
    /// The API key that made the change (`ApiKey.id`); null when a JWT (or the service) did.
    pub key_id: Option<ID>,
    /// The JWT's `sub` when a JWT made the change; null otherwise.
    pub subject: Option<String>,
    /// The actor's role at the time.
    pub role: Option<Role>,
    /// Whether the actor was the platform admin (who may act on any tenant).
    pub platform_admin: bool,
    /// The actor's own tenant, which differs from the entry's when the platform admin acted on
    /// another tenant.
    pub tenant_id: Option<ID>,
}

/// One change to a tenant or its keys, as the audit log recorded it in the change's own
/// transaction.
#[derive(SimpleObject)]
pub struct AuditEntry {
    /// The entry's id; entries are numbered in the order they were written.
    pub id: ID,
    /// The tenant the change concerns.
    pub tenant_id: ID,
    /// What changed.
    pub action: AuditAction,
    /// The id of what changed: the key's for `API_KEY_*`, the tenant's for `TENANT_*`.
    pub target: ID,
    /// Who made the change.
    pub actor: AuditActor,
    /// Particulars of the change, an object (see the action); never a secret.
    pub details: Option<Json>,
    /// When the change was made.
    pub at: Timestamp,
}

impl From<crate::domain::AuditRecord> for AuditEntry {
    fn from(e: crate::domain::AuditRecord) -> Self {
        Self {
            id: ID(e.id.to_string()),
            tenant_id: ID(e.tenant_id.to_string()),
            // Rows are only written by the store's key and tenant methods, with a known action.
            action: AuditAction::parse(&e.action).unwrap_or(AuditAction::TenantCreated),
            target: ID(e.target),
            actor: AuditActor {
                key_id: e.actor_key_id.map(|k| ID(k.to_string())),
                subject: e.actor_subject,
                role: e.actor_role.as_deref().and_then(Role::parse),
                platform_admin: e.actor_platform_admin,
                tenant_id: e.actor_tenant_id.map(|t| ID(t.to_string())),
            },
            details: e.details.map(Json),
            at: e.created_at.into(),
        }
    }
}

/// A page of the audit log, newest entries first.
#[derive(SimpleObject)]
pub struct AuditLogPage {
    /// The page's entries, newest first.
    pub entries: Vec<AuditEntry>,
    /// Whether older entries follow: pass `endCursor` as `after` for them.
    pub has_next_page: bool,
    /// The last entry's cursor; null when the page is empty.
    pub end_cursor: Option<String>,
}
