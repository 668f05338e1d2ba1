//! The on-device sampler on libtorch, shared by CSM and Llama: the reference top-k sampler plus
//! mlx-lm's top-p and min-p filters (see [`crate::sampling`] for the definition), written as
//! mlx-lm's `make_sampler` writes it: the steps of [`SamplerSteps`] (greedy; temperature,
//! top-p/min-p, top-k; probabilities; noise, pick), composed by [`crate::backend::common::sample`].
use crate::backend::common::SamplerSteps;
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

/// One pipeline's on-device sampler: its vocabulary and the state of the native noise, (seed,
/// step): libtorch's generator is reseeded per draw from both.
pub(crate) struct Sampler {
    vocab: usize,
    native: (u64, u64),
}

impl Sampler {
    pub(crate) fn new(vocab: usize) -> Result<Self> {
        let native = (0, 0);
        Ok(Sampler { vocab, native })
    }
}

impl SamplerSteps for Sampler {
    type T = Tensor;

    fn greedy(&self, logits: &Tensor) -> Result<(Tensor, Tensor)> {
        let tok = logits.argmax(0, true);
        let zeros = Tensor::zeros([self.vocab as i64], (Kind::Float, Device::Cpu));
        Ok((tok.shallow_clone(), zeros.scatter_value(0, &tok, 1.0)))
    }

    fn temperature(&self, logits: &Tensor, t: f32) -> Result<Tensor> {
        Ok(logits / t as f64)
    }

    fn top_p_min_p(&self, logits: &Tensor, scaled: Tensor, spec: &SamplerSpec) -> Result<Tensor> {
        Ok(match nucleus_mask(logits, spec) {
            Some(keep) => scaled.masked_fill(&keep.logical_not(), f64::NEG_INFINITY),
            None => scaled,
        })
    }

    fn top_k(&self, scaled: &Tensor, k: usize) -> Result<Tensor> {
        let (vals, _) = scaled.topk(k as i64, -1, true, true);
        let kth = vals.narrow(0, k as i64 - 1, 1);
        Ok(scaled.masked_fill(&scaled.lt_tensor(&kth), f64::NEG_INFINITY))
    }

    fn probabilities(&self, kept: &Tensor) -> Result<Tensor> {
        Ok(kept.log_softmax(-1, Kind::Float).softmax(-1, Kind::Float))
    }

    fn noise(&mut self, spec: &SamplerSpec, u: Option<&Tensor>, like: &Tensor) -> Result<Tensor> {
        Ok(match (spec.noise, u) {
            (NoiseMode::Shared, Some(u)) => -u.log(),
            (NoiseMode::Shared, None) => bail!("shared noise needs the harness's uniform draws"),
            (NoiseMode::Native, _) => {
                // libtorch's generator reseeded from (seed, step), under the lock.
                let _lock = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
                let (seed, step) = self.native;
                let step_seed = crate::sampling::SharedNoise::step_seed(seed, step);
                self.native.1 += 1;
                tch::manual_seed(step_seed as i64);
                like.empty_like().exponential_(1.0)
            }
        })
    }

    fn pick(&self, probs: &Tensor, q: &Tensor) -> Result<Tensor> {
        Ok((probs / q).argmax(0, true))
    }

    fn upload(&self, row: &[f32]) -> Result<Tensor> {
        Ok(Tensor::from_slice(row))
    }

    fn download(&self, token: Tensor, probs: Tensor) -> Result<(i32, Vec<f32>)> {
        Ok((token.int64_value(&[0]) as i32, Vec::<f32>::try_from(probs)?))
    }

    fn vocab(&self) -> usize {
        self.vocab
    }

    fn reseed(&mut self, seed: u64) -> Result<()> {
        self.native = (seed, 0);
        Ok(())
    }
}
