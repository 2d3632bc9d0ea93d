//! Gemini behind the `InsightsSource` port: the call is sent window by window (long calls in
//! overlapping windows, analysed in parallel), each channel as its own labelled audio part so
//! that the model hears agent and customer apart; the structured answers are checked, stitched
//! on their offsets, and every segment is grounded on the acoustic speech of its channel
//! (`domain::conversation::ground`). Talk time and the other metrics never come from the model.

use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{GeminiClient, GeminiError, GenerateRequest, Part};
use crate::adapters::local::acoustic::chunks::{write_windows, AudioWindow, Windows};
use crate::adapters::local::lexicon;
use crate::domain::conversation::{ground, AcousticFacts, TimedText};
use crate::domain::{Insights, InsightsInput, Sentiment, TokenUsage};
use crate::ports::{AnalyzeError, Audio, InsightsSource};

/// Changes whenever the instructions or the answer's schema change, so that analyses can say
/// which prompt produced them.
pub const PROMPT_VERSION: &str = "2026-12-03.1";

const INSTRUCTIONS: &str = "You analyse recorded phone calls for a call-tracking service. \
You are given one window of a call: one audio part per channel, each labelled with the speaker \
heard on it. Transcribe what each speaker says, verbatim, in the language spoken, as segments \
of one speaker each (a sentence or a short turn), with start and end times in seconds from the \
start of this window, taken from the audio part of that speaker's channel. Never invent speech \
that is not in the audio. Give each segment a sentiment from -1 (negative) to 1 (positive). \
Then summarise the window in two to four sentences, give its overall sentiment (-1 to 1), up to \
five short topics (a few words each), and the action items someone agreed to or was asked to \
do (empty when there are none). Answer in the JSON schema given.";

/// How the adapter cuts and sends a call.
#[derive(Debug, Clone)]
pub struct GeminiInsightsConfig {
    pub model: String,
    pub window_ms: i64,
    pub overlap_ms: i64,
    /// Audio of a window up to this many bytes goes inline; more through the Files API.
    pub inline_limit_bytes: u64,
    /// Windows of one call analysed at once.
    pub parallel_windows: usize,
}

pub struct GeminiInsights {
    client: GeminiClient,
    config: GeminiInsightsConfig,
}

impl GeminiInsights {
    pub fn new(client: GeminiClient, config: GeminiInsightsConfig) -> Self {
        Self { client, config }
    }
}

/// The schema of one window's answer (Gemini's OpenAPI subset).
pub fn window_schema(speakers: &[String]) -> Value {
    json!({
        "type": "OBJECT",
        "properties": {
            "segments": {
                "type": "ARRAY",
                "items": {
                    "type": "OBJECT",
                    "properties": {
                        "speaker": { "type": "STRING", "enum": speakers },
                        "startSeconds": { "type": "NUMBER" },
                        "endSeconds": { "type": "NUMBER" },
                        "text": { "type": "STRING" },
                        "sentiment": { "type": "NUMBER" }
                    },
                    "required": ["speaker", "startSeconds", "endSeconds", "text", "sentiment"],
                    "propertyOrdering": ["speaker", "startSeconds", "endSeconds", "text", "sentiment"]
                }
            },
            "summary": { "type": "STRING" },
            "sentiment": { "type": "NUMBER" },
            "topics": { "type": "ARRAY", "items": { "type": "STRING" } },
            "actionItems": { "type": "ARRAY", "items": { "type": "STRING" } },
            "language": { "type": "STRING" }
        },
        "required": ["segments", "summary", "sentiment", "topics", "actionItems"],
        "propertyOrdering": ["segments", "summary", "sentiment", "topics", "actionItems", "language"]
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WindowAnswer {
    segments: Vec<AnswerSegment>,
    summary: String,
    sentiment: f64,
    topics: Vec<String>,
    action_items: Vec<String>,
    #[serde(default)]
    language: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerSegment {
    speaker: String,
    start_seconds: f64,
    end_seconds: f64,
    text: String,
    sentiment: f64,
}

/// One window's answer, checked and placed on the call's timeline.
struct WindowResult {
    index: usize,
    items: Vec<TimedText>,
    summary: String,
    sentiment: f64,
    topics: Vec<String>,
    action_items: Vec<String>,
    language: Option<String>,
    usage: TokenUsage,
    raw: Value,
    /// The part of the call this window speaks for (its overlaps halved with its neighbours').
    own: (i64, i64),
}

fn schema_violation(why: impl std::fmt::Display) -> AnalyzeError {
    AnalyzeError::Permanent(format!(
        "Gemini's answer does not fit the schema asked: {why}"
    ))
}

fn finite_in(x: f64, lo: f64, hi: f64, what: &str) -> Result<f64, AnalyzeError> {
    if x.is_finite() {
        Ok(x.clamp(lo, hi))
    } else {
        Err(schema_violation(format!("{what} is not a number")))
    }
}

/// Checks a window's answer and puts its segments on the call's timeline.
fn check_answer(
    value: Value,
    window: &AudioWindow,
    speakers: &[String],
) -> Result<(Vec<TimedText>, WindowAnswer), AnalyzeError> {
    let answer: WindowAnswer = serde_json::from_value(value).map_err(schema_violation)?;
    let length_s = (window.end_ms - window.start_ms) as f64 / 1000.0;
    let mut items = Vec::with_capacity(answer.segments.len());
    for (i, s) in answer.segments.iter().enumerate() {
        let channel = speakers
            .iter()
            .position(|name| name == &s.speaker)
            .ok_or_else(|| {
                schema_violation(format!(
                    "segment {i} names an unknown speaker {:?}",
                    s.speaker
                ))
            })?;
        // A little past the window's end is drift, not an error; grounding places it.
        let start = finite_in(s.start_seconds, 0.0, length_s + 5.0, "a segment's start")?;
        let end = finite_in(s.end_seconds, 0.0, length_s + 5.0, "a segment's end")?;
        if end < start {
            return Err(schema_violation(format!(
                "segment {i} ends before it starts"
            )));
        }
        let text = s.text.trim();
        if text.is_empty() {
            continue;
        }
        items.push(TimedText {
            channel,
            start_ms: window.start_ms + (start * 1000.0).round() as i64,
            end_ms: window.start_ms + (end * 1000.0).round() as i64,
            text: text.to_string(),
            sentiment: Some(finite_in(s.sentiment, -1.0, 1.0, "a segment's sentiment")?),
        });
    }
    Ok((items, answer))
}

impl GeminiInsights {
    async fn window(
        &self,
        window: &AudioWindow,
        count: usize,
        duration_ms: i64,
        speakers: &[String],
    ) -> Result<WindowResult, AnalyzeError> {
        let total: u64 = window
            .files
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        let inline = total <= self.config.inline_limit_bytes;
        let mut parts = vec![Part::Text(format!(
            "Window {} of {count} of a {:.1}-second call: {:.1}s to {:.1}s of it. \
             Times in your answer are seconds from the start of this window.",
            window.index + 1,
            duration_ms as f64 / 1000.0,
            window.start_ms as f64 / 1000.0,
            window.end_ms as f64 / 1000.0,
        ))];
        let mut uploaded = Vec::new();
        let result = async {
            for (c, file) in window.files.iter().enumerate() {
                let name = speakers.get(c).map_or("speaker", String::as_str);
                parts.push(Part::Text(format!(
                    "Channel {}: only {name} is heard on this audio part.",
                    c + 1
                )));
                if inline {
                    let data = tokio::fs::read(file).await.map_err(anyhow::Error::from)?;
                    parts.push(Part::InlineData {
                        mime_type: "audio/wav".into(),
                        data: data.into(),
                    });
                } else {
                    let f = self
                        .client
                        .upload_file(file, "audio/wav", &format!("window-{}-ch{c}", window.index))
                        .await
                        .map_err(from_gemini)?;
                    parts.push(Part::FileData {
                        mime_type: f.mime_type.clone(),
                        file_uri: f.uri.clone(),
                    });
                    uploaded.push(f.name);
                }
            }
            let request = GenerateRequest {
                system_instruction: Some(INSTRUCTIONS.into()),
                parts,
                response_schema: window_schema(speakers),
                temperature: Some(0.0),
                max_output_tokens: None,
            };
            self.client.generate(&request).await.map_err(from_gemini)
        }
        .await;
        // Uploaded audio is removed whatever came of the request.
        for name in uploaded {
            if let Err(e) = self.client.delete_file(&name).await {
                tracing::warn!(file = %name, error = %e, "deleting an uploaded audio window failed");
            }
        }
        let generated = result?;
        let (items, answer) = check_answer(generated.json, window, speakers)?;
        let half = (self.config.overlap_ms / 2).max(0);
        let own = (
            if window.index == 0 {
                0
            } else {
                window.start_ms + half
            },
            if window.index + 1 == count {
                i64::MAX
            } else {
                window.end_ms - half
            },
        );
        Ok(WindowResult {
            index: window.index,
            items,
            summary: answer.summary,
            sentiment: finite_in(answer.sentiment, -1.0, 1.0, "the sentiment")?,
            topics: answer.topics,
            action_items: answer.action_items,
            language: answer.language,
            usage: TokenUsage {
                prompt_tokens: generated.usage.prompt_tokens,
                output_tokens: generated.usage.output_tokens + generated.usage.thoughts_tokens,
                total_tokens: generated.usage.total_tokens,
            },
            raw: generated.raw,
            own,
        })
    }
}

fn from_gemini(e: GeminiError) -> AnalyzeError {
    match e {
        GeminiError::Transient { message, .. } => {
            AnalyzeError::Transient(anyhow::anyhow!("Gemini: {message}"))
        }
        GeminiError::Permanent { message } => AnalyzeError::Permanent(message),
    }
}

/// Joins the windows' answers into the call's: each window keeps the segments that start in the
/// part of the call it speaks for (so an overlap's speech is kept once), the segments are
/// grounded, and the rest is merged in order.
fn stitch(
    mut windows: Vec<WindowResult>,
    facts: &AcousticFacts,
    speakers: &[String],
    model: &str,
    requested_language: Option<String>,
) -> Insights {
    windows.sort_by_key(|w| w.index);
    let mut items = Vec::new();
    let mut usage = TokenUsage::default();
    let mut summary = Vec::new();
    let mut topics: Vec<String> = Vec::new();
    let mut action_items: Vec<String> = Vec::new();
    let (mut weighted, mut weight) = (0.0, 0.0);
    let mut raw = Vec::new();
    let mut language = requested_language;
    for w in windows {
        items.extend(
            w.items
                .into_iter()
                .filter(|i| i.start_ms >= w.own.0 && i.start_ms < w.own.1),
        );
        usage += w.usage;
        if !w.summary.trim().is_empty() {
            summary.push(w.summary.trim().to_string());
        }
        for t in w.topics.into_iter().map(|t| t.trim().to_string()) {
            if !t.is_empty() && !topics.iter().any(|x| x.eq_ignore_ascii_case(&t)) {
                topics.push(t);
            }
        }
        for a in w.action_items.into_iter().map(|a| a.trim().to_string()) {
            if !a.is_empty() && !action_items.contains(&a) {
                action_items.push(a);
            }
        }
        let span = (w.own.1.min(facts.duration_ms) - w.own.0).max(1) as f64;
        weighted += w.sentiment * span;
        weight += span;
        raw.push(w.raw);
        if language.is_none() {
            language = w.language.filter(|l| !l.trim().is_empty());
        }
    }
    let segments = ground(&items, facts, speakers);
    let transcript_text = (!segments.is_empty()).then(|| {
        segments
            .iter()
            .map(|s| format!("{}: {}", s.speaker, s.text.as_deref().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let score = if weight > 0.0 { weighted / weight } else { 0.0 };
    Insights {
        analyzer: format!("gemini:{model}"),
        segments,
        transcript_text,
        language,
        summary: (!summary.is_empty()).then(|| summary.join(" ")),
        sentiment: Some(Sentiment {
            score: (score * 10_000.0).round() / 10_000.0,
            label: lexicon::label(score),
        }),
        topics: topics.into_iter().take(10).collect(),
        action_items: action_items
            .into_iter()
            .map(|a| crate::domain::Quote::new(a, Vec::new()))
            .collect(),
        issues: Vec::new(),
        intent: None,
        outcome: None,
        categories: Vec::new(),
        model: Some(model.to_string()),
        prompt_version: Some(PROMPT_VERSION.to_string()),
        usage: Some(usage),
        model_responses: raw,
    }
}

#[async_trait]
impl InsightsSource for GeminiInsights {
    fn name(&self) -> String {
        format!("gemini:{}", self.config.model)
    }

    async fn insights(
        &self,
        audio: &Audio,
        input: InsightsInput,
    ) -> Result<Insights, AnalyzeError> {
        let dir = tempfile::tempdir().map_err(anyhow::Error::from)?;
        let path = match audio {
            Audio::File(path) => path.clone(),
            Audio::Bytes(bytes) => {
                let path = dir.path().join("recording");
                tokio::fs::write(&path, bytes)
                    .await
                    .map_err(anyhow::Error::from)?;
                path
            }
        };
        let windows = Windows {
            window_ms: self.config.window_ms.max(10_000),
            overlap_ms: self.config.overlap_ms.clamp(0, self.config.window_ms / 2),
        };
        let (source, out) = (path.clone(), dir.path().to_path_buf());
        let cut = tokio::task::spawn_blocking(move || write_windows(&source, windows, &out))
            .await
            .map_err(|e| AnalyzeError::Transient(anyhow::anyhow!("audio task failed: {e}")))?
            .map_err(|e| AnalyzeError::Permanent(e.to_string()))?;
        // The facts the pipeline measured are the ground truth the answers are placed on.
        let facts = &input.facts;
        let speakers = Arc::new(input.speakers.clone());
        let count = cut.len();
        let duration_ms = facts.duration_ms;
        let jobs: Vec<_> = cut
            .into_iter()
            .map(|w| {
                let speakers = speakers.clone();
                async move { self.window(&w, count, duration_ms, &speakers).await }
            })
            .collect();
        let results: Vec<WindowResult> = futures::stream::iter(jobs)
            .buffer_unordered(self.config.parallel_windows.max(1))
            .try_collect()
            .await?;
        Ok(stitch(
            results,
            facts,
            &input.speakers,
            &self.config.model,
            input.request.language.clone(),
        ))
    }
}
