//! One Llama transformer stack (a flavour): the shape numbers and RoPE (with Llama-3 scaling)
//! shared by CSM's backbone and depth decoder and by plain Llama language models, and their
//! parsing from the original flat form and from transformers' config.json.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Llama-3 frequency scaling of RoPE (`rope_type: llama3`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

impl RopeScaling {
    /// The scaling of Llama-3.2 (and CSM): factor 32, low 1, high 4, original context 8192.
    pub const LLAMA32: RopeScaling = RopeScaling {
        factor: 32.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
}

/// One Llama transformer stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaFlavor {
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub embed_dim: usize,
    pub head_dim: usize,
    pub intermediate_dim: usize,
    pub norm_eps: f64,
    pub rope_base: f64,
    /// `None`: plain RoPE (transformers' `rope_type: default`).
    pub rope_scaling: Option<RopeScaling>,
    pub max_seq_len: usize,
}

impl LlamaFlavor {
    /// Llama-3.2-1B as CSM's backbone uses it.
    pub fn llama_1b() -> Self {
        Self::named(16, 32, 8, 2048, 8192)
    }
    /// Llama-100M, CSM's depth decoder.
    pub fn llama_100m() -> Self {
        Self::named(4, 8, 2, 1024, 8192)
    }
    /// A Llama-3.2-style flavour (RoPE base 500000 with Llama-3 scaling, eps 1e-5, 2048 positions).
    pub fn named(layers: usize, heads: usize, kv: usize, dim: usize, mlp: usize) -> Self {
        LlamaFlavor {
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv,
            embed_dim: dim,
            head_dim: dim / heads,
            intermediate_dim: mlp,
            norm_eps: 1e-5,
            rope_base: 500_000.0,
            rope_scaling: Some(RopeScaling::LLAMA32),
            max_seq_len: 2048,
        }
    }
    pub fn from_flavor_name(name: &str) -> Result<Self> {
        match name {
            "llama-1B" => Ok(Self::llama_1b()),
            "llama-100M" => Ok(Self::llama_100m()),
            other => {
                bail!("unknown Llama flavour {other:?} (expected \"llama-1B\" or \"llama-100M\")")
            }
        }
    }

    /// RoPE inverse frequencies for the `head_dim / 2` rotated pairs, Llama-3 scaling applied
    /// (transformers' `_compute_llama3_parameters`, torchtune's `Llama3ScaledRoPE`).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim as f64;
        (0..self.head_dim / 2)
            .map(|i| {
                let inv = 1.0 / self.rope_base.powf((2 * i) as f64 / dim);
                let Some(s) = self.rope_scaling else {
                    return inv as f32;
                };
                let low_wavelen = s.original_max_position_embeddings as f64 / s.low_freq_factor;
                let high_wavelen = s.original_max_position_embeddings as f64 / s.high_freq_factor;
                let wavelen = 2.0 * std::f64::consts::PI / inv;
                let scaled = if wavelen < high_wavelen {
                    inv
                } else if wavelen > low_wavelen {
                    inv / s.factor
                } else {
                    let smooth = (s.original_max_position_embeddings as f64 / wavelen
                        - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * inv / s.factor + smooth * inv
                };
                scaled as f32
            })
            .collect()
    }

    pub fn validate(&self, what: &str) -> Result<()> {
        let ok = self.num_layers > 0
            && self.num_heads > 0
            && self.num_kv_heads > 0
            && self.num_heads.is_multiple_of(self.num_kv_heads)
            && self.head_dim > 0
            && self.head_dim.is_multiple_of(2)
            && self.embed_dim > 0
            && self.intermediate_dim > 0;
        if !ok {
            bail!(
                "{what}: inconsistent flavour (layers {}, heads {}, kv heads {}, head dim {}, dim {}): \
                 heads must be a multiple of kv heads and head dim even and positive",
                self.num_layers,
                self.num_heads,
                self.num_kv_heads,
                self.head_dim,
                self.embed_dim
            );
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.norm_eps) {
            bail!(
                "{what}: norm_eps {} must be a finite number > 0 (every RMSNorm would divide by zero or NaN)",
                self.norm_eps
            );
        }
        if !positive(self.rope_base) {
            bail!(
                "{what}: rope_base {} must be a finite number > 0 (RoPE frequencies would be NaN)",
                self.rope_base
            );
        }
        if self.max_seq_len == 0 {
            bail!("{what}: max_seq_len must be at least 1");
        }
        if let Some(s) = &self.rope_scaling {
            if !positive(s.factor)
                || !positive(s.low_freq_factor)
                || !positive(s.high_freq_factor)
                || s.high_freq_factor <= s.low_freq_factor
                || s.original_max_position_embeddings == 0
            {
                bail!(
                    "{what}: RoPE scaling (factor {}, low_freq_factor {}, high_freq_factor {}, original context {}) \
                     needs finite factors > 0, high_freq_factor > low_freq_factor and an original context ≥ 1",
                    s.factor,
                    s.low_freq_factor,
                    s.high_freq_factor,
                    s.original_max_position_embeddings
                );
            }
        }
        Ok(())
    }
}

pub(crate) fn get_usize(v: &Value, key: &str) -> Result<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .with_context(|| format!("missing or non-integer \"{key}\""))
}

pub(crate) fn get_f64(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("missing or non-numeric \"{key}\""))
}

pub(crate) fn parse_flat_flavor(v: &Value) -> Result<LlamaFlavor> {
    let heads = get_usize(v, "num_heads")?;
    let dim = get_usize(v, "embed_dim")?;
    let use_scaled = v
        .get("use_scaled_rope")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let factor = v
        .get("scale_factor")
        .and_then(Value::as_f64)
        .unwrap_or(32.0);
    let scaling = (use_scaled && v.get("scale_factor").is_some_and(|f| !f.is_null())).then(|| {
        Ok::<_, anyhow::Error>(RopeScaling {
            factor,
            low_freq_factor: get_f64(v, "low_freq_factor")?,
            high_freq_factor: get_f64(v, "high_freq_factor")?,
            original_max_position_embeddings: get_usize(v, "old_context_len")?,
        })
    });
    Ok(LlamaFlavor {
        num_layers: get_usize(v, "num_layers")?,
        num_heads: heads,
        num_kv_heads: get_usize(v, "num_kv_heads")?,
        embed_dim: dim,
        head_dim: v
            .get("head_dim")
            .and_then(Value::as_u64)
            .map_or(dim / heads.max(1), |h| h as usize),
        intermediate_dim: get_usize(v, "intermediate_dim")?,
        norm_eps: get_f64(v, "norm_eps")?,
        rope_base: get_f64(v, "rope_base")?,
        rope_scaling: scaling.transpose()?,
        max_seq_len: get_usize(v, "max_seq_len")?,
    })
}

pub(crate) fn parse_hf_flavor(v: &Value) -> Result<LlamaFlavor> {
    let heads = get_usize(v, "num_attention_heads")?;
    let dim = get_usize(v, "hidden_size")?;
    // transformers 5 writes `rope_parameters` (theta inside); 4.x wrote `rope_theta` + `rope_scaling`.
    let params = v
        .get("rope_parameters")
        .filter(|p| p.is_object())
        .or_else(|| v.get("rope_scaling").filter(|p| p.is_object()));
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| v.get("rope_theta"))
        .and_then(Value::as_f64)
        .unwrap_or(10_000.0);
    let scaling = match params {
        None => None,
        Some(p) => {
            let kind = p
                .get("rope_type")
                .or_else(|| p.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            match kind {
                "default" => None,
                "llama3" => Some(RopeScaling {
                    factor: get_f64(p, "factor")?,
                    low_freq_factor: get_f64(p, "low_freq_factor")?,
                    high_freq_factor: get_f64(p, "high_freq_factor")?,
                    original_max_position_embeddings: get_usize(
                        p,
                        "original_max_position_embeddings",
                    )?,
                }),
                other => bail!(
                    "rope_type {other:?} is not supported (expected \"llama3\" or \"default\")"
                ),
            }
        }
    };
    Ok(LlamaFlavor {
        num_layers: get_usize(v, "num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads: v
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map_or(heads, |n| n as usize),
        embed_dim: dim,
        head_dim: v
            .get("head_dim")
            .and_then(Value::as_u64)
            .map_or(dim / heads.max(1), |h| h as usize),
        intermediate_dim: get_usize(v, "intermediate_size")?,
        norm_eps: get_f64(v, "rms_norm_eps")?,
        rope_base: theta,
        rope_scaling: scaling,
        max_seq_len: v
            .get("max_position_embeddings")
            .and_then(Value::as_u64)
            .map_or(2048, |n| n as usize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let f = LlamaFlavor::llama_1b();
        let scaled = f.rope_inv_freq();
        let plain = LlamaFlavor {
            rope_scaling: None,
            ..f.clone()
        }
        .rope_inv_freq();
        assert_eq!(scaled.len(), 32);
        assert_eq!(scaled[0], plain[0]);
        let last = scaled.len() - 1;
        assert!((scaled[last] * 32.0 - plain[last]).abs() < 1e-12);
    }
}
