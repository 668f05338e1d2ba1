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
    capture_with, load_backends, CaptureOptions, LoadedBackend, Mode, ModelRef,
};
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
}

/// Runs one job: two captures under `work`, diffed by the analyzer. With `loaded` (reference
/// first) the captures reuse those backends; with `None` each capture loads torch and MLX
/// itself, as `csm-parity capture` does.
pub fn run_job(
    model: &CsmModel,
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
    let kinds: Vec<BackendKind> = match loaded.as_deref() {
        Some(l) => l.iter().map(|l| l.kind).collect(),
        None => vec![BackendKind::Torch, BackendKind::Mlx],
    };
    let mut cap = |o: &CaptureOptions| -> Result<()> {
        match loaded.as_deref_mut() {
            Some(l) => capture_with(ModelRef::Csm(model), o, l)?,
            None => crate::capture_run::capture(model, o)?,
        };
        Ok(())
    };
    let opts = |noise: NoiseMode, sub: &str, logits: Storage| -> Result<CaptureOptions> {
        Ok(CaptureOptions {
            text: text.to_string(),
            speaker: settings.speaker,
            backends: kinds.clone(),
            reference: kinds[0],
            sampler: SamplerSpec::new(job.temperature, job.top_k, noise, job.seed)?,
            max_frames: settings.max_frames,
            mode: Mode::Independent,
            post: PostProcess::None,
            dtype: settings.dtype,
            logits,
            probs: Storage::None,
            out: dir.join(sub),
            progress: false,
            inject: None,
            chat: false,
            force: false,
        })
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
        model_sha256: model.weights.sha256.clone(),
        shared: SharedMetrics {
            token_agreement: fin(ds.overall.token_agreement),
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
            chi_square_p: t.chi_square.as_ref().and_then(|c| fin(c.p_value)),
            hist_a: sorted_hist(&dn.steps.tokens_a),
            hist_b: sorted_hist(&dn.steps.tokens_b),
        },
        seconds: t0.elapsed().as_secs_f64(),
    };
    if !settings.keep_runs {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
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
        && r.model_sha256 == spec.model_sha256;
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
    spec.validate()?;
    let t0 = Instant::now();
    let kinds = vec![BackendKind::Torch, BackendKind::Mlx];
    for k in &kinds {
        if !BackendKind::available().contains(k) {
            bail!(
                "sweep needs both backends; this build lacks the `{}` feature (rebuild with default features)",
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
            if loaded.is_none() && exec.reuse_backends {
                loaded = Some(load_backends(ModelRef::Csm(model), &kinds, dtype)?);
            }
            let r = run_job(
                model,
                loaded.as_deref_mut(),
                job,
                &spec.texts[job.text_index],
                &settings,
                &work,
            )
            .with_context(|| format!("sweep job {}", job.key()))?;
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
    /// 1 = best by the ranking criterion.
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
    pub runner_up: Option<(f64, usize)>,
    /// Paired difference best − runner-up of the per-job histogram intersection (jobs matched
    /// by seed and text), bootstrap CI.
    pub difference: Option<Estimate>,
    /// True when the CI of the difference lies above 0.
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
pub const CRITERION: &str = "Cells are ranked by the mean histogram intersection of the two libraries' sampled tokens under native noise (distribution similarity, higher is better); ties are broken by higher shared-noise token agreement, then lower histogram KL, then the smaller temperature and top-k. The best cell is called significantly better when the 95% bootstrap CI of its paired per-job difference (same seed and text) to the runner-up lies above 0.";

fn mean_ci(xs: &[f64], seed: u64) -> Option<Estimate> {
    if xs.is_empty() {
        return None;
    }
    bootstrap(xs.len(), RESAMPLES, LEVEL, seed, |idx| {
        idx.iter().map(|&i| xs[i]).sum::<f64>() / idx.len() as f64
    })
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
        chi_square_p: d.chi_square.as_ref().and_then(|c| fin(c.p_value)),
        chi_square_df: d.chi_square.as_ref().map(|c| c.df),
    }
}

fn est_value(e: &Option<Estimate>) -> f64 {
    e.as_ref().map_or(f64::NAN, |e| e.value)
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
            rank: 0,
        });
    }
    let mut ranking: Vec<usize> = (0..cells.len()).collect();
    let key = |c: &CellResult| {
        (
            est_value(&c.hist_intersection),
            est_value(&c.token_agreement),
            est_value(&c.kl_hist),
        )
    };
    ranking.sort_by(|&i, &j| {
        let (a, b) = (key(&cells[i]), key(&cells[j]));
        // NaN ranks last.
        let desc = |x: f64, y: f64| y.is_nan().cmp(&x.is_nan()).reverse().then(y.total_cmp(&x));
        desc(a.0, b.0)
            .then(desc(a.1, b.1))
            .then(a.2.total_cmp(&b.2))
            .then(i.cmp(&j))
    });
    for (r, &i) in ranking.iter().enumerate() {
        cells[i].rank = r + 1;
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

fn best_cell(cells: &[CellResult], ranking: &[usize], results: &[JobResult]) -> Best {
    // Sums of equal per-job values can leave ±1e-17 residues: treat |x| < 1e-9 as 0.
    let num = |x: f64| crate::report::num(if x.abs() < ZERO_TOL { 0.0 } else { x });
    let b = &cells[ranking[0]];
    let Some(&ri) = ranking.get(1) else {
        return Best {
            temperature: b.temperature,
            top_k: b.top_k,
            runner_up: None,
            difference: None,
            significant: false,
            sentence: format!(
                "Only one cell (temp {}, top-k {}): nothing to compare.",
                b.temperature, b.top_k
            ),
        };
    };
    let r = &cells[ri];
    let per = |t: f64, k: usize| -> BTreeMap<(u64, usize), f64> {
        results
            .iter()
            .filter(|x| x.job.temperature == t && x.job.top_k == k)
            .filter_map(|x| {
                x.native
                    .hist_intersection
                    .map(|v| ((x.job.seed, x.job.text_index), v))
            })
            .collect()
    };
    let (pb, pr) = (per(b.temperature, b.top_k), per(r.temperature, r.top_k));
    let diffs: Vec<f64> = pb
        .iter()
        .filter_map(|(key, v)| pr.get(key).map(|w| v - w))
        .collect();
    let difference = mean_ci(&diffs, BOOT_SEED ^ 0xD1FF);
    let significant = difference.as_ref().is_some_and(|d| d.ci_low > ZERO_TOL);
    let sentence = match &difference {
        Some(d) if significant => format!(
            "Best: temp {} top-k {} — its histogram intersection is significantly higher than the runner-up's (temp {} top-k {}): paired difference {} [{}, {}] ({}% CI over {} seed × text pairs).",
            b.temperature, b.top_k, r.temperature, r.top_k, num(d.value), num(d.ci_low), num(d.ci_high),
            (LEVEL * 100.0).round(), diffs.len()
        ),
        Some(d) => format!(
            "Best: temp {} top-k {} — but NOT significantly better than the runner-up (temp {} top-k {}): paired difference {} [{}, {}] ({}% CI over {} seed × text pairs) includes 0; more seeds are needed to separate them.",
            b.temperature, b.top_k, r.temperature, r.top_k, num(d.value), num(d.ci_low), num(d.ci_high),
            (LEVEL * 100.0).round(), diffs.len()
        ),
        None => format!(
            "Best: temp {} top-k {} — no paired jobs to compare with the runner-up (temp {} top-k {}).",
            b.temperature, b.top_k, r.temperature, r.top_k
        ),
    };
    Best {
        temperature: b.temperature,
        top_k: b.top_k,
        runner_up: Some((r.temperature, r.top_k)),
        difference,
        significant,
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
