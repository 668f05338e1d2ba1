//! A plain Llama LM on MLX, as mlx-lm writes it: the shared [`Stack`] with split-halves RoPE
//! (`fast::rope(traditional = false)`, HF's convention) and Llama-3-scaled frequencies, the
//! embedding, the final norm and the LM head (or tied embeddings); LoRA merged at load.
//!
//! It is a [`Backend`] with one codebook: a "frame" is one token (input rows of width 2, column
//! 0 the token), so capture, diff, sweep and gate work on its runs unchanged.
use super::sampler::Sampler;
use super::stack::{host_taps, index1, mlx_dtype, tap, to_array, Stack};
use super::{faults, frame_output};
use crate::backend::common::{
    backend_glue, llama_tokens, llama_weight, recompute_input, sample, FrameRows, SamplerSteps,
};
use crate::backend::{Backend, ExternalSampler, FrameOutput, FrameRequest};
use crate::capture::BackendInfo;
use crate::faults::Fault;
use crate::model::llama::lora::LoraPair;
use crate::model::{DType, Frames, HostTensor, LlamaModel};
use anyhow::Result;
use mlx_rs::ops::indexing::take_axis;
use mlx_rs::{Array, Dtype};

pub struct MlxLlama {
    stack: Stack,
    embed: Array,
    head_t: Array,
    vocab: usize,
    dtype: DType,
    sampler: Sampler,
    /// Injected porting bug (`--inject`); `None` in normal use.
    fault: Option<Fault>,
    /// Every input so far, kept only under the `no-cache` fault.
    history: Option<Frames>,
}

impl MlxLlama {
    pub fn load(model: &LlamaModel, dtype: DType) -> Result<Self> {
        let dt = mlx_dtype(dtype);
        let upload = |t: &HostTensor| to_array(t, dt);
        let fuse = |w: Array, pair: &LoraPair, scale: f32| -> Result<Array> {
            let a = to_array(&pair.a, Dtype::Float32)?;
            let b = to_array(&pair.b, Dtype::Float32)?;
            let delta = a.matmul(&b)?.multiply(Array::from_f32(scale))?.t();
            let merged = w.add(delta.as_dtype(dt)?)?;
            merged.eval()?;
            Ok(merged)
        };
        let get = |leaf: &str| llama_weight(model, leaf, upload, fuse);
        let stack = Stack::load(&get, &model.config.flavor, false)?;
        let head_t = to_array(model.get(model.lm_head_name())?, dt)?.t();
        head_t.eval()?;
        Ok(MlxLlama {
            stack,
            embed: to_array(model.get("model.embed_tokens.weight")?, dt)?,
            head_t,
            vocab: model.config.vocab_size,
            dtype,
            sampler: Sampler::new(model.config.vocab_size)?,
            fault: None,
            history: None,
        })
    }

    /// Token embeddings of the rows' column 0: [1, L, D].
    fn embed(&self, frames: &Frames) -> Result<Array> {
        let ids: Vec<i32> = llama_tokens(frames)?.iter().map(|&t| t as i32).collect();
        let l = ids.len() as i32;
        let e = take_axis(&self.embed, Array::from_slice(&ids, &[l]), 0)?;
        Ok(e.reshape(&[1, l, -1])?)
    }

    /// f32 logits [V] of hidden row `h` [1, D].
    fn logits(&self, h: &Array) -> Result<Array> {
        let l = h
            .matmul(&self.head_t)?
            .as_dtype(Dtype::Float32)?
            .reshape(&[self.vocab as i32])?;
        faults::logits(self.fault, l)
    }
}

impl Backend for MlxLlama {
    backend_glue!(stack: "model");

    fn info(&self) -> BackendInfo {
        super::info_of(self.dtype, self.fault)
    }

    fn reset(&mut self, seed: u64) -> Result<()> {
        self.stack.reset();
        self.history = None;
        self.sampler.reseed(seed)
    }

    fn inject(&mut self, fault: Fault) -> Result<()> {
        faults::inject(fault, &mut [&mut self.stack], false)?;
        self.fault = Some(fault);
        self.sampler.fault = Some(fault);
        Ok(())
    }

    fn generate_frame_ext(
        &mut self,
        req: &FrameRequest,
        external: Option<&mut ExternalSampler>,
    ) -> Result<FrameOutput> {
        let v = self.vocab as i32;
        let limit = "max_position_embeddings";
        self.stack.check_room(req.input.len(), limit)?;
        let input = faults::backbone_input(self.fault, &mut self.history, req.input);
        let x = self.embed(&input)?;
        let h_all = faults::backbone_forward(self.fault, &mut self.stack, &x, req.input.len())?;
        let last = faults::readout(self.fault, h_all.dim(1));
        let h = take_axis(&h_all, index1(last), 1)?.reshape(&[1, -1])?;
        tap(&mut self.stack.taps, || "model.h_last".into(), &h);
        let logits = self.logits(&h)?;
        tap(&mut self.stack.taps, || "head.cb0.logits".into(), &logits);
        let (tok, probs) = match external {
            Some(ext) => {
                logits.eval()?;
                let (t, p) = ext(0, logits.as_slice::<f32>())?;
                (Array::from_slice(&[t], &[1]), Array::from_slice(&p, &[v]))
            }
            None => {
                let u = req.uniforms.map(|u| Array::from_slice(u, &[v]));
                sample(&mut self.sampler, &logits, req.sampler, u.as_ref())?
            }
        };
        let mut rows = FrameRows::new(1, self.vocab);
        rows.push(tok, logits, probs);
        // One host copy per step: token, then logits and probs when recorded.
        frame_output(rows, req.record, input.len(), &self.stack)
    }

    fn recompute(&mut self, prefix: &Frames, frames: &[Vec<i32>]) -> Result<Vec<Vec<f32>>> {
        let all = recompute_input(prefix, frames, self.vocab)?;
        let h_all = self
            .stack
            .forward(&self.embed(&all)?, false)?
            .reshape(&[all.len() as i32, -1])?;
        let p = prefix.len() as i32;
        let mut out = Vec::with_capacity(frames.len());
        for fi in 0..frames.len() {
            let h = take_axis(&h_all, index1(p - 1 + fi as i32), 0)?;
            let row = self.logits(&h)?;
            row.eval()?;
            out.push(row.as_slice::<f32>().to_vec());
        }
        Ok(out)
    }
}
