//! index.html: one self-contained page (inline CSS, inline SVG plots), read top to bottom, laid
//! out from the [`ReportView`].
use super::plots::Plot;
use super::view::{Cell, EstimateView, Medium, ReportView, Span, Table};
use crate::analysis::Diff;
use anyhow::Result;
use std::fmt::Write;

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn est(e: &EstimateView) -> String {
    match &e.ci {
        Ok(c) => format!(
            "{} <span class=ci>[{}, {}] {}% CI</span>",
            e.value, c.low, c.high, c.level
        ),
        Err(why) => format!("{} <span class=ci>(no CI: {})</span>", e.value, esc(why)),
    }
}

fn cell(c: &Cell) -> String {
    match c {
        Cell::Text(s) => esc(s),
        Cell::Spans(v) => Span::join(v, esc, |s| format!("<sub>{s}</sub>")),
        Cell::Split(v) => esc(&v.join(" / ")),
        Cell::Strong(s) => format!("<b>{}</b>", esc(s)),
        Cell::Token { id, text } => match text {
            Some(t) => format!("{id} <code>{}</code>", esc(t)),
            None => id.to_string(),
        },
        Cell::Estimate(e) => est(e),
    }
}

fn table(s: &mut String, t: &Table) {
    s.push_str("<table><thead><tr>");
    for h in &t.head {
        let _ = write!(s, "<th>{}</th>", cell(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in t.rows_for(Medium::Html) {
        s.push_str("<tr>");
        for c in &r.cells {
            let _ = write!(s, "<td>{}</td>", cell(c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>\n");
}

const CSS: &str = "body{font-family:-apple-system,'Segoe UI',DejaVu Sans,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.verdict{font-size:1.25em;font-weight:bold;padding:.7em 1em;border-radius:6px;margin:1em 0}
.identical{background:#e3f4e3;border:2px solid #2ca02c}.tokens-identical{background:#fdf6e3;border:2px solid #bcbd22}.numerically-close{background:#eef5fb;border:2px solid #1f77b4}
.diverged{background:#fdecea;border:2px solid #d62728}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.ci{color:#666;font-size:.9em}
figure{margin:1.2em 0}figcaption{color:#444;font-size:.92em;margin-top:.3em}figure svg{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#555}.warn{color:#a04000}";

/// Renders index.html with the plots' SVG inlined.
pub fn render(d: &Diff, plots: &[Plot]) -> Result<String> {
    let v = ReportView::of(d);
    let mut s = String::new();
    let (a, b) = (esc(&v.runs[0].backend), esc(&v.runs[1].backend));
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>csm-parity diff: {a} vs {b}</title><style>{CSS}</style></head><body>\n"
    );
    let _ = writeln!(s, "<h1>csm-parity diff: {a} (A, reference) vs {b} (B)</h1>");
    let _ = writeln!(
        s,
        "<div class=\"verdict {}\">{}</div>",
        esc(&v.verdict_kind),
        esc(&v.verdict_line)
    );
    if let Some((stage, e)) = &v.stage {
        let _ = writeln!(s, "<p><b>Stage {stage}:</b> {}.</p>", esc(e));
    }
    let c = &v.scope;
    let _ = writeln!(s, "<p class=note>{} frames × {} codebooks = {} steps compared (vocab {}); {} comparable. {}.</p>", c.frames, c.codebooks, c.steps, c.vocab, c.comparable, esc(&c.comparability));
    let _ = writeln!(
        s,
        "<p class=note>Tolerances: {}.</p>",
        esc(&v.tolerances.text())
    );
    for n in &v.not_compared {
        let _ = writeln!(s, "<p class=note>Not compared: {}</p>", esc(n));
    }
    if let Some(n) = v.nonfinite_note() {
        let _ = writeln!(s, "<p class=warn>{n}</p>");
    }
    for w in &v.warnings {
        let _ = writeln!(s, "<p class=warn>⚠ {}</p>", esc(w));
    }
    s.push_str("<h2>Runs</h2>\n");
    table(&mut s, &v.runs_table());
    s.push_str("<h2>Divergence</h2>\n");
    table(&mut s, &v.events_table());
    if let Some(m) = &v.membership {
        let _ = writeln!(
            s,
            "<p>At the first token mismatch ({}): A sampled {}, B sampled {}; B's token has rank {} in A's {}, A's token rank {} in B's — {}.</p>",
            m.step, m.token_a, m.token_b, m.rank_of_b_in_a, esc(&m.source), m.rank_of_a_in_b, m.tie
        );
    }
    if let Some(t) = &v.top {
        let _ = writeln!(
            s,
            "<p class=note>Top tokens at the divergence step ({}, {}):</p>",
            t.step,
            esc(&t.source)
        );
        table(&mut s, &t.table());
    }
    if let Some(e) = &v.largest {
        let _ = writeln!(
            s,
            "<p>Largest |Δlogit|: {} at {}, vocab index {} (A {}, B {}).</p>",
            e.abs, e.step, e.index, e.a, e.b
        );
    }
    s.push_str("<h2>Agreement</h2>\n");
    table(&mut s, &v.agreement);
    s.push_str("<h2>Per-step distributions</h2>\n");
    table(&mut s, &v.distributions);
    let _ = writeln!(
        s,
        "<h2>Token distributions</h2>\n<p class=note>Sampled tokens of all {} common steps.</p>",
        v.scope.steps
    );
    table(&mut s, &v.tokens);
    s.push_str("<h2>Plots</h2>\n");
    if plots.is_empty() {
        s.push_str(
            "<p class=warn>No plots: no TrueType font was found (set CSM_PARITY_FONT).</p>\n",
        );
    }
    for p in plots {
        let svg = match p.svg.find("<svg") {
            Some(i) => &p.svg[i..],
            None => &p.svg,
        };
        let _ = writeln!(
            s,
            "<figure id=\"{}\">{}<figcaption><b>{}.</b> {} (<a href=\"{}.png\">PNG</a>, <a href=\"{}.svg\">SVG</a>)</figcaption></figure>",
            esc(&p.name),
            svg,
            esc(&p.title),
            esc(&p.caption),
            esc(&p.name),
            esc(&p.name)
        );
    }
    s.push_str("<h2>Per codebook</h2>\n");
    table(&mut s, &v.codebooks_table());
    s.push_str("<p class=note>Generated by csm-parity diff. Metric definitions: docs/diff.md.</p>\n</body></html>\n");
    Ok(s)
}
