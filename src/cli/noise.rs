//! `csm-parity noise`: write the shared-noise uniforms for an outside sampler.
use crate::sampling::noise_file::{write_noise, NoiseSpec};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct NoiseArgs {
    /// The run's sampler seed (`--seed` of capture, `sampler.seed` of a manifest).
    #[arg(long)]
    pub seed: u64,
    /// Frames (CSM) or generated tokens (Llama): the first axis, frame 0 first.
    #[arg(long)]
    pub frames: usize,
    /// Codebooks per frame (32 for CSM-1B, 1 for a plain LM).
    #[arg(long)]
    pub codebooks: usize,
    /// Vocabulary of the sampled tokens (2051 for CSM-1B audio).
    #[arg(long)]
    pub vocab: usize,
    /// Output .npy file, f32 [frames, codebooks, vocab]; u[f, c, i] is the uniform of
    /// vocabulary entry i at frame f, codebook c (docs/shared-noise.md).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace an existing file even when it is not a noise file this command wrote.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: NoiseArgs) -> Result<i32> {
    let spec = NoiseSpec {
        seed: a.seed,
        frames: a.frames,
        codebooks: a.codebooks,
        vocab: a.vocab,
    };
    write_noise(&a.out, &spec, a.force)?;
    super::common::print_out(&format!(
        "wrote {} (f32 [{}, {}, {}], seed {}, {} bytes of data)\n",
        a.out.display(),
        spec.frames,
        spec.codebooks,
        spec.vocab,
        spec.seed,
        spec.data_bytes()
    ))?;
    Ok(0)
}
