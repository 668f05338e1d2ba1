//! CSM on libtorch (tch), the reference: written out in plain tensor ops, as Sesame's PyTorch
//! code computes it (torchtune RoPE on interleaved pairs, Llama-3 frequency scaling).
use super::frame_output;
use super::sampler::Sampler;
use super::stack::{host_taps, kind_of, tap, to_tensor, Stack};
use crate::backend::common::{
    backend_glue, csm_embedding_ids, depth_ids, recompute_input, sample, FrameRows, SamplerSteps,
};
use crate::backend::{Backend, ExternalSampler, FrameOutput, FrameRequest};
use crate::capture::BackendInfo;
use crate::model::{CsmModel, DType, Frames};
use anyhow::Result;
use tch::{Kind, Tensor};

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
    sampler: Sampler,
}

impl TorchCsm {
    pub fn load(model: &CsmModel, dtype: DType) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let kind = kind_of(dtype);
        let cfg = &model.config;
        let w = |name: &str| to_tensor(model.weights.get(name), kind);
        Ok(TorchCsm {
            backbone: Stack::load(&|n| Ok(w(&format!("backbone.{n}"))), &cfg.backbone, true)?,
            decoder: Stack::load(&|n| Ok(w(&format!("decoder.{n}"))), &cfg.decoder, true)?,
            text_emb: w("text_embeddings.weight"),
            audio_emb: w("audio_embeddings.weight"),
            projection: w("projection.weight"),
            c0_head: w("codebook0_head.weight"),
            audio_head: w("audio_head"),
            codebooks: cfg.audio_num_codebooks,
            vocab: cfg.audio_vocab_size,
            kind,
            dtype,
            sampler: Sampler::new(cfg.audio_vocab_size)?,
        })
    }

    /// Sum of the unmasked columns' embeddings: [1, L, D].
    fn embed(&self, frames: &Frames) -> Tensor {
        let (l, w, c) = (
            frames.len() as i64,
            frames.width as i64,
            self.codebooks as i64,
        );
        let (audio_ids, text_ids) = csm_embedding_ids(frames, self.codebooks, self.vocab);
        let audio = self
            .audio_emb
            .index_select(0, &Tensor::from_slice(&audio_ids))
            .view([l, c, -1]);
        let text = self
            .text_emb
            .index_select(0, &Tensor::from_slice(&text_ids))
            .view([l, 1, -1]);
        let mask = Tensor::from_slice(&frames.mask)
            .view([l, w, 1])
            .to_kind(self.kind);
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
}

impl Backend for TorchCsm {
    backend_glue!(backbone: "backbone", decoder: "decoder");

    fn info(&self) -> BackendInfo {
        super::info_of(self.dtype)
    }

    fn reset(&mut self, seed: u64) -> Result<()> {
        self.backbone.reset();
        self.decoder.reset();
        self.sampler.reseed(seed)
    }

    fn generate_frame_ext(
        &mut self,
        req: &FrameRequest,
        mut external: Option<&mut ExternalSampler>,
    ) -> Result<FrameOutput> {
        let _guard = tch::no_grad_guard();
        let (c, v) = (self.codebooks, self.vocab as i64);
        req.check(c, self.backbone.pos, self.backbone.f.max_seq_len)?;
        let uniforms = req
            .uniforms
            .map(|u| Tensor::from_slice(u).view([c as i64, v]));
        let forced = req
            .forced
            .map(|f| Tensor::from_slice(f).to_kind(Kind::Int64));
        let input = req.input;
        let x = self.embed(input);
        let h_all = self.backbone.forward(&x, true);
        let h = h_all.select(1, -1); // [1, Db]
        tap(&mut self.backbone.taps, || "backbone.h_last".into(), &h);
        let mut rows = FrameRows::new(c, self.vocab);
        self.decoder.reset();
        let mut dec_in = Tensor::new();
        for cb in 0..c {
            let logits = if cb == 0 {
                h.linear::<Tensor>(&self.c0_head, None)
            } else {
                self.decoder.name_taps(|| format!("decoder.cb{cb}"));
                let out = self.decoder.forward(&dec_in, true).select(1, -1);
                self.decoder.move_taps_to(&mut self.backbone.taps);
                out.matmul(&self.audio_head.get(cb as i64 - 1))
            }
            .to_kind(Kind::Float)
            .view([v]);
            let name = || format!("head.cb{cb}.logits");
            tap(&mut self.backbone.taps, name, &logits);
            let u = uniforms.as_ref().map(|u| u.get(cb as i64));
            let (tok, probs) = match external.as_mut() {
                Some(ext) => {
                    let (t, p) = ext(cb, &Vec::<f32>::try_from(&logits)?)?;
                    (Tensor::from_slice(&[t as i64]), Tensor::from_slice(&p))
                }
                None => sample(&mut self.sampler, &logits, req.sampler, u.as_ref())?,
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
            rows.push(tok, logits, probs);
        }
        // One host copy for the frame: tokens, then logits and probs when recorded.
        frame_output(rows, req.record, input.len())
    }

    fn recompute(&mut self, prefix: &Frames, frames: &[Vec<i32>]) -> Result<Vec<Vec<f32>>> {
        let _guard = tch::no_grad_guard();
        let (c, v) = (self.codebooks as i64, self.vocab as i64);
        let all = recompute_input(prefix, frames, self.vocab)?;
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
            let ids = Tensor::from_slice(&depth_ids(f, self.vocab));
            let embs = self.audio_emb.index_select(0, &ids).unsqueeze(0);
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
