//! `csm-parity gate` (issue 5): a CI regression gate. A TOML config names the model, texts,
//! seeds, sampler and thresholds (and optionally a baseline with a margin); the gate captures
//! both pipelines for every text × seed (shared noise with logits, native noise), measures, and
//! checks. Exit 0: every check passes; 1: a check fails; 2: usage or input error.
use crate::backend::BackendKind;
use crate::capture::Storage;
use crate::capture_run::{load_backends, LoadedBackend, ModelRef};
use crate::model::{fixture, CsmModel, DType, HostTensor};
use crate::sweep::{self, Job, JobResult, JobSettings};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    let t = f64::deserialize(d)?;
    if !t.is_finite() || t < 0.0 {
        return Err(serde::de::Error::custom(format!(
            "temperature: expected a finite number ≥ 0 (0 = greedy), got {t}"
        )));
    }
    Ok(t)
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

/// One check.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    /// `token_agreement` (threshold) or `baseline.token_agreement`.
    pub name: String,
    pub description: String,
    pub value: Option<f64>,
    /// `>=` or `<=`.
    pub op: &'static str,
    pub limit: f64,
    pub passed: bool,
}

impl Check {
    fn new(
        name: &str,
        description: &str,
        value: Option<f64>,
        op: &'static str,
        limit: f64,
    ) -> Check {
        let passed = match value {
            Some(v) if op == ">=" => v >= limit,
            Some(v) => v <= limit,
            None => false,
        };
        Check {
            name: name.into(),
            description: description.into(),
            value,
            op,
            limit,
            passed,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{} {:<30} value {:<12} limit {} {:<12} {}",
            if self.passed { "PASS" } else { "FAIL" },
            self.name,
            fmt(self.value),
            if self.op == ">=" { "≥" } else { "≤" },
            fmt(Some(self.limit)),
            self.description
        )
    }
}

fn fmt(x: Option<f64>) -> String {
    x.map(crate::report::num).unwrap_or_else(|| "none".into())
}

/// The gate's outcome.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GateReport {
    pub config: String,
    pub model: String,
    pub candidate: Candidate,
    pub measured: Measured,
    pub checks: Vec<Check>,
    pub passed: bool,
    pub baseline_updated: bool,
    pub wall_s: f64,
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
    let model = CsmModel::load_with(&dir, tokenizer)?;
    let dtype: DType = cfg.run.dtype.parse()?;
    let mut loaded = load_backends(ModelRef::Csm(&model), &[BackendKind::Torch], dtype)?;
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
            load_backends(ModelRef::Csm(&m), &[BackendKind::Mlx], cand_dtype)?
        }
        None => load_backends(ModelRef::Csm(&model), &[BackendKind::Mlx], cand_dtype)?,
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
                let r = sweep::run_job(
                    ModelRef::Csm(&model),
                    Some(&mut loaded),
                    &job,
                    text,
                    &settings,
                    &work,
                );
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
    let pooled = sweep::pooled_of(&refs);
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

/// (metric, limit, measured value, comparison, description).
type ThresholdRow = (&'static str, Option<f64>, Option<f64>, &'static str, String);

/// Checks: every threshold present, then every baseline value present.
pub fn checks(cfg: &GateConfig, m: &Measured) -> Vec<Check> {
    let t = &cfg.thresholds;
    let mut out = Vec::new();
    let n = m.jobs;
    // Always checked: a NaN/Inf anywhere makes every other number meaningless.
    let mut finite = Check::new(
        "finite_outputs",
        &match m.nonfinite.first() {
            None => format!("no NaN/Inf logits or probs in {n} jobs"),
            Some(first) => format!(
                "NaN/Inf logits or probs in {} job runs; first: {first}",
                m.nonfinite.len()
            ),
        },
        Some(m.nonfinite.len() as f64),
        "<=",
        0.0,
    );
    finite.passed = m.nonfinite.is_empty() && n > 0;
    out.push(finite);
    let spec: [ThresholdRow; 6] = [
        (
            "token_agreement",
            t.token_agreement_min,
            m.token_agreement,
            ">=",
            format!("shared noise, mean over {n} jobs"),
        ),
        (
            "max_logit_diff",
            t.max_logit_diff_max,
            m.max_logit_diff,
            "<=",
            format!("shared noise, max |Δlogit| over comparable steps of {n} jobs"),
        ),
        (
            "hist_intersection",
            t.hist_intersection_min,
            m.hist_intersection,
            ">=",
            format!("native noise, pooled token histograms of {n} jobs"),
        ),
        (
            "kl_hist",
            t.kl_hist_max,
            m.kl_hist,
            "<=",
            format!("native noise, KL of pooled token histograms of {n} jobs"),
        ),
        (
            "divergence_frame",
            t.divergence_frame_min,
            m.divergence_frame,
            ">=",
            format!("shared noise, earliest first-divergence frame over {n} jobs"),
        ),
        (
            "chi_square_p",
            t.chi_square_p_min,
            m.chi_square_p,
            ">=",
            "native noise, chi-square homogeneity p of pooled histograms".into(),
        ),
    ];
    for (name, limit, value, op, desc) in &spec {
        if let Some(limit) = limit {
            out.push(Check::new(name, desc, *value, op, *limit));
        }
    }
    if let Some(b) = &cfg.baseline {
        let base = [
            (
                "token_agreement",
                b.token_agreement,
                m.token_agreement,
                ">=",
            ),
            ("max_logit_diff", b.max_logit_diff, m.max_logit_diff, "<="),
            (
                "hist_intersection",
                b.hist_intersection,
                m.hist_intersection,
                ">=",
            ),
            ("kl_hist", b.kl_hist, m.kl_hist, "<="),
            (
                "divergence_frame",
                b.divergence_frame,
                m.divergence_frame,
                ">=",
            ),
        ];
        for (name, bv, value, op) in base {
            if let Some(bv) = bv {
                let slack = b.abs_margin + b.margin * bv.abs();
                let limit = if op == ">=" { bv - slack } else { bv + slack };
                out.push(Check::new(
                    &format!("baseline.{name}"),
                    &format!(
                        "baseline {} with margin {} + {}·|baseline|",
                        crate::report::num(bv),
                        crate::report::num(b.abs_margin),
                        crate::report::num(b.margin)
                    ),
                    value,
                    op,
                    limit,
                ));
            }
        }
    }
    out
}

/// Rewrites (or adds) the `[baseline]` table of the config file with `m`, keeping everything
/// else (comments, order, margins) as it is; atomic.
pub fn update_baseline(path: &Path, text: &str, m: &Measured) -> Result<String> {
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
    for (k, v) in [
        ("token_agreement", m.token_agreement),
        ("max_logit_diff", m.max_logit_diff),
        ("hist_intersection", m.hist_intersection),
        ("kl_hist", m.kl_hist),
        ("divergence_frame", m.divergence_frame),
    ] {
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

/// Runs the gate on the config file at `path`.
pub fn run_gate(path: &Path, update: bool) -> Result<GateReport> {
    let t0 = Instant::now();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config {}: cannot read", path.display()))?;
    let mut cfg = parse_config(&text, path)?;
    let (model, measured) = measure(&cfg)?;
    if update {
        let new = update_baseline(path, &text, &measured)?;
        cfg = parse_config(&new, path)?;
    }
    let checks = checks(&cfg, &measured);
    Ok(GateReport {
        config: path.display().to_string(),
        model,
        candidate: cfg.candidate.clone(),
        passed: checks.iter().all(|c| c.passed),
        measured,
        checks,
        baseline_updated: update,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

impl GateReport {
    pub fn failed(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }

    /// One line per check, then the verdict.
    pub fn lines(&self) -> String {
        let mut s = String::new();
        for c in &self.checks {
            let _ = writeln!(s, "{}", c.line());
        }
        let f = self.failed();
        let _ = writeln!(
            s,
            "gate {}: {} of {} checks passed ({} jobs, {:.1} s){}",
            if self.passed { "PASSED" } else { "FAILED" },
            self.checks.len() - f.len(),
            self.checks.len(),
            self.measured.jobs,
            self.wall_s,
            if f.is_empty() {
                String::new()
            } else {
                format!(
                    " — failing: {}",
                    f.iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        s
    }

    /// The markdown summary (no timings: stable across runs).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let f = self.failed();
        let _ = writeln!(
            s,
            "## csm-parity gate: {}\n",
            if self.passed {
                "PASSED ✅"
            } else {
                "FAILED ❌"
            }
        );
        let _ = writeln!(
            s,
            "Config `{}`, {} jobs (texts × seeds), {} of {} checks passed.\n",
            self.config,
            self.measured.jobs,
            self.checks.len() - f.len(),
            self.checks.len()
        );
        let _ = writeln!(s, "| check | result | value | limit | what |");
        let _ = writeln!(s, "|---|---|---:|---:|---|");
        for c in &self.checks {
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} {} | {} |",
                c.name,
                if c.passed { "PASS" } else { "**FAIL**" },
                fmt(c.value),
                if c.op == ">=" { "≥" } else { "≤" },
                fmt(Some(c.limit)),
                c.description.replace('|', "\\|")
            );
        }
        s
    }

    /// JUnit XML: one test case per check.
    pub fn junit(&self) -> String {
        let esc = crate::report::html::esc;
        let f = self.failed().len();
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            s,
            "<testsuites name=\"csm-parity gate\" tests=\"{}\" failures=\"{f}\" errors=\"0\" time=\"{:.3}\">",
            self.checks.len(),
            self.wall_s
        );
        let _ = writeln!(
            s,
            "  <testsuite name=\"csm-parity gate ({})\" tests=\"{}\" failures=\"{f}\" errors=\"0\" skipped=\"0\" time=\"{:.3}\">",
            esc(&self.config),
            self.checks.len(),
            self.wall_s
        );
        for c in &self.checks {
            let class = if c.name.starts_with("baseline.") {
                "csm_parity.gate.baseline"
            } else {
                "csm_parity.gate.threshold"
            };
            let _ = write!(
                s,
                "    <testcase classname=\"{class}\" name=\"{}\" time=\"0\"",
                esc(&c.name)
            );
            if c.passed {
                s.push_str("/>\n");
            } else {
                let msg = format!(
                    "{} = {} violates {} {}",
                    c.name,
                    fmt(c.value),
                    if c.op == ">=" { "≥" } else { "≤" },
                    fmt(Some(c.limit))
                );
                let _ = writeln!(
                    s,
                    ">\n      <failure type=\"ParityRegression\" message=\"{}\">{}</failure>\n    </testcase>",
                    esc(&msg),
                    esc(&format!("{msg} ({})", c.description))
                );
            }
        }
        let _ = writeln!(s, "    <system-out>{}</system-out>", esc(&self.lines()));
        s.push_str("  </testsuite>\n</testsuites>\n");
        s
    }
}
