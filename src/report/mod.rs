//! Output of `csm-parity diff`: terminal summary, JSON, markdown, one-page HTML with plots.

pub mod audio;
pub mod html;
pub mod markdown;
pub mod plots;
pub mod terminal;
pub mod view;

use crate::analysis::divergence::Step;
use crate::analysis::Diff;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Compact number formatting shared by the text outputs: `–` for missing/NaN, fixed for
/// moderate magnitudes, scientific otherwise.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "–".into()
        } else {
            format!("{x}")
        };
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if (1e-3..1e4).contains(&a) {
        let s = format!("{x:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{x:.3e}")
    }
}

pub fn opt_num(x: Option<f64>) -> String {
    x.map(num).unwrap_or_else(|| "–".into())
}

/// The χ² homogeneity result in words: never "p = 1" for an untestable table.
pub fn chi_text(c: &crate::analysis::stats::ChiSquare) -> String {
    match (c.testable, c.p_value) {
        (true, Some(p)) => format!(
            "χ² {} df {} p {} ({} rare tokens pooled)",
            num(c.statistic),
            c.df,
            num(p),
            c.pooled
        ),
        _ => format!(
            "χ² not testable at this sample size ({} categor{} after pooling {} rare tokens)",
            c.categories,
            if c.categories == 1 { "y" } else { "ies" },
            c.pooled
        ),
    }
}

/// A confidence interval in brackets, or why there is none.
pub fn ci_text(e: &crate::analysis::stats::Estimate) -> String {
    if e.has_ci() {
        format!(
            "[{}% CI {}, {}]",
            (e.level * 100.0).round(),
            num(e.ci_low),
            num(e.ci_high)
        )
    } else {
        format!(
            "[no CI: {}]",
            e.note.as_deref().unwrap_or("too little data")
        )
    }
}

pub fn step(s: Option<Step>) -> String {
    match s {
        Some(s) => format!("frame {} codebook {}", s.frame, s.codebook),
        None => "none".into(),
    }
}

/// The JSON document of `--json` and `report.json`.
pub fn json(diff: &Diff) -> Result<String> {
    let mut s = serde_json::to_string_pretty(diff)?;
    s.push('\n');
    Ok(s)
}

/// Writes index.html, report.md, report.json and the plots (PNG + SVG) into `dir`, atomically:
/// everything goes to a temporary sibling directory that replaces `dir` at the end. Only a
/// missing or empty `dir` or an earlier report is replaced; a run directory, a file or a folder
/// csm-parity did not write is refused (see [`crate::outputs`]).
pub fn write_report_dir(diff: &Diff, dir: &Path) -> Result<PathBuf> {
    let stage =
        crate::outputs::StagedDir::begin(dir, crate::outputs::OutputKind::Report, "--report")?;
    let tmp = stage.path();
    (|| -> Result<()> {
        let plots = plots::render_all(diff, tmp)?;
        let audio = audio::write_assets(diff, tmp)?;
        let (mut md, mut page) = (markdown::render(diff, &plots), html::render(diff, &plots)?);
        if let (Some(c), Some(assets)) = (&diff.audio, &audio) {
            md.push_str(&audio::markdown_section(c, assets));
            page = audio::inject_html(page, c, assets);
        }
        std::fs::write(tmp.join("report.md"), md)?;
        std::fs::write(tmp.join("report.json"), json(diff)?)?;
        std::fs::write(tmp.join("index.html"), page)?;
        Ok(())
    })()
    .with_context(|| format!("writing report {}", dir.display()))?;
    stage.commit()
}
