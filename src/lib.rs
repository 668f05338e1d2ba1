//! csm-parity: run an MLX pipeline (mlx-rs) and a libtorch reference pipeline (tch) of the same
//! model side by side, capture every step, and say where and why they part.
//!
//! The core (model config and weights, sampling specs, capture format, analysis, reports) is
//! backend-neutral and builds without native libraries; the two backends sit behind
//! [`backend::Backend`] and the cargo features `mlx` and `torch`.

pub mod analysis;
pub mod backend;
pub mod capture;
pub mod cli;
pub mod commands;
pub mod faults;
pub mod generate;
pub mod model;
pub mod npy;
pub mod outputs;
pub mod report;
pub mod rng;
pub mod sampling;
pub mod util;
