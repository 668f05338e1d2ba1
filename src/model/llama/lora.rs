//! MLX-LM-style LoRA adapters: `adapter_config.json` + `adapters.safetensors`.
//!
//! mlx-lm (`tuner/utils.py`, `tuner/lora.py`) wraps the projections named by
//! `lora_parameters.keys` (default for Llama: `self_attn.q_proj`, `self_attn.v_proj`) of the last
//! `num_layers` blocks (≤ 0: all blocks) in `LoRALinear`: y = x Wᵀ + scale · (x A) B with
//! A = `lora_a` [in, r] and B = `lora_b` [r, out], stored as
//! `model.layers.{i}.{key}.lora_a` / `.lora_b`. Both backends merge the update into the weight
//! at load (W' = W + scale · (A B)ᵀ, mlx-lm's `fuse`), each computing it with its own library.
use super::config::LlamaConfig;
use crate::model::checkpoint::read_safetensors;
use crate::model::tensor::HostTensor;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The projections a Llama LoRA may target, with (in, out) dims.
fn projection_dims(cfg: &LlamaConfig, key: &str) -> Option<(usize, usize)> {
    let f = &cfg.flavor;
    let (d, q, kv, m) = (
        f.embed_dim,
        f.num_heads * f.head_dim,
        f.num_kv_heads * f.head_dim,
        f.intermediate_dim,
    );
    Some(match key {
        "self_attn.q_proj" => (d, q),
        "self_attn.k_proj" => (d, kv),
        "self_attn.v_proj" => (d, kv),
        "self_attn.o_proj" => (q, d),
        "mlp.gate_proj" => (d, m),
        "mlp.up_proj" => (d, m),
        "mlp.down_proj" => (m, d),
        _ => return None,
    })
}

/// One low-rank update: A [in, r], B [r, out].
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: HostTensor,
    pub b: HostTensor,
}

/// A validated adapter.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub dir: PathBuf,
    pub rank: usize,
    pub scale: f32,
    /// The adapted blocks: the last `num_layers` of the model.
    pub layers: std::ops::Range<usize>,
    pub keys: Vec<String>,
    pub sha256: String,
    /// HF weight name (`model.layers.{i}.self_attn.q_proj.weight`) → its update.
    pub updates: BTreeMap<String, LoraPair>,
}

impl LoraAdapter {
    /// Reads and validates the adapter in `dir` against the model config.
    pub fn load(dir: &Path, cfg: &LlamaConfig) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).with_context(|| {
            format!(
                "--adapter {}: cannot read adapter_config.json",
                dir.display()
            )
        })?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
        let what = cfg_path.display().to_string();
        if let Some(t) = v.get("fine_tune_type").and_then(Value::as_str) {
            if t != "lora" {
                bail!("{what}: fine_tune_type {t:?} is not supported (only \"lora\")");
            }
        }
        let num_layers = v
            .get("num_layers")
            .and_then(Value::as_i64)
            .with_context(|| format!("{what}: missing or non-integer \"num_layers\""))?;
        let p = v
            .get("lora_parameters")
            .filter(|p| p.is_object())
            .with_context(|| format!("{what}: missing \"lora_parameters\" object"))?;
        let rank = p
            .get("rank")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .with_context(|| format!("{what}: lora_parameters.rank must be a positive integer"))?
            as usize;
        let scale = match (
            p.get("scale").and_then(Value::as_f64),
            p.get("alpha").and_then(Value::as_f64),
        ) {
            (Some(s), _) => s,
            (None, Some(alpha)) => alpha / rank as f64,
            (None, None) => bail!("{what}: lora_parameters needs \"scale\" (or \"alpha\")"),
        };
        if !scale.is_finite() {
            bail!("{what}: lora_parameters.scale must be finite, got {scale}");
        }
        if let Some(d) = p.get("dropout").and_then(Value::as_f64) {
            if !(0.0..1.0).contains(&d) {
                bail!("{what}: lora_parameters.dropout must lie in [0, 1), got {d}");
            }
        }
        let keys: Vec<String> = match p.get("keys") {
            None | Some(Value::Null) => vec!["self_attn.q_proj".into(), "self_attn.v_proj".into()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|k| {
                    k.as_str()
                        .map(String::from)
                        .with_context(|| format!("{what}: lora_parameters.keys must be strings"))
                })
                .collect::<Result<_>>()?,
            Some(_) => bail!("{what}: lora_parameters.keys must be a list of strings"),
        };
        for k in &keys {
            if projection_dims(cfg, k).is_none() {
                bail!("{what}: lora_parameters.keys: {k:?} is not a Llama projection (expected self_attn.{{q,k,v,o}}_proj or mlp.{{gate,up,down}}_proj)");
            }
        }
        let n = cfg.flavor.num_layers;
        let first = if num_layers <= 0 || num_layers as usize >= n {
            0
        } else {
            n - num_layers as usize
        };
        let file = dir.join("adapters.safetensors");
        if !file.is_file() {
            bail!("--adapter {}: no adapters.safetensors", dir.display());
        }
        let (raw, sha256) = read_safetensors(std::slice::from_ref(&file))?;
        let mut tensors: BTreeMap<String, HostTensor> =
            raw.into_iter().map(|(k, t, _)| (k, t)).collect();
        let fname = file.display().to_string();
        let mut updates = BTreeMap::new();
        for i in first..n {
            for k in &keys {
                let (din, dout) = projection_dims(cfg, k).unwrap();
                let mut take = |leaf: &str, shape: [usize; 2]| -> Result<HostTensor> {
                    let name = format!("model.layers.{i}.{k}.{leaf}");
                    let t = tensors.remove(&name).with_context(|| {
                        format!("{fname}: missing adapter tensor {name:?} (shape {shape:?}; adapter_config.json lists {k:?} for the last {} layers)", n - first)
                    })?;
                    if t.shape != shape {
                        bail!(
                            "{fname}: adapter tensor {name:?} has shape {:?}; expected {shape:?} (rank {rank})",
                            t.shape
                        );
                    }
                    Ok(t)
                };
                let a = take("lora_a", [din, rank])?;
                let b = take("lora_b", [rank, dout])?;
                updates.insert(format!("model.layers.{i}.{k}.weight"), LoraPair { a, b });
            }
        }
        if let Some(extra) = tensors.keys().next() {
            bail!(
                "{fname}: unexpected adapter tensor {extra:?} (adapter_config.json: layers {first}..{n}, keys {keys:?})"
            );
        }
        Ok(LoraAdapter {
            dir: dir.to_path_buf(),
            rank,
            scale: scale as f32,
            layers: first..n,
            keys,
            sha256,
            updates,
        })
    }

    /// What the manifest records of the adapter.
    pub fn summary(&self) -> Value {
        serde_json::json!({
            "path": self.dir.display().to_string(),
            "rank": self.rank,
            "scale": self.scale,
            "layers": [self.layers.start, self.layers.end],
            "keys": self.keys,
            "sha256": self.sha256,
            "applied": "merged at load: W + scale·(A B)ᵀ, computed by each backend",
        })
    }
}
