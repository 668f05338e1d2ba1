//! One-screen terminal summary, verdict line first: the [`ReportView`]'s runs, divergence and
//! worst codebooks in aligned lines, with the overall metrics condensed to a line each.
use super::view::{ReportView, RunView};
use super::{chi_text, num, opt_num};
use crate::analysis::stats::Estimate;
use crate::analysis::Diff;
use std::fmt::Write;

fn ci(e: &Option<Estimate>) -> String {
    match e {
        Some(e) => format!(" {}", super::ci_text(e)),
        None => String::new(),
    }
}

fn run_line(r: &RunView) -> String {
    format!(
        "{} {:<6} {} frames, {}, logits {}, probs {}, sampler {}/{} T {} top-k {} seed {}, post {}, stop {}{}",
        r.tag,
        r.backend,
        r.frames,
        r.dtype,
        r.logits,
        r.probs,
        r.sampler,
        r.noise,
        r.temperature,
        r.top_k,
        r.seed,
        r.post,
        r.stop,
        r.fault
            .as_ref()
            .map(|f| format!(", FAULT {f}"))
            .unwrap_or_default()
    )
}

/// The line for logits or probs that have no summary: not recorded by both runs, or no
/// compared step finite in both.
fn no_summary(s: &mut String, what: &str, recorded: bool, [a, b]: [usize; 2]) {
    let _ = if recorded {
        writeln!(s, "{what}: recorded in both runs, but no compared step has finite values in both (non-finite steps: A {a}, B {b})")
    } else {
        writeln!(s, "{what}: not recorded in both runs")
    };
}

/// The terminal summary.
pub fn render(d: &Diff) -> String {
    let v = ReportView::of(d);
    let mut s = String::new();
    let o = &d.overall;
    let _ = writeln!(s, "{}", v.verdict_line);
    for r in &v.runs {
        let _ = writeln!(s, "{}", run_line(r));
    }
    if let Some(e) = &v.performance {
        let _ = writeln!(s, "performance: {e}");
    }
    let c = &v.scope;
    let _ = writeln!(
        s,
        "steps: {} compared, {} comparable — {}",
        c.steps, c.comparable, c.comparability
    );
    if let (Some(p), Some((_, e))) = (&v.point, &v.stage) {
        let _ = writeln!(s, "divergence: {p}: {e}");
    }
    let tl = &v.tolerances;
    let _ = writeln!(
        s,
        "tolerances: atol {} rtol {} probs-atol {} ({})",
        tl.atol, tl.rtol, tl.probs_atol, tl.source
    );
    let first: Vec<String> = v
        .events
        .iter()
        .filter_map(|e| e.short.map(|n| format!("{n} {}", e.step)))
        .collect();
    let _ = writeln!(s, "first: {}", first.join(" | "));
    if let Some(m) = &v.membership {
        let _ = writeln!(
            s,
            "at the first token mismatch ({}): A sampled {}, B sampled {}; B's token is rank {} in A's {}, A's token rank {} in B's; {}",
            m.step, m.token_a, m.token_b, m.rank_of_b_in_a, m.source, m.rank_of_a_in_b, m.tie
        );
    }
    if let Some(t) = &v.top {
        let rows: Vec<String> = t
            .rows
            .iter()
            .take(5)
            .map(|r| {
                let text = r.text.as_ref().map_or(String::new(), |t| format!(" {t}"));
                format!("{}{text} {}/{}", r.token, r.p_a, r.p_b)
            })
            .collect();
        let _ = writeln!(
            s,
            "top tokens at the divergence step ({}; token p_A/p_B): {}",
            t.source,
            rows.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "token agreement {}{}  post-token {}  top-1 {}{}",
        num(o.token_agreement),
        ci(&d.confidence.token_agreement),
        num(o.post_token_agreement),
        opt_num(o.top1_agreement),
        ci(&d.confidence.top1_agreement)
    );
    let nf = &d.nonfinite;
    let left_out = |n: usize| {
        if n > 0 {
            format!(" ({n} non-finite steps left out)")
        } else {
            String::new()
        }
    };
    match &o.logits {
        Some(l) => {
            let _ = writeln!(
                s,
                "logits |Δ| per step: max {} p99 {} median {}{}; mean |Δ| {}; max rel {}; breaches {}/{} (atol {} rtol {})",
                num(l.max_abs.max),
                num(l.max_abs.p99),
                num(l.max_abs.median),
                left_out(l.nonfinite_steps),
                num(l.mean_abs),
                num(l.max_rel),
                l.breaches,
                l.max_abs.n + l.nonfinite_steps,
                tl.atol,
                tl.rtol
            );
            if let Some(e) = &v.largest {
                let _ = writeln!(
                    s,
                    "largest |Δlogit| {} at {} vocab index {} (A {}, B {})",
                    e.abs, e.step, e.index, e.a, e.b
                );
            }
            if let Some(k) = &l.kl {
                let _ = writeln!(
                    s,
                    "KL(softmax) mean {} ± {}{} | p1 {} p5 {} p10 {} median {} p90 {} p99 {} p99.9 {} max {}{}",
                    num(k.mean),
                    num(k.mean_se),
                    ci(&d.confidence.kl_logits_mean),
                    num(k.p1),
                    num(k.p5),
                    num(k.p10),
                    num(k.median),
                    num(k.p90),
                    num(k.p99),
                    num(k.p99_9),
                    num(k.max),
                    if l.top_n_approximation {
                        " (top-N approximation)"
                    } else {
                        ""
                    }
                );
            }
            if let Some(c) = &l.cosine {
                let _ = writeln!(
                    s,
                    "cosine(logit rows): min {} p1 {} median {}",
                    num(c.min),
                    num(c.p1),
                    num(c.median)
                );
            }
        }
        None => no_summary(
            &mut s,
            "logits",
            o.logits_recorded,
            [nf.a.logits_steps, nf.b.logits_steps],
        ),
    }
    match &o.probs {
        Some(p) => {
            let _ = writeln!(
                s,
                "sampler probs: max |Δ| {}{}, breaches {}, KL (shared support, renormalized) mean {} p99 {} max {}; support mismatches {} steps{}",
                num(p.max_abs.max),
                left_out(p.nonfinite_steps),
                p.breaches,
                opt_num(p.kl.as_ref().map(|k| k.mean)),
                opt_num(p.kl.as_ref().map(|k| k.p99)),
                opt_num(p.kl.as_ref().map(|k| k.max)),
                p.support_mismatch_steps,
                match (&p.kl_support_mismatch, &p.excluded_mass) {
                    (Some(k), Some(m)) => format!(
                        " (their KL mean {}; mass outside the shared support up to {})",
                        num(k.mean),
                        num(m.max)
                    ),
                    _ => String::new(),
                }
            );
            if let Some(dp) = &p.dp_sampled {
                let _ = writeln!(
                    s,
                    "Δp of A's sampled token (p_B − p_A): mean {} ± {} RMS {} p1 {} median {} p99 {} max {}",
                    num(dp.mean),
                    num(dp.mean_se),
                    num(dp.rms),
                    num(dp.p1),
                    num(dp.median),
                    num(dp.p99),
                    num(dp.max)
                );
            }
        }
        None => no_summary(
            &mut s,
            "sampler probs",
            o.probs_recorded,
            [nf.a.probs_steps, nf.b.probs_steps],
        ),
    }
    if let Some(n) = &v.nonfinite {
        let _ = writeln!(
            s,
            "non-finite (NaN/Inf) steps: A logits {} probs {}; B logits {} probs {}",
            n.a_logits, n.a_probs, n.b_logits, n.b_probs
        );
    }
    for n in &v.not_compared {
        let _ = writeln!(s, "not compared: {n}");
    }
    let t = &o.tokens;
    let _ = writeln!(
        s,
        "tokens: unique A {} B {}; overlap A {} B {}; Jaccard {}; hist∩ {}{}; weighted Jaccard {}",
        t.unique_a,
        t.unique_b,
        num(t.overlap_a),
        num(t.overlap_b),
        num(t.jaccard),
        num(t.hist_intersection),
        ci(&d.confidence.hist_intersection),
        num(t.weighted_jaccard)
    );
    let _ = writeln!(
        s,
        "histograms: KL(A‖B) {} (add-½ smoothing), JS {}{}",
        num(t.kl_hist),
        num(t.js_hist),
        match &t.chi_square {
            Some(c) => format!(", {}", chi_text(c)),
            None => String::new(),
        }
    );
    if let Some(a) = &d.audio {
        let _ = writeln!(s, "{}", super::audio::terminal_line(a));
    }
    let total = d.per_codebook.len();
    let _ = writeln!(
        s,
        "per codebook ({}): cb  agree   top-1   KL mean    max|Δ|     hist∩",
        if v.worst.len() < total {
            format!("worst {} of {total}", v.worst.len())
        } else {
            "all".into()
        }
    );
    for m in &v.worst {
        let _ = writeln!(
            s,
            "  {:>3}  {:<7} {:<7} {:<10} {:<10} {}",
            m.codebook.unwrap_or(0),
            m.agreement,
            m.top1,
            m.kl_mean,
            m.max_abs,
            m.hist
        );
    }
    for w in &v.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}
