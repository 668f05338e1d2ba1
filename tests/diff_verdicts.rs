//! Verdicts that never contradict themselves (issue 13): known-answer runs for each analyzer
//! fix, and the peer metrics (Δp, KLD percentiles, top-N membership, cosine, largest error).
mod common;

use common::*;
use csm_parity::analysis::divergence::{Stage, Step};
use csm_parity::analysis::{compare, Diff, DiffOptions};
use csm_parity::capture::{FrameRecord, Manifest, Run, RunWriter, Storage, Timings};
use std::path::{Path, PathBuf};

fn diff_of(spec: &Spec, edit: impl FnOnce(&mut Vec<FrameRecord>)) -> Diff {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = pair(tmp.path(), spec, edit);
    let (a, b) = (Run::open(&a).unwrap(), Run::open(&b).unwrap());
    compare(&a, &b, &DiffOptions::default()).unwrap()
}

/// Writes a run with its own storage and a manifest edit.
fn write_with(
    dir: &Path,
    spec: &Spec,
    recs: &[FrameRecord],
    logits: Storage,
    probs: Storage,
    edit: impl FnOnce(&mut Manifest),
) -> PathBuf {
    let mut m = manifest(spec);
    edit(&mut m);
    let mut w = RunWriter::create(dir, m, spec.codebooks, spec.vocab, logits, probs).unwrap();
    for r in recs {
        let mut r = r.clone();
        if logits == Storage::None {
            r.logits = None;
        }
        if probs == Storage::None {
            r.probs = None;
        }
        w.push(&r).unwrap();
    }
    w.finish(
        "max_frames",
        Timings {
            load_ms: 1.0,
            prefill_ms: 2.0,
            total_ms: 3.0,
            mean_frame_ms: 1.0,
            step_positions: vec![],
        },
    )
    .unwrap()
}

struct Side<'a> {
    recs: &'a [FrameRecord],
    logits: Storage,
    probs: Storage,
    edit: &'a dyn Fn(&mut Manifest),
}

fn diff_sides(spec: &Spec, a: Side, b: Side) -> Diff {
    let tmp = tempfile::tempdir().unwrap();
    let pa = write_with(
        &tmp.path().join("a"),
        spec,
        a.recs,
        a.logits,
        a.probs,
        |m| (a.edit)(m),
    );
    let sb = Spec {
        backend: "mlx",
        ..spec.clone()
    };
    let pb = write_with(&tmp.path().join("b"), &sb, b.recs, b.logits, b.probs, |m| {
        (b.edit)(m)
    });
    compare(
        &Run::open(&pa).unwrap(),
        &Run::open(&pb).unwrap(),
        &DiffOptions::default(),
    )
    .unwrap()
}

fn nothing(_: &mut Manifest) {}

fn side(recs: &[FrameRecord]) -> Side<'_> {
    Side {
        recs,
        logits: Storage::F32,
        probs: Storage::F32,
        edit: &nothing,
    }
}

fn at(frame: usize, codebook: usize) -> Option<Step> {
    Some(Step { frame, codebook })
}

/// f32 probability rows sum to 1 ± a few ulps; KL must be computed on the renormalized rows.
/// B = A scaled by (1 − 3e-7): the true KL is ~0, the unnormalized sum gives ~3e-7.
#[test]
fn kl_of_probs_is_renormalized() {
    let d = diff_of(&Spec::default(), |b| {
        for r in b.iter_mut() {
            for p in r.probs.as_mut().unwrap().iter_mut() {
                *p *= 1.0 - 3e-7;
            }
        }
    });
    let kl = d.overall.probs.as_ref().unwrap().kl.as_ref().unwrap();
    assert!(kl.max < 1e-12, "KL(probs) {kl:?}");
    assert_eq!(kl.n, 48);
}

/// The relative error divides by max(|a|, atol/rtol), not by a near-zero logit.
#[test]
fn relative_error_has_a_floor() {
    let spec = Spec::default();
    let mut a = frames(&spec);
    a[1].logits.as_mut().unwrap()[3] = 1e-7;
    let mut b = a.clone();
    b[1].logits.as_mut().unwrap()[3] = 1e-7 + 2e-5;
    let d = diff_sides(&spec, side(&a), side(&b));
    let l = d.overall.logits.as_ref().unwrap();
    // |Δ| = 2e-5, |a| = 1e-7: unfloored 200, floored 2e-5 / (1e-3/1e-3).
    assert!(l.max_rel < 1e-4, "max_rel {}", l.max_rel);
    assert!(l.max_rel > 1e-5, "max_rel {}", l.max_rel);
}

/// The model is fed the sampled tokens: a post-processing difference does not end the
/// comparable steps.
#[test]
fn post_processing_mismatch_keeps_every_step_comparable() {
    let d = diff_of(&Spec::default(), |b| {
        b[1].post_tokens[0] = (b[1].post_tokens[0] + 1) % 16;
    });
    assert_eq!(d.divergence.stage, Some(Stage::PostProcessing));
    assert_eq!(d.divergence.point, at(1, 0));
    assert_eq!(d.steps_comparable, 48);
    assert_eq!(d.post_changed, [0, 1]);
}

/// Index of the smallest probability of a row.
fn min_prob(r: &FrameRecord, c: usize) -> usize {
    let p = &r.probs.as_ref().unwrap()[c * 16..(c + 1) * 16];
    (0..16).min_by(|&i, &j| p[i].total_cmp(&p[j])).unwrap()
}

/// A token kept by A's sampler (p tiny, within probs-atol) and dropped by B's: a sampler event,
/// and KL(probs) still covers that step (over the shared support).
#[test]
fn support_mismatch_is_a_sampler_event() {
    let a = frames(&Spec::default());
    let k = min_prob(&a[1], 4);
    let p_small = a[1].probs.as_ref().unwrap()[4 * 16 + k];
    assert!(p_small > 0.0 && p_small < 1e-4, "{p_small}");
    let d = diff_of(&Spec::default(), |b| {
        b[1].probs.as_mut().unwrap()[4 * 16 + k] = 0.0;
    });
    assert_eq!(d.divergence.first_support_mismatch, at(1, 4));
    assert_eq!(d.divergence.point, at(1, 4));
    assert_eq!(d.divergence.stage, Some(Stage::Sampler));
    let p = d.overall.probs.as_ref().unwrap();
    assert_eq!(p.support_mismatch_steps, 1);
    assert_eq!(p.kl.as_ref().unwrap().n, 48);
    assert_eq!(p.kl_support_mismatch.as_ref().unwrap().n, 1);
    let m = p.excluded_mass.as_ref().unwrap().max;
    assert!((m - p_small as f64).abs() < 1e-9, "{m} vs {p_small}");
}

/// Dense logits against the same values stored as top-4: identical on what both stored.
#[test]
fn dense_against_top_n_with_equal_values_is_identical() {
    let spec = Spec::default();
    let a = frames(&spec);
    let d = diff_sides(
        &spec,
        side(&a),
        Side {
            logits: Storage::Top(4),
            probs: Storage::Top(4),
            ..side(&a)
        },
    );
    assert_eq!(d.verdict.kind, "identical", "{}", d.verdict.line);
    assert!(d.verdict.line.contains("both runs stored"));
    assert!(d.not_compared.iter().any(|n| n.contains("logits")));
}

/// A candidate that recorded no logits/probs is never IDENTICAL.
#[test]
fn missing_logits_are_never_identical() {
    let spec = Spec::default();
    let a = frames(&spec);
    let d = diff_sides(
        &spec,
        side(&a),
        Side {
            logits: Storage::None,
            probs: Storage::None,
            ..side(&a)
        },
    );
    assert_eq!(d.verdict.kind, "tokens-identical", "{}", d.verdict.line);
    assert!(
        d.verdict.line.contains("B recorded none"),
        "{}",
        d.verdict.line
    );
}

/// top:N logits, dense probs: a model bug in a logit outside the stored top-N shows only in the
/// probabilities. The stored logits cannot clear the model, so the stage is model.
#[test]
fn top_n_logits_do_not_turn_a_model_bug_into_a_sampler_bug() {
    let spec = Spec::default();
    let a = frames(&spec);
    let mut b = a.clone();
    {
        let l = b[0].logits.as_mut().unwrap();
        let row = &mut l[0..16];
        let k = (0..16).min_by(|&i, &j| row[i].total_cmp(&row[j])).unwrap();
        row[k] += 3.0;
        let p = softmax(row);
        for (v, pv) in p.iter().enumerate() {
            b[0].probs.as_mut().unwrap()[v] = *pv as f32;
        }
    }
    let d = diff_sides(
        &spec,
        Side {
            logits: Storage::Top(4),
            ..side(&a)
        },
        Side {
            logits: Storage::Top(4),
            ..side(&b)
        },
    );
    assert_eq!(d.divergence.point, at(0, 0));
    assert_eq!(d.divergence.first_logits_breach, None);
    assert_eq!(d.divergence.stage, Some(Stage::Model), "{:?}", d.divergence);
}

/// bf16 runs get bf16 tolerances: 0.1 of logit noise is close, not DIVERGED at frame 0.
#[test]
fn bf16_runs_use_bf16_tolerances() {
    let spec = Spec::default();
    let a = frames(&spec);
    let mut b = a.clone();
    for r in b.iter_mut() {
        for (i, x) in r.logits.as_mut().unwrap().iter_mut().enumerate() {
            *x += if i % 2 == 0 { 0.1 } else { -0.1 };
        }
    }
    let bf16 = |m: &mut Manifest| m.backend.dtype = "bf16".into();
    let d = diff_sides(
        &spec,
        Side {
            edit: &bf16,
            probs: Storage::None,
            ..side(&a)
        },
        Side {
            edit: &bf16,
            probs: Storage::None,
            ..side(&b)
        },
    );
    assert_eq!(d.tolerances.dtype, "bf16");
    assert_eq!(d.tolerances.atol, 0.5);
    assert_eq!(d.verdict.kind, "numerically-close", "{}", d.verdict.line);
    // The same pair in f32 diverges at frame 0.
    let d = diff_sides(
        &spec,
        Side {
            probs: Storage::None,
            ..side(&a)
        },
        Side {
            probs: Storage::None,
            ..side(&b)
        },
    );
    assert_eq!(d.verdict.point, at(0, 0));
}

/// Different prompts: stage input, first in the verdict.
#[test]
fn prompt_mismatch_is_stage_input() {
    let spec = Spec::default();
    let a = frames(&spec);
    let other = |m: &mut Manifest| m.prompt.token_ids = vec![1, 2, 4];
    let same = |m: &mut Manifest| m.prompt.token_ids = vec![1, 2, 3];
    let d = diff_sides(
        &spec,
        Side {
            edit: &same,
            ..side(&a)
        },
        Side {
            edit: &other,
            ..side(&a)
        },
    );
    assert_eq!(d.verdict.stage, Some(Stage::Input));
    assert_eq!(d.verdict.kind, "diverged");
    assert!(d.verdict.line.contains("stage input"), "{}", d.verdict.line);
    assert_eq!(d.divergence.input_mismatch, Some([2, 3, 3]));
}

/// No warning for f32-vs-f64 renderings of one temperature, nor for top_k of greedy runs.
#[test]
fn no_spurious_parameter_warnings() {
    let spec = Spec::default();
    let a = frames(&spec);
    let t32 = |m: &mut Manifest| m.sampler.temperature = 0.8f32 as f64;
    let t64 = |m: &mut Manifest| m.sampler.temperature = 0.8;
    let d = diff_sides(
        &spec,
        Side {
            edit: &t32,
            ..side(&a)
        },
        Side {
            edit: &t64,
            ..side(&a)
        },
    );
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let g1 = |m: &mut Manifest| {
        m.sampler.noise = "greedy".into();
        m.sampler.temperature = 0.0;
        m.sampler.top_k = 50;
    };
    let g2 = |m: &mut Manifest| {
        m.sampler.noise = "greedy".into();
        m.sampler.temperature = 0.0;
        m.sampler.top_k = 100;
    };
    let d = diff_sides(
        &spec,
        Side {
            edit: &g1,
            ..side(&a)
        },
        Side {
            edit: &g2,
            ..side(&a)
        },
    );
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

/// Hybrid + native noise: the explanation says why the tokens differ.
#[test]
fn hybrid_native_noise_is_explained() {
    let spec = Spec {
        mode: "hybrid",
        noise: "native",
        ..Spec::default()
    };
    let d = diff_of(&spec, |b| {
        b[0].tokens[2] = (b[0].tokens[2] + 1) % 16;
        b[0].post_tokens[2] = b[0].tokens[2];
    });
    assert_eq!(d.divergence.stage, Some(Stage::Noise));
    assert!(d
        .divergence
        .explanation
        .as_deref()
        .unwrap()
        .contains("hybrid"));
}

/// Issue 12: NaN logits are recorded, not missing; the summaries say what they left out.
#[test]
fn nonfinite_steps_are_counted_per_run() {
    let d = diff_of(&Spec::default(), |b| {
        for r in b.iter_mut() {
            for x in r.logits.as_mut().unwrap().iter_mut() {
                *x = f32::NAN;
            }
        }
    });
    // Every step breaches at the first one (NaN never passes): one comparable step... the
    // tokens agree, so all 48 are comparable and all non-finite.
    assert_eq!(d.nonfinite.b.logits_steps, 48);
    assert_eq!(d.nonfinite.a.logits_steps, 0);
    assert!(d.overall.logits_recorded && d.overall.logits.is_none());
    assert_eq!(d.verdict.stage, Some(Stage::Model));
    let t = csm_parity::report::terminal::render(&d);
    assert!(!t.contains("not recorded in both runs"), "{t}");
    assert!(t.contains("non-finite"), "{t}");
    let d = diff_of(&Spec::default(), |b| {
        b[2].logits.as_mut().unwrap()[5] = f32::INFINITY;
    });
    let l = d.overall.logits.as_ref().unwrap();
    assert_eq!(l.nonfinite_steps, 1);
    let t = csm_parity::report::terminal::render(&d);
    assert!(t.contains("1 non-finite steps left out"), "{t}");
}

/// Δp of the sampled token, KLD low percentiles with a standard error, cosine similarity and
/// the index of the largest error, against independent computations.
#[test]
fn peer_metrics_known_values() {
    let spec = Spec {
        mode: "teacher",
        ..Spec::default()
    };
    let ra = frames(&spec);
    let rb = frames_with(&spec, |f, c, v, x| {
        if f == 2 && c == 5 && v == 9 {
            x + 0.5
        } else {
            x + ((f * 7 + c * 3 + v) % 5) as f32 * 1e-3
        }
    });
    let d = diff_sides(&spec, side(&ra), side(&rb));
    let e = d.largest_logit_error.as_ref().unwrap();
    assert_eq!(
        (e.step, e.index),
        (
            Step {
                frame: 2,
                codebook: 5
            },
            9
        )
    );
    // Δp = p_B(t_A) − p_A(t_A), and cosine, recomputed.
    let (mut dps, mut coss) = (Vec::new(), Vec::new());
    for (x, y) in ra.iter().zip(&rb) {
        for c in 0..8 {
            let t = x.tokens[c] as usize;
            let (px, py) = (x.probs.as_ref().unwrap(), y.probs.as_ref().unwrap());
            dps.push(py[c * 16 + t] as f64 - px[c * 16 + t] as f64);
            let (lx, ly) = (
                &x.logits.as_ref().unwrap()[c * 16..(c + 1) * 16],
                &y.logits.as_ref().unwrap()[c * 16..(c + 1) * 16],
            );
            let dot: f64 = lx.iter().zip(ly).map(|(a, b)| *a as f64 * *b as f64).sum();
            let na: f64 = lx.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = ly.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            coss.push(dot / (na * nb));
        }
    }
    let n = dps.len() as f64;
    let mean = dps.iter().sum::<f64>() / n;
    let rms = (dps.iter().map(|x| x * x).sum::<f64>() / n).sqrt();
    let dp = d
        .overall
        .probs
        .as_ref()
        .unwrap()
        .dp_sampled
        .as_ref()
        .unwrap();
    assert!((dp.mean - mean).abs() < 1e-9, "{} vs {mean}", dp.mean);
    assert!((dp.rms - rms).abs() < 1e-9);
    let cmin = coss.iter().cloned().fold(f64::INFINITY, f64::min);
    let cos = d.overall.logits.as_ref().unwrap().cosine.as_ref().unwrap();
    assert!((cos.min - cmin).abs() < 1e-6, "{} vs {cmin}", cos.min);
    // KL low percentiles and the standard error of the mean.
    let kl = d.overall.logits.as_ref().unwrap().kl.as_ref().unwrap();
    assert!(kl.p1 <= kl.p5 && kl.p5 <= kl.p10 && kl.p10 <= kl.median);
    assert!(kl.mean_se > 0.0 && kl.mean_se < kl.mean);
}

/// At the first token mismatch of a near-tie, each side's token is in the other's top-N: a
/// warning, and the divergence table lists both sides' probabilities.
#[test]
fn near_tie_membership_and_top_table() {
    let spec = Spec::default();
    let d = diff_of(&spec, |b| {
        // B samples A's second most likely token at frame 3 codebook 7.
        let p = &b[3].probs.as_ref().unwrap()[7 * 16..8 * 16];
        let mut idx: Vec<usize> = (0..16).collect();
        idx.sort_by(|&i, &j| p[j].total_cmp(&p[i]));
        let t = b[3].tokens[7] as usize;
        let other = if idx[0] == t { idx[1] } else { idx[0] };
        b[3].tokens[7] = other as i32;
        b[3].post_tokens[7] = other as i32;
    });
    let m = d.first_mismatch_membership.as_ref().unwrap();
    assert_eq!(
        m.step,
        Step {
            frame: 3,
            codebook: 7
        }
    );
    assert!(m.near_tie, "{m:?}");
    assert!(d.warnings.iter().any(|w| w.contains("near-tie")));
    let t = d.divergence_top.as_ref().unwrap();
    assert_eq!(
        t.step,
        Step {
            frame: 3,
            codebook: 7
        }
    );
    assert_eq!(t.rows[0].rank_a, Some(1));
    assert!(t.rows.iter().all(|r| r.p_a == r.p_b));
}
