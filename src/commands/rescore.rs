//! `rescore`: feed a reference pipeline exactly the tokens another run fed its model (the
//! prompt ids from its manifest, then its fed tokens frame by frame, via teacher forcing) and
//! record the reference's logits and probabilities at every step with that run's sampler
//! settings and noise. The result is a run aligned step by step with the original, so `diff`
//! compares every step — llama.cpp's saved-base-logits workflow (docs/outside-ports.md).
use crate::backend::{Backend, FrameOutput, Record};
use crate::capture::{
    f32_precision, FrameRecord, Manifest, PromptInfo, RescoreOf, Run, RunWriter, SamplerInfo,
    Storage, Timings,
};
use crate::generate::{generate, Mode, Observer, Plan, Track};
use crate::model::{Frames, Model};
use crate::sampling::{NoiseMode, SamplerSpec};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// How a re-score records.
#[derive(Debug, Clone)]
pub struct RescoreOptions {
    /// The run directory to write (refused when it exists and is not empty).
    pub out: PathBuf,
    pub logits: Storage,
    pub probs: Storage,
}

/// What a re-score did.
#[derive(Debug, Clone, Serialize)]
pub struct RescoreSummary {
    pub run: String,
    pub out: String,
    pub backend: String,
    pub frames: usize,
    pub prompt_tokens: usize,
    /// Whether the original run recorded fed tokens different from its sampled ones.
    pub run_was_forced: bool,
    /// First (frame, codebook) where the reference's own sampled token differs from the
    /// run's sampled token (with shared noise, a faithful port has none).
    pub first_token_mismatch: Option<[usize; 2]>,
    pub mean_frame_ms: f64,
    /// Notes (e.g. the weights differ from the run's).
    pub notes: Vec<String>,
}

impl RescoreSummary {
    pub fn render(&self) -> String {
        let tokens = match self.first_token_mismatch {
            None => "the reference samples the same tokens at every step".to_string(),
            Some([f, c]) => format!(
                "the reference's own token first differs from the run's at frame {f}, codebook {c}"
            ),
        };
        let mut s = format!(
            "rescored {} with {} → {} ({} frames after {} prompt tokens, {:.2} ms/frame); {tokens}\n",
            self.run, self.backend, self.out, self.frames, self.prompt_tokens, self.mean_frame_ms
        );
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        s.push_str(&format!(
            "  compare: csm-parity diff {} {}\n",
            self.out, self.run
        ));
        s
    }
}

/// The sampler of a run's manifest.
pub fn sampler_of(m: &SamplerInfo) -> Result<SamplerSpec> {
    let noise = match m.noise.as_str() {
        "native" => NoiseMode::Native,
        _ => NoiseMode::Shared,
    };
    let temp = if m.noise == "greedy" {
        0.0
    } else {
        m.temperature
    };
    SamplerSpec::new(temp, m.top_k, noise, m.seed)
        .and_then(|s| s.with_filters(m.top_p.unwrap_or(0.0), m.min_p.unwrap_or(0.0)))
        .context("the run's sampler settings")
}

/// The model's input rows for a run's prompt ids (CSM: one text frame per id; Llama: one
/// token per position).
pub fn prompt_frames(model: &Model, ids: &[i64]) -> Result<Frames> {
    if ids.is_empty() {
        bail!("prompt.token_ids is empty: rescore needs the prompt the run fed its model");
    }
    let ids: Vec<u32> = ids
        .iter()
        .map(|&i| u32::try_from(i).with_context(|| format!("prompt token id {i} out of range")))
        .collect::<Result<_>>()?;
    model
        .prompt_of_ids(&ids)
        .context("the run's prompt.token_ids do not fit the model")
}

/// Checks that `run` can be re-scored by `model`.
pub fn check_compatible(model: &Model, run: &Run) -> Result<()> {
    let m = run.manifest();
    if m.model.kind != model.kind() {
        bail!(
            "{}: a {} run, but the model is {} (pass --model with a {} model)",
            run.dir().display(),
            m.model.kind,
            model.kind(),
            m.model.kind
        );
    }
    if run.codebooks() != model.codebooks() || run.vocab() != model.vocab() {
        bail!(
            "{}: {} codebooks × vocab {}, but the model has {} × {}",
            run.dir().display(),
            run.codebooks(),
            run.vocab(),
            model.codebooks(),
            model.vocab()
        );
    }
    if run.frames() == 0 {
        bail!("{}: has no frames to re-score", run.dir().display());
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Re-scores `run` with `backend` (already loaded from `model`). Writes `opts.out`.
pub fn rescore(
    model: &Model,
    run: &Run,
    backend: &mut dyn Backend,
    load_ms: f64,
    opts: &RescoreOptions,
) -> Result<RescoreSummary> {
    check_compatible(model, run)?;
    let rm = run.manifest();
    let sampler = sampler_of(&rm.sampler)?;
    let prompt = prompt_frames(model, &rm.prompt.token_ids)?;
    let (c, v) = (run.codebooks(), run.vocab());
    let info = backend.info();
    let mut notes = Vec::new();
    let mi = crate::commands::capture::model_info(model);
    if !rm.model.sha256.is_empty() && rm.model.sha256 != mi.sha256 {
        notes.push(format!(
            "the run's model.sha256 differs from {}'s weights (fine for a port that converted the weights; otherwise check --model)",
            model.dir().display()
        ));
    }
    let manifest_bytes = std::fs::read(run.dir().join("manifest.json"))
        .with_context(|| format!("{}: cannot read manifest.json", run.dir().display()))?;
    let mut manifest = Manifest::example(&info.name);
    manifest.backend = info.clone();
    manifest.model = mi;
    manifest.prompt = PromptInfo {
        text: rm.prompt.text.clone(),
        speaker: rm.prompt.speaker,
        token_ids: rm.prompt.token_ids.clone(),
    };
    manifest.sampler = SamplerInfo {
        mode: "teacher".into(),
        noise: rm.sampler.noise.clone(),
        temperature: f32_precision(rm.sampler.temperature),
        top_k: rm.sampler.top_k,
        top_p: rm.sampler.top_p,
        min_p: rm.sampler.min_p,
        seed: rm.sampler.seed,
        post: "none".into(),
        reference: info.name.clone(),
    };
    manifest.rescore_of = Some(RescoreOf {
        run: run.dir().display().to_string(),
        backend: rm.backend.name.clone(),
        manifest_sha256: sha256_hex(&manifest_bytes),
    });
    let mut writer = RunWriter::create(&opts.out, manifest, c, v, opts.logits, opts.probs)
        .with_context(|| format!("--out {}", opts.out.display()))?;
    let fed: Vec<Vec<i32>> = run.fed_tokens().chunks(c).map(<[i32]>::to_vec).collect();
    let plan = Plan {
        sampler: &sampler,
        max_steps: run.frames(),
        record: Record {
            logits: opts.logits != Storage::None,
            probs: opts.probs != Storage::None,
        },
        mode: Mode::Teacher,
        forced: Some(&fed),
        stop: None,
        codebooks: c,
        vocab: v,
    };
    let mut rec = Rescorer {
        writer: &mut writer,
        theirs: run.tokens(),
        mismatch: None,
    };
    let mut tracks = [Track::new(backend, &prompt)];
    let result = generate(&mut tracks, &prompt, &plan, &mut rec);
    let mismatch = rec.mismatch;
    if let Err(e) = result {
        let partial = writer.partial_dir().to_path_buf();
        drop(writer);
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    let [t] = tracks;
    let timings = Timings::of_steps(load_ms, &t.step_us, t.positions);
    let mean_ms = timings.mean_frame_ms;
    let out = writer.finish(&rm.stop_reason, timings)?;
    Ok(RescoreSummary {
        run: run.dir().display().to_string(),
        out: out.display().to_string(),
        backend: info.name,
        frames: run.frames(),
        prompt_tokens: rm.prompt.token_ids.len(),
        run_was_forced: run.has_fed_tokens(),
        first_token_mismatch: mismatch,
        mean_frame_ms: mean_ms,
        notes,
    })
}

/// The model directory a re-score uses when `--model` is not given: the run's `model.path`
/// when it is a directory, else `None` (the caller falls back to the bundled fixture).
pub fn model_dir_of(run: &Run) -> Option<PathBuf> {
    let p = Path::new(&run.manifest().model.path);
    (!run.manifest().model.path.is_empty() && p.is_dir()).then(|| p.to_path_buf())
}

/// Records each re-scored step and notes the first step whose tokens differ from the run's.
struct Rescorer<'w> {
    writer: &'w mut RunWriter,
    theirs: &'w [i32],
    mismatch: Option<[usize; 2]>,
}

impl Observer for Rescorer<'_> {
    fn step(&mut self, _: usize, f: usize, out: FrameOutput, t: &Track) -> Result<()> {
        let c = out.sampled.len();
        if self.mismatch.is_none() {
            let theirs = &self.theirs[f * c..(f + 1) * c];
            if let Some(cb) = out.sampled.iter().zip(theirs).position(|(a, b)| a != b) {
                self.mismatch = Some([f, cb]);
            }
        }
        let rec = FrameRecord {
            post_tokens: out.sampled.clone(),
            tokens: out.sampled,
            logits: out.logits,
            probs: out.probs,
            step_us: t.step_us[f],
        };
        self.writer
            .push_fed(&rec, Some(&t.fed[f]))
            .with_context(|| format!("re-scoring frame {f}"))
    }
}
