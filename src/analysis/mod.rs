//! The analyzer (issue 4): compares two runs step by step — metrics, divergence point and stage,
//! statistics. Backend-neutral: it only reads run directories.

pub mod audio;
pub mod divergence;
pub mod metrics;
pub mod performance;
pub mod stats;

use crate::capture::{FrameBuf, Row, Run, Storage};
use anyhow::{bail, Result};
use divergence::{Stage, Step, StepEvidence};
use metrics::{LogitStep, ProbStep, TokenDist};
use serde::Serialize;
use stats::{Estimate, Summary};

/// Tolerances and statistics settings.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DiffOptions {
    /// Logits breach when |a−b| > atol + rtol·|a| (a = reference). `None`: the default of the
    /// runs' dtype ([`tolerances_for`]; the looser of the two runs' dtypes).
    pub atol: Option<f32>,
    pub rtol: Option<f32>,
    /// Absolute tolerance for sampler probabilities (rtol shared).
    pub probs_atol: Option<f32>,
    /// Bootstrap resamples for the confidence intervals.
    pub resamples: usize,
    pub confidence: f64,
    pub seed: u64,
    /// How many most-frequent tokens to list per run.
    pub top_tokens: usize,
    /// N of the top-N membership test at the first token mismatch.
    pub membership_n: usize,
    /// Rows of the top-N table at the divergence step.
    pub table_n: usize,
    /// Audio comparison settings (recorded in the `audio` section, not here).
    #[serde(skip)]
    pub audio: audio::AudioOptions,
}

/// The tolerances a comparison used, and where they came from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Tolerances {
    pub atol: f32,
    pub rtol: f32,
    pub probs_atol: f32,
    /// The dtype whose defaults apply (the looser of the two runs').
    pub dtype: String,
    /// `dtype default` or `given` per value, e.g. "atol given, rtol and probs-atol bf16 defaults".
    pub source: String,
}

/// Default (atol, rtol, probs_atol) for runs computed in `dtype`. f32: 1e-3, 1e-3, 1e-4; the
/// half-precision defaults use `verify`'s logit atol (f16 1e-1, bf16 5e-1) with an rtol of a few
/// units of the format's rounding (f16 2⁻¹⁰ ≈ 1e-3 → 1e-2, bf16 2⁻⁷ ≈ 8e-3 → 3e-2).
pub fn tolerances_for(dtype: &str) -> (f32, f32, f32) {
    match dtype {
        "f16" | "float16" => (1e-1, 1e-2, 1e-2),
        "bf16" | "bfloat16" => (5e-1, 3e-2, 5e-2),
        _ => (1e-3, 1e-3, 1e-4),
    }
}

/// Looseness rank of a dtype (bf16 loosest).
fn dtype_rank(d: &str) -> u8 {
    match d {
        "bf16" | "bfloat16" => 2,
        "f16" | "float16" => 1,
        _ => 0,
    }
}

impl DiffOptions {
    /// The tolerances for runs in dtypes `da` and `db`.
    pub fn resolve(&self, da: &str, db: &str) -> Tolerances {
        let dtype = if dtype_rank(db) > dtype_rank(da) {
            db
        } else {
            da
        };
        let (atol, rtol, patol) = tolerances_for(dtype);
        let given: Vec<&str> = [
            ("atol", self.atol.is_some()),
            ("rtol", self.rtol.is_some()),
            ("probs-atol", self.probs_atol.is_some()),
        ]
        .iter()
        .filter(|x| x.1)
        .map(|x| x.0)
        .collect();
        let source = match given.len() {
            0 => format!("{dtype} defaults"),
            3 => "given".to_string(),
            _ => format!("{} given, the rest {dtype} defaults", given.join(", ")),
        };
        Tolerances {
            atol: self.atol.unwrap_or(atol),
            rtol: self.rtol.unwrap_or(rtol),
            probs_atol: self.probs_atol.unwrap_or(patol),
            dtype: dtype.to_string(),
            source,
        }
    }
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            atol: None,
            rtol: None,
            probs_atol: None,
            resamples: 1000,
            confidence: 0.95,
            seed: 0,
            top_tokens: 10,
            membership_n: 5,
            table_n: 10,
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
    pub dtype: String,
    pub temperature: f64,
    pub top_k: usize,
    pub prompt_text: String,
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
            dtype: m.backend.dtype.clone(),
            temperature: m.sampler.temperature,
            top_k: m.sampler.top_k,
            prompt_text: m.prompt.text.clone(),
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
    /// `identical`, `numerically-close`, `tokens-identical` (tokens agree but logits/probs
    /// were not recorded by both runs, so identity cannot be claimed), `diverged` or
    /// `performance`.
    pub kind: String,
    /// The one-line verdict printed first.
    pub line: String,
    pub point: Option<Step>,
    pub stage: Option<Stage>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Divergence {
    /// Earliest step where any stage differs, and the stage responsible there (stage `input`
    /// with no step when the prompts differ).
    pub point: Option<Step>,
    pub stage: Option<Stage>,
    pub explanation: Option<String>,
    /// The prompts' token ids differ: (first differing position, A's length, B's length).
    pub input_mismatch: Option<[usize; 3]>,
    pub first_token_mismatch: Option<Step>,
    /// First step whose sampled tokens agree but whose post-processed tokens differ.
    pub first_post_only_mismatch: Option<Step>,
    pub first_logits_breach: Option<Step>,
    pub first_probs_breach: Option<Step>,
    /// First step where one sampler kept a token (p > 0) the other did not (stage sampler).
    pub first_support_mismatch: Option<Step>,
    pub first_top1_mismatch: Option<Step>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogitStats {
    /// Per-step max |a−b| over the steps with finite values.
    pub max_abs: Summary,
    /// Mean over steps of the per-step mean |a−b|.
    pub mean_abs: f64,
    /// Largest per-entry relative error |a−b| / max(|a|, atol/rtol) (floored denominator).
    pub max_rel: f64,
    pub breaches: usize,
    /// Per-step KL(softmax(a) ‖ softmax(b)) at temperature 1.
    pub kl: Option<Summary>,
    /// Per-step cosine similarity of the two logit rows.
    pub cosine: Option<Summary>,
    /// Compared steps left out of the summaries because a row held NaN/Inf.
    pub nonfinite_steps: usize,
    /// True when a run stores only top-N logits (compared on the entries both stored; KL over
    /// those entries, renormalized).
    pub top_n_approximation: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbStats {
    pub max_abs: Summary,
    pub breaches: usize,
    /// KL(P̃_A ‖ P̃_B), both renormalized in f64 over the shared support, over every compared
    /// step (support-mismatch steps included).
    pub kl: Option<Summary>,
    /// The same KL over the steps whose supports agree.
    pub kl_matched_support: Option<Summary>,
    /// The same KL over the support-mismatch steps only.
    pub kl_support_mismatch: Option<Summary>,
    /// Steps where {p > 0} differs (a token kept by one sampler and not the other).
    pub support_mismatch_steps: usize,
    /// Per support-mismatch step: the larger side's probability mass outside the shared support.
    pub excluded_mass: Option<Summary>,
    /// Δp = p_B(t) − p_A(t) of run A's sampled token t per step.
    pub dp_sampled: Option<Summary>,
    pub nonfinite_steps: usize,
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
    /// Both runs recorded logits / probs (the stats below may still be absent when every
    /// compared step was non-finite).
    pub logits_recorded: bool,
    pub probs_recorded: bool,
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
    /// How the intervals are computed.
    pub method: String,
}

/// Steps of one run whose logits / probs hold a NaN or an infinity (common prefix).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NonFiniteCounts {
    pub logits_steps: usize,
    pub probs_steps: usize,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NonFinite {
    pub a: NonFiniteCounts,
    pub b: NonFiniteCounts,
}

impl NonFinite {
    /// One line per run and array that holds NaN/Inf (`B: non-finite logits in 3 steps`);
    /// empty when every recorded value is finite.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (run, c) in [("A", &self.a), ("B", &self.b)] {
            for (what, n) in [("logits", c.logits_steps), ("probs", c.probs_steps)] {
                if n > 0 {
                    out.push(format!("{run}: non-finite {what} in {n} steps"));
                }
            }
        }
        out
    }
}

/// The entry with the largest |Δlogit| over the compared steps.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LargestError {
    pub step: Step,
    /// Vocab index.
    pub index: usize,
    pub a: f32,
    pub b: f32,
    pub abs: f32,
}

/// At the first sampled-token mismatch: is each side's token in the other's top-N?
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Membership {
    pub step: Step,
    pub n: usize,
    /// `probs` or `logits` (softmax at temperature 1).
    pub source: String,
    pub token_a: i32,
    pub token_b: i32,
    /// 1-based rank of B's token in A's distribution, and of A's token in B's.
    pub rank_of_b_in_a: Option<usize>,
    pub rank_of_a_in_b: Option<usize>,
    pub b_in_top_n_of_a: bool,
    pub a_in_top_n_of_b: bool,
    /// Both tokens in both top-Ns: a near-tie resolved differently, a warning rather than a
    /// model bug.
    pub near_tie: bool,
}

/// One row of the top-N table at the divergence step.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopRow {
    pub token: i32,
    /// The token's decoded text, when the runs are Llama runs and the reference's model
    /// directory holds its tokenizer.json.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub p_a: Option<f64>,
    pub p_b: Option<f64>,
    pub rank_a: Option<usize>,
    pub rank_b: Option<usize>,
}

/// The top-N tokens of either side with both sides' probabilities at the divergence step.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopTable {
    pub step: Step,
    pub source: String,
    pub rows: Vec<TopRow>,
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
    /// How steps after the first mismatch in what the models were fed were treated.
    pub comparability: String,
    pub options: DiffOptions,
    /// The tolerances used (dtype-aware defaults unless given).
    pub tolerances: Tolerances,
    pub verdict: Verdict,
    pub divergence: Divergence,
    pub overall: Metrics,
    pub per_codebook: Vec<Metrics>,
    pub confidence: Confidence,
    /// Non-finite logits/probs steps per run.
    pub nonfinite: NonFinite,
    /// What could not be compared (one side did not record it, or stored only top-N).
    pub not_compared: Vec<String>,
    /// Steps whose post-processed token differs from the sampled one, per run (A, B): 0 means
    /// post-processing never changed a token (a remap fault was not triggered).
    pub post_changed: [usize; 2],
    pub largest_logit_error: Option<LargestError>,
    pub first_mismatch_membership: Option<Membership>,
    pub divergence_top: Option<TopTable>,
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

/// The tokens the model of `run` was fed, frame-major: `fed_tokens.npy` when the run recorded
/// it (teacher forcing, a re-score, a forced outside port), else the sampled tokens (capture feeds
/// back `tokens.npy`, never `post_tokens.npy`). In teacher mode `compare` also treats every step
/// as comparable.
pub fn fed_tokens(run: &Run) -> &[i32] {
    run.fed_tokens()
}

/// Sampler settings that matter: temperatures compared at f32 precision (the samplers run in
/// f32; an f64 rendering of the same f32 is no difference), top-k only when sampling.
fn sampler_warnings(ma: &crate::capture::Manifest, mb: &crate::capture::Manifest) -> Vec<String> {
    let (sa, sb) = (&ma.sampler, &mb.sampler);
    let greedy = |s: &crate::capture::SamplerInfo| s.noise == "greedy" || s.temperature == 0.0;
    let mut w = Vec::new();
    if (sa.temperature as f32) != (sb.temperature as f32) {
        w.push(format!(
            "sampler temperature differs: A {}, B {}",
            sa.temperature as f32, sb.temperature as f32
        ));
    }
    if sa.top_k != sb.top_k && !(greedy(sa) && greedy(sb)) {
        w.push(format!(
            "sampler top_k differs: A {}, B {}",
            sa.top_k, sb.top_k
        ));
    }
    for (k, x, y) in [
        ("seed", sa.seed.to_string(), sb.seed.to_string()),
        ("noise", sa.noise.clone(), sb.noise.clone()),
        ("post", sa.post.clone(), sb.post.clone()),
    ] {
        if x != y {
            w.push(format!("sampler {k} differs: A {x}, B {y}"));
        }
    }
    w
}

/// Row values as (index, value) sorted descending; softmax first for logits.
fn ranked(row: &Row<'_>, softmax: bool) -> Vec<(usize, f64)> {
    let mut v: Vec<(usize, f64)> = match row {
        Row::Dense(x) => x.iter().map(|&y| y as f64).enumerate().collect(),
        Row::Top { values, indices } => indices
            .iter()
            .zip(values.iter())
            .map(|(&i, &y)| (i as usize, y as f64))
            .collect(),
    };
    if softmax {
        let m = v.iter().fold(f64::NEG_INFINITY, |m, x| m.max(x.1));
        let z: f64 = v.iter().map(|x| (x.1 - m).exp()).sum();
        for x in v.iter_mut() {
            x.1 = (x.1 - m).exp() / z;
        }
    }
    v.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
    v
}

fn rank_of(r: &[(usize, f64)], t: usize) -> Option<usize> {
    r.iter().position(|x| x.0 == t).map(|k| k + 1)
}

fn prob_of(r: &[(usize, f64)], t: usize) -> Option<f64> {
    r.iter().find(|x| x.0 == t).map(|x| x.1)
}

/// (index, value) pairs sorted by value, descending.
type Ranked = Vec<(usize, f64)>;

/// Both sides' ranked distributions at step `i`: probs when both recorded them, else the
/// softmax of the logits.
fn dists_at(a: &Run, b: &Run, i: usize, c_n: usize) -> Result<Option<(String, Ranked, Ranked)>> {
    let (f, c) = (i / c_n, i % c_n);
    let (mut ba, mut bb) = (FrameBuf::default(), FrameBuf::default());
    for (src, pa, pb, soft) in [
        ("probs", a.probs(), b.probs(), false),
        ("logits (softmax, T = 1)", a.logits(), b.logits(), true),
    ] {
        if let (Some(pa), Some(pb)) = (pa, pb) {
            pa.read_frame(f, &mut ba)?;
            pb.read_frame(f, &mut bb)?;
            return Ok(Some((
                src.to_string(),
                ranked(&ba.row(c), soft),
                ranked(&bb.row(c), soft),
            )));
        }
    }
    Ok(None)
}

/// Whether any value of `v` is NaN/Inf (summed: vectorizes).
fn any_nonfinite(v: ndarray::ArrayView1<'_, f32>) -> bool {
    !v.fold(0.0f32, |s, &x| s + x * 0.0).is_finite()
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
    let tol = opt.resolve(&ma.backend.dtype, &mb.backend.dtype);
    let mut warnings = Vec::new();
    let input_mismatch = if ma.prompt.token_ids != mb.prompt.token_ids {
        let (pa, pb) = (&ma.prompt.token_ids, &mb.prompt.token_ids);
        let k = pa
            .iter()
            .zip(pb)
            .position(|(x, y)| x != y)
            .unwrap_or(pa.len().min(pb.len()));
        Some([k, pa.len(), pb.len()])
    } else {
        None
    };
    if ma.model.sha256 != mb.model.sha256
        && !ma.model.sha256.is_empty()
        && !mb.model.sha256.is_empty()
    {
        warnings.push("the runs used different weight files (sha256 differs)".into());
    }
    warnings.extend(sampler_warnings(ma, mb));
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
    let changed = |r: &Run| {
        r.tokens()[..total]
            .iter()
            .zip(&r.post_tokens()[..total])
            .filter(|(x, y)| x != y)
            .count()
    };
    let post_changed = [changed(a), changed(b)];
    let first_tok = (0..total).find(|&i| tokens_a[i] != tokens_b[i]);
    let (fed_a, fed_b) = (&fed_tokens(a)[..total], &fed_tokens(b)[..total]);
    let first_fed = (0..total).find(|&i| fed_a[i] != fed_b[i]);
    // Without teacher forcing, a step after the first mismatch in what the models were fed sees
    // a different context: only steps up to and including that one are comparable. A
    // post-processing difference alone does not end comparability (the models are fed the
    // sampled tokens).
    let comparable_end = if teacher {
        total
    } else {
        first_fed.map_or(total, |i| i + 1)
    };
    let comparability = if teacher {
        "teacher-forced: every step is comparable".to_string()
    } else if comparable_end < total {
        format!(
            "not teacher-forced: steps after the first mismatch in the tokens the models were fed \
             see different contexts; step-wise metrics use the first {comparable_end} of {total} \
             steps (token histograms use all)"
        )
    } else {
        "all steps comparable (the models were fed the same tokens)".to_string()
    };
    let storage_of = |r: &Run, l: bool| {
        let d = if l { r.logits() } else { r.probs() };
        d.map(|d| d.storage())
    };
    let mut not_compared = Vec::new();
    for (what, l) in [("logits", true), ("probs", false)] {
        match (storage_of(a, l), storage_of(b, l)) {
            (Some(_), None) => not_compared.push(format!("{what}: B recorded none (A did)")),
            (None, Some(_)) => not_compared.push(format!("{what}: A recorded none (B did)")),
            (None, None) => not_compared.push(format!("{what}: recorded by neither run")),
            (Some(x), Some(y)) if !x.is_dense() || !y.is_dense() => not_compared.push(format!(
                "{what}: compared on the entries both runs stored (A {}, B {}); the others could not be compared",
                if l { &ma.logits_storage } else { &ma.probs_storage },
                if l { &mb.logits_storage } else { &mb.probs_storage }
            )),
            _ => {}
        }
    }
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
    let mut nonfinite = NonFinite::default();
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
                let s = metrics::compare_logits(&ba.row(c), &bb.row(c), tol.atol, tol.rtol);
                nonfinite.a.logits_steps += s.nonfinite_a as usize;
                nonfinite.b.logits_steps += s.nonfinite_b as usize;
                logits_steps[i] = Some(s);
            }
        }
    }
    // With top-N logits, a probability error at an entry whose logits were not stored by both
    // runs is not cleared by the logits comparison.
    let logits_partial_pair =
        logits_pair.filter(|(x, y)| !x.storage().is_dense() || !y.storage().is_dense());
    let mut probs_uncovered = vec![false; total];
    let (mut la_buf, mut lb_buf) = (FrameBuf::default(), FrameBuf::default());
    if let Some((pa, pb)) = probs_pair {
        for f in 0..comparable_frames {
            pa.read_frame(f, &mut ba)?;
            pb.read_frame(f, &mut bb)?;
            bytes_read += (ba.values().len() + bb.values().len()) as u64 * 4;
            if let Some((la, lb)) = logits_partial_pair {
                la.read_frame(f, &mut la_buf)?;
                lb.read_frame(f, &mut lb_buf)?;
            }
            for c in 0..c_n {
                let i = f * c_n + c;
                if i >= comparable_end {
                    break;
                }
                let s = metrics::compare_probs(
                    &ba.row(c),
                    &bb.row(c),
                    tol.probs_atol,
                    tol.rtol,
                    usize::try_from(tokens_a[i]).ok(),
                );
                nonfinite.a.probs_steps += s.nonfinite_a as usize;
                nonfinite.b.probs_steps += s.nonfinite_b as usize;
                if logits_partial_pair.is_some() && s.breach {
                    let k = s.max_abs_index as usize;
                    probs_uncovered[i] = metrics::lookup(&la_buf.row(c), k).is_none()
                        || metrics::lookup(&lb_buf.row(c), k).is_none();
                }
                probs_steps[i] = Some(s);
            }
        }
    }
    // Non-finite values in the steps that were not compared (after the context diverged).
    for (run, counts) in [(a, &mut nonfinite.a), (b, &mut nonfinite.b)] {
        for (d, probs) in [(run.logits(), false), (run.probs(), true)] {
            let Some(d) = d else { continue };
            for f in comparable_end / c_n..frames {
                d.read_frame(f, &mut ba)?;
                for (c, row) in ba.values_view().outer_iter().enumerate() {
                    let i = f * c_n + c;
                    if i < comparable_end {
                        continue;
                    }
                    if any_nonfinite(row) {
                        if probs {
                            counts.probs_steps += 1;
                        } else {
                            counts.logits_steps += 1;
                        }
                    }
                }
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
        logits_partial: steps.logits[i].is_some_and(|s| s.partial),
        probs_breach: steps.probs[i].map(|s| s.breach),
        probs_shape_breach: steps.probs[i].is_some_and(|s| s.renorm_breach) && !probs_uncovered[i],
        support_differ: steps.probs[i].is_some_and(|s| s.support_mismatch),
        tokens_differ: !steps.tok_eq(i),
        post_differ: !steps.post_eq[i],
    };
    // With native noise a token mismatch is expected, not a finding: under teacher forcing or
    // a re-score (every step comparable) the verdict names the first step whose logits or
    // probabilities differ, and falls back to the first token mismatch only when none does.
    let native = ma.sampler.noise == "native" || mb.sampler.noise == "native";
    let numeric = |i: usize| {
        let e = evidence(i);
        e.logits_breach == Some(true) || e.probs_breach == Some(true)
    };
    let point_i = native
        .then(|| (0..comparable_end).find(|&i| numeric(i)))
        .flatten()
        .or_else(|| (0..comparable_end).find(|&i| evidence(i).any()));
    let (point, stage) = if input_mismatch.is_some() {
        (None, Some(Stage::Input))
    } else {
        (
            point_i.map(|i| Step::from_index(i, c_n)),
            point_i.and_then(|i| divergence::attribute(&evidence(i))),
        )
    };
    let noise = ma.sampler.noise.as_str();
    let hybrid = ma.sampler.mode == "hybrid" || mb.sampler.mode == "hybrid";
    let explanation = match (stage, input_mismatch) {
        (Some(Stage::Input), Some([k, la, lb])) => Some(format!(
            "the prompts' token ids differ (first at position {k}; A {la} tokens, B {lb}): the runs do not start from the same context, so every later difference may follow from it"
        )),
        (Some(s), _) => Some(divergence::explain(
            s,
            noise,
            probs_pair.is_none(),
            hybrid,
            logits_pair.is_some_and(|(x, y)| !x.storage().is_dense() || !y.storage().is_dense()),
        )),
        _ => None,
    };
    let divergence = Divergence {
        point,
        stage,
        explanation,
        input_mismatch,
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
        first_support_mismatch: first(
            &steps,
            |i| steps.probs[i].is_some_and(|s| s.support_mismatch),
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
    let logits_both = logits_pair.is_some();
    let probs_both = probs_pair.is_some();
    // Identity needs data: every distribution either run recorded must have been recorded by
    // both and compared equal.
    let one_sided = not_compared.iter().any(|n| n.contains("recorded none"));
    let nothing = !logits_both && !probs_both;
    let exact_values = (0..comparable_end).all(|i| {
        steps.tok_eq(i)
            && steps.post_eq[i]
            && steps.logits[i].is_none_or(|s| s.max_abs == 0.0 && !s.index_mismatch)
            && steps.probs[i].is_none_or(|s| s.max_abs == 0.0 && !s.support_mismatch)
    });
    let partial = logits_pair
        .is_some_and(|(x, y)| !x.storage().is_dense() || !y.storage().is_dense())
        || probs_pair.is_some_and(|(x, y)| !x.storage().is_dense() || !y.storage().is_dense());
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
        (None, Some(Stage::Input)) => Verdict {
            kind: "diverged".into(),
            line: format!("DIVERGED in stage input: the prompts differ{suffix}"),
            point: None,
            stage,
        },
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
        _ if one_sided || nothing => Verdict {
            kind: "tokens-identical".into(),
            line: format!(
                "TOKENS IDENTICAL{suffix} — {}: identity of the numbers cannot be claimed",
                if one_sided {
                    not_compared
                        .iter()
                        .filter(|n| n.contains("recorded none"))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                } else {
                    "neither logits nor probs were recorded by both runs".to_string()
                }
            ),
            point: None,
            stage: None,
        },
        _ if exact_values => Verdict {
            kind: "identical".into(),
            line: format!(
                "IDENTICAL{suffix}{}",
                if partial {
                    " on the entries both runs stored (top-N storage)"
                } else {
                    ""
                }
            ),
            point: None,
            stage: None,
        },
        _ => Verdict {
            kind: "numerically-close".into(),
            line: format!(
                "NUMERICALLY CLOSE within atol {} rtol {} ({}){suffix}",
                tol.atol, tol.rtol, tol.source
            ),
            point: None,
            stage: None,
        },
    };
    let top_n = logits_both && is_top(a, b);
    let overall = metrics_for(&steps, None, opt, top_n, logits_both, probs_both);
    let per_codebook = (0..c_n)
        .map(|c| metrics_for(&steps, Some(c), opt, top_n, logits_both, probs_both))
        .collect();
    let confidence = confidence(&steps, opt);
    let performance = performance::compare(
        a.step_us(),
        &a.manifest().timings.step_positions,
        b.step_us(),
        &b.manifest().timings.step_positions,
    );
    let verdict = match (&verdict.kind[..], &performance.explanation) {
        ("identical" | "numerically-close" | "tokens-identical", Some(_)) => Verdict {
            kind: "performance".into(),
            line: format!(
                "PERFORMANCE DIVERGENCE — numbers {}{suffix}; per-step cost grows with position",
                match verdict.kind.as_str() {
                    "identical" => "identical",
                    "tokens-identical" => "not compared (tokens identical)",
                    _ => "close",
                }
            ),
            point: None,
            stage: Some(Stage::Performance),
        },
        _ => verdict,
    };
    // The sound: identical tokens and audio beyond the codec tolerance is stage codec.
    let audio = audio::compare(a, b, &opt.audio)?;
    let verdict = match (&verdict.kind[..], &audio) {
        ("identical" | "numerically-close" | "tokens-identical", Some(au))
            if au.stage == Some(audio::AudioStage::Codec) =>
        {
            let dep = au.metrics.first_departure.as_ref();
            Verdict {
                kind: "diverged".into(),
                line: format!(
                    "DIVERGED in stage codec{} — tokens identical, audio max |Δ| {:.3e} beyond the codec tolerance",
                    dep.map(|d| format!(" at {:.3} s (frame {})", d.time_s, d.frame))
                        .unwrap_or_default(),
                    au.metrics.max_abs_diff
                ),
                point: dep.map(|d| Step {
                    frame: d.frame,
                    codebook: 0,
                }),
                stage: Some(Stage::Codec),
            }
        }
        _ => verdict,
    };
    // Peer metrics that need one more look at a single frame.
    let largest_logit_error = match logits_pair {
        Some((la, lb)) => {
            let best = (0..comparable_end)
                .filter_map(|i| steps.logits[i].map(|s| (i, s.max_abs)))
                .filter(|x| x.1.is_finite() && x.1 > 0.0)
                .fold(None, |m: Option<(usize, f32)>, x| match m {
                    Some(m) if m.1 >= x.1 => Some(m),
                    _ => Some(x),
                });
            match best {
                Some((i, _)) => {
                    la.read_frame(i / c_n, &mut ba)?;
                    lb.read_frame(i / c_n, &mut bb)?;
                    let (ra, rb) = (ba.row(i % c_n), bb.row(i % c_n));
                    let ea = ranked(&ra, false);
                    let eb = ranked(&rb, false);
                    let mut top: Option<LargestError> = None;
                    for &(k, x) in &ea {
                        if let Some(y) = prob_of(&eb, k) {
                            let d = (x - y).abs() as f32;
                            if top.as_ref().is_none_or(|t| d > t.abs) {
                                top = Some(LargestError {
                                    step: Step::from_index(i, c_n),
                                    index: k,
                                    a: x as f32,
                                    b: y as f32,
                                    abs: d,
                                });
                            }
                        }
                    }
                    top
                }
                None => None,
            }
        }
        None => None,
    };
    let first_mismatch_membership = match first_tok.filter(|&i| i < comparable_end) {
        Some(i) => dists_at(a, b, i, c_n)?.map(|(source, ra, rb)| {
            let (ta, tb) = (steps.tokens_a[i], steps.tokens_b[i]);
            let n = opt.membership_n;
            let rba = rank_of(&ra, tb.max(0) as usize);
            let rab = rank_of(&rb, ta.max(0) as usize);
            let b_in_a = rba.is_some_and(|r| r <= n);
            let a_in_b = rab.is_some_and(|r| r <= n);
            Membership {
                step: Step::from_index(i, c_n),
                n,
                source,
                token_a: ta,
                token_b: tb,
                rank_of_b_in_a: rba,
                rank_of_a_in_b: rab,
                b_in_top_n_of_a: b_in_a,
                a_in_top_n_of_b: a_in_b,
                near_tie: b_in_a && a_in_b,
            }
        }),
        None => None,
    };
    if let Some(m) = &first_mismatch_membership {
        if m.near_tie {
            warnings.push(format!(
                "at the first token mismatch (frame {} codebook {}) each side's token is in the other's top-{} (rank {} and {}): a near-tie resolved differently, not by itself a model bug",
                m.step.frame,
                m.step.codebook,
                m.n,
                m.rank_of_b_in_a.unwrap_or(0),
                m.rank_of_a_in_b.unwrap_or(0)
            ));
        }
    }
    let divergence_top = match point.map(|p| p.frame * c_n + p.codebook) {
        Some(i) => dists_at(a, b, i, c_n)?.map(|(source, ra, rb)| {
            let n = opt.table_n;
            let mut toks: Vec<usize> = ra.iter().take(n).map(|x| x.0).collect();
            for x in rb.iter().take(n) {
                if !toks.contains(&x.0) {
                    toks.push(x.0);
                }
            }
            let mut rows: Vec<TopRow> = toks
                .into_iter()
                .map(|t| TopRow {
                    token: t as i32,
                    text: None,
                    p_a: prob_of(&ra, t),
                    p_b: prob_of(&rb, t),
                    rank_a: rank_of(&ra, t),
                    rank_b: rank_of(&rb, t),
                })
                .collect();
            rows.sort_by(|x, y| {
                y.p_a
                    .unwrap_or(-1.0)
                    .total_cmp(&x.p_a.unwrap_or(-1.0))
                    .then(y.p_b.unwrap_or(-1.0).total_cmp(&x.p_b.unwrap_or(-1.0)))
                    .then(x.token.cmp(&y.token))
            });
            TopTable {
                step: Step::from_index(i, c_n),
                source,
                rows,
            }
        }),
        None => None,
    };
    let mut divergence_top = divergence_top;
    if let Some(t) = divergence_top.as_mut() {
        if let Some(tok) = llama_tokenizer(a).or_else(|| llama_tokenizer(b)) {
            for r in t.rows.iter_mut() {
                r.text = u32::try_from(r.token)
                    .ok()
                    .and_then(|id| tok.decode_token(id));
            }
        }
    }
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
        tolerances: tol,
        verdict,
        divergence,
        overall,
        per_codebook,
        confidence,
        nonfinite,
        not_compared,
        post_changed,
        largest_logit_error,
        first_mismatch_membership,
        divergence_top,
        performance,
        warnings,
        audio,
        bytes_read,
        steps,
    })
}

/// The tokenizer of a Llama run's model (`model.path`/tokenizer.json), when it is there.
fn llama_tokenizer(run: &Run) -> Option<crate::model::tokenizer::PromptTokenizer> {
    let m = &run.manifest().model;
    if m.kind != "llama" || m.path.is_empty() {
        return None;
    }
    let path = std::path::Path::new(&m.path).join("tokenizer.json");
    crate::model::tokenizer::PromptTokenizer::from_file(&path).ok()
}

fn is_top(a: &Run, b: &Run) -> bool {
    let t = |r: &Run| {
        r.logits()
            .is_some_and(|d| matches!(d.storage(), Storage::Top(_)))
    };
    t(a) || t(b)
}

fn metrics_for(
    s: &StepData,
    cb: Option<usize>,
    opt: &DiffOptions,
    top_n: bool,
    logits_recorded: bool,
    probs_recorded: bool,
) -> Metrics {
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
    let ls_all: Vec<LogitStep> = comp.iter().filter_map(|&i| s.logits[i]).collect();
    let ps_all: Vec<ProbStep> = comp.iter().filter_map(|&i| s.probs[i]).collect();
    let ls: Vec<LogitStep> = ls_all
        .iter()
        .filter(|x| !x.nonfinite_a && !x.nonfinite_b)
        .copied()
        .collect();
    let ps: Vec<ProbStep> = ps_all
        .iter()
        .filter(|x| !x.nonfinite_a && !x.nonfinite_b)
        .copied()
        .collect();
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
        breaches: ls_all.iter().filter(|x| x.breach).count(),
        kl: Summary::of(ls.iter().map(|x| x.kl)),
        cosine: Summary::of(ls.iter().map(|x| x.cosine)),
        nonfinite_steps: ls_all.len() - ls.len(),
        top_n_approximation: top_n,
    });
    let probs = Summary::of(ps.iter().map(|x| x.max_abs as f64)).map(|max_abs| ProbStats {
        max_abs,
        breaches: ps_all.iter().filter(|x| x.breach).count(),
        kl: Summary::of(ps.iter().map(|x| x.kl)),
        kl_matched_support: Summary::of(ps.iter().filter(|x| !x.support_mismatch).map(|x| x.kl)),
        kl_support_mismatch: Summary::of(ps.iter().filter(|x| x.support_mismatch).map(|x| x.kl)),
        support_mismatch_steps: ps.iter().filter(|x| x.support_mismatch).count(),
        excluded_mass: Summary::of(
            ps.iter()
                .filter(|x| x.support_mismatch)
                .map(|x| x.excluded_mass),
        ),
        dp_sampled: Summary::of(ps.iter().map(|x| x.p_tok_b - x.p_tok_a)),
        nonfinite_steps: ps_all.len() - ps.len(),
    });
    let ha = metrics::histogram(all.iter().map(|&i| s.tokens_a[i]));
    let hb = metrics::histogram(all.iter().map(|&i| s.tokens_b[i]));
    Metrics {
        codebook: cb,
        steps: n,
        token_agreement,
        post_token_agreement,
        top1_agreement,
        logits_recorded,
        probs_recorded,
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
        method: format!(
            "bias-corrected percentile bootstrap over frames (a frame's steps share a context), {} resamples; no interval below {} frames",
            opt.resamples,
            stats::MIN_GROUPS
        ),
    }
}
