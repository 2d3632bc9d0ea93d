//! Redaction for compliance: what a tenant's policy (or a call's override) asks for, and how an
//! analysis is redacted — every personal datum [`super::pii`] finds in its transcript and
//! insights replaced by a typed placeholder (`[CARD_NUMBER]`), each replacement recorded with
//! where it was, in the text and, for transcript segments, in the recording (from the grounded
//! segment's times), so the audio can be covered with a tone over the same stretches.

use serde::{Deserialize, Serialize};

use super::pii;
use super::Analysis;

/// What is redacted in a tenant's calls (the tenant's policy, or a call's with its override).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedactionPolicy {
    /// Personal data in the transcript and the insights is replaced by placeholders.
    pub transcript: bool,
    /// The recording is replaced by a copy where personal data is spoken is covered by a tone.
    pub audio: bool,
    /// With `audio`, the original recording is deleted once the redacted copy is stored.
    pub delete_original: bool,
}

/// A call's changes to its tenant's policy (`None`: as the tenant's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedactionOverride {
    pub transcript: Option<bool>,
    pub audio: Option<bool>,
    pub delete_original: Option<bool>,
}

impl RedactionPolicy {
    /// The policy with a call's override applied.
    pub fn with(self, o: RedactionOverride) -> Self {
        Self {
            transcript: o.transcript.unwrap_or(self.transcript),
            audio: o.audio.unwrap_or(self.audio),
            delete_original: o.delete_original.unwrap_or(self.delete_original),
        }
    }

    /// Whether anything is redacted at all.
    pub fn any(self) -> bool {
        self.transcript || self.audio
    }
}

/// One personal datum found in a call: its kind, the field it was in, where it is in that
/// field's text (in characters; the placeholder's place once replaced), and, in a transcript
/// segment, the stretch of the recording where it is said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedactionSpan {
    /// A `PersonalDataKind` name (`CARD_NUMBER`, `PHONE`, …).
    pub kind: String,
    /// `segments[3].text`, `summary`, `actionItems[0].text`, `topics[1]`, `intent`, `transcript`.
    pub field: String,
    pub start: usize,
    pub end: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<i64>,
}

/// How much of the recording either side of a datum's estimated stretch is covered too: a
/// segment's words are placed in it by their position in its text, not by word timings.
pub const AUDIO_PAD_MS: i64 = 600;

fn chars(s: &str, byte: usize) -> usize {
    s[..byte].chars().count()
}

/// Finds the personal data in `text` and, when `replace`, replaces them; the spans, in
/// characters of the text as it ends up. `on_span` also gets the original's character offsets
/// and length (for placing a segment's data in time).
fn redact_text(
    text: &mut String,
    field: &str,
    replace: bool,
    spans: &mut Vec<RedactionSpan>,
    mut on_span: impl FnMut(&mut RedactionSpan, usize, usize, usize),
) {
    if replace {
        let out = pii::redact(text);
        if out.spans.is_empty() {
            return;
        }
        let total = text.chars().count();
        for s in &out.spans {
            let mut span = RedactionSpan {
                kind: s.kind.as_str().to_string(),
                field: field.to_string(),
                start: chars(&out.text, s.start),
                end: chars(&out.text, s.end),
                start_ms: None,
                end_ms: None,
            };
            on_span(
                &mut span,
                chars(text, s.original_start),
                chars(text, s.original_end),
                total,
            );
            spans.push(span);
        }
        *text = out.text;
    } else {
        let total = text.chars().count();
        for f in &pii::find(text) {
            let (start, end) = (chars(text, f.start), chars(text, f.end));
            let mut span = RedactionSpan {
                kind: f.kind.as_str().to_string(),
                field: field.to_string(),
                start,
                end,
                start_ms: None,
                end_ms: None,
            };
            on_span(&mut span, start, end, total);
            spans.push(span);
        }
    }
}

/// Redacts an analysis in place (texts replaced only when `replace_text`): its segments, the
/// transcript, summary, intent, topics, action items and issues, and the model's raw answers.
/// Returns every datum found, segments' with their stretch of the recording.
pub fn redact_analysis(analysis: &mut Analysis, replace_text: bool) -> Vec<RedactionSpan> {
    let mut spans = Vec::new();
    let duration = analysis.duration_ms.max(0);
    for (i, seg) in analysis.segments.iter_mut().enumerate() {
        let (seg_start, seg_end) = (seg.start_ms, seg.end_ms.max(seg.start_ms));
        if let Some(text) = seg.text.as_mut() {
            redact_text(
                text,
                &format!("segments[{i}].text"),
                replace_text,
                &mut spans,
                |span, start, end, total| {
                    let len = seg_end - seg_start;
                    let at = |c: usize| seg_start + len * c as i64 / total.max(1) as i64;
                    span.start_ms = Some((at(start) - AUDIO_PAD_MS).max(0));
                    let end_ms = at(end) + AUDIO_PAD_MS;
                    span.end_ms = Some(if duration > 0 {
                        end_ms.min(duration)
                    } else {
                        end_ms
                    });
                },
            );
        }
    }
    let none = |_: &mut RedactionSpan, _: usize, _: usize, _: usize| {};
    if let Some(t) = analysis.transcript_text.as_mut() {
        redact_text(t, "transcript", replace_text, &mut spans, none);
    }
    if let Some(t) = analysis.summary.as_mut() {
        redact_text(t, "summary", replace_text, &mut spans, none);
    }
    if let Some(t) = analysis.intent.as_mut() {
        redact_text(t, "intent", replace_text, &mut spans, none);
    }
    for (i, t) in analysis.topics.iter_mut().enumerate() {
        redact_text(t, &format!("topics[{i}]"), replace_text, &mut spans, none);
    }
    for (name, quotes) in [
        ("actionItems", &mut analysis.action_items),
        ("issues", &mut analysis.issues),
    ] {
        for (i, q) in quotes.iter_mut().enumerate() {
            redact_text(
                &mut q.text,
                &format!("{name}[{i}].text"),
                replace_text,
                &mut spans,
                none,
            );
        }
    }
    if replace_text {
        for v in &mut analysis.model_responses {
            redact_json(v);
        }
    }
    spans
}

/// Replaces the personal data in every string of a JSON value (an integrator's transcript, a
/// model's raw answer).
pub fn redact_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            let out = pii::redact(s);
            if !out.spans.is_empty() {
                *s = out.text;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        Value::Object(fields) => fields.values_mut().for_each(redact_json),
        _ => {}
    }
}

/// The stretches of the recording to cover, from the spans that have them.
pub fn audio_spans(spans: &[RedactionSpan]) -> Vec<(i64, i64)> {
    spans
        .iter()
        .filter_map(|s| Some((s.start_ms?, s.end_ms?)))
        .collect()
}

/// Where a call's redacted recording is kept.
pub fn redacted_recording_key(tenant: uuid::Uuid, call: uuid::Uuid) -> String {
    format!("tenants/{tenant}/calls/{call}/recording-redacted.wav")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CallMetrics, Quote, Segment};

    fn analysis() -> Analysis {
        let seg = |start_ms, end_ms, text: &str| Segment {
            speaker: "Customer".into(),
            channel: 1,
            start_ms,
            end_ms,
            text: Some(text.into()),
            sentiment: None,
            grounded: true,
        };
        Analysis {
            analyzer: "local".into(),
            duration_ms: 20_000,
            channels: 2,
            sample_rate: 16_000,
            language: None,
            speakers: vec!["Agent".into(), "Customer".into()],
            segments: vec![
                seg(0, 2_000, "How can I help?"),
                seg(
                    4_000,
                    12_000,
                    "My card is 4111 1111 1111 1111 and mail me at jane.doe@example.com",
                ),
            ],
            transcript_text: Some("card 4111 1111 1111 1111".into()),
            summary: Some("Customer gave card 4111 1111 1111 1111.".into()),
            sentiment: None,
            topics: vec!["jane.doe@example.com".into()],
            action_items: vec![Quote::new("Call back on 415-555-0123", vec![1])],
            issues: vec![],
            intent: None,
            outcome: None,
            categories: vec![],
            metrics: CallMetrics::default(),
            model: None,
            prompt_version: None,
            usage: None,
            model_responses: vec![serde_json::json!({"text": "card 4111 1111 1111 1111"})],
        }
    }

    #[test]
    fn every_text_is_redacted_and_segment_data_is_placed_in_time() {
        let mut a = analysis();
        let spans = redact_analysis(&mut a, true);
        let all = serde_json::to_string(&a).unwrap()
            + &serde_json::to_string(&a.model_responses).unwrap();
        assert!(!all.contains("4111"), "{all}");
        assert!(!all.contains("jane.doe"), "{all}");
        assert!(!all.contains("555-0123"), "{all}");
        let text = a.segments[1].text.as_deref().unwrap();
        assert_eq!(text, "My card is [CARD_NUMBER] and mail me at [EMAIL]");
        let seg: Vec<_> = spans
            .iter()
            .filter(|s| s.field == "segments[1].text")
            .collect();
        assert_eq!(seg.len(), 2);
        assert_eq!(seg[0].kind, "CARD_NUMBER");
        let placeholder: String = text
            .chars()
            .skip(seg[0].start)
            .take(seg[0].end - seg[0].start)
            .collect();
        assert_eq!(placeholder, "[CARD_NUMBER]");
        // The card is said from about 1/6 to 1/2 of the segment, padded.
        let (s, e) = (seg[0].start_ms.unwrap(), seg[0].end_ms.unwrap());
        assert!(
            (4_000..6_000).contains(&s) && (7_000..10_000).contains(&e),
            "{s}..{e}"
        );
        assert!(spans
            .iter()
            .any(|s| s.field == "actionItems[0].text" && s.kind == "PHONE"));
        assert!(spans
            .iter()
            .any(|s| s.field == "topics[0]" && s.start_ms.is_none()));
        assert_eq!(audio_spans(&spans).len(), 2);
    }

    #[test]
    fn without_replacing_the_data_are_found_and_kept() {
        let mut a = analysis();
        let spans = redact_analysis(&mut a, false);
        assert_eq!(a, analysis());
        assert_eq!(audio_spans(&spans).len(), 2);
    }

    #[test]
    fn an_override_changes_only_what_it_names() {
        let tenant = RedactionPolicy {
            transcript: true,
            audio: false,
            delete_original: false,
        };
        let p = tenant.with(RedactionOverride {
            audio: Some(true),
            ..Default::default()
        });
        assert!(p.transcript && p.audio && !p.delete_original);
        assert!(!RedactionPolicy::default().any());
    }
}
