//! Audio in the run format, audio metrics with known answers, and the audio section of `diff`
//! (JSON, terminal line, report) on hand-written runs with synthetic audio.
mod common;

use common::*;
use csm_parity::analysis::audio::{
    compare_samples, hz_to_mel, mel_bank, mr_stft, stage_rule, AudioOptions, AudioStage, Db,
    LogMel, MEL_BANDS, MEL_FFT,
};
use csm_parity::analysis::{compare, Diff, DiffOptions};
use csm_parity::capture::audio::{
    write_audio, AudioWriter, AUDIO_CROSS_NPY, AUDIO_NPY, AUDIO_WAV, MIMI_SAMPLE_RATE,
};
use csm_parity::capture::{CodecInfo, FrameRecord, Run, RunWriter, Timings};
use std::f64::consts::PI;
use std::path::{Path, PathBuf};

const RATE: u32 = MIMI_SAMPLE_RATE;

fn sine(n: usize, freq: f64, amp: f64) -> Vec<f32> {
    (0..n)
        .map(|i| (amp * (2.0 * PI * freq * i as f64 / RATE as f64).sin()) as f32)
        .collect()
}

/// Deterministic broadband noise in [-amp, amp].
fn noise(n: usize, amp: f64, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| ((uniform(seed, i as u64, 0, 0) * 2.0 - 1.0) * amp) as f32)
        .collect()
}

/// A 2 s 440 Hz tone at amplitude 0.5.
fn tone() -> Vec<f32> {
    sine(2 * RATE as usize, 440.0, 0.5)
}

/// The tone with a 10 ms click (+0.1) from 0.5 s (sample 12000, frame 6).
fn glitched() -> Vec<f32> {
    let mut x = tone();
    for v in &mut x[12_000..12_240] {
        *v += 0.1;
    }
    x
}

fn codec(library: &str) -> CodecInfo {
    CodecInfo {
        name: "mimi".into(),
        path: "fixtures/tiny-mimi".into(),
        sha256: "00ff".into(),
        library: library.into(),
    }
}

/// Writes a complete run with `recs` and, when given, audio (and a cross-decode).
fn write_run(
    dir: &Path,
    spec: &Spec,
    recs: &[FrameRecord],
    audio: Option<&[f32]>,
    cross: Option<&[f32]>,
) -> PathBuf {
    let mut w = RunWriter::create(
        dir,
        manifest(spec),
        spec.codebooks,
        spec.vocab,
        spec.logits,
        spec.probs,
    )
    .unwrap();
    for r in recs {
        w.push(r).unwrap();
    }
    if let Some(x) = audio {
        w.write_audio(x, RATE, codec(spec.backend), 0, recs.len())
            .unwrap();
    }
    if let Some(x) = cross {
        w.write_audio_cross(x, RATE, codec("torch")).unwrap();
    }
    w.finish("max_frames", Timings::default()).unwrap()
}

/// Reference `torch` run with audio `a`, candidate `mlx` with `b` (same tokens unless `edit`).
fn audio_pair(
    root: &Path,
    a: &[f32],
    b: &[f32],
    cross: Option<&[f32]>,
    edit: impl FnOnce(&mut Vec<FrameRecord>),
) -> (PathBuf, PathBuf) {
    let spec = Spec::default();
    let ra = frames(&spec);
    let mut rb = ra.clone();
    edit(&mut rb);
    let pa = write_run(&root.join("torch"), &spec, &ra, Some(a), None);
    let sb = Spec {
        backend: "mlx",
        ..spec
    };
    let pb = write_run(&root.join("mlx"), &sb, &rb, Some(b), cross);
    (pa, pb)
}

fn diff(a: &Path, b: &Path) -> Diff {
    compare(
        &Run::open(a).unwrap(),
        &Run::open(b).unwrap(),
        &DiffOptions::default(),
    )
    .unwrap()
}

fn err_text(r: anyhow::Result<impl std::fmt::Debug>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

// ---------------------------------------------------------------- run format

#[test]
fn run_audio_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let x = glitched();
    let y = tone();
    let spec = Spec::default();
    let dir = write_run(
        &tmp.path().join("run"),
        &spec,
        &frames(&spec),
        Some(&x),
        Some(&y),
    );
    let run = Run::open(&dir).unwrap();
    let m = run.manifest().audio.clone().expect("audio section");
    assert_eq!(m.sample_rate, RATE);
    assert_eq!(m.samples, x.len());
    assert_eq!(m.frames_decoded, spec.frames);
    assert_eq!(m.codec, codec("torch"));
    assert_eq!(m.cross_samples, Some(y.len()));
    let audio = run.audio().unwrap().expect("audio");
    assert_eq!(audio.samples, x);
    assert_eq!(audio.sample_rate, RATE);
    assert!(audio.path.ends_with(AUDIO_NPY));
    assert_eq!(run.audio_cross().unwrap().unwrap().samples, y);
    // The WAV is mono 32-bit float at 24 kHz and holds the same samples.
    let r = hound::WavReader::open(dir.join(AUDIO_WAV)).unwrap();
    let s = r.spec();
    assert_eq!(
        (s.channels, s.sample_rate, s.bits_per_sample),
        (1, RATE, 32)
    );
    assert_eq!(s.sample_format, hound::SampleFormat::Float);
    let w: Vec<f32> = r.into_samples::<f32>().map(|v| v.unwrap()).collect();
    assert_eq!(w, x);
    // numpy-compatible .npy (npyz agrees).
    let bytes = std::fs::read(dir.join(AUDIO_NPY)).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(npy.shape(), &[x.len() as u64]);
    // No temp files are left behind.
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp"), "temp file left: {name}");
    }
}

#[test]
fn run_without_audio_reads_as_none() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = Spec::default();
    let dir = write(&tmp.path().join("run"), &spec, &frames(&spec));
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    assert!(
        !text.contains("\"audio\""),
        "no audio key in old-style runs"
    );
    let run = Run::open(&dir).unwrap();
    assert!(run.audio().unwrap().is_none());
    assert!(run.audio_cross().unwrap().is_none());
}

#[test]
fn streaming_writer_equals_one_shot() {
    let tmp = tempfile::tempdir().unwrap();
    let x = glitched();
    let (d1, d2) = (tmp.path().join("one"), tmp.path().join("chunks"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    assert_eq!(write_audio(&d1, &x, RATE).unwrap(), x.len());
    let mut w = AudioWriter::create(&d2, RATE).unwrap();
    for c in x.chunks(1920) {
        w.push(c).unwrap();
    }
    assert_eq!(w.finish().unwrap(), x.len());
    for f in [AUDIO_WAV, AUDIO_NPY] {
        assert_eq!(
            std::fs::read(d1.join(f)).unwrap(),
            std::fs::read(d2.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn writer_refuses_nan_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut x = tone();
    x[777] = f32::NAN;
    let e = err_text(write_audio(tmp.path(), &x, RATE));
    assert!(e.contains("audio.npy") && e.contains("sample 777"), "{e}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    // Streaming: the bad chunk is refused and dropping the writer removes its temp files.
    let mut w = AudioWriter::create(tmp.path(), RATE).unwrap();
    w.push(&tone()[..100]).unwrap();
    let e = err_text(w.push(&[0.0, f32::INFINITY]));
    assert!(e.contains("sample 101"), "{e}");
    drop(w);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

fn run_with_audio(root: &Path) -> PathBuf {
    let spec = Spec::default();
    write_run(
        &root.join("run"),
        &spec,
        &frames(&spec),
        Some(&tone()),
        None,
    )
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn write_wav_with(path: &Path, channels: u16, rate: u32, n: usize) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for _ in 0..n * channels as usize {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
}

#[test]
fn reader_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let n = tone().len();
    // Wrong sample rate.
    let dir = run_with_audio(&tmp.path().join("rate"));
    write_wav_with(&dir.join(AUDIO_WAV), 1, 16_000, n);
    let e = err_text(Run::open(&dir).unwrap().audio());
    assert!(
        e.contains("audio.wav") && e.contains("16000 Hz") && e.contains("24000 Hz"),
        "{e}"
    );
    // Stereo.
    let dir = run_with_audio(&tmp.path().join("stereo"));
    write_wav_with(&dir.join(AUDIO_WAV), 2, RATE, n);
    let e = err_text(Run::open(&dir).unwrap().audio());
    assert!(e.contains("audio.wav") && e.contains("2 channels"), "{e}");
    // Length against the manifest.
    let dir = run_with_audio(&tmp.path().join("len"));
    edit_manifest(&dir, |v| v["audio"]["samples"] = (n + 5).into());
    let e = err_text(Run::open(&dir).unwrap().audio());
    assert!(
        e.contains("audio.wav") && e.contains(&format!("manifest says {}", n + 5)),
        "{e}"
    );
    // npy length differs from the WAV and the manifest.
    let dir = run_with_audio(&tmp.path().join("npylen"));
    std::fs::remove_file(dir.join(AUDIO_NPY)).unwrap();
    write_npy(&dir.join(AUDIO_NPY), &tone()[..n - 1]);
    let e = err_text(Run::open(&dir).unwrap().audio());
    assert!(
        e.contains("audio.npy") && e.contains("manifest says"),
        "{e}"
    );
    // Non-finite sample in audio.npy.
    let dir = run_with_audio(&tmp.path().join("nan"));
    let mut x = tone();
    x[4321] = f32::NAN;
    write_npy(&dir.join(AUDIO_NPY), &x);
    let e = err_text(Run::open(&dir).unwrap().audio());
    assert!(e.contains("audio.npy") && e.contains("sample 4321"), "{e}");
    // audio.wav missing.
    let dir = run_with_audio(&tmp.path().join("missing"));
    std::fs::remove_file(dir.join(AUDIO_WAV)).unwrap();
    let e = err_text(Run::open(&dir).unwrap().audio());
    assert!(e.contains("audio.wav") && e.contains("missing"), "{e}");
    // Audio files without a manifest section.
    let dir = run_with_audio(&tmp.path().join("nosection"));
    edit_manifest(&dir, |v| {
        v.as_object_mut().unwrap().remove("audio");
    });
    let e = err_text(Run::open(&dir).unwrap().audio());
    assert!(
        e.contains("manifest.json") && e.contains("no `audio` section"),
        "{e}"
    );
    // Not a WAV at all.
    let dir = run_with_audio(&tmp.path().join("garbage"));
    std::fs::write(dir.join(AUDIO_WAV), b"not a wav").unwrap();
    let e = err_text(Run::open(&dir).unwrap().audio());
    assert!(
        e.contains("audio.wav") && e.contains("not a readable WAV"),
        "{e}"
    );
    // diff refuses to compare bad audio and names it.
    let (a, _) = audio_pair(&tmp.path().join("pair"), &tone(), &tone(), None, |_| {});
    let b = run_with_audio(&tmp.path().join("bad"));
    write_npy(&b.join(AUDIO_NPY), &x);
    let e = err_text(compare(
        &Run::open(&a).unwrap(),
        &Run::open(&b).unwrap(),
        &DiffOptions::default(),
    ));
    assert!(e.contains("run B") && e.contains("sample 4321"), "{e}");
}

/// A plain f32 .npy written the numpy way (version 1 header).
fn write_npy(path: &Path, x: &[f32]) {
    let mut out = Vec::new();
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        x.len()
    );
    let mut header = dict.into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    for v in x {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).unwrap();
}

// ---------------------------------------------------------------- metrics

fn opt() -> AudioOptions {
    AudioOptions::default()
}

#[test]
fn identical_audio_gives_zeros_and_infinite_levels() {
    let x = glitched();
    let m = compare_samples(&x, &x, RATE, &opt()).unwrap();
    assert!(m.identical);
    assert_eq!(m.max_abs_diff, 0.0);
    assert_eq!(m.snr_db, Db::Inf);
    assert_eq!(m.si_sdr_db, Db::Inf);
    assert_eq!(m.log_mel_distance, 0.0);
    assert_eq!(m.mr_stft.total, 0.0);
    assert!(m.first_departure.is_none());
    // JSON says "inf", never null/NaN.
    let v = serde_json::to_value(&m).unwrap();
    assert_eq!(v["snr_db"], "inf");
    assert_eq!(v["si_sdr_db"], "inf");
    // Silent vs silent is identical too; silent reference vs sound is -inf.
    let z = vec![0f32; 4800];
    let m = compare_samples(&z, &z, RATE, &opt()).unwrap();
    assert_eq!((m.snr_db, m.si_sdr_db), (Db::Inf, Db::Inf));
    let m = compare_samples(&z, &x[..4800], RATE, &opt()).unwrap();
    assert_eq!((m.snr_db, m.si_sdr_db), (Db::NegInf, Db::NegInf));
    assert_eq!(serde_json::to_value(m.snr_db).unwrap(), "-inf");
}

#[test]
fn scaled_sine_snr_and_si_sdr() {
    let a = sine(24_000, 440.0, 0.5);
    let b: Vec<f32> = a.iter().map(|x| x * 0.5).collect();
    let m = compare_samples(&a, &b, RATE, &opt()).unwrap();
    // Σa² / Σ(a − a/2)² = 4.
    assert!(
        (m.snr_db.value() - 10.0 * 4f64.log10()).abs() < 1e-9,
        "{:?}",
        m.snr_db
    );
    // B is an exact scaled copy: SI-SDR is +inf (or huge from rounding).
    assert!(m.si_sdr_db.value() > 150.0, "{:?}", m.si_sdr_db);
    // 0.9 is not exact in binary: very large but finite is fine.
    let c: Vec<f32> = a.iter().map(|x| x * 0.9).collect();
    let m = compare_samples(&a, &c, RATE, &opt()).unwrap();
    assert!(m.si_sdr_db.value() > 100.0);
    assert!((m.snr_db.value() - 20.0).abs() < 1e-4, "{:?}", m.snr_db);
}

#[test]
fn snr_of_known_noise() {
    // A 440 Hz tone of amplitude 0.5 plus a 3 kHz tone of amplitude 0.005 (whole periods in
    // 1 s): SNR = 20·log10(0.5 / 0.005) = 40 dB; SI-SDR the same (orthogonal noise).
    let a = sine(24_000, 440.0, 0.5);
    let e = sine(24_000, 3000.0, 0.005);
    let b: Vec<f32> = a.iter().zip(&e).map(|(x, y)| x + y).collect();
    let m = compare_samples(&a, &b, RATE, &opt()).unwrap();
    assert!((m.snr_db.value() - 40.0).abs() < 1e-3, "{:?}", m.snr_db);
    assert!(
        (m.si_sdr_db.value() - 40.0).abs() < 1e-3,
        "{:?}",
        m.si_sdr_db
    );
    assert!((m.max_abs_diff - 0.005).abs() < 1e-5);
}

#[test]
fn doubled_noise_known_spectral_distances() {
    // B = 2·A exactly: every power ×4, every magnitude ×2.
    let a = noise(48_000, 0.1, 3);
    let b: Vec<f32> = a.iter().map(|x| 2.0 * x).collect();
    let m = compare_samples(&a, &b, RATE, &opt()).unwrap();
    assert!(
        (m.log_mel_distance - 4f64.log10()).abs() < 1e-4,
        "{}",
        m.log_mel_distance
    );
    for r in &m.mr_stft.resolutions {
        assert!((r.spectral_convergence - 1.0).abs() < 1e-4, "{r:?}");
        assert!((r.log_magnitude - 2f64.ln()).abs() < 1e-3, "{r:?}");
    }
    assert_eq!(
        m.mr_stft
            .resolutions
            .iter()
            .map(|r| (r.fft_size, r.hop))
            .collect::<Vec<_>>(),
        vec![(512, 128), (1024, 256), (2048, 512)]
    );
    assert!((m.mr_stft.total - (1.0 + 2f64.ln())).abs() < 1e-3);
    // SNR: Σa² / Σa² = 1 → 0 dB; SI-SDR +inf (scaled copy).
    assert!(m.snr_db.value().abs() < 1e-9);
    assert!(m.si_sdr_db.value() > 150.0);
}

#[test]
fn mel_bank_is_slaney_and_sums_to_one() {
    let bank = mel_bank(RATE, MEL_FFT, MEL_BANDS, 12_000.0);
    assert_eq!(bank.len(), 80);
    let bins = MEL_FFT / 2 + 1;
    let mut sum = vec![0f64; bins];
    for f in &bank {
        assert!(!f.weights.is_empty());
        let peak = f.weights.iter().fold(0f32, |m, &w| m.max(w));
        assert!(peak > 0.5 && peak <= 1.0, "peak {peak}");
        for (k, w) in f.weights.iter().enumerate() {
            sum[f.start + k] += *w as f64;
        }
    }
    // Between the first and last filter centres the triangles sum to 1 (peak-1 filters).
    let bin_hz = RATE as f64 / MEL_FFT as f64;
    let m_hi = hz_to_mel(12_000.0);
    let centre = |m: usize| csm_parity::analysis::audio::mel_to_hz(m_hi * (m + 1) as f64 / 81.0);
    let (c0, c79) = (centre(0), centre(79));
    let mut checked = 0;
    for (k, s) in sum.iter().enumerate() {
        let f = k as f64 * bin_hz;
        if f >= c0 && f <= c79 {
            assert!((s - 1.0).abs() < 1e-5, "bin {k} ({f} Hz) sums to {s}");
            checked += 1;
        }
    }
    assert!(checked > 400, "{checked}");
    // Nothing above 12 kHz (= Nyquist at 24 kHz) and the top filter ends there.
    assert!(bank[79].start + bank[79].weights.len() <= bins);
}

#[test]
fn log_mel_of_a_tone_peaks_in_its_band() {
    let mut lm = LogMel::new(RATE);
    let x = sine(24_000, 1000.0, 0.5);
    let mel = lm.compute(&x);
    assert_eq!(mel.len() % MEL_BANDS, 0);
    let row = &mel[10 * MEL_BANDS..11 * MEL_BANDS];
    let best = (0..MEL_BANDS)
        .max_by(|&i, &j| row[i].total_cmp(&row[j]))
        .unwrap();
    // 1 kHz is 15 Slaney mel; band centres are at (m + 1)·mel(12 kHz)/81.
    let want = (15.0 / (hz_to_mel(12_000.0) / 81.0)).round() as usize - 1;
    assert!(best.abs_diff(want) <= 1, "best {best} want {want}");
    // Silence is at the floor: log10(1e-5) = -5.
    let z = lm.compute(&[0.0; 4096]);
    assert!(z.iter().all(|&v| (v + 5.0).abs() < 1e-6));
}

#[test]
fn departure_is_located_and_mapped_to_a_frame() {
    let (a, b) = (tone(), glitched());
    let m = compare_samples(&a, &b, RATE, &opt()).unwrap();
    let d = m.first_departure.expect("departs");
    assert_eq!(d.sample, 12_000);
    assert_eq!(d.frame, 6);
    assert!((d.time_s - 0.5).abs() < 1e-12);
    assert!((m.tolerance - 1e-4 * m.peak_reference).abs() < 1e-15);
    assert!((m.max_abs_diff - 0.1).abs() < 1e-6);
    assert!(m.max_abs_diff_sample >= 12_000 && m.max_abs_diff_sample < 12_240);
    assert!(m.snr_db.value().is_finite() && m.snr_db.value() > 0.0);
    assert!(m.log_mel_distance > 0.0 && m.mr_stft.total > 0.0);
    // A difference below the tolerance does not depart.
    let c: Vec<f32> = a.iter().map(|x| x + 1e-6).collect();
    assert!(compare_samples(&a, &c, RATE, &opt())
        .unwrap()
        .first_departure
        .is_none());
}

#[test]
fn unequal_lengths_use_the_common_prefix() {
    let a = tone();
    let b = &a[..30_000];
    let m = compare_samples(&a, b, RATE, &opt()).unwrap();
    assert_eq!(m.samples_compared, 30_000);
    assert!(m.identical);
}

#[test]
fn nan_audio_is_an_error_not_a_number() {
    let a = tone();
    let mut b = a.clone();
    b[99] = f32::NAN;
    let e = err_text(compare_samples(&a, &b, RATE, &opt()));
    assert!(e.contains("audio B") && e.contains("sample 99"), "{e}");
    let bad = AudioOptions {
        departure_rtol: f64::NAN,
    };
    assert!(compare_samples(&a, &a, RATE, &bad).is_err());
}

#[test]
fn mr_stft_of_short_signals_is_finite() {
    let a = sine(100, 440.0, 0.5);
    let b = sine(100, 440.0, 0.4);
    let r = mr_stft(&a, &b);
    assert!(r.total.is_finite() && r.total > 0.0);
    let r = mr_stft(&[], &[]);
    assert_eq!(r.total, 0.0);
}

#[test]
fn stage_rule_codec_only_with_identical_tokens() {
    assert_eq!(stage_rule(true, false), Some(AudioStage::Codec));
    assert_eq!(stage_rule(true, true), None);
    assert_eq!(stage_rule(false, false), None);
    assert_eq!(stage_rule(false, true), None);
}

// ---------------------------------------------------------------- diff

/// Rounds floats to 6 significant digits (the FFT's last bits are not part of the contract).
fn round_floats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap();
            if x != 0.0 && x.is_finite() {
                let r: f64 = format!("{x:.5e}").parse().unwrap();
                *v = serde_json::json!(r);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(round_floats),
        serde_json::Value::Object(o) => o.values_mut().for_each(round_floats),
        _ => {}
    }
}

fn audio_json(d: &Diff, root: &Path) -> serde_json::Value {
    let mut v = serde_json::to_value(d).unwrap()["audio"].clone();
    round_floats(&mut v);
    let root = root.display().to_string();
    for k in ["file_a", "file_b"] {
        let s = v[k].as_str().unwrap().replace(&root, "[root]");
        v[k] = s.into();
    }
    if let Some(c) = v.get_mut("cross").filter(|c| !c.is_null()) {
        let s = c["file"].as_str().unwrap().replace(&root, "[root]");
        c["file"] = s.into();
    }
    v
}

#[test]
fn diff_reports_a_codec_glitch_with_identical_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = audio_pair(tmp.path(), &tone(), &glitched(), None, |_| {});
    let d = diff(&a, &b);
    let c = d.audio.as_ref().expect("audio section");
    assert!(c.post_tokens_identical);
    assert!(!c.within_tolerance);
    assert_eq!(c.stage, Some(AudioStage::Codec));
    assert_eq!(c.metrics.first_departure.unwrap().frame, 6);
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["audio"]["stage"], "codec");
    assert_eq!(v["audio"]["metrics"]["first_departure"]["sample"], 12_000);
    // Identical tokens, audio beyond the codec tolerance: the verdict is stage codec at the
    // departure frame.
    assert_eq!(d.verdict.kind, "diverged");
    assert_eq!(d.verdict.stage.map(|s| s.name()), Some("codec"));
    assert_eq!(d.verdict.point.map(|p| p.frame), Some(6));
    insta::assert_json_snapshot!("glitch_audio_json", audio_json(&d, tmp.path()));
    let line = csm_parity::report::audio::terminal_line(c);
    insta::assert_snapshot!("glitch_audio_terminal", line);
    let term = csm_parity::report::terminal::render(&d);
    assert_eq!(
        term.lines().filter(|l| l.starts_with("audio:")).count(),
        1,
        "{term}"
    );
}

#[test]
fn diff_of_identical_audio_is_within_tolerance() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = audio_pair(tmp.path(), &tone(), &tone(), None, |_| {});
    let d = diff(&a, &b);
    let c = d.audio.as_ref().unwrap();
    assert!(c.within_tolerance && c.metrics.identical);
    assert_eq!(c.stage, None);
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["audio"]["metrics"]["snr_db"], "inf");
    assert!(csm_parity::report::audio::terminal_line(c).contains("+inf dB (identical)"));
}

#[test]
fn diff_without_audio_has_no_audio_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = pair(tmp.path(), &Spec::default(), |_| {});
    let d = diff(&a, &b);
    assert!(d.audio.is_none());
    let v = serde_json::to_value(&d).unwrap();
    assert!(v.get("audio").is_none());
    assert!(!csm_parity::report::terminal::render(&d).contains("audio:"));
}

#[test]
fn cross_decode_splits_tokens_from_codec() {
    let tmp = tempfile::tempdir().unwrap();
    // B's tokens differ; decoded with A's codec they give a tone at 0.45 amplitude (a token
    // effect); B's own codec adds the click (a codec effect).
    let a = tone();
    let cross: Vec<f32> = a.iter().map(|x| x * 0.9).collect();
    let mut b = cross.clone();
    for v in &mut b[12_000..12_240] {
        *v += 0.1;
    }
    let (pa, pb) = audio_pair(tmp.path(), &a, &b, Some(&cross), |recs| {
        recs[2].tokens[0] = (recs[2].tokens[0] + 1) % 16;
        recs[2].post_tokens[0] = recs[2].tokens[0];
    });
    let d = diff(&pa, &pb);
    let c = d.audio.as_ref().unwrap();
    assert!(!c.post_tokens_identical);
    assert_eq!(c.stage, None, "tokens differ: the token stage stands");
    let x = c.cross.as_ref().expect("cross split");
    assert!(x.file.ends_with(AUDIO_CROSS_NPY));
    // A vs cross: a pure scale (SNR 20 dB, SI-SDR huge), no click.
    assert!((x.from_tokens.snr_db.value() - 20.0).abs() < 1e-3);
    assert!(x.from_tokens.si_sdr_db.value() > 100.0);
    // cross vs B: the click only, first departure at 0.5 s.
    assert_eq!(x.from_codec.first_departure.unwrap().sample, 12_000);
    assert!((x.from_codec.max_abs_diff - 0.1).abs() < 1e-6);
    let share = x.codec_share.unwrap();
    assert!(share > 0.0 && share < 1.0, "{share}");
    assert!(c.explanation.contains("cross-decode"), "{}", c.explanation);
    insta::assert_snapshot!(
        "cross_audio_terminal",
        csm_parity::report::audio::terminal_line(c)
    );
}

#[test]
fn report_has_players_and_audio_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = audio_pair(tmp.path(), &tone(), &glitched(), Some(&tone()), |_| {});
    let d = diff(&a, &b);
    let out = tmp.path().join("report");
    csm_parity::report::write_report_dir(&d, &out).unwrap();
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_eq!(html.matches("<audio controls").count(), 3, "A, B, cross");
    for f in ["audio_a.wav", "audio_b.wav", "audio_cross.wav"] {
        assert!(html.contains(&format!("src=\"{f}\"")), "{f}");
        let r = hound::WavReader::open(out.join(f)).unwrap();
        assert_eq!((r.spec().channels, r.spec().sample_rate), (1, RATE));
        assert_eq!(r.duration() as usize, tone().len());
    }
    assert!(html.contains("<h2 id=audio>Audio</h2>"));
    // The section sits before the other plots.
    assert!(html.find("id=audio").unwrap() < html.find("<h2>Plots</h2>").unwrap());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Audio"));
    if csm_parity::report::plots::ensure_font().is_ok() {
        for f in ["audio_mel.png", "audio_wave.png"] {
            let bytes = std::fs::read(out.join(f)).unwrap();
            assert!(bytes.starts_with(b"\x89PNG"), "{f}");
            assert!(html.contains(&format!("src=\"{f}\"")), "{f}");
        }
    }
    if let Ok(dir) = std::env::var("CSM_PARITY_AUDIO_REPORT") {
        let dir = Path::new(&dir);
        let _ = std::fs::remove_dir_all(dir);
        csm_parity::report::write_report_dir(&d, dir).unwrap();
    }
}

#[test]
fn cli_diff_json_has_the_audio_section() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = audio_pair(tmp.path(), &tone(), &glitched(), None, |_| {});
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_csm-parity"))
        .args(["diff", "--json", "--bootstrap", "0"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["audio"]["stage"], "codec");
    assert_eq!(v["audio"]["options"]["departure_rtol"], 1e-4);
    // A looser tolerance (0.5 × peak) absorbs the 0.1 click: within tolerance, no stage.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_csm-parity"))
        .args(["diff", "--json", "--bootstrap", "0", "--audio-rtol", "0.5"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["audio"]["within_tolerance"], true);
    assert!(v["audio"]["stage"].is_null());
    // A bad tolerance is refused with exit 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_csm-parity"))
        .args(["diff", "--audio-rtol=-1"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--audio-rtol"));
}
