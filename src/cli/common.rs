//! Arguments and helpers shared by several commands.
use crate::backend::BackendKind;
use crate::model::{fixture, CsmModel, DType, LlamaModel, Model};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    Both,
    Mlx,
    Torch,
}

impl BackendChoice {
    /// The backends to run, reference (torch) first; errors when one is not compiled in.
    pub fn kinds(self) -> Result<Vec<BackendKind>> {
        let want = match self {
            BackendChoice::Both => vec![BackendKind::Torch, BackendKind::Mlx],
            BackendChoice::Mlx => vec![BackendKind::Mlx],
            BackendChoice::Torch => vec![BackendKind::Torch],
        };
        let have = BackendKind::available();
        for k in &want {
            if !have.contains(k) {
                bail!("--backend {}: this build lacks the `{}` feature (rebuild with default features)", k.name(), k.name());
            }
        }
        Ok(want)
    }
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json). Default: the bundled
    /// tiny fixture, made on first use in `tiny-csm/` under $CSM_PARITY_FIXTURES, else the
    /// `fixtures/` of the csm-parity checkout around the current directory, else
    /// ~/.local/share/csm-parity/fixtures (docs/model.md).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The tokenizer.json to use (default: MODEL/tokenizer.json). CSM-1B's original release
    /// ships none: it uses Llama-3.2's tokenizer.json.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Compute dtype of both backends.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: DType,
}

pub(crate) fn parse_dtype(s: &str) -> Result<DType, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

impl ModelArgs {
    pub fn dir(&self) -> Result<PathBuf> {
        match &self.model {
            Some(d) => {
                if !d.is_dir() {
                    bail!("--model {}: not a directory", d.display());
                }
                Ok(d.clone())
            }
            None => fixture::ensure_default_fixture(),
        }
    }
    /// Loads a CSM model for a text prompt: config and tokenizer are checked before any
    /// weight is read.
    pub fn load(&self) -> Result<CsmModel> {
        let dir = self.dir()?;
        crate::model::require_tokenizer(&dir, self.tokenizer.as_deref())?;
        CsmModel::load_with(&dir, self.tokenizer.as_deref())
    }
}

/// `--model-kind`: which architecture the model directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelKindChoice {
    /// `llama` when config.json says `model_type: llama`, else `csm`.
    Auto,
    Csm,
    Llama,
}

impl ModelArgs {
    /// Loads the model as `kind` (detected from config.json with `auto`); `adapter` (a LoRA
    /// directory) applies to Llama models only. Without `--model`, the bundled tiny fixture of
    /// that kind.
    pub fn load_any(
        &self,
        kind: ModelKindChoice,
        adapter: Option<&std::path::Path>,
    ) -> Result<Model> {
        let dir = match (&self.model, kind) {
            (None, ModelKindChoice::Llama) => fixture::ensure_llama_fixture()?,
            _ => self.dir()?,
        };
        let is_llama = match kind {
            ModelKindChoice::Auto => crate::model::llama::is_llama_dir(&dir),
            ModelKindChoice::Csm => false,
            ModelKindChoice::Llama => true,
        };
        if is_llama {
            if let Some(a) = adapter {
                if !a.is_dir() {
                    bail!("--adapter {}: not a directory", a.display());
                }
            }
            crate::model::require_tokenizer(&dir, self.tokenizer.as_deref())?;
            Ok(Model::Llama(LlamaModel::load_with(
                &dir,
                adapter,
                self.tokenizer.as_deref(),
            )?))
        } else {
            if adapter.is_some() {
                bail!("--adapter applies to Llama models only ({} is a CSM model; pass --model-kind llama if it is not)", dir.display());
            }
            crate::model::require_tokenizer(&dir, self.tokenizer.as_deref())?;
            Ok(Model::Csm(CsmModel::load_with(
                &dir,
                self.tokenizer.as_deref(),
            )?))
        }
    }
}

/// Prints `value` as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    print_out(&s)
}

/// Writes `text` to standard output. A write error (a full disk, a closed pipe) is an error,
/// never a panic; `main` ends quietly on a closed pipe, as command-line tools do.
pub fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| anyhow::Error::new(e).context("cannot write to standard output"))
}

/// True when `err` is a closed pipe on standard output (`csm-parity diff r | head`).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A tolerance flag's value: a finite number ≥ 0 (NaN, ∞ and negatives are refused here, so no
/// check can pass by comparing with NaN).
pub fn parse_tolerance(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number (expected a finite number ≥ 0)"))?;
    if !(x.is_finite() && x >= 0.0) {
        return Err(format!("{s}: expected a finite number ≥ 0"));
    }
    Ok(x)
}

/// [`parse_tolerance`] as f32.
pub fn parse_tolerance_f32(s: &str) -> Result<f32, String> {
    let x = parse_tolerance(s)?;
    if x > f32::MAX as f64 {
        return Err(format!("{s}: too large"));
    }
    Ok(x as f32)
}
