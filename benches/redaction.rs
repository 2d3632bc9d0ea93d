//! How fast redaction runs against real time: the audio (decoding a recording, covering 40
//! stretches with the tone, writing the WAV copy) on a generated five-minute stereo call, and
//! the text (finding and replacing personal data) on a transcript of the same length. Run on
//! demand: `cargo bench --bench redaction`.

use std::hint::black_box;
use std::io::Cursor;
use std::time::Instant;

use voicegraph::adapters::local::acoustic::redacted_wav;
use voicegraph::domain::pii;
use voicegraph::ports::Audio;

const RATE: u32 = 16_000;
const SECONDS: u32 = 300;
const ROUNDS: usize = 5;

fn call_wav() -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
    let mut seed: u32 = 0x9e37_79b9;
    for i in 0..(RATE * SECONDS) as usize {
        let speaking = (i / (RATE as usize * 4)) % 2;
        for ch in 0..2 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = ((seed >> 16) as f64 / 65536.0) * 2.0 - 1.0;
            let amp = if ch == speaking { 6000.0 } else { 20.0 };
            w.write_sample((noise * amp) as i16).unwrap();
        }
    }
    w.finalize().unwrap();
    out.into_inner()
}

/// About 150 words a minute for five minutes, with a card, a phone number and an e-mail
/// address every 30 seconds.
fn transcript() -> String {
    let mut t = String::new();
    for i in 0..10 {
        t.push_str(
            &"thanks for calling, let me look into that order for you right away. ".repeat(6),
        );
        t.push_str(&format!(
            "my card is 4111 1111 1111 1111 and my number is (415) 555-01{i:02}, email jane{i}@example.com. "
        ));
    }
    t
}

fn best<T>(mut f: impl FnMut() -> T) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let wav = call_wav();
    let spans: Vec<(i64, i64)> = (0..40)
        .map(|i| (i * 7_000 + 1_000, i * 7_000 + 3_500))
        .collect();
    let audio = Audio::Bytes(wav.clone().into());
    let secs = best(|| redacted_wav(&audio, &spans).unwrap());
    println!(
        "audio: {SECONDS} s stereo 16 kHz WAV, 40 stretches toned: {:.1} ms, {:.0}x real time",
        secs * 1e3,
        SECONDS as f64 / secs
    );
    let text = transcript();
    let secs = best(|| pii::redact(&text));
    let found = pii::find(&text).len();
    println!(
        "text: {} characters ({found} data found): {:.2} ms, {:.0}x real time",
        text.len(),
        secs * 1e3,
        SECONDS as f64 / secs
    );
}
