//! Issue 14: the pipeline ends in sound. `capture` decodes each pipeline's post-processed frames
//! with its own library's Mimi codec (the fixture brings a tiny one), writes audio.wav /
//! audio.npy, cross-decodes the candidate with the reference's codec, and `diff` compares the
//! sound.
#![cfg(all(feature = "mlx", feature = "torch"))]
use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_csm-parity"))
}

fn run(args: &[&str], out: &Path) -> (i32, String, String) {
    let o = bin().args(args).arg("--out").arg(out).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn diff_json(dir: &Path) -> serde_json::Value {
    let o = bin().arg("diff").arg(dir).arg("--json").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn every_csm_run_has_audio_and_diff_compares_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cap");
    let (code, _, err) = run(
        &["capture", "--text", "Hello there.", "--max-frames", "12"],
        &out,
    );
    assert_eq!(code, 0, "{err}");
    for b in ["torch", "mlx"] {
        let d = out.join(b);
        assert!(
            d.join("audio.wav").is_file() && d.join("audio.npy").is_file(),
            "{b}"
        );
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("manifest.json")).unwrap()).unwrap();
        let a = &m["audio"];
        assert_eq!(a["sample_rate"], 24000, "{m:#}");
        let frames = a["frames_decoded"].as_u64().unwrap() as usize;
        assert!(frames >= 1);
        assert_eq!(a["samples"].as_u64().unwrap() as usize, frames * 1920);
        assert_eq!(a["codec"]["name"], "mimi");
    }
    assert!(out.join("mlx/audio_cross.npy").is_file());
    // WAV header: RIFF, mono, 24 kHz.
    let wav = std::fs::read(out.join("torch/audio.wav")).unwrap();
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1);
    assert_eq!(
        u32::from_le_bytes([wav[24], wav[25], wav[26], wav[27]]),
        24000
    );
    // Shared noise: identical tokens, audio within the codec tolerance.
    let d = diff_json(&out);
    let audio = &d["audio"];
    assert!(audio.is_object(), "{d:#}");
    assert_eq!(audio["post_tokens_identical"], true, "{audio:#}");
    assert_eq!(audio["within_tolerance"], true, "{audio:#}");
    assert!(audio["stage"].is_null(), "{audio:#}");
}

#[test]
fn the_remap_hack_changes_the_sound_and_no_audio_and_bad_codecs_behave() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("remap");
    let (code, _, err) = run(
        &[
            "capture",
            "--text",
            "hi",
            "--max-frames",
            "24",
            "--post",
            "remap-low:1-2050",
            "--seed",
            "3",
        ],
        &out,
    );
    assert_eq!(code, 0, "{err}");
    let d = diff_json(&out);
    let audio = &d["audio"];
    assert_eq!(audio["post_tokens_identical"], false, "{audio:#}");
    assert_eq!(
        audio["within_tolerance"], false,
        "the remap must be audible: {audio:#}"
    );

    let none = tmp.path().join("none");
    let (code, _, err) = run(
        &["capture", "--text", "hi", "--max-frames", "2", "--no-audio"],
        &none,
    );
    assert_eq!(code, 0, "{err}");
    assert!(!none.join("torch/audio.wav").exists());

    let bad = tmp.path().join("bad");
    let (code, _, err) = run(
        &[
            "capture",
            "--text",
            "hi",
            "--max-frames",
            "2",
            "--codec",
            tmp.path().to_str().unwrap(),
        ],
        &bad,
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--codec") && err.contains("config.json"),
        "{err}"
    );
    assert!(!bad.join("torch").exists() && !bad.join("torch.partial").exists());
}
