//! `Call`, its recording, transcript, metrics and events.

use async_graphql::{ComplexObject, Context, Object, Result, SimpleObject, ID};
use chrono::{DateTime, Utc};
use entities::calls;

use crate::domain::{CallDirection, CallMetrics, CallStatus, EventEnvelope, SentimentLabel};
use crate::error::AppError;
use crate::graphql::{caller, loaders, state, url_expiry};
use async_graphql::ErrorExtensions;

/// A submitted call and, once analysed, its results.
pub struct Call(pub calls::Model);

fn json_list(v: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

/// Sentiment of a call or segment.
#[derive(SimpleObject, Clone)]
pub struct Sentiment {
    /// From -1 (negative) to 1 (positive).
    pub score: f64,
    /// `NEGATIVE`, `NEUTRAL` or `POSITIVE`.
    pub label: String,
}

/// Speech time of one speaker.
#[derive(SimpleObject, Clone)]
pub struct SpeakerTime {
    pub speaker: String,
    pub ms: i64,
}

/// Talk-time metrics.
#[derive(SimpleObject, Clone)]
#[graphql(name = "CallMetrics")]
pub struct CallMetricsGql {
    /// Speech time per speaker, in channel order.
    pub talk_time: Vec<SpeakerTime>,
    /// Time no one speaks.
    pub silence_ms: i64,
    /// Time two speakers speak at once.
    pub overlap_ms: i64,
    /// Times a speaker started while another was mid-turn.
    pub interruptions: i64,
    /// Longest stretch one speaker held the floor alone.
    pub longest_monologue_ms: i64,
}

impl From<CallMetrics> for CallMetricsGql {
    fn from(m: CallMetrics) -> Self {
        Self {
            talk_time: m
                .talk_time
                .into_iter()
                .map(|t| SpeakerTime {
                    speaker: t.speaker,
                    ms: t.ms,
                })
                .collect(),
            silence_ms: m.silence_ms,
            overlap_ms: m.overlap_ms,
            interruptions: m.interruptions,
            longest_monologue_ms: m.longest_monologue_ms,
        }
    }
}

/// One stretch of speech.
#[derive(SimpleObject, Clone)]
pub struct Segment {
    pub speaker: String,
    /// 0 = left (or mono), 1 = right.
    pub channel: i32,
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: Option<String>,
    /// Sentiment score of the segment's text, from -1 to 1.
    pub sentiment: Option<f64>,
}

/// The transcript: full text and timed segments per speaker.
pub struct Transcript {
    call: calls::Model,
}

#[Object]
impl Transcript {
    /// Plain text, when a transcript was submitted or produced.
    async fn text(&self) -> Option<&str> {
        self.call.transcript_text.as_deref()
    }
    async fn language(&self) -> Option<&str> {
        self.call.language.as_deref()
    }
    /// Speech segments in time order.
    async fn segments(&self, ctx: &Context<'_>) -> Result<Vec<Segment>> {
        Ok(loaders(ctx)
            .segments
            .load_one((self.call.tenant_id, self.call.id))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")).extend())?
            .unwrap_or_default())
    }
}

/// A short-lived link to download an object.
#[derive(SimpleObject)]
pub struct SignedUrl {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

async fn signed(ctx: &Context<'_>, key: &str, expires_in: Option<i32>) -> Result<SignedUrl> {
    let expiry = url_expiry(ctx, expires_in)?;
    let expires_at = Utc::now() + chrono::Duration::from_std(expiry).unwrap_or_default();
    let url = state(ctx)
        .blobs
        .presign_get(key, expiry)
        .await
        .map_err(|e| AppError::Internal(e).extend())?;
    Ok(SignedUrl { url, expires_at })
}

/// The stored recording.
pub struct Recording {
    key: String,
    content_type: Option<String>,
    bytes: Option<i64>,
}

#[Object]
impl Recording {
    async fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }
    async fn byte_size(&self) -> Option<i64> {
        self.bytes
    }
    /// A short-lived URL to download the recording. `expiresIn` in seconds (default 900, at most 86400).
    async fn url(&self, ctx: &Context<'_>, expires_in: Option<i32>) -> Result<String> {
        Ok(signed(ctx, &self.key, expires_in).await?.url)
    }
    /// The same link with its expiry time.
    async fn download(&self, ctx: &Context<'_>, expires_in: Option<i32>) -> Result<SignedUrl> {
        signed(ctx, &self.key, expires_in).await
    }
}

#[Object]
impl Call {
    pub async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The integrator's own id for the call.
    async fn external_id(&self) -> Option<&str> {
        self.0.external_id.as_deref()
    }
    async fn status(&self) -> CallStatus {
        CallStatus::parse(&self.0.status).unwrap_or(CallStatus::Queued)
    }
    async fn direction(&self) -> Option<CallDirection> {
        self.0.direction.as_deref().and_then(CallDirection::parse)
    }
    async fn from(&self) -> Option<&str> {
        self.0.from_number.as_deref()
    }
    async fn to(&self) -> Option<&str> {
        self.0.to_number.as_deref()
    }
    async fn agent(&self) -> Option<&str> {
        self.0.agent.as_deref()
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at
    }
    /// Length of the recording in milliseconds.
    async fn duration_ms(&self) -> Option<i64> {
        self.0.duration_ms
    }
    /// Speaker names per channel as submitted.
    async fn channels(&self) -> Option<Vec<String>> {
        self.0.channels.as_ref().map(json_list)
    }
    async fn recording(&self) -> Option<Recording> {
        self.0.recording_key.clone().map(|key| Recording {
            key,
            content_type: self.0.recording_type.clone(),
            bytes: self.0.recording_bytes,
        })
    }
    /// A short-lived URL to the full analysis as JSON, once the call is analysed.
    async fn result_url(
        &self,
        ctx: &Context<'_>,
        expires_in: Option<i32>,
    ) -> Result<Option<String>> {
        Ok(self.result_download(ctx, expires_in).await?.map(|s| s.url))
    }
    /// The results link with its expiry time, once the call is analysed.
    async fn result_download(
        &self,
        ctx: &Context<'_>,
        expires_in: Option<i32>,
    ) -> Result<Option<SignedUrl>> {
        match &self.0.result_key {
            Some(key) => Ok(Some(signed(ctx, key, expires_in).await?)),
            None => Ok(None),
        }
    }
    /// Transcript and speech segments, once the call is analysed.
    async fn transcript(&self) -> Option<Transcript> {
        (self.0.status == CallStatus::Completed.as_str()).then(|| Transcript {
            call: self.0.clone(),
        })
    }
    async fn summary(&self) -> Option<&str> {
        self.0.summary.as_deref()
    }
    async fn sentiment(&self) -> Option<Sentiment> {
        let score = self.0.sentiment_score?;
        let label = self
            .0
            .sentiment_label
            .clone()
            .unwrap_or_else(|| SentimentLabel::Neutral.as_str().into());
        Some(Sentiment { score, label })
    }
    async fn topics(&self) -> Vec<String> {
        json_list(&self.0.topics)
    }
    async fn action_items(&self) -> Vec<String> {
        json_list(&self.0.action_items)
    }
    async fn metrics(&self) -> Option<CallMetricsGql> {
        let m: CallMetrics = serde_json::from_value(self.0.metrics.clone()?).ok()?;
        Some(m.into())
    }
    async fn tags(&self) -> Vec<String> {
        json_list(&self.0.tags)
    }
    async fn metadata(&self) -> Option<async_graphql::Json<serde_json::Value>> {
        self.0.metadata.clone().map(async_graphql::Json)
    }
    /// Everything that happened to the call, oldest first.
    async fn events(&self, ctx: &Context<'_>) -> Result<Vec<CallEvent>> {
        Ok(loaders(ctx)
            .events
            .load_one((self.0.tenant_id, self.0.id))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")).extend())?
            .unwrap_or_default()
            .into_iter()
            .map(CallEvent)
            .collect())
    }
    /// Which analyser produced the results.
    async fn analyzer(&self) -> Option<&str> {
        self.0.analyzer.as_deref()
    }
    /// Why the last attempt failed.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    async fn completed_at(&self) -> Option<DateTime<Utc>> {
        self.0.completed_at
    }
}

/// Something that happened to a call.
pub struct CallEvent(pub EventEnvelope);

#[Object]
impl CallEvent {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Position in the event stream; pass it as `after` to resume a subscription.
    async fn cursor(&self) -> String {
        self.0.seq.to_string()
    }
    /// `SUBMITTED`, `PROCESSING`, `COMPLETED`, `RETRYING`, `FAILED`, `RETRIED`, `TAGGED` or `DELETED`.
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    /// The call's status after the event.
    async fn status(&self) -> CallStatus {
        self.0.status
    }
    async fn call_id(&self) -> ID {
        ID(self.0.call_id.to_string())
    }
    /// The call as it is now; null once it has been deleted.
    async fn call(&self, ctx: &Context<'_>) -> Result<Option<Call>> {
        caller(ctx)?;
        Ok(loaders(ctx)
            .calls
            .load_one((self.0.tenant_id, self.0.call_id))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")).extend())?
            .map(Call))
    }
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
}

/// Relay page info.
#[derive(SimpleObject)]
pub struct PageInfo {
    pub has_next_page: bool,
    pub has_previous_page: bool,
    pub start_cursor: Option<String>,
    pub end_cursor: Option<String>,
}

pub struct CallEdge {
    pub cursor: String,
    pub node: calls::Model,
}

#[Object]
impl CallEdge {
    async fn cursor(&self) -> &str {
        &self.cursor
    }
    async fn node(&self) -> Call {
        Call(self.node.clone())
    }
}

/// A page of calls (Relay connection).
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct CallConnection {
    pub edges: Vec<CallEdge>,
    pub page_info: PageInfo,
    #[graphql(skip)]
    pub filter: crate::services::calls::CallFilter,
}

#[ComplexObject]
impl CallConnection {
    async fn nodes(&self) -> Vec<Call> {
        self.edges.iter().map(|e| Call(e.node.clone())).collect()
    }
    /// Calls matching the filter, over all pages.
    async fn total_count(&self, ctx: &Context<'_>) -> Result<u64> {
        crate::services::calls::count_calls(state(ctx), caller(ctx)?, &self.filter)
            .await
            .map_err(|e| e.extend())
    }
}
