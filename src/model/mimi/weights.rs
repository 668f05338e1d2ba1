//! Mimi's weight index: every tensor the architecture of a [`MimiConfig`] holds, under
//! transformers' names (`kyutai/mimi`), read from a standalone codec checkpoint or from the
//! `codec_model.*` tensors of a transformers-layout CSM checkpoint, each key and shape checked.
use super::config::MimiConfig;
use crate::model::checkpoint::{read_safetensors_where, RawTensors};
use crate::model::tensor::{DType, HostTensor};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One causal conv of the SEANet stacks: its name (`encoder.layers.0`), channels, kernel,
/// stride and dilation, in the order the signal meets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSpec {
    pub name: String,
    pub in_ch: usize,
    pub out_ch: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
}

/// One stage of a SEANet stack, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeanetLayer {
    /// A causal conv (preceded by an ELU when `elu`).
    Conv { conv: ConvSpec, elu: bool },
    /// ELU then a causal transposed conv of kernel 2·stride (decoder upsampling).
    ConvTranspose { conv: ConvSpec },
    /// Residual block: x + conv1x1(ELU(conv_k(ELU(x)))) — `block.1` then `block.3`.
    Residual { conv1: ConvSpec, conv2: ConvSpec },
}

fn conv(
    name: String,
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> ConvSpec {
    ConvSpec {
        name,
        in_ch,
        out_ch,
        kernel,
        stride,
        dilation,
    }
}

fn residual(cfg: &MimiConfig, prefix: &str, idx: usize, dim: usize, j: usize) -> SeanetLayer {
    let hidden = dim / cfg.compress;
    let dil = cfg.dilation_growth_rate.pow(j as u32);
    SeanetLayer::Residual {
        conv1: conv(
            format!("{prefix}.layers.{idx}.block.1"),
            dim,
            hidden,
            cfg.residual_kernel_size,
            1,
            dil,
        ),
        conv2: conv(
            format!("{prefix}.layers.{idx}.block.3"),
            hidden,
            dim,
            1,
            1,
            1,
        ),
    }
}

/// The SEANet encoder (waveform → hidden at the SEANet rate), with transformers' layer indices
/// (an ELU counts as a layer, so indices skip).
pub fn encoder_layers(cfg: &MimiConfig) -> Vec<SeanetLayer> {
    let f = cfg.num_filters;
    let mut out = vec![SeanetLayer::Conv {
        conv: conv(
            "encoder.layers.0".into(),
            cfg.audio_channels,
            f,
            cfg.kernel_size,
            1,
            1,
        ),
        elu: false,
    }];
    let (mut idx, mut scale) = (1, 1);
    for &ratio in cfg.upsampling_ratios.iter().rev() {
        let dim = scale * f;
        for j in 0..cfg.num_residual_layers {
            out.push(residual(cfg, "encoder", idx, dim, j));
            idx += 1;
        }
        idx += 1; // ELU
        out.push(SeanetLayer::Conv {
            conv: conv(
                format!("encoder.layers.{idx}"),
                dim,
                dim * 2,
                ratio * 2,
                ratio,
                1,
            ),
            elu: true,
        });
        idx += 1;
        scale *= 2;
    }
    idx += 1; // ELU
    out.push(SeanetLayer::Conv {
        conv: conv(
            format!("encoder.layers.{idx}"),
            scale * f,
            cfg.hidden_size,
            cfg.last_kernel_size,
            1,
            1,
        ),
        elu: true,
    });
    out
}

/// The SEANet decoder (hidden at the SEANet rate → waveform).
pub fn decoder_layers(cfg: &MimiConfig) -> Vec<SeanetLayer> {
    let f = cfg.num_filters;
    let mut scale = 1usize << cfg.upsampling_ratios.len();
    let mut out = vec![SeanetLayer::Conv {
        conv: conv(
            "decoder.layers.0".into(),
            cfg.hidden_size,
            scale * f,
            cfg.kernel_size,
            1,
            1,
        ),
        elu: false,
    }];
    let mut idx = 1;
    for &ratio in &cfg.upsampling_ratios {
        let dim = scale * f;
        idx += 1; // ELU
        out.push(SeanetLayer::ConvTranspose {
            conv: conv(
                format!("decoder.layers.{idx}"),
                dim,
                dim / 2,
                ratio * 2,
                ratio,
                1,
            ),
        });
        idx += 1;
        for j in 0..cfg.num_residual_layers {
            out.push(residual(cfg, "decoder", idx, dim / 2, j));
            idx += 1;
        }
        scale /= 2;
    }
    idx += 1; // ELU
    out.push(SeanetLayer::Conv {
        conv: conv(
            format!("decoder.layers.{idx}"),
            f,
            cfg.audio_channels,
            cfg.last_kernel_size,
            1,
            1,
        ),
        elu: true,
    });
    out
}

/// The two RVQ groups: (name, first codebook, number of codebooks).
pub fn quantizer_groups(cfg: &MimiConfig) -> [(&'static str, usize, usize); 2] {
    [
        ("semantic", 0, cfg.num_semantic_quantizers),
        (
            "acoustic",
            cfg.num_semantic_quantizers,
            cfg.num_acoustic_quantizers(),
        ),
    ]
}

/// Every tensor Mimi holds (transformers names, no prefix) with its shape. The codebooks'
/// `initialized` flags are optional and not listed.
pub fn expected_tensors(cfg: &MimiConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let push_conv = |c: &ConvSpec, transposed: bool, out: &mut Vec<(String, Vec<usize>)>| {
        let w = if transposed {
            vec![c.in_ch, c.out_ch, c.kernel]
        } else {
            vec![c.out_ch, c.in_ch, c.kernel]
        };
        out.push((format!("{}.conv.weight", c.name), w));
        out.push((format!("{}.conv.bias", c.name), vec![c.out_ch]));
    };
    for layer in encoder_layers(cfg).iter().chain(&decoder_layers(cfg)) {
        match layer {
            SeanetLayer::Conv { conv, .. } => push_conv(conv, false, &mut out),
            SeanetLayer::ConvTranspose { conv } => push_conv(conv, true, &mut out),
            SeanetLayer::Residual { conv1, conv2 } => {
                push_conv(conv1, false, &mut out);
                push_conv(conv2, false, &mut out);
            }
        }
    }
    let (h, k) = (cfg.hidden_size, cfg.resample_kernel());
    out.push(("downsample.conv.weight".into(), vec![h, h, k]));
    out.push((
        "upsample.conv.weight".into(),
        vec![h, h / cfg.upsample_groups, k],
    ));
    let (nh, nkv, hd, m) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    );
    for stack in ["encoder_transformer", "decoder_transformer"] {
        for i in 0..cfg.num_hidden_layers {
            let p = format!("{stack}.layers.{i}");
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                out.push((format!("{p}.{norm}.weight"), vec![h]));
                out.push((format!("{p}.{norm}.bias"), vec![h]));
            }
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![nh * hd, h]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![nkv * hd, h]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![nkv * hd, h]));
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, nh * hd]));
            out.push((format!("{p}.mlp.fc1.weight"), vec![m, h]));
            out.push((format!("{p}.mlp.fc2.weight"), vec![h, m]));
            out.push((format!("{p}.self_attn_layer_scale.scale"), vec![h]));
            out.push((format!("{p}.mlp_layer_scale.scale"), vec![h]));
        }
    }
    let vq = cfg.vector_quantization_hidden_dimension;
    for (group, _, n) in quantizer_groups(cfg) {
        let p = format!("quantizer.{group}_residual_vector_quantizer");
        if cfg.has_vq_projections() {
            out.push((format!("{p}.input_proj.weight"), vec![vq, h, 1]));
            out.push((format!("{p}.output_proj.weight"), vec![h, vq, 1]));
        }
        for i in 0..n {
            out.push((
                format!("{p}.layers.{i}.codebook.embed_sum"),
                vec![cfg.codebook_size, cfg.codebook_dim],
            ));
            out.push((
                format!("{p}.layers.{i}.codebook.cluster_usage"),
                vec![cfg.codebook_size],
            ));
        }
    }
    out
}

/// Parameter count of the tensors Mimi holds.
pub fn parameter_count(cfg: &MimiConfig) -> usize {
    expected_tensors(cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

/// A validated Mimi checkpoint.
#[derive(Debug, Clone)]
pub struct MimiWeights {
    /// transformers names without the prefix → tensors (every name of [`expected_tensors`]).
    pub tensors: BTreeMap<String, HostTensor>,
    /// `""` for a standalone codec, `"codec_model."` inside a transformers CSM checkpoint.
    pub prefix: String,
    /// sha256 over the weight files in order, hex.
    pub sha256: String,
    pub files: Vec<PathBuf>,
}

impl MimiWeights {
    pub fn get(&self, name: &str) -> &HostTensor {
        &self.tensors[name]
    }
    /// The codebook vectors of quantizer `i` of `group`: embed_sum / max(cluster_usage, 1e-5),
    /// [codebook_size × dim] f32 (transformers' `MimiEuclideanCodebook.embed`, epsilon 1e-5).
    pub fn codebook(&self, group: &str, i: usize) -> HostTensor {
        let p = format!("quantizer.{group}_residual_vector_quantizer.layers.{i}.codebook");
        let sum = self.get(&format!("{p}.embed_sum"));
        let usage = self.get(&format!("{p}.cluster_usage")).to_f32();
        let dim = sum.shape[1];
        let values: Vec<f32> = sum
            .to_f32()
            .chunks_exact(dim)
            .zip(&usage)
            .flat_map(|(row, &u)| {
                let d = u.max(CODEBOOK_EPS);
                row.iter().map(move |&x| x / d).collect::<Vec<f32>>()
            })
            .collect();
        HostTensor::from_f32(sum.shape.clone(), &values)
    }
    pub fn stored_dtype(&self) -> DType {
        self.tensors.values().next().map_or(DType::F32, |t| t.dtype)
    }
}

/// transformers' clamp of `cluster_usage` before dividing.
pub const CODEBOOK_EPS: f32 = 1e-5;

/// Reads the tensors named `prefix*` of `files` and validates them against `cfg`: a missing,
/// unexpected or mis-shaped tensor is named with its file.
pub fn load_mimi(files: Vec<PathBuf>, cfg: &MimiConfig, prefix: &str) -> Result<MimiWeights> {
    let (raw, sha256) = read_safetensors_where(&files, &|k: &str| k.starts_with(prefix))?;
    validate_mimi(raw, cfg, prefix, sha256, files)
}

/// Validates named host tensors (all starting with `prefix`) against `cfg`.
pub fn validate_mimi(
    raw: RawTensors,
    cfg: &MimiConfig,
    prefix: &str,
    sha256: String,
    files: Vec<PathBuf>,
) -> Result<MimiWeights> {
    let expected: BTreeMap<String, Vec<usize>> = expected_tensors(cfg).into_iter().collect();
    let mut tensors = BTreeMap::new();
    for (key, t, file) in raw {
        let Some(name) = key.strip_prefix(prefix) else {
            bail!(
                "{}: key {key:?} lacks the prefix {prefix:?}",
                file.display()
            );
        };
        if name.ends_with(".codebook.initialized") && t.numel() == 1 {
            continue;
        }
        let Some(shape) = expected.get(name) else {
            bail!(
                "{}: unexpected key {key:?} (not part of the Mimi architecture of this config)",
                file.display()
            );
        };
        if &t.shape != shape {
            bail!(
                "{}: tensor {key:?} has shape {:?}; the codec config expects {:?}",
                file.display(),
                t.shape,
                shape
            );
        }
        if tensors.insert(name.to_string(), t).is_some() {
            bail!("duplicate tensor {key:?} across weight files");
        }
    }
    if let Some((missing, shape)) = expected.iter().find(|(k, _)| !tensors.contains_key(*k)) {
        bail!(
            "{}: missing tensor \"{prefix}{missing}\" (shape {shape:?}) of the Mimi codec",
            files
                .first()
                .map_or(String::new(), |f| f.display().to_string()),
        );
    }
    Ok(MimiWeights {
        tensors,
        prefix: prefix.to_string(),
        sha256,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_mimi_layer_names_and_size() {
        let cfg = MimiConfig::mimi();
        let names: Vec<String> = expected_tensors(&cfg).into_iter().map(|(n, _)| n).collect();
        for n in [
            "encoder.layers.14.conv.weight",
            "decoder.layers.14.conv.weight",
            "decoder.layers.12.block.3.conv.bias",
            "quantizer.acoustic_residual_vector_quantizer.layers.30.codebook.embed_sum",
        ] {
            assert!(names.contains(&n.to_string()), "{n}");
        }
        // kyutai/mimi holds about 96 M parameters (the two transformers 50 M, codebooks 17 M).
        let p = parameter_count(&cfg);
        assert!((90_000_000..100_000_000).contains(&p), "{p}");
    }
}
