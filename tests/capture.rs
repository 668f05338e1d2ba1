//! Samplers on identical seeds and the capture layer, on the tiny fixture (issue 3).
#![cfg(all(feature = "mlx", feature = "torch"))]
use csm_parity::backend::{self, Backend, BackendKind};
use csm_parity::capture::{Run, Storage};
use csm_parity::commands::capture::{capture, CaptureOptions, Mode};
use csm_parity::model::{fixture, CsmModel, DType, Model};
use csm_parity::sampling::{reference_sample, NoiseMode, PostProcess, SamplerSpec, SharedNoise};
use std::path::Path;

fn tiny() -> Model {
    Model::Csm(CsmModel::load(&fixture::ensure_default_fixture().unwrap()).unwrap())
}

fn opts(
    out: &Path,
    text: &str,
    seed: u64,
    temp: f64,
    top_k: usize,
    noise: NoiseMode,
) -> CaptureOptions {
    CaptureOptions {
        text: text.into(),
        speaker: 0,
        chat: false,
        backends: vec![BackendKind::Torch, BackendKind::Mlx],
        reference: BackendKind::Torch,
        sampler: SamplerSpec::new(temp, top_k, noise, seed).unwrap(),
        max_frames: 6,
        mode: Mode::Independent,
        post: PostProcess::None,
        dtype: DType::F32,
        logits: Storage::None,
        probs: Storage::None,
        out: out.to_path_buf(),
        progress: false,
        inject: None,
        force: false,
        audio: Default::default(),
        codec_fault: None,
    }
}

#[test]
fn shared_noise_gives_identical_tokens_on_the_whole_grid() {
    let model = tiny();
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for text in ["Hello there.", "the cat sat on the mat", "Parity, please!"] {
        for seed in [1, 7, 2024] {
            for temp in [0.6, 0.9] {
                for top_k in [5, 50] {
                    let out = tmp.path().join(format!("run{n}"));
                    n += 1;
                    let s = capture(
                        &model,
                        &opts(&out, text, seed, temp, top_k, NoiseMode::Shared),
                    )
                    .unwrap();
                    assert_eq!(
                        s.tokens_equal,
                        Some(true),
                        "{text:?} seed {seed} temp {temp} top-k {top_k}: {}",
                        s.render()
                    );
                    let a = Run::open(&out.join("torch")).unwrap();
                    let b = Run::open(&out.join("mlx")).unwrap();
                    assert_eq!(a.tokens(), b.tokens());
                    assert!(a.frames() > 0);
                }
            }
        }
    }
    assert_eq!(n, 36);
}

#[test]
fn native_noise_differs_between_libraries() {
    let model = tiny();
    let tmp = tempfile::tempdir().unwrap();
    let s = capture(
        &model,
        &opts(tmp.path(), "Hello there.", 3, 0.9, 50, NoiseMode::Native),
    )
    .unwrap();
    assert_eq!(s.tokens_equal, Some(false), "{}", s.render());
    // …but each library's own RNG is repeatable for the same seed.
    let again = tmp.path().join("again");
    capture(
        &model,
        &opts(&again, "Hello there.", 3, 0.9, 50, NoiseMode::Native),
    )
    .unwrap();
    for b in ["torch", "mlx"] {
        assert_eq!(
            Run::open(&tmp.path().join(b)).unwrap().tokens(),
            Run::open(&again.join(b)).unwrap().tokens(),
            "{b}"
        );
    }
}

#[test]
fn teacher_mode_feeds_the_reference_tokens_and_records_every_step() {
    let model = tiny();
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path(), "teacher", 5, 0.9, 50, NoiseMode::Native);
    o.mode = Mode::Teacher;
    o.logits = Storage::F32;
    o.probs = Storage::F16;
    let s = capture(&model, &o).unwrap();
    let (a, b) = (
        Run::open(&tmp.path().join("torch")).unwrap(),
        Run::open(&tmp.path().join("mlx")).unwrap(),
    );
    assert_eq!(a.frames(), b.frames());
    assert_eq!(b.manifest().sampler.mode, "teacher");
    assert!(b.logits().is_some() && b.probs().is_some());
    // Tokens differ (native noise), yet the logits are those of the same token history.
    assert_eq!(s.tokens_equal, Some(false));
    let (mut fa, mut fb) = (Default::default(), Default::default());
    let (la, lb) = (a.logits().unwrap(), b.logits().unwrap());
    for f in 0..a.frames() {
        la.read_frame(f, &mut fa).unwrap();
        lb.read_frame(f, &mut fb).unwrap();
        let d = csm_parity::generate::max_abs_diff(fa.values(), fb.values());
        assert!(d < 1e-4, "frame {f}: {d}");
    }
}

#[test]
fn hybrid_mode_with_shared_noise_matches_the_reference() {
    let model = tiny();
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path(), "hybrid", 11, 0.8, 20, NoiseMode::Shared);
    o.mode = Mode::Hybrid;
    let s = capture(&model, &o).unwrap();
    assert_eq!(s.tokens_equal, Some(true), "{}", s.render());
}

#[test]
fn post_processing_is_recorded_separately() {
    let model = tiny();
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path(), "post", 1, 0.9, 0, NoiseMode::Shared);
    o.post = PostProcess::RemapLow { lo: 0, hi: 1500 };
    capture(&model, &o).unwrap();
    let (a, b) = (
        Run::open(&tmp.path().join("torch")).unwrap(),
        Run::open(&tmp.path().join("mlx")).unwrap(),
    );
    assert_eq!(
        a.tokens(),
        b.tokens(),
        "the model is fed the sampled tokens"
    );
    assert_eq!(
        a.tokens(),
        a.post_tokens(),
        "the reference has no post-processing"
    );
    let expect: Vec<i32> = b
        .tokens()
        .iter()
        .map(|&t| if t <= 1500 { 0 } else { t })
        .collect();
    assert_eq!(b.post_tokens(), &expect[..]);
    assert_ne!(b.tokens(), b.post_tokens());
}

#[test]
fn numpy_reads_every_array_with_the_manifest_shapes() {
    let model = tiny();
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path(), "numpy", 2, 0.9, 50, NoiseMode::Shared);
    o.logits = Storage::F16;
    o.probs = Storage::Top(8);
    capture(&model, &o).unwrap();
    let pypath = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/py");
    let script = r#"
import json, sys, pathlib, numpy as np
d = pathlib.Path(sys.argv[1]); m = json.loads((d / "manifest.json").read_text())
F, C, V = m["frames"], m["codebooks"], m["vocab"]
want = {"tokens.npy": ((F, C), np.int32), "post_tokens.npy": ((F, C), np.int32), "step_us.npy": ((F,), np.float64),
        "logits.npy": ((F, C, V), np.float16), "probs_top_values.npy": ((F, C, 8), np.float32),
        "probs_top_indices.npy": ((F, C, 8), np.int32)}
for name, (shape, dtype) in want.items():
    a = np.load(d / name)
    assert a.shape == shape and a.dtype == dtype, (name, a.shape, a.dtype, shape, dtype)
assert np.all(np.diff(np.load(d / "probs_top_values.npy"), axis=-1) <= 0)
print("ok", F, C, V)
"#;
    for b in ["torch", "mlx"] {
        let out = std::process::Command::new("python3")
            .env("PYTHONPATH", &pypath)
            .args(["-c", script])
            .arg(tmp.path().join(b))
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{b}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok 6 8 2051"));
    }
}

#[test]
fn a_killed_capture_leaves_nothing_a_reader_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("killed");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_csm-parity"))
        .args([
            "capture",
            "--text",
            "a long one",
            "--max-frames",
            "1500",
            "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = out.join("torch.partial");
    let start = std::time::Instant::now();
    while !partial.join("tokens.npy").exists() {
        assert!(start.elapsed().as_secs() < 60, "capture never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for b in ["torch", "mlx"] {
        assert!(
            !out.join(b).exists(),
            "{b}: a complete-looking run directory exists"
        );
        let p = out.join(format!("{b}.partial"));
        if p.exists() {
            let err = format!("{:#}", Run::open(&p).unwrap_err());
            assert!(err.contains("partial") || err.contains("complete"), "{err}");
        }
    }
}

/// Both libraries' on-device samplers against hand-computed cases.
fn samplers() -> Vec<Box<dyn Backend>> {
    let model = tiny();
    [BackendKind::Torch, BackendKind::Mlx]
        .into_iter()
        .map(|k| backend::load(k, &model, DType::F32).unwrap())
        .collect()
}

const V: usize = 2051;

fn row(pairs: &[(usize, f32)], rest: f32) -> Vec<f32> {
    let mut r = vec![rest; V];
    for &(i, x) in pairs {
        r[i] = x;
    }
    r
}

#[test]
fn sampler_keeps_all_ties_at_the_kth_value() {
    // Values: 5.0 at 10, 4.0 at 20, 30, 40 (three-way tie at k = 2), the rest 0.
    let logits = row(&[(10, 5.0), (20, 4.0), (30, 4.0), (40, 4.0)], 0.0);
    let spec = SamplerSpec::new(1.0, 2, NoiseMode::Shared, 0).unwrap();
    let u = vec![0.5f32; V];
    let e5 = 1.0f64;
    let e4 = (-1.0f64).exp();
    let z = e5 + 3.0 * e4;
    for mut b in samplers() {
        let (tok, probs) = b.sample_logits(&logits, &spec, Some(&u)).unwrap();
        assert_eq!(tok, 10, "equal noise: the most likely token wins");
        assert!((probs[10] as f64 - e5 / z).abs() < 1e-6, "{}", probs[10]);
        for i in [20, 30, 40] {
            assert!(
                (probs[i] as f64 - e4 / z).abs() < 1e-6,
                "tie at the k-th value kept: {i} {}",
                probs[i]
            );
        }
        assert_eq!(probs.iter().filter(|&&p| p > 0.0).count(), 4);
    }
}

#[test]
fn sampler_temperature_zero_is_argmax_and_topk_at_or_above_vocab_filters_nothing() {
    let logits: Vec<f32> = (0..V).map(|i| ((i * 37) % 101) as f32 * 0.01).collect();
    let best = logits
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |a, (i, &x)| if x > a.1 { (i, x) } else { a })
        .0 as i32;
    let greedy = SamplerSpec::new(0.0, 50, NoiseMode::Shared, 0).unwrap();
    let all = SamplerSpec::new(1.0, V, NoiseMode::Shared, 0).unwrap();
    let huge = SamplerSpec::new(1.0, 10 * V, NoiseMode::Shared, 0).unwrap();
    let u = SharedNoise::frame_uniforms(9, 0, 1, V);
    for mut b in samplers() {
        let (t, p) = b.sample_logits(&logits, &greedy, None).unwrap();
        assert_eq!(t, best);
        assert_eq!(p[best as usize], 1.0);
        let (t1, p1) = b.sample_logits(&logits, &all, Some(&u)).unwrap();
        let (t2, p2) = b.sample_logits(&logits, &huge, Some(&u)).unwrap();
        assert_eq!(t1, t2);
        assert!(p1.iter().all(|&x| x > 0.0), "no entry filtered");
        assert_eq!(p1, p2);
        let (tr, pr) = reference_sample(&logits, &all, &u);
        assert_eq!(t1, tr, "matches the host reference sampler");
        assert!(csm_parity::generate::max_abs_diff(&p1, &pr) < 1e-6);
    }
}

#[test]
fn sampler_handles_a_row_with_minus_infinity() {
    let mut logits = row(&[(3, 2.0), (4, 1.0)], f32::NEG_INFINITY);
    logits[5] = 0.5;
    let spec = SamplerSpec::new(0.7, 0, NoiseMode::Shared, 0).unwrap();
    for mut b in samplers() {
        for f in 0..20 {
            let u = SharedNoise::frame_uniforms(4, f, 1, V);
            let (t, p) = b.sample_logits(&logits, &spec, Some(&u)).unwrap();
            assert!([3, 4, 5].contains(&t), "sampled a -inf entry: {t}");
            assert!(p.iter().all(|x| x.is_finite()));
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}

#[test]
fn sampler_is_identical_for_the_same_seed_frame_and_codebook() {
    let logits: Vec<f32> = (0..V).map(|i| ((i * 7919) % 997) as f32 / 200.0).collect();
    let spec = SamplerSpec::new(0.9, 50, NoiseMode::Shared, 0).unwrap();
    let mut bs = samplers();
    let mut picks = vec![];
    for (f, c) in [(0u64, 0u64), (0, 1), (1, 0), (0, 0)] {
        let mut u = vec![0f32; V];
        SharedNoise::uniforms_into(77, f, c, &mut u);
        let toks: Vec<i32> = bs
            .iter_mut()
            .map(|b| b.sample_logits(&logits, &spec, Some(&u)).unwrap().0)
            .collect();
        assert_eq!(toks[0], toks[1], "torch and mlx agree on ({f}, {c})");
        picks.push(toks[0]);
    }
    assert_eq!(picks[0], picks[3], "same key, same draw");
}
