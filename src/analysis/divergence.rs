//! Divergence point and stage attribution (DESIGN §5).
use serde::Serialize;

/// A step: frame and codebook (generation order is frame-major).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Step {
    pub frame: usize,
    pub codebook: usize,
}

impl Step {
    pub fn from_index(i: usize, codebooks: usize) -> Step {
        Step {
            frame: i / codebooks,
            codebook: i % codebooks,
        }
    }
}

/// The pipeline stage held responsible for a divergence.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The prompts differ: the runs do not start from the same context.
    Input,
    /// Logits breach the tolerance: the model computes something else.
    Model,
    /// Logits agree but the sampler's probabilities differ.
    Sampler,
    /// Probabilities agree (or are not recorded while logits agree) but the sampled tokens differ:
    /// with shared noise a noise plumbing bug; with native RNGs, expected.
    Noise,
    /// Sampled tokens agree but the post-processed tokens differ.
    PostProcessing,
    /// Tokens differ and neither logits nor probabilities were recorded.
    Unknown,
    /// The numbers agree but the cost of a step grows with position (no KV cache).
    Performance,
    /// The post-processed tokens agree but the decoded audio departs beyond the codec
    /// tolerance: the codec (Mimi port) computes something else.
    Codec,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Input => "input",
            Stage::Model => "model",
            Stage::Sampler => "sampler",
            Stage::Noise => "noise",
            Stage::PostProcessing => "post-processing",
            Stage::Unknown => "unknown",
            Stage::Performance => "performance",
            Stage::Codec => "codec",
        }
    }
}

/// Evidence at one step used for attribution.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepEvidence {
    /// None when logits were not recorded in both runs.
    pub logits_breach: Option<bool>,
    /// Logits were compared on top-N entries only (the rest of the row is unknown).
    pub logits_partial: bool,
    pub probs_breach: Option<bool>,
    /// The probabilities renormalized over their shared support still breach (they differ in
    /// shape, not only in their normalizer).
    pub probs_shape_breach: bool,
    /// One sampler kept a token (p > 0) the other did not.
    pub support_differ: bool,
    pub tokens_differ: bool,
    pub post_differ: bool,
}

impl StepEvidence {
    pub fn any(&self) -> bool {
        self.logits_breach == Some(true)
            || self.probs_breach == Some(true)
            || self.support_differ
            || self.tokens_differ
            || self.post_differ
    }
}

/// The earliest stage of the pipeline that differs at a step, or None if none does.
pub fn attribute(e: &StepEvidence) -> Option<Stage> {
    if e.logits_breach == Some(true) {
        return Some(Stage::Model);
    }
    // Top-N logits agree on what was stored, the supports agree and the probabilities differ
    // only by their normalizer: the mass outside the stored logits differs — the model.
    if e.logits_partial
        && e.logits_breach == Some(false)
        && e.probs_breach == Some(true)
        && !e.probs_shape_breach
        && !e.support_differ
    {
        return Some(Stage::Model);
    }
    if e.probs_breach == Some(true) || e.support_differ {
        return Some(Stage::Sampler);
    }
    if e.tokens_differ {
        if e.logits_breach.is_none() && e.probs_breach.is_none() {
            return Some(Stage::Unknown);
        }
        return Some(Stage::Noise);
    }
    if e.post_differ {
        return Some(Stage::PostProcessing);
    }
    None
}

/// One-sentence explanation of a stage for the given noise mode.
pub fn explain(
    stage: Stage,
    noise: &str,
    logits_only: bool,
    hybrid: bool,
    logits_partial: bool,
) -> String {
    match stage {
        Stage::Input => "the prompts differ: the runs do not start from the same context".into(),
        Stage::Model if logits_partial => "logits differ beyond --atol/--rtol on the entries both \
             runs stored, or (top-N logits storage) the probabilities differ only by their \
             normalizer, i.e. in the logits outside the stored entries: the two models compute \
             different outputs from the same context"
            .into(),
        Stage::Model => "logits differ beyond --atol/--rtol: the two models compute different \
                         outputs from the same context (weights, RoPE, attention, cache, dtype)"
            .into(),
        Stage::Sampler => {
            "logits agree but the sampler's probabilities or its kept set (support) differ: \
             temperature, top-k tie handling, softmax variant"
                .into()
        }
        Stage::Noise if noise == "native" && hybrid => "distributions agree but the sampled \
             tokens differ: in hybrid mode with native noise the candidate's draws come from \
             torch's generator after the reference's own draws of the frame, so the two tracks \
             draw different noise (use shared noise for token parity)"
            .into(),
        Stage::Noise if noise == "native" => "distributions agree but the sampled tokens differ: \
             expected with native RNGs (use shared noise or teacher forcing for parity)"
            .into(),
        Stage::Noise if logits_only => "logits agree (probabilities not recorded) but the sampled \
             tokens differ: the sampler or the noise it receives differs"
            .into(),
        Stage::Noise => "probabilities agree but the sampled tokens differ with shared noise: \
                         a noise plumbing bug (wrong (frame, codebook) key, -ln u vs Gumbel, \
                         argmax over the wrong axis)"
            .into(),
        Stage::PostProcessing => "sampled tokens agree but the post-processed tokens differ: \
                                  a post-processing step (e.g. token remapping) changes the stream"
            .into(),
        Stage::Unknown => "tokens differ and neither logits nor probabilities were recorded in \
                           both runs; record them to attribute the stage"
            .into(),
        Stage::Performance => "the numbers agree but the cost of a step grows with the position: \
                               the sequence is recomputed every step (no KV cache)"
            .into(),
        Stage::Codec => "the tokens the codecs decoded are identical but the audio departs beyond \
                         the codec tolerance: the codec port differs (padding, sliding window, \
                         transposed-conv weights, GELU, RoPE in its transformer)"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_order() {
        let mut e = StepEvidence {
            logits_breach: Some(false),
            probs_breach: Some(false),
            tokens_differ: false,
            post_differ: true,
            ..Default::default()
        };
        assert_eq!(attribute(&e), Some(Stage::PostProcessing));
        e.tokens_differ = true;
        assert_eq!(attribute(&e), Some(Stage::Noise));
        e.probs_breach = Some(true);
        assert_eq!(attribute(&e), Some(Stage::Sampler));
        e.logits_breach = Some(true);
        assert_eq!(attribute(&e), Some(Stage::Model));
        let none = StepEvidence {
            tokens_differ: true,
            ..Default::default()
        };
        assert_eq!(attribute(&none), Some(Stage::Unknown));
        assert_eq!(attribute(&StepEvidence::default()), None);
        // A support mismatch alone is a sampler event.
        let sup = StepEvidence {
            logits_breach: Some(false),
            probs_breach: Some(false),
            support_differ: true,
            ..Default::default()
        };
        assert_eq!(attribute(&sup), Some(Stage::Sampler));
        // Top-N logits agree, probs differ only in their normalizer: the model.
        let norm = StepEvidence {
            logits_breach: Some(false),
            logits_partial: true,
            probs_breach: Some(true),
            ..Default::default()
        };
        assert_eq!(attribute(&norm), Some(Stage::Model));
        let shape = StepEvidence {
            probs_shape_breach: true,
            ..norm
        };
        assert_eq!(attribute(&shape), Some(Stage::Sampler));
    }
}
