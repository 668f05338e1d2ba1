//! Sweep outputs: `sweep.json`, `sweep.csv`, `sweep.md`, heatmaps (PNG + SVG), terminal table.
//! Everything except the `run` section of `sweep.json` is a function of the job results only,
//! so a merged sweep writes the same files as an unsharded one.
use super::aggregate::{CellResult, SweepResult};
use crate::analysis::stats::Estimate;
use crate::report::num;
use crate::report::plots::{colormap, ensure_font};
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

/// One headline metric: file name, title, value of a cell, higher is better.
pub struct Headline {
    pub name: &'static str,
    pub title: &'static str,
    pub get: fn(&CellResult) -> Option<&Estimate>,
    pub higher_is_better: bool,
}

/// A [`Headline`] of the cell field `$field` (its name is the field's).
macro_rules! headline {
    ($field:ident, $higher_is_better:expr, $title:expr) => {
        Headline {
            name: stringify!($field),
            title: $title,
            get: |c| c.$field.as_ref(),
            higher_is_better: $higher_is_better,
        }
    };
}

pub const HEADLINES: &[Headline] = &[
    headline!(
        token_agreement,
        true,
        "Token agreement, shared noise (mean over jobs)"
    ),
    headline!(
        divergence_frame,
        true,
        "First divergence frame, shared noise (none = max frames)"
    ),
    headline!(
        hist_intersection,
        true,
        "Token histogram intersection, native noise"
    ),
    headline!(jaccard, true, "Token set Jaccard, native noise"),
    headline!(
        kl_hist,
        false,
        "KL of token histograms (add-1/2 smoothing), native noise"
    ),
    headline!(
        js_hist,
        false,
        "JS divergence of token histograms, native noise"
    ),
];

/// The fixed colour range of a headline metric.
pub fn fixed_range(name: &str, max_frames: usize) -> (f64, f64) {
    match name {
        "divergence_frame" => (0.0, max_frames.max(1) as f64),
        "kl_hist" => (0.0, 2.0),
        "js_hist" => (0.0, std::f64::consts::LN_2),
        _ => (0.0, 1.0),
    }
}

fn est(e: Option<&Estimate>) -> String {
    match e {
        Some(e) if e.has_ci() => {
            format!("{} [{}, {}]", num(e.value), num(e.ci_low), num(e.ci_high))
        }
        Some(e) => format!("{} (no CI)", num(e.value)),
        None => "–".into(),
    }
}

/// `value ±half-width` of the CI (the heatmap annotation).
pub fn pm(e: &Estimate) -> String {
    if !e.has_ci() {
        return format!("{} (no CI)", num(e.value));
    }
    format!(
        "{} ±{}",
        num(e.value),
        num(((e.ci_high - e.ci_low) / 2.0).abs())
    )
}

fn opt(x: Option<f64>) -> String {
    x.map(num).unwrap_or_else(|| "–".into())
}

/// The cells, best first.
fn ranked(r: &SweepResult) -> impl Iterator<Item = &CellResult> {
    r.ranking.iter().map(|&i| &r.cells[i])
}

/// The columns both tables start with: rank, temperature, top-k, jobs, then the estimates of
/// token agreement, first divergence frame, histogram intersection, noise floor, parity gap.
fn row(c: &CellResult) -> [String; 9] {
    [
        c.rank.to_string(),
        c.temperature.to_string(),
        c.top_k.to_string(),
        c.jobs.to_string(),
        est(c.token_agreement.as_ref()),
        est(c.divergence_frame.as_ref()),
        est(c.hist_intersection.as_ref()),
        est(c.noise_floor.as_ref()),
        est(c.gap.as_ref()),
    ]
}

/// The ranked markdown table (best first).
pub fn markdown_table(r: &SweepResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| rank | temp | top-k | jobs | token agreement (shared) | divergence frame (shared) | diverged | hist ∩ (native) | same-library noise floor | parity gap | above floor | Jaccard | KL hist | JS hist | pooled hist ∩ | pooled χ² p |"
    );
    let _ = writeln!(
        s,
        "|---:|---:|---:|---:|---|---|---:|---|---|---|---|---|---|---|---:|---:|"
    );
    for c in ranked(r) {
        let [rank, temp, k, jobs, agree, diverge, hist, floor, gap] = row(c);
        let _ = writeln!(
            s,
            "| {rank} | {temp} | {k} | {jobs} | {agree} | {diverge} | {}/{jobs} | {hist} | {floor} | {gap} | {} | {} | {} | {} | {} | {} |",
            c.diverged_jobs,
            match c.above_noise_floor {
                Some(true) => "yes",
                Some(false) => "no",
                None => "–",
            },
            est(c.jaccard.as_ref()),
            est(c.kl_hist.as_ref()),
            est(c.js_hist.as_ref()),
            opt(c.pooled.hist_intersection),
            opt(c.pooled.chi_square_p),
        );
    }
    s
}

/// `sweep.md`: spec, criterion, ranked table, verdict, heatmaps.
pub fn markdown(r: &SweepResult, plots: bool) -> String {
    let mut s = String::new();
    let sp = &r.spec;
    let _ = writeln!(s, "# csm-parity sweep\n");
    let _ = writeln!(
        s,
        "Model `{}` (sha256 {}…), dtype {}, {} temperatures × {} top-k, {} seeds × {} texts, at most {} frames per run; {} jobs, each captured twice (shared and native noise).\n",
        sp.model_path,
        &sp.model_sha256[..sp.model_sha256.len().min(12)],
        sp.dtype,
        sp.temperatures.len(),
        sp.top_ks.len(),
        sp.seeds.len(),
        sp.texts.len(),
        sp.max_frames,
        r.cells.iter().map(|c| c.jobs).sum::<usize>()
    );
    if let Some(c) = &sp.candidate {
        let _ = writeln!(
            s,
            "Candidate: an outside pipeline (`{c}`) against the libtorch reference; jobs where it used its own noise were re-scored by the reference (shared-noise columns: its logits and probabilities at every step, no token agreement).\n"
        );
    }
    let _ = writeln!(s, "**{}**\n", r.best.sentence);
    let _ = writeln!(s, "Criterion: {}\n", r.criterion);
    let _ = writeln!(
        s,
        "Values are means over jobs with {}% bias-corrected bootstrap CIs over jobs ({} resamples) in brackets (the parity gap's CI is Bonferroni-adjusted over the cells). \"pooled\" columns pool the tokens of all jobs of a cell; a low pooled χ² p means the two libraries' token distributions differ beyond sampling noise.\n",
        (r.level * 100.0).round(),
        r.resamples
    );
    s.push_str(&markdown_table(r));
    if plots {
        let _ = writeln!(s, "\n## Heatmaps\n");
        for h in HEADLINES {
            let _ = writeln!(s, "![{}](heatmap_{}.png)\n", h.title, h.name);
        }
    }
    s
}

/// The terminal table printed after a sweep (best first).
pub fn terminal(r: &SweepResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>4} {:>6} {:>6} {:>5}  {:<24} {:<24} {:<24} {:<24} {:<24} {:>9}",
        "rank",
        "temp",
        "top-k",
        "jobs",
        "token agree (shared)",
        "diverge frame (shared)",
        "hist ∩ (native)",
        "noise floor (same lib)",
        "parity gap",
        "pooled p"
    );
    for c in ranked(r) {
        let [rank, temp, k, jobs, agree, diverge, hist, floor, gap] = row(c);
        let _ = writeln!(
            s,
            "{rank:>4} {temp:>6} {k:>6} {jobs:>5}  {agree:<24} {diverge:<24} {hist:<24} {floor:<24} {gap:<24} {:>9}",
            opt(c.pooled.chi_square_p)
        );
    }
    let _ = writeln!(s, "{}", r.best.sentence);
    s
}

/// `sweep.csv`: one row per cell in grid order.
pub fn csv(r: &SweepResult) -> String {
    let mut s = String::from("temperature,top_k,jobs,rank");
    for h in HEADLINES {
        let _ = write!(s, ",{0},{0}_ci_low,{0}_ci_high", h.name);
    }
    s.push_str(",diverged_jobs,pooled_hist_intersection,pooled_jaccard,pooled_kl_hist,pooled_js_hist,pooled_chi_square_p,noise_floor,cross_library,parity_gap,parity_gap_ci_low,parity_gap_ci_high,above_noise_floor\n");
    let f = |x: Option<f64>| {
        x.filter(|v| v.is_finite())
            .map(|v| format!("{v}"))
            .unwrap_or_default()
    };
    for c in &r.cells {
        let _ = write!(s, "{},{},{},{}", c.temperature, c.top_k, c.jobs, c.rank);
        for h in HEADLINES {
            let e = (h.get)(c);
            let _ = write!(
                s,
                ",{},{},{}",
                f(e.map(|e| e.value)),
                f(e.map(|e| e.ci_low)),
                f(e.map(|e| e.ci_high))
            );
        }
        let p = &c.pooled;
        let _ = writeln!(
            s,
            ",{},{},{},{},{},{},{},{},{},{},{},{}",
            c.diverged_jobs,
            f(p.hist_intersection),
            f(p.jaccard),
            f(p.kl_hist),
            f(p.js_hist),
            f(p.chi_square_p),
            f(c.noise_floor.as_ref().map(|e| e.value)),
            f(c.cross_library.as_ref().map(|e| e.value)),
            f(c.gap.as_ref().map(|e| e.value)),
            f(c.gap.as_ref().map(|e| e.ci_low)),
            f(c.gap.as_ref().map(|e| e.ci_high)),
            c.above_noise_floor.map_or(String::new(), |b| b.to_string())
        );
    }
    s
}

/// Writes every output into `dir` (each file atomically); `stats`, the run's, is the `run`
/// section of `sweep.json` (null after a merge).
pub fn write_all<S: Serialize>(dir: &Path, r: &SweepResult, stats: Option<&S>) -> Result<()> {
    let plots = match ensure_font() {
        Ok(()) => {
            for h in HEADLINES {
                heatmap(dir, r, h)?;
            }
            true
        }
        Err(e) => {
            eprintln!("warning: {e}; the sweep has no heatmaps");
            false
        }
    };
    let doc = serde_json::json!({ "result": r, "run": stats });
    let mut json = serde_json::to_vec_pretty(&doc)?;
    json.push(b'\n');
    crate::util::write_atomic(&dir.join("sweep.json"), &json)?;
    crate::util::write_atomic(&dir.join("sweep.csv"), csv(r).as_bytes())?;
    crate::util::write_atomic(&dir.join("sweep.md"), markdown(r, plots).as_bytes())?;
    Ok(())
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("heatmap drawing failed: {e:?}")
}

fn heatmap(dir: &Path, r: &SweepResult, h: &Headline) -> Result<()> {
    let nk = r.spec.top_ks.len().max(1) as u32;
    let (w, hgt) = (200 + 190 * nk, 140 + 80 * r.spec.temperatures.len() as u32);
    let png = dir.join(format!("heatmap_{}.png", h.name));
    let tmp = crate::util::temp_sibling(&png).with_extension("png");
    {
        let root = BitMapBackend::new(&tmp, (w, hgt)).into_drawing_area();
        draw(&root, r, h)?;
        root.present().map_err(err)?;
    }
    std::fs::rename(&tmp, &png)?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, hgt)).into_drawing_area();
        draw(&root, r, h)?;
        root.present().map_err(err)?;
    }
    crate::util::write_atomic(&dir.join(format!("heatmap_{}.svg", h.name)), svg.as_bytes())
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    r: &SweepResult,
    h: &Headline,
) -> Result<()> {
    const FONT: &str = "sans-serif";
    root.fill(&WHITE).map_err(err)?;
    let cells = r.spec.cells();
    let (temps, ks) = r.spec.axes();
    let vals: Vec<Option<&Estimate>> = r.cells.iter().map(|c| (h.get)(c)).collect();
    let (lo, hi) = fixed_range(h.name, r.spec.max_frames);
    // t in [0, 1], 1 = better (yellow); the scale is fixed per metric (not min–max), so equal
    // colours mean equal values across sweeps and a tiny spread does not look dramatic.
    let norm = |v: f64| {
        let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
        if h.higher_is_better {
            t
        } else {
            1.0 - t
        }
    };
    let (area, bar) = root.split_horizontally(root.dim_in_pixel().0 - 110);
    let (nk, nt) = (ks.len(), temps.len());
    let mut chart = ChartBuilder::on(&area)
        .caption(h.title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        // Integer ranges are inclusive in plotters: 0..n−1 gives n segments.
        .build_cartesian_2d(
            (0..nk.saturating_sub(1)).into_segmented(),
            (0..nt.saturating_sub(1)).into_segmented(),
        )
        .map_err(err)?;
    let kx = ks.clone();
    let ty = temps.clone();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("top-k")
        .y_desc("temperature")
        .x_labels(nk)
        .y_labels(nt)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => kx.get(*i).map(|k| k.to_string()).unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => ty.get(*i).map(|t| t.to_string()).unwrap_or_default(),
            _ => String::new(),
        })
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    for (ci, &(t, k)) in cells.iter().enumerate() {
        let (xi, yi) = (
            ks.iter().position(|&x| x == k).unwrap_or(0),
            temps.iter().position(|&x| x == t).unwrap_or(0),
        );
        let (color, label) = match vals[ci] {
            Some(e) => (colormap(norm(e.value)), pm(e)),
            None => (RGBColor(200, 200, 200), "–".to_string()),
        };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [
                    (SegmentValue::Exact(xi), SegmentValue::Exact(yi)),
                    (SegmentValue::Exact(xi + 1), SegmentValue::Exact(yi + 1)),
                ],
                color.filled(),
            )))
            .map_err(err)?;
        let lum = 0.299 * color.0 as f64 + 0.587 * color.1 as f64 + 0.114 * color.2 as f64;
        let fg = if lum > 140.0 { BLACK } else { WHITE };
        let style = TextStyle::from((FONT, 16).into_font())
            .color(&fg)
            .pos(Pos::new(HPos::Center, VPos::Center));
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (SegmentValue::CenterOf(xi), SegmentValue::CenterOf(yi)),
                style.clone(),
            )))
            .map_err(err)?;
        // The rank on a second line, 20 px below the centre.
        let (px, py) =
            chart.backend_coord(&(SegmentValue::CenterOf(xi), SegmentValue::CenterOf(yi)));
        let small = TextStyle::from((FONT, 13).into_font())
            .color(&fg)
            .pos(Pos::new(HPos::Center, VPos::Center));
        area.draw(&Text::new(
            format!("rank {}", r.cells[ci].rank),
            (
                px - area.get_base_pixel().0,
                py + 20 - area.get_base_pixel().1,
            ),
            small,
        ))
        .map_err(err)?;
    }
    // Colour scale: better at the top.
    let (bw, bh) = bar.dim_in_pixel();
    let (top, bottom) = (40i32, bh as i32 - 50);
    let steps = 40;
    for s in 0..steps {
        let t = 1.0 - s as f64 / steps as f64;
        let y0 = top + (bottom - top) * s / steps;
        let y1 = top + (bottom - top) * (s + 1) / steps;
        bar.draw(&Rectangle::new([(10, y0), (30, y1)], colormap(t).filled()))
            .map_err(err)?;
    }
    let (best, worst) = if h.higher_is_better {
        (hi, lo)
    } else {
        (lo, hi)
    };
    let fmt = |v: f64| if v.is_finite() { num(v) } else { "–".into() };
    let ts = TextStyle::from((FONT, 12).into_font()).color(&BLACK);
    bar.draw(&Text::new(
        format!("{} (better)", fmt(best)),
        (8, top - 18),
        ts.clone(),
    ))
    .map_err(err)?;
    bar.draw(&Text::new(fmt(worst), (8, bottom + 6), ts))
        .map_err(err)?;
    let _ = bw;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::aggregate::aggregate;
    use super::super::aggregate::tests::{results, spec};
    use super::*;

    /// The outputs show the floor and the gap; heatmap colours use fixed ranges.
    #[test]
    fn outputs_show_the_noise_floor_and_fixed_ranges() {
        let sp = spec(&[0.6, 0.8], &[50, 100], 8);
        let r = aggregate(&sp, &results(&sp, |_, _| 0)).unwrap();
        assert!(terminal(&r).contains("noise floor"));
        assert!(markdown_table(&r).contains("parity gap"));
        let csv = csv(&r);
        assert!(csv.lines().next().unwrap().ends_with("above_noise_floor"));
        assert!(!csv.contains("NaN"));
        assert_eq!(fixed_range("hist_intersection", 40), (0.0, 1.0));
        assert_eq!(fixed_range("divergence_frame", 40), (0.0, 40.0));
    }
}
