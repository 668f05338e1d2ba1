//! Sampler configuration (backend-neutral), the shared-noise generator, and post-processing.
//!
//! The reference sampler (Sesame's PyTorch code): scaled = logits / temperature; keep entries
//! ≥ the k-th largest value (ties kept), others → -inf; probs = softmax(log_softmax(kept));
//! q ~ Exponential(1) per vocab entry; token = argmax(probs / q). Temperature 0 is greedy.
use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;

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
}

impl SamplerSpec {
    pub fn greedy() -> Self {
        SamplerSpec {
            temperature: 0.0,
            top_k: 0,
            noise: NoiseMode::Shared,
            seed: 0,
        }
    }
    pub fn new(temperature: f64, top_k: usize, noise: NoiseMode, seed: u64) -> Result<Self> {
        if !temperature.is_finite() || temperature < 0.0 {
            bail!("--temp must be a finite number ≥ 0 (0 means greedy), got {temperature}");
        }
        Ok(SamplerSpec {
            temperature: temperature as f32,
            top_k,
            noise,
            seed,
        })
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
    match s.trim().parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!(
            "expected a finite number ≥ 0 (0 = greedy), got {s:?}"
        )),
    }
}

/// The shared-noise generator: a stateless hash of (seed, frame, codebook, index), so any
/// step's draws can be produced on their own, by anyone, in any order.
pub struct SharedNoise;

impl SharedNoise {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A 63-bit seed for step `step` of a run seeded with `seed` (native-noise reseeding).
    pub fn step_seed(seed: u64, step: u64) -> u64 {
        Self::mix(Self::mix(seed ^ 0x4E41_5449_5645) ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            >> 1
    }

    /// Uniform draws in (0, 1) for one sampling step, one per vocabulary entry.
    pub fn uniforms_into(seed: u64, frame: u64, codebook: u64, out: &mut [f32]) {
        let key = Self::mix(
            Self::mix(Self::mix(seed ^ 0x5EED) ^ frame.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                ^ codebook,
        );
        for (i, u) in out.iter_mut().enumerate() {
            let x = Self::mix(key.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            // 24 random bits centred in their cell: strictly inside (0, 1) in f32.
            *u = ((x >> 40) as f32 + 0.5) / (1u32 << 24) as f32;
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
    let scaled: Vec<f32> = logits.iter().map(|&l| l / spec.temperature).collect();
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
    fn rejects_bad_values() {
        assert!(parse_temperature("-1").is_err());
        assert!(parse_temperature("NaN").is_err());
        assert!(parse_top_k("2.5").is_err());
        assert!(parse_top_k("-3").is_err());
        assert_eq!(parse_top_k("50"), Ok(50));
    }
}
