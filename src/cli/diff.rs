//! `csm-parity diff` (issue 4).
use crate::analysis::{self, DiffOptions};
use crate::capture::Run;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Run directory A (the reference), or a capture directory holding torch/ and mlx/
    /// (then torch is A).
    pub a: PathBuf,
    /// Run directory B (the candidate).
    pub b: Option<PathBuf>,
    /// Absolute logit tolerance: a step breaches when |a−b| > atol + rtol·|a|. Default by the
    /// runs' dtype (the looser of the two): f32 1e-3, f16 1e-1, bf16 5e-1.
    #[arg(long, value_parser = super::common::parse_tolerance_f32, allow_negative_numbers = true)]
    pub atol: Option<f32>,
    /// Relative tolerance (logits and probabilities). Default by dtype: f32 1e-3, f16 1e-2,
    /// bf16 3e-2.
    #[arg(long, value_parser = super::common::parse_tolerance_f32, allow_negative_numbers = true)]
    pub rtol: Option<f32>,
    /// Absolute tolerance for sampler probabilities. Default by dtype: f32 1e-4, f16 1e-2,
    /// bf16 5e-2.
    #[arg(long, value_parser = super::common::parse_tolerance_f32, allow_negative_numbers = true)]
    pub probs_atol: Option<f32>,
    /// Audio departure tolerance, relative to the reference's peak: the audio departs at the
    /// first sample where |a − b| > this × peak|A| (also the codec tolerance of stage `codec`;
    /// docs/audio-metrics.md).
    #[arg(long, default_value = "1e-4", value_name = "RTOL", value_parser = super::common::parse_tolerance, allow_negative_numbers = true)]
    pub audio_rtol: f64,
    /// Print the full comparison as JSON on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Write index.html, report.md, report.json and plots (PNG + SVG) into this directory.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Exit with code 1 when the runs diverge (default: 0 either way).
    #[arg(long)]
    pub fail_on_divergence: bool,
}

/// Resolves `diff A B` or `diff DIR` to (reference, candidate) run directories.
pub fn resolve(a: &Path, b: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    match b {
        Some(b) => Ok((a.to_path_buf(), b.to_path_buf())),
        None => {
            let (t, m) = (a.join("torch"), a.join("mlx"));
            if a.join("manifest.json").exists() {
                bail!(
                    "{}: is a single run; give a second run directory to compare with (diff A B)",
                    a.display()
                );
            }
            if !t.is_dir() || !m.is_dir() {
                bail!(
                    "{}: expected a capture directory holding torch/ and mlx/ run directories (or give two run directories: diff A B)",
                    a.display()
                );
            }
            Ok((t, m))
        }
    }
}

pub fn run(args: DiffArgs) -> Result<i32> {
    for (flag, v) in [
        ("--atol", args.atol),
        ("--rtol", args.rtol),
        ("--probs-atol", args.probs_atol),
    ] {
        if let Some(v) = v {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("{flag}: expected a finite non-negative number, got {v}");
            }
        }
    }
    if !(args.audio_rtol.is_finite() && args.audio_rtol >= 0.0) {
        bail!("--audio-rtol must be a non-negative number");
    }
    let (pa, pb) = resolve(&args.a, args.b.as_deref())?;
    if let Some(dir) = &args.report {
        // Before the (possibly long) analysis: never replace an input run or a user's folder.
        crate::outputs::check_replaceable(dir, crate::outputs::OutputKind::Report, "--report")?;
    }
    let a = Run::open(&pa).with_context(|| format!("run A ({})", pa.display()))?;
    let b = Run::open(&pb).with_context(|| format!("run B ({})", pb.display()))?;
    let opt = DiffOptions {
        atol: args.atol,
        rtol: args.rtol,
        probs_atol: args.probs_atol,
        resamples: args.bootstrap,
        audio: analysis::audio::AudioOptions {
            departure_rtol: args.audio_rtol,
        },
        ..DiffOptions::default()
    };
    let diff = analysis::compare(&a, &b, &opt)?;
    if let Some(dir) = &args.report {
        let out = crate::report::write_report_dir(&diff, dir)?;
        eprintln!("report written to {}", out.join("index.html").display());
    }
    if args.json {
        super::common::print_out(&crate::report::json(&diff)?)?;
    } else {
        super::common::print_out(&crate::report::terminal::render(&diff))?;
    }
    Ok(
        if args.fail_on_divergence && diff.verdict.kind == "diverged" {
            1
        } else {
            0
        },
    )
}
