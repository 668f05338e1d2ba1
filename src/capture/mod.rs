//! The run directory (DESIGN §4): one directory per backend run, written to `<dir>.partial`
//! and renamed when complete.

pub mod manifest;
pub mod npy;
pub mod reader;
pub mod storage;
pub mod writer;

pub use manifest::*;
pub use reader::{Dists, FrameBuf, Row, Run};
pub use storage::Storage;
pub use writer::{partial_path, RunWriter};

use anyhow::Context;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("{}: cannot write", path.display()))
}

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
