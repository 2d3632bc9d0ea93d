//! The results document kept in the blob store for each analysed call (`Call.resultUrl`): a
//! documented, versioned JSON document in the API's camelCase, not an internal struct. A change
//! that removes or retypes a field bumps `schemaVersion`; adding a field does not.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Analysis, TokenUsage};

/// The current version of the document's shape.
/// Version 2: `actionItems` became quotes (`{text, segments}`), with `analysisId`, `model`,
/// `promptVersion`, `issues`, `intent`, `outcome` and `categories` added.
pub const RESULTS_SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultsDocument {
    pub schema_version: u32,
    pub call_id: Uuid,
    /// Which analysis of the call this is (`Call.analyses { id }`).
    pub analysis_id: Uuid,
    /// `local`, or `gemini:<model>`.
    pub analyzer: String,
    /// The model, for a model's analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The version of the instructions and answer schema the model was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_version: Option<String>,
    pub duration_ms: i64,
    pub channels: u16,
    pub sample_rate: u32,
    pub language: Option<String>,
    /// Speaker names in channel order.
    pub speakers: Vec<String>,
    pub segments: Vec<ResultSegment>,
    /// The whole transcript as text, when there is one.
    pub transcript: Option<String>,
    pub summary: Option<String>,
    pub sentiment: Option<ResultSentiment>,
    pub topics: Vec<String>,
    /// Commitments made in the call, each with the indexes in `segments` that say so.
    pub action_items: Vec<ResultQuote>,
    /// Problems the caller raised, each with the indexes in `segments` that say so.
    pub issues: Vec<ResultQuote>,
    /// Why the caller called, in a few words.
    pub intent: Option<String>,
    /// `RESOLVED`, `UNRESOLVED`, `FOLLOW_UP` or `ESCALATED`, as in the API.
    pub outcome: Option<String>,
    /// The tenant's categories that matched, with the indexes in `segments` where.
    pub categories: Vec<ResultCategory>,
    pub metrics: ResultMetrics,
    /// Tokens a model spent on the analysis; absent for the local analyser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ResultUsage>,
    /// The personal data redaction found (`Call.redactions`); absent without a policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redactions: Vec<super::redaction::RedactionSpan>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultSegment {
    pub speaker: String,
    pub channel: i32,
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: Option<String>,
    pub sentiment: Option<f64>,
    /// False where the words lie on silence of their channel.
    pub grounded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultQuote {
    pub text: String,
    /// Indexes into the document's `segments`.
    pub segments: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultCategory {
    pub category_id: Uuid,
    /// The category's name when it matched.
    pub name: String,
    /// Indexes into the document's `segments`.
    pub segments: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultSentiment {
    pub score: f64,
    /// `POSITIVE`, `NEUTRAL` or `NEGATIVE`, as in the API.
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultTalkTime {
    pub speaker: String,
    pub ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultMetrics {
    pub talk_time: Vec<ResultTalkTime>,
    pub silence_ms: i64,
    pub overlap_ms: i64,
    pub interruptions: i64,
    pub longest_monologue_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultUsage {
    pub prompt_tokens: i64,
    pub output_tokens: i64,
    pub total_tokens: i64,
}

impl From<TokenUsage> for ResultUsage {
    fn from(u: TokenUsage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            output_tokens: u.output_tokens,
            total_tokens: u.total_tokens,
        }
    }
}

impl ResultsDocument {
    pub fn of(call_id: Uuid, analysis_id: Uuid, a: &Analysis) -> Self {
        let quotes = |qs: &[super::Quote]| {
            qs.iter()
                .map(|q| ResultQuote {
                    text: q.text.clone(),
                    segments: q.segments.clone(),
                })
                .collect()
        };
        Self {
            schema_version: RESULTS_SCHEMA_VERSION,
            call_id,
            analysis_id,
            analyzer: a.analyzer.clone(),
            model: a.model.clone(),
            prompt_version: a.prompt_version.clone(),
            duration_ms: a.duration_ms,
            channels: a.channels,
            sample_rate: a.sample_rate,
            language: a.language.clone(),
            speakers: a.speakers.clone(),
            segments: a
                .segments
                .iter()
                .map(|s| ResultSegment {
                    speaker: s.speaker.clone(),
                    channel: s.channel,
                    start_ms: s.start_ms,
                    end_ms: s.end_ms,
                    text: s.text.clone(),
                    sentiment: s.sentiment,
                    grounded: s.grounded,
                })
                .collect(),
            transcript: a.transcript_text.clone(),
            summary: a.summary.clone(),
            sentiment: a.sentiment.map(|s| ResultSentiment {
                score: s.score,
                label: s.label.as_str().to_string(),
            }),
            topics: a.topics.clone(),
            action_items: quotes(&a.action_items),
            issues: quotes(&a.issues),
            intent: a.intent.clone(),
            outcome: a.outcome.map(|o| o.as_str().to_string()),
            categories: a
                .categories
                .iter()
                .map(|c| ResultCategory {
                    category_id: c.category_id,
                    name: c.name.clone(),
                    segments: c.segments.clone(),
                })
                .collect(),
            metrics: ResultMetrics {
                talk_time: a
                    .metrics
                    .talk_time
                    .iter()
                    .map(|t| ResultTalkTime {
                        speaker: t.speaker.clone(),
                        ms: t.ms,
                    })
                    .collect(),
                silence_ms: a.metrics.silence_ms,
                overlap_ms: a.metrics.overlap_ms,
                interruptions: a.metrics.interruptions,
                longest_monologue_ms: a.metrics.longest_monologue_ms,
            },
            usage: a.usage.map(Into::into),
            redactions: Vec::new(),
        }
    }
}
