//! One-screen terminal summary, verdict line first.
use super::{chi_text, num, opt_num, step};
use crate::analysis::stats::Estimate;
use crate::analysis::{Diff, Metrics, RunInfo};
use std::fmt::Write;

fn ci(e: &Option<Estimate>) -> String {
    match e {
        Some(e) => format!(" {}", super::ci_text(e)),
        None => String::new(),
    }
}

fn run_line(tag: &str, r: &RunInfo) -> String {
    format!(
        "{tag} {:<6} {} frames, {}, logits {}, probs {}, sampler {}/{} T {} top-k {} seed {}, post {}, stop {}{}",
        r.backend,
        r.frames,
        r.dtype,
        r.logits_storage,
        r.probs_storage,
        r.sampler_mode,
        r.noise,
        r.temperature as f32,
        r.top_k,
        r.seed,
        r.post,
        r.stop_reason,
        r.fault
            .as_ref()
            .map(|f| format!(", FAULT {f}"))
            .unwrap_or_default()
    )
}

fn kl_of(m: &Metrics) -> Option<f64> {
    m.logits
        .as_ref()
        .and_then(|l| l.kl.as_ref())
        .map(|k| k.mean)
}

/// The terminal summary.
pub fn render(d: &Diff) -> String {
    let mut s = String::new();
    let o = &d.overall;
    let _ = writeln!(s, "{}", d.verdict.line);
    let _ = writeln!(s, "{}", run_line("A (reference)", &d.a));
    let _ = writeln!(s, "{}", run_line("B (candidate)", &d.b));
    if let Some(e) = &d.performance.explanation {
        let _ = writeln!(s, "performance: {e}");
    }
    let _ = writeln!(
        s,
        "steps: {} compared, {} comparable — {}",
        d.steps_total, d.steps_comparable, d.comparability
    );
    if let (Some(p), Some(e)) = (d.divergence.point, &d.divergence.explanation) {
        let _ = writeln!(
            s,
            "divergence: frame {} codebook {}: {e}",
            p.frame, p.codebook
        );
    }
    let dv = &d.divergence;
    let tl = &d.tolerances;
    let _ = writeln!(
        s,
        "tolerances: atol {} rtol {} probs-atol {} ({})",
        tl.atol, tl.rtol, tl.probs_atol, tl.source
    );
    let _ = writeln!(
        s,
        "first: token mismatch {} | logits breach {} | probs breach {} | support mismatch {} | post-only {}",
        step(dv.first_token_mismatch),
        step(dv.first_logits_breach),
        step(dv.first_probs_breach),
        step(dv.first_support_mismatch),
        step(dv.first_post_only_mismatch)
    );
    if let Some(m) = &d.first_mismatch_membership {
        let _ = writeln!(
            s,
            "at the first token mismatch ({}): A sampled {}, B sampled {}; B's token is rank {} in A's {}, A's token rank {} in B's; {}",
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
        let rows: Vec<String> = t
            .rows
            .iter()
            .take(5)
            .map(|r| {
                format!(
                    "{}{} {}/{}",
                    r.token,
                    r.text.as_ref().map_or(String::new(), |t| format!(" {t:?}")),
                    opt_num(r.p_a),
                    opt_num(r.p_b)
                )
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
                d.tolerances.atol,
                d.tolerances.rtol
            );
            if let Some(e) = &d.largest_logit_error {
                let _ = writeln!(
                    s,
                    "largest |Δlogit| {} at {} vocab index {} (A {}, B {})",
                    num(e.abs as f64),
                    step(Some(e.step)),
                    e.index,
                    num(e.a as f64),
                    num(e.b as f64)
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
        None if o.logits_recorded => {
            let _ = writeln!(
                s,
                "logits: recorded in both runs, but no compared step has finite values in both (non-finite steps: A {}, B {})",
                nf.a.logits_steps, nf.b.logits_steps
            );
        }
        None => {
            let _ = writeln!(s, "logits: not recorded in both runs");
        }
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
        None if o.probs_recorded => {
            let _ = writeln!(
                s,
                "sampler probs: recorded in both runs, but no compared step has finite values in both (non-finite steps: A {}, B {})",
                nf.a.probs_steps, nf.b.probs_steps
            );
        }
        None => {
            let _ = writeln!(s, "sampler probs: not recorded in both runs");
        }
    }
    if nf.a.logits_steps + nf.a.probs_steps + nf.b.logits_steps + nf.b.probs_steps > 0 {
        let _ = writeln!(
            s,
            "non-finite (NaN/Inf) steps: A logits {} probs {}; B logits {} probs {}",
            nf.a.logits_steps, nf.a.probs_steps, nf.b.logits_steps, nf.b.probs_steps
        );
    }
    for n in &d.not_compared {
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
    // Worst codebooks by token agreement, then KL.
    let mut cbs: Vec<&Metrics> = d.per_codebook.iter().collect();
    cbs.sort_by(|x, y| {
        x.token_agreement
            .total_cmp(&y.token_agreement)
            .then(kl_of(y).unwrap_or(0.0).total_cmp(&kl_of(x).unwrap_or(0.0)))
            .then(x.codebook.cmp(&y.codebook))
    });
    let shown = cbs.len().min(8);
    let _ = writeln!(
        s,
        "per codebook ({}): cb  agree   top-1   KL mean    max|Δ|     hist∩",
        if shown < cbs.len() {
            format!("worst {shown} of {}", cbs.len())
        } else {
            "all".into()
        }
    );
    for m in &cbs[..shown] {
        let _ = writeln!(
            s,
            "  {:>3}  {:<7} {:<7} {:<10} {:<10} {}",
            m.codebook.unwrap_or(0),
            num(m.token_agreement),
            opt_num(m.top1_agreement),
            opt_num(kl_of(m)),
            opt_num(m.logits.as_ref().map(|l| l.max_abs.max)),
            num(m.tokens.hist_intersection)
        );
    }
    for w in &d.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}
