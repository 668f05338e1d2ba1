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
    read_npy_typed(path).map(|(shape, values, _)| (shape, values))
}

/// [`read_npy`], also saying whether the array holds integers. The file's length is checked
/// against its header before anything is read, so a truncated array is named as such.
pub fn read_npy_typed(path: &Path) -> Result<(Vec<usize>, Vec<f64>, bool)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .with_context(|| format!("{}: not a .npy file", path.display()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
    let dtype = npy.dtype();
    let descr = match &dtype {
        npyz::DType::Plain(t) => t.to_string(),
        other => bail!("{}: unsupported dtype {other:?}", path.display()),
    };
    let item = match &descr[1..] {
        "f4" | "i4" | "u4" => 4,
        "f8" | "i8" => 8,
        other => bail!(
            "{}: dtype {other} not supported (expected f4, f8, i4, i8 or u4)",
            path.display()
        ),
    };
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .with_context(|| format!("{}: shape {shape:?} is too large", path.display()))?;
    let header = npy_header_len(&bytes)
        .with_context(|| format!("{}: not a .npy file (bad header)", path.display()))?;
    let need = count
        .checked_mul(item)
        .and_then(|n| n.checked_add(header))
        .with_context(|| format!("{}: shape {shape:?} is too large", path.display()))?;
    if bytes.len() < need {
        bail!(
            "{}: truncated: the header says shape {shape:?} of {descr} ({need} bytes with the header), the file has {} bytes",
            path.display(),
            bytes.len()
        );
    }
    let npy = npyz::NpyFile::new(&bytes[..])?;
    let fortran = npy.order() == npyz::Order::Fortran;
    let ctx = || format!("{}: cannot read the array", path.display());
    let (values, integer): (Vec<f64>, bool) = match &descr[1..] {
        "f4" => (
            npy.into_vec::<f32>()
                .with_context(ctx)?
                .into_iter()
                .map(f64::from)
                .collect(),
            false,
        ),
        "f8" => (npy.into_vec::<f64>().with_context(ctx)?, false),
        "i4" => (
            npy.into_vec::<i32>()
                .with_context(ctx)?
                .into_iter()
                .map(f64::from)
                .collect(),
            true,
        ),
        "i8" => (
            npy.into_vec::<i64>()
                .with_context(ctx)?
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            true,
        ),
        _ => (
            npy.into_vec::<u32>()
                .with_context(ctx)?
                .into_iter()
                .map(f64::from)
                .collect(),
            true,
        ),
    };
    // `fortran_order: True` (numpy writes a transposed array so): the values come in
    // column-major order; every reader here indexes row-major.
    let values = if fortran {
        fortran_to_c(&shape, values)
    } else {
        values
    };
    Ok((shape, values, integer))
}

/// Reorders the values of an array of `shape` stored in Fortran (column-major) order into C
/// (row-major) order.
pub fn fortran_to_c<T: Copy + Default>(shape: &[usize], values: Vec<T>) -> Vec<T> {
    if shape.len() < 2 || values.is_empty() {
        return values;
    }
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len() - 1).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let mut out = vec![T::default(); values.len()];
    let mut idx = vec![0usize; shape.len()];
    for v in values {
        let at: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out[at] = v;
        // Fortran order: the first index varies fastest.
        for d in 0..shape.len() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// Length of a .npy header (magic, version, header length field, header).
pub fn npy_header_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return None;
    }
    match bytes[6] {
        1 => Some(10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
        2 | 3 if bytes.len() >= 12 => {
            Some(12 + u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize)
        }
        _ => None,
    }
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
        let (ps, prompt, p_int) = read_npy_typed(&file("prompt_ids.npy"))?;
        let (fs, frames, f_int) = read_npy_typed(&file("frames.npy"))?;
        let (cs, c0, _) = read_npy_typed(&file("c0_logits.npy"))?;
        let (ds, depth, _) = read_npy_typed(&file("depth_logits.npy"))?;
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
        let [f, c] = fs[..] else {
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
        let [cf, v] = cs[..] else {
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
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{}: reference value {i} (flat index) is {}; a reference must be finite",
                    name(n),
                    x[i]
                );
            }
        }
        for (n, x) in [("prompt_ids.npy", &prompt), ("frames.npy", &frames)] {
            if let Some(bad) = x.iter().find(|&&t| t < 0.0 || t > u32::MAX as f64) {
                bail!("{}: token id {bad} is out of range", name(n));
            }
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
            let theirs = if cb == 0 {
                &case.c0_logits[f][..]
            } else {
                &case.depth_logits[f][(cb - 1) * v..cb * v]
            };
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

#[cfg(test)]
mod npy_order_tests {
    use super::*;

    /// A version-1 .npy with the header dict `dict` and little-endian i32 `data`.
    fn npy_bytes(dict: &str, data: &[i32]) -> Vec<u8> {
        let mut h = dict.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        for v in data {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn fortran_order_arrays_are_read_in_c_order() {
        let dir = tempfile::tempdir().unwrap();
        // a = [[0, 1, 2], [3, 4, 5]] stored column by column (numpy's `a.T.copy().T`).
        let f2 = dir.path().join("f2.npy");
        std::fs::write(
            &f2,
            npy_bytes(
                "{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3), }",
                &[0, 3, 1, 4, 2, 5],
            ),
        )
        .unwrap();
        let (shape, v) = read_npy(&f2).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(v, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        // The same array in C order reads the same.
        let c2 = dir.path().join("c2.npy");
        std::fs::write(
            &c2,
            npy_bytes(
                "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }",
                &[0, 1, 2, 3, 4, 5],
            ),
        )
        .unwrap();
        assert_eq!(read_npy(&c2).unwrap(), (shape, v));
        // Three dimensions: b[i, j, k] = 100 i + 10 j + k, shape (2, 3, 2), column-major.
        let mut data = vec![];
        for k in 0..2 {
            for j in 0..3 {
                for i in 0..2 {
                    data.push(100 * i + 10 * j + k);
                }
            }
        }
        let f3 = dir.path().join("f3.npy");
        std::fs::write(
            &f3,
            npy_bytes(
                "{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3, 2), }",
                &data,
            ),
        )
        .unwrap();
        let (shape, v) = read_npy(&f3).unwrap();
        assert_eq!(shape, vec![2, 3, 2]);
        let want: Vec<f64> = (0..2)
            .flat_map(|i| {
                (0..3).flat_map(move |j| (0..2).map(move |k| (100 * i + 10 * j + k) as f64))
            })
            .collect();
        assert_eq!(v, want);
    }

    #[test]
    fn the_mimi_case_codes_read_as_numpy_sees_them() {
        // codes.npy of the shared Mimi case is stored fortran_order; its rows are frames.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/conformance/mimi-tiny-transformers");
        let (shape, v) = read_npy(&dir.join("codes.npy")).unwrap();
        assert_eq!(shape, vec![20, 8]);
        // numpy: list(np.load("codes.npy")[0])
        let first_row = [1880.0, 1906.0, 1561.0, 1012.0, 1006.0, 1280.0, 8.0, 1239.0];
        assert_eq!(&v[..8], &first_row[..]);
    }
}
