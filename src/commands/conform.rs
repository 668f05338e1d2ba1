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
use crate::generate::{run_one, Mode, Plan};
use crate::model::{CsmModel, DType, Frames, Layout, Model};
use crate::sampling::SamplerSpec;
use anyhow::{bail, Result};
use ndarray::{s, Array2, Array3, ArrayD, ArrayView1, Ix2, Ix3};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The arrays of a conformance case.
pub struct Case {
    pub dir: PathBuf,
    pub prompt_ids: Vec<u32>,
    /// [F][C]
    pub frames: Vec<Vec<i32>>,
    /// [F, V]
    pub c0_logits: Array2<f32>,
    /// [F, C-1, V]
    pub depth_logits: Array3<f32>,
    pub vocab: usize,
}

/// Reads a whole .npy of integers or floats as f64 in C order (whatever the file's order),
/// saying whether it holds integers. Every error names the file.
fn read_case_array(path: &Path) -> Result<(ArrayD<f64>, bool)> {
    let (a, dtype) = crate::npy::read_array::<f64>(path)?;
    Ok((a, dtype.is_integer()))
}

impl Case {
    /// Reads and checks the case's arrays (shapes consistent with each other, token ids
    /// integers, logits finite); every error names the file. [`Case::check_model`] checks them
    /// against a model before any weight is loaded into a library.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!(
                "{}: not a directory (expected a conformance case)",
                dir.display()
            );
        }
        let file = |n: &str| dir.join(n);
        let (prompt, p_int) = read_case_array(&file("prompt_ids.npy"))?;
        let (frames, f_int) = read_case_array(&file("frames.npy"))?;
        let (c0, _) = read_case_array(&file("c0_logits.npy"))?;
        let (depth, _) = read_case_array(&file("depth_logits.npy"))?;
        let (ps, fs, cs, ds) = (prompt.shape(), frames.shape(), c0.shape(), depth.shape());
        let name = |n: &str| file(n).display().to_string();
        if ps.len() != 1 || ps[0] == 0 {
            bail!(
                "{}: expected shape [P] with P ≥ 1, got {ps:?}",
                name("prompt_ids.npy")
            );
        }
        if !p_int {
            bail!(
                "{}: token ids must be integers (i4, i8 or u4), found floats",
                name("prompt_ids.npy")
            );
        }
        let [f, c] = *fs else {
            bail!("{}: expected shape [F, C], got {fs:?}", name("frames.npy"));
        };
        if f == 0 || c < 2 {
            bail!(
                "{}: expected at least 1 frame of at least 2 codebooks, got {fs:?}",
                name("frames.npy")
            );
        }
        if !f_int {
            bail!(
                "{}: audio tokens must be integers (i4, i8 or u4), found floats",
                name("frames.npy")
            );
        }
        let [cf, v] = *cs else {
            bail!(
                "{}: expected shape [F, V] = [{f}, V], got {cs:?}",
                name("c0_logits.npy")
            );
        };
        if cf != f || v == 0 {
            bail!(
                "{}: expected shape [{f}, V] (one row per frame of frames.npy), got {cs:?}",
                name("c0_logits.npy")
            );
        }
        if ds != [f, c - 1, v] {
            bail!(
                "{}: expected shape [{f}, {}, {v}] (frames × codebooks 1..{} × the vocab of c0_logits.npy), got {ds:?}",
                name("depth_logits.npy"),
                c - 1,
                c - 1
            );
        }
        for (n, x) in [("c0_logits.npy", &c0), ("depth_logits.npy", &depth)] {
            if let Some((i, bad)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                bail!(
                    "{}: reference value {i} (flat index) is {bad}; a reference must be finite",
                    name(n)
                );
            }
        }
        for (n, x) in [("prompt_ids.npy", &prompt), ("frames.npy", &frames)] {
            if let Some(bad) = x.iter().find(|&&t| t < 0.0 || t > u32::MAX as f64) {
                bail!("{}: token id {bad} is out of range", name(n));
            }
        }
        Ok(Case {
            dir: dir.to_path_buf(),
            prompt_ids: prompt.iter().map(|&x| x as u32).collect(),
            frames: frames
                .into_dimensionality::<Ix2>()?
                .outer_iter()
                .map(|r| r.iter().map(|&x| x as i32).collect())
                .collect(),
            c0_logits: c0.mapv(|x| x as f32).into_dimensionality::<Ix2>()?,
            depth_logits: depth.mapv(|x| x as f32).into_dimensionality::<Ix3>()?,
            vocab: v,
        })
    }

    /// The reference logits of codebook `cb` at frame `f` ([V]): codebook 0 from
    /// `c0_logits.npy`, the others from `depth_logits.npy`.
    pub fn reference_logits(&self, f: usize, cb: usize) -> ArrayView1<'_, f32> {
        if cb == 0 {
            self.c0_logits.row(f)
        } else {
            self.depth_logits.slice(s![f, cb - 1, ..])
        }
    }

    /// Checks the case against `cfg` (codebooks, audio vocab, token ranges), naming the file
    /// that does not fit.
    pub fn check_model(&self, cfg: &crate::model::CsmConfig, model_dir: &Path) -> Result<()> {
        let name = |n: &str| self.dir.join(n).display().to_string();
        let c = cfg.audio_num_codebooks;
        let width = self.frames.first().map_or(0, Vec::len);
        if width != c {
            bail!(
                "{}: {width} codebooks per frame, but the model in {} has {c}",
                name("frames.npy"),
                model_dir.display()
            );
        }
        if self.vocab != cfg.audio_vocab_size {
            bail!(
                "{}: rows of {} logits, but the model in {} has an audio vocab of {}",
                name("c0_logits.npy"),
                self.vocab,
                model_dir.display(),
                cfg.audio_vocab_size
            );
        }
        if let Some(t) = self
            .prompt_ids
            .iter()
            .find(|&&t| t as usize >= cfg.text_vocab_size)
        {
            bail!(
                "{}: token id {t} is outside the model's text vocab of {}",
                name("prompt_ids.npy"),
                cfg.text_vocab_size
            );
        }
        if let Some((f, t)) = self.frames.iter().enumerate().find_map(|(f, r)| {
            r.iter()
                .find(|&&t| t as usize >= cfg.audio_vocab_size)
                .map(|t| (f, t))
        }) {
            bail!(
                "{}: frame {f} holds token {t}, outside the model's audio vocab of {}",
                name("frames.npy"),
                cfg.audio_vocab_size
            );
        }
        Ok(())
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
    case.check_model(cfg, &model_dir)?;
    let prompt = Frames::text(&case.prompt_ids, c, cfg.text_vocab_size)?;
    let model = Model::Csm(model);
    let mut b = backend::load(kind, &model, DType::F32)?;
    let greedy = SamplerSpec::greedy();
    let v = case.vocab;
    let plan = Plan {
        sampler: &greedy,
        max_steps: case.frames.len(),
        record: Record {
            logits: true,
            probs: false,
        },
        mode: Mode::Independent,
        forced: Some(&case.frames),
        stop: None,
        codebooks: c,
        vocab: v,
    };
    let forced = run_one(b.as_mut(), &prompt, &plan)?;
    let (mut max_c0, mut max_depth, mut first) = (0f64, 0f64, None);
    for (f, out) in forced.outputs.iter().enumerate() {
        let logits = out.logits.as_ref().unwrap();
        for cb in 0..c {
            let ours = &logits[cb * v..(cb + 1) * v];
            let theirs = case.reference_logits(f, cb);
            let theirs = theirs.as_slice().expect("a row of a standard-layout array");
            let d = crate::generate::max_abs_diff(ours, theirs);
            if cb == 0 {
                max_c0 = max_c0.max(d)
            } else {
                max_depth = max_depth.max(d)
            }
            // NaN-proof: a breach unless the difference is provably within the tolerance.
            let within = d.partial_cmp(&atol).is_some_and(|o| o.is_le());
            if !within && first.is_none() {
                first = Some(Breach {
                    frame: f,
                    codebook: cb,
                    abs_diff: d,
                });
            }
        }
    }
    let free_plan = Plan {
        record: Record::default(),
        forced: None,
        ..plan
    };
    let free = run_one(b.as_mut(), &prompt, &free_plan)?;
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
        detected_layout: model.layout().into(),
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
    if !(atol.is_finite() && atol >= 0.0) {
        bail!("--atol {atol}: expected a finite number ≥ 0");
    }
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
    // Every layout's config against the case, before any weight is loaded into a library.
    for &layout in &layouts {
        let model_dir = case.dir.join(layout.name());
        let cfg = crate::model::CsmConfig::from_file(&model_dir.join("config.json"))?;
        case.check_model(&cfg, &model_dir)?;
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
