//! `encode` (24 kHz mono WAV → Mimi codes .npy) and `decode` (codes .npy → WAV) with one
//! library's codec (docs/codec.md, "encode and decode").
use crate::backend::{load_codec, BackendKind, Codec};
use crate::model::mimi::{MimiConfig, MimiModel};
use crate::model::{fixture, DType};
use crate::npy::{Dtype, StreamingNpy};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What `encode` is asked.
pub struct EncodeOptions {
    pub input: PathBuf,
    pub out: PathBuf,
    pub latents: Option<PathBuf>,
    /// `--codec` (default: the bundled fixture's codec).
    pub codec: Option<PathBuf>,
    pub backend: BackendKind,
    pub force: bool,
}

/// What `decode` is asked.
pub struct DecodeOptions {
    pub input: PathBuf,
    pub out: PathBuf,
    /// Frames per streamed chunk (0: the whole sequence at once).
    pub chunk: usize,
    pub codec: Option<PathBuf>,
    pub backend: BackendKind,
    pub force: bool,
}

/// What `encode` or `decode` did.
#[derive(Debug, Serialize)]
pub struct CodecSummary {
    pub command: &'static str,
    pub input: String,
    pub out: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latents: Option<String>,
    pub codec: String,
    pub backend: String,
    pub frames: usize,
    pub codebooks: usize,
    pub samples: usize,
    pub seconds: f64,
    pub sample_rate: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid_codes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_frames: Option<usize>,
}

/// Resolves `--codec` (a Mimi directory, a transformers CSM checkpoint, or a CSM model
/// directory with `codec/`) and loads it, every error naming the directory.
fn load_mimi(codec: Option<&Path>) -> Result<MimiModel> {
    let dir = match codec {
        Some(d) => {
            if !d.is_dir() {
                bail!(
                    "--codec {}: not a directory (expected a Mimi codec: config.json with model_type \"mimi\" + model.safetensors, or a CSM checkpoint that brings one)",
                    d.display()
                );
            }
            if d.join("config.json").is_file()
                && !d
                    .join(crate::model::mimi::CODEC_SUBDIR)
                    .join("config.json")
                    .is_file()
            {
                d.to_path_buf()
            } else {
                MimiModel::codec_dir_of(d).with_context(|| {
                    format!(
                        "--codec {}: no config.json and no codec/ folder (expected a Mimi codec directory, e.g. kyutai/mimi)",
                        d.display()
                    )
                })?
            }
        }
        None => MimiModel::codec_dir_of(&fixture::ensure_default_fixture()?)
            .context("the bundled fixture has no codec/ folder")?,
    };
    MimiModel::load(&dir)
}

/// Refuses an output path that is a directory, whose parent is missing, or that exists
/// (unless `force`): the tool cannot tell its own files from a user's.
fn check_out(path: &Path, flag: &str, force: bool) -> Result<()> {
    if path.is_dir() {
        bail!(
            "{flag} {}: is a directory (expected a file path)",
            path.display()
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "{flag} {}: directory {} does not exist",
                path.display(),
                dir.display()
            );
        }
    }
    if !force && std::fs::symlink_metadata(path).is_ok() {
        bail!(
            "{flag} {}: exists; refusing to overwrite it (pass --force to replace it)",
            path.display()
        );
    }
    Ok(())
}

/// Reads a mono WAV at the codec's rate, samples as f32 in [-1, 1].
pub fn read_wav(path: &Path, cfg: &MimiConfig, codec_dir: &Path) -> Result<Vec<f32>> {
    let r = hound::WavReader::open(path)
        .with_context(|| format!("{}: not a readable WAV file", path.display()))?;
    let spec = r.spec();
    let expected = format!(
        "the codec ({}) takes mono audio at {} Hz",
        codec_dir.join("config.json").display(),
        cfg.sampling_rate
    );
    if spec.channels != 1 {
        bail!(
            "{}: {} channels; {expected} (mix it down first, e.g. `sox IN.wav -c 1 OUT.wav`)",
            path.display(),
            spec.channels
        );
    }
    if spec.sample_rate as usize != cfg.sampling_rate {
        bail!(
            "{}: sample rate {} Hz; {expected} (resample it first, e.g. `sox IN.wav -r {} OUT.wav`)",
            path.display(),
            spec.sample_rate,
            cfg.sampling_rate
        );
    }
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r
            .into_samples::<f32>()
            .collect::<std::result::Result<_, _>>()
            .with_context(|| format!("{}: cannot read the samples", path.display()))?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            r.into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<std::result::Result<_, _>>()
                .with_context(|| format!("{}: cannot read the samples", path.display()))?
        }
    };
    if samples.is_empty() {
        bail!("{}: no samples (an empty WAV file)", path.display());
    }
    if let Some(i) = samples.iter().position(|x| !x.is_finite()) {
        bail!("{}: sample {i} is not finite", path.display());
    }
    Ok(samples)
}

/// `encode`: a WAV file into codes (and latents) with one library's codec.
pub fn encode(a: &EncodeOptions) -> Result<CodecSummary> {
    let kind = a.backend;
    check_out(&a.out, "--out", a.force)?;
    if let Some(l) = &a.latents {
        check_out(l, "--latents", a.force)?;
        if l == &a.out {
            bail!("--latents {}: the same file as --out", l.display());
        }
    }
    if a.input.is_dir() || !a.input.exists() {
        bail!("{}: no such WAV file", a.input.display());
    }
    let mimi = load_mimi(a.codec.as_deref())?;
    let cfg = mimi.config.clone();
    let wave = read_wav(&a.input, &cfg, &mimi.dir)?;
    let mut codec = load_codec(kind, &mimi, DType::F32)?;
    let enc = codec.encode(&wave)?;
    let frames = enc.codes.len();
    let c = cfg.num_quantizers;
    if let Some(l) = &a.latents {
        let mut w = StreamingNpy::create_atomic(l, Dtype::F32, &[cfg.hidden_size])?;
        for row in enc.latents.chunks(cfg.hidden_size) {
            w.push_f32(row)?;
        }
        w.finish()?;
    }
    let mut w = StreamingNpy::create_atomic(&a.out, Dtype::I32, &[c])?;
    for row in &enc.codes {
        w.push_i32(row)?;
    }
    w.finish()?;
    Ok(CodecSummary {
        command: "encode",
        input: a.input.display().to_string(),
        out: a.out.display().to_string(),
        latents: a.latents.as_ref().map(|l| l.display().to_string()),
        codec: mimi.dir.display().to_string(),
        backend: kind.name().into(),
        frames,
        codebooks: c,
        samples: wave.len(),
        seconds: wave.len() as f64 / cfg.sampling_rate as f64,
        sample_rate: cfg.sampling_rate,
        invalid_codes: None,
        chunk_frames: None,
    })
}

/// Reads codes [F, C] from an integer .npy, checked against the codec.
fn read_codes(path: &Path, cfg: &MimiConfig, codec_dir: &Path) -> Result<Vec<Vec<i32>>> {
    if path.is_dir() || !path.exists() {
        bail!("{}: no such .npy file", path.display());
    }
    let (array, dtype) = crate::npy::read_array::<f64>(path)?;
    let (shape, integer) = (array.shape().to_vec(), dtype.is_integer());
    let values: Vec<f64> = array.iter().copied().collect();
    let [f, c] = shape[..] else {
        bail!(
            "{}: shape {shape:?}; expected codes [frames, codebooks] (2 dimensions)",
            path.display()
        );
    };
    if !integer {
        bail!(
            "{}: float values; expected integer codes (int32 or int64)",
            path.display()
        );
    }
    if c < cfg.num_semantic_quantizers + 1 || c > cfg.num_quantizers {
        bail!(
            "{}: {c} codebooks per frame; the codec ({}) decodes {}..={}",
            path.display(),
            codec_dir.join("config.json").display(),
            cfg.num_semantic_quantizers + 1,
            cfg.num_quantizers
        );
    }
    if f == 0 {
        bail!("{}: no frames (shape {shape:?})", path.display());
    }
    if let Some(v) = values.iter().find(|v| v.abs() > i32::MAX as f64) {
        bail!("{}: code {v} is out of the int32 range", path.display());
    }
    Ok(values
        .chunks(c)
        .map(|r| r.iter().map(|&x| x as i32).collect())
        .collect())
}

/// `decode`: codes into a WAV file with one library's codec, streamed `chunk` frames at a time.
pub fn decode(a: &DecodeOptions) -> Result<CodecSummary> {
    let kind = a.backend;
    check_out(&a.out, "--out", a.force)?;
    let mimi = load_mimi(a.codec.as_deref())?;
    let cfg = mimi.config.clone();
    let codes = read_codes(&a.input, &cfg, &mimi.dir)?;
    let mut codec = load_codec(kind, &mimi, DType::F32)?;
    let rate = cfg.sampling_rate as u32;
    let (samples, invalid) = decode_to_wav(codec.as_mut(), &codes, a.chunk, &a.out, rate)?;
    Ok(CodecSummary {
        command: "decode",
        input: a.input.display().to_string(),
        out: a.out.display().to_string(),
        latents: None,
        codec: mimi.dir.display().to_string(),
        backend: kind.name().into(),
        frames: codes.len(),
        codebooks: codes[0].len(),
        samples,
        seconds: samples as f64 / cfg.sampling_rate as f64,
        sample_rate: cfg.sampling_rate,
        invalid_codes: Some(invalid),
        chunk_frames: Some(a.chunk),
    })
}

/// Decodes `codes` into the WAV file `out` (temp + rename): streamed `chunk` frames at a time
/// (0: the whole sequence at once), each chunk's samples written as they come. Returns
/// (samples, codes outside the codebooks).
fn decode_to_wav(
    codec: &mut dyn Codec,
    codes: &[Vec<i32>],
    chunk: usize,
    out: &Path,
    rate: u32,
) -> Result<(usize, usize)> {
    let tmp = crate::util::temp_sibling(out);
    let res = (|| -> Result<(usize, usize)> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("--out {}: cannot create a temp file", out.display()))?;
        let mut w = hound::WavWriter::new(std::io::BufWriter::with_capacity(1 << 16, f), spec)?;
        let (mut samples, mut invalid) = (0, 0);
        let mut put = |d: crate::backend::codec::Decoded| -> Result<()> {
            if let Some(i) = d.audio.iter().position(|x| !x.is_finite()) {
                bail!("the codec produced a non-finite sample ({})", samples + i);
            }
            for &x in &d.audio {
                w.write_sample(x)?;
            }
            samples += d.audio.len();
            invalid += d.invalid_codes;
            Ok(())
        };
        if chunk == 0 {
            put(codec.decode(codes)?)?;
        } else {
            codec.stream_reset();
            for part in codes.chunks(chunk) {
                put(codec.decode_stream(part)?)?;
            }
        }
        w.finalize()?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, out)?;
        Ok((samples, invalid))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("--out {}", out.display()))
}
