//! `csm-parity gate` (issue 5): a CI regression gate. A TOML config names the model, texts,
//! seeds, sampler and thresholds (and optionally a baseline with a margin); the gate captures
//! both pipelines for every text × seed (shared noise with logits, native noise), measures, and
//! checks. Exit 0: every check passes; 1: a check fails; 2: usage or input error.
pub mod checks;
pub mod config;
pub mod measure;
pub mod outside;
pub mod report;

pub use checks::{checks, Check};
pub use config::{parse_config, GateConfig};
pub use measure::{measure, Measured};
pub use report::GateReport;

use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;

/// Runs the gate on the config file at `path`.
pub fn run_gate(path: &Path, update: bool) -> Result<GateReport> {
    let t0 = Instant::now();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config {}: cannot read", path.display()))?;
    let mut cfg = parse_config(&text, path)?;
    let (model, measured) = measure(&cfg)?;
    if update {
        let new = config::update_baseline(path, &text, &measured.baseline_values())?;
        cfg = parse_config(&new, path)?;
    }
    let checks = checks(&cfg, &measured);
    Ok(GateReport {
        config: path.display().to_string(),
        model,
        candidate: cfg.candidate.clone(),
        passed: checks.iter().all(|c| c.passed),
        measured,
        checks,
        baseline_updated: update,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}
