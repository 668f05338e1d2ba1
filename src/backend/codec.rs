//! The `Codec` trait: Mimi (codes ↔ 24 kHz waveform) in one library, MLX or libtorch.
//!
//! Decoding takes frames of codes `[F][C]` (codebook 0, the semantic one, first) and returns
//! mono f32 samples, `F × samples_per_frame` of them. Codes the codec cannot decode — at or
//! above its codebook size (CSM's audio vocabulary is 2051, Mimi's codebooks hold 2048) or
//! negative — are decoded as code 0 of their codebook and counted in
//! [`Decoded::invalid_codes`] (see [`crate::model::mimi::sanitize_codes`]); they never fail a
//! decode and are never dropped silently.
use crate::capture::BackendInfo;
use crate::model::mimi::MimiConfig;
use anyhow::{bail, Result};

/// What a decode produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    /// Mono samples at the codec's sampling rate (24 kHz for Mimi).
    pub audio: Vec<f32>,
    /// How many codes were outside `0..codebook_size` and decoded as 0.
    pub invalid_codes: usize,
}

impl Decoded {
    /// The decode of no frames: no audio.
    pub fn nothing(invalid_codes: usize) -> Self {
        Decoded {
            audio: vec![],
            invalid_codes,
        }
    }
}

/// What an encode produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded {
    /// The encoder's output before quantization, `[frames × hidden]` row-major.
    pub latents: Vec<f32>,
    /// Code frames `[F][C]`, codebook 0 (semantic) first.
    pub codes: Vec<Vec<i32>>,
}

/// Known codec porting bugs that the MLX codec can inject (for `selftest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CodecFault {
    /// The SEANet decoder's convs padded symmetrically (half the padding on the right) and its
    /// transposed convs trimmed half and half, instead of all padding on the left / trim right.
    NonCausalPadding,
    /// The decoder transformer attends to every earlier position (no sliding window).
    NoSlidingWindow,
    /// The SEANet decoder's transposed-conv weights (`[in, out, k]` in the checkpoint) read as
    /// if their memory were laid out `[out, k, in]` (a reshape where a transpose belongs).
    TransposedConvAxes,
    /// The transformers' MLP uses the tanh-approximate GELU instead of the exact erf one (too
    /// small to flag on the fixture; conformance catches it). Not in [`CodecFault::ALL`].
    TanhGelu,
}

impl CodecFault {
    /// The faults `selftest` injects.
    pub const ALL: [CodecFault; 3] = [
        CodecFault::NonCausalPadding,
        CodecFault::NoSlidingWindow,
        CodecFault::TransposedConvAxes,
    ];
    pub fn name(self) -> &'static str {
        match self {
            CodecFault::NonCausalPadding => "non-causal-padding",
            CodecFault::NoSlidingWindow => "no-sliding-window",
            CodecFault::TransposedConvAxes => "transposed-conv-axes",
            CodecFault::TanhGelu => "tanh-gelu",
        }
    }
}

impl std::fmt::Display for CodecFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Mimi in one library.
pub trait Codec {
    /// Library, version, device, dtype (and injected fault) of this codec.
    fn info(&self) -> BackendInfo;
    fn config(&self) -> &MimiConfig;
    /// Decodes code frames `[F][C]` (C ≤ the codec's codebooks, at least the semantic ones)
    /// in one pass, as transformers' `MimiModel.decode` does.
    fn decode(&mut self, codes: &[Vec<i32>]) -> Result<Decoded>;
    /// Forgets the state of a streamed decode: the next [`Codec::decode_stream`] starts a new
    /// stream (audio position 0).
    fn stream_reset(&mut self);
    /// Streamed decode: decodes the next frames `[F][C]` of the current stream and returns
    /// their `F × samples_per_frame` samples. Every causal layer keeps what it needs of the
    /// earlier frames (the convs' last inputs, the transposed convs' pending outputs, the
    /// decoder transformer's last `sliding_window − 1` keys and values, the position), so the
    /// chunks' audio laid end to end equals [`Codec::decode`] of all the frames at once (within
    /// float rounding), whatever the chunking; the state does not grow with the stream. All
    /// chunks of a stream have the same number of codebooks.
    fn decode_stream(&mut self, codes: &[Vec<i32>]) -> Result<Decoded>;
    /// Whether [`Codec::decode_stream`] works (not under an injected non-causal fault).
    fn can_stream(&self) -> bool {
        true
    }
    /// Encodes mono samples at the codec's rate: latents and codes of every codebook.
    fn encode(&mut self, wave: &[f32]) -> Result<Encoded>;
    /// Injects a known codec porting bug (MLX only; the reference refuses).
    fn inject(&mut self, fault: CodecFault) -> Result<()> {
        bail!("codec fault injection ({fault}) is only available in the MLX codec")
    }
}

/// Checks a decode request against the codec; returns (frames, codebooks, flat sanitized codes,
/// invalid count).
pub fn check_codes(
    cfg: &MimiConfig,
    codes: &[Vec<i32>],
) -> Result<(usize, usize, Vec<i32>, usize)> {
    let f = codes.len();
    let c = codes.first().map_or(cfg.num_quantizers, Vec::len);
    if c <= cfg.num_semantic_quantizers.saturating_sub(1) || c > cfg.num_quantizers {
        bail!(
            "codec decode: frames of {c} codes; the codec takes {}..={} codebooks",
            cfg.num_semantic_quantizers,
            cfg.num_quantizers
        );
    }
    if let Some(i) = codes.iter().position(|r| r.len() != c) {
        bail!(
            "codec decode: frame {i} has {} codes, frame 0 has {c}",
            codes[i].len()
        );
    }
    let flat: Vec<i32> = codes.iter().flatten().copied().collect();
    let (flat, bad) = crate::model::mimi::sanitize_codes(&flat, cfg.codebook_size);
    Ok((f, c, flat, bad))
}

/// Checks that a streamed decode can continue with frames of `codebooks` codes: the stream's
/// codebook count (when one has begun) is kept, and the codec's transposed convs trim all
/// their padding on the right (`trim_right_ratio` 1, as Mimi's): a left trim would need outputs
/// the next frames have not yet made.
pub fn check_stream(cfg: &MimiConfig, stream: Option<usize>, codebooks: usize) -> Result<()> {
    if cfg.trim_right_ratio != 1.0 {
        bail!(
            "codec streaming: trim_right_ratio is {} (streaming needs 1.0: every transposed conv trims on the right); decode the whole sequence instead",
            cfg.trim_right_ratio
        );
    }
    if let Some(s) = stream.filter(|&s| s != codebooks) {
        bail!("codec streaming: frames of {codebooks} codes continue a stream of {s} codes (call stream_reset to start a new stream)");
    }
    Ok(())
}

/// Checks a streamed decode request: [`check_codes`], then (when there are frames)
/// [`check_stream`] against the codebooks of the stream so far.
pub fn check_stream_codes(
    cfg: &MimiConfig,
    codes: &[Vec<i32>],
    stream: Option<usize>,
) -> Result<(usize, usize, Vec<i32>, usize)> {
    let checked = check_codes(cfg, codes)?;
    if checked.0 > 0 {
        check_stream(cfg, stream, checked.1)?;
    }
    Ok(checked)
}

/// Checks an encode request: a non-empty, finite waveform.
pub fn check_wave(wave: &[f32]) -> Result<()> {
    if wave.is_empty() {
        bail!("codec encode: empty waveform");
    }
    if let Some(i) = wave.iter().position(|x| !x.is_finite()) {
        bail!("codec encode: sample {i} is not finite");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_keeps_its_codebooks_and_needs_right_trimmed_transposed_convs() {
        let mut cfg = MimiConfig::tiny(8);
        assert!(check_stream(&cfg, None, 8).is_ok());
        assert!(check_stream(&cfg, Some(8), 8).is_ok());
        let e = check_stream(&cfg, Some(8), 4).unwrap_err().to_string();
        assert!(e.contains("4 codes") && e.contains("8 codes"), "{e}");
        cfg.trim_right_ratio = 0.5;
        let e = check_stream(&cfg, None, 8).unwrap_err().to_string();
        assert!(e.contains("trim_right_ratio"), "{e}");
    }
}
