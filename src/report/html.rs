//! index.html: one self-contained page (inline CSS, inline SVG plots), read top to bottom.
use super::plots::Plot;
use super::{num, opt_num, step};
use crate::analysis::stats::{Estimate, Summary};
use crate::analysis::{Diff, Metrics};
use anyhow::Result;
use std::fmt::Write;

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn est(e: &Option<Estimate>) -> String {
    match e {
        Some(e) if e.has_ci() => format!(
            "{} <span class=ci>[{}, {}] {}% CI</span>",
            num(e.value),
            num(e.ci_low),
            num(e.ci_high),
            (e.level * 100.0).round()
        ),
        Some(e) => format!(
            "{} <span class=ci>(no CI: {})</span>",
            num(e.value),
            esc(e.note.as_deref().unwrap_or("too little data"))
        ),
        None => "–".into(),
    }
}

fn table(s: &mut String, head: &[&str], rows: &[Vec<String>]) {
    s.push_str("<table><thead><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>\n");
}

fn summary_row(name: &str, s: Option<&Summary>) -> Vec<String> {
    let mut r = vec![esc(name)];
    match s {
        Some(s) => {
            r.push(s.n.to_string());
            r.push(format!("{} ± {}", num(s.mean), num(s.mean_se)));
            for v in [
                s.min, s.p1, s.p10, s.median, s.p90, s.p95, s.p99, s.p99_9, s.max,
            ] {
                r.push(num(v));
            }
        }
        None => {
            r.push("0".into());
            r.extend(std::iter::repeat_n("–".to_string(), 10));
        }
    }
    r
}

fn cb_row(m: &Metrics) -> Vec<String> {
    let l = m.logits.as_ref();
    let t = &m.tokens;
    vec![
        m.codebook
            .map(|c| c.to_string())
            .unwrap_or_else(|| "<b>all</b>".into()),
        m.steps.to_string(),
        num(m.token_agreement),
        opt_num(m.top1_agreement),
        opt_num(l.and_then(|l| l.kl.as_ref()).map(|k| k.mean)),
        opt_num(l.map(|l| l.max_abs.max)),
        opt_num(m.probs.as_ref().and_then(|p| p.kl.as_ref()).map(|k| k.mean)),
        num(t.jaccard),
        num(t.hist_intersection),
        num(t.js_hist),
        t.unique_a.to_string(),
        t.unique_b.to_string(),
    ]
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
    let mut s = String::new();
    let o = &d.overall;
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>csm-parity diff: {} vs {}</title><style>{CSS}</style></head><body>\n",
        esc(&d.a.backend),
        esc(&d.b.backend)
    );
    let _ = writeln!(
        s,
        "<h1>csm-parity diff: {} (A, reference) vs {} (B)</h1>",
        esc(&d.a.backend),
        esc(&d.b.backend)
    );
    let _ = writeln!(
        s,
        "<div class=\"verdict {}\">{}</div>",
        esc(&d.verdict.kind),
        esc(&d.verdict.line)
    );
    if let Some(e) = &d.divergence.explanation {
        let _ = writeln!(
            s,
            "<p><b>Stage {}:</b> {}.</p>",
            d.divergence.stage.map(|x| x.name()).unwrap_or("?"),
            esc(e)
        );
    }
    let _ = writeln!(s, "<p class=note>{} frames × {} codebooks = {} steps compared (vocab {}); {} comparable. {}.</p>", d.frames_compared, d.codebooks, d.steps_total, d.vocab, d.steps_comparable, esc(&d.comparability));
    let tl = &d.tolerances;
    let _ = writeln!(
        s,
        "<p class=note>Tolerances: atol {}, rtol {}, probs atol {} ({}).</p>",
        tl.atol,
        tl.rtol,
        tl.probs_atol,
        esc(&tl.source)
    );
    for n in &d.not_compared {
        let _ = writeln!(s, "<p class=note>Not compared: {}</p>", esc(n));
    }
    let nf = &d.nonfinite;
    if nf.a.logits_steps + nf.a.probs_steps + nf.b.logits_steps + nf.b.probs_steps > 0 {
        let _ = writeln!(
            s,
            "<p class=warn>Non-finite (NaN/Inf) steps: A logits {}, probs {}; B logits {}, probs {} (left out of the summaries).</p>",
            nf.a.logits_steps, nf.a.probs_steps, nf.b.logits_steps, nf.b.probs_steps
        );
    }
    for w in &d.warnings {
        let _ = writeln!(s, "<p class=warn>⚠ {}</p>", esc(w));
    }
    s.push_str("<h2>Runs</h2>\n");
    let runs: Vec<Vec<String>> = [("A (reference)", &d.a), ("B (candidate)", &d.b)]
        .iter()
        .map(|(tag, r)| {
            vec![
                tag.to_string(),
                esc(&r.backend),
                esc(&r.dtype),
                r.frames.to_string(),
                esc(&r.prompt_text),
                format!("{}", r.temperature as f32),
                r.top_k.to_string(),
                esc(&r.logits_storage),
                esc(&r.probs_storage),
                esc(&format!("{} / {}", r.sampler_mode, r.noise)),
                r.seed.to_string(),
                esc(&r.post),
                esc(&r.stop_reason),
                esc(r.fault.as_deref().unwrap_or("–")),
            ]
        })
        .collect();
    table(
        &mut s,
        &[
            "",
            "backend",
            "dtype",
            "frames",
            "prompt",
            "T",
            "top-k",
            "logits",
            "probs",
            "sampler / noise",
            "seed",
            "post",
            "stop",
            "fault",
        ],
        &runs,
    );
    s.push_str("<h2>Divergence</h2>\n");
    let dv = &d.divergence;
    table(
        &mut s,
        &["event", "first step"],
        &[
            vec![
                format!(
                    "divergence point ({})",
                    dv.stage.map(|x| x.name()).unwrap_or("–")
                ),
                step(dv.point),
            ],
            vec![
                "sampled token mismatch".into(),
                step(dv.first_token_mismatch),
            ],
            vec![
                format!(
                    "logits breach (atol {}, rtol {})",
                    d.tolerances.atol, d.tolerances.rtol
                ),
                step(dv.first_logits_breach),
            ],
            vec![
                format!(
                    "probs breach (atol {}, rtol {})",
                    d.tolerances.probs_atol, d.tolerances.rtol
                ),
                step(dv.first_probs_breach),
            ],
            vec![
                "support mismatch (a token kept by one sampler only)".into(),
                step(dv.first_support_mismatch),
            ],
            vec![
                "top-1 (argmax) mismatch".into(),
                step(dv.first_top1_mismatch),
            ],
            vec![
                "post-processing-only mismatch".into(),
                step(dv.first_post_only_mismatch),
            ],
        ],
    );
    if let Some(m) = &d.first_mismatch_membership {
        let _ = writeln!(
            s,
            "<p>At the first token mismatch ({}): A sampled {}, B sampled {}; B's token has rank {} in A's {}, A's token rank {} in B's — {}.</p>",
            step(Some(m.step)),
            m.token_a,
            m.token_b,
            m.rank_of_b_in_a.map_or("–".into(), |r| r.to_string()),
            esc(&m.source),
            m.rank_of_a_in_b.map_or("–".into(), |r| r.to_string()),
            if m.near_tie {
                format!("both in each other's top-{}: a near-tie", m.n)
            } else {
                format!("not a near-tie (top-{})", m.n)
            }
        );
    }
    if let Some(t) = &d.divergence_top {
        let _ = writeln!(
            s,
            "<p class=note>Top tokens at the divergence step ({}, {}):</p>",
            step(Some(t.step)),
            esc(&t.source)
        );
        let rows: Vec<Vec<String>> = t
            .rows
            .iter()
            .map(|r| {
                vec![
                    match &r.text {
                        Some(t) => format!("{} <code>{}</code>", r.token, esc(&format!("{t:?}"))),
                        None => r.token.to_string(),
                    },
                    opt_num(r.p_a),
                    r.rank_a.map_or("–".into(), |x| x.to_string()),
                    opt_num(r.p_b),
                    r.rank_b.map_or("–".into(), |x| x.to_string()),
                ]
            })
            .collect();
        table(&mut s, &["token", "p_A", "rank A", "p_B", "rank B"], &rows);
    }
    if let Some(e) = &d.largest_logit_error {
        let _ = writeln!(
            s,
            "<p>Largest |Δlogit|: {} at {}, vocab index {} (A {}, B {}).</p>",
            num(e.abs as f64),
            step(Some(e.step)),
            e.index,
            num(e.a as f64),
            num(e.b as f64)
        );
    }
    s.push_str("<h2>Agreement</h2>\n");
    let mut rows = vec![
        vec!["token agreement".into(), est(&d.confidence.token_agreement)],
        vec!["post-token agreement".into(), num(o.post_token_agreement)],
        vec!["top-1 agreement".into(), est(&d.confidence.top1_agreement)],
        vec![
            "mean KL(softmax A ‖ softmax B)".into(),
            est(&d.confidence.kl_logits_mean),
        ],
        vec![
            "histogram intersection".into(),
            est(&d.confidence.hist_intersection),
        ],
    ];
    if let Some(l) = &o.logits {
        rows.push(vec!["logits mean |Δ|".into(), num(l.mean_abs)]);
        rows.push(vec!["logits max relative error".into(), num(l.max_rel)]);
        rows.push(vec![
            "logits breaching steps".into(),
            format!("{} of {}", l.breaches, l.max_abs.n),
        ]);
    }
    if let Some(p) = &o.probs {
        rows.push(vec![
            "probs breaching steps".into(),
            format!("{} of {}", p.breaches, p.max_abs.n),
        ]);
        rows.push(vec![
            "probs support mismatches (steps)".into(),
            p.support_mismatch_steps.to_string(),
        ]);
    }
    table(&mut s, &["metric", "value"], &rows);
    s.push_str("<h2>Per-step distributions</h2>\n");
    let l = o.logits.as_ref();
    table(
        &mut s,
        &[
            "quantity",
            "n",
            "mean ± s.e.",
            "min",
            "p1",
            "p10",
            "median",
            "p90",
            "p95",
            "p99",
            "p99.9",
            "max",
        ],
        &[
            summary_row("logits max |Δ|", l.map(|l| &l.max_abs)),
            summary_row("KL(softmax A ‖ softmax B)", l.and_then(|l| l.kl.as_ref())),
            summary_row("cosine(logit rows)", l.and_then(|l| l.cosine.as_ref())),
            summary_row("probs max |Δ|", o.probs.as_ref().map(|p| &p.max_abs)),
            summary_row(
                "KL(probs A ‖ probs B), shared support",
                o.probs.as_ref().and_then(|p| p.kl.as_ref()),
            ),
            summary_row(
                "… on support-mismatch steps",
                o.probs
                    .as_ref()
                    .and_then(|p| p.kl_support_mismatch.as_ref()),
            ),
            summary_row(
                "Δp of A's sampled token (p_B − p_A)",
                o.probs.as_ref().and_then(|p| p.dp_sampled.as_ref()),
            ),
        ],
    );
    let t = &o.tokens;
    let _ = writeln!(
        s,
        "<h2>Token distributions</h2>\n<p class=note>Sampled tokens of all {} common steps.</p>",
        d.steps_total
    );
    let fmt_top = |v: &[(i32, u64)]| {
        v.iter()
            .map(|(t, n)| format!("{t}×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut rows = vec![
        vec![
            "unique tokens A / B".into(),
            format!("{} / {}", t.unique_a, t.unique_b),
        ],
        vec![
            "overlap A / B".into(),
            format!("{} / {}", num(t.overlap_a), num(t.overlap_b)),
        ],
        vec!["Jaccard".into(), num(t.jaccard)],
        vec!["histogram intersection".into(), num(t.hist_intersection)],
        vec!["weighted Jaccard".into(), num(t.weighted_jaccard)],
        vec![
            "KL(h<sub>A</sub> ‖ h<sub>B</sub>), add-½ smoothing".into(),
            num(t.kl_hist),
        ],
        vec!["Jensen–Shannon".into(), num(t.js_hist)],
    ];
    if let Some(c) = &t.chi_square {
        rows.push(vec!["χ² homogeneity".into(), super::chi_text(c)]);
    }
    rows.push(vec!["top tokens A".into(), fmt_top(&t.top_a)]);
    rows.push(vec!["top tokens B".into(), fmt_top(&t.top_b)]);
    table(&mut s, &["metric", "value"], &rows);
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
    let mut rows = vec![cb_row(o)];
    rows.extend(d.per_codebook.iter().map(cb_row));
    table(
        &mut s,
        &[
            "codebook",
            "steps",
            "token agr.",
            "top-1",
            "KL mean",
            "max |Δ|",
            "probs KL",
            "Jaccard",
            "hist∩",
            "JS",
            "unique A",
            "unique B",
        ],
        &rows,
    );
    s.push_str("<p class=note>Generated by csm-parity diff. Metric definitions: docs/diff.md.</p>\n</body></html>\n");
    Ok(s)
}
