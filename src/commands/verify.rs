//! `verify`: both backends on the same model, greedy, prompt + N frames; per-step logit
//! differences between backends and, per backend, cached vs full-recompute logits.
use crate::backend::{self, BackendKind, Record};
use crate::capture::BackendInfo;
use crate::generate::{max_abs_diff, max_tolerance_excess, run_one, Mode, Plan};
use crate::model::{DType, Model};
use crate::sampling::SamplerSpec;
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub model: String,
    pub dtype: String,
    pub prompt_tokens: usize,
    pub frames: usize,
    pub codebooks: usize,
    pub backends: Vec<BackendInfo>,
    /// Largest |mlx - torch| logit over every frame and codebook (the second backend is
    /// teacher-forced on the first one's tokens so every step is comparable). `null` with one backend.
    pub max_abs_logit_diff: Option<f64>,
    pub per_frame_max_abs_logit_diff: Vec<f64>,
    /// Per backend: largest |cached - recomputed| logit.
    pub cache_parity_max_abs_diff: BTreeMap<String, f64>,
    /// Greedy token streams of both backends are identical.
    pub tokens_equal: Option<bool>,
    /// First (frame, codebook) where the greedy choices differ.
    pub first_token_mismatch: Option<[usize; 2]>,
    pub atol: f64,
    /// Cached logits must satisfy max|cached − recomputed| ≤ cache_atol + cache_rtol·max|recomputed|
    /// per (frame, codebook) row.
    pub cache_atol: f64,
    pub cache_rtol: f64,
    /// Per backend: the cache check holds for every logit.
    pub cache_parity_ok: BTreeMap<String, bool>,
    pub passed: bool,
}

pub struct VerifyOptions {
    pub frames: usize,
    pub dtype: DType,
    pub text: String,
    pub speaker: u32,
    pub backends: Vec<BackendKind>,
    pub atol: f64,
    pub cache_atol: f64,
    pub cache_rtol: f64,
}

pub fn verify(model: &Model, opts: &VerifyOptions) -> Result<VerifyReport> {
    if opts.backends.is_empty() {
        bail!("no backend compiled into this build (features `mlx`, `torch`)");
    }
    let (c, v) = (model.codebooks(), model.vocab());
    let (_, prompt) = model.prompt(&opts.text, opts.speaker, false)?;
    let sampler = SamplerSpec::greedy();
    let record = Record {
        logits: true,
        probs: false,
    };
    let mut reference = None;
    let mut report = VerifyReport {
        model: model.dir().display().to_string(),
        dtype: opts.dtype.name().into(),
        prompt_tokens: prompt.len(),
        frames: opts.frames,
        codebooks: c,
        backends: vec![],
        max_abs_logit_diff: None,
        per_frame_max_abs_logit_diff: vec![],
        cache_parity_max_abs_diff: BTreeMap::new(),
        tokens_equal: None,
        first_token_mismatch: None,
        atol: opts.atol,
        cache_atol: opts.cache_atol,
        cache_rtol: opts.cache_rtol,
        cache_parity_ok: BTreeMap::new(),
        passed: true,
    };
    for &kind in &opts.backends {
        let mut b = backend::load(kind, model, opts.dtype)?;
        report.backends.push(b.info());
        // The second backend is teacher-forced on the first one's tokens.
        let forced: Option<&crate::generate::Sequence> = reference.as_ref();
        let plan = Plan {
            sampler: &sampler,
            max_steps: opts.frames,
            record,
            mode: Mode::Independent,
            forced: forced.map(|s| s.fed.as_slice()),
            stop: None,
            codebooks: c,
            vocab: v,
        };
        let seq = run_one(b.as_mut(), &prompt, &plan)?;
        let recomputed = b.recompute(&prompt, &seq.fed)?;
        let cache_diff = seq
            .outputs
            .iter()
            .zip(&recomputed)
            .map(|(o, r)| max_abs_diff(o.logits.as_ref().unwrap(), r))
            .fold(0.0, f64::max);
        let cache_ok = seq.outputs.iter().zip(&recomputed).all(|(o, r)| {
            max_tolerance_excess(
                o.logits.as_ref().unwrap(),
                r,
                v,
                opts.cache_atol,
                opts.cache_rtol,
            ) <= 0.0
        });
        report
            .cache_parity_max_abs_diff
            .insert(kind.name().into(), cache_diff);
        report.cache_parity_ok.insert(kind.name().into(), cache_ok);
        report.passed &= cache_ok;
        match &reference {
            None => reference = Some(seq),
            Some(r) => {
                let per: Vec<f64> = r
                    .outputs
                    .iter()
                    .zip(&seq.outputs)
                    .map(|(a, b)| {
                        max_abs_diff(a.logits.as_ref().unwrap(), b.logits.as_ref().unwrap())
                    })
                    .collect();
                let max = per.iter().cloned().fold(0.0, f64::max);
                report.max_abs_logit_diff = Some(max);
                report.per_frame_max_abs_logit_diff = per;
                report.first_token_mismatch = r
                    .outputs
                    .iter()
                    .zip(&seq.outputs)
                    .enumerate()
                    .find_map(|(f, (a, b))| {
                        a.sampled
                            .iter()
                            .zip(&b.sampled)
                            .position(|(x, y)| x != y)
                            .map(|c| [f, c])
                    });
                report.tokens_equal = Some(report.first_token_mismatch.is_none());
                report.passed &= max <= opts.atol && report.first_token_mismatch.is_none();
            }
        }
    }
    Ok(report)
}

impl VerifyReport {
    /// The one-screen text form.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let _ = writeln!(
            s,
            "{verdict}: {} frames × {} codebooks, greedy, dtype {}",
            self.frames, self.codebooks, self.dtype
        );
        for b in &self.backends {
            let _ = writeln!(
                s,
                "  backend {:<6} {} on {}",
                b.name, b.library_version, b.device
            );
        }
        match self.max_abs_logit_diff {
            Some(m) => {
                let _ = writeln!(
                    s,
                    "  max |mlx - torch| logit     {m:.3e}  (atol {:.0e})",
                    self.atol
                );
                let _ = writeln!(
                    s,
                    "  greedy tokens equal         {}",
                    match self.first_token_mismatch {
                        None => "yes".to_string(),
                        Some([f, c]) => format!("no: first mismatch at frame {f}, codebook {c}"),
                    }
                );
                let per: Vec<String> = self
                    .per_frame_max_abs_logit_diff
                    .iter()
                    .map(|d| format!("{d:.1e}"))
                    .collect();
                let _ = writeln!(s, "  per frame                   {}", per.join(" "));
            }
            None => {
                let _ = writeln!(s, "  (one backend only: no cross-backend comparison)");
            }
        }
        for (name, d) in &self.cache_parity_max_abs_diff {
            let ok = if self.cache_parity_ok.get(name) == Some(&true) {
                "ok"
            } else {
                "FAIL"
            };
            let _ = writeln!(
                s,
                "  cache vs recompute ({name:<5})  {d:.3e}  {ok} (atol {:.0e} + rtol {:.0e}·max|logit| of the row)",
                self.cache_atol, self.cache_rtol
            );
        }
        s
    }
}
