//! The bisect report: relative error of every activation tap in execution order, on a log scale
//! with the tolerance as a line and the first breach in red, plus the tap table.
use super::BisectReport;
use crate::report::plots::ensure_font;
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const FONT: &str = "sans-serif";
/// Relative errors are drawn from 1e-9 (exact agreement sits on the axis) to 1e1.
const FLOOR: f64 = 1e-9;
const CEIL: f64 = 1e1;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("bisect plot failed: {e:?}")
}

/// Draws `bisect.png` (the bar chart) into `dir`.
pub fn plot(r: &BisectReport, path: &Path) -> Result<()> {
    ensure_font()?;
    let n = r.taps.len().max(1);
    let width = (n as u32 * 9 + 200).clamp(900, 4000);
    let root = BitMapBackend::new(path, (width, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let title = format!(
        "relative error by tap, frame {} ({} vs {}): {}",
        r.frame,
        r.backend_a,
        r.backend_b,
        match (&r.component, &r.location) {
            (Some(c), Some(l)) => format!("{c} at {l} departs first (red)"),
            _ => "no tap departs".to_string(),
        }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, (FLOOR..CEIL).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("tap in execution order (see the table)")
        .y_desc("max|Δ| / max|reference|")
        .x_labels(20)
        .x_label_formatter(&|x| format!("{}", *x as usize))
        .y_label_formatter(&|y| format!("{y:.0e}"))
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    let bars = r.taps.iter().enumerate().map(|(i, t)| {
        let v = if t.rel.is_finite() {
            t.rel.clamp(FLOOR, CEIL)
        } else {
            CEIL
        };
        let color = if Some(i) == r.first_breach {
            RED
        } else if t.breach {
            RGBColor(240, 150, 150)
        } else {
            RGBColor(31, 119, 180)
        };
        Rectangle::new(
            [(i as f64 + 0.1, FLOOR), (i as f64 + 0.9, v)],
            color.filled(),
        )
    });
    chart.draw_series(bars).map_err(err)?;
    let tol = r.rtol.clamp(FLOOR, CEIL);
    chart
        .draw_series(LineSeries::new(
            [(0.0, tol), (n as f64, tol)],
            BLACK.stroke_width(2),
        ))
        .map_err(err)?
        .label(format!("tolerance {:.0e}", r.rtol))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes index.html, bisect.json and bisect.png into `dir` (replacing only an earlier report).
pub fn write_report_dir(r: &BisectReport, dir: &Path) -> Result<PathBuf> {
    let stage =
        crate::outputs::StagedDir::begin(dir, crate::outputs::OutputKind::Report, "--report")?;
    let tmp = stage.path();
    plot(r, &tmp.join("bisect.png"))?;
    let mut json = serde_json::to_string_pretty(r)?;
    json.push('\n');
    std::fs::write(tmp.join("bisect.json"), json).context("writing bisect.json")?;
    let mut rows = String::new();
    for (i, t) in r.taps.iter().enumerate() {
        let class = if Some(i) == r.first_breach {
            " class=\"first\""
        } else if t.breach {
            " class=\"breach\""
        } else {
            ""
        };
        rows.push_str(&format!(
            "<tr{class}><td>{i}</td><td>{}</td><td>{:?}</td><td>{:.3e}</td><td>{:.3e}</td><td>{:.3e}</td><td>{}</td></tr>\n",
            html_escape(&t.name),
            t.shape,
            t.max_abs,
            t.scale,
            t.rel,
            html_escape(t.note.as_deref().unwrap_or(""))
        ));
    }
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>csm-parity bisect</title>\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}\
tr.first{{background:#f88}}tr.breach{{background:#fdd}}.verdict{{font-size:1.2em;padding:.6em;border:2px solid {};}}</style></head><body>\
<h1>Where the pipelines part</h1><p class=\"verdict\">{}</p>\
<p>Run A <code>{}</code> ({}), run B <code>{}</code> ({}{}); both replayed teacher-forced on run A's tokens up to frame {}; \
every tap of that frame compared; tolerance: max|Δ| / max|A| ≤ {:.0e}.</p>\
<img src=\"bisect.png\" alt=\"relative error by tap\" style=\"max-width:100%\">\
<table><tr><th>#</th><th>tap</th><th>shape</th><th>max|Δ|</th><th>scale max|A|</th><th>rel</th><th>note</th></tr>\n{rows}</table></body></html>\n",
        if r.first_breach.is_some() { "#c00" } else { "#080" },
        html_escape(&r.sentence),
        html_escape(&r.run_a),
        r.backend_a,
        html_escape(&r.run_b),
        r.backend_b,
        r.fault_b.as_deref().map(|f| format!(", fault {f}")).unwrap_or_default(),
        r.frame,
        r.rtol
    );
    std::fs::write(tmp.join("index.html"), html).context("writing index.html")?;
    stage.commit()
}
