//! `csm-parity sweep` and `csm-parity gate` on the tiny fixture (issue 5).
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_csm-parity"))
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let o = cmd.output().expect("runs csm-parity");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[cfg(all(feature = "mlx", feature = "torch"))]
mod with_backends {
    use super::*;
    use std::path::{Path, PathBuf};

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn result_of(dir: &Path) -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("sweep.json")).unwrap()).unwrap();
        v["result"].clone()
    }

    use csm_parity::commands::sweep::{self, output, Execution, SweepSpec};
    use csm_parity::model::{fixture, CsmModel, Model};

    fn spec(model: &Model) -> SweepSpec {
        SweepSpec {
            temperatures: vec![0.6, 0.9],
            top_ks: vec![5, 50],
            seeds: (0..4).collect(),
            texts: vec!["Hello there.".into()],
            max_frames: 6,
            speaker: 0,
            dtype: "f32".into(),
            model_sha256: model.sha256().into(),
            model_path: "tiny-csm".into(),
            candidate: None,
        }
    }

    /// 2×2 grid × 4 seeds: every output written, a second invocation reuses every job, and
    /// shards 1/2 + 2/2 (through the CLI) merged equal the unsharded result.
    #[test]
    fn sweep_writes_outputs_resumes_and_shards_merge_to_the_same_result() {
        let model =
            Model::Csm(CsmModel::load(&fixture::ensure_default_fixture().unwrap()).unwrap());
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("full");
        let spec = spec(&model);
        let (st, res) = sweep::run_sweep(&model, &spec, &dir, None, &Execution::default()).unwrap();
        let res = res.expect("unsharded sweep aggregates");
        assert_eq!((st.jobs_total, st.jobs_run, st.jobs_reused), (16, 16, 0));
        for f in ["sweep.json", "sweep.csv", "sweep.md", "spec.json"] {
            assert!(dir.join(f).is_file(), "{f} missing");
        }
        for h in output::HEADLINES {
            for ext in ["png", "svg"] {
                let p = dir.join(format!("heatmap_{}.{ext}", h.name));
                assert!(
                    std::fs::metadata(&p).unwrap().len() > 1000,
                    "{}",
                    p.display()
                );
            }
        }
        let svg = std::fs::read_to_string(dir.join("heatmap_hist_intersection.svg")).unwrap();
        // 4 seeds per cell: too few jobs for a bootstrap interval (issue 13: say so rather
        // than draw a zero-width CI), so each cell is annotated "(no CI)".
        assert!(
            svg.contains("no CI") && !svg.contains("±0 "),
            "cells say when there is too little data for a CI"
        );
        assert_eq!(std::fs::read_dir(dir.join("jobs")).unwrap().count(), 16);
        assert!(!dir.join("work").exists(), "capture run dirs are deleted");
        // Real measurements: shared noise makes both libraries agree on the tiny fixture;
        // native noise gives different but overlapping token distributions.
        assert_eq!(res.cells.len(), 4);
        for c in &res.cells {
            assert_eq!(c.jobs, 4);
            let ta = c.token_agreement.as_ref().unwrap();
            assert!(ta.value > 0.9, "{c:?}");
            let hi = c.hist_intersection.as_ref().unwrap();
            assert!(hi.value > 0.0 && hi.value < 1.0, "{c:?}");
            // 4 jobs: below the bootstrap's minimum, so no interval (never a zero-width one).
            assert!(!hi.has_ci() || (hi.ci_low <= hi.value && hi.value <= hi.ci_high));
            // The same-library noise floor is measured in every cell.
            assert!(c.noise_floor.is_some() && c.gap.is_some(), "{c:?}");
        }
        // Ties are ties: ranks start at 1 and never exceed the cell count.
        let mut ranks: Vec<usize> = res.cells.iter().map(|c| c.rank).collect();
        ranks.sort_unstable();
        assert_eq!(ranks[0], 1);
        assert!(ranks.iter().all(|&r| r <= 4));
        let best = &res.cells[res.ranking[0]];
        assert_eq!(
            (best.temperature, best.top_k),
            (res.best.temperature, res.best.top_k)
        );
        assert!(
            res.best.sentence.contains("Best")
                || res.best.sentence.contains("within the noise floor")
                || res.best.sentence.contains("above the noise floor")
                || res.best.sentence.contains("No ranking"),
            "{}",
            res.best.sentence
        );
        let csv = std::fs::read_to_string(dir.join("sweep.csv")).unwrap();
        assert_eq!(csv.lines().count(), 5);
        let md = std::fs::read_to_string(dir.join("sweep.md")).unwrap();
        assert!(md.contains(&res.best.sentence));

        // Second invocation: everything reused, same result.
        let (st2, res2) =
            sweep::run_sweep(&model, &spec, &dir, None, &Execution::default()).unwrap();
        assert_eq!((st2.jobs_reused, st2.jobs_run), (16, 0));
        // Compared as JSON: an estimate without an interval holds NaN bounds (NaN != NaN).
        assert_eq!(
            serde_json::to_string(&res2.unwrap()).unwrap(),
            serde_json::to_string(&res).unwrap()
        );

        // A job result lost (crash mid-sweep): only that job runs again.
        std::fs::remove_file(sweep::job_path(&dir, &spec.jobs()[5])).unwrap();
        let (st3, _) = sweep::run_sweep(&model, &spec, &dir, None, &Execution::default()).unwrap();
        assert_eq!((st3.jobs_reused, st3.jobs_run), (15, 1));

        insta::assert_snapshot!("sweep_markdown_table", output::markdown_table(&res));

        // Shards through the CLI, then merge.
        let args = |out: &Path, shard: &str| {
            let mut c = bin();
            c.args([
                "sweep",
                "--temps",
                "0.6,0.9",
                "--topk",
                "5,50",
                "--seeds",
                "0..4",
                "--text",
                "Hello there.",
                "--max-frames",
                "6",
                "--shard",
                shard,
                "--out",
            ])
            .arg(out);
            c
        };
        let (s1, s2, merged) = (
            tmp.path().join("s1"),
            tmp.path().join("s2"),
            tmp.path().join("merged"),
        );
        let (code, out, err) = run(&mut args(&s1, "1/2"));
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("shard 1/2 done: 8 of 16 jobs"), "{out}");
        // Merging an incomplete set names what is missing and exits 2.
        let (code, _, err) = run(bin()
            .args(["sweep", "merge"])
            .arg(&s1)
            .arg("--out")
            .arg(&merged));
        assert_eq!(code, 2);
        assert!(err.contains("8 of 16 jobs missing"), "{err}");
        // Shard 2 with two worker threads (each with its own backends): same results.
        let (code, out, err) = run(args(&s2, "2/2").args(["--jobs", "2"]));
        assert_eq!(code, 0, "{out}{err}");
        assert!(err.contains("(2 workers)"), "{err}");
        let (code, out, err) = run(bin()
            .args(["sweep", "merge"])
            .arg(&s1)
            .arg(&s2)
            .arg("--out")
            .arg(&merged));
        assert_eq!(code, 0, "{out}{err}");
        let mut a = result_of(&dir);
        let mut b = result_of(&merged);
        // The model path differs between the library spec above and the CLI's; all else equal.
        a["spec"]["model_path"] = serde_json::Value::Null;
        b["spec"]["model_path"] = serde_json::Value::Null;
        assert_eq!(a, b);
        assert_eq!(
            std::fs::read_to_string(dir.join("sweep.csv")).unwrap(),
            std::fs::read_to_string(merged.join("sweep.csv")).unwrap()
        );
    }

    #[test]
    fn gate_passes_on_the_committed_config_and_writes_junit() {
        let tmp = tempfile::tempdir().unwrap();
        let junit = tmp.path().join("junit.xml");
        let md = tmp.path().join("gate.md");
        let (code, out, err) = run(bin()
            .current_dir(repo())
            .args(["gate", "--config", "fixtures/gate.toml", "--junit"])
            .arg(&junit)
            .arg("--markdown")
            .arg(&md));
        assert_eq!(code, 0, "{out}{err}");
        let passes = out.lines().filter(|l| l.starts_with("PASS ")).count();
        assert!(passes >= 10, "thresholds and baseline checks: {out}");
        assert!(!out.contains("FAIL "), "{out}");
        let x = std::fs::read_to_string(&junit).unwrap();
        assert!(x.starts_with("<?xml"));
        assert_eq!(x.matches("<testcase ").count(), passes);
        assert!(x.contains("failures=\"0\""));
        assert!(std::fs::read_to_string(&md).unwrap().contains("PASSED"));
    }

    #[test]
    fn gate_fails_with_the_check_named_when_the_candidate_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("gate.toml");
        let mut text = std::fs::read_to_string(repo().join("fixtures/gate.toml")).unwrap();
        text.push_str("\n[candidate]\nperturb_weights = 0.05\n");
        std::fs::write(&cfg, text).unwrap();
        let junit = tmp.path().join("junit.xml");
        let (code, out, err) = run(bin()
            .args(["gate", "--config"])
            .arg(&cfg)
            .arg("--junit")
            .arg(&junit));
        assert_eq!(code, 1, "{out}{err}");
        let failing: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL ")).collect();
        assert!(
            failing.iter().any(|l| l.contains("max_logit_diff")),
            "{out}"
        );
        assert!(out.contains("gate FAILED"), "{out}");
        let x = std::fs::read_to_string(&junit).unwrap();
        assert!(
            x.contains("<failure type=\"ParityRegression\" message=\"max_logit_diff"),
            "{x}"
        );

        // --update-baseline keeps the rest of the file and records the measured values.
        let before = std::fs::read_to_string(&cfg).unwrap();
        let (code, out, err) = run(bin()
            .args(["gate", "--update-baseline", "--json", "--config"])
            .arg(&cfg));
        assert_eq!(code, 1, "absolute thresholds still fail: {out}{err}");
        let after = std::fs::read_to_string(&cfg).unwrap();
        let comment = before.lines().find(|l| l.starts_with('#')).unwrap();
        assert!(after.contains(comment) && after.contains("perturb_weights = 0.05"));
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mld = report["measured"]["max_logit_diff"].as_f64().unwrap();
        let parsed: toml::Table = after.parse().unwrap();
        assert_eq!(parsed["baseline"]["max_logit_diff"].as_float(), Some(mld));
        for c in report["checks"].as_array().unwrap() {
            if c["name"].as_str().unwrap().starts_with("baseline.") {
                assert_eq!(c["passed"], true, "{c}");
            }
        }
    }
}

#[test]
fn malformed_gate_config_exits_2_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gate.toml");
    std::fs::write(
        &cfg,
        "[run]\ntexts = [\"a\"]\nseeds = [1, 2\ntemperature = 0.8\n",
    )
    .unwrap();
    let (code, out, err) = run(bin().args(["gate", "--config"]).arg(&cfg));
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("gate.toml:3:") || err.contains("gate.toml:4:"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
    // A well-formed file with a misspelt key: the line of the key.
    std::fs::write(
        &cfg,
        "[run]\ntexts = [\"a\"]\nseeds = [1]\ntemperature = 0.8\ntop_k = 5\nmax_frames = 4\n\n[thresholds]\ntoken_agreemnt_min = 0.9\n",
    )
    .unwrap();
    let (code, _, err) = run(bin().args(["gate", "--config"]).arg(&cfg));
    assert_eq!(code, 2);
    assert!(
        err.contains("gate.toml:9:") && err.contains("token_agreemnt_min"),
        "{err}"
    );
    // A bad value: negative temperature.
    std::fs::write(
        &cfg,
        "[run]\ntexts = [\"a\"]\nseeds = [1]\ntemperature = -1.0\ntop_k = 5\nmax_frames = 4\n[thresholds]\nkl_hist_max = 1.0\n",
    )
    .unwrap();
    let (code, _, err) = run(bin().args(["gate", "--config"]).arg(&cfg));
    assert_eq!(code, 2);
    assert!(
        err.contains("gate.toml:4:") && err.contains("temperature"),
        "{err}"
    );
    let (code, _, err) = run(bin().args(["gate", "--config", "/nonexistent/gate.toml"]));
    assert_eq!(code, 2);
    assert!(err.contains("--config /nonexistent/gate.toml"), "{err}");
    // A tokenizer that is not there is named before any weight is read.
    std::fs::write(
        &cfg,
        "tokenizer = \"/nonexistent/tokenizer.json\"\n[run]\ntexts = [\"a\"]\nseeds = [1]\ntemperature = 0.8\ntop_k = 5\nmax_frames = 4\n[thresholds]\nkl_hist_max = 1.0\n",
    )
    .unwrap();
    let (code, _, err) = run(bin().args(["gate", "--config"]).arg(&cfg));
    assert_eq!(code, 2);
    assert!(
        err.contains("tokenizer /nonexistent/tokenizer.json: no such file"),
        "{err}"
    );
}

#[test]
fn sweep_rejects_bad_flags_with_exit_2() {
    for (args, needle) in [
        (vec!["sweep", "--temps", "0.6,-1"], "--temps"),
        (vec!["sweep", "--seeds", "5..2"], "--seeds"),
        (vec!["sweep", "--shard", "3/2"], "--shard"),
        (
            vec!["sweep", "--texts", "/nonexistent/texts.txt"],
            "--texts",
        ),
    ] {
        let (code, _, err) = run(bin().args(&args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
