//! What the analyses of a call found beyond its transcript and metrics: quotes pointing at
//! segments, the tenant's categories and where they matched, and every analysis kept.

use async_graphql::{Context, Enum, ErrorExtensions, Object, Result, ID};

use super::call::{signed_if, SignedUrl};
use super::misc::TokenUsageGql;
use super::Segment;
use crate::config::AnalyzerKind;
use crate::domain::{AnalysisRecord, CallRecord, CallStatus, CategoryRecord};
use crate::error::AppError;
use crate::graphql::loaders;
use crate::graphql::scalars::Timestamp;

/// The call's segments at `indexes` (those that exist), in order.
async fn segments_at(
    ctx: &Context<'_>,
    call: &CallRecord,
    indexes: &[usize],
) -> Result<Vec<Segment>> {
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let all = loaders(ctx)
        .segments
        .load_one((call.tenant_id, call.id))
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")).extend())?
        .unwrap_or_default();
    Ok(indexes
        .iter()
        .filter_map(|&i| all.get(i).cloned())
        .collect())
}

/// What kind of insight a quote is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum QuoteKind {
    /// Something someone agreed to do or was asked to do.
    ActionItem,
    /// A problem the caller raised.
    Issue,
}

/// An insight that quotes the call, with the transcript segments that say it.
pub struct CallQuote {
    pub call: std::sync::Arc<CallRecord>,
    pub kind: QuoteKind,
    pub text: String,
    pub segments: Vec<usize>,
}

/// An insight that quotes the call (an action item, an issue), with the segments it rests on.
#[Object]
impl CallQuote {
    /// Action item or issue.
    async fn kind(&self) -> QuoteKind {
        self.kind
    }
    /// The insight, in a sentence.
    async fn text(&self) -> &str {
        &self.text
    }
    /// The transcript segments that say it, in time order (`Segment.index` places them in
    /// `Call.transcript.segments`); every timestamp lies on the call's audio.
    async fn segments(&self, ctx: &Context<'_>) -> Result<Vec<Segment>> {
        segments_at(ctx, &self.call, &self.segments).await
    }
}

/// A category a tenant defined: what every analysis of its calls looks for.
pub struct Category(pub CategoryRecord);

/// A category of calls a tenant defined (like a Transcribe Call Analytics rule). Each analysis
/// reports where it matched: the local analyser on its keywords, Gemini on its instructions and
/// keywords.
#[Object]
impl Category {
    /// The category's id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Its name, unique in the tenant whatever its case.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// What the category means, for a model to follow ("the customer asks to cancel"); null
    /// when only keywords define it.
    async fn instructions(&self) -> Option<&str> {
        self.0.instructions.as_deref()
    }
    /// Words or phrases whose mention in a segment matches the category (whole words, any case).
    async fn keywords(&self) -> &[String] {
        &self.0.keywords
    }
    /// When it was created.
    async fn created_at(&self) -> Timestamp {
        self.0.created_at.into()
    }
    /// When it last changed.
    async fn updated_at(&self) -> Timestamp {
        self.0.updated_at.into()
    }
}

/// Where one of the tenant's categories matched in a call.
pub struct CategoryMatchGql {
    pub call: std::sync::Arc<CallRecord>,
    pub category: Option<CategoryRecord>,
    pub name: String,
    pub segments: Vec<usize>,
}

/// One of the tenant's categories that matched a call, with the segments where it did.
#[Object(name = "CategoryMatch")]
impl CategoryMatchGql {
    /// The category; null when it has been deleted since (`name` still says which it was).
    async fn category(&self) -> Option<Category> {
        self.category.clone().map(Category)
    }
    /// The category's name when the analysis matched it.
    async fn name(&self) -> &str {
        &self.name
    }
    /// The transcript segments where it matched, in time order.
    async fn segments(&self, ctx: &Context<'_>) -> Result<Vec<Segment>> {
        segments_at(ctx, &self.call, &self.segments).await
    }
}

/// One analysis of a call.
pub struct CallAnalysis {
    pub record: AnalysisRecord,
    /// Whether it is the call's current analysis (running, or the latest to have run).
    pub current: bool,
}

/// One analysis of a call. Every analysis is kept; the call's own fields show the latest
/// successful one.
#[Object]
impl CallAnalysis {
    /// The analysis's id (`CallEvent.analysisId` names it).
    async fn id(&self) -> ID {
        ID(self.record.id.to_string())
    }
    /// The analyser asked for; null for an analysis that was waiting when analyses began to be
    /// kept, until it runs (the worker's default analyser runs it).
    async fn analyzer(&self) -> Option<AnalyzerKind> {
        self.record
            .analyzer
            .as_deref()
            .and_then(AnalyzerKind::parse)
    }
    /// The model that ran it (Gemini's analyses, once `COMPLETED`).
    async fn model(&self) -> Option<&str> {
        self.record.model.as_deref()
    }
    /// The version of the instructions and answer schema the model was given.
    async fn prompt_version(&self) -> Option<&str> {
        self.record.prompt_version.as_deref()
    }
    /// `QUEUED`, `PROCESSING` (a worker is on it), `COMPLETED` or `FAILED`.
    async fn status(&self) -> CallStatus {
        CallStatus::parse(&self.record.status).unwrap_or(CallStatus::Queued)
    }
    /// Why its last failed attempt failed; null when none has, or once it completed.
    async fn error(&self) -> Option<&str> {
        self.record.error.as_deref()
    }
    /// Attempts started on it.
    async fn attempts(&self) -> i32 {
        self.record.attempts
    }
    /// Whether it is the call's current analysis: the one running, or the latest that ran.
    async fn current(&self) -> bool {
        self.current
    }
    /// When it was asked for (`submitCall`, `reanalyzeCall`).
    async fn created_at(&self) -> Timestamp {
        self.record.created_at.into()
    }
    /// When a worker first started it.
    async fn started_at(&self) -> Option<Timestamp> {
        self.record.started_at.map(Timestamp)
    }
    /// When its results were stored; null until it is `COMPLETED`.
    async fn completed_at(&self) -> Option<Timestamp> {
        self.record.completed_at.map(Timestamp)
    }
    /// Tokens the model spent on it; null for the local analyser and until it completes.
    async fn usage(&self) -> Option<TokenUsageGql> {
        self.record.usage.map(|u| TokenUsageGql {
            prompt_tokens: u.prompt_tokens as f64,
            output_tokens: u.output_tokens as f64,
            total_tokens: u.total_tokens as f64,
        })
    }
    /// A signed link to its results document (JSON, `schemaVersion` 2 for analyses kept with
    /// their versions); null until it is `COMPLETED`.
    async fn result_download(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "How long the link works, in seconds: 1 to 86400 (BAD_USER_INPUT otherwise). Default: the server's URL lifetime, 900 unless configured."
        )]
        expires_in: Option<i32>,
    ) -> Result<Option<SignedUrl>> {
        signed_if(ctx, self.record.result_key.as_deref(), expires_in).await
    }
}
