//! The libtorch reference pipeline (tch): CSM written out in plain tensor ops, as Sesame's
//! PyTorch code computes it (torchtune RoPE on interleaved pairs, Llama-3 frequency scaling).
use super::{Backend, ExternalSampler, FrameOutput, FrameRequest};
use crate::capture::BackendInfo;
use crate::model::{CsmModel, DType, Frames, HostTensor, LlamaFlavor};
use crate::sampling::{NoiseMode, SamplerSpec};
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

fn kind_of(d: DType) -> Kind {
    match d {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
    }
}

fn to_tensor(t: &HostTensor, kind: Kind) -> Tensor {
    let shape: Vec<i64> = t.shape.iter().map(|&s| s as i64).collect();
    Tensor::from_data_size(&t.data, &shape, kind_of(t.dtype)).to_kind(kind)
}

struct Layer {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    sa_norm: Tensor,
    mlp_norm: Tensor,
    w1: Tensor,
    w2: Tensor,
    w3: Tensor,
}

/// A Llama stack with its KV cache.
struct Stack {
    layers: Vec<Layer>,
    norm: Tensor,
    f: LlamaFlavor,
    inv_freq: Tensor,
    cache: Vec<Option<(Tensor, Tensor)>>,
    pos: usize,
}

impl Stack {
    fn load(model: &CsmModel, prefix: &str, f: &LlamaFlavor, kind: Kind) -> Stack {
        let w = |name: &str| to_tensor(model.weights.get(&format!("{prefix}.{name}")), kind);
        let layers = (0..f.num_layers)
            .map(|i| Layer {
                q: w(&format!("layers.{i}.attn.q_proj.weight")),
                k: w(&format!("layers.{i}.attn.k_proj.weight")),
                v: w(&format!("layers.{i}.attn.v_proj.weight")),
                o: w(&format!("layers.{i}.attn.output_proj.weight")),
                sa_norm: w(&format!("layers.{i}.sa_norm.scale")),
                mlp_norm: w(&format!("layers.{i}.mlp_norm.scale")),
                w1: w(&format!("layers.{i}.mlp.w1.weight")),
                w2: w(&format!("layers.{i}.mlp.w2.weight")),
                w3: w(&format!("layers.{i}.mlp.w3.weight")),
            })
            .collect();
        Stack {
            layers,
            norm: w("norm.scale"),
            f: f.clone(),
            inv_freq: Tensor::from_slice(&f.rope_inv_freq()),
            cache: (0..f.num_layers).map(|_| None).collect(),
            pos: 0,
        }
    }

    fn reset(&mut self) {
        self.cache.iter_mut().for_each(|c| *c = None);
        self.pos = 0;
    }

    fn rms_norm(&self, x: &Tensor, scale: &Tensor) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        (xf * (var + self.f.norm_eps).rsqrt()).to_kind(x.kind()) * scale
    }

    /// torchtune RoPE: rotate interleaved pairs (x[2i], x[2i+1]); x is [B, H, L, hd].
    fn rope(&self, x: &Tensor, start: usize) -> Tensor {
        let (b, h, l, hd) = x.size4().unwrap();
        let pos = Tensor::arange_start(start as i64, start as i64 + l, (Kind::Float, Device::Cpu));
        let angles = pos.unsqueeze(1) * self.inv_freq.unsqueeze(0); // [L, hd/2]
        let (cos, sin) = (angles.cos(), angles.sin());
        let xs = x.to_kind(Kind::Float).reshape([b, h, l, hd / 2, 2]);
        let (x0, x1) = (xs.select(-1, 0), xs.select(-1, 1));
        let out0 = &x0 * &cos - &x1 * &sin;
        let out1 = &x1 * &cos + &x0 * &sin;
        Tensor::stack(&[out0, out1], -1)
            .reshape([b, h, l, hd])
            .to_kind(x.kind())
    }

    /// x: [1, L, D] at positions pos..pos+L. Uses and extends the cache when `cached`.
    fn forward(&mut self, x: &Tensor, cached: bool) -> Tensor {
        let (_, l, _) = x.size3().unwrap();
        let start = if cached { self.pos } else { 0 };
        let (nh, nkv, hd) = (
            self.f.num_heads as i64,
            self.f.num_kv_heads as i64,
            self.f.head_dim as i64,
        );
        let mut h = x.shallow_clone();
        for i in 0..self.layers.len() {
            let layer = &self.layers[i];
            let xn = self.rms_norm(&h, &layer.sa_norm);
            let q = xn
                .linear::<Tensor>(&layer.q, None)
                .view([1, l, nh, hd])
                .transpose(1, 2);
            let k = xn
                .linear::<Tensor>(&layer.k, None)
                .view([1, l, nkv, hd])
                .transpose(1, 2);
            let v = xn
                .linear::<Tensor>(&layer.v, None)
                .view([1, l, nkv, hd])
                .transpose(1, 2);
            let q = self.rope(&q, start);
            let mut k = self.rope(&k, start);
            let mut v = v;
            if cached {
                if let Some((ck, cv)) = &self.cache[i] {
                    k = Tensor::cat(&[ck, &k], 2);
                    v = Tensor::cat(&[cv, &v], 2);
                }
                self.cache[i] = Some((k.shallow_clone(), v.shallow_clone()));
            }
            let rep = nh / nkv;
            let (k, v) = if rep > 1 {
                (
                    k.repeat_interleave_self_int(rep, 1, None::<i64>),
                    v.repeat_interleave_self_int(rep, 1, None::<i64>),
                )
            } else {
                (k, v)
            };
            let total = k.size()[2];
            let mut scores = q
                .to_kind(Kind::Float)
                .matmul(&k.to_kind(Kind::Float).transpose(-2, -1))
                * (1.0 / (hd as f64).sqrt());
            if l > 1 {
                // Query i sits at absolute position start + i and sees keys 0..=start+i.
                let qpos = Tensor::arange_start(
                    start as i64,
                    start as i64 + l,
                    (Kind::Int64, Device::Cpu),
                );
                let kpos = Tensor::arange(total, (Kind::Int64, Device::Cpu));
                let masked = kpos.unsqueeze(0).gt_tensor(&qpos.unsqueeze(1));
                scores = scores.masked_fill(&masked, f64::NEG_INFINITY);
            }
            let attn = scores
                .softmax(-1, Kind::Float)
                .matmul(&v.to_kind(Kind::Float))
                .to_kind(h.kind());
            let attn = attn
                .transpose(1, 2)
                .reshape([1, l, nh * hd])
                .linear::<Tensor>(&layer.o, None);
            h += attn;
            let xn = self.rms_norm(&h, &layer.mlp_norm);
            let gate = xn.linear::<Tensor>(&layer.w1, None).silu();
            let up = xn.linear::<Tensor>(&layer.w3, None);
            h += (gate * up).linear::<Tensor>(&layer.w2, None);
        }
        if cached {
            self.pos += l as usize;
        }
        self.rms_norm(&h, &self.norm)
    }
}

/// CSM on libtorch.
pub struct TorchCsm {
    backbone: Stack,
    decoder: Stack,
    text_emb: Tensor,
    audio_emb: Tensor,
    projection: Tensor,
    c0_head: Tensor,
    audio_head: Tensor,
    codebooks: usize,
    vocab: usize,
    kind: Kind,
    dtype: DType,
    native_seed: u64,
    native_step: u64,
}

/// libtorch's default generator is process-global: native-noise draws take this lock and
/// reseed it per sampling step from (seed, step), so concurrent pipelines cannot interleave.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl TorchCsm {
    pub fn load(model: &CsmModel, dtype: DType) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let kind = kind_of(dtype);
        let cfg = &model.config;
        let w = |name: &str| to_tensor(model.weights.get(name), kind);
        Ok(TorchCsm {
            backbone: Stack::load(model, "backbone", &cfg.backbone, kind),
            decoder: Stack::load(model, "decoder", &cfg.decoder, kind),
            text_emb: w("text_embeddings.weight"),
            audio_emb: w("audio_embeddings.weight"),
            projection: w("projection.weight"),
            c0_head: w("codebook0_head.weight"),
            audio_head: w("audio_head"),
            codebooks: cfg.audio_num_codebooks,
            vocab: cfg.audio_vocab_size,
            kind,
            dtype,
            native_seed: 0,
            native_step: 0,
        })
    }

    /// Sum of the unmasked columns' embeddings: [1, L, D].
    fn embed(&self, frames: &Frames) -> Tensor {
        let (l, w, c) = (
            frames.len() as i64,
            frames.width as i64,
            self.codebooks as i64,
        );
        let tokens = Tensor::from_slice(&frames.tokens).view([l, w]);
        let mask = Tensor::from_slice(&frames.mask)
            .view([l, w, 1])
            .to_kind(self.kind);
        let offsets = Tensor::arange(c, (Kind::Int64, Device::Cpu)) * self.vocab as i64;
        let audio_ids = tokens.narrow(1, 0, c) + offsets.unsqueeze(0);
        let audio = self
            .audio_emb
            .index_select(0, &audio_ids.reshape([-1]))
            .view([l, c, -1]);
        let text = self
            .text_emb
            .index_select(0, &tokens.select(1, c))
            .view([l, 1, -1]);
        (Tensor::cat(&[audio, text], 1) * mask)
            .sum_dim_intlist(1, false, self.kind)
            .unsqueeze(0)
    }

    /// Embedding of audio token(s) `ids` (int64 tensor [n]) of codebook `cb`, projected: [1, n, Dd].
    fn audio_input(&self, ids: &Tensor, cb: i64) -> Tensor {
        let e = self
            .audio_emb
            .index_select(0, &(ids + cb * self.vocab as i64));
        e.unsqueeze(0).linear::<Tensor>(&self.projection, None)
    }

    /// The reference sampler on one row of f32 logits [V]: returns (token [1] int64, probs [V]).
    fn sample(
        &mut self,
        logits: &Tensor,
        spec: &SamplerSpec,
        uniforms: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        if spec.is_greedy() {
            let tok = logits.argmax(0, true);
            let probs = Tensor::zeros([self.vocab as i64], (Kind::Float, Device::Cpu))
                .scatter_value(0, &tok, 1.0);
            return Ok((tok, probs));
        }
        let scaled = logits / spec.temperature as f64;
        let kept = match spec.effective_top_k(self.vocab) {
            None => scaled,
            Some(k) => {
                let (vals, _) = scaled.topk(k as i64, -1, true, true);
                let kth = vals.narrow(0, k as i64 - 1, 1);
                let remove = scaled.lt_tensor(&kth);
                scaled.masked_fill(&remove, f64::NEG_INFINITY)
            }
        };
        let probs = kept.log_softmax(-1, Kind::Float).softmax(-1, Kind::Float);
        let q = match (spec.noise, uniforms) {
            (NoiseMode::Shared, Some(u)) => -u.log(),
            (NoiseMode::Shared, None) => bail!("shared noise needs the harness's uniform draws"),
            (NoiseMode::Native, _) => {
                let _lock = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
                let step_seed =
                    crate::sampling::SharedNoise::step_seed(self.native_seed, self.native_step);
                self.native_step += 1;
                tch::manual_seed(step_seed as i64);
                probs.empty_like().exponential_(1.0)
            }
        };
        Ok(((&probs / q).argmax(0, true), probs))
    }
}

impl Backend for TorchCsm {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "torch".into(),
            library_version: format!(
                "libtorch {} (tch 0.26)",
                env!("CSM_PARITY_LIBTORCH_VERSION")
            ),
            device: "cpu".into(),
            dtype: self.dtype.name().into(),
            fault: None,
        }
    }

    fn reset(&mut self, seed: u64) -> Result<()> {
        self.backbone.reset();
        self.decoder.reset();
        self.native_seed = seed;
        self.native_step = 0;
        Ok(())
    }

    fn position(&self) -> usize {
        self.backbone.pos
    }

    fn sample_logits(
        &mut self,
        logits: &[f32],
        spec: &SamplerSpec,
        uniforms: Option<&[f32]>,
    ) -> Result<(i32, Vec<f32>)> {
        let _guard = tch::no_grad_guard();
        if logits.len() != self.vocab {
            bail!(
                "sample_logits: {} logits, expected the vocab size {}",
                logits.len(),
                self.vocab
            );
        }
        let u = uniforms.map(Tensor::from_slice);
        let (tok, probs) = self.sample(&Tensor::from_slice(logits), spec, u.as_ref())?;
        Ok((tok.int64_value(&[0]) as i32, Vec::<f32>::try_from(probs)?))
    }

    fn generate_frame_ext(
        &mut self,
        req: &FrameRequest,
        mut external: Option<&mut ExternalSampler>,
    ) -> Result<FrameOutput> {
        let _guard = tch::no_grad_guard();
        let (c, v) = (self.codebooks, self.vocab as i64);
        if req.input.width != c + 1 {
            bail!(
                "frame width {} does not match the model's {} codebooks + text",
                req.input.width,
                c
            );
        }
        if self.backbone.pos + req.input.len() > self.backbone.f.max_seq_len {
            bail!(
                "sequence exceeds the backbone's max_seq_len {}",
                self.backbone.f.max_seq_len
            );
        }
        let uniforms = req
            .uniforms
            .map(|u| Tensor::from_slice(u).view([c as i64, v]));
        let forced = req
            .forced
            .map(|f| Tensor::from_slice(f).to_kind(Kind::Int64));
        let positions = req.input.len();
        let x = self.embed(req.input);
        let h_all = self.backbone.forward(&x, true);
        let h = h_all.select(1, -1); // [1, Db]
        let mut sampled = Vec::with_capacity(c);
        let mut logits_rows = Vec::with_capacity(c);
        let mut probs_rows = Vec::with_capacity(c);
        self.decoder.reset();
        let mut dec_in = Tensor::new();
        for cb in 0..c {
            let logits = if cb == 0 {
                h.linear::<Tensor>(&self.c0_head, None)
            } else {
                let out = self.decoder.forward(&dec_in, true).select(1, -1);
                out.matmul(&self.audio_head.get(cb as i64 - 1))
            }
            .to_kind(Kind::Float)
            .view([v]);
            let u = uniforms.as_ref().map(|u| u.get(cb as i64));
            let (tok, probs) = match external.as_mut() {
                Some(ext) => {
                    let (t, p) = ext(cb, &Vec::<f32>::try_from(&logits)?)?;
                    (Tensor::from_slice(&[t as i64]), Tensor::from_slice(&p))
                }
                None => self.sample(&logits, req.sampler, u.as_ref())?,
            };
            let fed = match &forced {
                Some(f) => f.narrow(0, cb as i64, 1),
                None => tok.shallow_clone(),
            };
            if cb + 1 < c {
                let emb = self.audio_input(&fed, cb as i64);
                dec_in = if cb == 0 {
                    let hp = h.unsqueeze(1).linear::<Tensor>(&self.projection, None);
                    Tensor::cat(&[hp, emb], 1)
                } else {
                    emb
                };
            }
            sampled.push(tok);
            logits_rows.push(logits);
            probs_rows.push(probs);
        }
        // One host copy for the frame: tokens, then logits and probs when recorded.
        let mut parts = vec![Tensor::cat(&sampled, 0).to_kind(Kind::Float)];
        if req.record.logits {
            parts.push(Tensor::cat(&logits_rows, 0));
        }
        if req.record.probs {
            parts.push(Tensor::cat(&probs_rows, 0));
        }
        let flat: Vec<f32> = Vec::<f32>::try_from(Tensor::cat(&parts, 0))?;
        let (tokens, rest) = flat.split_at(c);
        let n = c * self.vocab;
        let (logits, probs) = match (req.record.logits, req.record.probs) {
            (true, true) => (Some(rest[..n].to_vec()), Some(rest[n..].to_vec())),
            (true, false) => (Some(rest.to_vec()), None),
            (false, true) => (None, Some(rest.to_vec())),
            (false, false) => (None, None),
        };
        Ok(FrameOutput {
            sampled: tokens.iter().map(|&t| t as i32).collect(),
            logits,
            probs,
            positions,
        })
    }

    fn recompute(&mut self, prefix: &Frames, frames: &[Vec<i32>]) -> Result<Vec<Vec<f32>>> {
        let _guard = tch::no_grad_guard();
        let (c, v) = (self.codebooks as i64, self.vocab as i64);
        let mut all = prefix.clone();
        for f in frames {
            all.extend(&Frames::audio(f, self.vocab)?);
        }
        let h_all = self
            .backbone
            .forward(&self.embed(&all), false)
            .squeeze_dim(0); // [T, Db]
        let p = prefix.len() as i64;
        let mut out = Vec::with_capacity(frames.len());
        for (fi, f) in frames.iter().enumerate() {
            let h = h_all.get(p - 1 + fi as i64).unsqueeze(0); // [1, Db]
            let c0 = h
                .linear::<Tensor>(&self.c0_head, None)
                .to_kind(Kind::Float)
                .view([1, v]);
            let ids = Tensor::from_slice(&f[..f.len() - 1]).to_kind(Kind::Int64);
            let offsets = Tensor::arange(c - 1, (Kind::Int64, Device::Cpu)) * v;
            let embs = self
                .audio_emb
                .index_select(0, &(ids + offsets))
                .unsqueeze(0);
            let seq =
                Tensor::cat(&[h.unsqueeze(1), embs], 1).linear::<Tensor>(&self.projection, None);
            let dec = self.decoder.forward(&seq, false).squeeze_dim(0); // [C, Dd]
            let depth = dec
                .narrow(0, 1, c - 1)
                .unsqueeze(1)
                .matmul(&self.audio_head)
                .squeeze_dim(1);
            let rows = Tensor::cat(&[c0, depth.to_kind(Kind::Float)], 0);
            out.push(Vec::<f32>::try_from(rows.reshape([-1]))?);
        }
        Ok(out)
    }
}
