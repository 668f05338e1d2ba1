//! The analyzer (issue 4): compares two runs step by step — metrics, divergence point and stage,
//! statistics. Backend-neutral: it only reads run directories.

pub mod audio;
pub mod divergence;
pub mod metrics;
pub mod performance;
pub mod stats;

use crate::capture::{FrameBuf, Run, Storage};
use anyhow::{bail, Result};
use divergence::{Stage, Step, StepEvidence};
use metrics::{LogitStep, ProbStep, TokenDist};
use serde::Serialize;
use stats::{Estimate, Summary};

/// Tolerances and statistics settings.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DiffOptions {
    /// Logits breach when |a−b| > atol + rtol·|a| (a = reference).
    pub atol: f32,
    pub rtol: f32,
    /// Absolute tolerance for sampler probabilities (rtol shared).
    pub probs_atol: f32,
    /// Bootstrap resamples for the confidence intervals.
    pub resamples: usize,
    pub confidence: f64,
    pub seed: u64,
    /// How many most-frequent tokens to list per run.
    pub top_tokens: usize,
    /// Audio comparison settings (recorded in the `audio` section, not here).
    #[serde(skip)]
    pub audio: audio::AudioOptions,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            atol: 1e-3,
            rtol: 1e-3,
            probs_atol: 1e-4,
            resamples: 1000,
            confidence: 0.95,
            seed: 0,
            top_tokens: 10,
            audio: audio::AudioOptions::default(),
        }
    }
}

/// What a run is, as shown in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunInfo {
    pub backend: String,
    pub dir: String,
    pub frames: usize,
    pub logits_storage: String,
    pub probs_storage: String,
    pub sampler_mode: String,
    pub noise: String,
    pub seed: u64,
    pub post: String,
    pub stop_reason: String,
    pub fault: Option<String>,
    /// Mean per-frame time from step_us.npy, ms.
    pub mean_frame_ms: Option<f64>,
}

impl RunInfo {
    fn of(run: &Run) -> RunInfo {
        let m = run.manifest();
        let s = run.step_us();
        RunInfo {
            backend: m.backend.name.clone(),
            dir: run.dir().display().to_string(),
            frames: run.frames(),
            logits_storage: m.logits_storage.clone(),
            probs_storage: m.probs_storage.clone(),
            sampler_mode: m.sampler.mode.clone(),
            noise: m.sampler.noise.clone(),
            seed: m.sampler.seed,
            post: m.sampler.post.clone(),
            stop_reason: m.stop_reason.clone(),
            fault: m.backend.fault.clone(),
            mean_frame_ms: if s.is_empty() {
                None
            } else {
                Some(s.iter().sum::<f64>() / s.len() as f64 / 1000.0)
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// `identical`, `numerically-close` or `diverged`.
    pub kind: String,
    /// The one-line verdict printed first.
    pub line: String,
    pub point: Option<Step>,
    pub stage: Option<Stage>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Divergence {
    /// Earliest step where any stage differs, and the stage responsible there.
    pub point: Option<Step>,
    pub stage: Option<Stage>,
    pub explanation: Option<String>,
    pub first_token_mismatch: Option<Step>,
    /// First step whose sampled tokens agree but whose post-processed tokens differ.
    pub first_post_only_mismatch: Option<Step>,
    pub first_logits_breach: Option<Step>,
    pub first_probs_breach: Option<Step>,
    pub first_top1_mismatch: Option<Step>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogitStats {
    /// Per-step max |a−b|.
    pub max_abs: Summary,
    /// Mean over steps of the per-step mean |a−b|.
    pub mean_abs: f64,
    /// Largest per-entry relative error |a−b|/|a|.
    pub max_rel: f64,
    pub breaches: usize,
    /// Per-step KL(softmax(a) ‖ softmax(b)) at temperature 1.
    pub kl: Option<Summary>,
    /// True when a run stores only top-N logits (KL then over A's top-N, renormalized).
    pub top_n_approximation: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbStats {
    pub max_abs: Summary,
    pub breaches: usize,
    /// KL(P_A ‖ P_B) over steps whose supports agree.
    pub kl: Option<Summary>,
    /// Steps where {p > 0} differs (excluded from KL instead of reporting ∞).
    pub support_mismatch_steps: usize,
}

/// Metrics over all codebooks (`codebook: None`) or one codebook.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    pub codebook: Option<usize>,
    /// Comparable steps the step-wise metrics use.
    pub steps: usize,
    pub token_agreement: f64,
    pub post_token_agreement: f64,
    /// Fraction of steps where argmax(logits) agrees (argmax(probs) without logits).
    pub top1_agreement: Option<f64>,
    pub logits: Option<LogitStats>,
    pub probs: Option<ProbStats>,
    /// Histogram/set metrics of the sampled tokens over the common prefix (all steps).
    pub tokens: TokenDist,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Confidence {
    pub token_agreement: Option<Estimate>,
    pub top1_agreement: Option<Estimate>,
    pub kl_logits_mean: Option<Estimate>,
    pub hist_intersection: Option<Estimate>,
}

/// Per-step results, kept for plots (not serialized).
#[derive(Debug, Clone, Default)]
pub struct StepData {
    pub frames: usize,
    pub codebooks: usize,
    /// Steps `< comparable_end` (frame-major index) are comparable.
    pub comparable_end: usize,
    pub tokens_a: Vec<i32>,
    pub tokens_b: Vec<i32>,
    pub post_eq: Vec<bool>,
    pub logits: Vec<Option<LogitStep>>,
    pub probs: Vec<Option<ProbStep>>,
}

impl StepData {
    pub fn tok_eq(&self, i: usize) -> bool {
        self.tokens_a[i] == self.tokens_b[i]
    }
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub a: RunInfo,
    pub b: RunInfo,
    pub frames_compared: usize,
    pub codebooks: usize,
    pub vocab: usize,
    pub lengths_differ: bool,
    pub teacher_forced: bool,
    pub steps_total: usize,
    pub steps_comparable: usize,
    /// How steps after the first token mismatch were treated.
    pub comparability: String,
    pub options: DiffOptions,
    pub verdict: Verdict,
    pub divergence: Divergence,
    pub overall: Metrics,
    pub per_codebook: Vec<Metrics>,
    pub confidence: Confidence,
    /// Step cost against position (KV-cache / O(n²) check).
    pub performance: performance::Performance,
    pub warnings: Vec<String>,
    /// Audio metrics when both runs have audio (docs/audio-metrics.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<audio::AudioComparison>,
    /// Bytes of logits/probs data read (both runs).
    #[serde(skip)]
    pub bytes_read: u64,
    #[serde(skip)]
    pub steps: StepData,
}

fn first(steps: &StepData, pred: impl Fn(usize) -> bool, end: usize) -> Option<Step> {
    (0..end)
        .find(|&i| pred(i))
        .map(|i| Step::from_index(i, steps.codebooks))
}

/// Compares run `b` (candidate) against run `a` (reference).
pub fn compare(a: &Run, b: &Run, opt: &DiffOptions) -> Result<Diff> {
    let (ma, mb) = (a.manifest(), b.manifest());
    if a.codebooks() != b.codebooks() {
        bail!(
            "cannot compare: {} has {} codebooks, {} has {}",
            a.dir().display(),
            a.codebooks(),
            b.dir().display(),
            b.codebooks()
        );
    }
    if a.vocab() != b.vocab() {
        bail!(
            "cannot compare: {} has vocab {}, {} has vocab {}",
            a.dir().display(),
            a.vocab(),
            b.dir().display(),
            b.vocab()
        );
    }
    let mut warnings = Vec::new();
    if ma.prompt.token_ids != mb.prompt.token_ids {
        warnings.push(
            "the prompts' token ids differ: the runs do not start from the same context".into(),
        );
    }
    if ma.model.sha256 != mb.model.sha256
        && !ma.model.sha256.is_empty()
        && !mb.model.sha256.is_empty()
    {
        warnings.push("the runs used different weight files (sha256 differs)".into());
    }
    for (k, x, y) in [
        (
            "temperature",
            ma.sampler.temperature.to_string(),
            mb.sampler.temperature.to_string(),
        ),
        (
            "top_k",
            ma.sampler.top_k.to_string(),
            mb.sampler.top_k.to_string(),
        ),
        (
            "seed",
            ma.sampler.seed.to_string(),
            mb.sampler.seed.to_string(),
        ),
        ("noise", ma.sampler.noise.clone(), mb.sampler.noise.clone()),
        ("post", ma.sampler.post.clone(), mb.sampler.post.clone()),
    ] {
        if x != y {
            warnings.push(format!("sampler {k} differs: A {x}, B {y}"));
        }
    }
    let c_n = a.codebooks();
    let frames = a.frames().min(b.frames());
    let lengths_differ = a.frames() != b.frames();
    if lengths_differ {
        warnings.push(format!(
            "different lengths: A has {} frames, B has {}; compared on the common prefix of {frames}",
            a.frames(),
            b.frames()
        ));
    }
    let teacher = ma.sampler.mode == "teacher" || mb.sampler.mode == "teacher";
    let total = frames * c_n;
    let tokens_a = a.tokens()[..total].to_vec();
    let tokens_b = b.tokens()[..total].to_vec();
    let post_eq: Vec<bool> = a.post_tokens()[..total]
        .iter()
        .zip(&b.post_tokens()[..total])
        .map(|(x, y)| x == y)
        .collect();
    let first_tok = (0..total).find(|&i| tokens_a[i] != tokens_b[i]);
    let first_post = (0..total).find(|&i| !post_eq[i]);
    // Without teacher forcing, a step after the first token (or post-token) mismatch sees a
    // different context: only steps up to and including that one are comparable.
    let comparable_end = if teacher {
        total
    } else {
        match (first_tok, first_post) {
            (None, None) => total,
            (x, y) => x.unwrap_or(usize::MAX).min(y.unwrap_or(usize::MAX)) + 1,
        }
    };
    let comparability = if teacher {
        "teacher-forced: every step is comparable".to_string()
    } else if comparable_end < total {
        format!(
            "not teacher-forced: steps after the first token mismatch see different contexts; \
             step-wise metrics use the first {comparable_end} of {total} steps (token histograms use all)"
        )
    } else {
        "all steps comparable (no token mismatch)".to_string()
    };
    // Stream logits/probs frame by frame.
    let logits_pair = match (a.logits(), b.logits()) {
        (Some(x), Some(y)) => Some((x, y)),
        _ => None,
    };
    let probs_pair = match (a.probs(), b.probs()) {
        (Some(x), Some(y)) => Some((x, y)),
        _ => None,
    };
    let mut logits_steps: Vec<Option<LogitStep>> = vec![None; total];
    let mut probs_steps: Vec<Option<ProbStep>> = vec![None; total];
    let mut bytes_read = 0u64;
    let comparable_frames = comparable_end.div_ceil(c_n).min(frames);
    let (mut ba, mut bb) = (FrameBuf::default(), FrameBuf::default());
    if let Some((la, lb)) = logits_pair {
        for f in 0..comparable_frames {
            la.read_frame(f, &mut ba)?;
            lb.read_frame(f, &mut bb)?;
            bytes_read += (ba.values().len() + bb.values().len()) as u64 * 4;
            for c in 0..c_n {
                let i = f * c_n + c;
                if i >= comparable_end {
                    break;
                }
                logits_steps[i] = Some(metrics::compare_logits(
                    &ba.row(c),
                    &bb.row(c),
                    opt.atol,
                    opt.rtol,
                ));
            }
        }
    }
    if let Some((pa, pb)) = probs_pair {
        for f in 0..comparable_frames {
            pa.read_frame(f, &mut ba)?;
            pb.read_frame(f, &mut bb)?;
            bytes_read += (ba.values().len() + bb.values().len()) as u64 * 4;
            for c in 0..c_n {
                let i = f * c_n + c;
                if i >= comparable_end {
                    break;
                }
                probs_steps[i] = Some(metrics::compare_probs(
                    &ba.row(c),
                    &bb.row(c),
                    opt.probs_atol,
                    opt.rtol,
                ));
            }
        }
    }
    let steps = StepData {
        frames,
        codebooks: c_n,
        comparable_end,
        tokens_a,
        tokens_b,
        post_eq,
        logits: logits_steps,
        probs: probs_steps,
    };
    let evidence = |i: usize| StepEvidence {
        logits_breach: steps.logits[i].map(|s| s.breach),
        probs_breach: steps.probs[i].map(|s| s.breach),
        tokens_differ: !steps.tok_eq(i),
        post_differ: !steps.post_eq[i],
    };
    let point_i = (0..comparable_end).find(|&i| evidence(i).any());
    let point = point_i.map(|i| Step::from_index(i, c_n));
    let stage = point_i.and_then(|i| divergence::attribute(&evidence(i)));
    let noise = ma.sampler.noise.as_str();
    let divergence = Divergence {
        point,
        stage,
        explanation: stage.map(|s| divergence::explain(s, noise, probs_pair.is_none())),
        first_token_mismatch: first_tok.map(|i| Step::from_index(i, c_n)),
        first_post_only_mismatch: first(&steps, |i| steps.tok_eq(i) && !steps.post_eq[i], total),
        first_logits_breach: first(
            &steps,
            |i| steps.logits[i].is_some_and(|s| s.breach),
            comparable_end,
        ),
        first_probs_breach: first(
            &steps,
            |i| steps.probs[i].is_some_and(|s| s.breach),
            comparable_end,
        ),
        first_top1_mismatch: first(
            &steps,
            |i| {
                steps.logits[i]
                    .map(|s| s.argmax_a != s.argmax_b)
                    .or(steps.probs[i].map(|s| s.argmax_a != s.argmax_b))
                    .unwrap_or(false)
            },
            comparable_end,
        ),
    };
    let exact = (0..comparable_end).all(|i| {
        steps.tok_eq(i)
            && steps.post_eq[i]
            && steps.logits[i].is_none_or(|s| s.max_abs == 0.0 && !s.index_mismatch)
            && steps.probs[i].is_none_or(|s| s.max_abs == 0.0 && !s.support_mismatch)
    });
    let suffix = if lengths_differ {
        format!(
            " on the common prefix ({frames} frames; A {}, B {})",
            a.frames(),
            b.frames()
        )
    } else {
        format!(" ({frames} frames × {c_n} codebooks)")
    };
    let verdict = match (point, stage) {
        (Some(p), Some(s)) => Verdict {
            kind: "diverged".into(),
            line: format!(
                "DIVERGED at frame {} codebook {} in stage {}{suffix}",
                p.frame,
                p.codebook,
                s.name()
            ),
            point: Some(p),
            stage: Some(s),
        },
        _ if exact => Verdict {
            kind: "identical".into(),
            line: format!("IDENTICAL{suffix}"),
            point: None,
            stage: None,
        },
        _ => Verdict {
            kind: "numerically-close".into(),
            line: format!(
                "NUMERICALLY CLOSE within atol {} rtol {}{suffix}",
                opt.atol, opt.rtol
            ),
            point: None,
            stage: None,
        },
    };
    let overall = metrics_for(&steps, None, opt, logits_pair.is_some() && is_top(a, b));
    let per_codebook = (0..c_n)
        .map(|c| metrics_for(&steps, Some(c), opt, logits_pair.is_some() && is_top(a, b)))
        .collect();
    let confidence = confidence(&steps, opt);
    let performance = performance::compare(
        a.step_us(),
        &a.manifest().timings.step_positions,
        b.step_us(),
        &b.manifest().timings.step_positions,
    );
    let verdict = match (&verdict.kind[..], &performance.explanation) {
        ("identical" | "numerically-close", Some(_)) => Verdict {
            kind: "performance".into(),
            line: format!(
                "PERFORMANCE DIVERGENCE — numbers {}{suffix}; per-step cost grows with position",
                if verdict.kind == "identical" {
                    "identical"
                } else {
                    "close"
                }
            ),
            point: None,
            stage: Some(Stage::Performance),
        },
        _ => verdict,
    };
    Ok(Diff {
        a: RunInfo::of(a),
        b: RunInfo::of(b),
        frames_compared: frames,
        codebooks: c_n,
        vocab: a.vocab(),
        lengths_differ,
        teacher_forced: teacher,
        steps_total: total,
        steps_comparable: comparable_end,
        comparability,
        options: opt.clone(),
        verdict,
        divergence,
        overall,
        per_codebook,
        confidence,
        performance,
        warnings,
        audio: audio::compare(a, b, &opt.audio)?,
        bytes_read,
        steps,
    })
}

fn is_top(a: &Run, b: &Run) -> bool {
    let t = |r: &Run| {
        r.logits()
            .is_some_and(|d| matches!(d.storage(), Storage::Top(_)))
    };
    t(a) || t(b)
}

fn metrics_for(s: &StepData, cb: Option<usize>, opt: &DiffOptions, top_n: bool) -> Metrics {
    let sel = |i: &usize| cb.is_none_or(|c| i % s.codebooks == c);
    let comp: Vec<usize> = (0..s.comparable_end).filter(sel).collect();
    let all: Vec<usize> = (0..s.tokens_a.len()).filter(sel).collect();
    let n = comp.len();
    let frac = |k: usize| {
        if n == 0 {
            f64::NAN
        } else {
            k as f64 / n as f64
        }
    };
    let token_agreement = frac(comp.iter().filter(|&&i| s.tok_eq(i)).count());
    let post_token_agreement = frac(comp.iter().filter(|&&i| s.post_eq[i]).count());
    let ls: Vec<LogitStep> = comp.iter().filter_map(|&i| s.logits[i]).collect();
    let ps: Vec<ProbStep> = comp.iter().filter_map(|&i| s.probs[i]).collect();
    let top1_agreement = if !ls.is_empty() {
        Some(ls.iter().filter(|x| x.argmax_a == x.argmax_b).count() as f64 / ls.len() as f64)
    } else if !ps.is_empty() {
        Some(ps.iter().filter(|x| x.argmax_a == x.argmax_b).count() as f64 / ps.len() as f64)
    } else {
        None
    };
    let logits = Summary::of(ls.iter().map(|x| x.max_abs as f64)).map(|max_abs| LogitStats {
        max_abs,
        mean_abs: ls.iter().map(|x| x.mean_abs as f64).sum::<f64>() / ls.len() as f64,
        max_rel: ls.iter().fold(0f64, |m, x| m.max(x.max_rel as f64)),
        breaches: ls.iter().filter(|x| x.breach).count(),
        kl: Summary::of(ls.iter().map(|x| x.kl)),
        top_n_approximation: top_n,
    });
    let probs = Summary::of(ps.iter().map(|x| x.max_abs as f64)).map(|max_abs| ProbStats {
        max_abs,
        breaches: ps.iter().filter(|x| x.breach).count(),
        kl: Summary::of(ps.iter().map(|x| x.kl)),
        support_mismatch_steps: ps.iter().filter(|x| x.support_mismatch).count(),
    });
    let ha = metrics::histogram(all.iter().map(|&i| s.tokens_a[i]));
    let hb = metrics::histogram(all.iter().map(|&i| s.tokens_b[i]));
    Metrics {
        codebook: cb,
        steps: n,
        token_agreement,
        post_token_agreement,
        top1_agreement,
        logits,
        probs,
        tokens: metrics::token_dist(&ha, &hb, opt.top_tokens),
    }
}

/// Per comparable frame: (steps, token eq, top1 eq, top1 n, kl sum, kl n).
type FrameSums = (f64, f64, f64, f64, f64, f64);

/// Bootstrap over frames (a frame's steps share a context, so frames are the resampling unit).
fn confidence(s: &StepData, opt: &DiffOptions) -> Confidence {
    let c_n = s.codebooks;
    let cf = s.comparable_end.div_ceil(c_n).min(s.frames);
    // Per comparable frame: (steps, token eq, top1 eq, top1 n, kl sum, kl n).
    let mut per = vec![(0f64, 0f64, 0f64, 0f64, 0f64, 0f64); cf];
    for i in 0..s.comparable_end {
        let p = &mut per[i / c_n];
        p.0 += 1.0;
        p.1 += s.tok_eq(i) as u8 as f64;
        let t1 = s.logits[i]
            .map(|x| x.argmax_a == x.argmax_b)
            .or(s.probs[i].map(|x| x.argmax_a == x.argmax_b));
        if let Some(t) = t1 {
            p.2 += t as u8 as f64;
            p.3 += 1.0;
        }
        if let Some(k) = s.logits[i].map(|x| x.kl).filter(|k| k.is_finite()) {
            p.4 += k;
            p.5 += 1.0;
        }
    }
    let ratio = |num: fn(&FrameSums) -> f64, den: fn(&FrameSums) -> f64| {
        let per = &per;
        move |idx: &[usize]| {
            let (mut x, mut y) = (0.0, 0.0);
            for &i in idx {
                x += num(&per[i]);
                y += den(&per[i]);
            }
            if y == 0.0 {
                f64::NAN
            } else {
                x / y
            }
        }
    };
    let seed = opt.seed;
    let token_agreement = stats::bootstrap(
        cf,
        opt.resamples,
        opt.confidence,
        seed,
        ratio(|p| p.1, |p| p.0),
    );
    let top1_agreement = if per.iter().any(|p| p.3 > 0.0) {
        stats::bootstrap(
            cf,
            opt.resamples,
            opt.confidence,
            seed + 1,
            ratio(|p| p.2, |p| p.3),
        )
    } else {
        None
    };
    let kl_logits_mean = if per.iter().any(|p| p.5 > 0.0) {
        stats::bootstrap(
            cf,
            opt.resamples,
            opt.confidence,
            seed + 2,
            ratio(|p| p.4, |p| p.5),
        )
    } else {
        None
    };
    // Histogram intersection over all common frames; resamples capped so the cost stays bounded.
    let (f_n, steps) = (s.frames, s.tokens_a.len());
    let hist_resamples = 20_000_000usize
        .checked_div(steps)
        .map_or(0, |r| opt.resamples.min(r.max(50)));
    let (max_tok_a, max_tok_b) = (
        s.tokens_a.iter().copied().max().unwrap_or(0).max(0) as usize,
        s.tokens_b.iter().copied().max().unwrap_or(0).max(0) as usize,
    );
    let width = max_tok_a.max(max_tok_b) + 1;
    let mut ha = vec![0u32; width];
    let mut hb = vec![0u32; width];
    let hist_intersection =
        stats::bootstrap(f_n, hist_resamples, opt.confidence, seed + 3, |idx| {
            ha.iter_mut().for_each(|x| *x = 0);
            hb.iter_mut().for_each(|x| *x = 0);
            for &f in idx {
                for i in f * c_n..(f + 1) * c_n {
                    ha[s.tokens_a[i] as usize] += 1;
                    hb[s.tokens_b[i] as usize] += 1;
                }
            }
            let n = (idx.len() * c_n) as f64;
            ha.iter()
                .zip(&hb)
                .map(|(&x, &y)| x.min(y) as f64)
                .sum::<f64>()
                / n
        });
    Confidence {
        token_agreement,
        top1_agreement,
        kl_logits_mean,
        hist_intersection,
    }
}
