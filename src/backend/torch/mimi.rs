//! Mimi on libtorch, written out in plain tensor ops as transformers' `MimiModel` computes it
//! (channels-first `[1, C, L]`): split RVQ → grouped transposed-conv upsample → decoder
//! transformer → SEANet decoder, and the mirror image for encoding.
use super::stack::{kind_of, to_tensor};
use crate::backend::codec::{check_codes, check_stream_codes, check_wave, Codec, Decoded, Encoded};
use crate::backend::common::{
    encoded_from_host, mimi_downsample, DecodeStream, MimiLayer, MimiNet, TransposeGeometry,
};
use crate::capture::BackendInfo;
use crate::model::mimi::{
    conv_padding, decoder_layers, encoder_layers, weights::quantizer_groups, ConvSpec, MimiConfig,
    MimiModel, PadMode, SeanetLayer,
};
use crate::model::DType;
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// A causal conv (weights `[out, in, k]`).
struct Conv {
    w: Tensor,
    b: Option<Tensor>,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_mode: PadMode,
}

impl Conv {
    fn load(m: &MimiModel, spec: &ConvSpec, kind: Kind, bias: bool, pad_mode: PadMode) -> Self {
        let get =
            |leaf: &str| to_tensor(m.weights.get(&format!("{}.conv.{leaf}", spec.name)), kind);
        Conv {
            w: get("weight"),
            b: bias.then(|| get("bias")),
            kernel: (spec.kernel - 1) * spec.dilation + 1,
            stride: spec.stride,
            dilation: spec.dilation,
            pad_mode,
        }
    }

    /// x: [1, in, L] → [1, out, ceil(L / stride)].
    fn forward(&self, x: &Tensor) -> Tensor {
        let len = x.size()[2] as usize;
        let (left, right) = conv_padding(len, self.kernel, self.stride, true);
        let mode = match self.pad_mode {
            PadMode::Constant => "constant",
            PadMode::Replicate => "replicate",
        };
        let x = x.pad([left as i64, right as i64], mode, None::<f64>);
        x.conv1d(
            &self.w,
            self.b.as_ref(),
            [self.stride as i64],
            [0],
            [self.dilation as i64],
            1,
        )
    }

    /// Streaming (stride 1): x [1, in, n] → [1, out, n], continuing the input kept in `state`
    /// (the last `kernel − 1` input steps; at the start, the causal left padding).
    fn step(&self, x: &Tensor, state: &mut Option<Tensor>) -> Tensor {
        let ctx = (self.kernel - self.stride) as i64;
        let prev = state.take().unwrap_or_else(|| {
            let (_, c, _) = x.size3().unwrap();
            match self.pad_mode {
                PadMode::Constant => Tensor::zeros([1, c, ctx], (x.kind(), x.device())),
                PadMode::Replicate => x.narrow(2, 0, 1).expand([1, c, ctx], false),
            }
        });
        let xin = Tensor::cat(&[prev, x.shallow_clone()], 2);
        let len = xin.size()[2];
        *state = Some(xin.narrow(2, len - ctx, ctx).contiguous());
        xin.conv1d(
            &self.w,
            self.b.as_ref(),
            [self.stride as i64],
            [0],
            [self.dilation as i64],
            1,
        )
    }
}

/// A causal transposed conv (weights `[in, out / groups, k]`), trimmed like transformers.
struct ConvTranspose {
    w: Tensor,
    b: Option<Tensor>,
    geo: TransposeGeometry,
}

impl ConvTranspose {
    fn load(
        m: &MimiModel,
        name: &str,
        kind: Kind,
        bias: bool,
        stride: usize,
        groups: usize,
    ) -> Self {
        let get = |leaf: &str| to_tensor(m.weights.get(&format!("{name}.conv.{leaf}")), kind);
        let w = get("weight");
        let geo = TransposeGeometry::new(&m.config, w.size()[2] as usize, stride, groups);
        ConvTranspose {
            w,
            b: bias.then(|| get("bias")),
            geo,
        }
    }

    /// The untrimmed transposed conv (with the bias): x [1, in, n] → [1, out, (n − 1) · stride + k].
    fn full(&self, x: &Tensor) -> Tensor {
        x.conv_transpose1d(
            &self.w,
            self.b.as_ref(),
            [self.geo.stride as i64],
            [0],
            [0],
            self.geo.groups as i64,
            [1],
        )
    }

    /// x: [1, in, L] → [1, out, L · stride].
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.full(x);
        let (left, right) = self.geo.trim(true);
        let len = y.size()[2];
        y.narrow(2, left as i64, len - (left + right) as i64)
    }

    /// Streaming: x [1, in, n] → [1, out, n · stride]. The last `kernel − stride` outputs still
    /// miss the next input's contribution: they are kept in `state` (without the bias) and
    /// added to the next chunk's first outputs.
    fn step(&self, x: &Tensor, state: &mut Option<Tensor>) -> Tensor {
        let y = self.full(x);
        let ov = (self.geo.kernel - self.geo.stride) as i64;
        let emit = y.size()[2] - ov;
        if let Some(partial) = state.take() {
            let mut head = y.narrow(2, 0, ov);
            let _ = head.g_add_(&partial);
        }
        let tail = y.narrow(2, emit, ov);
        *state = Some(match &self.b {
            Some(b) => tail - b.view([1, -1, 1]),
            None => tail.copy(),
        });
        y.narrow(2, 0, emit)
    }
}

enum Layer {
    Conv { conv: Conv, elu: bool },
    ConvTranspose(ConvTranspose),
    Residual(Conv, Conv),
}

/// A SEANet stack (encoder or decoder).
struct Seanet {
    layers: Vec<Layer>,
}

impl Seanet {
    fn load(m: &MimiModel, specs: &[SeanetLayer], kind: Kind) -> Self {
        let pad = m.config.pad_mode;
        let layers =
            specs
                .iter()
                .map(|s| match s {
                    SeanetLayer::Conv { conv, elu } => Layer::Conv {
                        conv: Conv::load(m, conv, kind, true, pad),
                        elu: *elu,
                    },
                    SeanetLayer::ConvTranspose { conv } => Layer::ConvTranspose(
                        ConvTranspose::load(m, &conv.name, kind, true, conv.stride, 1),
                    ),
                    SeanetLayer::Residual { conv1, conv2 } => Layer::Residual(
                        Conv::load(m, conv1, kind, true, pad),
                        Conv::load(m, conv2, kind, true, pad),
                    ),
                })
                .collect();
        Seanet { layers }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for layer in &self.layers {
            h = match layer {
                Layer::Conv { conv, elu } => conv.forward(&if *elu { h.elu() } else { h }),
                Layer::ConvTranspose(conv) => conv.forward(&h.elu()),
                Layer::Residual(c1, c2) => &h + c2.forward(&c1.forward(&h.elu()).elu()),
            };
        }
        h
    }

    /// Streaming [`Seanet::forward`]: `states` holds one slot per conv, in order.
    fn step(&self, x: &Tensor, states: &mut [Option<Tensor>]) -> Tensor {
        let mut h = x.shallow_clone();
        let mut slot = states.iter_mut();
        let mut next = || slot.next().expect("one state per conv");
        for layer in &self.layers {
            h = match layer {
                Layer::Conv { conv, elu } => conv.step(&if *elu { h.elu() } else { h }, next()),
                Layer::ConvTranspose(conv) => conv.step(&h.elu(), next()),
                Layer::Residual(c1, c2) => {
                    let inner = c1.step(&h.elu(), next()).elu();
                    &h + c2.step(&inner, next())
                }
            };
        }
        h
    }
}

/// Mimi's transformer: pre-LayerNorm, causal attention in a sliding window with split-half
/// RoPE, exact GELU MLP, layer scale on both residual branches, no final norm.
struct Transformer {
    layers: Vec<MimiLayer<Tensor>>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    eps: f64,
    window: usize,
    inv_freq: Tensor,
}

impl Transformer {
    fn load(m: &MimiModel, stack: &str, kind: Kind) -> Self {
        let cfg = &m.config;
        let get = |i: usize, leaf: &str| {
            to_tensor(m.weights.get(&format!("{stack}.layers.{i}.{leaf}")), kind)
        };
        let get = |i: usize, leaf: &str| -> Result<Tensor> { Ok(get(i, leaf)) };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| MimiLayer::load(i, &get, &get))
            .collect::<Result<Vec<_>>>()
            .expect("the weights were checked at load");
        Transformer {
            layers,
            heads: cfg.num_attention_heads as i64,
            kv_heads: cfg.num_key_value_heads as i64,
            head_dim: cfg.head_dim as i64,
            eps: cfg.norm_eps,
            window: cfg.sliding_window,
            inv_freq: Tensor::from_slice(&cfg.rope_inv_freq()),
        }
    }

    /// Split-half RoPE at positions `start..start + L` on x [1, H, L, hd].
    fn rope(&self, x: &Tensor, start: i64) -> Tensor {
        let (_, _, l, hd) = x.size4().unwrap();
        let pos = Tensor::arange_start(start, start + l, (Kind::Float, Device::Cpu));
        let angles = pos.unsqueeze(1) * self.inv_freq.unsqueeze(0); // [L, hd/2]
        let (cos, sin) = (angles.cos(), angles.sin());
        let xf = x.to_kind(Kind::Float);
        let (x1, x2) = (xf.narrow(-1, 0, hd / 2), xf.narrow(-1, hd / 2, hd / 2));
        let out1 = &x1 * &cos - &x2 * &sin;
        let out2 = &x2 * &cos + &x1 * &sin;
        Tensor::cat(&[out1, out2], -1).to_kind(x.kind())
    }

    /// Which keys each of `l` queries may not see, when `cached` keys precede the queries' own:
    /// later ones, and those `window` or more before it. [l, cached + l].
    fn attention_mask(&self, l: i64, cached: i64) -> Tensor {
        let q = Tensor::arange_start(cached, cached + l, (Kind::Int64, Device::Cpu)).unsqueeze(1);
        let k = Tensor::arange(cached + l, (Kind::Int64, Device::Cpu)).unsqueeze(0);
        let later = k.gt_tensor(&q);
        let too_old = k.le_tensor(&(q - self.window.min(i64::MAX as usize) as i64));
        later.logical_or(&too_old)
    }

    /// x: [1, L, D] → [1, L, D], the whole sequence at positions 0..L.
    fn forward(&self, x: &Tensor) -> Tensor {
        self.attend(x, 0, None)
    }

    /// x: [1, L, D] at positions `start..start + L` → [1, L, D]. With `cache` (streaming), the
    /// queries also see the keys and values kept from earlier calls (one `(k, v)` per layer,
    /// after RoPE), and the cache keeps the last `window − 1` of them for the next call.
    fn attend(
        &self,
        x: &Tensor,
        start: i64,
        mut cache: Option<&mut Vec<(Tensor, Tensor)>>,
    ) -> Tensor {
        let (_, l, d) = x.size3().unwrap();
        let (nh, nkv, hd) = (self.heads, self.kv_heads, self.head_dim);
        let cached = cache
            .as_ref()
            .and_then(|c| c.first())
            .map_or(0, |(k, _)| k.size()[2]);
        let keep = (cached + l).min(self.window.saturating_sub(1).min(i64::MAX as usize) as i64);
        let mask = self.attention_mask(l, cached);
        let mut h = x.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let xn = h.layer_norm(
                [d],
                Some(&layer.norm1.0),
                Some(&layer.norm1.1),
                self.eps,
                false,
            );
            let split = |w: &Tensor, n: i64| {
                xn.linear::<Tensor>(w, None)
                    .view([1, l, n, hd])
                    .transpose(1, 2)
            };
            let q = self.rope(&split(&layer.q, nh), start);
            let mut k = self.rope(&split(&layer.k, nkv), start);
            let mut v = split(&layer.v, nkv);
            if let Some(cache) = cache.as_deref_mut() {
                if let Some((ck, cv)) = cache.get(i) {
                    k = Tensor::cat(&[ck, &k], 2);
                    v = Tensor::cat(&[cv, &v], 2);
                }
                let n = k.size()[2];
                let kept = (k.narrow(2, n - keep, keep), v.narrow(2, n - keep, keep));
                if i < cache.len() {
                    cache[i] = kept;
                } else {
                    cache.push(kept);
                }
            }
            let (k, v) = if nh > nkv {
                (
                    k.repeat_interleave_self_int(nh / nkv, 1, None::<i64>),
                    v.repeat_interleave_self_int(nh / nkv, 1, None::<i64>),
                )
            } else {
                (k, v)
            };
            let scores = q.matmul(&k.transpose(-2, -1)) * (1.0 / (hd as f64).sqrt());
            let attn = scores
                .masked_fill(&mask, f64::NEG_INFINITY)
                .softmax(-1, Kind::Float)
                .to_kind(h.kind())
                .matmul(&v)
                .transpose(1, 2)
                .reshape([1, l, nh * hd])
                .linear::<Tensor>(&layer.o, None);
            h = &h + attn * &layer.attn_scale;
            let xn = h.layer_norm(
                [d],
                Some(&layer.norm2.0),
                Some(&layer.norm2.1),
                self.eps,
                false,
            );
            let mlp = xn
                .linear::<Tensor>(&layer.fc1, None)
                .gelu("none")
                .linear::<Tensor>(&layer.fc2, None);
            h = &h + mlp * &layer.mlp_scale;
        }
        h
    }
}

/// One RVQ group (semantic or acoustic): codebooks and the 1×1 projections.
struct Quantizer {
    /// [n, size, dim]: embed_sum / max(cluster_usage, eps), per codebook.
    codebooks: Tensor,
    /// [vq, hidden] and [hidden, vq] (1×1 convs), absent when vq = hidden.
    input_proj: Option<Tensor>,
    output_proj: Option<Tensor>,
    first: usize,
    count: usize,
}

impl Quantizer {
    fn load(m: &MimiModel, group: &str, first: usize, count: usize, kind: Kind) -> Self {
        let books: Vec<Tensor> = (0..count)
            .map(|i| to_tensor(&m.weights.codebook(group, i), kind))
            .collect();
        let proj = |leaf: &str| {
            m.config.has_vq_projections().then(|| {
                to_tensor(
                    m.weights.get(&format!(
                        "quantizer.{group}_residual_vector_quantizer.{leaf}.weight"
                    )),
                    kind,
                )
                .squeeze_dim(2)
            })
        };
        Quantizer {
            codebooks: Tensor::stack(&books, 0),
            input_proj: proj("input_proj"),
            output_proj: proj("output_proj"),
            first,
            count,
        }
    }

    /// codes: [F, C] int64 (all codebooks) → this group's quantized latents [F, hidden] (None
    /// when the frames hold none of its codebooks).
    fn decode(&self, codes: &Tensor) -> Option<Tensor> {
        let c = codes.size()[1] as usize;
        let n = c.saturating_sub(self.first).min(self.count);
        if n == 0 {
            return None;
        }
        let mut sum: Option<Tensor> = None;
        for i in 0..n {
            let idx = codes.select(1, (self.first + i) as i64);
            let q = self.codebooks.get(i as i64).index_select(0, &idx);
            sum = Some(match sum {
                None => q,
                Some(s) => s + q,
            });
        }
        let sum = sum.unwrap();
        Some(match &self.output_proj {
            Some(p) => sum.linear::<Tensor>(p, None),
            None => sum,
        })
    }

    /// latents [F, hidden] → codes [F, count] (int64): nearest codebook vector (L2), residual
    /// by residual.
    fn encode(&self, latents: &Tensor) -> Tensor {
        let mut r = match &self.input_proj {
            Some(p) => latents.linear::<Tensor>(p, None),
            None => latents.shallow_clone(),
        };
        let mut out = Vec::with_capacity(self.count);
        for i in 0..self.count {
            let e = self.codebooks.get(i as i64).to_kind(Kind::Float);
            let rf = r.to_kind(Kind::Float);
            let e2 = e.square().sum_dim_intlist(1, false, Kind::Float);
            let dist = e2.unsqueeze(0) - rf.matmul(&e.transpose(0, 1)) * 2.0;
            let idx = dist.argmin(1, false);
            // A new tensor, not `-=`: r starts as a shallow clone of the latents.
            r = std::ops::Sub::sub(r, self.codebooks.get(i as i64).index_select(0, &idx));
            out.push(idx);
        }
        Tensor::stack(&out, 1)
    }
}

/// Mimi on libtorch.
pub struct TorchMimi {
    cfg: MimiConfig,
    net: MimiNet<Seanet, Transformer, Conv, Quantizer, ConvTranspose>,
    kind: Kind,
    dtype: DType,
    stream: Option<DecodeStream<Tensor>>,
}

impl TorchMimi {
    pub fn load(m: &MimiModel, dtype: DType) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let kind = kind_of(dtype);
        let cfg = m.config.clone();
        let [(g0, f0, n0), (g1, f1, n1)] = quantizer_groups(&cfg);
        Ok(TorchMimi {
            net: MimiNet {
                encoder: Seanet::load(m, &encoder_layers(&cfg), kind),
                encoder_transformer: Transformer::load(m, "encoder_transformer", kind),
                downsample: Conv::load(m, &mimi_downsample(&cfg), kind, false, PadMode::Replicate),
                quantizers: [
                    Quantizer::load(m, g0, f0, n0, kind),
                    Quantizer::load(m, g1, f1, n1, kind),
                ],
                upsample: ConvTranspose::load(m, "upsample", kind, false, 2, cfg.upsample_groups),
                decoder_transformer: Transformer::load(m, "decoder_transformer", kind),
                decoder: Seanet::load(m, &decoder_layers(&cfg), kind),
            },
            cfg,
            kind,
            dtype,
            stream: None,
        })
    }

    /// The quantized latents [1, hidden, F] of code frames (flat [F × C], sanitized).
    fn dequantize(&self, f: usize, c: usize, flat: &[i32]) -> Tensor {
        let codes = Tensor::from_slice(flat)
            .view([f as i64, c as i64])
            .to_kind(Kind::Int64);
        let [sem, aco] = &self.net.quantizers;
        let mut z = sem.decode(&codes).expect("at least the semantic codebooks");
        if let Some(a) = aco.decode(&codes) {
            z = std::ops::Add::add(z, a);
        }
        z.transpose(0, 1).unsqueeze(0)
    }
}

impl Codec for TorchMimi {
    fn info(&self) -> BackendInfo {
        super::info_of(self.dtype)
    }

    fn config(&self) -> &MimiConfig {
        &self.cfg
    }

    fn decode(&mut self, codes: &[Vec<i32>]) -> Result<Decoded> {
        let _guard = tch::no_grad_guard();
        let (f, c, flat, invalid_codes) = check_codes(&self.cfg, codes)?;
        if f == 0 {
            return Ok(Decoded {
                audio: vec![],
                invalid_codes,
            });
        }
        let x = self.net.upsample.forward(&self.dequantize(f, c, &flat)); // [1, D, 2F]
        let x = self
            .net
            .decoder_transformer
            .forward(&x.transpose(1, 2))
            .transpose(1, 2);
        let audio = self
            .net
            .decoder
            .forward(&x)
            .reshape([-1])
            .to_kind(Kind::Float);
        // The one host copy of the audio.
        Ok(Decoded {
            audio: Vec::<f32>::try_from(audio)?,
            invalid_codes,
        })
    }

    fn stream_reset(&mut self) {
        self.stream = None;
    }

    fn decode_stream(&mut self, codes: &[Vec<i32>]) -> Result<Decoded> {
        let _guard = tch::no_grad_guard();
        let stream = self.stream.as_ref().map(|s| s.codebooks);
        let (f, c, flat, invalid_codes) = check_stream_codes(&self.cfg, codes, stream)?;
        if f == 0 {
            return Ok(Decoded::nothing(invalid_codes));
        }
        let z = self.dequantize(f, c, &flat);
        let st = self
            .stream
            .get_or_insert_with(|| DecodeStream::new(c, &self.cfg));
        let x = self.net.upsample.step(&z, &mut st.upsample); // [1, D, 2F]
        let n = x.size()[2];
        let x = self
            .net
            .decoder_transformer
            .attend(&x.transpose(1, 2), st.position as i64, Some(&mut st.kv))
            .transpose(1, 2);
        st.position += n as usize;
        let audio = self
            .net
            .decoder
            .step(&x, &mut st.decoder)
            .reshape([-1])
            .to_kind(Kind::Float);
        Ok(Decoded {
            audio: Vec::<f32>::try_from(audio)?,
            invalid_codes,
        })
    }

    fn encode(&mut self, wave: &[f32]) -> Result<Encoded> {
        let _guard = tch::no_grad_guard();
        check_wave(wave)?;
        let x = Tensor::from_slice(wave).view([1, 1, -1]).to_kind(self.kind);
        let x = self.net.encoder.forward(&x); // [1, D, L]
        let x = self
            .net
            .encoder_transformer
            .forward(&x.transpose(1, 2))
            .transpose(1, 2);
        let latents = self
            .net
            .downsample
            .forward(&x)
            .squeeze_dim(0)
            .transpose(0, 1); // [F, D]
        let codes = Tensor::cat(
            &[
                self.net.quantizers[0].encode(&latents),
                self.net.quantizers[1].encode(&latents),
            ],
            1,
        );
        let (f, d) = latents.size2()?;
        // One host copy: latents then codes (exact in f32: codes < 2^24).
        let flat = Tensor::cat(
            &[
                latents.to_kind(Kind::Float).reshape([-1]),
                codes.to_kind(Kind::Float).reshape([-1]),
            ],
            0,
        );
        let flat = Vec::<f32>::try_from(flat)?;
        let latents = (f * d) as usize;
        Ok(encoded_from_host(&flat, latents, self.cfg.num_quantizers))
    }
}
