//! `manifest.json` of a run directory.
use serde::{Deserialize, Serialize};

/// Run format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Value of `manifest.format` (defined with the rest of what marks this tool's outputs).
pub use crate::outputs::RUN_FORMAT_NAME as FORMAT_NAME;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    pub format_version: u32,
    #[serde(default = "unknown")]
    pub tool_version: String,
    /// `complete` once the writer finished; anything else is refused by the reader.
    pub status: String,
    pub backend: BackendInfo,
    pub model: ModelInfo,
    pub prompt: PromptInfo,
    pub sampler: SamplerInfo,
    /// Frames F, codebooks C (1 for a plain LM), vocab V of the recorded arrays.
    pub frames: usize,
    pub codebooks: usize,
    pub vocab: usize,
    /// How logits.npy / probs.npy are stored: `f32`, `f16`, `top:N` or `none`.
    pub logits_storage: String,
    pub probs_storage: String,
    /// `eos` (an all-zero frame), `max_frames`, `eos_token` (LM) or `max_tokens` (LM).
    #[serde(default = "unknown")]
    pub stop_reason: String,
    #[serde(default)]
    pub timings: Timings,
    /// Decoded text of the generated tokens (plain LM runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_text: Option<String>,
    /// Problems the writer saw, e.g. non-finite logits (`"non-finite logits: 12 of 24 steps,
    /// first at frame 0"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Set by `csm-parity rescore`: this run is the reference re-scored on the tokens another
    /// run fed its model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescore_of: Option<RescoreOf>,
    /// The decoded audio (audio.wav / audio.npy), when the run has any (docs/run-format-audio.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<super::audio::AudioManifest>,
}

/// `manifest.rescore_of`: which run a re-score follows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RescoreOf {
    /// The re-scored run directory, as given on the command line.
    pub run: String,
    /// `backend.name` of the re-scored run.
    #[serde(default)]
    pub backend: String,
    /// sha256 of the re-scored run's manifest.json, hex.
    #[serde(default)]
    pub manifest_sha256: String,
}

fn unknown() -> String {
    "unknown".to_string()
}

fn f32_name() -> String {
    "f32".to_string()
}

fn none_name() -> String {
    "none".to_string()
}

fn torch_name() -> String {
    "torch".to_string()
}

fn independent() -> String {
    "independent".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendInfo {
    /// `mlx`, `torch`, or any name a foreign pipeline gives itself.
    pub name: String,
    #[serde(default = "unknown")]
    pub library_version: String,
    #[serde(default = "unknown")]
    pub device: String,
    #[serde(default = "f32_name")]
    pub dtype: String,
    /// Injected fault, if any (`--inject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    /// `csm` or `llama`.
    pub kind: String,
    #[serde(default)]
    pub path: String,
    /// `original` (Sesame/torchtune keys) or `hf` (transformers keys).
    #[serde(default = "unknown")]
    pub layout: String,
    /// sha256 of the weight file(s), hex.
    #[serde(default)]
    pub sha256: String,
    /// The model's config as the tool understood it.
    #[serde(default)]
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromptInfo {
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub speaker: u32,
    pub token_ids: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SamplerInfo {
    /// `independent`, `teacher` or `hybrid`.
    #[serde(default = "independent")]
    pub mode: String,
    /// `shared`, `native` or `greedy`.
    pub noise: String,
    pub temperature: f64,
    pub top_k: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    pub seed: u64,
    /// `none` or `remap-low:<lo>-<hi>`.
    #[serde(default = "none_name")]
    pub post: String,
    /// The backend treated as the reference (`torch` by default).
    #[serde(default = "torch_name")]
    pub reference: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Timings {
    #[serde(default)]
    pub load_ms: f64,
    #[serde(default)]
    pub prefill_ms: f64,
    #[serde(default)]
    pub total_ms: f64,
    #[serde(default)]
    pub mean_frame_ms: f64,
    /// Backbone positions computed at each frame (1 per step with a KV cache after the
    /// prompt); optional, for the step-cost analysis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_positions: Vec<u32>,
}

impl Timings {
    /// The timings of a run from its per-step times (µs): the first step (the prompt) is the
    /// prefill, the mean frame time is that of the steps after it (of the only step when there
    /// is one).
    pub fn of_steps(load_ms: f64, step_us: &[f64], step_positions: Vec<u32>) -> Timings {
        let total_us: f64 = step_us.iter().sum();
        let steady = &step_us[step_us.len().min(1)..];
        let mean_frame_ms = if steady.is_empty() {
            total_us / 1e3
        } else {
            steady.iter().sum::<f64>() / steady.len() as f64 / 1e3
        };
        Timings {
            load_ms,
            prefill_ms: step_us.first().copied().unwrap_or(0.0) / 1e3,
            total_ms: total_us / 1e3,
            mean_frame_ms,
            step_positions,
        }
    }
}

impl Manifest {
    /// A manifest with placeholder values for a run written by a test, a script or a foreign
    /// pipeline; fill in what you know. [`crate::capture::RunWriter`] sets format, status,
    /// frames, codebooks, vocab and the storage fields itself.
    pub fn example(backend: &str) -> Manifest {
        Manifest {
            format: FORMAT_NAME.to_string(),
            format_version: FORMAT_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            status: "partial".to_string(),
            backend: BackendInfo {
                name: backend.to_string(),
                library_version: "unknown".to_string(),
                device: "cpu".to_string(),
                dtype: "f32".to_string(),
                fault: None,
            },
            model: ModelInfo {
                kind: "csm".to_string(),
                path: String::new(),
                layout: "original".to_string(),
                sha256: String::new(),
                config: serde_json::Value::Null,
            },
            prompt: PromptInfo {
                text: String::new(),
                speaker: 0,
                token_ids: Vec::new(),
            },
            sampler: SamplerInfo {
                mode: "independent".to_string(),
                noise: "shared".to_string(),
                temperature: 1.0,
                top_k: 0,
                top_p: None,
                min_p: None,
                seed: 0,
                post: "none".to_string(),
                reference: "torch".to_string(),
            },
            frames: 0,
            codebooks: 0,
            vocab: 0,
            logits_storage: "none".to_string(),
            probs_storage: "none".to_string(),
            stop_reason: String::new(),
            timings: Timings::default(),
            output_text: None,
            warnings: Vec::new(),
            rescore_of: None,
            audio: None,
        }
    }
}
