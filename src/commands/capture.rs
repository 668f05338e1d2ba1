//! `capture`: both pipelines generate from the same text with the same seed; each writes a run
//! directory (DESIGN §4) recording every step.
use crate::backend::{self, load_codec, Backend, BackendKind, Codec, FrameOutput, Record};
use crate::capture::{
    f32_precision, BackendInfo, FrameRecord, Manifest, ModelInfo, PromptInfo, RunWriter,
    SamplerInfo, Storage, Timings,
};
use crate::capture::{AudioManifest, AudioWriter, CodecInfo};
use crate::faults::Fault;
use crate::generate::{generate, Observer, Plan, Track};
use crate::model::{DType, Frames, Model};
use crate::sampling::{PostProcess, SamplerSpec};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use crate::generate::Mode;

/// The manifest's record of `model`.
pub fn model_info(model: &Model) -> ModelInfo {
    ModelInfo {
        kind: model.kind().into(),
        path: model.dir().display().to_string(),
        layout: model.layout().into(),
        sha256: model.sha256().into(),
        config: model.config_json(),
    }
}

/// Everything a capture needs.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    pub text: String,
    pub speaker: u32,
    /// LM only: wrap the prompt in the Llama-3 chat format.
    pub chat: bool,
    /// Reference first.
    pub backends: Vec<BackendKind>,
    pub reference: BackendKind,
    pub sampler: SamplerSpec,
    /// Frames (CSM) or tokens (LM) to generate at most.
    pub max_frames: usize,
    pub mode: Mode,
    /// Post-processing of the pipeline under test (every non-reference backend).
    pub post: PostProcess,
    pub dtype: DType,
    pub logits: Storage,
    pub probs: Storage,
    pub out: PathBuf,
    pub progress: bool,
    /// A known porting bug injected into the MLX pipeline (never the reference).
    pub inject: Option<Fault>,
    /// Replace existing complete runs in `out` (only once the new ones are complete).
    pub force: bool,
    /// Whether and with which codec each CSM pipeline turns its frames into sound.
    pub audio: AudioSetting,
    /// A known codec porting bug injected into the MLX codec (never the reference's).
    pub codec_fault: Option<crate::backend::codec::CodecFault>,
}

/// Audio of a CSM capture: each pipeline decodes its post-processed frames with its own
/// library's Mimi codec into `audio.wav` / `audio.npy`; every candidate run also gets
/// `audio_cross.npy`, its frames decoded with the reference's codec (docs/codec.md).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AudioSetting {
    /// No audio (`--no-audio`; Llama models have none).
    #[default]
    Off,
    /// The codec the model brings (`MODEL/codec/`, or `codec_model.*` of a transformers CSM
    /// checkpoint); an error when it brings none.
    Auto,
    /// This codec directory (`--codec DIR`).
    Codec(PathBuf),
}

impl AudioSetting {
    /// The codec directory to use for `model`, checked before anything is loaded.
    fn codec_dir(&self, model: &Model) -> Result<Option<PathBuf>> {
        match (self, model.speaks()) {
            (AudioSetting::Off, _) | (AudioSetting::Auto, false) => return Ok(None),
            (AudioSetting::Codec(_), false) => {
                bail!(
                    "--codec applies to CSM models (a {} model has no audio)",
                    model.kind()
                )
            }
            _ => {}
        }
        let dir = match self {
            AudioSetting::Codec(d) => {
                if !d.join("config.json").is_file() {
                    bail!(
                        "--codec {}: no config.json (expected a Mimi codec directory, e.g. kyutai/mimi, or a transformers CSM checkpoint)",
                        d.display()
                    );
                }
                d.clone()
            }
            _ => crate::model::mimi::MimiModel::codec_dir_of(model.dir()).with_context(|| {
                format!(
                    "{}: the model brings no codec (no codec/ folder; not a transformers CSM checkpoint with codec_model.*); pass --codec DIR (a kyutai/mimi directory) or --no-audio",
                    model.dir().display()
                )
            })?,
        };
        Ok(Some(dir))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub backend: String,
    pub dir: String,
    pub frames: usize,
    pub stop_reason: String,
    pub mean_frame_ms: f64,
    pub prefill_frame_ms: f64,
    pub load_ms: f64,
    pub info: BackendInfo,
    /// Decoded text of the generated tokens (LM runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_text: Option<String>,
    /// Problems seen while generating (non-finite logits/probs), also in the manifest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptureSummary {
    pub out: String,
    /// `csm` or `llama`.
    pub model_kind: String,
    pub mode: String,
    pub noise: String,
    pub temperature: f32,
    pub top_k: usize,
    pub seed: u64,
    pub prompt_tokens: usize,
    pub runs: Vec<RunSummary>,
    /// First (frame, codebook) where the sampled tokens of the first two runs differ.
    pub first_token_mismatch: Option<[usize; 2]>,
    /// Sampled tokens of the first two runs agree at every common step.
    pub tokens_equal: Option<bool>,
    /// Reading and validating the checkpoint (before any backend loads), ms; set by `capture`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_load_ms: Option<f64>,
    /// Peak resident memory of the process (Linux), bytes; set by `capture` at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// Notes about this machine (e.g. a compute dtype that is much slower than f32 here).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A backend loaded once and reused by several captures ([`capture_with`]): the sweep and the
/// gate load each pipeline once instead of once per capture.
pub struct LoadedBackend {
    pub kind: BackendKind,
    pub backend: Box<dyn Backend>,
    /// Load time, reported in the manifest of the first capture that uses it (0 afterwards).
    pub load_ms: f64,
}

/// Loads `kinds` (reference first) from `model` computing in `dtype`.
pub fn load_backends(
    model: &Model,
    kinds: &[BackendKind],
    dtype: DType,
) -> Result<Vec<LoadedBackend>> {
    kinds
        .iter()
        .map(|&kind| {
            let t0 = Instant::now();
            let backend = backend::load(kind, model, dtype)?;
            Ok(LoadedBackend {
                kind,
                backend,
                load_ms: t0.elapsed().as_secs_f64() * 1e3,
            })
        })
        .collect()
}

/// What `capture` keeps of one pipeline besides the loop's own state ([`Track`]): its run
/// writer, its post-processing, its audio stream.
struct Recorder {
    kind: BackendKind,
    writer: RunWriter,
    load_ms: f64,
    post: PostProcess,
    nonfinite: NonFinite,
    /// Post-processed tokens of every frame (what the codec decodes).
    posted: Vec<Vec<i32>>,
    /// The audio being decoded as the frames come (CSM with a codec).
    audio: Option<AudioStream>,
}

/// Frames per streamed codec chunk in `capture` (2 s of audio): the codec decodes a track's
/// frames as soon as this many are known to be audio, and the rest when the track ends.
pub const AUDIO_CHUNK_FRAMES: usize = 25;

/// A track's audio, streamed: its own library's codec writing `audio.wav`/`audio.npy`, and
/// (every track but the reference) the reference's codec writing `audio_cross.npy`.
struct AudioStream {
    codec: Box<dyn Codec>,
    out: AudioWriter,
    info: CodecInfo,
    cross: Option<(Box<dyn Codec>, AudioWriter, CodecInfo)>,
    /// Frames decoded so far.
    decoded: usize,
    /// Codes outside the codebooks (decoded as 0).
    invalid: usize,
}

/// Steps whose recorded logits / probs hold NaN or ±Inf.
#[derive(Default)]
struct NonFinite {
    logits: usize,
    probs: usize,
    first: Option<usize>,
}

impl NonFinite {
    fn see(&mut self, frame: usize, out: &FrameOutput) {
        let bad =
            |x: &Option<Vec<f32>>| x.as_ref().is_some_and(|v| v.iter().any(|x| !x.is_finite()));
        let (l, p) = (bad(&out.logits), bad(&out.probs));
        self.logits += l as usize;
        self.probs += p as usize;
        if (l || p) && self.first.is_none() {
            self.first = Some(frame);
        }
    }
    fn warnings(&self, frames: usize, unit: &str) -> Vec<String> {
        let mut w = Vec::new();
        for (what, n) in [("logits", self.logits), ("probs", self.probs)] {
            if n > 0 {
                w.push(format!(
                    "non-finite {what} (NaN/Inf): {n} of {frames} steps, first at {unit} {}",
                    self.first.unwrap_or(0)
                ));
            }
        }
        w
    }
}

impl Recorder {
    /// Records step `f` of its track: the run row, post-processed tokens, non-finite values.
    fn push(&mut self, f: usize, out: FrameOutput, fed: &[i32], us: f64) -> Result<()> {
        self.nonfinite.see(f, &out);
        let post_tokens = self.post.apply(&out.sampled);
        self.posted.push(post_tokens.clone());
        let rec = FrameRecord {
            post_tokens,
            tokens: out.sampled,
            logits: out.logits,
            probs: out.probs,
            step_us: us,
        };
        self.writer.push_fed(&rec, Some(fed))
    }

    /// Decodes the frames known to be audio (every posted frame but an end-of-stream one) in
    /// chunks of [`AUDIO_CHUNK_FRAMES`]; with `done`, also the last partial chunk. A codec
    /// that cannot stream (the `non-causal-padding` fault) decodes everything at the end.
    fn feed_audio(&mut self, stop: Option<&str>, done: bool) -> Result<()> {
        let Some(a) = self.audio.as_mut() else {
            return Ok(());
        };
        let avail = self.posted.len() - usize::from(stop == Some("eos"));
        if !a.codec.can_stream() {
            if done && avail > 0 {
                let frames = &self.posted[..avail];
                let d = a.codec.decode(frames)?;
                a.out.push(&d.audio)?;
                a.invalid += d.invalid_codes;
                if let Some((rc, w, _)) = a.cross.as_mut() {
                    w.push(&rc.decode(frames)?.audio)?;
                }
                a.decoded = avail;
            }
            return Ok(());
        }
        while avail - a.decoded >= AUDIO_CHUNK_FRAMES || (done && avail > a.decoded) {
            let n = (avail - a.decoded).min(AUDIO_CHUNK_FRAMES);
            let frames = &self.posted[a.decoded..a.decoded + n];
            let d = a.codec.decode_stream(frames)?;
            a.out.push(&d.audio)?;
            a.invalid += d.invalid_codes;
            if let Some((rc, w, _)) = a.cross.as_mut() {
                w.push(&rc.decode_stream(frames)?.audio)?;
            }
            a.decoded += n;
        }
        Ok(())
    }
}

fn manifest_for(
    model: &Model,
    opts: &CaptureOptions,
    info: BackendInfo,
    ids: &[u32],
    post: PostProcess,
) -> Manifest {
    let mut m = Manifest::example(&info.name);
    m.backend = info;
    m.model = model_info(model);
    m.prompt = PromptInfo {
        text: opts.text.clone(),
        speaker: opts.speaker,
        token_ids: ids.iter().map(|&i| i as i64).collect(),
    };
    m.sampler = SamplerInfo {
        mode: opts.mode.name().into(),
        noise: if opts.sampler.is_greedy() {
            "greedy".into()
        } else {
            opts.sampler.noise.name().into()
        },
        temperature: f32_precision(opts.sampler.temperature as f64),
        top_k: opts.sampler.top_k,
        top_p: opts.sampler.active_top_p().map(|p| f32_precision(p as f64)),
        min_p: opts.sampler.active_min_p().map(|p| f32_precision(p as f64)),
        seed: opts.sampler.seed,
        post: post.to_string(),
        reference: opts.reference.name().into(),
    };
    m
}

/// Checks the options against the model before anything is loaded or written: backends, mode,
/// fault, frame budget (against the model's room for positions), prompt, output directories.
/// Returns the prompt ids and frames.
fn preflight(model: &Model, opts: &CaptureOptions) -> Result<(Vec<u32>, Frames)> {
    if opts.backends.is_empty() {
        bail!("no backend selected");
    }
    if opts.mode != Mode::Independent && opts.backends.len() < 2 {
        bail!(
            "--mode {} needs both backends (--backend both)",
            opts.mode.name()
        );
    }
    if let Some(f) = opts.inject {
        if !opts.backends.contains(&BackendKind::Mlx) || opts.reference == BackendKind::Mlx {
            bail!("--inject {f}: faults go into the MLX pipeline, which must run and must not be the reference");
        }
    }
    let step = model.step();
    if opts.max_frames == 0 {
        bail!("{} must be at least 1", step.limit_flag);
    }
    let (ids, prompt) = model.prompt(&opts.text, opts.speaker, opts.chat)?;
    // Frame 0 feeds the prompt; every later frame feeds one position.
    let needed = prompt.len() + opts.max_frames - 1;
    let (room, room_name) = model.max_positions();
    if needed > room {
        bail!(
            "{} {}: the prompt takes {} positions and each step after the first one more, {needed} in all, \
             but the model has room for {room} ({}); use at most {}",
            step.limit_flag,
            opts.max_frames,
            prompt.len(),
            room_name,
            (room + 1).saturating_sub(prompt.len())
        );
    }
    for &kind in &opts.backends {
        RunWriter::check_target(&run_dir(&opts.out, kind), opts.force)?;
    }
    opts.audio.codec_dir(model)?;
    Ok((ids, prompt))
}

/// Runs the capture of a model of any family; returns the summary. Run directories appear
/// only when complete.
pub fn capture(model: &Model, opts: &CaptureOptions) -> Result<CaptureSummary> {
    // One writer per output directory at a time: the lock is taken before the output is
    // checked (a concurrent capture's half-made `.partial` is never mistaken for a stranger's
    // folder) and held until the capture returns.
    let lock = lock_out(opts)?;
    // Every input and output is checked before the weights go into a library.
    preflight(model, opts)?;
    let mut loaded = load_backends(model, &opts.backends, opts.dtype)?;
    capture_locked(model, opts, &mut loaded, lock)
}

fn lock_out(opts: &CaptureOptions) -> Result<crate::outputs::DirLock> {
    crate::outputs::DirLock::acquire(&opts.out, crate::outputs::OutputKind::Capture, "--out")
}

/// [`capture`] with backends already loaded (`loaded` must hold `opts.backends`, in that
/// order). Each backend is reset (KV caches cleared, native RNG reseeded) before the capture,
/// so a capture with reused backends equals one with freshly loaded ones. `opts.inject` is
/// applied to the loaded MLX backend and stays with it: reuse only fault-free backends. The backends may have
/// been loaded from different weights or dtypes than `model` (the gate's `[candidate]`); the
/// manifests describe `model` and each backend's own `info()`.
pub fn capture_with(
    model: &Model,
    opts: &CaptureOptions,
    loaded: &mut [LoadedBackend],
) -> Result<CaptureSummary> {
    let kinds: Vec<BackendKind> = loaded.iter().map(|l| l.kind).collect();
    if kinds != opts.backends {
        bail!(
            "capture_with: loaded backends {:?} do not match the requested {:?}",
            kinds,
            opts.backends
        );
    }
    let lock = lock_out(opts)?;
    capture_locked(model, opts, loaded, lock)
}

/// [`capture_with`] once the output directory is locked (the lock is held until the return).
fn capture_locked(
    model: &Model,
    opts: &CaptureOptions,
    loaded: &mut [LoadedBackend],
    _lock: crate::outputs::DirLock,
) -> Result<CaptureSummary> {
    let (ids, prompt) = preflight(model, opts)?;
    let (c, v) = (model.codebooks(), model.vocab());
    let single = opts.backends.len() == 1;
    // The codec is validated (every tensor, the codebook count) before anything is written.
    let codec = match opts.audio.codec_dir(model)? {
        Some(dir) => {
            let mimi = crate::model::mimi::MimiModel::load(&dir)?;
            mimi.check_codebooks(c)?;
            Some(mimi)
        }
        None => None,
    };
    let mut recorders = Vec::new();
    let mut tracks = Vec::new();
    for lb in loaded.iter_mut() {
        let kind = lb.kind;
        let load_ms = std::mem::take(&mut lb.load_ms);
        let backend: &mut dyn Backend = lb.backend.as_mut();
        let mut post = if kind == opts.reference && !single {
            PostProcess::None
        } else {
            opts.post
        };
        if let (Some(fault), BackendKind::Mlx) = (opts.inject, kind) {
            backend.inject(fault)?;
            if fault == Fault::RemapLow {
                post = PostProcess::RemapLow { lo: 1, hi: 31 };
            }
        }
        let writer = RunWriter::create_replacing(
            &run_dir(&opts.out, kind),
            manifest_for(model, opts, backend.info(), &ids, post),
            c,
            v,
            opts.logits,
            opts.probs,
            opts.force,
        )?;
        recorders.push(Recorder {
            kind,
            writer,
            load_ms,
            post,
            nonfinite: NonFinite::default(),
            posted: vec![],
            audio: None,
        });
        tracks.push(Track::new(backend, &prompt));
    }
    // Each pipeline's frames stream into its codec as they are produced.
    if let Some(mimi) = &codec {
        start_audio(mimi, &mut recorders, opts.codec_fault)?;
    } else if let Some(f) = opts.codec_fault {
        bail!("--inject-codec {f}: needs audio (a CSM model with a codec; not --no-audio)");
    }
    let stop = |sampled: &[i32]| model.stop_of(sampled);
    let plan = Plan {
        sampler: &opts.sampler,
        max_steps: opts.max_frames,
        record: Record {
            logits: opts.logits != Storage::None,
            probs: opts.probs != Storage::None,
        },
        mode: opts.mode,
        forced: None,
        stop: Some(&stop),
        codebooks: c,
        vocab: v,
    };
    let mut obs = CaptureObserver {
        recorders: &mut recorders,
        bar: crate::util::progress_bar(opts.progress, opts.max_frames as u64, 0, "frames"),
    };
    generate(&mut tracks, &prompt, &plan, &mut obs)?;
    obs.bar.finish_and_clear();
    let first_mismatch = if tracks.len() >= 2 {
        tracks[0]
            .sampled
            .iter()
            .zip(&tracks[1].sampled)
            .enumerate()
            .find_map(|(f, (a, b))| a.iter().zip(b).position(|(x, y)| x != y).map(|cb| [f, cb]))
    } else {
        None
    };
    let tokens_equal = (tracks.len() >= 2)
        .then(|| first_mismatch.is_none() && tracks[0].sampled.len() == tracks[1].sampled.len());
    if let Some(mimi) = &codec {
        finish_audio(mimi, &mut recorders, &tracks)?;
    }
    let step = model.step();
    let mut runs = Vec::new();
    for (t, mut r) in tracks.into_iter().zip(recorders) {
        let frames = t.sampled.len();
        let stop = t.stop.unwrap_or(step.limit_reason);
        let output_text = model.output_text(&t.sampled)?;
        r.writer.set_output_text(output_text.clone());
        let warnings = r.nonfinite.warnings(frames, step.unit);
        for w in &warnings {
            r.writer.warn(w.clone());
        }
        let timings = Timings::of_steps(r.load_ms, &t.step_us, t.positions.clone());
        let (mean_ms, prefill_ms) = (timings.mean_frame_ms, timings.prefill_ms);
        let info = t.backend.info();
        let dir = r.writer.finish(stop, timings)?;
        runs.push(RunSummary {
            backend: r.kind.name().into(),
            dir: dir.display().to_string(),
            frames,
            stop_reason: stop.into(),
            mean_frame_ms: mean_ms,
            prefill_frame_ms: prefill_ms,
            load_ms: r.load_ms,
            info,
            output_text,
            warnings,
        });
    }
    let sampler = opts.sampler;
    Ok(CaptureSummary {
        out: opts.out.display().to_string(),
        model_kind: model.kind().into(),
        mode: opts.mode.name().into(),
        noise: if sampler.is_greedy() {
            "greedy".into()
        } else {
            sampler.noise.name().into()
        },
        temperature: sampler.temperature,
        top_k: sampler.top_k,
        seed: sampler.seed,
        prompt_tokens: prompt.len(),
        runs,
        first_token_mismatch: first_mismatch,
        tokens_equal,
        model_load_ms: None,
        peak_rss_bytes: None,
        notes: Vec::new(),
    })
}

/// Records each step into its pipeline's run (and audio stream) as the loop produces it.
struct CaptureObserver<'r> {
    recorders: &'r mut [Recorder],
    bar: indicatif::ProgressBar,
}

impl Observer for CaptureObserver<'_> {
    fn step(&mut self, track: usize, step: usize, out: FrameOutput, t: &Track) -> Result<()> {
        let r = &mut self.recorders[track];
        let us = t.step_us.last().copied().unwrap_or(0.0);
        r.push(step, out, &t.fed[step], us)?;
        r.feed_audio(t.stop, false)
    }
    fn step_done(&mut self, _step: usize) {
        self.bar.inc(1);
    }
}

/// Starts each track's audio stream: its own library's codec (the `--inject-codec` fault in every
/// track but the reference, whose codec stays clean) and, for every other track, a clean
/// reference codec for the cross-decode.
fn start_audio(
    mimi: &crate::model::mimi::MimiModel,
    tracks: &mut [Recorder],
    fault: Option<crate::backend::codec::CodecFault>,
) -> Result<()> {
    let rate = mimi.config.sampling_rate as u32;
    let info = |c: &dyn Codec| CodecInfo {
        name: "mimi".into(),
        path: mimi.dir.display().to_string(),
        sha256: mimi.weights.sha256.clone(),
        library: c.info().library_version,
    };
    let reference = tracks.first().map(|t| t.kind);
    for (i, t) in tracks.iter_mut().enumerate() {
        let mut codec = load_codec(t.kind, mimi, DType::F32)?;
        if let (Some(f), true) = (fault, i > 0) {
            codec.inject(f)?;
        }
        codec.stream_reset();
        let ci = info(codec.as_ref());
        let out = AudioWriter::create(t.writer.partial_dir(), rate)?;
        let cross = match (i, reference) {
            (1.., Some(rk)) => {
                let mut rc = load_codec(rk, mimi, DType::F32)?;
                rc.stream_reset();
                let rci = info(rc.as_ref());
                Some((
                    rc,
                    AudioWriter::create_cross(t.writer.partial_dir(), rate)?,
                    rci,
                ))
            }
            _ => None,
        };
        t.audio = Some(AudioStream {
            codec,
            out,
            info: ci,
            cross,
            decoded: 0,
            invalid: 0,
        });
    }
    Ok(())
}

/// Decodes what is left of each track's frames (the end-of-stream frame is not audio), finishes
/// its audio files and records them in its manifest.
fn finish_audio(
    mimi: &crate::model::mimi::MimiModel,
    recorders: &mut [Recorder],
    tracks: &[Track],
) -> Result<()> {
    let rate = mimi.config.sampling_rate as u32;
    for (t, tr) in recorders.iter_mut().zip(tracks) {
        t.feed_audio(tr.stop, true)?;
        let Some(a) = t.audio.take() else {
            continue;
        };
        if a.decoded == 0 {
            // Dropping the writers removes their temp files.
            drop(a);
            t.writer
                .warn("no audio: the first frame ended the stream (nothing to decode)".into());
            continue;
        }
        let mut m = AudioManifest {
            sample_rate: rate,
            samples: a.out.finish()?,
            codec: a.info,
            undecodable_tokens: a.invalid,
            frames_decoded: a.decoded,
            cross_samples: None,
            cross_codec: None,
        };
        if let Some((_, w, rci)) = a.cross {
            m.cross_samples = Some(w.finish()?);
            m.cross_codec = Some(rci);
        }
        t.writer.set_audio(Some(m));
        if a.invalid > 0 {
            t.writer.warn(format!(
                "{} tokens outside the codec's codebooks (≥ {}) were decoded as code 0",
                a.invalid, mimi.config.codebook_size
            ));
        }
    }
    Ok(())
}

/// The run directory of `kind` under `--out`: always `DIR/<backend>/`.
pub fn run_dir(out: &Path, kind: BackendKind) -> PathBuf {
    out.join(kind.name())
}

impl CaptureSummary {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let verdict = match (self.tokens_equal, self.first_token_mismatch) {
            (Some(true), _) if self.runs.iter().any(|r| !r.warnings.is_empty()) => {
                "tokens identical, but a pipeline produced non-finite values (see WARNING)"
                    .to_string()
            }
            (Some(true), _) => "tokens identical".to_string(),
            (_, Some([f, c])) => format!("first token mismatch at frame {f}, codebook {c}"),
            (Some(false), None) => "token streams differ in length".to_string(),
            (None, _) => "single backend".to_string(),
        };
        let _ = writeln!(
            s,
            "captured {} — {verdict} (mode {}, noise {}, temp {}, top-k {}, seed {})",
            self.out, self.mode, self.noise, self.temperature, self.top_k, self.seed
        );
        let _ = writeln!(
            s,
            "  {:<6} {:>7} {:<18} {:>12} {:>13}  run directory",
            "backend", "frames", "stop", "ms/frame", "first frame ms"
        );
        for r in &self.runs {
            let _ = writeln!(
                s,
                "  {:<6} {:>7} {:<18} {:>12.2} {:>13.2}  {}",
                r.backend, r.frames, r.stop_reason, r.mean_frame_ms, r.prefill_frame_ms, r.dir
            );
        }
        for r in &self.runs {
            for w in &r.warnings {
                let _ = writeln!(
                    s,
                    "  WARNING {}: {w} — these steps compare as failures",
                    r.backend
                );
            }
        }
        for r in &self.runs {
            if let Some(text) = &r.output_text {
                let _ = writeln!(s, "  {:<6} text: {text:?}", r.backend);
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }
}
