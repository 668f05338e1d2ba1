//! Running a sweep: the jobs of a shard less those already stored, the workers, the progress bar, the stored job results, and `sweep merge`.
use super::aggregate::{aggregate, SweepResult};
use super::candidate::check_template;
use super::job::{job_label, run_job, CandidateSource, Job, JobResult, JobSettings};
use super::output;
use super::spec::{read_spec, write_spec, Shard, SweepSpec};
use crate::backend::BackendKind;
use crate::capture::Storage;
use crate::commands::capture::{load_backends, LoadedBackend};
use crate::model::{DType, Model};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    model: &Model,
    spec: &SweepSpec,
    dir: &Path,
    shard: Option<Shard>,
    exec: &Execution,
) -> Result<(RunStats, Option<SweepResult>)> {
    run_sweep_with(model, spec, dir, shard, exec, None)
}

/// [`run_sweep`] for either model kind, with the built-in MLX pipeline (`candidate` None) or an
/// outside candidate as the pipeline under test (the reference is torch either way).
pub fn run_sweep_with(
    model: &Model,
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
        check_template(t)?;
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
    let bar = crate::util::progress_bar(
        exec.progress,
        in_shard as u64,
        reused as u64,
        "sweep jobs (cell × seed × text)",
    );
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
    output::write_all::<RunStats>(out, &result, None)?;
    Ok(result)
}
