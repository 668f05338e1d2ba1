//! report.md: the full report as markdown.
use super::plots::Plot;
use super::{num, opt_num, step};
use crate::analysis::stats::{Estimate, Summary};
use crate::analysis::{Diff, Metrics};
use std::fmt::Write;

fn est(e: &Option<Estimate>) -> String {
    match e {
        Some(e) if e.has_ci() => format!(
            "{} [{}, {}] ({}% CI, {} resamples{})",
            num(e.value),
            num(e.ci_low),
            num(e.ci_high),
            (e.level * 100.0).round(),
            e.resamples,
            e.note
                .as_ref()
                .map(|n| format!("; {n}"))
                .unwrap_or_default()
        ),
        Some(e) => format!(
            "{} (no CI: {})",
            num(e.value),
            e.note.as_deref().unwrap_or("too little data")
        ),
        None => "–".into(),
    }
}

fn summary_row(name: &str, s: &Option<Summary>) -> String {
    match s {
        Some(s) => format!(
            "| {name} | {} | {} ± {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.n,
            num(s.mean),
            num(s.mean_se),
            num(s.min),
            num(s.p1),
            num(s.p10),
            num(s.median),
            num(s.p90),
            num(s.p95),
            num(s.p99),
            num(s.p99_9),
            num(s.max)
        ),
        None => format!("| {name} | 0 | – | – | – | – | – | – | – | – | – | – |\n"),
    }
}

fn cb_row(m: &Metrics) -> String {
    let l = m.logits.as_ref();
    let t = &m.tokens;
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        m.codebook
            .map(|c| c.to_string())
            .unwrap_or_else(|| "all".into()),
        m.steps,
        num(m.token_agreement),
        opt_num(m.top1_agreement),
        opt_num(l.and_then(|l| l.kl.as_ref()).map(|k| k.mean)),
        opt_num(l.map(|l| l.max_abs.max)),
        opt_num(m.probs.as_ref().and_then(|p| p.kl.as_ref()).map(|k| k.mean)),
        num(t.jaccard),
        num(t.hist_intersection),
        num(t.js_hist),
        t.unique_a,
        t.unique_b
    )
}

/// Renders report.md; `plots` are linked by file name.
pub fn render(d: &Diff, plots: &[Plot]) -> String {
    let mut s = String::new();
    let o = &d.overall;
    let _ = writeln!(
        s,
        "# csm-parity diff: {} (A) vs {} (B)\n",
        d.a.backend, d.b.backend
    );
    let _ = writeln!(s, "**{}**\n", d.verdict.line);
    if let Some(e) = &d.divergence.explanation {
        let _ = writeln!(s, "Stage: {e}.\n");
    }
    let _ = writeln!(s, "## Runs\n");
    let _ = writeln!(
        s,
        "| | backend | dtype | frames | prompt | T | top-k | logits | probs | sampler | noise | seed | post | stop | fault |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (tag, r) in [("A (reference)", &d.a), ("B (candidate)", &d.b)] {
        let _ = writeln!(
            s,
            "| {tag} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            r.dtype,
            r.frames,
            r.prompt_text.replace('|', "\\|"),
            r.temperature as f32,
            r.top_k,
            r.logits_storage,
            r.probs_storage,
            r.sampler_mode,
            r.noise,
            r.seed,
            r.post,
            r.stop_reason,
            r.fault.as_deref().unwrap_or("–")
        );
    }
    let _ = writeln!(
        s,
        "\nCompared {} frames × {} codebooks = {} steps (vocab {}); {} comparable. {}.\n",
        d.frames_compared, d.codebooks, d.steps_total, d.vocab, d.steps_comparable, d.comparability
    );
    let tl = &d.tolerances;
    let _ = writeln!(
        s,
        "Tolerances: atol {}, rtol {}, probs atol {} ({}).\n",
        tl.atol, tl.rtol, tl.probs_atol, tl.source
    );
    for n in &d.not_compared {
        let _ = writeln!(s, "- not compared: {n}");
    }
    if !d.not_compared.is_empty() {
        s.push('\n');
    }
    let nf = &d.nonfinite;
    if nf.a.logits_steps + nf.a.probs_steps + nf.b.logits_steps + nf.b.probs_steps > 0 {
        let _ = writeln!(
            s,
            "Non-finite (NaN/Inf) steps: A logits {}, probs {}; B logits {}, probs {} (left out of the summaries).\n",
            nf.a.logits_steps, nf.a.probs_steps, nf.b.logits_steps, nf.b.probs_steps
        );
    }
    let _ = writeln!(s, "## Divergence\n");
    let dv = &d.divergence;
    let _ = writeln!(s, "| event | first step |\n|---|---|");
    let _ = writeln!(
        s,
        "| divergence point ({}) | {} |",
        dv.stage.map(|x| x.name()).unwrap_or("–"),
        step(dv.point)
    );
    let _ = writeln!(
        s,
        "| sampled token mismatch | {} |",
        step(dv.first_token_mismatch)
    );
    let _ = writeln!(
        s,
        "| logits breach (atol {}, rtol {}) | {} |",
        d.tolerances.atol,
        d.tolerances.rtol,
        step(dv.first_logits_breach)
    );
    let _ = writeln!(
        s,
        "| probs breach (atol {}, rtol {}) | {} |",
        d.tolerances.probs_atol,
        d.tolerances.rtol,
        step(dv.first_probs_breach)
    );
    let _ = writeln!(
        s,
        "| support mismatch (a token kept by one sampler only) | {} |",
        step(dv.first_support_mismatch)
    );
    let _ = writeln!(
        s,
        "| top-1 (argmax) mismatch | {} |",
        step(dv.first_top1_mismatch)
    );
    let _ = writeln!(
        s,
        "| post-processing-only mismatch | {} |\n",
        step(dv.first_post_only_mismatch)
    );
    if let Some(m) = &d.first_mismatch_membership {
        let _ = writeln!(
            s,
            "At the first token mismatch ({}): A sampled {}, B sampled {}. B's token has rank {} in A's {}, A's token rank {} in B's — {}.\n",
            step(Some(m.step)),
            m.token_a,
            m.token_b,
            m.rank_of_b_in_a.map_or("–".into(), |r| r.to_string()),
            m.source,
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
            "Top tokens at the divergence step ({}, {}):\n\n| token | p_A | rank A | p_B | rank B |\n|---|---|---|---|---|",
            step(Some(t.step)),
            t.source
        );
        for r in &t.rows {
            let _ = writeln!(
                s,
                "| {}{} | {} | {} | {} | {} |",
                r.token,
                r.text.as_ref().map_or(String::new(), |t| format!(
                    " `{}`",
                    format!("{t:?}").replace('|', "\\|").replace('`', "'")
                )),
                opt_num(r.p_a),
                r.rank_a.map_or("–".into(), |x| x.to_string()),
                opt_num(r.p_b),
                r.rank_b.map_or("–".into(), |x| x.to_string())
            );
        }
        s.push('\n');
    }
    if let Some(e) = &d.largest_logit_error {
        let _ = writeln!(
            s,
            "Largest |Δlogit|: {} at {}, vocab index {} (A {}, B {}).\n",
            num(e.abs as f64),
            step(Some(e.step)),
            e.index,
            num(e.a as f64),
            num(e.b as f64)
        );
    }
    let _ = writeln!(s, "## Agreement\n");
    let _ = writeln!(s, "| metric | value |\n|---|---|");
    let _ = writeln!(
        s,
        "| token agreement | {} |",
        est(&d.confidence.token_agreement)
    );
    let _ = writeln!(
        s,
        "| post-token agreement | {} |",
        num(o.post_token_agreement)
    );
    let _ = writeln!(
        s,
        "| top-1 agreement | {} |",
        est(&d.confidence.top1_agreement)
    );
    let _ = writeln!(
        s,
        "| mean KL(softmax) | {} |",
        est(&d.confidence.kl_logits_mean)
    );
    let _ = writeln!(
        s,
        "| histogram intersection | {} |",
        est(&d.confidence.hist_intersection)
    );
    if let Some(l) = &o.logits {
        let _ = writeln!(s, "| logits mean \\|Δ\\| | {} |", num(l.mean_abs));
        let _ = writeln!(s, "| logits max relative error | {} |", num(l.max_rel));
        let _ = writeln!(
            s,
            "| logits breaching steps | {} of {} |",
            l.breaches, l.max_abs.n
        );
    }
    if let Some(p) = &o.probs {
        let _ = writeln!(
            s,
            "| probs breaching steps | {} of {} |",
            p.breaches, p.max_abs.n
        );
        let _ = writeln!(
            s,
            "| probs support mismatches (steps) | {} |",
            p.support_mismatch_steps
        );
        if let Some(m) = &p.excluded_mass {
            let _ = writeln!(
                s,
                "| probability mass outside the shared support (max) | {} |",
                num(m.max)
            );
        }
    }
    let _ = writeln!(s, "\n## Per-step distributions\n");
    let _ = writeln!(
        s,
        "| quantity | n | mean ± s.e. | min | p1 | p10 | median | p90 | p95 | p99 | p99.9 | max |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let l = o.logits.as_ref();
    s.push_str(&summary_row(
        "logits max \\|Δ\\|",
        &l.map(|l| l.max_abs.clone()),
    ));
    s.push_str(&summary_row(
        "KL(softmax A ‖ softmax B)",
        &l.and_then(|l| l.kl.clone()),
    ));
    s.push_str(&summary_row(
        "cosine(logit rows)",
        &l.and_then(|l| l.cosine.clone()),
    ));
    s.push_str(&summary_row(
        "probs max \\|Δ\\|",
        &o.probs.as_ref().map(|p| p.max_abs.clone()),
    ));
    s.push_str(&summary_row(
        "KL(probs A ‖ probs B), shared support",
        &o.probs.as_ref().and_then(|p| p.kl.clone()),
    ));
    s.push_str(&summary_row(
        "… on support-mismatch steps",
        &o.probs.as_ref().and_then(|p| p.kl_support_mismatch.clone()),
    ));
    s.push_str(&summary_row(
        "Δp of A's sampled token (p_B − p_A)",
        &o.probs.as_ref().and_then(|p| p.dp_sampled.clone()),
    ));
    let t = &o.tokens;
    let _ = writeln!(
        s,
        "\n## Token distributions (all {} common steps)\n",
        d.steps_total
    );
    let _ = writeln!(s, "| metric | value |\n|---|---|");
    let _ = writeln!(
        s,
        "| unique tokens A / B | {} / {} |",
        t.unique_a, t.unique_b
    );
    let _ = writeln!(
        s,
        "| overlap A / B | {} / {} |",
        num(t.overlap_a),
        num(t.overlap_b)
    );
    let _ = writeln!(s, "| Jaccard | {} |", num(t.jaccard));
    let _ = writeln!(
        s,
        "| histogram intersection | {} |",
        num(t.hist_intersection)
    );
    let _ = writeln!(s, "| weighted Jaccard | {} |", num(t.weighted_jaccard));
    let _ = writeln!(s, "| KL(h_A ‖ h_B), add-½ smoothing | {} |", num(t.kl_hist));
    let _ = writeln!(s, "| Jensen–Shannon | {} |", num(t.js_hist));
    if let Some(c) = &t.chi_square {
        let _ = writeln!(s, "| χ² homogeneity | {} |", super::chi_text(c));
    }
    let fmt_top = |v: &[(i32, u64)]| {
        v.iter()
            .map(|(t, n)| format!("{t}×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(s, "| top tokens A | {} |", fmt_top(&t.top_a));
    let _ = writeln!(s, "| top tokens B | {} |", fmt_top(&t.top_b));
    let _ = writeln!(s, "\n## Per codebook\n");
    let _ = writeln!(s, "| codebook | steps | token agr. | top-1 | KL mean | max \\|Δ\\| | probs KL | Jaccard | hist∩ | JS | unique A | unique B |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    s.push_str(&cb_row(o));
    for m in &d.per_codebook {
        s.push_str(&cb_row(m));
    }
    if let Some(e) = &d.performance.explanation {
        let _ = writeln!(s, "\n## Performance\n\n{e}");
    }
    if !d.warnings.is_empty() {
        let _ = writeln!(s, "\n## Warnings\n");
        for w in &d.warnings {
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
