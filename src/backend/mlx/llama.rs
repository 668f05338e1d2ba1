//! A plain Llama LM on MLX, as mlx-lm writes it: the shared [`Stack`] with split-halves RoPE
//! (`fast::rope(traditional = false)`, HF's convention) and Llama-3-scaled frequencies, the
//! embedding, the final norm and the LM head (or tied embeddings); LoRA merged at load.
//!
//! It is a [`Backend`] with one codebook: a "frame" is one token (input rows of width 2, column
//! 0 the token), so capture, diff, sweep and gate work on its runs unchanged.
use super::sampler;
use super::stack::{host_taps, index1, mlx_dtype, tap, to_array, Stack};
use crate::backend::{Backend, ExternalSampler, FrameOutput, FrameRequest};
use crate::capture::BackendInfo;
use crate::faults::Fault;
use crate::model::llama::hf_key;
use crate::model::{DType, Frames, LlamaModel};
use crate::sampling::SamplerSpec;
use anyhow::{bail, Result};
use mlx_rs::ops::concatenate;
use mlx_rs::ops::indexing::take_axis;
use mlx_rs::{random, Array, Dtype};

pub struct MlxLlama {
    stack: Stack,
    embed: Array,
    head_t: Array,
    vocab: usize,
    dtype: DType,
    key: Array,
    fault: Option<Fault>,
    /// Every input so far, kept only under the `no-cache` fault.
    history: Option<Frames>,
}

impl MlxLlama {
    pub fn load(model: &LlamaModel, dtype: DType) -> Result<Self> {
        let dt = mlx_dtype(dtype);
        let get = |leaf: &str| -> Result<Array> {
            let name = hf_key(leaf);
            let w = to_array(model.get(&name)?, dt)?;
            let Some((pair, scale)) = model
                .adapter
                .as_ref()
                .and_then(|a| a.updates.get(&name).map(|p| (p, a.scale)))
            else {
                return Ok(w);
            };
            // mlx-lm's fuse: W + scale · (A B)ᵀ, in f32.
            let a = to_array(&pair.a, Dtype::Float32)?;
            let b = to_array(&pair.b, Dtype::Float32)?;
            let delta = a.matmul(&b)?.multiply(Array::from_f32(scale))?.t();
            let merged = w.add(delta.as_dtype(dt)?)?;
            merged.eval()?;
            Ok(merged)
        };
        let stack = Stack::load(&get, &model.config.flavor, false)?;
        let head_t = to_array(model.get(model.lm_head_name())?, dt)?.t();
        head_t.eval()?;
        Ok(MlxLlama {
            stack,
            embed: to_array(model.get("model.embed_tokens.weight")?, dt)?,
            head_t,
            vocab: model.config.vocab_size,
            dtype,
            key: random::key(0)?,
            fault: None,
            history: None,
        })
    }

    /// Token embeddings of the rows' column 0: [1, L, D].
    fn embed(&self, frames: &Frames) -> Result<Array> {
        if frames.width != 2 {
            bail!(
                "a Llama step takes rows of width 2 (token, unused), got {}",
                frames.width
            );
        }
        let ids: Vec<i32> = frames.tokens.chunks_exact(2).map(|r| r[0] as i32).collect();
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
        Ok(if self.fault == Some(Fault::Bf16Logits) {
            l.as_dtype(Dtype::Bfloat16)?.as_dtype(Dtype::Float32)?
        } else {
            l
        })
    }
}

impl Backend for MlxLlama {
    fn info(&self) -> BackendInfo {
        super::info_of(self.dtype, self.fault)
    }

    fn reset(&mut self, seed: u64) -> Result<()> {
        self.stack.reset();
        self.key = random::key(seed)?;
        self.history = None;
        Ok(())
    }

    fn position(&self) -> usize {
        self.stack.pos
    }

    fn inject(&mut self, fault: Fault) -> Result<()> {
        match fault {
            // The wrong RoPE variant for this checkpoint: interleaved pairs instead of halves.
            Fault::RopeHalves => self.stack.traditional = !self.stack.traditional,
            Fault::NoRopeScaling => self.stack.set_rope_scaling(None),
            Fault::DecoderPosReset => {
                bail!("--inject {fault}: a Llama model has no depth decoder")
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
        let (tok, probs) = sampler::sample(
            &Array::from_slice(logits, &[v]),
            self.vocab,
            spec,
            u.as_ref(),
            self.fault,
            &mut self.key,
        )?;
        mlx_rs::transforms::eval([&tok, &probs])?;
        Ok((tok.as_slice::<i32>()[0], probs.as_slice::<f32>().to_vec()))
    }

    fn generate_frame_ext(
        &mut self,
        req: &FrameRequest,
        external: Option<&mut ExternalSampler>,
    ) -> Result<FrameOutput> {
        let v = self.vocab as i32;
        if self.stack.pos + req.input.len() > self.stack.f.max_seq_len {
            bail!(
                "sequence exceeds the model's max_position_embeddings {}",
                self.stack.f.max_seq_len
            );
        }
        let mut positions = req.input.len();
        let h_all = match self.fault {
            Some(Fault::NoCache) => {
                // The whole sequence again, every step.
                let mut hist = self.history.take().unwrap_or_else(|| Frames {
                    width: 2,
                    tokens: vec![],
                    mask: vec![],
                });
                hist.extend(req.input);
                let x = self.embed(&hist)?;
                positions = hist.len();
                self.history = Some(hist);
                self.stack.pos += req.input.len();
                self.stack.forward(&x, false)?
            }
            Some(Fault::ContextLoss) if self.stack.pos > 0 => {
                // Only the newest token, with the cache (and so the prompt) forgotten.
                self.stack.cache.iter_mut().for_each(|c| *c = None);
                self.stack.forward(&self.embed(req.input)?, true)?
            }
            _ => self.stack.forward(&self.embed(req.input)?, true)?,
        };
        let last = if self.fault == Some(Fault::WrongPosition) {
            0
        } else {
            h_all.dim(1) - 1
        };
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
                sampler::sample(
                    &logits,
                    self.vocab,
                    req.sampler,
                    u.as_ref(),
                    self.fault,
                    &mut self.key,
                )?
            }
        };
        // One host copy per step: token, then logits and probs when recorded.
        let mut parts = vec![tok.as_dtype(Dtype::Float32)?];
        if req.record.logits {
            parts.push(logits);
        }
        if req.record.probs {
            parts.push(probs);
        }
        let flat = concatenate(&parts, 0)?;
        let mut to_eval = vec![&flat];
        to_eval.extend(self.stack.cache_arrays());
        mlx_rs::transforms::eval(to_eval)?;
        let flat: &[f32] = flat.as_slice();
        Ok(FrameOutput::from_host(
            flat, 1, self.vocab, req.record, positions,
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
        let mut all = prefix.clone();
        for f in frames {
            all.extend(&Frames::audio(f, self.vocab)?);
        }
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
