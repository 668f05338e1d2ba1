//! csm-parity: run an MLX pipeline (mlx-rs) and a libtorch reference pipeline (tch) of the same
//! model side by side, capture every step, and say where and why they part.
//!
//! The core (model config and weights, sampling specs, capture format, analysis, reports) is
//! backend-neutral and builds without native libraries; the two backends sit behind
//! [`backend::Backend`] and the cargo features `mlx` and `torch`.

pub mod analysis;
pub mod backend;
pub mod bisect;
pub mod capture;
pub mod capture_run;
pub mod cli;
pub mod conform;
pub mod conform_mimi;
pub mod faults;
pub mod gate;
pub mod gate_outside;
pub mod inspect;
pub mod model;
pub mod npy;
pub mod outputs;
pub mod report;
pub mod rescore;
pub mod rng;
pub mod runner;
pub mod sampling;
pub mod selftest;
pub mod sweep;
pub mod util;
pub mod verify;
