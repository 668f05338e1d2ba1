//! Thin clap front-end: each subcommand lives in its own module.
use clap::{Parser, Subcommand};

pub mod diff;

#[derive(Debug, Parser)]
#[command(
    name = "csm-parity",
    version,
    about = "Prove an MLX port is faithful: run MLX and libtorch side by side, capture every step, diff, gate.",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compare two run directories (or one capture directory holding torch/ and mlx/).
    Diff(diff::DiffArgs),
}

/// Parses the command line, runs the command, returns the process exit code.
/// Errors print one clear message and give exit code 2.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Diff(args) => diff::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            2
        }
    }
}
