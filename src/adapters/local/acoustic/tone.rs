//! Redacting time spans of decoded PCM audio with a tone, and writing
//! 16-bit PCM WAV files.

/// Frequency of the tone that replaces redacted audio.
pub const TONE_HZ: f32 = 1000.0;

/// Peak amplitude of the tone (full scale is 1.0).
const TONE_AMPLITUDE: f32 = 0.25;

/// Length of the linear crossfades into and out of the tone.
const FADE_MS: i128 = 5;

/// Replaces every span `(start_ms, end_ms)` of the signal, widened by
/// `pad_ms` on each side, with a [`TONE_HZ`] sine at amplitude 0.25 in every
/// channel.
///
/// Spans are clamped to the signal and merged when they overlap (or when
/// they are so close that their fades would overlap). Empty and inverted
/// spans are ignored; a negative `pad_ms` counts as 0. The 5 ms crossfades
/// lie *outside* the padded span: in the `FADE` before it the original
/// fades out while the tone fades in, and the reverse after it, so every
/// sample inside the padded span is pure tone. Samples further away are
/// left bit-identical. The tone's phase is tied to the absolute sample
/// index, so it is continuous and identical in all channels.
///
/// Channels of different lengths are each processed up to their own end.
/// Runs in `O(samples * channels)` plus sorting the spans.
pub fn redact_pcm(
    channels: &mut [Vec<f32>],
    sample_rate: u32,
    spans_ms: &[(i64, i64)],
    pad_ms: i64,
) {
    let len = channels.iter().map(Vec::len).max().unwrap_or(0);
    if sample_rate == 0 || len == 0 {
        return;
    }
    let sr = i128::from(sample_rate);
    let pad = i128::from(pad_ms.max(0));
    let fade = usize::try_from(FADE_MS * sr / 1000).unwrap_or(usize::MAX);
    // i128 keeps `ms * sample_rate` exact for any i64 input.
    let clamp = |s: i128| s.clamp(0, len as i128) as usize;
    let floor_samples = |ms: i128| clamp((ms * sr).div_euclid(1000));
    let ceil_samples = |ms: i128| clamp((ms * sr + 999).div_euclid(1000));

    let mut regions: Vec<(usize, usize)> = spans_ms
        .iter()
        .filter(|(s, e)| s < e)
        .map(|&(s, e)| {
            (
                floor_samples(i128::from(s) - pad),
                ceil_samples(i128::from(e) + pad),
            )
        })
        .filter(|(a, b)| a < b)
        .collect();
    regions.sort_unstable();

    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(regions.len());
    for (a, b) in regions {
        match merged.last_mut() {
            // Merge when the gap would not even fit both fades.
            Some(last) if a <= last.1.saturating_add(2 * fade) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }

    let step = f64::from(TONE_HZ) / f64::from(sample_rate);
    let tone = |i: usize| {
        // Reduce the phase to one cycle before scaling by 2*pi, so large
        // indices keep full precision.
        let cycles = (i as f64 * step).fract();
        TONE_AMPLITUDE * (std::f64::consts::TAU * cycles).sin() as f32
    };
    // `w` is the weight of the tone: 1 = pure tone, 0 = original.
    let mut mix = |i: usize, w: f32| {
        let t = tone(i);
        for ch in channels.iter_mut() {
            if let Some(x) = ch.get_mut(i) {
                *x = if w >= 1.0 { t } else { *x * (1.0 - w) + t * w };
            }
        }
    };

    for (a, b) in merged {
        if fade > 0 {
            // Fade in over the `fade - 1` samples before `a` (weight
            // strictly between 0 and 1; the sample at `a - fade` would have
            // weight 0 and stays untouched).
            for i in (a + 1).saturating_sub(fade)..a {
                mix(i, 1.0 - (a - i) as f32 / fade as f32);
            }
        }
        for i in a..b {
            mix(i, 1.0);
        }
        if fade > 0 {
            for i in b..b.saturating_add(fade - 1).min(len) {
                mix(i, 1.0 - (i - b + 1) as f32 / fade as f32);
            }
        }
    }
}

/// Encodes the channels as a canonical 44-byte-header RIFF/WAVE file:
/// PCM (format 1), 16-bit, interleaved little-endian samples.
///
/// The channel count is `channels.len()`; the frame count is the length of
/// the shortest channel. Samples are clamped to `[-1, 1]` and scaled by
/// 32767 with rounding (NaN becomes 0).
pub fn encode_wav_pcm16(channels: &[Vec<f32>], sample_rate: u32) -> Vec<u8> {
    let frames = channels.iter().map(Vec::len).min().unwrap_or(0);
    let n_ch = channels.len();
    let block_align = n_ch * 2;
    let data_len = frames * block_align;

    let mut out = Vec::with_capacity(44 + data_len);
    let u32_le = |v: usize| u32::try_from(v).unwrap_or(u32::MAX).to_le_bytes();
    let u16_le = |v: usize| u16::try_from(v).unwrap_or(u16::MAX).to_le_bytes();

    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&u32_le(36 + data_len));
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&u16_le(n_ch));
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&u32_le(sample_rate as usize * block_align)); // byte rate
    out.extend_from_slice(&u16_le(block_align));
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&u32_le(data_len));

    for i in 0..frames {
        for ch in channels {
            // `as` saturates and maps NaN to 0.
            let s = (ch[i].clamp(-1.0, 1.0) * 32767.0).round() as i16;
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SR: u32 = 16_000;

    fn sine(freq: f32, amp: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| amp * (std::f32::consts::TAU * freq * i as f32 / SR as f32).sin())
            .collect()
    }

    fn noise(n: usize, mut seed: u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect()
    }

    /// Amplitude of the `freq` component of `x` (Goertzel algorithm).
    fn goertzel(x: &[f32], freq: f64) -> f64 {
        let w = std::f64::consts::TAU * freq / f64::from(SR);
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s0 = f64::from(v) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        2.0 * power.max(0.0).sqrt() / x.len() as f64
    }

    fn ms(v: usize) -> usize {
        v * SR as usize / 1000
    }

    fn expected_tone(i: usize) -> f32 {
        let cycles = (i as f64 * f64::from(TONE_HZ) / f64::from(SR)).fract();
        0.25 * (std::f64::consts::TAU * cycles).sin() as f32
    }

    #[test]
    fn span_gets_tone_and_outside_is_untouched() {
        let n = ms(1000);
        let original = vec![sine(300.0, 0.5, n), noise(n, 0x1234_5678)];
        let mut chans = original.clone();
        redact_pcm(&mut chans, SR, &[(400, 600)], 20);

        for ch in &chans {
            let inside = &ch[ms(400)..ms(600)];
            assert!((goertzel(inside, 1000.0) - 0.25).abs() < 0.01);
            assert!(goertzel(inside, 300.0) < 1e-3);
        }
        // The padded span is pure tone in every channel.
        for i in ms(380)..ms(620) {
            for ch in &chans {
                assert!((ch[i] - expected_tone(i)).abs() < 1e-6, "sample {i}");
            }
        }
        // Beyond pad + fade: bit-identical.
        for (ch, orig) in chans.iter().zip(&original) {
            for i in (0..ms(375)).chain(ms(625)..n) {
                assert_eq!(ch[i].to_bits(), orig[i].to_bits(), "sample {i}");
            }
            // The fade regions are a mix, not untouched and not pure tone.
            assert_ne!(ch[ms(378)], orig[ms(378)]);
        }
        // The original 300 Hz is still there outside.
        assert!((goertzel(&chans[0][..ms(300)], 300.0) - 0.5).abs() < 0.01);
    }

    #[test]
    fn overlapping_spans_merge_and_edges_clamp() {
        let n = ms(1000);
        let original = vec![sine(300.0, 0.5, n)];
        let mut chans = original.clone();
        redact_pcm(
            &mut chans,
            SR,
            &[
                (150, 300),
                (100, 200),
                (900, 5_000),
                (-50, 20),
                (500, 400),
                (700, 700),
            ],
            0,
        );
        let ch = &chans[0];
        let pure = |r: std::ops::Range<usize>| {
            r.into_iter()
                .all(|i| (ch[i] - expected_tone(i)).abs() < 1e-6)
        };
        assert!(pure(0..ms(20)));
        assert!(pure(ms(100)..ms(300)), "merged region has no dip");
        assert!(pure(ms(900)..n));
        // Inverted and empty spans do nothing.
        assert!((ms(310)..ms(890)).all(|i| ch[i].to_bits() == original[0][i].to_bits()));
    }

    #[test]
    fn close_spans_merge_instead_of_overlapping_fades() {
        let n = ms(200);
        let mut chans = vec![noise(n, 99)];
        // 4 ms gap < 2 * 5 ms of fades: filled with tone.
        redact_pcm(&mut chans, SR, &[(50, 100), (104, 150)], 0);
        assert!((ms(50)..ms(150)).all(|i| (chans[0][i] - expected_tone(i)).abs() < 1e-6));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let mut none: Vec<Vec<f32>> = Vec::new();
        redact_pcm(&mut none, SR, &[(0, 100)], 10);
        let mut chans = vec![vec![0.5; 10], vec![0.5; 3]];
        redact_pcm(&mut chans, 0, &[(0, 100)], 10);
        assert_eq!(chans[0], vec![0.5; 10]);
        redact_pcm(&mut chans, 100, &[(i64::MIN, i64::MAX)], i64::MAX);
        assert_eq!(chans[1].len(), 3);
    }

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }

    #[test]
    fn wav_header_and_round_trip() {
        let left = vec![0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0, 0.123_45, f32::NAN];
        let right: Vec<f32> = (0..12).map(|i| i as f32 / 12.0 - 0.5).collect();
        let chans = vec![left.clone(), right.clone()];
        let wav = encode_wav_pcm16(&chans, 44_100);
        let frames = left.len(); // the shorter channel

        assert_eq!(&wav[0..4], b"RIFF");
        assert_eq!(u32_at(&wav, 4) as usize, wav.len() - 8);
        assert_eq!(&wav[8..12], b"WAVE");
        assert_eq!(&wav[12..16], b"fmt ");
        assert_eq!(u32_at(&wav, 16), 16);
        assert_eq!(u16_at(&wav, 20), 1); // PCM
        assert_eq!(u16_at(&wav, 22), 2); // channels
        assert_eq!(u32_at(&wav, 24), 44_100);
        assert_eq!(u32_at(&wav, 28), 44_100 * 4); // byte rate
        assert_eq!(u16_at(&wav, 32), 4); // block align
        assert_eq!(u16_at(&wav, 34), 16); // bits
        assert_eq!(&wav[36..40], b"data");
        assert_eq!(u32_at(&wav, 40) as usize, frames * 4);
        assert_eq!(wav.len(), 44 + frames * 4);

        for i in 0..frames {
            for (c, ch) in chans.iter().enumerate() {
                let o = 44 + i * 4 + c * 2;
                let got = f32::from(i16::from_le_bytes([wav[o], wav[o + 1]])) / 32767.0;
                let want = if ch[i].is_nan() {
                    0.0
                } else {
                    ch[i].clamp(-1.0, 1.0)
                };
                assert!((got - want).abs() <= 1.0 / 32767.0, "frame {i} ch {c}");
            }
        }
        assert_eq!(
            i16::from_le_bytes([wav[44 + 3 * 4], wav[45 + 3 * 4]]),
            32767
        );
        assert_eq!(
            i16::from_le_bytes([wav[44 + 4 * 4], wav[45 + 4 * 4]]),
            -32767
        );

        let empty = encode_wav_pcm16(&[], 8_000);
        assert_eq!(empty.len(), 44);
        assert_eq!(u16_at(&empty, 22), 0);
    }
}
