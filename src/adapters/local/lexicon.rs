//! Insights without a model, behind the `Insights` port: the submitted transcript attached to
//! the acoustic speech segments, lexicon sentiment, the call summary (what the audio shows, and
//! the transcript's key sentences), topics, action items and issues quoting their segments, the
//! caller's intent, the call's outcome, and the tenant's categories by keyword. Deterministic.

use std::collections::HashMap;
use std::sync::OnceLock;

use async_trait::async_trait;

use crate::domain::{
    CallMetrics, CallOutcome, CategoryMatch, CategoryRule, Insights, InsightsInput, Quote, Segment,
    Sentiment, SentimentLabel, TranscriptInput,
};
use crate::ports::{AnalyzeError, Audio, InsightsSource};

/// The lexicon's insights: all it needs is in `input` (it never reads the audio).
pub fn insights(input: &InsightsInput) -> Insights {
    let req = &input.request;
    let speakers = &input.speakers;
    let mut segments = input.speech.clone();
    let (utterances, transcript_text) = match &req.transcript {
        Some(t) => attach_transcript(&mut segments, speakers, t),
        None => (Vec::new(), None),
    };
    let mut summary = acoustic_description(input.facts.duration_ms, &input.metrics);
    for sentence in key_sentences(&utterances, speakers) {
        summary.push(' ');
        summary.push_str(&sentence);
    }
    let language = [
        req.language.as_deref(),
        req.transcript.as_ref().and_then(|t| t.language.as_deref()),
    ]
    .into_iter()
    .flatten()
    .map(str::trim)
    .find(|l| !l.is_empty())
    .map(str::to_string);
    Insights {
        analyzer: "local".into(),
        sentiment: call_sentiment(&utterances),
        topics: topics(&utterances, speakers),
        action_items: action_items(&utterances),
        issues: issues(&utterances, speakers),
        intent: intent(&utterances, speakers),
        outcome: outcome(&utterances),
        categories: categories(&segments, &req.categories),
        model: None,
        prompt_version: None,
        segments,
        transcript_text,
        language,
        summary: Some(summary),
        usage: None,
        model_responses: Vec::new(),
    }
}

/// The lexicon behind the `InsightsSource` port.
#[derive(Debug, Default, Clone)]
pub struct LexiconInsights;

#[async_trait]
impl InsightsSource for LexiconInsights {
    fn name(&self) -> String {
        "local".into()
    }

    async fn insights(
        &self,
        _audio: &Audio,
        input: InsightsInput,
    ) -> Result<Insights, AnalyzeError> {
        // Transcripts are bounded (1 MiB) at submission; the work is small but CPU-bound.
        tokio::task::spawn_blocking(move || insights(&input))
            .await
            .map_err(|e| AnalyzeError::Transient(anyhow::anyhow!("lexicon task failed: {e}")))
    }
}

/// Scores above this are POSITIVE, below its negation NEGATIVE.
pub const LABEL_THRESHOLD: f64 = 0.05;
/// Shapes the raw lexicon sum into (-1, 1): one strong word scores ~0.6, several saturate.
const NORMALISE_ALPHA: f64 = 15.0;
/// A negator this many words before a sentiment word flips it.
const NEGATION_WINDOW: usize = 3;
/// A negated word keeps some of its strength, in the opposite direction ("not bad" is only
/// mildly good).
const NEGATION_FACTOR: f64 = -0.75;
const MAX_TOPICS: usize = 5;
const MAX_ACTION_ITEMS: usize = 10;
const MAX_ISSUES: usize = 10;
/// The longest intent, in characters.
pub const MAX_INTENT_CHARS: usize = 120;
const MAX_SUMMARY_SENTENCES: usize = 2;

// Valences on a 0.5–3 scale. Only unambiguous words: "like", "right", "sure", "help" are left out
// because in conversation they are mostly fillers.
const POSITIVE_3: &str =
    "excellent amazing awesome fantastic wonderful perfect perfectly outstanding \
    superb brilliant terrific phenomenal exceptional incredible marvelous marvellous delighted \
    thrilled ecstatic love loved loves lovely adore adored magnificent fabulous spectacular \
    flawless impeccable best overjoyed superbly";
const POSITIVE_2: &str = "good great nice happy glad pleased satisfied helpful thank thanks \
    thankful grateful appreciate appreciated appreciates appreciation enjoy enjoyed enjoying \
    pleasure pleasant friendly kind kindly polite patient efficient effective easy easier quick \
    quickly smooth smoothly resolved solved fixed reliable recommend recommended impressed \
    impressive excited exciting fun beautiful comfortable confident convenient gladly happily \
    success successful successfully benefit beneficial valuable worthwhile improved improvement \
    better professional courteous knowledgeable responsive prompt promptly accurate affordable \
    relieved relief congratulations congrats super yay glad wonderfully excellently pleasing \
    delightful generous fair superior seamless seamlessly straightforward";
const POSITIVE_1: &str = "interested interesting hope hopeful hopefully supportive useful works \
    working worked cheaper discount calm caring safe secure stable understood understanding \
    agree agreed fast clear cool correct reasonable save saved savings bonus welcome helped \
    sorted ready nicely fine";
const POSITIVE_HALF: &str = "ok okay alright";
const NEGATIVE_3: &str = "terrible horrible awful worst hate hated hates disgusting disgusted \
    furious outrageous unacceptable ridiculous pathetic useless appalling atrocious horrendous \
    dreadful nightmare scam fraud incompetent disaster disastrous livid abysmal rubbish garbage \
    trash lousy sucks sucked infuriating infuriated despicable shameful disgrace worthless \
    horribly terribly awfully";
const NEGATIVE_2: &str =
    "bad poor angry upset annoyed annoying frustrated frustrating frustration \
    disappointed disappointing disappointment unhappy sad broken fail failed fails failure \
    failing wrong error errors fault faulty defective damaged complaint complain complained \
    complaining complaints unfair expensive overcharged overcharge rude unhelpful slow worse \
    worried worry confusing confused inconvenient inconvenience mess messed stupid difficult \
    trouble painful nasty unreliable unresponsive dissatisfied mistake mistakes incorrect lost \
    missing denied declined rejected refused waste wasted stuck hassle headache ignored lied \
    lying misleading misled threatened irritated irritating bothered poorly badly ruined \
    useless unusable impossible hopeless mad dishonest";
const NEGATIVE_1: &str = "issue issues problem problems sorry delay delayed delays late waiting \
    concern concerns concerned unfortunately unfortunate cancel cancelled canceled cancellation \
    hard unclear unsure doubt complicated limited bug bugs glitch crash crashed crashing outage \
    tired apologize apologise apologies slower confusion leave leaving switch unpaid overdue \
    penalty fee fees";

const NEGATORS: &str = "not no never none nobody nothing neither nor nowhere without hardly \
    barely cannot cant dont doesnt didnt isnt arent wasnt werent wont wouldnt couldnt shouldnt \
    havent hasnt hadnt aint";
const INTENSIFIERS: &str = "very really extremely so super totally absolutely incredibly truly \
    highly completely utterly seriously deeply especially exceptionally particularly \
    remarkably most such";
const DIMINISHERS: &str = "slightly somewhat fairly bit little kinda sorta marginally partly \
    partially";

const STOPWORDS: &str = "a about above after again against all am an and any are aren as at be \
    because been before being below between both but by can cannot could couldn did didn do \
    does doesn doing don down during each few for from further had hadn has hasn have haven \
    having he her here hers herself him himself his how i if in into is isn it its itself just \
    me more most my myself no nor not now of off on once only or other our ours ourselves out \
    over own same she should shouldn so some such than that the their theirs them themselves \
    then there these they this those through to too under until up very was wasn we were weren \
    what when where which while who whom why will with won would wouldn you your yours yourself \
    yourselves i'm i've i'll i'd you're you've you'll you'd he's she's it's we're we've we'll \
    we'd they're they've they'll they'd that's there's what's let's can't won't don't doesn't \
    didn't isn't aren't wasn't weren't haven't hasn't hadn't wouldn't couldn't shouldn't \
    yeah yes yep yup nope um uh uhm hmm mm mhm ah oh hey hello hi bye goodbye please sure right \
    well like actually basically literally gonna wanna gotta got get gets getting go goes going \
    went know knew think thought mean see saw say says said tell told let lets want wants wanted \
    need needs needed make makes made also still even ever way thing things something anything \
    everything lot much many one two three first today tomorrow yesterday time day call calling \
    called calls minute minutes moment second back give take come look looking thing really \
    maybe okay able sir madam mister miss ma'am morning afternoon evening week next last \
    every show shows showed showing send sends sent sending check checks checked checking try \
    tried trying use uses used using ask asked asking put keep kept";

/// Commitment phrases that make a sentence an action item, as word sequences.
const COMMITMENTS: &[&[&str]] = &[
    &["i", "will"],
    &["i'll"],
    &["we", "will"],
    &["we'll"],
    &["i", "am", "going", "to"],
    &["i'm", "going", "to"],
    &["we", "are", "going", "to"],
    &["we're", "going", "to"],
    &["i", "can", "send"],
    &["will", "send"],
    &["send", "you"],
    &["follow", "up"],
    &["followup"],
    &["call", "you", "back"],
    &["get", "back", "to", "you"],
    &["next", "step"],
    &["next", "steps"],
    &["you", "will", "receive"],
    &["you'll", "receive"],
    &["let", "me", "check"],
    &["make", "sure"],
    &["schedule"],
    &["remind"],
];

/// Phrases in which a customer states a problem (matched as whole words, see [`issues`]).
pub const ISSUE_PHRASES: &[&str] = &[
    "not working",
    "isn't working",
    "stopped working",
    "doesn't work",
    "does not work",
    "don't work",
    "won't work",
    "broken",
    "broke",
    "problem",
    "problems",
    "issue",
    "issues",
    "error",
    "errors",
    "can't",
    "cannot",
    "unable to",
    "charged twice",
    "double charged",
    "overcharged",
    "refund",
    "complaint",
    "complain",
    "still waiting",
    "still haven't",
    "never arrived",
    "hasn't arrived",
    "didn't arrive",
    "never received",
    "haven't received",
    "late",
    "wrong",
    "damaged",
    "faulty",
    "missing",
    "keeps dropping",
    "failed",
    "outage",
];

/// Phrases in which a customer asks for something (see [`intent`]).
pub const REQUEST_PHRASES: &[&str] = &[
    "i want",
    "i wanted",
    "i'd like",
    "i would like",
    "i need",
    "i'm calling",
    "i am calling",
    "calling about",
    "calling to",
    "calling because",
    "i'm trying to",
    "i am trying to",
    "i was wondering",
    "can you",
    "could you",
    "help me",
    "how do i",
    "how can i",
    "looking to",
];

/// Phrases that hand a call on to someone else (see [`outcome`]).
pub const ESCALATION_PHRASES: &[&str] = &[
    "transfer you",
    "transferring you",
    "transferred to",
    "put you through",
    "connect you with",
    "connect you to",
    "supervisor",
    "a manager",
    "my manager",
    "the manager",
    "escalate",
    "escalated",
    "escalating",
    "escalation",
    "another department",
];

/// Phrases that promise a next step after the call (see [`outcome`]).
pub const FOLLOW_UP_PHRASES: &[&str] = &[
    "call you back",
    "call back",
    "get back to you",
    "email you",
    "send you an email",
    "follow up",
    "followup",
    "reach out",
    "be in touch",
    "will contact you",
    "we'll contact you",
    "i'll contact you",
];

/// Phrases that say the problem is still open (see [`outcome`]).
pub const UNRESOLVED_PHRASES: &[&str] = &[
    "still not",
    "still doesn't",
    "still isn't",
    "still can't",
    "still broken",
    "not resolved",
    "unresolved",
    "not fixed",
    "nothing you can do",
    "nothing we can do",
    "nothing i can do",
    "didn't help",
    "doesn't help",
];

/// Phrases that say the problem was dealt with (see [`outcome`]).
pub const RESOLVED_PHRASES: &[&str] = &[
    "that fixed it",
    "fixed it",
    "all set",
    "resolved",
    "works now",
    "working now",
    "that helps",
    "that helped",
    "problem solved",
    "sorted",
];

struct Lexicon {
    valence: HashMap<&'static str, f64>,
    negators: Vec<&'static str>,
    intensifiers: Vec<&'static str>,
    diminishers: Vec<&'static str>,
    stopwords: Vec<&'static str>,
}

fn lexicon() -> &'static Lexicon {
    static LEXICON: OnceLock<Lexicon> = OnceLock::new();
    LEXICON.get_or_init(|| {
        let mut valence = HashMap::new();
        for (words, v) in [
            (POSITIVE_3, 3.0),
            (POSITIVE_2, 2.0),
            (POSITIVE_1, 1.0),
            (POSITIVE_HALF, 0.5),
            (NEGATIVE_3, -3.0),
            (NEGATIVE_2, -2.0),
            (NEGATIVE_1, -1.0),
        ] {
            for w in words.split_whitespace() {
                valence.entry(w).or_insert(v);
            }
        }
        let sorted = |s: &'static str| {
            let mut v: Vec<&'static str> = s.split_whitespace().collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        Lexicon {
            valence,
            negators: sorted(NEGATORS),
            intensifiers: sorted(INTENSIFIERS),
            diminishers: sorted(DIMINISHERS),
            stopwords: sorted(STOPWORDS),
        }
    })
}

fn contains(sorted: &[&str], w: &str) -> bool {
    sorted.binary_search(&w).is_ok()
}

/// Lowercase words; apostrophes are kept inside words ("don't"), curly ones straightened.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        let ch = if ch == '\u{2019}' || ch == '\u{2018}' {
            '\''
        } else {
            ch
        };
        if ch.is_alphanumeric() || ch == '\'' {
            cur.extend(ch.to_lowercase());
        } else if !cur.is_empty() {
            push_word(&mut out, &mut cur);
        }
    }
    if !cur.is_empty() {
        push_word(&mut out, &mut cur);
    }
    out
}

fn push_word(out: &mut Vec<String>, cur: &mut String) {
    let w = cur.trim_matches('\'');
    if !w.is_empty() {
        out.push(w.to_string());
    }
    cur.clear();
}

fn is_negator(w: &str) -> bool {
    w.ends_with("n't") || contains(&lexicon().negators, w)
}

/// Sentences of a text: split after `.`, `!` or `?` followed by a space, and at line breaks.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '\n' || ch == '\r' {
            flush_sentence(&mut out, &mut cur);
            continue;
        }
        cur.push(ch);
        if matches!(ch, '.' | '!' | '?') && chars.peek().is_none_or(|c| c.is_whitespace()) {
            flush_sentence(&mut out, &mut cur);
        }
    }
    flush_sentence(&mut out, &mut cur);
    out
}

fn flush_sentence(out: &mut Vec<String>, cur: &mut String) {
    let s = cur.trim();
    if s.chars().any(char::is_alphanumeric) {
        out.push(s.to_string());
    }
    cur.clear();
}

/// Unnormalised lexicon sum of a text.
fn raw_sentiment(text: &str) -> f64 {
    let lex = lexicon();
    let mut total = 0.0;
    for sentence in sentences(text) {
        let clauses: Vec<Vec<String>> = sentence.split([',', ';', ':']).map(words).collect();
        let but_at = clauses.iter().flatten().position(|w| w == "but");
        let mut index = 0usize;
        for clause in &clauses {
            for (i, w) in clause.iter().enumerate() {
                let position = index + i;
                let Some(&base) = lex.valence.get(w.as_str()) else {
                    continue;
                };
                let mut v = base;
                for prev in &clause[i.saturating_sub(2)..i] {
                    if contains(&lex.intensifiers, prev) {
                        v *= 1.5;
                    } else if contains(&lex.diminishers, prev) {
                        v *= 0.5;
                    }
                }
                if clause[i.saturating_sub(NEGATION_WINDOW)..i]
                    .iter()
                    .any(|p| is_negator(p))
                {
                    v *= NEGATION_FACTOR;
                }
                // What follows "but" is what the speaker means.
                match but_at {
                    Some(b) if position > b => v *= 1.5,
                    Some(_) => v *= 0.5,
                    None => {}
                }
                total += v;
            }
            index += clause.len();
        }
    }
    total
}

/// Sentiment of a text in [-1, 1].
pub fn sentiment_score(text: &str) -> f64 {
    let s = raw_sentiment(text);
    round4((s / (s * s + NORMALISE_ALPHA).sqrt()).clamp(-1.0, 1.0))
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

pub fn label(score: f64) -> SentimentLabel {
    if score > LABEL_THRESHOLD {
        SentimentLabel::Positive
    } else if score < -LABEL_THRESHOLD {
        SentimentLabel::Negative
    } else {
        SentimentLabel::Neutral
    }
}

/// One turn of the transcript as the integrator wrote it, and where it went.
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    /// The speaker, when the transcript names one.
    pub speaker: Option<String>,
    /// The channel it is said on: its speaker's when the name resolves to a channel, else that
    /// of the segment it was attached to; `None` when neither is known.
    pub channel: Option<usize>,
    /// The index of the segment its text was attached to (in the segments given to
    /// [`attach_transcript`]); `None` when no segment took it.
    pub segment: Option<usize>,
    pub text: String,
}

/// Call sentiment: utterance scores weighted by their word counts.
pub fn call_sentiment(utterances: &[Utterance]) -> Option<Sentiment> {
    let mut weighted = 0.0;
    let mut total_words = 0usize;
    for u in utterances {
        let n = words(&u.text).len();
        if n > 0 {
            weighted += sentiment_score(&u.text) * n as f64;
            total_words += n;
        }
    }
    if total_words == 0 {
        return None;
    }
    let score = round4((weighted / total_words as f64).clamp(-1.0, 1.0));
    Some(Sentiment {
        score,
        label: label(score),
    })
}

/// Which channel a transcript's speaker name refers to.
pub fn resolve_speaker(name: &str, speakers: &[String]) -> Option<usize> {
    let name = name.trim().to_lowercase();
    if name.is_empty() {
        return None;
    }
    if let Some(i) = speakers
        .iter()
        .position(|s| s.trim().to_lowercase() == name)
    {
        return Some(i);
    }
    // Transcripts often keep the generic roles even when the channels were given names.
    let agent = [
        "agent",
        "rep",
        "representative",
        "operator",
        "support",
        "left",
    ];
    let customer = ["customer", "caller", "client", "right"];
    match speakers.len() {
        1 if name == "speaker" => Some(0),
        2 if agent.contains(&name.as_str()) => Some(0),
        2 if customer.contains(&name.as_str()) => Some(1),
        _ => None,
    }
}

/// Splits `Name: words` (optionally after a `[timestamp]`) into the label and the words.
fn split_label(line: &str) -> Option<(&str, &str)> {
    let line = match line.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .map_or(line, |(_, after)| after.trim_start()),
        None => line,
    };
    let (label, rest) = line.split_once(':')?;
    let label = label.trim();
    let plausible = !label.is_empty()
        && label.chars().count() <= 40
        && label.split_whitespace().count() <= 4
        && label.chars().next().is_some_and(char::is_alphabetic)
        && label
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | '\''));
    // "at 10:30" is a time, not a label.
    let time = rest.starts_with(|c: char| c.is_ascii_digit());
    let rest = rest.trim();
    (plausible && !time && !rest.is_empty()).then_some((label, rest))
}

/// Hands transcript pieces to speech segments.
struct Assigner<'a> {
    segments: &'a mut [Segment],
    per_channel: Vec<Vec<usize>>,
    cursor: Vec<usize>,
    used: Vec<bool>,
    last: Option<usize>,
}

impl<'a> Assigner<'a> {
    fn new(segments: &'a mut [Segment], channels: usize) -> Self {
        let mut per_channel = vec![Vec::new(); channels];
        for (i, s) in segments.iter().enumerate() {
            if let Some(list) = usize::try_from(s.channel)
                .ok()
                .and_then(|c| per_channel.get_mut(c))
            {
                list.push(i);
            }
        }
        let n = segments.len();
        Self {
            segments,
            per_channel,
            cursor: vec![0; channels],
            used: vec![false; n],
            last: None,
        }
    }

    /// The speaker's next segment not yet given text; their last one once all have some.
    fn next_for_channel(&mut self, c: usize) -> Option<usize> {
        let list = self.per_channel.get(c)?;
        let cur = self.cursor.get_mut(c)?;
        while *cur < list.len() && self.used[list[*cur]] {
            *cur += 1;
        }
        list.get(*cur).or(list.last()).copied()
    }

    /// The segment after the last one given text, in time order.
    fn next_in_time(&self) -> Option<usize> {
        let from = self.last.map_or(0, |p| p + 1);
        (from..self.segments.len())
            .find(|&i| !self.used[i])
            .or(self.segments.len().checked_sub(1))
    }

    /// The segment (of channel `c`, or any) that overlaps `[start, end]` most, else the nearest.
    fn by_time(&self, c: Option<usize>, start: i64, end: i64) -> Option<usize> {
        let candidates: Box<dyn Iterator<Item = usize>> = match c {
            Some(c) => Box::new(self.per_channel.get(c)?.iter().copied()),
            None => Box::new(0..self.segments.len()),
        };
        candidates.min_by_key(|&i| {
            let s = &self.segments[i];
            let overlap = end.min(s.end_ms) - start.max(s.start_ms);
            let distance = if overlap > 0 { 0 } else { -overlap };
            (distance, -overlap.max(0))
        })
    }

    /// The channel of segment `i`, when it is one of the call's.
    fn channel_of(&self, i: usize) -> Option<usize> {
        let c = usize::try_from(self.segments.get(i)?.channel).ok()?;
        (c < self.per_channel.len()).then_some(c)
    }

    fn attach(&mut self, i: usize, text: &str) {
        let seg = &mut self.segments[i];
        match &mut seg.text {
            Some(t) => {
                t.push(' ');
                t.push_str(text);
            }
            None => seg.text = Some(text.to_string()),
        }
        self.used[i] = true;
        self.last = Some(i);
    }
}

/// Attaches the transcript to the segments (which must be in time order) and returns its
/// utterances and its plain text.
///
/// Timed pieces go to the segment of their speaker they overlap most (else the nearest);
/// untimed lines `Name: words` go, in order, to that speaker's next segment (extra lines to
/// their last one); lines without a known speaker go to the next segment in time. Text whose
/// speaker has no speech segment at all stays in the transcript but on no segment.
pub fn attach_transcript(
    segments: &mut [Segment],
    speakers: &[String],
    transcript: &TranscriptInput,
) -> (Vec<Utterance>, Option<String>) {
    let mut utterances = Vec::new();
    let mut rendered = Vec::new();
    let mut assigner = Assigner::new(segments, speakers.len());

    if !transcript.segments.is_empty() {
        let mut pieces: Vec<_> = transcript
            .segments
            .iter()
            .filter(|p| !p.text.trim().is_empty())
            .collect();
        if pieces.iter().all(|p| p.start_ms.is_some()) {
            pieces.sort_by_key(|p| p.start_ms);
        }
        for p in pieces {
            let text = p.text.trim();
            let channel = resolve_speaker(&p.speaker, speakers);
            let speaker = match channel {
                Some(c) => Some(speakers[c].clone()),
                None => Some(p.speaker.trim().to_string()).filter(|s| !s.is_empty()),
            };
            let target = match (p.start_ms, p.end_ms) {
                (Some(s), e) if e.is_none_or(|e| e >= s) => {
                    assigner.by_time(channel, s, e.unwrap_or(s))
                }
                _ => match channel {
                    Some(c) => assigner.next_for_channel(c),
                    None => assigner.next_in_time(),
                },
            };
            if let Some(i) = target {
                assigner.attach(i, text);
            }
            rendered.push(match &speaker {
                Some(s) => format!("{s}: {text}"),
                None => text.to_string(),
            });
            utterances.push(Utterance {
                speaker,
                channel: channel.or_else(|| target.and_then(|i| assigner.channel_of(i))),
                segment: target,
                text: text.to_string(),
            });
        }
    } else if let Some(text) = &transcript.text {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            rendered.push(line.to_string());
            let labelled = split_label(line)
                .and_then(|(name, words)| Some((resolve_speaker(name, speakers)?, words)));
            let (channel, words) = match labelled {
                Some((c, w)) => (Some(c), w),
                None => (None, line),
            };
            let target = match channel {
                Some(c) => assigner.next_for_channel(c),
                None => assigner.next_in_time(),
            };
            if let Some(i) = target {
                assigner.attach(i, words);
            }
            utterances.push(Utterance {
                speaker: channel.map(|c| speakers[c].clone()),
                channel: channel.or_else(|| target.and_then(|i| assigner.channel_of(i))),
                segment: target,
                text: words.to_string(),
            });
        }
    }

    for s in segments.iter_mut() {
        s.sentiment = s.text.as_deref().map(sentiment_score);
    }
    let plain = (!rendered.is_empty()).then(|| rendered.join("\n"));
    (utterances, plain)
}

/// "2-minute call; agent spoke 55% of the time, customer 40%; 3 interruptions."
pub fn acoustic_description(duration_ms: i64, metrics: &CallMetrics) -> String {
    let duration_ms = duration_ms.max(0);
    let length = if duration_ms < 59_500 {
        format!("{}-second call", ((duration_ms + 500) / 1000).max(1))
    } else {
        format!("{}-minute call", (duration_ms + 30_000) / 60_000)
    };
    if metrics.talk_time.iter().all(|t| t.ms <= 0) {
        return format!("{length}; no speech detected.");
    }
    let pct = |ms: i64| {
        if duration_ms == 0 {
            0
        } else {
            (ms.max(0) * 100 + duration_ms / 2) / duration_ms
        }
    };
    let shares: Vec<String> = metrics
        .talk_time
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i == 0 {
                format!("{} spoke {}% of the time", t.speaker, pct(t.ms))
            } else {
                format!("{} {}%", t.speaker, pct(t.ms))
            }
        })
        .collect();
    let mut out = format!("{length}; {}", shares.join(", "));
    if metrics.talk_time.len() >= 2 {
        match metrics.interruptions {
            0 => out.push_str("; no interruptions"),
            1 => out.push_str("; 1 interruption"),
            n => out.push_str(&format!("; {n} interruptions")),
        }
    }
    out.push('.');
    out
}

/// Content words: not stopwords, no sentiment words, no speaker names, at least 3 letters.
fn content_words(text: &str, excluded: &[String]) -> Vec<String> {
    let lex = lexicon();
    words(text)
        .into_iter()
        .filter(|w| {
            w.chars().count() >= 3
                && w.chars().any(char::is_alphabetic)
                && !contains(&lex.stopwords, w)
                && !is_negator(w)
                && !lex.valence.contains_key(w.as_str())
                && !excluded.iter().any(|e| e == w)
        })
        .collect()
}

/// Folds simple plurals so "orders" and "order" count together.
fn stem(w: &str) -> String {
    if w.len() > 4 && w.ends_with("ies") {
        format!("{}y", &w[..w.len() - 3])
    } else if w.len() > 3
        && w.ends_with('s')
        && !w.ends_with("ss")
        && !w.ends_with("us")
        && !w.ends_with("is")
    {
        w[..w.len() - 1].to_string()
    } else {
        w.to_string()
    }
}

fn excluded_names(speakers: &[String]) -> Vec<String> {
    speakers
        .iter()
        .flat_map(|s| words(s))
        .chain(["agent", "customer", "speaker"].map(String::from))
        .collect()
}

/// How often a keyword (all its surface forms) was said.
struct Keyword {
    count: usize,
    first: usize,
    /// Surface forms ("order", "orders") with their counts, in the order first said.
    forms: Vec<(String, usize)>,
}

impl Keyword {
    /// The most frequent form; the first one said wins ties.
    fn surface(&self) -> String {
        let mut best = &self.forms[0];
        for f in &self.forms {
            if f.1 > best.1 {
                best = f;
            }
        }
        best.0.clone()
    }

    fn len(&self) -> usize {
        self.forms[0].0.chars().count()
    }
}

/// Up to five keywords: the most frequent content words (ties: first mentioned), preferring
/// words said at least twice.
pub fn topics(utterances: &[Utterance], speakers: &[String]) -> Vec<String> {
    let excluded = excluded_names(speakers);
    let mut stats: HashMap<String, Keyword> = HashMap::new();
    let mut position = 0usize;
    for u in utterances {
        for w in content_words(&u.text, &excluded) {
            let k = stats.entry(stem(&w)).or_insert_with(|| Keyword {
                count: 0,
                first: position,
                forms: Vec::new(),
            });
            k.count += 1;
            match k.forms.iter_mut().find(|(f, _)| *f == w) {
                Some((_, n)) => *n += 1,
                None => k.forms.push((w, 1)),
            }
            position += 1;
        }
    }
    let mut ranked: Vec<Keyword> = stats.into_values().collect();
    ranked.sort_by(|a, b| b.count.cmp(&a.count).then(a.first.cmp(&b.first)));
    let repeated: Vec<String> = ranked
        .iter()
        .filter(|k| k.count >= 2)
        .take(MAX_TOPICS)
        .map(Keyword::surface)
        .collect();
    if !repeated.is_empty() {
        return repeated;
    }
    // Nothing repeats (a short transcript): the longest words say the most.
    ranked.sort_by(|a, b| b.len().cmp(&a.len()).then(a.first.cmp(&b.first)));
    ranked
        .iter()
        .filter(|k| k.len() >= 5)
        .take(3)
        .map(Keyword::surface)
        .collect()
}

/// Sentences containing a commitment ("I will", "we'll send", "follow up", ...), deduplicated
/// (same words, whatever the case and punctuation), at most ten, in the order first said; each
/// quote points at every segment that says it.
pub fn action_items(utterances: &[Utterance]) -> Vec<Quote> {
    quotes(utterances, MAX_ACTION_ITEMS, |_, ws| {
        COMMITMENTS.iter().any(|pat| has_phrase(ws, pat))
    })
}

/// Sentences in which the customer states a problem ("it's not working", "I was charged
/// twice", "I want a refund", ...: [`ISSUE_PHRASES`]), deduplicated like action items, at most
/// ten, in the order first said, each pointing at the segments that say it. The customer is
/// anyone on a stereo call's second or later channel, and anyone on a mono call. A phrase right
/// after "no", "any", "without" or "not a(n)" ("no problem", "any issues?") does not count.
pub fn issues(utterances: &[Utterance], speakers: &[String]) -> Vec<Quote> {
    quotes(utterances, MAX_ISSUES, |u, ws| {
        is_customer(u, speakers) && states_issue(ws)
    })
}

/// Why the caller called: the first sentence in which the customer states a problem (as in
/// [`issues`]) or a request ("I'd like to...", "I'm calling about...", "can you...":
/// [`REQUEST_PHRASES`]), shortened on a word boundary to at most [`MAX_INTENT_CHARS`]
/// characters. The caller's own words rather than a label from a fixed list, so that the
/// intent says what this call was about. `None` when the customer states neither (and so when
/// there is no transcript).
pub fn intent(utterances: &[Utterance], speakers: &[String]) -> Option<String> {
    utterances
        .iter()
        .filter(|u| is_customer(u, speakers))
        .flat_map(|u| sentences(&u.text))
        .find(|s| {
            let ws = phrase_words(s);
            states_issue(&ws) || REQUEST_PHRASES.iter().any(|p| has_phrase_str(&ws, p))
        })
        .map(|s| shorten(&s, MAX_INTENT_CHARS))
}

/// How the call ended, from what anyone says in its closing part (the last 30 % of the
/// utterances, at least one). In this order of precedence: `ESCALATED` when the call is handed
/// on ("let me transfer you", "a supervisor": [`ESCALATION_PHRASES`]); else `FOLLOW_UP` when
/// someone commits to a next step after the call ("we'll call you back", "I'll email you":
/// [`FOLLOW_UP_PHRASES`]); else `UNRESOLVED` on explicit non-resolution ("it's still not
/// working", "there's nothing you can do": [`UNRESOLVED_PHRASES`]); else `RESOLVED` on a
/// resolution ("that fixed it", "all set", "works now": [`RESOLVED_PHRASES`]). A phrase right
/// after a negator ("I can't transfer you", "that hasn't fixed it") does not count. A hand-over
/// or a promised next step is what happens next whatever else is said, and an explicit "still
/// not" outweighs the thanks callers give out of courtesy. `None` without such evidence (and so
/// without a transcript).
pub fn outcome(utterances: &[Utterance]) -> Option<CallOutcome> {
    let spoken: Vec<&Utterance> = utterances
        .iter()
        .filter(|u| !words(&u.text).is_empty())
        .collect();
    let closing_len = (spoken.len() * 3).div_ceil(10).max(1);
    let closing: Vec<Vec<String>> = spoken[spoken.len().saturating_sub(closing_len)..]
        .iter()
        .map(|u| phrase_words(&u.text))
        .collect();
    // "can't transfer you", "hasn't fixed it": a phrase right after a negator does not count.
    let said = |phrases: &[&str]| {
        closing.iter().any(|ws| {
            phrases.iter().any(|phrase| {
                let pattern: Vec<&str> = phrase.split_whitespace().collect();
                phrase_at(ws, &pattern)
                    .into_iter()
                    .any(|at| at == 0 || !is_negator(&ws[at - 1]))
            })
        })
    };
    [
        (ESCALATION_PHRASES, CallOutcome::Escalated),
        (FOLLOW_UP_PHRASES, CallOutcome::FollowUp),
        (UNRESOLVED_PHRASES, CallOutcome::Unresolved),
        (RESOLVED_PHRASES, CallOutcome::Resolved),
    ]
    .into_iter()
    .find(|(phrases, _)| said(phrases))
    .map(|(_, outcome)| outcome)
}

/// The tenant's categories that the segments mention: a category matches a segment when one of
/// its keywords (a word or a phrase) is said in it — case-insensitive, ignoring punctuation,
/// whole words only ("cancel" does not match "cancellation"). Each match lists every such
/// segment, ascending; categories that match nowhere are left out, the others keep the order
/// given. The lexicon reads keywords only: a category's `instructions` are for a model.
pub fn categories(segments: &[Segment], rules: &[CategoryRule]) -> Vec<CategoryMatch> {
    let texts: Vec<Vec<String>> = segments
        .iter()
        .map(|s| s.text.as_deref().map(phrase_words).unwrap_or_default())
        .collect();
    rules
        .iter()
        .filter_map(|rule| {
            let keywords: Vec<Vec<String>> = rule
                .keywords
                .iter()
                .map(|k| phrase_words(k))
                .filter(|k| !k.is_empty())
                .collect();
            let hits: Vec<usize> = texts
                .iter()
                .enumerate()
                .filter(|(_, ws)| keywords.iter().any(|k| has_phrase(ws, k)))
                .map(|(i, _)| i)
                .collect();
            (!hits.is_empty()).then(|| CategoryMatch {
                category_id: rule.id,
                name: rule.name.clone(),
                segments: hits,
            })
        })
        .collect()
}

/// The sentences of `utterances` that `pick` keeps (given the utterance and the sentence's
/// words), deduplicated by their words, at most `cap`, in the order first said. Each quote
/// points at every segment that says it (a repeat adds its segment even past the cap).
fn quotes(
    utterances: &[Utterance],
    cap: usize,
    pick: impl Fn(&Utterance, &[String]) -> bool,
) -> Vec<Quote> {
    let mut out: Vec<Quote> = Vec::new();
    let mut seen: Vec<Vec<String>> = Vec::new();
    for u in utterances {
        for sentence in sentences(&u.text) {
            let ws = phrase_words(&sentence);
            if !pick(u, &ws) {
                continue;
            }
            let at = match seen.iter().position(|s| *s == ws) {
                Some(at) => at,
                None if out.len() < cap => {
                    seen.push(ws);
                    out.push(Quote::new(sentence, Vec::new()));
                    out.len() - 1
                }
                None => continue,
            };
            if let Some(i) = u.segment {
                out[at].segments.push(i);
            }
        }
    }
    for q in &mut out {
        q.segments.sort_unstable();
        q.segments.dedup();
    }
    out
}

/// Words of a text for phrase matching: hyphens separate words ("follow-up" is "follow up").
fn phrase_words(text: &str) -> Vec<String> {
    words(&text.replace('-', " "))
}

/// Whether `pattern` occurs in `ws` as consecutive words.
fn has_phrase<S: AsRef<str>>(ws: &[String], pattern: &[S]) -> bool {
    !phrase_at(ws, pattern).is_empty()
}

/// Where `pattern` starts in `ws`, each occurrence in order (none for an empty pattern).
fn phrase_at<S: AsRef<str>>(ws: &[String], pattern: &[S]) -> Vec<usize> {
    if pattern.is_empty() {
        return Vec::new();
    }
    ws.windows(pattern.len())
        .enumerate()
        .filter(|(_, win)| {
            win.iter()
                .zip(pattern)
                .all(|(a, b)| a.as_str() == b.as_ref())
        })
        .map(|(i, _)| i)
        .collect()
}

/// [`has_phrase`] for a phrase written as one string of words.
fn has_phrase_str(ws: &[String], phrase: &str) -> bool {
    let pattern: Vec<&str> = phrase.split_whitespace().collect();
    has_phrase(ws, &pattern)
}

/// Whether the words state a problem: an [`ISSUE_PHRASES`] phrase not right after "no",
/// "any", "without" or "not a(n)".
fn states_issue(ws: &[String]) -> bool {
    ISSUE_PHRASES.iter().any(|phrase| {
        let pattern: Vec<&str> = phrase.split_whitespace().collect();
        phrase_at(ws, &pattern).into_iter().any(|at| {
            let before = |back: usize| at.checked_sub(back).map(|i| ws[i].as_str());
            let denied = matches!(before(1), Some("no" | "any" | "without"))
                || (before(2) == Some("not") && matches!(before(1), Some("a" | "an")));
            !denied
        })
    })
}

/// Whether an utterance is the customer's: on a call with one speaker, everyone's; otherwise
/// what is said on the second or a later channel.
fn is_customer(u: &Utterance, speakers: &[String]) -> bool {
    speakers.len() <= 1 || u.channel.is_some_and(|c| c >= 1)
}

/// `text` cut on a word boundary so that it has at most `max` characters, an ellipsis marking
/// the cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let head: String = text.chars().take(max.saturating_sub(1)).collect();
    let cut = head
        .rfind(char::is_whitespace)
        .map_or(head.as_str(), |i| &head[..i]);
    format!("{}…", cut.trim_end_matches([' ', ',', ';', ':']))
}

/// The most informative sentences (dense in words the call keeps coming back to), in the
/// order they were said.
pub fn key_sentences(utterances: &[Utterance], speakers: &[String]) -> Vec<String> {
    let excluded = excluded_names(speakers);
    let mut freq: HashMap<String, usize> = HashMap::new();
    let all: Vec<String> = utterances.iter().flat_map(|u| sentences(&u.text)).collect();
    let content: Vec<Vec<String>> = all
        .iter()
        .map(|s| {
            content_words(s, &excluded)
                .iter()
                .map(|w| stem(w))
                .collect()
        })
        .collect();
    for ws in &content {
        for w in ws {
            *freq.entry(w.clone()).or_default() += 1;
        }
    }
    let mut scored: Vec<(f64, usize)> = all
        .iter()
        .zip(&content)
        .enumerate()
        .filter(|(_, (s, c))| words(s).len() >= 4 && !c.is_empty())
        .map(|(i, (s, c))| {
            let mut distinct: Vec<&String> = c.iter().collect();
            distinct.sort_unstable();
            distinct.dedup();
            let weight: usize = distinct
                .iter()
                .map(|w| freq.get(*w).copied().unwrap_or(0))
                .sum();
            (weight as f64 / (words(s).len() as f64).sqrt(), i)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut picked: Vec<usize> = scored
        .iter()
        .take(MAX_SUMMARY_SENTENCES)
        .map(|&(_, i)| i)
        .collect();
    picked.sort_unstable();
    picked
        .into_iter()
        .map(|i| {
            let s = all[i].clone();
            if s.ends_with(['.', '!', '?']) {
                s
            } else {
                format!("{s}.")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::conversation::AcousticFacts;
    use crate::domain::{AnalysisRequest, AudioInfo, SpeakerTime, TranscriptSegmentInput};

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

    fn speakers() -> Vec<String> {
        vec!["agent".into(), "customer".into()]
    }

    fn utt(text: &str) -> Utterance {
        Utterance {
            speaker: None,
            channel: None,
            segment: None,
            text: text.into(),
        }
    }

    #[test]
    fn sentiment_of_known_sentences() {
        let pos = sentiment_score("Thank you, that was really helpful and the service is great.");
        let neg = sentiment_score("This is terrible, I am very frustrated and angry.");
        assert!(pos > 0.5, "{pos}");
        assert!(neg < -0.5, "{neg}");
        assert_eq!(label(pos), SentimentLabel::Positive);
        assert_eq!(label(neg), SentimentLabel::Negative);
        assert_eq!(sentiment_score("The package arrives on Tuesday."), 0.0);
        assert_eq!(label(0.0), SentimentLabel::Neutral);
        for s in [
            "Wonderful!",
            "terrible terrible terrible terrible terrible terrible terrible",
        ] {
            let v = sentiment_score(s);
            assert!((-1.0..=1.0).contains(&v));
        }
    }

    #[test]
    fn negation_and_intensifiers() {
        let good = sentiment_score("It is good.");
        assert!(good > 0.05);
        assert!(sentiment_score("It is not good.") < -0.05);
        assert!(sentiment_score("It isn't good.") < -0.05);
        assert!(sentiment_score("It doesn’t work well, not good at all") < -0.05);
        assert!(sentiment_score("Not bad at all.") > 0.05);
        assert!(sentiment_score("No problem.") > 0.05);
        assert!(sentiment_score("It is very good.") > good);
        assert!(sentiment_score("It is slightly good.") < good);
        // The negation does not cross a clause boundary.
        assert!(sentiment_score("No, it is good.") > 0.05);
        // What follows "but" weighs more.
        assert!(sentiment_score("The agent was nice but the product is terrible.") < -0.05);
    }

    #[test]
    fn call_sentiment_is_word_weighted() {
        let u = [
            utt("great"),
            utt("the delivery was late and the box was damaged and nobody answered my emails"),
        ];
        let s = call_sentiment(&u).expect("has words");
        assert_eq!(s.label, SentimentLabel::Negative);
        assert!(call_sentiment(&[]).is_none());
        assert!(call_sentiment(&[utt("  ")]).is_none());
    }

    #[test]
    fn labelled_lines_go_to_their_speakers_segments() {
        let mut segs = vec![
            seg(0, 0, 1000),
            seg(1, 1200, 2000),
            seg(0, 2500, 3000),
            seg(1, 3500, 4000),
        ];
        let t = TranscriptInput {
            text: Some(
                "Agent: Hello, how can I help?\nCustomer: My order is late.\n\nagent: I will check it.\n\
                 Agent: Anything else?\nNarrator: the end\nCUSTOMER: No thanks."
                    .into(),
            ),
            ..Default::default()
        };
        let (utts, plain) = attach_transcript(&mut segs, &speakers(), &t);
        assert_eq!(segs[0].text.as_deref(), Some("Hello, how can I help?"));
        assert_eq!(segs[1].text.as_deref(), Some("My order is late."));
        // Agent has two segments and three lines: the extra line joins the last one.
        assert_eq!(
            segs[2].text.as_deref(),
            Some("I will check it. Anything else?")
        );
        // The unknown "Narrator" line goes to the next segment in time, whose speaker then
        // also says the customer's last line.
        assert_eq!(
            segs[3].text.as_deref(),
            Some("Narrator: the end No thanks.")
        );
        assert!(segs[1].sentiment.unwrap() < 0.0);
        assert_eq!(utts.len(), 6);
        assert_eq!(utts[4].speaker, None);
        assert_eq!(utts[5].speaker.as_deref(), Some("customer"));
        assert_eq!(plain.unwrap().lines().count(), 6);
    }

    #[test]
    fn unlabelled_lines_follow_time_order() {
        let mut segs = vec![seg(0, 0, 1000), seg(1, 1200, 2000)];
        let t = TranscriptInput {
            text: Some("one\ntwo\nthree".into()),
            ..Default::default()
        };
        attach_transcript(&mut segs, &speakers(), &t);
        assert_eq!(segs[0].text.as_deref(), Some("one"));
        assert_eq!(segs[1].text.as_deref(), Some("two three"));
        // No segments at all: the text is kept but attached nowhere.
        let (utts, plain) = attach_transcript(&mut [], &speakers(), &t);
        assert_eq!(utts.len(), 3);
        assert_eq!(plain.as_deref(), Some("one\ntwo\nthree"));
    }

    #[test]
    fn timed_segments_attach_by_overlap() {
        let mut segs = vec![seg(0, 0, 1000), seg(1, 900, 2000), seg(0, 2500, 3000)];
        let piece =
            |speaker: &str, s: Option<i64>, e: Option<i64>, text: &str| TranscriptSegmentInput {
                speaker: speaker.into(),
                start_ms: s,
                end_ms: e,
                text: text.into(),
            };
        let t = TranscriptInput {
            segments: vec![
                piece("Customer", Some(950), Some(1900), "I want a refund"),
                piece("Agent", Some(100), Some(950), "Hi there"),
                piece("Rep", Some(2600), Some(2700), "Sure thing"),
                piece("caller", None, None, "Thanks"),
                piece("agent", Some(9000), Some(9500), "Bye"),
            ],
            ..Default::default()
        };
        let names = vec!["Alice".to_string(), "Bob".to_string()];
        let (utts, plain) = attach_transcript(&mut segs, &names, &t);
        assert_eq!(segs[0].text.as_deref(), Some("Hi there"));
        assert_eq!(segs[1].text.as_deref(), Some("I want a refund Thanks"));
        assert_eq!(segs[2].text.as_deref(), Some("Sure thing Bye"));
        assert_eq!(utts[0].speaker.as_deref(), Some("Bob"));
        assert_eq!(utts[1].speaker.as_deref(), Some("Alice"));
        // Not every piece is timed, so the given order is kept.
        assert_eq!(plain.unwrap().lines().next(), Some("Bob: I want a refund"));
    }

    #[test]
    fn speaker_resolution() {
        let names = vec!["Alice".to_string(), "Bob".to_string()];
        assert_eq!(resolve_speaker(" alice ", &names), Some(0));
        assert_eq!(resolve_speaker("BOB", &names), Some(1));
        assert_eq!(resolve_speaker("customer", &names), Some(1));
        assert_eq!(resolve_speaker("Carol", &names), None);
        assert_eq!(resolve_speaker("speaker", &["x".to_string()]), Some(0));
        assert_eq!(split_label("[00:12] Agent: hi"), Some(("Agent", "hi")));
        assert_eq!(split_label("Meeting at 10:30 is fine"), None);
        assert_eq!(split_label("Agent:"), None);
    }

    #[test]
    fn topics_are_repeated_content_words() {
        let u = [
            utt("Hi, I'm calling about my invoice and the refund."),
            utt("The invoice shows two charges for the router."),
            utt("Yes, the router was returned, so the invoices should show a refund."),
            utt("I will send a corrected invoice."),
        ];
        let t = topics(&u, &speakers());
        assert_eq!(t, vec!["invoice", "refund", "router"]);
        let single = topics(&[utt("Hello, about the warranty.")], &speakers());
        assert_eq!(single, vec!["warranty"]);
        assert!(topics(&[], &speakers()).is_empty());
    }

    #[test]
    fn action_items_are_commitments() {
        let u = [
            utt("I will send you the invoice today. The weather is nice."),
            utt("We'll follow-up next week! Can you hear me?"),
            utt("I'll call you back tomorrow."),
            utt("i will send you the invoice today"),
            utt("The next step is a technician visit."),
        ];
        let a: Vec<String> = action_items(&u).into_iter().map(|q| q.text).collect();
        assert_eq!(
            a,
            vec![
                "I will send you the invoice today.",
                "We'll follow-up next week!",
                "I'll call you back tomorrow.",
                "The next step is a technician visit.",
            ]
        );
        let many: Vec<Utterance> = (0..20)
            .map(|i| utt(&format!("I will do task {i}.")))
            .collect();
        assert_eq!(action_items(&many).len(), 10);
    }

    /// A stereo call whose speech alternates agent, customer, agent, ... one second each.
    fn alternating(turns: usize) -> AcousticFacts {
        let mut speech = vec![Vec::new(), Vec::new()];
        for t in 0..turns {
            let start = t as i64 * 2000;
            speech[t % 2].push((start, start + 1500));
        }
        AcousticFacts {
            info: AudioInfo {
                format: "wav".into(),
                channels: 2,
                sample_rate: 8000,
                duration_ms: Some(turns as i64 * 2000),
            },
            duration_ms: turns as i64 * 2000,
            sample_rate: 8000,
            speech,
        }
    }

    fn rule(name: &str, keywords: &[&str]) -> CategoryRule {
        CategoryRule {
            id: uuid::Uuid::new_v4(),
            name: name.into(),
            instructions: Some(format!("the call is about {name}")),
            keywords: keywords.iter().map(|k| k.to_string()).collect(),
        }
    }

    /// The lexicon's insights for a stereo call of `lines` (alternating agent and customer).
    fn call(lines: &[&str], categories: Vec<CategoryRule>) -> Insights {
        let text = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{}: {l}", if i % 2 == 0 { "Agent" } else { "Customer" }))
            .collect::<Vec<_>>()
            .join("\n");
        let request = AnalysisRequest {
            transcript: Some(TranscriptInput {
                text: Some(text),
                ..Default::default()
            }),
            categories,
            ..Default::default()
        };
        insights(&InsightsInput::of(alternating(lines.len()), request))
    }

    /// Every index points at a segment, ascending, once, and every quote's words are said
    /// there.
    fn assert_grounded(i: &Insights) {
        let quotes = i.action_items.iter().chain(&i.issues);
        for q in quotes {
            assert!(!q.segments.is_empty(), "{q:?}");
            assert!(q.segments.windows(2).all(|w| w[0] < w[1]), "{q:?}");
            for &s in &q.segments {
                let text = i.segments[s].text.as_deref().unwrap_or("");
                assert!(
                    has_phrase(&phrase_words(text), &phrase_words(&q.text)),
                    "{q:?} is not in segment {s}: {text:?}"
                );
            }
        }
        for c in &i.categories {
            assert!(c.segments.windows(2).all(|w| w[0] < w[1]), "{c:?}");
            assert!(c.segments.iter().all(|&s| s < i.segments.len()), "{c:?}");
        }
    }

    #[test]
    fn utterances_know_their_segment_and_channel() {
        let mut segs = vec![seg(0, 0, 1000), seg(1, 1200, 2000), seg(0, 2500, 3000)];
        let t = TranscriptInput {
            text: Some("Agent: Hello.\nCustomer: Hi.\nsomeone: where am I?\nAgent: Bye.".into()),
            ..Default::default()
        };
        let (utts, _) = attach_transcript(&mut segs, &speakers(), &t);
        let placed: Vec<_> = utts.iter().map(|u| (u.channel, u.segment)).collect();
        // The unknown speaker's line goes to the next segment in time, and so to its channel.
        assert_eq!(
            placed,
            vec![
                (Some(0), Some(0)),
                (Some(1), Some(1)),
                (Some(0), Some(2)),
                (Some(0), Some(2))
            ]
        );
        let (utts, _) = attach_transcript(&mut [], &speakers(), &t);
        assert_eq!(utts[1].channel, Some(1));
        assert!(utts.iter().all(|u| u.segment.is_none()));
    }

    #[test]
    fn action_items_point_at_the_segments_that_say_them() {
        let i = call(
            &[
                "Hello, how can I help?",
                "My router is broken.",
                "I will send you a new router. Anything else?",
                "No, thanks.",
                "I will send you a new router!",
                "Great. I'll call you back if it fails.",
            ],
            vec![],
        );
        assert_eq!(
            i.action_items,
            vec![
                Quote::new("I will send you a new router.", vec![2, 4]),
                Quote::new("I'll call you back if it fails.", vec![5]),
            ]
        );
        assert_grounded(&i);
    }

    #[test]
    fn issues_are_the_customers_problems() {
        let i = call(
            &[
                "Hi, is there a problem with your account?",
                "Yes. I was charged twice this month and the app is not working!",
                "No problem, I can look. Any issues with the login?",
                "No issues there. But the delivery was late. I was charged twice this month and the app is not working.",
                "I see the error.",
                "It says Error 42, and I want a refund.",
            ],
            vec![],
        );
        let texts: Vec<&str> = i.issues.iter().map(|q| q.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "I was charged twice this month and the app is not working!",
                "But the delivery was late.",
                "It says Error 42, and I want a refund.",
            ]
        );
        // The repeated complaint points at both turns that say it.
        assert_eq!(i.issues[0].segments, vec![1, 3]);
        assert_eq!(i.issues[1].segments, vec![3]);
        assert_eq!(i.issues[2].segments, vec![5]);
        assert_grounded(&i);

        // On a mono call everyone is the customer; "no problem" is still no problem.
        let u = [utt("The screen is broken."), utt("No problem at all.")];
        let mono = issues(&u, &["speaker".to_string()]);
        assert_eq!(mono, vec![Quote::new("The screen is broken.", vec![])]);
        let many: Vec<Utterance> = (0..20).map(|n| utt(&format!("Error {n} again."))).collect();
        assert_eq!(issues(&many, &["speaker".to_string()]).len(), 10);
    }

    #[test]
    fn intent_is_the_first_request_or_problem_of_the_customer() {
        let i = call(
            &[
                "Thanks for calling, can you give me your name?",
                "Sure, it's Sam. I'm calling about my last invoice.",
                "Okay.",
                "It looks wrong.",
            ],
            vec![],
        );
        // The agent's "can you" is not why the customer called.
        assert_eq!(
            i.intent.as_deref(),
            Some("I'm calling about my last invoice.")
        );
        let long = format!("I would like to {}.", "change the plan and ".repeat(20));
        let u = [Utterance {
            channel: Some(1),
            ..utt(&long)
        }];
        let got = intent(&u, &speakers()).unwrap();
        assert!(got.chars().count() <= MAX_INTENT_CHARS, "{got}");
        let kept = got.strip_suffix('…').unwrap();
        assert!(long.starts_with(kept), "{got}");
        assert!(
            long[kept.len()..].starts_with(' '),
            "cut on a word boundary: {got}"
        );
        assert_eq!(
            intent(
                &[Utterance {
                    channel: Some(1),
                    ..utt("Hello there.")
                }],
                &speakers()
            ),
            None
        );
    }

    #[test]
    fn outcome_follows_the_close_of_the_call() {
        let closing = |last: &str| {
            let mut u: Vec<Utterance> = (0..7).map(|n| utt(&format!("Line {n}."))).collect();
            u.push(utt(last));
            outcome(&u)
        };
        assert_eq!(
            closing("Let me transfer you to my supervisor."),
            Some(CallOutcome::Escalated)
        );
        assert_eq!(
            closing("We'll call you back on Monday."),
            Some(CallOutcome::FollowUp)
        );
        assert_eq!(
            closing("It's still not working."),
            Some(CallOutcome::Unresolved)
        );
        assert_eq!(
            closing("Great, that fixed it, thanks!"),
            Some(CallOutcome::Resolved)
        );
        assert_eq!(closing("You're all set."), Some(CallOutcome::Resolved));
        assert_eq!(closing("Bye now."), None);
        // A negated phrase is no evidence.
        assert_eq!(closing("Sorry, I can't transfer you."), None);
        assert_eq!(closing("That hasn't fixed it."), None);
        // Precedence: escalation, then follow-up, then non-resolution, then resolution.
        assert_eq!(
            closing("That fixed it. Still not resolved on the bill, I'll transfer you."),
            Some(CallOutcome::Escalated)
        );
        assert_eq!(
            closing("It works now, but the bill is still not right; we'll email you."),
            Some(CallOutcome::FollowUp)
        );
        assert_eq!(
            closing("It works now, but the bill is still not right."),
            Some(CallOutcome::Unresolved)
        );
        // Only the close counts: a resolution early in the call says nothing of its end.
        let mut u = vec![utt("That fixed it.")];
        u.extend((0..9).map(|n| utt(&format!("Line {n}."))));
        assert_eq!(outcome(&u), None);
        assert_eq!(outcome(&[]), None);
    }

    #[test]
    fn categories_match_whole_words_and_phrases() {
        let cancel = rule("Cancellation", &["cancel", "close my account"]);
        let manager = rule("Escalation", &["speak to a MANAGER"]);
        let billing = rule("Billing", &["invoice", "follow-up"]);
        let never = rule("Never", &["warranty", "  ", ""]);
        let i = call(
            &[
                "Hello, this is support.",
                "I want to cancel. Please CLOSE my... account!",
                "Sorry to hear that; the cancellation fee applies.",
                "Then I'd like to speak to a manager.",
                "Your invoice will follow up by email.",
                "Cancel-it, now.",
            ],
            vec![cancel.clone(), manager.clone(), billing.clone(), never],
        );
        assert_eq!(
            i.categories,
            vec![
                // "cancellation" is not "cancel"; punctuation and hyphens do not hide a word.
                CategoryMatch {
                    category_id: cancel.id,
                    name: "Cancellation".into(),
                    segments: vec![1, 5],
                },
                CategoryMatch {
                    category_id: manager.id,
                    name: "Escalation".into(),
                    segments: vec![3],
                },
                CategoryMatch {
                    category_id: billing.id,
                    name: "Billing".into(),
                    segments: vec![4],
                },
            ]
        );
        assert_grounded(&i);
    }

    #[test]
    fn insights_are_deterministic_and_need_a_transcript() {
        let lines = [
            "Hello, how can I help?",
            "My internet is not working since Monday.",
            "I will book a technician for tomorrow.",
            "Okay, that helps, thanks.",
        ];
        let rules = vec![rule("Technical", &["internet"])];
        let a = call(&lines, rules.clone());
        assert_eq!(a, call(&lines, rules.clone()));
        assert_eq!(
            a.intent.as_deref(),
            Some("My internet is not working since Monday.")
        );
        assert_eq!(a.outcome, Some(CallOutcome::Resolved));
        assert_eq!(a.issues.len(), 1);
        assert_eq!(a.action_items.len(), 1);
        assert_eq!(a.categories.len(), 1);
        assert_eq!(
            (a.model.as_deref(), a.prompt_version.as_deref()),
            (None, None)
        );
        assert_grounded(&a);

        let request = AnalysisRequest {
            categories: rules,
            ..Default::default()
        };
        let none = insights(&InsightsInput::of(alternating(4), request));
        assert!(none.action_items.is_empty() && none.issues.is_empty());
        assert!(none.categories.is_empty());
        assert_eq!((none.intent, none.outcome), (None, None));
    }

    #[test]
    fn sentence_splitting() {
        assert_eq!(
            sentences("Pay 3.50 now. Then wait!\nOk?"),
            vec!["Pay 3.50 now.", "Then wait!", "Ok?"]
        );
        assert!(sentences(" ... \n").is_empty());
    }

    #[test]
    fn key_sentences_prefer_recurring_words() {
        let u = [
            utt("Hello."),
            utt("My internet connection drops every evening."),
            utt("Okay."),
            utt("The connection drops because the internet router overheats."),
            utt("Lovely weather today, is it not"),
        ];
        let k = key_sentences(&u, &speakers());
        assert_eq!(
            k,
            vec![
                "My internet connection drops every evening.",
                "The connection drops because the internet router overheats."
            ]
        );
    }

    #[test]
    fn acoustic_descriptions() {
        let m = CallMetrics {
            talk_time: vec![
                SpeakerTime {
                    speaker: "agent".into(),
                    ms: 66_000,
                },
                SpeakerTime {
                    speaker: "customer".into(),
                    ms: 48_000,
                },
            ],
            interruptions: 3,
            ..Default::default()
        };
        assert_eq!(
            acoustic_description(120_000, &m),
            "2-minute call; agent spoke 55% of the time, customer 40%; 3 interruptions."
        );
        let mono = CallMetrics {
            talk_time: vec![SpeakerTime {
                speaker: "speaker".into(),
                ms: 8_000,
            }],
            ..Default::default()
        };
        assert_eq!(
            acoustic_description(10_000, &mono),
            "10-second call; speaker spoke 80% of the time."
        );
        let quiet = CallMetrics {
            talk_time: vec![SpeakerTime {
                speaker: "speaker".into(),
                ms: 0,
            }],
            ..Default::default()
        };
        assert_eq!(
            acoustic_description(200, &quiet),
            "1-second call; no speech detected."
        );
    }
}
