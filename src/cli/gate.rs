//! `csm-parity gate` (issue 5).
use super::common::print_json;
use crate::commands::gate;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct GateArgs {
    /// Gate config (TOML): model, texts, seeds, sampler, thresholds, optional [candidate] and
    /// [baseline].
    #[arg(long, default_value = "fixtures/gate.toml", value_name = "FILE")]
    pub config: PathBuf,
    /// Rewrite the [baseline] section of the config with the values measured now (the rest of
    /// the file is kept), then check against it.
    #[arg(long)]
    pub update_baseline: bool,
    /// Write JUnit XML (one test case per check) to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write the markdown summary to FILE (default: printed after the check lines).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Print the whole report as JSON instead of the lines and the summary.
    #[arg(long)]
    pub json: bool,
    /// Gate an outside pipeline: a shell command template run once per text × seed that writes
    /// a run directory at {out}. Placeholders (shell-quoted): {out} {text} {seed} {temp}
    /// {top_k} {frames} {prompt_ids} {model}. A candidate with native noise is re-scored by
    /// the reference first (docs/outside-ports.md).
    #[arg(long, value_name = "TEMPLATE")]
    pub candidate_cmd: Option<String>,
    /// With --candidate-cmd: where the failing jobs' runs are kept (default: gate-failures/
    /// beside the config; must not exist).
    #[arg(long, value_name = "DIR", requires = "candidate_cmd")]
    pub keep_failed: Option<PathBuf>,
}

/// Exit 0: every check passes; 1: a check fails; 2 (via the error path): usage or input error.
pub fn run(a: GateArgs) -> Result<i32> {
    let mut job_lines = String::new();
    let report = match &a.candidate_cmd {
        Some(cmd) => {
            if a.update_baseline {
                anyhow::bail!("--update-baseline cannot be combined with --candidate-cmd");
            }
            let (report, jobs) =
                gate::outside::run_outside_gate(&a.config, cmd, a.keep_failed.as_deref())?;
            for j in &jobs {
                job_lines.push_str(&j.line());
                job_lines.push('\n');
                if !report.passed && j.divergence.is_some() {
                    job_lines.push_str(&format!(
                        "  kept: csm-parity diff {} {}\n",
                        j.reference_run, j.candidate_run
                    ));
                }
            }
            report
        }
        None => gate::run_gate(&a.config, a.update_baseline)?,
    };
    if let Some(p) = &a.junit {
        crate::outputs::write_file(p, report.junit().as_bytes(), "--junit")?;
    }
    if let Some(p) = &a.markdown {
        crate::outputs::write_file(p, report.markdown().as_bytes(), "--markdown")?;
    }
    if a.json {
        print_json(&report)?;
    } else {
        super::common::print_out(&job_lines)?;
        super::common::print_out(&report.lines())?;
        if a.update_baseline {
            super::common::print_out(&format!("baseline updated in {}\n", a.config.display()))?;
        }
        if a.markdown.is_none() {
            super::common::print_out("\n")?;
            super::common::print_out(&report.markdown())?;
        }
    }
    Ok(if report.passed { 0 } else { 1 })
}
