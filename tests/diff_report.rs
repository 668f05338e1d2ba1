//! Snapshot tests (insta) of the JSON, markdown and terminal outputs, the report directory and
//! the CLI. Set CSM_PARITY_WRITE_EXAMPLE=1 to (re)write reports/example-diff.
mod common;

use common::*;
use csm_parity::analysis::{compare, Diff, DiffOptions};
use csm_parity::capture::{Run, Storage};
use std::path::Path;
use std::process::Command;

/// A teacher-forced pair where B's logits drift from frame 8 on (growing with the frame), and
/// B remaps sampled tokens 1..=3 to 0 in post-processing from frame 16 on.
fn example_pair(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let spec = Spec {
        frames: 24,
        codebooks: 8,
        vocab: 32,
        mode: "teacher",
        ..Spec::default()
    };
    let a = frames(&spec);
    let mut b = frames_with(&spec, |f, c, v, x| {
        if f >= 8 {
            let u = uniform(5, f as u64, c as u64, v as u64) as f32 - 0.5;
            x + u * 0.08 * (f - 7) as f32
        } else {
            x
        }
    });
    for r in b.iter_mut().skip(16) {
        for t in r.post_tokens.iter_mut() {
            if (1..=3).contains(t) {
                *t = 0;
            }
        }
    }
    let pa = write(&root.join("torch"), &spec, &a);
    let sb = Spec {
        backend: "mlx",
        ..spec.clone()
    };
    let pb = write(&root.join("mlx"), &sb, &b);
    (pa, pb)
}

fn small_pair(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let spec = Spec {
        probs: Storage::Top(4),
        ..Spec::default()
    };
    pair(root, &spec, |b| {
        b[3].tokens[7] = (b[3].tokens[7] + 1) % 16;
        b[3].post_tokens[7] = b[3].tokens[7];
    })
}

/// Rounds floats to 9 significant digits so the snapshots do not depend on the last bits of
/// the vectorized kernels.
fn round_floats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap();
            if x != 0.0 && x.is_finite() {
                let r: f64 = format!("{x:.8e}").parse().unwrap();
                *v = serde_json::json!(r);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(round_floats),
        serde_json::Value::Object(o) => o.values_mut().for_each(round_floats),
        _ => {}
    }
}

fn redacted_json(d: &Diff) -> serde_json::Value {
    let mut v = serde_json::to_value(d).unwrap();
    round_floats(&mut v);
    v["a"]["dir"] = "[dir]".into();
    v["b"]["dir"] = "[dir]".into();
    v
}

fn diff(a: &Path, b: &Path) -> Diff {
    compare(
        &Run::open(a).unwrap(),
        &Run::open(b).unwrap(),
        &DiffOptions::default(),
    )
    .unwrap()
}

#[test]
fn snapshot_small_divergence() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = small_pair(tmp.path());
    let d = diff(&a, &b);
    insta::assert_json_snapshot!("small_divergence_json", redacted_json(&d));
    insta::assert_snapshot!(
        "small_divergence_md",
        csm_parity::report::markdown::render(&d, &[])
    );
    insta::assert_snapshot!(
        "small_divergence_terminal",
        csm_parity::report::terminal::render(&d)
    );
}

#[test]
fn snapshot_teacher_forced_drift() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = example_pair(tmp.path());
    let d = diff(&a, &b);
    assert!(d.teacher_forced);
    assert_eq!(d.divergence.stage.map(|s| s.name()), Some("model"));
    assert_eq!(d.divergence.point.unwrap().frame, 8);
    insta::assert_json_snapshot!("teacher_drift_json", redacted_json(&d));
    insta::assert_snapshot!(
        "teacher_drift_md",
        csm_parity::report::markdown::render(&d, &[])
    );
}

#[test]
fn report_directory_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = example_pair(tmp.path());
    let d = diff(&a, &b);
    let out = tmp.path().join("report");
    csm_parity::report::write_report_dir(&d, &out).unwrap();
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("DIVERGED at frame 8"));
    let fonts = csm_parity::report::plots::ensure_font().is_ok();
    if fonts {
        assert_eq!(html.matches("<svg").count(), 6, "six inline plots");
        for name in [
            "token_hist_all",
            "token_hist_codebook",
            "kl_heatmap",
            "logit_diff_heatmap",
            "agreement_map",
            "top_tokens",
        ] {
            let png = std::fs::read(out.join(format!("{name}.png"))).unwrap();
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}.png");
            let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).unwrap();
            assert!(
                svg.contains("<svg") && svg.contains("<text"),
                "{name}.svg has text"
            );
        }
    } else {
        println!("SKIPPED plot checks: no TrueType font on this machine");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.starts_with("# csm-parity diff"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["verdict"]["kind"], "diverged");
    // Rewriting replaces the directory atomically, leaving no temporaries behind.
    csm_parity::report::write_report_dir(&d, &out).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
    if std::env::var_os("CSM_PARITY_WRITE_EXAMPLE").is_some() {
        let dest = Path::new(env!("CARGO_MANIFEST_DIR")).join("reports/example-diff");
        csm_parity::report::write_report_dir(&d, &dest).unwrap();
        println!("wrote {}", dest.display());
    }
}

#[test]
fn cli_exit_codes_and_errors() {
    let exe = env!("CARGO_BIN_EXE_csm-parity");
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = small_pair(tmp.path());
    // diff DIR: torch is A, mlx is B.
    let out = Command::new(exe)
        .arg("diff")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with("DIVERGED at frame 3 codebook 7 in stage noise"),
        "{text}"
    );
    assert!(
        text.lines().count() <= 30,
        "summary fits one screen:\n{text}"
    );
    let out = Command::new(exe)
        .args(["diff", "--fail-on-divergence"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = Command::new(exe)
        .args(["diff", "--json"])
        .arg(&a)
        .arg(&a)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"]["kind"], "identical");
    assert_eq!(v["overall"]["token_agreement"], 1.0);
    // Bad input: one clear error, exit 2.
    let out = Command::new(exe)
        .arg("diff")
        .arg(tmp.path().join("nope"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("torch/ and mlx/"), "{err}");
    let out = Command::new(exe)
        .arg("diff")
        .arg(&a)
        .arg(tmp.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("run B"));
    let out = Command::new(exe)
        .args(["diff", "--atol", "-1"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// (x, y, width, height, fill) of every `<rect>` of an SVG written by plotters.
fn svg_rects(svg: &str) -> Vec<(f64, f64, f64, f64, String)> {
    let re = regex::Regex::new(
        r#"<rect x="([-\d.]+)" y="([-\d.]+)" width="([-\d.]+)" height="([-\d.]+)"[^>]*fill="(#[0-9A-Fa-f]+)""#,
    )
    .unwrap();
    re.captures_iter(svg)
        .map(|c| {
            let n = |i: usize| c[i].parse::<f64>().unwrap();
            (n(1), n(2), n(3), n(4), c[5].to_uppercase())
        })
        .collect()
}

/// (x, y, text) of every `<text>` element.
fn svg_texts(svg: &str) -> Vec<(f64, f64, String)> {
    let re =
        regex::Regex::new(r#"(?s)<text x="([-\d.]+)" y="([-\d.]+)"[^>]*>(.*?)</text>"#).unwrap();
    re.captures_iter(svg)
        .map(|c| {
            (
                c[1].parse().unwrap(),
                c[2].parse().unwrap(),
                c[3].trim().to_string(),
            )
        })
        .collect()
}

/// Legends sit right of the plotted data, never on it: in the agreement map, the histograms
/// and the top-token plot, every legend label lies right of every data mark (its own swatch
/// excepted).
#[test]
fn legends_sit_outside_the_data() {
    if csm_parity::report::plots::ensure_font().is_err() {
        println!("SKIPPED: no TrueType font on this machine");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = example_pair(tmp.path());
    let d = diff(&a, &b);
    assert!(d.divergence.point.is_some());
    let plots = csm_parity::report::plots::render_all(&d, tmp.path()).unwrap();
    for (name, labels) in [
        (
            "agreement_map",
            &[
                "tokens agree",
                "tokens differ",
                "not comparable",
                "divergence point",
            ][..],
        ),
        ("token_hist_all", &["A: torch", "B: mlx"][..]),
        ("token_hist_codebook", &["A: torch", "B: mlx"][..]),
        ("top_tokens", &["A: torch", "B: mlx"][..]),
    ] {
        let svg = &plots.iter().find(|p| p.name == name).unwrap().svg;
        let texts = svg_texts(svg);
        let rects = svg_rects(svg);
        let data: Vec<_> = rects
            .iter()
            .filter(|r| r.4 != "#FFFFFF" && r.4 != "#000000" && r.2 < 999.0)
            .collect();
        assert!(data.len() > 8, "{name}: {} data marks", data.len());
        let spots: Vec<(f64, f64)> = labels
            .iter()
            .map(|label| {
                let t = texts
                    .iter()
                    .find(|t| t.2 == *label)
                    .unwrap_or_else(|| panic!("{name}: no legend label {label:?}"));
                (t.0, t.1)
            })
            .collect();
        // Each label's swatch sits just left of it.
        let swatch = |r: &&&(f64, f64, f64, f64, String)| {
            r.2 <= 16.0
                && r.3 <= 16.0
                && spots
                    .iter()
                    .any(|(lx, ly)| r.0 > lx - 30.0 && r.0 < *lx && (r.1 - ly).abs() < 20.0)
        };
        assert_eq!(
            data.iter().filter(swatch).count(),
            labels.len() - usize::from(name == "agreement_map"),
            "{name}: one swatch per label (the divergence point has a ring)"
        );
        for (label, (lx, _)) in labels.iter().zip(&spots) {
            for r in &data {
                if swatch(&r) {
                    continue;
                }
                assert!(
                    r.0 + r.2 <= lx - 20.0,
                    "{name}: legend label {label:?} at x {lx} overlaps a data mark {r:?}"
                );
            }
        }
    }
}
