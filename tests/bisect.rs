//! Issue 17: `bisect` names the first layer and operation where the pipelines part, for CSM and
//! Llama, and finds nothing on a clean pair. (Every model fault is also located inside
//! `selftest`, see tests/selftest.rs.)
#![cfg(all(feature = "mlx", feature = "torch"))]
use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_csm-parity"))
}

fn capture(out: &Path, extra: &[&str]) {
    let o = bin()
        .args(["capture", "--text", "hi", "--json", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn bisect(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let o = bin()
        .arg("bisect")
        .arg(dir)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn csm_faults_are_located_and_a_clean_pair_has_no_breach() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    capture(&clean, &["--max-frames", "3"]);
    let r = bisect(&clean, &[]);
    assert!(r["first_breach"].is_null(), "{r:#}");
    assert!(r["sentence"]
        .as_str()
        .unwrap()
        .starts_with("no tap departs"));
    let taps = r["taps"].as_array().unwrap();
    // Execution order: the backbone's input first, every layer's operations, the heads last.
    assert_eq!(taps[0]["name"], "backbone.input");
    let names: Vec<&str> = taps.iter().map(|t| t["name"].as_str().unwrap()).collect();
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("no tap {n}"))
    };
    assert!(pos("backbone.layers.0.q") < pos("backbone.layers.0.q_rope"));
    assert!(pos("backbone.layers.1.resid_mlp") < pos("backbone.final_norm"));
    assert!(pos("head.cb0.logits") < pos("decoder.cb1.layers.0.q_rope"));
    assert!(pos("decoder.cb1.layers.1.down") < pos("head.cb1.logits"));

    let rope = tmp.path().join("rope");
    capture(&rope, &["--max-frames", "3", "--inject", "rope-halves"]);
    let report = tmp.path().join("report");
    let r = bisect(&rope, &["--report", report.to_str().unwrap()]);
    assert_eq!(r["component"], "RoPE", "{r:#}");
    assert_eq!(r["location"], "backbone layer 0");
    assert_eq!(taps_name(&r), "backbone.layers.0.q_rope");
    let s = r["sentence"].as_str().unwrap();
    assert!(
        s.contains("q after RoPE departs") && s.contains("q before RoPE agrees"),
        "{s}"
    );
    for f in ["index.html", "bisect.json", "bisect.png"] {
        assert!(report.join(f).is_file(), "{f}");
    }

    let ctx = tmp.path().join("ctx");
    capture(&ctx, &["--max-frames", "3", "--inject", "context-loss"]);
    let r = bisect(&ctx, &[]);
    assert_eq!(
        (r["frame"].as_u64(), r["component"].as_str()),
        (Some(1), Some("attention")),
        "{r:#}"
    );
    assert_eq!(taps_name(&r), "backbone.layers.0.attn");
}

fn taps_name(r: &serde_json::Value) -> String {
    let i = r["first_breach"].as_u64().expect("a breach") as usize;
    r["taps"][i]["name"].as_str().unwrap().to_string()
}

#[test]
fn llama_faults_are_located() {
    let tmp = tempfile::tempdir().unwrap();
    for (fault, component, tap) in [
        ("no-rope-scaling", "RoPE", "model.layers.0.q_rope"),
        ("wrong-position", "head input", "model.h_last"),
    ] {
        let dir = tmp.path().join(fault);
        capture(
            &dir,
            &[
                "--model-kind",
                "llama",
                "--max-tokens",
                "3",
                "--inject",
                fault,
            ],
        );
        let r = bisect(&dir, &[]);
        assert_eq!(r["component"], component, "{fault}: {r:#}");
        assert_eq!(taps_name(&r), tap, "{fault}");
    }
}

#[test]
fn bisect_refuses_bad_input_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    capture(&dir, &["--max-frames", "2"]);
    let o = bin()
        .arg("bisect")
        .arg(&dir)
        .args(["--frame", "9"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--frame 9"));
    let o = bin()
        .arg("bisect")
        .arg(&dir)
        .args(["--rtol", "nan"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // The report never replaces an input run.
    let o = bin()
        .arg("bisect")
        .arg(&dir)
        .arg("--report")
        .arg(dir.join("mlx"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(dir.join("mlx/manifest.json").exists());
}
