//! `csm-parity rescore`: the reference's logits and probs on the tokens another run fed its
//! model (docs/outside-ports.md).
use super::common::{print_json, ModelArgs, ModelKindChoice};
use crate::backend::BackendKind;
use crate::capture::{Run, Storage};
use crate::commands::capture::load_backends;
use crate::commands::rescore::{model_dir_of, rescore, RescoreOptions};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct RescoreArgs {
    /// The run to re-score (a run directory written by capture, by the Python helper, or by
    /// any program that follows docs/run-format.md).
    pub run: PathBuf,
    /// Model directory. Default: the run's `model.path` when it is a directory, else the
    /// bundled tiny fixture of the run's `model.kind`.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Llama: an MLX-LM LoRA adapter directory.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// The pipeline that re-scores (the reference).
    #[arg(long, value_enum, default_value_t = BackendKind::Torch)]
    pub backend: BackendKind,
    /// Compute dtype of the re-scoring pipeline.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: crate::model::DType,
    /// How logits are recorded: f32 | f16 | top:N | none.
    #[arg(long, default_value = "f32")]
    pub logits: Storage,
    /// How sampler probabilities are recorded: f32 | f16 | top:N | none.
    #[arg(long, default_value = "f32")]
    pub probs: Storage,
    /// The run directory to write (must not exist or be empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_dtype(s: &str) -> Result<crate::model::DType, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

pub fn run(a: RescoreArgs) -> Result<i32> {
    let run = Run::open(&a.run).with_context(|| format!("RUN {}", a.run.display()))?;
    if a.out.exists()
        && std::fs::read_dir(&a.out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "--out {}: exists and is not empty; choose another output (rescore never overwrites)",
            a.out.display()
        );
    }
    let kind = match run.manifest().model.kind.as_str() {
        "llama" => ModelKindChoice::Llama,
        _ => ModelKindChoice::Csm,
    };
    let model_args = ModelArgs {
        model: a.model.clone().or_else(|| model_dir_of(&run)),
        tokenizer: None,
        dtype: a.dtype,
    };
    let loaded = model_args.load_any(kind, a.adapter.as_deref())?;
    let model = &loaded;
    crate::commands::rescore::check_compatible(model, &run)?;
    let mut backends = load_backends(model, &[a.backend], a.dtype)?;
    let lb = &mut backends[0];
    let opts = RescoreOptions {
        out: a.out.clone(),
        logits: a.logits,
        probs: a.probs,
    };
    let summary = rescore(model, &run, lb.backend.as_mut(), lb.load_ms, &opts)?;
    if a.json {
        print_json(&summary)?;
    } else {
        super::common::print_out(&summary.render())?;
    }
    Ok(0)
}
