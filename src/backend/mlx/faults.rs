//! Fault injection's hooks in the MLX pipelines (`--inject`, [`Fault`]): each known porting bug
//! acts at one named point of the computation, where CSM, Llama or the sampler calls its hook;
//! with no fault (or another one) set, a hook passes its input through unchanged. The pipelines
//! otherwise read as the libtorch reference does.
use super::stack::Stack;
use crate::faults::Fault;
use crate::model::Frames;
use anyhow::{bail, Result};
use mlx_rs::ops::argpartition_axis;
use mlx_rs::ops::indexing::take_axis;
use mlx_rs::{Array, Dtype};
use std::borrow::Cow;

/// At injection: the faults that change how a stack computes. `rope-halves` rotates the other
/// RoPE variant than the checkpoint's (split halves for CSM, interleaved pairs for an HF Llama);
/// `no-rope-scaling` leaves out the Llama-3 frequency scaling. `depth_decoder`: whether the
/// pipeline has one (`decoder-pos-reset` needs it).
pub(crate) fn inject(fault: Fault, stacks: &mut [&mut Stack], depth_decoder: bool) -> Result<()> {
    for stack in stacks.iter_mut() {
        match fault {
            Fault::RopeHalves => stack.traditional = !stack.traditional,
            Fault::NoRopeScaling => stack.set_rope_scaling(None),
            _ => {}
        }
    }
    if fault == Fault::DecoderPosReset && !depth_decoder {
        bail!("--inject {fault}: a Llama model has no depth decoder");
    }
    Ok(())
}

/// The backbone's input: the new positions, or under `no-cache` every position so far (the
/// whole sequence again, every step), which `history` keeps.
pub(crate) fn backbone_input<'a>(
    fault: Option<Fault>,
    history: &mut Option<Frames>,
    new: &'a Frames,
) -> Cow<'a, Frames> {
    if fault != Some(Fault::NoCache) {
        return Cow::Borrowed(new);
    }
    let hist = history.get_or_insert_with(|| Frames {
        width: new.width,
        tokens: vec![],
        mask: vec![],
    });
    hist.extend(new);
    Cow::Owned(hist.clone())
}

/// The backbone over `x` (`new` new positions, with the KV cache). Under `no-cache`, `x` is the
/// whole sequence, computed without the cache (the position still advances); under
/// `context-loss`, the cache (and so the prompt) is forgotten after the prompt.
pub(crate) fn backbone_forward(
    fault: Option<Fault>,
    stack: &mut Stack,
    x: &Array,
    new: usize,
) -> Result<Array> {
    match fault {
        Some(Fault::NoCache) => {
            stack.pos += new;
            stack.forward(x, false)
        }
        Some(Fault::ContextLoss) if stack.pos > 0 => {
            stack.drop_cache();
            stack.forward(x, true)
        }
        _ => stack.forward(x, true),
    }
}

/// Which of the backbone's `len` output positions feeds the heads: the last one, or the first
/// under `wrong-position`.
pub(crate) fn readout(fault: Option<Fault>, len: i32) -> i32 {
    if fault == Some(Fault::WrongPosition) {
        0
    } else {
        len - 1
    }
}

/// Before the depth decoder computes codebook `cb`: under `decoder-pos-reset`, its position
/// goes back to 1 from codebook 2 on, instead of advancing.
pub(crate) fn decoder_position(fault: Option<Fault>, cb: usize, decoder: &mut Stack) {
    if cb >= 2 && fault == Some(Fault::DecoderPosReset) {
        decoder.pos = 1;
    }
}

/// A head's f32 logits, rounded to bf16 under `bf16-logits`.
pub(crate) fn logits(fault: Option<Fault>, logits: Array) -> Result<Array> {
    Ok(if fault == Some(Fault::Bf16Logits) {
        logits.as_dtype(Dtype::Bfloat16)?.as_dtype(Dtype::Float32)?
    } else {
        logits
    })
}

/// The sampler's temperature, plus 1e-10 under `temp-epsilon`.
pub(crate) fn temperature(fault: Option<Fault>, t: f32) -> f32 {
    match fault {
        Some(Fault::TempEpsilon) => t + 1e-10,
        _ => t,
    }
}

/// The sampler's top-k step: `top_k`, or exactly k survivors under `topk-exact`.
pub(crate) fn top_k(fault: Option<Fault>, top_k: TopK) -> TopK {
    if fault == Some(Fault::TopkExact) {
        top_k_exact
    } else {
        top_k
    }
}

/// A top-k step: (scaled logits, k) → the kept logits, −inf elsewhere.
pub(crate) type TopK = fn(&Array, usize) -> Result<Array>;

/// Exactly k survivors: the k positions argpartition puts first (the `topk-exact` fault).
fn top_k_exact(scaled: &Array, k: usize) -> Result<Array> {
    let v = scaled.dim(0);
    let neg_inf = Array::from_f32(f32::NEG_INFINITY);
    let idx = argpartition_axis(scaled.negative()?, k as i32 - 1, 0)?;
    let idx = take_axis(&idx, Array::arange::<i32, i32>(None, k as i32, None)?, 0)?;
    let vals = take_axis(scaled, &idx, 0)?;
    let base = Array::full::<f32>(&[v], &neg_inf)?;
    Ok(base.put_along_axis(&idx, &vals, 0)?)
}
