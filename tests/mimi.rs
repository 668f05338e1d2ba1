//! Mimi, the codec, in both backends: pinned to transformers on the shared conformance case,
//! with the tolerance shown to bite, and bad codec directories refused with clear errors.
#![cfg(all(feature = "mlx", feature = "torch"))]
use csm_parity::backend::{load_codec, BackendKind, CodecFault};
use csm_parity::commands::conform_mimi::{check_codec, MimiCase, AUDIO_ATOL};
use csm_parity::model::mimi::MimiModel;
use csm_parity::model::write_safetensors;
use csm_parity::model::{DType, HostTensor};
use std::path::{Path, PathBuf};

fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/mimi-tiny-transformers")
}

/// A copy of the case whose weights went through `edit`.
fn edited_case(
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, HostTensor>),
) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(case_dir()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let m = MimiModel::load(&case_dir()).unwrap();
    let mut tensors = m.weights.tensors.clone();
    edit(&mut tensors);
    write_safetensors(&tmp.path().join("model.safetensors"), &tensors).unwrap();
    tmp
}

fn conform_cli(dir: &Path, backend: &str) -> (Option<i32>, serde_json::Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_csm-parity"))
        .args(["conform", "--json", "--backend", backend])
        .arg(dir)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn conform_passes_in_both_backends() {
    let (code, v, err) = conform_cli(&case_dir(), "both");
    assert_eq!(code, Some(0), "{err}\n{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        let audio = r["max_abs_diff_audio"].as_f64().unwrap();
        let lat = r["max_abs_diff_latents"].as_f64().unwrap();
        let allowed = r["latents_atol"].as_f64().unwrap();
        assert!(audio <= 1e-5, "{r}");
        assert!(lat <= allowed && allowed > 1e-4 && allowed < 1e-2, "{r}");
        assert_eq!(r["wave_codes_equal"], true, "{r}");
        assert_eq!(r["conforms"], true, "{r}");
    }
    assert_eq!(v["conforms"], true);
}

#[test]
fn an_approximate_gelu_does_not_conform() {
    // The tanh GELU moves the audio by ~8e-5 and the latents by ~4e-3: both beyond tolerance.
    let model = MimiModel::load(&case_dir()).unwrap();
    let case = MimiCase::load(&case_dir(), &model).unwrap();
    let mut codec = load_codec(BackendKind::Mlx, &model, DType::F32).unwrap();
    let clean = check_codec(&case, "mlx", codec.as_mut()).unwrap();
    assert!(clean.conforms, "{clean:?}");
    codec.inject(CodecFault::TanhGelu).unwrap();
    let r = check_codec(&case, "mlx", codec.as_mut()).unwrap();
    assert!(!r.conforms, "{r:?}");
    assert!(r.max_abs_diff_audio > AUDIO_ATOL, "{r:?}");
    assert!(r.max_abs_diff_latents > r.latents_atol, "{r:?}");
}

#[test]
fn cli_conform_exits_1_when_one_weight_is_off() {
    // One decoder-transformer layer scale 2% off: the audio moves beyond 1e-5, exit 1.
    let tmp = edited_case(|t| {
        let name = "decoder_transformer.layers.1.mlp_layer_scale.scale";
        let v: Vec<f32> = t[name].to_f32().iter().map(|x| x * 1.02).collect();
        t.insert(name.into(), HostTensor::from_f32(t[name].shape.clone(), &v));
    });
    let (code, v, err) = conform_cli(tmp.path(), "torch");
    assert_eq!(code, Some(1), "{err}\n{v}");
    let r = &v["results"][0];
    assert_eq!(r["conforms"], false);
    assert!(r["max_abs_diff_audio"].as_f64().unwrap() > 1e-5, "{r}");
    // The encoder is untouched: its latents and codes still match.
    assert_eq!(r["wave_codes_equal"], true, "{r}");
}

fn load_err(dir: &Path) -> String {
    match MimiModel::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_codec_directories_are_refused_with_the_file_named() {
    let missing = Path::new("/nonexistent/mimi-codec");
    assert!(load_err(missing).contains("/nonexistent/mimi-codec"));

    // No weights.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        case_dir().join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model.safetensors"), "{e}");

    // Another model type.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case_dir().join("config.json")).unwrap())
            .unwrap();
    cfg["model_type"] = "llama".into();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let e = load_err(tmp.path());
    assert!(
        e.contains("config.json") && e.contains("\"llama\"") && e.contains("mimi"),
        "{e}"
    );

    // A mis-shaped tensor and a missing one.
    let bad = edited_case(|t| {
        let name = "decoder.layers.2.conv.weight";
        let s = t[name].shape.clone();
        let v = t[name].to_f32();
        t.insert(
            name.into(),
            HostTensor::from_f32(vec![s[1], s[0], s[2]], &v),
        );
    });
    let e = load_err(bad.path());
    assert!(
        e.contains("model.safetensors")
            && e.contains("decoder.layers.2.conv.weight")
            && e.contains("[64, 128, 16]"),
        "{e}"
    );
    let gone = edited_case(|t| {
        t.remove("quantizer.acoustic_residual_vector_quantizer.layers.6.codebook.embed_sum");
    });
    let e = load_err(gone.path());
    assert!(
        e.contains("missing tensor") && e.contains("layers.6.codebook.embed_sum"),
        "{e}"
    );
}

#[test]
fn cli_conform_on_a_broken_case_exits_2_naming_the_file() {
    let tmp = edited_case(|_| {});
    std::fs::remove_file(tmp.path().join("latents.npy")).unwrap();
    let (code, _, err) = conform_cli(tmp.path(), "torch");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("latents.npy"), "{err}");
}

/// Deterministic codes for the fixture codec: `frames` × 8, with one code of CSM's special ids
/// (2048..2050) every 13 codes.
fn fixture_codes(frames: usize) -> (Vec<Vec<i32>>, usize) {
    let mut n = 0;
    let mut invalid = 0;
    let codes = (0..frames)
        .map(|f| {
            (0..8)
                .map(|c| {
                    n += 1;
                    if n % 13 == 0 {
                        invalid += 1;
                        2048 + (n % 3) as i32
                    } else {
                        ((f * 7919 + c * 104_729 + n * 31) % 2048) as i32
                    }
                })
                .collect()
        })
        .collect();
    (codes, invalid)
}

fn fixture_codec() -> MimiModel {
    let dir = csm_parity::model::fixture::ensure_default_fixture().unwrap();
    let codec_dir = MimiModel::codec_dir_of(&dir).expect("the fixture brings its codec");
    assert!(codec_dir.ends_with("codec"), "{}", codec_dir.display());
    let m = MimiModel::load(&codec_dir).unwrap();
    m.check_codebooks(8).unwrap();
    assert!(m.check_codebooks(9).is_err());
    m
}

#[test]
fn fixture_codec_is_audible_and_both_backends_agree() {
    let model = fixture_codec();
    let (codes, invalid) = fixture_codes(12);
    let mut audio = Vec::new();
    for kind in [BackendKind::Torch, BackendKind::Mlx] {
        let mut codec = load_codec(kind, &model, DType::F32).unwrap();
        let d = codec.decode(&codes).unwrap();
        assert_eq!(d.audio.len(), 12 * 1920);
        assert_eq!(d.invalid_codes, invalid);
        assert!(d.audio.iter().all(|x| x.is_finite()));
        let rms = (d.audio.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / d.audio.len() as f64)
            .sqrt();
        assert!((0.1..=0.3).contains(&rms), "{} rms {rms}", kind.name());
        eprintln!("{}: fixture codec rms {rms:.3}", kind.name());
        // Encoding round-trips to the codec's shapes.
        let e = codec.encode(&d.audio).unwrap();
        assert_eq!(e.codes.len(), 12);
        assert!(e
            .codes
            .iter()
            .all(|r| r.len() == 8 && r.iter().all(|&c| (0..2048).contains(&c))));
        assert_eq!(e.latents.len(), 12 * 32);
        audio.push((d.audio, e));
    }
    let diff = audio[0]
        .0
        .iter()
        .zip(&audio[1].0)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-5, "torch vs mlx audio {diff}");
    assert_eq!(audio[0].1.codes, audio[1].1.codes);
}

#[test]
fn each_codec_fault_changes_the_fixture_audio() {
    let model = fixture_codec();
    let (codes, _) = fixture_codes(24);
    let clean = load_codec(BackendKind::Mlx, &model, DType::F32)
        .unwrap()
        .decode(&codes)
        .unwrap()
        .audio;
    for fault in CodecFault::ALL {
        let mut codec = load_codec(BackendKind::Mlx, &model, DType::F32).unwrap();
        codec.inject(fault).unwrap();
        assert_eq!(codec.info().fault.as_deref(), Some(fault.name()));
        let bad = codec.decode(&codes).unwrap().audio;
        assert_eq!(bad.len(), clean.len(), "{fault}");
        let diff = clean
            .iter()
            .zip(&bad)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("{fault}: max |Δ| audio {diff:.3e}");
        assert!(diff > 1e-3, "{fault} moved the audio by only {diff}");
    }
    // The reference refuses.
    let mut torch = load_codec(BackendKind::Torch, &model, DType::F32).unwrap();
    assert!(torch.inject(CodecFault::NoSlidingWindow).is_err());
}
