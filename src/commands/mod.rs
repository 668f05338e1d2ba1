//! The commands: each parses nothing (that is `cli/`) and calls the libraries (model, backend,
//! generate, capture, analysis, report) to do one user-facing job.
pub mod bisect;
pub mod capture;
pub mod codec;
pub mod conform;
pub mod conform_mimi;
pub mod gate;
pub mod inspect;
pub mod rescore;
pub mod selftest;
pub mod sweep;
pub mod verify;
