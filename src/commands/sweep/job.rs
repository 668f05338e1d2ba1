//! One sweep job: its settings, its captures (the pair, or the reference and an outside candidate), and the metrics stored for it.
use super::candidate::{judge_candidate, run_candidate_cmd, CandidateJob};
use crate::analysis::metrics::histogram;
use crate::analysis::{self, DiffOptions};
use crate::backend::BackendKind;
use crate::capture::{Run, Storage};
use crate::commands::capture::{capture_with, run_dir, CaptureOptions, LoadedBackend, Mode};
use crate::model::{DType, Model};
use crate::sampling::{NoiseMode, PostProcess, SamplerSpec};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

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

    /// The shared-noise metrics of the diff `ds`; `nonfinite` gets the diff's own non-finite
    /// findings, labelled `label`.
    fn of(
        ds: &analysis::Diff,
        token_agreement: Option<f64>,
        mut nonfinite: Vec<String>,
        label: &str,
    ) -> SharedMetrics {
        nonfinite.extend(
            ds.nonfinite
                .describe()
                .into_iter()
                .map(|w| format!("{label}: {w}")),
        );
        SharedMetrics {
            token_agreement,
            steps: ds.overall.steps,
            frames_compared: ds.frames_compared,
            divergence: ds.divergence.point.map(|p| [p.frame, p.codebook]),
            divergence_stage: ds.divergence.stage.map(|s| s.name().to_string()),
            max_logit_diff: ds.overall.logits.as_ref().map(|l| l.max_abs.max),
            nonfinite,
        }
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

impl NativeMetrics {
    /// The native-noise metrics of the diff `dn`.
    fn of(dn: &analysis::Diff) -> NativeMetrics {
        let t = &dn.overall.tokens;
        NativeMetrics {
            hist_intersection: fin(t.hist_intersection),
            jaccard: fin(t.jaccard),
            weighted_jaccard: fin(t.weighted_jaccard),
            kl_hist: fin(t.kl_hist),
            js_hist: fin(t.js_hist),
            chi_square_p: t.chi_square.as_ref().and_then(|c| c.p_value.and_then(fin)),
            hist_a: sorted_hist(&dn.steps.tokens_a),
            hist_b: sorted_hist(&dn.steps.tokens_b),
        }
    }
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

/// `x` when finite.
pub(super) fn fin(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn sorted_hist(tokens: &[i32]) -> Vec<(i32, u64)> {
    let mut v: Vec<(i32, u64)> = histogram(tokens.iter().copied()).into_iter().collect();
    v.sort_unstable();
    v
}

/// The non-finite values `run`'s manifest records, each named by its backend and `what`.
fn warnings(run: &Run, what: &str) -> Vec<String> {
    let m = run.manifest();
    m.warnings
        .iter()
        .map(|w| format!("{}{what}: {w}", m.backend.name))
        .collect()
}

/// Metrics only: no bootstrap inside the per-job diffs (the sweep bootstraps over jobs).
fn metrics_only() -> DiffOptions {
    DiffOptions {
        resamples: 0,
        ..DiffOptions::default()
    }
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
pub fn model_sha256(model: &Model) -> String {
    model.sha256().into()
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
    model: &Model,
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
    let job_run = JobRun {
        model,
        job,
        text,
        settings,
        dir,
        t0,
    };
    if let Some(c) = &settings.candidate {
        let Some(l) = loaded else {
            bail!("an outside candidate needs the reference backend loaded");
        };
        return job_run.with_candidate(l, c);
    }
    let dir = &job_run.dir;
    let kinds: Vec<BackendKind> = match loaded.as_deref() {
        Some(l) => l.iter().map(|l| l.kind).collect(),
        None => vec![BackendKind::Torch, BackendKind::Mlx],
    };
    let mut cap = |noise: NoiseMode, sub: &str, logits: Storage| -> Result<()> {
        let o = job_run.capture_options(kinds.clone(), noise, sub, logits)?;
        match loaded.as_deref_mut() {
            Some(l) => capture_with(model, &o, l)?,
            None => crate::commands::capture::capture(model, &o)?,
        };
        Ok(())
    };
    let mut nonfinite = Vec::new();
    let mut diff_of = |sub: &str| -> Result<analysis::Diff> {
        let a = Run::open(&dir.join(sub).join(kinds[0].name()))?;
        let b = Run::open(&dir.join(sub).join(kinds[1].name()))?;
        for r in [&a, &b] {
            nonfinite.extend(warnings(r, &format!(" ({sub} noise)")));
        }
        analysis::compare(&a, &b, &metrics_only())
    };
    cap(NoiseMode::Shared, "shared", settings.shared_logits)?;
    let ds = diff_of("shared")?;
    cap(NoiseMode::Native, "native", Storage::None)?;
    let dn = diff_of("native")?;
    let token_agreement = fin(ds.overall.token_agreement);
    let shared = SharedMetrics::of(&ds, token_agreement, nonfinite, "shared noise");
    job_run.finish(shared, NativeMetrics::of(&dn), None)
}

/// One job under way: what it captures, where (`work/<key>`), and since when.
struct JobRun<'a> {
    model: &'a Model,
    job: &'a Job,
    text: &'a str,
    settings: &'a JobSettings,
    dir: PathBuf,
    t0: Instant,
}

impl JobRun<'_> {
    /// The capture of this job by `backends` (the first is the reference) into `dir/sub`:
    /// independent tracks, no post-processing, probabilities not stored.
    fn capture_options(
        &self,
        backends: Vec<BackendKind>,
        noise: NoiseMode,
        sub: &str,
        logits: Storage,
    ) -> Result<CaptureOptions> {
        let (job, settings) = (self.job, self.settings);
        Ok(CaptureOptions {
            text: self.text.to_string(),
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
            out: self.dir.join(sub),
            progress: false,
            inject: None,
            chat: false,
            force: false,
            audio: Default::default(),
            codec_fault: None,
        })
    }

    /// The job's result from its metrics; its captures are removed unless kept.
    fn finish(
        self,
        shared: SharedMetrics,
        native: NativeMetrics,
        candidate: Option<CandidateInfo>,
    ) -> Result<JobResult> {
        let result = JobResult {
            job: *self.job,
            text: self.text.to_string(),
            max_frames: self.settings.max_frames,
            speaker: self.settings.speaker,
            dtype: self.settings.dtype.name().into(),
            model_sha256: model_sha256(self.model),
            shared,
            native,
            seconds: self.t0.elapsed().as_secs_f64(),
            candidate,
        };
        if !self.settings.keep_runs {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("cannot remove {}", self.dir.display()))?;
        }
        Ok(result)
    }

    /// One job with an outside candidate: the reference (the loaded backend, torch) captures with
    /// shared noise (f32 logits) and with native noise; the candidate's run comes from its command
    /// or its run directory. Shared metrics: the candidate against the reference's shared-noise
    /// capture — or, when the candidate used its own noise, against the reference's re-score of it
    /// (every step comparable; token agreement is then not measured). Native metrics: the token
    /// histograms of the reference's native-noise capture and of the candidate (independent
    /// draws either way).
    fn with_candidate(
        self,
        loaded: &mut [LoadedBackend],
        source: &CandidateSource,
    ) -> Result<JobResult> {
        let (model, job, dir) = (self.model, self.job, &self.dir);
        let kind = loaded[0].kind;
        let shared_opts =
            self.capture_options(vec![kind], NoiseMode::Shared, "shared", Storage::F32)?;
        capture_with(model, &shared_opts, loaded)?;
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
                    text: self.text,
                    seed: job.seed,
                    temperature: job.temperature,
                    top_k: job.top_k,
                    frames: self.settings.max_frames,
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
        let dopt = metrics_only();
        let judged = judge_candidate(
            model,
            &mut loaded[0],
            &reference_dir,
            &candidate,
            &dir.join("rescored"),
            &dopt,
        )?;
        let native_opts =
            self.capture_options(vec![kind], NoiseMode::Native, "native", Storage::None)?;
        capture_with(model, &native_opts, loaded)?;
        let native_ref = Run::open(&run_dir(&dir.join("native"), kind))?;
        let dn = analysis::compare(&native_ref, &candidate, &dopt)?;
        let nonfinite = [&native_ref, &candidate]
            .iter()
            .flat_map(|r| warnings(r, ""))
            .collect();
        let ds = &judged.diff;
        let token_agreement = if judged.rescored {
            None
        } else {
            fin(ds.overall.token_agreement)
        };
        let shared = SharedMetrics::of(ds, token_agreement, nonfinite, "candidate vs reference");
        let info = CandidateInfo {
            source: source.describe(),
            noise: judged.noise,
            rescored: judged.rescored,
        };
        self.finish(shared, NativeMetrics::of(&dn), Some(info))
    }
}
