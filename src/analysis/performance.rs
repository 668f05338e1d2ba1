//! Step-time analysis: does the cost of a step grow with the position? A KV-cached pipeline
//! does O(1) weight reads per step; a pipeline that recomputes the sequence does O(n) per step
//! (O(n²) overall) while producing the same numbers, so only time and work reveal it.
use serde::Serialize;

/// How one run's per-frame cost evolves over the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Growth {
    /// Theil–Sen slope of step time against frame index (frame 0, the prefill, excluded), µs/frame.
    pub time_slope_us: f64,
    /// Median step time, µs.
    pub median_step_us: f64,
    /// Relative growth over the run: slope × (frames − 1) / median.
    pub time_growth: f64,
    /// One-sided Mann–Kendall trend test of step time against frame (normal approximation,
    /// on the same ≤ 200 points as the slope): p-value of "no upward trend".
    pub trend_p: f64,
    /// Steady frames (frame 0 excluded).
    pub steady_frames: usize,
    /// Backbone positions computed per frame: first and last steady frame (when recorded).
    pub positions_first: Option<u32>,
    pub positions_last: Option<u32>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Performance {
    pub a: Option<Growth>,
    pub b: Option<Growth>,
    /// The candidate's per-step cost grows with position where the reference's does not.
    pub flagged: bool,
    pub explanation: Option<String>,
}

/// Growth threshold for step time: the candidate must grow by this much more than the
/// reference over the run (time is noisy, so the bar is high; work counts are exact).
pub const TIME_GROWTH_MARGIN: f64 = 1.0;
/// Step time alone flags a run only over at least this many steady frames…
pub const MIN_TIME_FRAMES: usize = 32;
/// …and only when the upward trend is significant at this level (timing under machine load is
/// noisy; work counts, when recorded, are exact and need neither).
pub const TREND_ALPHA: f64 = 0.01;

/// One-sided Mann–Kendall p-value of an upward trend in `y` (no tie correction beyond
/// counting ties as 0).
pub fn mann_kendall_p(y: &[f64]) -> f64 {
    let n = y.len();
    if n < 3 {
        return 1.0;
    }
    let mut s = 0f64;
    for i in 0..n {
        for j in i + 1..n {
            s += (y[j] - y[i]).signum() * ((y[j] != y[i]) as u8 as f64);
        }
    }
    let nf = n as f64;
    let var = nf * (nf - 1.0) * (2.0 * nf + 5.0) / 18.0;
    let z = if s > 0.0 { (s - 1.0) / var.sqrt() } else { 0.0 };
    1.0 - crate::analysis::stats::norm_cdf(z)
}

/// Theil–Sen slope (median of pairwise slopes), on at most ~200 evenly spaced points.
fn theil_sen(y: &[f64]) -> f64 {
    let stride = y.len().div_ceil(200).max(1);
    let pts: Vec<(f64, f64)> = y
        .iter()
        .enumerate()
        .step_by(stride)
        .map(|(i, &v)| (i as f64, v))
        .collect();
    let mut slopes = Vec::with_capacity(pts.len() * pts.len() / 2);
    for i in 0..pts.len() {
        for j in i + 1..pts.len() {
            slopes.push((pts[j].1 - pts[i].1) / (pts[j].0 - pts[i].0));
        }
    }
    median(&mut slopes)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Growth of one run; `None` with fewer than 8 steady frames.
pub fn growth(step_us: &[f64], positions: &[u32]) -> Option<Growth> {
    let steady = step_us.get(1..)?;
    if steady.len() < 8 {
        return None;
    }
    let slope = theil_sen(steady);
    let med = median(&mut steady.to_vec());
    let stride = steady.len().div_ceil(200).max(1);
    let thinned: Vec<f64> = steady.iter().step_by(stride).copied().collect();
    let pos = positions.get(1..).filter(|p| !p.is_empty());
    Some(Growth {
        time_slope_us: slope,
        median_step_us: med,
        time_growth: if med > 0.0 {
            slope * (steady.len() - 1) as f64 / med
        } else {
            0.0
        },
        trend_p: mann_kendall_p(&thinned),
        steady_frames: steady.len(),
        positions_first: pos.map(|p| p[0]),
        positions_last: pos.map(|p| p[p.len() - 1]),
    })
}

pub fn compare(a_us: &[f64], a_pos: &[u32], b_us: &[f64], b_pos: &[u32]) -> Performance {
    let (a, b) = (growth(a_us, a_pos), growth(b_us, b_pos));
    let mut explanation = None;
    if let (Some(ga), Some(gb)) = (&a, &b) {
        let work = |g: &Growth| match (g.positions_first, g.positions_last) {
            (Some(f), Some(l)) if f > 0 => Some(l as f64 / f as f64),
            _ => None,
        };
        if let (Some(wa), Some(wb)) = (work(ga), work(gb)) {
            if wb >= 1.5 * wa && wb >= 2.0 {
                explanation = Some(format!(
                    "work per step grows with position: the candidate computes {} backbone positions at its first steady frame and {} at its last (reference: {} → {}) — the sequence is recomputed every step (no KV cache, O(n²) in total); step time grows {:+.0}% over the run (reference {:+.0}%)",
                    gb.positions_first.unwrap_or(0),
                    gb.positions_last.unwrap_or(0),
                    ga.positions_first.unwrap_or(0),
                    ga.positions_last.unwrap_or(0),
                    gb.time_growth * 100.0,
                    ga.time_growth * 100.0
                ));
            }
        }
        if explanation.is_none()
            && gb.steady_frames >= MIN_TIME_FRAMES
            && gb.trend_p < TREND_ALPHA
            && gb.time_growth > ga.time_growth + TIME_GROWTH_MARGIN
        {
            explanation = Some(format!(
                "step time grows {:+.0}% over the run against the reference's {:+.0}% (Theil–Sen slope {:.1} µs/frame vs {:.1}; upward trend p = {:.1e} over {} frames): per-step cost rises with position, as without a KV cache",
                gb.time_growth * 100.0,
                ga.time_growth * 100.0,
                gb.time_slope_us,
                ga.time_slope_us,
                gb.trend_p,
                gb.steady_frames
            ));
        }
    }
    Performance {
        flagged: explanation.is_some(),
        explanation,
        a,
        b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_pair_is_not_flagged() {
        let flat: Vec<f64> = (0..40).map(|i| 1000.0 + (i % 3) as f64 * 20.0).collect();
        let p = compare(&flat, &[], &flat, &[]);
        assert!(!p.flagged);
        assert!(p.b.unwrap().time_growth.abs() < 0.1);
    }

    #[test]
    fn quadratic_cost_is_flagged_by_time_and_by_work() {
        let flat: Vec<f64> = (0..40).map(|_| 1000.0).collect();
        let growing: Vec<f64> = (0..40).map(|i| 1000.0 + 100.0 * i as f64).collect();
        let p = compare(&flat, &[], &growing, &[]);
        assert!(p.flagged, "{p:?}");
        assert!((p.b.as_ref().unwrap().time_slope_us - 100.0).abs() < 1e-9);
        let ones = vec![1u32; 40];
        let grow: Vec<u32> = (0..40).map(|i| 20 + i).collect();
        let p = compare(&flat, &ones, &flat, &grow);
        assert!(p.flagged && p.explanation.unwrap().contains("recomputed"));
    }

    /// A 16-frame run whose times rise under machine load (a few slow late frames) is not
    /// enough evidence for a missing KV cache; the same growth over 40 frames is.
    #[test]
    fn short_noisy_run_is_not_flagged_by_time() {
        let flat: Vec<f64> = (0..17).map(|_| 1000.0).collect();
        let noisy: Vec<f64> = (0..17)
            .map(|i| 1000.0 + if i > 8 { 3000.0 } else { 0.0 } + (i % 2) as f64)
            .collect();
        let p = compare(&flat, &[], &noisy, &[]);
        assert!(!p.flagged, "{p:?}");
        let flat: Vec<f64> = (0..41).map(|_| 1000.0).collect();
        let growing: Vec<f64> = (0..41).map(|i| 1000.0 + 100.0 * i as f64).collect();
        assert!(compare(&flat, &[], &growing, &[]).flagged);
    }
}
