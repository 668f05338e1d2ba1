//! `bisect`: past "stage model" — replays both pipelines teacher-forced up to a step, records
//! every activation tap at that step in both, and names the first layer and operation whose
//! output departs beyond its tolerance (relative to the tensor's scale), with the table of every
//! tap so the jump is visible (issue 17). Polygraphy's idea, for an MLX port.
pub mod report;

use crate::analysis::{self, DiffOptions};
use crate::backend::{self, Backend, BackendKind, Record, Tap};
use crate::capture::Run;
use crate::faults::Fault;
use crate::generate::{generate, Mode, Observer, Plan, Track};
use crate::model::{DType, Frames, Model};
use crate::sampling::SamplerSpec;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;

/// What to bisect.
#[derive(Debug, Clone, Default)]
pub struct BisectOptions {
    /// The frame (step) to record; default: the divergence frame of `diff`, else 0.
    pub frame: Option<usize>,
    /// Relative tolerance per tap: max|Δ| / max|reference| (default by dtype: f32 1e-4,
    /// f16 1e-2, bf16 5e-2).
    pub rtol: Option<f64>,
    /// The model directory (default: run A's `model.path`).
    pub model: Option<PathBuf>,
}

/// One tap compared.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TapDiff {
    pub name: String,
    pub shape: Vec<usize>,
    /// max |a − b| (∞ when either holds NaN/Inf or the shapes differ).
    pub max_abs: f64,
    /// Flat index of the largest difference.
    pub argmax: usize,
    /// max |a|: the tensor's scale.
    pub scale: f64,
    /// max_abs / scale.
    pub rel: f64,
    pub breach: bool,
    /// Why the tap cannot be compared value by value (missing in B, shapes differ).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BisectReport {
    pub run_a: String,
    pub run_b: String,
    pub backend_a: String,
    pub backend_b: String,
    /// The fault run B was captured with (re-injected in the replay).
    pub fault_b: Option<String>,
    pub frame: usize,
    /// Where `diff` puts the divergence, and its stage.
    pub divergence: Option<[usize; 2]>,
    pub stage: Option<String>,
    pub rtol: f64,
    pub taps: Vec<TapDiff>,
    /// Index into `taps` of the first breach.
    pub first_breach: Option<usize>,
    /// The component that departs first (`RoPE`, `attention`, `head input`, …).
    pub component: Option<String>,
    /// Where (`backbone layer 0`, `depth decoder (codebook 2) layer 0`, `head of codebook 0`).
    pub location: Option<String>,
    /// One sentence naming the departure and what still agrees just before it.
    pub sentence: String,
}

fn default_rtol(d: DType) -> f64 {
    match d {
        DType::F32 => 1e-4,
        DType::F16 => 1e-2,
        DType::BF16 => 5e-2,
    }
}

fn backend_kind(name: &str, default: BackendKind) -> BackendKind {
    match name {
        "torch" => BackendKind::Torch,
        "mlx" => BackendKind::Mlx,
        _ => default,
    }
}

/// Bisects runs `a` (reference) and `b`.
pub fn bisect(a: &Run, b: &Run, opts: &BisectOptions) -> Result<BisectReport> {
    let (ma, mb) = (a.manifest(), b.manifest());
    if ma.prompt.token_ids != mb.prompt.token_ids {
        bail!(
            "{} and {}: the prompts differ (stage input); bisect replays one prompt in both pipelines",
            a.dir().display(),
            b.dir().display()
        );
    }
    let dir = match &opts.model {
        Some(d) => d.clone(),
        None => PathBuf::from(&ma.model.path),
    };
    if !dir.is_dir() {
        bail!(
            "{}: run A's model directory is not here; pass --model DIR",
            dir.display()
        );
    }
    let model = Model::open(&ma.model.kind, &dir, None)?;
    bisect_with(&model, a, b, opts)
}

/// [`bisect`] with the model already loaded (it must be the one both runs were made with).
pub fn bisect_with(model: &Model, a: &Run, b: &Run, opts: &BisectOptions) -> Result<BisectReport> {
    let (ma, mb) = (a.manifest(), b.manifest());
    let dir = model.dir();
    if model.codebooks() != a.codebooks() || model.vocab() != a.vocab() {
        bail!(
            "{}: the model has {} codebooks × {} vocab, run A {} × {}",
            dir.display(),
            model.codebooks(),
            model.vocab(),
            a.codebooks(),
            a.vocab()
        );
    }
    let diff = analysis::compare(
        a,
        b,
        &DiffOptions {
            resamples: 0,
            ..DiffOptions::default()
        },
    )?;
    let divergence = diff.divergence.point.map(|p| [p.frame, p.codebook]);
    let frame = opts.frame.or(divergence.map(|d| d[0])).unwrap_or(0);
    if frame >= a.frames() {
        bail!(
            "--frame {frame}: run A has {} frames (0..{})",
            a.frames(),
            a.frames().saturating_sub(1)
        );
    }
    let dtype_a: DType = ma.backend.dtype.parse().unwrap_or(DType::F32);
    let dtype_b: DType = mb.backend.dtype.parse().unwrap_or(dtype_a);
    let rtol = opts
        .rtol
        .unwrap_or_else(|| default_rtol(dtype_a).max(default_rtol(dtype_b)));
    if !(rtol.is_finite() && rtol >= 0.0) {
        bail!("--rtol {rtol}: expected a finite number ≥ 0");
    }
    let kind_a = backend_kind(&ma.backend.name, BackendKind::Torch);
    let kind_b = backend_kind(
        &mb.backend.name,
        if kind_a == BackendKind::Torch {
            BackendKind::Mlx
        } else {
            BackendKind::Torch
        },
    );
    let ids: Vec<u32> = ma
        .prompt
        .token_ids
        .iter()
        .map(|&t| u32::try_from(t).with_context(|| format!("prompt token id {t} out of range")))
        .collect::<Result<_>>()?;
    let prompt = model.prompt_of_ids(&ids)?;
    let fed: Vec<Vec<i32>> = a
        .tokens_view()
        .outer_iter()
        .take(frame + 1)
        .map(|r| r.to_vec())
        .collect();
    let fault = |m: &crate::capture::Manifest| -> Result<Option<Fault>> {
        m.backend
            .fault
            .as_deref()
            .map(|f| f.parse::<Fault>().map_err(anyhow::Error::msg))
            .transpose()
    };
    let (fault_a, fault_b) = (fault(ma)?, fault(mb)?);
    let replay = |kind: BackendKind, dtype: DType, fault: Option<Fault>| -> Result<Vec<Tap>> {
        let mut be = backend::load(kind, model, dtype)?;
        if let Some(f) = fault {
            be.inject(f)?;
        }
        replay(be.as_mut(), &prompt, &fed, model.vocab(), ma.sampler.seed)
    };
    let taps_a = replay(kind_a, dtype_a, fault_a)?;
    let taps_b = replay(kind_b, dtype_b, fault_b)?;
    let taps = compare_taps(&taps_a, &taps_b, rtol);
    let first = taps.iter().position(|t| t.breach);
    let (component, location, sentence) = explain(&taps, first, rtol);
    Ok(BisectReport {
        run_a: a.dir().display().to_string(),
        run_b: b.dir().display().to_string(),
        backend_a: kind_a.name().into(),
        backend_b: kind_b.name().into(),
        fault_b: mb.backend.fault.clone(),
        frame,
        divergence,
        stage: diff.divergence.stage.map(|s| s.name().to_string()),
        rtol,
        taps,
        first_breach: first,
        component,
        location,
        sentence,
    })
}

/// Feeds `prompt` then the frames `fed` teacher-forced; records the taps of the last frame.
fn replay(
    be: &mut dyn Backend,
    prompt: &Frames,
    fed: &[Vec<i32>],
    vocab: usize,
    seed: u64,
) -> Result<Vec<Tap>> {
    /// Switches the taps on before the last step.
    struct TapLast(usize);
    impl Observer for TapLast {
        fn before_step(&mut self, _: usize, step: usize, backend: &mut dyn Backend) -> Result<()> {
            if step == self.0 {
                backend.set_taps(true)?;
            }
            Ok(())
        }
    }
    let greedy = SamplerSpec {
        seed,
        ..SamplerSpec::greedy()
    };
    let plan = Plan {
        sampler: &greedy,
        max_steps: fed.len(),
        record: Record::default(),
        mode: Mode::Independent,
        forced: Some(fed),
        stop: None,
        codebooks: fed.first().map_or(1, Vec::len),
        vocab,
    };
    let mut tracks = [Track::new(&mut *be, prompt)];
    generate(&mut tracks, prompt, &plan, &mut TapLast(fed.len() - 1))?;
    let taps = be.take_taps()?;
    be.set_taps(false)?;
    Ok(taps)
}

/// Compares B's taps with A's, in A's (execution) order.
pub fn compare_taps(a: &[Tap], b: &[Tap], rtol: f64) -> Vec<TapDiff> {
    let by_name: HashMap<&str, &Tap> = b.iter().map(|t| (t.name.as_str(), t)).collect();
    a.iter()
        .map(|ta| {
            let scale = ta.values.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
            let Some(tb) = by_name.get(ta.name.as_str()) else {
                return TapDiff {
                    name: ta.name.clone(),
                    shape: ta.shape.clone(),
                    max_abs: f64::INFINITY,
                    argmax: 0,
                    scale,
                    rel: f64::INFINITY,
                    breach: true,
                    note: Some("not recorded by pipeline B".into()),
                };
            };
            if ta.values.len() != tb.values.len() {
                return TapDiff {
                    name: ta.name.clone(),
                    shape: ta.shape.clone(),
                    max_abs: f64::INFINITY,
                    argmax: 0,
                    scale,
                    rel: f64::INFINITY,
                    breach: true,
                    note: Some(format!("shape {:?} in A, {:?} in B", ta.shape, tb.shape)),
                };
            }
            let (mut max_abs, mut argmax) = (0f64, 0usize);
            for (i, (&x, &y)) in ta.values.iter().zip(&tb.values).enumerate() {
                let d = (x as f64 - y as f64).abs();
                let d = if d.is_nan() { f64::INFINITY } else { d };
                if d > max_abs {
                    (max_abs, argmax) = (d, i);
                }
            }
            let rel = if max_abs == 0.0 {
                0.0
            } else {
                max_abs / scale.max(f64::MIN_POSITIVE)
            };
            TapDiff {
                name: ta.name.clone(),
                shape: ta.shape.clone(),
                max_abs,
                argmax,
                scale,
                rel,
                // NaN-proof: a breach unless provably within the tolerance.
                breach: !(rel <= rtol && scale.is_finite()),
                note: None,
            }
        })
        .collect()
}

/// (stack, layer, op) of a tap name: `backbone.layers.0.q_rope` → ("backbone", Some(0), "q_rope").
fn parse_name(name: &str) -> (String, Option<usize>, String) {
    if let Some((stack, rest)) = name.split_once(".layers.") {
        if let Some((layer, op)) = rest.split_once('.') {
            return (stack.to_string(), layer.parse().ok(), op.to_string());
        }
    }
    match name.rsplit_once('.') {
        Some((stack, op)) => (stack.to_string(), None, op.to_string()),
        None => (String::new(), None, name.to_string()),
    }
}

fn op_words(op: &str) -> &'static str {
    match op {
        "input" => "the input",
        "attn_norm" => "the attention RMSNorm",
        "q" => "q before RoPE",
        "k" => "k before RoPE",
        "v" => "v",
        "q_rope" => "q after RoPE",
        "k_rope" => "k after RoPE",
        "attn" => "the attention output",
        "o_proj" => "the output projection",
        "resid_attn" => "the attention residual",
        "mlp_norm" => "the MLP RMSNorm",
        "gate" => "the MLP gate (SiLU)",
        "up" => "the MLP up projection",
        "down" => "the MLP down projection",
        "resid_mlp" => "the MLP residual",
        "final_norm" => "the final RMSNorm",
        "h_last" => "the head input",
        "logits" => "the head's logits",
        _ => "this tensor",
    }
}

/// The component an operation belongs to, as a porting engineer would name it.
pub fn component_of(stack: &str, op: &str) -> &'static str {
    match op {
        "input" if stack.starts_with("decoder") => "decoder input",
        "input" => "embeddings",
        "attn_norm" | "mlp_norm" | "final_norm" => "RMSNorm",
        "q" | "k" | "v" => "q/k/v projection",
        "q_rope" | "k_rope" => "RoPE",
        "attn" => "attention",
        "o_proj" => "attention output projection",
        "resid_attn" | "resid_mlp" => "residual",
        "gate" | "up" | "down" => "MLP",
        "h_last" => "head input",
        "logits" => "head logits",
        _ => "unknown",
    }
}

fn where_of(stack: &str, layer: Option<usize>) -> String {
    let s = if let Some(cb) = stack.strip_prefix("decoder.cb") {
        format!("depth decoder (codebook {cb})")
    } else if let Some(cb) = stack.strip_prefix("head.cb") {
        return format!("head of codebook {cb}");
    } else if stack == "model" {
        "model".to_string()
    } else {
        stack.to_string()
    };
    match layer {
        Some(l) => format!("{s} layer {l}"),
        None => s,
    }
}

fn explain(
    taps: &[TapDiff],
    first: Option<usize>,
    rtol: f64,
) -> (Option<String>, Option<String>, String) {
    let Some(i) = first else {
        let worst = taps.iter().map(|t| t.rel).fold(0f64, f64::max);
        return (
            None,
            None,
            format!(
                "no tap departs: all {} taps agree within rel {rtol:.0e} (largest rel {worst:.1e})",
                taps.len()
            ),
        );
    };
    let t = &taps[i];
    let (stack, layer, op) = parse_name(&t.name);
    let component = component_of(&stack, &op).to_string();
    let location = where_of(&stack, layer);
    let detail = match &t.note {
        Some(n) => format!("({n})"),
        None => format!("(rel {:.1e})", t.rel),
    };
    // What still agrees just before: the same operation's input where there is one (q before
    // RoPE for q after RoPE), else the previous tap.
    let counterpart = op.strip_suffix("_rope").and_then(|base| {
        let name = match layer {
            Some(l) => format!("{stack}.layers.{l}.{base}"),
            None => format!("{stack}.{base}"),
        };
        taps[..i].iter().rposition(|t| t.name == name)
    });
    let sentence = match counterpart.or(i.checked_sub(1)).map(|j| &taps[j]) {
        Some(p) => {
            let (ps, pl, pop) = parse_name(&p.name);
            let prev = if ps == stack && pl == layer {
                op_words(&pop).to_string()
            } else {
                format!("{} of {}", op_words(&pop), where_of(&ps, pl))
            };
            format!(
                "{location}: {} departs {detail} while {prev} agrees (rel {:.1e}): {component}",
                op_words(&op),
                p.rel
            )
        }
        None => format!(
            "{location}: {} departs {detail}, the first tap: {component}",
            op_words(&op)
        ),
    };
    (Some(component), Some(location), sentence)
}

impl BisectReport {
    /// Terminal rendering: the sentence, then every tap up to a few past the first breach.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} at frame {} ({} vs {}{}; rel tolerance {:.0e})",
            if self.first_breach.is_some() {
                "DEPARTS"
            } else {
                "AGREES"
            },
            self.frame,
            self.backend_a,
            self.backend_b,
            self.fault_b
                .as_deref()
                .map(|f| format!(" with fault {f}"))
                .unwrap_or_default(),
            self.rtol
        );
        let _ = writeln!(s, "  {}", self.sentence);
        let show = self
            .first_breach
            .map_or(self.taps.len(), |i| (i + 4).min(self.taps.len()));
        let _ = writeln!(
            s,
            "  {:>4}  {:<36} {:>11} {:>11} {:>11}",
            "#", "tap", "max|Δ|", "scale", "rel"
        );
        for (i, t) in self.taps.iter().take(show).enumerate() {
            let mark = if Some(i) == self.first_breach {
                " ← first breach"
            } else if t.breach {
                " ✗"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "  {:>4}  {:<36} {:>11.3e} {:>11.3e} {:>11.3e}{mark}",
                i, t.name, t.max_abs, t.scale, t.rel
            );
        }
        if show < self.taps.len() {
            let _ = writeln!(
                s,
                "  … {} more taps (--json for all)",
                self.taps.len() - show
            );
        }
        s
    }
}
