//! Benchmarks the local acoustic analyser on a generated five-minute stereo call.

use std::hint::black_box;
use std::io::Cursor;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use voicegraph::adapters::local::acoustic::{facts, probe, AudioError};
use voicegraph::adapters::local::lexicon;
use voicegraph::domain::{compose, Analysis, AnalysisRequest, InsightsInput};

/// The local analysis as the pipeline (`services::analysis::Pipeline`) composes it, without the
/// async hops: the acoustic facts, their metrics, the lexicon's insights.
fn analyze_audio(bytes: &[u8], req: &AnalysisRequest) -> Result<Analysis, AudioError> {
    let input = InsightsInput::of(facts(bytes)?, req.clone());
    Ok(compose(&input, lexicon::insights(&input)))
}

const RATE: u32 = 16_000;
const SECONDS: u32 = 300;

/// xorshift: deterministic noise without a dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A 16 kHz stereo 16-bit WAV: turns of 2–9 s alternate between the channels, each starting
/// up to 0.4 s before the previous one ends (overlap) or after a pause of up to 1.2 s; within a
/// turn the loudness follows a syllable rhythm with short dips, over a -60 dBFS noise floor.
fn call_wav() -> Vec<u8> {
    let total = (RATE * SECONDS) as usize;
    let mut rng = Noise(0x9E37_79B9_7F4A_7C15);
    let mut turns: Vec<Vec<(usize, usize)>> = vec![Vec::new(), Vec::new()];
    let mut t = RATE as usize / 2;
    let mut who = 0;
    while t < total {
        let len = (2.0 + 7.0 * (rng.next() * 0.5 + 0.5)) * RATE as f32;
        let end = (t + len as usize).min(total);
        turns[who].push((t, end));
        let shift = rng.next();
        t = if shift < -0.5 {
            end.saturating_sub((0.4 * RATE as f32 * -shift) as usize)
        } else {
            end + (1.2 * RATE as f32 * (shift * 0.5 + 0.5)) as usize
        };
        who = 1 - who;
    }
    let floor = 10f32.powf(-60.0 / 20.0) * 3f32.sqrt();
    let loud = 10f32.powf(-18.0 / 20.0) * 3f32.sqrt();
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut cur = Cursor::new(Vec::with_capacity(total * 4 + 44));
    let mut w = hound::WavWriter::new(&mut cur, spec).expect("wav writer");
    let mut idx = [0usize; 2];
    for i in 0..total {
        for (c, list) in turns.iter().enumerate() {
            while idx[c] < list.len() && list[idx[c]].1 <= i {
                idx[c] += 1;
            }
            let speaking = list.get(idx[c]).is_some_and(|&(s, _)| s <= i);
            let amp = if speaking {
                // Syllables at ~4 Hz with a brief dip between words every ~0.7 s.
                let t = i as f32 / RATE as f32;
                let syllable = 0.55 + 0.45 * (t * std::f32::consts::TAU * 4.0).sin().abs();
                let word_gap = if (t * 1.4).fract() < 0.08 { 0.05 } else { 1.0 };
                loud * syllable * word_gap
            } else {
                floor
            };
            let s = (rng.next() * amp * 32767.0).clamp(-32768.0, 32767.0) as i16;
            w.write_sample(s).expect("sample");
        }
    }
    w.finalize().expect("finalize");
    cur.into_inner()
}

fn bench(c: &mut Criterion) {
    let wav = call_wav();
    let req = AnalysisRequest::default();

    let start = Instant::now();
    let analysis = analyze_audio(&wav, &req).expect("analysis");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "analysed {} s of audio in {:.1} ms; realtime factor: {:.0} x ({} segments, {} interruptions)",
        SECONDS,
        secs * 1000.0,
        f64::from(SECONDS) / secs,
        analysis.segments.len(),
        analysis.metrics.interruptions
    );

    let mut group = c.benchmark_group("local_acoustic");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(wav.len() as u64));
    group.bench_function("analyze_audio_5min_stereo_16k", |b| {
        b.iter(|| analyze_audio(black_box(&wav), black_box(&req)).expect("analysis"))
    });
    group.bench_function("probe_5min_stereo_16k", |b| {
        b.iter(|| probe(black_box(&wav)).expect("probe"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
