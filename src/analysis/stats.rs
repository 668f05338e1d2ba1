//! Distribution summaries, bootstrap confidence intervals, chi-square homogeneity test.
use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Small deterministic PRNG (SplitMix64) for bootstrap resampling.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform integer in `0..n` (n > 0), Lemire's multiply-shift.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

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

/// Mean, median, percentiles 90/95/99/99.9 and max of a sample (as llama.cpp reports KLD).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
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
        Some(Summary {
            n,
            mean: v.iter().sum::<f64>() / n as f64,
            median: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p95: percentile(&v, 95.0),
            p99: percentile(&v, 99.0),
            p99_9: percentile(&v, 99.9),
            max: v[n - 1],
        })
    }
}

/// A point estimate with a percentile bootstrap confidence interval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Confidence level, e.g. 0.95.
    pub level: f64,
    /// Bootstrap resamples used.
    pub resamples: usize,
}

/// Percentile bootstrap over groups (frames): `stat(indices)` computes the statistic from a
/// multiset of group indices. Deterministic for a given `seed`.
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
    vals.sort_by(|a, b| a.total_cmp(b));
    let alpha = (1.0 - level) / 2.0;
    Some(Estimate {
        value,
        ci_low: percentile(&vals, alpha * 100.0),
        ci_high: percentile(&vals, (1.0 - alpha) * 100.0),
        level,
        resamples: vals.len(),
    })
}

/// Chi-square test of homogeneity of two token histograms.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChiSquare {
    pub statistic: f64,
    pub df: usize,
    pub p_value: f64,
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
            p_value: 1.0,
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
        p_value: (1.0 - dist.cdf(stat)).max(0.0),
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
        assert!((c.p_value - 0.020921).abs() < 1e-5, "{c:?}");
        let same = chi_square_homogeneity(&[10, 20, 30], &[10, 20, 30]).unwrap();
        assert_eq!(same.statistic, 0.0);
        assert!((same.p_value - 1.0).abs() < 1e-12);
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
    }
}
