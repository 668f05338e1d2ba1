//! Audio in a run directory (docs/run-format-audio.md): `audio.wav` (mono, 32-bit float WAV),
//! `audio.npy` (the same f32 samples), optionally `audio_cross.npy` (the candidate's
//! post-tokens decoded with the reference's codec), and the manifest's `audio` section.
//!
//! Writing is atomic per file (temp sibling + rename) and the files go into the run's
//! `.partial` directory before the run is renamed, so a run never looks complete with half its
//! audio. Reading validates rate, channel count, length against the manifest and finiteness, and
//! names the file in every error.
use super::{Run, RunWriter};
use crate::npy::{self, Dtype, StreamingNpy};
use crate::util::temp_sibling;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// The decoded waveform, mono.
pub const AUDIO_WAV: &str = "audio.wav";
/// The same samples as little-endian f32, shape `[samples]`.
pub const AUDIO_NPY: &str = "audio.npy";
/// Optional, candidate runs only: the candidate's post-tokens decoded with the reference
/// pipeline's codec (cross-decode), f32 `[samples]` at the run's sample rate.
pub const AUDIO_CROSS_NPY: &str = "audio_cross.npy";
/// Mimi's output rate.
pub const MIMI_SAMPLE_RATE: u32 = 24_000;
/// Samples per Mimi frame at 24 kHz (12.5 frames/s, 80 ms).
pub const SAMPLES_PER_FRAME: usize = 1920;

/// The manifest's optional `audio` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AudioManifest {
    /// Samples per second (24000 for Mimi).
    pub sample_rate: u32,
    /// Number of samples in audio.wav / audio.npy (mono).
    pub samples: usize,
    pub codec: CodecInfo,
    /// Tokens the codec could not decode (≥ its codebook size), over all decoded frames.
    #[serde(default)]
    pub undecodable_tokens: usize,
    /// Frames handed to the codec (the end-of-stream frame is not audio and is not counted).
    pub frames_decoded: usize,
    /// Samples in audio_cross.npy when the run has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_samples: Option<usize>,
    /// The codec of the cross-decode (the reference's) when audio_cross.npy exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_codec: Option<CodecInfo>,
}

/// Which codec decoded the audio.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct CodecInfo {
    /// e.g. `mimi`.
    pub name: String,
    /// Directory or file the codec weights came from.
    pub path: String,
    /// sha256 of the codec weights, hex.
    pub sha256: String,
    /// Library that ran it, e.g. `mlx 0.32.2` or `libtorch 2.x`.
    pub library: String,
}

/// A validated mono waveform read from a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub samples: Vec<f32>,
    /// The file the samples were read from (audio.npy, or audio.wav without one).
    pub path: PathBuf,
}

impl Audio {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate as f64
    }
}

fn check_samples(samples: &[f32], what: &Path) -> Result<()> {
    if let Some((i, x)) = samples.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        bail!(
            "{}: sample {i} is {x} (audio must be finite; NaN/Inf means the decoder failed)",
            what.display()
        );
    }
    Ok(())
}

/// Streams mono f32 samples into `audio.wav` (32-bit float) and `audio.npy` (or only a .npy
/// for [`AUDIO_CROSS_NPY`]) through temp files renamed by [`AudioWriter::finish`]: chunks can
/// be pushed as the codec produces them, and memory stays at one chunk. Dropped unfinished, it
/// removes its temp files.
pub struct AudioWriter {
    wav: Option<(hound::WavWriter<BufWriter<File>>, PathBuf, PathBuf)>,
    /// The .npy (written through a temp sibling) and its final path.
    npy: Option<(StreamingNpy, PathBuf)>,
    samples: usize,
    sample_rate: u32,
}

impl AudioWriter {
    /// Starts `dir/audio.wav` + `dir/audio.npy`.
    pub fn create(dir: &Path, sample_rate: u32) -> Result<AudioWriter> {
        Self::create_files(dir, Some(AUDIO_WAV), AUDIO_NPY, sample_rate)
    }

    /// Starts `dir/audio_cross.npy` (no WAV).
    pub fn create_cross(dir: &Path, sample_rate: u32) -> Result<AudioWriter> {
        Self::create_files(dir, None, AUDIO_CROSS_NPY, sample_rate)
    }

    fn create_files(
        dir: &Path,
        wav: Option<&str>,
        npy_name: &str,
        sample_rate: u32,
    ) -> Result<AudioWriter> {
        ensure!(
            sample_rate > 0,
            "audio writer: sample rate must be > 0 (got {sample_rate})"
        );
        ensure!(
            dir.is_dir(),
            "{}: not a directory (expected the run directory to write audio into)",
            dir.display()
        );
        let mut w = AudioWriter {
            wav: None,
            npy: None,
            samples: 0,
            sample_rate,
        };
        if let Some(name) = wav {
            let path = dir.join(name);
            let tmp = temp_sibling(&path);
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate,
                bits_per_sample: 32,
                sample_format: hound::SampleFormat::Float,
            };
            let f =
                File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
            let ww = hound::WavWriter::new(BufWriter::with_capacity(1 << 16, f), spec)
                .with_context(|| format!("{}: cannot write WAV header", tmp.display()));
            match ww {
                Ok(ww) => w.wav = Some((ww, tmp, path)),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        let path = dir.join(npy_name);
        // 1-D [samples]: the length is written into the header by `finish`.
        w.npy = Some((StreamingNpy::create_atomic(&path, Dtype::F32, &[])?, path));
        Ok(w)
    }

    /// Samples written so far.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Appends a chunk. Refuses NaN/Inf (naming the sample index in the whole stream).
    pub fn push(&mut self, chunk: &[f32]) -> Result<()> {
        let (_, npy_path) = self.npy.as_ref().expect("audio writer already finished");
        if let Some((i, x)) = chunk.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            bail!(
                "{}: sample {} is {x} (audio must be finite; the decoder produced NaN/Inf)",
                npy_path.display(),
                self.samples + i
            );
        }
        if let Some((ww, tmp, _)) = self.wav.as_mut() {
            for &x in chunk {
                ww.write_sample(x)
                    .with_context(|| format!("{}: cannot write", tmp.display()))?;
            }
        }
        let (w, path) = self.npy.as_mut().unwrap();
        w.push_f32(chunk)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        self.samples += chunk.len();
        Ok(())
    }

    /// Finalizes both files, fsyncs and renames them into place. Returns the sample count.
    pub fn finish(mut self) -> Result<usize> {
        if let Some((ww, tmp, path)) = self.wav.take() {
            let res = (|| -> Result<()> {
                ww.finalize()?;
                File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                Ok(())
            })();
            if let Err(e) = res {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.context(format!("{}: cannot finish", path.display())));
            }
        }
        if let Some((w, path)) = self.npy.take() {
            // Removes its temp file on failure.
            w.finish()
                .with_context(|| format!("{}: cannot finish", path.display()))?;
        }
        Ok(self.samples)
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }
}

impl Drop for AudioWriter {
    fn drop(&mut self) {
        if let Some((_, tmp, _)) = self.wav.take() {
            let _ = std::fs::remove_file(tmp);
        }
        // An unfinished StreamingNpy removes its temp file when dropped.
        self.npy.take();
    }
}

/// Writes `dir/audio.wav` and `dir/audio.npy` (mono f32 at `sample_rate`), each atomically.
/// Returns the sample count. NaN/Inf samples are refused and nothing is left behind.
pub fn write_audio(dir: &Path, samples: &[f32], sample_rate: u32) -> Result<usize> {
    check_samples(samples, &dir.join(AUDIO_NPY))?;
    let mut w = AudioWriter::create(dir, sample_rate)?;
    w.push(samples)?;
    w.finish()
}

/// Writes a mono 32-bit float WAV file at `path` atomically (temp + rename).
pub fn write_wav(path: &Path, samples: &[f32], sample_rate: u32) -> Result<()> {
    check_samples(samples, path)?;
    ensure!(
        sample_rate > 0,
        "{}: sample rate must be > 0",
        path.display()
    );
    let tmp = temp_sibling(path);
    let res = (|| -> Result<()> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let f = File::create(&tmp)?;
        let mut w = hound::WavWriter::new(BufWriter::with_capacity(1 << 16, f), spec)?;
        for &x in samples {
            w.write_sample(x)?;
        }
        w.finalize()?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("{}: cannot write", path.display())));
    }
    Ok(())
}

/// Writes `dir/audio_cross.npy`: the candidate's post-tokens decoded with the reference's codec.
pub fn write_audio_cross(dir: &Path, samples: &[f32], sample_rate: u32) -> Result<usize> {
    check_samples(samples, &dir.join(AUDIO_CROSS_NPY))?;
    let mut w = AudioWriter::create_cross(dir, sample_rate)?;
    w.push(samples)?;
    w.finish()
}

impl RunWriter {
    /// Writes the run's audio into its `.partial` directory and records the manifest's `audio`
    /// section (written by [`RunWriter::finish`]). Call before `finish`.
    pub fn write_audio(
        &mut self,
        samples: &[f32],
        sample_rate: u32,
        codec: CodecInfo,
        undecodable_tokens: usize,
        frames_decoded: usize,
    ) -> Result<()> {
        let n = write_audio(self.partial_dir(), samples, sample_rate)?;
        self.set_audio(Some(AudioManifest {
            sample_rate,
            samples: n,
            codec,
            undecodable_tokens,
            frames_decoded,
            cross_samples: None,
            cross_codec: None,
        }));
        Ok(())
    }

    /// Writes `audio_cross.npy` (this run's post-tokens decoded with the reference's codec)
    /// into the `.partial` directory. Call after [`RunWriter::write_audio`], before `finish`.
    pub fn write_audio_cross(
        &mut self,
        samples: &[f32],
        sample_rate: u32,
        reference_codec: CodecInfo,
    ) -> Result<()> {
        let mut m = self.audio_manifest().cloned().with_context(|| {
            format!(
                "{}: write the run's own audio (write_audio) before the cross-decode",
                self.partial_dir().display()
            )
        })?;
        ensure!(
            sample_rate == m.sample_rate,
            "cross-decoded audio at {sample_rate} Hz but the run's audio is at {} Hz",
            m.sample_rate
        );
        let n = write_audio_cross(self.partial_dir(), samples, sample_rate)?;
        m.cross_samples = Some(n);
        m.cross_codec = Some(reference_codec);
        self.set_audio(Some(m));
        Ok(())
    }
}

/// Reads a 1-D f32 .npy of `expected` samples (when known) and checks every sample is finite.
fn read_npy_samples(path: &Path, expected: Option<usize>) -> Result<Vec<f32>> {
    let f = npy::NpyFile::open(path)?;
    let h = &f.header;
    if h.shape.len() != 1 {
        bail!(
            "{}: shape {:?}, expected a 1-D array [samples] (mono)",
            path.display(),
            h.shape
        );
    }
    if !matches!(h.dtype, Dtype::F32 | Dtype::F64 | Dtype::F16) {
        bail!(
            "{}: dtype {} but expected <f4 (f32 samples)",
            path.display(),
            h.dtype.descr()
        );
    }
    if let Some(n) = expected {
        if h.shape[0] != n {
            bail!(
                "{}: {} samples but the manifest says {n}",
                path.display(),
                h.shape[0]
            );
        }
    }
    // 1-D and in standard layout: the raw vector holds the samples in order.
    let (out, _) = f.read::<f32>()?.into_raw_vec_and_offset();
    check_samples(&out, path)?;
    Ok(out)
}

/// Header facts of a WAV file: (rate, channels, frames).
fn wav_spec(path: &Path) -> Result<(hound::WavSpec, u32)> {
    let r = hound::WavReader::open(path)
        .with_context(|| format!("{}: not a readable WAV file", path.display()))?;
    Ok((r.spec(), r.duration()))
}

fn read_wav_samples(path: &Path) -> Result<Vec<f32>> {
    let r = hound::WavReader::open(path)
        .with_context(|| format!("{}: not a readable WAV file", path.display()))?;
    let spec = r.spec();
    let out: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r
            .into_samples::<f32>()
            .collect::<std::result::Result<_, _>>()
            .with_context(|| format!("{}: cannot read samples", path.display()))?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            r.into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<std::result::Result<_, _>>()
                .with_context(|| format!("{}: cannot read samples", path.display()))?
        }
    };
    check_samples(&out, path)?;
    Ok(out)
}

/// Reads and validates the audio of the run directory `dir` whose manifest audio section is
/// `meta`. `Ok(None)` when the run has no audio (no section and no audio.wav).
pub fn read_audio(dir: &Path, meta: Option<&AudioManifest>) -> Result<Option<Audio>> {
    let wav = dir.join(AUDIO_WAV);
    let npy_p = dir.join(AUDIO_NPY);
    let mpath = dir.join("manifest.json");
    let Some(meta) = meta else {
        if wav.exists() || npy_p.exists() {
            bail!(
                "{}: the run has {} but the manifest has no `audio` section (sample_rate, samples, codec, frames_decoded)",
                mpath.display(),
                if wav.exists() { AUDIO_WAV } else { AUDIO_NPY }
            );
        }
        return Ok(None);
    };
    if meta.sample_rate == 0 {
        bail!("{}: audio.sample_rate is 0", mpath.display());
    }
    if !wav.exists() {
        bail!(
            "{}: missing (the manifest's audio section says the run has {} samples at {} Hz)",
            wav.display(),
            meta.samples,
            meta.sample_rate
        );
    }
    let (spec, frames) = wav_spec(&wav)?;
    if spec.channels != 1 {
        bail!(
            "{}: {} channels, expected 1 (mono)",
            wav.display(),
            spec.channels
        );
    }
    if spec.sample_rate != meta.sample_rate {
        bail!(
            "{}: sample rate {} Hz but the manifest says {} Hz",
            wav.display(),
            spec.sample_rate,
            meta.sample_rate
        );
    }
    if frames as usize != meta.samples {
        bail!(
            "{}: {frames} samples but the manifest says {}",
            wav.display(),
            meta.samples
        );
    }
    let (samples, path) = if npy_p.exists() {
        (read_npy_samples(&npy_p, Some(meta.samples))?, npy_p)
    } else {
        (read_wav_samples(&wav)?, wav)
    };
    Ok(Some(Audio {
        sample_rate: meta.sample_rate,
        samples,
        path,
    }))
}

/// Reads `audio_cross.npy` of the run directory `dir` if present (validated like the audio).
pub fn read_audio_cross(dir: &Path, meta: Option<&AudioManifest>) -> Result<Option<Audio>> {
    let p = dir.join(AUDIO_CROSS_NPY);
    if !p.exists() {
        return Ok(None);
    }
    let Some(meta) = meta else {
        bail!(
            "{}: the run has {AUDIO_CROSS_NPY} but the manifest has no `audio` section",
            dir.join("manifest.json").display()
        );
    };
    let samples = read_npy_samples(&p, meta.cross_samples)?;
    Ok(Some(Audio {
        sample_rate: meta.sample_rate,
        samples,
        path: p,
    }))
}

impl Run {
    /// The run's audio, validated (rate, mono, length against the manifest, finite samples);
    /// `Ok(None)` for a run without audio. Errors name the file.
    pub fn audio(&self) -> Result<Option<Audio>> {
        read_audio(self.dir(), self.manifest().audio.as_ref())
    }

    /// `audio_cross.npy` (the candidate's tokens decoded with the reference's codec), if any.
    pub fn audio_cross(&self) -> Result<Option<Audio>> {
        read_audio_cross(self.dir(), self.manifest().audio.as_ref())
    }
}
