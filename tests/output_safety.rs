//! Issue 12: nothing lost, nothing silently wrong. One test per cause, through the CLI as a user
//! meets it: what the tool may replace, what it refuses, NaN-proof checks, early and precise
//! errors, no panics on full or closed pipes.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_csm-parity"))
}

/// (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let o = cmd.stdin(Stdio::null()).output().expect("runs csm-parity");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn no_panic(err: &str) {
    assert!(!err.contains("panicked"), "a panic: {err}");
}

/// A complete pair of small runs (core only: written through RunWriter).
fn pair(root: &Path) -> (PathBuf, PathBuf) {
    common::pair(root, &common::Spec::default(), |_| {})
}

#[test]
fn diff_report_refuses_to_replace_an_input_run_or_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = pair(&tmp.path().join("r"));
    let before = std::fs::read(b.join("tokens.npy")).unwrap();
    let (code, _, err) = run(bin().arg("diff").arg(&a).arg(&b).arg("--report").arg(&b));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a run directory"), "{err}");
    assert_eq!(
        std::fs::read(b.join("tokens.npy")).unwrap(),
        before,
        "the input run was touched"
    );
    // A file where the report directory should go.
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, "my notes").unwrap();
    let (code, _, err) = run(bin().arg("diff").arg(&a).arg(&b).arg("--report").arg(&file));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("notes.txt") && err.contains("not a directory"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "my notes");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        2,
        "something was left beside the file"
    );
    // A folder of the user's.
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("keep.md"), "x").unwrap();
    let (code, _, err) = run(bin().arg("diff").arg(&a).arg(&b).arg("--report").arg(&mine));
    assert_eq!(code, 2);
    assert!(err.contains("not written by csm-parity"), "{err}");
    assert!(mine.join("keep.md").exists());
    // Our own report is replaced.
    let rep = tmp.path().join("rep");
    for _ in 0..2 {
        let (code, _, err) = run(bin().arg("diff").arg(&a).arg(&b).arg("--report").arg(&rep));
        assert_eq!(code, 0, "{err}");
    }
    assert!(rep.join("index.html").exists() && rep.join(".csm-parity").exists());
}

#[test]
fn writing_to_a_full_or_closed_stdout_is_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = pair(tmp.path());
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = bin()
        .arg("diff")
        .arg(&a)
        .arg(&b)
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    no_panic(&err);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("standard output"), "{err}");
    // A closed pipe: quiet, like other command-line tools.
    let mut child = bin()
        .arg("diff")
        .arg(&a)
        .arg(&b)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    no_panic(&err);
    assert!(err.is_empty(), "{err}");
}

#[test]
fn tolerance_flags_reject_nan_and_negatives_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = pair(tmp.path());
    for (flag, value) in [
        ("--atol", "nan"),
        ("--atol", "-1"),
        ("--rtol", "inf"),
        ("--probs-atol", "-0.5"),
    ] {
        let (code, _, err) = run(bin().arg("diff").arg(&a).arg(&b).args([flag, value]));
        assert_eq!(code, 2, "{flag} {value}");
        assert!(
            err.contains(flag) && !err.contains("unexpected argument"),
            "{flag} {value}: {err}"
        );
    }
    let (code, _, err) = run(bin().args(["conform", "/nonexistent", "--atol", "nan"]));
    assert_eq!(code, 2);
    assert!(err.contains("--atol"), "{err}");
}

#[test]
fn junit_and_markdown_write_through_symlinks_and_devices() {
    // The write-through itself is unit-tested in `outputs`; here the gate's flags reach it with
    // a bad config (exit 2 before anything is written) so no backend is needed.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gate.toml");
    std::fs::write(&cfg, "[run]\ntexts = [\"a\"]\nseeds = [1]\ntemperature = 0.8\ntop_k = 50\nmax_frames = 2\n[thresholds]\nmax_logit_diff_max = nan\n").unwrap();
    let (code, _, err) = run(bin()
        .arg("gate")
        .arg("--config")
        .arg(&cfg)
        .args(["--junit", "/dev/stdout"]));
    assert_eq!(
        code, 2,
        "a NaN threshold is a config error, not a regression: {err}"
    );
    assert!(
        err.contains("max_logit_diff_max") && err.contains("finite"),
        "{err}"
    );
}

#[test]
fn config_values_that_make_every_logit_nan_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let (code, _, err) = run(bin().arg("fixture").arg("--out").arg(&dir));
    assert_eq!(code, 0, "{err}");
    let cfg_path = dir.join("config.json");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    for (part, key, value) in [
        ("backbone", "rope_base", serde_json::json!(0.0)),
        ("decoder", "norm_eps", serde_json::json!(-1e-5)),
        ("backbone", "scale_factor", serde_json::json!(0.0)),
    ] {
        let mut c = cfg.clone();
        c[part][key] = value;
        std::fs::write(&cfg_path, c.to_string()).unwrap();
        let (code, _, err) = run(bin().arg("inspect").arg(&dir));
        assert_eq!(code, 2, "{part}.{key}: {err}");
        assert!(
            err.contains(key) || err.contains("RoPE scaling"),
            "{part}.{key}: {err}"
        );
    }
}

#[test]
fn fixture_out_never_overwrites_a_users_model() {
    let tmp = tempfile::tempdir().unwrap();
    let user = tmp.path().join("my-model");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("config.json"), "{\"model_type\": \"csm\"}").unwrap();
    std::fs::write(user.join("model.safetensors"), "precious").unwrap();
    let (code, _, err) = run(bin().arg("fixture").arg("--out").arg(&user));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not written by csm-parity"), "{err}");
    assert_eq!(
        std::fs::read_to_string(user.join("model.safetensors")).unwrap(),
        "precious"
    );
    // An earlier fixture is ours to replace.
    let fx = tmp.path().join("fx");
    for seed in ["1", "2"] {
        let (code, _, err) = run(bin()
            .arg("fixture")
            .arg("--out")
            .arg(&fx)
            .args(["--seed", seed]));
        assert_eq!(code, 0, "{err}");
    }
}

#[test]
fn inspect_calls_a_truncated_safetensors_file_incomplete() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    assert_eq!(run(bin().arg("fixture").arg("--out").arg(&dir)).0, 0);
    let w = dir.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let (code, out, err) = run(bin().arg("inspect").arg(&dir));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("truncated") && out.contains("NOT loadable"),
        "{out}"
    );
}

#[test]
fn llama_eos_token_id_of_the_wrong_type_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    let (code, _, err) = run(bin()
        .args(["fixture", "--kind", "llama", "--out"])
        .arg(&dir));
    assert_eq!(code, 0, "{err}");
    let p = dir.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c["eos_token_id"] = "x".into();
    std::fs::write(&p, c.to_string()).unwrap();
    let err = csm_parity::model::LlamaModel::load(&dir, None)
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("eos_token_id") && msg.contains("config.json"),
        "{msg}"
    );
}

#[test]
fn conform_case_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let case = tmp.path().join("case");
    std::fs::create_dir(&case).unwrap();
    let npy = |name: &str, descr: &str, shape: &str, data: Vec<u8>| {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend(data);
        std::fs::write(case.join(name), out).unwrap();
    };
    let f32s = |n: usize| {
        (0..n)
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let i32s = |n: usize| {
        (0..n)
            .flat_map(|i| (i as i32 % 5).to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let write_good = || {
        npy("prompt_ids.npy", "<i4", "(3,)", i32s(3));
        npy("frames.npy", "<i4", "(2, 3)", i32s(6));
        npy("c0_logits.npy", "<f4", "(2, 7)", f32s(14));
        npy("depth_logits.npy", "<f4", "(2, 2, 7)", f32s(28));
    };
    let load_err = || {
        format!(
            "{:#}",
            csm_parity::commands::conform::Case::load(&case)
                .err()
                .expect("refused")
        )
    };
    write_good();
    csm_parity::commands::conform::Case::load(&case).unwrap();
    // Truncated array.
    let p = case.join("depth_logits.npy");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 9]).unwrap();
    let e = load_err();
    assert!(
        e.contains("depth_logits.npy") && e.contains("truncated"),
        "{e}"
    );
    // Wrong vocab in c0_logits is blamed on c0_logits (depth agrees with frames).
    write_good();
    npy("c0_logits.npy", "<f4", "(3, 7)", f32s(21));
    let e = load_err();
    assert!(e.contains("c0_logits.npy"), "{e}");
    // Float token ids.
    write_good();
    npy("prompt_ids.npy", "<f4", "(3,)", f32s(3));
    let e = load_err();
    assert!(
        e.contains("prompt_ids.npy") && e.contains("integers"),
        "{e}"
    );
    // NaN in the reference.
    write_good();
    let mut c0 = f32s(14);
    c0[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    npy("c0_logits.npy", "<f4", "(2, 7)", c0);
    let e = load_err();
    assert!(e.contains("c0_logits.npy") && e.contains("finite"), "{e}");
}

#[cfg(all(feature = "mlx", feature = "torch"))]
mod with_backends {
    use super::*;

    /// `capture` of 3 frames (unless `extra` sets --max-frames) into `out`.
    fn capture(out: &Path, extra: &[&str]) -> (i32, String, String) {
        let mut c = bin();
        c.args(["capture", "--text", "hi", "--out"])
            .arg(out)
            .args(extra);
        if !extra.contains(&"--max-frames") {
            c.args(["--max-frames", "3"]);
        }
        run(&mut c)
    }

    #[test]
    fn capture_refuses_an_existing_run_and_replaces_it_only_with_force() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("cap");
        let (code, _, err) = capture(&out, &["--seed", "1"]);
        assert_eq!(code, 0, "{err}");
        let m1 = std::fs::read_to_string(out.join("torch/manifest.json")).unwrap();
        let (code, _, err) = capture(&out, &["--seed", "2"]);
        assert_eq!(code, 2);
        assert!(err.contains("--force") && err.contains("torch"), "{err}");
        assert_eq!(
            std::fs::read_to_string(out.join("torch/manifest.json")).unwrap(),
            m1
        );
        // With --force but a failing new capture (a bad frame budget): the old run survives.
        let (code, _, err) = capture(&out, &["--seed", "2", "--force", "--max-frames", "100000"]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("--max-frames 100000") && err.contains("use at most"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("torch/manifest.json")).unwrap(),
            m1
        );
        let (code, _, err) = capture(&out, &["--seed", "2", "--force"]);
        assert_eq!(code, 0, "{err}");
        let m2 = std::fs::read_to_string(out.join("torch/manifest.json")).unwrap();
        assert!(m2.contains("\"seed\": 2"), "{m2}");
        let left: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".csm-parity"))
            .collect();
        assert_eq!(left.len(), 2, "only torch/ and mlx/ remain: {left:?}");
    }

    #[test]
    fn capture_never_touches_a_folder_that_is_not_a_run() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("cap");
        std::fs::create_dir_all(out.join("torch")).unwrap();
        std::fs::write(out.join("torch/notes.md"), "mine").unwrap();
        for extra in [&[][..], &["--force"][..]] {
            let (code, _, err) = capture(&out, extra);
            assert_eq!(code, 2, "{err}");
            assert!(err.contains("not a csm-parity run"), "{err}");
        }
        assert_eq!(
            std::fs::read_to_string(out.join("torch/notes.md")).unwrap(),
            "mine"
        );
        assert!(!out.join("mlx").exists() && !out.join("mlx.partial").exists());
    }

    #[test]
    fn max_frames_beyond_the_model_fails_before_generating_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("cap");
        let t0 = std::time::Instant::now();
        let (code, _, err) = capture(&out, &["--max-frames", "5000"]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("--max-frames 5000") && err.contains("use at most"),
            "{err}"
        );
        assert!(!out.exists(), "the failed capture left {out:?}");
        // Checked up front: far below the time of generating thousands of frames.
        assert!(t0.elapsed().as_secs() < 30);
    }

    #[test]
    fn negative_numbers_reach_the_flags_own_validation() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("cap");
        for (flag, v) in [
            ("--top-p", "-0.2"),
            ("--seed", "-5"),
            ("--max-frames", "-3"),
        ] {
            let (code, _, err) = capture(&out, &[flag, v]);
            assert_eq!(code, 2, "{flag}");
            assert!(!err.contains("unexpected argument"), "{flag} {v}: {err}");
            assert!(
                err.contains(flag) || err.contains("top_p") || err.contains("top-p"),
                "{flag} {v}: {err}"
            );
        }
    }

    #[test]
    fn a_missing_tokenizer_is_reported_before_any_weight_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        assert_eq!(run(bin().arg("fixture").arg("--out").arg(&dir)).0, 0);
        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
        // Weights that would fail to load: the tokenizer error must come first.
        std::fs::write(dir.join("model.safetensors"), b"not weights").unwrap();
        let (code, _, err) = run(bin()
            .args(["capture", "--text", "hi", "--model"])
            .arg(&dir)
            .arg("--out")
            .arg(tmp.path().join("o")));
        assert_eq!(code, 2);
        assert!(
            err.contains("--tokenizer") && err.contains("tokenizer.json"),
            "{err}"
        );
        let (code, _, err) = run(bin()
            .args([
                "capture",
                "--text",
                "hi",
                "--tokenizer",
                "/nonexistent/tok.json",
                "--model",
            ])
            .arg(&dir));
        assert_eq!(code, 2);
        assert!(err.contains("--tokenizer /nonexistent/tok.json"), "{err}");
    }

    #[test]
    fn two_captures_into_one_output_never_leave_a_broken_run() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("cap");
        let spawn = || {
            bin()
                .args([
                    "capture",
                    "--text",
                    "hello there",
                    "--max-frames",
                    "40",
                    "--force",
                    "--out",
                ])
                .arg(&out)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let codes = [oa.status.code(), ob.status.code()];
        assert!(codes.contains(&Some(0)), "{codes:?}");
        for o in [&oa, &ob] {
            let err = String::from_utf8_lossy(&o.stderr);
            no_panic(&err);
            if o.status.code() == Some(2) {
                assert!(
                    err.contains("another csm-parity process") && err.contains("pid"),
                    "{err}"
                );
            }
        }
        for b in ["torch", "mlx"] {
            csm_parity::capture::Run::open(&out.join(b)).expect("a complete, readable run");
        }
    }

    #[test]
    fn selftest_out_never_removes_a_users_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let mine = tmp.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("keep.txt"), "x").unwrap();
        let (code, _, err) = run(bin()
            .args(["selftest", "--fault", "context-loss", "--out"])
            .arg(&mine));
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("not written by csm-parity"), "{err}");
        assert!(mine.join("keep.txt").exists());
    }

    #[test]
    fn gate_fails_on_nan_logits_with_its_own_check() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        assert_eq!(run(bin().arg("fixture").arg("--out").arg(&dir)).0, 0);
        // Poison one norm scale with NaN: every logit of both pipelines becomes NaN.
        let p = dir.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let t = &header["backbone.norm.scale"];
        assert_eq!(t["dtype"], "F32");
        let start = 8 + n + t["data_offsets"][0].as_u64().unwrap() as usize;
        let mut poisoned = bytes.clone();
        poisoned[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(&p, poisoned).unwrap();
        let cfg = tmp.path().join("gate.toml");
        std::fs::write(
            &cfg,
            format!(
                "model = {:?}\n[run]\ntexts = [\"hi\"]\nseeds = [1]\ntemperature = 0.8\ntop_k = 50\nmax_frames = 3\n[thresholds]\nmax_logit_diff_max = 1e-3\n",
                dir.display().to_string()
            ),
        )
        .unwrap();
        let (code, out, err) = run(bin().arg("gate").arg("--config").arg(&cfg));
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains("FAIL finite_outputs"), "{out}");
        assert!(out.contains("non-finite logits"), "{out}");
    }
}
