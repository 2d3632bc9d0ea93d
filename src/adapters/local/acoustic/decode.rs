//! Decoding recordings with symphonia into per-channel f32 PCM, pushed packet by packet to a sink.
//!
//! A recording is read either from bytes already in memory or from a file. Files are read
//! through one small buffer, so memory use does not grow with their size; the few header fields
//! that WAV repair rewrites are served from an overlay instead of being patched in place.

use std::fs::File;
use std::io::{self, ErrorKind, IoSliceMut, Read, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use symphonia::core::audio::{AudioBuffer, AudioBufferRef, Signal};
use symphonia::core::codecs::{
    CodecType, Decoder, DecoderOptions, CODEC_TYPE_FLAC, CODEC_TYPE_MP3, CODEC_TYPE_NULL,
    CODEC_TYPE_VORBIS,
};
use symphonia::core::conv::IntoSample;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream, MediaSourceStreamOptions};
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

/// Size of the one read buffer of a file-backed recording (symphonia keeps its own 64 KiB
/// read-ahead ring on top of it).
const FILE_BUFFER_LEN: usize = 64 * 1024;

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
    probe_stream(open(bytes)?, max_secs)
}

/// Like [`probe`], reading only what it needs from the file at `path`.
pub fn probe_file(path: &Path, max_secs: u64) -> Result<AudioInfo, AudioError> {
    probe_stream(open_file(path)?, max_secs)
}

/// Decodes the whole recording, pushing every packet's samples into `sink`.
pub fn decode(bytes: &[u8], sink: &mut impl PcmSink, max_secs: u64) -> Result<Decoded, AudioError> {
    let stream = open(bytes)?;
    check_header_limits(&stream.info, max_secs)?;
    decode_stream(stream, sink, max_secs)
}

/// Like [`decode`], reading the file at `path` through a fixed-size buffer.
pub fn decode_file(
    path: &Path,
    sink: &mut impl PcmSink,
    max_secs: u64,
) -> Result<Decoded, AudioError> {
    let stream = open_file(path)?;
    check_header_limits(&stream.info, max_secs)?;
    decode_stream(stream, sink, max_secs)
}

fn probe_stream(mut stream: Open, max_secs: u64) -> Result<AudioInfo, AudioError> {
    check_header_limits(&stream.info, max_secs)?;
    let mut sink = NullSink;
    let mut state = DecodeState::default();
    for _ in 0..PROBE_MAX_PACKETS {
        if !checked_step(&mut stream, &mut sink, &mut state)? {
            break;
        }
        if state.frames > 0 {
            return Ok(stream.info_with_decoded(state.channels, state.sample_rate));
        }
    }
    Err(state.failure())
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
        if !checked_step(&mut stream, sink, &mut state)? {
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

/// One `step`, guarded against decoder panics; a read error of the underlying file fails the
/// decode even when symphonia took it for the end of the stream (a disk or network-filesystem
/// error must not pass for a shorter recording).
fn checked_step(
    stream: &mut Open,
    sink: &mut impl PcmSink,
    state: &mut DecodeState,
) -> Result<bool, AudioError> {
    let stepped = guarded(|| step(stream, sink, state));
    if let Some(e) = stream.read_error.get() {
        return Err(read_failure(e));
    }
    stepped
}

fn read_failure(reason: impl std::fmt::Display) -> AudioError {
    AudioError::Undecodable(format!("cannot read the recording: {reason}"))
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
    /// The first I/O error the source met, if any.
    read_error: Arc<OnceLock<String>>,
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
    // symphonia wants an owned 'static source; one copy of the upload is the price.
    guarded(|| open_inner(Backing::Memory(bytes.to_vec())))
}

fn open_file(path: &Path) -> Result<Open, AudioError> {
    let file = FileBacking::open(path, FILE_BUFFER_LEN)?;
    guarded(|| open_inner(Backing::File(file)))
}

fn open_inner(mut backing: Backing) -> Result<Open, AudioError> {
    let len = backing.len();
    let mut head = [0u8; 12];
    let head_len = backing.read_full_at(0, &mut head).map_err(read_failure)?;
    let head = &head[..head_len];
    let patches = prepare_wav(&mut backing)?;
    let read_error = Arc::new(OnceLock::new());
    let source = Source {
        backing,
        len,
        pos: 0,
        patches,
        read_error: Arc::clone(&read_error),
    };
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
        .map_err(|e| match read_error.get() {
            Some(io) => read_failure(io),
            None => AudioError::Undecodable(e.to_string()),
        })?;
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
    let plausible_ms = i64::try_from(len / MIN_BYTES_PER_SECOND * 1000).unwrap_or(i64::MAX);
    let duration_ms = match (params.n_frames, params.sample_rate) {
        (Some(n), Some(sr)) if sr > 0 => Some(frames_to_ms(n, sr)).filter(|&ms| ms <= plausible_ms),
        _ => None,
    };
    let info = AudioInfo {
        format: format_name(head, params.codec).to_string(),
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
        read_error,
    })
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A little-endian `u32` that replaces the four bytes of the recording at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Patch {
    at: u64,
    bytes: [u8; 4],
}

fn set_patch(patches: &mut Vec<Patch>, at: u64, value: u32) {
    let bytes = value.to_le_bytes();
    match patches.iter_mut().find(|p| p.at == at) {
        Some(p) => p.bytes = bytes,
        None => patches.push(Patch { at, bytes }),
    }
}

/// Overwrites the bytes of `buf` — which holds the recording from offset `pos` on — that the
/// patches cover.
fn apply_patches(patches: &[Patch], pos: u64, buf: &mut [u8]) {
    let end = pos.saturating_add(buf.len() as u64);
    for p in patches {
        for (at, &b) in (p.at..).zip(&p.bytes) {
            if (pos..end).contains(&at) {
                buf[(at - pos) as usize] = b;
            }
        }
    }
}

/// For RIFF/WAVE only: refuses impossible `fmt ` fields before symphonia sees them (it panics
/// on a zero sample rate), and shrinks length fields that claim more bytes than the file has —
/// streaming writers leave 0xFFFFFFFF there and truncated uploads are common — so that the
/// audio that is present gets decoded. Reads only the chunk headers (wherever they are) and
/// returns the repairs as patches over the original bytes.
fn prepare_wav(src: &mut Backing) -> Result<Vec<Patch>, AudioError> {
    let len = src.len();
    let mut patches = Vec::new();
    let mut head = [0u8; 12];
    if len < 12
        || src.read_full_at(0, &mut head).map_err(read_failure)? < 12
        || &head[0..4] != b"RIFF"
        || &head[8..12] != b"WAVE"
    {
        return Ok(patches);
    }
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    // The RIFF size as it stands after the repairs so far.
    let mut riff = u64::from(read_u32(&head, 4).unwrap_or(0));
    if riff + 8 > len {
        riff = u64::from(clamp(len - 8));
        set_patch(&mut patches, 4, clamp(len - 8));
    }
    let mut pos = 12u64;
    while pos + 8 <= len {
        let mut chunk = [0u8; 8];
        if src.read_full_at(pos, &mut chunk).map_err(read_failure)? < 8 {
            break; // The file shrank under us; symphonia will meet the same end.
        }
        let id = &chunk[0..4];
        let size = u64::from(read_u32(&chunk, 4).unwrap_or(0));
        let body = pos + 8;
        let available = len - body;
        if id == b"fmt " && size >= 16 && available >= 16 {
            let mut fmt = [0u8; 16];
            let got = src.read_full_at(body, &mut fmt).map_err(read_failure)?;
            let fmt = &fmt[..got];
            let channels = usize::from(read_u16(fmt, 2).unwrap_or(0));
            if channels == 0 {
                return Err(AudioError::Undecodable("the stream has no channels".into()));
            }
            if channels > MAX_CHANNELS {
                return Err(AudioError::TooManyChannels(channels));
            }
            check_rate(read_u32(fmt, 4).unwrap_or(0))?;
        }
        if id == b"data" {
            if size > available {
                set_patch(&mut patches, pos + 4, clamp(available));
            }
            // The RIFF size must cover the data chunk too (it wraps when a writer computes it
            // from an "unknown" data length).
            let data_end = body + size.min(available);
            if riff + 8 < data_end {
                set_patch(&mut patches, 4, clamp(data_end - 8));
            }
            break;
        }
        if size > available {
            break;
        }
        pos = body + size + (size & 1);
    }
    Ok(patches)
}

/// The recording's bytes: an owned copy of an upload, or a file read through a small buffer.
enum Backing {
    Memory(Vec<u8>),
    File(FileBacking),
}

impl Backing {
    fn len(&self) -> u64 {
        match self {
            Backing::Memory(v) => v.len() as u64,
            Backing::File(f) => f.len,
        }
    }

    /// Reads from offset `pos`; returns 0 only at (or past) the end of the recording.
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Backing::Memory(v) => {
                let start = usize::try_from(pos).unwrap_or(usize::MAX).min(v.len());
                let n = buf.len().min(v.len() - start);
                buf[..n].copy_from_slice(&v[start..start + n]);
                Ok(n)
            }
            Backing::File(f) => f.read_at(pos, buf),
        }
    }

    /// Fills `buf` from offset `pos`, stopping short only at the end of the recording.
    fn read_full_at(&mut self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_at(pos + done as u64, &mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// A file read at arbitrary offsets through one fixed-size buffer. Its length is fixed when it
/// is opened: bytes appended later are not seen.
struct FileBacking {
    file: File,
    len: u64,
    /// Where the OS file offset is, when known: sequential reads need no seek.
    file_pos: Option<u64>,
    buf: Vec<u8>,
    buf_start: u64,
    buf_len: usize,
}

impl FileBacking {
    fn open(path: &Path, buffer_len: usize) -> Result<Self, AudioError> {
        let file = File::open(path)
            .map_err(|e| AudioError::Undecodable(format!("cannot open the recording: {e}")))?;
        let meta = file.metadata().map_err(read_failure)?;
        if !meta.is_file() {
            return Err(AudioError::Undecodable(
                "the recording is not a regular file".into(),
            ));
        }
        if meta.len() == 0 {
            return Err(AudioError::Empty);
        }
        Ok(Self {
            file,
            len: meta.len(),
            file_pos: Some(0),
            buf: vec![0; buffer_len.max(1)],
            buf_start: 0,
            buf_len: 0,
        })
    }

    fn read_at(&mut self, pos: u64, out: &mut [u8]) -> io::Result<usize> {
        if pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.len - pos)
            .unwrap_or(usize::MAX)
            .min(out.len());
        let out = &mut out[..want];
        let buffered = self.buf_start..self.buf_start + self.buf_len as u64;
        if buffered.contains(&pos) {
            let from = (pos - self.buf_start) as usize;
            let n = want.min(self.buf_len - from);
            out[..n].copy_from_slice(&self.buf[from..from + n]);
            return Ok(n);
        }
        if want >= self.buf.len() {
            // Large reads go straight to the caller's buffer.
            return Self::read_file(&mut self.file, &mut self.file_pos, pos, out);
        }
        self.buf_start = pos;
        self.buf_len = 0;
        self.buf_len = Self::read_file(&mut self.file, &mut self.file_pos, pos, &mut self.buf)?;
        let n = want.min(self.buf_len);
        out[..n].copy_from_slice(&self.buf[..n]);
        Ok(n)
    }

    fn read_file(
        file: &mut File,
        file_pos: &mut Option<u64>,
        pos: u64,
        out: &mut [u8],
    ) -> io::Result<usize> {
        if *file_pos != Some(pos) {
            *file_pos = None;
            file.seek(SeekFrom::Start(pos))?;
        }
        let n = file.read(out).inspect_err(|_| *file_pos = None)?;
        *file_pos = Some(pos + n as u64);
        Ok(n)
    }
}

/// What symphonia reads: the recording with the WAV repairs overlaid. Behaves like a `Cursor`
/// over the repaired bytes (reads fill the buffer up to the end), whatever the backing.
struct Source {
    backing: Backing,
    len: u64,
    pos: u64,
    patches: Vec<Patch>,
    /// The first I/O error, kept for the decode loop: symphonia may take it for the end.
    read_error: Arc<OnceLock<String>>,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.backing.read_full_at(self.pos, buf).inspect_err(|e| {
            let _ = self.read_error.set(e.to_string());
        })?;
        apply_patches(&self.patches, self.pos, &mut buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for buf in bufs {
            match self.read(buf) {
                Ok(n) => {
                    total += n;
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if total == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(total)
    }
}

impl Seek for Source {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        let target = match from {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                ErrorKind::InvalidInput,
                "invalid seek to a negative or overflowing position",
            )),
        }
    }
}

impl MediaSource for Source {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.len)
    }
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
    use std::io::Cursor;

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

    fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut f, bytes).expect("write");
        f
    }

    fn file_backing(bytes: &[u8], buffer_len: usize) -> (tempfile::NamedTempFile, Backing) {
        let f = temp_file(bytes);
        let backing = FileBacking::open(f.path(), buffer_len).expect("opens");
        (f, Backing::File(backing))
    }

    #[test]
    fn source_overlays_patches_and_reads_like_a_cursor() {
        let mut x = 0x1234_5678u32;
        let bytes: Vec<u8> = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let mut patches = Vec::new();
        set_patch(&mut patches, 4, 7);
        set_patch(&mut patches, 4, 0xAABB_CCDD); // Replaces, not stacks.
        set_patch(&mut patches, 4999, 0x0102_0304);
        set_patch(&mut patches, 9998, u32::MAX); // Runs past the end.
        assert_eq!(patches.len(), 3);
        let mut expected = bytes.clone();
        expected[4..8].copy_from_slice(&0xAABB_CCDDu32.to_le_bytes());
        expected[4999..5003].copy_from_slice(&[4, 3, 2, 1]);
        expected[9998..].copy_from_slice(&[0xFF, 0xFF]);

        let (_file, tiny) = file_backing(&bytes, 7);
        let (_file2, big) = file_backing(&bytes, FILE_BUFFER_LEN);
        for backing in [tiny, big, Backing::Memory(bytes.clone())] {
            let mut src = Source {
                len: backing.len(),
                backing,
                pos: 0,
                patches: patches.clone(),
                read_error: Arc::default(),
            };
            assert_eq!((src.is_seekable(), src.byte_len()), (true, Some(10_000)));
            let mut cur = Cursor::new(expected.clone());
            let seeks = [
                SeekFrom::Start(0),
                SeekFrom::Start(4990),
                SeekFrom::Current(-3),
                SeekFrom::End(-5),
                SeekFrom::Start(2),
                SeekFrom::End(10),
                SeekFrom::Start(9000),
            ];
            for (i, &to) in seeks.iter().enumerate() {
                assert_eq!(src.seek(to).unwrap(), cur.seek(to).unwrap());
                for len in [1, 3, 7, 8, 100, 4096, 1 + i * 13] {
                    let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
                    let n = src.read(&mut a).unwrap();
                    assert_eq!(n, cur.read(&mut b).unwrap());
                    assert_eq!(a[..n], b[..n], "seek {to:?}, read {len}");
                }
                let (mut a1, mut a2) = ([0u8; 5], [0u8; 9]);
                let (mut b1, mut b2) = ([0u8; 5], [0u8; 9]);
                let n = src
                    .read_vectored(&mut [IoSliceMut::new(&mut a1), IoSliceMut::new(&mut a2)])
                    .unwrap();
                let m = cur
                    .read_vectored(&mut [IoSliceMut::new(&mut b1), IoSliceMut::new(&mut b2)])
                    .unwrap();
                assert_eq!((n, a1, a2), (m, b1, b2));
            }
            src.seek(SeekFrom::Start(0)).unwrap();
            let mut all = Vec::new();
            src.read_to_end(&mut all).unwrap();
            assert_eq!(all, expected);
            src.seek(SeekFrom::Start(0)).unwrap();
            assert!(src.seek(SeekFrom::Current(-1)).is_err());
            assert!(src.seek(SeekFrom::End(-10_001)).is_err());
            assert!(src.read_error.get().is_none());
        }
    }

    /// A mono 8 kHz WAV with a `JUNK` chunk of `junk` bytes between `fmt ` and `data`, whose
    /// RIFF and data lengths say "unknown" (0xFFFFFFFF).
    fn wav_with_junk(channels: u16, junk: usize, samples: usize) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(b"RIFF");
        b.extend(u32::MAX.to_le_bytes());
        b.extend(b"WAVEfmt ");
        b.extend(16u32.to_le_bytes());
        b.extend(1u16.to_le_bytes());
        b.extend(channels.to_le_bytes());
        b.extend(8000u32.to_le_bytes());
        b.extend((16_000 * u32::from(channels)).to_le_bytes());
        b.extend((2 * channels).to_le_bytes());
        b.extend(16u16.to_le_bytes());
        b.extend(b"JUNK");
        b.extend((junk as u32).to_le_bytes());
        b.resize(b.len() + junk, 0);
        b.extend(b"data");
        b.extend(u32::MAX.to_le_bytes());
        for i in 0..samples * usize::from(channels) {
            b.extend(((i % 200) as i16 * 100).to_le_bytes());
        }
        b
    }

    #[test]
    fn wav_repairs_reach_chunks_far_into_the_file() {
        // The data chunk header sits 300 kB in, far beyond any header buffer.
        let bytes = wav_with_junk(1, 300_000, 24_000);
        let data_header = 12 + 24 + 8 + 300_000;
        assert_eq!(&bytes[data_header..data_header + 4], b"data");
        let patches = prepare_wav(&mut Backing::Memory(bytes.clone())).unwrap();
        let (_f, mut backing) = file_backing(&bytes, 16);
        assert_eq!(prepare_wav(&mut backing).unwrap(), patches);
        let riff = (bytes.len() - 8) as u32;
        let data = (bytes.len() - data_header - 8) as u32;
        assert_eq!(
            patches,
            vec![
                Patch {
                    at: 4,
                    bytes: riff.to_le_bytes()
                },
                Patch {
                    at: data_header as u64 + 4,
                    bytes: data.to_le_bytes()
                },
            ]
        );

        let f = temp_file(&bytes);
        let (from_bytes, pcm) = decode_pcm(&bytes, 60).unwrap();
        let mut file_pcm = PcmBuffers::default();
        let from_file = decode_file(f.path(), &mut file_pcm, 60).unwrap();
        assert_eq!(from_bytes, from_file);
        assert_eq!(from_file.frames, 24_000);
        assert_eq!(from_file.info.duration_ms, Some(3000));
        assert_eq!(pcm.channels, file_pcm.channels);
        assert_eq!(
            probe_file(f.path(), 60).unwrap(),
            probe(&bytes, 60).unwrap()
        );

        // The fmt fields are checked from the file too.
        let f = temp_file(&wav_with_junk(5, 300_000, 10));
        assert!(matches!(
            probe_file(f.path(), 60),
            Err(AudioError::TooManyChannels(5))
        ));
    }

    #[test]
    fn file_open_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.wav");
        let err = probe_file(&missing, 60).unwrap_err();
        assert!(
            matches!(&err, AudioError::Undecodable(m) if m.starts_with("cannot open the recording")),
            "{err:?}"
        );
        let err = decode_file(dir.path(), &mut NullSink, 60).unwrap_err();
        assert!(
            matches!(&err, AudioError::Undecodable(m) if m.contains("not a regular file")),
            "{err:?}"
        );
        let empty = temp_file(b"");
        assert!(matches!(
            decode_file(empty.path(), &mut NullSink, 60),
            Err(AudioError::Empty)
        ));
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
