//! `manifest.json` of a run directory.
use serde::{Deserialize, Serialize};

/// Run format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Value of `manifest.format`.
pub const FORMAT_NAME: &str = "csm-parity-run";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    pub format_version: u32,
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
    pub stop_reason: String,
    pub timings: Timings,
    /// Decoded text of the generated tokens (plain LM runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_text: Option<String>,
    /// The decoded audio (audio.wav / audio.npy), when the run has any (docs/run-format-audio.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<super::audio::AudioManifest>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendInfo {
    /// `mlx`, `torch`, or any name a foreign pipeline gives itself.
    pub name: String,
    pub library_version: String,
    pub device: String,
    pub dtype: String,
    /// Injected fault, if any (`--inject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    /// `csm` or `llama`.
    pub kind: String,
    pub path: String,
    /// `original` (Sesame/torchtune keys) or `hf` (transformers keys).
    pub layout: String,
    /// sha256 of the weight file(s), hex.
    pub sha256: String,
    /// The model's config as the tool understood it.
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromptInfo {
    pub text: String,
    #[serde(default)]
    pub speaker: u32,
    pub token_ids: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SamplerInfo {
    /// `independent`, `teacher` or `hybrid`.
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
    pub post: String,
    /// The backend treated as the reference (`torch` by default).
    pub reference: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Timings {
    pub load_ms: f64,
    pub prefill_ms: f64,
    pub total_ms: f64,
    pub mean_frame_ms: f64,
    /// Backbone positions computed at each frame (1 per step with a KV cache after the
    /// prompt); optional, for the step-cost analysis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_positions: Vec<u32>,
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
            audio: None,
        }
    }
}
