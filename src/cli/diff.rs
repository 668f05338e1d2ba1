//! `csm-parity diff` (issue 4).
use clap::Args;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Run directory A, or a capture directory holding torch/ and mlx/.
    pub a: std::path::PathBuf,
    /// Run directory B.
    pub b: Option<std::path::PathBuf>,
}

pub fn run(_args: DiffArgs) -> anyhow::Result<i32> {
    anyhow::bail!("diff is not built yet")
}
