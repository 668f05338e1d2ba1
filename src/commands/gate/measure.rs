//! What the gate measures: both pipelines (the candidate possibly perturbed) over every text × seed, as sweep jobs.
use super::config::{GateConfig, DEFAULT_PERTURB_TENSOR};
use crate::backend::BackendKind;
use crate::capture::Storage;
use crate::commands::capture::{load_backends, LoadedBackend};
use crate::commands::sweep::aggregate::pooled_of;
use crate::commands::sweep::job::{run_job, Job, JobResult, JobSettings};
use crate::model::{fixture, CsmModel, DType, HostTensor, Model};
use anyhow::{bail, Context, Result};
use serde::Serialize;

/// What the gate measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Measured {
    pub jobs: usize,
    pub token_agreement: Option<f64>,
    pub max_logit_diff: Option<f64>,
    pub hist_intersection: Option<f64>,
    pub kl_hist: Option<f64>,
    pub divergence_frame: Option<f64>,
    pub chi_square_p: Option<f64>,
    /// Per job: (text index, seed, shared-noise divergence [frame, codebook]).
    pub divergences: Vec<(usize, u64, Option<[usize; 2]>)>,
    /// Non-finite outputs (NaN/Inf logits or probs) of any job, named by job and pipeline.
    pub nonfinite: Vec<String>,
}

impl Measured {
    /// The values `--update-baseline` writes, by `[baseline]` key.
    pub fn baseline_values(&self) -> [(&'static str, Option<f64>); 5] {
        [
            ("token_agreement", self.token_agreement),
            ("max_logit_diff", self.max_logit_diff),
            ("hist_intersection", self.hist_intersection),
            ("kl_hist", self.kl_hist),
            ("divergence_frame", self.divergence_frame),
        ]
    }
}

/// Loads the model, the reference (torch) and the candidate (MLX, possibly changed by
/// `[candidate]`), runs every text × seed and measures.
pub fn measure(cfg: &GateConfig) -> Result<(String, Measured)> {
    let dir = match &cfg.model {
        Some(d) => {
            if !d.is_dir() {
                bail!("gate config: model {}: not a directory", d.display());
            }
            d.clone()
        }
        None => fixture::ensure_default_fixture()?,
    };
    let tokenizer = cfg.tokenizer.as_deref();
    // Inputs before weights: the gate speaks texts, so it needs a tokenizer.
    match tokenizer {
        Some(t) if !t.is_file() => bail!(
            "gate config: tokenizer {}: no such file (expected a Hugging Face tokenizer.json)",
            t.display()
        ),
        None if !dir.join("tokenizer.json").is_file() => bail!(
            "gate config: model {} has no tokenizer.json; set tokenizer = \"FILE\" in the config \
             (CSM-1B uses the Llama-3.2 tokenizer.json)",
            dir.display()
        ),
        _ => {}
    }
    let model = Model::Csm(CsmModel::load_with(&dir, tokenizer)?);
    let dtype: DType = cfg.run.dtype.parse()?;
    let mut loaded = load_backends(&model, &[BackendKind::Torch], dtype)?;
    let cand_dtype: DType = match &cfg.candidate.dtype {
        Some(d) => d.parse()?,
        None => dtype,
    };
    let cand: Vec<LoadedBackend> = match cfg.candidate.perturb_weights {
        Some(eps) => {
            let mut m = CsmModel::load_with(&dir, tokenizer)?;
            let name = cfg
                .candidate
                .perturb_tensor
                .as_deref()
                .unwrap_or(DEFAULT_PERTURB_TENSOR);
            perturb(&mut m, name, eps, cfg.candidate.perturb_seed)?;
            load_backends(&Model::Csm(m), &[BackendKind::Mlx], cand_dtype)?
        }
        None => load_backends(&model, &[BackendKind::Mlx], cand_dtype)?,
    };
    loaded.extend(cand);
    let settings = JobSettings {
        max_frames: cfg.run.max_frames,
        speaker: cfg.run.speaker,
        dtype,
        shared_logits: Storage::F32,
        keep_runs: false,
        candidate: None,
    };
    let work = std::env::temp_dir().join(format!("csm-parity-gate-{}", std::process::id()));
    let mut run_all = || -> Result<Vec<JobResult>> {
        let mut results = Vec::new();
        for (ti, text) in cfg.run.texts.iter().enumerate() {
            for &seed in &cfg.run.seeds {
                let job = Job {
                    temperature: cfg.run.temperature,
                    top_k: cfg.run.top_k,
                    seed,
                    text_index: ti,
                };
                let r = run_job(&model, Some(&mut loaded), &job, text, &settings, &work);
                results.push(r.with_context(|| format!("gate job text {ti} seed {seed}"))?);
            }
        }
        Ok(results)
    };
    let results = run_all();
    // The captures are scratch: removed whether or not the jobs succeeded.
    let _ = std::fs::remove_dir_all(&work);
    let results = results?;
    let refs: Vec<&JobResult> = results.iter().collect();
    let pooled = pooled_of(&refs);
    let ta: Vec<f64> = results
        .iter()
        .filter_map(|r| r.shared.token_agreement)
        .collect();
    let measured = Measured {
        jobs: results.len(),
        token_agreement: (!ta.is_empty()).then(|| ta.iter().sum::<f64>() / ta.len() as f64),
        max_logit_diff: results
            .iter()
            .filter_map(|r| r.shared.max_logit_diff)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
        hist_intersection: pooled.hist_intersection,
        kl_hist: pooled.kl_hist,
        divergence_frame: results
            .iter()
            .map(|r| r.shared.divergence_frame() as f64)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x)))),
        chi_square_p: pooled.chi_square_p,
        divergences: results
            .iter()
            .map(|r| (r.job.text_index, r.job.seed, r.shared.divergence))
            .collect(),
        nonfinite: results
            .iter()
            .flat_map(|r| {
                r.shared
                    .nonfinite
                    .iter()
                    .map(move |w| format!("text {} seed {}: {w}", r.job.text_index, r.job.seed))
            })
            .collect(),
    };
    Ok((dir.display().to_string(), measured))
}

/// Adds `eps · rms(t) · N(0, 1)` (deterministic in `seed`) to tensor `name` of `model`.
pub fn perturb(model: &mut CsmModel, name: &str, eps: f64, seed: u64) -> Result<()> {
    let t = model.weights.tensors.get_mut(name).with_context(|| {
        format!("[candidate] perturb_tensor {name:?}: no such tensor in the model")
    })?;
    let mut v = t.to_f32();
    let rms = (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt();
    let mut rng = crate::rng::SplitMix64(seed ^ 0x9E27_u64);
    for x in v.iter_mut() {
        *x += (eps * rms * rng.normal()) as f32;
    }
    *t = HostTensor::from_f32(t.shape.clone(), &v);
    model.weights.sha256 = format!("{}+perturbed", model.weights.sha256);
    Ok(())
}
