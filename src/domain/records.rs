//! What the store returns: plain rows of voicegraph's data, free of the ORM. Services, resolvers,
//! the worker and the relay work with these; only `crate::store` knows the tables behind them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Which of a call's large fields (texts and JSON) a read fetches; the small ones always are.
/// A field left out reads as empty (`None`, or an empty list), so a read names every field its
/// reader looks at: the GraphQL layer derives this from the query's selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallColumns {
    /// `transcript_text` and `transcript_input`.
    pub transcript: bool,
    pub summary: bool,
    pub topics: bool,
    pub action_items: bool,
    pub issues: bool,
    pub intent: bool,
    /// `category_matches`.
    pub categories: bool,
    pub metrics: bool,
    pub tags: bool,
    pub metadata: bool,
    pub error: bool,
    pub channels: bool,
}

impl CallColumns {
    /// Every column: what a read that does not know its reader fetches.
    pub const ALL: Self = Self {
        transcript: true,
        summary: true,
        topics: true,
        action_items: true,
        issues: true,
        intent: true,
        categories: true,
        metrics: true,
        tags: true,
        metadata: true,
        error: true,
        channels: true,
    };
    /// The small columns only.
    pub const NONE: Self = Self {
        transcript: false,
        summary: false,
        topics: false,
        action_items: false,
        issues: false,
        intent: false,
        categories: false,
        metrics: false,
        tags: false,
        metadata: false,
        error: false,
        channels: false,
    };
}

/// A call as stored: its metadata, where its recording and results are, and what the analysis
/// found.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub external_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub status: String,
    pub direction: Option<String>,
    pub from_number: Option<String>,
    pub to_number: Option<String>,
    pub agent: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub channels: Option<serde_json::Value>,
    pub recording_key: Option<String>,
    pub recording_type: Option<String>,
    pub recording_bytes: Option<i64>,
    pub recording_sha256: Option<String>,
    pub result_key: Option<String>,
    pub language: Option<String>,
    pub transcript_text: Option<String>,
    pub transcript_input: Option<serde_json::Value>,
    pub summary: Option<String>,
    pub sentiment_score: Option<f64>,
    pub sentiment_label: Option<String>,
    pub topics: serde_json::Value,
    pub action_items: serde_json::Value,
    pub metrics: Option<serde_json::Value>,
    pub tags: serde_json::Value,
    pub metadata: Option<serde_json::Value>,
    pub analyzer: Option<String>,
    pub attempts: i32,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The signed upload the recording was copied from at submission, if it came that way.
    pub upload_key: Option<String>,
    /// Tokens a model spent on the latest analysis (none for the local analyser).
    pub usage: Option<super::TokenUsage>,
    /// The analysis running or last run.
    pub current_analysis_id: Option<Uuid>,
    /// Quotes (`[{text, segments}]`) of the problems the caller raised.
    pub issues: Option<serde_json::Value>,
    pub intent: Option<String>,
    /// A `CallOutcome` name.
    pub outcome: Option<String>,
    /// The categories that matched (`[CategoryMatch]`).
    pub category_matches: Option<serde_json::Value>,
    /// The redaction policy the call was submitted under, if any applies.
    pub redaction: Option<super::redaction::RedactionPolicy>,
    /// What redaction found (`[RedactionSpan]`), once analysed under a policy.
    pub redactions: Option<serde_json::Value>,
    /// The original recording, kept when the audio was redacted without deleting it.
    pub original_recording_key: Option<String>,
}

impl CallRecord {
    /// The categories its latest successful analysis matched.
    pub fn categories(&self) -> Vec<super::CategoryMatch> {
        self.category_matches
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }
}

/// One analysis of a call, as kept: every analysis is, the call showing the latest successful.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub call_id: Uuid,
    /// `local` or `gemini`; `None` for the worker's default (an analysis backfilled while waiting).
    pub analyzer: Option<String>,
    pub model: Option<String>,
    pub prompt_version: Option<String>,
    /// A call status name.
    pub status: String,
    pub error: Option<String>,
    pub attempts: i32,
    pub result_key: Option<String>,
    pub model_responses_key: Option<String>,
    pub usage: Option<super::TokenUsage>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A tenant's category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub instructions: Option<String>,
    pub keywords: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CategoryRecord {
    /// The category as an analysis is given it.
    pub fn rule(&self) -> super::CategoryRule {
        super::CategoryRule {
            id: self.id,
            name: self.name.clone(),
            instructions: self.instructions.clone(),
            keywords: self.keywords.clone(),
        }
    }
}

/// One stored transcript segment of a call, in order (`idx`).
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRecord {
    pub call_id: Uuid,
    pub idx: i32,
    pub speaker: String,
    pub channel: i32,
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: Option<String>,
    pub sentiment: Option<f64>,
    pub grounded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// An API key as stored: its hash and display prefix, never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub role: String,
    pub platform_admin: bool,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Who made a change recorded in the audit log (`None` where the service itself did).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actor {
    pub tenant_id: Uuid,
    pub key_id: Option<Uuid>,
    pub subject: Option<String>,
    pub role: String,
    pub platform_admin: bool,
}

/// One entry of a tenant's audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub tenant_id: Uuid,
    pub actor_tenant_id: Option<Uuid>,
    pub actor_key_id: Option<Uuid>,
    pub actor_subject: Option<String>,
    pub actor_role: Option<String>,
    pub actor_platform_admin: bool,
    pub action: String,
    pub target: String,
    pub details: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

/// A row of the transactional outbox, waiting to be delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    pub id: i64,
    pub destination: String,
    pub payload: serde_json::Value,
    pub attempts: i32,
    /// When it became (or becomes) due for delivery.
    pub available_at: DateTime<Utc>,
}

/// What statistics aggregate of one call: created at, status, duration, sentiment score and
/// label, the talk-time metrics as stored, and the prompt, output and total tokens spent.
pub type StatsRow = (
    DateTime<Utc>,
    String,
    Option<i64>,
    Option<f64>,
    Option<String>,
    Option<serde_json::Value>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// Which events a subscriber wants, within its tenant.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub call_id: Option<Uuid>,
    pub kinds: Vec<String>,
    pub statuses: Vec<super::CallStatus>,
}

impl EventFilter {
    pub fn matches(&self, tenant_id: Uuid, e: &super::EventEnvelope) -> bool {
        e.tenant_id == tenant_id
            && self.call_id.is_none_or(|c| c == e.call_id)
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && (self.statuses.is_empty() || self.statuses.contains(&e.status))
    }
}
