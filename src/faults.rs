//! Known MLX-port bugs (DESIGN §1), injectable into the MLX pipeline with `--inject FAULT` so
//! the harness can prove it catches and locates each one. Off by default; the MLX backend
//! checks them in one place each and does no extra work when none is set.
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// After the prompt, only the newest frame is fed and the backbone cache is dropped.
    ContextLoss,
    /// The whole sequence is recomputed every step (right numbers, O(n²) cost).
    NoCache,
    /// Split-halves RoPE (HF style) instead of torchtune's interleaved pairs.
    RopeHalves,
    /// Llama-3 frequency scaling of RoPE left out.
    NoRopeScaling,
    /// Decoder positions reset to [0, 1] at every codebook instead of advancing.
    DecoderPosReset,
    /// logits / (t + 1e-10): below f32 resolution at ordinary temperatures.
    TempEpsilon,
    /// Top-k keeps exactly k entries (argpartition) instead of all ties at the k-th value.
    TopkExact,
    /// "Codec safety" post-processing: sampled tokens 1..31 become 0.
    RemapLow,
    /// Logits taken from the first instead of the last position.
    WrongPosition,
    /// Logits rounded to bf16 before sampling.
    Bf16Logits,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::ContextLoss,
        Fault::NoCache,
        Fault::RopeHalves,
        Fault::NoRopeScaling,
        Fault::DecoderPosReset,
        Fault::TempEpsilon,
        Fault::TopkExact,
        Fault::RemapLow,
        Fault::WrongPosition,
        Fault::Bf16Logits,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::ContextLoss => "context-loss",
            Fault::NoCache => "no-cache",
            Fault::RopeHalves => "rope-halves",
            Fault::NoRopeScaling => "no-rope-scaling",
            Fault::DecoderPosReset => "decoder-pos-reset",
            Fault::TempEpsilon => "temp-epsilon",
            Fault::TopkExact => "topk-exact",
            Fault::RemapLow => "remap-low",
            Fault::WrongPosition => "wrong-position",
            Fault::Bf16Logits => "bf16-logits",
        }
    }

    /// The stage where the harness must locate this fault (`none`: no measurable effect).
    pub fn expected_stage(self) -> &'static str {
        match self {
            Fault::ContextLoss
            | Fault::RopeHalves
            | Fault::NoRopeScaling
            | Fault::DecoderPosReset
            | Fault::WrongPosition
            | Fault::Bf16Logits => "model",
            Fault::TopkExact => "sampler",
            Fault::RemapLow => "post-processing",
            Fault::NoCache => "performance",
            Fault::TempEpsilon => "none",
        }
    }
}

impl Fault {
    /// Where `bisect` must locate a model-stage fault: the component of the first departing
    /// activation tap, and a phrase its location contains (`layer 0`, `depth decoder`).
    pub fn expected_location(self) -> Option<(&'static str, &'static str)> {
        match self {
            Fault::RopeHalves | Fault::NoRopeScaling => Some(("RoPE", "layer 0")),
            Fault::DecoderPosReset => Some(("RoPE", "depth decoder")),
            Fault::WrongPosition => Some(("head input", "")),
            Fault::Bf16Logits => Some(("head logits", "head of codebook 0")),
            Fault::ContextLoss => Some(("attention", "layer 0")),
            _ => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown fault {s:?} (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}
