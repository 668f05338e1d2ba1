//! [`Run`]: a validated, complete run directory; small arrays loaded, logits/probs streamed.
use super::{Manifest, Storage, FORMAT_NAME, FORMAT_VERSION};
use crate::npy::{self, Dtype, NpyHeader};
use anyhow::{bail, Context, Result};
use ndarray::{ArrayView1, ArrayView2, Axis};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A complete run directory, validated on open.
#[derive(Debug)]
pub struct Run {
    dir: PathBuf,
    manifest: Manifest,
    tokens: Vec<i32>,
    post_tokens: Vec<i32>,
    /// `fed_tokens.npy` when present (what the model was fed, if not the sampled tokens).
    fed_tokens: Option<Vec<i32>>,
    step_us: Vec<f64>,
    logits: Option<Dists>,
    probs: Option<Dists>,
}

/// One step's stored distribution (logits or probs) of one codebook.
#[derive(Debug, Clone, Copy)]
pub enum Row<'a> {
    /// All `vocab` values.
    Dense(&'a [f32]),
    /// The N largest values (descending) and their vocab indices.
    Top {
        values: &'a [f32],
        indices: &'a [i32],
    },
}

/// Reusable buffer holding one frame (all codebooks) of a [`Dists`].
#[derive(Debug, Default, Clone)]
pub struct FrameBuf {
    values: Vec<f32>,
    indices: Vec<i32>,
    width: usize,
    top: bool,
    scratch: Vec<u8>,
}

/// A view of a contiguous row of a standard-layout array as a slice.
fn slice<T>(row: ArrayView1<'_, T>) -> &'_ [T] {
    row.to_slice().expect("rows of a FrameBuf are contiguous")
}

impl FrameBuf {
    /// Codebook `c` of the frame last read into this buffer.
    pub fn row(&self, c: usize) -> Row<'_> {
        let values = slice(self.values_view().index_axis_move(Axis(0), c));
        match self.indices_view() {
            Some(ix) => Row::Top {
                values,
                indices: slice(ix.index_axis_move(Axis(0), c)),
            },
            None => Row::Dense(values),
        }
    }

    /// Every codebook's row of the frame, in codebook order.
    pub fn rows(&self) -> impl Iterator<Item = Row<'_>> + '_ {
        (0..self.codebooks()).map(|c| self.row(c))
    }

    /// Codebooks in the frame last read.
    pub fn codebooks(&self) -> usize {
        self.values.len().checked_div(self.width).unwrap_or(0)
    }

    /// All codebooks' values of the frame, `[C, width]` row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The frame's values as a `[codebooks, width]` view of the buffer (no copy).
    pub fn values_view(&self) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((self.codebooks(), self.width), &self.values)
            .expect("a FrameBuf holds whole rows")
    }

    /// For top-N storage, the vocab indices of [`FrameBuf::values_view`], `[codebooks, N]`.
    pub fn indices_view(&self) -> Option<ArrayView2<'_, i32>> {
        self.top.then(|| {
            ArrayView2::from_shape((self.codebooks(), self.width), &self.indices)
                .expect("a FrameBuf holds whole rows")
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }
}

/// Streaming access to `logits` or `probs` of a run: one frame at a time via positioned reads,
/// so memory stays at one frame regardless of the file size.
#[derive(Debug)]
pub struct Dists {
    storage: Storage,
    codebooks: usize,
    width: usize,
    frames: usize,
    values: (File, NpyHeader),
    indices: Option<(File, NpyHeader)>,
    /// Total bytes of the value (and index) files' data.
    data_bytes: u64,
}

impl Dists {
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Values per step (vocab for dense storage, N for top:N).
    pub fn width(&self) -> usize {
        self.width
    }

    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Bytes of array data behind these distributions.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Reads frame `f` (all codebooks) into `buf`.
    pub fn read_frame(&self, f: usize, buf: &mut FrameBuf) -> Result<()> {
        anyhow::ensure!(
            f < self.frames,
            "frame {f} out of range (run has {} frames)",
            self.frames
        );
        let n = self.codebooks * self.width;
        buf.width = self.width;
        buf.top = self.indices.is_some();
        buf.values.resize(n, 0.0);
        npy::read_f32_at(
            &self.values.0,
            &self.values.1,
            f * n,
            &mut buf.values,
            &mut buf.scratch,
        )
        .with_context(|| format!("reading frame {f}"))?;
        if let Some((file, h)) = &self.indices {
            buf.indices.resize(n, 0);
            npy::read_i32_at(file, h, f * n, &mut buf.indices, &mut buf.scratch)
                .with_context(|| format!("reading frame {f} indices"))?;
        }
        Ok(())
    }
}

fn expect_array(path: &Path, dtypes: &[Dtype], shape: &[usize], what: &str) -> Result<NpyHeader> {
    if !path.exists() {
        bail!(
            "{}: missing (expected {what}: shape {:?}, dtype {})",
            path.display(),
            shape,
            dtypes
                .iter()
                .map(|d| d.descr())
                .collect::<Vec<_>>()
                .join(" or ")
        );
    }
    let h = npy::read_header(path)?;
    if !dtypes.contains(&h.dtype) {
        bail!(
            "{}: dtype {} but expected {} ({what})",
            path.display(),
            h.dtype.descr(),
            dtypes
                .iter()
                .map(|d| d.descr())
                .collect::<Vec<_>>()
                .join(" or ")
        );
    }
    if h.shape != shape {
        bail!(
            "{}: shape {:?} but the manifest says {:?} ({what})",
            path.display(),
            h.shape,
            shape
        );
    }
    Ok(h)
}

fn open_dists(
    dir: &Path,
    name: &str,
    storage: Storage,
    frames: usize,
    codebooks: usize,
    vocab: usize,
) -> Result<Option<Dists>> {
    let open = |p: &Path| File::open(p).with_context(|| format!("{}: cannot open", p.display()));
    Ok(match storage {
        Storage::None => None,
        Storage::F32 | Storage::F16 => {
            let dt = if storage == Storage::F32 {
                Dtype::F32
            } else {
                Dtype::F16
            };
            let p = dir.join(format!("{name}.npy"));
            let h = expect_array(
                &p,
                &[dt],
                &[frames, codebooks, vocab],
                &format!("{name} [frames, codebooks, vocab] stored as {storage}"),
            )?;
            let bytes = (h.elements() * dt.size()) as u64;
            Some(Dists {
                storage,
                codebooks,
                width: vocab,
                frames,
                values: (open(&p)?, h),
                indices: None,
                data_bytes: bytes,
            })
        }
        Storage::Top(n) => {
            let n = n.min(vocab);
            let pv = dir.join(format!("{name}_top_values.npy"));
            let pi = dir.join(format!("{name}_top_indices.npy"));
            let what = format!("{name} top-{n} [frames, codebooks, N] stored as {storage}");
            let hv = expect_array(&pv, &[Dtype::F32], &[frames, codebooks, n], &what)?;
            let hi = expect_array(
                &pi,
                &[Dtype::I32, Dtype::I64],
                &[frames, codebooks, n],
                &what,
            )?;
            let bytes = (hv.elements() * 4 + hi.elements() * hi.dtype.size()) as u64;
            Some(Dists {
                storage: Storage::Top(n),
                codebooks,
                width: n,
                frames,
                values: (open(&pv)?, hv),
                indices: Some((open(&pi)?, hi)),
                data_bytes: bytes,
            })
        }
    })
}

/// `[F·C]` row-major tokens as a `[F, C]` view (`c` > 0; the length was checked on open).
fn frames_view(tokens: &[i32], c: usize) -> ArrayView2<'_, i32> {
    ArrayView2::from_shape((tokens.len() / c, c), tokens).expect("whole frames of tokens")
}

fn read_ints(path: &Path, h: &NpyHeader) -> Result<Vec<i32>> {
    let f = File::open(path)?;
    let mut out = vec![0; h.elements()];
    npy::read_i32_at(&f, h, 0, &mut out, &mut Vec::new())
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(out)
}

impl Run {
    /// Opens and validates a complete run directory.
    pub fn open(dir: &Path) -> Result<Run> {
        if dir.extension().is_some_and(|e| e == "partial") {
            bail!(
                "{}: an unfinished run (`.partial` directories are still being written or were abandoned)",
                dir.display()
            );
        }
        if !dir.is_dir() {
            bail!(
                "{}: not a directory (expected a run directory with manifest.json)",
                dir.display()
            );
        }
        let mpath = dir.join("manifest.json");
        let text = std::fs::read_to_string(&mpath).with_context(|| {
            format!(
                "{}: missing or unreadable (every run directory has one)",
                mpath.display()
            )
        })?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", mpath.display()))?;
        let fmt = raw.get("format").and_then(|v| v.as_str()).unwrap_or("");
        if fmt != FORMAT_NAME {
            bail!(
                "{}: format is {fmt:?}, expected {FORMAT_NAME:?}",
                mpath.display()
            );
        }
        let ver = raw.get("format_version").and_then(|v| v.as_u64());
        if ver != Some(FORMAT_VERSION as u64) {
            bail!(
                "{}: format_version {} is not supported (this build reads version {FORMAT_VERSION})",
                mpath.display(),
                ver.map(|v| v.to_string()).unwrap_or_else(|| "missing".into())
            );
        }
        let status = raw
            .get("status")
            .and_then(|v| v.as_str())
            .unwrap_or("missing");
        if status != "complete" {
            bail!(
                "{}: status is {status:?}, expected \"complete\" (the writer did not finish)",
                mpath.display()
            );
        }
        let manifest: Manifest = super::parse_manifest(raw).with_context(|| {
            format!(
                "{}: does not match the manifest schema (schema/manifest.schema.json)",
                mpath.display()
            )
        })?;
        let (f, c, v) = (manifest.frames, manifest.codebooks, manifest.vocab);
        if c == 0 || v == 0 {
            bail!(
                "{}: codebooks and vocab must be > 0 (got {c}, {v})",
                mpath.display()
            );
        }
        let ls: Storage = manifest
            .logits_storage
            .parse()
            .with_context(|| format!("{}: logits_storage", mpath.display()))?;
        let ps: Storage = manifest
            .probs_storage
            .parse()
            .with_context(|| format!("{}: probs_storage", mpath.display()))?;
        let ints = [Dtype::I32, Dtype::I64];
        let tp = dir.join("tokens.npy");
        let th = expect_array(&tp, &ints, &[f, c], "sampled tokens [frames, codebooks]")?;
        let pp = dir.join("post_tokens.npy");
        let ph = expect_array(
            &pp,
            &ints,
            &[f, c],
            "post-processed tokens [frames, codebooks]",
        )?;
        let sp = dir.join("step_us.npy");
        let sh = expect_array(
            &sp,
            &[Dtype::F64, Dtype::F32],
            &[f],
            "per-frame time in µs [frames]",
        )?;
        let tokens = read_ints(&tp, &th)?;
        let post_tokens = read_ints(&pp, &ph)?;
        let fp = dir.join("fed_tokens.npy");
        let fed_tokens = if fp.exists() {
            let fh = expect_array(
                &fp,
                &ints,
                &[f, c],
                "tokens fed to the model [frames, codebooks]",
            )?;
            Some(read_ints(&fp, &fh)?)
        } else {
            None
        };
        let mut step32 = vec![0f32; 0];
        let step_us = if sh.dtype == Dtype::F64 {
            let file = File::open(&sp)?;
            let mut b = vec![0u8; f * 8];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut b, sh.data_offset)?;
            b.chunks_exact(8)
                .map(|x| f64::from_le_bytes(x.try_into().unwrap()))
                .collect()
        } else {
            step32.resize(f, 0.0);
            npy::read_f32_at(&File::open(&sp)?, &sh, 0, &mut step32, &mut Vec::new())?;
            step32.iter().map(|&x| x as f64).collect()
        };
        let fed_ref = fed_tokens.as_ref().unwrap_or(&tokens);
        for (name, toks) in [
            ("tokens.npy", &tokens),
            ("post_tokens.npy", &post_tokens),
            ("fed_tokens.npy", fed_ref),
        ] {
            if let Some(((frame, cb), t)) = frames_view(toks, c)
                .indexed_iter()
                .find(|(_, &t)| t < 0 || t as usize >= v)
            {
                bail!(
                    "{}: token {t} at frame {frame} codebook {cb} is outside the vocab 0..{v}",
                    dir.join(name).display()
                );
            }
        }
        let logits = open_dists(dir, "logits", ls, f, c, v)?;
        let probs = open_dists(dir, "probs", ps, f, c, v)?;
        Ok(Run {
            dir: dir.to_path_buf(),
            manifest,
            tokens,
            post_tokens,
            fed_tokens,
            step_us,
            logits,
            probs,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn frames(&self) -> usize {
        self.manifest.frames
    }

    pub fn codebooks(&self) -> usize {
        self.manifest.codebooks
    }

    pub fn vocab(&self) -> usize {
        self.manifest.vocab
    }

    /// Sampled tokens, `[F, C]` row-major.
    pub fn tokens(&self) -> &[i32] {
        &self.tokens
    }

    /// Tokens after post-processing, `[F, C]` row-major.
    pub fn post_tokens(&self) -> &[i32] {
        &self.post_tokens
    }

    /// The tokens fed back to the model, `[F, C]` row-major: `fed_tokens.npy` when the run
    /// has one (teacher forcing, a re-score), else the sampled tokens.
    pub fn fed_tokens(&self) -> &[i32] {
        self.fed_tokens.as_deref().unwrap_or(&self.tokens)
    }

    /// Whether the run recorded fed tokens that differ from the sampled ones.
    pub fn has_fed_tokens(&self) -> bool {
        self.fed_tokens.is_some()
    }

    /// Sampled token at frame `f`, codebook `c`.
    pub fn token(&self, f: usize, c: usize) -> i32 {
        self.tokens_view()[[f, c]]
    }

    /// [`Run::tokens`] as a `[frames, codebooks]` view.
    pub fn tokens_view(&self) -> ArrayView2<'_, i32> {
        frames_view(&self.tokens, self.codebooks())
    }

    /// [`Run::post_tokens`] as a `[frames, codebooks]` view.
    pub fn post_tokens_view(&self) -> ArrayView2<'_, i32> {
        frames_view(&self.post_tokens, self.codebooks())
    }

    /// [`Run::fed_tokens`] as a `[frames, codebooks]` view.
    pub fn fed_tokens_view(&self) -> ArrayView2<'_, i32> {
        frames_view(self.fed_tokens(), self.codebooks())
    }

    /// Per-frame wall time, µs.
    pub fn step_us(&self) -> &[f64] {
        &self.step_us
    }

    /// Raw logits, if recorded.
    pub fn logits(&self) -> Option<&Dists> {
        self.logits.as_ref()
    }

    /// Sampler probabilities, if recorded.
    pub fn probs(&self) -> Option<&Dists> {
        self.probs.as_ref()
    }
}
