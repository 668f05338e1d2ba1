//! The libtorch reference of a plain Llama LM, as transformers computes it: the shared
//! [`Stack`] with split-halves RoPE (`rotate_half`), Llama-3-scaled frequencies, the embedding,
//! final norm and LM head (or tied embeddings); LoRA merged at load.
//!
//! A [`Backend`] with one codebook: a "frame" is one token (rows of width 2, column 0 the token).
use super::frame_output;
use super::sampler::Sampler;
use super::stack::{host_taps, kind_of, tap, to_tensor, Stack};
use crate::backend::common::{
    backend_glue, llama_tokens, llama_weight, recompute_input, sample, FrameRows, SamplerSteps,
};
use crate::backend::{Backend, ExternalSampler, FrameOutput, FrameRequest};
use crate::capture::BackendInfo;
use crate::model::llama::lora::LoraPair;
use crate::model::{DType, Frames, HostTensor, LlamaModel};
use anyhow::Result;
use tch::{Kind, Tensor};

pub struct TorchLlama {
    stack: Stack,
    embed: Tensor,
    head: Tensor,
    vocab: usize,
    dtype: DType,
    sampler: Sampler,
}

impl TorchLlama {
    pub fn load(model: &LlamaModel, dtype: DType) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let kind = kind_of(dtype);
        let upload = |t: &HostTensor| Ok(to_tensor(t, kind));
        let fuse = |w: Tensor, pair: &LoraPair, scale: f32| -> Result<Tensor> {
            let a = to_tensor(&pair.a, Kind::Float);
            let b = to_tensor(&pair.b, Kind::Float);
            let delta = (a.matmul(&b) * scale as f64).transpose(0, 1);
            Ok(w + delta.to_kind(kind))
        };
        let get = |leaf: &str| llama_weight(model, leaf, upload, fuse);
        Ok(TorchLlama {
            stack: Stack::load(&get, &model.config.flavor, false)?,
            embed: to_tensor(model.get("model.embed_tokens.weight")?, kind),
            head: to_tensor(model.get(model.lm_head_name())?, kind),
            vocab: model.config.vocab_size,
            dtype,
            sampler: Sampler::new(model.config.vocab_size)?,
        })
    }

    /// Token embeddings of the rows' column 0: [1, L, D].
    fn embed(&self, frames: &Frames) -> Result<Tensor> {
        let ids = llama_tokens(frames)?;
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
    backend_glue!(stack: "model");

    fn info(&self) -> BackendInfo {
        super::info_of(self.dtype)
    }

    fn reset(&mut self, seed: u64) -> Result<()> {
        self.stack.reset();
        self.sampler.reseed(seed)
    }

    fn generate_frame_ext(
        &mut self,
        req: &FrameRequest,
        external: Option<&mut ExternalSampler>,
    ) -> Result<FrameOutput> {
        let _guard = tch::no_grad_guard();
        let limit = "max_position_embeddings";
        self.stack.check_room(req.input.len(), limit)?;
        let input = req.input;
        let x = self.embed(input)?;
        let h_all = self.stack.forward(&x, true);
        let h = h_all.select(1, -1);
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
                sample(&mut self.sampler, &logits, req.sampler, u.as_ref())?
            }
        };
        let mut rows = FrameRows::new(1, self.vocab);
        rows.push(tok, logits, probs);
        // One host copy per step: token, then logits and probs when recorded.
        frame_output(rows, req.record, input.len())
    }

    fn recompute(&mut self, prefix: &Frames, frames: &[Vec<i32>]) -> Result<Vec<Vec<f32>>> {
        let _guard = tch::no_grad_guard();
        let all = recompute_input(prefix, frames, self.vocab)?;
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
