//! The frame loop. Every command that generates — `capture` (and `sweep`, `gate` and `selftest`
//! through it), `verify`, `conform`, `rescore`, `bisect` — steps its pipelines here, in the
//! manner of mlx-lm's `generate_step`: the pipelines and the sampler settings are passed in, the
//! loop owns the frame order, the shared noise, the coupling of the pipelines (modes), teacher
//! forcing and the stop rule, and hands each step's output to an [`Observer`] that records it.
use crate::backend::{Backend, FrameOutput, FrameRequest, Record};
use crate::model::Frames;
use crate::sampling::{NoiseMode, SamplerSpec, SharedNoise};
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

/// How the pipelines after the first (the reference) are coupled to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each backend samples and feeds back its own tokens.
    Independent,
    /// The other backend is fed the reference's sampled tokens, so its logits and probs exist
    /// for every reference step, even after the first token mismatch.
    Teacher,
    /// The reference samples from the other backend's logits; the other backend computes.
    Hybrid,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Independent => "independent",
            Mode::Teacher => "teacher",
            Mode::Hybrid => "hybrid",
        }
    }
}

/// The stop reason of a track whose reference ended first (teacher mode).
pub const REFERENCE_STOPPED: &str = "reference_stopped";

/// The stop rule: the stop reason of a step's sampled tokens, if they end generation.
pub type StopRule<'a> = &'a dyn Fn(&[i32]) -> Option<&'static str>;

/// What to generate.
#[derive(Clone, Copy)]
pub struct Plan<'a> {
    pub sampler: &'a SamplerSpec,
    /// Steps at most.
    pub max_steps: usize,
    pub record: Record,
    /// Coupling of every track after the first to the first.
    pub mode: Mode,
    /// Teacher forcing from outside (a conformance case, a run being re-scored): every track
    /// is fed `forced[f]` at step f, and the loop runs `forced.len()` steps at most.
    pub forced: Option<&'a [Vec<i32>]>,
    /// The stop rule: a track whose sampled tokens give a reason stops (None: never early).
    pub stop: Option<StopRule<'a>>,
    /// Tokens sampled per step and their vocabulary (the shared noise's shape).
    pub codebooks: usize,
    pub vocab: usize,
}

/// One pipeline being stepped, and what it did so far.
pub struct Track<'b> {
    pub backend: &'b mut dyn Backend,
    input: Frames,
    /// The tokens each step's sampler chose.
    pub sampled: Vec<Vec<i32>>,
    /// The tokens fed back (the forced ones under teacher forcing, else the sampled ones).
    pub fed: Vec<Vec<i32>>,
    pub step_us: Vec<f64>,
    /// Backbone positions computed per step.
    pub positions: Vec<u32>,
    /// Why the track stopped early, if it did.
    pub stop: Option<&'static str>,
}

impl<'b> Track<'b> {
    pub fn new(backend: &'b mut dyn Backend, prompt: &Frames) -> Self {
        Track {
            backend,
            input: prompt.clone(),
            sampled: Vec::new(),
            fed: Vec::new(),
            step_us: Vec::new(),
            positions: Vec::new(),
            stop: None,
        }
    }
}

/// Receives what the loop does; every method has a do-nothing default.
pub trait Observer {
    /// Before track `track` computes step `step` (e.g. to switch activation taps on).
    fn before_step(&mut self, track: usize, step: usize, backend: &mut dyn Backend) -> Result<()> {
        let _ = (track, step, backend);
        Ok(())
    }
    /// Track `track` computed step `step`: its output (owned, to be recorded without a copy)
    /// and the track as it stands after the step (`fed`, `stop` updated).
    fn step(&mut self, track: usize, step: usize, out: FrameOutput, t: &Track) -> Result<()> {
        let _ = (track, step, out, t);
        Ok(())
    }
    /// Every track computed step `step`.
    fn step_done(&mut self, step: usize) {
        let _ = step;
    }
}

/// An observer that keeps nothing.
pub struct Discard;
impl Observer for Discard {}

/// Steps `tracks` (the reference first) from `prompt`, each reset with the sampler's seed first.
/// Returns when every track stopped or `plan.max_steps` (or the forced tokens) ran out.
pub fn generate(
    tracks: &mut [Track],
    prompt: &Frames,
    plan: &Plan,
    obs: &mut dyn Observer,
) -> Result<()> {
    let sampler = plan.sampler;
    for t in tracks.iter_mut() {
        t.backend.reset(sampler.seed)?;
        t.input = prompt.clone();
    }
    let steps = plan
        .forced
        .map_or(plan.max_steps, |f| f.len().min(plan.max_steps));
    let (v, c) = (plan.vocab, plan.codebooks);
    for f in 0..steps {
        let uniforms = (!sampler.is_greedy() && sampler.noise == NoiseMode::Shared)
            .then(|| SharedNoise::frame_uniforms(sampler.seed, f as u64, c, v));
        let external = plan.forced.map(|x| x[f].as_slice());
        let Some((first, rest)) = tracks.split_first_mut() else {
            break;
        };
        // The reference (first track) always runs on its own.
        if first.stop.is_none() {
            obs.before_step(0, f, first.backend)?;
            let req = FrameRequest {
                input: &first.input,
                sampler,
                uniforms: uniforms.as_deref(),
                forced: external,
                record: plan.record,
            };
            let t0 = Instant::now();
            let out = first.backend.generate_frame(&req)?;
            let us = t0.elapsed().as_secs_f64() * 1e6;
            let fed = external.map_or_else(|| out.sampled.clone(), <[i32]>::to_vec);
            advance(first, plan, &out, fed, us)?;
            obs.step(0, f, out, first)?;
        }
        for (i, t) in rest.iter_mut().enumerate() {
            if t.stop.is_some() {
                continue;
            }
            // Teacher mode feeds the reference's tokens of this step; none when it stopped.
            let forced = match (external, plan.mode) {
                (Some(x), _) => Some(x),
                (None, Mode::Teacher) => match first.fed.get(f) {
                    Some(x) => Some(x.as_slice()),
                    None => {
                        t.stop = Some(REFERENCE_STOPPED);
                        continue;
                    }
                },
                (None, _) => None,
            };
            obs.before_step(i + 1, f, t.backend)?;
            let req = FrameRequest {
                input: &t.input,
                sampler,
                uniforms: uniforms.as_deref(),
                forced,
                record: plan.record,
            };
            let t0 = Instant::now();
            let out = if plan.mode == Mode::Hybrid && forced.is_none() {
                let reference = &mut first.backend;
                let u = uniforms.as_deref();
                let mut ext = |cb: usize, logits: &[f32]| {
                    reference.sample_logits(logits, sampler, u.map(|u| &u[cb * v..(cb + 1) * v]))
                };
                t.backend.generate_frame_ext(&req, Some(&mut ext))?
            } else {
                t.backend.generate_frame(&req)?
            };
            let us = t0.elapsed().as_secs_f64() * 1e6;
            let fed = forced.map_or_else(|| out.sampled.clone(), <[i32]>::to_vec);
            advance(t, plan, &out, fed, us)?;
            obs.step(i + 1, f, out, t)?;
        }
        obs.step_done(f);
        if tracks.iter().all(|t| t.stop.is_some()) {
            break;
        }
    }
    Ok(())
}

/// Books a step on its track: timing, positions, the stop rule, the next input.
fn advance(t: &mut Track, plan: &Plan, out: &FrameOutput, fed: Vec<i32>, us: f64) -> Result<()> {
    t.step_us.push(us);
    t.positions.push(out.positions as u32);
    if let Some(reason) = plan.stop.and_then(|stop| stop(&out.sampled)) {
        t.stop = Some(reason);
    }
    t.input = Frames::audio(&fed, plan.vocab)?;
    t.sampled.push(out.sampled.clone());
    t.fed.push(fed);
    Ok(())
}

/// What one pipeline produced, step by step ([`run_one`]).
#[derive(Debug, Clone, Default)]
pub struct Sequence {
    pub outputs: Vec<FrameOutput>,
    /// The tokens fed back (forced ones under teacher forcing, else the sampled ones).
    pub fed: Vec<Vec<i32>>,
    pub step_us: Vec<f64>,
    /// Why the loop stopped early, if it did.
    pub stop: Option<&'static str>,
}

/// Runs one pipeline through [`generate`] and keeps every output.
pub fn run_one(backend: &mut dyn Backend, prompt: &Frames, plan: &Plan) -> Result<Sequence> {
    struct Keep(Vec<FrameOutput>);
    impl Observer for Keep {
        fn step(&mut self, _: usize, _: usize, out: FrameOutput, _: &Track) -> Result<()> {
            self.0.push(out);
            Ok(())
        }
    }
    let mut keep = Keep(Vec::new());
    let mut tracks = [Track::new(backend, prompt)];
    generate(&mut tracks, prompt, plan, &mut keep)?;
    let [t] = tracks;
    Ok(Sequence {
        outputs: keep.0,
        fed: t.fed,
        step_us: t.step_us,
        stop: t.stop,
    })
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
