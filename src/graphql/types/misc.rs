//! Inputs, payloads, statistics and admin types.

use async_graphql::{Enum, InputObject, SimpleObject, Upload, ID};
use chrono::{DateTime, Utc};
use entities::{api_keys, tenants};

use super::Call;
use crate::domain::{CallDirection, CallStatus, TranscriptInput, TranscriptSegmentInput};
use crate::services::auth::Role;
use crate::services::stats::Stats;

#[derive(InputObject)]
pub struct CreateRecordingUploadInput {
    /// The recording's MIME type, e.g. `audio/wav`; it is bound into the upload URL's signature.
    pub content_type: String,
    /// Exact size in bytes; bound into the signature.
    pub byte_size: i64,
    pub file_name: Option<String>,
}

#[derive(SimpleObject)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// Where and how to upload a recording before `submitCall(input: {recordingKey})`.
#[derive(SimpleObject)]
pub struct RecordingUpload {
    pub recording_key: String,
    pub upload_url: String,
    pub method: String,
    /// Headers the upload must carry, exactly.
    pub headers: Vec<HttpHeader>,
    pub expires_at: DateTime<Utc>,
}

#[derive(InputObject)]
#[graphql(name = "TranscriptSegmentInput")]
pub struct TranscriptSegmentInputGql {
    pub speaker: String,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub text: String,
}

/// A transcript the integrator already has.
#[derive(InputObject)]
#[graphql(name = "TranscriptInput")]
pub struct TranscriptInputGql {
    /// Free text; lines like `Agent: words` are attributed to that speaker.
    pub text: Option<String>,
    pub language: Option<String>,
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

/// A call to analyse: exactly one of `recording` (multipart upload) or `recordingKey`.
#[derive(InputObject)]
pub struct SubmitCallInput {
    /// The recording as a GraphQL multipart upload.
    pub recording: Option<Upload>,
    /// The key returned by `createRecordingUpload`, once the upload is done.
    pub recording_key: Option<String>,
    pub external_id: Option<String>,
    pub direction: Option<CallDirection>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub agent: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    #[graphql(default)]
    pub tags: Vec<String>,
    /// Any JSON object, up to 64 KiB.
    pub metadata: Option<async_graphql::Json<serde_json::Value>>,
    /// Speaker names per channel: stereo defaults to `agent` (left) and `customer` (right), mono to `speaker`.
    pub channels: Option<Vec<String>>,
    pub transcript: Option<TranscriptInputGql>,
    /// BCP-47 language of the call, if known.
    pub language: Option<String>,
    /// Repeating a submission with the same key returns the first call (`deduplicated: true`).
    pub idempotency_key: Option<String>,
}

#[derive(SimpleObject)]
pub struct SubmitCallPayload {
    pub call: Call,
    /// True when this key was submitted before and the earlier call is returned.
    pub deduplicated: bool,
}

#[derive(SimpleObject)]
pub struct DeleteCallPayload {
    pub deleted_id: ID,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Default)]
pub enum CallOrderField {
    #[default]
    CreatedAt,
    UpdatedAt,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Default)]
pub enum OrderDirection {
    Asc,
    #[default]
    Desc,
}

#[derive(InputObject, Default)]
pub struct CallOrder {
    #[graphql(default)]
    pub field: CallOrderField,
    #[graphql(default)]
    pub direction: OrderDirection,
}

#[derive(InputObject, Default)]
pub struct CallFilter {
    pub status: Option<Vec<CallStatus>>,
    /// Calls carrying all of these tags.
    pub tags: Option<Vec<String>>,
    pub direction: Option<Vec<CallDirection>>,
    pub agent: Option<String>,
    pub external_id: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub started_after: Option<DateTime<Utc>>,
    pub started_before: Option<DateTime<Utc>>,
    /// Case-insensitive text in the summary or transcript.
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
            created_after: f.created_after,
            created_before: f.created_before,
            started_after: f.started_after,
            started_before: f.started_before,
            text: f.text,
        }
    }
}

#[derive(InputObject, Default)]
pub struct CallEventFilter {
    pub call_id: Option<ID>,
    /// Event kinds, e.g. `COMPLETED`.
    pub kinds: Option<Vec<String>>,
    pub status: Option<Vec<CallStatus>>,
}

#[derive(SimpleObject)]
pub struct StatusCount {
    pub status: CallStatus,
    pub count: i64,
}

#[derive(SimpleObject)]
pub struct LabelCount {
    pub label: String,
    pub count: i64,
}

#[derive(SimpleObject)]
pub struct SpeakerTotal {
    pub speaker: String,
    pub total_ms: f64,
    /// Share of all speech, from 0 to 1.
    pub share: f64,
}

#[derive(SimpleObject)]
pub struct DailyCallStats {
    /// `YYYY-MM-DD` (UTC) of submission.
    pub date: String,
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    pub total_duration_ms: f64,
    pub average_sentiment: Option<f64>,
}

/// Aggregates over the calls a filter selects.
#[derive(SimpleObject)]
pub struct CallStats {
    pub total: i64,
    pub by_status: Vec<StatusCount>,
    pub by_sentiment: Vec<LabelCount>,
    pub total_duration_ms: f64,
    pub average_duration_ms: Option<f64>,
    pub talk_time: Vec<SpeakerTotal>,
    pub total_silence_ms: f64,
    pub total_overlap_ms: f64,
    pub interruptions: i64,
    pub average_sentiment: Option<f64>,
    pub daily: Vec<DailyCallStats>,
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
        }
    }
}

#[derive(SimpleObject)]
pub struct Tenant {
    pub id: ID,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl From<tenants::Model> for Tenant {
    fn from(t: tenants::Model) -> Self {
        Self {
            id: ID(t.id.to_string()),
            name: t.name,
            created_at: t.created_at,
        }
    }
}

/// An API key; its secret is shown only once, when it is created.
#[derive(SimpleObject)]
pub struct ApiKey {
    pub id: ID,
    pub tenant_id: ID,
    pub name: String,
    /// The first characters of the secret, to recognise it.
    pub prefix: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<api_keys::Model> for ApiKey {
    fn from(k: api_keys::Model) -> Self {
        Self {
            id: ID(k.id.to_string()),
            tenant_id: ID(k.tenant_id.to_string()),
            name: k.name,
            prefix: k.prefix,
            role: Role::parse(&k.role).unwrap_or(Role::Viewer),
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
        }
    }
}

#[derive(InputObject)]
pub struct CreateTenantInput {
    pub name: String,
}

#[derive(SimpleObject)]
pub struct CreateTenantPayload {
    pub tenant: Tenant,
}

#[derive(InputObject)]
pub struct CreateApiKeyInput {
    /// Defaults to the caller's tenant; other tenants need the platform admin.
    pub tenant_id: Option<ID>,
    pub role: Role,
    pub name: String,
}

#[derive(SimpleObject)]
pub struct CreateApiKeyPayload {
    /// The key itself. It is not stored and cannot be shown again.
    pub secret: String,
    pub api_key: ApiKey,
}

/// Who is calling.
#[derive(SimpleObject)]
pub struct Viewer {
    pub tenant: Tenant,
    pub role: Role,
    pub platform_admin: bool,
}
