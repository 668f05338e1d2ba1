//! The `Backend` trait: one pipeline (MLX or libtorch) that turns input frames into one output
//! frame at a time, sampling on-device, with KV caches. CSM emits a frame of C audio codebooks;
//! a plain Llama LM is the same with C = 1 (a frame is one token).
use crate::capture::BackendInfo;
use crate::model::mimi::MimiModel;
use crate::model::{DType, Frames, Model};
use crate::sampling::SamplerSpec;
use anyhow::{bail, Result};

pub use codec::{Codec, CodecFault, Decoded, Encoded};

pub mod codec;
#[cfg(any(feature = "mlx", feature = "torch"))]
pub(crate) mod common;
#[cfg(feature = "mlx")]
pub mod mlx;
#[cfg(feature = "torch")]
pub mod torch;

/// Which library computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Mlx,
    Torch,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Mlx => "mlx",
            BackendKind::Torch => "torch",
        }
    }
    /// The backends compiled into this build.
    pub fn available() -> Vec<BackendKind> {
        let mut v = Vec::new();
        if cfg!(feature = "torch") {
            v.push(BackendKind::Torch);
        }
        if cfg!(feature = "mlx") {
            v.push(BackendKind::Mlx);
        }
        v
    }
}

/// What to record of a frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    pub logits: bool,
    pub probs: bool,
}

/// One `generate_frame` call.
#[derive(Debug, Clone, Copy)]
pub struct FrameRequest<'a> {
    /// The new backbone positions: the prompt for frame 0, the previous frame after that.
    pub input: &'a Frames,
    pub sampler: &'a SamplerSpec,
    /// Shared-noise uniforms for this frame, `codebooks × vocab` (None: greedy or native noise).
    pub uniforms: Option<&'a [f32]>,
    /// Teacher forcing: feed these tokens (one per codebook) instead of the sampled ones.
    pub forced: Option<&'a [i32]>,
    pub record: Record,
}

/// What a frame produced, copied to the host once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameOutput {
    /// The tokens this backend's sampler chose (also under teacher forcing).
    pub sampled: Vec<i32>,
    /// Raw logits `codebooks × vocab` (f32), when recorded.
    pub logits: Option<Vec<f32>>,
    /// Sampler probabilities after temperature and top-k, when recorded.
    pub probs: Option<Vec<f32>>,
    /// Backbone positions computed for this frame (the new positions with a KV cache).
    pub positions: usize,
}

/// One intermediate tensor recorded by an activation tap (issue 17): named identically in both
/// backends (`backbone.layers.0.q_rope`, `decoder.cb2.layers.1.attn`, `c0.logits`, …), in
/// execution order, copied to the host as f32 only when taps are on.
#[derive(Debug, Clone, PartialEq)]
pub struct Tap {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A sampler outside the backend (hybrid mode: another library samples from this backend's
/// logits): given the codebook and the host logits, returns (token, probs).
pub type ExternalSampler<'a> = dyn FnMut(usize, &[f32]) -> Result<(i32, Vec<f32>)> + 'a;

impl FrameRequest<'_> {
    /// Checks a CSM request against the model: frame width and room left in the backbone.
    pub fn check(&self, codebooks: usize, position: usize, max_seq_len: usize) -> Result<()> {
        if self.input.width != codebooks + 1 {
            bail!(
                "frame width {} does not match the model's {codebooks} codebooks + text",
                self.input.width
            );
        }
        if position + self.input.len() > max_seq_len {
            bail!("sequence exceeds the backbone's max_seq_len {max_seq_len}");
        }
        Ok(())
    }
}

/// Checks that a host row handed to `sample_logits` has one logit per vocabulary entry.
pub fn check_row(logits: &[f32], vocab: usize) -> Result<()> {
    if logits.len() != vocab {
        bail!(
            "sample_logits: {} logits, expected the vocab size {vocab}",
            logits.len()
        );
    }
    Ok(())
}

impl FrameOutput {
    /// Splits the frame's single host copy — `codebooks` tokens (as f32), then the logits and
    /// the probs (`codebooks × vocab` each) when recorded — into a `FrameOutput`.
    pub fn from_host(
        flat: &[f32],
        codebooks: usize,
        vocab: usize,
        record: Record,
        positions: usize,
    ) -> Self {
        let (tokens, rest) = flat.split_at(codebooks);
        let n = codebooks * vocab;
        let (logits, probs) = match (record.logits, record.probs) {
            (true, true) => (Some(rest[..n].to_vec()), Some(rest[n..].to_vec())),
            (true, false) => (Some(rest.to_vec()), None),
            (false, true) => (None, Some(rest.to_vec())),
            (false, false) => (None, None),
        };
        FrameOutput {
            sampled: tokens.iter().map(|&t| t as i32).collect(),
            logits,
            probs,
            positions,
        }
    }
}

/// One CSM pipeline.
pub trait Backend {
    fn info(&self) -> BackendInfo;
    /// Clears the KV caches and the position; reseeds the native RNG.
    fn reset(&mut self, seed: u64) -> Result<()>;
    /// Runs the backbone over `req.input` (KV-cached), then codebook 0 and the depth decoder.
    fn generate_frame(&mut self, req: &FrameRequest) -> Result<FrameOutput> {
        self.generate_frame_ext(req, None)
    }
    /// [`Backend::generate_frame`], with tokens chosen by `external` when given (one host round
    /// trip per codebook, so only for hybrid mode).
    fn generate_frame_ext(
        &mut self,
        req: &FrameRequest,
        external: Option<&mut ExternalSampler>,
    ) -> Result<FrameOutput>;
    /// This backend's on-device sampler on one host row of logits: (token, probs).
    fn sample_logits(
        &mut self,
        logits: &[f32],
        spec: &SamplerSpec,
        uniforms: Option<&[f32]>,
    ) -> Result<(i32, Vec<f32>)>;
    /// Logits of each frame recomputed without caches: one backbone pass over `prefix` and
    /// all `frames` (codebook 0 from each frame's preceding position), and one depth-decoder
    /// pass per frame over its tokens. Each item is `codebooks × vocab`.
    fn recompute(&mut self, prefix: &Frames, frames: &[Vec<i32>]) -> Result<Vec<Vec<f32>>>;
    /// Backbone position (number of positions in the cache).
    fn position(&self) -> usize;
    /// Records activation taps during the following frames (off: no tap is taken, no copy is
    /// made). See [`Tap`].
    fn set_taps(&mut self, on: bool) -> Result<()> {
        let _ = on;
        bail!("this pipeline has no activation taps")
    }
    /// The taps recorded since taps were switched on (or last taken), in execution order.
    fn take_taps(&mut self) -> Result<Vec<Tap>> {
        Ok(Vec::new())
    }
    /// Injects a known porting bug (MLX only; the reference refuses).
    fn inject(&mut self, fault: crate::faults::Fault) -> Result<()> {
        bail!("fault injection ({fault}) is only available in the MLX pipeline")
    }
}

/// Loads `model` into the backend `kind` computing in `dtype`: a [`Backend`] whose frames are
/// CSM frames of C codebooks, or single tokens for a Llama LM (with its adapter, if any). A new
/// model family adds its two arms here (its pipelines live in `backend/{mlx,torch}/<name>.rs`).
pub fn load(kind: BackendKind, model: &Model, dtype: DType) -> Result<Box<dyn Backend>> {
    match (kind, model) {
        #[cfg(feature = "torch")]
        (BackendKind::Torch, Model::Csm(m)) => Ok(Box::new(torch::TorchCsm::load(m, dtype)?)),
        #[cfg(feature = "torch")]
        (BackendKind::Torch, Model::Llama(m)) => {
            Ok(Box::new(torch::llama::TorchLlama::load(m, dtype)?))
        }
        #[cfg(feature = "mlx")]
        (BackendKind::Mlx, Model::Csm(m)) => Ok(Box::new(mlx::MlxCsm::load(m, dtype)?)),
        #[cfg(feature = "mlx")]
        (BackendKind::Mlx, Model::Llama(m)) => Ok(Box::new(mlx::llama::MlxLlama::load(m, dtype)?)),
        #[allow(unreachable_patterns)]
        (other, _) => {
            let _ = dtype;
            Err(not_compiled(other))
        }
    }
}

/// A note when computing in `dtype` is much slower than f32 for `kind` on this machine, from a
/// measurement made here (a [1, 2048] × [2048, 8192] matmul, the CSM-1B backbone's MLP shape;
/// about 0.2 s). On a Linux CPU, MLX has no BLAS path for bf16/f16 matmuls (its own
/// single-threaded kernel; see docs/performance.md), so `--dtype bf16` can be several times
/// slower than f32 there while libtorch bf16 is fast. `None` for f32 and for libtorch.
pub fn dtype_speed_note(kind: BackendKind, dtype: DType) -> Result<Option<String>> {
    if dtype == DType::F32 {
        return Ok(None);
    }
    match kind {
        #[cfg(feature = "mlx")]
        BackendKind::Mlx => Ok(slow_dtype_note(
            "MLX",
            dtype,
            mlx::matmul_ms(DType::F32)?,
            mlx::matmul_ms(dtype)?,
        )),
        _ => Ok(None),
    }
}

/// The note of [`dtype_speed_note`] from the two measured matmul times: only when `dtype` is
/// at least 1.5× slower than f32.
pub fn slow_dtype_note(library: &str, dtype: DType, f32_ms: f64, d_ms: f64) -> Option<String> {
    let ratio = d_ms / f32_ms.max(1e-9);
    (ratio >= 1.5).then(|| {
        format!(
            "on this machine {library} computes {d} matmuls {ratio:.1}x slower than f32 \
             ({d_ms:.1} ms vs {f32_ms:.1} ms for 1x2048 @ 2048x8192; no BLAS path for {d} on \
             this CPU): --dtype f32 is the fast {library} setting here (docs/performance.md)",
            d = dtype.name()
        )
    })
}

/// The error for a backend whose cargo feature is off in this build.
pub(crate) fn not_compiled(kind: BackendKind) -> anyhow::Error {
    anyhow::anyhow!(
        "backend {} is not compiled into this build (cargo feature `{}`)",
        kind.name(),
        kind.name()
    )
}

/// Loads `model` into the codec of library `kind` computing in `dtype`.
pub fn load_codec(kind: BackendKind, model: &MimiModel, dtype: DType) -> Result<Box<dyn Codec>> {
    match kind {
        #[cfg(feature = "torch")]
        BackendKind::Torch => Ok(Box::new(torch::mimi::TorchMimi::load(model, dtype)?)),
        #[cfg(feature = "mlx")]
        BackendKind::Mlx => Ok(Box::new(mlx::mimi::MlxMimi::load(model, dtype)?)),
        #[allow(unreachable_patterns)]
        other => {
            let _ = (model, dtype);
            Err(not_compiled(other))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_dtype_note_only_when_much_slower() {
        assert_eq!(slow_dtype_note("MLX", DType::BF16, 10.0, 14.0), None);
        let n = slow_dtype_note("MLX", DType::BF16, 10.0, 43.0).unwrap();
        assert!(n.contains("bf16 matmuls 4.3x slower"), "{n}");
        assert!(n.contains("--dtype f32"), "{n}");
        assert_eq!(
            dtype_speed_note(BackendKind::Torch, DType::BF16).unwrap(),
            None
        );
        assert_eq!(
            dtype_speed_note(BackendKind::Mlx, DType::F32).unwrap(),
            None
        );
    }
}
