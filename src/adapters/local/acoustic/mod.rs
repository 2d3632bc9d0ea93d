//! The local acoustic analysis: decodes a recording and finds when each channel carries speech,
//! in-process and deterministic. These are the call's acoustic facts; what the words say is the
//! insights adapters' business (`adapters::local::lexicon`, Gemini), and the metrics follow from
//! the facts alone (`domain::conversation`).

pub mod chunks;
pub mod decode;
pub mod tone;
pub mod vad;

use std::path::Path;

use async_trait::async_trait;

use crate::domain::conversation::AcousticFacts;
use crate::domain::AudioInfo;
use crate::ports::{Acoustics, AnalyzeError, Audio};

/// Longest recording the analysis accepts.
pub const MAX_DURATION_SECS: u64 = 4 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("the recording is empty")]
    Empty,
    #[error("the recording is not decodable audio: {0}")]
    Undecodable(String),
    #[error("the recording has {0} channels; at most 2 are supported")]
    TooManyChannels(usize),
    #[error("the recording is longer than {max_secs} seconds")]
    TooLong { max_secs: u64 },
    #[error("the recording contains no audio samples")]
    NoSamples,
}

/// Reads container + stream headers AND decodes at least the first packet, so that a file with
/// a valid header but garbage data is refused. Cheap: does not decode the whole file.
pub fn probe(bytes: &[u8]) -> Result<AudioInfo, AudioError> {
    decode::probe(bytes, MAX_DURATION_SECS)
}

/// Like [`probe`], reading only what it needs from the file: the headers and the first packets.
/// An empty file is [`AudioError::Empty`]; a file that cannot be opened or read is
/// [`AudioError::Undecodable`], with the reason.
pub fn probe_file(path: &Path) -> Result<AudioInfo, AudioError> {
    decode::probe_file(path, MAX_DURATION_SECS)
}

/// The acoustic facts of a recording. Deterministic. CPU-bound (callers run it in
/// spawn_blocking).
pub fn facts(bytes: &[u8]) -> Result<AcousticFacts, AudioError> {
    facts_with(|sink| decode::decode(bytes, sink, MAX_DURATION_SECS))
}

/// Like [`facts`], reading the recording from a file with bounded memory: the file is streamed
/// through a fixed-size buffer and reduced to per-frame energies as it is decoded, so memory use
/// does not grow with the file's size. Gives the same facts as `facts` on the file's bytes.
/// Errors as for [`probe_file`].
pub fn facts_file(path: &Path) -> Result<AcousticFacts, AudioError> {
    facts_with(|sink| decode::decode_file(path, sink, MAX_DURATION_SECS))
}

fn facts_with(
    decode: impl FnOnce(&mut vad::FrameEnergies) -> Result<decode::Decoded, AudioError>,
) -> Result<AcousticFacts, AudioError> {
    let cfg = vad::VadConfig::default();
    let mut energies = vad::FrameEnergies::new(cfg.frame_ms);
    let decoded = decode(&mut energies)?;
    let energies = energies.finish();
    let sample_rate = decoded.info.sample_rate;
    let duration_ms = decode::frames_to_ms(decoded.frames, sample_rate);
    let speech = energies
        .frames
        .iter()
        .zip(&energies.samples)
        .map(|(frames, &samples)| {
            vad::detect(frames, energies.frame_len, sample_rate, samples, &cfg)
        })
        .collect();
    Ok(AcousticFacts {
        info: decoded.info,
        duration_ms,
        sample_rate,
        speech,
    })
}

/// A copy of the recording as 16-bit PCM WAV, with every stretch of `spans_ms` covered by a
/// tone in every channel. Decodes the whole recording into memory (about 4 bytes per sample).
pub fn redacted_wav(audio: &Audio, spans_ms: &[(i64, i64)]) -> Result<Vec<u8>, AudioError> {
    let mut pcm = decode::PcmBuffers::default();
    match audio {
        Audio::Bytes(bytes) => decode::decode(bytes, &mut pcm, MAX_DURATION_SECS)?,
        Audio::File(path) => decode::decode_file(path, &mut pcm, MAX_DURATION_SECS)?,
    };
    tone::redact_pcm(&mut pcm.channels, pcm.sample_rate, spans_ms, 0);
    Ok(tone::encode_wav_pcm16(&pcm.channels, pcm.sample_rate))
}

/// The local acoustic analysis behind the `Acoustics` port, off the async runtime. A recording
/// it cannot read is a permanent failure; nothing here is worth a retry.
#[derive(Debug, Default, Clone)]
pub struct LocalAcoustics;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AudioError> + Send + 'static,
) -> Result<T, AnalyzeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AnalyzeError::Transient(anyhow::anyhow!("audio task failed: {e}")))?
        .map_err(|e| AnalyzeError::Permanent(e.to_string()))
}

/// In-memory recordings up to this size are probed on the calling task.
const INLINE_PROBE_BYTES: usize = 256 * 1024;

#[async_trait]
impl Acoustics for LocalAcoustics {
    async fn probe(&self, audio: Audio) -> Result<AudioInfo, AnalyzeError> {
        // A probe decodes headers and the first packets only: of a small recording in memory,
        // a few tens of microseconds, less than the trip to the blocking pool.
        if let Audio::Bytes(bytes) = &audio {
            if bytes.len() <= INLINE_PROBE_BYTES {
                return probe(bytes).map_err(|e| AnalyzeError::Permanent(e.to_string()));
            }
        }
        blocking(move || match audio {
            Audio::Bytes(bytes) => probe(&bytes),
            Audio::File(path) => probe_file(&path),
        })
        .await
    }

    async fn facts(&self, audio: Audio) -> Result<AcousticFacts, AnalyzeError> {
        blocking(move || match audio {
            Audio::Bytes(bytes) => facts(&bytes),
            Audio::File(path) => facts_file(&path),
        })
        .await
    }

    async fn redact(
        &self,
        audio: Audio,
        spans_ms: Vec<(i64, i64)>,
    ) -> Result<Vec<u8>, AnalyzeError> {
        blocking(move || redacted_wav(&audio, &spans_ms)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::local::lexicon;
    use crate::domain::conversation::speaker_names;
    use crate::domain::{
        compose, Analysis, AnalysisRequest, InsightsInput, SentimentLabel, TranscriptInput,
    };

    /// The local analysis as the pipeline composes it: acoustic facts, their metrics, the
    /// lexicon's insights.
    fn analyse(
        facts: Result<AcousticFacts, AudioError>,
        req: &AnalysisRequest,
    ) -> Result<Analysis, AudioError> {
        let input = InsightsInput::of(facts?, req.clone());
        Ok(compose(&input, lexicon::insights(&input)))
    }

    fn analyze_audio(bytes: &[u8], req: &AnalysisRequest) -> Result<Analysis, AudioError> {
        analyse(facts(bytes), req)
    }

    fn analyze_file(path: &Path, req: &AnalysisRequest) -> Result<Analysis, AudioError> {
        analyse(facts_file(path), req)
    }
    use std::io::{Cursor, Write};

    const RATE: u32 = 16_000;

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

    /// Uniform noise at -60 dBFS, with speech-like bursts (noise at about -20 dBFS whose
    /// loudness moves at a syllable rate) during `bursts` (seconds).
    fn track(secs: f64, bursts: &[(f64, f64)], seed: u64) -> Vec<i16> {
        let mut rng = Lcg(seed);
        let amp = |db: f64| (3.0 * 10f64.powf(db / 10.0)).sqrt();
        let n = (secs * f64::from(RATE)).round() as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / f64::from(RATE);
                let a = if bursts.iter().any(|&(s, e)| t >= s && t < e) {
                    amp(-20.0) * (0.7 + 0.3 * (t * 2.0 * std::f64::consts::PI * 4.0).sin())
                } else {
                    amp(-60.0)
                };
                (f64::from(rng.next()) * a * 32767.0).round() as i16
            })
            .collect()
    }

    fn wav(channels: &[Vec<i16>]) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels: channels.len() as u16,
            sample_rate: RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cur = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut cur, spec).expect("writer");
        let n = channels.iter().map(Vec::len).min().unwrap_or(0);
        for i in 0..n {
            for ch in channels {
                w.write_sample(ch[i]).expect("sample");
            }
        }
        w.finalize().expect("finalize");
        cur.into_inner()
    }

    /// agent 0.5–2.5 s and 6–8 s, customer 2.3–5 s, in a 9 s call.
    fn exchange() -> Vec<u8> {
        wav(&[
            track(9.0, &[(0.5, 2.5), (6.0, 8.0)], 1),
            track(9.0, &[(2.3, 5.0)], 2),
        ])
    }

    fn near(actual: i64, expected: i64, tolerance: i64) {
        assert!(
            (actual - expected).abs() <= tolerance,
            "{actual} is not {expected} ± {tolerance}"
        );
    }

    #[test]
    fn stereo_ground_truth() {
        let a = analyze_audio(&exchange(), &AnalysisRequest::default()).expect("analyses");
        assert_eq!(a.analyzer, "local");
        assert_eq!((a.duration_ms, a.channels, a.sample_rate), (9000, 2, RATE));
        assert_eq!(a.speakers, vec!["agent", "customer"]);
        let spans: Vec<(&str, i64, i64)> = a
            .segments
            .iter()
            .map(|s| (s.speaker.as_str(), s.start_ms, s.end_ms))
            .collect();
        assert_eq!(spans.len(), 3, "{spans:?}");
        for (got, want) in spans.iter().zip([
            ("agent", 500, 2500),
            ("customer", 2300, 5000),
            ("agent", 6000, 8000),
        ]) {
            assert_eq!(got.0, want.0);
            near(got.1, want.1, 20);
            near(got.2, want.2, 20);
        }
        assert_eq!(a.segments[1].channel, 1);
        let m = &a.metrics;
        near(m.talk_time[0].ms, 4000, 80);
        near(m.talk_time[1].ms, 2700, 54);
        near(m.overlap_ms, 200, 40);
        near(m.silence_ms, 2500, 60);
        assert_eq!(m.interruptions, 1);
        near(m.longest_monologue_ms, 2500, 40);
        assert!(a
            .segments
            .iter()
            .all(|s| s.text.is_none() && s.sentiment.is_none()));
        assert_eq!(
            (a.transcript_text, a.sentiment, a.language),
            (None, None, None)
        );
        assert!(a.topics.is_empty() && a.action_items.is_empty());
        assert_eq!(
            a.summary.as_deref(),
            Some("9-second call; agent spoke 44% of the time, customer 30%; 1 interruption.")
        );
    }

    #[test]
    fn analysis_is_deterministic() {
        let bytes = exchange();
        let req = AnalysisRequest::default();
        assert_eq!(
            analyze_audio(&bytes, &req).unwrap(),
            analyze_audio(&bytes, &req).unwrap()
        );
    }

    #[test]
    fn mono_recording() {
        let bytes = wav(&[track(6.0, &[(1.0, 2.0), (3.0, 4.5)], 3)]);
        let a = analyze_audio(&bytes, &AnalysisRequest::default()).unwrap();
        assert_eq!(a.speakers, vec!["speaker"]);
        assert_eq!(a.segments.len(), 2);
        near(a.metrics.talk_time[0].ms, 2500, 50);
        near(a.metrics.silence_ms, 3500, 60);
        assert_eq!((a.metrics.overlap_ms, a.metrics.interruptions), (0, 0));
        // The one-second pause is merged into the monologue.
        near(a.metrics.longest_monologue_ms, 3500, 40);
    }

    #[test]
    fn channel_names() {
        assert_eq!(speaker_names(2, None), vec!["agent", "customer"]);
        assert_eq!(speaker_names(1, None), vec!["speaker"]);
        let one = vec!["Alice".to_string()];
        assert_eq!(speaker_names(2, Some(&one)), vec!["Alice", "customer"]);
        let three = vec!["Bob".to_string(), " ".to_string(), "Eve".to_string()];
        assert_eq!(speaker_names(1, Some(&three)), vec!["Bob"]);
        assert_eq!(speaker_names(2, Some(&three)), vec!["Bob", "customer"]);

        let req = AnalysisRequest {
            channels: Some(vec!["Dana".into(), "Sam".into()]),
            ..Default::default()
        };
        let a = analyze_audio(&exchange(), &req).unwrap();
        assert_eq!(a.speakers, vec!["Dana", "Sam"]);
        assert_eq!(a.segments[0].speaker, "Dana");
        assert_eq!(a.segments[1].speaker, "Sam");
        assert_eq!(a.metrics.talk_time[1].speaker, "Sam");
    }

    #[test]
    fn transcript_insights() {
        let transcript = "Agent: Thank you for calling, how can I help?\n\
            Customer: My internet connection keeps dropping and I am really frustrated.\n\
            Agent: I'm sorry about the connection. I will send a technician tomorrow and I'll call you back after the visit.\n\
            Customer: The internet router is new, so the connection should not drop.";
        let req = AnalysisRequest {
            transcript: Some(TranscriptInput {
                text: Some(transcript.into()),
                language: Some("en".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let a = analyze_audio(&exchange(), &req).unwrap();
        assert_eq!(a.language.as_deref(), Some("en"));
        assert_eq!(a.transcript_text.as_deref(), Some(transcript));
        assert_eq!(
            a.segments[0].text.as_deref(),
            Some("Thank you for calling, how can I help?")
        );
        assert!(a.segments[0].sentiment.unwrap() > 0.05);
        assert!(a.segments[1]
            .text
            .as_deref()
            .unwrap()
            .starts_with("My internet connection keeps dropping"));
        assert!(a.segments[1].sentiment.unwrap() < -0.05);
        assert!(a.segments[2]
            .text
            .as_deref()
            .unwrap()
            .starts_with("I'm sorry"));
        // The customer has one segment, so their second line joins it.
        assert!(a.segments[1]
            .text
            .as_deref()
            .unwrap()
            .ends_with("should not drop."));
        assert_eq!(a.topics, vec!["connection", "internet"]);
        assert_eq!(
            a.action_items
                .iter()
                .map(|q| q.text.as_str())
                .collect::<Vec<_>>(),
            vec!["I will send a technician tomorrow and I'll call you back after the visit."]
        );
        let sentiment = a.sentiment.unwrap();
        assert_eq!(sentiment.label, SentimentLabel::Negative);
        let summary = a.summary.unwrap();
        assert!(
            summary.starts_with("9-second call; agent spoke"),
            "{summary}"
        );
        assert!(
            summary.contains("My internet connection keeps dropping"),
            "{summary}"
        );

        // An explicit language wins over the transcript's.
        let req = AnalysisRequest {
            language: Some("fr-FR".into()),
            ..req
        };
        assert_eq!(
            analyze_audio(&exchange(), &req)
                .unwrap()
                .language
                .as_deref(),
            Some("fr-FR")
        );
    }

    fn refused(bytes: &[u8]) -> AudioError {
        let probed = probe(bytes).expect_err("probe refuses");
        let analysed =
            analyze_audio(bytes, &AnalysisRequest::default()).expect_err("analysis refuses");
        assert_eq!(probed.to_string(), analysed.to_string());
        assert_file_matches(bytes, &AnalysisRequest::default());
        analysed
    }

    fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(bytes).expect("write");
        f.flush().expect("flush");
        f
    }

    /// Both results are the same value, or the same error.
    fn same<T: PartialEq + std::fmt::Debug>(
        from_file: Result<T, AudioError>,
        from_bytes: Result<T, AudioError>,
    ) {
        match (from_file, from_bytes) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
            (a, b) => panic!("from the file: {a:?}; from the bytes: {b:?}"),
        }
    }

    /// `analyze_file` and `probe_file` on a file holding `bytes` give exactly what
    /// `analyze_audio` and `probe` give on the bytes.
    fn assert_file_matches(bytes: &[u8], req: &AnalysisRequest) {
        let f = temp_file(bytes);
        same(analyze_file(f.path(), req), analyze_audio(bytes, req));
        same(probe_file(f.path()), probe(bytes));
    }

    #[test]
    fn file_analysis_matches_bytes_for_generated_wavs() {
        let stereo = exchange();
        let a = analyze_file(temp_file(&stereo).path(), &AnalysisRequest::default()).unwrap();
        assert_eq!((a.duration_ms, a.channels, a.segments.len()), (9000, 2, 3));
        assert_file_matches(&stereo, &AnalysisRequest::default());
        let req = AnalysisRequest {
            channels: Some(vec!["Dana".into(), "Sam".into()]),
            transcript: Some(TranscriptInput {
                text: Some("Agent: Hello, how can I help?\nCustomer: My bill is wrong.".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_file_matches(&stereo, &req);
        assert_file_matches(
            &wav(&[track(6.0, &[(1.0, 2.0), (3.0, 4.5)], 3)]),
            &AnalysisRequest::default(),
        );

        // A streaming writer's "unknown length" in both RIFF and data sizes.
        let mut streaming = stereo.clone();
        streaming[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        streaming[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        let a = analyze_file(temp_file(&streaming).path(), &AnalysisRequest::default()).unwrap();
        assert_eq!(a.duration_ms, 9000);
        assert_file_matches(&streaming, &AnalysisRequest::default());

        // Truncated mid-stream, with the original and with the streaming header.
        for bytes in [&stereo, &streaming] {
            let cut = &bytes[..44 + 4 * RATE as usize * 3 + 3];
            let a = analyze_file(temp_file(cut).path(), &AnalysisRequest::default()).unwrap();
            near(a.duration_ms, 3000, 1);
            assert_eq!(
                probe_file(temp_file(cut).path()).unwrap().duration_ms,
                Some(3000)
            );
            assert_file_matches(cut, &AnalysisRequest::default());
        }
        // A 4 GiB data chunk claim over 3200 bytes.
        let mut bytes = header(1, 8000, 16, u32::MAX);
        bytes.extend(vec![0x11u8; 3200]);
        assert_file_matches(&bytes, &AnalysisRequest::default());
    }

    #[test]
    fn file_analysis_matches_bytes_for_fixtures() {
        for name in ["call.flac", "call.mp3", "call.ogg"] {
            let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
            let path = std::path::Path::new(&path);
            let bytes = fixture(name);
            let req = AnalysisRequest::default();
            let a = analyze_file(path, &req).unwrap();
            assert_eq!(a, analyze_audio(&bytes, &req).unwrap(), "{name}");
            assert_eq!(a.segments.len(), 3, "{name}");
            assert_eq!(probe_file(path).unwrap(), probe(&bytes).unwrap(), "{name}");
        }
    }

    #[test]
    fn file_errors() {
        let req = AnalysisRequest::default();
        let empty = temp_file(b"");
        assert!(matches!(
            analyze_file(empty.path(), &req),
            Err(AudioError::Empty)
        ));
        assert!(matches!(probe_file(empty.path()), Err(AudioError::Empty)));

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-recording.wav");
        for err in [
            analyze_file(&missing, &req).unwrap_err(),
            probe_file(&missing).unwrap_err(),
        ] {
            assert!(
                matches!(&err, AudioError::Undecodable(m)
                    if m.starts_with("cannot open the recording") && m.contains("No such file")),
                "{err:?}"
            );
        }
        assert!(matches!(
            probe_file(dir.path()),
            Err(AudioError::Undecodable(_))
        ));

        let text = "Agent: hello\nCustomer: hi, this is not audio at all\n".repeat(50);
        let f = temp_file(text.as_bytes());
        assert!(matches!(
            analyze_file(f.path(), &req),
            Err(AudioError::Undecodable(_))
        ));
        assert!(matches!(
            probe_file(f.path()),
            Err(AudioError::Undecodable(_))
        ));
        assert_file_matches(text.as_bytes(), &req);
    }

    #[test]
    fn corrupted_files_read_the_same_from_disk() {
        let bytes = exchange();
        let f = tempfile::NamedTempFile::new().unwrap();
        let req = AnalysisRequest::default();
        let mut rng = Lcg(11);
        for i in 0..120 {
            let mut b = bytes[..8000].to_vec();
            b[i % 60] = (rng.next() * 127.0 + 128.0) as u8;
            let b = &b[..if i % 3 == 0 { (i * 7) % 200 } else { b.len() }];
            std::fs::write(f.path(), b).unwrap();
            same(analyze_file(f.path(), &req), analyze_audio(b, &req));
            same(probe_file(f.path()), probe(b));
        }
    }

    #[test]
    fn long_recording_from_a_file() {
        // 20 minutes of 8 kHz 16-bit mono (19.2 MB), written a second at a time: quiet line
        // noise with a 5-second burst of speech-like noise at 10 s into every minute.
        const SR: u32 = 8000;
        const SECS: u32 = 20 * 60;
        let f = tempfile::NamedTempFile::new().unwrap();
        {
            let mut w = std::io::BufWriter::new(f.as_file());
            w.write_all(&header(1, SR, 16, SECS * SR * 2)).unwrap();
            let mut rng = Lcg(5);
            let mut second = Vec::with_capacity(SR as usize * 2);
            for s in 0..SECS {
                let loud = (10..15).contains(&(s % 60));
                second.clear();
                for i in 0..SR {
                    let a = if loud {
                        0.3 * (0.7
                            + 0.3
                                * (f64::from(i) / f64::from(SR) * 8.0 * std::f64::consts::PI).sin())
                    } else {
                        0.002
                    };
                    let v = (f64::from(rng.next()) * a * 32767.0) as i16;
                    second.extend(v.to_le_bytes());
                }
                w.write_all(&second).unwrap();
            }
            w.flush().unwrap();
        }
        assert_eq!(
            f.as_file().metadata().unwrap().len(),
            44 + u64::from(SECS * SR * 2)
        );
        let info = probe_file(f.path()).unwrap();
        assert_eq!(info.duration_ms, Some(1_200_000));
        let a = analyze_file(f.path(), &AnalysisRequest::default()).unwrap();
        assert_eq!(
            (a.duration_ms, a.channels, a.sample_rate),
            (1_200_000, 1, SR)
        );
        assert_eq!(a.segments.len(), 20, "{:?}", a.segments);
        for (m, seg) in a.segments.iter().enumerate() {
            let start = (m as i64 * 60 + 10) * 1000;
            near(seg.start_ms, start, 40);
            near(seg.end_ms, start + 5000, 40);
        }
        near(a.metrics.talk_time[0].ms, 100_000, 400);
    }

    #[test]
    fn probe_reads_headers() {
        let info = probe(&exchange()).unwrap();
        assert_eq!(
            info,
            AudioInfo {
                format: "wav".into(),
                channels: 2,
                sample_rate: RATE,
                duration_ms: Some(9000)
            }
        );
    }

    #[test]
    fn non_audio_is_refused() {
        assert!(matches!(refused(&[]), AudioError::Empty));
        let mut rng = Lcg(42);
        let garbage: Vec<u8> = (0..4096)
            .map(|_| (rng.next() * 127.0 + 128.0) as u8)
            .collect();
        assert!(matches!(refused(&garbage), AudioError::Undecodable(_)));
        let text = "Agent: hello\nCustomer: hi, this is not audio at all\n".repeat(50);
        assert!(matches!(
            refused(text.as_bytes()),
            AudioError::Undecodable(_)
        ));
        let bytes = exchange();
        assert!(matches!(refused(&bytes[..20]), AudioError::Undecodable(_)));
        assert!(matches!(refused(b"RIFF"), AudioError::Undecodable(_)));
    }

    #[test]
    fn header_without_samples_is_refused() {
        assert!(matches!(
            refused(&wav(&[Vec::new(), Vec::new()])),
            AudioError::NoSamples
        ));
        // A header that promises data the file does not have.
        let bytes = exchange();
        assert!(matches!(refused(&bytes[..44]), AudioError::NoSamples));
    }

    #[test]
    fn too_many_channels_is_refused() {
        let six: Vec<Vec<i16>> = (0..6).map(|_| vec![0i16; 1600]).collect();
        assert!(matches!(
            refused(&wav(&six)),
            AudioError::TooManyChannels(6)
        ));
    }

    /// A canonical 44-byte PCM WAV header.
    fn header(channels: u16, rate: u32, bits: u16, data_len: u32) -> Vec<u8> {
        let block = channels.wrapping_mul(bits / 8);
        let mut h = Vec::new();
        h.extend(b"RIFF");
        h.extend(36u32.wrapping_add(data_len).to_le_bytes());
        h.extend(b"WAVEfmt ");
        h.extend(16u32.to_le_bytes());
        h.extend(1u16.to_le_bytes());
        h.extend(channels.to_le_bytes());
        h.extend(rate.to_le_bytes());
        h.extend(rate.wrapping_mul(u32::from(block)).to_le_bytes());
        h.extend(block.to_le_bytes());
        h.extend(bits.to_le_bytes());
        h.extend(b"data");
        h.extend(data_len.to_le_bytes());
        h
    }

    #[test]
    fn hostile_headers_are_refused_without_panicking() {
        let data = vec![0x11u8; 3200];
        for (channels, rate, bits) in [
            (0, 16000, 16),
            (2, 0, 16),
            (2, 8000, 0),
            (2, u32::MAX, 16),
            (1, 8000, 7),
        ] {
            let mut bytes = header(channels, rate, bits, data.len() as u32);
            bytes.extend(&data);
            assert!(
                matches!(refused(&bytes), AudioError::Undecodable(_)),
                "{channels} {rate} {bits}"
            );
        }
        for channels in [3, 40, 65535] {
            let mut bytes = header(channels, 8000, 16, data.len() as u32);
            bytes.extend(&data);
            assert!(
                matches!(refused(&bytes), AudioError::TooManyChannels(n) if n == usize::from(channels))
            );
        }
        // A data chunk claiming 4 GiB is read up to where the file ends.
        let mut bytes = header(1, 8000, 16, u32::MAX);
        bytes.extend(&data);
        let a = analyze_audio(&bytes, &AnalysisRequest::default()).unwrap();
        assert_eq!(a.duration_ms, 200);
    }

    #[test]
    fn too_long_is_refused_from_the_header() {
        // 8-bit mono at 1 kHz: a little over four hours in 15 MB.
        let mut bytes = header(1, 1000, 8, 15_000_000);
        bytes.resize(44 + 15_000_000, 0x80);
        assert!(matches!(
            refused(&bytes),
            AudioError::TooLong {
                max_secs: MAX_DURATION_SECS
            }
        ));
    }

    #[test]
    fn truncated_and_corrupted_files_never_panic() {
        let bytes = exchange();
        // Truncated mid-stream: what is there is analysed.
        let cut = &bytes[..44 + 4 * RATE as usize * 3];
        let a = analyze_audio(cut, &AnalysisRequest::default()).unwrap();
        near(a.duration_ms, 3000, 1);
        let mut rng = Lcg(7);
        for i in 0..300 {
            let mut b = bytes[..8000].to_vec();
            let pos = i % 60;
            b[pos] = (rng.next() * 127.0 + 128.0) as u8;
            let _ = probe(&b);
            let _ = analyze_audio(&b, &AnalysisRequest::default());
            let _ = analyze_audio(&b[..(i * 7) % 200], &AnalysisRequest::default());
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The fixtures hold agent bursts at 0.5–2.5 s and 6–8 s and customer bursts at 2.3–5 s,
    /// 9 s in all (see tests/fixtures/README.md).
    fn check_fixture(name: &str, format: &str) {
        let bytes = fixture(name);
        let info = probe(&bytes).unwrap();
        assert_eq!((info.format.as_str(), info.channels), (format, 2), "{name}");
        let a = analyze_audio(&bytes, &AnalysisRequest::default()).unwrap();
        assert_eq!(a.channels, 2);
        assert_eq!(a.sample_rate, 16_000);
        // Lossy codecs smear edges and the MP3 keeps its encoder delay (~70 ms).
        let tolerance = if format == "flac" { 20 } else { 80 };
        near(a.duration_ms, 9000, tolerance);
        assert_eq!(a.segments.len(), 3, "{name}: {:?}", a.segments);
        for (got, want) in a
            .segments
            .iter()
            .zip([(0, 500, 2500), (1, 2300, 5000), (0, 6000, 8000)])
        {
            assert_eq!(got.channel, want.0, "{name}");
            near(got.start_ms, want.1, tolerance);
            near(got.end_ms, want.2, tolerance);
        }
        near(a.metrics.talk_time[0].ms, 4000, 80);
        near(a.metrics.talk_time[1].ms, 2700, 54);
        near(a.metrics.silence_ms, 2500, 100);
        near(a.metrics.overlap_ms, 200, 60);
        assert_eq!(a.metrics.interruptions, 1, "{name}");
    }

    #[test]
    fn flac_fixture() {
        check_fixture("call.flac", "flac");
    }

    #[test]
    fn mp3_fixture() {
        check_fixture("call.mp3", "mp3");
    }

    #[test]
    fn ogg_fixture() {
        check_fixture("call.ogg", "ogg");
    }

    #[test]
    fn windows_split_channels_and_overlap() {
        let f = temp_file(&exchange());
        let dir = tempfile::tempdir().unwrap();
        let windows = chunks::write_windows(
            f.path(),
            chunks::Windows {
                window_ms: 4000,
                overlap_ms: 1000,
            },
            dir.path(),
        )
        .unwrap();
        let spans: Vec<_> = windows.iter().map(|w| (w.start_ms, w.end_ms)).collect();
        assert_eq!(spans, vec![(0, 4000), (3000, 7000), (6000, 9000)]);
        for w in &windows {
            assert_eq!(w.files.len(), 2);
            for file in &w.files {
                let info = probe_file(file).unwrap();
                assert_eq!((info.channels, info.sample_rate), (1, RATE));
                near(info.duration_ms.unwrap(), w.end_ms - w.start_ms, 20);
            }
        }
        // Each file holds its channel alone: the agent's speech at 0.5–2.5 s in the first
        // window's left file, the customer's from 2.3 s in its right one.
        let left = facts_file(&windows[0].files[0]).unwrap();
        let right = facts_file(&windows[0].files[1]).unwrap();
        assert_eq!(left.speech[0].len(), 1, "{left:?}");
        near(left.speech[0][0].0, 500, 100);
        near(left.speech[0][0].1, 2500, 150);
        near(right.speech[0][0].0, 2300, 100);
        // The second window starts at 3 s: the customer's speech until 5 s is at 0–2 s in it.
        let right2 = facts_file(&windows[1].files[1]).unwrap();
        near(right2.speech[0][0].1, 2000, 150);
    }

    #[test]
    fn windows_of_a_48_khz_recording_are_written_at_16_khz() {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 48_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cur = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut cur, spec).unwrap();
        for i in 0..(48_000 * 3) {
            // A 440 Hz tone for the first second, then silence.
            let t = f64::from(i) / 48_000.0;
            let v = if t < 1.0 {
                (t * 440.0 * 2.0 * std::f64::consts::PI).sin() * 0.5
            } else {
                0.0
            };
            w.write_sample((v * 32767.0) as i16).unwrap();
        }
        w.finalize().unwrap();
        let f = temp_file(&cur.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let windows = chunks::write_windows(
            f.path(),
            chunks::Windows {
                window_ms: 600_000,
                overlap_ms: 30_000,
            },
            dir.path(),
        )
        .unwrap();
        assert_eq!(windows.len(), 1);
        assert_eq!((windows[0].start_ms, windows[0].end_ms), (0, 3000));
        let info = probe_file(&windows[0].files[0]).unwrap();
        assert_eq!((info.channels, info.sample_rate), (1, 16_000));
        near(info.duration_ms.unwrap(), 3000, 5);
        // The tone survives the averaging: RMS of the first second well above silence.
        let (_, pcm) =
            decode::decode_pcm(&std::fs::read(&windows[0].files[0]).unwrap(), 60).unwrap();
        let first: Vec<f32> = pcm.channels[0][..16_000].to_vec();
        let rms = (first.iter().map(|x| x * x).sum::<f32>() / first.len() as f32).sqrt();
        assert!(rms > 0.2, "rms {rms}");
        assert!(pcm.channels[0][20_000..].iter().all(|x| x.abs() < 1e-3));
    }
}
