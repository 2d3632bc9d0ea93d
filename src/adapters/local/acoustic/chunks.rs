//! A recording cut into overlapping windows, each channel of each window written as its own
//! mono WAV file (16-bit PCM, at most 16 kHz): what a model that mixes channels down is sent, so
//! that it hears each speaker apart and a long call fits its request limits. Streamed: the
//! recording is decoded once, and memory does not grow with its length.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::decode::{self, PcmSink};
use super::{AudioError, MAX_DURATION_SECS};

/// The highest sample rate the windows are written at; speech needs no more.
pub const MAX_RATE: u32 = 16_000;

/// How to cut: windows of `window_ms`, each starting `window_ms - overlap_ms` after the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub window_ms: i64,
    pub overlap_ms: i64,
}

impl Windows {
    fn step_ms(&self) -> i64 {
        (self.window_ms - self.overlap_ms).max(1)
    }
}

/// One window of the recording: its place in the call and one WAV file per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioWindow {
    pub index: usize,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Per channel, in channel order.
    pub files: Vec<PathBuf>,
    /// The rate the files are written at.
    pub sample_rate: u32,
}

/// A mono 16-bit PCM WAV file, its sizes patched in when it is finished.
struct WavWriter {
    out: BufWriter<File>,
    samples: u32,
}

impl WavWriter {
    fn create(path: &Path, rate: u32) -> std::io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(b"RIFF\0\0\0\0WAVEfmt ")?;
        out.write_all(&16u32.to_le_bytes())?;
        out.write_all(&1u16.to_le_bytes())?; // PCM
        out.write_all(&1u16.to_le_bytes())?; // mono
        out.write_all(&rate.to_le_bytes())?;
        out.write_all(&(rate * 2).to_le_bytes())?; // bytes per second
        out.write_all(&2u16.to_le_bytes())?; // block align
        out.write_all(&16u16.to_le_bytes())?; // bits per sample
        out.write_all(b"data\0\0\0\0")?;
        Ok(Self { out, samples: 0 })
    }

    fn push(&mut self, sample: f32) -> std::io::Result<()> {
        let s = (sample.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        self.samples = self.samples.saturating_add(1);
        self.out.write_all(&s.to_le_bytes())
    }

    fn finish(mut self) -> std::io::Result<()> {
        let data = self.samples.saturating_mul(2);
        self.out.seek(SeekFrom::Start(4))?;
        self.out.write_all(&data.saturating_add(36).to_le_bytes())?;
        self.out.seek(SeekFrom::Start(40))?;
        self.out.write_all(&data.to_le_bytes())?;
        self.out.flush()
    }
}

/// Averages each channel down to the output rate (a box filter: enough for speech) and feeds
/// the windows each output sample belongs to.
struct WindowSink {
    windows: Windows,
    dir: PathBuf,
    in_rate: u32,
    out_rate: u32,
    /// Per channel: input samples seen, and the current output bin's sum and count.
    acc: Vec<(u64, f64, u32)>,
    /// Per channel: output samples written so far.
    written: Vec<u64>,
    /// Open windows: (index, start sample, end sample, writer per channel).
    open: Vec<(usize, u64, u64, Vec<Option<WavWriter>>)>,
    done: Vec<AudioWindow>,
    next_window: usize,
    error: Option<std::io::Error>,
}

impl WindowSink {
    fn ms_to_samples(&self, ms: i64) -> u64 {
        (u64::try_from(ms.max(0)).unwrap_or(0)) * u64::from(self.out_rate) / 1000
    }

    fn samples_to_ms(&self, n: u64) -> i64 {
        decode::frames_to_ms(n, self.out_rate)
    }

    fn path(&self, window: usize, channel: usize) -> PathBuf {
        self.dir.join(format!("window-{window:04}-ch{channel}.wav"))
    }

    /// Writes output sample number `n` of `channel`, opening and closing windows as `n` passes
    /// their edges.
    fn emit(&mut self, channel: usize, n: u64, value: f32) -> std::io::Result<()> {
        let channels = self.acc.len();
        let step = self.ms_to_samples(self.windows.step_ms()).max(1);
        let len = self.ms_to_samples(self.windows.window_ms).max(1);
        while (self.next_window as u64) * step <= n {
            let i = self.next_window;
            let start = i as u64 * step;
            self.open
                .push((i, start, start + len, (0..channels).map(|_| None).collect()));
            self.next_window += 1;
        }
        let rate = self.out_rate;
        for w in 0..self.open.len() {
            let (index, start, end) = (self.open[w].0, self.open[w].1, self.open[w].2);
            if n < start || n >= end {
                continue;
            }
            if self.open[w].3[channel].is_none() {
                let path = self.path(index, channel);
                self.open[w].3[channel] = Some(WavWriter::create(&path, rate)?);
            }
            if let Some(writer) = self.open[w].3[channel].as_mut() {
                writer.push(value)?;
            }
        }
        // A window is complete once every channel has passed its end.
        let low = self.written.iter().copied().min().unwrap_or(0);
        let mut k = 0;
        while k < self.open.len() {
            if self.open[k].2 <= low {
                let (index, start, end, writers) = self.open.remove(k);
                self.close(index, start, end, writers)?;
            } else {
                k += 1;
            }
        }
        Ok(())
    }

    fn close(
        &mut self,
        index: usize,
        start: u64,
        end: u64,
        writers: Vec<Option<WavWriter>>,
    ) -> std::io::Result<()> {
        let files = (0..writers.len()).map(|c| self.path(index, c)).collect();
        for (c, w) in writers.into_iter().enumerate() {
            match w {
                Some(w) => w.finish()?,
                // A channel that ended before this window: an empty file keeps the layout.
                None => WavWriter::create(&self.path(index, c), self.out_rate)?.finish()?,
            }
        }
        self.done.push(AudioWindow {
            index,
            start_ms: self.samples_to_ms(start),
            end_ms: self.samples_to_ms(end),
            files,
            sample_rate: self.out_rate,
        });
        Ok(())
    }
}

impl PcmSink for WindowSink {
    fn begin(&mut self, channels: usize, sample_rate: u32) {
        self.in_rate = sample_rate.max(1);
        self.out_rate = self.in_rate.min(MAX_RATE);
        self.acc = vec![(0, 0.0, 0); channels];
        self.written = vec![0; channels];
    }

    fn push(&mut self, channel: usize, samples: &[f32]) {
        if self.error.is_some() || channel >= self.acc.len() {
            return;
        }
        let ratio = f64::from(self.in_rate) / f64::from(self.out_rate);
        for &x in samples {
            let (seen, sum, count) = self.acc[channel];
            let bin = (seen as f64 / ratio) as u64;
            let (mut sum, mut count) = (sum, count);
            if bin > self.written[channel] && count > 0 {
                let n = self.written[channel];
                let value = (sum / f64::from(count)) as f32;
                self.written[channel] += 1;
                if let Err(e) = self.emit(channel, n, value) {
                    self.error = Some(e);
                    return;
                }
                sum = 0.0;
                count = 0;
            }
            self.acc[channel] = (seen + 1, sum + f64::from(x), count + 1);
        }
    }
}

impl WindowSink {
    fn finish(mut self) -> std::io::Result<Vec<AudioWindow>> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        for c in 0..self.acc.len() {
            let (_, sum, count) = self.acc[c];
            if count > 0 {
                let n = self.written[c];
                self.written[c] += 1;
                self.emit(c, n, (sum / f64::from(count)) as f32)?;
            }
        }
        let total = self.written.iter().copied().max().unwrap_or(0);
        let open = std::mem::take(&mut self.open);
        for (index, start, end, writers) in open {
            self.close(index, start, end.min(total), writers)?;
        }
        let mut windows = self.done;
        windows.sort_by_key(|w| w.index);
        // A last window holding nothing but the previous one's overlap adds nothing.
        if windows.len() > 1 {
            let last = &windows[windows.len() - 1];
            let prev_end = windows[windows.len() - 2].end_ms;
            if last.end_ms <= prev_end {
                for f in &last.files {
                    let _ = std::fs::remove_file(f);
                }
                windows.pop();
            }
        }
        Ok(windows)
    }
}

/// Cuts the recording at `path` into `windows`, writing them into `dir` (which the caller owns
/// and removes). Errors as for a full decode.
pub fn write_windows(
    path: &Path,
    windows: Windows,
    dir: &Path,
) -> Result<Vec<AudioWindow>, AudioError> {
    let mut sink = WindowSink {
        windows,
        dir: dir.to_path_buf(),
        in_rate: 1,
        out_rate: 1,
        acc: Vec::new(),
        written: Vec::new(),
        open: Vec::new(),
        done: Vec::new(),
        next_window: 0,
        error: None,
    };
    decode::decode_file(path, &mut sink, MAX_DURATION_SECS)?;
    sink.finish()
        .map_err(|e| AudioError::Undecodable(format!("writing an audio window failed: {e}")))
}
