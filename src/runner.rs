//! Frame loops shared by the commands: generate a sequence of frames with one backend, free or
//! teacher-forced, recording what each step did.
use crate::backend::{Backend, FrameOutput, FrameRequest, Record};
use crate::model::Frames;
use crate::sampling::{NoiseMode, SamplerSpec, SharedNoise};
use anyhow::Result;

/// What a loop recorded, frame by frame.
#[derive(Debug, Clone, Default)]
pub struct Sequence {
    pub outputs: Vec<FrameOutput>,
    /// The tokens fed back (forced ones under teacher forcing, else the sampled ones).
    pub fed: Vec<Vec<i32>>,
    pub step_us: Vec<f64>,
    /// True when the loop stopped on an all-zero (EOS) frame.
    pub hit_eos: bool,
}

/// Options of a frame loop.
#[derive(Debug, Clone, Copy)]
pub struct LoopSpec<'a> {
    pub sampler: &'a SamplerSpec,
    pub max_frames: usize,
    pub record: Record,
    /// Teacher forcing: frame f is fed `forced[f]` (and the loop runs `forced.len()` frames at most).
    pub forced: Option<&'a [Vec<i32>]>,
    /// Stop at an all-zero sampled frame.
    pub stop_on_eos: bool,
}

/// Runs prompt + frames on `backend` from a fresh state.
pub fn run_frames(
    backend: &mut dyn Backend,
    prompt: &Frames,
    spec: &LoopSpec,
    codebooks: usize,
    vocab: usize,
) -> Result<Sequence> {
    backend.reset(spec.sampler.seed)?;
    let mut seq = Sequence::default();
    let mut input = prompt.clone();
    let n = spec
        .forced
        .map_or(spec.max_frames, |f| f.len().min(spec.max_frames));
    for f in 0..n {
        let uniforms = (!spec.sampler.is_greedy() && spec.sampler.noise == NoiseMode::Shared)
            .then(|| SharedNoise::frame_uniforms(spec.sampler.seed, f as u64, codebooks, vocab));
        let forced = spec.forced.map(|x| x[f].as_slice());
        let start = std::time::Instant::now();
        let out = backend.generate_frame(&FrameRequest {
            input: &input,
            sampler: spec.sampler,
            uniforms: uniforms.as_deref(),
            forced,
            record: spec.record,
        })?;
        seq.step_us.push(start.elapsed().as_secs_f64() * 1e6);
        let fed = forced.map_or_else(|| out.sampled.clone(), <[i32]>::to_vec);
        let eos = out.sampled.iter().all(|&t| t == 0);
        input = Frames::audio(&fed, vocab)?;
        seq.fed.push(fed);
        seq.outputs.push(out);
        if eos && spec.stop_on_eos && spec.forced.is_none() {
            seq.hit_eos = true;
            break;
        }
    }
    Ok(seq)
}

/// Largest |a - b| over two equally long slices (NaN counts as infinite).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = (x as f64 - y as f64).abs();
            if d.is_nan() {
                f64::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f64::max)
}

/// Largest excess of max|a − b| over `atol + rtol·max|b|`, row by row (rows of `row` elements,
/// `b` the reference): ≤ 0 when every row is within tolerance. The relative part scales with the
/// row's largest logit, since f32 rounding grows with the magnitudes summed, not with each entry.
pub fn max_tolerance_excess(a: &[f32], b: &[f32], row: usize, atol: f64, rtol: f64) -> f64 {
    a.chunks(row)
        .zip(b.chunks(row))
        .map(|(x, y)| {
            let scale = y.iter().map(|v| (*v as f64).abs()).fold(0.0, f64::max);
            max_abs_diff(x, y) - (atol + rtol * scale)
        })
        .fold(f64::NEG_INFINITY, f64::max)
}
