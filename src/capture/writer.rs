//! [`RunWriter`]: streams a run to `<dir>.partial`, renames it to `<dir>` when complete.
use super::{FrameRecord, Manifest, Storage, Timings, FORMAT_NAME, FORMAT_VERSION};
use crate::npy::{Dtype, StreamingNpy};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// Streaming writer of one run directory (DESIGN §4, docs/run-format.md).
pub struct RunWriter {
    dir: PathBuf,
    partial: PathBuf,
    manifest: Manifest,
    codebooks: usize,
    vocab: usize,
    logits: Storage,
    probs: Storage,
    tokens: StreamingNpy,
    post_tokens: StreamingNpy,
    step_us: StreamingNpy,
    logits_out: DistOut,
    probs_out: DistOut,
    frames: usize,
    /// Replace an existing run in `dir` at finish.
    replace: bool,
    /// Removes `<dir>.partial` unless the run finished.
    guard: PartialGuard,
    /// What the model was fed, `[frames, codebooks]`, kept until `finish` (small).
    fed: Vec<i32>,
    /// Whether any fed row differs from the sampled one (then `fed_tokens.npy` is written).
    fed_differs: bool,
    scratch_v: Vec<f32>,
    scratch_i: Vec<i32>,
    order: Vec<u32>,
}

enum DistOut {
    None,
    Dense(StreamingNpy),
    Top {
        n: usize,
        values: StreamingNpy,
        indices: StreamingNpy,
    },
}

/// `<dir>.partial` for a run directory `dir`.
pub fn partial_path(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

impl DistOut {
    fn create(
        dir: &Path,
        name: &str,
        storage: Storage,
        codebooks: usize,
        vocab: usize,
    ) -> Result<Self> {
        Ok(match storage {
            Storage::None => DistOut::None,
            Storage::F32 => DistOut::Dense(StreamingNpy::create(
                &dir.join(format!("{name}.npy")),
                Dtype::F32,
                &[codebooks, vocab],
            )?),
            Storage::F16 => DistOut::Dense(StreamingNpy::create(
                &dir.join(format!("{name}.npy")),
                Dtype::F16,
                &[codebooks, vocab],
            )?),
            Storage::Top(n) => {
                let n = n.min(vocab);
                DistOut::Top {
                    n,
                    values: StreamingNpy::create(
                        &dir.join(format!("{name}_top_values.npy")),
                        Dtype::F32,
                        &[codebooks, n],
                    )?,
                    indices: StreamingNpy::create(
                        &dir.join(format!("{name}_top_indices.npy")),
                        Dtype::I32,
                        &[codebooks, n],
                    )?,
                }
            }
        })
    }

    fn finish(self) -> Result<()> {
        match self {
            DistOut::None => Ok(()),
            DistOut::Dense(w) => w.finish(),
            DistOut::Top {
                values, indices, ..
            } => {
                values.finish()?;
                indices.finish()
            }
        }
    }
}

/// Indices of the `n` largest entries of `row`, largest first, ties broken by lower index;
/// NaN sorts below everything.
pub fn top_n_indices(row: &[f32], n: usize, order: &mut Vec<u32>) {
    order.clear();
    order.extend(0..row.len() as u32);
    let cmp = |a: &u32, b: &u32| {
        let (x, y) = (row[*a as usize], row[*b as usize]);
        let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
        key(y).total_cmp(&key(x)).then(a.cmp(b))
    };
    let n = n.min(row.len());
    if n < row.len() && n > 0 {
        order.select_nth_unstable_by(n - 1, cmp);
    }
    order.truncate(n);
    order.sort_unstable_by(cmp);
}

impl RunWriter {
    /// Starts a run that will be renamed to `dir` by [`RunWriter::finish`]. Refuses an
    /// existing `dir` unless it is empty (see [`RunWriter::create_replacing`]).
    pub fn create(
        dir: &Path,
        manifest: Manifest,
        codebooks: usize,
        vocab: usize,
        logits: Storage,
        probs: Storage,
    ) -> Result<RunWriter> {
        Self::create_replacing(dir, manifest, codebooks, vocab, logits, probs, false)
    }

    /// Checks that a run may be written to `dir`: it is absent or empty, or (with `replace`) a
    /// run directory written by csm-parity. Anything else is never touched.
    pub fn check_target(dir: &Path, replace: bool) -> Result<()> {
        use crate::outputs::{existing, Existing};
        match existing(dir)? {
            Existing::Missing | Existing::EmptyDir => {}
            Existing::Run { .. } if replace => {}
            Existing::Run { complete } => bail!(
                "{}: a{} run already exists; pass --force to replace it (it is replaced only once the new run is complete)",
                dir.display(),
                if complete { " complete" } else { "n incomplete" }
            ),
            Existing::NotADir => bail!(
                "{}: exists and is not a directory; expected a run directory (or a new path)",
                dir.display()
            ),
            Existing::Ours(_) | Existing::Foreign => bail!(
                "{}: exists and is not a csm-parity run; csm-parity will not touch it (choose another --out)",
                dir.display()
            ),
        }
        let partial = partial_path(dir);
        match existing(&partial)? {
            Existing::Missing | Existing::EmptyDir | Existing::Run { .. } => Ok(()),
            _ => bail!(
                "{}: exists and is not a partial csm-parity run; csm-parity will not touch it",
                partial.display()
            ),
        }
    }

    /// [`RunWriter::create`]; with `replace`, an existing run in `dir` (never anything else) is
    /// replaced when [`RunWriter::finish`] succeeds — until then it stays as it was. A writer
    /// dropped before `finish` removes its `<dir>.partial`.
    pub fn create_replacing(
        dir: &Path,
        manifest: Manifest,
        codebooks: usize,
        vocab: usize,
        logits: Storage,
        probs: Storage,
        replace: bool,
    ) -> Result<RunWriter> {
        ensure!(codebooks > 0, "run writer: codebooks must be > 0");
        ensure!(vocab > 0, "run writer: vocab must be > 0");
        Self::check_target(dir, replace)?;
        let partial = partial_path(dir);
        if partial.exists() {
            // A stale partial run of ours (checked above): an earlier writer was killed.
            std::fs::remove_dir_all(&partial).with_context(|| {
                format!("{}: cannot remove stale partial run", partial.display())
            })?;
        }
        std::fs::create_dir_all(&partial)
            .with_context(|| format!("{}: cannot create", partial.display()))?;
        let guard = PartialGuard(Some(partial.clone()));
        let mut manifest = manifest;
        manifest.format = FORMAT_NAME.to_string();
        manifest.format_version = FORMAT_VERSION;
        manifest.status = "partial".to_string();
        manifest.frames = 0;
        manifest.codebooks = codebooks;
        manifest.vocab = vocab;
        manifest.logits_storage = logits.to_string();
        manifest.probs_storage = probs.to_string();
        write_json_atomic(&partial.join("manifest.json"), &manifest)?;
        let w = RunWriter {
            tokens: StreamingNpy::create(&partial.join("tokens.npy"), Dtype::I32, &[codebooks])?,
            post_tokens: StreamingNpy::create(
                &partial.join("post_tokens.npy"),
                Dtype::I32,
                &[codebooks],
            )?,
            step_us: StreamingNpy::create(&partial.join("step_us.npy"), Dtype::F64, &[])?,
            logits_out: DistOut::create(&partial, "logits", logits, codebooks, vocab)?,
            probs_out: DistOut::create(&partial, "probs", probs, codebooks, vocab)?,
            dir: dir.to_path_buf(),
            partial,
            manifest,
            codebooks,
            vocab,
            logits,
            probs,
            frames: 0,
            replace,
            guard,
            fed: Vec::new(),
            fed_differs: false,
            scratch_v: Vec::new(),
            scratch_i: Vec::new(),
            order: Vec::new(),
        };
        Ok(w)
    }

    /// Frames written so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// The `<dir>.partial` directory being written.
    pub fn partial_dir(&self) -> &Path {
        &self.partial
    }

    /// Appends one frame whose sampled tokens were fed back to the model.
    pub fn push(&mut self, rec: &FrameRecord) -> Result<()> {
        self.push_fed(rec, None)
    }

    /// Appends one frame; `fed` is what the model was given as the next input when it is not
    /// the sampled tokens (teacher forcing, a re-score). `fed_tokens.npy` is written at
    /// `finish` when any frame's fed tokens differ from its sampled ones.
    pub fn push_fed(&mut self, rec: &FrameRecord, fed: Option<&[i32]>) -> Result<()> {
        let c = self.codebooks;
        if let Some(fed) = fed {
            ensure!(
                fed.len() == c,
                "frame {}: {} fed tokens, expected {c} (one per codebook)",
                self.frames,
                fed.len()
            );
            if let Some(t) = fed.iter().find(|&&t| t < 0 || t as usize >= self.vocab) {
                bail!(
                    "frame {}: fed token {t} is outside the vocab 0..{}",
                    self.frames,
                    self.vocab
                );
            }
        }
        ensure!(
            rec.tokens.len() == c,
            "frame {}: {} tokens, expected {c} (one per codebook)",
            self.frames,
            rec.tokens.len()
        );
        ensure!(
            rec.post_tokens.len() == c,
            "frame {}: {} post_tokens, expected {c}",
            self.frames,
            rec.post_tokens.len()
        );
        let (v, f) = (self.vocab, self.frames);
        Self::push_dist(
            &mut self.logits_out,
            "logits",
            self.logits,
            rec.logits.as_deref(),
            c,
            v,
            f,
            &mut self.scratch_v,
            &mut self.scratch_i,
            &mut self.order,
        )?;
        Self::push_dist(
            &mut self.probs_out,
            "probs",
            self.probs,
            rec.probs.as_deref(),
            c,
            v,
            f,
            &mut self.scratch_v,
            &mut self.scratch_i,
            &mut self.order,
        )?;
        self.tokens.push_i32(&rec.tokens)?;
        self.post_tokens.push_i32(&rec.post_tokens)?;
        let fed = fed.unwrap_or(&rec.tokens);
        self.fed_differs |= fed != rec.tokens.as_slice();
        self.fed.extend_from_slice(fed);
        self.step_us.push_f64(&[rec.step_us])?;
        self.frames += 1;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn push_dist(
        out: &mut DistOut,
        name: &str,
        storage: Storage,
        data: Option<&[f32]>,
        c: usize,
        v: usize,
        frame: usize,
        sv: &mut Vec<f32>,
        si: &mut Vec<i32>,
        order: &mut Vec<u32>,
    ) -> Result<()> {
        if matches!(out, DistOut::None) {
            return Ok(());
        }
        let data = data.with_context(|| {
            format!("frame {frame}: {name} missing but the run stores {name} as {storage}")
        })?;
        ensure!(
            data.len() == c * v,
            "frame {frame}: {name} has {} values, expected codebooks × vocab = {c} × {v} = {}",
            data.len(),
            c * v
        );
        match out {
            DistOut::None => {}
            DistOut::Dense(w) => {
                if storage == Storage::F16 {
                    w.push_f16(data)?
                } else {
                    w.push_f32(data)?
                }
            }
            DistOut::Top { n, values, indices } => {
                sv.clear();
                si.clear();
                for row in data.chunks_exact(v) {
                    top_n_indices(row, *n, order);
                    for &i in order.iter() {
                        sv.push(row[i as usize]);
                        si.push(i as i32);
                    }
                }
                values.push_f32(sv)?;
                indices.push_i32(si)?;
            }
        }
        Ok(())
    }

    /// Adds a warning to the manifest (shown by `diff`, recorded for other tools).
    pub fn warn(&mut self, warning: String) {
        self.manifest.warnings.push(warning);
    }

    /// Sets `manifest.output_text` (the decoded text of an LM run).
    pub fn set_output_text(&mut self, text: Option<String>) {
        self.manifest.output_text = text;
    }

    /// Sets `manifest.audio` (see [`RunWriter::write_audio`], which also writes the files).
    pub fn set_audio(&mut self, audio: Option<super::AudioManifest>) {
        self.manifest.audio = audio;
    }

    /// The manifest's `audio` section as set so far.
    pub fn audio_manifest(&self) -> Option<&super::AudioManifest> {
        self.manifest.audio.as_ref()
    }

    /// Finalizes the arrays, writes `manifest.json` with status `complete`, fsyncs and renames
    /// `<dir>.partial` to `<dir>`. Returns `<dir>`.
    pub fn finish(self, stop_reason: &str, timings: Timings) -> Result<PathBuf> {
        let RunWriter {
            dir,
            partial,
            mut manifest,
            tokens,
            post_tokens,
            step_us,
            logits_out,
            probs_out,
            frames,
            replace,
            mut guard,
            fed,
            fed_differs,
            codebooks,
            ..
        } = self;
        if fed_differs {
            let mut w =
                StreamingNpy::create(&partial.join("fed_tokens.npy"), Dtype::I32, &[codebooks])?;
            for row in fed.chunks_exact(codebooks) {
                w.push_i32(row)?;
            }
            w.finish()?;
        }
        tokens.finish()?;
        post_tokens.finish()?;
        step_us.finish()?;
        logits_out.finish()?;
        probs_out.finish()?;
        manifest.status = "complete".to_string();
        manifest.frames = frames;
        manifest.stop_reason = stop_reason.to_string();
        manifest.timings = timings;
        write_json_atomic(&partial.join("manifest.json"), &manifest)?;
        sync_dir(&partial)?;
        // Re-check: something else may have appeared meanwhile.
        Self::check_target(&dir, replace)?;
        crate::outputs::replace_dir(&partial, &dir)?;
        guard.0 = None;
        if let Some(parent) = dir.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            sync_dir(parent)?;
        }
        Ok(dir)
    }
}

/// Removes a partial run directory when dropped armed (a writer that never finished).
struct PartialGuard(Option<PathBuf>);

impl Drop for PartialGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("{}: fsync failed", dir.display()))
}

/// Writes `value` as pretty JSON to `path` via a temporary file in the same directory, fsync and
/// rename.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    crate::capture::write_atomic(path, text.as_bytes())
}
