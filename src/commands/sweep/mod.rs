//! `csm-parity sweep` (issue 5): temperatures × top-k × seeds × texts, both pipelines captured
//! twice per job (shared noise: token agreement and divergence point; native noise: token
//! distribution similarity), aggregated per cell with bootstrap confidence intervals.
//!
//! Jobs are the unit of work, of resumption and of sharding: each finished job's metrics are
//! stored atomically as `DIR/jobs/<key>.json`; a later invocation with the same spec reuses
//! them, and `sweep merge` combines the `jobs/` of several shard directories.
pub mod aggregate;
pub mod candidate;
pub mod job;
pub mod output;
pub mod run;
pub mod spec;

pub use aggregate::SweepResult;
pub use job::{model_sha256, CandidateSource};
pub use run::{job_path, merge, run_sweep, run_sweep_with, Execution, RunStats};
pub use spec::{parse_seeds, read_texts, Shard, SweepSpec, DEFAULT_TEXT};
