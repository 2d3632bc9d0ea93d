//! Per-channel energy-based voice activity detection and the talk-time metrics derived from it.

use super::decode::PcmSink;

/// Tuning of the detector. The defaults suit telephone speech at 8–48 kHz.
#[derive(Debug, Clone, PartialEq)]
pub struct VadConfig {
    /// Analysis frame length.
    pub frame_ms: u32,
    /// Gaps in speech shorter than this are bridged (energy dips between words and syllables).
    pub hangover_ms: u32,
    /// Speech runs shorter than this (after bridging) are dropped as clicks and pops.
    pub min_speech_ms: u32,
    /// Nothing quieter than this is ever speech, whatever the noise floor.
    pub abs_floor_db: f32,
    /// Which low percentile of the (non-silent) frame energies estimates the noise floor.
    pub noise_percentile: f32,
    /// The threshold sits this fraction of the floor-to-peak range above the floor...
    pub margin_fraction: f32,
    /// ...but at least this many dB above it...
    pub min_margin_db: f32,
    /// ...and at most this many.
    pub max_margin_db: f32,
    /// A channel whose loudest frame is less than this above its floor carries no speech.
    pub min_contrast_db: f32,
    /// When at least this fraction of the frames is digital silence, the channel is gated
    /// (silence suppression, muting between turns): everything above the absolute floor is
    /// speech, since there is no live noise floor to measure.
    pub gated_fraction: f32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            frame_ms: 20,
            hangover_ms: 200,
            min_speech_ms: 100,
            abs_floor_db: -55.0,
            noise_percentile: 0.05,
            margin_fraction: 0.35,
            min_margin_db: 6.0,
            max_margin_db: 18.0,
            min_contrast_db: 9.0,
            gated_fraction: 0.1,
        }
    }
}

/// Frames quieter than this are digital silence (zero padding, muted line): they say nothing
/// about the line's noise floor.
const DIGITAL_SILENCE_DB: f32 = -100.0;

/// Samples per analysis frame at `sample_rate`.
pub fn frame_len(sample_rate: u32, frame_ms: u32) -> usize {
    let n = u64::from(sample_rate) * u64::from(frame_ms) / 1000;
    usize::try_from(n.max(1)).unwrap_or(usize::MAX)
}

/// A sink that reduces the decoded signal to the mean square of each frame, per channel, so
/// that the whole signal never has to be held in memory.
#[derive(Debug, Clone)]
pub struct FrameEnergies {
    frame_ms: u32,
    frame_len: usize,
    sample_rate: u32,
    channels: Vec<ChannelAcc>,
}

#[derive(Debug, Clone, Default)]
struct ChannelAcc {
    acc: f64,
    count: usize,
    samples: u64,
    energies: Vec<f32>,
}

/// The per-frame mean squares of every channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Energies {
    pub frame_len: usize,
    pub sample_rate: u32,
    /// Samples decoded, per channel.
    pub samples: Vec<u64>,
    /// Mean square per frame, per channel; a trailing partial frame is averaged over its length.
    pub frames: Vec<Vec<f32>>,
}

impl FrameEnergies {
    pub fn new(frame_ms: u32) -> Self {
        Self {
            frame_ms,
            frame_len: 1,
            sample_rate: 0,
            channels: Vec::new(),
        }
    }

    /// Flushes the trailing partial frames.
    pub fn finish(self) -> Energies {
        let mut samples = Vec::with_capacity(self.channels.len());
        let mut frames = Vec::with_capacity(self.channels.len());
        for mut ch in self.channels {
            if ch.count > 0 {
                ch.energies.push((ch.acc / ch.count as f64) as f32);
            }
            samples.push(ch.samples);
            frames.push(ch.energies);
        }
        Energies {
            frame_len: self.frame_len,
            sample_rate: self.sample_rate,
            samples,
            frames,
        }
    }
}

impl PcmSink for FrameEnergies {
    fn begin(&mut self, channels: usize, sample_rate: u32) {
        self.sample_rate = sample_rate;
        self.frame_len = frame_len(sample_rate, self.frame_ms);
        // Room for a typical call (10 minutes) up front; longer calls grow geometrically.
        let per_second = (1000 / self.frame_ms.max(1)) as usize + 1;
        self.channels = (0..channels)
            .map(|_| ChannelAcc {
                energies: Vec::with_capacity(per_second * 600),
                ..ChannelAcc::default()
            })
            .collect();
    }

    fn push(&mut self, channel: usize, samples: &[f32]) {
        let frame_len = self.frame_len;
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        ch.samples = ch.samples.saturating_add(samples.len() as u64);
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (frame_len - ch.count).min(rest.len());
            let (head, tail) = rest.split_at(take);
            ch.acc += f64::from(sum_squares(head));
            ch.count += take;
            if ch.count == frame_len {
                ch.energies.push((ch.acc / frame_len as f64) as f32);
                ch.acc = 0.0;
                ch.count = 0;
            }
            rest = tail;
        }
    }
}

/// Eight independent accumulators let the compiler vectorise the loop (a single float
/// accumulator must be summed in order).
fn sum_squares(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>()
}

/// Mean square to dB relative to full scale (a full-scale square wave is 0 dBFS).
pub fn to_db(mean_square: f32) -> f32 {
    10.0 * mean_square.max(1e-12).log10()
}

/// The energy above which a frame of this channel counts as speech; `None` when the channel
/// carries no speech at all (silence, or steady noise with no louder stretches).
pub fn threshold_db(frames_db: &[f32], cfg: &VadConfig) -> Option<f32> {
    let mut live: Vec<f32> = frames_db
        .iter()
        .copied()
        .filter(|&d| d > DIGITAL_SILENCE_DB && d.is_finite())
        .collect();
    if live.is_empty() {
        return None;
    }
    let peak = live.iter().copied().fold(f32::MIN, f32::max);
    let silent = frames_db.len() - live.len();
    if silent as f32 >= frames_db.len() as f32 * cfg.gated_fraction {
        return (peak >= cfg.abs_floor_db).then_some(cfg.abs_floor_db);
    }
    let last = live.len() - 1;
    let rank = ((last as f32 * cfg.noise_percentile.clamp(0.0, 1.0)) as usize).min(last);
    let (_, floor, _) = live.select_nth_unstable_by(rank, f32::total_cmp);
    let floor = *floor;
    let contrast = peak - floor;
    if contrast < cfg.min_contrast_db {
        return None;
    }
    let margin = (contrast * cfg.margin_fraction).clamp(cfg.min_margin_db, cfg.max_margin_db);
    Some((floor + margin).max(cfg.abs_floor_db))
}

/// Speech stretches of one channel as `(start_ms, end_ms)`, in time order.
pub fn detect(
    frames: &[f32],
    frame_len: usize,
    sample_rate: u32,
    total_samples: u64,
    cfg: &VadConfig,
) -> Vec<(i64, i64)> {
    if frames.is_empty() || sample_rate == 0 || frame_len == 0 {
        return Vec::new();
    }
    let db: Vec<f32> = frames.iter().map(|&e| to_db(e)).collect();
    let Some(thr) = threshold_db(&db, cfg) else {
        return Vec::new();
    };
    let frame_ms = (frame_len as f64 * 1000.0 / f64::from(sample_rate)).max(1e-9);
    let hangover = (f64::from(cfg.hangover_ms) / frame_ms).round() as usize;
    let min_run = (f64::from(cfg.min_speech_ms) / frame_ms).round() as usize;

    // Runs of speech frames, as [start, end) frame indices, with short gaps bridged.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut start: Option<usize> = None;
    for (i, &d) in db.iter().enumerate() {
        let speech = d >= thr;
        match (speech, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                push_bridged(&mut runs, (s, i), hangover);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        push_bridged(&mut runs, (s, db.len()), hangover);
    }

    let to_ms = |frame: usize| {
        let sample = (frame as u64)
            .saturating_mul(frame_len as u64)
            .min(total_samples);
        super::decode::frames_to_ms(sample, sample_rate)
    };
    runs.into_iter()
        .filter(|&(s, e)| e - s >= min_run.max(1))
        .map(|(s, e)| (to_ms(s), to_ms(e)))
        .filter(|&(s, e)| e > s)
        .collect()
}

fn push_bridged(runs: &mut Vec<(usize, usize)>, run: (usize, usize), hangover: usize) {
    if let Some(last) = runs.last_mut() {
        if run.0 - last.1 < hangover {
            last.1 = run.1;
            return;
        }
    }
    runs.push(run);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic noise generator, so tests need no extra crate.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// Uniform noise at `noise_db` with louder bursts at `bursts` (seconds).
    fn channel(rate: u32, secs: f32, noise_db: f32, bursts: &[(f32, f32)], seed: u64) -> Vec<f32> {
        let mut rng = Lcg(seed);
        // Uniform noise in [-a, a] has mean square a²/3.
        let amp = |db: f32| (3.0 * 10f32.powf(db / 10.0)).sqrt();
        let (quiet, loud) = (amp(noise_db), amp(-20.0));
        (0..(secs * rate as f32).round() as usize)
            .map(|i| {
                let t = i as f32 / rate as f32;
                let a = if bursts.iter().any(|&(s, e)| t >= s && t < e) {
                    loud
                } else {
                    quiet
                };
                rng.next() * a
            })
            .collect()
    }

    fn run(samples: &[f32], rate: u32) -> Vec<(i64, i64)> {
        let cfg = VadConfig::default();
        let mut sink = FrameEnergies::new(cfg.frame_ms);
        sink.begin(1, rate);
        // Odd chunk sizes exercise frames that straddle pushes.
        for chunk in samples.chunks(1001) {
            sink.push(0, chunk);
        }
        let e = sink.finish();
        detect(&e.frames[0], e.frame_len, rate, e.samples[0], &cfg)
    }

    #[test]
    fn frame_energy_matches_direct_computation() {
        let mut sink = FrameEnergies::new(20);
        sink.begin(2, 1000);
        sink.push(0, &[0.5; 30]);
        sink.push(0, &[0.5; 15]);
        sink.push(1, &[1.0; 5]);
        let e = sink.finish();
        assert_eq!(e.frame_len, 20);
        assert_eq!(e.samples, vec![45, 5]);
        assert_eq!(e.frames[0].len(), 3);
        assert!(e.frames[0].iter().all(|&v| (v - 0.25).abs() < 1e-6));
        assert_eq!(e.frames[1], vec![1.0]);
        assert!((sum_squares(&[1.0; 13]) - 13.0).abs() < 1e-6);
    }

    #[test]
    fn bursts_are_found_at_their_times() {
        let bursts = [(0.5, 2.5), (4.0, 4.9), (6.02, 8.0)];
        let found = run(&channel(16000, 9.0, -60.0, &bursts, 1), 16000);
        assert_eq!(found.len(), 3, "{found:?}");
        for (&(s, e), &(gs, ge)) in found.iter().zip(&bursts) {
            assert!((s - (gs * 1000.0) as i64).abs() <= 20, "start {s} vs {gs}");
            assert!((e - (ge * 1000.0) as i64).abs() <= 20, "end {e} vs {ge}");
        }
    }

    #[test]
    fn short_gaps_are_bridged_and_clicks_dropped() {
        // 150 ms gap (bridged), then a 40 ms click far from anything (dropped).
        let bursts = [(1.0, 2.0), (2.15, 3.0), (5.0, 5.04)];
        let found = run(&channel(8000, 6.0, -60.0, &bursts, 2), 8000);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!((found[0].0 - 1000).abs() <= 20 && (found[0].1 - 3000).abs() <= 20);
    }

    #[test]
    fn silence_and_steady_noise_are_not_speech() {
        assert!(run(&vec![0.0; 32000], 16000).is_empty());
        assert!(run(&channel(16000, 3.0, -60.0, &[], 3), 16000).is_empty());
        assert!(run(&channel(16000, 3.0, -25.0, &[], 4), 16000).is_empty());
        // Very quiet "bursts" under the absolute floor are not speech either.
        let mut quiet = channel(16000, 3.0, -90.0, &[], 5);
        for s in &mut quiet[16000..32000] {
            *s *= 10f32.powf(30.0 / 20.0);
        }
        assert!(run(&quiet, 16000).is_empty());
    }

    #[test]
    fn a_short_digital_silence_lead_in_does_not_lower_the_noise_floor() {
        // 0.3 s of zero padding, then a noisy line at -48 dBFS with one burst.
        let mut s = vec![0.0; 4800];
        s.extend(channel(16000, 9.7, -48.0, &[(1.0, 2.0)], 6));
        let found = run(&s, 16000);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!((found[0].0 - 1300).abs() <= 20 && (found[0].1 - 2300).abs() <= 20);
    }

    #[test]
    fn gated_channel_uses_the_absolute_floor() {
        // Digital silence between turns; the bursts vary by only ~8 dB, all of it speech.
        let mut s = vec![0.0f32; 16000 * 6];
        for (i, v) in s.iter_mut().enumerate().take(16000 * 4).skip(16000) {
            let t = i as f32 / 16000.0;
            *v = 0.1 * (0.6 + 0.4 * (t * 25.0).sin()) * (t * 900.0).sin();
        }
        assert_eq!(run(&s, 16000), vec![(1000, 4000)]);
        // Gated, but what is there is too quiet to be speech.
        let faint: Vec<f32> = s.iter().map(|v| v * 0.001).collect();
        assert!(run(&faint, 16000).is_empty());
    }

    #[test]
    fn speech_until_the_end_closes_at_the_last_sample() {
        let found = run(&channel(16000, 2.01, -60.0, &[(1.0, 3.0)], 7), 16000);
        assert_eq!(found, vec![(1000, 2010)]);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let cfg = VadConfig::default();
        assert!(detect(&[], 160, 8000, 0, &cfg).is_empty());
        assert!(detect(&[0.1; 10], 160, 0, 1600, &cfg).is_empty());
        assert!(detect(&[0.1; 10], 0, 8000, 1600, &cfg).is_empty());
        assert!(detect(&[f32::NAN; 10], 160, 8000, 1600, &cfg).is_empty());
        assert_eq!(frame_len(0, 20), 1);
    }
}
