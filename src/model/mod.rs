//! Backend-neutral model code, one folder per model family (`csm/`, `llama/`, `mimi/`) over
//! shared parts: host tensors and frames (`tensor`), checkpoint files (`checkpoint`), the Llama
//! transformer flavour (`flavor`), the tokenizer, the fixtures.
//!
//! A generation model family is one line of [`model_families!`]: the [`Model`] enum and its
//! [`Family`] view come from that list; the family's code lives in `model/<name>/` (implementing
//! [`Family`]) and `backend/{mlx,torch}/<name>.rs`.
pub mod checkpoint;
pub mod csm;
pub mod fixture;
pub mod flavor;
pub mod llama;
pub mod mimi;
pub mod tensor;
pub mod tokenizer;

use anyhow::{Context, Result};
use std::path::Path;

pub use checkpoint::{read_safetensors, weight_files, write_safetensors};
pub use csm::{CsmConfig, CsmModel, CsmWeights, Layout};
pub use flavor::{LlamaFlavor, RopeScaling};
pub use llama::{LlamaConfig, LlamaModel, LoraAdapter};
pub use mimi::{MimiConfig, MimiModel};
pub use tensor::{DType, Frames, HostTensor};
pub use tokenizer::PromptTokenizer;

/// What one generation step is called, and the flag and stop reason that bound the steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// `frame` or `token`.
    pub unit: &'static str,
    /// `--max-frames` or `--max-tokens`.
    pub limit_flag: &'static str,
    /// The stop reason when the limit is reached: `max_frames` or `max_tokens`.
    pub limit_reason: &'static str,
}

impl Step {
    /// A step of CSM: one frame of audio codebooks.
    pub const FRAME: Step = Step {
        unit: "frame",
        limit_flag: "--max-frames",
        limit_reason: "max_frames",
    };
    /// A step of a language model: one token.
    pub const TOKEN: Step = Step {
        unit: "token",
        limit_flag: "--max-tokens",
        limit_reason: "max_tokens",
    };
}

/// What the frame loop and the commands need to know of a generation model, whatever its
/// family: CSM emits frames of C audio codebooks, a plain Llama LM is the same with C = 1.
pub trait Family {
    /// `csm`, `llama`: the manifest's `model.kind`.
    fn kind(&self) -> &'static str;
    fn dir(&self) -> &Path;
    /// Tokens sampled per step (audio codebooks; 1 for an LM).
    fn codebooks(&self) -> usize;
    /// Vocabulary of the sampled tokens.
    fn vocab(&self) -> usize;
    /// Positions the backbone has room for, and the config name of that number.
    fn max_positions(&self) -> (usize, &'static str);
    /// Prompt token ids and the input rows of the first step.
    fn prompt(&self, text: &str, speaker: u32, chat: bool) -> Result<(Vec<u32>, Frames)>;
    /// The input rows of prompt token ids (as a run records them).
    fn prompt_of_ids(&self, ids: &[u32]) -> Result<Frames>;
    /// The stop reason when a step's sampled tokens end generation (`eos`, `eos_token`).
    fn stop_of(&self, sampled: &[i32]) -> Option<&'static str>;
    fn step(&self) -> Step;
    /// Decoded text of the generated tokens (an LM), or None.
    fn output_text(&self, sampled: &[Vec<i32>]) -> Result<Option<String>>;
    /// Key naming of the checkpoint (`original`, `hf`).
    fn layout(&self) -> &'static str;
    /// sha256 over the weight files.
    fn sha256(&self) -> &str;
    /// The config as recorded in manifests.
    fn config_json(&self) -> serde_json::Value;
    /// Whether the frames are audio (a codec turns them into sound).
    fn speaks(&self) -> bool {
        false
    }
}

/// How a family's model directory is opened.
pub trait Open: Sized {
    /// The family's [`Family::kind`].
    const KIND: &'static str;
    /// Loads `dir` (config and tokenizer checked before any weight is read), with `tokenizer`
    /// instead of `dir/tokenizer.json` when given.
    fn open(dir: &Path, tokenizer: Option<&Path>) -> Result<Self>;
}

/// Declares the generation model families: the [`Model`] enum, its [`Family`] view, opening a
/// directory by kind and the `From` conversions, from one line per family (`Variant(Type)`).
macro_rules! model_families {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// A loaded generation model of any family.
        pub enum Model {
            $($variant($ty),)*
        }

        impl Model {
            /// The family-independent view of the model.
            pub fn family(&self) -> &(dyn Family + 'static) {
                match self {
                    $(Model::$variant(m) => m,)*
                }
            }

            /// Opens the model directory `dir` of the family `kind` (a manifest's `model.kind`).
            pub fn open(kind: &str, dir: &Path, tokenizer: Option<&Path>) -> Result<Model> {
                $(if kind == <$ty as Open>::KIND {
                    return Ok(Model::$variant(<$ty>::open(dir, tokenizer)?));
                })*
                anyhow::bail!(
                    "model kind {kind:?} is not one this tool runs (expected one of: {})",
                    [$(<$ty as Open>::KIND),*].join(", ")
                )
            }
        }

        $(impl From<$ty> for Model {
            fn from(m: $ty) -> Self {
                Model::$variant(m)
            }
        })*
    };
}

model_families! {
    Csm(CsmModel),
    Llama(LlamaModel),
}

impl std::ops::Deref for Model {
    type Target = dyn Family;
    fn deref(&self) -> &Self::Target {
        self.family()
    }
}

/// The family of the model in `dir`, from its config.json: `llama` when it says
/// `model_type: llama`, else `csm`.
pub fn kind_of_dir(dir: &Path) -> &'static str {
    if llama::is_llama_dir(dir) {
        <LlamaModel as Open>::KIND
    } else {
        <CsmModel as Open>::KIND
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
