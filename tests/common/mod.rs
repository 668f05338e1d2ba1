//! Test-side generator of small runs with a known answer, written through `RunWriter`.
#![allow(dead_code)]
use csm_parity::capture::{FrameRecord, Manifest, RunWriter, Storage, Timings};
use std::path::{Path, PathBuf};

/// SplitMix64: deterministic, independent of any crate.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in (0, 1) keyed by (seed, a, b, c).
pub fn uniform(seed: u64, a: u64, b: u64, c: u64) -> f64 {
    let h = mix(seed ^ mix(a ^ mix(b ^ mix(c))));
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Softmax in f64.
pub fn softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// One generated step: logits, sampler probs (temperature 1, no top-k), token.
#[derive(Clone, Debug)]
pub struct Spec {
    pub frames: usize,
    pub codebooks: usize,
    pub vocab: usize,
    pub seed: u64,
    pub logits: Storage,
    pub probs: Storage,
    pub mode: &'static str,
    pub noise: &'static str,
    pub backend: &'static str,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            frames: 6,
            codebooks: 8,
            vocab: 16,
            seed: 7,
            logits: Storage::F32,
            probs: Storage::F32,
            mode: "independent",
            noise: "shared",
            backend: "torch",
        }
    }
}

/// The frames of a run: peaked logits, probs = softmax(logits), token = argmax(probs / q) with
/// shared noise q = -ln u(seed, f, c, v). `post` maps a sampled token to its post-processed one.
pub fn frames(spec: &Spec) -> Vec<FrameRecord> {
    let (c_n, v_n) = (spec.codebooks, spec.vocab);
    (0..spec.frames)
        .map(|f| {
            let mut logits = vec![0f32; c_n * v_n];
            let mut probs = vec![0f32; c_n * v_n];
            let mut tokens = vec![0i32; c_n];
            for c in 0..c_n {
                let row = &mut logits[c * v_n..(c + 1) * v_n];
                for (v, x) in row.iter_mut().enumerate() {
                    let u = uniform(spec.seed, f as u64, c as u64, 1000 + v as u64);
                    // Peaked: a few large values.
                    *x = (4.0 * u * u * u - 1.0) as f32 * 3.0;
                }
                let p = softmax(row);
                let mut best = (f64::NEG_INFINITY, 0usize);
                for (v, pv) in p.iter().enumerate() {
                    probs[c * v_n + v] = *pv as f32;
                    let q = -uniform(spec.seed ^ 0xABCD, f as u64, c as u64, v as u64).ln();
                    let s = pv / q;
                    if s > best.0 {
                        best = (s, v);
                    }
                }
                tokens[c] = best.1 as i32;
            }
            FrameRecord {
                post_tokens: tokens.clone(),
                tokens,
                logits: Some(logits),
                probs: Some(probs),
                step_us: 1000.0 + f as f64,
            }
        })
        .collect()
}

pub fn manifest(spec: &Spec) -> Manifest {
    let mut m = Manifest::example(spec.backend);
    m.sampler.mode = spec.mode.to_string();
    m.sampler.noise = spec.noise.to_string();
    m.sampler.seed = spec.seed;
    m.prompt.text = "hello".to_string();
    m.model.path = "fixtures/tiny".to_string();
    m
}

/// Writes `recs` as a complete run at `dir`.
pub fn write(dir: &Path, spec: &Spec, recs: &[FrameRecord]) -> PathBuf {
    let mut w = RunWriter::create(
        dir,
        manifest(spec),
        spec.codebooks,
        spec.vocab,
        spec.logits,
        spec.probs,
    )
    .unwrap();
    for r in recs {
        w.push(r).unwrap();
    }
    let stop = if recs.len() == spec.frames {
        "max_frames"
    } else {
        "eos"
    };
    w.finish(
        stop,
        Timings {
            load_ms: 1.0,
            prefill_ms: 2.0,
            total_ms: 3.0,
            mean_frame_ms: 1.0,
            step_positions: vec![],
        },
    )
    .unwrap()
}

/// A pair (reference `torch`, candidate `mlx`) under `root`; `edit` changes B's frames.
pub fn pair(
    root: &Path,
    spec: &Spec,
    edit: impl FnOnce(&mut Vec<FrameRecord>),
) -> (PathBuf, PathBuf) {
    let a = frames(spec);
    let mut b = a.clone();
    edit(&mut b);
    let pa = write(&root.join("torch"), spec, &a);
    let spec_b = Spec {
        backend: "mlx",
        ..spec.clone()
    };
    let pb = write(&root.join("mlx"), &spec_b, &b);
    (pa, pb)
}

/// Like [`frames`], but each logit passes through `perturb(frame, codebook, vocab, x)` before
/// probabilities and tokens are derived (same shared noise), as a model difference would.
pub fn frames_with(
    spec: &Spec,
    perturb: impl Fn(usize, usize, usize, f32) -> f32,
) -> Vec<FrameRecord> {
    let mut recs = frames(spec);
    let v_n = spec.vocab;
    for (f, r) in recs.iter_mut().enumerate() {
        let logits = r.logits.as_mut().unwrap();
        let probs = r.probs.as_mut().unwrap();
        for c in 0..spec.codebooks {
            let row = &mut logits[c * v_n..(c + 1) * v_n];
            for (v, x) in row.iter_mut().enumerate() {
                *x = perturb(f, c, v, *x);
            }
            let p = softmax(row);
            let mut best = (f64::NEG_INFINITY, 0usize);
            for (v, pv) in p.iter().enumerate() {
                probs[c * v_n + v] = *pv as f32;
                let q = -uniform(spec.seed ^ 0xABCD, f as u64, c as u64, v as u64).ln();
                if pv / q > best.0 {
                    best = (pv / q, v);
                }
            }
            r.tokens[c] = best.1 as i32;
            r.post_tokens[c] = best.1 as i32;
        }
    }
    recs
}
