//! `csm-parity sweep` (issue 5): temperatures × top-k × seeds × texts, both pipelines captured
//! twice per job (shared noise: token agreement and divergence point; native noise: token
//! distribution similarity), aggregated per cell with bootstrap confidence intervals.
//!
//! Jobs are the unit of work, of resumption and of sharding: each finished job's metrics are
//! stored atomically as `DIR/jobs/<key>.json`; a later invocation with the same spec reuses
//! them, and `sweep merge` combines the `jobs/` of several shard directories.
pub mod output;

use crate::analysis::metrics::{histogram, token_dist};
use crate::analysis::stats::{bootstrap, Estimate};
use crate::analysis::{self, DiffOptions};
use crate::backend::BackendKind;
use crate::capture::{Run, Storage};
use crate::capture_run::{
    capture_with, load_backends, run_dir, CaptureOptions, LoadedBackend, Mode, ModelRef,
};
use crate::gate_outside::{judge_candidate, run_candidate_cmd, CandidateJob};
use crate::model::{CsmModel, DType};
use crate::sampling::{NoiseMode, PostProcess, SamplerSpec};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bootstrap resamples for the per-cell confidence intervals.
pub const RESAMPLES: usize = 2000;
/// Confidence level of every interval.
pub const LEVEL: f64 = 0.95;
/// Differences smaller than this are 0 (floating-point residue of averaging).
const ZERO_TOL: f64 = 1e-9;
/// Bootstrap seed (fixed: the same job results always give the same intervals).
const BOOT_SEED: u64 = 0x5EE9_5EE9;

/// The text used when neither `--text` nor `--texts` is given.
pub const DEFAULT_TEXT: &str = "The quick brown fox jumps over the lazy dog.";

/// What a sweep computes: the grid, the seeds and texts, and everything a job's result depends
/// on. Two directories can be merged only when their specs are equal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepSpec {
    pub temperatures: Vec<f64>,
    pub top_ks: Vec<usize>,
    pub seeds: Vec<u64>,
    pub texts: Vec<String>,
    pub max_frames: usize,
    pub speaker: u32,
    pub dtype: String,
    /// sha256 of the weights (the model path is informational and not compared).
    pub model_sha256: String,
    pub model_path: String,
    /// The outside candidate (`CandidateSource::describe`); absent: the built-in MLX pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
}

/// Where the candidate's runs come from when it is not the built-in MLX pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CandidateSource {
    /// `--candidate-cmd`: a shell command template run once per job (placeholders as for
    /// `gate --candidate-cmd`).
    Command(String),
    /// `--candidate-runs DIR`: one finished run per job at `DIR/<job key>` (`t0.8_k50_x0_s3`).
    Runs(PathBuf),
}

impl CandidateSource {
    /// The candidate as recorded in `spec.json` and each job result.
    pub fn describe(&self) -> String {
        match self {
            CandidateSource::Command(t) => format!("cmd: {t}"),
            CandidateSource::Runs(d) => format!("runs: {}", d.display()),
        }
    }
}

impl SweepSpec {
    pub fn validate(&self) -> Result<()> {
        if self.temperatures.is_empty() {
            bail!("--temps: expected at least one temperature");
        }
        if self.top_ks.is_empty() {
            bail!("--topk: expected at least one top-k");
        }
        if self.seeds.is_empty() {
            bail!("--seeds: expected at least one seed");
        }
        if self.texts.is_empty() {
            bail!("--texts: expected at least one text");
        }
        if self.max_frames == 0 {
            bail!("--max-frames: expected at least 1");
        }
        for &t in &self.temperatures {
            if !t.is_finite() || t < 0.0 {
                bail!("--temps: expected finite numbers ≥ 0, got {t}");
            }
        }
        let mut t = self.temperatures.clone();
        t.sort_by(f64::total_cmp);
        t.dedup();
        let mut k = self.top_ks.clone();
        k.sort_unstable();
        k.dedup();
        let mut s = self.seeds.clone();
        s.sort_unstable();
        s.dedup();
        if t.len() != self.temperatures.len()
            || k.len() != self.top_ks.len()
            || s.len() != self.seeds.len()
        {
            bail!("--temps, --topk and --seeds must not repeat a value");
        }
        Ok(())
    }

    /// Every job, sorted deterministically: by temperature, top-k, text, seed (each in
    /// ascending order). Shard `i/n` takes the jobs whose index `% n == i − 1`.
    pub fn jobs(&self) -> Vec<Job> {
        let mut temps = self.temperatures.clone();
        temps.sort_by(f64::total_cmp);
        let mut ks = self.top_ks.clone();
        ks.sort_unstable();
        let mut seeds = self.seeds.clone();
        seeds.sort_unstable();
        let mut out = Vec::new();
        for &temperature in &temps {
            for &top_k in &ks {
                for text_index in 0..self.texts.len() {
                    for &seed in &seeds {
                        out.push(Job {
                            temperature,
                            top_k,
                            seed,
                            text_index,
                        });
                    }
                }
            }
        }
        out
    }

    /// Cells in grid order (temperature, then top-k, ascending).
    pub fn cells(&self) -> Vec<(f64, usize)> {
        let mut temps = self.temperatures.clone();
        temps.sort_by(f64::total_cmp);
        let mut ks = self.top_ks.clone();
        ks.sort_unstable();
        temps
            .iter()
            .flat_map(|&t| ks.iter().map(move |&k| (t, k)))
            .collect()
    }
}

/// One cell × seed × text.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub temperature: f64,
    pub top_k: usize,
    pub seed: u64,
    pub text_index: usize,
}

impl Job {
    /// File-name key: `t0.8_k100_x0_s3`.
    pub fn key(&self) -> String {
        format!(
            "t{}_k{}_x{}_s{}",
            self.temperature, self.top_k, self.text_index, self.seed
        )
    }
}

/// `--shard i/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("expected i/n with 1 ≤ i ≤ n (e.g. 2/4), got {s:?}");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (i, n): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || i == 0 || i > n {
            return Err(bad());
        }
        Ok(Shard { index: i, count: n })
    }
}

impl Shard {
    pub fn take(&self, jobs: Vec<Job>) -> Vec<Job> {
        jobs.into_iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index - 1)
            .map(|(_, j)| j)
            .collect()
    }
}

/// Shared-noise metrics of one job (DESIGN §3: any token mismatch is a numerical difference).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SharedMetrics {
    /// The analyzer's token agreement over the comparable steps (up to and including the first
    /// mismatch).
    pub token_agreement: Option<f64>,
    pub steps: usize,
    pub frames_compared: usize,
    /// First frame and codebook where any stage differs; `None`: no divergence.
    pub divergence: Option<[usize; 2]>,
    pub divergence_stage: Option<String>,
    /// Largest |logit A − logit B| over the comparable steps (only when logits are recorded).
    pub max_logit_diff: Option<f64>,
    /// Non-finite values (NaN/Inf) either pipeline produced, as the captures' manifests record
    /// them (`torch: non-finite logits …`); empty when every value was finite.
    #[serde(default)]
    pub nonfinite: Vec<String>,
}

impl SharedMetrics {
    /// The first divergence frame, `frames_compared` (censored) when the runs never diverge.
    pub fn divergence_frame(&self) -> usize {
        self.divergence.map_or(self.frames_compared, |d| d[0])
    }
}

/// Native-noise metrics of one job: the sampled-token histograms of both libraries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NativeMetrics {
    pub hist_intersection: Option<f64>,
    pub jaccard: Option<f64>,
    pub weighted_jaccard: Option<f64>,
    pub kl_hist: Option<f64>,
    pub js_hist: Option<f64>,
    pub chi_square_p: Option<f64>,
    /// (token, count) of the reference and the candidate, ascending token id; pooled per cell.
    pub hist_a: Vec<(i32, u64)>,
    pub hist_b: Vec<(i32, u64)>,
}

/// Everything stored for one finished job (`DIR/jobs/<key>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobResult {
    pub job: Job,
    pub text: String,
    /// Must equal the sweep's spec fields for the result to be reused.
    pub max_frames: usize,
    pub speaker: u32,
    pub dtype: String,
    pub model_sha256: String,
    pub shared: SharedMetrics,
    pub native: NativeMetrics,
    /// Wall time of the two captures and diffs (informational).
    pub seconds: f64,
    /// How an outside candidate's run was judged (absent for the built-in MLX candidate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateInfo>,
}

/// An outside candidate's part of one job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CandidateInfo {
    /// `CandidateSource::describe`.
    pub source: String,
    /// The candidate run's `sampler.noise`.
    pub noise: String,
    /// It used its own noise and was re-scored by the reference before the comparison.
    pub rescored: bool,
}

fn fin(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn sorted_hist(tokens: &[i32]) -> Vec<(i32, u64)> {
    let mut v: Vec<(i32, u64)> = histogram(tokens.iter().copied()).into_iter().collect();
    v.sort_unstable();
    v
}

/// How one job's two captures are made.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub max_frames: usize,
    pub speaker: u32,
    pub dtype: DType,
    /// Logits storage of the shared-noise capture (`None` unless a metric needs logits).
    pub shared_logits: Storage,
    /// Keep the capture directories (`work/<key>/{shared,native}`) after the metrics are stored.
    pub keep_runs: bool,
    /// An outside candidate instead of the built-in MLX pipeline (the loaded backends are then
    /// the reference only).
    pub candidate: Option<CandidateSource>,
}

/// The sha256 of the weights of either model kind.
pub fn model_sha256(model: ModelRef) -> String {
    match model {
        ModelRef::Csm(m) => m.weights.sha256.clone(),
        ModelRef::Llama(m) => m.sha256.clone(),
    }
}

/// How a job is named in errors: its key, text, seed, temperature and top-k.
pub fn job_label(job: &Job, text: &str) -> String {
    format!(
        "sweep job {} (text {} {text:?}, seed {}, temp {}, top-k {})",
        job.key(),
        job.text_index,
        job.seed,
        job.temperature,
        job.top_k
    )
}

/// Runs one job: two captures under `work`, diffed by the analyzer. With `loaded` (reference
/// first) the captures reuse those backends; with `None` each capture loads torch and MLX
/// itself, as `csm-parity capture` does.
pub fn run_job(
    model: ModelRef,
    mut loaded: Option<&mut [LoadedBackend]>,
    job: &Job,
    text: &str,
    settings: &JobSettings,
    work: &Path,
) -> Result<JobResult> {
    let t0 = Instant::now();
    let dir = work.join(job.key());
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    if let Some(c) = &settings.candidate {
        let Some(l) = loaded else {
            bail!("an outside candidate needs the reference backend loaded");
        };
        return run_candidate_job(model, l, job, text, settings, c, &dir, t0);
    }
    let kinds: Vec<BackendKind> = match loaded.as_deref() {
        Some(l) => l.iter().map(|l| l.kind).collect(),
        None => vec![BackendKind::Torch, BackendKind::Mlx],
    };
    let mut cap = |o: &CaptureOptions| -> Result<()> {
        match loaded.as_deref_mut() {
            Some(l) => capture_with(model, o, l)?,
            None => crate::capture_run::capture_model(model, o)?,
        };
        Ok(())
    };
    let opts = |noise: NoiseMode, sub: &str, logits: Storage| {
        job_capture_options(
            job,
            text,
            settings,
            kinds.clone(),
            noise,
            dir.join(sub),
            logits,
        )
    };
    // Metrics only: no bootstrap inside the per-job diffs (the sweep bootstraps over jobs).
    let dopt = DiffOptions {
        resamples: 0,
        ..DiffOptions::default()
    };
    let mut nonfinite = Vec::new();
    let mut diff_of = |sub: &str| -> Result<analysis::Diff> {
        let a = Run::open(&dir.join(sub).join(kinds[0].name()))?;
        let b = Run::open(&dir.join(sub).join(kinds[1].name()))?;
        for r in [&a, &b] {
            let m = r.manifest();
            nonfinite.extend(
                m.warnings
                    .iter()
                    .map(|w| format!("{} ({sub} noise): {w}", m.backend.name)),
            );
        }
        analysis::compare(&a, &b, &dopt)
    };
    cap(&opts(NoiseMode::Shared, "shared", settings.shared_logits)?)?;
    let ds = diff_of("shared")?;
    cap(&opts(NoiseMode::Native, "native", Storage::None)?)?;
    let dn = diff_of("native")?;
    let t = &dn.overall.tokens;
    let result = JobResult {
        job: *job,
        text: text.to_string(),
        max_frames: settings.max_frames,
        speaker: settings.speaker,
        dtype: settings.dtype.name().into(),
        model_sha256: model_sha256(model),
        shared: SharedMetrics {
            token_agreement: fin(ds.overall.token_agreement),
            steps: ds.overall.steps,
            frames_compared: ds.frames_compared,
            divergence: ds.divergence.point.map(|p| [p.frame, p.codebook]),
            divergence_stage: ds.divergence.stage.map(|s| s.name().to_string()),
            max_logit_diff: ds.overall.logits.as_ref().map(|l| l.max_abs.max),
            nonfinite: {
                let mut n = nonfinite;
                n.extend(
                    ds.nonfinite
                        .describe()
                        .into_iter()
                        .map(|w| format!("shared noise: {w}")),
                );
                n
            },
        },
        native: NativeMetrics {
            hist_intersection: fin(t.hist_intersection),
            jaccard: fin(t.jaccard),
            weighted_jaccard: fin(t.weighted_jaccard),
            kl_hist: fin(t.kl_hist),
            js_hist: fin(t.js_hist),
            chi_square_p: t.chi_square.as_ref().and_then(|c| c.p_value.and_then(fin)),
            hist_a: sorted_hist(&dn.steps.tokens_a),
            hist_b: sorted_hist(&dn.steps.tokens_b),
        },
        seconds: t0.elapsed().as_secs_f64(),
        candidate: None,
    };
    if !settings.keep_runs {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(result)
}

/// The capture of one sweep job by `backends` (the first is the reference): independent
/// tracks, no post-processing, probabilities not stored.
fn job_capture_options(
    job: &Job,
    text: &str,
    settings: &JobSettings,
    backends: Vec<BackendKind>,
    noise: NoiseMode,
    out: PathBuf,
    logits: Storage,
) -> Result<CaptureOptions> {
    Ok(CaptureOptions {
        text: text.to_string(),
        speaker: settings.speaker,
        reference: backends[0],
        backends,
        sampler: SamplerSpec::new(job.temperature, job.top_k, noise, job.seed)?,
        max_frames: settings.max_frames,
        mode: Mode::Independent,
        post: PostProcess::None,
        dtype: settings.dtype,
        logits,
        probs: Storage::None,
        out,
        progress: false,
        inject: None,
        chat: false,
        force: false,
        audio: Default::default(),
        codec_fault: None,
    })
}

/// One job with an outside candidate: the reference (the loaded backend, torch) captures with
/// shared noise (f32 logits) and with native noise; the candidate's run comes from its command
/// or its run directory. Shared metrics: the candidate against the reference's shared-noise
/// capture — or, when the candidate used its own noise, against the reference's re-score of it
/// (every step comparable; token agreement is then not measured). Native metrics: the token
/// histograms of the reference's native-noise capture and of the candidate (independent
/// draws either way).
#[allow(clippy::too_many_arguments)]
fn run_candidate_job(
    model: ModelRef,
    loaded: &mut [LoadedBackend],
    job: &Job,
    text: &str,
    settings: &JobSettings,
    source: &CandidateSource,
    dir: &Path,
    t0: Instant,
) -> Result<JobResult> {
    let kind = loaded[0].kind;
    let opts = |noise: NoiseMode, sub: &str, logits: Storage| {
        job_capture_options(
            job,
            text,
            settings,
            vec![kind],
            noise,
            dir.join(sub),
            logits,
        )
    };
    capture_with(
        model,
        &opts(NoiseMode::Shared, "shared", Storage::F32)?,
        loaded,
    )?;
    let reference_dir = run_dir(&dir.join("shared"), kind);
    let prompt_ids = Run::open(&reference_dir)?
        .manifest()
        .prompt
        .token_ids
        .clone();
    let model_dir = model.dir().display().to_string();
    let candidate = match source {
        CandidateSource::Command(t) => run_candidate_cmd(
            t,
            &CandidateJob {
                text,
                seed: job.seed,
                temperature: job.temperature,
                top_k: job.top_k,
                frames: settings.max_frames,
                prompt_ids: &prompt_ids,
                model_dir: &model_dir,
            },
            &dir.join("candidate"),
        )?,
        CandidateSource::Runs(d) => {
            let p = d.join(job.key());
            Run::open(&p).with_context(|| {
                format!(
                    "--candidate-runs {}: no complete run for this job at {}",
                    d.display(),
                    p.display()
                )
            })?
        }
    };
    let s = &candidate.manifest().sampler;
    if s.seed != job.seed
        || s.top_k != job.top_k
        || (s.temperature as f32) != (job.temperature as f32)
    {
        bail!(
            "the candidate run {} was made with seed {} temp {} top-k {}, not the job's seed {} temp {} top-k {}",
            candidate.dir().display(),
            s.seed,
            s.temperature,
            s.top_k,
            job.seed,
            job.temperature,
            job.top_k
        );
    }
    let dopt = DiffOptions {
        resamples: 0,
        ..DiffOptions::default()
    };
    let judged = judge_candidate(
        model,
        &mut loaded[0],
        &reference_dir,
        &candidate,
        &dir.join("rescored"),
        &dopt,
    )?;
    capture_with(
        model,
        &opts(NoiseMode::Native, "native", Storage::None)?,
        loaded,
    )?;
    let native_ref = Run::open(&run_dir(&dir.join("native"), kind))?;
    let dn = analysis::compare(&native_ref, &candidate, &dopt)?;
    let ds = &judged.diff;
    let mut nonfinite: Vec<String> = [&native_ref, &candidate]
        .iter()
        .flat_map(|r| {
            let m = r.manifest();
            m.warnings
                .iter()
                .map(|w| format!("{}: {w}", m.backend.name))
                .collect::<Vec<_>>()
        })
        .collect();
    nonfinite.extend(
        ds.nonfinite
            .describe()
            .into_iter()
            .map(|w| format!("candidate vs reference: {w}")),
    );
    let t = &dn.overall.tokens;
    let result = JobResult {
        job: *job,
        text: text.to_string(),
        max_frames: settings.max_frames,
        speaker: settings.speaker,
        dtype: settings.dtype.name().into(),
        model_sha256: model_sha256(model),
        shared: SharedMetrics {
            token_agreement: if judged.rescored {
                None
            } else {
                fin(ds.overall.token_agreement)
            },
            steps: ds.overall.steps,
            frames_compared: ds.frames_compared,
            divergence: ds.divergence.point.map(|p| [p.frame, p.codebook]),
            divergence_stage: ds.divergence.stage.map(|s| s.name().to_string()),
            max_logit_diff: ds.overall.logits.as_ref().map(|l| l.max_abs.max),
            nonfinite,
        },
        native: NativeMetrics {
            hist_intersection: fin(t.hist_intersection),
            jaccard: fin(t.jaccard),
            weighted_jaccard: fin(t.weighted_jaccard),
            kl_hist: fin(t.kl_hist),
            js_hist: fin(t.js_hist),
            chi_square_p: t.chi_square.as_ref().and_then(|c| c.p_value.and_then(fin)),
            hist_a: sorted_hist(&dn.steps.tokens_a),
            hist_b: sorted_hist(&dn.steps.tokens_b),
        },
        seconds: t0.elapsed().as_secs_f64(),
        candidate: Some(CandidateInfo {
            source: source.describe(),
            noise: judged.noise,
            rescored: judged.rescored,
        }),
    };
    if !settings.keep_runs {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(result)
}

/// The stored result of `job` in `dir`, when present and made with this spec.
pub fn load_job(dir: &Path, spec: &SweepSpec, job: &Job) -> Option<JobResult> {
    let path = job_path(dir, job);
    let bytes = std::fs::read(&path).ok()?;
    let r: JobResult = serde_json::from_slice(&bytes).ok()?;
    let ok = r.job == *job
        && r.text == spec.texts[job.text_index]
        && r.max_frames == spec.max_frames
        && r.speaker == spec.speaker
        && r.dtype == spec.dtype
        && r.model_sha256 == spec.model_sha256
        && r.candidate.as_ref().map(|c| &c.source) == spec.candidate.as_ref();
    ok.then_some(r)
}

pub fn job_path(dir: &Path, job: &Job) -> PathBuf {
    dir.join("jobs").join(format!("{}.json", job.key()))
}

fn store_job(dir: &Path, r: &JobResult) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(r)?;
    bytes.push(b'\n');
    crate::util::write_atomic(&job_path(dir, &r.job), &bytes)
}

/// How to execute the jobs.
#[derive(Debug, Clone)]
pub struct Execution {
    /// Worker threads, each with its own loaded backends (1: sequential).
    pub workers: usize,
    /// Load the backends once per worker and reuse them for every job (false: once per capture,
    /// as `csm-parity capture` does; kept for the benchmark's baseline).
    pub reuse_backends: bool,
    pub progress: bool,
    pub keep_runs: bool,
}

impl Default for Execution {
    fn default() -> Self {
        Execution {
            workers: 1,
            reuse_backends: true,
            progress: false,
            keep_runs: false,
        }
    }
}

/// What a `sweep` invocation did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunStats {
    pub out: String,
    pub shard: Option<Shard>,
    pub jobs_total: usize,
    pub jobs_in_shard: usize,
    pub jobs_reused: usize,
    pub jobs_run: usize,
    pub workers: usize,
    pub wall_s: f64,
}

/// Runs (or reuses) the jobs of `spec` (of one shard when given) into `dir`; returns the stats
/// and, unless sharded, writes the aggregate outputs.
pub fn run_sweep(
    model: &CsmModel,
    spec: &SweepSpec,
    dir: &Path,
    shard: Option<Shard>,
    exec: &Execution,
) -> Result<(RunStats, Option<SweepResult>)> {
    run_sweep_with(ModelRef::Csm(model), spec, dir, shard, exec, None)
}

/// [`run_sweep`] for either model kind, with the built-in MLX pipeline (`candidate` None) or an
/// outside candidate as the pipeline under test (the reference is torch either way).
pub fn run_sweep_with(
    model: ModelRef,
    spec: &SweepSpec,
    dir: &Path,
    shard: Option<Shard>,
    exec: &Execution,
    candidate: Option<&CandidateSource>,
) -> Result<(RunStats, Option<SweepResult>)> {
    spec.validate()?;
    if spec.candidate != candidate.map(|c| c.describe()) {
        bail!("the sweep spec's candidate does not match the candidate given");
    }
    if let Some(CandidateSource::Command(t)) = candidate {
        crate::gate_outside::check_template(t)?;
    }
    if let Some(CandidateSource::Runs(d)) = candidate {
        if !d.is_dir() {
            bail!("--candidate-runs {}: not a directory", d.display());
        }
    }
    let t0 = Instant::now();
    let kinds = match candidate {
        Some(_) => vec![BackendKind::Torch],
        None => vec![BackendKind::Torch, BackendKind::Mlx],
    };
    for k in &kinds {
        if !BackendKind::available().contains(k) {
            bail!(
                "sweep needs the {} backend; this build lacks the `{}` feature (rebuild with default features)",
                k.name(),
                k.name()
            );
        }
    }
    std::fs::create_dir_all(dir.join("jobs"))
        .with_context(|| format!("--out {}: cannot create", dir.display()))?;
    write_spec(dir, spec)?;
    let all = spec.jobs();
    let total = all.len();
    let mine = match shard {
        Some(s) => s.take(all),
        None => all,
    };
    let in_shard = mine.len();
    let todo: Vec<Job> = mine
        .into_iter()
        .filter(|j| load_job(dir, spec, j).is_none())
        .collect();
    let reused = in_shard - todo.len();
    let dtype: DType = spec.dtype.parse()?;
    let settings = JobSettings {
        max_frames: spec.max_frames,
        speaker: spec.speaker,
        dtype,
        shared_logits: Storage::None,
        keep_runs: exec.keep_runs,
        candidate: candidate.cloned(),
    };
    let bar = progress_bar(exec.progress, in_shard as u64, reused as u64);
    let work = dir.join("work");
    let workers = exec.workers.clamp(1, todo.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = |_: usize| -> Result<()> {
        let mut loaded: Option<Vec<LoadedBackend>> = None;
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(job) = todo.get(i) else {
                return Ok(());
            };
            if loaded.is_none() && (exec.reuse_backends || candidate.is_some()) {
                loaded = Some(load_backends(model, &kinds, dtype)?);
            }
            let text = &spec.texts[job.text_index];
            let r = run_job(model, loaded.as_deref_mut(), job, text, &settings, &work)
                .with_context(|| job_label(job, text))?;
            store_job(dir, &r)?;
            bar.inc(1);
        }
    };
    if workers <= 1 {
        worker(0)?;
    } else {
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let worker = &worker;
                    s.spawn(move || worker(w))
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a sweep worker panicked"))??;
            }
            Ok(())
        })?;
    }
    bar.finish_and_clear();
    if !exec.keep_runs {
        let _ = std::fs::remove_dir(&work);
    }
    let stats = |wall_s| RunStats {
        out: dir.display().to_string(),
        shard,
        jobs_total: total,
        jobs_in_shard: in_shard,
        jobs_reused: reused,
        jobs_run: in_shard - reused,
        workers,
        wall_s,
    };
    if shard.is_some() {
        return Ok((stats(t0.elapsed().as_secs_f64()), None));
    }
    let result = aggregate(spec, &collect(dir, spec)?)?;
    let st = stats(t0.elapsed().as_secs_f64());
    output::write_all(dir, &result, Some(&st))?;
    Ok((st, Some(result)))
}

fn progress_bar(enabled: bool, len: u64, done: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() || len == 0 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} sweep jobs {pos}/{len} (cell × seed × text) {wide_bar} {elapsed_precise} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(done);
    bar
}

pub fn spec_path(dir: &Path) -> PathBuf {
    dir.join("spec.json")
}

fn write_spec(dir: &Path, spec: &SweepSpec) -> Result<()> {
    let path = spec_path(dir);
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(old) = serde_json::from_slice::<SweepSpec>(&bytes) {
            if old == *spec {
                return Ok(());
            }
        }
    }
    let mut bytes = serde_json::to_vec_pretty(spec)?;
    bytes.push(b'\n');
    crate::util::write_atomic(&path, &bytes)
}

pub fn read_spec(dir: &Path) -> Result<SweepSpec> {
    let path = spec_path(dir);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "{}: not a sweep directory (no spec.json; run `csm-parity sweep --out {}` first)",
            dir.display(),
            dir.display()
        )
    })?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a valid sweep spec", path.display()))
}

/// Every job result of `spec` stored in `dir`, in job order; errors naming the missing jobs.
pub fn collect(dir: &Path, spec: &SweepSpec) -> Result<Vec<JobResult>> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for j in spec.jobs() {
        match load_job(dir, spec, &j) {
            Some(r) => out.push(r),
            None => missing.push(j.key()),
        }
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(8).map(|s| s.as_str()).collect();
        bail!(
            "{}: {} of {} jobs missing ({}{}) — run the missing shards, or `csm-parity sweep` on this directory to finish it",
            dir.display(),
            missing.len(),
            out.len() + missing.len(),
            shown.join(", "),
            if missing.len() > 8 { ", …" } else { "" }
        );
    }
    Ok(out)
}

/// `sweep merge DIR... --out OUT`: checks the specs agree, copies every job result into OUT,
/// aggregates and writes the outputs. Errors when a job is missing from every input.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<SweepResult> {
    if dirs.is_empty() {
        bail!("sweep merge: expected at least one shard directory");
    }
    let spec = read_spec(&dirs[0])?;
    for d in &dirs[1..] {
        let s = read_spec(d)?;
        if s != spec {
            bail!(
                "{} and {}: different sweep specs (grid, seeds, texts, frames, dtype or model differ); only shards of one sweep can be merged",
                dirs[0].display(),
                d.display()
            );
        }
    }
    std::fs::create_dir_all(out.join("jobs"))
        .with_context(|| format!("--out {}: cannot create", out.display()))?;
    write_spec(out, &spec)?;
    for job in spec.jobs() {
        if load_job(out, &spec, &job).is_some() {
            continue;
        }
        if let Some(r) = dirs.iter().find_map(|d| load_job(d, &spec, &job)) {
            store_job(out, &r)?;
        }
    }
    let result = aggregate(&spec, &collect(out, &spec)?)?;
    output::write_all(out, &result, None)?;
    Ok(result)
}

/// Aggregated metrics of one cell.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CellResult {
    pub temperature: f64,
    pub top_k: usize,
    pub jobs: usize,
    /// Shared noise: mean token agreement over jobs, bootstrap CI over jobs.
    pub token_agreement: Option<Estimate>,
    /// Shared noise: mean first divergence frame (a job that never diverges counts as
    /// `max_frames`), bootstrap CI.
    pub divergence_frame: Option<Estimate>,
    /// Jobs whose shared-noise runs diverged.
    pub diverged_jobs: usize,
    /// Native noise: per-job histogram metrics, mean over jobs with bootstrap CI.
    pub hist_intersection: Option<Estimate>,
    pub jaccard: Option<Estimate>,
    pub kl_hist: Option<Estimate>,
    pub js_hist: Option<Estimate>,
    /// Native noise: the tokens of all jobs of the cell pooled into one histogram per library.
    pub pooled: Pooled,
    /// Same-library noise floor: histogram intersection of one library's runs with different
    /// seeds (same text), both libraries averaged — what sampling noise alone gives.
    pub noise_floor: Option<Estimate>,
    /// The cross-library histogram intersection on the same seed pairs (different seeds).
    pub cross_library: Option<Estimate>,
    /// Parity gap = noise floor − cross-library intersection, per (text, seed), mean with a
    /// Bonferroni-adjusted bootstrap CI (level 1 − 0.05/cells). > 0: the libraries differ
    /// more than two seeds of one library do.
    pub gap: Option<Estimate>,
    /// The gap's CI lies above 0: the libraries are distinguishable in this cell.
    pub above_noise_floor: Option<bool>,
    /// 1 = best; cells that cannot be told apart share a rank.
    pub rank: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Pooled {
    pub tokens_a: u64,
    pub tokens_b: u64,
    pub hist_intersection: Option<f64>,
    pub jaccard: Option<f64>,
    pub kl_hist: Option<f64>,
    pub js_hist: Option<f64>,
    /// Chi-square homogeneity test of the pooled histograms (low p: the libraries' token
    /// distributions differ beyond sampling noise).
    pub chi_square_p: Option<f64>,
    pub chi_square_df: Option<usize>,
}

/// The best cell and whether it beats the runner-up beyond noise.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Best {
    pub temperature: f64,
    pub top_k: usize,
    /// Every cell tied for best (rank 1), grid order.
    pub tied: Vec<(f64, usize)>,
    /// No cell's parity gap is significantly above the same-library noise floor.
    pub all_within_noise_floor: bool,
    /// The first cell ranked below the tied best, if any.
    pub runner_up: Option<(f64, usize)>,
    /// The best cell's parity gap (noise floor − cross-library intersection).
    pub difference: Option<Estimate>,
    /// True when the best cell itself is above the noise floor.
    pub significant: bool,
    pub sentence: String,
}

/// The deterministic result of a sweep (equal for a sharded and an unsharded run).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SweepResult {
    pub spec: SweepSpec,
    pub criterion: String,
    pub level: f64,
    pub resamples: usize,
    /// Cells in grid order (temperature, then top-k).
    pub cells: Vec<CellResult>,
    /// Indices into `cells`, best first.
    pub ranking: Vec<usize>,
    pub best: Best,
}

/// The ranking criterion, as written into every output.
pub const CRITERION: &str = "Under native noise two runs of one library with different seeds already differ; that same-library noise floor is measured per cell (histogram intersection of one library's runs with different seeds, same text, both libraries averaged) and compared with the cross-library intersection on the same seed pairs. A cell's parity gap is floor − cross per (text, seed); a cell is above the noise floor when the bootstrap CI of its mean gap, Bonferroni-adjusted over the cells, lies above 0. Cells within the noise floor share rank 1 (the libraries cannot be told apart there); cells above it rank after them by mean gap, smaller first, and share a rank while the paired (same seed and text) difference to the first cell of their group is not significant (Bonferroni-adjusted). Ties are ties: no grid order decides. Needs at least 2 seeds per text for the noise floor and at least 5 (text, seed) units per cell for the interval the test rests on.";

fn mean_ci(xs: &[f64], seed: u64) -> Option<Estimate> {
    mean_ci_at(xs, seed, LEVEL)
}

fn mean_ci_at(xs: &[f64], seed: u64, level: f64) -> Option<Estimate> {
    if xs.is_empty() {
        return None;
    }
    bootstrap(xs.len(), RESAMPLES, level, seed, |idx| {
        idx.iter().map(|&i| xs[i]).sum::<f64>() / idx.len() as f64
    })
}

fn hist_map(h: &[(i32, u64)]) -> HashMap<i32, u64> {
    h.iter().copied().collect()
}

fn hi(a: &HashMap<i32, u64>, b: &HashMap<i32, u64>) -> f64 {
    token_dist(a, b, 0).hist_intersection
}

/// Per (text, seed) of a cell: ((text, seed), same-library floor, cross-library intersection),
/// both averaged over the other seeds s′ of the same text: floor = mean of HI(T_s, T_s′) and
/// HI(M_s, M_s′); cross = mean of HI(T_s, M_s′) and HI(M_s, T_s′) (different seeds on both
/// sides, so the comparison with the floor is like for like). Empty with fewer than 2 seeds.
pub fn floor_units(rs: &[&JobResult]) -> Vec<((usize, u64), f64, f64)> {
    let mut out = Vec::new();
    let mut texts: Vec<usize> = rs.iter().map(|r| r.job.text_index).collect();
    texts.sort_unstable();
    texts.dedup();
    for x in texts {
        let mut js: Vec<&&JobResult> = rs.iter().filter(|r| r.job.text_index == x).collect();
        js.sort_by_key(|r| r.job.seed);
        let h: Vec<(HashMap<i32, u64>, HashMap<i32, u64>)> = js
            .iter()
            .map(|r| (hist_map(&r.native.hist_a), hist_map(&r.native.hist_b)))
            .collect();
        if h.len() < 2 {
            continue;
        }
        for i in 0..h.len() {
            let (mut fl, mut cr, mut n) = (0f64, 0f64, 0f64);
            for j in 0..h.len() {
                if i == j {
                    continue;
                }
                fl += (hi(&h[i].0, &h[j].0) + hi(&h[i].1, &h[j].1)) / 2.0;
                cr += (hi(&h[i].0, &h[j].1) + hi(&h[i].1, &h[j].0)) / 2.0;
                n += 1.0;
            }
            if fl.is_finite() && cr.is_finite() {
                out.push(((x, js[i].job.seed), fl / n, cr / n));
            }
        }
    }
    out
}

/// Whether cell `b`'s gap differs from cell `a`'s: paired over (text, seed), bootstrap CI of
/// the mean difference at `level` excludes 0.
fn paired_significant(results: &[JobResult], a: &CellResult, b: &CellResult, level: f64) -> bool {
    let units = |c: &CellResult| -> BTreeMap<(usize, u64), f64> {
        let rs: Vec<&JobResult> = results
            .iter()
            .filter(|r| r.job.temperature == c.temperature && r.job.top_k == c.top_k)
            .collect();
        floor_units(&rs)
            .into_iter()
            .map(|(k, f, x)| (k, f - x))
            .collect()
    };
    let (ua, ub) = (units(a), units(b));
    let d: Vec<f64> = ua
        .iter()
        .filter_map(|(k, v)| ub.get(k).map(|w| w - v))
        .collect();
    mean_ci_at(&d, BOOT_SEED ^ 0xD1FF, level)
        .is_some_and(|e| e.has_ci() && (e.ci_low > ZERO_TOL || e.ci_high < -ZERO_TOL))
}

/// Pools the native-noise token histograms of `rs` and compares them (the analyzer's `token_dist`).
pub fn pooled_of(rs: &[&JobResult]) -> Pooled {
    let mut ha: HashMap<i32, u64> = HashMap::new();
    let mut hb: HashMap<i32, u64> = HashMap::new();
    for r in rs {
        for &(t, n) in &r.native.hist_a {
            *ha.entry(t).or_insert(0) += n;
        }
        for &(t, n) in &r.native.hist_b {
            *hb.entry(t).or_insert(0) += n;
        }
    }
    let d = token_dist(&ha, &hb, 0);
    Pooled {
        tokens_a: d.count_a,
        tokens_b: d.count_b,
        hist_intersection: fin(d.hist_intersection),
        jaccard: fin(d.jaccard),
        kl_hist: fin(d.kl_hist),
        js_hist: fin(d.js_hist),
        chi_square_p: d.chi_square.as_ref().and_then(|c| c.p_value.and_then(fin)),
        chi_square_df: d.chi_square.as_ref().map(|c| c.df),
    }
}

/// Aggregates job results (every job of `spec`) into cells, ranking and best cell.
pub fn aggregate(spec: &SweepSpec, results: &[JobResult]) -> Result<SweepResult> {
    let mut by_cell: BTreeMap<(u64, usize), Vec<&JobResult>> = BTreeMap::new();
    for r in results {
        by_cell
            .entry((r.job.temperature.to_bits(), r.job.top_k))
            .or_default()
            .push(r);
    }
    let mut cells = Vec::new();
    for (ci, (t, k)) in spec.cells().into_iter().enumerate() {
        let rs = by_cell.remove(&(t.to_bits(), k)).unwrap_or_default();
        if rs.is_empty() {
            bail!("sweep: no job results for cell temp {t} top-k {k}");
        }
        let seed = BOOT_SEED ^ ((ci as u64) << 8);
        let vals = |f: &dyn Fn(&JobResult) -> Option<f64>| -> Vec<f64> {
            rs.iter().filter_map(|r| f(r)).collect()
        };
        cells.push(CellResult {
            temperature: t,
            top_k: k,
            jobs: rs.len(),
            token_agreement: mean_ci(&vals(&|r| r.shared.token_agreement), seed + 1),
            divergence_frame: mean_ci(
                &vals(&|r| Some(r.shared.divergence_frame() as f64)),
                seed + 2,
            ),
            diverged_jobs: rs.iter().filter(|r| r.shared.divergence.is_some()).count(),
            hist_intersection: mean_ci(&vals(&|r| r.native.hist_intersection), seed + 3),
            jaccard: mean_ci(&vals(&|r| r.native.jaccard), seed + 4),
            kl_hist: mean_ci(&vals(&|r| r.native.kl_hist), seed + 5),
            js_hist: mean_ci(&vals(&|r| r.native.js_hist), seed + 6),
            pooled: pooled_of(&rs),
            noise_floor: None,
            cross_library: None,
            gap: None,
            above_noise_floor: None,
            rank: 0,
        });
    }
    let m = cells.len();
    let level = 1.0 - (1.0 - LEVEL) / m.max(1) as f64;
    for (ci, c) in cells.iter_mut().enumerate() {
        let rs: Vec<&JobResult> = results
            .iter()
            .filter(|r| r.job.temperature == c.temperature && r.job.top_k == c.top_k)
            .collect();
        let units = floor_units(&rs);
        let seed = BOOT_SEED ^ ((ci as u64) << 8) ^ 0xF1;
        let floors: Vec<f64> = units.iter().map(|u| u.1).collect();
        let crosses: Vec<f64> = units.iter().map(|u| u.2).collect();
        let gaps: Vec<f64> = units.iter().map(|u| u.1 - u.2).collect();
        c.noise_floor = mean_ci(&floors, seed + 1);
        c.cross_library = mean_ci(&crosses, seed + 2);
        c.gap = mean_ci_at(&gaps, seed + 3, level);
        c.above_noise_floor = c
            .gap
            .as_ref()
            .filter(|g| g.has_ci())
            .map(|g| g.ci_low > ZERO_TOL);
    }
    // Within the floor (or not measurable) first, all tied; then the others by mean gap.
    let gap_of = |c: &CellResult| c.gap.as_ref().map_or(f64::NAN, |g| g.value);
    let mut ranking: Vec<usize> = (0..cells.len()).collect();
    ranking.sort_by(|&i, &j| {
        let (a, b) = (&cells[i], &cells[j]);
        let above = |c: &CellResult| c.above_noise_floor == Some(true);
        above(a)
            .cmp(&above(b))
            .then(if above(a) {
                gap_of(a).total_cmp(&gap_of(b))
            } else {
                std::cmp::Ordering::Equal
            })
            .then(i.cmp(&j))
    });
    let mut rank = 1;
    let mut leader: Option<usize> = None;
    for (pos, &i) in ranking.iter().enumerate() {
        let above = cells[i].above_noise_floor == Some(true);
        if !above {
            cells[i].rank = 1;
            continue;
        }
        let tied = match leader {
            Some(l) => !paired_significant(results, &cells[l], &cells[i], level),
            None => false,
        };
        if !tied {
            rank = pos + 1;
            leader = Some(i);
        }
        cells[i].rank = rank;
    }
    let best = best_cell(&cells, &ranking, results);
    Ok(SweepResult {
        spec: spec.clone(),
        criterion: CRITERION.into(),
        level: LEVEL,
        resamples: RESAMPLES,
        cells,
        ranking,
        best,
    })
}

/// Why no cell could be tested against the noise floor. The floor needs two seeds of one text;
/// the test needs a bootstrap interval of the mean parity gap, which needs at least
/// [`MIN_GROUPS`](crate::analysis::stats::MIN_GROUPS) (text, seed) units per cell.
fn unmeasurable_reason(cells: &[CellResult]) -> String {
    let need = crate::analysis::stats::MIN_GROUPS;
    let units = cells
        .iter()
        .filter_map(|c| c.gap.as_ref().map(|g| g.groups))
        .max();
    match units {
        None => format!(
            "the same-library noise floor needs at least 2 seeds per text, and the test against it at least {need} (text, seed) units per cell (its confidence interval is a bootstrap over those units)"
        ),
        Some(n) => format!(
            "the test against the noise floor needs a confidence interval of the parity gap, a bootstrap over (text, seed) units that needs at least {need} per cell; this sweep has {n} (seeds × texts): use at least {need} seeds, or more texts"
        ),
    }
}

fn best_cell(cells: &[CellResult], ranking: &[usize], _results: &[JobResult]) -> Best {
    let num = |x: f64| crate::report::num(if x.abs() < ZERO_TOL { 0.0 } else { x });
    let b = &cells[ranking[0]];
    let tied: Vec<(f64, usize)> = cells
        .iter()
        .filter(|c| c.rank == 1)
        .map(|c| (c.temperature, c.top_k))
        .collect();
    let measurable = cells.iter().any(|c| c.above_noise_floor.is_some());
    let all_within = measurable && cells.iter().all(|c| c.above_noise_floor != Some(true));
    let runner_up = ranking
        .iter()
        .map(|&i| &cells[i])
        .find(|c| c.rank > 1)
        .map(|c| (c.temperature, c.top_k));
    let list = |v: &[(f64, usize)]| {
        v.iter()
            .map(|(t, k)| format!("temp {t} top-k {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let gap_txt = |c: &CellResult| match &c.gap {
        Some(g) if g.has_ci() => format!(
            "parity gap {} [{}, {}]",
            num(g.value),
            num(g.ci_low),
            num(g.ci_high)
        ),
        Some(g) => format!("parity gap {} (no CI)", num(g.value)),
        None => "parity gap –".into(),
    };
    let sentence = if cells.len() == 1 {
        format!(
            "Only one cell (temp {}, top-k {}): nothing to compare; {}.",
            b.temperature,
            b.top_k,
            match b.above_noise_floor {
                Some(true) => "its libraries differ beyond the same-library noise floor".into(),
                Some(false) => "it is within the same-library noise floor".into(),
                None => format!(
                    "not tested against the noise floor: {}",
                    unmeasurable_reason(cells)
                ),
            }
        )
    } else if !measurable {
        format!(
            "No ranking: {}; every cell is tied.",
            unmeasurable_reason(cells)
        )
    } else if all_within {
        format!(
            "Every setting is within the noise floor: at no cell do the two libraries' token distributions differ more than two seeds of one library do ({}% CIs, Bonferroni-adjusted over {} cells); no setting is better than another.",
            (LEVEL * 100.0).round(),
            cells.len()
        )
    } else if tied.iter().all(|t| {
        cells
            .iter()
            .any(|c| (c.temperature, c.top_k) == *t && c.above_noise_floor != Some(true))
    }) {
        format!(
            "Best (tied, within the noise floor): {}. Above the noise floor: {}.",
            list(&tied),
            cells
                .iter()
                .filter(|c| c.above_noise_floor == Some(true))
                .map(|c| format!("temp {} top-k {} ({})", c.temperature, c.top_k, gap_txt(c)))
                .collect::<Vec<_>>()
                .join("; ")
        )
    } else {
        format!(
            "Every cell is above the noise floor; smallest parity gap{}: {} ({}).",
            if tied.len() > 1 { " (tied)" } else { "" },
            list(&tied),
            gap_txt(b)
        )
    };
    Best {
        temperature: b.temperature,
        top_k: b.top_k,
        tied,
        all_within_noise_floor: all_within,
        runner_up,
        difference: b.gap.clone(),
        significant: b.above_noise_floor == Some(true),
        sentence,
    }
}

/// Parses `--seeds`: `N` (seeds 0..N), `A..B` (half-open) or a list `1,5,9`.
pub fn parse_seeds(s: &str) -> std::result::Result<Vec<u64>, String> {
    let s = s.trim();
    let bad = || format!("expected N (seeds 0..N), A..B or a list like 1,5,9; got {s:?}");
    if let Some((a, b)) = s.split_once("..") {
        let a: u64 = a.trim().parse().map_err(|_| bad())?;
        let b: u64 = b.trim().parse().map_err(|_| bad())?;
        if b <= a {
            return Err(format!("{s:?}: the range A..B must have A < B"));
        }
        return Ok((a..b).collect());
    }
    if s.contains(',') {
        return s
            .split(',')
            .map(|x| x.trim().parse::<u64>().map_err(|_| bad()))
            .collect();
    }
    let n: u64 = s.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err("expected at least one seed, got 0".into());
    }
    Ok((0..n).collect())
}

/// Reads `--texts FILE`: one text per line; blank lines and lines starting with `#` skipped.
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("--texts {}: cannot read", path.display()))?;
    let texts: Vec<String> = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if texts.is_empty() {
        bail!(
            "--texts {}: expected one text per line, found none",
            path.display()
        );
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(temps: &[f64], ks: &[usize], seeds: u64) -> SweepSpec {
        SweepSpec {
            temperatures: temps.to_vec(),
            top_ks: ks.to_vec(),
            seeds: (0..seeds).collect(),
            texts: vec!["t".into()],
            max_frames: 40,
            speaker: 0,
            dtype: "f32".into(),
            model_sha256: "x".into(),
            model_path: "m".into(),
            candidate: None,
        }
    }

    /// A histogram of 200 draws from token ids `lo..lo+width` (uniform, keyed by `key`).
    fn hist(key: u64, lo: i32, width: u64) -> Vec<(i32, u64)> {
        let mut rng = crate::rng::SplitMix64::new(key);
        let mut h: BTreeMap<i32, u64> = BTreeMap::new();
        for _ in 0..200 {
            *h.entry(lo + (rng.next_u64() % width) as i32).or_default() += 1;
        }
        h.into_iter().collect()
    }

    /// Job results whose candidate draws from tokens shifted by `shift` (0: same distribution).
    fn results(sp: &SweepSpec, shift: impl Fn(f64, usize) -> i32) -> Vec<JobResult> {
        sp.jobs()
            .into_iter()
            .map(|job| {
                let key = job.seed * 1000 + (job.temperature * 10.0) as u64 * 7 + job.top_k as u64;
                JobResult {
                    job,
                    text: "t".into(),
                    max_frames: 40,
                    speaker: 0,
                    dtype: "f32".into(),
                    model_sha256: "x".into(),
                    shared: SharedMetrics {
                        token_agreement: Some(1.0),
                        steps: 10,
                        frames_compared: 40,
                        divergence: None,
                        divergence_stage: None,
                        max_logit_diff: None,
                        nonfinite: vec![],
                    },
                    native: NativeMetrics {
                        hist_intersection: Some(0.5),
                        jaccard: Some(0.5),
                        weighted_jaccard: Some(0.5),
                        kl_hist: Some(0.1),
                        js_hist: Some(0.1),
                        chi_square_p: None,
                        hist_a: hist(key, 0, 30),
                        hist_b: hist(key ^ 0xBEEF, shift(job.temperature, job.top_k), 30),
                    },
                    seconds: 0.0,
                    candidate: None,
                }
            })
            .collect()
    }

    /// Identical settings (top-k 50 and 100 give the same numbers) and libraries that sample
    /// the same distribution: every cell is tied and within the noise floor; grid order
    /// decides nothing.
    #[test]
    fn within_the_noise_floor_everything_ties() {
        let sp = spec(&[0.6, 0.8], &[50, 100], 8);
        let r = aggregate(&sp, &results(&sp, |_, _| 0)).unwrap();
        assert!(
            r.cells.iter().all(|c| c.rank == 1),
            "{:?}",
            r.cells.iter().map(|c| (c.rank, &c.gap)).collect::<Vec<_>>()
        );
        assert!(r.cells.iter().all(|c| c.above_noise_floor == Some(false)));
        assert!(r.best.all_within_noise_floor);
        assert_eq!(r.best.tied.len(), 4);
        assert!(
            r.best
                .sentence
                .starts_with("Every setting is within the noise floor"),
            "{}",
            r.best.sentence
        );
        let f = r.cells[0].noise_floor.as_ref().unwrap();
        assert!(f.value > 0.3 && f.value < 0.95, "{f:?}");
        // The outputs show the floor and the gap; heatmap colours use fixed ranges.
        assert!(output::terminal(&r).contains("noise floor"));
        assert!(output::markdown_table(&r).contains("parity gap"));
        let csv = output::csv(&r);
        assert!(csv.lines().next().unwrap().ends_with("above_noise_floor"));
        assert!(!csv.contains("NaN"));
        assert_eq!(output::fixed_range("hist_intersection", 40), (0.0, 1.0));
        assert_eq!(output::fixed_range("divergence_frame", 40), (0.0, 40.0));
    }

    /// A cell whose candidate samples other tokens is above the floor and ranks after the
    /// cells within it.
    #[test]
    fn a_cell_above_the_noise_floor_ranks_last() {
        let sp = spec(&[0.6, 0.8], &[50], 8);
        let r = aggregate(&sp, &results(&sp, |t, _| if t == 0.8 { 15 } else { 0 })).unwrap();
        let c6 = r.cells.iter().find(|c| c.temperature == 0.6).unwrap();
        let c8 = r.cells.iter().find(|c| c.temperature == 0.8).unwrap();
        assert_eq!(c8.above_noise_floor, Some(true), "{:?}", c8.gap);
        assert_eq!(c6.above_noise_floor, Some(false), "{:?}", c6.gap);
        assert_eq!((c6.rank, c8.rank), (1, 2));
        assert!(!r.best.all_within_noise_floor);
        assert_eq!((r.best.temperature, r.best.top_k), (0.6, 50));
        assert!(
            r.best.sentence.contains("within the noise floor"),
            "{}",
            r.best.sentence
        );
    }

    /// Four seeds measure the noise floor but give no interval (fewer than 5 units): the
    /// sweep says that, not "needs 2 seeds".
    #[test]
    fn too_few_units_for_an_interval_say_what_is_needed() {
        let sp = spec(&[0.6, 0.8], &[50], 4);
        let r = aggregate(&sp, &results(&sp, |_, _| 0)).unwrap();
        assert!(r.cells.iter().all(|c| c.noise_floor.is_some()));
        assert!(r.cells.iter().all(|c| c.above_noise_floor.is_none()));
        let s = &r.best.sentence;
        assert!(s.starts_with("No ranking:"), "{s}");
        assert!(
            s.contains("at least 5 per cell") && s.contains("this sweep has 4"),
            "{s}"
        );
        assert!(!s.contains("2 seeds"), "{s}");
        let sp = spec(&[0.6, 0.8], &[50], 1);
        let r = aggregate(&sp, &results(&sp, |_, _| 0)).unwrap();
        let s = &r.best.sentence;
        assert!(
            s.contains("at least 2 seeds per text") && s.contains("at least 5"),
            "{s}"
        );
    }

    #[test]
    fn seeds_and_shards_parse() {
        assert_eq!(parse_seeds("3").unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_seeds("2..5").unwrap(), vec![2, 3, 4]);
        assert_eq!(parse_seeds("7, 1").unwrap(), vec![7, 1]);
        assert!(parse_seeds("5..2").is_err() && parse_seeds("x").is_err());
        let s: Shard = "2/3".parse().unwrap();
        assert_eq!(
            s.take(
                (0..7)
                    .map(|i| i as f64)
                    .map(|t| Job {
                        temperature: t,
                        top_k: 1,
                        seed: 0,
                        text_index: 0
                    })
                    .collect()
            )
            .len(),
            2
        );
        assert!("0/3".parse::<Shard>().is_err() && "4/3".parse::<Shard>().is_err());
    }
}
