//! The libtorch reference of a plain Llama LM, as transformers computes it: the shared
//! [`Stack`] with split-halves RoPE (`rotate_half`), Llama-3-scaled frequencies, the embedding,
//! final norm and LM head (or tied embeddings); LoRA merged at load.
//!
//! A [`Backend`] with one codebook: a "frame" is one token (rows of width 2, column 0 the token).
use super::sampler;
use super::stack::{host_taps, kind_of, tap, to_tensor, Stack};
use crate::backend::{Backend, ExternalSampler, FrameOutput, FrameRequest};
use crate::capture::BackendInfo;
use crate::model::llama::hf_key;
use crate::model::{DType, Frames, LlamaModel};
use crate::sampling::SamplerSpec;
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

pub struct TorchLlama {
    stack: Stack,
    embed: Tensor,
    head: Tensor,
    vocab: usize,
    dtype: DType,
    native_seed: u64,
    native_step: u64,
}

impl TorchLlama {
    pub fn load(model: &LlamaModel, dtype: DType) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let kind = kind_of(dtype);
        let get = |leaf: &str| -> Result<Tensor> {
            let name = hf_key(leaf);
            let w = to_tensor(model.get(&name)?, kind);
            let Some((pair, scale)) = model
                .adapter
                .as_ref()
                .and_then(|a| a.updates.get(&name).map(|p| (p, a.scale)))
            else {
                return Ok(w);
            };
            // mlx-lm's fuse: W + scale · (A B)ᵀ, in f32.
            let a = to_tensor(&pair.a, Kind::Float);
            let b = to_tensor(&pair.b, Kind::Float);
            let delta = (a.matmul(&b) * scale as f64).transpose(0, 1);
            Ok(w + delta.to_kind(kind))
        };
        Ok(TorchLlama {
            stack: Stack::load(&get, &model.config.flavor, false)?,
            embed: to_tensor(model.get("model.embed_tokens.weight")?, kind),
            head: to_tensor(model.get(model.lm_head_name())?, kind),
            vocab: model.config.vocab_size,
            dtype,
            native_seed: 0,
            native_step: 0,
        })
    }

    /// Token embeddings of the rows' column 0: [1, L, D].
    fn embed(&self, frames: &Frames) -> Result<Tensor> {
        if frames.width != 2 {
            bail!(
                "a Llama step takes rows of width 2 (token, unused), got {}",
                frames.width
            );
        }
        let ids: Vec<i64> = frames.tokens.chunks_exact(2).map(|r| r[0]).collect();
        Ok(self
            .embed
            .index_select(0, &Tensor::from_slice(&ids))
            .unsqueeze(0))
    }

    /// f32 logits [V] of hidden row(s) `h` [.., D].
    fn logits(&self, h: &Tensor) -> Tensor {
        h.linear::<Tensor>(&self.head, None)
            .to_kind(Kind::Float)
            .reshape([-1])
    }
}

impl Backend for TorchLlama {
    fn info(&self) -> BackendInfo {
        super::info_of(self.dtype)
    }

    fn reset(&mut self, seed: u64) -> Result<()> {
        self.stack.reset();
        self.native_seed = seed;
        self.native_step = 0;
        Ok(())
    }

    fn position(&self) -> usize {
        self.stack.pos
    }

    fn sample_logits(
        &mut self,
        logits: &[f32],
        spec: &SamplerSpec,
        uniforms: Option<&[f32]>,
    ) -> Result<(i32, Vec<f32>)> {
        let _guard = tch::no_grad_guard();
        crate::backend::check_row(logits, self.vocab)?;
        let u = uniforms.map(Tensor::from_slice);
        let (tok, probs) = sampler::sample(
            &Tensor::from_slice(logits),
            self.vocab,
            spec,
            u.as_ref(),
            self.native_seed,
            &mut self.native_step,
        )?;
        Ok((tok.int64_value(&[0]) as i32, Vec::<f32>::try_from(probs)?))
    }

    fn generate_frame_ext(
        &mut self,
        req: &FrameRequest,
        external: Option<&mut ExternalSampler>,
    ) -> Result<FrameOutput> {
        let _guard = tch::no_grad_guard();
        if self.stack.pos + req.input.len() > self.stack.f.max_seq_len {
            bail!(
                "sequence exceeds the model's max_position_embeddings {}",
                self.stack.f.max_seq_len
            );
        }
        let positions = req.input.len();
        let h = self
            .stack
            .forward(&self.embed(req.input)?, true)
            .select(1, -1);
        tap(&mut self.stack.taps, || "model.h_last".into(), &h);
        let logits = self.logits(&h);
        tap(&mut self.stack.taps, || "head.cb0.logits".into(), &logits);
        let (tok, probs) = match external {
            Some(ext) => {
                let (t, p) = ext(0, &Vec::<f32>::try_from(&logits)?)?;
                (Tensor::from_slice(&[t as i64]), Tensor::from_slice(&p))
            }
            None => {
                let u = req.uniforms.map(Tensor::from_slice);
                sampler::sample(
                    &logits,
                    self.vocab,
                    req.sampler,
                    u.as_ref(),
                    self.native_seed,
                    &mut self.native_step,
                )?
            }
        };
        // One host copy per step: token, then logits and probs when recorded.
        let mut parts = vec![tok.to_kind(Kind::Float).reshape([1])];
        if req.record.logits {
            parts.push(logits);
        }
        if req.record.probs {
            parts.push(probs);
        }
        let flat: Vec<f32> = Vec::<f32>::try_from(Tensor::cat(&parts, 0))?;
        Ok(FrameOutput::from_host(
            &flat, 1, self.vocab, req.record, positions,
        ))
    }

    fn set_taps(&mut self, on: bool) -> Result<()> {
        self.stack.set_taps(on, "model");
        Ok(())
    }

    fn take_taps(&mut self) -> Result<Vec<crate::backend::Tap>> {
        host_taps(self.stack.take_taps())
    }

    fn recompute(&mut self, prefix: &Frames, frames: &[Vec<i32>]) -> Result<Vec<Vec<f32>>> {
        let _guard = tch::no_grad_guard();
        let mut all = prefix.clone();
        for f in frames {
            all.extend(&Frames::audio(f, self.vocab)?);
        }
        let h_all = self.stack.forward(&self.embed(&all)?, false).squeeze_dim(0);
        let p = prefix.len() as i64;
        (0..frames.len())
            .map(|fi| {
                let h = h_all.get(p - 1 + fi as i64).unsqueeze(0);
                Ok(Vec::<f32>::try_from(self.logits(&h))?)
            })
            .collect()
    }
}
