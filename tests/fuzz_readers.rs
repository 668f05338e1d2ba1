//! Seeded mutation fuzzing of the two readers of outside data: run directories (`Run::open`
//! and the analyzer on what it accepts) and conformance cases (`conform::Case::load`). Every
//! mutation must give a clean `Ok` or `Err`, never a panic. Bounded in count and time.
mod common;

use common::{mix, Spec};
use csm_parity::analysis::{self, DiffOptions};
use csm_parity::capture::{Run, Storage};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

const BUDGET: Duration = Duration::from_secs(40);

/// A deterministic mutation of `bytes` chosen by `r`.
fn mutate_bytes(bytes: &mut Vec<u8>, r: u64) {
    let n = bytes.len().max(1);
    let at = (mix(r) as usize) % n;
    match r % 7 {
        0 => bytes.truncate(at),
        1 => {
            if let Some(b) = bytes.get_mut(at) {
                *b ^= 1 << (mix(r ^ 1) % 8);
            }
        }
        2 => {
            if let Some(b) = bytes.get_mut(at) {
                *b = (mix(r ^ 2) & 0xff) as u8;
            }
        }
        3 => bytes.extend(std::iter::repeat_n(
            (r & 0xff) as u8,
            (mix(r) % 64) as usize,
        )),
        4 => {
            // Overwrite a digit in the header: shapes, lengths, versions.
            let head = bytes.len().min(128);
            if let Some(i) = (0..head)
                .map(|k| (at + k) % head)
                .find(|&i| bytes[i].is_ascii_digit())
            {
                bytes[i] = b'0' + (mix(r ^ 3) % 10) as u8;
            }
        }
        5 => bytes.clear(),
        _ => {
            let end = (at + (mix(r ^ 4) % 16) as usize).min(bytes.len());
            bytes.drain(at..end);
        }
    }
}

/// A JSON value that stresses a manifest field's parser.
fn odd_value(r: u64) -> serde_json::Value {
    use serde_json::json;
    match r % 10 {
        0 => json!(-1),
        1 => json!(4611686018427387904u64), // 2^62
        2 => json!(u64::MAX),
        3 => json!(1e308),
        4 => json!("NaN"),
        5 => json!(null),
        6 => json!([]),
        7 => json!({}),
        8 => json!(0),
        _ => json!("x"),
    }
}

fn mutate_manifest(text: &str, r: u64) -> String {
    let mut v: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return text.to_string(),
    };
    let keys = [
        "frames",
        "codebooks",
        "vocab",
        "logits_storage",
        "probs_storage",
        "format_version",
        "status",
        "sampler",
        "timings",
        "prompt",
    ];
    let key = keys[(mix(r) % keys.len() as u64) as usize];
    if let Some(obj) = v.as_object_mut() {
        if r.is_multiple_of(11) {
            obj.remove(key);
        } else if key == "logits_storage" || key == "probs_storage" {
            let s = [
                "f32",
                "f16",
                "top:0",
                "top:99999999999999999999",
                "top:-1",
                "none",
                "bf16",
            ];
            obj.insert(key.into(), s[(mix(r ^ 9) % s.len() as u64) as usize].into());
        } else {
            obj.insert(key.into(), odd_value(mix(r ^ 5)));
        }
    }
    serde_json::to_string(&v).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn run_reader_never_panics_on_mutated_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = Spec {
        frames: 4,
        codebooks: 3,
        vocab: 12,
        ..Spec::default()
    };
    let top = Spec {
        logits: Storage::Top(4),
        ..spec.clone()
    };
    let (dense_a, dense_b) = common::pair(&tmp.path().join("dense"), &spec, |_| {});
    let (top_a, _) = common::pair(&tmp.path().join("top"), &top, |_| {});
    let t0 = Instant::now();
    let (mut opened, mut refused, mut cases) = (0, 0, 0);
    for i in 0..400u64 {
        if t0.elapsed() > BUDGET {
            break;
        }
        let src = if i % 3 == 0 { &top_a } else { &dense_a };
        let dir = tmp.path().join(format!("m{i}"));
        copy_dir(src, &dir);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let r = mix(i ^ 0x5EED);
        let target = &files[(r % files.len() as u64) as usize];
        if target.file_name().unwrap() == "manifest.json" && r.is_multiple_of(2) {
            let text = std::fs::read_to_string(target).unwrap();
            std::fs::write(target, mutate_manifest(&text, mix(r))).unwrap();
        } else if r.is_multiple_of(13) {
            std::fs::remove_file(target).unwrap();
        } else {
            let mut bytes = std::fs::read(target).unwrap();
            mutate_bytes(&mut bytes, mix(r ^ 0xF00D));
            std::fs::write(target, bytes).unwrap();
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            let run = Run::open(&dir)?;
            let b = Run::open(&dense_b)?;
            let opt = DiffOptions {
                resamples: 20,
                ..DiffOptions::default()
            };
            // Both ways round: the mutated run as reference and as candidate.
            let _ = analysis::compare(&run, &b, &opt);
            analysis::compare(&b, &run, &opt).map(|_| ())
        }));
        match result {
            Ok(Ok(())) => opened += 1,
            Ok(Err(_)) => refused += 1,
            Err(_) => panic!(
                "mutation {i} of {} made the reader or analyzer panic",
                target.display()
            ),
        }
        cases += 1;
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(cases >= 100, "only {cases} mutations ran within the budget");
    assert!(
        refused > 0 && opened > 0,
        "opened {opened}, refused {refused}: the mutations do not exercise both paths"
    );
}

#[test]
fn huge_frame_count_with_matching_headers_is_refused_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = Spec {
        frames: 2,
        codebooks: 2,
        vocab: 4,
        logits: Storage::None,
        probs: Storage::None,
        ..Spec::default()
    };
    let (a, _) = common::pair(tmp.path(), &spec, |_| {});
    let huge: u64 = 1 << 62;
    let m = a.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
    v["frames"] = huge.into();
    std::fs::write(&m, v.to_string()).unwrap();
    // Headers that agree with the manifest's absurd frame count (the data stays small).
    write_npy(&a.join("tokens.npy"), "<i4", &[huge as usize, 2], &[0; 16]);
    write_npy(
        &a.join("post_tokens.npy"),
        "<i4",
        &[huge as usize, 2],
        &[0; 16],
    );
    write_npy(&a.join("step_us.npy"), "<f8", &[huge as usize], &[0; 16]);
    let r = catch_unwind(|| Run::open(&a).map(|_| ()));
    let err = r
        .expect("no panic")
        .expect_err("an absurd frame count is refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("too large") || msg.contains("truncated") || msg.contains("shape"),
        "{msg}"
    );
}

/// A small synthetic conformance case written with numpy-compatible headers.
fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let shape_s = match shape {
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

fn f32s(n: usize, seed: u64) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (((mix(seed ^ i as u64) % 1000) as f32) / 100.0).to_le_bytes())
        .collect()
}

fn i32s(n: usize, modulo: u64, seed: u64) -> Vec<u8> {
    (0..n)
        .flat_map(|i| ((mix(seed ^ i as u64) % modulo) as i32).to_le_bytes())
        .collect()
}

#[test]
fn conform_case_reader_never_panics_on_mutated_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("case");
    std::fs::create_dir_all(&base).unwrap();
    let (p, f, c, v) = (5, 4, 3, 16);
    write_npy(&base.join("prompt_ids.npy"), "<i4", &[p], &i32s(p, 20, 1));
    write_npy(
        &base.join("frames.npy"),
        "<i4",
        &[f, c],
        &i32s(f * c, v as u64, 2),
    );
    write_npy(&base.join("c0_logits.npy"), "<f4", &[f, v], &f32s(f * v, 3));
    write_npy(
        &base.join("depth_logits.npy"),
        "<f4",
        &[f, c - 1, v],
        &f32s(f * (c - 1) * v, 4),
    );
    csm_parity::commands::conform::Case::load(&base).expect("the unmutated case loads");
    let names = [
        "prompt_ids.npy",
        "frames.npy",
        "c0_logits.npy",
        "depth_logits.npy",
    ];
    let t0 = Instant::now();
    let (mut ok, mut refused) = (0, 0);
    for i in 0..300u64 {
        if t0.elapsed() > BUDGET {
            break;
        }
        let dir = tmp.path().join(format!("c{i}"));
        copy_dir(&base, &dir);
        let r = mix(i ^ 0xCA5E);
        let target = dir.join(names[(r % 4) as usize]);
        let mut bytes = std::fs::read(&target).unwrap();
        mutate_bytes(&mut bytes, mix(r));
        std::fs::write(&target, bytes).unwrap();
        match catch_unwind(|| csm_parity::commands::conform::Case::load(&dir).map(|_| ())) {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                refused += 1;
                // Every refusal names the file it is about.
                let msg = format!("{e:#}");
                assert!(
                    names.iter().any(|n| msg.contains(n)),
                    "mutation {i}: error does not name a file: {msg}"
                );
            }
            Err(_) => panic!("mutation {i} of {} made Case::load panic", target.display()),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(
        ok + refused >= 100 && refused > 0,
        "ok {ok}, refused {refused}"
    );
}
