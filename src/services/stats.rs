//! Aggregates for analysts: counts by status, durations, talk time per speaker, sentiment and a
//! per-day series over the calls a filter selects.

use std::collections::BTreeMap;

use crate::domain::{CallMetrics, CallStatus, SentimentLabel, StatsRow as Row};
use crate::error::AppResult;
use crate::services::auth::{Caller, Permission};
use crate::services::calls::{checked_filter, CallFilter};
use crate::state::AppState;
use chrono::NaiveDate;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayStats {
    pub date: NaiveDate,
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    pub duration_ms: i64,
    pub sentiment_sum: f64,
    pub sentiment_n: i64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub total: i64,
    pub by_status: Vec<(CallStatus, i64)>,
    pub by_sentiment: Vec<(SentimentLabel, i64)>,
    pub total_duration_ms: i64,
    pub measured_calls: i64,
    pub talk_time: Vec<(String, i64)>,
    pub silence_ms: i64,
    pub overlap_ms: i64,
    pub interruptions: i64,
    pub sentiment_sum: f64,
    pub sentiment_n: i64,
    pub daily: Vec<DayStats>,
    /// Tokens models spent, over the calls a model analysed.
    pub tokens: crate::domain::TokenUsage,
    /// How many calls a model analysed, and their total duration.
    pub model_calls: i64,
    pub model_duration_ms: i64,
}

pub async fn call_stats(
    state: &AppState,
    caller: &Caller,
    filter: &CallFilter,
) -> AppResult<Stats> {
    caller.require(Permission::ReadStats)?;
    let rows = state
        .store
        .call_stat_rows(caller.tenant_id, &checked_filter(filter)?)
        .await?;
    Ok(aggregate(rows))
}

fn aggregate(rows: Vec<Row>) -> Stats {
    let mut s = Stats::default();
    let mut by_status: BTreeMap<&'static str, (CallStatus, i64)> = BTreeMap::new();
    let mut by_sentiment: BTreeMap<&'static str, (SentimentLabel, i64)> = BTreeMap::new();
    let mut talk: Vec<(String, i64)> = Vec::new();
    let mut days: BTreeMap<NaiveDate, DayStats> = BTreeMap::new();
    for (created, status, duration, score, label, metrics, prompt, output, total) in rows {
        if let Some(total) = total {
            s.tokens += crate::domain::TokenUsage {
                prompt_tokens: prompt.unwrap_or(0),
                output_tokens: output.unwrap_or(0),
                total_tokens: total,
            };
            s.model_calls += 1;
            s.model_duration_ms += duration.unwrap_or(0);
        }
        s.total += 1;
        let status = CallStatus::parse(&status).unwrap_or(CallStatus::Queued);
        by_status.entry(status.as_str()).or_insert((status, 0)).1 += 1;
        let day = days
            .entry(created.date_naive())
            .or_insert_with(|| DayStats {
                date: created.date_naive(),
                ..Default::default()
            });
        day.total += 1;
        match status {
            CallStatus::Completed => day.completed += 1,
            CallStatus::Failed => day.failed += 1,
            _ => {}
        }
        if let Some(d) = duration {
            s.total_duration_ms += d;
            s.measured_calls += 1;
            day.duration_ms += d;
        }
        if let Some(score) = score {
            s.sentiment_sum += score;
            s.sentiment_n += 1;
            day.sentiment_sum += score;
            day.sentiment_n += 1;
        }
        if let Some(stored) = label {
            // Labels are written from `SentimentLabel` only; a row with another one is counted
            // as neutral rather than dropped, so that the counts still add up.
            let label = SentimentLabel::parse(&stored).unwrap_or_else(|| {
                tracing::warn!(label = %stored, "unknown stored sentiment label; counted as NEUTRAL");
                SentimentLabel::Neutral
            });
            by_sentiment.entry(label.as_str()).or_insert((label, 0)).1 += 1;
        }
        if let Some(m) = metrics.and_then(|m| serde_json::from_value::<CallMetrics>(m).ok()) {
            s.silence_ms += m.silence_ms;
            s.overlap_ms += m.overlap_ms;
            s.interruptions += m.interruptions;
            for t in m.talk_time {
                match talk.iter_mut().find(|(name, _)| *name == t.speaker) {
                    Some(entry) => entry.1 += t.ms,
                    None => talk.push((t.speaker, t.ms)),
                }
            }
        }
    }
    s.by_status = by_status.into_values().collect();
    s.by_sentiment = by_sentiment.into_values().collect();
    s.talk_time = talk;
    s.daily = days.into_values().collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SpeakerTime;
    use chrono::{DateTime, Utc};

    #[test]
    fn aggregates_by_status_day_and_speaker() {
        let day1: DateTime<Utc> = "2026-01-01T10:00:00Z".parse().unwrap();
        let day2: DateTime<Utc> = "2026-01-02T10:00:00Z".parse().unwrap();
        let m = |a: i64, c: i64| {
            Some(
                serde_json::to_value(CallMetrics {
                    talk_time: vec![
                        SpeakerTime {
                            speaker: "agent".into(),
                            ms: a,
                        },
                        SpeakerTime {
                            speaker: "customer".into(),
                            ms: c,
                        },
                    ],
                    silence_ms: 10,
                    overlap_ms: 5,
                    interruptions: 1,
                    longest_monologue_ms: 0,
                })
                .unwrap(),
            )
        };
        let s = aggregate(vec![
            (
                day1,
                "COMPLETED".into(),
                Some(1000),
                Some(0.5),
                Some("POSITIVE".into()),
                m(600, 300),
                Some(1000),
                Some(200),
                Some(1300),
            ),
            (
                day1,
                "FAILED".into(),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            ),
            (
                day2,
                "COMPLETED".into(),
                Some(3000),
                Some(-0.1),
                Some("NEGATIVE".into()),
                m(100, 2000),
                None,
                None,
                None,
            ),
        ]);
        assert_eq!(s.total, 3);
        assert_eq!(s.total_duration_ms, 4000);
        assert_eq!(s.measured_calls, 2);
        assert_eq!(
            s.talk_time,
            vec![("agent".into(), 700), ("customer".into(), 2300)]
        );
        assert_eq!(s.interruptions, 2);
        assert_eq!(
            (s.tokens.total_tokens, s.model_calls, s.model_duration_ms),
            (1300, 1, 1000)
        );
        assert!((s.sentiment_sum - 0.4).abs() < 1e-9);
        assert_eq!(s.daily.len(), 2);
        assert_eq!(
            (s.daily[0].total, s.daily[0].completed, s.daily[0].failed),
            (2, 1, 1)
        );
        assert_eq!(
            s.by_status,
            vec![(CallStatus::Completed, 2), (CallStatus::Failed, 1)]
        );
        assert_eq!(
            s.by_sentiment,
            vec![(SentimentLabel::Negative, 1), (SentimentLabel::Positive, 1)]
        );
    }

    #[test]
    fn an_unknown_stored_label_counts_as_neutral() {
        let day: DateTime<Utc> = "2026-01-01T10:00:00Z".parse().unwrap();
        let row = |label: &str| {
            (
                day,
                "COMPLETED".to_string(),
                None,
                Some(0.0),
                Some(label.to_string()),
                None,
                None,
                None,
                None,
            )
        };
        let s = aggregate(vec![row("NEUTRAL"), row("MIXED"), row("POSITIVE")]);
        assert_eq!(
            s.by_sentiment,
            vec![(SentimentLabel::Neutral, 2), (SentimentLabel::Positive, 1)]
        );
    }
}
