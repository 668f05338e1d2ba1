//! Sampler configuration (backend-neutral), the shared-noise generator, and post-processing.
//!
//! The reference sampler (Sesame's PyTorch code): scaled = logits / temperature; keep entries
//! ≥ the k-th largest value (ties kept), others → -inf; probs = softmax(log_softmax(kept));
//! q ~ Exponential(1) per vocab entry; token = argmax(probs / q). Temperature 0 is greedy.
//!
//! Plain LMs add mlx-lm's filters (`sample_utils.py`), computed like mlx-lm on the
//! temperature-1 log-probabilities lp = log_softmax(logits) and applied as −inf masks before the
//! top-k step: top-p keeps token i when the total probability of all tokens with lp ≤ lp_i
//! exceeds 1 − top_p (mlx-lm's ascending `cumsum > 1 − top_p`, with a tie group kept or dropped
//! as a whole so the result does not depend on sort order); min-p keeps lp_i ≥ max lp + ln(min_p).
//! All three filters keep a top set by value, so their order does not matter.
use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;

pub mod noise_file;

/// Where the exponential noise of the sampler comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NoiseMode {
    /// The harness's counter-based generator keyed by (seed, frame, codebook): both backends
    /// get the same uniform draws, so tokens differ only when probabilities do.
    Shared,
    /// Each library's own RNG: torch `manual_seed` + `exponential_`, MLX `mlx::random`.
    Native,
}

impl NoiseMode {
    pub fn name(self) -> &'static str {
        match self {
            NoiseMode::Shared => "shared",
            NoiseMode::Native => "native",
        }
    }
}

/// Sampler settings, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerSpec {
    /// 0 means greedy (argmax of the raw logits).
    pub temperature: f32,
    /// 0, or ≥ vocab, means no filtering.
    pub top_k: usize,
    pub noise: NoiseMode,
    pub seed: u64,
    /// mlx-lm's nucleus filter: keep the most likely tokens whose mass exceeds 1 − top_p,
    /// computed at temperature 1 (ties at the boundary kept together); 0 or 1 = off.
    pub top_p: f32,
    /// mlx-lm's min-p filter: keep tokens with p ≥ min_p · p_max at temperature 1; 0 = off.
    pub min_p: f32,
}

impl SamplerSpec {
    pub fn greedy() -> Self {
        SamplerSpec {
            temperature: 0.0,
            top_k: 0,
            noise: NoiseMode::Shared,
            seed: 0,
            top_p: 0.0,
            min_p: 0.0,
        }
    }
    pub fn new(temperature: f64, top_k: usize, noise: NoiseMode, seed: u64) -> Result<Self> {
        check_temperature(temperature).map_err(|e| anyhow::anyhow!("--temp: {e}"))?;
        Ok(SamplerSpec {
            temperature: temperature as f32,
            top_k,
            noise,
            seed,
            top_p: 0.0,
            min_p: 0.0,
        })
    }
    /// Adds mlx-lm's top-p and min-p filters (each in [0, 1]; 0 = off).
    pub fn with_filters(mut self, top_p: f64, min_p: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&top_p) {
            bail!("--top-p must lie in [0, 1] (0 or 1 = off), got {top_p}");
        }
        if !(0.0..=1.0).contains(&min_p) {
            bail!("--min-p must lie in [0, 1] (0 = off), got {min_p}");
        }
        self.top_p = top_p as f32;
        self.min_p = min_p as f32;
        Ok(self)
    }
    /// top-p when it filters anything (0 < p < 1).
    pub fn active_top_p(&self) -> Option<f32> {
        (self.top_p > 0.0 && self.top_p < 1.0).then_some(self.top_p)
    }
    /// min-p when set (> 0).
    pub fn active_min_p(&self) -> Option<f32> {
        (self.min_p > 0.0).then_some(self.min_p)
    }
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
    /// The effective k for a vocabulary of `vocab` entries: `None` when nothing is filtered.
    pub fn effective_top_k(&self, vocab: usize) -> Option<usize> {
        (self.top_k > 0 && self.top_k < vocab).then_some(self.top_k)
    }
}

/// Parses `--top-k`: a non-negative integer.
pub fn parse_top_k(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .map_err(|_| format!("expected a non-negative integer (0 = no filtering), got {s:?}"))
}

/// Parses `--temp`: a finite number ≥ 0.
pub fn parse_temperature(s: &str) -> Result<f64, String> {
    let t = s
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("expected a finite number ≥ 0 (0 = greedy), got {s:?}"))?;
    check_temperature(t)
}

/// The one check of a temperature, wherever it comes from (a flag, a sweep grid, a gate
/// config, a run's manifest): a finite number ≥ 0, 0 meaning greedy.
pub fn check_temperature(t: f64) -> Result<f64, String> {
    if t.is_finite() && t >= 0.0 {
        Ok(t)
    } else {
        Err(format!(
            "expected a finite number ≥ 0 (0 = greedy), got {t}"
        ))
    }
}

/// The shared-noise generator: a stateless hash of (seed, frame, codebook, index), so any
/// step's draws can be produced on their own, by anyone, in any order.
pub struct SharedNoise;

impl SharedNoise {
    /// SplitMix64's finalizer (docs/shared-noise.md: `mix`).
    pub fn mix(z: u64) -> u64 {
        crate::rng::mix(z)
    }

    /// A 63-bit seed for step `step` of a run seeded with `seed` (native-noise reseeding).
    pub fn step_seed(seed: u64, step: u64) -> u64 {
        Self::mix(Self::mix(seed ^ 0x4E41_5449_5645) ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            >> 1
    }

    /// The 64-bit key of one sampling step (docs/shared-noise.md, step 1).
    pub fn key(seed: u64, frame: u64, codebook: u64) -> u64 {
        Self::mix(
            Self::mix(Self::mix(seed ^ 0x5EED) ^ frame.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                ^ codebook,
        )
    }

    /// The 64 random bits of vocabulary entry `index` under `key` (docs/shared-noise.md, step 2).
    pub fn bits(key: u64, index: u64) -> u64 {
        Self::mix(key.wrapping_add((index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }

    /// The uniform made from 64 random bits: the top 23 bits k, then `(k + 0.5) / 2^23`. Every
    /// step is exact in f32 (k + 0.5 needs 24 significant bits, the division is by a power of
    /// two), so u lies strictly inside (0, 1): from 2^-24 to 1 − 2^-24. It is never 1.0, so
    /// q = −ln u is never 0 (docs/shared-noise.md).
    pub fn to_uniform(bits: u64) -> f32 {
        ((bits >> 41) as f32 + 0.5) / (1u32 << 23) as f32
    }

    /// Uniform draws in (0, 1) for one sampling step, one per vocabulary entry.
    pub fn uniforms_into(seed: u64, frame: u64, codebook: u64, out: &mut [f32]) {
        let key = Self::key(seed, frame, codebook);
        for (i, u) in out.iter_mut().enumerate() {
            *u = Self::to_uniform(Self::bits(key, i as u64));
        }
    }

    /// The draws of a whole frame: `codebooks × vocab`, row-major.
    pub fn frame_uniforms(seed: u64, frame: u64, codebooks: usize, vocab: usize) -> Vec<f32> {
        let mut out = vec![0f32; codebooks * vocab];
        for (c, row) in out.chunks_exact_mut(vocab).enumerate() {
            Self::uniforms_into(seed, frame, c as u64, row);
        }
        out
    }
}

/// Post-processing applied to sampled tokens before output (recorded separately; the model is
/// fed the sampled tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostProcess {
    None,
    /// The "codec safety" remap seen in MLX ports: tokens lo..=hi become 0.
    RemapLow {
        lo: i32,
        hi: i32,
    },
}

impl PostProcess {
    pub fn apply(&self, tokens: &[i32]) -> Vec<i32> {
        match *self {
            PostProcess::None => tokens.to_vec(),
            PostProcess::RemapLow { lo, hi } => tokens
                .iter()
                .map(|&t| if (lo..=hi).contains(&t) { 0 } else { t })
                .collect(),
        }
    }
}

impl fmt::Display for PostProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostProcess::None => write!(f, "none"),
            PostProcess::RemapLow { lo, hi } => write!(f, "remap-low:{lo}-{hi}"),
        }
    }
}

impl FromStr for PostProcess {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(PostProcess::None);
        }
        let err =
            || format!("expected `none` or `remap-low:<lo>-<hi>` (e.g. remap-low:1-31), got {s:?}");
        let range = s.strip_prefix("remap-low:").ok_or_else(err)?;
        let (lo, hi) = range.split_once('-').ok_or_else(err)?;
        let (lo, hi): (i32, i32) = (
            lo.parse().map_err(|_| err())?,
            hi.parse().map_err(|_| err())?,
        );
        if lo < 0 || hi < lo {
            return Err(err());
        }
        Ok(PostProcess::RemapLow { lo, hi })
    }
}

/// Host reference of the sampler for one row (tests and hand-checks; the backends sample
/// on-device). Returns (token, probs). `u` are the shared uniforms of this row.
pub fn reference_sample(logits: &[f32], spec: &SamplerSpec, u: &[f32]) -> (i32, Vec<f32>) {
    let argmax = |xs: &[f32]| {
        xs.iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            })
            .0 as i32
    };
    if spec.is_greedy() {
        let t = argmax(logits);
        let mut p = vec![0f32; logits.len()];
        p[t as usize] = 1.0;
        return (t, p);
    }
    let mut scaled: Vec<f32> = logits.iter().map(|&l| l / spec.temperature).collect();
    if spec.active_top_p().is_some() || spec.active_min_p().is_some() {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
        let lp: Vec<f32> = logits.iter().map(|&l| l - lse).collect();
        let lp_max = lp.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        for (i, s) in scaled.iter_mut().enumerate() {
            let mut keep = true;
            if let Some(p) = spec.active_top_p() {
                let mass: f32 = lp.iter().filter(|&&x| x <= lp[i]).map(|&x| x.exp()).sum();
                keep &= mass > 1.0 - p;
            }
            if let Some(m) = spec.active_min_p() {
                keep &= lp[i] >= lp_max + m.ln();
            }
            if !keep {
                *s = f32::NEG_INFINITY;
            }
        }
    }
    let kept: Vec<f32> = match spec.effective_top_k(logits.len()) {
        None => scaled,
        Some(k) => {
            let mut sorted = scaled.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            scaled
                .iter()
                .map(|&v| if v >= kth { v } else { f32::NEG_INFINITY })
                .collect()
        }
    };
    let max = kept.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = kept.iter().map(|&v| (v - max).exp()).sum();
    let probs: Vec<f32> = kept.iter().map(|&v| (v - max).exp() / sum).collect();
    let score: Vec<f32> = probs.iter().zip(u).map(|(&p, &u)| p / -u.ln()).collect();
    (argmax(&score), probs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_noise_is_keyed_and_repeatable() {
        let a = SharedNoise::frame_uniforms(7, 3, 4, 100);
        assert_eq!(a, SharedNoise::frame_uniforms(7, 3, 4, 100));
        assert_ne!(a, SharedNoise::frame_uniforms(8, 3, 4, 100));
        assert_ne!(a, SharedNoise::frame_uniforms(7, 4, 4, 100));
        assert_ne!(a[..100], a[100..200]);
        assert!(a.iter().all(|&u| u > 0.0 && u < 1.0));
        let mean = a.iter().map(|&u| u as f64).sum::<f64>() / a.len() as f64;
        assert!((mean - 0.5).abs() < 0.03, "{mean}");
    }

    #[test]
    fn uniform_conversion_edges() {
        // Known answers for the extreme bit patterns: all zeros gives 2^-24, all ones (the top
        // 23 bits all set) gives 1 − 2^-24 — never 1.0, so q = −ln u > 0 (no 0/0 in probs / q).
        assert_eq!(SharedNoise::to_uniform(0).to_bits(), 0x3380_0000);
        assert_eq!(SharedNoise::to_uniform(0), 0.5 / 8_388_608.0);
        assert_eq!(SharedNoise::to_uniform(u64::MAX).to_bits(), 0x3f7f_ffff);
        assert_eq!(SharedNoise::to_uniform(u64::MAX), 1.0 - 1.0 / 16_777_216.0);
        assert!(-SharedNoise::to_uniform(u64::MAX).ln() > 0.0);
        // The pattern that gave exactly 1.0 under the old 24-bit rule (top 24 bits all ones).
        assert!(SharedNoise::to_uniform(0xFFFF_FF00_0000_0000) < 1.0);
        // The low 41 bits do not matter; every value is exact: (k + 0.5) / 2^23.
        assert_eq!(
            SharedNoise::to_uniform((5 << 41) | ((1 << 41) - 1)),
            5.5 / 8_388_608.0
        );
        let k = (1u64 << 23) - 2;
        assert_eq!(
            SharedNoise::to_uniform(k << 41) as f64,
            (k as f64 + 0.5) / 8_388_608.0
        );
        let mut row = [0f32; 3];
        SharedNoise::uniforms_into(42, 0, 0, &mut row);
        let key = SharedNoise::key(42, 0, 0);
        for (i, u) in row.iter().enumerate() {
            assert_eq!(
                *u,
                SharedNoise::to_uniform(SharedNoise::bits(key, i as u64))
            );
        }
    }

    /// With u strictly below 1, a filtered entry (prob 0) scores 0 / q = 0, never NaN, and the
    /// token is a kept one even when the draw is the largest possible.
    #[test]
    fn extreme_uniform_never_makes_nan_scores() {
        let spec = SamplerSpec::new(1.0, 2, NoiseMode::Shared, 0).unwrap();
        let u = [SharedNoise::to_uniform(u64::MAX); 5];
        let (t, p) = reference_sample(&[1.0, 3.0, 2.5, 0.0, -1.0], &spec, &u);
        assert!(p.iter().all(|x| x.is_finite()));
        let scores: Vec<f32> = p.iter().zip(&u).map(|(&p, &u)| p / -u.ln()).collect();
        assert!(scores.iter().all(|s| s.is_finite()), "{scores:?}");
        assert_eq!(t, 1);
    }

    #[test]
    fn post_process_parses_and_remaps() {
        let p: PostProcess = "remap-low:1-31".parse().unwrap();
        assert_eq!(p.apply(&[0, 1, 31, 32, 2050]), vec![0, 0, 0, 32, 2050]);
        assert_eq!(p.to_string(), "remap-low:1-31");
        assert!("remap-low:5-1".parse::<PostProcess>().is_err());
        assert!("clip"
            .parse::<PostProcess>()
            .unwrap_err()
            .contains("remap-low"));
    }

    #[test]
    fn reference_sampler_keeps_ties_at_kth() {
        let spec = SamplerSpec::new(1.0, 2, NoiseMode::Shared, 0).unwrap();
        let (_, p) = reference_sample(&[1.0, 3.0, 2.0, 2.0, 0.0], &spec, &[0.5; 5]);
        assert_eq!(p[0], 0.0);
        assert_eq!(p[4], 0.0);
        assert!(p[2] > 0.0 && p[3] > 0.0 && (p[2] - p[3]).abs() < 1e-7);
    }

    #[test]
    fn top_p_and_min_p_filter_like_mlx_lm() {
        // probs ≈ [0.5, 0.25, 0.125, 0.125]: top-p 0.6 keeps {0, 1}; 0.8 keeps all (tie kept).
        let logits: Vec<f32> = [0.5f32, 0.25, 0.125, 0.125]
            .iter()
            .map(|p| p.ln())
            .collect();
        let base = SamplerSpec::new(1.0, 0, NoiseMode::Shared, 0).unwrap();
        let support = |spec: SamplerSpec| {
            let (_, p) = reference_sample(&logits, &spec, &[0.5; 4]);
            p.iter().map(|&x| x > 0.0).collect::<Vec<_>>()
        };
        assert_eq!(
            support(base.with_filters(0.6, 0.0).unwrap()),
            [true, true, false, false]
        );
        assert_eq!(support(base.with_filters(0.8, 0.0).unwrap()), [true; 4]);
        assert_eq!(
            support(base.with_filters(0.0, 0.3).unwrap()),
            [true, true, false, false]
        );
        assert_eq!(support(base.with_filters(0.0, 0.2).unwrap()), [true; 4]);
        assert!(base.with_filters(1.5, 0.0).is_err());
        assert!(base.with_filters(0.0, -0.1).is_err());
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse_temperature("-1").is_err());
        assert!(parse_temperature("NaN").is_err());
        assert!(parse_top_k("2.5").is_err());
        assert!(parse_top_k("-3").is_err());
        assert_eq!(parse_top_k("50"), Ok(50));
    }
}
