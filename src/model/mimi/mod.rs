//! Mimi, CSM's audio codec (backend-neutral part): its config, its weight index and where a
//! codec is found. Two layouts are read, both transformers': a standalone codec directory
//! (`config.json` with `model_type: "mimi"` + `model.safetensors`, as `kyutai/mimi` ships it)
//! and a transformers CSM checkpoint, whose `config.json` carries the codec's config as
//! `codec_config` and whose weights hold the codec under `codec_model.`.
pub mod config;
pub mod weights;

pub use config::{MimiConfig, PadMode};
pub use weights::{
    decoder_layers, encoder_layers, expected_tensors, ConvSpec, MimiWeights, SeanetLayer,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The prefix of the codec's tensors inside a transformers CSM checkpoint.
pub const CSM_CODEC_PREFIX: &str = "codec_model.";

/// The folder a CSM model directory keeps its own standalone codec in (the bundled fixture's).
pub const CODEC_SUBDIR: &str = "codec";

/// A Mimi codec, validated: config + weights.
pub struct MimiModel {
    /// The directory it was loaded from.
    pub dir: PathBuf,
    pub config: MimiConfig,
    pub weights: MimiWeights,
}

impl MimiModel {
    /// Loads the codec of `dir`: a standalone Mimi directory (`model_type: "mimi"`) or a
    /// transformers CSM directory (`model_type: "csm"` with `codec_config`; tensors under
    /// `codec_model.`).
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        if !dir.is_dir() {
            bail!("codec directory {} does not exist", dir.display());
        }
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read codec config {}", cfg_path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
        let what = cfg_path.display().to_string();
        let (config, prefix) = match v.get("model_type").and_then(Value::as_str) {
            Some("csm") => {
                let codec = v.get("codec_config").with_context(|| {
                    format!("{what}: a transformers CSM config without \"codec_config\" (name a Mimi directory with --codec)")
                })?;
                (
                    MimiConfig::from_json(codec, &format!("{what}: codec_config"))?,
                    CSM_CODEC_PREFIX,
                )
            }
            _ => (MimiConfig::from_json(&v, &what)?, ""),
        };
        let files = crate::model::checkpoint::weight_files(dir)?;
        let weights = weights::load_mimi(files, &config, prefix)?;
        Ok(MimiModel {
            dir: dir.to_path_buf(),
            config,
            weights,
        })
    }

    /// The codec a CSM model directory brings: `DIR/codec/` when present (the bundled fixture),
    /// else the `codec_model.*` tensors of a transformers CSM checkpoint. `None` when it has none.
    pub fn codec_dir_of(csm_dir: &Path) -> Option<PathBuf> {
        let sub = csm_dir.join(CODEC_SUBDIR);
        if sub.join("config.json").is_file() {
            return Some(sub);
        }
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(csm_dir.join("config.json")).ok()?)
                .ok()?;
        (v.get("model_type").and_then(Value::as_str) == Some("csm")
            && v.get("codec_config").is_some())
        .then(|| csm_dir.to_path_buf())
    }

    /// Checks the codec decodes `codebooks` codebooks per frame (a CSM model's count).
    pub fn check_codebooks(&self, codebooks: usize) -> Result<()> {
        if codebooks > self.config.num_quantizers
            || codebooks <= self.config.num_semantic_quantizers
        {
            bail!(
                "{}: the codec has {} codebooks ({} semantic); the model produces {codebooks}",
                self.dir.join("config.json").display(),
                self.config.num_quantizers,
                self.config.num_semantic_quantizers
            );
        }
        Ok(())
    }
}

/// How codes that the codec cannot decode are handled: CSM's audio vocabulary (2051) is larger
/// than the codebook (2048). Such a code (≥ `codebook_size`, or negative) is decoded as code 0
/// of its codebook, and counted.
pub fn sanitize_codes(codes: &[i32], codebook_size: usize) -> (Vec<i32>, usize) {
    let mut bad = 0;
    let out = codes
        .iter()
        .map(|&c| {
            if c < 0 || c as usize >= codebook_size {
                bad += 1;
                0
            } else {
                c
            }
        })
        .collect();
    (out, bad)
}

/// Padding (left, right) of a conv of effective kernel `kernel` and `stride` over `len` steps,
/// as transformers' `MimiConv1d` computes it: `kernel − stride` in all (left when `causal`,
/// split half-and-half otherwise, the odd one on the left) plus, on the right, what completes
/// the last window (`ceil(len / stride) · stride − len`).
pub fn conv_padding(len: usize, kernel: usize, stride: usize, causal: bool) -> (usize, usize) {
    let total = kernel - stride;
    let extra = len.div_ceil(stride) * stride - len;
    if causal {
        (total, extra)
    } else {
        (total - total / 2, total / 2 + extra)
    }
}

/// What a transposed conv of `kernel` and `stride` trims from its output (left, right), as
/// transformers' `MimiConvTranspose1d`: causal trims `ceil((kernel − stride) · ratio)` on the
/// right and the rest on the left; non-causal trims half on the right.
pub fn transpose_trim(
    kernel: usize,
    stride: usize,
    trim_right_ratio: f64,
    causal: bool,
) -> (usize, usize) {
    let total = kernel - stride;
    let right = if causal {
        (total as f64 * trim_right_ratio).ceil() as usize
    } else {
        total / 2
    };
    (total - right, right)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_codes_map_to_zero_and_are_counted() {
        let (c, n) = sanitize_codes(&[5, 2048, 2050, -1, 2047], 2048);
        assert_eq!(c, vec![5, 0, 0, 0, 2047]);
        assert_eq!(n, 3);
    }
}
