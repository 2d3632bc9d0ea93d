//! What an analyser is asked for and what it returns: segments, metrics, sentiment and text insights.

use serde::{Deserialize, Serialize};

/// What the worker hands an analyser for one call.
#[derive(Debug, Clone, Default)]
pub struct AnalysisRequest {
    /// Speaker names per channel as submitted (`channels`); `None` uses the defaults:
    /// stereo `agent` (left) and `customer` (right), mono `speaker`.
    pub channels: Option<Vec<String>>,
    /// A transcript submitted with the call, if any.
    pub transcript: Option<TranscriptInput>,
    /// Language hint (BCP-47), if known.
    pub language: Option<String>,
    /// The tenant's categories when the analysis starts: each analysis reports which matched.
    pub categories: Vec<CategoryRule>,
}

/// A category a tenant defined (like a Transcribe Call Analytics rule), as an analyser is given
/// it: the lexicon matches its keywords, a model its instructions and keywords.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryRule {
    pub id: uuid::Uuid,
    pub name: String,
    /// What the category means, in words a model can follow ("the customer asks to cancel").
    pub instructions: Option<String>,
    /// Words or phrases whose mention in a segment matches the category (case-insensitive,
    /// on word boundaries).
    pub keywords: Vec<String>,
}

/// An insight that quotes the call: its text and the segments it rests on, as indexes into
/// the analysis's `segments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quote {
    pub text: String,
    pub segments: Vec<usize>,
}

impl Quote {
    pub fn new(text: impl Into<String>, segments: Vec<usize>) -> Self {
        Self {
            text: text.into(),
            segments,
        }
    }
}

/// Quotes were once stored as bare strings: both shapes read back.
impl<'de> Deserialize<'de> for Quote {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Text(String),
            Quote {
                text: String,
                #[serde(default)]
                segments: Vec<usize>,
            },
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Text(text) => Quote::new(text, Vec::new()),
            Stored::Quote { text, segments } => Quote::new(text, segments),
        })
    }
}

/// Which of a tenant's categories an analysis found, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CategoryMatch {
    pub category_id: uuid::Uuid,
    /// The category's name when it matched (kept if the category is renamed or deleted).
    pub name: String,
    /// Indexes into the analysis's `segments` where it matched, in time order.
    pub segments: Vec<usize>,
}

/// How a call ended, as the analyser judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, async_graphql::Enum)]
#[graphql(name = "CallOutcome")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallOutcome {
    /// The caller's request or problem was dealt with during the call.
    Resolved,
    /// The call ended with the request or problem still open and nothing agreed.
    Unresolved,
    /// Someone committed to a next step after the call (a callback, an email, a visit).
    FollowUp,
    /// The call was handed on to someone else (a supervisor, another team).
    Escalated,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resolved => "RESOLVED",
            Self::Unresolved => "UNRESOLVED",
            Self::FollowUp => "FOLLOW_UP",
            Self::Escalated => "ESCALATED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RESOLVED" => Some(Self::Resolved),
            "UNRESOLVED" => Some(Self::Unresolved),
            "FOLLOW_UP" => Some(Self::FollowUp),
            "ESCALATED" => Some(Self::Escalated),
            _ => None,
        }
    }
}

/// A transcript supplied by the integrator.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TranscriptInput {
    /// Free text; lines of the form `Speaker: words` are attributed to that speaker.
    pub text: Option<String>,
    /// Timed segments, when the integrator has them.
    pub segments: Vec<TranscriptSegmentInput>,
    pub language: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TranscriptSegmentInput {
    pub speaker: String,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub text: String,
}

/// Facts read from the audio container and stream headers (and a decode of the first packets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioInfo {
    /// e.g. "wav", "flac", "mp3", "ogg"
    pub format: String,
    pub channels: u16,
    pub sample_rate: u32,
    /// Duration from the headers when known.
    pub duration_ms: Option<i64>,
}

/// One stretch of speech by one speaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub speaker: String,
    /// Audio channel index (0 = left/mono, 1 = right).
    pub channel: i32,
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: Option<String>,
    /// Lexicon sentiment score in [-1, 1] when the segment has text.
    pub sentiment: Option<f64>,
    /// Whether the segment lies on speech the acoustic analysis heard on its channel; `false`
    /// flags words a transcript or a model placed where that channel is silent.
    #[serde(default = "grounded_by_default")]
    pub grounded: bool,
}

fn grounded_by_default() -> bool {
    true
}

/// The overall tone of a sentiment score, as the analyser labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, async_graphql::Enum)]
#[graphql(name = "SentimentLabel")]
pub enum SentimentLabel {
    /// Mostly negative (the score is below zero, beyond the analyser's neutral band).
    Negative,
    /// Neither clearly positive nor negative (the score is near zero).
    Neutral,
    /// Mostly positive (the score is above zero, beyond the analyser's neutral band).
    Positive,
}

impl SentimentLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Negative => "NEGATIVE",
            Self::Neutral => "NEUTRAL",
            Self::Positive => "POSITIVE",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "NEGATIVE" => Some(Self::Negative),
            "NEUTRAL" => Some(Self::Neutral),
            "POSITIVE" => Some(Self::Positive),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sentiment {
    /// In [-1, 1].
    pub score: f64,
    pub label: SentimentLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeakerTime {
    pub speaker: String,
    pub ms: i64,
}

/// Talk-time metrics of a call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallMetrics {
    /// Speech time per speaker, in channel order.
    pub talk_time: Vec<SpeakerTime>,
    /// Time during which no one speaks.
    pub silence_ms: i64,
    /// Time during which two or more speakers speak at once.
    pub overlap_ms: i64,
    /// Times a speaker started while another was mid-turn.
    pub interruptions: i64,
    /// Longest stretch one speaker held the floor alone (merging their own short pauses).
    pub longest_monologue_ms: i64,
}

/// Everything an analyser produces for one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Which analyser produced it ("local", "gemini:<model>").
    pub analyzer: String,
    pub duration_ms: i64,
    pub channels: u16,
    pub sample_rate: u32,
    pub language: Option<String>,
    /// Speakers in channel order.
    pub speakers: Vec<String>,
    pub segments: Vec<Segment>,
    /// The transcript as plain text, when there is one.
    pub transcript_text: Option<String>,
    pub summary: Option<String>,
    pub sentiment: Option<Sentiment>,
    pub topics: Vec<String>,
    /// What someone agreed to do or was asked to do, each with the segments that say so.
    pub action_items: Vec<Quote>,
    /// Problems the caller raised, each with the segments that say so.
    pub issues: Vec<Quote>,
    /// Why the caller called, in a few words.
    pub intent: Option<String>,
    pub outcome: Option<CallOutcome>,
    /// The tenant's categories that matched, with where.
    pub categories: Vec<CategoryMatch>,
    pub metrics: CallMetrics,
    /// The model that produced it, if any (the `<model>` of `gemini:<model>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The version of the instructions and answer schema the model was given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_version: Option<String>,
    /// Tokens a model spent on the analysis (none for the local analyser).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
    /// The model's raw responses, kept in the blob store beside the results (not in them).
    #[serde(skip)]
    pub model_responses: Vec<serde_json::Value>,
}

/// Where one analysis of a call keeps its results document in the blob store.
pub fn result_key(tenant: uuid::Uuid, call: uuid::Uuid, analysis: uuid::Uuid) -> String {
    format!("results/{tenant}/{call}/{analysis}.json")
}

/// Where one analysis of a call keeps its raw model responses, beside its results.
pub fn model_responses_key(tenant: uuid::Uuid, call: uuid::Uuid, analysis: uuid::Uuid) -> String {
    format!("results/{tenant}/{call}/{analysis}.model.json")
}

/// Where calls analysed before analyses were versioned kept their raw model responses.
pub fn legacy_model_responses_key(tenant: uuid::Uuid, call: uuid::Uuid) -> String {
    format!("results/{tenant}/{call}.model.json")
}

/// Tokens a model spent, as its API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: i64,
    pub output_tokens: i64,
    pub total_tokens: i64,
}

impl std::ops::AddAssign for TokenUsage {
    fn add_assign(&mut self, o: Self) {
        self.prompt_tokens += o.prompt_tokens;
        self.output_tokens += o.output_tokens;
        self.total_tokens += o.total_tokens;
    }
}

/// What an insights adapter (the lexicon, a model) is given about a call besides its audio: the
/// speakers, the acoustic speech segments and the metrics they imply, and what was submitted.
#[derive(Debug, Clone)]
pub struct InsightsInput {
    /// Speaker names in channel order.
    pub speakers: Vec<String>,
    /// The acoustic speech segments, in time order.
    pub speech: Vec<Segment>,
    /// The audio's facts the segments come from: what a model's answers are grounded on.
    pub facts: super::conversation::AcousticFacts,
    /// Talk-time metrics of the acoustic segments.
    pub metrics: CallMetrics,
    pub request: AnalysisRequest,
}

/// What reading a call gives: its segments with their words where known, and what the call
/// says. Produced by an insights adapter; the audio's own facts are not its to change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Insights {
    /// Which adapter produced them ("local", "gemini:<model>").
    pub analyzer: String,
    pub segments: Vec<Segment>,
    pub transcript_text: Option<String>,
    pub language: Option<String>,
    pub summary: Option<String>,
    pub sentiment: Option<Sentiment>,
    pub topics: Vec<String>,
    pub action_items: Vec<Quote>,
    pub issues: Vec<Quote>,
    pub intent: Option<String>,
    pub outcome: Option<CallOutcome>,
    pub categories: Vec<CategoryMatch>,
    /// The model that produced them, if any, and the version of what it was asked.
    pub model: Option<String>,
    pub prompt_version: Option<String>,
    pub usage: Option<TokenUsage>,
    /// Raw model responses, for the blob store.
    pub model_responses: Vec<serde_json::Value>,
}

impl InsightsInput {
    /// What the audio's facts give an insights adapter: the speakers named per channel (the
    /// submitted names, else the defaults), the speech as their segments, and its metrics.
    pub fn of(facts: super::conversation::AcousticFacts, request: AnalysisRequest) -> Self {
        let speakers =
            super::conversation::speaker_names(facts.channels(), request.channels.as_deref());
        let speech = facts.speech_segments(&speakers);
        let metrics = super::conversation::metrics(&speakers, &speech, facts.duration_ms);
        Self {
            speakers,
            speech,
            facts,
            metrics,
            request,
        }
    }
}

/// One analysis of a call: the audio's facts and their metrics, with the insights read from it.
/// Duration, channels, sample rate and talk-time metrics always come from the audio.
pub fn compose(input: &InsightsInput, insights: Insights) -> Analysis {
    let facts = &input.facts;
    Analysis {
        analyzer: insights.analyzer,
        duration_ms: facts.duration_ms,
        channels: u16::try_from(facts.channels()).unwrap_or(u16::MAX),
        sample_rate: facts.sample_rate,
        language: insights.language,
        speakers: input.speakers.clone(),
        segments: insights.segments,
        transcript_text: insights.transcript_text,
        summary: insights.summary,
        sentiment: insights.sentiment,
        topics: insights.topics,
        action_items: insights.action_items,
        issues: insights.issues,
        intent: insights.intent,
        outcome: insights.outcome,
        categories: insights.categories,
        metrics: input.metrics.clone(),
        model: insights.model,
        prompt_version: insights.prompt_version,
        usage: insights.usage,
        model_responses: insights.model_responses,
    }
}
