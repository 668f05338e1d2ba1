//! CSM configuration: the two Llama flavours (backbone, depth decoder), audio and text vocab,
//! and every tensor the model holds.
//!
//! Three on-disk forms are read: the original flat form (`backbone`/`decoder` objects with every
//! flavour number, as in the conformance case's `original/config.json`), Sesame's named flavours
//! (`backbone_flavor: "llama-1B"`, `decoder_flavor: "llama-100M"`), and transformers' `config.json`
//! (`model_type: "csm"`, `depth_decoder_config`, `rope_parameters` / `rope_scaling`).
use crate::model::flavor::{get_usize, parse_flat_flavor, parse_hf_flavor, LlamaFlavor};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// The whole CSM model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CsmConfig {
    pub audio_num_codebooks: usize,
    pub audio_vocab_size: usize,
    pub text_vocab_size: usize,
    pub backbone: LlamaFlavor,
    pub decoder: LlamaFlavor,
}

impl CsmConfig {
    /// Sesame's CSM-1B.
    pub fn csm_1b() -> Self {
        CsmConfig {
            audio_num_codebooks: 32,
            audio_vocab_size: 2051,
            text_vocab_size: 128_256,
            backbone: LlamaFlavor::llama_1b(),
            decoder: LlamaFlavor::llama_100m(),
        }
    }

    /// The tiny fixture: same architecture, 2+2 layers, small dims, 8 codebooks, 264 text ids.
    pub fn tiny() -> Self {
        CsmConfig {
            audio_num_codebooks: 8,
            audio_vocab_size: 2051,
            text_vocab_size: 264,
            backbone: LlamaFlavor::named(2, 4, 2, 64, 256),
            decoder: LlamaFlavor::named(2, 4, 2, 32, 128),
        }
    }

    /// Frame width: the audio codebooks plus the text column.
    pub fn frame_width(&self) -> usize {
        self.audio_num_codebooks + 1
    }

    pub fn validate(&self) -> Result<()> {
        self.backbone.validate("backbone")?;
        self.decoder.validate("decoder")?;
        if self.audio_num_codebooks < 2 || self.audio_vocab_size == 0 || self.text_vocab_size == 0 {
            bail!("config: need at least 2 audio codebooks and non-empty vocabularies");
        }
        Ok(())
    }

    /// Parameter count of the tensors the model holds.
    pub fn parameter_count(&self) -> usize {
        expected_tensors(self)
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    }

    /// Serialized in the original flat form (what `fixture` writes and `inspect --json` shows).
    pub fn to_original_json(&self) -> Value {
        let flavor = |f: &LlamaFlavor| {
            let s = f.rope_scaling;
            serde_json::json!({
                "num_layers": f.num_layers,
                "num_heads": f.num_heads,
                "num_kv_heads": f.num_kv_heads,
                "embed_dim": f.embed_dim,
                "intermediate_dim": f.intermediate_dim,
                "norm_eps": f.norm_eps,
                "rope_base": f.rope_base,
                "use_scaled_rope": s.is_some(),
                "scale_factor": s.map_or(1.0, |s| s.factor),
                "low_freq_factor": s.map_or(1.0, |s| s.low_freq_factor),
                "high_freq_factor": s.map_or(4.0, |s| s.high_freq_factor),
                "old_context_len": s.map_or(8192, |s| s.original_max_position_embeddings),
                "max_seq_len": f.max_seq_len,
            })
        };
        serde_json::json!({
            "audio_num_codebooks": self.audio_num_codebooks,
            "audio_vocab_size": self.audio_vocab_size,
            "text_vocab_size": self.text_vocab_size,
            "backbone": flavor(&self.backbone),
            "decoder": flavor(&self.decoder),
        })
    }

    /// Reads `config.json` in any of the three forms. `what` names the file in errors.
    pub fn from_json(v: &Value, what: &str) -> Result<Self> {
        let cfg = if v.get("model_type").and_then(Value::as_str) == Some("csm") {
            Self::from_hf(v).with_context(|| format!("{what}: transformers CSM config"))?
        } else {
            Self::from_original(v).with_context(|| format!("{what}: original CSM config"))?
        };
        cfg.validate().with_context(|| what.to_string())?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        Self::from_json(&v, &path.display().to_string())
    }

    fn from_original(v: &Value) -> Result<Self> {
        let flavor = |key: &str, named: &str| -> Result<LlamaFlavor> {
            if let Some(obj) = v.get(key).filter(|o| o.is_object()) {
                return parse_flat_flavor(obj).with_context(|| format!("in \"{key}\""));
            }
            match v.get(named).and_then(Value::as_str) {
                Some(name) => LlamaFlavor::from_flavor_name(name),
                None => bail!("missing \"{key}\" (an object of flavour numbers) or \"{named}\""),
            }
        };
        Ok(CsmConfig {
            audio_num_codebooks: get_usize(v, "audio_num_codebooks")?,
            audio_vocab_size: get_usize(v, "audio_vocab_size")?,
            text_vocab_size: get_usize(v, "text_vocab_size")?,
            backbone: flavor("backbone", "backbone_flavor")?,
            decoder: flavor("decoder", "decoder_flavor")?,
        })
    }

    fn from_hf(v: &Value) -> Result<Self> {
        let dd = v
            .get("depth_decoder_config")
            .context("missing \"depth_decoder_config\"")?;
        let cfg = CsmConfig {
            audio_num_codebooks: get_usize(v, "num_codebooks")?,
            audio_vocab_size: get_usize(v, "vocab_size")?,
            text_vocab_size: get_usize(v, "text_vocab_size")?,
            backbone: parse_hf_flavor(v).context("backbone")?,
            decoder: parse_hf_flavor(dd).context("depth_decoder_config")?,
        };
        if let Some(n) = dd.get("num_codebooks").and_then(Value::as_u64) {
            if n as usize != cfg.audio_num_codebooks {
                bail!(
                    "depth_decoder_config.num_codebooks {n} differs from num_codebooks {}",
                    cfg.audio_num_codebooks
                );
            }
        }
        if v.get("tie_codebooks_embeddings").and_then(Value::as_bool) == Some(false) {
            bail!("tie_codebooks_embeddings = false is not supported (CSM shares the audio embedding between backbone and depth decoder)");
        }
        Ok(cfg)
    }
}

/// Every tensor CSM holds, under original names, with its shape.
pub fn expected_tensors(cfg: &CsmConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for (stack, f) in [("backbone", &cfg.backbone), ("decoder", &cfg.decoder)] {
        let (d, hd, m) = (f.embed_dim, f.head_dim, f.intermediate_dim);
        for i in 0..f.num_layers {
            let p = format!("{stack}.layers.{i}");
            out.push((format!("{p}.attn.q_proj.weight"), vec![f.num_heads * hd, d]));
            out.push((
                format!("{p}.attn.k_proj.weight"),
                vec![f.num_kv_heads * hd, d],
            ));
            out.push((
                format!("{p}.attn.v_proj.weight"),
                vec![f.num_kv_heads * hd, d],
            ));
            out.push((
                format!("{p}.attn.output_proj.weight"),
                vec![d, f.num_heads * hd],
            ));
            out.push((format!("{p}.sa_norm.scale"), vec![d]));
            out.push((format!("{p}.mlp_norm.scale"), vec![d]));
            out.push((format!("{p}.mlp.w1.weight"), vec![m, d]));
            out.push((format!("{p}.mlp.w2.weight"), vec![d, m]));
            out.push((format!("{p}.mlp.w3.weight"), vec![m, d]));
        }
        out.push((format!("{stack}.norm.scale"), vec![d]));
    }
    let (db, dd, v, c) = (
        cfg.backbone.embed_dim,
        cfg.decoder.embed_dim,
        cfg.audio_vocab_size,
        cfg.audio_num_codebooks,
    );
    out.push((
        "text_embeddings.weight".into(),
        vec![cfg.text_vocab_size, db],
    ));
    out.push(("audio_embeddings.weight".into(), vec![v * c, db]));
    out.push(("projection.weight".into(), vec![dd, db]));
    out.push(("codebook0_head.weight".into(), vec![v, db]));
    out.push(("audio_head".into(), vec![c - 1, dd, v]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csm_1b_parameter_count_is_about_1_5b() {
        let n = CsmConfig::csm_1b().parameter_count();
        assert!((1_400_000_000..1_700_000_000).contains(&n), "{n}");
    }

    #[test]
    fn original_round_trip() {
        let c = CsmConfig::tiny();
        let back = CsmConfig::from_json(&c.to_original_json(), "t").unwrap();
        assert_eq!(c, back);
        let mut off = c.clone();
        off.backbone.rope_scaling = None;
        assert_eq!(
            CsmConfig::from_json(&off.to_original_json(), "t").unwrap(),
            off
        );
    }

    #[test]
    fn sesame_named_flavours() {
        let v = serde_json::json!({"backbone_flavor": "llama-1B", "decoder_flavor": "llama-100M",
            "text_vocab_size": 128256, "audio_vocab_size": 2051, "audio_num_codebooks": 32});
        assert_eq!(CsmConfig::from_json(&v, "t").unwrap(), CsmConfig::csm_1b());
        let bad = serde_json::json!({"backbone_flavor": "llama-7B", "decoder_flavor": "llama-100M",
            "text_vocab_size": 1, "audio_vocab_size": 2051, "audio_num_codebooks": 32});
        let err = format!("{:#}", CsmConfig::from_json(&bad, "cfg.json").unwrap_err());
        assert!(err.contains("llama-7B"), "{err}");
    }
}
