//! The run directory format: writer → reader round trips, validation errors, numpy interop.
mod common;

use common::*;
use csm_parity::capture::{FrameBuf, Row, Run, RunWriter, Storage, Timings};
use std::path::Path;
use std::process::Command;

fn read_all(run: &Run, logits: bool) -> Vec<f32> {
    let d = if logits { run.logits() } else { run.probs() }.unwrap();
    let mut buf = FrameBuf::default();
    let mut out = Vec::new();
    for f in 0..run.frames() {
        d.read_frame(f, &mut buf).unwrap();
        out.extend_from_slice(buf.values());
    }
    out
}

#[test]
fn round_trip_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = Spec::default();
    let recs = frames(&spec);
    let dir = write(&tmp.path().join("run"), &spec, &recs);
    assert!(!tmp.path().join("run.partial").exists());
    let run = Run::open(&dir).unwrap();
    assert_eq!(run.manifest().status, "complete");
    assert_eq!(run.frames(), 6);
    assert_eq!((run.codebooks(), run.vocab()), (8, 16));
    let want_tokens: Vec<i32> = recs.iter().flat_map(|r| r.tokens.clone()).collect();
    assert_eq!(run.tokens(), &want_tokens[..]);
    assert_eq!(run.post_tokens(), &want_tokens[..]);
    assert_eq!(run.step_us()[5], 1005.0);
    let want_logits: Vec<f32> = recs
        .iter()
        .flat_map(|r| r.logits.clone().unwrap())
        .collect();
    assert_eq!(read_all(&run, true), want_logits);
    let want_probs: Vec<f32> = recs.iter().flat_map(|r| r.probs.clone().unwrap()).collect();
    assert_eq!(read_all(&run, false), want_probs);
    assert_eq!(run.logits().unwrap().data_bytes(), 6 * 8 * 16 * 4);
}

#[test]
fn round_trip_f16_and_top() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = Spec {
        logits: Storage::F16,
        probs: Storage::Top(3),
        ..Spec::default()
    };
    let recs = frames(&spec);
    let dir = write(&tmp.path().join("run"), &spec, &recs);
    let run = Run::open(&dir).unwrap();
    assert_eq!(run.manifest().logits_storage, "f16");
    assert_eq!(run.manifest().probs_storage, "top:3");
    let got = read_all(&run, true);
    for (g, w) in got
        .iter()
        .zip(recs.iter().flat_map(|r| r.logits.clone().unwrap()))
    {
        assert!((g - w).abs() <= w.abs() * 1e-3 + 1e-3, "{g} vs {w}");
    }
    let probs = run.probs().unwrap();
    assert_eq!(probs.width(), 3);
    let mut buf = FrameBuf::default();
    probs.read_frame(2, &mut buf).unwrap();
    let full = recs[2].probs.as_ref().unwrap();
    let row = &full[16..32];
    let mut sorted: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    match buf.row(1) {
        Row::Top { values, indices } => {
            for k in 0..3 {
                assert_eq!(indices[k] as usize, sorted[k].0);
                assert_eq!(values[k], sorted[k].1);
            }
        }
        Row::Dense(_) => panic!("expected top storage"),
    }
}

#[test]
fn unfinished_writer_leaves_nothing_the_reader_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = Spec::default();
    let recs = frames(&spec);
    let dir = tmp.path().join("run");
    {
        let mut w =
            RunWriter::create(&dir, manifest(&spec), 8, 16, Storage::F32, Storage::None).unwrap();
        w.push(&recs[0]).unwrap();
        w.push(&recs[1]).unwrap();
        // Dropped without finish (an error path): the writer removes its partial directory.
    }
    assert!(!dir.exists() && !tmp.path().join("run.partial").exists());
    {
        let mut w =
            RunWriter::create(&dir, manifest(&spec), 8, 16, Storage::F32, Storage::None).unwrap();
        w.push(&recs[0]).unwrap();
        w.push(&recs[1]).unwrap();
        // Never finished nor dropped: as if the process died (kill -9).
        std::mem::forget(w);
    }
    assert!(!dir.exists());
    let partial = tmp.path().join("run.partial");
    assert!(partial.is_dir());
    let err = format!("{:#}", Run::open(&dir).unwrap_err());
    assert!(err.contains("not a directory"), "{err}");
    let err = format!("{:#}", Run::open(&partial).unwrap_err());
    assert!(err.contains("unfinished run"), "{err}");
    // Even renamed by hand, the manifest still says partial.
    let renamed = tmp.path().join("renamed");
    std::fs::rename(&partial, &renamed).unwrap();
    let err = format!("{:#}", Run::open(&renamed).unwrap_err());
    assert!(err.contains("status is \"partial\""), "{err}");
    // A new writer at the same place removes a stale partial run of ours…
    std::fs::rename(&renamed, &partial).unwrap();
    write(&dir, &spec, &recs);
    assert!(!partial.exists());
    Run::open(&dir).unwrap();
    // …but never a `.partial` folder that holds something else.
    let dir2 = tmp.path().join("other");
    let partial2 = tmp.path().join("other.partial");
    std::fs::create_dir(&partial2).unwrap();
    std::fs::write(partial2.join("junk"), b"x").unwrap();
    let err = RunWriter::create(&dir2, manifest(&spec), 8, 16, Storage::F32, Storage::None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a partial csm-parity run"), "{err}");
    assert!(partial2.join("junk").exists());
}

#[test]
fn writer_refuses_non_empty_dir_and_bad_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("x"), b"x").unwrap();
    let spec = Spec::default();
    let err = RunWriter::create(&dir, manifest(&spec), 8, 16, Storage::F32, Storage::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a csm-parity run"), "{err}");
    assert!(dir.join("x").exists());
    let dir2 = tmp.path().join("run2");
    let mut w =
        RunWriter::create(&dir2, manifest(&spec), 8, 16, Storage::F32, Storage::F32).unwrap();
    let mut rec = frames(&spec)[0].clone();
    rec.tokens.pop();
    assert!(w.push(&rec).unwrap_err().to_string().contains("expected 8"));
    let mut rec = frames(&spec)[0].clone();
    rec.logits = None;
    assert!(w
        .push(&rec)
        .unwrap_err()
        .to_string()
        .contains("logits missing"));
    // An empty existing directory is fine.
    let dir3 = tmp.path().join("run3");
    std::fs::create_dir(&dir3).unwrap();
    let w = RunWriter::create(&dir3, manifest(&spec), 8, 16, Storage::None, Storage::None).unwrap();
    w.finish("eos", Timings::default()).unwrap();
    assert_eq!(Run::open(&dir3).unwrap().frames(), 0);
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn reader_errors_name_file_and_expectation() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = Spec::default();
    let recs = frames(&spec);
    let fresh = |name: &str| write(&tmp.path().join(name), &spec, &recs);

    let d = fresh("a");
    edit_manifest(&d, |v| v["format_version"] = 99.into());
    let e = format!("{:#}", Run::open(&d).unwrap_err());
    assert!(
        e.contains("manifest.json") && e.contains("format_version 99"),
        "{e}"
    );

    let d = fresh("b");
    edit_manifest(&d, |v| v["frames"] = 7.into());
    let e = format!("{:#}", Run::open(&d).unwrap_err());
    assert!(
        e.contains("tokens.npy") && e.contains("[6, 8]") && e.contains("[7, 8]"),
        "{e}"
    );

    let d = fresh("c");
    edit_manifest(&d, |v| v["vocab"] = 17.into());
    let e = format!("{:#}", Run::open(&d).unwrap_err());
    assert!(e.contains("logits.npy") && e.contains("[6, 8, 17]"), "{e}");

    let d = fresh("d");
    std::fs::remove_file(d.join("probs.npy")).unwrap();
    let e = format!("{:#}", Run::open(&d).unwrap_err());
    assert!(e.contains("probs.npy: missing"), "{e}");

    let d = fresh("e");
    edit_manifest(&d, |v| v["logits_storage"] = "f16".into());
    let e = format!("{:#}", Run::open(&d).unwrap_err());
    assert!(e.contains("logits.npy: dtype <f4 but expected <f2"), "{e}");

    let d = fresh("f");
    let p = d.join("logits.npy");
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 4)
        .unwrap();
    let e = format!("{:#}", Run::open(&d).unwrap_err());
    assert!(e.contains("logits.npy") && e.contains("truncated"), "{e}");

    let d = fresh("g");
    std::fs::write(d.join("manifest.json"), "{").unwrap();
    let e = format!("{:#}", Run::open(&d).unwrap_err());
    assert!(e.contains("manifest.json: not valid JSON"), "{e}");

    let d = fresh("h");
    edit_manifest(&d, |v| v["probs_storage"] = "top:x".into());
    let e = format!("{:#}", Run::open(&d).unwrap_err());
    assert!(e.contains("probs_storage") && e.contains("top:N"), "{e}");
}

fn python_with_numpy() -> Option<Command> {
    let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/py");
    let ok = Command::new("python3")
        .env("PYTHONPATH", &deps)
        .args(["-c", "import numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        println!("SKIPPED: python3 with numpy not found in .deps/py");
        return None;
    }
    let mut c = Command::new("python3");
    c.env("PYTHONPATH", deps);
    Some(c)
}

#[test]
fn numpy_reads_our_run() {
    let Some(mut py) = python_with_numpy() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let spec = Spec {
        probs: Storage::Top(4),
        logits: Storage::F16,
        ..Spec::default()
    };
    let recs = frames(&spec);
    let dir = write(&tmp.path().join("run"), &spec, &recs);
    let script = r#"
import sys, json, numpy as np
d = sys.argv[1]
m = json.load(open(d + "/manifest.json"))
t = np.load(d + "/tokens.npy"); p = np.load(d + "/post_tokens.npy")
l = np.load(d + "/logits.npy"); s = np.load(d + "/step_us.npy")
v = np.load(d + "/probs_top_values.npy"); i = np.load(d + "/probs_top_indices.npy")
assert t.dtype == np.int32 and t.shape == (m["frames"], m["codebooks"]), (t.dtype, t.shape)
assert l.dtype == np.float16 and l.shape == (6, 8, 16), (l.dtype, l.shape)
assert s.dtype == np.float64 and s.shape == (6,)
assert v.shape == (6, 8, 4) and i.dtype == np.int32
print(int(t.sum()), float(l.astype(np.float64).sum()), float(s.sum()), int(i[2, 1, 0]))
"#;
    let out = py.arg("-c").arg(script).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let parts: Vec<&str> = text.split_whitespace().collect();
    let tsum: i64 = recs
        .iter()
        .flat_map(|r| r.tokens.iter())
        .map(|&t| t as i64)
        .sum();
    assert_eq!(parts[0].parse::<i64>().unwrap(), tsum);
    let lsum: f64 = recs
        .iter()
        .flat_map(|r| r.logits.clone().unwrap())
        .map(|x| half::f16::from_f32(x).to_f64())
        .sum();
    assert!((parts[1].parse::<f64>().unwrap() - lsum).abs() < 1e-6);
    assert_eq!(
        parts[2].parse::<f64>().unwrap(),
        (1000..1006).sum::<i32>() as f64
    );
}

#[test]
fn python_written_run_is_accepted() {
    let Some(mut py) = python_with_numpy() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pyrun");
    let manifest = serde_json::to_string(&{
        let mut m = manifest(&Spec::default());
        m.status = "complete".into();
        m.frames = 5;
        m.codebooks = 3;
        m.vocab = 10;
        m.logits_storage = "f32".into();
        m.probs_storage = "none".into();
        m.stop_reason = "eos".into();
        m
    })
    .unwrap();
    let script = r#"
import sys, os, numpy as np
d = sys.argv[1]; os.makedirs(d)
rng = np.random.default_rng(0)
np.save(d + "/tokens.npy", rng.integers(0, 10, (5, 3)).astype(np.int64))
np.save(d + "/post_tokens.npy", rng.integers(0, 10, (5, 3)).astype(np.int32))
np.save(d + "/logits.npy", rng.standard_normal((5, 3, 10)).astype(np.float32))
np.save(d + "/step_us.npy", np.arange(5, dtype=np.float64))
open(d + "/manifest.json", "w").write(sys.argv[2])
print(float(np.load(d + "/logits.npy")[4, 2, 9]))
"#;
    let out = py
        .arg("-c")
        .arg(script)
        .arg(&dir)
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: f32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let run = Run::open(&dir).unwrap();
    assert_eq!(run.tokens().len(), 15);
    let mut buf = FrameBuf::default();
    run.logits().unwrap().read_frame(4, &mut buf).unwrap();
    assert_eq!(buf.values()[29], last);
    assert!(run.probs().is_none());
}
