//! Distribution summaries, bootstrap confidence intervals, chi-square homogeneity test.
use crate::rng::SplitMix64;
use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Percentile with linear interpolation between order statistics (numpy's default);
/// `sorted` ascending, `q` in [0, 100].
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = (q / 100.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let w = pos - lo as f64;
    sorted[lo] * (1.0 - w) + sorted[hi] * w
}

/// Mean (with its standard error), low and high percentiles, median and max of a sample (as
/// llama.cpp reports KLD).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Standard error of the mean, s/√n (sample standard deviation s); 0 for n = 1.
    pub mean_se: f64,
    /// Root mean square.
    pub rms: f64,
    pub min: f64,
    pub p0_1: f64,
    pub p1: f64,
    pub p5: f64,
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Summary {
    /// Summary of the finite values of `xs`; `None` when there are none.
    pub fn of(xs: impl IntoIterator<Item = f64>) -> Option<Summary> {
        let mut v: Vec<f64> = xs.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Some(Summary {
            n,
            mean,
            mean_se: (var / n as f64).sqrt(),
            rms: (v.iter().map(|x| x * x).sum::<f64>() / n as f64).sqrt(),
            min: v[0],
            p0_1: percentile(&v, 0.1),
            p1: percentile(&v, 1.0),
            p5: percentile(&v, 5.0),
            p10: percentile(&v, 10.0),
            median: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p95: percentile(&v, 95.0),
            p99: percentile(&v, 99.0),
            p99_9: percentile(&v, 99.9),
            max: v[n - 1],
        })
    }
}

/// A point estimate with a bias-corrected percentile bootstrap confidence interval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Estimate {
    pub value: f64,
    /// Interval bounds; `null` in JSON (NaN) when there is too little data for an interval.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Confidence level, e.g. 0.95.
    pub level: f64,
    /// Bootstrap resamples used.
    pub resamples: usize,
    /// Resampling units (frames, jobs) the interval rests on.
    pub groups: usize,
    /// Why there is no interval, or what limits it (too little data, strong bias).
    pub note: Option<String>,
}

impl Estimate {
    pub fn has_ci(&self) -> bool {
        self.ci_low.is_finite() && self.ci_high.is_finite()
    }
}

/// Fewest resampling units (frames, jobs) for a bootstrap interval.
pub const MIN_GROUPS: usize = 5;

/// Standard normal CDF (Abramowitz–Stegun 7.1.26 erf, |error| < 1.5e-7).
pub fn norm_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + y)
    } else {
        0.5 * (1.0 - y)
    }
}

/// Standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9).
pub fn norm_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let pl = 0.02425;
    if p < pl {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - pl {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// Bias-corrected (BC) percentile bootstrap over groups (frames, jobs): `stat(indices)`
/// computes the statistic from a multiset of group indices. The bias correction
/// z₀ = Φ⁻¹(share of resampled values below the estimate, ties counting half) moves the
/// percentiles to where the estimate sits in its bootstrap distribution, so a statistic that is
/// biased under resampling (histogram intersection) keeps its estimate inside the interval;
/// z₀ is capped at ±z_{1−α/2}, which still guarantees that, and the note says so. Fewer than
/// [`MIN_GROUPS`] groups, or a zero-width resampling distribution from a single group, give no
/// interval (`ci_low`/`ci_high` NaN) and a "too little data" note. Deterministic per `seed`.
pub fn bootstrap(
    groups: usize,
    resamples: usize,
    level: f64,
    seed: u64,
    mut stat: impl FnMut(&[usize]) -> f64,
) -> Option<Estimate> {
    if groups == 0 {
        return None;
    }
    let all: Vec<usize> = (0..groups).collect();
    let value = stat(&all);
    if !value.is_finite() {
        return None;
    }
    let none = |note: String, resamples: usize| Estimate {
        value,
        ci_low: f64::NAN,
        ci_high: f64::NAN,
        level,
        resamples,
        groups,
        note: Some(note),
    };
    if groups < MIN_GROUPS {
        return Some(none(
            format!(
                "too little data for an interval: {groups} resampling units (need ≥ {MIN_GROUPS})"
            ),
            0,
        ));
    }
    if resamples == 0 {
        return Some(none("no bootstrap resamples requested".into(), 0));
    }
    let mut rng = SplitMix64::new(seed);
    let mut idx = vec![0usize; groups];
    let mut vals = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for i in idx.iter_mut() {
            *i = rng.below(groups);
        }
        let v = stat(&idx);
        if v.is_finite() {
            vals.push(v);
        }
    }
    if vals.is_empty() {
        return Some(none("no resample gave a finite value".into(), 0));
    }
    vals.sort_by(|a, b| a.total_cmp(b));
    let b = vals.len() as f64;
    let below = vals.iter().filter(|&&v| v < value).count() as f64;
    let ties = vals.iter().filter(|&&v| v == value).count() as f64;
    let alpha = (1.0 - level) / 2.0;
    let z_hi = norm_quantile(1.0 - alpha);
    let p0 = ((below + 0.5 * ties) / b).clamp(0.5 / b, 1.0 - 0.5 / b);
    let z0_raw = norm_quantile(p0);
    let capped = z0_raw.abs() > z_hi;
    let z0 = z0_raw.clamp(-z_hi, z_hi);
    let lo_q = norm_cdf(2.0 * z0 - z_hi) * 100.0;
    let hi_q = norm_cdf(2.0 * z0 + z_hi) * 100.0;
    let (mut lo, mut hi) = (percentile(&vals, lo_q), percentile(&vals, hi_q));
    // Interpolation between order statistics can leave the estimate a rounding step outside.
    lo = lo.min(value);
    hi = hi.max(value);
    Some(Estimate {
        value,
        ci_low: lo,
        ci_high: hi,
        level,
        resamples: vals.len(),
        groups,
        note: capped.then(|| {
            format!(
                "the statistic is strongly biased under resampling (estimate at the {:.1}th percentile of its bootstrap distribution); interval bias-corrected with z₀ capped at ±{z_hi:.2}",
                p0 * 100.0
            )
        }),
    })
}

/// Chi-square test of homogeneity of two token histograms.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChiSquare {
    pub statistic: f64,
    pub df: usize,
    /// `None` when the test is not possible at this sample size (df = 0 after pooling).
    pub p_value: Option<f64>,
    /// False when pooling left fewer than two categories: "not testable at this sample size".
    pub testable: bool,
    /// Categories after pooling those with an expected count below 5 into one.
    pub categories: usize,
    pub pooled: usize,
}

/// 2×K homogeneity test on counts `a[k]`, `b[k]` (same categories). Categories whose smaller
/// expected count is below 5 are pooled into one "other" category (Cochran's rule); a pooled
/// category that is still below 5 is merged into the smallest remaining one.
pub fn chi_square_homogeneity(a: &[u64], b: &[u64]) -> Option<ChiSquare> {
    let na: u64 = a.iter().sum();
    let nb: u64 = b.iter().sum();
    if na == 0 || nb == 0 {
        return None;
    }
    let n = (na + nb) as f64;
    let (fa, fb) = (na as f64 / n, nb as f64 / n);
    let mut cats: Vec<(f64, f64)> = Vec::new();
    let (mut oa, mut ob, mut pooled) = (0f64, 0f64, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        let t = (x + y) as f64;
        if t == 0.0 {
            continue;
        }
        if (t * fa.min(fb)) < 5.0 {
            oa += x as f64;
            ob += y as f64;
            pooled += 1;
        } else {
            cats.push((x as f64, y as f64));
        }
    }
    if pooled > 0 {
        if ((oa + ob) * fa.min(fb)) >= 5.0 || cats.is_empty() {
            cats.push((oa, ob));
        } else {
            let i = (0..cats.len())
                .min_by(|&i, &j| (cats[i].0 + cats[i].1).total_cmp(&(cats[j].0 + cats[j].1)))
                .unwrap();
            cats[i].0 += oa;
            cats[i].1 += ob;
        }
    }
    let k = cats.len();
    if k < 2 {
        return Some(ChiSquare {
            statistic: 0.0,
            df: 0,
            p_value: None,
            testable: false,
            categories: k,
            pooled,
        });
    }
    let mut stat = 0.0;
    for (x, y) in &cats {
        let t = x + y;
        let (ea, eb) = (t * fa, t * fb);
        stat += (x - ea).powi(2) / ea + (y - eb).powi(2) / eb;
    }
    let df = k - 1;
    let dist = ChiSquared::new(df as f64).ok()?;
    Some(ChiSquare {
        statistic: stat,
        df,
        p_value: Some((1.0 - dist.cdf(stat)).max(0.0)),
        testable: true,
        categories: k,
        pooled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 90.0) - 3.7).abs() < 1e-12);
        let s = Summary::of([3.0, f64::NAN, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.mean, s.median, s.max), (3, 2.0, 2.0, 3.0));
    }

    #[test]
    fn chi_square_known_value() {
        // 2x2 table [[30, 10], [20, 20]]: chi2 = 5.333..., df 1, p = 0.02092.
        let c = chi_square_homogeneity(&[30, 10], &[20, 20]).unwrap();
        assert!((c.statistic - 16.0 / 3.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.df, 1);
        assert!((c.p_value.unwrap() - 0.020921).abs() < 1e-5, "{c:?}");
        let same = chi_square_homogeneity(&[10, 20, 30], &[10, 20, 30]).unwrap();
        assert_eq!(same.statistic, 0.0);
        assert!((same.p_value.unwrap() - 1.0).abs() < 1e-12);
        // Everything pooled into one category: df 0 is not a test, never p = 1.
        let tiny = chi_square_homogeneity(&[1, 2, 0], &[0, 1, 2]).unwrap();
        assert_eq!((tiny.df, tiny.testable, tiny.p_value), (0, false, None));
    }

    #[test]
    fn bootstrap_is_deterministic_and_covers() {
        let data: Vec<f64> = (0..200).map(|i| (i % 10) as f64).collect();
        let mean = |idx: &[usize]| idx.iter().map(|&i| data[i]).sum::<f64>() / idx.len() as f64;
        let e1 = bootstrap(200, 500, 0.95, 1, mean).unwrap();
        let e2 = bootstrap(200, 500, 0.95, 1, mean).unwrap();
        assert_eq!(e1, e2);
        assert_eq!(e1.value, 4.5);
        assert!(e1.ci_low < 4.5 && e1.ci_high > 4.5 && e1.ci_high - e1.ci_low < 1.5);
        // One group: no interval, a note instead of a zero-width CI.
        let one = bootstrap(1, 500, 0.95, 1, |_| 0.7).unwrap();
        assert!(!one.has_ci() && one.note.unwrap().contains("too little data"));
    }

    #[test]
    fn normal_cdf_and_quantile() {
        assert!((norm_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((norm_quantile(0.975) - 1.959_964).abs() < 1e-5);
        assert!((norm_quantile(0.01) + 2.326_348).abs() < 1e-5);
    }

    /// A statistic biased under resampling (the count of distinct groups drawn, as in the
    /// histogram intersection): the percentile interval excludes the estimate; the
    /// bias-corrected one must contain it.
    #[test]
    fn biased_statistic_keeps_its_estimate_inside_the_interval() {
        let n = 40;
        let distinct = |idx: &[usize]| {
            let mut s = idx.to_vec();
            s.sort_unstable();
            s.dedup();
            s.len() as f64 / n as f64
        };
        let e = bootstrap(n, 1000, 0.95, 3, distinct).unwrap();
        assert_eq!(e.value, 1.0);
        assert!(e.ci_low <= e.value && e.value <= e.ci_high, "{e:?}");
        assert!(e.note.is_some());
    }
}
