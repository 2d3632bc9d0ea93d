//! A submitted call, its status and the results of its analysis.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "calls")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub external_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub status: String,
    pub direction: Option<String>,
    pub from_number: Option<String>,
    pub to_number: Option<String>,
    pub agent: Option<String>,
    pub started_at: Option<DateTimeUtc>,
    pub duration_ms: Option<i64>,
    pub channels: Option<Json>,
    pub recording_key: Option<String>,
    pub recording_type: Option<String>,
    pub recording_bytes: Option<i64>,
    pub recording_sha256: Option<String>,
    pub result_key: Option<String>,
    pub language: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub transcript_text: Option<String>,
    pub transcript_input: Option<Json>,
    #[sea_orm(column_type = "Text", nullable)]
    pub summary: Option<String>,
    #[sea_orm(column_type = "Double", nullable)]
    pub sentiment_score: Option<f64>,
    pub sentiment_label: Option<String>,
    pub topics: Json,
    pub action_items: Json,
    pub metrics: Option<Json>,
    pub tags: Json,
    pub metadata: Option<Json>,
    pub analyzer: Option<String>,
    pub attempts: i32,
    #[sea_orm(column_type = "Text", nullable)]
    pub error: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub completed_at: Option<DateTimeUtc>,
    /// The signed upload the recording was copied from at submission, if it came that way.
    pub upload_key: Option<String>,
    /// Tokens a model spent on the latest analysis (null for the local analyser).
    pub prompt_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    /// The analysis running or last run (`analyses.id`).
    pub current_analysis_id: Option<Uuid>,
    /// What the latest successful analysis found besides the columns above: problems the caller
    /// raised (quotes), why they called, how the call ended, and the categories that matched.
    pub issues: Option<Json>,
    #[sea_orm(column_type = "Text", nullable)]
    pub intent: Option<String>,
    pub outcome: Option<String>,
    pub category_matches: Option<Json>,
    /// The redaction policy the call was submitted under (`RedactionPolicy`), null for none.
    pub redaction: Option<Json>,
    /// What redaction found and replaced (`[RedactionSpan]`).
    pub redactions: Option<Json>,
    /// The original recording, kept when the audio was redacted without deleting it.
    pub original_recording_key: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
