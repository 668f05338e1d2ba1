//! Plain Llama language models in the Hugging Face layout: `config.json` (`model_type: llama`,
//! `rope_scaling`/`rope_parameters` of type llama3 or default, `tie_word_embeddings`),
//! `model.safetensors` or shards with `model.safetensors.index.json`, `tokenizer.json`, EOS ids
//! from config.json / generation_config.json / the tokenizer, and an optional LoRA adapter.
//!
//! Weights keep their HF names (`model.layers.{i}.self_attn.q_proj.weight`, …); the q/k rows are
//! in HF's order, which is why the backends rotate split halves for this model.
pub mod config;
pub mod lora;

use config::token_ids;
pub use config::{expected_tensors, hf_key, is_llama_dir, LlamaConfig};
pub use lora::LoraAdapter;

use crate::model::checkpoint::{read_safetensors, weight_files};
use crate::model::tensor::HostTensor;
use crate::model::tokenizer::PromptTokenizer;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Special tokens of the Llama-3 chat format.
pub const START_HEADER: &str = "<|start_header_id|>";
pub const END_HEADER: &str = "<|end_header_id|>";
pub const EOT: &str = "<|eot_id|>";

/// A validated Llama model directory.
pub struct LlamaModel {
    pub dir: PathBuf,
    pub config: LlamaConfig,
    /// HF names → tensors (every name of [`expected_tensors`]).
    pub tensors: BTreeMap<String, HostTensor>,
    pub sha256: String,
    pub files: Vec<PathBuf>,
    pub tokenizer: Option<PromptTokenizer>,
    /// Generation stops at any of these.
    pub eos_ids: Vec<u32>,
    pub adapter: Option<LoraAdapter>,
}

impl LlamaModel {
    /// Loads `dir`, and the LoRA adapter in `adapter` when given.
    pub fn load(dir: &Path, adapter: Option<&Path>) -> Result<Self> {
        Self::load_with(dir, adapter, None)
    }

    /// [`LlamaModel::load`] with an explicit tokenizer file; config, tokenizer and EOS ids are
    /// checked before any weight is read.
    pub fn load_with(dir: &Path, adapter: Option<&Path>, tokenizer: Option<&Path>) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read model config {}", cfg_path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
        let config = LlamaConfig::from_json(&v, &cfg_path.display().to_string())?;
        let tokenizer = crate::model::load_tokenizer(dir, tokenizer)?;
        let files = weight_files(dir)?;
        let (raw, sha256) = read_safetensors(&files)?;
        let expected: BTreeMap<String, Vec<usize>> =
            expected_tensors(&config).into_iter().collect();
        let mut tensors = BTreeMap::new();
        for (key, t, file) in raw {
            let Some(shape) = expected.get(&key) else {
                // Tied checkpoints sometimes also store lm_head; transformers ignores it then.
                if (key == "lm_head.weight" && config.tie_word_embeddings)
                    || key.ends_with("rotary_emb.inv_freq")
                {
                    continue;
                }
                bail!(
                    "{}: unexpected key {key:?} (not part of the Llama architecture of this config)",
                    file.display()
                );
            };
            if &t.shape != shape {
                bail!(
                    "{}: tensor {key:?} has shape {:?}; the config expects {shape:?}",
                    file.display(),
                    t.shape
                );
            }
            if tensors.insert(key.clone(), t).is_some() {
                bail!("duplicate tensor {key:?} across weight files");
            }
        }
        if let Some((missing, shape)) = expected.iter().find(|(k, _)| !tensors.contains_key(*k)) {
            bail!(
                "{}: missing tensor {missing:?} (shape {shape:?}{})",
                dir.display(),
                if missing == "lm_head.weight" {
                    "; or set tie_word_embeddings"
                } else {
                    ""
                }
            );
        }
        let mut eos_ids = config.eos_token_ids.clone();
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            let g: Value = serde_json::from_str(&std::fs::read_to_string(&gen_path)?)
                .with_context(|| format!("{}: not valid JSON", gen_path.display()))?;
            eos_ids.extend(token_ids(
                g.get("eos_token_id"),
                "eos_token_id",
                &gen_path.display().to_string(),
            )?);
        }
        if eos_ids.is_empty() {
            if let Some(tok) = &tokenizer {
                eos_ids.extend(
                    [EOT, super::tokenizer::EOS, "</s>"]
                        .iter()
                        .filter_map(|t| tok.token_id(t)),
                );
            }
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        if let Some(&bad) = eos_ids.iter().find(|&&e| e as usize >= config.vocab_size) {
            bail!(
                "{}: EOS id {bad} is outside the vocabulary of {}",
                cfg_path.display(),
                config.vocab_size
            );
        }
        let adapter = match adapter {
            Some(a) => Some(LoraAdapter::load(a, &config)?),
            None => None,
        };
        Ok(LlamaModel {
            dir: dir.to_path_buf(),
            config,
            tensors,
            sha256,
            files,
            tokenizer,
            eos_ids,
            adapter,
        })
    }

    /// A tensor by HF name.
    pub fn get(&self, name: &str) -> Result<&HostTensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("{}: no tensor {name:?}", self.dir.display()))
    }

    /// The output projection: `lm_head.weight`, or the embeddings when tied.
    pub fn lm_head_name(&self) -> &'static str {
        if self.config.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        }
    }

    fn tokenizer(&self) -> Result<&PromptTokenizer> {
        self.tokenizer.as_ref().with_context(|| {
            format!(
                "{}: no tokenizer.json (needed for --text)",
                self.dir.display()
            )
        })
    }

    /// Prompt ids of `text`: BOS + the text, or with `chat` the Llama-3 chat format
    /// (`<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|>` then the assistant header).
    /// Jinja chat templates are not evaluated: `--chat` supports the Llama-3 header format only.
    pub fn prompt_ids(&self, text: &str, chat: bool) -> Result<Vec<u32>> {
        let tok = self.tokenizer()?;
        let bos = self
            .config
            .bos_token_id
            .or_else(|| tok.token_id(crate::model::tokenizer::BOS));
        let mut ids = if chat {
            for special in [START_HEADER, END_HEADER, EOT] {
                if tok.token_id(special).is_none() {
                    bail!(
                        "--chat: {}/tokenizer.json has no {special} token; only the Llama-3 chat format is supported",
                        self.dir.display()
                    );
                }
            }
            let formatted = format!(
                "{START_HEADER}user{END_HEADER}\n\n{text}{EOT}{START_HEADER}assistant{END_HEADER}\n\n"
            );
            tok.encode_plain(&formatted, false)?
        } else {
            tok.encode_plain(text, true)?
        };
        if let Some(b) = bos {
            if ids.first() != Some(&b) {
                ids.insert(0, b);
            }
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            bail!(
                "token id {bad} of the prompt is outside the model's vocabulary of {}",
                self.config.vocab_size
            );
        }
        Ok(ids)
    }

    /// Decoded text of generated ids (special tokens such as EOS skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer()?.decode(ids)
    }

    /// The config as recorded in manifests, with the adapter when one is applied.
    pub fn config_json(&self) -> Value {
        let mut v = self.config.to_json();
        v["eos_token_id"] = serde_json::json!(self.eos_ids);
        if let Some(a) = &self.adapter {
            v["adapter"] = a.summary();
        }
        v
    }
}

impl crate::model::Family for LlamaModel {
    fn kind(&self) -> &'static str {
        "llama"
    }
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn codebooks(&self) -> usize {
        1
    }
    fn vocab(&self) -> usize {
        self.config.vocab_size
    }
    fn max_positions(&self) -> (usize, &'static str) {
        (self.config.flavor.max_seq_len, "max_position_embeddings")
    }
    fn prompt(
        &self,
        text: &str,
        _speaker: u32,
        chat: bool,
    ) -> Result<(Vec<u32>, crate::model::Frames)> {
        let ids = self.prompt_ids(text, chat)?;
        let frames = crate::model::Frames::lm(&ids, self.config.vocab_size)?;
        Ok((ids, frames))
    }
    fn prompt_of_ids(&self, ids: &[u32]) -> Result<crate::model::Frames> {
        crate::model::Frames::lm(ids, self.config.vocab_size)
    }
    fn stop_of(&self, sampled: &[i32]) -> Option<&'static str> {
        sampled
            .first()
            .is_some_and(|&t| self.eos_ids.contains(&(t as u32)))
            .then_some("eos_token")
    }
    fn step(&self) -> crate::model::Step {
        crate::model::Step::TOKEN
    }
    fn output_text(&self, sampled: &[Vec<i32>]) -> Result<Option<String>> {
        let ids: Vec<u32> = sampled
            .iter()
            .flatten()
            .map(|&t| t as u32)
            .filter(|t| !self.eos_ids.contains(t))
            .collect();
        self.decode(&ids).map(Some)
    }
    fn layout(&self) -> &'static str {
        "hf"
    }
    fn sha256(&self) -> &str {
        &self.sha256
    }
    fn config_json(&self) -> Value {
        LlamaModel::config_json(self)
    }
}

impl crate::model::Open for LlamaModel {
    const KIND: &'static str = "llama";
    fn open(dir: &Path, tokenizer: Option<&Path>) -> Result<Self> {
        LlamaModel::load_with(dir, None, tokenizer)
    }
}
