//! The run directory (DESIGN §4): one directory per backend run, written to `<dir>.partial`
//! and renamed when complete.

pub mod audio;
pub mod manifest;
pub mod reader;
pub mod schema;
pub mod storage;
pub mod writer;

pub use audio::{Audio, AudioManifest, AudioWriter, CodecInfo};
pub use manifest::*;
pub use reader::{Dists, FrameBuf, Row, Run};
pub use schema::{f32_precision, parse_manifest, same_setting};
pub use storage::Storage;
pub use writer::{partial_path, RunWriter};

pub use crate::util::write_atomic;

/// What one backend did at one frame: `codebooks` sampled tokens, the tokens after
/// post-processing, and (when recorded) the raw logits and sampler probabilities, row-major
/// `[codebooks, vocab]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameRecord {
    pub tokens: Vec<i32>,
    pub post_tokens: Vec<i32>,
    pub logits: Option<Vec<f32>>,
    pub probs: Option<Vec<f32>>,
    /// Wall time of this frame (all codebooks), microseconds.
    pub step_us: f64,
}
