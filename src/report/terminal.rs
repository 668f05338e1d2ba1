//! One-screen terminal summary, verdict line first.
use super::{num, opt_num, step};
use crate::analysis::stats::Estimate;
use crate::analysis::{Diff, Metrics, RunInfo};
use std::fmt::Write;

fn ci(e: &Option<Estimate>) -> String {
    match e {
        Some(e) => format!(
            " [{}% CI {}, {}]",
            (e.level * 100.0).round(),
            num(e.ci_low),
            num(e.ci_high)
        ),
        None => String::new(),
    }
}

fn run_line(tag: &str, r: &RunInfo) -> String {
    format!(
        "{tag} {:<6} {} frames, logits {}, probs {}, sampler {}/{} seed {}, post {}, stop {}{}",
        r.backend,
        r.frames,
        r.logits_storage,
        r.probs_storage,
        r.sampler_mode,
        r.noise,
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
    let _ = writeln!(
        s,
        "first: token mismatch {} | logits breach {} | probs breach {} | post-only {}",
        step(dv.first_token_mismatch),
        step(dv.first_logits_breach),
        step(dv.first_probs_breach),
        step(dv.first_post_only_mismatch)
    );
    let _ = writeln!(
        s,
        "token agreement {}{}  post-token {}  top-1 {}{}",
        num(o.token_agreement),
        ci(&d.confidence.token_agreement),
        num(o.post_token_agreement),
        opt_num(o.top1_agreement),
        ci(&d.confidence.top1_agreement)
    );
    match &o.logits {
        Some(l) => {
            let _ = writeln!(
                s,
                "logits |Δ| per step: max {} p99 {} median {}; mean |Δ| {}; max rel {}; breaches {}/{} (atol {} rtol {})",
                num(l.max_abs.max),
                num(l.max_abs.p99),
                num(l.max_abs.median),
                num(l.mean_abs),
                num(l.max_rel),
                l.breaches,
                l.max_abs.n,
                d.options.atol,
                d.options.rtol
            );
            if let Some(k) = &l.kl {
                let _ = writeln!(
                    s,
                    "KL(softmax) mean {}{} median {} p90 {} p99 {} p99.9 {} max {}{}",
                    num(k.mean),
                    ci(&d.confidence.kl_logits_mean),
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
        }
        None => {
            let _ = writeln!(s, "logits: not recorded in both runs");
        }
    }
    match &o.probs {
        Some(p) => {
            let _ = writeln!(
                s,
                "sampler probs: max |Δ| {}, breaches {}, KL mean {} p99 {} max {}, support mismatches {} steps",
                num(p.max_abs.max),
                p.breaches,
                opt_num(p.kl.as_ref().map(|k| k.mean)),
                opt_num(p.kl.as_ref().map(|k| k.p99)),
                opt_num(p.kl.as_ref().map(|k| k.max)),
                p.support_mismatch_steps
            );
        }
        None => {
            let _ = writeln!(s, "sampler probs: not recorded in both runs");
        }
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
            Some(c) => format!(", χ² {} df {} p {}", num(c.statistic), c.df, num(c.p_value)),
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
