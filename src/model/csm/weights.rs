//! CSM weight index: reads a checkpoint in either layout, validates every key, shape and dtype
//! against the config, and hands the backends host tensors under the original
//! (Sesame/torchtune) names, with transformers' q/k row permutation undone.
use super::config::{expected_tensors, CsmConfig};
use crate::model::checkpoint::{read_safetensors, weight_files};
use crate::model::tensor::{DType, HostTensor};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which key naming a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Sesame's release: torchtune names, interleaved-pair RoPE.
    Original,
    /// transformers' `CsmForConditionalGeneration`: q/k rows permuted for split-half RoPE.
    Hf,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Original => "original",
            Layout::Hf => "hf",
        }
    }
}

impl std::str::FromStr for Layout {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "original" => Ok(Layout::Original),
            "hf" | "transformers" => Ok(Layout::Hf),
            other => bail!("unknown layout {other:?} (expected original or hf)"),
        }
    }
}

/// Maps a transformers key to its original name; `Ok(None)` for keys that are known but not
/// used (the Mimi codec, the tied depth-decoder embedding).
fn hf_to_original(key: &str) -> Option<Option<String>> {
    const FIXED: &[(&str, &str)] = &[
        ("embed_text_tokens.weight", "text_embeddings.weight"),
        (
            "backbone_model.embed_tokens.embed_audio_tokens.weight",
            "audio_embeddings.weight",
        ),
        ("backbone_model.norm.weight", "backbone.norm.scale"),
        ("lm_head.weight", "codebook0_head.weight"),
        ("depth_decoder.model.norm.weight", "decoder.norm.scale"),
        (
            "depth_decoder.model.inputs_embeds_projector.weight",
            "projection.weight",
        ),
        ("depth_decoder.codebooks_head.weight", "audio_head"),
    ];
    if let Some((_, o)) = FIXED.iter().find(|(h, _)| *h == key) {
        return Some(Some(o.to_string()));
    }
    if key == "depth_decoder.model.embed_tokens.weight" || key.starts_with("codec_model.") {
        return Some(None);
    }
    let (stack, rest) = if let Some(r) = key.strip_prefix("backbone_model.layers.") {
        ("backbone", r)
    } else if let Some(r) = key.strip_prefix("depth_decoder.model.layers.") {
        ("decoder", r)
    } else {
        return None;
    };
    let (idx, leaf) = rest.split_once('.')?;
    idx.parse::<usize>().ok()?;
    let mapped = match leaf {
        "self_attn.q_proj.weight" => "attn.q_proj.weight",
        "self_attn.k_proj.weight" => "attn.k_proj.weight",
        "self_attn.v_proj.weight" => "attn.v_proj.weight",
        "self_attn.o_proj.weight" => "attn.output_proj.weight",
        "input_layernorm.weight" => "sa_norm.scale",
        "post_attention_layernorm.weight" => "mlp_norm.scale",
        "mlp.gate_proj.weight" => "mlp.w1.weight",
        "mlp.up_proj.weight" => "mlp.w3.weight",
        "mlp.down_proj.weight" => "mlp.w2.weight",
        _ => return None,
    };
    Some(Some(format!("{stack}.layers.{idx}.{mapped}")))
}

fn is_hf_key(key: &str) -> bool {
    key.starts_with("backbone_model.")
        || key.starts_with("depth_decoder.")
        || key.starts_with("codec_model.")
        || key == "embed_text_tokens.weight"
        || key == "lm_head.weight"
}

/// Undoes transformers' conversion permutation of q/k rows (split halves → interleaved pairs):
/// within each head, original row 2i is HF row i and original row 2i+1 is HF row i + hd/2.
fn unpermute_rows(t: &HostTensor, head_dim: usize) -> HostTensor {
    let row = t.shape[1] * t.dtype.size();
    let mut data = vec![0u8; t.data.len()];
    let rows = t.shape[0];
    for r in 0..rows {
        let (head, j) = (r / head_dim, r % head_dim);
        let src = head * head_dim
            + if j % 2 == 0 {
                j / 2
            } else {
                j / 2 + head_dim / 2
            };
        data[r * row..(r + 1) * row].copy_from_slice(&t.data[src * row..(src + 1) * row]);
    }
    HostTensor {
        shape: t.shape.clone(),
        dtype: t.dtype,
        data: data.into(),
    }
}

/// A validated checkpoint.
#[derive(Debug, Clone)]
pub struct CsmWeights {
    pub layout: Layout,
    /// Original names → tensors (always every name of [`expected_tensors`]).
    pub tensors: BTreeMap<String, HostTensor>,
    /// Keys in the files that the model does not use (e.g. `codec_model.*`).
    pub ignored: Vec<String>,
    /// sha256 over the weight files in order, hex.
    pub sha256: String,
    pub files: Vec<PathBuf>,
}

impl CsmWeights {
    pub fn get(&self, name: &str) -> &HostTensor {
        &self.tensors[name]
    }
    /// The element type most tensors are stored in.
    pub fn stored_dtype(&self) -> DType {
        let mut counts = BTreeMap::new();
        for t in self.tensors.values() {
            *counts.entry(t.dtype.name()).or_insert(0usize) += t.numel();
        }
        let top = counts.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d);
        top.and_then(|d| d.parse().ok()).unwrap_or(DType::F32)
    }
}

/// Reads, maps and validates the checkpoint of `cfg` from `model` (a directory or a file).
pub fn load_csm(model: &Path, cfg: &CsmConfig) -> Result<CsmWeights> {
    let files = weight_files(model)?;
    let (raw, sha256) = read_safetensors(&files)?;
    map_and_validate(raw, cfg, sha256, files)
}

/// Maps named host tensors (any layout) to the original layout and validates them.
pub fn map_and_validate(
    raw: Vec<(String, HostTensor, PathBuf)>,
    cfg: &CsmConfig,
    sha256: String,
    files: Vec<PathBuf>,
) -> Result<CsmWeights> {
    let n_hf = raw.iter().filter(|(k, ..)| is_hf_key(k)).count();
    let layout = if n_hf * 2 > raw.len() {
        Layout::Hf
    } else {
        Layout::Original
    };
    let expected: BTreeMap<String, Vec<usize>> = expected_tensors(cfg).into_iter().collect();
    let mut tensors = BTreeMap::new();
    let mut ignored = Vec::new();
    for (key, t, file) in raw {
        let name = match layout {
            Layout::Original => {
                if is_hf_key(&key) {
                    bail!("{}: mixed layouts: key {key:?} is a transformers name in an original-layout checkpoint", file.display());
                }
                key.clone()
            }
            Layout::Hf => match hf_to_original(&key) {
                Some(Some(n)) => n,
                Some(None) => {
                    ignored.push(key);
                    continue;
                }
                None if !is_hf_key(&key) && expected.contains_key(&key) => bail!(
                    "{}: mixed layouts: key {key:?} is an original name in a transformers-layout checkpoint",
                    file.display()
                ),
                None => bail!("{}: unexpected key {key:?} (not part of the CSM architecture)", file.display()),
            },
        };
        let Some(shape) = expected.get(&name) else {
            bail!(
                "{}: unexpected key {key:?} (not part of the CSM architecture of this config)",
                file.display()
            );
        };
        if &t.shape != shape {
            bail!(
                "{}: tensor {key:?} has shape {:?}; the config expects {:?}",
                file.display(),
                t.shape,
                shape
            );
        }
        let t = if layout == Layout::Hf
            && (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight"))
        {
            let hd = if name.starts_with("backbone") {
                cfg.backbone.head_dim
            } else {
                cfg.decoder.head_dim
            };
            unpermute_rows(&t, hd)
        } else {
            t
        };
        if tensors.insert(name, t).is_some() {
            bail!("duplicate tensor {key:?} across weight files");
        }
    }
    if let Some((missing, shape)) = expected.iter().find(|(k, _)| !tensors.contains_key(*k)) {
        let shown = match layout {
            Layout::Original => missing.clone(),
            Layout::Hf => original_to_hf_name(missing),
        };
        bail!(
            "{}: missing tensor {shown:?} (shape {shape:?}, {} layout)",
            files
                .first()
                .map_or(String::new(), |f| f.display().to_string()),
            layout.name()
        );
    }
    Ok(CsmWeights {
        layout,
        tensors,
        ignored,
        sha256,
        files,
    })
}

/// The transformers name of an original key (for messages).
pub fn original_to_hf_name(name: &str) -> String {
    for cand in hf_candidates(name) {
        if hf_to_original(&cand) == Some(Some(name.to_string())) {
            return cand;
        }
    }
    name.to_string()
}

fn hf_candidates(name: &str) -> Vec<String> {
    let fixed = [
        "embed_text_tokens.weight",
        "backbone_model.embed_tokens.embed_audio_tokens.weight",
        "backbone_model.norm.weight",
        "lm_head.weight",
        "depth_decoder.model.norm.weight",
        "depth_decoder.model.inputs_embeds_projector.weight",
        "depth_decoder.codebooks_head.weight",
    ];
    let mut out: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    if let Some((stack, rest)) = name.split_once(".layers.") {
        let prefix = if stack == "backbone" {
            "backbone_model.layers."
        } else {
            "depth_decoder.model.layers."
        };
        let (idx, _) = rest.split_once('.').unwrap_or((rest, ""));
        for leaf in [
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            out.push(format!("{prefix}{idx}.{leaf}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_hf_permutation() {
        // HF permutation: view(heads, hd/2, 2, dim).transpose(1, 2): hf row i ← orig 2i, hf row hd/2+i ← orig 2i+1.
        let (heads, hd, dim) = (2, 4, 3);
        let orig: Vec<f32> = (0..heads * hd * dim).map(|x| x as f32).collect();
        let mut hf = vec![0f32; orig.len()];
        for h in 0..heads {
            for i in 0..hd / 2 {
                for c in 0..dim {
                    hf[(h * hd + i) * dim + c] = orig[(h * hd + 2 * i) * dim + c];
                    hf[(h * hd + hd / 2 + i) * dim + c] = orig[(h * hd + 2 * i + 1) * dim + c];
                }
            }
        }
        let t = HostTensor::from_f32(vec![heads * hd, dim], &hf);
        assert_eq!(unpermute_rows(&t, hd).to_f32(), orig);
    }

    #[test]
    fn hf_names_round_trip() {
        for (name, _) in expected_tensors(&CsmConfig::tiny()) {
            let hf = original_to_hf_name(&name);
            assert_ne!(hf, name, "{name}");
            assert_eq!(hf_to_original(&hf), Some(Some(name)));
        }
    }
}
