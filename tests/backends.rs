//! Both backends on the tiny fixture and on the transformers conformance case.
#![cfg(all(feature = "mlx", feature = "torch"))]
use csm_parity::backend::BackendKind;
use csm_parity::commands::conform::conform;
use csm_parity::commands::verify::{verify, VerifyOptions};
use csm_parity::model::{fixture, CsmModel, DType, Layout, Model};
use std::path::{Path, PathBuf};

fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/csm-tiny-transformers")
}

fn tiny() -> Model {
    Model::Csm(CsmModel::load(&fixture::ensure_default_fixture().unwrap()).unwrap())
}

fn opts(frames: usize, text: &str) -> VerifyOptions {
    VerifyOptions {
        frames,
        dtype: DType::F32,
        text: text.into(),
        speaker: 0,
        backends: vec![BackendKind::Torch, BackendKind::Mlx],
        atol: 1e-4,
        cache_atol: 1e-5,
        cache_rtol: 1e-6,
    }
}

#[test]
fn backends_agree_within_1e4_for_16_frames_and_greedy_tokens_match() {
    let model = tiny();
    for text in ["Hello from csm-parity.", "the quick brown fox"] {
        let r = verify(&model, &opts(16, text)).unwrap();
        assert_eq!(r.per_frame_max_abs_logit_diff.len(), 16);
        let max = r.max_abs_logit_diff.unwrap();
        assert!(max <= 1e-4, "max |mlx - torch| = {max}");
        assert_eq!(r.tokens_equal, Some(true), "{}", r.render());
        assert!(r.passed, "{}", r.render());
    }
}

#[test]
fn kv_cache_matches_full_recompute_in_each_backend() {
    let r = verify(&tiny(), &opts(16, "cache check")).unwrap();
    for name in ["mlx", "torch"] {
        let d = r.cache_parity_max_abs_diff[name];
        // f32 rounding floor for logits of magnitude ~25: ~1e-5; a cache bug gives O(1).
        assert!(d <= 3e-5, "{name}: cached vs recomputed {d}");
        assert!(r.cache_parity_ok[name], "{}", r.render());
    }
}

#[test]
fn reduced_precision_runs_in_both_backends() {
    let model = tiny();
    for dtype in [DType::BF16, DType::F16] {
        let mut o = opts(2, "low precision");
        o.dtype = dtype;
        o.atol = 1.0;
        let r = verify(&model, &o).unwrap();
        assert!(
            r.max_abs_logit_diff.unwrap() < 1.0,
            "{dtype:?}: {}",
            r.render()
        );
    }
}

#[test]
fn both_backends_conform_to_transformers_in_both_layouts() {
    let report = conform(
        &case_dir(),
        &[BackendKind::Torch, BackendKind::Mlx],
        None,
        1e-4,
    )
    .unwrap();
    assert_eq!(report.results.len(), 4, "2 backends × 2 layouts");
    for r in &report.results {
        assert!(
            r.max_abs_diff_c0 <= 1e-4 && r.max_abs_diff_depth <= 1e-4,
            "{}",
            report.render()
        );
        assert!(r.greedy_frames_equal, "{}", report.render());
        assert_eq!(r.layout, r.detected_layout);
    }
    assert!(report.conforms);
}

/// Copies the case with its configs edited so Llama-3 RoPE scaling is off.
fn case_without_rope_scaling() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = case_dir();
    for f in [
        "prompt_ids.npy",
        "frames.npy",
        "c0_logits.npy",
        "depth_logits.npy",
    ] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    for layout in ["original", "hf"] {
        std::fs::create_dir(tmp.path().join(layout)).unwrap();
        std::fs::copy(
            src.join(layout).join("model.safetensors"),
            tmp.path().join(layout).join("model.safetensors"),
        )
        .unwrap();
        let mut cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(src.join(layout).join("config.json")).unwrap(),
        )
        .unwrap();
        if layout == "original" {
            for part in ["backbone", "decoder"] {
                cfg[part]["use_scaled_rope"] = serde_json::json!(false);
            }
        } else {
            cfg["rope_parameters"] =
                serde_json::json!({"rope_type": "default", "rope_theta": 500000.0});
            cfg["depth_decoder_config"]["rope_parameters"] =
                serde_json::json!({"rope_type": "default", "rope_theta": 500000.0});
        }
        std::fs::write(tmp.path().join(layout).join("config.json"), cfg.to_string()).unwrap();
    }
    tmp
}

#[test]
fn conform_fails_at_the_first_affected_step_when_rope_scaling_is_off() {
    let tmp = case_without_rope_scaling();
    let report = conform(
        tmp.path(),
        &[BackendKind::Torch, BackendKind::Mlx],
        Some(&[Layout::Original, Layout::Hf]),
        1e-4,
    )
    .unwrap();
    assert!(!report.conforms);
    // Every backend and layout blames the same first step: codebook 0 (the backbone, where the
    // positions are large enough for the low-frequency scaling to matter) at frame 0.
    let first: Vec<_> = report
        .results
        .iter()
        .map(|r| r.first_breach.as_ref().map(|b| (b.frame, b.codebook)))
        .collect();
    assert!(first.iter().all(|f| *f == first[0]), "{first:?}");
    assert_eq!(first[0], Some((0, 0)), "{}", report.render());
}

#[test]
fn cli_verify_json_has_the_documented_keys() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_csm-parity"))
        .args(["verify", "--frames", "4", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["frames"], 4);
    assert!(v["max_abs_logit_diff"].as_f64().unwrap() <= 1e-4);
    assert!(v["cache_parity_max_abs_diff"]["mlx"].is_number());
    assert!(v["cache_parity_max_abs_diff"]["torch"].is_number());
    assert_eq!(v["tokens_equal"], true);
}

#[test]
fn cli_conform_exits_1_when_it_does_not_conform() {
    let tmp = case_without_rope_scaling();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_csm-parity"))
        .args(["conform", "--json", "--backend", "torch", "--layout", "hf"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["conforms"], false);
    assert!(v["results"][0]["greedy_frames_equal"].is_boolean());
    assert!(v["results"][0]["max_abs_diff_c0"].as_f64().unwrap() > 1e-4);
}
