//! The MLX pipeline (mlx-rs): CSM as an MLX port writes it — `fast::rope` with
//! `traditional = true` and Llama-3-scaled custom frequencies, `fast::rms_norm`,
//! `fast::scaled_dot_product_attention` with grouped KV heads, lazy graphs evaluated once per frame.
use super::{Backend, ExternalSampler, FrameOutput, FrameRequest};
use crate::capture::BackendInfo;
use crate::faults::Fault;
use crate::model::{CsmModel, DType, Frames};
use crate::sampling::SamplerSpec;
use anyhow::Result;
use mlx_rs::ops::concatenate;
use mlx_rs::ops::indexing::take_axis;
use mlx_rs::{random, Array, Dtype};
use stack::{host_taps, index1, mlx_dtype, tap, to_array, Stack};

pub mod llama;
pub mod mimi;

/// Median time (ms, 5 runs after a warm-up) of a [1, 2048] × [2048, 8192] matmul in `dtype`
/// on this machine, with the weight as a transposed view as the stacks hold it.
pub fn matmul_ms(dtype: DType) -> Result<f64> {
    let dt = mlx_dtype(dtype);
    let w = mlx_rs::ops::ones::<f32>(&[8192, 2048])?.as_dtype(dt)?;
    let x = mlx_rs::ops::ones::<f32>(&[1, 2048])?.as_dtype(dt)?;
    mlx_rs::transforms::eval([&w, &x])?;
    let w_t = w.t();
    let mut ms = Vec::new();
    for i in 0..6 {
        let t0 = std::time::Instant::now();
        x.matmul(&w_t)?.eval()?;
        if i > 0 {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}
pub(crate) mod sampler;
pub(crate) mod stack;

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
            backbone: Stack::load(
                &|n| to_array(model.weights.get(&format!("backbone.{n}")), dt),
                &cfg.backbone,
                true,
            )?,
            decoder: Stack::load(
                &|n| to_array(model.weights.get(&format!("decoder.{n}")), dt),
                &cfg.decoder,
                true,
            )?,
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

    fn sample(
        &mut self,
        logits: &Array,
        spec: &SamplerSpec,
        uniforms: Option<&Array>,
    ) -> Result<(Array, Array)> {
        sampler::sample(
            logits,
            self.vocab,
            spec,
            uniforms,
            self.fault,
            &mut self.key,
        )
    }
}

/// What an MLX pipeline reports about itself (both model kinds).
pub(crate) fn info_of(dtype: DType, fault: Option<Fault>) -> BackendInfo {
    BackendInfo {
        name: "mlx".into(),
        library_version: format!("mlx {} (mlx-rs 0.33)", mlx_version()),
        device: format!("{:?}", mlx_rs::Device::default()).to_lowercase(),
        dtype: dtype.name().into(),
        fault: fault.map(|f| f.name().to_string()),
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
        info_of(self.dtype, self.fault)
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
                    stack.set_rope_scaling(None);
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
        crate::backend::check_row(logits, self.vocab)?;
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
        req.check(c, self.backbone.pos, self.backbone.f.max_seq_len)?;
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
                let x = self.embed(req.input)?;
                self.backbone.forward(&x, true)?
            }
            _ => {
                let x = self.embed(req.input)?;
                self.backbone.forward(&x, true)?
            }
        };
        let last = if self.fault == Some(Fault::WrongPosition) {
            0
        } else {
            h_all.dim(1) - 1
        };
        let h = take_axis(&h_all, index1(last), 1)?.reshape(&[1, -1])?; // [1, Db]
        tap(&mut self.backbone.taps, || "backbone.h_last".into(), &h);
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
                let dec_in = dec_in.as_ref().unwrap();
                self.decoder.name_taps(|| format!("decoder.cb{cb}"));
                let out = self.decoder.forward(dec_in, true)?;
                self.decoder.move_taps_to(&mut self.backbone.taps);
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
            tap(
                &mut self.backbone.taps,
                || format!("head.cb{cb}.logits"),
                &logits,
            );
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
        Ok(FrameOutput::from_host(
            flat, c, self.vocab, req.record, positions,
        ))
    }

    fn set_taps(&mut self, on: bool) -> Result<()> {
        self.backbone.set_taps(on, "backbone");
        self.decoder.set_taps(on, "decoder");
        Ok(())
    }

    fn take_taps(&mut self) -> Result<Vec<super::Tap>> {
        host_taps(self.backbone.take_taps())
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
