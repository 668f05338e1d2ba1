//! Outside ports (issue 15): the shared-noise spec and `noise` command, the manifest schema vs
//! the Rust parser, the Python capture helper (`python/csm_parity_run.py`) read by `diff`, the
//! docs example run verbatim, fed tokens, and `rescore` (with both backends).
use csm_parity::capture::schema::{manifest_schema, parse_manifest};
use csm_parity::capture::{FrameBuf, Row, Run};
use csm_parity::npy;
use csm_parity::sampling::{reference_sample, NoiseMode, SamplerSpec, SharedNoise};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_csm-parity"))
}

/// `python3` with numpy (from .deps/py) and the helper on the path; None (and a SKIPPED line)
/// when numpy is not installed.
fn python() -> Option<Command> {
    let path = format!(
        "{}:{}",
        root().join("python").display(),
        root().join(".deps/py").display()
    );
    let ok = Command::new("python3")
        .env("PYTHONPATH", &path)
        .args(["-c", "import numpy, csm_parity_run"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        println!("SKIPPED: python3 with numpy not found in .deps/py");
        return None;
    }
    let mut c = Command::new("python3");
    c.env("PYTHONPATH", path);
    Some(c)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read_f32_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let h = npy::read_header(path).unwrap();
    let mut v = vec![0f32; h.elements()];
    let f = std::fs::File::open(path).unwrap();
    npy::read_f32_at(&f, &h, 0, &mut v, &mut Vec::new()).unwrap();
    (h.shape, v)
}

#[test]
fn noise_command_python_helper_and_rust_agree_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    for (seed, frames, codebooks, vocab) in
        [(42u64, 4usize, 2usize, 4usize), (u64::MAX, 2, 3, 2051)]
    {
        let out = tmp.path().join(format!("noise-{seed}.npy"));
        let text = ok(&bin()
            .args([
                "noise",
                "--seed",
                &seed.to_string(),
                "--frames",
                &frames.to_string(),
            ])
            .args([
                "--codebooks",
                &codebooks.to_string(),
                "--vocab",
                &vocab.to_string(),
            ])
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap());
        assert!(text.contains("wrote"), "{text}");
        let (shape, vals) = read_f32_npy(&out);
        assert_eq!(shape, vec![frames, codebooks, vocab]);
        for f in 0..frames {
            let want = SharedNoise::frame_uniforms(seed, f as u64, codebooks, vocab);
            let got = &vals[f * codebooks * vocab..(f + 1) * codebooks * vocab];
            assert!(
                want.iter()
                    .zip(got)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "frame {f}"
            );
        }
        let Some(mut py) = python() else { continue };
        let script = r#"
import sys, numpy as np, csm_parity_run as cpr
path, seed, F, C, V = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
a = np.load(path)
b = np.stack([cpr.shared_frame_uniforms(seed, f, C, V) for f in range(F)])
assert a.dtype == np.float32 and b.dtype == np.float32, (a.dtype, b.dtype)
assert a.shape == b.shape, (a.shape, b.shape)
bad = np.flatnonzero(a.view(np.uint32) != b.view(np.uint32))
print(len(bad))
"#;
        let text = ok(&py
            .arg("-c")
            .arg(script)
            .arg(&out)
            .args([seed, frames as u64, codebooks as u64, vocab as u64].map(|x| x.to_string()))
            .output()
            .unwrap());
        assert_eq!(text.trim(), "0", "helper and noise differ in {text} values");
    }
    // The docs' worked example, through the helper.
    if let Some(mut py) = python() {
        let text = ok(&py
            .args([
                "-c",
                "import numpy as np, csm_parity_run as c; print(' '.join(hex(x) for x in c.shared_uniforms(42, 3, 1, 4).view(np.uint32)))",
            ])
            .output()
            .unwrap());
        assert_eq!(text.trim(), "0x3def1228 0x3f0ae97f 0x3c22bec0 0x3ea99f52");
    }
    // The extreme bit patterns, through the helper and the Rust generator: never 0, never 1.
    if let Some(mut py) = python() {
        let text = ok(&py
            .args([
                "-c",
                "import numpy as np, csm_parity_run as c; print(' '.join(hex(int(c.uniform_from_bits(x).view(np.uint32))) for x in (0, 2**64 - 1, 0xffffff0000000000)))",
            ])
            .output()
            .unwrap());
        let want: Vec<String> = [0u64, u64::MAX, 0xffff_ff00_0000_0000]
            .iter()
            .map(|&x| format!("{:#x}", SharedNoise::to_uniform(x).to_bits()))
            .collect();
        assert_eq!(want, ["0x33800000", "0x3f7fffff", "0x3f7fffff"]);
        assert_eq!(text.split_whitespace().collect::<Vec<_>>(), want);
    }
}

#[test]
fn noise_refuses_to_overwrite_what_it_did_not_write() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("noise.npy");
    let args = |p: &Path| {
        let mut c = bin();
        c.args([
            "noise",
            "--seed",
            "1",
            "--frames",
            "2",
            "--codebooks",
            "2",
            "--vocab",
            "8",
        ])
        .arg("--out")
        .arg(p);
        c
    };
    std::fs::write(&out, "my notes\n").unwrap();
    let r = args(&out).output().unwrap();
    assert_eq!(r.status.code(), Some(2));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("--out") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "my notes\n");
    // A float32 array of the same shape that is not ours (plain multiples of 1/4).
    let foreign = tmp.path().join("foreign.npy");
    let mut bytes = npy::header_bytes(npy::Dtype::F32, &[2, 2, 8]);
    for i in 0..32 {
        bytes.extend_from_slice(&((i % 4) as f32 * 0.25).to_le_bytes());
    }
    std::fs::write(&foreign, &bytes).unwrap();
    assert_eq!(args(&foreign).output().unwrap().status.code(), Some(2));
    assert_eq!(std::fs::read(&foreign).unwrap(), bytes);
    // --force replaces it; a noise file we wrote is replaced without --force.
    ok(&args(&out).arg("--force").output().unwrap());
    assert_eq!(read_f32_npy(&out).0, vec![2, 2, 8]);
    ok(&bin()
        .args([
            "noise",
            "--seed",
            "2",
            "--frames",
            "3",
            "--codebooks",
            "1",
            "--vocab",
            "5",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap());
    assert_eq!(read_f32_npy(&out).0, vec![3, 1, 5]);
    // A directory is never replaced; bad sizes name the flag.
    let r = args(tmp.path()).arg("--force").output().unwrap();
    assert_eq!(r.status.code(), Some(2));
    let r = bin()
        .args([
            "noise",
            "--seed",
            "1",
            "--frames",
            "0",
            "--codebooks",
            "1",
            "--vocab",
            "4",
        ])
        .arg("--out")
        .arg(tmp.path().join("z.npy"))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--frames"));
    assert!(!tmp.path().join("z.npy").exists());
    // No temp files left behind.
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

fn minimal_manifest() -> Value {
    json!({
        "format": "csm-parity-run", "format_version": 1, "status": "complete",
        "backend": {"name": "my-port"}, "model": {"kind": "csm"},
        "prompt": {"token_ids": [128000, 58, 15, 60]},
        "sampler": {"noise": "shared", "temperature": 0.9, "top_k": 50, "seed": 42},
        "frames": 3, "codebooks": 2, "vocab": 16,
        "logits_storage": "f32", "probs_storage": "top:4"
    })
}

/// An edit of a manifest.
type Edit = Box<dyn Fn(&mut Value)>;

/// (name, manifest) cases: every one is judged by the Rust parser and by Python's jsonschema.
fn manifest_cases() -> Vec<(String, Value)> {
    let full = {
        let mut m = csm_parity::capture::Manifest::example("torch");
        m.status = "complete".into();
        m.frames = 3;
        m.codebooks = 2;
        m.vocab = 16;
        m.logits_storage = "f16".into();
        m.probs_storage = "none".into();
        m.stop_reason = "eos".into();
        m.sampler.top_p = Some(0.9);
        m.backend.fault = Some("context-loss".into());
        m.rescore_of = Some(csm_parity::capture::RescoreOf {
            run: "runs/x".into(),
            backend: "my-port".into(),
            manifest_sha256: String::new(),
        });
        serde_json::to_value(m).unwrap()
    };
    let mut cases = vec![
        ("minimal".to_string(), minimal_manifest()),
        ("full (written by capture)".to_string(), full),
    ];
    let edits: Vec<(&str, Edit)> = vec![
        (
            "missing sampler.temperature",
            Box::new(|v| {
                v["sampler"].as_object_mut().unwrap().remove("temperature");
            }),
        ),
        (
            "missing prompt.token_ids",
            Box::new(|v| {
                v["prompt"].as_object_mut().unwrap().remove("token_ids");
            }),
        ),
        (
            "missing backend",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("backend");
            }),
        ),
        (
            "mode free",
            Box::new(|v| v["sampler"]["mode"] = json!("free")),
        ),
        (
            "mode teacher",
            Box::new(|v| v["sampler"]["mode"] = json!("teacher")),
        ),
        (
            "noise gumbel",
            Box::new(|v| v["sampler"]["noise"] = json!("gumbel")),
        ),
        (
            "kind whisper",
            Box::new(|v| v["model"]["kind"] = json!("whisper")),
        ),
        (
            "temperature string",
            Box::new(|v| v["sampler"]["temperature"] = json!("0.9")),
        ),
        (
            "temperature negative",
            Box::new(|v| v["sampler"]["temperature"] = json!(-0.1)),
        ),
        (
            "top_k 2.5",
            Box::new(|v| v["sampler"]["top_k"] = json!(2.5)),
        ),
        (
            "top_k 50.0",
            Box::new(|v| v["sampler"]["top_k"] = json!(50.0)),
        ),
        (
            "top_p 1.5",
            Box::new(|v| v["sampler"]["top_p"] = json!(1.5)),
        ),
        (
            "top_p null",
            Box::new(|v| v["sampler"]["top_p"] = Value::Null),
        ),
        (
            "seed u64 max",
            Box::new(|v| v["sampler"]["seed"] = json!(u64::MAX)),
        ),
        (
            "seed negative",
            Box::new(|v| v["sampler"]["seed"] = json!(-1)),
        ),
        (
            "token id negative",
            Box::new(|v| v["prompt"]["token_ids"] = json!([1, -5])),
        ),
        ("codebooks 0", Box::new(|v| v["codebooks"] = json!(0))),
        (
            "storage top:0",
            Box::new(|v| v["logits_storage"] = json!("top:0")),
        ),
        (
            "storage bf16",
            Box::new(|v| v["logits_storage"] = json!("bf16")),
        ),
        (
            "storage top:64",
            Box::new(|v| v["logits_storage"] = json!("top:64")),
        ),
        (
            "post remap",
            Box::new(|v| v["sampler"]["post"] = json!("remap-low:1-31")),
        ),
        (
            "post clip",
            Box::new(|v| v["sampler"]["post"] = json!("clip")),
        ),
        (
            "format other",
            Box::new(|v| v["format"] = json!("other-run")),
        ),
        ("version 2", Box::new(|v| v["format_version"] = json!(2))),
        (
            "backend name empty",
            Box::new(|v| v["backend"]["name"] = json!("")),
        ),
        (
            "unknown extra field",
            Box::new(|v| v["my_port_notes"] = json!({"codec": "mimi"})),
        ),
        (
            "timings partial",
            Box::new(|v| v["timings"] = json!({"total_ms": 3.5})),
        ),
        (
            "timings negative",
            Box::new(|v| v["timings"] = json!({"total_ms": -1})),
        ),
        (
            "speaker string",
            Box::new(|v| v["prompt"]["speaker"] = json!("0")),
        ),
        (
            "rescore_of without run",
            Box::new(|v| v["rescore_of"] = json!({"backend": "x"})),
        ),
        (
            "frames missing",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("frames");
            }),
        ),
        ("not an object", Box::new(|v| *v = json!([1, 2]))),
    ];
    for (name, edit) in edits {
        let mut v = minimal_manifest();
        edit(&mut v);
        cases.push((name.to_string(), v));
    }
    cases
}

#[test]
fn schema_and_rust_parser_agree() {
    let cases = manifest_cases();
    let rust: Vec<Result<(), String>> = cases
        .iter()
        .map(|(_, v)| {
            parse_manifest(v.clone())
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        })
        .collect();
    // Known verdicts, so neither side can drift silently.
    let expect_ok = [
        "minimal",
        "full (written by capture)",
        "mode teacher",
        "top_k 50.0",
        "top_p null",
        "seed u64 max",
        "storage top:64",
        "post remap",
        "unknown extra field",
        "timings partial",
    ];
    for ((name, _), r) in cases.iter().zip(&rust) {
        assert_eq!(
            r.is_ok(),
            expect_ok.contains(&name.as_str()),
            "{name}: Rust says {r:?}"
        );
    }
    // Error messages name the full path of the field.
    let msg = |name: &str| {
        let i = cases.iter().position(|(n, _)| n == name).unwrap();
        rust[i].clone().unwrap_err()
    };
    assert_eq!(
        msg("missing sampler.temperature"),
        "sampler.temperature: required field is missing"
    );
    assert!(msg("mode free").starts_with("sampler.mode: \"free\" is not one of"));
    assert!(msg("token id negative").starts_with("prompt.token_ids[1]:"));
    assert!(msg("timings negative").starts_with("timings.total_ms:"));
    // Python's jsonschema judges the same cases the same way.
    let Some(mut py) = python() else { return };
    let has_jsonschema = Command::new("python3")
        .args(["-c", "import jsonschema"])
        .env("PYTHONPATH", root().join(".deps/py"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_jsonschema {
        println!("SKIPPED (python part): jsonschema is not installed");
        return;
    }
    let docs: Vec<&Value> = cases.iter().map(|(_, v)| v).collect();
    let script = r#"
import sys, json, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
for doc in json.loads(sys.stdin.read()):
    errs = sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))
    print("ok" if not errs else "bad " + ".".join(str(p) for p in errs[0].absolute_path))
"#;
    use std::io::Write;
    let mut child = py
        .arg("-c")
        .arg(script)
        .arg(root().join("schema/manifest.schema.json"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&docs).unwrap().as_bytes())
        .unwrap();
    let text = ok(&child.wait_with_output().unwrap());
    let verdicts: Vec<&str> = text.lines().collect();
    assert_eq!(verdicts.len(), cases.len());
    for (((name, _), r), py) in cases.iter().zip(&rust).zip(verdicts) {
        assert_eq!(r.is_ok(), py == "ok", "{name}: Rust {r:?}, jsonschema {py}");
    }
}

/// Walks the schema: every property with a `default` is optional for the parser and takes that
/// default; every required property is refused when absent.
#[test]
fn schema_defaults_and_required_fields_match_the_parser() {
    let schema = manifest_schema();
    let parsed = serde_json::to_value(parse_manifest(minimal_manifest()).unwrap()).unwrap();
    let mut checked = 0;
    fn walk(s: &Value, path: Vec<String>, parsed: &Value, checked: &mut usize) {
        let Some(props) = s.get("properties").and_then(|p| p.as_object()) else {
            return;
        };
        let required: Vec<&str> = s
            .get("required")
            .and_then(|r| r.as_array())
            .map(|r| r.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        for (key, sub) in props {
            let mut p = path.clone();
            p.push(key.clone());
            let dotted = p.join(".");
            if required.contains(&key.as_str()) {
                assert!(
                    sub.get("default").is_none(),
                    "{dotted}: required with a default"
                );
                // Remove it from a minimal manifest (when the parent is there): refused, by path.
                let mut m = minimal_manifest();
                let parent: String = p[..p.len() - 1].iter().map(|s| format!("/{s}")).collect();
                let removed = m
                    .pointer_mut(&parent)
                    .and_then(|n| n.as_object_mut())
                    .and_then(|o| o.remove(key))
                    .is_some();
                if removed {
                    let e = format!("{:#}", parse_manifest(m).unwrap_err());
                    assert!(
                        e.starts_with(&format!("{dotted}: required")),
                        "{dotted}: {e}"
                    );
                    *checked += 1;
                }
            } else if let Some(d) = sub.get("default") {
                let got = p.iter().try_fold(parsed, |n, seg| n.get(seg));
                // Serialization skips None/empty optional fields: absent means null / [] / {}.
                let got = got.cloned().unwrap_or(Value::Null);
                let same = got == *d
                    || (d.is_null() && got.is_null())
                    || (d.as_array().is_some_and(|a| a.is_empty()) && got.is_null())
                    || (got.as_f64().is_some() && got.as_f64() == d.as_f64())
                    || (d.as_object().is_some_and(|o| o.is_empty()) && got.is_object());
                assert!(same, "{dotted}: schema default {d}, parser gives {got}");
                *checked += 1;
            } else {
                panic!("{dotted}: optional in the schema without a default");
            }
            if parsed.get(&p[0]).is_some() || required.contains(&key.as_str()) {
                walk(sub, p, parsed, checked);
            }
        }
    }
    walk(schema, vec![], &parsed, &mut checked);
    assert!(checked > 40, "only {checked} fields checked");
}

#[test]
fn capture_style_temperature_is_not_a_mismatch_with_python() {
    // An f32 0.9 widened to f64 (what capture used to write) and Python's 0.9 are one setting.
    let mut a = minimal_manifest();
    a["sampler"]["temperature"] = json!(0.9f32 as f64);
    let ma = parse_manifest(a).unwrap();
    let mb = parse_manifest(minimal_manifest()).unwrap();
    assert_eq!(
        ma.sampler.temperature.to_string(),
        mb.sampler.temperature.to_string()
    );
}

fn write_helper_run(py: &mut Command, dir: &Path, variant: &str) {
    let script = r#"
import sys, numpy as np, csm_parity_run as cpr
d, variant = sys.argv[1], sys.argv[2]
C, V, seed = 3, 16, 9
rng = np.random.default_rng(1)
run = cpr.open_run(d, codebooks=C, vocab=V, backend="py-" + variant, model_kind="csm",
                   prompt_ids=[128000, 58, 15, 60], temperature=0.8, top_k=5, seed=seed,
                   noise="shared", probs="f16")
for f in range(5):
    logits = (2 * rng.standard_normal((C, V))).astype(np.float32)
    if variant == "bumped" and f >= 3:
        logits[1, 2] += 0.5
    u = cpr.shared_frame_uniforms(seed, f, C, V)
    tok, probs = cpr.reference_sample(logits, 0.8, 5, u)
    fed = tok.copy()
    if variant == "forced":
        fed[0] = (tok[0] + 1) % V
    run.append(tok, fed_tokens=fed, logits=logits, probs=probs, step_us=100.0 + f)
run.close("max_frames")
"#;
    ok(&py
        .arg("-c")
        .arg(script)
        .arg(dir)
        .arg(variant)
        .output()
        .unwrap());
}

#[test]
fn python_helper_runs_are_read_and_diffed() {
    let Some(_) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, forced) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("forced"),
    );
    write_helper_run(&mut python().unwrap(), &a, "plain");
    write_helper_run(&mut python().unwrap(), &b, "bumped");
    write_helper_run(&mut python().unwrap(), &forced, "forced");
    assert!(!tmp.path().join("a.partial").exists());
    let ra = Run::open(&a).unwrap();
    assert_eq!((ra.frames(), ra.codebooks(), ra.vocab()), (5, 3, 16));
    assert_eq!(ra.manifest().tool_version, "csm_parity_run.py 0.1.0");
    assert_eq!(ra.manifest().backend.device, "unknown");
    assert!(!ra.has_fed_tokens(), "fed = sampled: no fed_tokens.npy");
    assert!(!a.join("fed_tokens.npy").exists());
    assert_eq!(ra.step_us()[2], 102.0);
    // The helper's sampler and shared noise reproduce Rust's reference sampler.
    let spec = SamplerSpec::new(0.8, 5, NoiseMode::Shared, 9).unwrap();
    let mut buf = FrameBuf::default();
    for f in 0..5 {
        ra.logits().unwrap().read_frame(f, &mut buf).unwrap();
        let u = SharedNoise::frame_uniforms(9, f as u64, 3, 16);
        for c in 0..3 {
            let Row::Dense(row) = buf.row(c) else {
                panic!()
            };
            let (tok, _) = reference_sample(row, &spec, &u[c * 16..(c + 1) * 16]);
            assert_eq!(tok, ra.token(f, c), "frame {f} codebook {c}");
        }
    }
    // Fed tokens that differ are kept beside the sampled ones.
    let rf = Run::open(&forced).unwrap();
    assert!(rf.has_fed_tokens());
    for f in 0..5 {
        assert_eq!(rf.fed_tokens()[f * 3], (rf.token(f, 0) + 1) % 16);
        assert_eq!(rf.fed_tokens()[f * 3 + 1], rf.token(f, 1));
    }
    assert_eq!(ra.tokens(), rf.tokens());
    // `csm-parity diff` reads them: identical to itself, a planted logit change found at frame 3.
    let text = ok(&bin().arg("diff").arg(&a).arg(&a).output().unwrap());
    assert!(text.to_lowercase().contains("identical"), "{text}");
    let out = bin()
        .args(["diff", "--json"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        v["divergence"]["first_logits_breach"]["frame"],
        json!(3),
        "{}",
        v["divergence"]
    );
    assert_eq!(v["divergence"]["first_logits_breach"]["codebook"], json!(1));
}

#[test]
fn helper_refuses_what_it_did_not_write_and_cleans_up_on_error() {
    let Some(mut py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("run");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("notes.txt"), "keep").unwrap();
    let script = r#"
import sys, os, csm_parity_run as cpr
d = sys.argv[1]
kw = dict(codebooks=1, vocab=4, backend="x", model_kind="llama", prompt_ids=[1],
          temperature=1.0, top_k=0, seed=0, noise="shared")
try:
    cpr.open_run(d, **kw); print("opened")
except cpr.RunError as e:
    print("refused", "not an empty directory" in str(e))
try:
    with cpr.open_run(d + "2", **kw) as run:
        run.append([3], logits=[[0, 1, 2, 3]], probs=[[0.25] * 4])
        run.append([9], logits=[[0, 1, 2, 3]], probs=[[0.25] * 4])
except cpr.RunError as e:
    print("bad token", "outside the vocab" in str(e), os.path.exists(d + "2.partial"), os.path.exists(d + "2"))
try:
    cpr.open_run(d + "3", **dict(kw, noise="gumbel"))
except cpr.RunError as e:
    print("bad noise", "gumbel" in str(e))
"#;
    let text = ok(&py.arg("-c").arg(script).arg(&d).output().unwrap());
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "refused True",
            "bad token True False False",
            "bad noise True"
        ],
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("notes.txt")).unwrap(),
        "keep"
    );
}

/// The example of docs/outside-ports.md, run verbatim.
#[test]
fn docs_example_runs_verbatim() {
    let Some(mut py) = python() else { return };
    let doc = std::fs::read_to_string(root().join("docs/outside-ports.md")).unwrap();
    let start = doc
        .find("<!-- example:start -->")
        .expect("example start marker");
    let end = doc
        .find("<!-- example:end -->")
        .expect("example end marker");
    let block = &doc[start..end];
    let code = block
        .split_once("```python\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(code, _)| code)
        .expect("a ```python block between the markers");
    let tmp = tempfile::tempdir().unwrap();
    let text = ok(&py
        .arg("-c")
        .arg(code)
        .current_dir(tmp.path())
        .output()
        .unwrap());
    assert_eq!(text.trim(), "runs/my-port");
    let run = Run::open(&tmp.path().join("runs/my-port")).unwrap();
    assert_eq!((run.frames(), run.codebooks(), run.vocab()), (6, 1, 32));
    assert_eq!(run.manifest().model.kind, "llama");
    assert_eq!(run.manifest().stop_reason, "max_tokens");
    let spec = SamplerSpec::new(0.9, 8, NoiseMode::Shared, 42).unwrap();
    let mut buf = FrameBuf::default();
    for f in 0..6 {
        run.logits().unwrap().read_frame(f, &mut buf).unwrap();
        let Row::Dense(row) = buf.row(0) else {
            panic!()
        };
        let u = SharedNoise::frame_uniforms(42, f as u64, 1, 32);
        assert_eq!(
            reference_sample(row, &spec, &u).0,
            run.token(f, 0),
            "frame {f}"
        );
    }
}

/// `rescore`: capture with MLX alone, re-score the MLX run with torch, diff: every step is
/// comparable and the logits agree within tolerance.
#[cfg(all(feature = "mlx", feature = "torch"))]
#[test]
fn rescore_of_an_mlx_capture_with_torch_is_comparable_at_every_step() {
    use csm_parity::analysis::{compare, DiffOptions};
    let tmp = tempfile::tempdir().unwrap();
    let cap = tmp.path().join("cap");
    ok(&bin()
        .args([
            "capture",
            "--text",
            "Hello there.",
            "--backend",
            "mlx",
            "--max-frames",
            "8",
        ])
        .args([
            "--temp", "0.9", "--top-k", "20", "--seed", "5", "--json", "--out",
        ])
        .arg(&cap)
        .output()
        .unwrap());
    let run = cap.join("mlx");
    let refd = tmp.path().join("ref");
    let text = ok(&bin()
        .arg("rescore")
        .arg(&run)
        .args(["--backend", "torch", "--out"])
        .arg(&refd)
        .output()
        .unwrap());
    assert!(text.contains("rescored"), "{text}");
    let (a, b) = (Run::open(&refd).unwrap(), Run::open(&run).unwrap());
    assert_eq!(a.frames(), b.frames());
    let ro = a.manifest().rescore_of.as_ref().expect("rescore_of");
    assert_eq!(ro.backend, "mlx");
    assert_eq!(ro.manifest_sha256.len(), 64);
    assert_eq!(a.manifest().sampler.mode, "teacher");
    assert_eq!(
        a.fed_tokens(),
        b.fed_tokens(),
        "the reference was fed the run's tokens"
    );
    let d = compare(&a, &b, &DiffOptions::default()).unwrap();
    assert_eq!(d.steps_comparable, d.steps_total, "{}", d.comparability);
    let logits = d.overall.logits.as_ref().expect("logits compared");
    assert_eq!(logits.breaches, 0, "max |Δ| {}", logits.max_abs.max);
    assert!(
        d.warnings.iter().all(|w| !w.contains("temperature")),
        "{:?}",
        d.warnings
    );
    // Never overwrites: a second rescore into the same --out is refused.
    let r = bin()
        .arg("rescore")
        .arg(&run)
        .arg("--out")
        .arg(&refd)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("not empty"));
}

/// A teacher-forced capture keeps what the candidate was fed beside what it sampled.
#[cfg(all(feature = "mlx", feature = "torch"))]
#[test]
fn teacher_capture_records_fed_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let cap = tmp.path().join("cap");
    ok(&bin()
        .args([
            "capture",
            "--text",
            "Hi.",
            "--mode",
            "teacher",
            "--max-frames",
            "6",
        ])
        .args(["--noise", "native", "--json", "--out"])
        .arg(&cap)
        .output()
        .unwrap());
    let t = Run::open(&cap.join("torch")).unwrap();
    let m = Run::open(&cap.join("mlx")).unwrap();
    assert!(!t.has_fed_tokens());
    let n = m.frames() * m.codebooks();
    assert_eq!(
        &m.fed_tokens()[..n],
        &t.tokens()[..n],
        "mlx was fed torch's tokens"
    );
    assert_eq!(m.has_fed_tokens(), m.tokens() != m.fed_tokens());
    assert!(
        m.has_fed_tokens(),
        "native noise: the samples differ from what was fed"
    );
}

/// The independent numpy Llama port in tests/ports/numpy_llama.py, run on the bundled tiny
/// Llama: with shared noise it is token-identical to the torch capture; re-scored, its own-noise
/// run is comparable at every step; planted bugs are found at the right step and stage.
#[cfg(all(feature = "mlx", feature = "torch"))]
#[test]
fn numpy_llama_port_is_faithful_and_its_planted_bugs_are_located() {
    use csm_parity::analysis::divergence::Stage;
    use csm_parity::analysis::{compare, DiffOptions};
    let Some(_) = python() else { return };
    let model = csm_parity::model::fixture::ensure_llama_fixture().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let port = |name: &str, ids: &str, seed: &str, noise: &str, bug: &str| -> PathBuf {
        let out = tmp.path().join(name);
        ok(&python()
            .unwrap()
            .arg(root().join("tests/ports/numpy_llama.py"))
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .args([
                "--prompt-ids",
                ids,
                "--tokens",
                "12",
                "--temp",
                "0.9",
                "--top-k",
                "5",
            ])
            .args(["--seed", seed, "--noise", noise, "--bug", bug])
            .output()
            .unwrap());
        out
    };
    let rescored = |run: &Path| -> PathBuf {
        let out = tmp.path().join(format!(
            "{}-ref",
            run.file_name().unwrap().to_string_lossy()
        ));
        ok(&bin()
            .arg("rescore")
            .arg(run)
            .arg("--model")
            .arg(&model)
            .args(["--backend", "torch", "--out"])
            .arg(&out)
            .output()
            .unwrap());
        out
    };
    let diff = |a: &Path, b: &Path| {
        compare(
            &Run::open(a).unwrap(),
            &Run::open(b).unwrap(),
            &DiffOptions::default(),
        )
        .unwrap()
    };

    // 1. Faithful port, shared noise: token-identical to the torch pipeline's own capture.
    let cap = tmp.path().join("cap");
    ok(&bin()
        .args([
            "capture",
            "--model-kind",
            "llama",
            "--text",
            "the cat sat",
            "--backend",
            "torch",
        ])
        .args([
            "--max-tokens",
            "12",
            "--temp",
            "0.9",
            "--top-k",
            "5",
            "--seed",
            "3",
            "--json",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&cap)
        .output()
        .unwrap());
    let torch = Run::open(&cap.join("torch")).unwrap();
    let ids: Vec<String> = torch
        .manifest()
        .prompt
        .token_ids
        .iter()
        .map(|i| i.to_string())
        .collect();
    let clean = port("clean", &ids.join(","), "3", "shared", "none");
    let rc = Run::open(&clean).unwrap();
    assert_eq!(
        rc.tokens(),
        torch.tokens(),
        "a faithful port with shared noise is token-identical"
    );
    let d = diff(&cap.join("torch"), &clean);
    assert_eq!(d.overall.logits.as_ref().unwrap().breaches, 0);
    assert_eq!(d.steps_comparable, d.steps_total);

    // 2. Faithful port with its own RNG: tokens differ, but after the re-score every step is
    //    comparable and no logit breaches.
    let fixed = "261,40,41,42";
    let native = port("native", fixed, "3", "native", "none");
    let d = diff(&rescored(&native), &native);
    assert_eq!(d.steps_comparable, d.steps_total, "{}", d.comparability);
    assert_eq!(d.overall.logits.as_ref().unwrap().breaches, 0);
    assert_ne!(d.verdict.stage, Some(Stage::Model));
    assert_ne!(d.verdict.stage, Some(Stage::Sampler));

    // 3. Context loss: stage model at frame 1 (the first step that only sees the new token),
    //    even with the port's own noise.
    let lost = port("context-loss", fixed, "3", "native", "context-loss");
    let d = diff(&rescored(&lost), &lost);
    assert_eq!(d.verdict.stage, Some(Stage::Model), "{}", d.verdict.line);
    let p = d.verdict.point.unwrap();
    assert_eq!((p.frame, p.codebook), (1, 0), "{}", d.verdict.line);

    // 4. Top-k that drops ties: stage sampler at the first step where the k-th value is tied
    //    (where the supports differ), found from the reference's own logits.
    //    (Seed 1: the port's own noise leads it to a tie within 12 tokens.)
    let ties = port("topk-ties", fixed, "1", "native", "topk-drop-ties");
    let refd = rescored(&ties);
    let reference = Run::open(&refd).unwrap();
    let mut buf = FrameBuf::default();
    let first_tie = (0..reference.frames()).find(|&f| {
        reference.logits().unwrap().read_frame(f, &mut buf).unwrap();
        let Row::Dense(row) = buf.row(0) else {
            panic!()
        };
        let mut s = row.to_vec();
        s.sort_by(|a, b| b.total_cmp(a));
        s[4] == s[5]
    });
    let first_tie = first_tie.expect("the fixture's twin tokens tie at the 5th value somewhere");
    let d = diff(&refd, &ties);
    assert_eq!(d.verdict.stage, Some(Stage::Sampler), "{}", d.verdict.line);
    let p = d.verdict.point.unwrap();
    assert_eq!((p.frame, p.codebook), (first_tie, 0), "{}", d.verdict.line);

    // 5. Llama-3 RoPE scaling forgotten: stage model from the first step.
    //    (A 12-token prompt: the missing scaling only bends low frequencies, so it shows more
    //    the longer the context.)
    let long = "261,40,41,42,43,44,45,46,47,48,49,50";
    let rope = port("no-rope-scaling", long, "3", "shared", "no-rope-scaling");
    let d = diff(&rescored(&rope), &rope);
    assert_eq!(d.verdict.stage, Some(Stage::Model), "{}", d.verdict.line);
    assert_eq!(d.verdict.point.unwrap().frame, 0, "{}", d.verdict.line);
}

/// `gate --candidate-cmd` with the numpy Llama port: a faithful port passes; a port with
/// context loss fails, the failing job is named with its first divergence, and its runs are
/// kept for `diff`.
#[cfg(all(feature = "mlx", feature = "torch"))]
#[test]
fn gate_accepts_an_outside_candidate_command() {
    let Some(_) = python() else { return };
    let model = csm_parity::model::fixture::ensure_llama_fixture().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("gate.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\n[run]\ntexts = [\"the cat sat\"]\nseeds = [3, 4]\ntemperature = 0.9\n\
             top_k = 5\nmax_frames = 8\n\n[thresholds]\ntoken_agreement_min = 1.0\n\
             max_logit_diff_max = 0.001\ndivergence_frame_min = 8\nhist_intersection_min = 0.5\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let port = root().join("tests/ports/numpy_llama.py");
    let template = |noise: &str, bug: &str| {
        format!(
            "python3 {} --model {{model}} --out {{out}} --prompt-ids {{prompt_ids}} --tokens {{frames}} \
             --temp {{temp}} --top-k {{top_k}} --seed {{seed}} --noise {noise} --bug {bug}",
            port.display()
        )
    };
    let gate = |cmd: String, keep: &Path| {
        let mut c = bin();
        c.env(
            "PYTHONPATH",
            format!(
                "{}:{}",
                root().join("python").display(),
                root().join(".deps/py").display()
            ),
        )
        .arg("gate")
        .arg("--config")
        .arg(&config)
        .arg("--candidate-cmd")
        .arg(cmd)
        .arg("--keep-failed")
        .arg(keep)
        .output()
        .unwrap()
    };
    let keep = tmp.path().join("failures");
    let out = gate(template("shared", "none"), &keep);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("gate PASSED"), "{text}");
    assert!(
        text.contains("seed 4") && text.contains("no divergence"),
        "{text}"
    );
    assert!(
        !text.contains("hist_intersection"),
        "not applicable to outside pairs: {text}"
    );
    assert!(!keep.exists());
    // Context loss with the port's own noise: re-scored, located at frame 1, stage model.
    let out = gate(template("native", "context-loss"), &keep);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("gate FAILED"), "{text}");
    assert!(
        text.contains("seed 3 temp 0.9 top-k 5 (native noise, re-scored): first divergence frame 1 codebook 0 (stage model)"),
        "{text}"
    );
    let kept = keep.join("text0-seed3");
    assert!(
        text.contains(&format!(
            "kept: csm-parity diff {}",
            kept.join("rescored").display()
        )),
        "{text}"
    );
    Run::open(&kept.join("rescored")).unwrap();
    Run::open(&kept.join("candidate")).unwrap();
    // A bad placeholder is a usage error naming the flag.
    let out = gate(
        "python3 port.py --out {outdir}".into(),
        &tmp.path().join("k2"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("{outdir}"));
}

/// `python3` with numpy and MLX (from .deps/py) and the helper on the path; None (and a SKIPPED
/// line) when MLX is not installed.
#[cfg(all(feature = "mlx", feature = "torch"))]
fn python_mlx() -> Option<Command> {
    let mut c = python()?;
    let ok = c
        .args(["-c", "import mlx.core"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        println!("SKIPPED: python3 with mlx not found in .deps/py");
        return None;
    }
    python()
}

/// PYTHONPATH for a candidate command run by the binary.
#[cfg(all(feature = "mlx", feature = "torch"))]
fn port_pythonpath() -> String {
    format!(
        "{}:{}",
        root().join("python").display(),
        root().join(".deps/py").display()
    )
}

/// The first step (frame, codebook) at which the k-th and (k+1)-th largest logits of `run`
/// tie exactly: where a top-k that keeps exactly k entries changes the support.
#[cfg(all(feature = "mlx", feature = "torch"))]
fn first_kth_tie(run: &Run, k: usize) -> Option<(usize, usize)> {
    let mut buf = FrameBuf::default();
    let logits = run.logits().unwrap();
    (0..run.frames()).find_map(|f| {
        logits.read_frame(f, &mut buf).unwrap();
        (0..run.codebooks()).find_map(|c| {
            let Row::Dense(row) = buf.row(c) else {
                panic!("dense logits expected")
            };
            let mut s = row.to_vec();
            s.sort_by(|a, b| b.total_cmp(a));
            (s[k - 1] == s[k]).then_some((f, c))
        })
    })
}

/// The Python MLX port of the tiny CSM in tests/ports/mlx_csm.py (backbone + depth decoder,
/// written from the architecture notes, recording with the helper): with the shared noise it is
/// token-identical to `capture --backend torch`; with its own noise, re-scored, every step is
/// comparable and nothing breaches; each planted bug is located at the right frame, codebook
/// and stage — with the shared noise (diffed against the capture) and with its own noise
/// (diffed against the re-score).
#[cfg(all(feature = "mlx", feature = "torch"))]
#[test]
fn mlx_csm_port_is_faithful_and_its_planted_bugs_are_located() {
    use csm_parity::analysis::divergence::Stage;
    use csm_parity::analysis::{compare, Diff, DiffOptions};
    let Some(_) = python_mlx() else { return };
    let model = csm_parity::model::fixture::ensure_default_fixture().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (frames, temp, top_k) = ("6", "0.9", 5usize);
    // The reference: torch with the shared noise, f32 logits and probs.
    let capture = |seed: &str| -> PathBuf {
        let cap = tmp.path().join(format!("cap-{seed}"));
        ok(&bin()
            .args(["capture", "--text", "Hello there.", "--backend", "torch"])
            .args(["--max-frames", frames, "--temp", temp, "--top-k", "5"])
            .args(["--seed", seed, "--no-audio", "--json"])
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(&cap)
            .output()
            .unwrap());
        cap.join("torch")
    };
    let torch_dir = capture("3");
    let torch = Run::open(&torch_dir).unwrap();
    let ids: Vec<String> = torch
        .manifest()
        .prompt
        .token_ids
        .iter()
        .map(|i| i.to_string())
        .collect();
    let ids = ids.join(",");
    let port_seed = |name: &str, seed: &str, noise: &str, bug: &str| -> PathBuf {
        let out = tmp.path().join(name);
        ok(&python_mlx()
            .unwrap()
            .arg(root().join("tests/ports/mlx_csm.py"))
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .args(["--prompt-ids", &ids, "--frames", frames, "--temp", temp])
            .args([
                "--top-k", "5", "--seed", seed, "--noise", noise, "--bug", bug,
            ])
            .output()
            .unwrap());
        out
    };
    let port = |name: &str, noise: &str, bug: &str| port_seed(name, "3", noise, bug);
    let rescored = |run: &Path| -> PathBuf {
        let out = tmp.path().join(format!(
            "{}-ref",
            run.file_name().unwrap().to_string_lossy()
        ));
        ok(&bin()
            .arg("rescore")
            .arg(run)
            .arg("--model")
            .arg(&model)
            .args(["--backend", "torch", "--out"])
            .arg(&out)
            .output()
            .unwrap());
        out
    };
    let diff = |a: &Path, b: &Path| -> Diff {
        compare(
            &Run::open(a).unwrap(),
            &Run::open(b).unwrap(),
            &DiffOptions::default(),
        )
        .unwrap()
    };
    let located = |d: &Diff| {
        let p = d.verdict.point.expect("a divergence");
        (p.frame, p.codebook, d.verdict.stage)
    };

    // 1. Faithful, shared noise: token-identical to torch, every logit within tolerance.
    let clean = port("clean", "shared", "none");
    let rc = Run::open(&clean).unwrap();
    assert_eq!(rc.frames(), torch.frames());
    assert_eq!(
        rc.tokens(),
        torch.tokens(),
        "a faithful port with shared noise is token-identical"
    );
    let d = diff(&torch_dir, &clean);
    assert_eq!(d.steps_comparable, d.steps_total);
    let l = d.overall.logits.as_ref().unwrap();
    assert_eq!(l.breaches, 0);
    assert!(l.max_abs.max < 1e-3, "{}", l.max_abs.max);
    assert!(d.verdict.point.is_none(), "{}", d.verdict.line);

    // 2. Faithful, own noise: tokens differ, but re-scored every step is comparable and no
    //    model or sampler stage is blamed.
    let native = port("native", "native", "none");
    let d = diff(&rescored(&native), &native);
    assert_eq!(d.steps_comparable, d.steps_total, "{}", d.comparability);
    assert_eq!(d.overall.logits.as_ref().unwrap().breaches, 0);
    assert_ne!(d.verdict.stage, Some(Stage::Model), "{}", d.verdict.line);
    assert_ne!(d.verdict.stage, Some(Stage::Sampler), "{}", d.verdict.line);

    // 3. Context loss (the backbone sees only the newest frame): stage model at frame 1,
    //    codebook 0 — the first step computed without the context.
    for noise in ["shared", "native"] {
        let run = port(&format!("context-loss-{noise}"), noise, "context-loss");
        let reference = if noise == "shared" {
            torch_dir.clone()
        } else {
            rescored(&run)
        };
        let d = diff(&reference, &run);
        assert_eq!(
            located(&d),
            (1, 0, Some(Stage::Model)),
            "{noise}: {}",
            d.verdict.line
        );
    }

    // 4. Llama-3 RoPE scaling forgotten: stage model at frame 0, codebook 0 (the backbone's
    //    first logits already see rotated positions).
    for noise in ["shared", "native"] {
        let run = port(
            &format!("no-rope-scaling-{noise}"),
            noise,
            "no-rope-scaling",
        );
        let reference = if noise == "shared" {
            torch_dir.clone()
        } else {
            rescored(&run)
        };
        let d = diff(&reference, &run);
        assert_eq!(
            located(&d),
            (0, 0, Some(Stage::Model)),
            "{noise}: {}",
            d.verdict.line
        );
    }

    // 5. Top-k that drops ties: stage sampler at the first step where the 5th and 6th largest
    //    logits tie in the reference (the supports differ there), found from the reference's
    //    own logits (the fixture's twin tokens tie exactly). Seed 2 with the shared noise and
    //    seed 3 with the port's own noise reach such a tie within 6 frames.
    for (noise, seed) in [("shared", "2"), ("native", "3")] {
        let run = port_seed(&format!("topk-ties-{noise}"), seed, noise, "topk-drop-ties");
        let reference = if noise == "shared" {
            capture(seed)
        } else {
            rescored(&run)
        };
        let tie = first_kth_tie(&Run::open(&reference).unwrap(), top_k)
            .expect("the fixture's twin tokens tie at the 5th value within 6 frames");
        let d = diff(&reference, &run);
        assert_eq!(
            located(&d),
            (tie.0, tie.1, Some(Stage::Sampler)),
            "{noise}: {}",
            d.verdict.line
        );
    }
}

/// `gate --candidate-cmd` with the MLX CSM port: faithful passes; missing RoPE scaling fails at
/// frame 0, stage model.
#[cfg(all(feature = "mlx", feature = "torch"))]
#[test]
fn gate_accepts_the_mlx_csm_port() {
    let Some(_) = python_mlx() else { return };
    let model = csm_parity::model::fixture::ensure_default_fixture().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("gate.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\n[run]\ntexts = [\"Hello there.\"]\nseeds = [1, 2]\ntemperature = 0.9\n\
             top_k = 5\nmax_frames = 4\n\n[thresholds]\ntoken_agreement_min = 1.0\n\
             max_logit_diff_max = 0.001\ndivergence_frame_min = 4\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let template = |noise: &str, bug: &str| {
        format!(
            "python3 {} --model {{model}} --out {{out}} --prompt-ids {{prompt_ids}} --frames {{frames}} \
             --temp {{temp}} --top-k {{top_k}} --seed {{seed}} --noise {noise} --bug {bug}",
            root().join("tests/ports/mlx_csm.py").display()
        )
    };
    let gate = |cmd: String, keep: &Path| {
        bin()
            .env("PYTHONPATH", port_pythonpath())
            .arg("gate")
            .arg("--config")
            .arg(&config)
            .arg("--candidate-cmd")
            .arg(cmd)
            .arg("--keep-failed")
            .arg(keep)
            .output()
            .unwrap()
    };
    let keep = tmp.path().join("failures");
    let out = gate(template("shared", "none"), &keep);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("gate PASSED"), "{text}");
    assert!(!keep.exists());
    let out = gate(template("native", "no-rope-scaling"), &keep);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("seed 2 temp 0.9 top-k 5 (native noise, re-scored): first divergence frame 0 codebook 0 (stage model)"),
        "{text}"
    );
    Run::open(&keep.join("text0-seed2").join("candidate")).unwrap();
}

/// `sweep --candidate-cmd` / `--candidate-runs` with the MLX CSM port: the faithful port (shared
/// noise) agrees on every token of every job; with context loss and its own noise every job is
/// re-scored and diverges at frame 1, stage model; finished runs are swept from a directory; a
/// failing command names its job.
#[cfg(all(feature = "mlx", feature = "torch"))]
#[test]
fn sweep_accepts_an_outside_candidate() {
    let Some(_) = python_mlx() else { return };
    let model = csm_parity::model::fixture::ensure_default_fixture().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let port = root().join("tests/ports/mlx_csm.py");
    let template = |noise: &str, bug: &str| {
        format!(
            "python3 {} --model {{model}} --out {{out}} --prompt-ids {{prompt_ids}} --frames {{frames}} \
             --temp {{temp}} --top-k {{top_k}} --seed {{seed}} --noise {noise} --bug {bug}",
            port.display()
        )
    };
    let sweep = |out: &Path, candidate: &[&str]| {
        bin()
            .env("PYTHONPATH", port_pythonpath())
            .args(["sweep", "--temps", "0.9", "--topk", "5", "--seeds", "2"])
            .args(["--text", "Hello there.", "--max-frames", "4", "--json"])
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(out)
            .args(candidate)
            .output()
            .unwrap()
    };
    let jobs = |out: &Path| -> Vec<Value> {
        ["t0.9_k5_x0_s0", "t0.9_k5_x0_s1"]
            .iter()
            .map(|k| {
                serde_json::from_slice(&std::fs::read(out.join(format!("jobs/{k}.json"))).unwrap())
                    .unwrap()
            })
            .collect()
    };

    // Faithful port, shared noise: every token agrees, nothing diverges.
    let clean = tmp.path().join("clean");
    let cmd = template("shared", "none");
    let res: Value = serde_json::from_str(&ok(&sweep(&clean, &["--candidate-cmd", &cmd]))).unwrap();
    let cell = &res["result"]["cells"][0];
    assert_eq!(cell["jobs"], 2, "{cell}");
    assert_eq!(cell["token_agreement"]["value"], 1.0, "{cell}");
    assert_eq!(cell["diverged_jobs"], 0, "{cell}");
    for j in jobs(&clean) {
        assert_eq!(j["candidate"]["noise"], "shared", "{j}");
        assert_eq!(j["candidate"]["rescored"], false, "{j}");
        assert!(
            j["shared"]["max_logit_diff"].as_f64().unwrap() < 1e-3,
            "{j}"
        );
        assert!(j["native"]["hist_intersection"].is_number(), "{j}");
    }
    let spec: Value =
        serde_json::from_slice(&std::fs::read(clean.join("spec.json")).unwrap()).unwrap();
    assert_eq!(spec["candidate"], format!("cmd: {cmd}"));

    // Context loss with the port's own noise: re-scored, each job diverges at frame 1, stage
    // model; token agreement is not measured for re-scored jobs.
    let lost = tmp.path().join("lost");
    let res: Value = serde_json::from_str(&ok(&sweep(
        &lost,
        &["--candidate-cmd", &template("native", "context-loss")],
    )))
    .unwrap();
    let cell = &res["result"]["cells"][0];
    assert_eq!(cell["diverged_jobs"], 2, "{cell}");
    assert!(cell["token_agreement"].is_null(), "{cell}");
    for j in jobs(&lost) {
        assert_eq!(j["candidate"]["rescored"], true, "{j}");
        assert_eq!(j["shared"]["divergence"], json!([1, 0]), "{j}");
        assert_eq!(j["shared"]["divergence_stage"], "model", "{j}");
    }

    // Finished runs in a directory, one per job key (here: the RoPE bug, shared noise).
    let runs = tmp.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    let ids: Vec<String> = {
        let cap = tmp.path().join("cap");
        ok(&bin()
            .args(["capture", "--text", "Hello there.", "--backend", "torch"])
            .args(["--max-frames", "1", "--no-audio", "--json"])
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(&cap)
            .output()
            .unwrap());
        Run::open(&cap.join("torch"))
            .unwrap()
            .manifest()
            .prompt
            .token_ids
            .iter()
            .map(|i| i.to_string())
            .collect()
    };
    for seed in ["0", "1"] {
        ok(&python_mlx()
            .unwrap()
            .arg(&port)
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(runs.join(format!("t0.9_k5_x0_s{seed}")))
            .args([
                "--prompt-ids",
                &ids.join(","),
                "--frames",
                "4",
                "--temp",
                "0.9",
            ])
            .args(["--top-k", "5", "--seed", seed, "--noise", "shared"])
            .args(["--bug", "no-rope-scaling"])
            .output()
            .unwrap());
    }
    let from_runs = tmp.path().join("from-runs");
    let res: Value = serde_json::from_str(&ok(&sweep(
        &from_runs,
        &["--candidate-runs", runs.to_str().unwrap()],
    )))
    .unwrap();
    assert_eq!(res["result"]["cells"][0]["diverged_jobs"], 2);
    for j in jobs(&from_runs) {
        assert_eq!(j["shared"]["divergence"], json!([0, 0]), "{j}");
        assert_eq!(j["shared"]["divergence_stage"], "model", "{j}");
    }
    // A job whose run is missing is named.
    std::fs::remove_dir_all(runs.join("t0.9_k5_x0_s1")).unwrap();
    let out = sweep(
        &tmp.path().join("missing"),
        &["--candidate-runs", runs.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("t0.9_k5_x0_s1") && err.contains("seed 1, temp 0.9, top-k 5"),
        "{err}"
    );

    // A failing candidate command names the job (text, seed, temperature, top-k).
    let out = sweep(
        &tmp.path().join("failing"),
        &["--candidate-cmd", "echo broken port >&2; exit 3"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "sweep job t0.9_k5_x0_s0 (text 0 \"Hello there.\", seed 0, temp 0.9, top-k 5)"
        ),
        "{err}"
    );
    assert!(err.contains("broken port"), "{err}");
}
