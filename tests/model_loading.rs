//! Backend-neutral: config, weight index validation (missing key, wrong shape, wrong dtype,
//! mixed layouts), both layouts mapped to the same tensors, inspect.
use csm_parity::commands::inspect::inspect;
use csm_parity::model::csm::weights::load_csm;
use csm_parity::model::{fixture, CsmConfig};
use csm_parity::model::{write_safetensors, DType, HostTensor};
use std::path::{Path, PathBuf};

fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/csm-tiny-transformers")
}

fn tiny_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fixture::write_fixture(dir.path(), 3).unwrap();
    dir
}

fn rewrite(
    dir: &Path,
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, HostTensor>),
) -> String {
    let cfg = CsmConfig::from_file(&dir.join("config.json")).unwrap();
    let mut tensors = load_csm(dir, &cfg).unwrap().tensors;
    edit(&mut tensors);
    write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    format!("{:#}", load_csm(dir, &cfg).unwrap_err())
}

#[test]
fn fixture_loads_and_validates() {
    let dir = tiny_fixture();
    let cfg = CsmConfig::from_file(&dir.path().join("config.json")).unwrap();
    assert_eq!(cfg, CsmConfig::tiny());
    let w = load_csm(dir.path(), &cfg).unwrap();
    assert_eq!(
        w.tensors.len(),
        csm_parity::model::csm::expected_tensors(&cfg).len()
    );
    assert_eq!(w.sha256.len(), 64);
}

#[test]
fn missing_key_is_named() {
    let dir = tiny_fixture();
    let err = rewrite(dir.path(), |t| {
        t.remove("decoder.layers.1.mlp.w3.weight");
    });
    assert!(
        err.contains("missing tensor \"decoder.layers.1.mlp.w3.weight\""),
        "{err}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let dir = tiny_fixture();
    let err = rewrite(dir.path(), |t| {
        t.insert(
            "backbone.layers.0.attn.k_proj.weight".into(),
            HostTensor::from_f32(vec![31, 64], &[0.0; 31 * 64]),
        );
    });
    assert!(
        err.contains("\"backbone.layers.0.attn.k_proj.weight\" has shape [31, 64]"),
        "{err}"
    );
    assert!(err.contains("expects [32, 64]"), "{err}");
}

#[test]
fn wrong_dtype_is_named() {
    let dir = tiny_fixture();
    let cfg = CsmConfig::tiny();
    // An i32 tensor cannot be written through HostTensor: write the file by hand with safetensors.
    let mut tensors = load_csm(dir.path(), &cfg).unwrap().tensors;
    let bad_key = "backbone.norm.scale";
    tensors.remove(bad_key);
    let ints = vec![0u8; 64 * 4];
    let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    t.shape.clone(),
                    &t.data,
                )
                .unwrap(),
            )
        })
        .collect();
    views.push((
        bad_key.into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![64], &ints).unwrap(),
    ));
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let err = format!("{:#}", load_csm(dir.path(), &cfg).unwrap_err());
    assert!(
        err.contains("\"backbone.norm.scale\" has dtype I32"),
        "{err}"
    );
}

#[test]
fn unexpected_and_mixed_keys_are_named() {
    let dir = tiny_fixture();
    let err = rewrite(dir.path(), |t| {
        t.insert(
            "backbone.layers.9.attn.q_proj.weight".into(),
            HostTensor::from_f32(vec![1], &[0.0]),
        );
    });
    assert!(
        err.contains("unexpected key \"backbone.layers.9.attn.q_proj.weight\""),
        "{err}"
    );
    let dir = tiny_fixture();
    let err = rewrite(dir.path(), |t| {
        t.insert(
            "lm_head.weight".into(),
            HostTensor::from_f32(vec![1], &[0.0]),
        );
    });
    assert!(
        err.contains("mixed layouts") && err.contains("lm_head.weight"),
        "{err}"
    );
}

#[test]
fn both_layouts_of_the_case_give_identical_tensors() {
    let case = case_dir();
    let o_cfg = CsmConfig::from_file(&case.join("original/config.json")).unwrap();
    let mut h_cfg = CsmConfig::from_file(&case.join("hf/config.json")).unwrap();
    // transformers sizes the depth decoder's position table to codebooks + 1 (9); torchtune's
    // flavour says 2048. Only positions 0..=C are ever used, so the computation is the same.
    assert_eq!(h_cfg.decoder.max_seq_len, 9);
    h_cfg.decoder.max_seq_len = o_cfg.decoder.max_seq_len;
    assert_eq!(
        o_cfg, h_cfg,
        "the two config forms describe the same architecture"
    );
    let o = load_csm(&case.join("original"), &o_cfg).unwrap();
    let h = load_csm(&case.join("hf"), &h_cfg).unwrap();
    assert_eq!(o.layout.name(), "original");
    assert_eq!(h.layout.name(), "hf");
    assert_eq!(
        o.tensors.keys().collect::<Vec<_>>(),
        h.tensors.keys().collect::<Vec<_>>()
    );
    for (k, t) in &o.tensors {
        assert_eq!(t.dtype, DType::F32);
        assert_eq!(
            t, &h.tensors[k],
            "{k} differs after mapping the hf layout (q/k permutation undone)"
        );
    }
}

#[test]
fn inspect_reports_the_same_architecture_for_both_layouts() {
    let case = case_dir();
    let o = inspect(&case.join("original")).unwrap();
    let h = inspect(&case.join("hf")).unwrap();
    assert!(o.ok && h.ok, "{}\n{}", o.render(), h.render());
    assert_eq!(o.layout, "original");
    assert_eq!(h.layout, "hf");
    let mut hc = h.config.clone();
    hc["decoder"]["max_seq_len"] = o.config["decoder"]["max_seq_len"].clone();
    assert_eq!(o.config, hc);
    assert_eq!(o.parameters, h.parameters);
    // The architecture lines of the two renderings are the same.
    let arch = |s: String| {
        s.lines()
            .skip(1)
            .take(3)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(arch(o.render()), arch(h.render()));
}

#[test]
fn inspect_lists_missing_and_extra() {
    let dir = tiny_fixture();
    let cfg = CsmConfig::tiny();
    let mut tensors = load_csm(dir.path(), &cfg).unwrap().tensors;
    tensors.remove("projection.weight");
    tensors.insert(
        "stray.weight".into(),
        HostTensor::from_f32(vec![2], &[0.0, 1.0]),
    );
    write_safetensors(&dir.path().join("model.safetensors"), &tensors).unwrap();
    let ins = inspect(dir.path()).unwrap();
    assert!(!ins.ok);
    assert_eq!(ins.missing, vec!["projection.weight [32, 64]".to_string()]);
    assert_eq!(ins.extra, vec!["stray.weight".to_string()]);
}
