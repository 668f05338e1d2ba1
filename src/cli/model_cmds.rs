//! `fixture`, `verify`, `inspect`, `conform`.
use super::common::{print_json, BackendChoice, ModelArgs};
use crate::model::{fixture, Layout};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct FixtureArgs {
    /// Directory to write config.json, model.safetensors and tokenizer.json into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed of the deterministic weights (same seed → byte-identical files).
    #[arg(long, default_value_t = fixture::DEFAULT_SEED)]
    pub seed: u64,
    /// csm: the tiny CSM; llama: a tiny HF-layout Llama (config.json, model.safetensors,
    /// tokenizer.json) with a matching LoRA adapter in DIR/adapter/; csm-1b: random weights of
    /// the full CSM-1B shape (1.55 B parameters, original layout, no tokenizer and no codec —
    /// pass `--tokenizer` to use it), for measuring real-size speed and memory.
    #[arg(long, value_enum, default_value_t = FixtureKind::Csm)]
    pub kind: FixtureKind,
    /// Weight dtype of `--kind csm-1b`: bf16 (3.1 GB, the default) or f32 (6.2 GB). The tiny
    /// fixtures are always f32.
    #[arg(long, value_parser = super::common::parse_dtype)]
    pub dtype: Option<crate::model::DType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FixtureKind {
    Csm,
    Llama,
    #[value(name = "csm-1b")]
    Csm1b,
}

pub fn run_fixture(a: FixtureArgs) -> Result<i32> {
    if a.dtype.is_some() && a.kind != FixtureKind::Csm1b {
        anyhow::bail!("--dtype applies to --kind csm-1b only (the tiny fixtures are f32)");
    }
    let dtype = a.dtype.unwrap_or(crate::model::DType::BF16);
    // Only an earlier fixture (or nothing) is replaced: never a user's model.
    let stage =
        crate::outputs::StagedDir::begin(&a.out, crate::outputs::OutputKind::Fixture, "--out")?;
    match a.kind {
        FixtureKind::Csm => fixture::write_fixture(stage.path(), a.seed)?,
        FixtureKind::Llama => fixture::write_llama_fixture(stage.path(), a.seed)?,
        FixtureKind::Csm1b => fixture::write_csm_1b_fixture(stage.path(), a.seed, dtype)?,
    }
    stage.commit()?;
    super::common::print_out(&format!(
        "wrote the {} fixture (seed {}) to {}{}\n",
        match a.kind {
            FixtureKind::Csm => "tiny CSM".to_string(),
            FixtureKind::Llama => "tiny Llama".to_string(),
            FixtureKind::Csm1b => format!("random CSM-1B-shaped {}", dtype.name()),
        },
        a.seed,
        a.out.display(),
        if a.kind == FixtureKind::Llama {
            " (LoRA adapter in adapter/)"
        } else {
            ""
        }
    ))?;
    Ok(0)
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Audio frames to generate after the prompt.
    #[arg(long, default_value_t = 16, allow_negative_numbers = true)]
    pub frames: usize,
    /// Prompt text.
    #[arg(long, default_value = "Hello from csm-parity.")]
    pub text: String,
    #[arg(long, default_value_t = 0)]
    pub speaker: u32,
    /// Which backends (with one, only its cache parity is checked).
    #[arg(long, value_enum, default_value_t = BackendChoice::Both)]
    pub backend: BackendChoice,
    /// Largest |mlx − torch| logit allowed [default: 1e-4 for f32, 1e-1 for f16, 5e-1 for bf16].
    #[arg(long, value_parser = super::common::parse_tolerance, allow_negative_numbers = true)]
    pub atol: Option<f64>,
    /// Cache check, per (frame, codebook) row: max|cached − recomputed| ≤ cache-atol +
    /// cache-rtol·max|recomputed| (f32 rounding grows with the logits' magnitude and with the
    /// model's depth and width: at the full CSM-1B shape the two summation orders differ by
    /// 2.8e-6 of the row's largest logit; a broken cache moves logits by O(1)).
    #[arg(long, default_value = "1e-5", value_parser = super::common::parse_tolerance, allow_negative_numbers = true)]
    pub cache_atol: f64,
    #[arg(long, default_value = "1e-5", value_parser = super::common::parse_tolerance, allow_negative_numbers = true)]
    pub cache_rtol: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run_verify(a: VerifyArgs) -> Result<i32> {
    let model = a.model.load()?;
    let opts = crate::commands::verify::VerifyOptions {
        frames: a.frames,
        dtype: a.model.dtype,
        text: a.text,
        speaker: a.speaker,
        backends: a.backend.kinds()?,
        atol: a.atol.unwrap_or(match a.model.dtype {
            crate::model::DType::F32 => 1e-4,
            crate::model::DType::F16 => 1e-1,
            crate::model::DType::BF16 => 5e-1,
        }),
        cache_atol: a.cache_atol,
        cache_rtol: a.cache_rtol,
    };
    let report = crate::commands::verify::verify(&crate::model::Model::Csm(model), &opts)?;
    if a.json {
        print_json(&report)?;
    } else {
        super::common::print_out(&report.render())?;
    }
    Ok(if report.passed { 0 } else { 1 })
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Model directory (config.json + model.safetensors or shards).
    pub model: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run_inspect(a: InspectArgs) -> Result<i32> {
    let ins = crate::commands::inspect::inspect(&a.model)?;
    if a.json {
        print_json(&ins)?;
    } else {
        super::common::print_out(&ins.render())?;
    }
    Ok(if ins.ok { 0 } else { 1 })
}

#[derive(Debug, Args)]
pub struct ConformArgs {
    /// Conformance case directory: a CSM case (prompt_ids.npy, frames.npy, c0_logits.npy,
    /// depth_logits.npy, original/ and/or hf/) or a Mimi codec case (config.json with
    /// model_type "mimi", model.safetensors, codes.npy, audio.npy, wave.npy, latents.npy,
    /// wave_codes.npy; see docs/codec.md).
    pub case: PathBuf,
    #[arg(long, value_enum, default_value_t = BackendChoice::Both)]
    pub backend: BackendChoice,
    /// Only this layout's model folder (default: every one present).
    #[arg(long, value_parser = parse_layout)]
    pub layout: Option<Layout>,
    /// Largest |ours − reference| logit allowed (CSM cases; a Mimi case uses audio 1e-5,
    /// latents 1e-5 × their scale, codes exact).
    #[arg(long, default_value = "1e-4", value_parser = super::common::parse_tolerance, allow_negative_numbers = true)]
    pub atol: f64,
    #[arg(long)]
    pub json: bool,
}

fn parse_layout(s: &str) -> Result<Layout, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

pub fn run_conform(a: ConformArgs) -> Result<i32> {
    if crate::commands::conform_mimi::is_mimi_case(&a.case) {
        if a.layout.is_some() {
            anyhow::bail!(
                "--layout applies to CSM cases; {} is a Mimi codec case",
                a.case.display()
            );
        }
        let report = crate::commands::conform_mimi::conform_mimi(&a.case, &a.backend.kinds()?)?;
        if a.json {
            print_json(&report)?;
        } else {
            super::common::print_out(&report.render())?;
        }
        return Ok(if report.conforms { 0 } else { 1 });
    }
    let layouts = a.layout.map(|l| vec![l]);
    let report = crate::commands::conform::conform(
        &a.case,
        &a.backend.kinds()?,
        layouts.as_deref(),
        a.atol,
    )?;
    if a.json {
        print_json(&report)?;
    } else {
        super::common::print_out(&report.render())?;
    }
    Ok(if report.conforms { 0 } else { 1 })
}

#[derive(Debug, Args)]
pub struct SelftestArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Model architecture: auto (from config.json), csm, llama (frames are tokens).
    #[arg(long, value_enum, default_value_t = super::common::ModelKindChoice::Auto)]
    pub model_kind: super::common::ModelKindChoice,
    /// Llama: a LoRA adapter directory applied in both pipelines.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Frames per case (enough for rare events such as a sampled token in 1..31).
    #[arg(long, default_value_t = 48, allow_negative_numbers = true)]
    pub max_frames: usize,
    #[arg(long, default_value_t = 42, allow_negative_numbers = true)]
    pub seed: u64,
    #[arg(long, default_value = "0.9", value_parser = crate::sampling::parse_temperature, allow_negative_numbers = true)]
    pub temp: f64,
    /// Odd k puts the k-th value inside a pair of tied logits more often (topk-exact).
    #[arg(long = "top-k", default_value = "5", value_parser = crate::sampling::parse_top_k, allow_negative_numbers = true)]
    pub top_k: usize,
    #[arg(long, default_value = "hi")]
    pub text: String,
    /// Only these faults (default: all).
    #[arg(long = "fault", value_name = "FAULT")]
    pub faults: Vec<crate::faults::Fault>,
    /// Where each case's runs and report are kept.
    #[arg(long, default_value = "runs/selftest")]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run_selftest(a: SelftestArgs) -> Result<i32> {
    let loaded = a.model.load_any(a.model_kind, a.adapter.as_deref())?;
    let model = &loaded;
    // The full run (no --fault) also proves the audio stage with the codec faults.
    let codec = a.faults.is_empty();
    let faults = if a.faults.is_empty() {
        crate::commands::selftest::applicable_faults(model)
    } else {
        a.faults
    };
    crate::outputs::claim_dir(&a.out, crate::outputs::OutputKind::Selftest, "--out")?;
    let o = crate::commands::selftest::SelftestOptions {
        max_frames: a.max_frames,
        seed: a.seed,
        temperature: a.temp,
        top_k: a.top_k,
        text: a.text,
        faults,
        out: a.out,
        codec,
    };
    let report = crate::commands::selftest::selftest(model, &o)?;
    if a.json {
        print_json(&report)?;
    } else {
        super::common::print_out(&report.render())?;
    }
    Ok(if report.all_pass { 0 } else { 1 })
}
