//! Finding and redacting personal data (PII) in call transcripts.
//!
//! Everything here is hand-written byte scanning over the UTF-8 input. All
//! patterns are ASCII, and every span starts and ends next to an ASCII byte,
//! so spans always fall on char boundaries no matter what multi-byte text
//! surrounds them. Scanners are linear in the input (each does a bounded
//! amount of work per position), followed by an `O(n log n)` overlap
//! resolution.
//!
//! Pipeline of [`find`]:
//! 1. character-level scanners: e-mail (written and spoken), IBAN, UK NI;
//! 2. "number runs": maximal sequences of digit groups and spoken digit words
//!    ("four one one one", "double five", "oh") joined by short separators;
//!    from these come cards (Luhn), phones, SSNs, and keyword-anchored
//!    bank accounts / SSNs / phones;
//! 3. candidates are resolved greedily by priority, then length;
//! 4. security codes are added last, since they depend on accepted cards.

use std::collections::BTreeMap;

/// Category of personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiKind {
    CardNumber,
    SecurityCode,
    Phone,
    Email,
    NationalId,
    BankAccount,
}

impl PiiKind {
    /// Stable upper-case label, e.g. `"CARD_NUMBER"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::CardNumber => "CARD_NUMBER",
            PiiKind::SecurityCode => "SECURITY_CODE",
            PiiKind::Phone => "PHONE",
            PiiKind::Email => "EMAIL",
            PiiKind::NationalId => "NATIONAL_ID",
            PiiKind::BankAccount => "BANK_ACCOUNT",
        }
    }

    /// Replacement text used by [`redact`], e.g. `"[CARD_NUMBER]"`.
    pub fn placeholder(self) -> &'static str {
        match self {
            PiiKind::CardNumber => "[CARD_NUMBER]",
            PiiKind::SecurityCode => "[SECURITY_CODE]",
            PiiKind::Phone => "[PHONE]",
            PiiKind::Email => "[EMAIL]",
            PiiKind::NationalId => "[NATIONAL_ID]",
            PiiKind::BankAccount => "[BANK_ACCOUNT]",
        }
    }
}

/// One detected item: byte range `start..end` of the input (char boundaries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: PiiKind,
    pub start: usize,
    pub end: usize,
}

/// One replaced item in a [`Redacted`] text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactedSpan {
    pub kind: PiiKind,
    /// Byte range of the placeholder in the redacted text.
    pub start: usize,
    pub end: usize,
    /// Byte range of the original value in the input text.
    pub original_start: usize,
    pub original_end: usize,
}

/// Output of [`redact`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    pub text: String,
    pub spans: Vec<RedactedSpan>,
}

/// Finds personal data in `text`. Findings are sorted and non-overlapping.
pub fn find(text: &str) -> Vec<Finding> {
    let b = text.as_bytes();
    // ASCII lowercasing keeps every byte offset identical.
    let lower_s = text.to_ascii_lowercase();
    let lower = lower_s.as_bytes();

    let mut cands = Vec::new();
    scan_emails(b, &mut cands);
    scan_spoken_emails(b, lower, &mut cands);
    scan_ibans(b, &mut cands);
    scan_uk_ni(b, &mut cands);

    let runs = scan_runs(b, lower);
    let mut pieces = Vec::new();
    for run in &runs {
        number_candidates(run, b, lower, &mut cands, &mut pieces);
    }

    let mut acc = Accepted::default();
    acc.resolve(cands);

    // Security codes depend on where the accepted cards are.
    let cards: Vec<(usize, usize)> = acc
        .map
        .iter()
        .filter(|(_, &(_, k))| k == PiiKind::CardNumber)
        .map(|(&s, &(e, _))| (s, e))
        .collect();
    let mut sec = Vec::new();
    for p in &pieces {
        security_candidate(p, b, lower, &cards, &mut sec);
    }
    acc.resolve(sec);

    acc.map
        .into_iter()
        .map(|(start, (end, kind))| Finding { kind, start, end })
        .collect()
}

/// Replaces every finding of [`find`] by its kind's placeholder.
pub fn redact(text: &str) -> Redacted {
    let mut out = String::with_capacity(text.len());
    let mut spans = Vec::new();
    let mut last = 0;
    for f in find(text) {
        out.push_str(&text[last..f.start]);
        let start = out.len();
        out.push_str(f.kind.placeholder());
        spans.push(RedactedSpan {
            kind: f.kind,
            start,
            end: out.len(),
            original_start: f.start,
            original_end: f.end,
        });
        last = f.end;
    }
    out.push_str(&text[last..]);
    Redacted { text: out, spans }
}

// ---------------------------------------------------------------------------
// Candidates and overlap resolution
// ---------------------------------------------------------------------------

// Higher wins when candidates overlap.
const PRI_EMAIL: u8 = 100;
const PRI_IBAN: u8 = 90;
const PRI_CARD: u8 = 80;
const PRI_NI: u8 = 70;
const PRI_SSN: u8 = 65;
const PRI_BANK_KW: u8 = 60;
const PRI_SSN_KW: u8 = 55;
const PRI_PHONE: u8 = 50;
const PRI_PHONE_KW: u8 = 45;
const PRI_SECURITY: u8 = 40;

#[derive(Debug, Clone, Copy)]
struct Cand {
    pri: u8,
    start: usize,
    end: usize,
    kind: PiiKind,
}

fn cand(out: &mut Vec<Cand>, pri: u8, start: usize, end: usize, kind: PiiKind) {
    if start < end {
        out.push(Cand {
            pri,
            start,
            end,
            kind,
        });
    }
}

/// Accepted, pairwise non-overlapping spans: start -> (end, kind).
#[derive(Default)]
struct Accepted {
    map: BTreeMap<usize, (usize, PiiKind)>,
}

impl Accepted {
    fn overlaps(&self, start: usize, end: usize) -> bool {
        // Accepted spans are disjoint, so their ends grow with their starts:
        // only the last span starting before `end` can reach past `start`.
        self.map
            .range(..end)
            .next_back()
            .is_some_and(|(_, &(e, _))| e > start)
    }

    /// Greedy: highest priority first, then longest, then leftmost.
    fn resolve(&mut self, mut cands: Vec<Cand>) {
        cands.sort_by(|a, b| {
            b.pri
                .cmp(&a.pri)
                .then((b.end - b.start).cmp(&(a.end - a.start)))
                .then(a.start.cmp(&b.start))
        });
        for c in cands {
            if !self.overlaps(c.start, c.end) {
                self.map.insert(c.start, (c.end, c.kind));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Small byte helpers
// ---------------------------------------------------------------------------

fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

/// True when position `i` is not preceded by an ASCII letter or digit.
fn boundary_before(b: &[u8], i: usize) -> bool {
    i == 0 || !is_alnum(b[i - 1])
}

/// True when position `i` (exclusive end) is not followed by a letter/digit.
fn boundary_after(b: &[u8], i: usize) -> bool {
    i >= b.len() || !is_alnum(b[i])
}

/// Whether one of `kws` (lower-case) ends at most `window` bytes before
/// `pos`, as a whole word, with no ASCII digit between it and `pos` (so the
/// keyword belongs to the first number after it).
fn keyword_before(lower: &[u8], pos: usize, window: usize, kws: &[&str]) -> bool {
    kws.iter().any(|kw| {
        let k = kw.as_bytes();
        let from = pos.saturating_sub(window + k.len());
        let hay = &lower[from..pos];
        hay.windows(k.len()).enumerate().any(|(i, w)| {
            let s = from + i;
            let e = s + k.len();
            w == k
                && boundary_before(lower, s)
                && (e >= lower.len() || !lower[e].is_ascii_alphabetic())
                && !lower[e..pos].iter().any(u8::is_ascii_digit)
        })
    })
}

/// The ASCII word right before `pos`, skipping a few separator bytes.
fn prev_word(lower: &[u8], pos: usize) -> &[u8] {
    let mut e = pos;
    let mut skipped = 0;
    while e > 0 && !is_alnum(lower[e - 1]) && skipped < 4 {
        e -= 1;
        skipped += 1;
    }
    let mut s = e;
    while s > 0 && lower[s - 1].is_ascii_alphabetic() {
        s -= 1;
    }
    &lower[s..e]
}

/// Looks like an amount of money or a percentage / decimal.
fn money_context(b: &[u8], lower: &[u8], start: usize, end: usize) -> bool {
    let before = &b[start.saturating_sub(4)..start];
    let cur = |s: &[u8]| before.ends_with(s) || before.ends_with(&[s, b" "].concat());
    if cur(b"$") || cur("£".as_bytes()) || cur("€".as_bytes()) {
        return true;
    }
    if end + 1 < b.len() && matches!(b[end], b'.' | b',') && b[end + 1].is_ascii_digit() {
        return true;
    }
    let after = &lower[end..(end + 9).min(lower.len())];
    [
        &b"%"[..],
        b" dollar",
        b" pound",
        b" euro",
        b" buck",
        b" percent",
        b" cents",
    ]
    .iter()
    .any(|s| after.starts_with(s))
}

fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let mut v = u32::from(x);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

// ---------------------------------------------------------------------------
// E-mail
// ---------------------------------------------------------------------------

fn is_local_char(c: u8) -> bool {
    is_alnum(c) || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain_char(c: u8) -> bool {
    is_alnum(c) || matches!(c, b'.' | b'-')
}

fn valid_domain(d: &[u8]) -> bool {
    let labels: Vec<&[u8]> = d.split(|&c| c == b'.').collect();
    labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l[0] != b'-' && l[l.len() - 1] != b'-')
        && labels
            .last()
            .is_some_and(|t| t.len() >= 2 && t.iter().all(u8::is_ascii_alphabetic))
}

/// `local@domain.tld`. Each byte is scanned at most once to the left and
/// once to the right of an `@` (scans stop at the next `@`), so linear.
fn scan_emails(b: &[u8], out: &mut Vec<Cand>) {
    for p in 0..b.len() {
        if b[p] != b'@' {
            continue;
        }
        let mut s = p;
        while s > 0 && is_local_char(b[s - 1]) {
            s -= 1;
        }
        while s < p && b[s] == b'.' {
            s += 1;
        }
        if s == p || b[p - 1] == b'.' {
            continue;
        }
        let mut e = p + 1;
        while e < b.len() && is_domain_char(b[e]) {
            e += 1;
        }
        // Sentence punctuation right after the address.
        while e > p + 1 && matches!(b[e - 1], b'.' | b'-') {
            e -= 1;
        }
        if valid_domain(&b[p + 1..e]) {
            cand(out, PRI_EMAIL, s, e, PiiKind::Email);
        }
    }
}

const SPOKEN_TLDS: &[&[u8]] = &[
    b"com", b"org", b"net", b"edu", b"gov", b"io", b"co", b"uk", b"us", b"de", b"fr", b"ca", b"au",
    b"info", b"biz", b"me",
];
const NOT_LOCAL: &[&[u8]] = &[
    b"me", b"you", b"us", b"them", b"him", b"her", b"it", b"is", b"email", b"mail", b"dot", b"at",
    b"or", b"and", b"address",
];

/// Spoken form: `john dot smith at example dot com`. Words must be joined by
/// single spaces, the domain needs at least one "dot" and a common TLD.
fn scan_spoken_emails(b: &[u8], lower: &[u8], out: &mut Vec<Cand>) {
    // ASCII alphanumeric words.
    let mut words: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            let s = i;
            while i < b.len() && is_alnum(b[i]) {
                i += 1;
            }
            words.push((s, i));
        } else {
            i += 1;
        }
    }
    let w = |k: usize| &lower[words[k].0..words[k].1];
    // Words k and k+1 are separated by exactly one space.
    let joined = |k: usize| words[k].1 + 1 == words[k + 1].0 && b[words[k].1] == b' ';

    for k in 1..words.len().saturating_sub(1) {
        if w(k) != b"at" || !joined(k - 1) || !joined(k) {
            continue;
        }
        // Domain: W (dot W)+, ending at a known TLD; keep the longest.
        let mut j = k + 1;
        let mut dom_end = None;
        while j + 2 < words.len() && joined(j) && joined(j + 1) && w(j + 1) == b"dot" {
            j += 2;
            if SPOKEN_TLDS.contains(&w(j)) {
                dom_end = Some(words[j].1);
            }
        }
        let Some(end) = dom_end else { continue };
        // Local: W ((dot|underscore) W)* right before "at".
        let mut m = k - 1;
        if NOT_LOCAL.contains(&w(m)) {
            continue;
        }
        while m >= 2
            && joined(m - 2)
            && joined(m - 1)
            && matches!(w(m - 1), b"dot" | b"underscore")
            && !NOT_LOCAL.contains(&w(m - 2))
        {
            m -= 2;
        }
        cand(out, PRI_EMAIL, words[m].0, end, PiiKind::Email);
    }
}

// ---------------------------------------------------------------------------
// IBAN and UK National Insurance number
// ---------------------------------------------------------------------------

/// ISO 13616 mod-97 check over the compact upper/lower-case IBAN.
fn iban_mod97(iban: &[u8]) -> bool {
    let mut r: u32 = 0;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        if c.is_ascii_digit() {
            r = (r * 10 + u32::from(c - b'0')) % 97;
        } else {
            let v = u32::from(c.to_ascii_uppercase() - b'A') + 10;
            r = (r * 100 + v) % 97;
        }
    }
    r == 1
}

/// Country letters + 2 check digits + 11..=30 alphanumerics, either compact
/// or in groups of four separated by single spaces.
fn scan_ibans(b: &[u8], out: &mut Vec<Cand>) {
    let n = b.len();
    for i in 0..n.saturating_sub(4) {
        if !(b[i].is_ascii_uppercase()
            && b[i + 1].is_ascii_uppercase()
            && b[i + 2].is_ascii_digit()
            && b[i + 3].is_ascii_digit()
            && boundary_before(b, i))
        {
            continue;
        }
        let mut compact: Vec<u8> = b[i..i + 4].to_vec();
        if i + 4 < n && is_alnum(b[i + 4]) {
            // Compact form: the whole alphanumeric word.
            let mut j = i + 4;
            while j < n && is_alnum(b[j]) && compact.len() <= 34 {
                compact.push(b[j]);
                j += 1;
            }
            if (15..=34).contains(&compact.len()) && boundary_after(b, j) && iban_mod97(&compact) {
                cand(out, PRI_IBAN, i, j, PiiKind::BankAccount);
            }
            continue;
        }
        // Grouped form: remember every group end, try the longest valid.
        let mut ends: Vec<(usize, usize)> = Vec::new(); // (byte end, compact len)
        let mut j = i + 4;
        while j < n && b[j] == b' ' && compact.len() < 34 {
            let g0 = j + 1;
            let mut g = g0;
            while g < n && g - g0 < 4 && is_alnum(b[g]) {
                g += 1;
            }
            if g == g0 || !boundary_after(b, g) {
                break;
            }
            compact.extend_from_slice(&b[g0..g]);
            ends.push((g, compact.len()));
            if g - g0 < 4 {
                break;
            }
            j = g;
        }
        if let Some(&(e, _)) = ends
            .iter()
            .rev()
            .find(|&&(_, len)| (15..=34).contains(&len) && iban_mod97(&compact[..len]))
        {
            cand(out, PRI_IBAN, i, e, PiiKind::BankAccount);
        }
    }
}

/// `QQ 12 34 56 C` / `QQ123456C`: two capitals, six digits (optionally in
/// pairs), suffix letter A–D.
fn scan_uk_ni(b: &[u8], out: &mut Vec<Cand>) {
    let n = b.len();
    for i in 0..n.saturating_sub(8) {
        if !(b[i].is_ascii_uppercase() && b[i + 1].is_ascii_uppercase() && boundary_before(b, i)) {
            continue;
        }
        let mut j = i + 2;
        let mut digits = 0usize;
        while digits < 6 {
            // An optional single space before each pair of digits.
            if digits % 2 == 0 && j < n && b[j] == b' ' {
                j += 1;
            }
            if j >= n || !b[j].is_ascii_digit() {
                break;
            }
            j += 1;
            digits += 1;
        }
        if digits != 6 {
            continue;
        }
        if j < n && b[j] == b' ' {
            j += 1;
        }
        if j < n && matches!(b[j], b'A'..=b'D') && boundary_after(b, j + 1) {
            cand(out, PRI_NI, i, j + 1, PiiKind::NationalId);
        }
    }
}

// ---------------------------------------------------------------------------
// Number runs: digit groups and spoken digit words
// ---------------------------------------------------------------------------

/// One digit group ("4111", "(415)") or spoken digit word(s) ("four",
/// "double five").
#[derive(Debug, Clone)]
struct Unit {
    start: usize,
    end: usize,
    digits: Vec<u8>,
    spoken: bool,
    paren: bool,
}

/// Units joined by separators; `seps[i]` sits between unit `i` and `i + 1`:
/// the separator byte for two digit groups (`b' '`, `b'-'`, `b'.'`), `0`
/// for nothing (after a parenthesised group), `b','` if spoken words are
/// involved (any short mix of spaces, commas and hyphens).
#[derive(Debug, Default)]
struct Run {
    units: Vec<Unit>,
    seps: Vec<u8>,
}

fn digit_word(w: &[u8]) -> Option<u8> {
    Some(match w {
        b"zero" | b"oh" => 0,
        b"one" => 1,
        b"two" => 2,
        b"three" => 3,
        b"four" => 4,
        b"five" => 5,
        b"six" => 6,
        b"seven" => 7,
        b"eight" => 8,
        b"nine" => 9,
        _ => return None,
    })
}

/// Parses a unit starting at `i`; otherwise returns where scanning resumes.
fn unit_at(b: &[u8], lower: &[u8], i: usize) -> Result<Unit, usize> {
    let n = b.len();
    let c = b[i];
    if !boundary_before(b, i) {
        return Err(i + 1);
    }
    if c.is_ascii_digit() {
        let mut j = i;
        while j < n && b[j].is_ascii_digit() {
            j += 1;
        }
        if j < n && b[j].is_ascii_alphabetic() {
            return Err(j); // "3rd", "123456C"
        }
        let digits = b[i..j].iter().map(|d| d - b'0').collect();
        return Ok(Unit {
            start: i,
            end: j,
            digits,
            spoken: false,
            paren: false,
        });
    }
    if c == b'(' {
        if i + 5 <= n
            && b[i + 1..i + 4].iter().all(u8::is_ascii_digit)
            && b[i + 4] == b')'
            && !(i + 5 < n && b[i + 5].is_ascii_alphabetic())
        {
            let digits = b[i + 1..i + 4].iter().map(|d| d - b'0').collect();
            return Ok(Unit {
                start: i,
                end: i + 5,
                digits,
                spoken: false,
                paren: true,
            });
        }
        return Err(i + 1);
    }
    if c.is_ascii_alphabetic() {
        let word_end = |s: usize| {
            let mut j = s;
            while j < n && b[j].is_ascii_alphabetic() {
                j += 1;
            }
            j
        };
        let j = word_end(i);
        if j < n && b[j].is_ascii_digit() {
            return Err(j); // "cvv2"
        }
        let w = &lower[i..j];
        if let Some(d) = digit_word(w) {
            return Ok(Unit {
                start: i,
                end: j,
                digits: vec![d],
                spoken: true,
                paren: false,
            });
        }
        let times = match w {
            b"double" => 2,
            b"triple" => 3,
            _ => return Err(j),
        };
        if j + 1 < n && b[j] == b' ' {
            let k = word_end(j + 1);
            if let Some(d) = digit_word(&lower[j + 1..k]).filter(|_| boundary_after(b, k)) {
                return Ok(Unit {
                    start: i,
                    end: k,
                    digits: vec![d; times],
                    spoken: true,
                    paren: false,
                });
            }
        }
        return Err(j);
    }
    Err(i + 1)
}

/// Separator code if `prev` and `next` may belong to one run.
fn join_sep(prev: &Unit, next: &Unit, gap: &[u8]) -> Option<u8> {
    if !prev.spoken && !next.spoken {
        if gap.is_empty() && prev.paren && !next.paren {
            return Some(0);
        }
        if gap.len() == 1 && matches!(gap[0], b' ' | b'-' | b'.') {
            return Some(gap[0]);
        }
        return None;
    }
    let ok = (1..=4).contains(&gap.len()) && gap.iter().all(|c| matches!(c, b' ' | b',' | b'-'));
    ok.then_some(b',')
}

fn scan_runs(b: &[u8], lower: &[u8]) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut cur = Run::default();
    let mut i = 0;
    while i < b.len() {
        match unit_at(b, lower, i) {
            Ok(u) => {
                i = u.end;
                let sep = cur
                    .units
                    .last()
                    .and_then(|p| join_sep(p, &u, &b[p.end..u.start]));
                match sep {
                    Some(s) => cur.seps.push(s),
                    None if !cur.units.is_empty() => runs.push(std::mem::take(&mut cur)),
                    None => {}
                }
                cur.units.push(u);
            }
            Err(next) => i = next,
        }
    }
    if !cur.units.is_empty() {
        runs.push(cur);
    }
    runs
}

/// A contiguous slice `lo..hi` of a run's units.
#[derive(Debug, Clone, Copy)]
struct Piece<'a> {
    run: &'a Run,
    lo: usize,
    hi: usize,
}

impl<'a> Piece<'a> {
    fn units(&self) -> &'a [Unit] {
        &self.run.units[self.lo..self.hi]
    }
    fn seps(&self) -> &'a [u8] {
        &self.run.seps[self.lo..self.hi - 1]
    }
    fn start(&self) -> usize {
        self.run.units[self.lo].start
    }
    fn end(&self) -> usize {
        self.run.units[self.hi - 1].end
    }
    fn digits(&self) -> Vec<u8> {
        self.units()
            .iter()
            .flat_map(|u| u.digits.iter().copied())
            .collect()
    }
    fn n_digits(&self) -> usize {
        self.units().iter().map(|u| u.digits.len()).sum()
    }
    fn all_numeric(&self) -> bool {
        self.units().iter().all(|u| !u.spoken)
    }
}

/// Card rules for a whole piece: 13–19 digits, Luhn, no leading zero, no
/// parentheses; digit groups share one separator (space or hyphen) and are
/// either all at least 3 long or all single digits (so "2024-03-15" style
/// fragments never glue into a card).
fn is_card(p: &Piece) -> bool {
    let d = p.digits();
    if !(13..=19).contains(&d.len()) || d[0] == 0 {
        return false;
    }
    let units = p.units();
    if units.iter().any(|u| u.paren) {
        return false;
    }
    let numeric: Vec<usize> = units
        .iter()
        .filter(|u| !u.spoken)
        .map(|u| u.digits.len())
        .collect();
    if !(numeric.iter().all(|&l| l >= 3) || numeric.iter().all(|&l| l == 1)) {
        return false;
    }
    let mut num_seps = p.seps().iter().filter(|&&s| s != b',');
    if let Some(&first) = num_seps.clone().next() {
        if !matches!(first, b' ' | b'-') || !num_seps.all(|&s| s == first) {
            return false;
        }
    }
    luhn(&d)
}

/// Finds the card inside a run, trying the whole run first, then the run
/// minus a trailing 3–4 digit security code, then minus one short stray
/// unit at either end ("one", "2"). Few tries keep the Luhn false-positive
/// rate low.
fn find_card(run: &Run) -> Option<(usize, usize)> {
    let n = run.units.len();
    let p = |lo, hi| Piece { run, lo, hi };
    if is_card(&p(0, n)) {
        return Some((0, n));
    }
    let mut suffix = 0;
    for k in 1..n {
        suffix += run.units[n - k].digits.len();
        if suffix > 4 {
            break;
        }
        if suffix >= 3 && (15..=16).contains(&p(0, n - k).n_digits()) && is_card(&p(0, n - k)) {
            return Some((0, n - k));
        }
    }
    let short = |i: usize| run.units[i].digits.len() <= 2;
    let mut tries = Vec::new();
    if n >= 2 && short(0) {
        tries.push((1, n));
    }
    if n >= 2 && short(n - 1) {
        tries.push((0, n - 1));
    }
    if n >= 3 && short(0) && short(n - 1) {
        tries.push((1, n - 1));
    }
    tries.into_iter().find(|&(lo, hi)| is_card(&p(lo, hi)))
}

const PHONE_KW: &[&str] = &[
    "number",
    "phone",
    "call me",
    "reach me",
    "call back",
    "cell",
    "mobile",
    "telephone",
];
const BANK_KW: &[&str] = &[
    "account number",
    "account no",
    "account #",
    "acct",
    "routing number",
    "routing",
    "sort code",
];
const SSN_KW: &[&str] = &["social security", "ssn", "social"];
const CVV_KW: &[&str] = &[
    "cvv",
    "cvc",
    "cvv2",
    "cvc2",
    "security code",
    "card verification",
    "verification code",
    "three digits on the back",
    "3 digits on the back",
];

fn valid_ssn(d: &[u8]) -> bool {
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    area != 0 && area != 666 && area < 900 && d[3..5] != [0, 0] && d[5..9] != [0, 0, 0, 0]
}

/// Digit-group phone shapes. `lens` are group lengths, `first` the first
/// digit of each group.
fn is_phone_shape(units: &[Unit], seps: &[u8], plus: bool) -> bool {
    let total: usize = units.iter().map(|u| u.digits.len()).sum();
    if seps.contains(&b'.') && !seps.iter().all(|&s| s == b'.') {
        return false;
    }
    if plus {
        return (10..=15).contains(&total) && units.iter().skip(2).all(|u| !u.paren);
    }
    let lens: Vec<usize> = units.iter().map(|u| u.digits.len()).collect();
    let first = |i: usize| units[i].digits[0];
    let paren_ok = |allowed: usize| {
        units
            .iter()
            .enumerate()
            .all(|(i, u)| !u.paren || i == allowed)
    };
    match lens.as_slice() {
        // North American (area code starts 2-9).
        [3, 3, 4] => first(0) >= 2 && paren_ok(0),
        [1, 3, 3, 4] => units[0].digits == [1] && first(1) >= 2 && paren_ok(1),
        // UK-style national format: leading zero, 2-3 groups.
        _ => {
            first(0) == 0
                && (10..=11).contains(&total)
                && (2..=3).contains(&lens.len())
                && lens.iter().all(|&l| l >= 3)
                && paren_ok(0)
        }
    }
}

/// All number-run based candidates; also records the pieces of the run
/// that are not part of a card, for the security-code pass.
fn number_candidates<'a>(
    run: &'a Run,
    b: &[u8],
    lower: &[u8],
    out: &mut Vec<Cand>,
    pieces: &mut Vec<Piece<'a>>,
) {
    let n = run.units.len();
    let mut rest = vec![(0, n)];
    if let Some((lo, hi)) = find_card(run) {
        let p = Piece { run, lo, hi };
        cand(out, PRI_CARD, p.start(), p.end(), PiiKind::CardNumber);
        rest = vec![(0, lo), (hi, n)];
    }
    for (lo, hi) in rest.into_iter().filter(|(lo, hi)| lo < hi) {
        let piece = Piece { run, lo, hi };
        pieces.push(piece);
        let (s, e) = (piece.start(), piece.end());
        let nd = piece.n_digits();

        // Keyword-anchored numbers (whole piece, written or spoken).
        if (6..=17).contains(&nd) && keyword_before(lower, s, 40, BANK_KW) {
            cand(out, PRI_BANK_KW, s, e, PiiKind::BankAccount);
        }
        if nd == 9 && valid_ssn(&piece.digits()) && keyword_before(lower, s, 40, SSN_KW) {
            cand(out, PRI_SSN_KW, s, e, PiiKind::NationalId);
        }
        if (10..=11).contains(&nd) && keyword_before(lower, s, 40, PHONE_KW) {
            cand(out, PRI_PHONE_KW, s, e, PiiKind::Phone);
        }

        // Shape-based numbers over short windows of digit groups.
        for w0 in lo..hi {
            for w1 in (w0 + 1)..=(w0 + 5).min(hi) {
                let w = Piece {
                    run,
                    lo: w0,
                    hi: w1,
                };
                if !w.all_numeric() {
                    break;
                }
                let units = w.units();
                let seps = w.seps();
                let lens: Vec<usize> = units.iter().map(|u| u.digits.len()).collect();
                if lens == [3, 2, 4]
                    && seps[0] == seps[1]
                    && matches!(seps[0], b' ' | b'-')
                    && !units[0].paren
                    && valid_ssn(&w.digits())
                {
                    cand(out, PRI_SSN, w.start(), w.end(), PiiKind::NationalId);
                }
                let mut ps = w.start();
                let plus = ps > 0 && b[ps - 1] == b'+' && boundary_before(b, ps - 1);
                if plus {
                    ps -= 1;
                }
                if (w1 - w0 >= 2 || plus) && is_phone_shape(units, seps, plus) {
                    cand(out, PRI_PHONE, ps, w.end(), PiiKind::Phone);
                }
            }
        }
    }
}

/// A 3–4 digit piece near an accepted card or after a CVV keyword.
fn security_candidate(
    p: &Piece,
    b: &[u8],
    lower: &[u8],
    cards: &[(usize, usize)],
    out: &mut Vec<Cand>,
) {
    let nd = p.n_digits();
    if !(3..=4).contains(&nd) {
        return;
    }
    let (s, e) = (p.start(), p.end());
    if p.units().iter().any(|u| u.paren) || money_context(b, lower, s, e) {
        return;
    }
    let after_kw = keyword_before(lower, s, 40, CVV_KW);
    if !after_kw {
        // Nearest card after `s` and the one before it.
        let i = cards.partition_point(|&(cs, _)| cs < s);
        let near_after_card = i > 0 && s >= cards[i - 1].1 && s - cards[i - 1].1 <= 60;
        let near_before_card = i < cards.len() && cards[i].0 >= e && cards[i].0 - e <= 60;
        if !(near_after_card || near_before_card) {
            return;
        }
        // Expiry dates and years near a card are not security codes.
        let pw = prev_word(lower, s);
        if pw.starts_with(b"exp") || matches!(pw, b"valid" | b"thru" | b"through" | b"until") {
            return;
        }
        let v = p.digits().iter().fold(0u32, |a, &d| a * 10 + u32::from(d));
        if nd == 4 && (1900..=2099).contains(&v) {
            return;
        }
    }
    cand(out, PRI_SECURITY, s, e, PiiKind::SecurityCode);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(PiiKind, &str)> {
        find(text)
            .into_iter()
            .map(|f| (f.kind, &text[f.start..f.end]))
            .collect()
    }

    fn assert_single(text: &str, kind: PiiKind, value: &str) {
        assert_eq!(kinds(text), vec![(kind, value)], "input: {text:?}");
    }

    #[test]
    fn labels() {
        assert_eq!(PiiKind::CardNumber.as_str(), "CARD_NUMBER");
        assert_eq!(PiiKind::BankAccount.placeholder(), "[BANK_ACCOUNT]");
        assert_eq!(PiiKind::SecurityCode.placeholder(), "[SECURITY_CODE]");
    }

    #[test]
    fn card_numbers() {
        for v in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "378282246310005",
            "3782 822463 10005",
            "5555555555554444",
            "4222222222222",
            "6011 1111 1111 1117",
        ] {
            assert_single(&format!("my card is {v}, thanks"), PiiKind::CardNumber, v);
        }
    }

    #[test]
    fn spoken_cards() {
        for v in [
            "four one one one one one one one one one one one one one one one",
            "Four, one one one, one one one one, one one one one, one one one one",
            "four one one one 1111 1111 one one one one",
            "five five five five five five five five five five five five four four four four",
            "four one one one-one one one one-one one one one-one one one one",
            "four triple one one one one one one one one one one one one one",
        ] {
            assert_single(&format!("sure it's {v} okay"), PiiKind::CardNumber, v);
        }
        // Not Luhn valid: untouched.
        assert!(
            find("four one one one one one one one one one one one one one one two").is_empty()
        );
    }

    #[test]
    fn security_codes() {
        let t = "card 4111 1111 1111 1111 and the code on the back is 123";
        assert_eq!(
            kinds(t),
            vec![
                (PiiKind::CardNumber, "4111 1111 1111 1111"),
                (PiiKind::SecurityCode, "123")
            ]
        );
        assert_single("my cvv is 987", PiiKind::SecurityCode, "987");
        assert_single("CVV2: 4321", PiiKind::SecurityCode, "4321");
        assert_single(
            "the security code is seven eight nine",
            PiiKind::SecurityCode,
            "seven eight nine",
        );
        assert_single(
            "the three digits on the back are 555",
            PiiKind::SecurityCode,
            "555",
        );
        // Before the card, and appended directly to a spoken card.
        let t = "code 321 for card 378282246310005";
        assert_eq!(
            kinds(t),
            vec![
                (PiiKind::SecurityCode, "321"),
                (PiiKind::CardNumber, "378282246310005")
            ]
        );
        let t = "four one one one one one one one one one one one one one one one, one two three";
        let k = kinds(t);
        assert_eq!(k.len(), 2, "{k:?}");
        assert_eq!(k[0].0, PiiKind::CardNumber);
        assert_eq!(k[1], (PiiKind::SecurityCode, "one two three"));
        // Expiry next to a card is not a security code.
        let t = "4111 1111 1111 1111 expires 0426";
        assert_eq!(kinds(t), vec![(PiiKind::CardNumber, "4111 1111 1111 1111")]);
        // A lone 3-digit number with no context is not.
        assert!(find("I waited 120 minutes").is_empty());
    }

    #[test]
    fn phones() {
        for v in [
            "+14155550123",
            "+44 20 7946 0958",
            "(415) 555-0123",
            "415-555-0123",
            "415.555.0123",
            "415 555 0123",
            "1-800-555-0199",
            "07700 900123",
            "+1 (415) 555-0123",
        ] {
            assert_single(&format!("reach us on {v}."), PiiKind::Phone, v);
        }
        assert_single(
            "call me at five five five, one two three, four five six seven please",
            PiiKind::Phone,
            "five five five, one two three, four five six seven",
        );
        assert_single("my number is 4155550123", PiiKind::Phone, "4155550123");
        // Ten spoken digits without a keyword stay.
        assert!(find("five five five one two three four five six seven").is_empty());
    }

    #[test]
    fn emails() {
        for v in [
            "john.smith@example.com",
            "a_b+tag@mail.co.uk",
            "x%y-z@sub-domain.example.org",
        ] {
            assert_single(&format!("mail {v}. ok"), PiiKind::Email, v);
        }
        assert_single(
            "it is john dot smith at example dot com thanks",
            PiiKind::Email,
            "john dot smith at example dot com",
        );
        assert!(find("meet me at noon at the cafe").is_empty());
        assert!(find("not@an@email, a@b, c@d.e, @x.com").is_empty());
    }

    #[test]
    fn national_ids() {
        for v in ["123-45-6789", "123 45 6789", "078-05-1120"] {
            assert_single(&format!("ssn {v} ok"), PiiKind::NationalId, v);
            assert_single(&format!("it's {v} ok"), PiiKind::NationalId, v);
        }
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(find(&format!("it's {bad}")).is_empty(), "{bad}");
        }
        assert_single(
            "my social security number is 123456789",
            PiiKind::NationalId,
            "123456789",
        );
        assert_single(
            "ssn one two three four five six seven eight nine",
            PiiKind::NationalId,
            "one two three four five six seven eight nine",
        );
        assert!(find("reference 123456789").is_empty());
        for v in ["QQ 12 34 56 C", "QQ123456C", "AB 123456 D"] {
            assert_single(&format!("NI is {v}."), PiiKind::NationalId, v);
        }
        assert!(find("QQ123456E and QQ12345C").is_empty());
    }

    #[test]
    fn bank_accounts() {
        for v in [
            "GB82 WEST 1234 5698 7654 32",
            "DE89370400440532013000",
            "GB82WEST12345698765432",
            "DE89 3704 0044 0532 0130 00",
        ] {
            assert_single(&format!("iban {v} please"), PiiKind::BankAccount, v);
        }
        // Wrong check digits.
        assert!(find("GB83 WEST 1234 5698 7654 32").is_empty());
        assert_single(
            "account number is 12345678",
            PiiKind::BankAccount,
            "12345678",
        );
        assert_single("acct: 00123456789", PiiKind::BankAccount, "00123456789");
        assert_single(
            "routing number 021000021",
            PiiKind::BankAccount,
            "021000021",
        );
        assert_single(
            "account number one two three four five six seven eight",
            PiiKind::BankAccount,
            "one two three four five six seven eight",
        );
        let t = "sort code 12-34-56, account number 87654321";
        assert_eq!(
            kinds(t),
            vec![
                (PiiKind::BankAccount, "12-34-56"),
                (PiiKind::BankAccount, "87654321")
            ]
        );
    }

    #[test]
    fn no_false_positives() {
        for t in [
            "The meeting is at 10:30 tomorrow.",
            "That comes to $1,250.00 in total.",
            "It costs 1250 dollars.",
            "Delivered on 2024-03-15, or March 15.",
            "Back in 1999 and 2024 we had 3 items.",
            "Your order 5521 ships in 3 to 5 days.",
            "The call lasted 1 hour 30 minutes, about 90 minutes.",
            "Card 4111 1111 1111 1112 failed.",
            "4111111111111112",
            "Version 1.2.3 at 192.168.1.100, 50% off, 3rd time, room 101.",
            "Oh, I see, one moment, two of them.",
            "between 9 and 5, 12/26, 1,000,000 people",
        ] {
            assert!(find(t).is_empty(), "{t:?} -> {:?}", kinds(t));
            assert_eq!(redact(t).text, t);
        }
    }

    #[test]
    fn redact_replaces_and_maps_back() {
        let planted = [
            ("4111 1111 1111 1111", PiiKind::CardNumber),
            ("737", PiiKind::SecurityCode),
            ("+44 20 7946 0958", PiiKind::Phone),
            ("jane.doe@example.org", PiiKind::Email),
            ("219-09-9999", PiiKind::NationalId),
            ("GB82 WEST 1234 5698 7654 32", PiiKind::BankAccount),
        ];
        let input = format!(
            "Héllo — card {} with cvv {}. Phone… {} or mail {} 😀 SSN {}; IBAN {} ✓",
            planted[0].0, planted[1].0, planted[2].0, planted[3].0, planted[4].0, planted[5].0
        );
        let out = redact(&input);
        assert_eq!(out.spans.len(), planted.len(), "{out:?}");
        for (span, (value, kind)) in out.spans.iter().zip(planted) {
            assert_eq!(span.kind, kind);
            assert_eq!(&input[span.original_start..span.original_end], value);
            assert_eq!(&out.text[span.start..span.end], kind.placeholder());
            assert!(out.text.contains(kind.placeholder()));
        }
        for digit in '0'..='9' {
            assert!(!out.text.contains(digit), "{}", out.text);
        }
        assert!(!out.text.contains('@'));
        assert!(out
            .text
            .starts_with("Héllo — card [CARD_NUMBER] with cvv [SECURITY_CODE]."));
    }

    /// Tiny xorshift64 PRNG for the property test.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_inputs_never_panic_and_spans_are_sane() {
        const PIECES: &[&str] = &[
            "0",
            "1",
            "4",
            "7",
            "9",
            "4111",
            "1111",
            " ",
            " ",
            "-",
            ".",
            ",",
            ", ",
            "+",
            "(",
            ")",
            "@",
            ":",
            "$",
            "%",
            "é",
            "€",
            "日本",
            "😀",
            "\u{301}",
            "\n",
            "one",
            "oh",
            "four",
            "double",
            "triple ",
            "dot",
            " at ",
            "com",
            "GB82",
            "WEST",
            "QQ",
            "C",
            "cvv ",
            "account number ",
            "ssn ",
            "call me ",
            "a",
            "Z",
            "x.y",
            "@ex.com",
            "exp",
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..4000 {
            let len = rng.below(60);
            let mut s = String::new();
            for _ in 0..len {
                if rng.below(4) == 0 {
                    // Random printable ASCII.
                    s.push((b' ' + rng.below(95) as u8) as char);
                } else {
                    s.push_str(PIECES[rng.below(PIECES.len())]);
                }
            }
            let found = find(&s);
            let mut prev_end = 0;
            for f in &found {
                assert!(f.start < f.end && f.start >= prev_end, "{s:?} {found:?}");
                assert!(s.is_char_boundary(f.start) && s.is_char_boundary(f.end));
                prev_end = f.end;
            }
            let r = redact(&s);
            assert_eq!(r.spans.len(), found.len());
            for sp in &r.spans {
                assert_eq!(&r.text[sp.start..sp.end], sp.kind.placeholder());
            }
        }
        // Some known values embedded at random among multi-byte chars.
        for i in 0..500 {
            let noise: String = (0..rng.below(8))
                .map(|_| ['é', '日', '😀', ' ', '7', 'x'][rng.below(6)])
                .collect();
            let s = format!("{noise}4111 1111 1111 1111 {noise}{i}");
            let _ = redact(&s);
        }
    }

    #[test]
    fn long_inputs_are_fast() {
        let big = "one ".repeat(20_000) + &"1 ".repeat(20_000) + &"a@".repeat(20_000);
        let start = std::time::Instant::now();
        let _ = find(&big);
        assert!(start.elapsed().as_secs() < 5);
    }
}
