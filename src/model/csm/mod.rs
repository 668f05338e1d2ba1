//! Sesame's CSM: a Llama backbone over text + audio-codebook frames and a small depth decoder
//! that emits the codebooks of one frame (DESIGN §1).
pub mod config;
pub mod weights;

pub use config::{expected_tensors, CsmConfig};
pub use weights::{CsmWeights, Layout};

use crate::model::tensor::Frames;
use crate::model::tokenizer::PromptTokenizer;
use crate::model::{load_tokenizer, Family, Open, Step};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

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

impl Family for CsmModel {
    fn kind(&self) -> &'static str {
        "csm"
    }
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn codebooks(&self) -> usize {
        self.config.audio_num_codebooks
    }
    fn vocab(&self) -> usize {
        self.config.audio_vocab_size
    }
    fn max_positions(&self) -> (usize, &'static str) {
        (
            self.config.backbone.max_seq_len,
            "the backbone's max_seq_len",
        )
    }
    fn prompt(&self, text: &str, speaker: u32, chat: bool) -> Result<(Vec<u32>, Frames)> {
        if chat {
            bail!("--chat applies to Llama models only");
        }
        self.prompt_frames(speaker, text)
    }
    fn prompt_of_ids(&self, ids: &[u32]) -> Result<Frames> {
        Frames::text(
            ids,
            self.config.audio_num_codebooks,
            self.config.text_vocab_size,
        )
    }
    fn stop_of(&self, sampled: &[i32]) -> Option<&'static str> {
        sampled.iter().all(|&t| t == 0).then_some("eos")
    }
    fn step(&self) -> Step {
        Step::FRAME
    }
    fn output_text(&self, _sampled: &[Vec<i32>]) -> Result<Option<String>> {
        Ok(None)
    }
    fn layout(&self) -> &'static str {
        self.weights.layout.name()
    }
    fn sha256(&self) -> &str {
        &self.weights.sha256
    }
    fn config_json(&self) -> serde_json::Value {
        self.config.to_original_json()
    }
    fn speaks(&self) -> bool {
        true
    }
}

impl Open for CsmModel {
    const KIND: &'static str = "csm";
    fn open(dir: &Path, tokenizer: Option<&Path>) -> Result<Self> {
        CsmModel::load_with(dir, tokenizer)
    }
}
