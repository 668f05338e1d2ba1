//! Per-step comparisons of logits and probabilities, and token-histogram metrics (DESIGN §5).
//! Natural logarithms (nats) throughout.
use crate::capture::Row;
use serde::Serialize;
use std::collections::HashMap;

/// exp(x) for x ≤ 0 (softmax after subtracting the max), f32, relative error < 2e-7; written as
/// straight-line arithmetic so the compiler vectorizes the loops that call it.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    let x = fmax(x, -87.0);
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Round to nearest via the 1.5·2^23 trick: the integer n then sits in the low mantissa bits
    // of t, so 2^n is built with integer ops only (no float→int conversion: vectorizes).
    const MAGIC: f32 = 12_582_912.0;
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    // Cody–Waite: r = x - n ln2 with ln2 split in two.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    // exp(r) on |r| <= ln2/2, degree-6 Taylor.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    let bits = (ni.wrapping_add(127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// max without NaN special-casing (maps to maxps); NaNs are detected separately via sums.
#[inline(always)]
fn fmax(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// Comparison of one step's logits (reference `a`, candidate `b`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitStep {
    pub max_abs: f32,
    pub mean_abs: f32,
    pub max_rel: f32,
    /// Some entry had |a−b| > atol + rtol·|a|.
    pub breach: bool,
    pub argmax_a: u32,
    pub argmax_b: u32,
    /// KL(softmax(a) ‖ softmax(b)) at temperature 1; NaN when not computable.
    pub kl: f64,
    /// Entries compared (vocab for dense rows, the common indices for top-N rows).
    pub compared: u32,
    /// Top-N rows whose index sets differ beyond a boundary near-tie.
    pub index_mismatch: bool,
    /// Cosine similarity of the two rows (over the compared entries); NaN when not computable.
    pub cosine: f64,
    /// Run A's / run B's row holds a NaN or an infinity.
    pub nonfinite_a: bool,
    pub nonfinite_b: bool,
    /// At least one side is stored as top-N: entries outside the stored ones were not compared.
    pub partial: bool,
}

/// Floor of the denominator of the relative error |a−b| / max(|a|, floor): `atol/rtol` (the
/// magnitude below which the absolute tolerance dominates), 1 when rtol is 0.
#[inline]
pub fn rel_floor(atol: f32, rtol: f32) -> f32 {
    let f = if rtol > 0.0 { atol / rtol } else { 1.0 };
    if f.is_finite() && f > 0.0 {
        f
    } else {
        f32::MIN_POSITIVE
    }
}

const LANES: usize = 8;

fn argmax_max(x: &[f32]) -> (u32, f32) {
    let mut best = (0u32, f32::NEG_INFINITY);
    for (i, &v) in x.iter().enumerate() {
        if v > best.1 {
            best = (i as u32, v);
        }
    }
    best
}

/// expm1(x) in f64: Taylor series near 0 (where the cancellation matters), libm elsewhere.
#[inline(always)]
fn expm1_f64(x: f64) -> f64 {
    if x.abs() < 1e-2 {
        x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0)))))
    } else {
        x.exp_m1()
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Dense logits of equal length.
///
/// KL(P‖Q) with P = softmax(a), Q = softmax(b), d = a − b and μ = E_P[d] is computed as
/// ln E_P[exp(−(d − μ))] (exact, by shift invariance of the softmax), which has no first-order
/// cancellation: tiny divergences between near-identical runs keep their relative accuracy.
pub fn compare_logits_dense(a: &[f32], b: &[f32], atol: f32, rtol: f32) -> LogitStep {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    let floor = rel_floor(atol, rtol);
    // Maxima in lanes (vectorized), then the first index holding each.
    let mut ma = [f32::NEG_INFINITY; LANES];
    let mut mb = [f32::NEG_INFINITY; LANES];
    for (xa, xb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for l in 0..LANES {
            ma[l] = fmax(ma[l], xa[l]);
            mb[l] = fmax(mb[l], xb[l]);
        }
    }
    let tail0 = n - n % LANES;
    let max_a = a[tail0..].iter().fold(
        ma.iter().fold(f32::NEG_INFINITY, |p, &q| p.max(q)),
        |p, &q| p.max(q),
    );
    let max_b = b[tail0..].iter().fold(
        mb.iter().fold(f32::NEG_INFINITY, |p, &q| p.max(q)),
        |p, &q| p.max(q),
    );
    let argmax_a = a.iter().position(|&x| x == max_a).unwrap_or(0) as u32;
    let argmax_b = b.iter().position(|&x| x == max_b).unwrap_or(0) as u32;
    SCRATCH.with(|sc| {
        let mut e = sc.borrow_mut();
        // Every entry is written below: no zeroing when the length is unchanged.
        e.resize(n, 0.0);
        // Small lane loops (each unrolls and vectorizes): unnormalized P, its sums, errors.
        for (p, &x) in e.iter_mut().zip(a) {
            *p = exp_neg(x - max_a);
        }
        let mut sa = [0f32; LANES];
        let mut sd = [0f32; LANES];
        for ((xa, xb), ee) in a
            .chunks_exact(LANES)
            .zip(b.chunks_exact(LANES))
            .zip(e.chunks_exact(LANES))
        {
            for l in 0..LANES {
                sa[l] += ee[l];
                sd[l] += ee[l] * (xa[l] - xb[l]);
            }
        }
        let mut mx = [0f32; LANES];
        let mut sm = [0f32; LANES];
        let mut rel = [0f32; LANES];
        let mut br = [f32::NEG_INFINITY; LANES];
        let mut dab = [0f32; LANES];
        let mut daa = [0f32; LANES];
        let mut dbb = [0f32; LANES];
        for (xa, xb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
            for l in 0..LANES {
                let d = (xa[l] - xb[l]).abs();
                let m = xa[l].abs();
                mx[l] = fmax(mx[l], d);
                sm[l] += d;
                rel[l] = fmax(rel[l], d / fmax(m, floor));
                br[l] = fmax(br[l], d - (atol + rtol * m));
                dab[l] += xa[l] * xb[l];
                daa[l] += xa[l] * xa[l];
                dbb[l] += xb[l] * xb[l];
            }
        }
        let mut max_abs = mx.iter().fold(0f32, |p, &q| p.max(q));
        let mut sum_abs: f64 = sm.iter().map(|&v| v as f64).sum();
        let mut max_rel = rel.iter().fold(0f32, |p, &q| p.max(q));
        let mut breach = br.iter().fold(f32::NEG_INFINITY, |p, &q| p.max(q));
        let mut sum_a: f64 = sa.iter().map(|&v| v as f64).sum();
        let mut sum_d: f64 = sd.iter().map(|&v| v as f64).sum();
        let mut s_ab: f64 = dab.iter().map(|&v| v as f64).sum();
        let mut s_aa: f64 = daa.iter().map(|&v| v as f64).sum();
        let mut s_bb: f64 = dbb.iter().map(|&v| v as f64).sum();
        for k in tail0..n {
            let (x, y) = (a[k], b[k]);
            let d = (x - y).abs();
            let m = x.abs();
            max_abs = max_abs.max(d);
            sum_abs += d as f64;
            max_rel = max_rel.max(d / m.max(floor));
            s_ab += (x * y) as f64;
            s_aa += (x * x) as f64;
            s_bb += (y * y) as f64;
            breach = breach.max(d - (atol + rtol * m));
            sum_a += e[k] as f64;
            sum_d += (e[k] * (x - y)) as f64;
        }
        // A NaN or infinity anywhere shows up in the sums (Σa², Σb² per side).
        let nonfinite_a = !s_aa.is_finite() || !max_a.is_finite();
        let nonfinite_b = !s_bb.is_finite() || !max_b.is_finite();
        let nan = nonfinite_a || nonfinite_b || !sum_abs.is_finite() || !sum_a.is_finite();
        // Pass 2 (f64): with c ≈ E_P[d] and y = d − c,
        // KL = E_P[y] + ln(1 + E_P[expm1(−y)]); the first-order terms cancel analytically,
        // so the rounding error stays relative to KL itself.
        let c = sum_d / sum_a;
        let (mut s1, mut s2) = (0f64, 0f64);
        if (max_abs as f64 + c.abs()) < 1e-2 {
            // Every |y| < 1e-2. With g(y) = y + expm1(−y) = y²(½ − y/6 + y²/24 − …) ≥ 0,
            // E_P[expm1(−y)] = E_P[g] − E_P[y], and g is a sum of positive terms: no
            // cancellation, so f32 lanes (summed into f64 per block of 256) keep KL's relative
            // accuracy (the dropped y⁵ term is < 2e-8 relative at |y| = 1e-2).
            let cf = c as f32;
            let mut sg = 0f64;
            for ((ba, bb), be) in a.chunks(256).zip(b.chunks(256)).zip(e.chunks(256)) {
                let mut l1 = [0f32; LANES];
                let mut lg = [0f32; LANES];
                for ((xa, xb), ee) in ba
                    .chunks_exact(LANES)
                    .zip(bb.chunks_exact(LANES))
                    .zip(be.chunks_exact(LANES))
                {
                    for l in 0..LANES {
                        let y = (xa[l] - xb[l]) - cf;
                        let g = y * y * (0.5 - y * (1.0 / 6.0 - y * (1.0 / 24.0)));
                        l1[l] += ee[l] * y;
                        lg[l] += ee[l] * g;
                    }
                }
                s1 += l1.iter().map(|&v| v as f64).sum::<f64>();
                sg += lg.iter().map(|&v| v as f64).sum::<f64>();
                for k in ba.len() - ba.len() % LANES..ba.len() {
                    let y = (ba[k] - bb[k]) as f64 - cf as f64;
                    s1 += be[k] as f64 * y;
                    sg += be[k] as f64 * (y + expm1_f64(-y));
                }
            }
            s2 = sg - s1;
        } else {
            for ((&p, &x), &y) in e.iter().zip(a).zip(b) {
                let t = (x as f64 - y as f64) - c;
                let p = p as f64;
                s1 += p * t;
                s2 += p * expm1_f64(-t);
            }
        }
        let kl = if nan {
            f64::NAN
        } else {
            (s1 / sum_a + (s2 / sum_a).ln_1p()).max(0.0)
        };
        LogitStep {
            max_abs: if nan { f32::NAN } else { max_abs },
            mean_abs: (sum_abs / n.max(1) as f64) as f32,
            max_rel,
            breach: nan || breach > 0.0,
            argmax_a,
            argmax_b,
            kl,
            compared: n as u32,
            index_mismatch: false,
            cosine: cosine(s_ab, s_aa, s_bb, nan),
            nonfinite_a,
            nonfinite_b,
            partial: false,
        }
    })
}

fn cosine(ab: f64, aa: f64, bb: f64, nan: bool) -> f64 {
    let den = (aa * bb).sqrt();
    if nan || den <= 0.0 || !den.is_finite() {
        if !nan && aa == 0.0 && bb == 0.0 {
            return 1.0;
        }
        f64::NAN
    } else {
        (ab / den).clamp(-1.0, 1.0)
    }
}

/// Value of `row` at vocab index `i`, if stored.
pub fn lookup(row: &Row<'_>, i: usize) -> Option<f32> {
    match row {
        Row::Dense(v) => v.get(i).copied(),
        Row::Top { values, indices } => indices
            .iter()
            .position(|&j| j as usize == i)
            .map(|k| values[k]),
    }
}

fn entries<'a>(row: &'a Row<'a>) -> Box<dyn Iterator<Item = (usize, f32)> + 'a> {
    match row {
        Row::Dense(v) => Box::new(v.iter().copied().enumerate()),
        Row::Top { values, indices } => Box::new(
            indices
                .iter()
                .map(|&i| i as usize)
                .zip(values.iter().copied()),
        ),
    }
}

/// The smallest stored value of a top-N row (the boundary of its stored set); `None` for dense
/// rows.
fn stored_min(row: &Row<'_>) -> Option<f32> {
    match row {
        Row::Dense(_) => None,
        Row::Top { values, .. } => Some(values.iter().fold(f32::INFINITY, |m, &v| m.min(v))),
    }
}

/// Logits where at least one side is stored as top-N: compared on the entries both sides
/// stored. An entry stored by one side only is an index mismatch unless its value lies within
/// tolerance of the other side's storage boundary (a near-tie at the N-th place, or a dense side
/// whose own top-N holds it). KL over the softmax renormalized to the common entries (an
/// approximation, flagged in the report).
pub fn compare_logits(a: &Row<'_>, b: &Row<'_>, atol: f32, rtol: f32) -> LogitStep {
    if let (Row::Dense(x), Row::Dense(y)) = (a, b) {
        return compare_logits_dense(x, y, atol, rtol);
    }
    let floor = rel_floor(atol, rtol);
    let mut max_abs = 0f32;
    let mut sum_abs = 0f64;
    let mut max_rel = 0f32;
    let mut breach = false;
    let mut compared = 0u32;
    let mut mismatch = false;
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    let mut pairs: Vec<(f32, f32)> = Vec::new();
    // A value stored by one side only must not exceed the other side's boundary (the N-th
    // largest value it kept) beyond tolerance; for a dense other side, the boundary is the
    // value of the N-th largest entry of that side, N the top-N side's width.
    let boundary = |other: &Row<'_>, n: usize| -> f32 {
        match other {
            Row::Top { .. } => stored_min(other).unwrap_or(f32::INFINITY),
            Row::Dense(v) => {
                let mut s: Vec<f32> = v.to_vec();
                let n = n.clamp(1, s.len().max(1));
                s.sort_by(|x, y| y.total_cmp(x));
                s.get(n - 1).copied().unwrap_or(f32::NEG_INFINITY)
            }
        }
    };
    let width = |r: &Row<'_>| match r {
        Row::Dense(v) => v.len(),
        Row::Top { indices, .. } => indices.len(),
    };
    let (na, nb) = (width(a), width(b));
    let n_top = match (a, b) {
        (Row::Top { .. }, Row::Top { .. }) => na.min(nb),
        (Row::Top { .. }, _) => na,
        _ => nb,
    };
    let (bound_a, bound_b) = (boundary(a, n_top), boundary(b, n_top));
    let (mut nonfinite_a, mut nonfinite_b) = (false, false);
    // Iterate over the top-N side(s): a dense side is looked up.
    let (iter_row, a_is_iter) = match a {
        Row::Top { .. } => (a, true),
        Row::Dense(_) => (b, false),
    };
    for (i, v) in entries(iter_row) {
        let (x, y) = if a_is_iter {
            (Some(v), lookup(b, i))
        } else {
            (lookup(a, i), Some(v))
        };
        match (x, y) {
            (Some(x), Some(y)) => {
                nonfinite_a |= !x.is_finite();
                nonfinite_b |= !y.is_finite();
                let d = (x - y).abs();
                max_abs = max_abs.max(d);
                sum_abs += d as f64;
                max_rel = max_rel.max(d / x.abs().max(floor));
                breach |= d > atol + rtol * x.abs() || d.is_nan();
                compared += 1;
                ab += x as f64 * y as f64;
                aa += x as f64 * x as f64;
                bb += y as f64 * y as f64;
                pairs.push((x, y));
            }
            (Some(x), None) => {
                nonfinite_a |= !x.is_finite();
                mismatch |= x.is_nan() || x > bound_b + atol + rtol * x.abs();
            }
            (None, Some(y)) => {
                nonfinite_b |= !y.is_finite();
                mismatch |= y.is_nan() || y > bound_a + atol + rtol * y.abs();
            }
            (None, None) => {}
        }
    }
    if let (Row::Top { .. }, Row::Top { indices, values }) = (a, b) {
        for (&j, &y) in indices.iter().zip(values.iter()) {
            if lookup(a, j as usize).is_none() {
                nonfinite_b |= !y.is_finite();
                mismatch |= y.is_nan() || y > bound_a + atol + rtol * y.abs();
            }
        }
    }
    let top1 = |r: &Row<'_>| match r {
        Row::Dense(v) => argmax_max(v).0,
        Row::Top { indices, .. } => indices.first().map(|&i| i as u32).unwrap_or(0),
    };
    let nan = nonfinite_a || nonfinite_b;
    let kl = if nan || pairs.is_empty() {
        f64::NAN
    } else {
        // The centred form of the dense path (no first-order cancellation): with weights
        // w = exp(a − max a), d = a − b, c = E_w[d] and y = d − c,
        // KL = E_w[y] + ln(1 + E_w[expm1(−y)]).
        let ma = pairs.iter().fold(f32::NEG_INFINITY, |m, p| m.max(p.0)) as f64;
        let w: Vec<f64> = pairs.iter().map(|p| (p.0 as f64 - ma).exp()).collect();
        let z: f64 = w.iter().sum();
        let d = |p: &(f32, f32)| p.0 as f64 - p.1 as f64;
        let c = pairs.iter().zip(&w).map(|(p, w)| w * d(p)).sum::<f64>() / z;
        let (mut s1, mut s2) = (0f64, 0f64);
        for (p, w) in pairs.iter().zip(&w) {
            let y = d(p) - c;
            s1 += w * y;
            s2 += w * expm1_f64(-y);
        }
        (s1 / z + (s2 / z).ln_1p()).max(0.0)
    };
    LogitStep {
        max_abs: if nan { f32::NAN } else { max_abs },
        mean_abs: (sum_abs / compared.max(1) as f64) as f32,
        max_rel,
        breach: breach || mismatch || nan,
        argmax_a: top1(a),
        argmax_b: top1(b),
        kl,
        compared,
        index_mismatch: mismatch,
        cosine: cosine(ab, aa, bb, nan),
        nonfinite_a,
        nonfinite_b,
        partial: true,
    }
}

/// Comparison of one step's sampler probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbStep {
    pub max_abs: f32,
    /// Vocab index of the largest |p_A − p_B|.
    pub max_abs_index: u32,
    pub breach: bool,
    /// KL(P̃_A ‖ P̃_B) with both renormalized in f64 over the shared support
    /// {p_A > 0} ∩ {p_B > 0} (∩ the stored entries); NaN when that support is empty.
    pub kl: f64,
    /// The sets {p > 0} differ where both sides' supports are known (a token kept by one
    /// sampler and not the other): a sampler-stage event.
    pub support_mismatch: bool,
    /// Largest of the two sides' probability mass outside the shared support.
    pub excluded_mass: f64,
    /// The renormalized distributions still breach the tolerance (a difference in shape, not
    /// only in the normalizer).
    pub renorm_breach: bool,
    pub argmax_a: u32,
    pub argmax_b: u32,
    /// p_A and p_B of run A's sampled token (NaN when a side did not store it).
    pub p_tok_a: f64,
    pub p_tok_b: f64,
    pub nonfinite_a: bool,
    pub nonfinite_b: bool,
}

/// ln(p/q) accurately when p ≈ q (p, q > 0).
#[inline]
fn ln_ratio(p: f64, q: f64) -> f64 {
    -((q - p) / p).ln_1p()
}

/// Whether a row's support {p > 0} is fully known: dense rows always; a top-N row when it
/// stored a zero (then every unstored entry is zero too).
fn support_known(r: &Row<'_>) -> bool {
    match r {
        Row::Dense(_) => true,
        Row::Top { values, .. } => values.contains(&0.0),
    }
}

/// Compares one step's sampler probabilities; `tok` is run A's sampled token.
pub fn compare_probs(
    a: &Row<'_>,
    b: &Row<'_>,
    atol: f32,
    rtol: f32,
    tok: Option<usize>,
) -> ProbStep {
    let mut max_abs = 0f32;
    let mut max_abs_index = 0u32;
    let mut breach = false;
    let mut support_mismatch = false;
    let (mut nonfinite_a, mut nonfinite_b) = (false, false);
    let (mut mass_a, mut mass_b) = (0f64, 0f64);
    let (mut za, mut zb) = (0f64, 0f64);
    let mut shared: Vec<(u32, f64, f64)> = Vec::new();
    let (ka, kb) = (support_known(a), support_known(b));
    let mut visit = |i: usize, p: Option<f32>, q: Option<f32>| {
        let (pp, qq) = (p.unwrap_or(0.0), q.unwrap_or(0.0));
        nonfinite_a |= !pp.is_finite();
        nonfinite_b |= !qq.is_finite();
        // An entry one side did not store (and whose value that side's storage does not
        // imply) is unknown there: not compared.
        let known_a = p.is_some() || ka;
        let known_b = q.is_some() || kb;
        if !(known_a && known_b) {
            mass_a += pp.max(0.0) as f64;
            mass_b += qq.max(0.0) as f64;
            return;
        }
        let d = (pp - qq).abs();
        if d > max_abs {
            max_abs = d;
            max_abs_index = i as u32;
        }
        breach |= d > atol + rtol * pp.abs() || d.is_nan();
        mass_a += pp.max(0.0) as f64;
        mass_b += qq.max(0.0) as f64;
        if pp > 0.0 && qq > 0.0 {
            za += pp as f64;
            zb += qq as f64;
            shared.push((i as u32, pp as f64, qq as f64));
        } else if (pp > 0.0) != (qq > 0.0) {
            // Known on both sides: stored, or unstored in a row whose support is known.
            support_mismatch = true;
        }
    };
    match (a, b) {
        (Row::Dense(x), Row::Dense(y)) => {
            for (i, (&p, &q)) in x.iter().zip(y.iter()).enumerate() {
                visit(i, Some(p), Some(q));
            }
        }
        _ => {
            for (i, p) in entries(a) {
                visit(i, Some(p), lookup(b, i));
            }
            for (i, q) in entries(b) {
                if lookup(a, i).is_none() {
                    visit(i, None, Some(q));
                }
            }
        }
    }
    let nan = nonfinite_a || nonfinite_b;
    // Pass 2 (f64) over the shared support: with r = ln(p/q) and P̃ = p/Z_A,
    // KL(P̃‖Q̃) = E_P̃[r] + ln E_P̃[exp(−r)]; centred on c = E_P̃[r] the first-order terms
    // cancel: KL = ln(1 + E_P̃[expm1(−(r − c))]).
    let (kl, renorm_breach) = if nan || shared.is_empty() {
        (f64::NAN, nan)
    } else {
        let c: f64 = shared
            .iter()
            .map(|&(_, p, q)| p * ln_ratio(p, q))
            .sum::<f64>()
            / za;
        let s: f64 = shared
            .iter()
            .map(|&(_, p, q)| p * expm1_f64(-(ln_ratio(p, q) - c)))
            .sum::<f64>()
            / za;
        let rb = shared.iter().any(|&(_, p, q)| {
            let (pn, qn) = (p / za, q / zb);
            (pn - qn).abs() > atol as f64 + rtol as f64 * pn
        });
        (s.ln_1p().max(0.0), rb)
    };
    let top1 = |r: &Row<'_>| match r {
        Row::Dense(v) => argmax_max(v).0,
        Row::Top { indices, .. } => indices.first().map(|&i| i as u32).unwrap_or(0),
    };
    let at = |r: &Row<'_>, t: Option<usize>| match t {
        Some(t) => lookup(r, t).map_or(f64::NAN, |v| v as f64),
        None => f64::NAN,
    };
    ProbStep {
        max_abs: if nan { f32::NAN } else { max_abs },
        max_abs_index,
        breach: breach || nan,
        kl,
        support_mismatch,
        excluded_mass: ((mass_a - za).max(0.0)).max((mass_b - zb).max(0.0)),
        renorm_breach,
        argmax_a: top1(a),
        argmax_b: top1(b),
        p_tok_a: at(a, tok),
        p_tok_b: at(b, tok),
        nonfinite_a,
        nonfinite_b,
    }
}

/// Set and histogram comparison of two token streams (DESIGN §5).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TokenDist {
    pub count_a: u64,
    pub count_b: u64,
    pub unique_a: usize,
    pub unique_b: usize,
    /// |set(A) ∩ set(B)| / |set(A)|.
    pub overlap_a: f64,
    /// |set(A) ∩ set(B)| / |set(B)|.
    pub overlap_b: f64,
    pub jaccard: f64,
    /// Σ_t min(p_A(t), p_B(t)) of the normalized histograms.
    pub hist_intersection: f64,
    /// Σ_t min(n_A(t), n_B(t)) / Σ_t max(n_A(t), n_B(t)) on normalized histograms.
    pub weighted_jaccard: f64,
    /// KL(h_A ‖ h_B) with add-½ smoothing over the union of observed tokens.
    pub kl_hist: f64,
    /// Jensen–Shannon divergence of the unsmoothed histograms (nats, ≤ ln 2).
    pub js_hist: f64,
    pub chi_square: Option<crate::analysis::stats::ChiSquare>,
    /// Most frequent tokens (token, count), most frequent first, ties by token id.
    pub top_a: Vec<(i32, u64)>,
    pub top_b: Vec<(i32, u64)>,
}

/// Additive smoothing used for the histogram KL.
pub const HIST_SMOOTHING: f64 = 0.5;

pub fn histogram(tokens: impl IntoIterator<Item = i32>) -> HashMap<i32, u64> {
    let mut h = HashMap::new();
    for t in tokens {
        *h.entry(t).or_insert(0) += 1;
    }
    h
}

fn top_tokens(h: &HashMap<i32, u64>, k: usize) -> Vec<(i32, u64)> {
    let mut v: Vec<(i32, u64)> = h.iter().map(|(&t, &n)| (t, n)).collect();
    v.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    v.truncate(k);
    v
}

pub fn token_dist(ha: &HashMap<i32, u64>, hb: &HashMap<i32, u64>, top_k: usize) -> TokenDist {
    let na: u64 = ha.values().sum();
    let nb: u64 = hb.values().sum();
    let mut union: Vec<i32> = ha.keys().chain(hb.keys()).copied().collect();
    union.sort_unstable();
    union.dedup();
    let inter = ha.keys().filter(|t| hb.contains_key(t)).count();
    let ratio = |x: usize, y: usize| {
        if y == 0 {
            f64::NAN
        } else {
            x as f64 / y as f64
        }
    };
    let (mut smin, mut smax, mut kl, mut js) = (0f64, 0f64, 0f64, 0f64);
    let k = union.len() as f64;
    let mut ca = Vec::with_capacity(union.len());
    let mut cb = Vec::with_capacity(union.len());
    for t in &union {
        let x = *ha.get(t).unwrap_or(&0);
        let y = *hb.get(t).unwrap_or(&0);
        ca.push(x);
        cb.push(y);
        let p = if na > 0 { x as f64 / na as f64 } else { 0.0 };
        let q = if nb > 0 { y as f64 / nb as f64 } else { 0.0 };
        smin += p.min(q);
        smax += p.max(q);
        let ps = (x as f64 + HIST_SMOOTHING) / (na as f64 + HIST_SMOOTHING * k);
        let qs = (y as f64 + HIST_SMOOTHING) / (nb as f64 + HIST_SMOOTHING * k);
        kl += ps * (ps / qs).ln();
        let m = (p + q) / 2.0;
        if p > 0.0 {
            js += 0.5 * p * (p / m).ln();
        }
        if q > 0.0 {
            js += 0.5 * q * (q / m).ln();
        }
    }
    let empty = na == 0 || nb == 0;
    TokenDist {
        count_a: na,
        count_b: nb,
        unique_a: ha.len(),
        unique_b: hb.len(),
        overlap_a: ratio(inter, ha.len()),
        overlap_b: ratio(inter, hb.len()),
        jaccard: ratio(inter, union.len()),
        hist_intersection: if empty { f64::NAN } else { smin },
        weighted_jaccard: if empty || smax == 0.0 {
            f64::NAN
        } else {
            smin / smax
        },
        kl_hist: if empty { f64::NAN } else { kl.max(0.0) },
        js_hist: if empty { f64::NAN } else { js.max(0.0) },
        chi_square: crate::analysis::stats::chi_square_homogeneity(&ca, &cb),
        top_a: top_tokens(ha, top_k),
        top_b: top_tokens(hb, top_k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        for i in 0..100_000 {
            let x = -(i as f32) * 0.0008;
            let e = exp_neg(x) as f64;
            let t = (x as f64).exp();
            worst = worst.max(((e - t) / t).abs());
        }
        assert!(worst < 3e-7, "{worst}");
    }

    #[test]
    fn dense_kl_matches_f64() {
        let a: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 23) as f32 * 0.3 - 2.0)
            .collect();
        let b: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, x)| x + (i % 5) as f32 * 0.05)
            .collect();
        let s = compare_logits_dense(&a, &b, 1e-3, 0.0);
        let sm = |x: &[f32]| {
            let m = x.iter().fold(f64::NEG_INFINITY, |p, &q| p.max(q as f64));
            let z: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
            x.iter()
                .map(|&v| (v as f64 - m).exp() / z)
                .collect::<Vec<_>>()
        };
        let (p, q) = (sm(&a), sm(&b));
        let kl: f64 = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
        assert!((s.kl - kl).abs() < 1e-5 * kl, "{} vs {kl}", s.kl);
        assert!(s.breach);
        assert!((s.max_abs - 0.2).abs() < 1e-6);
        let same = compare_logits_dense(&a, &a, 0.0, 0.0);
        assert_eq!((same.kl, same.max_abs, same.breach), (0.0, 0.0, false));
    }

    #[test]
    fn token_dist_known_values() {
        let ha = histogram([1, 1, 2, 3]);
        let hb = histogram([1, 2, 2, 4]);
        let d = token_dist(&ha, &hb, 2);
        assert_eq!((d.unique_a, d.unique_b), (3, 3));
        assert!((d.jaccard - 0.5).abs() < 1e-12);
        assert!((d.overlap_a - 2.0 / 3.0).abs() < 1e-12);
        // min: t1 .25, t2 .25 → 0.5; max: .5 + .5 + .25 + .25 = 1.5
        assert!((d.hist_intersection - 0.5).abs() < 1e-12);
        assert!((d.weighted_jaccard - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(d.top_a, vec![(1, 2), (2, 1)]);
    }
}
