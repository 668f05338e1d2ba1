//! `csm-parity capture`.
use super::common::{print_json, BackendChoice, ModelArgs, ModelKindChoice};
use crate::backend::BackendKind;
use crate::capture::Storage;
use crate::commands::capture::{capture, CaptureOptions, Mode};
use crate::model::Step;
use crate::sampling::{parse_temperature, parse_top_k, NoiseMode, PostProcess, SamplerSpec};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Text to speak (CSM) or the prompt (Llama).
    #[arg(long)]
    pub text: String,
    /// Model architecture: auto (llama when config.json says model_type "llama"), csm, llama.
    #[arg(long, value_enum, default_value_t = ModelKindChoice::Auto)]
    pub model_kind: ModelKindChoice,
    /// Llama: an MLX-LM LoRA adapter directory (adapter_config.json + adapters.safetensors).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Llama: wrap the prompt in the Llama-3 chat format (user turn + assistant header).
    #[arg(long)]
    pub chat: bool,
    /// Speaker id (the prompt is "[{speaker}]{text}").
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub speaker: u32,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, default_value_t = BackendChoice::Both)]
    pub backend: BackendChoice,
    /// The reference pipeline (the other one is the port under test).
    #[arg(long, value_enum, default_value_t = BackendKind::Torch)]
    pub reference: BackendKind,
    #[arg(long, default_value_t = 42, allow_negative_numbers = true)]
    pub seed: u64,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value = "0.9", value_parser = parse_temperature, allow_negative_numbers = true)]
    pub temp: f64,
    /// Keep the k most likely tokens (ties at the k-th value kept); 0 or ≥ vocab keeps all.
    #[arg(long = "top-k", default_value = "50", value_parser = parse_top_k, allow_negative_numbers = true)]
    pub top_k: usize,
    /// CSM: frames to generate at most (12.5 frames = 1 s of audio; default 32); an all-zero
    /// frame stops earlier.
    #[arg(long, allow_negative_numbers = true)]
    pub max_frames: Option<usize>,
    /// Llama: tokens to generate at most (default 64); an EOS id stops earlier.
    #[arg(long, allow_negative_numbers = true)]
    pub max_tokens: Option<usize>,
    /// mlx-lm's nucleus filter on the temperature-1 distribution (0 or 1 = off).
    #[arg(long = "top-p", default_value_t = 0.0, allow_negative_numbers = true)]
    pub top_p: f64,
    /// mlx-lm's min-p filter: keep p ≥ min_p · p_max (0 = off).
    #[arg(long = "min-p", default_value_t = 0.0, allow_negative_numbers = true)]
    pub min_p: f64,
    /// Noise of the sampler: shared (harness-owned uniforms, identical in both) or native (each RNG).
    #[arg(long, value_enum, default_value_t = NoiseMode::Shared)]
    pub noise: NoiseMode,
    #[arg(long, value_enum, default_value_t = Mode::Independent)]
    pub mode: Mode,
    /// Post-processing of the pipeline under test: none | remap-low:<lo>-<hi>.
    #[arg(long, default_value = "none")]
    pub post: PostProcess,
    /// How logits are recorded: f32 | f16 | top:N | none.
    #[arg(long, default_value = "f32")]
    pub logits: Storage,
    /// How sampler probabilities are recorded: f32 | f16 | top:N | none.
    #[arg(long, default_value = "f32")]
    pub probs: Storage,
    /// Output directory: DIR/torch/ and DIR/mlx/ are the run directories.
    #[arg(long, default_value = "runs/capture")]
    pub out: PathBuf,
    /// Inject a known MLX-port bug into the MLX pipeline (see `csm-parity selftest`).
    #[arg(long, value_name = "FAULT")]
    pub inject: Option<crate::faults::Fault>,
    /// CSM: skip decoding the frames into audio (audio.wav / audio.npy in each run).
    #[arg(long, conflicts_with = "codec")]
    pub no_audio: bool,
    /// CSM: the Mimi codec to decode with (a kyutai/mimi directory or a transformers CSM
    /// checkpoint); default: the one the model brings (MODEL/codec/ or codec_model.*).
    #[arg(long, value_name = "DIR")]
    pub codec: Option<PathBuf>,
    /// CSM: inject a known codec porting bug into the MLX pipeline's codec (see `selftest`).
    #[arg(long, value_name = "FAULT", value_enum)]
    pub inject_codec: Option<crate::backend::codec::CodecFault>,
    /// Replace existing runs in --out (only runs written by csm-parity, and only once the new
    /// runs are complete); without it an existing run is refused.
    #[arg(long)]
    pub force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: CaptureArgs) -> Result<i32> {
    // Flags first: a bad value is reported before any weight is read.
    let sampler =
        SamplerSpec::new(a.temp, a.top_k, a.noise, a.seed)?.with_filters(a.top_p, a.min_p)?;
    let mut backends = a.backend.kinds()?;
    let t0 = std::time::Instant::now();
    let model = a.model.load_any(a.model_kind, a.adapter.as_deref())?;
    let model_load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let frames = model.step() == Step::FRAME;
    let max_frames = match (frames, a.max_frames, a.max_tokens) {
        (true, _, Some(_)) => {
            bail!("--max-tokens applies to Llama models; use --max-frames for CSM")
        }
        (false, Some(_), _) => {
            bail!("--max-frames applies to CSM; use --max-tokens for a Llama model")
        }
        (true, f, None) => f.unwrap_or(32),
        (false, None, t) => t.unwrap_or(64),
    };
    backends.sort_by_key(|k| *k != a.reference);
    let opts = CaptureOptions {
        text: a.text,
        speaker: a.speaker,
        chat: a.chat,
        backends,
        reference: a.reference,
        sampler,
        max_frames,
        mode: a.mode,
        post: a.post,
        dtype: a.model.dtype,
        logits: a.logits,
        probs: a.probs,
        out: a.out,
        progress: !a.json,
        inject: a.inject,
        force: a.force,
        codec_fault: a.inject_codec,
        audio: match (a.no_audio, a.codec) {
            (true, _) => crate::commands::capture::AudioSetting::Off,
            (false, Some(d)) => crate::commands::capture::AudioSetting::Codec(d),
            (false, None) => crate::commands::capture::AudioSetting::Auto,
        },
    };
    let mut notes = Vec::new();
    for &kind in &opts.backends {
        if let Some(note) = crate::backend::dtype_speed_note(kind, opts.dtype)? {
            eprintln!("note: {note}");
            notes.push(note);
        }
    }
    let mut summary = capture(&model, &opts)?;
    summary.model_load_ms = Some(model_load_ms);
    summary.peak_rss_bytes = crate::util::peak_rss_bytes();
    summary.notes = notes;
    if a.json {
        print_json(&summary)?;
    } else {
        super::common::print_out(&summary.render())?;
    }
    Ok(0)
}
