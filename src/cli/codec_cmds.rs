//! `encode` (24 kHz mono WAV → Mimi codes .npy) and `decode` (codes .npy → WAV) with one
//! backend's codec (docs/codec.md, "encode and decode").
use super::common::{print_json, print_out};
use crate::backend::BackendKind;
use crate::commands::codec::{decode, encode, DecodeOptions, EncodeOptions};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

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

pub fn run_encode(a: EncodeArgs) -> Result<i32> {
    let s = encode(&EncodeOptions {
        backend: a.codec.backend.kind()?,
        input: a.input,
        out: a.out,
        latents: a.latents,
        codec: a.codec.codec,
        force: a.codec.force,
    })?;
    if a.codec.json {
        print_json(&s)?;
    } else {
        print_out(&format!(
            "encoded {} ({:.2} s) with {} ({}) into {} frames × {} codebooks: {}\n",
            s.input, s.seconds, s.codec, s.backend, s.frames, s.codebooks, s.out
        ))?;
    }
    Ok(0)
}

pub fn run_decode(a: DecodeArgs) -> Result<i32> {
    let s = decode(&DecodeOptions {
        backend: a.codec.backend.kind()?,
        input: a.input,
        out: a.out,
        chunk: a.chunk,
        codec: a.codec.codec,
        force: a.codec.force,
    })?;
    if a.codec.json {
        print_json(&s)?;
    } else {
        let invalid = s.invalid_codes.unwrap_or(0);
        print_out(&format!(
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
