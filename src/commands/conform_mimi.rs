//! `conform` on a Mimi case: checks each backend's codec against transformers' `MimiModel`.
//!
//! Case directory format (`../shared/conformance/mimi-tiny-transformers/`):
//! - `config.json` (`model_type: "mimi"`) + `model.safetensors` — the codec, transformers layout;
//! - `codes.npy` [F, C] int — codes to decode, codebook 0 (semantic) first;
//! - `audio.npy` [F · samples_per_frame] f32 — the reference decode of `codes.npy`;
//! - `wave.npy` [N] f32 — a waveform at the codec's rate;
//! - `latents.npy` [F', hidden] f32 — the encoder's output for `wave.npy` before quantization;
//! - `wave_codes.npy` [F', C] int — the reference codes of `wave.npy`.
//!
//! Checks per backend: decoded audio within `AUDIO_ATOL` of `audio.npy`, latents within
//! `LATENTS_RTOL × max|latents.npy|`, codes equal to `wave_codes.npy`. A NaN never passes.
use crate::backend::{load_codec, BackendKind, Codec};
use crate::model::mimi::MimiModel;
use crate::model::DType;
use anyhow::{bail, Result};
use ndarray::ArrayD;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Largest |ours − reference| audio sample allowed (f32 on CPU: ~1e-6 is typical).
pub const AUDIO_ATOL: f64 = 1e-5;
/// Largest |ours − reference| latent allowed, relative to max |reference latent|.
pub const LATENTS_RTOL: f64 = 1e-5;

/// Whether `dir` is a Mimi case (its `config.json` says `model_type: "mimi"`).
pub fn is_mimi_case(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["model_type"].as_str() == Some("mimi"))
}

/// The arrays of a Mimi conformance case, validated.
pub struct MimiCase {
    pub dir: PathBuf,
    /// [F][C]
    pub codes: Vec<Vec<i32>>,
    pub audio: Vec<f32>,
    pub wave: Vec<f32>,
    /// [F'][hidden], row-major.
    pub latents: Vec<f32>,
    pub latent_frames: usize,
    /// [F'][C]
    pub wave_codes: Vec<Vec<i32>>,
}

/// A whole .npy of the case as f64, in C order.
fn read(path: &Path) -> Result<ArrayD<f64>> {
    Ok(crate::npy::read_array::<f64>(path)?.0)
}

fn int_rows(path: &Path, values: &ArrayD<f64>) -> Result<Vec<Vec<i32>>> {
    let shape = values.shape();
    let [_, c] = *shape else {
        bail!("{}: expected shape [F, C], got {shape:?}", path.display());
    };
    if c == 0 {
        bail!("{}: no codebooks (shape {shape:?})", path.display());
    }
    if let Some(v) = values.iter().find(|v| v.fract() != 0.0 || !v.is_finite()) {
        bail!("{}: expected integer codes, found {v}", path.display());
    }
    Ok(values
        .rows()
        .into_iter()
        .map(|r| r.iter().map(|&x| x as i32).collect())
        .collect())
}

fn floats(path: &Path, values: &ArrayD<f64>) -> Result<Vec<f32>> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!("{}: value {i} is not finite", path.display());
    }
    Ok(values.iter().map(|&v| v as f32).collect())
}

impl MimiCase {
    /// Reads every file of the case, checking shapes against each other and the codec config.
    pub fn load(dir: &Path, model: &MimiModel) -> Result<Self> {
        let cfg = &model.config;
        let file = |n: &str| dir.join(n);
        let codes = read(&file("codes.npy"))?;
        let cs = codes.shape().to_vec();
        let codes = int_rows(&file("codes.npy"), &codes)?;
        let audio = read(&file("audio.npy"))?;
        let wave = read(&file("wave.npy"))?;
        let latents = read(&file("latents.npy"))?;
        let (as_, ws, ls) = (audio.shape(), wave.shape(), latents.shape());
        let wave_codes = read(&file("wave_codes.npy"))?;
        let wcs = wave_codes.shape().to_vec();
        let wave_codes = int_rows(&file("wave_codes.npy"), &wave_codes)?;
        let spf = cfg.samples_per_frame();
        if cs[1] > cfg.num_quantizers || cs[1] < cfg.num_semantic_quantizers {
            bail!(
                "{}: {} codebooks; the codec in {} has {}",
                file("codes.npy").display(),
                cs[1],
                dir.display(),
                cfg.num_quantizers
            );
        }
        if as_ != [cs[0] * spf] {
            bail!(
                "{}: expected shape [{}] ({} frames × {spf} samples), got {as_:?}",
                file("audio.npy").display(),
                cs[0] * spf,
                cs[0]
            );
        }
        if ws.len() != 1 || ws[0] == 0 {
            bail!(
                "{}: expected a non-empty mono waveform [N], got shape {ws:?}",
                file("wave.npy").display()
            );
        }
        let frames = ws[0].div_ceil(spf);
        if ls != [frames, cfg.hidden_size] {
            bail!(
                "{}: expected shape [{frames}, {}] ({} samples → {frames} frames × hidden), got {ls:?}",
                file("latents.npy").display(),
                cfg.hidden_size,
                ws[0]
            );
        }
        if wcs != [frames, cfg.num_quantizers] {
            bail!(
                "{}: expected shape [{frames}, {}], got {wcs:?}",
                file("wave_codes.npy").display(),
                cfg.num_quantizers
            );
        }
        Ok(MimiCase {
            dir: dir.to_path_buf(),
            codes,
            audio: floats(&file("audio.npy"), &audio)?,
            wave: floats(&file("wave.npy"), &wave)?,
            latents: floats(&file("latents.npy"), &latents)?,
            latent_frames: frames,
            wave_codes,
        })
    }
}

/// One backend's codec against the case.
#[derive(Debug, Clone, Serialize)]
pub struct MimiConformResult {
    pub backend: String,
    /// max |decode(codes.npy) − audio.npy| (NaN when any sample is NaN).
    pub max_abs_diff_audio: f64,
    pub audio_len_equal: bool,
    /// max |encoder latents − latents.npy|.
    pub max_abs_diff_latents: f64,
    /// The latents' allowance: LATENTS_RTOL × max |latents.npy|.
    pub latents_atol: f64,
    pub wave_codes_equal: bool,
    /// First (frame, codebook) whose code differs from wave_codes.npy.
    pub first_code_mismatch: Option<[usize; 2]>,
    /// Codes of codes.npy outside the codebook (decoded as 0).
    pub invalid_codes: usize,
    pub conforms: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MimiConformReport {
    pub case: String,
    pub model: String,
    pub audio_atol: f64,
    pub latents_rtol: f64,
    pub frames: usize,
    pub codebooks: usize,
    pub results: Vec<MimiConformResult>,
    pub conforms: bool,
}

/// max |a − b| over the common length; NaN when any compared value is NaN.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).fold(0f64, |m, (&x, &y)| {
        let d = (x as f64 - y as f64).abs();
        if d.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(d)
        }
    })
}

/// Checks one codec against the case.
pub fn check_codec(
    case: &MimiCase,
    backend: &str,
    codec: &mut dyn Codec,
) -> Result<MimiConformResult> {
    let decoded = codec.decode(&case.codes)?;
    let audio_len_equal = decoded.audio.len() == case.audio.len();
    let max_audio = max_abs_diff(&decoded.audio, &case.audio);
    let encoded = codec.encode(&case.wave)?;
    let latents_equal_len = encoded.latents.len() == case.latents.len();
    let max_lat = max_abs_diff(&encoded.latents, &case.latents);
    let scale = case
        .latents
        .iter()
        .fold(0f64, |m, &x| m.max((x as f64).abs()));
    let latents_atol = LATENTS_RTOL * scale;
    let mismatch =
        case.wave_codes
            .iter()
            .enumerate()
            .find_map(|(f, want)| match encoded.codes.get(f) {
                None => Some([f, 0]),
                Some(got) => want
                    .iter()
                    .zip(got)
                    .position(|(a, b)| a != b)
                    .map(|c| [f, c]),
            });
    let wave_codes_equal = mismatch.is_none() && encoded.codes.len() == case.wave_codes.len();
    // `<=` is false for NaN, so a NaN never conforms.
    let conforms = audio_len_equal
        && max_audio <= AUDIO_ATOL
        && latents_equal_len
        && max_lat <= latents_atol
        && wave_codes_equal;
    Ok(MimiConformResult {
        backend: backend.to_string(),
        max_abs_diff_audio: max_audio,
        audio_len_equal,
        max_abs_diff_latents: max_lat,
        latents_atol,
        wave_codes_equal,
        first_code_mismatch: mismatch,
        invalid_codes: decoded.invalid_codes,
        conforms,
    })
}

/// Runs every backend's codec on the Mimi case in `dir`.
pub fn conform_mimi(dir: &Path, backends: &[BackendKind]) -> Result<MimiConformReport> {
    let model = MimiModel::load(dir)?;
    let case = MimiCase::load(dir, &model)?;
    if backends.is_empty() {
        bail!("no backend compiled into this build (features `mlx`, `torch`)");
    }
    let mut results = Vec::new();
    for &kind in backends {
        let mut codec = load_codec(kind, &model, DType::F32)?;
        results.push(check_codec(&case, kind.name(), codec.as_mut())?);
    }
    Ok(MimiConformReport {
        case: dir.display().to_string(),
        model: "mimi".into(),
        audio_atol: AUDIO_ATOL,
        latents_rtol: LATENTS_RTOL,
        frames: case.codes.len(),
        codebooks: case.codes.first().map_or(0, Vec::len),
        conforms: results.iter().all(|r| r.conforms),
        results,
    })
}

impl MimiConformReport {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} (Mimi codec, {} frames × {} codebooks; audio atol {:.0e}, latents {:.0e} × scale, codes exact)",
            if self.conforms { "CONFORMS" } else { "DOES NOT CONFORM" },
            self.case,
            self.frames,
            self.codebooks,
            self.audio_atol,
            self.latents_rtol
        );
        let _ = writeln!(
            s,
            "  {:<7} {:>12} {:>13} {:>11}  wave codes",
            "backend", "max|Δ| audio", "max|Δ| latent", "(allowed)"
        );
        for r in &self.results {
            let codes = match r.first_code_mismatch {
                None if r.wave_codes_equal => "equal".to_string(),
                None => "short".to_string(),
                Some([f, c]) => format!("differ @{f},{c}"),
            };
            let _ = writeln!(
                s,
                "  {:<7} {:>12.3e} {:>13.3e} {:>11.1e}  {}{}",
                r.backend,
                r.max_abs_diff_audio,
                r.max_abs_diff_latents,
                r.latents_atol,
                codes,
                if r.audio_len_equal {
                    ""
                } else {
                    " (audio length differs)"
                }
            );
        }
        s
    }
}
