//! Mimi's configuration, read from transformers' `config.json` (`model_type: "mimi"`, as
//! `kyutai/mimi` ships it) or from the `codec_config` object of a transformers CSM config.
use crate::model::flavor::{get_f64, get_usize};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// Every number of the Mimi architecture that the codec needs (transformers' `MimiConfig`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MimiConfig {
    pub sampling_rate: usize,
    pub audio_channels: usize,
    /// Latent width of the encoder/decoder transformers.
    pub hidden_size: usize,
    /// SEANet base channel count (doubled at each of the encoder's downsampling stages).
    pub num_filters: usize,
    /// Decoder upsampling ratios, in decoder order (the encoder walks them reversed).
    pub upsampling_ratios: Vec<usize>,
    pub kernel_size: usize,
    pub last_kernel_size: usize,
    pub residual_kernel_size: usize,
    pub dilation_growth_rate: usize,
    pub num_residual_layers: usize,
    /// Residual-block bottleneck: hidden channels = dim / compress.
    pub compress: usize,
    /// `constant` (zeros) or `replicate`: the SEANet convs' padding (the downsample always replicates).
    pub pad_mode: PadMode,
    /// Share of a causal transposed conv's padding trimmed on the right (1.0: all of it).
    pub trim_right_ratio: f64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    /// Each query sees itself and the `sliding_window - 1` positions before it.
    pub sliding_window: usize,
    pub max_position_embeddings: usize,
    pub num_quantizers: usize,
    pub num_semantic_quantizers: usize,
    pub codebook_size: usize,
    pub codebook_dim: usize,
    pub vector_quantization_hidden_dimension: usize,
    pub upsample_groups: usize,
    /// Code frames per second (12.5 for the real model).
    pub frame_rate: f64,
}

/// Padding mode of a causal conv.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    Constant,
    Replicate,
}

impl MimiConfig {
    /// `kyutai/mimi` (transformers' `MimiConfig` defaults; CSM-1B's codec).
    pub fn mimi() -> Self {
        MimiConfig {
            sampling_rate: 24_000,
            audio_channels: 1,
            hidden_size: 512,
            num_filters: 64,
            upsampling_ratios: vec![8, 6, 5, 4],
            kernel_size: 7,
            last_kernel_size: 3,
            residual_kernel_size: 3,
            dilation_growth_rate: 2,
            num_residual_layers: 1,
            compress: 2,
            pad_mode: PadMode::Constant,
            trim_right_ratio: 1.0,
            num_hidden_layers: 8,
            num_attention_heads: 8,
            num_key_value_heads: 8,
            head_dim: 64,
            intermediate_size: 2048,
            norm_eps: 1e-5,
            rope_theta: 10_000.0,
            sliding_window: 250,
            max_position_embeddings: 8000,
            num_quantizers: 32,
            num_semantic_quantizers: 1,
            codebook_size: 2048,
            codebook_dim: 256,
            vector_quantization_hidden_dimension: 256,
            upsample_groups: 512,
            frame_rate: 12.5,
        }
    }

    /// A tiny Mimi of the same architecture with `codebooks` quantizers (the fixture's codec).
    pub fn tiny(codebooks: usize) -> Self {
        MimiConfig {
            hidden_size: 32,
            num_filters: 4,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 2,
            head_dim: 16,
            intermediate_size: 64,
            sliding_window: 8,
            max_position_embeddings: 4096,
            num_quantizers: codebooks,
            codebook_dim: 16,
            vector_quantization_hidden_dimension: 16,
            upsample_groups: 32,
            ..Self::mimi()
        }
    }

    /// Waveform samples per SEANet step (product of the ratios).
    pub fn hop_length(&self) -> usize {
        self.upsampling_ratios.iter().product()
    }

    /// SEANet steps per second, rounded up (transformers' `encodec_frame_rate`).
    pub fn encodec_frame_rate(&self) -> usize {
        self.sampling_rate.div_ceil(self.hop_length())
    }

    /// Kernel of the stride-2 downsample conv and the upsample transposed conv.
    pub fn resample_kernel(&self) -> usize {
        2 * (self.encodec_frame_rate() as f64 / self.frame_rate) as usize
    }

    /// Waveform samples per code frame (1920 for the real model).
    pub fn samples_per_frame(&self) -> usize {
        self.hop_length() * 2
    }

    pub fn num_acoustic_quantizers(&self) -> usize {
        self.num_quantizers - self.num_semantic_quantizers
    }

    /// Whether the quantizer has 1×1 input/output projections (the VQ width differs from hidden).
    pub fn has_vq_projections(&self) -> bool {
        self.vector_quantization_hidden_dimension != self.hidden_size
    }

    /// RoPE inverse frequencies (`rope_type: default`), one per rotated pair.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim as f64;
        (0..self.head_dim / 2)
            .map(|i| (1.0 / self.rope_theta.powf(2.0 * i as f64 / d)) as f32)
            .collect()
    }

    /// Reads a Mimi `config.json` (`model_type: "mimi"`); `what` names the file in errors.
    pub fn from_json(v: &Value, what: &str) -> Result<Self> {
        match v.get("model_type").and_then(Value::as_str) {
            Some("mimi") => {}
            Some(other) => {
                bail!("{what}: model_type {other:?} is not a Mimi codec (expected \"mimi\")")
            }
            None => bail!("{what}: no \"model_type\" (expected \"mimi\")"),
        }
        let cfg = Self::parse(v).with_context(|| format!("{what}: Mimi config"))?;
        cfg.validate()
            .with_context(|| format!("{what}: Mimi config"))?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read codec config {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        Self::from_json(&v, &path.display().to_string())
    }

    fn parse(v: &Value) -> Result<Self> {
        let ratios = v
            .get("upsampling_ratios")
            .and_then(Value::as_array)
            .context("missing or non-array \"upsampling_ratios\"")?
            .iter()
            .map(|r| r.as_u64().map(|r| r as usize))
            .collect::<Option<Vec<usize>>>()
            .context("\"upsampling_ratios\": expected positive integers")?;
        let pad_mode = match v.get("pad_mode").and_then(Value::as_str) {
            Some("constant") => PadMode::Constant,
            Some("replicate") => PadMode::Replicate,
            Some(other) => {
                bail!("\"pad_mode\" {other:?} is not supported (expected \"constant\" or \"replicate\")")
            }
            None => bail!("missing \"pad_mode\""),
        };
        let bool_key = |key: &str, want: bool, why: &str| -> Result<()> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(()),
                Some(b) if b.as_bool() == Some(want) => Ok(()),
                Some(other) => bail!("\"{key}\" = {other} is not supported ({why})"),
            }
        };
        bool_key("use_causal_conv", true, "Mimi's convs are causal")?;
        bool_key(
            "use_conv_shortcut",
            false,
            "Mimi's residual blocks add the input",
        )?;
        bool_key("attention_bias", false, "Mimi's projections have no bias")?;
        match v.get("hidden_act").and_then(Value::as_str) {
            Some("gelu") | None => {}
            Some(other) => bail!(
                "\"hidden_act\" {other:?} is not supported (expected \"gelu\", the exact erf GELU)"
            ),
        }
        // transformers 5 writes `rope_parameters`; 4.x wrote `rope_theta` (+ `rope_scaling`).
        let params = v
            .get("rope_parameters")
            .filter(|p| p.is_object())
            .or_else(|| v.get("rope_scaling").filter(|p| p.is_object()));
        if let Some(p) = params {
            let kind = p
                .get("rope_type")
                .or_else(|| p.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                bail!("rope_type {kind:?} is not supported (Mimi uses \"default\")");
            }
        }
        let rope_theta = params
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| v.get("rope_theta"))
            .and_then(Value::as_f64)
            .context("missing \"rope_parameters.rope_theta\" (or \"rope_theta\")")?;
        let hidden = get_usize(v, "hidden_size")?;
        let heads = get_usize(v, "num_attention_heads")?;
        let opt_usize = |key: &str, default: usize| -> Result<usize> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x.as_u64().map(|n| n as usize).with_context(|| {
                    format!("\"{key}\": expected a non-negative integer, got {x}")
                }),
            }
        };
        let vq = get_usize(v, "vector_quantization_hidden_dimension")?;
        let sampling_rate = get_usize(v, "sampling_rate")?;
        let hop: usize = ratios.iter().product();
        // `frame_rate` / `_frame_rate` when written; else sampling rate / (hop × 2).
        let frame_rate = match v.get("frame_rate").or_else(|| v.get("_frame_rate")) {
            None | Some(Value::Null) => sampling_rate as f64 / (hop.max(1) * 2) as f64,
            Some(x) => x
                .as_f64()
                .with_context(|| format!("\"frame_rate\": expected a number, got {x}"))?,
        };
        let trim_right_ratio = match v.get("trim_right_ratio") {
            None | Some(Value::Null) => 1.0,
            Some(_) => get_f64(v, "trim_right_ratio")?,
        };
        Ok(MimiConfig {
            sampling_rate,
            audio_channels: get_usize(v, "audio_channels")?,
            hidden_size: hidden,
            num_filters: get_usize(v, "num_filters")?,
            upsampling_ratios: ratios,
            kernel_size: get_usize(v, "kernel_size")?,
            last_kernel_size: get_usize(v, "last_kernel_size")?,
            residual_kernel_size: get_usize(v, "residual_kernel_size")?,
            dilation_growth_rate: get_usize(v, "dilation_growth_rate")?,
            num_residual_layers: get_usize(v, "num_residual_layers")?,
            compress: get_usize(v, "compress")?,
            pad_mode,
            trim_right_ratio,
            num_hidden_layers: get_usize(v, "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: opt_usize("num_key_value_heads", heads)?,
            head_dim: opt_usize("head_dim", hidden / heads.max(1))?,
            intermediate_size: get_usize(v, "intermediate_size")?,
            norm_eps: get_f64(v, "norm_eps")?,
            rope_theta,
            sliding_window: get_usize(v, "sliding_window")?,
            max_position_embeddings: opt_usize("max_position_embeddings", 8000)?,
            num_quantizers: get_usize(v, "num_quantizers")?,
            num_semantic_quantizers: get_usize(v, "num_semantic_quantizers")?,
            codebook_size: get_usize(v, "codebook_size")?,
            codebook_dim: opt_usize("codebook_dim", vq)?,
            vector_quantization_hidden_dimension: vq,
            upsample_groups: get_usize(v, "upsample_groups")?,
            frame_rate,
        })
    }

    /// Checks the numbers fit together; each message names the key.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("sampling_rate", self.sampling_rate),
            ("hidden_size", self.hidden_size),
            ("num_filters", self.num_filters),
            ("kernel_size", self.kernel_size),
            ("last_kernel_size", self.last_kernel_size),
            ("residual_kernel_size", self.residual_kernel_size),
            ("dilation_growth_rate", self.dilation_growth_rate),
            ("compress", self.compress),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.intermediate_size),
            ("sliding_window", self.sliding_window),
            ("num_quantizers", self.num_quantizers),
            ("codebook_size", self.codebook_size),
            ("codebook_dim", self.codebook_dim),
            (
                "vector_quantization_hidden_dimension",
                self.vector_quantization_hidden_dimension,
            ),
            ("upsample_groups", self.upsample_groups),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, n)| *n == 0) {
            bail!("\"{key}\" must be positive");
        }
        if self.audio_channels != 1 {
            bail!(
                "\"audio_channels\" = {}: only mono (1) is supported",
                self.audio_channels
            );
        }
        if self.upsampling_ratios.is_empty() || self.upsampling_ratios.contains(&0) {
            bail!("\"upsampling_ratios\" must be a non-empty list of positive integers");
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!(
                "\"head_dim\" = {} must be even (RoPE rotates pairs)",
                self.head_dim
            );
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "\"num_attention_heads\" = {} is not a multiple of \"num_key_value_heads\" = {}",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if self.num_semantic_quantizers == 0 || self.num_semantic_quantizers >= self.num_quantizers
        {
            bail!(
                "\"num_semantic_quantizers\" = {} must be at least 1 and below \"num_quantizers\" = {}",
                self.num_semantic_quantizers,
                self.num_quantizers
            );
        }
        if self.codebook_dim != self.vector_quantization_hidden_dimension {
            bail!(
                "\"codebook_dim\" = {} differs from \"vector_quantization_hidden_dimension\" = {}",
                self.codebook_dim,
                self.vector_quantization_hidden_dimension
            );
        }
        let min_width = self.num_filters;
        if self.compress > min_width || !min_width.is_multiple_of(self.compress) {
            bail!(
                "\"compress\" = {} must divide \"num_filters\" = {}",
                self.compress,
                self.num_filters
            );
        }
        if !self.hidden_size.is_multiple_of(self.upsample_groups) {
            bail!(
                "\"upsample_groups\" = {} must divide \"hidden_size\" = {}",
                self.upsample_groups,
                self.hidden_size
            );
        }
        if !(self.frame_rate.is_finite() && self.frame_rate > 0.0) {
            bail!("\"frame_rate\" = {} must be positive", self.frame_rate);
        }
        if self.resample_kernel() < 2 {
            bail!(
                "\"frame_rate\" = {} must be at most half the SEANet rate {} (Mimi downsamples by 2)",
                self.frame_rate,
                self.encodec_frame_rate()
            );
        }
        if !(0.0..=1.0).contains(&self.trim_right_ratio) {
            bail!(
                "\"trim_right_ratio\" = {} must lie in [0, 1]",
                self.trim_right_ratio
            );
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            bail!("\"norm_eps\" = {} must be positive", self.norm_eps);
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            bail!("\"rope_theta\" = {} must be positive", self.rope_theta);
        }
        Ok(())
    }

    /// Serialized as transformers writes it (what the fixture stores).
    pub fn to_hf_json(&self) -> Value {
        serde_json::json!({
            "architectures": ["MimiModel"],
            "model_type": "mimi",
            "sampling_rate": self.sampling_rate,
            "audio_channels": self.audio_channels,
            "hidden_size": self.hidden_size,
            "num_filters": self.num_filters,
            "upsampling_ratios": self.upsampling_ratios,
            "kernel_size": self.kernel_size,
            "last_kernel_size": self.last_kernel_size,
            "residual_kernel_size": self.residual_kernel_size,
            "dilation_growth_rate": self.dilation_growth_rate,
            "num_residual_layers": self.num_residual_layers,
            "compress": self.compress,
            "pad_mode": match self.pad_mode { PadMode::Constant => "constant", PadMode::Replicate => "replicate" },
            "trim_right_ratio": self.trim_right_ratio,
            "use_causal_conv": true,
            "use_conv_shortcut": false,
            "attention_bias": false,
            "hidden_act": "gelu",
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "norm_eps": self.norm_eps,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "sliding_window": self.sliding_window,
            "max_position_embeddings": self.max_position_embeddings,
            "num_quantizers": self.num_quantizers,
            "num_semantic_quantizers": self.num_semantic_quantizers,
            "codebook_size": self.codebook_size,
            "codebook_dim": self.codebook_dim,
            "vector_quantization_hidden_dimension": self.vector_quantization_hidden_dimension,
            "upsample_groups": self.upsample_groups,
            "frame_rate": self.frame_rate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_derived_numbers() {
        for c in [MimiConfig::mimi(), MimiConfig::tiny(8)] {
            assert_eq!(MimiConfig::from_json(&c.to_hf_json(), "t").unwrap(), c);
        }
        let m = MimiConfig::mimi();
        assert_eq!(m.samples_per_frame(), 1920);
        assert_eq!(m.resample_kernel(), 4);
        assert_eq!(m.encodec_frame_rate(), 25);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut v = MimiConfig::mimi().to_hf_json();
        v["model_type"] = "csm".into();
        let e = format!("{:#}", MimiConfig::from_json(&v, "c.json").unwrap_err());
        assert!(e.contains("c.json") && e.contains("\"csm\""), "{e}");
        let mut v = MimiConfig::mimi().to_hf_json();
        v["hidden_act"] = "gelu_pytorch_tanh".into();
        let e = format!("{:#}", MimiConfig::from_json(&v, "c.json").unwrap_err());
        assert!(e.contains("hidden_act"), "{e}");
        let mut v = MimiConfig::mimi().to_hf_json();
        v.as_object_mut().unwrap().remove("sliding_window");
        let e = format!("{:#}", MimiConfig::from_json(&v, "c.json").unwrap_err());
        assert!(e.contains("sliding_window"), "{e}");
        let mut v = MimiConfig::mimi().to_hf_json();
        v["num_semantic_quantizers"] = 32.into();
        let e = format!("{:#}", MimiConfig::from_json(&v, "c.json").unwrap_err());
        assert!(e.contains("num_semantic_quantizers"), "{e}");
    }
}
