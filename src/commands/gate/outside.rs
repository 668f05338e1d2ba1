//! `gate --candidate-cmd`: gate a pipeline the harness did not write. For every text × seed of
//! the gate config, the reference (torch) captures with shared noise, the candidate command
//! writes a run directory (docs/run-format.md), and the two are compared — directly when the
//! candidate used the shared noise, after a re-score of the candidate (`rescore`) when it used
//! its own. The checks are the config's thresholds that apply to one aligned pair of runs:
//! token agreement (shared-noise candidates), max |Δlogit| and the earliest divergence frame.
use super::checks::checks;
use super::config::{parse_config, GateConfig};
use super::measure::Measured;
use super::report::GateReport;
use crate::analysis::DiffOptions;
use crate::backend::BackendKind;
use crate::capture::{Run, Storage};
use crate::commands::capture::{capture_with, load_backends, CaptureOptions, Mode};
use crate::commands::sweep::candidate::{
    check_template, judge_candidate, run_candidate_cmd, CandidateJob,
};
use crate::model::Model;
use crate::sampling::{NoiseMode, PostProcess, SamplerSpec};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// What one job of an outside gate found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutsideJob {
    pub text_index: usize,
    pub text: String,
    pub seed: u64,
    pub temperature: f64,
    pub top_k: usize,
    /// The candidate's `sampler.noise`.
    pub noise: String,
    /// Whether the candidate was re-scored (it used its own noise).
    pub rescored: bool,
    pub verdict: String,
    /// First divergence: frame, codebook, stage.
    pub divergence: Option<(usize, usize, String)>,
    pub token_agreement: f64,
    pub max_logit_diff: Option<f64>,
    /// The job's run directories (reference, candidate), kept when the gate fails.
    pub reference_run: String,
    pub candidate_run: String,
    /// NaN/Inf logits or probs either run recorded (the gate's `finite_outputs` check).
    pub nonfinite: Vec<String>,
}

impl OutsideJob {
    pub fn line(&self) -> String {
        let div = match &self.divergence {
            Some((f, c, s)) => format!("first divergence frame {f} codebook {c} (stage {s})"),
            None => "no divergence".into(),
        };
        format!(
            "job text {} {:?} seed {} temp {} top-k {} ({} noise{}): {div}; token agreement {:.3}; max |Δlogit| {}",
            self.text_index,
            self.text,
            self.seed,
            self.temperature,
            self.top_k,
            self.noise,
            if self.rescored { ", re-scored" } else { "" },
            self.token_agreement,
            self.max_logit_diff
                .map(crate::report::num)
                .unwrap_or_else(|| "none".into())
        )
    }
}

/// Runs the outside gate: `config` as for `gate`, `template` the candidate command, failing
/// jobs' runs kept under `keep` (default: `gate-failures/` beside the config). Returns the
/// report and the per-job lines.
pub fn run_outside_gate(
    config: &Path,
    template: &str,
    keep: Option<&Path>,
) -> Result<(GateReport, Vec<OutsideJob>)> {
    let t0 = Instant::now();
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("--config {}: cannot read", config.display()))?;
    let cfg = parse_config(&text, config)?;
    // Check the template before loading anything.
    check_template(template)?;
    if cfg.candidate != Default::default() {
        bail!(
            "--candidate-cmd replaces [candidate]; remove [candidate] from {}",
            config.display()
        );
    }
    let dtype: crate::model::DType = cfg.run.dtype.parse()?;
    let dir = match &cfg.model {
        Some(d) if !d.is_dir() => bail!("gate config: model {}: not a directory", d.display()),
        Some(d) => d.clone(),
        None => crate::model::fixture::ensure_default_fixture()?,
    };
    crate::model::require_tokenizer(&dir, None)?;
    let loaded = Model::open(crate::model::kind_of_dir(&dir), &dir, None)?;
    let model = &loaded;
    let model_dir = model.dir().display().to_string();
    let mut backends = load_backends(model, &[BackendKind::Torch], dtype)?;
    let work = std::env::temp_dir().join(format!("csm-parity-gate-outside-{}", std::process::id()));
    let result = (|| -> Result<Vec<OutsideJob>> {
        let mut jobs = Vec::new();
        for (ti, t) in cfg.run.texts.iter().enumerate() {
            for &seed in &cfg.run.seeds {
                let dir = work.join(format!("text{ti}-seed{seed}"));
                let job = run_job(
                    &cfg,
                    &loaded,
                    &mut backends,
                    template,
                    &model_dir,
                    ti,
                    t,
                    seed,
                    &dir,
                )
                .with_context(|| {
                    format!(
                        "gate job text {ti} {t:?} seed {seed} temp {} top-k {}",
                        cfg.run.temperature, cfg.run.top_k
                    )
                })?;
                jobs.push(job);
            }
        }
        Ok(jobs)
    })();
    let jobs = match result {
        Ok(j) => j,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    let measured = measured_of(&cfg, &jobs);
    let applicable = applicable_config(&cfg, &jobs);
    let checks = checks(&applicable, &measured);
    let passed = checks.iter().all(|c| c.passed);
    let mut jobs = jobs;
    if !passed {
        let keep = keep.map(Path::to_path_buf).unwrap_or_else(|| {
            config
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join("gate-failures")
        });
        if keep.exists() {
            bail!(
                "--keep-failed {}: exists; remove it or choose another directory (the gate failed; its runs are in {})",
                keep.display(),
                work.display()
            );
        }
        std::fs::create_dir_all(&keep)
            .with_context(|| format!("--keep-failed {}: cannot create", keep.display()))?;
        for j in jobs.iter_mut().filter(|j| j.divergence.is_some()) {
            let from = work.join(format!("text{}-seed{}", j.text_index, j.seed));
            let to = keep.join(format!("text{}-seed{}", j.text_index, j.seed));
            copy_dir(&from, &to)?;
            j.reference_run = swap_prefix(&j.reference_run, &from, &to);
            j.candidate_run = swap_prefix(&j.candidate_run, &from, &to);
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let report = GateReport {
        config: config.display().to_string(),
        model: model_dir,
        candidate: cfg.candidate.clone(),
        measured,
        passed,
        checks,
        baseline_updated: false,
        wall_s: t0.elapsed().as_secs_f64(),
    };
    Ok((report, jobs))
}

fn swap_prefix(p: &str, from: &Path, to: &Path) -> String {
    Path::new(p)
        .strip_prefix(from)
        .map(|r| to.join(r).display().to_string())
        .unwrap_or_else(|_| p.to_string())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// The config with only the thresholds and baseline values that apply to an outside pair
/// (the pooled native-noise histogram checks need both libraries' native runs; token agreement
/// needs a candidate that drew the shared noise).
fn applicable_config(cfg: &GateConfig, jobs: &[OutsideJob]) -> GateConfig {
    let mut c = cfg.clone();
    if jobs.iter().all(|j| j.rescored) {
        c.thresholds.token_agreement_min = None;
        if let Some(b) = c.baseline.as_mut() {
            b.token_agreement = None;
        }
    }
    c.thresholds.hist_intersection_min = None;
    c.thresholds.kl_hist_max = None;
    c.thresholds.chi_square_p_min = None;
    if let Some(b) = c.baseline.as_mut() {
        b.hist_intersection = None;
        b.kl_hist = None;
    }
    c
}

fn measured_of(cfg: &GateConfig, jobs: &[OutsideJob]) -> Measured {
    let shared: Vec<f64> = jobs
        .iter()
        .filter(|j| !j.rescored)
        .map(|j| j.token_agreement)
        .collect();
    Measured {
        jobs: jobs.len(),
        token_agreement: (!shared.is_empty())
            .then(|| shared.iter().sum::<f64>() / shared.len() as f64),
        max_logit_diff: jobs
            .iter()
            .filter_map(|j| j.max_logit_diff)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
        hist_intersection: None,
        kl_hist: None,
        divergence_frame: jobs
            .iter()
            .map(|j| j.divergence.as_ref().map_or(cfg.run.max_frames, |d| d.0) as f64)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x)))),
        chi_square_p: None,
        divergences: jobs
            .iter()
            .map(|j| {
                (
                    j.text_index,
                    j.seed,
                    j.divergence.as_ref().map(|d| [d.0, d.1]),
                )
            })
            .collect(),
        nonfinite: jobs
            .iter()
            .flat_map(|j| {
                j.nonfinite
                    .iter()
                    .map(move |w| format!("text {} seed {}: {w}", j.text_index, j.seed))
            })
            .collect(),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_job(
    cfg: &GateConfig,
    loaded: &Model,
    backends: &mut [crate::commands::capture::LoadedBackend],
    template: &str,
    model_dir: &str,
    ti: usize,
    text: &str,
    seed: u64,
    dir: &Path,
) -> Result<OutsideJob> {
    let model = loaded;
    let sampler = SamplerSpec::new(cfg.run.temperature, cfg.run.top_k, NoiseMode::Shared, seed)?;
    let opts = CaptureOptions {
        text: text.to_string(),
        speaker: cfg.run.speaker,
        chat: false,
        backends: vec![BackendKind::Torch],
        reference: BackendKind::Torch,
        sampler,
        max_frames: cfg.run.max_frames,
        mode: Mode::Independent,
        post: PostProcess::None,
        dtype: cfg.run.dtype.parse()?,
        logits: Storage::F32,
        probs: Storage::F32,
        out: dir.join("reference"),
        progress: false,
        inject: None,
        force: false,
        audio: Default::default(),
        codec_fault: None,
    };
    capture_with(model, &opts, backends)?;
    let reference_dir = crate::commands::capture::run_dir(&opts.out, BackendKind::Torch);
    let reference = Run::open(&reference_dir)?;
    let prompt_ids = reference.manifest().prompt.token_ids.clone();
    let cand_dir = dir.join("candidate");
    let candidate = run_candidate_cmd(
        template,
        &CandidateJob {
            text,
            seed,
            temperature: cfg.run.temperature,
            top_k: cfg.run.top_k,
            frames: cfg.run.max_frames,
            prompt_ids: &prompt_ids,
            model_dir,
        },
        &cand_dir,
    )?;
    let j = judge_candidate(
        model,
        &mut backends[0],
        &reference_dir,
        &candidate,
        &dir.join("rescored"),
        &DiffOptions::default(),
    )?;
    let (noise, rescored, d, a_dir) = (j.noise, j.rescored, j.diff, j.reference_dir);
    Ok(OutsideJob {
        text_index: ti,
        text: text.to_string(),
        seed,
        temperature: cfg.run.temperature,
        top_k: cfg.run.top_k,
        noise,
        rescored,
        verdict: d.verdict.line.clone(),
        divergence: d.verdict.point.map(|p| {
            (
                p.frame,
                p.codebook,
                d.verdict.stage.map_or("unknown", |s| s.name()).to_string(),
            )
        }),
        token_agreement: d.overall.token_agreement,
        max_logit_diff: d.overall.logits.as_ref().map(|l| l.max_abs.max),
        reference_run: a_dir.display().to_string(),
        candidate_run: cand_dir.display().to_string(),
        nonfinite: d.nonfinite.describe(),
    })
}
