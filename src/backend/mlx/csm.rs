//! CSM on MLX (mlx-rs), as an MLX port writes it: `fast::rope` with `traditional = true` and
//! Llama-3-scaled custom frequencies, `fast::rms_norm`, `fast::scaled_dot_product_attention`
//! with grouped KV heads, lazy graphs evaluated once per frame. Reads as the libtorch
//! reference's `csm.rs` does, plus the calls of the fault hooks ([`super::faults`]).
use super::sampler::Sampler;
use super::stack::{host_taps, index1, mlx_dtype, tap, to_array, Stack};
use super::{faults, frame_output};
use crate::backend::common::{
    backend_glue, csm_embedding_ids, depth_ids, recompute_input, sample, FrameRows, SamplerSteps,
};
use crate::backend::{Backend, ExternalSampler, FrameOutput, FrameRequest};
use crate::capture::BackendInfo;
use crate::faults::Fault;
use crate::model::{CsmModel, DType, Frames};
use anyhow::Result;
use mlx_rs::ops::concatenate;
use mlx_rs::ops::indexing::take_axis;
use mlx_rs::{Array, Dtype};

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
    sampler: Sampler,
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
            backbone: Stack::load(&|n| w(&format!("backbone.{n}")), &cfg.backbone, true)?,
            decoder: Stack::load(&|n| w(&format!("decoder.{n}")), &cfg.decoder, true)?,
            text_emb: w("text_embeddings.weight")?,
            audio_emb: w("audio_embeddings.weight")?,
            projection_t,
            c0_head_t,
            audio_head: w("audio_head")?,
            codebooks: cfg.audio_num_codebooks,
            vocab: cfg.audio_vocab_size,
            dtype,
            sampler: Sampler::new(cfg.audio_vocab_size)?,
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
        let (audio_ids, text_ids) = csm_embedding_ids(frames, self.codebooks, self.vocab);
        let audio_ids: Vec<i32> = audio_ids.iter().map(|&i| i as i32).collect();
        let text_ids: Vec<i32> = text_ids.iter().map(|&i| i as i32).collect();
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
}

impl Backend for MlxCsm {
    backend_glue!(backbone: "backbone", decoder: "decoder");

    fn info(&self) -> BackendInfo {
        super::info_of(self.dtype, self.fault)
    }

    fn reset(&mut self, seed: u64) -> Result<()> {
        self.backbone.reset();
        self.decoder.reset();
        self.history = None;
        self.sampler.reseed(seed)
    }

    fn inject(&mut self, fault: Fault) -> Result<()> {
        faults::inject(fault, &mut [&mut self.backbone, &mut self.decoder], true)?;
        self.fault = Some(fault);
        self.sampler.fault = Some(fault);
        Ok(())
    }

    fn generate_frame_ext(
        &mut self,
        req: &FrameRequest,
        mut external: Option<&mut ExternalSampler>,
    ) -> Result<FrameOutput> {
        let (c, v) = (self.codebooks, self.vocab as i32);
        req.check(c, self.backbone.pos, self.backbone.f.max_seq_len)?;
        let uniforms = req.uniforms.map(|u| Array::from_slice(u, &[c as i32, v]));
        let input = faults::backbone_input(self.fault, &mut self.history, req.input);
        let x = self.embed(&input)?;
        let h_all = faults::backbone_forward(self.fault, &mut self.backbone, &x, req.input.len())?;
        let last = faults::readout(self.fault, h_all.dim(1));
        let h = take_axis(&h_all, index1(last), 1)?.reshape(&[1, -1])?; // [1, Db]
        tap(&mut self.backbone.taps, || "backbone.h_last".into(), &h);
        let mut rows = FrameRows::new(c, self.vocab);
        self.decoder.reset();
        let mut dec_in: Option<Array> = None;
        for cb in 0..c {
            let logits = if cb == 0 {
                h.matmul(&self.c0_head_t)?
            } else {
                faults::decoder_position(self.fault, cb, &mut self.decoder);
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
            let logits = faults::logits(self.fault, logits)?;
            let name = || format!("head.cb{cb}.logits");
            tap(&mut self.backbone.taps, name, &logits);
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
                None => sample(&mut self.sampler, &logits, req.sampler, u.as_ref())?,
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
            rows.push(tok, logits, probs);
        }
        // One host copy for the frame: tokens, then logits and probs when recorded.
        frame_output(rows, req.record, input.len(), &self.backbone)
    }

    fn recompute(&mut self, prefix: &Frames, frames: &[Vec<i32>]) -> Result<Vec<Vec<f32>>> {
        let (c, v) = (self.codebooks as i32, self.vocab as i32);
        let all = recompute_input(prefix, frames, self.vocab)?;
        let h_all = self
            .backbone
            .forward(&self.embed(&all)?, false)?
            .reshape(&[all.len() as i32, -1])?;
        let p = prefix.len() as i32;
        let mut out = Vec::with_capacity(frames.len());
        for (fi, f) in frames.iter().enumerate() {
            let h = take_axis(&h_all, index1(p - 1 + fi as i32), 0)?; // [1, Db]
            let c0 = h.matmul(&self.c0_head_t)?.as_dtype(Dtype::Float32)?;
            let ids: Vec<i32> = depth_ids(f, self.vocab).iter().map(|&i| i as i32).collect();
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
