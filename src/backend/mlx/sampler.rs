//! The on-device sampler on MLX, shared by CSM and Llama: the reference top-k sampler plus
//! mlx-lm's top-p and min-p filters (see [`crate::sampling`] for the definition), written as
//! mlx-lm's `make_sampler` writes it: the steps of [`SamplerSteps`] (greedy; temperature,
//! top-p/min-p, top-k; probabilities; noise, pick), composed by [`crate::backend::common::sample`].
use super::faults;
use crate::backend::common::SamplerSteps;
use crate::faults::Fault;
use crate::sampling::{NoiseMode, SamplerSpec};
use anyhow::{bail, Result};
use mlx_rs::ops::indexing::{argmax_axis, take_axis, topk_axis};
use mlx_rs::ops::{argsort_axis, concatenate, select, softmax_axis};
use mlx_rs::{random, Array, Dtype};

/// Keep-mask of mlx-lm's top-p and min-p filters on one row of f32 logits [V], computed on the
/// temperature-1 log-probabilities; `None` when neither is active.
fn nucleus_mask(logits: &Array, spec: &SamplerSpec) -> Result<Option<Array>> {
    let (top_p, min_p) = (spec.active_top_p(), spec.active_min_p());
    if top_p.is_none() && min_p.is_none() {
        return Ok(None);
    }
    let v = logits.dim(0);
    let lp = mlx_rs::nn::log_softmax(logits, 0)?;
    let mut keep: Option<Array> = None;
    if let Some(p) = top_p {
        // Ascending order; a token is kept when the mass of every token up to and including
        // its tie group exceeds 1 − p (mlx-lm's `cumsum > 1 − top_p`, ties kept together).
        let idx = argsort_axis(&lp, 0)?;
        let sv = take_axis(&lp, &idx, 0)?;
        let cs = sv.exp()?.cumsum(0, None, None)?;
        let next = concatenate(
            &[
                take_axis(&sv, Array::arange::<i32, i32>(1, v, None)?, 0)?,
                Array::from_slice(&[f32::INFINITY], &[1]),
            ],
            0,
        )?;
        let inf = Array::from_f32(f32::INFINITY);
        let group_end = select(sv.ne(&next)?, &cs, &inf)?.cummin(0, true, None)?;
        let keep_sorted = group_end.gt(Array::from_f32(1.0 - p))?;
        let rank = argsort_axis(&idx, 0)?;
        keep = Some(take_axis(&keep_sorted, &rank, 0)?);
    }
    if let Some(m) = min_p {
        let threshold = lp.max(None)?.add(Array::from_f32(m.ln()))?;
        let k = lp.ge(&threshold)?;
        keep = Some(match keep {
            Some(prev) => prev.logical_and(&k)?,
            None => k,
        });
    }
    Ok(keep)
}

/// One pipeline's on-device sampler: its vocabulary, MLX's native RNG state (split per draw)
/// and the injected sampler fault, if any.
pub(crate) struct Sampler {
    vocab: usize,
    key: Array,
    pub(crate) fault: Option<Fault>,
}

impl Sampler {
    pub(crate) fn new(vocab: usize) -> Result<Self> {
        Ok(Sampler {
            vocab,
            key: random::key(0)?,
            fault: None,
        })
    }
}

impl SamplerSteps for Sampler {
    type T = Array;

    fn greedy(&self, logits: &Array) -> Result<(Array, Array)> {
        let tok = argmax_axis(logits, 0, true)?.as_dtype(Dtype::Int32)?;
        let ids = Array::arange::<i32, i32>(None, self.vocab as i32, None)?;
        let probs = ids.eq(&tok)?.as_dtype(Dtype::Float32)?;
        Ok((tok, probs))
    }

    fn temperature(&self, logits: &Array, t: f32) -> Result<Array> {
        let t = faults::temperature(self.fault, t);
        Ok(logits.divide(Array::from_f32(t))?)
    }

    fn top_p_min_p(&self, logits: &Array, scaled: Array, spec: &SamplerSpec) -> Result<Array> {
        Ok(match nucleus_mask(logits, spec)? {
            Some(keep) => select(&keep, &scaled, Array::from_f32(f32::NEG_INFINITY))?,
            None => scaled,
        })
    }

    fn top_k(&self, scaled: &Array, k: usize) -> Result<Array> {
        faults::top_k(self.fault, top_k)(scaled, k)
    }

    fn probabilities(&self, kept: &Array) -> Result<Array> {
        Ok(softmax_axis(mlx_rs::nn::log_softmax(kept, 0)?, 0, true)?)
    }

    fn noise(&mut self, spec: &SamplerSpec, u: Option<&Array>, like: &Array) -> Result<Array> {
        Ok(match (spec.noise, u) {
            (NoiseMode::Shared, Some(u)) => u.log()?.negative()?,
            (NoiseMode::Shared, None) => bail!("shared noise needs the harness's uniform draws"),
            (NoiseMode::Native, _) => {
                // A fresh split of the key per draw.
                let (next, sub) = random::split(&self.key, 2)?;
                self.key = next;
                let u = random::uniform::<f32, f32>(0.0, 1.0, like.shape(), Some(&sub))?;
                u.log()?.negative()?
            }
        })
    }

    fn pick(&self, probs: &Array, q: &Array) -> Result<Array> {
        Ok(argmax_axis(probs.divide(q)?, 0, true)?.as_dtype(Dtype::Int32)?)
    }

    fn upload(&self, row: &[f32]) -> Result<Array> {
        Ok(Array::from_slice(row, &[row.len() as i32]))
    }

    fn download(&self, token: Array, probs: Array) -> Result<(i32, Vec<f32>)> {
        mlx_rs::transforms::eval([&token, &probs])?;
        Ok((token.as_slice::<i32>()[0], probs.as_slice::<f32>().to_vec()))
    }

    fn vocab(&self) -> usize {
        self.vocab
    }

    fn reseed(&mut self, seed: u64) -> Result<()> {
        self.key = random::key(seed)?;
        Ok(())
    }
}

/// The reference top-k: every entry at or above the k-th largest value (ties kept).
fn top_k(scaled: &Array, k: usize) -> Result<Array> {
    let kth = topk_axis(scaled, k as i32, 0)?.min(None)?;
    Ok(select(
        scaled.ge(&kth)?,
        scaled,
        Array::from_f32(f32::NEG_INFINITY),
    )?)
}
