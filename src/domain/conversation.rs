//! The conversation as timed speech: who speaks when, and what follows from it alone — talk
//! time, silence, overlap, interruptions, the longest monologue — from any list of timed
//! segments, whoever produced them (the acoustic analysis, a transcript, a model). Pure.

use crate::domain::{AudioInfo, CallMetrics, Segment, SpeakerTime};

/// A speaker starting while the other's turn is this old (or older) interrupts it.
pub const INTERRUPTION_MIN_TURN_MS: i64 = 300;
/// ...provided the other turn goes on at least this long afterwards, so that a hand-over whose
/// edges merely touch (frame rounding, a quick reply) is not counted.
pub const INTERRUPTION_MIN_OVERLAP_MS: i64 = 100;
/// A speaker's own pauses shorter than this do not end their monologue.
pub const MONOLOGUE_MAX_PAUSE_MS: i64 = 1500;

/// What the audio itself says, before anything reads its words: its format and duration, and
/// when each channel carries speech (sorted, non-overlapping intervals per channel).
#[derive(Debug, Clone, PartialEq)]
pub struct AcousticFacts {
    pub info: AudioInfo,
    pub duration_ms: i64,
    pub sample_rate: u32,
    /// Per channel, in channel order: `(start_ms, end_ms)` of each stretch of speech.
    pub speech: Vec<Vec<(i64, i64)>>,
}

impl AcousticFacts {
    pub fn channels(&self) -> usize {
        self.speech.len()
    }

    /// The speech as segments named after their channel's speaker, in time order.
    pub fn speech_segments(&self, speakers: &[String]) -> Vec<Segment> {
        let mut segments: Vec<Segment> = Vec::new();
        for (c, runs) in self.speech.iter().enumerate() {
            for &(start_ms, end_ms) in runs {
                segments.push(Segment {
                    speaker: speakers.get(c).cloned().unwrap_or_default(),
                    channel: i32::try_from(c).unwrap_or(i32::MAX),
                    start_ms,
                    end_ms,
                    text: None,
                    sentiment: None,
                    grounded: true,
                });
            }
        }
        segments.sort_by_key(|s| (s.start_ms, s.channel));
        segments
    }
}

/// Words as a transcript or a model timed them, before grounding: on `channel` (the speaker's
/// channel), from `start_ms` to `end_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedText {
    pub channel: usize,
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: String,
    pub sentiment: Option<f64>,
}

/// How far a boundary may move to land on an edge of speech.
pub const SNAP_TOLERANCE_MS: i64 = 600;

/// Places timed words on the audio. Model timestamps for audio drift, so each item is matched
/// to the speech the acoustic analysis heard on its channel: a boundary within
/// [`SNAP_TOLERANCE_MS`] of an edge of speech snaps onto it (a start inside speech that began
/// long before, or an end inside speech that goes on, stays where it is); an item touching no
/// speech of its channel (even with the tolerance) keeps its times, clamped to the call, and is
/// flagged `grounded: false`. Items on a channel the call does not have are put on the first.
/// The result is in time order.
pub fn ground(items: &[TimedText], facts: &AcousticFacts, speakers: &[String]) -> Vec<Segment> {
    ground_placed(items, facts, speakers).0
}

/// [`ground`], saying also where each item went: one segment per item, in time order, and
/// `placed[i]`, the index in those segments of the one grounded from `items[i]`.
pub fn ground_placed(
    items: &[TimedText],
    facts: &AcousticFacts,
    speakers: &[String],
) -> (Vec<Segment>, Vec<usize>) {
    let duration = facts.duration_ms.max(0);
    let channels = facts.channels().max(1);
    let out: Vec<Segment> = items
        .iter()
        .map(|item| {
            let channel = if item.channel < channels {
                item.channel
            } else {
                0
            };
            let start = item.start_ms.clamp(0, duration);
            let end = item.end_ms.clamp(start, duration);
            let runs = facts.speech.get(channel).map(Vec::as_slice).unwrap_or(&[]);
            let (lo, hi) = (start - SNAP_TOLERANCE_MS, end + SNAP_TOLERANCE_MS);
            let touching: Vec<&(i64, i64)> =
                runs.iter().filter(|(a, b)| *b > lo && *a < hi).collect();
            let (start_ms, end_ms, grounded) = match (touching.first(), touching.last()) {
                (Some(first), Some(last)) => {
                    let s = if first.0 >= lo { first.0 } else { start };
                    let e = if last.1 <= hi { last.1 } else { end };
                    if s < e {
                        (s, e, true)
                    } else {
                        (start, end, true)
                    }
                }
                _ => (start, end, false),
            };
            Segment {
                speaker: speakers.get(channel).cloned().unwrap_or_default(),
                channel: i32::try_from(channel).unwrap_or(i32::MAX),
                start_ms,
                end_ms,
                text: Some(item.text.clone()),
                sentiment: item.sentiment,
                grounded,
            }
        })
        .collect();
    // A stable sort of the items' indexes, so that equal keys keep the items' order.
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by_key(|&i| (out[i].start_ms, out[i].channel));
    let mut placed = vec![0; out.len()];
    for (at, &i) in order.iter().enumerate() {
        placed[i] = at;
    }
    let mut slots: Vec<Option<Segment>> = out.into_iter().map(Some).collect();
    let segments = order.iter().filter_map(|&i| slots[i].take()).collect();
    (segments, placed)
}

/// Names per channel: the submitted ones where given (and not blank), else the defaults —
/// `agent` (left) and `customer` (right) for stereo, `speaker` for mono.
pub fn speaker_names(channels: usize, given: Option<&[String]>) -> Vec<String> {
    (0..channels)
        .map(|c| {
            given
                .and_then(|names| names.get(c))
                .map(|n| n.trim())
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| match (channels, c) {
                    (1, _) => "speaker".to_string(),
                    (_, 0) => "agent".to_string(),
                    (_, 1) => "customer".to_string(),
                    (_, c) => format!("speaker {}", c + 1),
                })
        })
        .collect()
}

/// What is going on during one elementary stretch of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Floor {
    Silence,
    Solo(usize),
    Overlap,
}

/// Talk-time metrics from the speech segments; `speakers` gives the channel order.
pub fn metrics(speakers: &[String], segments: &[Segment], duration_ms: i64) -> CallMetrics {
    let duration_ms = duration_ms.max(0);
    let n = speakers.len();
    // Per channel: sorted, merged, clamped intervals.
    let mut per: Vec<Vec<(i64, i64)>> = vec![Vec::new(); n];
    for s in segments {
        let Some(list) = usize::try_from(s.channel).ok().and_then(|c| per.get_mut(c)) else {
            continue;
        };
        let (a, b) = (
            s.start_ms.clamp(0, duration_ms),
            s.end_ms.clamp(0, duration_ms),
        );
        if b > a {
            list.push((a, b));
        }
    }
    for list in &mut per {
        list.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(list.len());
        for &(a, b) in list.iter() {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *list = merged;
    }

    let talk_time = speakers
        .iter()
        .zip(&per)
        .map(|(name, list)| SpeakerTime {
            speaker: name.clone(),
            ms: list.iter().map(|(a, b)| b - a).sum(),
        })
        .collect();

    let timeline = timeline(&per, duration_ms);
    let silence_ms = timeline
        .iter()
        .filter(|(f, _, _)| *f == Floor::Silence)
        .map(|(_, a, b)| b - a)
        .sum();
    let overlap_ms = timeline
        .iter()
        .filter(|(f, _, _)| *f == Floor::Overlap)
        .map(|(_, a, b)| b - a)
        .sum();

    CallMetrics {
        talk_time,
        silence_ms,
        overlap_ms,
        interruptions: interruptions(&per),
        longest_monologue_ms: longest_monologue(&timeline),
    }
}

/// Cuts [0, duration) at every segment boundary and says who holds the floor in each piece;
/// adjacent pieces in the same state are merged.
fn timeline(per: &[Vec<(i64, i64)>], duration_ms: i64) -> Vec<(Floor, i64, i64)> {
    let mut cuts: Vec<i64> = Vec::with_capacity(2 + per.iter().map(|l| 2 * l.len()).sum::<usize>());
    cuts.push(0);
    cuts.push(duration_ms);
    for list in per {
        for &(a, b) in list {
            cuts.push(a);
            cuts.push(b);
        }
    }
    cuts.sort_unstable();
    cuts.dedup();

    let mut cursor = vec![0usize; per.len()];
    let mut out: Vec<(Floor, i64, i64)> = Vec::new();
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let mut active = 0usize;
        let mut who = 0usize;
        for (c, list) in per.iter().enumerate() {
            while cursor[c] < list.len() && list[cursor[c]].1 <= a {
                cursor[c] += 1;
            }
            if list.get(cursor[c]).is_some_and(|&(s, _)| s <= a) {
                active += 1;
                who = c;
            }
        }
        let floor = match active {
            0 => Floor::Silence,
            1 => Floor::Solo(who),
            _ => Floor::Overlap,
        };
        match out.last_mut() {
            Some(last) if last.0 == floor && last.2 == a => last.2 = b,
            _ => out.push((floor, a, b)),
        }
    }
    out
}

fn interruptions(per: &[Vec<(i64, i64)>]) -> i64 {
    let mut count = 0;
    for (c, list) in per.iter().enumerate() {
        for &(start, _) in list {
            let interrupts = per
                .iter()
                .enumerate()
                .filter(|&(o, _)| o != c)
                .any(|(_, other)| {
                    // Segments of one channel do not overlap, so only the last one that began
                    // before `start` can be in progress.
                    let i = other.partition_point(|&(s, _)| s < start);
                    i > 0 && {
                        let (os, oe) = other[i - 1];
                        start - os >= INTERRUPTION_MIN_TURN_MS
                            && oe - start >= INTERRUPTION_MIN_OVERLAP_MS
                    }
                });
            if interrupts {
                count += 1;
            }
        }
    }
    count
}

fn longest_monologue(timeline: &[(Floor, i64, i64)]) -> i64 {
    let mut best = 0;
    // (speaker, start, end of their last solo piece)
    let mut current: Option<(usize, i64, i64)> = None;
    for &(floor, a, b) in timeline {
        match floor {
            Floor::Silence => {}
            Floor::Solo(c) => {
                current = match current {
                    Some((who, s, e)) if who == c && a - e < MONOLOGUE_MAX_PAUSE_MS => {
                        Some((c, s, b))
                    }
                    _ => Some((c, a, b)),
                };
            }
            Floor::Overlap => current = None,
        }
        if let Some((_, s, e)) = current {
            best = best.max(e - s);
        }
        if let (Floor::Silence, Some((_, _, e))) = (floor, current) {
            // A pause this long ends the monologue even if the same speaker resumes.
            if b - e >= MONOLOGUE_MAX_PAUSE_MS {
                current = None;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(channel: i32, start_ms: i64, end_ms: i64) -> Segment {
        Segment {
            speaker: if channel == 0 { "agent" } else { "customer" }.into(),
            channel,
            start_ms,
            end_ms,
            text: None,
            sentiment: None,
            grounded: true,
        }
    }

    fn names() -> Vec<String> {
        vec!["agent".into(), "customer".into()]
    }

    #[test]
    fn degenerate_segments_do_not_panic() {
        let m = metrics(
            &names(),
            &[seg(0, 500, 100), seg(7, 0, 10), seg(-1, 0, 10)],
            -5,
        );
        assert_eq!(m.talk_time.iter().map(|t| t.ms).sum::<i64>(), 0);
        assert_eq!(m.silence_ms, 0);
    }

    #[test]
    fn metrics_of_a_known_exchange() {
        // agent 0.5–2.5 s and 6–8 s, customer 2.3–5 s, 9 s call.
        let segs = [seg(0, 500, 2500), seg(1, 2300, 5000), seg(0, 6000, 8000)];
        let m = metrics(&names(), &segs, 9000);
        assert_eq!(
            m.talk_time[0],
            SpeakerTime {
                speaker: "agent".into(),
                ms: 4000
            }
        );
        assert_eq!(m.talk_time[1].ms, 2700);
        assert_eq!(m.overlap_ms, 200);
        assert_eq!(m.silence_ms, 500 + 1000 + 1000);
        assert_eq!(m.interruptions, 1);
        // The customer holds the floor alone from 2.5 s to 5 s.
        assert_eq!(m.longest_monologue_ms, 2500);
    }

    #[test]
    fn interruption_needs_a_mid_turn_start() {
        // Starts 200 ms into the agent's turn: too early to be an interruption.
        let m = metrics(&names(), &[seg(0, 0, 2000), seg(1, 200, 1000)], 3000);
        assert_eq!(m.interruptions, 0);
        // Overlaps only 40 ms at the end of the agent's turn: a hand-over.
        let m = metrics(&names(), &[seg(0, 0, 2000), seg(1, 1960, 3000)], 3000);
        assert_eq!(m.interruptions, 0);
        // Both directions count.
        let m = metrics(
            &names(),
            &[seg(0, 0, 2000), seg(1, 1000, 4000), seg(0, 3000, 5000)],
            5000,
        );
        assert_eq!(m.interruptions, 2);
    }

    #[test]
    fn monologue_merges_own_short_pauses_only() {
        // Agent 0–2 s, pause 1 s, 3–5 s: one 5 s monologue.
        let m = metrics(&names(), &[seg(0, 0, 2000), seg(0, 3000, 5000)], 6000);
        assert_eq!(m.longest_monologue_ms, 5000);
        // The customer speaks in the pause: two 2 s stretches.
        let m = metrics(
            &names(),
            &[seg(0, 0, 2000), seg(1, 2200, 2800), seg(0, 3000, 5000)],
            6000,
        );
        assert_eq!(m.longest_monologue_ms, 2000);
        // A 2 s pause ends the monologue.
        let m = metrics(&names(), &[seg(0, 0, 2000), seg(0, 4000, 5500)], 6000);
        assert_eq!(m.longest_monologue_ms, 2000);
        // Overlap in the middle splits it.
        let m = metrics(&names(), &[seg(0, 0, 5000), seg(1, 1000, 1500)], 6000);
        assert_eq!(m.longest_monologue_ms, 3500);
    }

    #[test]
    fn mono_metrics() {
        let speakers = vec!["speaker".to_string()];
        let s = |a, b| Segment {
            speaker: "speaker".into(),
            ..seg(0, a, b)
        };
        let m = metrics(&speakers, &[s(0, 1000), s(1500, 3000)], 4000);
        assert_eq!(m.talk_time[0].ms, 2500);
        assert_eq!(m.silence_ms, 1500);
        assert_eq!(m.overlap_ms, 0);
        assert_eq!(m.interruptions, 0);
        assert_eq!(m.longest_monologue_ms, 3000);
    }

    fn facts(speech: Vec<Vec<(i64, i64)>>, duration_ms: i64) -> AcousticFacts {
        AcousticFacts {
            info: AudioInfo {
                format: "wav".into(),
                channels: speech.len() as u16,
                sample_rate: 16_000,
                duration_ms: Some(duration_ms),
            },
            duration_ms,
            sample_rate: 16_000,
            speech,
        }
    }

    fn item(channel: usize, start_ms: i64, end_ms: i64) -> TimedText {
        TimedText {
            channel,
            start_ms,
            end_ms,
            text: format!("words {start_ms}"),
            sentiment: None,
        }
    }

    #[test]
    fn boundaries_near_speech_snap_onto_it() {
        // agent speaks 1.0–3.0 s and 5.0–9.0 s; customer 3.2–4.8 s.
        let f = facts(
            vec![vec![(1000, 3000), (5000, 9000)], vec![(3200, 4800)]],
            10_000,
        );
        let g = ground(
            &[
                item(0, 1300, 2700),
                item(1, 3000, 5100),
                item(0, 6000, 8000),
            ],
            &f,
            &names(),
        );
        let spans: Vec<_> = g
            .iter()
            .map(|s| (s.channel, s.start_ms, s.end_ms, s.grounded))
            .collect();
        assert_eq!(
            spans,
            vec![
                (0, 1000, 3000, true),
                (1, 3200, 4800, true),
                // Inside a long stretch of speech: where the model put it.
                (0, 6000, 8000, true),
            ]
        );
        assert_eq!(g[1].speaker, "customer");
        assert_eq!(g[0].text.as_deref(), Some("words 1300"));
    }

    #[test]
    fn words_placed_in_silence_are_kept_and_flagged() {
        let f = facts(vec![vec![(1000, 2000)], vec![(6000, 7000)]], 10_000);
        // The customer is silent at 2.0–4.0 s; the agent too, beyond the tolerance.
        let g = ground(&[item(1, 2000, 4000), item(0, 3000, 4000)], &f, &names());
        assert!(g.iter().all(|s| !s.grounded), "{g:?}");
        assert_eq!((g[0].start_ms, g[0].end_ms), (2000, 4000));
        // Speech on the other channel does not ground it.
        let g = ground(&[item(1, 1000, 2000)], &f, &names());
        assert!(!g[0].grounded);
    }

    #[test]
    fn placement_says_where_each_item_went() {
        let f = facts(vec![vec![(0, 3000)], vec![(1000, 2000)]], 5000);
        let items = [
            item(1, 1000, 2000),
            item(0, 2500, 2900),
            item(0, 0, 900),
            // Same start and channel as the first: the two keep their order.
            TimedText {
                text: "the second at 1000".into(),
                ..item(1, 1000, 1500)
            },
        ];
        let (segments, placed) = ground_placed(&items, &f, &names());
        assert_eq!(segments, ground(&items, &f, &names()));
        assert_eq!(placed, vec![1, 3, 0, 2]);
        for (i, &at) in placed.iter().enumerate() {
            assert_eq!(segments[at].text.as_deref(), Some(items[i].text.as_str()));
        }
    }

    #[test]
    fn out_of_range_items_are_clamped_and_ordered() {
        let f = facts(vec![vec![(0, 5000)]], 5000);
        let g = ground(
            &[
                item(7, 4000, 99_000),
                item(0, -500, 300),
                item(0, 9000, 8000),
            ],
            &f,
            &["speaker".to_string()],
        );
        assert_eq!(g.len(), 3);
        assert!(g
            .iter()
            .all(|s| s.channel == 0 && s.start_ms <= s.end_ms && s.end_ms <= 5000));
        assert!(g.windows(2).all(|w| w[0].start_ms <= w[1].start_ms));
        assert_eq!((g[0].start_ms, g[0].end_ms), (0, 300));
    }
}
