//! The analyzer on hand-built runs with a known answer (issue 4, "Done when").
mod common;

use common::*;
use csm_parity::analysis::divergence::{Stage, Step};
use csm_parity::analysis::{compare, DiffOptions};
use csm_parity::capture::{Run, Storage};
use std::collections::HashMap;

fn diff_of(
    spec: &Spec,
    edit: impl FnOnce(&mut Vec<csm_parity::capture::FrameRecord>),
) -> csm_parity::analysis::Diff {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = pair(tmp.path(), spec, edit);
    let (a, b) = (Run::open(&a).unwrap(), Run::open(&b).unwrap());
    compare(&a, &b, &DiffOptions::default()).unwrap()
}

#[test]
fn self_diff_is_identical() {
    let d = diff_of(&Spec::default(), |_| {});
    assert_eq!(d.verdict.kind, "identical");
    assert!(d.verdict.line.starts_with("IDENTICAL"));
    assert_eq!(d.overall.token_agreement, 1.0);
    assert_eq!(d.overall.tokens.jaccard, 1.0);
    assert_eq!(d.overall.tokens.hist_intersection, 1.0);
    assert_eq!(d.overall.tokens.js_hist, 0.0);
    assert_eq!(d.overall.top1_agreement, Some(1.0));
    let kl = d.overall.logits.as_ref().unwrap().kl.as_ref().unwrap();
    assert_eq!((kl.mean, kl.max), (0.0, 0.0));
    let pk = d.overall.probs.as_ref().unwrap().kl.as_ref().unwrap();
    assert_eq!(pk.max, 0.0);
    assert!(d.divergence.point.is_none() && d.divergence.stage.is_none());
    assert!(d.divergence.first_token_mismatch.is_none());
    assert_eq!(d.steps_comparable, 48);
    for m in &d.per_codebook {
        assert_eq!(m.token_agreement, 1.0);
        assert_eq!(m.tokens.jaccard, 1.0);
    }
    let ci = d.confidence.token_agreement.as_ref().unwrap();
    assert_eq!((ci.ci_low, ci.ci_high), (1.0, 1.0));
    let chi = d.overall.tokens.chi_square.as_ref().unwrap();
    assert_eq!(chi.statistic, 0.0);
}

#[test]
fn token_changed_at_frame_3_codebook_7() {
    let spec = Spec::default();
    let d = diff_of(&spec, |b| {
        let t = b[3].tokens[7];
        b[3].tokens[7] = (t + 1) % 16;
        b[3].post_tokens[7] = (t + 1) % 16;
    });
    let at = Step {
        frame: 3,
        codebook: 7,
    };
    assert_eq!(d.verdict.kind, "diverged");
    assert_eq!(d.divergence.point, Some(at));
    assert_eq!(d.divergence.first_token_mismatch, Some(at));
    // Logits and probs agree, shared noise: the noise plumbing is to blame.
    assert_eq!(d.divergence.stage, Some(Stage::Noise));
    assert!(
        d.verdict.line.contains("frame 3 codebook 7 in stage noise"),
        "{}",
        d.verdict.line
    );
    // Not teacher-forced: comparable up to and including the mismatch (3*8+7+1 = 32 steps).
    assert!(!d.teacher_forced);
    assert_eq!(d.steps_comparable, 32);
    assert!(d.comparability.contains("not teacher-forced"));
    assert!((d.overall.token_agreement - 31.0 / 32.0).abs() < 1e-12);
    assert_eq!(d.per_codebook[7].token_agreement, 3.0 / 4.0);
    assert_eq!(d.per_codebook[0].steps, 4);
}

#[test]
fn teacher_forced_runs_compare_every_step() {
    let spec = Spec {
        mode: "teacher",
        ..Spec::default()
    };
    let d = diff_of(&spec, |b| {
        b[3].tokens[7] = (b[3].tokens[7] + 1) % 16;
        b[3].post_tokens[7] = b[3].tokens[7];
    });
    assert!(d.teacher_forced);
    assert_eq!(d.steps_comparable, 48);
    assert!((d.overall.token_agreement - 47.0 / 48.0).abs() < 1e-12);
}

#[test]
fn logits_beyond_tolerance_are_a_model_divergence() {
    let spec = Spec::default();
    let d = diff_of(&spec, |b| {
        // Frame 2, codebook 5, vocab entry 9: +0.05 (atol 1e-3), tokens unchanged.
        let l = b[2].logits.as_mut().unwrap();
        l[5 * 16 + 9] += 0.05;
    });
    let at = Step {
        frame: 2,
        codebook: 5,
    };
    assert_eq!(d.divergence.point, Some(at));
    assert_eq!(d.divergence.first_logits_breach, Some(at));
    assert_eq!(d.divergence.stage, Some(Stage::Model));
    assert!(d.divergence.first_token_mismatch.is_none());
    let l = d.overall.logits.as_ref().unwrap();
    assert_eq!(l.breaches, 1);
    assert!((l.max_abs.max - 0.05).abs() < 1e-5);
    // A smaller perturbation within tolerance: numerically close.
    let d = diff_of(&spec, |b| {
        b[2].logits.as_mut().unwrap()[5 * 16 + 9] += 1e-5;
    });
    assert_eq!(d.verdict.kind, "numerically-close");
    assert!(d.divergence.point.is_none());
}

#[test]
fn probs_only_change_is_a_sampler_divergence() {
    let d = diff_of(&Spec::default(), |b| {
        let p = b[1].probs.as_mut().unwrap();
        p[2 * 16 + 3] += 0.01;
        p[2 * 16 + 4] -= 0.01;
    });
    assert_eq!(
        d.divergence.point,
        Some(Step {
            frame: 1,
            codebook: 2
        })
    );
    assert_eq!(d.divergence.stage, Some(Stage::Sampler));
}

#[test]
fn post_processing_only_change() {
    let d = diff_of(&Spec::default(), |b| {
        // Remap the post-processed token only (like the codec-safety hack).
        b[4].post_tokens[1] = if b[4].post_tokens[1] == 0 { 1 } else { 0 };
    });
    let at = Step {
        frame: 4,
        codebook: 1,
    };
    assert_eq!(d.divergence.point, Some(at));
    assert_eq!(d.divergence.stage, Some(Stage::PostProcessing));
    assert_eq!(d.divergence.first_post_only_mismatch, Some(at));
    assert!(d.divergence.first_token_mismatch.is_none());
    assert_eq!(d.overall.token_agreement, 1.0);
}

#[test]
fn different_lengths_use_common_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = Spec::default();
    let recs = frames(&spec);
    let a = write(&tmp.path().join("a"), &spec, &recs);
    let b = write(&tmp.path().join("b"), &spec, &recs[..4]);
    let d = compare(
        &Run::open(&a).unwrap(),
        &Run::open(&b).unwrap(),
        &DiffOptions::default(),
    )
    .unwrap();
    assert_eq!(d.frames_compared, 4);
    assert!(d.lengths_differ);
    assert_eq!(d.verdict.kind, "identical");
    assert!(d.verdict.line.contains("A 6, B 4"), "{}", d.verdict.line);
    assert!(d.warnings.iter().any(|w| w.contains("different lengths")));
}

#[test]
fn incomparable_runs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = Spec::default();
    let a = write(&tmp.path().join("a"), &spec, &frames(&spec));
    let s2 = Spec {
        vocab: 17,
        ..Spec::default()
    };
    let b = write(&tmp.path().join("b"), &s2, &frames(&s2));
    let e = compare(
        &Run::open(&a).unwrap(),
        &Run::open(&b).unwrap(),
        &DiffOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("vocab 16") && e.contains("vocab 17"), "{e}");
    let s3 = Spec {
        codebooks: 4,
        ..Spec::default()
    };
    let c = write(&tmp.path().join("c"), &s3, &frames(&s3));
    let e = compare(
        &Run::open(&a).unwrap(),
        &Run::open(&c).unwrap(),
        &DiffOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("8 codebooks") && e.contains("has 4"), "{e}");
}

/// Independent f64 computations of KL/JS/Jaccard on two different runs.
#[test]
fn metrics_match_independent_computation() {
    let spec = Spec {
        mode: "teacher",
        ..Spec::default()
    };
    let spec_b = Spec {
        seed: 99,
        ..spec.clone()
    };
    let tmp = tempfile::tempdir().unwrap();
    let ra = frames(&spec);
    let rb = frames(&spec_b);
    let a = write(&tmp.path().join("a"), &spec, &ra);
    let b = write(&tmp.path().join("b"), &spec_b, &rb);
    let d = compare(
        &Run::open(&a).unwrap(),
        &Run::open(&b).unwrap(),
        &DiffOptions::default(),
    )
    .unwrap();
    // Per-step KL of the temperature-1 softmax, mean over all 48 steps.
    let mut kls = Vec::new();
    let mut pkls = Vec::new();
    for (x, y) in ra.iter().zip(&rb) {
        let (lx, ly) = (x.logits.as_ref().unwrap(), y.logits.as_ref().unwrap());
        for c in 0..8 {
            let p = softmax(&lx[c * 16..(c + 1) * 16]);
            let q = softmax(&ly[c * 16..(c + 1) * 16]);
            kls.push(p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f64>());
            let (px, py) = (
                &x.probs.as_ref().unwrap()[c * 16..(c + 1) * 16],
                &y.probs.as_ref().unwrap()[c * 16..(c + 1) * 16],
            );
            pkls.push(
                px.iter()
                    .zip(py)
                    .map(|(&p, &q)| p as f64 * (p as f64 / q as f64).ln())
                    .sum::<f64>(),
            );
        }
    }
    let mean = kls.iter().sum::<f64>() / kls.len() as f64;
    let kl = d.overall.logits.as_ref().unwrap().kl.as_ref().unwrap();
    assert!(
        (kl.mean - mean).abs() < 1e-5 * mean,
        "{} vs {mean}",
        kl.mean
    );
    let maxk = kls.iter().cloned().fold(0.0, f64::max);
    assert!((kl.max - maxk).abs() < 1e-5 * maxk);
    let pmean = pkls.iter().sum::<f64>() / pkls.len() as f64;
    let pk = d.overall.probs.as_ref().unwrap().kl.as_ref().unwrap();
    assert!(
        (pk.mean - pmean).abs() < 1e-4 * pmean,
        "{} vs {pmean}",
        pk.mean
    );
    // Token histograms: Jaccard, JS, smoothed KL, histogram intersection.
    let ta: Vec<i32> = ra.iter().flat_map(|r| r.tokens.clone()).collect();
    let tb: Vec<i32> = rb.iter().flat_map(|r| r.tokens.clone()).collect();
    let count = |t: &[i32]| {
        let mut h: HashMap<i32, f64> = HashMap::new();
        for &x in t {
            *h.entry(x).or_default() += 1.0;
        }
        h
    };
    let (ha, hb) = (count(&ta), count(&tb));
    let mut union: Vec<i32> = ha.keys().chain(hb.keys()).copied().collect();
    union.sort();
    union.dedup();
    let inter = ha.keys().filter(|k| hb.contains_key(k)).count() as f64;
    let jacc = inter / union.len() as f64;
    let (na, nb, k) = (ta.len() as f64, tb.len() as f64, union.len() as f64);
    let (mut js, mut klh, mut hi) = (0.0, 0.0, 0.0);
    for t in &union {
        let p = ha.get(t).copied().unwrap_or(0.0) / na;
        let q = hb.get(t).copied().unwrap_or(0.0) / nb;
        let m = 0.5 * (p + q);
        if p > 0.0 {
            js += 0.5 * p * (p / m).ln();
        }
        if q > 0.0 {
            js += 0.5 * q * (q / m).ln();
        }
        let ps = (ha.get(t).copied().unwrap_or(0.0) + 0.5) / (na + 0.5 * k);
        let qs = (hb.get(t).copied().unwrap_or(0.0) + 0.5) / (nb + 0.5 * k);
        klh += ps * (ps / qs).ln();
        hi += p.min(q);
    }
    let t = &d.overall.tokens;
    assert!((t.jaccard - jacc).abs() < 1e-12, "{} vs {jacc}", t.jaccard);
    assert!((t.js_hist - js).abs() < 1e-12);
    assert!((t.kl_hist - klh).abs() < 1e-12);
    assert!((t.hist_intersection - hi).abs() < 1e-12);
    assert!(t.jaccard < 1.0 && t.js_hist > 0.0);
    let agree = ta.iter().zip(&tb).filter(|(x, y)| x == y).count() as f64 / 48.0;
    assert!((d.overall.token_agreement - agree).abs() < 1e-12);
    assert_eq!(d.divergence.stage, Some(Stage::Model));
}

#[test]
fn top_n_storage_is_compared() {
    let spec = Spec {
        logits: Storage::Top(4),
        probs: Storage::Top(4),
        ..Spec::default()
    };
    let d = diff_of(&spec, |_| {});
    assert_eq!(d.verdict.kind, "identical");
    assert!(d.overall.logits.as_ref().unwrap().top_n_approximation);
    let d = diff_of(&spec, |b| {
        // Raise a token into the top 4 of frame 0 codebook 0: index sets differ.
        let l = b[0].logits.as_mut().unwrap();
        let min = (0..16).min_by(|&i, &j| l[i].total_cmp(&l[j])).unwrap();
        l[min] = 100.0;
    });
    assert_eq!(
        d.divergence.point,
        Some(Step {
            frame: 0,
            codebook: 0
        })
    );
    assert_eq!(d.divergence.stage, Some(Stage::Model));
}
