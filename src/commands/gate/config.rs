//! The gate config (`fixtures/gate.toml`): its types, parsing with located errors, validation, and the `--update-baseline` rewrite.
use crate::model::DType;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};

/// The whole gate config (`fixtures/gate.toml`). Unknown keys are errors (typos fail loudly).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Model directory (relative paths: to the current directory). Default: the tiny fixture.
    pub model: Option<PathBuf>,
    /// The tokenizer.json to use (default: MODEL/tokenizer.json), for checkpoints that keep it
    /// elsewhere (Sesame's CSM-1B release ships none).
    pub tokenizer: Option<PathBuf>,
    pub run: RunConfig,
    pub thresholds: Thresholds,
    #[serde(default)]
    pub candidate: Candidate,
    pub baseline: Option<Baseline>,
}

fn nonneg_temp<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    crate::sampling::check_temperature(f64::deserialize(d)?)
        .map_err(|e| serde::de::Error::custom(format!("temperature: {e}")))
}

fn dtype<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<DType>().map_err(serde::de::Error::custom)?;
    Ok(s)
}

fn opt_dtype<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    dtype(d).map(Some)
}

fn positive<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom("expected at least 1"));
    }
    Ok(n)
}

fn non_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Vec<T>, D::Error> {
    let v = Vec::<T>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("expected a non-empty list"));
    }
    Ok(v)
}

fn f32_name() -> String {
    "f32".into()
}

/// `[run]`: what both pipelines generate.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    #[serde(deserialize_with = "non_empty")]
    pub texts: Vec<String>,
    #[serde(deserialize_with = "non_empty")]
    pub seeds: Vec<u64>,
    #[serde(deserialize_with = "nonneg_temp")]
    pub temperature: f64,
    pub top_k: usize,
    #[serde(deserialize_with = "positive")]
    pub max_frames: usize,
    #[serde(default)]
    pub speaker: u32,
    /// Compute dtype of both pipelines (the candidate's may be overridden).
    #[serde(default = "f32_name", deserialize_with = "dtype")]
    pub dtype: String,
}

/// `[thresholds]`: absolute limits; each one present is a check.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Shared noise: mean token agreement over jobs must be ≥ this.
    pub token_agreement_min: Option<f64>,
    /// Shared noise: the largest |logit A − logit B| over every comparable step of every job
    /// must be ≤ this.
    pub max_logit_diff_max: Option<f64>,
    /// Native noise: histogram intersection of the pooled token histograms must be ≥ this.
    pub hist_intersection_min: Option<f64>,
    /// Native noise: KL of the pooled token histograms (add-½ smoothing) must be ≤ this.
    pub kl_hist_max: Option<f64>,
    /// Shared noise: the earliest first-divergence frame over jobs (no divergence counts as
    /// `max_frames`) must be ≥ this.
    pub divergence_frame_min: Option<f64>,
    /// Native noise: chi-square homogeneity p-value of the pooled histograms must be ≥ this.
    pub chi_square_p_min: Option<f64>,
}

fn positive_f64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    let x = f64::deserialize(d)?;
    if !(x.is_finite() && x > 0.0) {
        return Err(serde::de::Error::custom(format!(
            "expected a finite number > 0, got {x}"
        )));
    }
    Ok(Some(x))
}

/// `[candidate]`: deliberately change the pipeline under test (MLX) — to prove the gate catches
/// a wrong backend, or to gate a reduced-precision port. Empty: the candidate is the same model.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// Adds deterministic Gaussian noise of this size (relative to the tensor's RMS) to one
    /// tensor before the candidate loads its weights.
    #[serde(default, deserialize_with = "positive_f64")]
    pub perturb_weights: Option<f64>,
    /// The tensor to perturb (original CSM name). Default: `backbone.layers.0.mlp.w2.weight`.
    pub perturb_tensor: Option<String>,
    /// Seed of the perturbation noise.
    #[serde(default)]
    pub perturb_seed: u64,
    /// Compute dtype of the candidate (e.g. "bf16"); default: `run.dtype`.
    #[serde(default, deserialize_with = "opt_dtype")]
    pub dtype: Option<String>,
}

pub const DEFAULT_PERTURB_TENSOR: &str = "backbone.layers.0.mlp.w2.weight";

fn default_margin() -> f64 {
    0.05
}

/// `[baseline]`: values measured earlier (`--update-baseline` writes them). A metric that moves
/// in the bad direction by more than `abs_margin + margin·|baseline|` fails, even when its
/// absolute threshold passes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Relative margin (fraction of the baseline value).
    #[serde(default = "default_margin")]
    pub margin: f64,
    /// Absolute margin added to the relative one (for values near 0, e.g. logit differences).
    #[serde(default)]
    pub abs_margin: f64,
    pub token_agreement: Option<f64>,
    pub max_logit_diff: Option<f64>,
    pub hist_intersection: Option<f64>,
    pub kl_hist: Option<f64>,
    pub divergence_frame: Option<f64>,
}

/// A config error with its location: `FILE:LINE:COL: message`.
pub fn parse_config(text: &str, path: &Path) -> Result<GateConfig> {
    let cfg: GateConfig = toml::from_str(text).map_err(|e| {
        let loc = e
            .span()
            .map(|s| {
                let (line, col) = line_col(text, s.start);
                let src = text.lines().nth(line - 1).unwrap_or("").trim();
                (format!(":{line}:{col}"), format!(" (line {line}: `{src}`)"))
            })
            .unwrap_or_default();
        anyhow::anyhow!(
            "{}{}: invalid gate config: {}{}",
            path.display(),
            loc.0,
            e.message().trim(),
            loc.1
        )
    })?;
    let b = cfg.baseline.as_ref();
    if let Some(b) = b {
        if !(b.margin >= 0.0 && b.abs_margin >= 0.0) {
            bail!(
                "{}: [baseline] margin and abs_margin must be ≥ 0",
                path.display()
            );
        }
    }
    let t = &cfg.thresholds;
    let named = [
        ("thresholds.token_agreement_min", t.token_agreement_min),
        ("thresholds.max_logit_diff_max", t.max_logit_diff_max),
        ("thresholds.hist_intersection_min", t.hist_intersection_min),
        ("thresholds.kl_hist_max", t.kl_hist_max),
        ("thresholds.divergence_frame_min", t.divergence_frame_min),
        ("thresholds.chi_square_p_min", t.chi_square_p_min),
    ];
    let base = b.map(|b| {
        [
            ("baseline.margin", Some(b.margin)),
            ("baseline.abs_margin", Some(b.abs_margin)),
            ("baseline.token_agreement", b.token_agreement),
            ("baseline.max_logit_diff", b.max_logit_diff),
            ("baseline.hist_intersection", b.hist_intersection),
            ("baseline.kl_hist", b.kl_hist),
            ("baseline.divergence_frame", b.divergence_frame),
        ]
    });
    for (name, v) in named.iter().chain(base.iter().flatten()) {
        if let Some(x) = v {
            if !x.is_finite() {
                bail!(
                    "{}: {name} = {x}: expected a finite number (a NaN or infinite limit can never be checked)",
                    path.display()
                );
            }
        }
    }
    if [
        t.token_agreement_min,
        t.max_logit_diff_max,
        t.hist_intersection_min,
        t.kl_hist_max,
        t.divergence_frame_min,
        t.chi_square_p_min,
    ]
    .iter()
    .all(Option::is_none)
    {
        bail!(
            "{}: [thresholds] names no check (expected e.g. token_agreement_min = 0.99)",
            path.display()
        );
    }
    Ok(cfg)
}

/// 1-based line and column of byte offset `at`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Rewrites (or adds) the `[baseline]` table of the config file with `values` (by key; `None`
/// removes the key), keeping everything else (comments, order, margins) as it is; atomic.
pub fn update_baseline(path: &Path, text: &str, values: &[(&str, Option<f64>)]) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{}: cannot parse for --update-baseline", path.display()))?;
    if !doc.contains_table("baseline") {
        let mut t = toml_edit::Table::new();
        t.decor_mut().set_prefix(
            "\n# Measured by `csm-parity gate --update-baseline`; a drop beyond\n# abs_margin + margin·|baseline| fails.\n",
        );
        t["margin"] = toml_edit::value(default_margin());
        t["abs_margin"] = toml_edit::value(1e-5);
        doc["baseline"] = toml_edit::Item::Table(t);
    }
    let t = doc["baseline"]
        .as_table_mut()
        .with_context(|| format!("{}: `baseline` is not a table", path.display()))?;
    for &(k, v) in values {
        match v {
            Some(v) => t[k] = toml_edit::value(v),
            None => {
                t.remove(k);
            }
        }
    }
    let out = doc.to_string();
    crate::util::write_atomic(path, out.as_bytes())?;
    Ok(out)
}
