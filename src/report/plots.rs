//! Plots (plotters, PNG + SVG): token histograms, KL and |Δlogit| heatmaps, token-agreement
//! map with the divergence point, top-token comparison. Every plot has a title, axis labels, a
//! legend or a colour scale; legends sit in a strip right of the plot area, never on the data.
use crate::analysis::Diff;
use anyhow::{anyhow, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

/// One rendered plot: `<name>.png` and `<name>.svg` in the report directory.
#[derive(Debug, Clone)]
pub struct Plot {
    pub name: String,
    pub title: String,
    pub caption: String,
    /// The SVG document, for inlining into index.html.
    pub svg: String,
}

const FONT: &str = "sans-serif";
const COLOR_A: RGBColor = RGBColor(31, 119, 180);
const COLOR_B: RGBColor = RGBColor(214, 39, 40);
const GREY: RGBColor = RGBColor(200, 200, 200);
/// Most heatmap columns drawn; longer runs are binned (max over the frames of a bin).
const MAX_COLUMNS: usize = 300;

/// Candidate TrueType fonts (plotters needs one for text metrics in both backends).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Geneva.ttf",
];

/// Registers a font with plotters once; Err names what was searched.
pub fn ensure_font() -> Result<()> {
    static STATE: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let st = STATE.get_or_init(|| {
        let mut cands: Vec<String> = Vec::new();
        if let Ok(p) = std::env::var("CSM_PARITY_FONT") {
            cands.push(p);
        }
        cands.extend(FONT_PATHS.iter().map(|s| s.to_string()));
        for p in &cands {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    let _ = plotters::style::register_font(FONT, FontStyle::Bold, bytes);
                    return Ok(p.clone());
                }
            }
        }
        Err(format!(
            "no TrueType font found for the plots (set CSM_PARITY_FONT to a .ttf file; searched {})",
            cands.join(", ")
        ))
    });
    st.as_ref().map(|_| ()).map_err(|e| anyhow!("{e}"))
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot drawing failed: {e:?}")
}

/// Viridis-like colour map on t ∈ [0, 1].
pub fn colormap(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * 4.0;
    let i = (x.floor() as usize).min(3);
    let w = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let m = |p: f64, q: f64| (p + (q - p) * w).round() as u8;
    RGBColor(m(a.0, b.0), m(a.1, b.1), m(a.2, b.2))
}

/// Renders every plot as PNG + SVG into `dir`. Without a usable font it returns no plots (the
/// report says so) rather than failing.
pub fn render_all(d: &Diff, dir: &Path) -> Result<Vec<Plot>> {
    if let Err(e) = ensure_font() {
        eprintln!("warning: {e}; the report has no plots");
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let chosen = d.divergence.point.map(|p| p.codebook).unwrap_or(0);
    let specs: Vec<(&str, String, String, Kind)> = vec![
        (
            "token_hist_all",
            "Token frequencies, all codebooks".into(),
            "Normalized histograms of the sampled tokens of both runs over the common prefix, overlaid. Bars that do not overlap show tokens one run samples more often.".into(),
            Kind::Hist(None),
        ),
        (
            "token_hist_codebook",
            format!("Token frequencies, codebook {chosen}"),
            format!("The same for codebook {chosen} (the divergence codebook, or 0 when the runs do not diverge)."),
            Kind::Hist(Some(chosen)),
        ),
        (
            "kl_heatmap",
            "Per-step KL(softmax A ‖ softmax B)".into(),
            "KL divergence of the temperature-1 softmax of the logits at each frame × codebook, fixed log10 colour scale from 1e-12 to 10 nats (a clean run is dark). Grey: not comparable (after the first token mismatch without teacher forcing) or logits not recorded.".into(),
            Kind::Heat(Heat::Kl),
        ),
        (
            "logit_diff_heatmap",
            "Per-step max |logit A − logit B|".into(),
            "Largest absolute logit difference at each frame × codebook, fixed log10 colour scale from atol·1e-6 to atol·1e3: the tolerance (marked) has the same colour in every report.".into(),
            Kind::Heat(Heat::MaxAbs),
        ),
        (
            "agreement_map",
            "Sampled-token agreement".into(),
            "Green: the sampled tokens agree; red: they differ; pale colours: steps after the first token mismatch, not comparable without teacher forcing. The black ring marks the divergence point.".into(),
            Kind::Agreement,
        ),
        (
            "top_tokens",
            "Most frequent tokens".into(),
            "Counts of the most frequent sampled tokens of either run, side by side.".into(),
            Kind::TopTokens,
        ),
    ];
    let (w, h) = (1000u32, 420u32);
    for (name, title, caption, kind) in specs {
        let png = dir.join(format!("{name}.png"));
        {
            let root = BitMapBackend::new(&png, (w, h)).into_drawing_area();
            draw(d, &root, &title, kind)?;
            root.present().map_err(err)?;
        }
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
            draw(d, &root, &title, kind)?;
            root.present().map_err(err)?;
        }
        std::fs::write(dir.join(format!("{name}.svg")), &svg)?;
        out.push(Plot {
            name: name.to_string(),
            title,
            caption,
            svg,
        });
    }
    Ok(out)
}

/// A heatmap quantity.
#[derive(Debug, Clone, Copy)]
pub enum Heat {
    Kl,
    MaxAbs,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Hist(Option<usize>),
    Heat(Heat),
    Agreement,
    TopTokens,
}

fn draw<DB: DrawingBackend>(
    d: &Diff,
    root: &DrawingArea<DB, Shift>,
    title: &str,
    kind: Kind,
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    match kind {
        Kind::Hist(cb) => hist(d, root, title, cb),
        Kind::Heat(h) => heat(d, root, title, h),
        Kind::Agreement => agreement(d, root, title),
        Kind::TopTokens => top_tokens(d, root, title),
    }
}

fn freq(tokens: &[i32], sel: impl Fn(usize) -> bool) -> (HashMap<i32, f64>, usize) {
    let mut h: HashMap<i32, f64> = HashMap::new();
    let mut n = 0usize;
    for (i, &t) in tokens.iter().enumerate() {
        if sel(i) {
            *h.entry(t).or_insert(0.0) += 1.0;
            n += 1;
        }
    }
    if n > 0 {
        h.values_mut().for_each(|v| *v /= n as f64);
    }
    (h, n)
}

/// Map entries in token order (deterministic output).
fn sorted(h: &HashMap<i32, f64>) -> Vec<(i32, f64)> {
    let mut v: Vec<(i32, f64)> = h.iter().map(|(&t, &p)| (t, p)).collect();
    v.sort_by_key(|x| x.0);
    v
}

fn hist<DB: DrawingBackend>(
    d: &Diff,
    root: &DrawingArea<DB, Shift>,
    title: &str,
    cb: Option<usize>,
) -> Result<()> {
    let s = &d.steps;
    let c_n = s.codebooks.max(1);
    let sel = |i: usize| cb.is_none_or(|c| i % c_n == c);
    let (ha, na) = freq(&s.tokens_a, sel);
    let (hb, nb) = freq(&s.tokens_b, sel);
    let ymax = ha
        .values()
        .chain(hb.values())
        .fold(0f64, |m, &v| m.max(v))
        .max(1e-9)
        * 1.05;
    let xmax = d.vocab as f64;
    let (plot, legend) = with_legend_strip(root, title)?;
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("token id")
        .y_desc("frequency (fraction of steps)")
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    // Bars at least ~2 px wide so single tokens stay visible in a large vocab.
    let bw = (xmax / 400.0).max(1.0);
    let mut entries = Vec::new();
    for (h, color, label, n) in [(&ha, COLOR_A, "A", na), (&hb, COLOR_B, "B", nb)] {
        let backend = if label == "A" {
            &d.a.backend
        } else {
            &d.b.backend
        };
        chart
            .draw_series(sorted(h).into_iter().map(|(t, p)| {
                Rectangle::new(
                    [(t as f64, 0.0), (t as f64 + bw, p)],
                    color.mix(0.55).filled(),
                )
            }))
            .map_err(err)?;
        entries.push((
            vec![format!("{label}: {backend}"), format!("{n} tokens")],
            Swatch::Box(color.mix(0.55).filled()),
        ));
    }
    draw_legend(&legend, &entries)
}

/// (value per step or None, columns, bin size).
fn binned(d: &Diff, value: impl Fn(usize) -> Option<f64>) -> (Vec<Option<f64>>, usize, usize) {
    let s = &d.steps;
    let f_n = s.frames.max(1);
    let bin = f_n.div_ceil(MAX_COLUMNS);
    let cols = f_n.div_ceil(bin);
    let mut out = vec![None; cols * s.codebooks];
    for f in 0..s.frames {
        for c in 0..s.codebooks {
            let i = f * s.codebooks + c;
            if let Some(v) = value(i).filter(|v| v.is_finite()) {
                let o = &mut out[(f / bin) * s.codebooks + c];
                *o = Some(o.map_or(v, |x: f64| x.max(v)));
            }
        }
    }
    (out, cols, bin)
}

/// The frame × codebook chart of the heatmaps and the agreement map: cells span [k − ½, k + ½],
/// so integer ticks sit at the cell centres; binned columns say so on the frame axis
/// (`frame (<binning> of 3)`).
fn grid<'c, DB: DrawingBackend>(
    builder: &mut ChartBuilder<'_, '_, DB>,
    (cols, bin, c_n): (usize, usize, usize),
    binning: &str,
) -> Result<ChartContext<'c, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
    let mut chart = builder
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            -0.5f64..(cols * bin) as f64 - 0.5,
            -0.5f64..c_n as f64 - 0.5,
        )
        .map_err(err)?;
    let int_label = |v: &f64| {
        if (v - v.round()).abs() < 1e-6 && *v >= -1e-6 {
            format!("{}", v.round() as i64)
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(if bin > 1 {
            format!("frame ({binning} of {bin})")
        } else {
            "frame".into()
        })
        .y_desc("codebook")
        .x_labels((cols * bin).clamp(2, 21))
        .y_labels((c_n + 1).clamp(2, 17))
        .x_label_formatter(&int_label)
        .y_label_formatter(&int_label)
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    Ok(chart)
}

fn heat<DB: DrawingBackend>(
    d: &Diff,
    root: &DrawingArea<DB, Shift>,
    title: &str,
    h: Heat,
) -> Result<()> {
    let s = &d.steps;
    let (vals, cols, bin) = binned(d, |i| {
        if i >= s.comparable_end {
            return None;
        }
        s.logits[i].map(|x| match h {
            Heat::Kl => x.kl,
            Heat::MaxAbs => x.max_abs as f64,
        })
    });
    // Fixed log10 scales, so a clean run looks clean and two reports compare by colour: KL
    // from 1e-12 (exact zeros drawn there) to 10 nats; |Δlogit| from atol·1e-6 to atol·1e3,
    // which puts the tolerance at the same colour (2/3 up the scale) in every report.
    let (lo, hi) = heat_scale(h, d.tolerances.atol as f64);
    debug_assert!(hi > lo);
    let logs: Vec<Option<f64>> = vals
        .iter()
        .map(|v| v.map(|x| x.max(1e-300).log10().clamp(lo, hi)))
        .collect();
    let (w, _) = root.dim_in_pixel();
    let (main, bar) = root.split_horizontally(w as i32 - 130);
    let c_n = s.codebooks;
    let mut chart = grid(
        ChartBuilder::on(&main).caption(title, (FONT, 20)),
        (cols, bin, c_n),
        "max over bins",
    )?;
    chart
        .draw_series((0..cols).flat_map(|col| {
            let logs = &logs;
            (0..c_n).map(move |c| {
                let color = match logs[col * c_n + c] {
                    Some(v) => colormap((v - lo) / (hi - lo)),
                    None => GREY,
                };
                let x0 = (col * bin) as f64 - 0.5;
                Rectangle::new(
                    [(x0, c as f64 - 0.5), (x0 + bin as f64, c as f64 + 0.5)],
                    color.filled(),
                )
            })
        }))
        .map_err(err)?;
    let tol = match h {
        Heat::MaxAbs => Some((d.tolerances.atol as f64).log10()),
        Heat::Kl => None,
    };
    colorbar(
        &bar,
        lo,
        hi,
        match h {
            Heat::Kl => "log10 KL (nats)",
            Heat::MaxAbs => "log10 max |Δ|",
        },
        tol,
    )
}

/// The fixed log10 colour range of a heatmap.
pub fn heat_scale(h: Heat, atol: f64) -> (f64, f64) {
    match h {
        Heat::Kl => (-12.0, 1.0),
        Heat::MaxAbs => {
            let t = atol.max(1e-30).log10();
            (t - 6.0, t + 3.0)
        }
    }
}

fn colorbar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lo: f64,
    hi: f64,
    label: &str,
    mark: Option<f64>,
) -> Result<()> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(45)
        .margin_bottom(52)
        .margin_right(10)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..1f64, lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc(label)
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    let n = 100;
    chart
        .draw_series((0..n).map(|i| {
            let a = lo + (hi - lo) * i as f64 / n as f64;
            let b = lo + (hi - lo) * (i + 1) as f64 / n as f64;
            Rectangle::new(
                [(0.0, a), (1.0, b)],
                colormap(i as f64 / (n - 1) as f64).filled(),
            )
        }))
        .map_err(err)?;
    if let Some(m) = mark.filter(|m| *m >= lo && *m <= hi) {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, m), (1.0, m)],
                RED.stroke_width(3),
            )))
            .map_err(err)?
            .label("atol");
        chart
            .draw_series(std::iter::once(Text::new(
                "atol",
                (0.05, m),
                (FONT, 12).into_font().color(&WHITE),
            )))
            .map_err(err)?;
    }
    Ok(())
}

fn agreement<DB: DrawingBackend>(
    d: &Diff,
    root: &DrawingArea<DB, Shift>,
    title: &str,
) -> Result<()> {
    let s = &d.steps;
    let c_n = s.codebooks;
    // 1 = agree, 0 = differ; binned by min (any mismatch in the bin shows).
    let f_n = s.frames.max(1);
    let bin = f_n.div_ceil(MAX_COLUMNS);
    let cols = f_n.div_ceil(bin);
    let mut cell = vec![(true, true); cols * c_n]; // (agree, comparable)
    for i in 0..s.tokens_a.len() {
        let (f, c) = (i / c_n, i % c_n);
        let e = &mut cell[(f / bin) * c_n + c];
        e.0 &= s.tok_eq(i);
        e.1 &= i < s.comparable_end;
    }
    let (plot, legend) = with_legend_strip(root, title)?;
    let mut chart = grid(&mut ChartBuilder::on(&plot), (cols, bin, c_n), "bins")?;
    let green = RGBColor(44, 160, 44);
    let color = |agree: bool, comp: bool| match (agree, comp) {
        (true, true) => green,
        (false, true) => COLOR_B,
        (true, false) => RGBColor(190, 225, 190),
        (false, false) => RGBColor(245, 190, 190),
    };
    chart
        .draw_series((0..cols).flat_map(|col| {
            let cell = &cell;
            (0..c_n).map(move |c| {
                let (a, k) = cell[col * c_n + c];
                let x0 = (col * bin) as f64 - 0.5;
                Rectangle::new(
                    [(x0, c as f64 - 0.5), (x0 + bin as f64, c as f64 + 0.5)],
                    color(a, k).filled(),
                )
            })
        }))
        .map_err(err)?;
    let mut entries = vec![
        (
            vec!["tokens agree".to_string()],
            Swatch::Box(green.filled()),
        ),
        (
            vec!["tokens differ".to_string()],
            Swatch::Box(COLOR_B.filled()),
        ),
        (
            vec![
                "not comparable".to_string(),
                "(after divergence)".to_string(),
            ],
            Swatch::Box(RGBColor(245, 190, 190).filled()),
        ),
    ];
    if let Some(p) = d.divergence.point {
        // The centre of the point's cell (of its bin when frames are binned).
        let x0 = (p.frame / bin * bin) as f64 - 0.5;
        let (x, y) = (x0 + 0.5 * bin as f64, p.codebook as f64);
        chart
            .draw_series([
                Circle::new((x, y), 9, BLACK.stroke_width(3)),
                Circle::new((x, y), 12, WHITE.stroke_width(2)),
            ])
            .map_err(err)?;
        entries.push((
            vec![
                "divergence point".to_string(),
                format!("frame {}, codebook {}", p.frame, p.codebook),
                format!(
                    "stage {}",
                    d.divergence.stage.map(|s| s.name()).unwrap_or("?")
                ),
            ],
            Swatch::Ring,
        ));
    }
    draw_legend(&legend, &entries)
}

/// Width of the legend strip right of a plot (outside the data).
pub const LEGEND_WIDTH: u32 = 210;

/// A legend entry's mark.
enum Swatch {
    Box(ShapeStyle),
    Ring,
}

/// Titles `root` and splits what is left into the plot area and a legend strip of
/// [`LEGEND_WIDTH`] pixels on its right: legends never sit on the data.
fn with_legend_strip<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
) -> Result<(DrawingArea<DB, Shift>, DrawingArea<DB, Shift>)> {
    let area = root.titled(title, (FONT, 20)).map_err(err)?;
    let w = area.dim_in_pixel().0;
    Ok(area.split_horizontally(w.saturating_sub(LEGEND_WIDTH) as i32))
}

/// Draws legend entries (one mark, one or more text lines each) top-down in `area`.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(Vec<String>, Swatch)],
) -> Result<()> {
    let mut y = 24i32;
    for (lines, swatch) in entries {
        match swatch {
            Swatch::Box(style) => area
                .draw(&Rectangle::new([(8, y - 6), (22, y + 6)], *style))
                .map_err(err)?,
            Swatch::Ring => area
                .draw(&Circle::new((15, y), 6, BLACK.stroke_width(2)))
                .map_err(err)?,
        }
        for (k, line) in lines.iter().enumerate() {
            area.draw(&Text::new(
                line.clone(),
                (30, y - 7 + 16 * k as i32),
                (FONT, 13).into_font(),
            ))
            .map_err(err)?;
        }
        y += 16 * lines.len() as i32 + 10;
    }
    Ok(())
}

fn top_tokens<DB: DrawingBackend>(
    d: &Diff,
    root: &DrawingArea<DB, Shift>,
    title: &str,
) -> Result<()> {
    let t = &d.overall.tokens;
    let ha: HashMap<i32, u64> =
        crate::analysis::metrics::histogram(d.steps.tokens_a.iter().copied());
    let hb: HashMap<i32, u64> =
        crate::analysis::metrics::histogram(d.steps.tokens_b.iter().copied());
    let mut toks: Vec<i32> = t.top_a.iter().chain(&t.top_b).map(|x| x.0).collect();
    toks.sort_by(|x, y| {
        let cx = ha.get(x).unwrap_or(&0) + hb.get(x).unwrap_or(&0);
        let cy = ha.get(y).unwrap_or(&0) + hb.get(y).unwrap_or(&0);
        cy.cmp(&cx).then(x.cmp(y))
    });
    toks.dedup();
    let k = toks.len().max(1);
    let ymax = toks
        .iter()
        .map(|t| *ha.get(t).unwrap_or(&0).max(hb.get(t).unwrap_or(&0)))
        .max()
        .unwrap_or(1) as f64
        * 1.05
        + 0.5;
    let (plot, legend) = with_legend_strip(root, title)?;
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..k as f64, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .x_desc("token id (labels under the bars)")
        .y_desc("count")
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    let mut entries = Vec::new();
    for (h, color, off, label) in [
        (&ha, COLOR_A, 0.1, format!("A: {}", d.a.backend)),
        (&hb, COLOR_B, 0.5, format!("B: {}", d.b.backend)),
    ] {
        chart
            .draw_series(toks.iter().enumerate().map(|(i, t)| {
                let v = *h.get(t).unwrap_or(&0) as f64;
                Rectangle::new(
                    [(i as f64 + off, 0.0), (i as f64 + off + 0.4, v)],
                    color.filled(),
                )
            }))
            .map_err(err)?;
        entries.push((vec![label], Swatch::Box(color.filled())));
    }
    let style =
        TextStyle::from((FONT, 13).into_font()).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
    chart
        .draw_series(
            toks.iter()
                .enumerate()
                .map(|(i, t)| Text::new(t.to_string(), (i as f64 + 0.5, 0.0), style.clone())),
        )
        .map_err(err)?;
    draw_legend(&legend, &entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed colour scales: KL from 1e-12 up, |Δlogit| with the tolerance always 2/3 up the
    /// scale (the same colour in every report), independent of the data.
    #[test]
    fn heat_scales_are_fixed() {
        assert_eq!(heat_scale(Heat::Kl, 1e-3), (-12.0, 1.0));
        for atol in [1e-3, 0.5] {
            let (lo, hi) = heat_scale(Heat::MaxAbs, atol);
            let t = (atol.log10() - lo) / (hi - lo);
            assert!((t - 2.0 / 3.0).abs() < 1e-12, "{t}");
        }
    }
}
