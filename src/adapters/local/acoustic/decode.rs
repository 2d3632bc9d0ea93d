//! Decoding recordings with symphonia into per-channel f32 PCM, pushed packet by packet to a sink.

use std::io::{Cursor, ErrorKind};
use std::panic::{catch_unwind, AssertUnwindSafe};

use symphonia::core::audio::{AudioBuffer, AudioBufferRef, Signal};
use symphonia::core::codecs::{
    CodecType, Decoder, DecoderOptions, CODEC_TYPE_FLAC, CODEC_TYPE_MP3, CODEC_TYPE_NULL,
    CODEC_TYPE_VORBIS,
};
use symphonia::core::conv::IntoSample;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::{Limit, MetadataOptions};
use symphonia::core::probe::Hint;
use symphonia::core::sample::Sample;

use super::AudioError;
use crate::domain::AudioInfo;

/// Most channels a recording may have: one speaker per channel, two parties per call.
pub const MAX_CHANNELS: usize = 2;

/// Sample rates outside this range are refused as corrupt headers rather than analysed.
pub const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 1_000..=768_000;

/// No real codec stores a second of audio in fewer bytes than this; a header that claims more
/// audio than the file could hold at this rate is not believed (streaming writers put
/// 0xFFFFFFFF in the length fields).
const MIN_BYTES_PER_SECOND: u64 = 500;

/// How many packets `probe` may read before it gives up finding one that decodes to audio.
/// Decoders such as MP3 (bit reservoir) or Vorbis (overlap) legitimately produce errors or
/// empty output on their first packets.
const PROBE_MAX_PACKETS: usize = 16;

/// After this many consecutive undecodable packets the stream is considered garbage.
const MAX_CONSECUTIVE_DECODE_ERRORS: usize = 64;

/// Receives decoded audio. `begin` is called once, before any samples.
pub trait PcmSink {
    fn begin(&mut self, channels: usize, sample_rate: u32);
    /// Samples of one channel, in [-1, 1], continuing where the previous call left off.
    fn push(&mut self, channel: usize, samples: &[f32]);
}

/// What a full decode found.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub info: AudioInfo,
    /// Samples per channel actually decoded.
    pub frames: u64,
}

/// A sink that keeps the whole signal: one `Vec<f32>` per channel.
#[derive(Debug, Default, Clone)]
pub struct PcmBuffers {
    pub sample_rate: u32,
    pub channels: Vec<Vec<f32>>,
}

impl PcmSink for PcmBuffers {
    fn begin(&mut self, channels: usize, sample_rate: u32) {
        self.sample_rate = sample_rate;
        self.channels = vec![Vec::new(); channels];
    }
    fn push(&mut self, channel: usize, samples: &[f32]) {
        if let Some(c) = self.channels.get_mut(channel) {
            c.extend_from_slice(samples);
        }
    }
}

/// Decodes the whole recording into per-channel f32 vectors.
pub fn decode_pcm(bytes: &[u8], max_secs: u64) -> Result<(Decoded, PcmBuffers), AudioError> {
    let mut sink = PcmBuffers::default();
    let decoded = decode(bytes, &mut sink, max_secs)?;
    Ok((decoded, sink))
}

/// Reads the headers and decodes the first packets, without going through the whole file.
pub fn probe(bytes: &[u8], max_secs: u64) -> Result<AudioInfo, AudioError> {
    let mut stream = open(bytes)?;
    check_header_limits(&stream.info, max_secs)?;
    let mut sink = NullSink;
    let mut state = DecodeState::default();
    for _ in 0..PROBE_MAX_PACKETS {
        if !guarded(|| step(&mut stream, &mut sink, &mut state))? {
            break;
        }
        if state.frames > 0 {
            return Ok(stream.info_with_decoded(state.channels, state.sample_rate));
        }
    }
    Err(state.failure())
}

/// Decodes the whole recording, pushing every packet's samples into `sink`.
pub fn decode(bytes: &[u8], sink: &mut impl PcmSink, max_secs: u64) -> Result<Decoded, AudioError> {
    let stream = open(bytes)?;
    check_header_limits(&stream.info, max_secs)?;
    decode_stream(stream, sink, max_secs)
}

/// The decode loop; enforces `max_secs` on what is actually decoded, for streams whose header
/// does not tell their length.
fn decode_stream(
    mut stream: Open,
    sink: &mut impl PcmSink,
    max_secs: u64,
) -> Result<Decoded, AudioError> {
    let mut state = DecodeState::default();
    loop {
        if !guarded(|| step(&mut stream, sink, &mut state))? {
            break;
        }
        let limit = max_secs.saturating_mul(u64::from(state.sample_rate.max(1)));
        if state.frames > limit {
            return Err(AudioError::TooLong { max_secs });
        }
    }
    if state.frames == 0 {
        return Err(state.failure());
    }
    let mut info = stream.info_with_decoded(state.channels, state.sample_rate);
    info.duration_ms = Some(frames_to_ms(state.frames, state.sample_rate));
    Ok(Decoded {
        info,
        frames: state.frames,
    })
}

/// Milliseconds covered by `frames` samples at `sample_rate`, without overflow.
pub fn frames_to_ms(frames: u64, sample_rate: u32) -> i64 {
    if sample_rate == 0 {
        return 0;
    }
    let ms = u128::from(frames) * 1000 / u128::from(sample_rate);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Third-party decoders run on untrusted uploads; a bug in one must become a refusal, not a
/// crash of the worker thread.
fn guarded<T>(f: impl FnOnce() -> Result<T, AudioError>) -> Result<T, AudioError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(AudioError::Undecodable(
            "the decoder failed on this data".into(),
        )),
    }
}

struct NullSink;

impl PcmSink for NullSink {
    fn begin(&mut self, _channels: usize, _sample_rate: u32) {}
    fn push(&mut self, _channel: usize, _samples: &[f32]) {}
}

struct Open {
    format: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track_id: u32,
    info: AudioInfo,
}

impl Open {
    fn info_with_decoded(&self, channels: usize, sample_rate: u32) -> AudioInfo {
        AudioInfo {
            channels: u16::try_from(channels).unwrap_or(u16::MAX),
            sample_rate,
            ..self.info.clone()
        }
    }
}

#[derive(Default)]
struct DecodeState {
    started: bool,
    channels: usize,
    sample_rate: u32,
    frames: u64,
    consecutive_errors: usize,
    last_error: Option<String>,
    scratch: Vec<f32>,
}

impl DecodeState {
    /// Why a stream that produced no samples is refused.
    fn failure(&self) -> AudioError {
        match &self.last_error {
            Some(e) => AudioError::Undecodable(e.clone()),
            None => AudioError::NoSamples,
        }
    }
}

fn open(bytes: &[u8]) -> Result<Open, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    guarded(|| open_inner(bytes))
}

fn open_inner(bytes: &[u8]) -> Result<Open, AudioError> {
    // symphonia wants an owned 'static source; one copy of the upload is the price.
    let mut data = bytes.to_vec();
    prepare_wav(&mut data)?;
    let source = Cursor::new(data);
    let mss = MediaSourceStream::new(Box::new(source), MediaSourceStreamOptions::default());
    let metadata_opts = MetadataOptions {
        limit_metadata_bytes: Limit::Maximum(64 * 1024),
        limit_visual_bytes: Limit::Maximum(0),
    };
    // Gapless trims encoder delay and padding, so that lossy files keep their true timing.
    let format_opts = FormatOptions {
        enable_gapless: true,
        ..FormatOptions::default()
    };
    let probed = symphonia::default::get_probe()
        .format(&Hint::new(), mss, &format_opts, &metadata_opts)
        .map_err(|e| AudioError::Undecodable(e.to_string()))?;
    let format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::Undecodable("no audio track".into()))?;
    let params = &track.codec_params;
    let header_channels = params.channels.map(|c| c.count());
    if let Some(n) = header_channels {
        if n > MAX_CHANNELS {
            return Err(AudioError::TooManyChannels(n));
        }
        if n == 0 {
            return Err(AudioError::Undecodable("the stream has no channels".into()));
        }
    }
    if let Some(rate) = params.sample_rate {
        check_rate(rate)?;
    }
    let plausible_ms =
        i64::try_from(bytes.len() as u64 / MIN_BYTES_PER_SECOND * 1000).unwrap_or(i64::MAX);
    let duration_ms = match (params.n_frames, params.sample_rate) {
        (Some(n), Some(sr)) if sr > 0 => Some(frames_to_ms(n, sr)).filter(|&ms| ms <= plausible_ms),
        _ => None,
    };
    let info = AudioInfo {
        format: format_name(bytes, params.codec).to_string(),
        channels: header_channels
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or(0),
        sample_rate: params.sample_rate.unwrap_or(0),
        duration_ms,
    };
    let track_id = track.id;
    let decoder = symphonia::default::get_codecs()
        .make(params, &DecoderOptions::default())
        .map_err(|e| AudioError::Undecodable(e.to_string()))?;
    Ok(Open {
        format,
        decoder,
        track_id,
        info,
    })
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn write_u32(b: &mut [u8], at: usize, v: u32) {
    if let Some(dst) = b.get_mut(at..at + 4) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// For RIFF/WAVE only: refuses impossible `fmt ` fields before symphonia sees them (it panics
/// on a zero sample rate), and shrinks length fields that claim more bytes than the file has —
/// streaming writers leave 0xFFFFFFFF there and truncated uploads are common — so that the
/// audio that is present gets decoded.
fn prepare_wav(data: &mut [u8]) -> Result<(), AudioError> {
    if data.len() < 12 || &data[0..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return Ok(());
    }
    let len = data.len() as u64;
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    if read_u32(data, 4).is_some_and(|riff| u64::from(riff) + 8 > len) {
        write_u32(data, 4, clamp(len - 8));
    }
    let mut pos = 12u64;
    while pos + 8 <= len {
        let at = pos as usize;
        let id: [u8; 4] = data[at..at + 4].try_into().unwrap_or_default();
        let size = u64::from(read_u32(data, at + 4).unwrap_or(0));
        let body = pos + 8;
        let available = len - body;
        if &id == b"fmt " && size >= 16 && available >= 16 {
            let b = body as usize;
            let channels = usize::from(read_u16(data, b + 2).unwrap_or(0));
            if channels == 0 {
                return Err(AudioError::Undecodable("the stream has no channels".into()));
            }
            if channels > MAX_CHANNELS {
                return Err(AudioError::TooManyChannels(channels));
            }
            check_rate(read_u32(data, b + 4).unwrap_or(0))?;
        }
        if &id == b"data" {
            if size > available {
                write_u32(data, at + 4, clamp(available));
            }
            // The RIFF size must cover the data chunk too (it wraps when a writer computes it
            // from an "unknown" data length).
            let data_end = body + size.min(available);
            if read_u32(data, 4).is_some_and(|riff| u64::from(riff) + 8 < data_end) {
                write_u32(data, 4, clamp(data_end - 8));
            }
            break;
        }
        if size > available {
            break;
        }
        pos = body + size + (size & 1);
    }
    Ok(())
}

fn check_rate(rate: u32) -> Result<(), AudioError> {
    if SAMPLE_RATES.contains(&rate) {
        Ok(())
    } else {
        Err(AudioError::Undecodable(format!(
            "unsupported sample rate {rate} Hz"
        )))
    }
}

fn check_header_limits(info: &AudioInfo, max_secs: u64) -> Result<(), AudioError> {
    let max_ms = i64::try_from(max_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    match info.duration_ms {
        Some(d) if d > max_ms => Err(AudioError::TooLong { max_secs }),
        _ => Ok(()),
    }
}

/// The container's name, from its magic bytes; falls back to the codec.
fn format_name(bytes: &[u8], codec: CodecType) -> &'static str {
    let head = |n: usize| bytes.get(..n).unwrap_or(&[]);
    if (head(4) == b"RIFF" || head(4) == b"RF64") && bytes.get(8..12) == Some(b"WAVE") {
        return "wav";
    }
    if head(4) == b"fLaC" {
        return "flac";
    }
    if head(4) == b"OggS" {
        return "ogg";
    }
    if head(4) == [0x1A, 0x45, 0xDF, 0xA3] {
        return "mkv";
    }
    if head(3) == b"ID3" || matches!(head(2), [0xFF, b] if b & 0xE0 == 0xE0) {
        return "mp3";
    }
    match codec {
        CODEC_TYPE_MP3 => "mp3",
        CODEC_TYPE_FLAC => "flac",
        CODEC_TYPE_VORBIS => "ogg",
        _ => "unknown",
    }
}

/// Reads and decodes one packet. Returns false at the end of the stream.
fn step(
    stream: &mut Open,
    sink: &mut impl PcmSink,
    st: &mut DecodeState,
) -> Result<bool, AudioError> {
    let packet = match stream.format.next_packet() {
        Ok(p) => p,
        Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => return Ok(false),
        // A chained stream (new logical stream) ends the recording we analyse.
        Err(SymError::ResetRequired) => return Ok(false),
        Err(e) => {
            // A truncated or damaged tail after good audio is tolerated.
            if st.frames > 0 {
                return Ok(false);
            }
            return Err(AudioError::Undecodable(e.to_string()));
        }
    };
    if packet.track_id() != stream.track_id {
        return Ok(true);
    }
    let buf = match stream.decoder.decode(&packet) {
        Ok(b) => b,
        Err(SymError::DecodeError(e)) => {
            st.consecutive_errors += 1;
            st.last_error = Some(e.to_string());
            if st.consecutive_errors >= MAX_CONSECUTIVE_DECODE_ERRORS {
                if st.frames > 0 {
                    return Ok(false);
                }
                return Err(AudioError::Undecodable(e.to_string()));
            }
            return Ok(true);
        }
        Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => return Ok(false),
        Err(SymError::ResetRequired) => return Ok(false),
        Err(e) => {
            if st.frames > 0 {
                return Ok(false);
            }
            return Err(AudioError::Undecodable(e.to_string()));
        }
    };
    st.consecutive_errors = 0;
    let spec = *buf.spec();
    let channels = spec.channels.count();
    if !st.started {
        if channels > MAX_CHANNELS {
            return Err(AudioError::TooManyChannels(channels));
        }
        if channels == 0 {
            return Err(AudioError::Undecodable("the stream has no channels".into()));
        }
        check_rate(spec.rate)?;
        if buf.frames() == 0 {
            // Decoder warm-up (e.g. Vorbis overlap): nothing to report yet.
            return Ok(true);
        }
        st.started = true;
        st.channels = channels;
        st.sample_rate = spec.rate;
        sink.begin(channels, spec.rate);
    }
    let n = channels.min(st.channels);
    st.frames = st.frames.saturating_add(buf.frames() as u64);
    match buf {
        AudioBufferRef::U8(b) => push_planar(&b, n, sink, &mut st.scratch),
        AudioBufferRef::U16(b) => push_planar(&b, n, sink, &mut st.scratch),
        AudioBufferRef::U24(b) => push_planar(&b, n, sink, &mut st.scratch),
        AudioBufferRef::U32(b) => push_planar(&b, n, sink, &mut st.scratch),
        AudioBufferRef::S8(b) => push_planar(&b, n, sink, &mut st.scratch),
        AudioBufferRef::S16(b) => push_planar(&b, n, sink, &mut st.scratch),
        AudioBufferRef::S24(b) => push_planar(&b, n, sink, &mut st.scratch),
        AudioBufferRef::S32(b) => push_planar(&b, n, sink, &mut st.scratch),
        AudioBufferRef::F32(b) => {
            for c in 0..n {
                sink.push(c, b.chan(c));
            }
        }
        AudioBufferRef::F64(b) => push_planar(&b, n, sink, &mut st.scratch),
    }
    Ok(true)
}

fn push_planar<S>(
    buf: &AudioBuffer<S>,
    channels: usize,
    sink: &mut impl PcmSink,
    scratch: &mut Vec<f32>,
) where
    S: Sample + IntoSample<f32>,
{
    for c in 0..channels {
        scratch.clear();
        scratch.extend(buf.chan(c).iter().map(|&s| s.into_sample()));
        sink.push(c, scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(channels: u16, rate: u32, samples: &[i16]) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cur = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut cur, spec).expect("writer");
        for &s in samples {
            w.write_sample(s).expect("sample");
        }
        w.finalize().expect("finalize");
        cur.into_inner()
    }

    #[test]
    fn decodes_stereo_wav_into_channels() {
        let samples: Vec<i16> = (0..2000)
            .map(|i| if i % 2 == 0 { 16384 } else { -8192 })
            .collect();
        let (d, pcm) = decode_pcm(&wav(2, 8000, &samples), 3600).expect("decodes");
        assert_eq!(d.frames, 1000);
        assert_eq!(d.info.channels, 2);
        assert_eq!(d.info.sample_rate, 8000);
        assert_eq!(d.info.format, "wav");
        assert_eq!(d.info.duration_ms, Some(125));
        assert_eq!(pcm.channels.len(), 2);
        assert!(pcm.channels[0].iter().all(|&s| (s - 0.5).abs() < 1e-6));
        assert!(pcm.channels[1].iter().all(|&s| (s + 0.25).abs() < 1e-6));
    }

    #[test]
    fn float_wav_is_decoded() {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut cur = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut cur, spec).expect("writer");
        for _ in 0..1600 {
            w.write_sample(0.25f32).expect("sample");
        }
        w.finalize().expect("finalize");
        let (d, pcm) = decode_pcm(&cur.into_inner(), 3600).expect("decodes");
        assert_eq!(d.frames, 1600);
        assert_eq!(pcm.channels[0][10], 0.25);
    }

    #[test]
    fn frames_to_ms_guards_zero_rate_and_overflow() {
        assert_eq!(frames_to_ms(16000, 16000), 1000);
        assert_eq!(frames_to_ms(5, 0), 0);
        assert_eq!(frames_to_ms(u64::MAX, 1), i64::MAX);
    }

    #[test]
    fn too_long_is_refused_from_the_header_and_while_decoding() {
        let bytes = wav(1, 8000, &vec![0i16; 8000 * 3]);
        let err = decode_pcm(&bytes, 2).unwrap_err();
        assert!(
            matches!(err, AudioError::TooLong { max_secs: 2 }),
            "{err:?}"
        );
        let err = probe(&bytes, 2).unwrap_err();
        assert!(
            matches!(err, AudioError::TooLong { max_secs: 2 }),
            "{err:?}"
        );
        let opened = open(&bytes).expect("opens");
        let err = decode_stream(opened, &mut NullSink, 2).unwrap_err();
        assert!(
            matches!(err, AudioError::TooLong { max_secs: 2 }),
            "{err:?}"
        );
        assert_eq!(
            decode_stream(open(&bytes).unwrap(), &mut NullSink, 3)
                .unwrap()
                .frames,
            24000
        );
    }

    #[test]
    fn streaming_and_truncated_wav_lengths_are_repaired() {
        let mut bytes = wav(2, 8000, &vec![100i16; 2 * 8000 * 3]);
        // A streaming writer's "unknown length" in both RIFF and data sizes.
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(probe(&bytes, 60).unwrap().duration_ms, Some(3000));
        assert_eq!(decode_pcm(&bytes, 60).unwrap().0.frames, 24000);
        // Cut mid-file: the header now tells the truth about what is left.
        let cut = &bytes[..44 + 4 * 8000];
        assert_eq!(probe(cut, 60).unwrap().duration_ms, Some(1000));
        assert_eq!(decode_pcm(cut, 60).unwrap().0.frames, 8000);
    }

    #[test]
    fn wav_fmt_fields_are_checked_first() {
        let mut bytes = wav(2, 8000, &[0i16; 64]);
        bytes[22..24].copy_from_slice(&9u16.to_le_bytes());
        assert!(matches!(
            probe(&bytes, 60),
            Err(AudioError::TooManyChannels(9))
        ));
        bytes[22..24].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(probe(&bytes, 60), Err(AudioError::Undecodable(_))));
        bytes[22..24].copy_from_slice(&2u16.to_le_bytes());
        bytes[24..28].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(probe(&bytes, 60), Err(AudioError::Undecodable(_))));
    }

    #[test]
    fn format_names_from_magic() {
        assert_eq!(format_name(b"fLaC....", CODEC_TYPE_NULL), "flac");
        assert_eq!(format_name(b"OggS....", CODEC_TYPE_NULL), "ogg");
        assert_eq!(format_name(b"ID3\x04", CODEC_TYPE_NULL), "mp3");
        assert_eq!(format_name(&[0xFF, 0xFB, 0x90], CODEC_TYPE_NULL), "mp3");
        assert_eq!(format_name(b"", CODEC_TYPE_MP3), "mp3");
        assert_eq!(format_name(b"xx", CODEC_TYPE_NULL), "unknown");
    }
}
