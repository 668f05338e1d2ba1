//! `csm-parity bisect` (issue 17).
use super::common::{parse_tolerance, print_json, print_out};
use crate::capture::Run;
use crate::commands::bisect::{bisect, BisectOptions};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct BisectArgs {
    /// Run directory A (the reference), or a capture directory holding torch/ and mlx/.
    pub a: PathBuf,
    /// Run directory B (the candidate).
    pub b: Option<PathBuf>,
    /// The frame to record (default: where `diff` puts the divergence, else 0).
    #[arg(long, allow_negative_numbers = true)]
    pub frame: Option<usize>,
    /// Relative tolerance per tap, max|Δ| / max|A| [default: 1e-4 f32, 1e-2 f16, 5e-2 bf16].
    #[arg(long, value_parser = parse_tolerance, allow_negative_numbers = true)]
    pub rtol: Option<f64>,
    /// Model directory (default: run A's `model.path`).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Write index.html, bisect.json and bisect.png (relative error by tap) into DIR.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Print the whole report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Exit 0 whether or not a tap departs (the verdict is the output); 2 on bad input.
pub fn run(a: BisectArgs) -> Result<i32> {
    let (pa, pb) = super::diff::resolve(&a.a, a.b.as_deref())?;
    if let Some(dir) = &a.report {
        crate::outputs::check_replaceable(dir, crate::outputs::OutputKind::Report, "--report")?;
    }
    let ra = Run::open(&pa).with_context(|| format!("run A ({})", pa.display()))?;
    let rb = Run::open(&pb).with_context(|| format!("run B ({})", pb.display()))?;
    let report = bisect(
        &ra,
        &rb,
        &BisectOptions {
            frame: a.frame,
            rtol: a.rtol,
            model: a.model,
        },
    )?;
    if let Some(dir) = &a.report {
        let out = crate::commands::bisect::report::write_report_dir(&report, dir)?;
        eprintln!("report written to {}", out.join("index.html").display());
    }
    if a.json {
        print_json(&report)?;
    } else {
        print_out(&report.render())?;
    }
    Ok(0)
}
