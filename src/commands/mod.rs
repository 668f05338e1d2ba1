//! The commands that drive both pipelines over many jobs: temperature × top-k sweeps and the CI gate.
pub mod gate;
pub mod sweep;
