//! A Llama LM's configuration (transformers' config.json), its tensors and their HF names.
use crate::model::flavor::{parse_hf_flavor, LlamaFlavor};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

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
pub(crate) fn token_ids(v: Option<&Value>, key: &str, what: &str) -> Result<Vec<u32>> {
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
                rope_scaling: Some(crate::model::flavor::RopeScaling::LLAMA32),
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
