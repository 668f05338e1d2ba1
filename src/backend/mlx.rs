//! The MLX pipeline (mlx-rs): CSM as an MLX port writes it — `fast::rope` with
//! `traditional = true` and Llama-3-scaled custom frequencies, `fast::rms_norm`,
//! `fast::scaled_dot_product_attention` with grouped KV heads, lazy graphs evaluated once per frame.
use super::{Backend, ExternalSampler, FrameOutput, FrameRequest};
use crate::capture::BackendInfo;
use crate::faults::Fault;
use crate::model::{CsmModel, DType, Frames, HostTensor, LlamaFlavor};
use crate::sampling::{NoiseMode, SamplerSpec};
use anyhow::{bail, Result};
use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::ops::argpartition_axis;
use mlx_rs::ops::indexing::{argmax_axis, take_axis, topk_axis};
use mlx_rs::ops::{concatenate, select, softmax_axis};
use mlx_rs::{random, Array, Dtype};

fn mlx_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::Float32,
        DType::F16 => Dtype::Float16,
        DType::BF16 => Dtype::Bfloat16,
    }
}

fn to_array(t: &HostTensor, dtype: Dtype) -> Result<Array> {
    let shape: Vec<i32> = t.shape.iter().map(|&s| s as i32).collect();
    let a = match t.dtype {
        DType::F32 => Array::from_slice(&t.to_f32(), &shape),
        DType::F16 => {
            let v: Vec<half::f16> = t
                .data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                .collect();
            Array::from_slice(&v, &shape)
        }
        DType::BF16 => {
            let v: Vec<half::bf16> = t
                .data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]))
                .collect();
            Array::from_slice(&v, &shape)
        }
    };
    let a = a.as_dtype(dtype)?;
    a.eval()?;
    Ok(a)
}

fn index1(i: i32) -> Array {
    Array::from_slice(&[i], &[1])
}

struct Layer {
    q_t: Array,
    k_t: Array,
    v_t: Array,
    o_t: Array,
    sa_norm: Array,
    mlp_norm: Array,
    w1_t: Array,
    w2_t: Array,
    w3_t: Array,
}

struct Stack {
    layers: Vec<Layer>,
    norm: Array,
    f: LlamaFlavor,
    /// Periods 1/inv_freq, the form `fast::rope` takes as `freqs`.
    freqs: Array,
    cache: Vec<Option<(Array, Array)>>,
    pos: usize,
    /// torchtune's interleaved pairs (true); false is the split-halves fault.
    traditional: bool,
}

impl Stack {
    fn load(model: &CsmModel, prefix: &str, f: &LlamaFlavor, dtype: Dtype) -> Result<Stack> {
        let w = |name: &str| to_array(model.weights.get(&format!("{prefix}.{name}")), dtype);
        let wt = |name: &str| -> Result<Array> {
            let a = w(name)?.t();
            a.eval()?;
            Ok(a)
        };
        let mut layers = Vec::new();
        for i in 0..f.num_layers {
            layers.push(Layer {
                q_t: wt(&format!("layers.{i}.attn.q_proj.weight"))?,
                k_t: wt(&format!("layers.{i}.attn.k_proj.weight"))?,
                v_t: wt(&format!("layers.{i}.attn.v_proj.weight"))?,
                o_t: wt(&format!("layers.{i}.attn.output_proj.weight"))?,
                sa_norm: w(&format!("layers.{i}.sa_norm.scale"))?,
                mlp_norm: w(&format!("layers.{i}.mlp_norm.scale"))?,
                w1_t: wt(&format!("layers.{i}.mlp.w1.weight"))?,
                w2_t: wt(&format!("layers.{i}.mlp.w2.weight"))?,
                w3_t: wt(&format!("layers.{i}.mlp.w3.weight"))?,
            });
        }
        let periods: Vec<f32> = f.rope_inv_freq().iter().map(|&x| 1.0 / x).collect();
        Ok(Stack {
            layers,
            norm: w("norm.scale")?,
            f: f.clone(),
            freqs: Array::from_slice(&periods, &[periods.len() as i32]),
            cache: (0..f.num_layers).map(|_| None).collect(),
            pos: 0,
            traditional: true,
        })
    }

    fn reset(&mut self) {
        self.cache.iter_mut().for_each(|c| *c = None);
        self.pos = 0;
    }

    fn rope(&self, x: &Array, start: usize) -> Result<Array> {
        Ok(fast::rope(
            x,
            self.f.head_dim as i32,
            self.traditional,
            None,
            1.0,
            start as i32,
            Some(&self.freqs),
        )?)
    }

    /// x: [1, L, D]. Uses and extends the cache when `cached`.
    fn forward(&mut self, x: &Array, cached: bool) -> Result<Array> {
        let l = x.dim(1);
        let start = if cached { self.pos } else { 0 };
        let (nh, nkv, hd) = (
            self.f.num_heads as i32,
            self.f.num_kv_heads as i32,
            self.f.head_dim as i32,
        );
        let eps = self.f.norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut h = x.clone();
        for i in 0..self.layers.len() {
            let layer = &self.layers[i];
            let xn = fast::rms_norm(&h, Some(&layer.sa_norm), eps)?;
            let q = xn
                .matmul(&layer.q_t)?
                .reshape(&[1, l, nh, hd])?
                .transpose_axes(&[0, 2, 1, 3])?;
            let k = xn
                .matmul(&layer.k_t)?
                .reshape(&[1, l, nkv, hd])?
                .transpose_axes(&[0, 2, 1, 3])?;
            let v = xn
                .matmul(&layer.v_t)?
                .reshape(&[1, l, nkv, hd])?
                .transpose_axes(&[0, 2, 1, 3])?;
            let q = self.rope(&q, start)?;
            let mut k = self.rope(&k, start)?;
            let mut v = v;
            if cached {
                if let Some((ck, cv)) = &self.cache[i] {
                    k = concatenate(&[ck, &k], 2)?;
                    v = concatenate(&[cv, &v], 2)?;
                }
                self.cache[i] = Some((k.clone(), v.clone()));
            }
            let mask = (l > 1).then_some(ScaledDotProductAttentionMask::Causal);
            let attn = fast::scaled_dot_product_attention(&q, &k, &v, scale, mask, None)?;
            let attn = attn
                .transpose_axes(&[0, 2, 1, 3])?
                .reshape(&[1, l, nh * hd])?
                .matmul(&layer.o_t)?;
            h = h.add(&attn)?;
            let xn = fast::rms_norm(&h, Some(&layer.mlp_norm), eps)?;
            let gate = mlx_rs::nn::silu(xn.matmul(&layer.w1_t)?)?;
            let up = xn.matmul(&layer.w3_t)?;
            h = h.add(gate.multiply(&up)?.matmul(&layer.w2_t)?)?;
        }
        if cached {
            self.pos += l as usize;
        }
        Ok(fast::rms_norm(&h, Some(&self.norm), eps)?)
    }

    fn cache_arrays(&self) -> Vec<&Array> {
        self.cache
            .iter()
            .flatten()
            .flat_map(|(k, v)| [k, v])
            .collect()
    }
}

/// CSM on MLX.
pub struct MlxCsm {
    backbone: Stack,
    decoder: Stack,
    text_emb: Array,
    audio_emb: Array,
    projection_t: Array,
    c0_head_t: Array,
    audio_head: Array,
    codebooks: usize,
    vocab: usize,
    dtype: DType,
    key: Array,
    /// Injected porting bug (`--inject`); `None` in normal use.
    fault: Option<Fault>,
    /// Every backbone input so far, kept only under the `no-cache` fault.
    history: Option<Frames>,
}

impl MlxCsm {
    pub fn load(model: &CsmModel, dtype: DType) -> Result<Self> {
        let cfg = &model.config;
        let dt = mlx_dtype(dtype);
        let w = |name: &str| to_array(model.weights.get(name), dt);
        let projection_t = w("projection.weight")?.t();
        let c0_head_t = w("codebook0_head.weight")?.t();
        mlx_rs::transforms::eval([&projection_t, &c0_head_t])?;
        Ok(MlxCsm {
            backbone: Stack::load(model, "backbone", &cfg.backbone, dt)?,
            decoder: Stack::load(model, "decoder", &cfg.decoder, dt)?,
            text_emb: w("text_embeddings.weight")?,
            audio_emb: w("audio_embeddings.weight")?,
            projection_t,
            c0_head_t,
            audio_head: w("audio_head")?,
            codebooks: cfg.audio_num_codebooks,
            vocab: cfg.audio_vocab_size,
            dtype,
            key: random::key(0)?,
            fault: None,
            history: None,
        })
    }

    /// Sum of the unmasked columns' embeddings: [1, L, D].
    fn embed(&self, frames: &Frames) -> Result<Array> {
        let (l, w, c) = (
            frames.len() as i32,
            frames.width as i32,
            self.codebooks as i32,
        );
        let v = self.vocab as i64;
        let mut audio_ids = Vec::with_capacity((l * c) as usize);
        let mut text_ids = Vec::with_capacity(l as usize);
        for row in frames.tokens.chunks_exact(w as usize) {
            audio_ids.extend(
                row[..c as usize]
                    .iter()
                    .enumerate()
                    .map(|(cb, &t)| (t + cb as i64 * v) as i32),
            );
            text_ids.push(row[c as usize] as i32);
        }
        let audio = take_axis(&self.audio_emb, Array::from_slice(&audio_ids, &[l * c]), 0)?
            .reshape(&[l, c, -1])?;
        let text = take_axis(&self.text_emb, Array::from_slice(&text_ids, &[l]), 0)?
            .reshape(&[l, 1, -1])?;
        let mask = Array::from_slice(&frames.mask, &[l, w, 1]).as_dtype(mlx_dtype(self.dtype))?;
        let sum = concatenate(&[audio, text], 1)?
            .multiply(&mask)?
            .sum_axis(1, false)?;
        Ok(sum.reshape(&[1, l, -1])?)
    }

    /// Projected embedding of codebook `cb`'s token(s) `ids` (int32 [n]): [1, n, Dd].
    fn audio_input(&self, ids: &Array, cb: usize) -> Result<Array> {
        let offset = Array::from_int((cb * self.vocab) as i32);
        let e = take_axis(
            &self.audio_emb,
            ids.as_dtype(Dtype::Int32)?.add(&offset)?,
            0,
        )?;
        Ok(e.expand_dims(0)?.matmul(&self.projection_t)?)
    }

    /// The reference sampler on one row of f32 logits [V]: (token int32 [1], probs [V]).
    fn sample(
        &mut self,
        logits: &Array,
        spec: &SamplerSpec,
        uniforms: Option<&Array>,
    ) -> Result<(Array, Array)> {
        let v = self.vocab as i32;
        if spec.is_greedy() {
            let tok = argmax_axis(logits, 0, true)?.as_dtype(Dtype::Int32)?;
            let ids = Array::arange::<i32, i32>(None, v, None)?;
            let probs = ids.eq(&tok)?.as_dtype(Dtype::Float32)?;
            return Ok((tok, probs));
        }
        let t = match self.fault {
            Some(Fault::TempEpsilon) => spec.temperature + 1e-10,
            _ => spec.temperature,
        };
        let scaled = logits.divide(Array::from_f32(t))?;
        let kept = match spec.effective_top_k(self.vocab) {
            None => scaled,
            Some(k) if self.fault == Some(Fault::TopkExact) => {
                // Exactly k survivors: the k positions argpartition puts first.
                let idx = argpartition_axis(scaled.negative()?, k as i32 - 1, 0)?;
                let idx = take_axis(&idx, Array::arange::<i32, i32>(None, k as i32, None)?, 0)?;
                let vals = take_axis(&scaled, &idx, 0)?;
                let base = Array::full::<f32>(&[v], Array::from_f32(f32::NEG_INFINITY))?;
                base.put_along_axis(&idx, &vals, 0)?
            }
            Some(k) => {
                let kth = topk_axis(&scaled, k as i32, 0)?.min(None)?;
                select(
                    scaled.ge(&kth)?,
                    &scaled,
                    Array::from_f32(f32::NEG_INFINITY),
                )?
            }
        };
        let probs = softmax_axis(mlx_rs::nn::log_softmax(&kept, 0)?, 0, true)?;
        let q = match (spec.noise, uniforms) {
            (NoiseMode::Shared, Some(u)) => u.log()?.negative()?,
            (NoiseMode::Shared, None) => bail!("shared noise needs the harness's uniform draws"),
            (NoiseMode::Native, _) => {
                let (next, sub) = random::split(&self.key, 2)?;
                self.key = next;
                let u = random::uniform::<f32, f32>(0.0, 1.0, &[v][..], Some(&sub))?;
                u.log()?.negative()?
            }
        };
        let tok = argmax_axis(probs.divide(&q)?, 0, true)?.as_dtype(Dtype::Int32)?;
        Ok((tok, probs))
    }
}

/// MLX's version string, from mlx-c.
pub fn mlx_version() -> String {
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        let v = if mlx_sys::mlx_version(&mut s) == 0 {
            std::ffi::CStr::from_ptr(mlx_sys::mlx_string_data(s))
                .to_string_lossy()
                .into_owned()
        } else {
            "unknown".to_string()
        };
        mlx_sys::mlx_string_free(s);
        v
    }
}

impl Backend for MlxCsm {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "mlx".into(),
            library_version: format!("mlx {} (mlx-rs 0.33)", mlx_version()),
            device: format!("{:?}", mlx_rs::Device::default()).to_lowercase(),
            dtype: self.dtype.name().into(),
            fault: self.fault.map(|f| f.name().to_string()),
        }
    }

    fn reset(&mut self, seed: u64) -> Result<()> {
        self.backbone.reset();
        self.decoder.reset();
        self.key = random::key(seed)?;
        if self.fault == Some(Fault::NoCache) {
            self.history = None;
        }
        Ok(())
    }

    fn position(&self) -> usize {
        self.backbone.pos
    }

    fn inject(&mut self, fault: Fault) -> Result<()> {
        match fault {
            Fault::RopeHalves => {
                self.backbone.traditional = false;
                self.decoder.traditional = false;
            }
            Fault::NoRopeScaling => {
                for stack in [&mut self.backbone, &mut self.decoder] {
                    let plain = LlamaFlavor {
                        rope_scaling: None,
                        ..stack.f.clone()
                    };
                    let periods: Vec<f32> =
                        plain.rope_inv_freq().iter().map(|&x| 1.0 / x).collect();
                    stack.freqs = Array::from_slice(&periods, &[periods.len() as i32]);
                }
            }
            _ => {}
        }
        self.fault = Some(fault);
        Ok(())
    }

    fn sample_logits(
        &mut self,
        logits: &[f32],
        spec: &SamplerSpec,
        uniforms: Option<&[f32]>,
    ) -> Result<(i32, Vec<f32>)> {
        let v = self.vocab as i32;
        if logits.len() != self.vocab {
            bail!(
                "sample_logits: {} logits, expected the vocab size {}",
                logits.len(),
                self.vocab
            );
        }
        let u = uniforms.map(|u| Array::from_slice(u, &[v]));
        let (tok, probs) = self.sample(&Array::from_slice(logits, &[v]), spec, u.as_ref())?;
        mlx_rs::transforms::eval([&tok, &probs])?;
        Ok((tok.as_slice::<i32>()[0], probs.as_slice::<f32>().to_vec()))
    }

    fn generate_frame_ext(
        &mut self,
        req: &FrameRequest,
        mut external: Option<&mut ExternalSampler>,
    ) -> Result<FrameOutput> {
        let (c, v) = (self.codebooks, self.vocab as i32);
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
        let uniforms = req.uniforms.map(|u| Array::from_slice(u, &[c as i32, v]));
        let mut positions = req.input.len();
        let h_all = match self.fault {
            Some(Fault::NoCache) => {
                // The whole sequence again, every step.
                let mut hist = self.history.take().unwrap_or_else(|| Frames {
                    width: req.input.width,
                    tokens: vec![],
                    mask: vec![],
                });
                hist.extend(req.input);
                let x = self.embed(&hist)?;
                positions = hist.len();
                self.history = Some(hist);
                self.backbone.pos += req.input.len();
                self.backbone.forward(&x, false)?
            }
            Some(Fault::ContextLoss) if self.backbone.pos > 0 => {
                // Only the newest frame, with the cache (and so the prompt) forgotten.
                self.backbone.cache.iter_mut().for_each(|c| *c = None);
                self.backbone.forward(&self.embed(req.input)?, true)?
            }
            _ => self.backbone.forward(&self.embed(req.input)?, true)?,
        };
        let last = if self.fault == Some(Fault::WrongPosition) {
            0
        } else {
            h_all.dim(1) - 1
        };
        let h = take_axis(&h_all, index1(last), 1)?.reshape(&[1, -1])?; // [1, Db]
        let mut sampled = Vec::with_capacity(c);
        let mut logits_rows = Vec::with_capacity(c);
        let mut probs_rows = Vec::with_capacity(c);
        self.decoder.reset();
        let mut dec_in: Option<Array> = None;
        for cb in 0..c {
            let logits = if cb == 0 {
                h.matmul(&self.c0_head_t)?
            } else {
                if cb >= 2 && self.fault == Some(Fault::DecoderPosReset) {
                    self.decoder.pos = 1;
                }
                let out = self.decoder.forward(dec_in.as_ref().unwrap(), true)?;
                let last = out.dim(1) - 1;
                let out = take_axis(&out, index1(last), 1)?.reshape(&[1, -1])?;
                let head = take_axis(&self.audio_head, index1(cb as i32 - 1), 0)?
                    .reshape(&[out.dim(1), v])?;
                out.matmul(&head)?
            }
            .as_dtype(Dtype::Float32)?
            .reshape(&[v])?;
            let logits = if self.fault == Some(Fault::Bf16Logits) {
                logits.as_dtype(Dtype::Bfloat16)?.as_dtype(Dtype::Float32)?
            } else {
                logits
            };
            let u = match &uniforms {
                Some(u) => Some(take_axis(u, index1(cb as i32), 0)?.reshape(&[v])?),
                None => None,
            };
            let (tok, probs) = match external.as_mut() {
                Some(ext) => {
                    logits.eval()?;
                    let (t, p) = ext(cb, logits.as_slice::<f32>())?;
                    (Array::from_slice(&[t], &[1]), Array::from_slice(&p, &[v]))
                }
                None => self.sample(&logits, req.sampler, u.as_ref())?,
            };
            let fed = match req.forced {
                Some(f) => Array::from_slice(&f[cb..cb + 1], &[1]),
                None => tok.clone(),
            };
            if cb + 1 < c {
                let emb = self.audio_input(&fed, cb)?;
                dec_in = Some(if cb == 0 {
                    let hp = h.expand_dims(0)?.matmul(&self.projection_t)?;
                    concatenate(&[hp, emb], 1)?
                } else {
                    emb
                });
            }
            sampled.push(tok);
            logits_rows.push(logits);
            probs_rows.push(probs);
        }
        // One host copy for the frame: tokens, then logits and probs when recorded.
        let mut parts = vec![concatenate(&sampled, 0)?.as_dtype(Dtype::Float32)?];
        if req.record.logits {
            parts.push(concatenate(&logits_rows, 0)?);
        }
        if req.record.probs {
            parts.push(concatenate(&probs_rows, 0)?);
        }
        let flat = concatenate(&parts, 0)?;
        let mut to_eval = vec![&flat];
        to_eval.extend(self.backbone.cache_arrays());
        mlx_rs::transforms::eval(to_eval)?;
        let flat: &[f32] = flat.as_slice();
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
        let (c, v) = (self.codebooks as i32, self.vocab as i32);
        let mut all = prefix.clone();
        for f in frames {
            all.extend(&Frames::audio(f, self.vocab)?);
        }
        let h_all = self
            .backbone
            .forward(&self.embed(&all)?, false)?
            .reshape(&[all.len() as i32, -1])?;
        let p = prefix.len() as i32;
        let mut out = Vec::with_capacity(frames.len());
        for (fi, f) in frames.iter().enumerate() {
            let h = take_axis(&h_all, index1(p - 1 + fi as i32), 0)?; // [1, Db]
            let c0 = h.matmul(&self.c0_head_t)?.as_dtype(Dtype::Float32)?;
            let ids: Vec<i32> = f[..f.len() - 1]
                .iter()
                .enumerate()
                .map(|(cb, &t)| t + cb as i32 * v)
                .collect();
            let embs = take_axis(&self.audio_emb, Array::from_slice(&ids, &[c - 1]), 0)?;
            let seq = concatenate(&[h, embs], 0)?
                .expand_dims(0)?
                .matmul(&self.projection_t)?;
            let dec = self.decoder.forward(&seq, false)?.reshape(&[c, -1])?; // [C, Dd]
            let rest =
                take_axis(&dec, Array::arange::<i32, i32>(1, c, None)?, 0)?.expand_dims(1)?; // [C-1, 1, Dd]
            let depth = rest
                .matmul(&self.audio_head)?
                .reshape(&[c - 1, v])?
                .as_dtype(Dtype::Float32)?;
            let rows = concatenate(&[c0, depth], 0)?.reshape(&[-1])?;
            rows.eval()?;
            out.push(rows.as_slice::<f32>().to_vec());
        }
        Ok(out)
    }
}
