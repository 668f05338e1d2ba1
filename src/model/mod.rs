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
        let config = CsmConfig::from_file(&dir.join("config.json"))
            .with_context(|| format!("loading the model in {}", dir.display()))?;
        let weights = weights::load_csm(dir, &config)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if tok_path.is_file() {
            Some(PromptTokenizer::from_file(&tok_path)?)
        } else {
            None
        };
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
