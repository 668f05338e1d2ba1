//! Every number `diff --json` reports, recomputed independently from the .npy files of real
//! pairs (issue 13): `tests/recompute/recompute_diff.py` reads the run directories with numpy
//! only, recomputes each metric from its definition in docs/metrics.md and compares (1e-6
//! relative, or the metric's own precision); a reported number it does not recompute is a
//! failure too. The pairs are captured by the real binary on the tiny fixtures: shared and native
//! noise, teacher, hybrid, faults in the model, sampler and post-processing, f16 and top:N
//! storage, a bf16 run and a Llama pair.
#![cfg(all(feature = "mlx", feature = "torch"))]
use csm_parity::model::fixture;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_csm-parity"))
}

fn python() -> Command {
    let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/py");
    let mut c = Command::new("python3");
    c.env("PYTHONPATH", deps);
    c
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recompute/recompute_diff.py")
}

/// Captures a pair into `out` (`capture ARGS --out out`) and writes `diff --json` next to it.
fn pair(model: &Path, out: &Path, args: &[&str]) -> PathBuf {
    let o = bin()
        .args(["capture", "--no-audio", "--model"])
        .arg(model)
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "capture {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = bin().arg("diff").arg(out).arg("--json").output().unwrap();
    assert!(
        o.status.success(),
        "diff {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let json = out.with_extension("json");
    std::fs::write(&json, &o.stdout).unwrap();
    json
}

/// Runs the recomputation; returns (success, output).
fn recompute(out: &Path, json: &Path) -> (bool, String) {
    let o = python()
        .arg(script())
        .arg(out.join("torch"))
        .arg(out.join("mlx"))
        .arg(json)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn checked(text: &str) -> usize {
    text.lines()
        .find_map(|l| l.strip_prefix("checked "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn every_reported_number_agrees_with_an_independent_recomputation() {
    let ok = python()
        .args(["-c", "import numpy"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "python3 with numpy (PYTHONPATH=.deps/py) is required");
    let csm = fixture::ensure_default_fixture().unwrap();
    let llama = fixture::ensure_llama_fixture().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let f8 = ["--text", "Hello", "--max-frames", "8"];
    let cases: Vec<(&str, &Path, Vec<&str>)> = vec![
        ("shared", &csm, vec![]),
        ("native", &csm, vec!["--noise", "native"]),
        (
            "teacher-context-loss",
            &csm,
            vec!["--mode", "teacher", "--inject", "context-loss"],
        ),
        (
            "hybrid-native",
            &csm,
            vec!["--mode", "hybrid", "--noise", "native"],
        ),
        (
            "topk-exact",
            &csm,
            vec!["--inject", "topk-exact", "--top-k", "5"],
        ),
        ("rope-halves", &csm, vec!["--inject", "rope-halves"]),
        ("bf16-logits", &csm, vec!["--inject", "bf16-logits"]),
        (
            "f16-storage",
            &csm,
            vec!["--logits", "f16", "--probs", "f16"],
        ),
        (
            "top16-context-loss",
            &csm,
            vec![
                "--logits",
                "top:16",
                "--probs",
                "top:16",
                "--inject",
                "context-loss",
            ],
        ),
        ("bf16-dtype", &csm, vec!["--dtype", "bf16"]),
    ];
    let mut total = 0;
    let mut failures = Vec::new();
    let mut run = |name: &str, model: &Path, args: Vec<&str>| {
        let out = tmp.path().join(name);
        let json = pair(model, &out, &args);
        let (ok, text) = recompute(&out, &json);
        let n = checked(&text);
        assert!(n > 100, "{name}: only {n} numbers checked\n{text}");
        total += n;
        if !ok {
            failures.push(format!("{name} ({args:?}):\n{text}"));
        }
        (out, json)
    };
    for (name, model, extra) in cases {
        let mut args = f8.to_vec();
        args.extend(extra);
        run(name, model, args);
    }
    // Post-processing: seed 1 makes the remap fault act within 16 frames.
    let (out, json) = run(
        "remap-low",
        &csm,
        vec![
            "--text",
            "Hello",
            "--max-frames",
            "16",
            "--seed",
            "1",
            "--inject",
            "remap-low",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(
        v["post_changed"][1].as_u64().unwrap() > 0,
        "the remap fault did not act: the pair does not test post-processing"
    );
    // Llama: one codebook, its own vocab.
    for (name, extra) in [
        ("llama-rope-halves", vec!["--inject", "rope-halves"]),
        ("llama-native", vec!["--noise", "native"]),
    ] {
        let mut args = vec!["--text", "Hello world", "--max-tokens", "24"];
        args.extend(extra);
        run(name, &llama, args);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(total > 5000, "{total} numbers checked in all");

    // The check can fail: one reported number off by 1e-4 relative is caught and named.
    let mut v = v;
    let x = v["overall"]["logits"]["mean_abs"].as_f64().unwrap();
    v["overall"]["logits"]["mean_abs"] = (x * (1.0 + 1e-4)).into();
    let bad = tmp.path().join("tampered.json");
    std::fs::write(&bad, serde_json::to_vec(&v).unwrap()).unwrap();
    let (ok, text) = recompute(&out, &bad);
    assert!(!ok && text.contains("overall.logits.mean_abs"), "{text}");
    // So is a reported number the recomputation does not know.
    v["overall"]["logits"]["mean_abs"] = x.into();
    v["overall"]["new_metric"] = 1.5.into();
    std::fs::write(&bad, serde_json::to_vec(&v).unwrap()).unwrap();
    let (ok, text) = recompute(&out, &bad);
    assert!(
        !ok && text.contains("overall.new_metric: reported but not recomputed"),
        "{text}"
    );
}
