//! `Call`, its recording, transcript, metrics and events.

use std::sync::Arc;

use crate::domain::CallRecord;
use async_graphql::{ComplexObject, Context, Object, Result, SimpleObject, ID};
use chrono::Utc;

use super::analysis::{CallAnalysis, CallQuote, CategoryMatchGql, QuoteKind};
use crate::domain::{
    CallDirection, CallEventKind, CallMetrics, CallOutcome, CallStatus, EventEnvelope, Quote,
    SentimentLabel,
};
use crate::error::AppError;
use crate::graphql::scalars::{Json, Timestamp};
use crate::graphql::{caller, loaders, state, url_expiry};
use async_graphql::ErrorExtensions;

/// A submitted call and, once analysed, its results. `call` and `calls` read only the large
/// columns the selection needs (`query::calls::call_columns` says which field reads which): a
/// field that starts reading another column is added there, or it reads it empty (the test
/// `every_field_reads_the_same_alone_as_with_all` fails until it is).
pub struct Call(pub Arc<CallRecord>);

impl From<CallRecord> for Call {
    fn from(c: CallRecord) -> Self {
        Self(Arc::new(c))
    }
}

impl From<Arc<CallRecord>> for Call {
    fn from(c: Arc<CallRecord>) -> Self {
        Self(c)
    }
}

/// `Call.events` without `first`, and its most. Nested lists declare their bounds so that the
/// complexity of a document (which multiplies through lists) is known before it runs.
const EVENTS_PAGE: i32 = 20;
const EVENTS_MAX: i32 = 100;
/// `Transcript.segments` without `first`, and its most.
const SEGMENTS_PAGE: i32 = 100;
const SEGMENTS_MAX: i32 = 1000;

/// A page-size argument: `default` when absent, else between 0 and `max` (BAD_USER_INPUT).
fn bounded(value: Option<i32>, default: i32, max: i32, name: &str) -> Result<usize> {
    match value.unwrap_or(default) {
        v if (0..=max).contains(&v) => Ok(v as usize),
        _ => Err(AppError::bad_input(format!("`{name}` must be between 0 and {max}")).extend()),
    }
}

fn json_list(v: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

/// Stored quotes (older rows hold bare strings, read as quotes without segments).
fn quotes(v: &serde_json::Value) -> Vec<Quote> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

/// The overall sentiment of what was said in a call: a score and its label.
#[derive(SimpleObject, Clone)]
pub struct Sentiment {
    /// From -1 (negative) through 0 (neutral) to 1 (positive).
    pub score: f64,
    /// The score's label.
    pub label: SentimentLabel,
}

/// Speech time of one speaker in a call.
#[derive(SimpleObject, Clone)]
pub struct SpeakerTime {
    /// The speaker's name: the name of their channel (see `Call.channels`).
    pub speaker: String,
    /// Their speech time, in milliseconds.
    pub ms: i64,
}

/// How the talking in a call was shared, measured from the audio. Durations are in milliseconds.
#[derive(SimpleObject, Clone)]
#[graphql(name = "CallMetrics")]
pub struct CallMetricsGql {
    /// Speech time per speaker, in channel order (left first).
    pub talk_time: Vec<SpeakerTime>,
    /// Time in which no one speaks, in milliseconds.
    pub silence_ms: i64,
    /// Time in which two speakers speak at once, in milliseconds.
    pub overlap_ms: i64,
    /// How many times a speaker started while another was mid-turn.
    pub interruptions: i64,
    /// Longest stretch one speaker held the floor alone, in milliseconds (their own short pauses
    /// do not end it).
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

/// One stretch of speech by one speaker, as detected in the audio.
#[derive(SimpleObject, Clone)]
pub struct Segment {
    /// The segment's position in the call's transcript, from 0 in time order: what quotes and
    /// category matches refer to.
    pub index: i32,
    /// The speaker's name: the name of the segment's channel (see `Call.channels`).
    pub speaker: String,
    /// The audio channel the speech was heard on: 0 = left (or the only channel of a mono
    /// recording), 1 = right.
    pub channel: i32,
    /// Start, in milliseconds from the beginning of the recording.
    pub start_ms: i64,
    /// End, in milliseconds from the beginning of the recording; never before `startMs`.
    pub end_ms: i64,
    /// What was said, from the submitted transcript; null when no transcript was submitted or
    /// none of it fell on this segment.
    pub text: Option<String>,
    /// Sentiment score of the segment's text, from -1 (negative) to 1 (positive); null when it
    /// has no text.
    pub sentiment: Option<f64>,
    /// Whether the segment lies on speech the acoustic analysis heard on its channel. `false`
    /// flags words a transcript or a model placed where that channel is silent: kept, but not
    /// to be trusted for timing.
    pub grounded: bool,
}

/// The transcript: full text and timed segments per speaker.
pub struct Transcript {
    call: Arc<CallRecord>,
}

/// What was said in a call: the text, when a transcript was submitted, and the speech segments
/// detected in the audio.
#[Object]
impl Transcript {
    /// The transcript as plain text, one utterance per line (`Speaker: words` where the speaker
    /// is known); null when no transcript was submitted.
    async fn text(&self) -> Option<&str> {
        self.call.transcript_text.as_deref()
    }
    /// BCP-47 language tag of the call, as submitted (`SubmitCallInput.language`, else the
    /// transcript's); null when none was given.
    async fn language(&self) -> Option<&str> {
        self.call.language.as_deref()
    }
    /// Speech segments in time order (by start, then channel), `first` at a time from
    /// `offset`.
    #[graphql(
        complexity = "(first.unwrap_or(SEGMENTS_PAGE).clamp(0, SEGMENTS_MAX) as usize) * child_complexity + 1"
    )]
    async fn segments(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "How many segments to return: 100 unless given, at most 1000 \
                          (BAD_USER_INPUT outside 0 to 1000).")]
        first: Option<i32>,
        #[graphql(
            desc = "How many segments to skip from the start (0 unless given): the next \
                          page starts at the previous page's offset plus its length."
        )]
        offset: Option<i32>,
    ) -> Result<Vec<Segment>> {
        let first = bounded(first, SEGMENTS_PAGE, SEGMENTS_MAX, "first")?;
        let offset = bounded(offset, 0, i32::MAX, "offset")?;
        Ok(loaders(ctx)
            .segments
            .load_one((self.call.tenant_id, self.call.id))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")).extend())?
            .unwrap_or_default()
            .into_iter()
            .skip(offset)
            .take(first)
            .collect())
    }
}

/// A signed, short-lived link to download a file. Anyone holding it can download the file until
/// `expiresAt`, without an API key: hand it to a browser or player, do not store it.
#[derive(SimpleObject)]
pub struct SignedUrl {
    /// The link, for an HTTP GET.
    pub url: String,
    /// When the link stops working.
    pub expires_at: Timestamp,
}

/// What a results document is answered as.
pub(super) const RESULTS_TYPE: &str = "application/json";

/// What a recording is answered as when its type is unknown.
const UNKNOWN_TYPE: &str = "application/octet-stream";

pub(super) async fn signed(
    ctx: &Context<'_>,
    key: &str,
    content_type: &str,
    expires_in: Option<i32>,
) -> Result<SignedUrl> {
    // A link signed now, expiring from now: not an answer to keep.
    crate::graphql::response_cache::not_cacheable(ctx);
    let expiry = url_expiry(ctx, expires_in)?;
    let expires_at = Utc::now() + chrono::Duration::from_std(expiry).unwrap_or_default();
    let url = state(ctx)
        .blobs
        .presign_get(key, expiry, content_type)
        .await
        .map_err(|e| AppError::Internal(e).extend())?;
    Ok(SignedUrl {
        url,
        expires_at: expires_at.into(),
    })
}

/// A signed link to the results document `key`, when there is one.
pub(super) async fn signed_if(
    ctx: &Context<'_>,
    key: Option<&str>,
    expires_in: Option<i32>,
) -> Result<Option<SignedUrl>> {
    match key {
        Some(key) => Ok(Some(signed(ctx, key, RESULTS_TYPE, expires_in).await?)),
        None => Ok(None),
    }
}

/// The stored recording.
pub struct Recording {
    key: String,
    content_type: Option<String>,
    bytes: Option<i64>,
    sha256: Option<String>,
}

/// The stored recording of a call.
#[Object]
impl Recording {
    /// The recording's MIME type, e.g. `audio/wav`: the type it was submitted with, or the one
    /// detected from its bytes when it came without one (or as `application/octet-stream`).
    async fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }
    /// Size of the recording, in bytes.
    async fn byte_size(&self) -> Option<i64> {
        self.bytes
    }
    /// The SHA-256 of the recording's bytes, in lowercase hex: computed when the call was
    /// submitted, from the stored copy the call is analysed and downloaded from (an upload is
    /// copied where no URL can write before it is checked, so later writes to the upload change
    /// nothing).
    async fn sha256(&self) -> Option<&str> {
        self.sha256.as_deref()
    }
    /// A signed link to download the recording (see `SignedUrl`).
    async fn url(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "How long the link works, in seconds: 1 to 86400 (BAD_USER_INPUT otherwise). Default: the server's URL lifetime, 900 unless configured."
        )]
        expires_in: Option<i32>,
    ) -> Result<String> {
        Ok(signed(ctx, &self.key, self.answered_as(), expires_in)
            .await?
            .url)
    }
    /// The same link with its expiry time.
    async fn download(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "How long the link works, in seconds: 1 to 86400 (BAD_USER_INPUT otherwise). Default: the server's URL lifetime, 900 unless configured."
        )]
        expires_in: Option<i32>,
    ) -> Result<SignedUrl> {
        signed(ctx, &self.key, self.answered_as(), expires_in).await
    }
}

impl Recording {
    /// The type the recording was submitted as.
    fn answered_as(&self) -> &str {
        self.content_type.as_deref().unwrap_or(UNKNOWN_TYPE)
    }
}

/// A submitted call: what the integrator sent and, once the call is `COMPLETED`, the results of
/// its analysis. Result fields are null (or empty lists) until then. Every analysis is kept
/// (`analyses`); the result fields show the latest successful one, also while a re-analysis is
/// queued or running and after one fails.
#[Object]
impl Call {
    /// The call's id (a UUID), also its global id for `node`.
    pub async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The integrator's own id for the call, as submitted (`CallFilter.externalId` finds it);
    /// null when none was given.
    async fn external_id(&self) -> Option<&str> {
        self.0.external_id.as_deref()
    }
    /// Where the call is in its life; each change also arrives as a `CallEvent`.
    async fn status(&self) -> CallStatus {
        CallStatus::parse(&self.0.status).unwrap_or(CallStatus::Queued)
    }
    /// Who placed the call, as submitted; null when not given.
    async fn direction(&self) -> Option<CallDirection> {
        self.0.direction.as_deref().and_then(CallDirection::parse)
    }
    /// The calling party (e.g. a phone number) exactly as submitted; null when not given.
    async fn from(&self) -> Option<&str> {
        self.0.from_number.as_deref()
    }
    /// The called party (e.g. a phone number) exactly as submitted; null when not given.
    async fn to(&self) -> Option<&str> {
        self.0.to_number.as_deref()
    }
    /// The agent's name or id, as submitted; null when not given.
    async fn agent(&self) -> Option<&str> {
        self.0.agent.as_deref()
    }
    /// When the call itself started, as submitted (not when it was submitted: see
    /// `createdAt`); null when not given.
    async fn started_at(&self) -> Option<Timestamp> {
        self.0.started_at.map(Timestamp)
    }
    /// Length of the recording in milliseconds: read from the file's headers at submission
    /// (null when they do not state it), then measured from the audio once `COMPLETED`.
    async fn duration_ms(&self) -> Option<i64> {
        self.0.duration_ms
    }
    /// Speaker names per channel as submitted, left first; null when none were given and the
    /// defaults apply (stereo `agent` and `customer`, mono `speaker`).
    async fn channels(&self) -> Option<Vec<String>> {
        self.0.channels.as_ref().map(json_list)
    }
    /// The stored recording; null only for a call with no recording on file.
    async fn recording(&self) -> Option<Recording> {
        self.0.recording_key.clone().map(|key| Recording {
            key,
            content_type: self.0.recording_type.clone(),
            bytes: self.0.recording_bytes,
            sha256: self.0.recording_sha256.clone(),
        })
    }
    /// A signed link to the full analysis as one JSON document (see `SignedUrl`); null until
    /// the call is `COMPLETED`.
    async fn result_url(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "How long the link works, in seconds: 1 to 86400 (BAD_USER_INPUT otherwise). Default: the server's URL lifetime, 900 unless configured."
        )]
        expires_in: Option<i32>,
    ) -> Result<Option<String>> {
        Ok(self.result_download(ctx, expires_in).await?.map(|s| s.url))
    }
    /// The results link with its expiry time; null until the call is `COMPLETED`.
    async fn result_download(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "How long the link works, in seconds: 1 to 86400 (BAD_USER_INPUT otherwise). Default: the server's URL lifetime, 900 unless configured."
        )]
        expires_in: Option<i32>,
    ) -> Result<Option<SignedUrl>> {
        signed_if(ctx, self.0.result_key.as_deref(), expires_in).await
    }
    /// Transcript and speech segments; null until an analysis of the call has completed.
    async fn transcript(&self) -> Option<Transcript> {
        self.0.completed_at.is_some().then(|| Transcript {
            call: self.0.clone(),
        })
    }
    /// A short summary of the call written by the analyser; null until the call is
    /// `COMPLETED`.
    async fn summary(&self) -> Option<&str> {
        self.0.summary.as_deref()
    }
    /// Overall sentiment of what was said; null until the call is `COMPLETED`, and when there
    /// was no text to score (no transcript).
    async fn sentiment(&self) -> Option<Sentiment> {
        let score = self.0.sentiment_score?;
        // Labels are written from `SentimentLabel` only. A missing one (a score without a label)
        // is neutral, as before; an unknown one (another version's) is logged and neutral too,
        // rather than failing the whole call.
        let label = match self.0.sentiment_label.as_deref() {
            None => SentimentLabel::Neutral,
            Some(stored) => SentimentLabel::parse(stored).unwrap_or_else(|| {
                tracing::warn!(call = %self.0.id, label = stored, "unknown stored sentiment label; answered NEUTRAL");
                SentimentLabel::Neutral
            }),
        };
        Some(Sentiment { score, label })
    }
    /// Topics the analyser found in the transcript; empty until the call is `COMPLETED`, and
    /// when it found none.
    async fn topics(&self) -> Vec<String> {
        json_list(&self.0.topics)
    }
    /// Follow-ups promised or asked for in the call, as the analyser found them; empty until the
    /// call is `COMPLETED`, and when there are none.
    async fn action_items(&self) -> Vec<String> {
        quotes(&self.0.action_items)
            .into_iter()
            .map(|q| q.text)
            .collect()
    }
    /// Problems the caller raised, as the analyser found them; empty until the call is
    /// `COMPLETED`, and when there are none.
    async fn issues(&self) -> Vec<String> {
        self.0
            .issues
            .as_ref()
            .map(quotes)
            .unwrap_or_default()
            .into_iter()
            .map(|q| q.text)
            .collect()
    }
    /// The action items and issues with the transcript segments each rests on; `kind` keeps
    /// one kind only. Empty until the call is `COMPLETED`.
    async fn quotes(
        &self,
        #[graphql(
            desc = "Only quotes of this kind; both kinds, action items first, unless given."
        )]
        kind: Option<QuoteKind>,
    ) -> Vec<CallQuote> {
        let mut out = Vec::new();
        for (k, stored) in [
            (QuoteKind::ActionItem, Some(&self.0.action_items)),
            (QuoteKind::Issue, self.0.issues.as_ref()),
        ] {
            if kind.is_some_and(|want| want != k) {
                continue;
            }
            for q in stored.map(quotes).unwrap_or_default() {
                out.push(CallQuote {
                    call: self.0.clone(),
                    kind: k,
                    text: q.text,
                    segments: q.segments,
                });
            }
        }
        out
    }
    /// Why the caller called, in a few words; null until the call is `COMPLETED`, and when the
    /// analyser could not tell (the local analyser needs a transcript).
    async fn intent(&self) -> Option<&str> {
        self.0.intent.as_deref()
    }
    /// How the call ended; null until the call is `COMPLETED`, and when the analyser could not
    /// tell.
    async fn outcome(&self) -> Option<CallOutcome> {
        self.0.outcome.as_deref().and_then(CallOutcome::parse)
    }
    /// The tenant's categories that matched the call, with the segments where; empty until the
    /// call is `COMPLETED`, and when none matched. Categories created or changed later apply
    /// once the call is analysed again (`reanalyzeCall`).
    async fn categories(&self, ctx: &Context<'_>) -> Result<Vec<CategoryMatchGql>> {
        let matches = self.0.categories();
        let mut found = loaders(ctx)
            .categories
            .load_many(matches.iter().map(|m| (self.0.tenant_id, m.category_id)))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")).extend())?;
        Ok(matches
            .into_iter()
            .map(|m| CategoryMatchGql {
                call: self.0.clone(),
                category: found.remove(&(self.0.tenant_id, m.category_id)),
                name: m.name,
                segments: m.segments,
            })
            .collect())
    }
    /// Every analysis of the call, oldest first: the first from `submitCall`, one more per
    /// `reanalyzeCall`.
    #[graphql(complexity = "20 * child_complexity + 1")]
    async fn analyses(&self, ctx: &Context<'_>) -> Result<Vec<CallAnalysis>> {
        Ok(loaders(ctx)
            .analyses
            .load_one((self.0.tenant_id, self.0.id))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")).extend())?
            .unwrap_or_default()
            .into_iter()
            .map(|record| CallAnalysis {
                current: Some(record.id) == self.0.current_analysis_id,
                record,
            })
            .collect())
    }
    /// Talk-time metrics measured from the audio; null until the call is `COMPLETED`.
    async fn metrics(&self) -> Option<CallMetricsGql> {
        let m: CallMetrics = serde_json::from_value(self.0.metrics.clone()?).ok()?;
        Some(m.into())
    }
    /// Tags from `submitCall` and `tagCall`, in the order they were first added, without
    /// duplicates (at most 50).
    async fn tags(&self) -> Vec<String> {
        json_list(&self.0.tags)
    }
    /// The JSON object submitted as `metadata`, unchanged; null when none was given.
    async fn metadata(&self) -> Option<Json> {
        self.0.metadata.clone().map(Json)
    }
    /// The redaction policy the call was submitted under (its tenant's with its override);
    /// null when nothing is redacted in it.
    async fn redaction(&self) -> Option<crate::graphql::redaction::RedactionPolicyGql> {
        self.0.redaction.map(Into::into)
    }
    /// The personal data found in the call's transcript and insights, in the order found, each
    /// with where it was (and, when the transcript is redacted, where its placeholder is now);
    /// empty without a redaction policy or until the call is `COMPLETED`.
    async fn redactions(&self) -> Vec<crate::graphql::redaction::Redaction> {
        self.0
            .redactions
            .clone()
            .and_then(|v| {
                serde_json::from_value::<Vec<crate::domain::redaction::RedactionSpan>>(v).ok()
            })
            .unwrap_or_default()
            .into_iter()
            .map(crate::graphql::redaction::Redaction)
            .collect()
    }
    /// Everything that happened to the call, oldest first, `first` at a time after the event
    /// whose cursor is `after`. An event is listed once the relay has given it its stream
    /// position (`cursor`), normally within a moment of the change.
    #[graphql(
        complexity = "(first.unwrap_or(EVENTS_PAGE).clamp(0, EVENTS_MAX) as usize) * child_complexity + 1"
    )]
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "How many events to return: 20 unless given, at most 100 \
                          (BAD_USER_INPUT outside 0 to 100).")]
        first: Option<i32>,
        #[graphql(
            desc = "Only events after the one with this `cursor` (the last event of the \
                          previous page); BAD_USER_INPUT when it is not a cursor."
        )]
        after: Option<String>,
    ) -> Result<Vec<CallEvent>> {
        let first = bounded(first, EVENTS_PAGE, EVENTS_MAX, "first")?;
        let after = after
            .map(|c| c.trim().parse::<i64>())
            .transpose()
            .map_err(|_| AppError::bad_input("`after` is not an event cursor").extend())?;
        Ok(loaders(ctx)
            .events
            .load_one((self.0.tenant_id, self.0.id))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")).extend())?
            .unwrap_or_default()
            .into_iter()
            .filter(|e| after.is_none_or(|a| e.seq > a))
            .take(first)
            .map(CallEvent)
            .collect())
    }
    /// Which analyser produced the results: `local`, or `gemini:<model>`; null until the call is
    /// `COMPLETED`.
    async fn analyzer(&self) -> Option<&str> {
        self.0.analyzer.as_deref()
    }
    /// Tokens the model spent on the call's analysis; null for the local analyser and until
    /// the call is `COMPLETED`.
    async fn usage(&self) -> Option<super::misc::TokenUsageGql> {
        self.0.usage.map(|u| super::misc::TokenUsageGql {
            prompt_tokens: u.prompt_tokens as f64,
            output_tokens: u.output_tokens as f64,
            total_tokens: u.total_tokens as f64,
        })
    }
    /// Why the last failed attempt failed; null when none has. Set with a `RETRYING` or
    /// `FAILED` event; cleared when the call completes or `retryCall` queues it again.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// Analysis attempts started so far: 0 until a worker first picks the call up; every retry
    /// and redelivery counts.
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    /// When the call was submitted.
    async fn created_at(&self) -> Timestamp {
        self.0.created_at.into()
    }
    /// When anything about the call last changed: status, results or tags.
    async fn updated_at(&self) -> Timestamp {
        self.0.updated_at.into()
    }
    /// When the results were stored; null until the call is `COMPLETED`.
    async fn completed_at(&self) -> Option<Timestamp> {
        self.0.completed_at.map(Timestamp)
    }
}

/// Something that happened to a call.
pub struct CallEvent(pub EventEnvelope);

/// Something that happened to a call, as `Call.events` lists it and the subscriptions deliver it.
#[Object]
impl CallEvent {
    /// The event's id, unique across tenants: a client can drop an event whose id it has seen.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The event's position in the event stream, a decimal integer that grows by one per event
    /// (across tenants, so a tenant sees gaps). Pass the last one seen as `callEvents(after:)`
    /// to resume without missing or repeating an event.
    async fn cursor(&self) -> String {
        self.0.seq.to_string()
    }
    /// The analysis the event reports on (`Call.analyses { id }`), for the events of an
    /// analysis: `SUBMITTED`, `REANALYZED`, `RETRIED`, `PROCESSING`, `COMPLETED`, `RETRYING`,
    /// `FAILED`. Null for the others, and for events of calls submitted before analyses were
    /// kept.
    async fn analysis_id(&self) -> Option<ID> {
        self.0.analysis_id.map(|a| ID(a.to_string()))
    }
    /// What happened.
    async fn kind(&self) -> CallEventKind {
        // Kinds are written from `CallEventKind` only. One this version does not know (written by
        // a newer version during a rolling deploy) is logged and answered with the kind its status
        // implies, so that a client's state follows the call's status and the field stays valid.
        CallEventKind::parse(&self.0.kind).unwrap_or_else(|| {
            tracing::warn!(event = self.0.id, kind = %self.0.kind, "unknown call event kind; answered from its status");
            match self.0.status {
                CallStatus::Queued => CallEventKind::Submitted,
                CallStatus::Processing => CallEventKind::Processing,
                CallStatus::Completed => CallEventKind::Completed,
                CallStatus::Failed => CallEventKind::Failed,
            }
        })
    }
    /// The call's status right after the event.
    async fn status(&self) -> CallStatus {
        self.0.status
    }
    /// The call the event is about; still set after the call has been deleted.
    async fn call_id(&self) -> ID {
        ID(self.0.call_id.to_string())
    }
    /// The call as it is now (not as it was at the event); null once it has been deleted.
    /// UNAUTHENTICATED without credentials.
    async fn call(&self, ctx: &Context<'_>) -> Result<Option<Call>> {
        caller(ctx)?;
        Ok(loaders(ctx)
            .calls
            .load_one((self.0.tenant_id, self.0.call_id))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")).extend())?
            .map(Call))
    }
    /// When it happened (when the change was written).
    async fn at(&self) -> Timestamp {
        self.0.at.into()
    }
}

/// Where a page sits in the listing (Relay `PageInfo`).
#[derive(SimpleObject)]
pub struct PageInfo {
    /// Whether calls follow this page. Exact when paging forward (`first`/`after`); when
    /// paging backward (`last`/`before`) it is true whenever `before` was given.
    pub has_next_page: bool,
    /// Whether calls precede this page. Exact when paging backward; when paging forward it is
    /// true whenever `after` was given.
    pub has_previous_page: bool,
    /// The first call's cursor (pass it as `before` for the previous page); null when the page
    /// is empty.
    pub start_cursor: Option<String>,
    /// The last call's cursor (pass it as `after` for the next page); null when the page is
    /// empty.
    pub end_cursor: Option<String>,
}

pub struct CallEdge {
    pub cursor: String,
    pub node: Arc<CallRecord>,
}

/// One call of a page, with its cursor.
#[Object]
impl CallEdge {
    /// An opaque position in the listing: pass it as `after` or `before` to page from this
    /// call. It is only meaningful with the same `orderBy`.
    async fn cursor(&self) -> &str {
        &self.cursor
    }
    /// The call.
    async fn node(&self) -> Call {
        Call(self.node.clone())
    }
}

/// A page of calls (a Relay cursor connection).
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct CallConnection {
    /// The page's calls with their cursors, in the requested order.
    pub edges: Vec<CallEdge>,
    /// Cursors of the page's ends and whether more calls lie beyond them.
    pub page_info: PageInfo,
    #[graphql(skip)]
    pub filter: crate::services::calls::CallFilter,
}

#[ComplexObject]
impl CallConnection {
    /// The page's calls without their cursors, in the requested order.
    async fn nodes(&self) -> Vec<Call> {
        self.edges.iter().map(|e| Call(e.node.clone())).collect()
    }
    /// How many calls match the filter, across all pages (counted when asked for).
    async fn total_count(&self, ctx: &Context<'_>) -> Result<u64> {
        crate::services::calls::count_calls(state(ctx), caller(ctx)?, &self.filter)
            .await
            .map_err(|e| e.extend())
    }
}
