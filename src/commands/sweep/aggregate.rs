//! Aggregating job results per cell: pooled histograms, bootstrap intervals, the same-library noise floor, the ranking and the best setting.
use super::job::{fin, JobResult};
use super::spec::SweepSpec;
use crate::analysis::metrics::token_dist;
use crate::analysis::stats::{bootstrap, Estimate};
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Bootstrap resamples for the per-cell confidence intervals.
pub const RESAMPLES: usize = 2000;
/// Confidence level of every interval.
pub const LEVEL: f64 = 0.95;
/// Differences smaller than this are 0 (floating-point residue of averaging).
const ZERO_TOL: f64 = 1e-9;
/// Bootstrap seed (fixed: the same job results always give the same intervals).
const BOOT_SEED: u64 = 0x5EE9_5EE9;

/// Aggregated metrics of one cell.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CellResult {
    pub temperature: f64,
    pub top_k: usize,
    pub jobs: usize,
    /// Shared noise: mean token agreement over jobs, bootstrap CI over jobs.
    pub token_agreement: Option<Estimate>,
    /// Shared noise: mean first divergence frame (a job that never diverges counts as
    /// `max_frames`), bootstrap CI.
    pub divergence_frame: Option<Estimate>,
    /// Jobs whose shared-noise runs diverged.
    pub diverged_jobs: usize,
    /// Native noise: per-job histogram metrics, mean over jobs with bootstrap CI.
    pub hist_intersection: Option<Estimate>,
    pub jaccard: Option<Estimate>,
    pub kl_hist: Option<Estimate>,
    pub js_hist: Option<Estimate>,
    /// Native noise: the tokens of all jobs of the cell pooled into one histogram per library.
    pub pooled: Pooled,
    /// Same-library noise floor: histogram intersection of one library's runs with different
    /// seeds (same text), both libraries averaged — what sampling noise alone gives.
    pub noise_floor: Option<Estimate>,
    /// The cross-library histogram intersection on the same seed pairs (different seeds).
    pub cross_library: Option<Estimate>,
    /// Parity gap = noise floor − cross-library intersection, per (text, seed), mean with a
    /// Bonferroni-adjusted bootstrap CI (level 1 − 0.05/cells). > 0: the libraries differ
    /// more than two seeds of one library do.
    pub gap: Option<Estimate>,
    /// The gap's CI lies above 0: the libraries are distinguishable in this cell.
    pub above_noise_floor: Option<bool>,
    /// 1 = best; cells that cannot be told apart share a rank.
    pub rank: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Pooled {
    pub tokens_a: u64,
    pub tokens_b: u64,
    pub hist_intersection: Option<f64>,
    pub jaccard: Option<f64>,
    pub kl_hist: Option<f64>,
    pub js_hist: Option<f64>,
    /// Chi-square homogeneity test of the pooled histograms (low p: the libraries' token
    /// distributions differ beyond sampling noise).
    pub chi_square_p: Option<f64>,
    pub chi_square_df: Option<usize>,
}

/// The best cell and whether it beats the runner-up beyond noise.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Best {
    pub temperature: f64,
    pub top_k: usize,
    /// Every cell tied for best (rank 1), grid order.
    pub tied: Vec<(f64, usize)>,
    /// No cell's parity gap is significantly above the same-library noise floor.
    pub all_within_noise_floor: bool,
    /// The first cell ranked below the tied best, if any.
    pub runner_up: Option<(f64, usize)>,
    /// The best cell's parity gap (noise floor − cross-library intersection).
    pub difference: Option<Estimate>,
    /// True when the best cell itself is above the noise floor.
    pub significant: bool,
    pub sentence: String,
}

/// The deterministic result of a sweep (equal for a sharded and an unsharded run).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SweepResult {
    pub spec: SweepSpec,
    pub criterion: String,
    pub level: f64,
    pub resamples: usize,
    /// Cells in grid order (temperature, then top-k).
    pub cells: Vec<CellResult>,
    /// Indices into `cells`, best first.
    pub ranking: Vec<usize>,
    pub best: Best,
}

/// The ranking criterion, as written into every output.
pub const CRITERION: &str = "Under native noise two runs of one library with different seeds already differ; that same-library noise floor is measured per cell (histogram intersection of one library's runs with different seeds, same text, both libraries averaged) and compared with the cross-library intersection on the same seed pairs. A cell's parity gap is floor − cross per (text, seed); a cell is above the noise floor when the bootstrap CI of its mean gap, Bonferroni-adjusted over the cells, lies above 0. Cells within the noise floor share rank 1 (the libraries cannot be told apart there); cells above it rank after them by mean gap, smaller first, and share a rank while the paired (same seed and text) difference to the first cell of their group is not significant (Bonferroni-adjusted). Ties are ties: no grid order decides. Needs at least 2 seeds per text for the noise floor and at least 5 (text, seed) units per cell for the interval the test rests on.";

fn mean_ci(xs: &[f64], seed: u64) -> Option<Estimate> {
    mean_ci_at(xs, seed, LEVEL)
}

fn mean_ci_at(xs: &[f64], seed: u64, level: f64) -> Option<Estimate> {
    if xs.is_empty() {
        return None;
    }
    bootstrap(xs.len(), RESAMPLES, level, seed, |idx| {
        idx.iter().map(|&i| xs[i]).sum::<f64>() / idx.len() as f64
    })
}

fn hist_map(h: &[(i32, u64)]) -> HashMap<i32, u64> {
    h.iter().copied().collect()
}

fn hi(a: &HashMap<i32, u64>, b: &HashMap<i32, u64>) -> f64 {
    token_dist(a, b, 0).hist_intersection
}

/// Per (text, seed) of a cell: ((text, seed), same-library floor, cross-library intersection),
/// both averaged over the other seeds s′ of the same text: floor = mean of HI(T_s, T_s′) and
/// HI(M_s, M_s′); cross = mean of HI(T_s, M_s′) and HI(M_s, T_s′) (different seeds on both
/// sides, so the comparison with the floor is like for like). Empty with fewer than 2 seeds.
pub fn floor_units(rs: &[&JobResult]) -> Vec<((usize, u64), f64, f64)> {
    let mut out = Vec::new();
    let mut texts: Vec<usize> = rs.iter().map(|r| r.job.text_index).collect();
    texts.sort_unstable();
    texts.dedup();
    for x in texts {
        let mut js: Vec<&&JobResult> = rs.iter().filter(|r| r.job.text_index == x).collect();
        js.sort_by_key(|r| r.job.seed);
        let h: Vec<(HashMap<i32, u64>, HashMap<i32, u64>)> = js
            .iter()
            .map(|r| (hist_map(&r.native.hist_a), hist_map(&r.native.hist_b)))
            .collect();
        if h.len() < 2 {
            continue;
        }
        for i in 0..h.len() {
            let (mut fl, mut cr, mut n) = (0f64, 0f64, 0f64);
            for j in 0..h.len() {
                if i == j {
                    continue;
                }
                fl += (hi(&h[i].0, &h[j].0) + hi(&h[i].1, &h[j].1)) / 2.0;
                cr += (hi(&h[i].0, &h[j].1) + hi(&h[i].1, &h[j].0)) / 2.0;
                n += 1.0;
            }
            if fl.is_finite() && cr.is_finite() {
                out.push(((x, js[i].job.seed), fl / n, cr / n));
            }
        }
    }
    out
}

/// Whether cell `b`'s gap differs from cell `a`'s: paired over (text, seed), bootstrap CI of
/// the mean difference at `level` excludes 0.
fn paired_significant(results: &[JobResult], a: &CellResult, b: &CellResult, level: f64) -> bool {
    let units = |c: &CellResult| -> BTreeMap<(usize, u64), f64> {
        let rs: Vec<&JobResult> = results
            .iter()
            .filter(|r| r.job.temperature == c.temperature && r.job.top_k == c.top_k)
            .collect();
        floor_units(&rs)
            .into_iter()
            .map(|(k, f, x)| (k, f - x))
            .collect()
    };
    let (ua, ub) = (units(a), units(b));
    let d: Vec<f64> = ua
        .iter()
        .filter_map(|(k, v)| ub.get(k).map(|w| w - v))
        .collect();
    mean_ci_at(&d, BOOT_SEED ^ 0xD1FF, level)
        .is_some_and(|e| e.has_ci() && (e.ci_low > ZERO_TOL || e.ci_high < -ZERO_TOL))
}

/// Pools the native-noise token histograms of `rs` and compares them (the analyzer's `token_dist`).
pub fn pooled_of(rs: &[&JobResult]) -> Pooled {
    let mut ha: HashMap<i32, u64> = HashMap::new();
    let mut hb: HashMap<i32, u64> = HashMap::new();
    for r in rs {
        for &(t, n) in &r.native.hist_a {
            *ha.entry(t).or_insert(0) += n;
        }
        for &(t, n) in &r.native.hist_b {
            *hb.entry(t).or_insert(0) += n;
        }
    }
    let d = token_dist(&ha, &hb, 0);
    Pooled {
        tokens_a: d.count_a,
        tokens_b: d.count_b,
        hist_intersection: fin(d.hist_intersection),
        jaccard: fin(d.jaccard),
        kl_hist: fin(d.kl_hist),
        js_hist: fin(d.js_hist),
        chi_square_p: d.chi_square.as_ref().and_then(|c| c.p_value.and_then(fin)),
        chi_square_df: d.chi_square.as_ref().map(|c| c.df),
    }
}

/// Aggregates job results (every job of `spec`) into cells, ranking and best cell.
pub fn aggregate(spec: &SweepSpec, results: &[JobResult]) -> Result<SweepResult> {
    let mut by_cell: BTreeMap<(u64, usize), Vec<&JobResult>> = BTreeMap::new();
    for r in results {
        by_cell
            .entry((r.job.temperature.to_bits(), r.job.top_k))
            .or_default()
            .push(r);
    }
    let mut cells = Vec::new();
    for (ci, (t, k)) in spec.cells().into_iter().enumerate() {
        let rs = by_cell.remove(&(t.to_bits(), k)).unwrap_or_default();
        if rs.is_empty() {
            bail!("sweep: no job results for cell temp {t} top-k {k}");
        }
        let seed = BOOT_SEED ^ ((ci as u64) << 8);
        let vals = |f: &dyn Fn(&JobResult) -> Option<f64>| -> Vec<f64> {
            rs.iter().filter_map(|r| f(r)).collect()
        };
        cells.push(CellResult {
            temperature: t,
            top_k: k,
            jobs: rs.len(),
            token_agreement: mean_ci(&vals(&|r| r.shared.token_agreement), seed + 1),
            divergence_frame: mean_ci(
                &vals(&|r| Some(r.shared.divergence_frame() as f64)),
                seed + 2,
            ),
            diverged_jobs: rs.iter().filter(|r| r.shared.divergence.is_some()).count(),
            hist_intersection: mean_ci(&vals(&|r| r.native.hist_intersection), seed + 3),
            jaccard: mean_ci(&vals(&|r| r.native.jaccard), seed + 4),
            kl_hist: mean_ci(&vals(&|r| r.native.kl_hist), seed + 5),
            js_hist: mean_ci(&vals(&|r| r.native.js_hist), seed + 6),
            pooled: pooled_of(&rs),
            noise_floor: None,
            cross_library: None,
            gap: None,
            above_noise_floor: None,
            rank: 0,
        });
    }
    let m = cells.len();
    let level = 1.0 - (1.0 - LEVEL) / m.max(1) as f64;
    for (ci, c) in cells.iter_mut().enumerate() {
        let rs: Vec<&JobResult> = results
            .iter()
            .filter(|r| r.job.temperature == c.temperature && r.job.top_k == c.top_k)
            .collect();
        let units = floor_units(&rs);
        let seed = BOOT_SEED ^ ((ci as u64) << 8) ^ 0xF1;
        let floors: Vec<f64> = units.iter().map(|u| u.1).collect();
        let crosses: Vec<f64> = units.iter().map(|u| u.2).collect();
        let gaps: Vec<f64> = units.iter().map(|u| u.1 - u.2).collect();
        c.noise_floor = mean_ci(&floors, seed + 1);
        c.cross_library = mean_ci(&crosses, seed + 2);
        c.gap = mean_ci_at(&gaps, seed + 3, level);
        c.above_noise_floor = c
            .gap
            .as_ref()
            .filter(|g| g.has_ci())
            .map(|g| g.ci_low > ZERO_TOL);
    }
    // Within the floor (or not measurable) first, all tied; then the others by mean gap.
    let gap_of = |c: &CellResult| c.gap.as_ref().map_or(f64::NAN, |g| g.value);
    let mut ranking: Vec<usize> = (0..cells.len()).collect();
    ranking.sort_by(|&i, &j| {
        let (a, b) = (&cells[i], &cells[j]);
        let above = |c: &CellResult| c.above_noise_floor == Some(true);
        above(a)
            .cmp(&above(b))
            .then(if above(a) {
                gap_of(a).total_cmp(&gap_of(b))
            } else {
                std::cmp::Ordering::Equal
            })
            .then(i.cmp(&j))
    });
    let mut rank = 1;
    let mut leader: Option<usize> = None;
    for (pos, &i) in ranking.iter().enumerate() {
        let above = cells[i].above_noise_floor == Some(true);
        if !above {
            cells[i].rank = 1;
            continue;
        }
        let tied = match leader {
            Some(l) => !paired_significant(results, &cells[l], &cells[i], level),
            None => false,
        };
        if !tied {
            rank = pos + 1;
            leader = Some(i);
        }
        cells[i].rank = rank;
    }
    let best = best_cell(&cells, &ranking, results);
    Ok(SweepResult {
        spec: spec.clone(),
        criterion: CRITERION.into(),
        level: LEVEL,
        resamples: RESAMPLES,
        cells,
        ranking,
        best,
    })
}

/// Why no cell could be tested against the noise floor. The floor needs two seeds of one text;
/// the test needs a bootstrap interval of the mean parity gap, which needs at least
/// [`MIN_GROUPS`](crate::analysis::stats::MIN_GROUPS) (text, seed) units per cell.
fn unmeasurable_reason(cells: &[CellResult]) -> String {
    let need = crate::analysis::stats::MIN_GROUPS;
    let units = cells
        .iter()
        .filter_map(|c| c.gap.as_ref().map(|g| g.groups))
        .max();
    match units {
        None => format!(
            "the same-library noise floor needs at least 2 seeds per text, and the test against it at least {need} (text, seed) units per cell (its confidence interval is a bootstrap over those units)"
        ),
        Some(n) => format!(
            "the test against the noise floor needs a confidence interval of the parity gap, a bootstrap over (text, seed) units that needs at least {need} per cell; this sweep has {n} (seeds × texts): use at least {need} seeds, or more texts"
        ),
    }
}

fn best_cell(cells: &[CellResult], ranking: &[usize], _results: &[JobResult]) -> Best {
    let num = |x: f64| crate::report::num(if x.abs() < ZERO_TOL { 0.0 } else { x });
    let b = &cells[ranking[0]];
    let tied: Vec<(f64, usize)> = cells
        .iter()
        .filter(|c| c.rank == 1)
        .map(|c| (c.temperature, c.top_k))
        .collect();
    let measurable = cells.iter().any(|c| c.above_noise_floor.is_some());
    let all_within = measurable && cells.iter().all(|c| c.above_noise_floor != Some(true));
    let runner_up = ranking
        .iter()
        .map(|&i| &cells[i])
        .find(|c| c.rank > 1)
        .map(|c| (c.temperature, c.top_k));
    let list = |v: &[(f64, usize)]| {
        v.iter()
            .map(|(t, k)| format!("temp {t} top-k {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let gap_txt = |c: &CellResult| match &c.gap {
        Some(g) if g.has_ci() => format!(
            "parity gap {} [{}, {}]",
            num(g.value),
            num(g.ci_low),
            num(g.ci_high)
        ),
        Some(g) => format!("parity gap {} (no CI)", num(g.value)),
        None => "parity gap –".into(),
    };
    let sentence = if cells.len() == 1 {
        format!(
            "Only one cell (temp {}, top-k {}): nothing to compare; {}.",
            b.temperature,
            b.top_k,
            match b.above_noise_floor {
                Some(true) => "its libraries differ beyond the same-library noise floor".into(),
                Some(false) => "it is within the same-library noise floor".into(),
                None => format!(
                    "not tested against the noise floor: {}",
                    unmeasurable_reason(cells)
                ),
            }
        )
    } else if !measurable {
        format!(
            "No ranking: {}; every cell is tied.",
            unmeasurable_reason(cells)
        )
    } else if all_within {
        format!(
            "Every setting is within the noise floor: at no cell do the two libraries' token distributions differ more than two seeds of one library do ({}% CIs, Bonferroni-adjusted over {} cells); no setting is better than another.",
            (LEVEL * 100.0).round(),
            cells.len()
        )
    } else if tied.iter().all(|t| {
        cells
            .iter()
            .any(|c| (c.temperature, c.top_k) == *t && c.above_noise_floor != Some(true))
    }) {
        format!(
            "Best (tied, within the noise floor): {}. Above the noise floor: {}.",
            list(&tied),
            cells
                .iter()
                .filter(|c| c.above_noise_floor == Some(true))
                .map(|c| format!("temp {} top-k {} ({})", c.temperature, c.top_k, gap_txt(c)))
                .collect::<Vec<_>>()
                .join("; ")
        )
    } else {
        format!(
            "Every cell is above the noise floor; smallest parity gap{}: {} ({}).",
            if tied.len() > 1 { " (tied)" } else { "" },
            list(&tied),
            gap_txt(b)
        )
    };
    Best {
        temperature: b.temperature,
        top_k: b.top_k,
        tied,
        all_within_noise_floor: all_within,
        runner_up,
        difference: b.gap.clone(),
        significant: b.above_noise_floor == Some(true),
        sentence,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::job::{NativeMetrics, SharedMetrics};
    use super::*;

    pub(in crate::commands::sweep) fn spec(temps: &[f64], ks: &[usize], seeds: u64) -> SweepSpec {
        SweepSpec {
            temperatures: temps.to_vec(),
            top_ks: ks.to_vec(),
            seeds: (0..seeds).collect(),
            texts: vec!["t".into()],
            max_frames: 40,
            speaker: 0,
            dtype: "f32".into(),
            model_sha256: "x".into(),
            model_path: "m".into(),
            candidate: None,
        }
    }

    /// A histogram of 200 draws from token ids `lo..lo+width` (uniform, keyed by `key`).
    fn hist(key: u64, lo: i32, width: u64) -> Vec<(i32, u64)> {
        let mut rng = crate::rng::SplitMix64::new(key);
        let mut h: BTreeMap<i32, u64> = BTreeMap::new();
        for _ in 0..200 {
            *h.entry(lo + (rng.next_u64() % width) as i32).or_default() += 1;
        }
        h.into_iter().collect()
    }

    /// Job results whose candidate draws from tokens shifted by `shift` (0: same distribution).
    pub(in crate::commands::sweep) fn results(
        sp: &SweepSpec,
        shift: impl Fn(f64, usize) -> i32,
    ) -> Vec<JobResult> {
        sp.jobs()
            .into_iter()
            .map(|job| {
                let key = job.seed * 1000 + (job.temperature * 10.0) as u64 * 7 + job.top_k as u64;
                JobResult {
                    job,
                    text: "t".into(),
                    max_frames: 40,
                    speaker: 0,
                    dtype: "f32".into(),
                    model_sha256: "x".into(),
                    shared: SharedMetrics {
                        token_agreement: Some(1.0),
                        steps: 10,
                        frames_compared: 40,
                        divergence: None,
                        divergence_stage: None,
                        max_logit_diff: None,
                        nonfinite: vec![],
                    },
                    native: NativeMetrics {
                        hist_intersection: Some(0.5),
                        jaccard: Some(0.5),
                        weighted_jaccard: Some(0.5),
                        kl_hist: Some(0.1),
                        js_hist: Some(0.1),
                        chi_square_p: None,
                        hist_a: hist(key, 0, 30),
                        hist_b: hist(key ^ 0xBEEF, shift(job.temperature, job.top_k), 30),
                    },
                    seconds: 0.0,
                    candidate: None,
                }
            })
            .collect()
    }

    /// Identical settings (top-k 50 and 100 give the same numbers) and libraries that sample
    /// the same distribution: every cell is tied and within the noise floor; grid order
    /// decides nothing.
    #[test]
    fn within_the_noise_floor_everything_ties() {
        let sp = spec(&[0.6, 0.8], &[50, 100], 8);
        let r = aggregate(&sp, &results(&sp, |_, _| 0)).unwrap();
        assert!(
            r.cells.iter().all(|c| c.rank == 1),
            "{:?}",
            r.cells.iter().map(|c| (c.rank, &c.gap)).collect::<Vec<_>>()
        );
        assert!(r.cells.iter().all(|c| c.above_noise_floor == Some(false)));
        assert!(r.best.all_within_noise_floor);
        assert_eq!(r.best.tied.len(), 4);
        assert!(
            r.best
                .sentence
                .starts_with("Every setting is within the noise floor"),
            "{}",
            r.best.sentence
        );
        let f = r.cells[0].noise_floor.as_ref().unwrap();
        assert!(f.value > 0.3 && f.value < 0.95, "{f:?}");
    }

    /// A cell whose candidate samples other tokens is above the floor and ranks after the
    /// cells within it.
    #[test]
    fn a_cell_above_the_noise_floor_ranks_last() {
        let sp = spec(&[0.6, 0.8], &[50], 8);
        let r = aggregate(&sp, &results(&sp, |t, _| if t == 0.8 { 15 } else { 0 })).unwrap();
        let c6 = r.cells.iter().find(|c| c.temperature == 0.6).unwrap();
        let c8 = r.cells.iter().find(|c| c.temperature == 0.8).unwrap();
        assert_eq!(c8.above_noise_floor, Some(true), "{:?}", c8.gap);
        assert_eq!(c6.above_noise_floor, Some(false), "{:?}", c6.gap);
        assert_eq!((c6.rank, c8.rank), (1, 2));
        assert!(!r.best.all_within_noise_floor);
        assert_eq!((r.best.temperature, r.best.top_k), (0.6, 50));
        assert!(
            r.best.sentence.contains("within the noise floor"),
            "{}",
            r.best.sentence
        );
    }

    /// Four seeds measure the noise floor but give no interval (fewer than 5 units): the
    /// sweep says that, not "needs 2 seeds".
    #[test]
    fn too_few_units_for_an_interval_say_what_is_needed() {
        let sp = spec(&[0.6, 0.8], &[50], 4);
        let r = aggregate(&sp, &results(&sp, |_, _| 0)).unwrap();
        assert!(r.cells.iter().all(|c| c.noise_floor.is_some()));
        assert!(r.cells.iter().all(|c| c.above_noise_floor.is_none()));
        let s = &r.best.sentence;
        assert!(s.starts_with("No ranking:"), "{s}");
        assert!(
            s.contains("at least 5 per cell") && s.contains("this sweep has 4"),
            "{s}"
        );
        assert!(!s.contains("2 seeds"), "{s}");
        let sp = spec(&[0.6, 0.8], &[50], 1);
        let r = aggregate(&sp, &results(&sp, |_, _| 0)).unwrap();
        let s = &r.best.sentence;
        assert!(
            s.contains("at least 2 seeds per text") && s.contains("at least 5"),
            "{s}"
        );
    }
}
