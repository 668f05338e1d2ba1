//! Mimi on MLX (mlx-rs), as an MLX port writes it: channels-last `[1, L, C]` activations,
//! `conv1d` / `conv_transpose1d` with weights moved to MLX's `[out, k, in]` layout,
//! `fast::layer_norm`, `fast::rope` (split halves), `fast::scaled_dot_product_attention` with a
//! sliding-window mask; one lazy graph per call, evaluated once.
use super::stack::{mlx_dtype, to_array};
use crate::backend::codec::{
    check_codes, check_stream_codes, check_wave, Codec, CodecFault, Decoded, Encoded,
};
use crate::backend::common::{
    encoded_from_host, mimi_downsample, DecodeStream, MimiLayer, MimiNet, TransposeGeometry,
};
use crate::capture::BackendInfo;
use crate::model::mimi::{
    conv_padding, decoder_layers, encoder_layers, weights::quantizer_groups, ConvSpec, MimiConfig,
    MimiModel, PadMode, SeanetLayer,
};
use crate::model::DType;
use anyhow::{bail, Result};
use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::ops::indexing::{argmin_axis, take_axis};
use mlx_rs::ops::{concatenate, conv1d, conv_transpose1d, pad, stack};
use mlx_rs::{Array, Dtype};

/// What the injected faults change (all off in normal use).
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    non_causal: bool,
    no_window: bool,
    tanh_gelu: bool,
}

/// Steps `start..end` of x along its time axis (1).
fn time_range(x: &Array, start: i32, end: i32) -> Result<Array> {
    let idx = Array::arange::<i32, i32>(start, end, None)?;
    Ok(take_axis(x, &idx, 1)?)
}

/// A causal conv (weights `[out, k, in]`, MLX's layout).
struct Conv {
    w: Array,
    b: Option<Array>,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_mode: PadMode,
}

impl Conv {
    fn load(
        m: &MimiModel,
        spec: &ConvSpec,
        dt: Dtype,
        bias: bool,
        pad_mode: PadMode,
    ) -> Result<Self> {
        let get = |leaf: &str| to_array(m.weights.get(&format!("{}.conv.{leaf}", spec.name)), dt);
        let w = get("weight")?.transpose_axes(&[0, 2, 1])?;
        w.eval()?;
        Ok(Conv {
            w,
            b: if bias { Some(get("bias")?) } else { None },
            kernel: (spec.kernel - 1) * spec.dilation + 1,
            stride: spec.stride,
            dilation: spec.dilation,
            pad_mode,
        })
    }

    /// x: [1, L, in] → [1, ceil(L / stride), out].
    fn forward(&self, x: &Array, f: Faults) -> Result<Array> {
        let len = x.dim(1) as usize;
        let (left, right) = conv_padding(len, self.kernel, self.stride, !f.non_causal);
        let mode = match self.pad_mode {
            PadMode::Constant => mlx_rs::ops::PadMode::Constant,
            PadMode::Replicate => mlx_rs::ops::PadMode::Edge,
        };
        let widths = [(0, 0), (left as i32, right as i32), (0, 0)];
        let x = pad(x, &widths[..], None::<Array>, mode)?;
        let y = conv1d(&x, &self.w, self.stride as i32, 0, self.dilation as i32, 1)?;
        Ok(match &self.b {
            Some(b) => y.add(b)?,
            None => y,
        })
    }

    /// Streaming (stride 1): x [1, n, in] → [1, n, out], continuing the input kept in `state`
    /// (the last `kernel − 1` input steps; at the start, the causal left padding).
    fn step(&self, x: &Array, state: &mut Option<Array>) -> Result<Array> {
        let ctx = (self.kernel - self.stride) as i32;
        if ctx == 0 {
            return self.forward(x, Faults::default());
        }
        let prev = match state.take() {
            Some(p) => p,
            None => {
                let widths = [(0, 0), (ctx, 0), (0, 0)];
                let mode = match self.pad_mode {
                    PadMode::Constant => mlx_rs::ops::PadMode::Constant,
                    PadMode::Replicate => mlx_rs::ops::PadMode::Edge,
                };
                // The left padding alone: x padded, then x cut off again.
                time_range(&pad(x, &widths[..], None::<Array>, mode)?, 0, ctx)?
            }
        };
        let xin = concatenate(&[prev, x.clone()], 1)?;
        let len = xin.dim(1);
        *state = Some(time_range(&xin, len - ctx, len)?);
        let y = conv1d(
            &xin,
            &self.w,
            self.stride as i32,
            0,
            self.dilation as i32,
            1,
        )?;
        Ok(match &self.b {
            Some(b) => y.add(b)?,
            None => y,
        })
    }
}

/// Moves a transposed-conv weight from the checkpoint's `[in, out / groups, k]` to MLX's
/// `[out, k, in / groups]`; `wrong_axes` reads the memory as if it were already `[out, k,
/// in / groups]` (the `transposed-conv-axes` fault).
fn transposed_weight(w: &Array, groups: i32, wrong_axes: bool) -> Result<Array> {
    let s = w.shape();
    let (cin, cout_g, k) = (s[0], s[1], s[2]);
    let out = if wrong_axes {
        w.reshape(&[cout_g * groups, k, cin / groups])?
    } else {
        w.reshape(&[groups, cin / groups, cout_g, k])?
            .transpose_axes(&[0, 2, 3, 1])?
            .reshape(&[cout_g * groups, k, cin / groups])?
    };
    out.eval()?;
    Ok(out)
}

/// A causal transposed conv, trimmed like transformers.
struct ConvTranspose {
    /// The checkpoint's weight `[in, out / groups, k]`, kept to rebuild `w` under a fault.
    w_src: Array,
    w: Array,
    b: Option<Array>,
    geo: TransposeGeometry,
}

impl ConvTranspose {
    fn load(
        m: &MimiModel,
        name: &str,
        dt: Dtype,
        bias: bool,
        stride: usize,
        groups: usize,
    ) -> Result<Self> {
        let get = |leaf: &str| to_array(m.weights.get(&format!("{name}.conv.{leaf}")), dt);
        let w_src = get("weight")?;
        let geo = TransposeGeometry::new(&m.config, w_src.dim(2) as usize, stride, groups);
        Ok(ConvTranspose {
            w: transposed_weight(&w_src, groups as i32, false)?,
            w_src,
            b: if bias { Some(get("bias")?) } else { None },
            geo,
        })
    }

    /// x: [1, L, in] → [1, L · stride, out].
    fn forward(&self, x: &Array, f: Faults) -> Result<Array> {
        let y = conv_transpose1d(
            x,
            &self.w,
            self.geo.stride as i32,
            0,
            1,
            0,
            self.geo.groups as i32,
        )?;
        let y = match &self.b {
            Some(b) => y.add(b)?,
            None => y,
        };
        let (left, right) = self.geo.trim(!f.non_causal);
        let len = y.dim(1);
        let keep = Array::arange::<i32, i32>(left as i32, len - right as i32, None)?;
        Ok(take_axis(&y, &keep, 1)?)
    }

    /// Streaming: x [1, n, in] → [1, n · stride, out]. The last `kernel − stride` outputs still
    /// miss the next input's contribution: they are kept in `state` (without the bias) and
    /// added to the next chunk's first outputs.
    fn step(&self, x: &Array, state: &mut Option<Array>) -> Result<Array> {
        let y = conv_transpose1d(
            x,
            &self.w,
            self.geo.stride as i32,
            0,
            1,
            0,
            self.geo.groups as i32,
        )?;
        let ov = (self.geo.kernel - self.geo.stride) as i32;
        let len = y.dim(1);
        let emit = len - ov;
        let y = match state.take() {
            Some(partial) => {
                let widths = [(0, 0), (0, emit), (0, 0)];
                y.add(pad(
                    &partial,
                    &widths[..],
                    None::<Array>,
                    mlx_rs::ops::PadMode::Constant,
                )?)?
            }
            None => y,
        };
        *state = Some(time_range(&y, emit, len)?);
        let out = time_range(&y, 0, emit)?;
        Ok(match &self.b {
            Some(b) => out.add(b)?,
            None => out,
        })
    }
}

enum Layer {
    Conv { conv: Conv, elu: bool },
    ConvTranspose(ConvTranspose),
    Residual(Conv, Conv),
}

fn elu(x: &Array) -> Result<Array> {
    Ok(mlx_rs::nn::elu(x, None)?)
}

/// A SEANet stack (encoder or decoder).
struct Seanet {
    layers: Vec<Layer>,
}

impl Seanet {
    fn load(m: &MimiModel, specs: &[SeanetLayer], dt: Dtype) -> Result<Self> {
        let pad = m.config.pad_mode;
        let layers = specs
            .iter()
            .map(|s| {
                Ok(match s {
                    SeanetLayer::Conv { conv, elu } => Layer::Conv {
                        conv: Conv::load(m, conv, dt, true, pad)?,
                        elu: *elu,
                    },
                    SeanetLayer::ConvTranspose { conv } => Layer::ConvTranspose(
                        ConvTranspose::load(m, &conv.name, dt, true, conv.stride, 1)?,
                    ),
                    SeanetLayer::Residual { conv1, conv2 } => Layer::Residual(
                        Conv::load(m, conv1, dt, true, pad)?,
                        Conv::load(m, conv2, dt, true, pad)?,
                    ),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Seanet { layers })
    }

    fn forward(&self, x: &Array, f: Faults) -> Result<Array> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = match layer {
                Layer::Conv { conv, elu: e } => conv.forward(&if *e { elu(&h)? } else { h }, f)?,
                Layer::ConvTranspose(conv) => conv.forward(&elu(&h)?, f)?,
                Layer::Residual(c1, c2) => {
                    h.add(c2.forward(&elu(&c1.forward(&elu(&h)?, f)?)?, f)?)?
                }
            };
        }
        Ok(h)
    }

    /// Streaming [`Seanet::forward`]: `states` holds one slot per conv, in order.
    fn step(&self, x: &Array, states: &mut [Option<Array>]) -> Result<Array> {
        let mut h = x.clone();
        let mut slot = states.iter_mut();
        let mut next = || slot.next().expect("one state per conv");
        for layer in &self.layers {
            h = match layer {
                Layer::Conv { conv, elu: e } => {
                    conv.step(&if *e { elu(&h)? } else { h }, next())?
                }
                Layer::ConvTranspose(conv) => conv.step(&elu(&h)?, next())?,
                Layer::Residual(c1, c2) => {
                    let inner = elu(&c1.step(&elu(&h)?, next())?)?;
                    h.add(c2.step(&inner, next())?)?
                }
            };
        }
        Ok(h)
    }
}

/// Mimi's transformer: pre-LayerNorm, causal attention in a sliding window with split-half
/// RoPE, exact GELU MLP, layer scale on both residual branches, no final norm.
struct Transformer {
    layers: Vec<MimiLayer<Array>>,
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    eps: f32,
    window: usize,
    rope_theta: f32,
}

impl Transformer {
    fn load(m: &MimiModel, stack: &str, dt: Dtype) -> Result<Self> {
        let cfg = &m.config;
        let get = |i: usize, leaf: &str| {
            to_array(m.weights.get(&format!("{stack}.layers.{i}.{leaf}")), dt)
        };
        let get_t = |i: usize, leaf: &str| -> Result<Array> {
            let a = get(i, leaf)?.t();
            a.eval()?;
            Ok(a)
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| MimiLayer::load(i, &get_t, &get))
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer {
            layers,
            heads: cfg.num_attention_heads as i32,
            kv_heads: cfg.num_key_value_heads as i32,
            head_dim: cfg.head_dim as i32,
            eps: cfg.norm_eps as f32,
            window: cfg.sliding_window,
            rope_theta: cfg.rope_theta as f32,
        })
    }

    /// Split-half RoPE at positions `start..start + L` on x [1, H, L, hd].
    fn rope(&self, x: &Array, start: i32) -> Result<Array> {
        Ok(fast::rope(
            x,
            self.head_dim,
            false,
            self.rope_theta,
            1.0,
            start,
            None::<&Array>,
        )?)
    }

    /// Additive mask [L, cached + L] for `l` queries preceded by `cached` kept keys: −∞ for
    /// later keys and for those `window` or more before the query.
    fn attention_mask(&self, l: i32, cached: i32, f: Faults) -> Result<Array> {
        let q = Array::arange::<i32, i32>(cached, cached + l, None)?.reshape(&[l, 1])?;
        let k = Array::arange::<i32, i32>(0, cached + l, None)?.reshape(&[1, cached + l])?;
        let mut hidden = k.gt(&q)?;
        if !f.no_window {
            let too_old =
                k.le(q.subtract(Array::from_int(self.window.min(i32::MAX as usize) as i32))?)?;
            hidden = hidden.logical_or(&too_old)?;
        }
        let zero = Array::from_f32(0.0);
        let neg = Array::from_f32(f32::NEG_INFINITY);
        Ok(mlx_rs::ops::select(&hidden, &neg, &zero)?)
    }

    /// x: [1, L, D] → [1, L, D], the whole sequence at positions 0..L.
    fn forward(&self, x: &Array, f: Faults) -> Result<Array> {
        self.attend(x, 0, None, f)
    }

    /// x: [1, L, D] at positions `start..start + L` → [1, L, D]. With `cache` (streaming), the
    /// queries also see the keys and values kept from earlier calls (one `(k, v)` per layer,
    /// after RoPE), and the cache keeps the last `window − 1` of them for the next call.
    fn attend(
        &self,
        x: &Array,
        start: i32,
        mut cache: Option<&mut Vec<(Array, Array)>>,
        f: Faults,
    ) -> Result<Array> {
        let l = x.dim(1);
        let (nh, nkv, hd) = (self.heads, self.kv_heads, self.head_dim);
        let cached = cache
            .as_ref()
            .and_then(|c| c.first())
            .map_or(0, |(k, _)| k.dim(2));
        let window = if f.no_window { usize::MAX } else { self.window };
        let keep = (cached + l).min(window.saturating_sub(1).min(i32::MAX as usize) as i32);
        let mask = self.attention_mask(l, cached, f)?.as_dtype(x.dtype())?;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let xn = fast::layer_norm(&h, &layer.norm1.0, &layer.norm1.1, self.eps)?;
            let split = |w: &Array, n: i32| -> Result<Array> {
                Ok(xn
                    .matmul(w)?
                    .reshape(&[1, l, n, hd])?
                    .transpose_axes(&[0, 2, 1, 3])?)
            };
            let q = self.rope(&split(&layer.q, nh)?, start)?;
            let mut k = self.rope(&split(&layer.k, nkv)?, start)?;
            let mut v = split(&layer.v, nkv)?;
            if let Some(cache) = cache.as_deref_mut() {
                if let Some((ck, cv)) = cache.get(i) {
                    k = concatenate(&[ck.clone(), k], 2)?;
                    v = concatenate(&[cv.clone(), v], 2)?;
                }
                let n = k.dim(2);
                let idx = Array::arange::<i32, i32>(n - keep, n, None)?;
                let kept = (take_axis(&k, &idx, 2)?, take_axis(&v, &idx, 2)?);
                if i < cache.len() {
                    cache[i] = kept;
                } else {
                    cache.push(kept);
                }
            }
            let attn = fast::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                scale,
                ScaledDotProductAttentionMask::Array(&mask),
                None,
            )?
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[1, l, nh * hd])?
            .matmul(&layer.o)?;
            h = h.add(attn.multiply(&layer.attn_scale)?)?;
            let xn = fast::layer_norm(&h, &layer.norm2.0, &layer.norm2.1, self.eps)?;
            let a = xn.matmul(&layer.fc1)?;
            let a = if f.tanh_gelu {
                mlx_rs::nn::gelu_approximate(&a)?
            } else {
                mlx_rs::nn::gelu(&a)?
            };
            h = h.add(a.matmul(&layer.fc2)?.multiply(&layer.mlp_scale)?)?;
        }
        Ok(h)
    }
}

/// One RVQ group (semantic or acoustic): codebooks and the 1×1 projections.
struct Quantizer {
    /// Per codebook [size, dim]: embed_sum / max(cluster_usage, eps).
    codebooks: Vec<Array>,
    /// Transposed 1×1 convs: [hidden, vq] and [vq, hidden]; absent when vq = hidden.
    input_proj_t: Option<Array>,
    output_proj_t: Option<Array>,
    first: usize,
    count: usize,
}

impl Quantizer {
    fn load(m: &MimiModel, group: &str, first: usize, count: usize, dt: Dtype) -> Result<Self> {
        let codebooks = (0..count)
            .map(|i| to_array(&m.weights.codebook(group, i), dt))
            .collect::<Result<Vec<_>>>()?;
        let proj = |leaf: &str| -> Result<Option<Array>> {
            if !m.config.has_vq_projections() {
                return Ok(None);
            }
            let w = to_array(
                m.weights.get(&format!(
                    "quantizer.{group}_residual_vector_quantizer.{leaf}.weight"
                )),
                dt,
            )?;
            let s = w.shape();
            let t = w.reshape(&[s[0], s[1]])?.t();
            t.eval()?;
            Ok(Some(t))
        };
        Ok(Quantizer {
            codebooks,
            input_proj_t: proj("input_proj")?,
            output_proj_t: proj("output_proj")?,
            first,
            count,
        })
    }

    /// codes: [F, C] int32 (all codebooks) → this group's quantized latents [F, hidden] (None
    /// when the frames hold none of its codebooks).
    fn decode(&self, codes: &Array) -> Result<Option<Array>> {
        let c = codes.dim(1) as usize;
        let n = c.saturating_sub(self.first).min(self.count);
        if n == 0 {
            return Ok(None);
        }
        let mut sum: Option<Array> = None;
        for i in 0..n {
            let idx = take_axis(codes, Array::from_int((self.first + i) as i32), 1)?;
            let q = take_axis(&self.codebooks[i], &idx, 0)?;
            sum = Some(match sum {
                None => q,
                Some(s) => s.add(&q)?,
            });
        }
        let sum = sum.unwrap();
        Ok(Some(match &self.output_proj_t {
            Some(p) => sum.matmul(p)?,
            None => sum,
        }))
    }

    /// latents [F, hidden] → codes [F, count] (int32): nearest codebook vector (L2), residual
    /// by residual.
    fn encode(&self, latents: &Array) -> Result<Array> {
        let mut r = match &self.input_proj_t {
            Some(p) => latents.matmul(p)?,
            None => latents.clone(),
        };
        let mut out = Vec::with_capacity(self.count);
        for e in &self.codebooks {
            let ef = e.as_dtype(Dtype::Float32)?;
            let e2 = ef.square()?.sum_axis(1, false)?;
            let dist = e2.reshape(&[1, -1])?.subtract(
                r.as_dtype(Dtype::Float32)?
                    .matmul(ef.t())?
                    .multiply(Array::from_f32(2.0))?,
            )?;
            let idx = argmin_axis(&dist, 1, false)?.as_dtype(Dtype::Int32)?;
            r = r.subtract(take_axis(e, &idx, 0)?)?;
            out.push(idx);
        }
        Ok(stack(&out, 1)?)
    }
}

/// Mimi on MLX.
pub struct MlxMimi {
    cfg: MimiConfig,
    net: MimiNet<Seanet, Transformer, Conv, Quantizer, ConvTranspose>,
    dt: Dtype,
    dtype: DType,
    faults: Faults,
    fault: Option<CodecFault>,
    stream: Option<DecodeStream<Array>>,
}

impl DecodeStream<Array> {
    /// Evaluates every kept array, so the next chunk's graph starts from values.
    fn eval(&self) -> Result<()> {
        let mut all: Vec<&Array> = self.upsample.iter().collect();
        for (k, v) in &self.kv {
            all.push(k);
            all.push(v);
        }
        all.extend(self.decoder.iter().flatten());
        mlx_rs::transforms::eval(all)?;
        Ok(())
    }
}

impl MlxMimi {
    pub fn load(m: &MimiModel, dtype: DType) -> Result<Self> {
        let dt = mlx_dtype(dtype);
        let cfg = m.config.clone();
        let [(g0, f0, n0), (g1, f1, n1)] = quantizer_groups(&cfg);
        Ok(MlxMimi {
            net: MimiNet {
                encoder: Seanet::load(m, &encoder_layers(&cfg), dt)?,
                encoder_transformer: Transformer::load(m, "encoder_transformer", dt)?,
                downsample: Conv::load(m, &mimi_downsample(&cfg), dt, false, PadMode::Replicate)?,
                quantizers: [
                    Quantizer::load(m, g0, f0, n0, dt)?,
                    Quantizer::load(m, g1, f1, n1, dt)?,
                ],
                upsample: ConvTranspose::load(m, "upsample", dt, false, 2, cfg.upsample_groups)?,
                decoder_transformer: Transformer::load(m, "decoder_transformer", dt)?,
                decoder: Seanet::load(m, &decoder_layers(&cfg), dt)?,
            },
            cfg,
            dt,
            dtype,
            faults: Faults::default(),
            fault: None,
            stream: None,
        })
    }

    /// The quantized latents [1, F, hidden] of code frames (flat [F × C], sanitized).
    fn dequantize(&self, f: usize, c: usize, flat: &[i32]) -> Result<Array> {
        let codes = Array::from_slice(flat, &[f as i32, c as i32]);
        let [sem, aco] = &self.net.quantizers;
        let mut z = sem
            .decode(&codes)?
            .expect("at least the semantic codebooks");
        if let Some(a) = aco.decode(&codes)? {
            z = z.add(&a)?;
        }
        Ok(z.expand_dims(0)?)
    }
}

impl Codec for MlxMimi {
    fn info(&self) -> BackendInfo {
        let mut info = super::info_of(self.dtype, None);
        info.fault = self.fault.map(|f| f.name().to_string());
        info
    }

    fn config(&self) -> &MimiConfig {
        &self.cfg
    }

    fn decode(&mut self, codes: &[Vec<i32>]) -> Result<Decoded> {
        let (f, c, flat, invalid_codes) = check_codes(&self.cfg, codes)?;
        if f == 0 {
            return Ok(Decoded {
                audio: vec![],
                invalid_codes,
            });
        }
        let z = self.dequantize(f, c, &flat)?;
        let x = self.net.upsample.forward(&z, self.faults)?; // [1, 2F, D]
        let x = self.net.decoder_transformer.forward(&x, self.faults)?;
        let audio = self
            .net
            .decoder
            .forward(&x, self.faults)?
            .reshape(&[-1])?
            .as_dtype(Dtype::Float32)?;
        audio.eval()?;
        // The one host copy of the audio.
        Ok(Decoded {
            audio: audio.as_slice::<f32>().to_vec(),
            invalid_codes,
        })
    }

    fn stream_reset(&mut self) {
        self.stream = None;
    }

    fn can_stream(&self) -> bool {
        !self.faults.non_causal
    }

    fn decode_stream(&mut self, codes: &[Vec<i32>]) -> Result<Decoded> {
        if self.faults.non_causal {
            bail!("codec streaming: the non-causal-padding fault cannot stream (it needs later frames); decode the whole sequence");
        }
        let stream = self.stream.as_ref().map(|s| s.codebooks);
        let (f, c, flat, invalid_codes) = check_stream_codes(&self.cfg, codes, stream)?;
        if f == 0 {
            return Ok(Decoded::nothing(invalid_codes));
        }
        let z = self.dequantize(f, c, &flat)?;
        let st = self
            .stream
            .get_or_insert_with(|| DecodeStream::new(c, &self.cfg));
        let x = self.net.upsample.step(&z, &mut st.upsample)?; // [1, 2F, D]
        let n = x.dim(1);
        let x = self.net.decoder_transformer.attend(
            &x,
            st.position as i32,
            Some(&mut st.kv),
            self.faults,
        )?;
        st.position += n as usize;
        let audio = self
            .net
            .decoder
            .step(&x, &mut st.decoder)?
            .reshape(&[-1])?
            .as_dtype(Dtype::Float32)?;
        audio.eval()?;
        st.eval()?;
        Ok(Decoded {
            audio: audio.as_slice::<f32>().to_vec(),
            invalid_codes,
        })
    }

    fn encode(&mut self, wave: &[f32]) -> Result<Encoded> {
        check_wave(wave)?;
        let x = Array::from_slice(wave, &[1, wave.len() as i32, 1]).as_dtype(self.dt)?;
        let x = self.net.encoder.forward(&x, self.faults)?; // [1, L, D]
        let x = self.net.encoder_transformer.forward(&x, self.faults)?;
        let latents = self.net.downsample.forward(&x, self.faults)?;
        let (f, d) = (latents.dim(1), latents.dim(2));
        let latents = latents.reshape(&[f, d])?;
        let codes = concatenate(
            &[
                self.net.quantizers[0].encode(&latents)?,
                self.net.quantizers[1].encode(&latents)?,
            ],
            1,
        )?;
        // One host copy: latents then codes (exact in f32: codes < 2^24).
        let flat = concatenate(
            &[
                latents.as_dtype(Dtype::Float32)?.reshape(&[-1])?,
                codes.as_dtype(Dtype::Float32)?.reshape(&[-1])?,
            ],
            0,
        )?;
        flat.eval()?;
        let flat: &[f32] = flat.as_slice();
        let latents = (f * d) as usize;
        Ok(encoded_from_host(flat, latents, self.cfg.num_quantizers))
    }

    fn inject(&mut self, fault: CodecFault) -> Result<()> {
        match fault {
            CodecFault::NonCausalPadding => self.faults.non_causal = true,
            CodecFault::NoSlidingWindow => self.faults.no_window = true,
            CodecFault::TanhGelu => self.faults.tanh_gelu = true,
            CodecFault::TransposedConvAxes => {
                for layer in &mut self.net.decoder.layers {
                    if let Layer::ConvTranspose(ct) = layer {
                        ct.w = transposed_weight(&ct.w_src, ct.geo.groups as i32, true)?;
                    }
                }
            }
        }
        self.fault = Some(fault);
        Ok(())
    }
}
