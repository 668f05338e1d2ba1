//! The on-device sampler on libtorch, shared by CSM and Llama: the reference top-k sampler plus
//! mlx-lm's top-p and min-p filters (see [`crate::sampling`] for the definition).
use crate::sampling::{NoiseMode, SamplerSpec};
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// libtorch's default generator is process-global: native-noise draws take this lock and
/// reseed it per sampling step from (seed, step), so concurrent pipelines cannot interleave.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Keep-mask (bool [V]) of mlx-lm's top-p and min-p filters, computed on the temperature-1
/// log-probabilities; `None` when neither is active.
fn nucleus_mask(logits: &Tensor, spec: &SamplerSpec) -> Option<Tensor> {
    let (top_p, min_p) = (spec.active_top_p(), spec.active_min_p());
    if top_p.is_none() && min_p.is_none() {
        return None;
    }
    let lp = logits.log_softmax(-1, Kind::Float);
    let mut keep: Option<Tensor> = None;
    if let Some(p) = top_p {
        // Ascending order; the mass up to the end of each token's tie group must exceed 1 − p.
        let (sv, idx) = lp.sort(-1, false);
        let cs = sv.exp().cumsum(-1, Kind::Float);
        let v = sv.size()[0];
        let next = Tensor::cat(
            &[sv.narrow(0, 1, v - 1), Tensor::from_slice(&[f32::INFINITY])],
            0,
        );
        let ends = cs.where_self(&sv.ne_tensor(&next), &Tensor::from(f32::INFINITY));
        let (group_end, _) = ends.flip([0]).cummin(0);
        let keep_sorted = group_end.flip([0]).gt((1.0f32 - p) as f64);
        let rank = idx.argsort(0, false);
        keep = Some(keep_sorted.index_select(0, &rank));
    }
    if let Some(m) = min_p {
        let threshold = lp.max() + (m.ln() as f64);
        let k = lp.ge_tensor(&threshold);
        keep = Some(match keep {
            Some(prev) => prev.logical_and(&k),
            None => k,
        });
    }
    keep
}

/// The sampler on one row of f32 logits [V]: (token [1] int64, probs [V]). Native noise
/// reseeds libtorch's generator from (`native_seed`, step) and advances `native_step`.
pub(crate) fn sample(
    logits: &Tensor,
    vocab: usize,
    spec: &SamplerSpec,
    uniforms: Option<&Tensor>,
    native_seed: u64,
    native_step: &mut u64,
) -> Result<(Tensor, Tensor)> {
    if spec.is_greedy() {
        let tok = logits.argmax(0, true);
        let probs =
            Tensor::zeros([vocab as i64], (Kind::Float, Device::Cpu)).scatter_value(0, &tok, 1.0);
        return Ok((tok, probs));
    }
    let scaled = logits / spec.temperature as f64;
    let scaled = match nucleus_mask(logits, spec) {
        Some(keep) => scaled.masked_fill(&keep.logical_not(), f64::NEG_INFINITY),
        None => scaled,
    };
    let kept = match spec.effective_top_k(vocab) {
        None => scaled,
        Some(k) => {
            let (vals, _) = scaled.topk(k as i64, -1, true, true);
            let kth = vals.narrow(0, k as i64 - 1, 1);
            let remove = scaled.lt_tensor(&kth);
            scaled.masked_fill(&remove, f64::NEG_INFINITY)
        }
    };
    let probs = kept.log_softmax(-1, Kind::Float).softmax(-1, Kind::Float);
    let q = match (spec.noise, uniforms) {
        (NoiseMode::Shared, Some(u)) => -u.log(),
        (NoiseMode::Shared, None) => bail!("shared noise needs the harness's uniform draws"),
        (NoiseMode::Native, _) => {
            let _lock = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
            let step_seed = crate::sampling::SharedNoise::step_seed(native_seed, *native_step);
            *native_step += 1;
            tch::manual_seed(step_seed as i64);
            probs.empty_like().exponential_(1.0)
        }
    };
    Ok(((&probs / q).argmax(0, true), probs))
}
