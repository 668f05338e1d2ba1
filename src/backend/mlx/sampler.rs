//! The on-device sampler on MLX, shared by CSM and Llama: the reference top-k sampler plus
//! mlx-lm's top-p and min-p filters (see [`crate::sampling`] for the definition).
use crate::faults::Fault;
use crate::sampling::{NoiseMode, SamplerSpec};
use anyhow::{bail, Result};
use mlx_rs::ops::argpartition_axis;
use mlx_rs::ops::indexing::{argmax_axis, take_axis, topk_axis};
use mlx_rs::ops::{argsort_axis, concatenate, select, softmax_axis};
use mlx_rs::{random, Array, Dtype};

/// Keep-mask of mlx-lm's top-p and min-p filters on one row of f32 logits [V], computed on the
/// temperature-1 log-probabilities; `None` when neither is active.
fn nucleus_mask(logits: &Array, spec: &SamplerSpec, vocab: usize) -> Result<Option<Array>> {
    let (top_p, min_p) = (spec.active_top_p(), spec.active_min_p());
    if top_p.is_none() && min_p.is_none() {
        return Ok(None);
    }
    let v = vocab as i32;
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

/// The sampler on one row of f32 logits [V]: (token int32 [1], probs [V]). `fault` injects a
/// sampler porting bug; `key` is MLX's native RNG state (split per draw).
pub(crate) fn sample(
    logits: &Array,
    vocab: usize,
    spec: &SamplerSpec,
    uniforms: Option<&Array>,
    fault: Option<Fault>,
    key: &mut Array,
) -> Result<(Array, Array)> {
    let v = vocab as i32;
    if spec.is_greedy() {
        let tok = argmax_axis(logits, 0, true)?.as_dtype(Dtype::Int32)?;
        let ids = Array::arange::<i32, i32>(None, v, None)?;
        let probs = ids.eq(&tok)?.as_dtype(Dtype::Float32)?;
        return Ok((tok, probs));
    }
    let t = match fault {
        Some(Fault::TempEpsilon) => spec.temperature + 1e-10,
        _ => spec.temperature,
    };
    let neg_inf = Array::from_f32(f32::NEG_INFINITY);
    let scaled = logits.divide(Array::from_f32(t))?;
    let scaled = match nucleus_mask(logits, spec, vocab)? {
        Some(keep) => select(&keep, &scaled, &neg_inf)?,
        None => scaled,
    };
    let kept = match spec.effective_top_k(vocab) {
        None => scaled,
        Some(k) if fault == Some(Fault::TopkExact) => {
            // Exactly k survivors: the k positions argpartition puts first.
            let idx = argpartition_axis(scaled.negative()?, k as i32 - 1, 0)?;
            let idx = take_axis(&idx, Array::arange::<i32, i32>(None, k as i32, None)?, 0)?;
            let vals = take_axis(&scaled, &idx, 0)?;
            let base = Array::full::<f32>(&[v], &neg_inf)?;
            base.put_along_axis(&idx, &vals, 0)?
        }
        Some(k) => {
            let kth = topk_axis(&scaled, k as i32, 0)?.min(None)?;
            select(scaled.ge(&kth)?, &scaled, &neg_inf)?
        }
    };
    let probs = softmax_axis(mlx_rs::nn::log_softmax(&kept, 0)?, 0, true)?;
    let q = match (spec.noise, uniforms) {
        (NoiseMode::Shared, Some(u)) => u.log()?.negative()?,
        (NoiseMode::Shared, None) => bail!("shared noise needs the harness's uniform draws"),
        (NoiseMode::Native, _) => {
            let (next, sub) = random::split(&*key, 2)?;
            *key = next;
            let u = random::uniform::<f32, f32>(0.0, 1.0, &[v][..], Some(&sub))?;
            u.log()?.negative()?
        }
    };
    let tok = argmax_axis(probs.divide(&q)?, 0, true)?.as_dtype(Dtype::Int32)?;
    Ok((tok, probs))
}
