//! Streaming Mimi decode (frames fed chunk by chunk, state carried over) equals the
//! whole-sequence decode in both backends, and `encode` / `decode` through the CLI: pinned to
//! the transformers case, bad input refused with exit 2 and nothing written.
#![cfg(all(feature = "mlx", feature = "torch"))]
use csm_parity::backend::{load_codec, BackendKind, Codec, CodecFault};
use csm_parity::model::mimi::MimiModel;
use csm_parity::model::DType;
use csm_parity::npy::read_array;
use std::path::{Path, PathBuf};
use std::process::Command;

fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/mimi-tiny-transformers")
}

fn rows(path: &Path) -> Vec<Vec<i32>> {
    let (a, _) = read_array::<f64>(path).unwrap();
    a.rows()
        .into_iter()
        .map(|r| r.iter().map(|&x| x as i32).collect())
        .collect()
}

fn floats(path: &Path) -> Vec<f32> {
    let (a, _) = read_array::<f64>(path).unwrap();
    a.iter().map(|&x| x as f32).collect()
}

fn shape(path: &Path) -> Vec<usize> {
    read_array::<f64>(path).unwrap().0.shape().to_vec()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Streams `codes` through `codec` in chunks of the sizes in `sizes` (cycled).
fn streamed(codec: &mut dyn Codec, codes: &[Vec<i32>], sizes: &[usize]) -> Vec<f32> {
    codec.stream_reset();
    let spf = codec.config().samples_per_frame();
    let (mut out, mut at, mut i) = (vec![], 0, 0);
    while at < codes.len() {
        let n = sizes[i % sizes.len()].min(codes.len() - at);
        let d = codec.decode_stream(&codes[at..at + n]).unwrap();
        assert_eq!(d.audio.len(), n * spf, "a chunk of {n} frames");
        out.extend(d.audio);
        at += n;
        i += 1;
    }
    out
}

#[test]
fn streaming_decode_equals_the_whole_sequence_and_transformers_in_both_backends() {
    // 20 frames = 40 decoder-transformer steps, 5× the case's sliding window (8): the
    // KV cache's window is exercised, as are the conv and transposed-conv states.
    let model = MimiModel::load(&case_dir()).unwrap();
    let codes = rows(&case_dir().join("codes.npy"));
    let reference = floats(&case_dir().join("audio.npy"));
    for kind in [BackendKind::Torch, BackendKind::Mlx] {
        let mut codec = load_codec(kind, &model, DType::F32).unwrap();
        let whole = codec.decode(&codes).unwrap().audio;
        for sizes in [&[1][..], &[3], &[7, 2, 5], &[20]] {
            let s = streamed(codec.as_mut(), &codes, sizes);
            let d = max_abs_diff(&s, &whole);
            assert!(
                d <= 1e-5,
                "{kind:?} chunks {sizes:?}: streamed vs whole {d}"
            );
            let t = max_abs_diff(&s, &reference);
            assert!(
                t <= 1e-5,
                "{kind:?} chunks {sizes:?}: streamed vs transformers {t}"
            );
        }
        // A reset starts a new stream: the same audio again.
        let a = streamed(codec.as_mut(), &codes[..4], &[2]);
        let b = streamed(codec.as_mut(), &codes[..4], &[4]);
        assert!(max_abs_diff(&a, &b) <= 1e-5, "{kind:?}");
        assert!(max_abs_diff(&a, &whole[..a.len()]) <= 1e-5, "{kind:?}");
    }
}

#[test]
fn streaming_state_matters_and_is_checked() {
    let model = MimiModel::load(&case_dir()).unwrap();
    let codes = rows(&case_dir().join("codes.npy"));
    for kind in [BackendKind::Torch, BackendKind::Mlx] {
        let mut codec = load_codec(kind, &model, DType::F32).unwrap();
        let whole = codec.decode(&codes).unwrap().audio;
        // Decoding each chunk as a fresh stream (state dropped) departs from the whole decode.
        let mut fresh = vec![];
        for part in codes.chunks(5) {
            codec.stream_reset();
            fresh.extend(codec.decode_stream(part).unwrap().audio);
        }
        let d = max_abs_diff(&fresh, &whole);
        assert!(
            d > 1e-3,
            "{kind:?}: dropping the state moved the audio by only {d}"
        );
        // A stream keeps its codebook count.
        codec.stream_reset();
        codec.decode_stream(&codes[..2]).unwrap();
        let fewer: Vec<Vec<i32>> = codes[2..4].iter().map(|r| r[..4].to_vec()).collect();
        let e = format!("{:#}", codec.decode_stream(&fewer).unwrap_err());
        assert!(e.contains("4 codes") && e.contains("8 codes"), "{e}");
    }
    // The sliding-window fault is seen by the streaming decoder too.
    let mut mlx = load_codec(BackendKind::Mlx, &model, DType::F32).unwrap();
    let clean = streamed(mlx.as_mut(), &codes, &[3]);
    mlx.inject(CodecFault::NoSlidingWindow).unwrap();
    let faulty = streamed(mlx.as_mut(), &codes, &[3]);
    assert!(max_abs_diff(&clean, &faulty) > 1e-3);
    let whole_faulty = mlx.decode(&codes).unwrap().audio;
    assert!(max_abs_diff(&faulty, &whole_faulty) <= 1e-5);
}

fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_csm-parity"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_wav(path: &Path, samples: &[f32], rate: u32, channels: u16) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &x in samples {
        for _ in 0..channels {
            w.write_sample(x).unwrap();
        }
    }
    w.finalize().unwrap();
}

fn read_wav(path: &Path) -> (hound::WavSpec, Vec<f32>) {
    let r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    (spec, r.into_samples::<f32>().map(Result::unwrap).collect())
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn cli_encode_and_decode_reproduce_transformers_in_both_backends() {
    let tmp = tempfile::tempdir().unwrap();
    let wav = tmp.path().join("wave.wav");
    write_wav(&wav, &floats(&case_dir().join("wave.npy")), 24_000, 1);
    let case = case_dir();
    let case = case.to_str().unwrap();
    let want_codes = rows(&case_dir().join("wave_codes.npy"));
    let want_audio = floats(&case_dir().join("audio.npy"));
    for backend in ["torch", "mlx"] {
        let codes = tmp.path().join(format!("codes-{backend}.npy"));
        let lat = tmp.path().join(format!("latents-{backend}.npy"));
        let (code, out, err) = cli(&[
            "encode",
            wav.to_str().unwrap(),
            "--codec",
            case,
            "--backend",
            backend,
            "--out",
            codes.to_str().unwrap(),
            "--latents",
            lat.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(code, Some(0), "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["frames"], 20, "{v}");
        assert_eq!(v["codebooks"], 8, "{v}");
        assert_eq!(v["backend"], backend, "{v}");
        assert_eq!(rows(&codes), want_codes, "{backend}: encode's codes");
        assert_eq!(shape(&lat), vec![20, 64]);

        // Decode transformers' codes, streamed 3 frames at a time and whole.
        for chunk in ["3", "0"] {
            let wav_out = tmp.path().join(format!("out-{backend}-{chunk}.wav"));
            let (code, out, err) = cli(&[
                "decode",
                case_dir().join("codes.npy").to_str().unwrap(),
                "--codec",
                case,
                "--backend",
                backend,
                "--chunk",
                chunk,
                "--out",
                wav_out.to_str().unwrap(),
                "--json",
            ]);
            assert_eq!(code, Some(0), "{err}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["samples"], 38_400, "{v}");
            let (spec, audio) = read_wav(&wav_out);
            assert_eq!((spec.channels, spec.sample_rate), (1, 24_000));
            let d = max_abs_diff(&audio, &want_audio);
            assert!(
                d <= 1e-5,
                "{backend} chunk {chunk}: decode vs transformers {d}"
            );
        }
    }
    // Round trip through our own files: decode reads what encode wrote.
    let back = tmp.path().join("back.wav");
    let (code, _, err) = cli(&[
        "decode",
        tmp.path().join("codes-torch.npy").to_str().unwrap(),
        "--codec",
        case,
        "--out",
        back.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(read_wav(&back).1.len(), 38_400);
    // No temp files left behind.
    assert!(
        files_in(tmp.path()).iter().all(|f| !f.starts_with('.')),
        "{:?}",
        files_in(tmp.path())
    );
}

#[test]
fn cli_encode_refuses_bad_input_with_exit_2_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let case = case_dir();
    let case = case.to_str().unwrap();
    let wave = floats(&case_dir().join("wave.npy"));
    let out = tmp.path().join("codes.npy");
    let out_s = out.to_str().unwrap();
    let encode = |wav: &Path, codec: &str| {
        cli(&[
            "encode",
            wav.to_str().unwrap(),
            "--codec",
            codec,
            "--out",
            out_s,
        ])
    };

    // Wrong sample rate.
    let w16 = tmp.path().join("16k.wav");
    write_wav(&w16, &wave[..16_000], 16_000, 1);
    let (code, _, err) = encode(&w16, case);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("16k.wav") && err.contains("16000 Hz") && err.contains("24000 Hz"),
        "{err}"
    );
    // Stereo.
    let st = tmp.path().join("stereo.wav");
    write_wav(&st, &wave[..4800], 24_000, 2);
    let (code, _, err) = encode(&st, case);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("stereo.wav") && err.contains("2 channels") && err.contains("mono"),
        "{err}"
    );
    // Not a WAV file.
    let txt = tmp.path().join("notes.wav");
    std::fs::write(&txt, "not audio").unwrap();
    let (code, _, err) = encode(&txt, case);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("notes.wav") && err.contains("WAV"), "{err}");

    let good = tmp.path().join("good.wav");
    write_wav(&good, &wave[..4800], 24_000, 1);
    // A missing codec directory; one of another model type.
    let (code, _, err) = encode(&good, "/nonexistent/mimi");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/mimi"), "{err}");
    let other = tmp.path().join("llama");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let (code, _, err) = encode(&good, other.to_str().unwrap());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("config.json") && err.contains("mimi"), "{err}");
    // Nothing was written by any of these.
    assert!(!out.exists());

    // An existing file is not overwritten without --force.
    std::fs::write(&out, "user's file").unwrap();
    let (code, _, err) = encode(&good, case);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("codes.npy") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "user's file");
    let (code, _, err) = cli(&[
        "encode",
        good.to_str().unwrap(),
        "--codec",
        case,
        "--out",
        out_s,
        "--force",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(shape(&out), vec![3, 8]);
    let mut names = files_in(tmp.path());
    names.retain(|n| n.starts_with('.'));
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn cli_decode_refuses_bad_codes_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let case = case_dir();
    let case = case.to_str().unwrap();
    let out = tmp.path().join("out.wav");
    let decode = |codes: &Path| {
        cli(&[
            "decode",
            codes.to_str().unwrap(),
            "--codec",
            case,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    // Floats, not codes.
    let (code, _, err) = decode(&case_dir().join("latents.npy"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("latents.npy") && err.contains("integer"),
        "{err}"
    );
    // One dimension.
    let (code, _, err) = decode(&case_dir().join("audio.npy"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("audio.npy") && err.contains("[frames, codebooks]"),
        "{err}"
    );
    // Missing.
    let (code, _, err) = decode(&tmp.path().join("nope.npy"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nope.npy"), "{err}");
    assert!(!out.exists());
}
