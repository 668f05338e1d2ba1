//! Output of `csm-parity diff`: terminal summary, JSON, markdown, one-page HTML with plots.

pub mod audio;
pub mod html;
pub mod markdown;
pub mod plots;
pub mod terminal;

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
/// everything goes to a temporary sibling directory that replaces `dir` at the end.
pub fn write_report_dir(diff: &Diff, dir: &Path) -> Result<PathBuf> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{}: cannot create", parent.display()))?;
    let name = dir
        .file_name()
        .with_context(|| format!("--report {}: not a directory name", dir.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = parent.join(tmp_name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    let result = (|| -> Result<()> {
        let plots = plots::render_all(diff, &tmp)?;
        let audio = audio::write_assets(diff, &tmp)?;
        let (mut md, mut page) = (markdown::render(diff, &plots), html::render(diff, &plots)?);
        if let (Some(c), Some(assets)) = (&diff.audio, &audio) {
            md.push_str(&audio::markdown_section(c, assets));
            page = audio::inject_html(page, c, assets);
        }
        std::fs::write(tmp.join("report.md"), md)?;
        std::fs::write(tmp.join("report.json"), json(diff)?)?;
        std::fs::write(tmp.join("index.html"), page)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!("writing report {}", dir.display())));
    }
    if dir.exists() {
        let old = parent.join(format!(
            ".{}.old{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        std::fs::rename(dir, &old)
            .with_context(|| format!("{}: cannot replace existing report", dir.display()))?;
        std::fs::rename(&tmp, dir)?;
        std::fs::remove_dir_all(&old)?;
    } else {
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    }
    Ok(dir.to_path_buf())
}
