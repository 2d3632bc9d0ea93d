//! Gemini behind the `InsightsSource` port: the call is sent window by window (long calls in
//! overlapping windows, analysed in parallel), each channel as its own labelled audio part so
//! that the model hears agent and customer apart; the structured answers are checked, stitched
//! on their offsets, and every segment is grounded on the acoustic speech of its channel
//! (`domain::conversation::ground`). Action items, issues and categories cite the segments of
//! their window by position, and are mapped onto the call's grounded segments. Talk time and the
//! other metrics never come from the model.

use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{GeminiClient, GeminiError, GenerateRequest, Part};
use crate::adapters::local::acoustic::chunks::{write_windows, AudioWindow, Windows};
use crate::adapters::local::lexicon;
use crate::domain::conversation::{ground_placed, AcousticFacts, TimedText};
use crate::domain::{
    CallOutcome, CategoryMatch, CategoryRule, Insights, InsightsInput, Quote, Sentiment, TokenUsage,
};
use crate::ports::{AnalyzeError, Audio, InsightsSource};

/// Changes whenever the instructions or the answer's schema change, so that analyses can say
/// which prompt produced them.
pub const PROMPT_VERSION: &str = "2026-12-03.2";

const INSTRUCTIONS: &str = "You analyse recorded phone calls for a call-tracking service. \
You are given one window of a call: one audio part per channel, each labelled with the speaker \
heard on it. Transcribe what each speaker says, verbatim, in the language spoken, as segments \
of one speaker each (a sentence or a short turn), with start and end times in seconds from the \
start of this window, taken from the audio part of that speaker's channel. Never invent speech \
that is not in the audio. Give each segment a sentiment from -1 (negative) to 1 (positive). \
The segments are numbered by their position in your `segments` array, starting at 0; the \
action items, issues and categories you give cite the segments that say them by these numbers \
(at least one each). Then summarise the window in two to four sentences, give its overall \
sentiment (-1 to 1) and up to five short topics (a few words each). Give the action items \
someone agreed to or was asked to do, and the issues: the problems the caller raised (each \
list empty when there are none), each as a short text with its segments. Give the caller's \
intent: why they called, in a few words (empty when this window does not show it). Give the \
outcome when this window shows how the call ends: RESOLVED (the request or problem was dealt \
with), UNRESOLVED (it is still open and nothing was agreed), FOLLOW_UP (someone committed to a \
next step after the call) or ESCALATED (the call was handed on to someone else); leave it out \
otherwise. When categories are listed, give each one this window matches, by its instructions \
or its keywords, with the segments where it does; leave out those it does not match. Answer in \
the JSON schema given.";

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

/// The outcomes a model may answer, as [`CallOutcome`] spells them.
const OUTCOMES: [&str; 4] = ["RESOLVED", "UNRESOLVED", "FOLLOW_UP", "ESCALATED"];

/// The schema of one window's answer (Gemini's OpenAPI subset). `categories` is asked for only
/// when the tenant has some; its names are then the only ones allowed.
pub fn window_schema(speakers: &[String], categories: &[CategoryRule]) -> Value {
    let cited = || {
        json!({
            "type": "ARRAY",
            "items": {
                "type": "OBJECT",
                "properties": {
                    "text": { "type": "STRING" },
                    "segments": { "type": "ARRAY", "items": { "type": "INTEGER" }, "minItems": 1 }
                },
                "required": ["text", "segments"],
                "propertyOrdering": ["text", "segments"]
            }
        })
    };
    let mut schema = json!({
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
            "actionItems": cited(),
            "issues": cited(),
            "intent": { "type": "STRING" },
            "outcome": { "type": "STRING", "enum": OUTCOMES },
            "language": { "type": "STRING" }
        },
        "required": ["segments", "summary", "sentiment", "topics", "actionItems", "issues", "intent"],
        "propertyOrdering": [
            "segments", "summary", "sentiment", "topics", "actionItems", "issues", "intent",
            "outcome", "language"
        ]
    });
    if !categories.is_empty() {
        let names: Vec<&str> = categories.iter().map(|c| c.name.as_str()).collect();
        schema["properties"]["categories"] = json!({
            "type": "ARRAY",
            "items": {
                "type": "OBJECT",
                "properties": {
                    "name": { "type": "STRING", "enum": names },
                    "segments": { "type": "ARRAY", "items": { "type": "INTEGER" }, "minItems": 1 }
                },
                "required": ["name", "segments"],
                "propertyOrdering": ["name", "segments"]
            }
        });
        for list in ["required", "propertyOrdering"] {
            if let Some(list) = schema[list].as_array_mut() {
                list.push(json!("categories"));
            }
        }
    }
    schema
}

/// The prompt's list of the tenant's categories: each one's name, instructions and keywords.
pub fn categories_prompt(categories: &[CategoryRule]) -> Option<String> {
    if categories.is_empty() {
        return None;
    }
    let mut out = String::from(
        "Categories: report each of these that this window matches, by its instructions or \
         by its keywords (said as whole words or phrases), under its name.",
    );
    for c in categories {
        out.push_str(&format!("\n- {}", c.name));
        if let Some(i) = c
            .instructions
            .as_deref()
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            out.push_str(&format!(": {i}"));
        }
        let keywords: Vec<&str> = c
            .keywords
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .collect();
        if !keywords.is_empty() {
            let quoted: Vec<String> = keywords.iter().map(|k| format!("\"{k}\"")).collect();
            out.push_str(&format!(" (keywords: {})", quoted.join(", ")));
        }
    }
    Some(out)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WindowAnswer {
    segments: Vec<AnswerSegment>,
    summary: String,
    sentiment: f64,
    topics: Vec<String>,
    action_items: Vec<AnswerQuote>,
    issues: Vec<AnswerQuote>,
    #[serde(default)]
    intent: Option<String>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    categories: Vec<AnswerCategory>,
    #[serde(default)]
    language: Option<String>,
}

/// An action item or issue as answered: its text and the positions of its segments in the
/// answer's `segments`.
#[derive(Debug, Deserialize)]
struct AnswerQuote {
    text: String,
    segments: Vec<i64>,
}

#[derive(Debug, Deserialize)]
struct AnswerCategory {
    name: String,
    segments: Vec<i64>,
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

/// A quote of one window: its text and the window's items (indexes into `Checked::items`, at
/// least one) that say it.
#[derive(Debug, Clone, PartialEq)]
struct WindowQuote {
    text: String,
    items: Vec<usize>,
}

/// One window's answer, checked: its segments placed on the call's timeline as items, and
/// everything that cites segments citing those items.
#[derive(Debug)]
struct Checked {
    items: Vec<TimedText>,
    summary: String,
    sentiment: f64,
    topics: Vec<String>,
    action_items: Vec<WindowQuote>,
    issues: Vec<WindowQuote>,
    intent: Option<String>,
    outcome: Option<CallOutcome>,
    /// Per matched category: its index in the request's categories, and the items where (at
    /// least one).
    categories: Vec<(usize, Vec<usize>)>,
    language: Option<String>,
}

/// One window's answer, checked and placed on the call's timeline.
struct WindowResult {
    index: usize,
    answer: Checked,
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

/// Checks a window's answer and puts its segments on the call's timeline. Segments with no
/// text are left out, and so are the citations of them (an item citing only such segments
/// quotes nothing said, and is left out too); an item citing no segment, a citation of a
/// segment the answer does not have, a category not asked for or an outcome not in the schema
/// is a schema violation.
fn check_answer(
    value: Value,
    window: &AudioWindow,
    speakers: &[String],
    categories: &[CategoryRule],
) -> Result<Checked, AnalyzeError> {
    let answer: WindowAnswer = serde_json::from_value(value).map_err(schema_violation)?;
    let length_s = (window.end_ms - window.start_ms) as f64 / 1000.0;
    let mut items = Vec::with_capacity(answer.segments.len());
    // Per answered segment, the item it became (none for an empty one).
    let mut item_of: Vec<Option<usize>> = Vec::with_capacity(answer.segments.len());
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
            item_of.push(None);
            continue;
        }
        item_of.push(Some(items.len()));
        items.push(TimedText {
            channel,
            start_ms: window.start_ms + (start * 1000.0).round() as i64,
            end_ms: window.start_ms + (end * 1000.0).round() as i64,
            text: text.to_string(),
            sentiment: Some(finite_in(s.sentiment, -1.0, 1.0, "a segment's sentiment")?),
        });
    }
    // The items an answered item cites, ascending; `None` when they all had no text.
    let cite = |what: &str, refs: &[i64]| -> Result<Option<Vec<usize>>, AnalyzeError> {
        if refs.is_empty() {
            return Err(schema_violation(format!("{what} cites no segment")));
        }
        let mut out = Vec::with_capacity(refs.len());
        for &r in refs {
            let at = usize::try_from(r)
                .ok()
                .filter(|&at| at < item_of.len())
                .ok_or_else(|| {
                    schema_violation(format!(
                        "{what} cites segment {r}, but the answer has {} segments",
                        item_of.len()
                    ))
                })?;
            out.extend(item_of[at]);
        }
        out.sort_unstable();
        out.dedup();
        Ok((!out.is_empty()).then_some(out))
    };
    let quotes = |what: &str, quotes: &[AnswerQuote]| -> Result<Vec<WindowQuote>, AnalyzeError> {
        let mut out = Vec::with_capacity(quotes.len());
        for (i, q) in quotes.iter().enumerate() {
            let cited = cite(&format!("{what} {i}"), &q.segments)?;
            let text = q.text.trim();
            if let (Some(items), false) = (cited, text.is_empty()) {
                out.push(WindowQuote {
                    text: text.to_string(),
                    items,
                });
            }
        }
        Ok(out)
    };
    let action_items = quotes("action item", &answer.action_items)?;
    let issues = quotes("issue", &answer.issues)?;
    let mut matched = Vec::with_capacity(answer.categories.len());
    for c in &answer.categories {
        let at = categories
            .iter()
            .position(|rule| rule.name == c.name)
            .ok_or_else(|| {
                schema_violation(format!("the answer names an unknown category {:?}", c.name))
            })?;
        if let Some(items) = cite(&format!("category {:?}", c.name), &c.segments)? {
            matched.push((at, items));
        }
    }
    let outcome = match answer.outcome.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(o) => Some(CallOutcome::parse(o).ok_or_else(|| {
            schema_violation(format!("the outcome {o:?} is none of {OUTCOMES:?}"))
        })?),
    };
    Ok(Checked {
        items,
        summary: answer.summary,
        sentiment: finite_in(answer.sentiment, -1.0, 1.0, "the sentiment")?,
        topics: answer.topics,
        action_items,
        issues,
        intent: answer
            .intent
            .map(|i| i.trim().to_string())
            .filter(|i| !i.is_empty()),
        outcome,
        categories: matched,
        language: answer.language,
    })
}

impl GeminiInsights {
    async fn window(
        &self,
        window: &AudioWindow,
        count: usize,
        duration_ms: i64,
        speakers: &[String],
        categories: &[CategoryRule],
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
            parts.extend(categories_prompt(categories).map(Part::Text));
            let request = GenerateRequest {
                system_instruction: Some(INSTRUCTIONS.into()),
                parts,
                response_schema: window_schema(speakers, categories),
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
        let answer = check_answer(generated.json, window, speakers, categories)?;
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
            answer,
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
///
/// Citations follow their segments to the grounded list; a citation of a segment a window did
/// not keep is dropped (its neighbour, which kept it, reports it). Action items and issues are
/// merged by text, whatever the case, their segments joined; one whose citations were all
/// dropped is left out unless another window says the same. Categories are merged per category,
/// in the order the request gives them. So every quote and match cites at least one segment.
/// The intent is the first window's that gives one; the outcome the last window's that gives
/// one, since the end of the call decides it.
fn stitch(
    mut windows: Vec<WindowResult>,
    facts: &AcousticFacts,
    speakers: &[String],
    categories: &[CategoryRule],
    model: &str,
    requested_language: Option<String>,
) -> Insights {
    windows.sort_by_key(|w| w.index);
    let mut items = Vec::new();
    let mut usage = TokenUsage::default();
    let mut summary = Vec::new();
    let mut topics: Vec<String> = Vec::new();
    let (mut weighted, mut weight) = (0.0, 0.0);
    let mut raw = Vec::new();
    let mut language = requested_language;
    let (mut intent, mut outcome) = (None, None);
    // Per window, its items' indexes in `items` (none for those it did not keep).
    let mut kept: Vec<Vec<Option<usize>>> = Vec::with_capacity(windows.len());
    let mut answers = Vec::with_capacity(windows.len());
    for w in windows {
        let mut answer = w.answer;
        let mut own = Vec::with_capacity(answer.items.len());
        for i in std::mem::take(&mut answer.items) {
            if i.start_ms >= w.own.0 && i.start_ms < w.own.1 {
                own.push(Some(items.len()));
                items.push(i);
            } else {
                own.push(None);
            }
        }
        kept.push(own);
        usage += w.usage;
        if !answer.summary.trim().is_empty() {
            summary.push(answer.summary.trim().to_string());
        }
        for t in std::mem::take(&mut answer.topics) {
            let t = t.trim().to_string();
            if !t.is_empty() && !topics.iter().any(|x| x.eq_ignore_ascii_case(&t)) {
                topics.push(t);
            }
        }
        let span = (w.own.1.min(facts.duration_ms) - w.own.0).max(1) as f64;
        weighted += answer.sentiment * span;
        weight += span;
        raw.push(w.raw);
        if language.is_none() {
            language = answer.language.take().filter(|l| !l.trim().is_empty());
        }
        if intent.is_none() {
            intent = answer.intent.take();
        }
        outcome = answer.outcome.or(outcome);
        answers.push(answer);
    }
    let (segments, placed) = ground_placed(&items, facts, speakers);
    // Window `w`'s cited items as indexes into the grounded segments, ascending; `None` when
    // it kept none of them.
    let global = |w: usize, cited: &[usize]| -> Option<Vec<usize>> {
        let mut out: Vec<usize> = cited
            .iter()
            .filter_map(|&i| kept[w][i].map(|g| placed[g]))
            .collect();
        out.sort_unstable();
        out.dedup();
        (!out.is_empty()).then_some(out)
    };
    let merge = |pick: fn(&Checked) -> &[WindowQuote]| -> Vec<Quote> {
        let mut out: Vec<Quote> = Vec::new();
        for (w, answer) in answers.iter().enumerate() {
            for q in pick(answer) {
                let Some(segments) = global(w, &q.items) else {
                    continue;
                };
                let same = q.text.to_lowercase();
                match out.iter_mut().find(|o| o.text.to_lowercase() == same) {
                    Some(o) => {
                        o.segments.extend(segments);
                        o.segments.sort_unstable();
                        o.segments.dedup();
                    }
                    None => out.push(Quote::new(q.text.clone(), segments)),
                }
            }
        }
        out
    };
    let action_items = merge(|a| &a.action_items);
    let issues = merge(|a| &a.issues);
    let mut matched: Vec<Option<Vec<usize>>> = vec![None; categories.len()];
    for (w, answer) in answers.iter().enumerate() {
        for (c, cited) in &answer.categories {
            if let Some(segs) = global(w, cited) {
                let m = matched[*c].get_or_insert_with(Vec::new);
                m.extend(segs);
                m.sort_unstable();
                m.dedup();
            }
        }
    }
    let categories = categories
        .iter()
        .zip(matched)
        .filter_map(|(rule, segments)| {
            Some(CategoryMatch {
                category_id: rule.id,
                name: rule.name.clone(),
                segments: segments?,
            })
        })
        .collect();
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
        action_items,
        issues,
        intent,
        outcome,
        categories,
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
        let categories = &input.request.categories;
        let count = cut.len();
        let duration_ms = facts.duration_ms;
        let jobs: Vec<_> = cut
            .into_iter()
            .map(|w| {
                let speakers = speakers.clone();
                async move {
                    self.window(&w, count, duration_ms, &speakers, categories)
                        .await
                }
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
            categories,
            &self.config.model,
            input.request.language.clone(),
        ))
    }
}
