//! Thin clap front-end: each subcommand lives in its own module.
use clap::{Parser, Subcommand};

pub mod bisect;
pub mod capture;
pub mod codec_cmds;
pub mod common;
pub mod diff;
pub mod gate;
pub mod model_cmds;
pub mod noise;
pub mod rescore;
pub mod sweep;

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
    /// Write the deterministic tiny CSM fixture (weights, config, tokenizer).
    Fixture(model_cmds::FixtureArgs),
    /// Load a model in both backends, generate greedily, and check logits agree and KV caches are exact.
    Verify(model_cmds::VerifyArgs),
    /// Show a checkpoint's layout, architecture, parameter count, dtype and what is missing or extra.
    Inspect(model_cmds::InspectArgs),
    /// Check both backends against reference logits from another implementation (e.g. transformers).
    Conform(model_cmds::ConformArgs),
    /// Generate with both pipelines from the same text and seed, recording every step.
    Capture(capture::CaptureArgs),
    /// Inject every known MLX-port bug and check each is detected and located.
    Selftest(model_cmds::SelftestArgs),
    /// Compare two run directories (or one capture directory holding torch/ and mlx/).
    Diff(diff::DiffArgs),
    /// Replay both pipelines to the divergence step and name the first layer and operation that
    /// departs (activation taps).
    Bisect(bisect::BisectArgs),
    /// Sweep temperatures × top-k over seeds and texts; rank the cells by parity (`sweep merge`
    /// combines shards).
    Sweep(sweep::SweepArgs),
    /// CI regression gate: thresholds and a baseline from a TOML config; exit 1 when a check fails.
    Gate(gate::GateArgs),
    /// Write the shared-noise uniforms [frames, codebooks, vocab] as .npy, for a sampler
    /// outside the harness (docs/shared-noise.md).
    Noise(noise::NoiseArgs),
    /// Feed the reference exactly the tokens a run fed its model and record its logits and
    /// probs at every step: a run aligned with RUN (docs/outside-ports.md).
    Rescore(rescore::RescoreArgs),
    /// Encode a 24 kHz mono WAV into Mimi codes [frames, codebooks] (.npy) with one backend's
    /// codec (docs/codec.md).
    Encode(codec_cmds::EncodeArgs),
    /// Decode Mimi codes [frames, codebooks] (.npy) into a WAV file with one backend's codec,
    /// streamed chunk by chunk (docs/codec.md).
    Decode(codec_cmds::DecodeArgs),
}

/// Parses the command line, runs the command, returns the process exit code.
/// Errors print one clear message and give exit code 2.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fixture(a) => model_cmds::run_fixture(a),
        Command::Verify(a) => model_cmds::run_verify(a),
        Command::Inspect(a) => model_cmds::run_inspect(a),
        Command::Conform(a) => model_cmds::run_conform(a),
        Command::Capture(a) => capture::run(a),
        Command::Selftest(a) => model_cmds::run_selftest(a),
        Command::Diff(args) => diff::run(args),
        Command::Bisect(a) => bisect::run(a),
        Command::Sweep(a) => sweep::run(a),
        Command::Gate(a) => gate::run(a),
        Command::Noise(a) => noise::run(a),
        Command::Rescore(a) => rescore::run(a),
        Command::Encode(a) => codec_cmds::run_encode(a),
        Command::Decode(a) => codec_cmds::run_decode(a),
    };
    match result {
        Ok(code) => code,
        Err(err) if common::is_broken_pipe(&err) => 0,
        Err(err) => {
            eprintln!("error: {err:#}");
            2
        }
    }
}
