//! Backend-neutral model code: config, safetensors weight index, prompt → frames, fixture.
pub mod config;
pub mod fixture;
pub mod llama;
pub mod lora;
pub mod mimi;
pub mod tokenizer;
pub mod weights;

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub use config::{CsmConfig, LlamaFlavor, RopeScaling};
pub use llama::{LlamaConfig, LlamaModel};
pub use lora::LoraAdapter;
pub use mimi::{MimiConfig, MimiModel};
pub use tokenizer::{Frames, PromptTokenizer};
pub use weights::{CsmWeights, DType, HostTensor, Layout};

/// A CSM model directory, validated: config + weights (original names) + optional tokenizer.
pub struct CsmModel {
    pub dir: PathBuf,
    pub config: CsmConfig,
    pub weights: CsmWeights,
    pub tokenizer: Option<PromptTokenizer>,
}

impl CsmModel {
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, None)
    }

    /// Loads `dir` with the tokenizer `tokenizer` (default: `dir/tokenizer.json` when present).
    /// The config and the tokenizer are read and checked before any weight is.
    pub fn load_with(dir: &Path, tokenizer: Option<&Path>) -> Result<Self> {
        let config = CsmConfig::from_file(&dir.join("config.json"))
            .with_context(|| format!("loading the model in {}", dir.display()))?;
        let tokenizer = load_tokenizer(dir, tokenizer)?;
        let weights = weights::load_csm(dir, &config)?;
        Ok(CsmModel {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
        })
    }

    /// The prompt frames of `text` spoken by `speaker`.
    pub fn prompt_frames(&self, speaker: u32, text: &str) -> Result<(Vec<u32>, Frames)> {
        let tok = self.tokenizer.as_ref().with_context(|| {
            format!(
                "{}: no tokenizer.json (needed for --text)",
                self.dir.display()
            )
        })?;
        let ids = tok.encode_segment(speaker, text)?;
        let frames = Frames::text(
            &ids,
            self.config.audio_num_codebooks,
            self.config.text_vocab_size,
        )?;
        Ok((ids, frames))
    }
}

/// The tokenizer of a model directory: `explicit` (`--tokenizer FILE`, which must exist), else
/// `dir/tokenizer.json` when present, else none.
pub fn load_tokenizer(dir: &Path, explicit: Option<&Path>) -> Result<Option<PromptTokenizer>> {
    match explicit {
        Some(p) => {
            if !p.is_file() {
                anyhow::bail!(
                    "--tokenizer {}: no such file (expected a Hugging Face tokenizer.json)",
                    p.display()
                );
            }
            Ok(Some(
                PromptTokenizer::from_file(p)
                    .with_context(|| format!("--tokenizer {}", p.display()))?,
            ))
        }
        None => {
            let p = dir.join("tokenizer.json");
            if p.is_file() {
                Ok(Some(PromptTokenizer::from_file(&p)?))
            } else {
                Ok(None)
            }
        }
    }
}

/// Fails fast, before any weight is read, when a text prompt needs a tokenizer that is not
/// there.
pub fn require_tokenizer(dir: &Path, explicit: Option<&Path>) -> Result<()> {
    if explicit.is_none() && !dir.join("tokenizer.json").is_file() {
        anyhow::bail!(
            "{}: no tokenizer.json, and a text prompt needs one; pass --tokenizer FILE (CSM-1B uses \
             the Llama-3.2 tokenizer.json, e.g. from meta-llama/Llama-3.2-1B)",
            dir.display()
        );
    }
    if let Some(p) = explicit {
        if !p.is_file() {
            anyhow::bail!(
                "--tokenizer {}: no such file (expected a Hugging Face tokenizer.json)",
                p.display()
            );
        }
    }
    Ok(())
}
