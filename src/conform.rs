//! `conform`: check a backend against reference logits dumped by another implementation
//! (Hugging Face transformers for the shared case), teacher-forced, plus a greedy replay.
//!
//! Case directory format:
//! - `prompt_ids.npy` [P] int — text token ids, one text frame each (no tokenizer involved);
//! - `frames.npy` [F, C] int — the reference's greedy audio frames, codebook 0 first;
//! - `c0_logits.npy` [F, V] f32 — codebook-0 logits before frame f (after frames 0..f-1 fed);
//! - `depth_logits.npy` [F, C-1, V] f32 — depth-decoder logits of codebooks 1..C-1 of frame f,
//!   given that frame's earlier codebooks;
//! - one model folder per layout: `original/` and/or `hf/` (config.json + model.safetensors).
use crate::backend::{self, BackendKind, Record};
use crate::model::{CsmModel, DType, Frames, Layout};
use crate::runner::{run_frames, LoopSpec};
use crate::sampling::SamplerSpec;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The arrays of a conformance case.
pub struct Case {
    pub dir: PathBuf,
    pub prompt_ids: Vec<u32>,
    /// [F][C]
    pub frames: Vec<Vec<i32>>,
    /// [F][V]
    pub c0_logits: Vec<Vec<f32>>,
    /// [F][(C-1)·V]
    pub depth_logits: Vec<Vec<f32>>,
    pub vocab: usize,
}

/// Reads a .npy of integers or floats as (shape, f64 values).
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .with_context(|| format!("{}: not a .npy file", path.display()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
    let dtype = npy.dtype();
    let descr = match &dtype {
        npyz::DType::Plain(t) => t.to_string(),
        other => bail!("{}: unsupported dtype {other:?}", path.display()),
    };
    let values: Vec<f64> = match &descr[1..] {
        "f4" => npy.into_vec::<f32>()?.into_iter().map(f64::from).collect(),
        "f8" => npy.into_vec::<f64>()?,
        "i4" => npy.into_vec::<i32>()?.into_iter().map(f64::from).collect(),
        "i8" => npy
            .into_vec::<i64>()?
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        "u4" => npy.into_vec::<u32>()?.into_iter().map(f64::from).collect(),
        other => bail!(
            "{}: dtype {other} not supported (expected f4, f8, i4, i8 or u4)",
            path.display()
        ),
    };
    Ok((shape, values))
}

impl Case {
    pub fn load(dir: &Path) -> Result<Self> {
        let file = |n: &str| dir.join(n);
        let (ps, prompt) = read_npy(&file("prompt_ids.npy"))?;
        let (fs, frames) = read_npy(&file("frames.npy"))?;
        let (cs, c0) = read_npy(&file("c0_logits.npy"))?;
        let (ds, depth) = read_npy(&file("depth_logits.npy"))?;
        if ps.len() != 1 {
            bail!(
                "{}: expected shape [P], got {ps:?}",
                file("prompt_ids.npy").display()
            );
        }
        let [f, c] = fs[..] else {
            bail!(
                "{}: expected shape [F, C], got {fs:?}",
                file("frames.npy").display()
            );
        };
        let v = *cs.last().unwrap_or(&0);
        if cs != [f, v] {
            bail!(
                "{}: expected shape [{f}, V], got {cs:?}",
                file("c0_logits.npy").display()
            );
        }
        if ds != [f, c - 1, v] {
            bail!(
                "{}: expected shape [{f}, {}, {v}], got {ds:?}",
                file("depth_logits.npy").display(),
                c - 1
            );
        }
        let to32 = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        Ok(Case {
            dir: dir.to_path_buf(),
            prompt_ids: prompt.iter().map(|&x| x as u32).collect(),
            frames: frames
                .chunks(c)
                .map(|r| r.iter().map(|&x| x as i32).collect())
                .collect(),
            c0_logits: c0.chunks(v).map(to32).collect(),
            depth_logits: depth.chunks((c - 1) * v).map(to32).collect(),
            vocab: v,
        })
    }

    /// The layouts whose model folders this case has.
    pub fn layouts(&self) -> Vec<Layout> {
        [Layout::Original, Layout::Hf]
            .into_iter()
            .filter(|l| self.dir.join(l.name()).join("config.json").is_file())
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Breach {
    pub frame: usize,
    pub codebook: usize,
    pub abs_diff: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConformResult {
    pub backend: String,
    pub layout: String,
    /// Layout detected from the weight keys.
    pub detected_layout: String,
    pub max_abs_diff_c0: f64,
    pub max_abs_diff_depth: f64,
    /// First (frame, codebook) whose logits differ by more than atol (teacher-forced).
    pub first_breach: Option<Breach>,
    pub greedy_frames_equal: bool,
    /// First (frame, codebook) where greedy decoding departs from the reference frames.
    pub first_greedy_mismatch: Option<[usize; 2]>,
    pub conforms: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConformReport {
    pub case: String,
    pub atol: f64,
    pub frames: usize,
    pub codebooks: usize,
    pub results: Vec<ConformResult>,
    pub conforms: bool,
}

/// Runs one backend on one layout of the case.
pub fn conform_one(
    case: &Case,
    kind: BackendKind,
    layout: Layout,
    atol: f64,
) -> Result<ConformResult> {
    let model_dir = case.dir.join(layout.name());
    let model = CsmModel::load(&model_dir)?;
    let cfg = &model.config;
    let c = cfg.audio_num_codebooks;
    if case.frames.first().map(Vec::len) != Some(c) || case.vocab != cfg.audio_vocab_size {
        bail!(
            "{}: the case's frames/logits do not match the model's {c} codebooks × {} vocab",
            case.dir.display(),
            cfg.audio_vocab_size
        );
    }
    let prompt = Frames::text(&case.prompt_ids, c, cfg.text_vocab_size)?;
    let mut b = backend::load(kind, &model, DType::F32)?;
    let greedy = SamplerSpec::greedy();
    let v = case.vocab;
    let forced = run_frames(
        b.as_mut(),
        &prompt,
        &LoopSpec {
            sampler: &greedy,
            max_frames: case.frames.len(),
            record: Record {
                logits: true,
                probs: false,
            },
            forced: Some(&case.frames),
            stop_on_eos: false,
        },
        c,
        v,
    )?;
    let (mut max_c0, mut max_depth, mut first) = (0f64, 0f64, None);
    for (f, out) in forced.outputs.iter().enumerate() {
        let logits = out.logits.as_ref().unwrap();
        for cb in 0..c {
            let ours = &logits[cb * v..(cb + 1) * v];
            let theirs = if cb == 0 {
                &case.c0_logits[f][..]
            } else {
                &case.depth_logits[f][(cb - 1) * v..cb * v]
            };
            let d = crate::runner::max_abs_diff(ours, theirs);
            if cb == 0 {
                max_c0 = max_c0.max(d)
            } else {
                max_depth = max_depth.max(d)
            }
            if d > atol && first.is_none() {
                first = Some(Breach {
                    frame: f,
                    codebook: cb,
                    abs_diff: d,
                });
            }
        }
    }
    let free = run_frames(
        b.as_mut(),
        &prompt,
        &LoopSpec {
            sampler: &greedy,
            max_frames: case.frames.len(),
            record: Record::default(),
            forced: None,
            stop_on_eos: false,
        },
        c,
        v,
    )?;
    let mismatch = case.frames.iter().enumerate().find_map(|(f, want)| {
        let got = free.fed.get(f)?;
        want.iter()
            .zip(got)
            .position(|(a, b)| a != b)
            .map(|cb| [f, cb])
    });
    let equal = mismatch.is_none() && free.fed.len() == case.frames.len();
    Ok(ConformResult {
        backend: kind.name().into(),
        layout: layout.name().into(),
        detected_layout: model.weights.layout.name().into(),
        max_abs_diff_c0: max_c0,
        max_abs_diff_depth: max_depth,
        conforms: first.is_none() && equal,
        first_breach: first,
        greedy_frames_equal: equal,
        first_greedy_mismatch: mismatch,
    })
}

pub fn conform(
    dir: &Path,
    backends: &[BackendKind],
    layouts: Option<&[Layout]>,
    atol: f64,
) -> Result<ConformReport> {
    let case = Case::load(dir)?;
    let available = case.layouts();
    let layouts: Vec<Layout> = match layouts {
        Some(l) => {
            for x in l {
                if !available.contains(x) {
                    bail!(
                        "{}: no {}/ model folder in this case",
                        dir.display(),
                        x.name()
                    );
                }
            }
            l.to_vec()
        }
        None => available,
    };
    if layouts.is_empty() {
        bail!(
            "{}: no model folder (original/ or hf/ with config.json)",
            dir.display()
        );
    }
    if backends.is_empty() {
        bail!("no backend compiled into this build (features `mlx`, `torch`)");
    }
    let mut results = Vec::new();
    for &kind in backends {
        for &layout in &layouts {
            results.push(conform_one(&case, kind, layout, atol)?);
        }
    }
    Ok(ConformReport {
        case: dir.display().to_string(),
        atol,
        frames: case.frames.len(),
        codebooks: case.frames.first().map_or(0, Vec::len),
        conforms: results.iter().all(|r| r.conforms),
        results,
    })
}

impl ConformReport {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} ({} frames × {} codebooks, atol {:.0e})",
            if self.conforms {
                "CONFORMS"
            } else {
                "DOES NOT CONFORM"
            },
            self.case,
            self.frames,
            self.codebooks,
            self.atol
        );
        let _ = writeln!(
            s,
            "  {:<6} {:<9} {:>12} {:>12}  {:<14} first breach",
            "backend", "layout", "max|Δ| c0", "max|Δ| depth", "greedy frames"
        );
        for r in &self.results {
            let breach = r.first_breach.as_ref().map_or("-".to_string(), |b| {
                format!(
                    "frame {} codebook {} (|Δ| {:.2e})",
                    b.frame, b.codebook, b.abs_diff
                )
            });
            let greedy = match r.first_greedy_mismatch {
                None if r.greedy_frames_equal => "equal".to_string(),
                None => "short".to_string(),
                Some([f, c]) => format!("differ @{f},{c}"),
            };
            let _ = writeln!(
                s,
                "  {:<6} {:<9} {:>12.3e} {:>12.3e}  {:<14} {}",
                r.backend, r.layout, r.max_abs_diff_c0, r.max_abs_diff_depth, greedy, breach
            );
        }
        s
    }
}
