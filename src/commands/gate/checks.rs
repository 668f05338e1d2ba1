//! The gate's checks: the finite-outputs check, every threshold present, then every baseline value present.
use super::config::GateConfig;
use super::measure::Measured;
use serde::Serialize;

/// One check.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    /// `token_agreement` (threshold) or `baseline.token_agreement`.
    pub name: String,
    pub description: String,
    pub value: Option<f64>,
    /// `>=` or `<=`.
    pub op: &'static str,
    pub limit: f64,
    pub passed: bool,
}

impl Check {
    fn new(
        name: &str,
        description: &str,
        value: Option<f64>,
        op: &'static str,
        limit: f64,
    ) -> Check {
        let passed = match value {
            Some(v) if op == ">=" => v >= limit,
            Some(v) => v <= limit,
            None => false,
        };
        Check {
            name: name.into(),
            description: description.into(),
            value,
            op,
            limit,
            passed,
        }
    }
}

/// (metric, limit, measured value, comparison, description).
type ThresholdRow = (&'static str, Option<f64>, Option<f64>, &'static str, String);

/// Checks: every threshold present, then every baseline value present.
pub fn checks(cfg: &GateConfig, m: &Measured) -> Vec<Check> {
    let t = &cfg.thresholds;
    let mut out = Vec::new();
    let n = m.jobs;
    // Always checked: a NaN/Inf anywhere makes every other number meaningless.
    let mut finite = Check::new(
        "finite_outputs",
        &match m.nonfinite.first() {
            None => format!("no NaN/Inf logits or probs in {n} jobs"),
            Some(first) => format!(
                "NaN/Inf logits or probs in {} job runs; first: {first}",
                m.nonfinite.len()
            ),
        },
        Some(m.nonfinite.len() as f64),
        "<=",
        0.0,
    );
    finite.passed = m.nonfinite.is_empty() && n > 0;
    out.push(finite);
    let spec: [ThresholdRow; 6] = [
        (
            "token_agreement",
            t.token_agreement_min,
            m.token_agreement,
            ">=",
            format!("shared noise, mean over {n} jobs"),
        ),
        (
            "max_logit_diff",
            t.max_logit_diff_max,
            m.max_logit_diff,
            "<=",
            format!("shared noise, max |Δlogit| over comparable steps of {n} jobs"),
        ),
        (
            "hist_intersection",
            t.hist_intersection_min,
            m.hist_intersection,
            ">=",
            format!("native noise, pooled token histograms of {n} jobs"),
        ),
        (
            "kl_hist",
            t.kl_hist_max,
            m.kl_hist,
            "<=",
            format!("native noise, KL of pooled token histograms of {n} jobs"),
        ),
        (
            "divergence_frame",
            t.divergence_frame_min,
            m.divergence_frame,
            ">=",
            format!("shared noise, earliest first-divergence frame over {n} jobs"),
        ),
        (
            "chi_square_p",
            t.chi_square_p_min,
            m.chi_square_p,
            ">=",
            "native noise, chi-square homogeneity p of pooled histograms".into(),
        ),
    ];
    for (name, limit, value, op, desc) in &spec {
        if let Some(limit) = limit {
            out.push(Check::new(name, desc, *value, op, *limit));
        }
    }
    if let Some(b) = &cfg.baseline {
        let base = [
            (
                "token_agreement",
                b.token_agreement,
                m.token_agreement,
                ">=",
            ),
            ("max_logit_diff", b.max_logit_diff, m.max_logit_diff, "<="),
            (
                "hist_intersection",
                b.hist_intersection,
                m.hist_intersection,
                ">=",
            ),
            ("kl_hist", b.kl_hist, m.kl_hist, "<="),
            (
                "divergence_frame",
                b.divergence_frame,
                m.divergence_frame,
                ">=",
            ),
        ];
        for (name, bv, value, op) in base {
            if let Some(bv) = bv {
                let slack = b.abs_margin + b.margin * bv.abs();
                let limit = if op == ">=" { bv - slack } else { bv + slack };
                out.push(Check::new(
                    &format!("baseline.{name}"),
                    &format!(
                        "baseline {} with margin {} + {}·|baseline|",
                        crate::report::num(bv),
                        crate::report::num(b.abs_margin),
                        crate::report::num(b.margin)
                    ),
                    value,
                    op,
                    limit,
                ));
            }
        }
    }
    out
}
