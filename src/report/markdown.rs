//! report.md: the full report as markdown, laid out from the [`ReportView`].
use super::plots::Plot;
use super::view::{Cell, EstimateView, Medium, ReportView, Span, Table};
use std::fmt::Write;

fn est(e: &EstimateView) -> String {
    match &e.ci {
        Ok(c) => format!(
            "{} [{}, {}] ({}% CI, {} resamples{})",
            e.value,
            c.low,
            c.high,
            c.level,
            c.resamples,
            c.note
                .as_ref()
                .map(|n| format!("; {n}"))
                .unwrap_or_default()
        ),
        Err(why) => format!("{} (no CI: {why})", e.value),
    }
}

/// `|` would end the cell.
fn pipes(s: &str) -> String {
    s.replace('|', "\\|")
}

/// A cell's text; a split cell takes one column per part.
fn cell(c: &Cell) -> String {
    match c {
        Cell::Text(s) | Cell::Strong(s) => pipes(s),
        Cell::Spans(v) => Span::join(v, pipes, |s| format!("_{s}")),
        Cell::Split(v) => v.iter().map(|s| pipes(s)).collect::<Vec<_>>().join(" | "),
        Cell::Token { id, text } => match text {
            Some(t) => format!("{id} `{}`", pipes(t).replace('`', "'")),
            None => id.to_string(),
        },
        Cell::Estimate(e) => est(e),
    }
}

fn columns(c: &Cell) -> usize {
    match c {
        Cell::Split(v) => v.len(),
        _ => 1,
    }
}

fn line(s: &mut String, cells: &[Cell], head: bool) {
    s.push('|');
    for c in cells {
        match cell(c) {
            t if head && t.is_empty() => s.push_str(" |"),
            t => {
                let _ = write!(s, " {t} |");
            }
        }
    }
    s.push('\n');
}

fn table(s: &mut String, t: &Table) {
    line(s, &t.head, true);
    let n: usize = t.head.iter().map(columns).sum();
    s.push_str(&"|---".repeat(n));
    s.push_str("|\n");
    for r in t.rows_for(Medium::Markdown) {
        line(s, &r.cells, false);
    }
}

/// Renders report.md; `plots` are linked by file name.
pub fn render(d: &crate::analysis::Diff, plots: &[Plot]) -> String {
    let v = ReportView::of(d);
    let mut s = String::new();
    let [a, b] = &v.runs;
    let _ = writeln!(
        s,
        "# csm-parity diff: {} (A) vs {} (B)\n",
        a.backend, b.backend
    );
    let _ = writeln!(s, "**{}**\n", v.verdict_line);
    if let Some((_, e)) = &v.stage {
        let _ = writeln!(s, "Stage: {e}.\n");
    }
    let _ = writeln!(s, "## Runs\n");
    table(&mut s, &v.runs_table());
    let c = &v.scope;
    let _ = writeln!(
        s,
        "\nCompared {} frames × {} codebooks = {} steps (vocab {}); {} comparable. {}.\n",
        c.frames, c.codebooks, c.steps, c.vocab, c.comparable, c.comparability
    );
    let _ = writeln!(s, "Tolerances: {}.\n", v.tolerances.text());
    for n in &v.not_compared {
        let _ = writeln!(s, "- not compared: {n}");
    }
    if !v.not_compared.is_empty() {
        s.push('\n');
    }
    if let Some(n) = v.nonfinite_note() {
        let _ = writeln!(s, "{n}\n");
    }
    let _ = writeln!(s, "## Divergence\n");
    table(&mut s, &v.events_table());
    s.push('\n');
    if let Some(m) = &v.membership {
        let _ = writeln!(
            s,
            "At the first token mismatch ({}): A sampled {}, B sampled {}. B's token has rank {} in A's {}, A's token rank {} in B's — {}.\n",
            m.step, m.token_a, m.token_b, m.rank_of_b_in_a, m.source, m.rank_of_a_in_b, m.tie
        );
    }
    if let Some(t) = &v.top {
        let _ = writeln!(
            s,
            "Top tokens at the divergence step ({}, {}):\n",
            t.step, t.source
        );
        table(&mut s, &t.table());
        s.push('\n');
    }
    if let Some(e) = &v.largest {
        let _ = writeln!(
            s,
            "Largest |Δlogit|: {} at {}, vocab index {} (A {}, B {}).\n",
            e.abs, e.step, e.index, e.a, e.b
        );
    }
    let _ = writeln!(s, "## Agreement\n");
    table(&mut s, &v.agreement);
    let _ = writeln!(s, "\n## Per-step distributions\n");
    table(&mut s, &v.distributions);
    let _ = writeln!(
        s,
        "\n## Token distributions (all {} common steps)\n",
        v.scope.steps
    );
    table(&mut s, &v.tokens);
    let _ = writeln!(s, "\n## Per codebook\n");
    table(&mut s, &v.codebooks_table());
    if let Some(e) = &v.performance {
        let _ = writeln!(s, "\n## Performance\n\n{e}");
    }
    if !v.warnings.is_empty() {
        let _ = writeln!(s, "\n## Warnings\n");
        for w in &v.warnings {
            let _ = writeln!(s, "- {w}");
        }
    }
    if !plots.is_empty() {
        let _ = writeln!(s, "\n## Plots\n");
        for p in plots {
            let _ = writeln!(
                s,
                "### {}\n\n{}\n\n![{}]({}.svg) ([PNG]({}.png))\n",
                p.title, p.caption, p.title, p.name, p.name
            );
        }
    }
    s
}
