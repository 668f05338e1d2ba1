//! `csm-parity sweep` and `csm-parity sweep merge` (issue 5).
use super::common::{print_json, ModelArgs};
use crate::commands::sweep::{self, output, CandidateSource, Execution, Shard, SweepSpec};
use crate::sampling::{parse_temperature, parse_top_k};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SweepArgs {
    #[command(subcommand)]
    pub command: Option<SweepCommand>,
    #[command(flatten)]
    pub run: SweepRunArgs,
}

#[derive(Debug, Subcommand)]
pub enum SweepCommand {
    /// Combine the job results of shard directories (`--shard i/n` runs) into one sweep.
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Shard output directories (each holds spec.json and jobs/).
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Directory for the merged sweep (may be one of the inputs).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print the merged result as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SweepRunArgs {
    /// Temperatures, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.6,0.8", value_parser = parse_temperature)]
    pub temps: Vec<f64>,
    /// Top-k values, comma-separated (0 = no filtering).
    #[arg(long, value_delimiter = ',', default_value = "50,100", value_parser = parse_top_k)]
    pub topk: Vec<usize>,
    /// Seeds: N (0..N), A..B (half-open) or a list 1,5,9.
    #[arg(long, default_value = "8", value_parser = sweep::parse_seeds)]
    pub seeds: ::std::vec::Vec<u64>,
    /// One text to speak (default: a pangram).
    #[arg(long, conflicts_with = "texts")]
    pub text: Option<String>,
    /// File with one text per line (blank lines and lines starting with # are skipped).
    #[arg(long, value_name = "FILE")]
    pub texts: Option<PathBuf>,
    /// Frames per run at most.
    #[arg(long, default_value_t = 32)]
    pub max_frames: usize,
    #[arg(long, default_value_t = 0)]
    pub speaker: u32,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output directory: jobs/, sweep.json, sweep.csv, sweep.md, heatmap_*.png|svg.
    #[arg(long, default_value = "runs/sweep", value_name = "DIR")]
    pub out: PathBuf,
    /// Run only shard i of n (1-based): the jobs whose index in the sorted job list is ≡ i−1 mod n.
    /// Aggregate the shard directories with `sweep merge`.
    #[arg(long, value_name = "i/n")]
    pub shard: Option<Shard>,
    /// Worker threads, each with its own loaded backends.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Keep the capture run directories (DIR/work/<job>/{shared,native}/) after their metrics
    /// are stored.
    #[arg(long)]
    pub keep_runs: bool,
    /// Print the result as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Sweep an outside pipeline instead of the built-in MLX one: a shell command template run
    /// once per job that writes a run directory at {out}. Placeholders (shell-quoted): {out}
    /// {text} {seed} {temp} {top_k} {frames} {prompt_ids} {model}. A candidate that used its own
    /// noise is re-scored by the reference (torch) first (docs/outside-ports.md). The model may
    /// be a CSM or a Llama directory.
    #[arg(long, value_name = "TEMPLATE", conflicts_with = "candidate_runs")]
    pub candidate_cmd: Option<String>,
    /// Sweep an outside pipeline's finished runs: DIR/<job key> (e.g. DIR/t0.8_k50_x0_s3) for
    /// every job, made with the job's text, seed, temperature and top-k.
    #[arg(long, value_name = "DIR")]
    pub candidate_runs: Option<PathBuf>,
}

pub fn run(a: SweepArgs) -> Result<i32> {
    match a.command {
        Some(SweepCommand::Merge(m)) => merge(m),
        None => run_sweep(a.run),
    }
}

fn merge(m: MergeArgs) -> Result<i32> {
    let r = sweep::merge(&m.dirs, &m.out)?;
    if m.json {
        print_json(&serde_json::json!({ "result": r }))?;
    } else {
        super::common::print_out(&output::terminal(&r))?;
        eprintln!("merged sweep written to {}", m.out.display());
    }
    Ok(0)
}

fn run_sweep(a: SweepRunArgs) -> Result<i32> {
    if a.jobs == 0 {
        bail!("--jobs: expected at least 1");
    }
    let texts = match (&a.text, &a.texts) {
        (Some(t), _) => vec![t.clone()],
        (None, Some(f)) => sweep::read_texts(f)?,
        (None, None) => vec![sweep::DEFAULT_TEXT.to_string()],
    };
    let candidate = match (&a.candidate_cmd, &a.candidate_runs) {
        (Some(t), _) => Some(CandidateSource::Command(t.clone())),
        (None, Some(d)) => Some(CandidateSource::Runs(d.clone())),
        (None, None) => None,
    };
    match &candidate {
        Some(CandidateSource::Command(t)) => sweep::candidate::check_template(t)?,
        Some(CandidateSource::Runs(d)) if !d.is_dir() => {
            bail!("--candidate-runs {}: not a directory", d.display())
        }
        _ => {}
    }
    // The built-in candidate is the MLX CSM pipeline; an outside one may port a Llama too.
    let loaded = match candidate {
        Some(_) => a
            .model
            .load_any(super::common::ModelKindChoice::Auto, None)?,
        None => crate::model::Model::Csm(a.model.load()?),
    };
    let model = &loaded;
    let spec = SweepSpec {
        temperatures: a.temps,
        top_ks: a.topk,
        seeds: a.seeds,
        texts,
        max_frames: a.max_frames,
        speaker: a.speaker,
        dtype: a.model.dtype.name().into(),
        model_sha256: sweep::model_sha256(model),
        model_path: model.dir().display().to_string(),
        candidate: candidate.as_ref().map(|c| c.describe()),
    };
    let exec = Execution {
        workers: a.jobs,
        reuse_backends: true,
        progress: !a.json,
        keep_runs: a.keep_runs,
    };
    let (stats, result) =
        sweep::run_sweep_with(model, &spec, &a.out, a.shard, &exec, candidate.as_ref())?;
    if a.json {
        print_json(&serde_json::json!({ "result": result, "run": stats }))?;
        return Ok(0);
    }
    eprintln!(
        "{} jobs: {} reused, {} run in {:.1} s ({} worker{})",
        stats.jobs_in_shard,
        stats.jobs_reused,
        stats.jobs_run,
        stats.wall_s,
        stats.workers,
        if stats.workers == 1 { "" } else { "s" }
    );
    match (result, a.shard) {
        (Some(r), _) => {
            super::common::print_out(&output::terminal(&r))?;
            eprintln!("sweep written to {}", a.out.display());
        }
        (None, Some(s)) => super::common::print_out(&format!(
            "shard {}/{} done: {} of {} jobs stored in {}; combine with `csm-parity sweep merge DIR... --out DIR`\n",
            s.index,
            s.count,
            stats.jobs_in_shard,
            stats.jobs_total,
            a.out.join("jobs").display()
        ))?,
        (None, None) => {}
    }
    Ok(0)
}
