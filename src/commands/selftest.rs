//! `selftest`: inject every known MLX-port bug into the MLX pipeline, capture it against the
//! torch reference on the tiny fixture, diff, and check the harness's verdict: detected, in the
//! right stage — and no false alarm on the clean pair or on a run diffed with itself.
use crate::analysis::{self, DiffOptions};
use crate::backend::codec::CodecFault;
use crate::backend::BackendKind;
use crate::capture::{Run, Storage};
use crate::commands::capture::{capture, CaptureOptions, Mode};
use crate::faults::Fault;
use crate::model::DType;
use crate::model::Model;
use crate::sampling::{NoiseMode, PostProcess, SamplerSpec};
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct SelftestRow {
    /// `clean`, `self` (torch diffed with itself) or the fault's name.
    pub case: String,
    /// `none` where no divergence must be reported.
    pub expected_stage: String,
    pub detected: bool,
    /// Stage the harness reported (`none` when it reported no divergence).
    pub stage: String,
    /// First divergence (frame, codebook), when one was located.
    pub first_divergence: Option<[usize; 2]>,
    /// The verdict line of the diff.
    pub verdict: String,
    /// Name and value of the number that shows the size of the effect.
    pub headline: String,
    pub headline_value: f64,
    /// Model-stage faults (and the clean pair): what `bisect` located — the component of the
    /// first departing activation tap and where (`RoPE @ backbone layer 0`), `none` when no
    /// tap departs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub located: Option<String>,
    /// What `bisect` must locate (`RoPE @ layer 0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_location: Option<String>,
    /// False when the fault never acted (a remap fault whose range no sampled token fell
    /// into, in every seed tried): nothing was tested, so the row fails as "not triggered".
    pub triggered: bool,
    /// The seed of this case's capture: the selftest's seed, or the first of the next
    /// [`TRIGGER_SEEDS`] − 1 seeds under which the fault acted.
    pub seed: u64,
    /// Seeds tried before the fault acted (1 when the first seed exercised it).
    pub seeds_tried: usize,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SelftestReport {
    pub model: String,
    pub frames: usize,
    pub seed: u64,
    pub rows: Vec<SelftestRow>,
    pub all_pass: bool,
}

pub struct SelftestOptions {
    pub max_frames: usize,
    pub seed: u64,
    pub temperature: f64,
    pub top_k: usize,
    pub text: String,
    pub faults: Vec<Fault>,
    /// Keep each case's runs (and a report of each) here.
    pub out: std::path::PathBuf,
    /// Also decode audio and inject each codec fault (CSM models that bring a codec).
    pub codec: bool,
}

fn capture_case(
    model: &Model,
    o: &SelftestOptions,
    seed: u64,
    fault: Option<Fault>,
    mode: Mode,
    out: &Path,
) -> Result<()> {
    capture_case_audio(model, o, seed, fault, None, false, mode, out)
}

/// Seeds a case tries (the selftest's seed and the next ones) until its fault acts: a remap
/// fault acts only when a sampled token falls in its range.
pub const TRIGGER_SEEDS: u64 = 8;

/// [`capture_case`] with audio (the model's own codec), optionally a codec fault in MLX's.
#[allow(clippy::too_many_arguments)]
fn capture_case_audio(
    model: &Model,
    o: &SelftestOptions,
    seed: u64,
    fault: Option<Fault>,
    codec_fault: Option<CodecFault>,
    audio: bool,
    mode: Mode,
    out: &Path,
) -> Result<()> {
    let opts = CaptureOptions {
        text: o.text.clone(),
        speaker: 0,
        chat: false,
        backends: vec![BackendKind::Torch, BackendKind::Mlx],
        reference: BackendKind::Torch,
        sampler: SamplerSpec::new(o.temperature, o.top_k, NoiseMode::Shared, seed)?,
        max_frames: o.max_frames,
        mode,
        post: PostProcess::None,
        dtype: DType::F32,
        logits: Storage::F32,
        probs: Storage::F32,
        out: out.to_path_buf(),
        progress: false,
        inject: fault,
        force: false,
        audio: if audio {
            crate::commands::capture::AudioSetting::Auto
        } else {
            crate::commands::capture::AudioSetting::Off
        },
        codec_fault,
    };
    capture(model, &opts)?;
    Ok(())
}

/// The effect size shown per case: the largest logit difference for model faults (teacher-forced
/// when the tokens diverged), probability differences for the sampler, token agreement for
/// post-processing, the work/time growth for performance.
fn headline(d: &analysis::Diff, teacher: Option<&analysis::Diff>) -> (String, f64) {
    let src = teacher.unwrap_or(d);
    match d.verdict.stage.map(|s| s.name()) {
        Some("sampler") => (
            "max abs Δprob".into(),
            src.overall.probs.as_ref().map_or(0.0, |p| p.max_abs.max),
        ),
        Some("post-processing") => (
            "post-token agreement".into(),
            d.overall.post_token_agreement,
        ),
        Some("performance") => {
            let g = d.performance.b.as_ref();
            let ratio = g.and_then(|g| Some(g.positions_last? as f64 / g.positions_first? as f64));
            match ratio {
                Some(r) => ("positions/step growth ×".into(), r),
                None => ("step-time growth".into(), g.map_or(0.0, |g| g.time_growth)),
            }
        }
        _ => (
            "max abs Δlogit".into(),
            src.overall.logits.as_ref().map_or(0.0, |l| l.max_abs.max),
        ),
    }
}

/// The faults that apply to a model (one token per step, as in a Llama LM: no depth decoder).
pub fn applicable_faults(model: &Model) -> Vec<Fault> {
    Fault::ALL
        .into_iter()
        .filter(|f| !(model.codebooks() == 1 && *f == Fault::DecoderPosReset))
        .collect()
}

/// Runs the selftest on a model of any family (frames are tokens for an LM).
pub fn selftest(model: &Model, o: &SelftestOptions) -> Result<SelftestReport> {
    let opt = DiffOptions {
        resamples: 200,
        ..DiffOptions::default()
    };
    let mut rows = Vec::new();
    // CSM models that bring a codec are also tested at the audio stage.
    let with_codec = o.codec
        && model.speaks()
        && crate::model::mimi::MimiModel::codec_dir_of(model.dir()).is_some();
    let mut cases: Vec<Option<Fault>> = vec![None];
    cases.extend(o.faults.iter().copied().map(Some));
    for fault in cases {
        let name = fault.map_or("clean".to_string(), |f| f.name().to_string());
        let dir = o.out.join(&name);
        let expected = fault.map_or("none", |f| f.expected_stage());
        // A fault that did not act under the seed is tried under the next ones (the runs of a
        // seed that did not exercise it are ours and are removed before the next try).
        let mut seed = o.seed;
        let mut tries = 0usize;
        let (a, b, d) = loop {
            tries += 1;
            // The clean pair also decodes its audio (when the model brings a codec).
            capture_case_audio(
                model,
                o,
                seed,
                fault,
                None,
                fault.is_none() && with_codec,
                Mode::Independent,
                &dir,
            )?;
            let (a, b) = (Run::open(&dir.join("torch"))?, Run::open(&dir.join("mlx"))?);
            let d = analysis::compare(&a, &b, &opt)?;
            if fault_triggered(expected, &d) || tries as u64 >= TRIGGER_SEEDS {
                break (a, b, d);
            }
            drop((a, b));
            std::fs::remove_dir_all(&dir)?;
            seed += 1;
        };
        // After a token mismatch only teacher forcing keeps every step comparable.
        let teacher = if d.divergence.first_token_mismatch.is_some() {
            let tdir = o.out.join(format!("{name}-teacher"));
            capture_case(model, o, seed, fault, Mode::Teacher, &tdir)?;
            Some(analysis::compare(
                &Run::open(&tdir.join("torch"))?,
                &Run::open(&tdir.join("mlx"))?,
                &opt,
            )?)
        } else {
            None
        };
        crate::report::write_report_dir(&d, &dir.join("report"))?;
        let mut r = row(name, expected, &d, teacher.as_ref());
        r.seed = seed;
        r.seeds_tried = tries;
        // Past "stage model": bisect must name the component (and find nothing on the clean pair).
        let want = match fault {
            None => Some(("none", "")),
            Some(f) => f.expected_location(),
        };
        if let Some((component, place)) = want {
            let bis = crate::commands::bisect::bisect_with(
                model,
                &a,
                &b,
                &crate::commands::bisect::BisectOptions::default(),
            )?;
            let got = match (&bis.component, &bis.location) {
                (Some(c), Some(l)) => format!("{c} @ {l}"),
                _ => "none".to_string(),
            };
            let ok = match (&bis.component, &bis.location) {
                (Some(c), Some(l)) => c == component && l.contains(place),
                _ => component == "none",
            };
            r.expected_location = Some(if place.is_empty() {
                component.to_string()
            } else {
                format!("{component} @ {place}")
            });
            r.located = Some(got);
            r.pass &= ok;
        }
        rows.push(r);
    }
    // The sound: each known codec porting bug in the MLX codec is located in stage codec.
    if with_codec {
        for cf in CodecFault::ALL {
            let name = format!("codec-{}", cf.name());
            let dir = o.out.join(&name);
            capture_case_audio(
                model,
                o,
                o.seed,
                None,
                Some(cf),
                true,
                Mode::Independent,
                &dir,
            )?;
            let (a, b) = (Run::open(&dir.join("torch"))?, Run::open(&dir.join("mlx"))?);
            let d = analysis::compare(&a, &b, &opt)?;
            crate::report::write_report_dir(&d, &dir.join("report"))?;
            rows.push(row(name, "codec", &d, None));
        }
    }
    // A backend against itself: the clean reference run diffed with itself.
    let clean = Run::open(&o.out.join("clean").join("torch"))?;
    let d = analysis::compare(&clean, &clean, &opt)?;
    rows.push(row("self".into(), "none", &d, None));
    Ok(SelftestReport {
        model: model.dir().display().to_string(),
        frames: o.max_frames,
        seed: o.seed,
        all_pass: rows.iter().all(|r| r.pass),
        rows,
    })
}

fn row(
    case: String,
    expected: &str,
    d: &analysis::Diff,
    teacher: Option<&analysis::Diff>,
) -> SelftestRow {
    let detected = matches!(d.verdict.kind.as_str(), "diverged" | "performance");
    let stage = if detected {
        d.verdict.stage.map_or("unknown", |s| s.name()).to_string()
    } else {
        "none".into()
    };
    let (headline, headline_value) = headline(d, teacher);
    let triggered = fault_triggered(expected, d);
    SelftestRow {
        triggered,
        // A fault that never acted tested nothing: not a pass.
        pass: stage == expected && triggered,
        seed: d.a.seed,
        seeds_tried: 1,
        case,
        expected_stage: expected.into(),
        detected,
        stage,
        first_divergence: d.verdict.point.map(|p| [p.frame, p.codebook]),
        verdict: d.verdict.line.clone(),
        headline,
        headline_value,
        located: None,
        expected_location: None,
    }
}

/// Whether a fault acted at all: a post-processing fault acts only when the candidate's
/// post-processing changed some token; other faults always act.
pub fn fault_triggered(expected_stage: &str, d: &analysis::Diff) -> bool {
    expected_stage != "post-processing" || d.post_changed[1] > 0
}

/// The "stage reported" cell: the stage, "not triggered" for a fault that never acted, or
/// "no measurable effect".
pub fn effect_label(r: &SelftestRow) -> String {
    if r.detected {
        r.stage.clone()
    } else if !r.triggered {
        format!(
            "not triggered: no sampled token fell in the fault's range under {} seed{} ({}..{}); run more frames",
            r.seeds_tried,
            if r.seeds_tried == 1 { "" } else { "s" },
            (r.seed + 1).saturating_sub(r.seeds_tried as u64),
            r.seed
        )
    } else {
        "no measurable effect".into()
    }
}

impl SelftestReport {
    /// The detection table (also used in README).
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} — {} frames per case on {}",
            if self.all_pass {
                "SELFTEST PASS: every verdict as expected"
            } else {
                "SELFTEST FAIL"
            },
            self.frames,
            self.model
        );
        let _ = writeln!(
            s,
            "| case | expected | detected | stage reported | first divergence | effect | bisect located | ok |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let first = r
                .first_divergence
                .map_or("–".to_string(), |[f, c]| format!("frame {f}, cb {c}"));
            let mut stage = effect_label(r);
            if r.triggered && r.seed > self.seed {
                let _ = write!(
                    stage,
                    " (seed {}: the fault did not act under {})",
                    r.seed,
                    if r.seeds_tried == 2 {
                        format!("seed {}", self.seed)
                    } else {
                        format!("seeds {}..{}", self.seed, r.seed - 1)
                    }
                );
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} = {:.3e} | {} | {} |",
                r.case,
                r.expected_stage,
                if r.detected { "yes" } else { "no" },
                stage,
                first,
                r.headline,
                r.headline_value,
                r.located.as_deref().unwrap_or("–"),
                if r.pass {
                    "✓"
                } else if !r.triggered {
                    "✗ (not triggered)"
                } else {
                    "✗"
                }
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(detected: bool, triggered: bool) -> SelftestRow {
        SelftestRow {
            case: "remap-low".into(),
            expected_stage: "post-processing".into(),
            detected,
            stage: if detected { "post-processing" } else { "none" }.into(),
            first_divergence: None,
            verdict: String::new(),
            headline: String::new(),
            headline_value: 0.0,
            located: None,
            expected_location: None,
            triggered,
            seed: 49,
            seeds_tried: 8,
            pass: detected && triggered,
        }
    }

    #[test]
    fn an_untriggered_fault_is_said_so_and_fails() {
        let l = effect_label(&row(false, false));
        assert!(
            l.starts_with("not triggered") && l.contains("8 seeds (42..49)"),
            "{l}"
        );
        assert_eq!(effect_label(&row(false, true)), "no measurable effect");
        assert_eq!(effect_label(&row(true, true)), "post-processing");
        let rep = SelftestReport {
            model: "m".into(),
            frames: 16,
            seed: 42,
            rows: vec![row(false, false)],
            all_pass: false,
        };
        let t = rep.render();
        assert!(
            t.contains("not triggered") && t.contains("✗ (not triggered)"),
            "{t}"
        );
        // A fault that acted under a later seed says which.
        let mut r = row(true, true);
        r.seed = 44;
        r.seeds_tried = 3;
        let rep = SelftestReport {
            rows: vec![r],
            all_pass: true,
            ..rep
        };
        let t = rep.render();
        assert!(
            t.contains("(seed 44: the fault did not act under seeds 42..43)") && t.contains('✓'),
            "{t}"
        );
    }
}
