//! Plain Llama language models in the Hugging Face layout: `config.json` (`model_type: llama`,
//! `rope_scaling`/`rope_parameters` of type llama3 or default, `tie_word_embeddings`),
//! `model.safetensors` or shards with `model.safetensors.index.json`, `tokenizer.json`, EOS ids
//! from config.json / generation_config.json / the tokenizer, and an optional LoRA adapter.
//!
//! Weights keep their HF names (`model.layers.{i}.self_attn.q_proj.weight`, …); the q/k rows are
//! in HF's order, which is why the backends rotate split halves for this model.
use super::config::{parse_hf_flavor, LlamaFlavor};
use super::lora::LoraAdapter;
use super::tokenizer::PromptTokenizer;
use super::weights::{read_safetensors, weight_files, HostTensor};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A Llama LM's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub flavor: LlamaFlavor,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// EOS ids named by config.json (more may come from generation_config.json / tokenizer).
    pub eos_token_ids: Vec<u32>,
}

/// A token id or a list of them (`eos_token_id`); `null`/absent is none; anything else is an
/// error naming `key`.
fn token_ids(v: Option<&Value>, key: &str, what: &str) -> Result<Vec<u32>> {
    let one = |x: &Value| {
        x.as_u64()
            .filter(|&n| n <= u32::MAX as u64)
            .map(|n| n as u32)
            .with_context(|| {
                format!("{what}: \"{key}\" must be a token id (a non-negative integer) or a list of them, found {x}")
            })
    };
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}

impl LlamaConfig {
    /// Parses an HF `config.json`; `what` names the file in errors.
    pub fn from_json(v: &Value, what: &str) -> Result<Self> {
        let mt = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        if mt != "llama" {
            bail!("{what}: model_type {mt:?} is not \"llama\"");
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if v.get(flag).and_then(Value::as_bool) == Some(true) {
                bail!("{what}: {flag} = true is not supported (Llama has no biases)");
            }
        }
        let flavor = parse_hf_flavor(v).with_context(|| format!("{what}: Llama config"))?;
        flavor.validate(what)?;
        let vocab_size = v
            .get("vocab_size")
            .and_then(Value::as_u64)
            .with_context(|| format!("{what}: missing or non-integer \"vocab_size\""))?
            as usize;
        Ok(LlamaConfig {
            flavor,
            vocab_size,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: token_ids(v.get("bos_token_id"), "bos_token_id", what)?
                .first()
                .copied(),
            eos_token_ids: token_ids(v.get("eos_token_id"), "eos_token_id", what)?,
        })
    }

    /// The HF `config.json` form (what the fixture writes and manifests record).
    pub fn to_json(&self) -> Value {
        let f = &self.flavor;
        let mut v = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": f.embed_dim,
            "intermediate_size": f.intermediate_dim,
            "num_hidden_layers": f.num_layers,
            "num_attention_heads": f.num_heads,
            "num_key_value_heads": f.num_kv_heads,
            "head_dim": f.head_dim,
            "rms_norm_eps": f.norm_eps,
            "rope_theta": f.rope_base,
            "max_position_embeddings": f.max_seq_len,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "mlp_bias": false,
            "hidden_act": "silu",
            "torch_dtype": "float32",
            "eos_token_id": self.eos_token_ids,
        });
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = b.into();
        }
        if let Some(s) = f.rope_scaling {
            v["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        v
    }

    /// The tiny fixture: 2 layers, dim 64, 4 heads / 2 KV heads, Llama-3 RoPE scaling.
    pub fn tiny() -> Self {
        LlamaConfig {
            flavor: LlamaFlavor {
                num_layers: 2,
                num_heads: 4,
                num_kv_heads: 2,
                embed_dim: 64,
                head_dim: 16,
                intermediate_dim: 128,
                norm_eps: 1e-5,
                rope_base: 500_000.0,
                rope_scaling: Some(super::config::RopeScaling::LLAMA32),
                max_seq_len: 2048,
            },
            vocab_size: 272,
            tie_word_embeddings: false,
            bos_token_id: Some(261),
            eos_token_ids: vec![262, 265],
        }
    }
}

/// Whether `dir/config.json` declares `model_type: llama`.
pub fn is_llama_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| {
            v.get("model_type")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .as_deref()
        == Some("llama")
}

/// Every tensor of the model under its HF name, with its shape (`lm_head.weight` only when
/// the embeddings are not tied).
pub fn expected_tensors(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let f = &cfg.flavor;
    let (d, q, kv, m) = (
        f.embed_dim,
        f.num_heads * f.head_dim,
        f.num_kv_heads * f.head_dim,
        f.intermediate_dim,
    );
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, d],
    )];
    for i in 0..f.num_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, d]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
        out.push((format!("{p}.input_layernorm.weight"), vec![d]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![m, d]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![m, d]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![d, m]));
    }
    out.push(("model.norm.weight".to_string(), vec![d]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, d]));
    }
    out
}

/// The HF name of a stack tensor given by its torchtune leaf name (what the backends' shared
/// `Stack` asks for): `layers.{i}.attn.q_proj.weight` → `model.layers.{i}.self_attn.q_proj.weight`.
pub fn hf_key(leaf: &str) -> String {
    if leaf == "norm.scale" {
        return "model.norm.weight".into();
    }
    let Some((idx, rest)) = leaf.strip_prefix("layers.").and_then(|r| r.split_once('.')) else {
        return leaf.to_string();
    };
    let mapped = match rest {
        "attn.q_proj.weight" => "self_attn.q_proj.weight",
        "attn.k_proj.weight" => "self_attn.k_proj.weight",
        "attn.v_proj.weight" => "self_attn.v_proj.weight",
        "attn.output_proj.weight" => "self_attn.o_proj.weight",
        "sa_norm.scale" => "input_layernorm.weight",
        "mlp_norm.scale" => "post_attention_layernorm.weight",
        "mlp.w1.weight" => "mlp.gate_proj.weight",
        "mlp.w3.weight" => "mlp.up_proj.weight",
        "mlp.w2.weight" => "mlp.down_proj.weight",
        other => other,
    };
    format!("model.layers.{idx}.{mapped}")
}

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
        let tokenizer = super::load_tokenizer(dir, tokenizer)?;
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
            .or_else(|| tok.token_id(super::tokenizer::BOS));
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
