//! `encode` (24 kHz mono WAV → Mimi codes .npy) and `decode` (codes .npy → WAV) with one
//! backend's codec (docs/codec.md, "encode and decode").
use super::common::print_json;
use crate::backend::BackendKind;
use crate::backend::{load_codec, Codec};
use crate::model::mimi::{MimiConfig, MimiModel};
use crate::model::{fixture, DType};
use crate::npy::{Dtype, StreamingNpy};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One library's codec (encode and decode run one backend at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CodecBackend {
    Torch,
    Mlx,
}

impl CodecBackend {
    fn kind(self) -> Result<BackendKind> {
        let k = match self {
            CodecBackend::Torch => BackendKind::Torch,
            CodecBackend::Mlx => BackendKind::Mlx,
        };
        if !BackendKind::available().contains(&k) {
            bail!(
                "--backend {}: this build lacks the `{}` feature (rebuild with default features)",
                k.name(),
                k.name()
            );
        }
        Ok(k)
    }
}

#[derive(Debug, Clone, Args)]
pub struct CodecArgs {
    /// The Mimi codec: a kyutai/mimi directory (config.json with model_type "mimi" +
    /// model.safetensors), a transformers CSM checkpoint (its codec_model.* tensors), or a CSM
    /// model directory with a codec/ folder. Default: the bundled tiny fixture's codec.
    #[arg(long, value_name = "DIR")]
    pub codec: Option<PathBuf>,
    /// The library whose codec runs.
    #[arg(long, value_enum, default_value_t = CodecBackend::Torch)]
    pub backend: CodecBackend,
    /// Replace an existing output file (without it, an existing file is never overwritten).
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary instead of the text line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// The waveform: a mono WAV file at the codec's sampling rate (24 kHz for Mimi); 16/24/32-bit
    /// integer or 32-bit float samples.
    #[arg(value_name = "IN.wav")]
    pub input: PathBuf,
    /// Output .npy: int32 codes [frames, codebooks], one row per 80 ms frame, codebook 0
    /// (semantic) first — the layout `decode` and CSM's frames use.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write the encoder's latents (before quantization) as f32 [frames, hidden] .npy.
    #[arg(long, value_name = "FILE")]
    pub latents: Option<PathBuf>,
    #[command(flatten)]
    pub codec: CodecArgs,
}

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Codes .npy: integers [frames, codebooks] (as `encode` writes them; int32 or int64,
    /// C or Fortran order), codebook 0 first; fewer codebooks than the codec has are decoded
    /// with the first ones only.
    #[arg(value_name = "CODES.npy")]
    pub input: PathBuf,
    /// Output WAV file: mono 32-bit float at the codec's sampling rate.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Frames per streamed chunk: the codes go through the codec's streaming decoder this many
    /// at a time (the state carries over, the audio is the same as one whole-sequence decode);
    /// 0 decodes the whole sequence at once.
    #[arg(long, default_value_t = 25, value_name = "FRAMES")]
    pub chunk: usize,
    #[command(flatten)]
    pub codec: CodecArgs,
}

#[derive(Debug, Serialize)]
struct Summary {
    command: &'static str,
    input: String,
    out: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    latents: Option<String>,
    codec: String,
    backend: String,
    frames: usize,
    codebooks: usize,
    samples: usize,
    seconds: f64,
    sample_rate: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    invalid_codes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk_frames: Option<usize>,
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

pub fn run_encode(a: EncodeArgs) -> Result<i32> {
    let kind = a.codec.backend.kind()?;
    check_out(&a.out, "--out", a.codec.force)?;
    if let Some(l) = &a.latents {
        check_out(l, "--latents", a.codec.force)?;
        if l == &a.out {
            bail!("--latents {}: the same file as --out", l.display());
        }
    }
    if a.input.is_dir() || !a.input.exists() {
        bail!("{}: no such WAV file", a.input.display());
    }
    let mimi = load_mimi(a.codec.codec.as_deref())?;
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
    let s = Summary {
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
    };
    if a.codec.json {
        print_json(&s)?;
    } else {
        super::common::print_out(&format!(
            "encoded {} ({:.2} s) with {} ({}) into {} frames × {} codebooks: {}\n",
            s.input, s.seconds, s.codec, s.backend, frames, c, s.out
        ))?;
    }
    Ok(0)
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

pub fn run_decode(a: DecodeArgs) -> Result<i32> {
    let kind = a.codec.backend.kind()?;
    check_out(&a.out, "--out", a.codec.force)?;
    let mimi = load_mimi(a.codec.codec.as_deref())?;
    let cfg = mimi.config.clone();
    let codes = read_codes(&a.input, &cfg, &mimi.dir)?;
    let mut codec = load_codec(kind, &mimi, DType::F32)?;
    let rate = cfg.sampling_rate as u32;
    let (samples, invalid) = decode_to_wav(codec.as_mut(), &codes, a.chunk, &a.out, rate)?;
    let s = Summary {
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
    };
    if a.codec.json {
        print_json(&s)?;
    } else {
        super::common::print_out(&format!(
            "decoded {} ({} frames × {} codebooks) with {} ({}) into {:.2} s of audio: {}{}\n",
            s.input,
            s.frames,
            s.codebooks,
            s.codec,
            s.backend,
            s.seconds,
            s.out,
            if invalid > 0 {
                format!(" ({invalid} codes outside the codebooks were decoded as code 0)")
            } else {
                String::new()
            }
        ))?;
    }
    Ok(0)
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
