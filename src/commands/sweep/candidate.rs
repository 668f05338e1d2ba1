//! Outside candidates, for `sweep` and `gate` alike: the command template, running it for one job, and judging its run against the reference.
use crate::analysis::{self, DiffOptions};
use crate::capture::{Run, Storage};
use crate::commands::capture::LoadedBackend;
use crate::commands::rescore::{rescore, RescoreOptions};
use crate::model::Model;
use crate::sampling::NoiseMode;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Quotes `s` for `sh -c`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Fills the candidate command template. Placeholders: `{out}` (the run directory to write),
/// `{text}`, `{seed}`, `{temp}`, `{top_k}`, `{frames}` (max frames or tokens), `{prompt_ids}`
/// (the reference's prompt token ids, comma-separated), `{model}` (the model directory). Each
/// value is shell-quoted. An unknown `{name}` is an error.
pub fn fill_template(template: &str, values: &[(&str, String)]) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else {
            bail!("--candidate-cmd: unclosed `{{` in {template:?}");
        };
        let name = &after[..j];
        let Some((_, v)) = values.iter().find(|(k, _)| *k == name) else {
            bail!(
                "--candidate-cmd: unknown placeholder {{{name}}} (known: {})",
                values
                    .iter()
                    .map(|(k, _)| format!("{{{k}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        out.push_str(&shell_quote(v));
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The placeholders of a candidate command template.
pub const TEMPLATE_PLACEHOLDERS: [&str; 8] = [
    "out",
    "text",
    "seed",
    "temp",
    "top_k",
    "frames",
    "prompt_ids",
    "model",
];

/// Checks a candidate command template (unknown or unclosed placeholders) before anything runs.
pub fn check_template(template: &str) -> Result<()> {
    fill_template(template, &TEMPLATE_PLACEHOLDERS.map(|n| (n, String::new()))).map(|_| ())
}

/// What one job asks of an outside candidate: the values of the template's placeholders.
#[derive(Debug, Clone, Copy)]
pub struct CandidateJob<'a> {
    pub text: &'a str,
    pub seed: u64,
    pub temperature: f64,
    pub top_k: usize,
    /// Frames (CSM) or tokens (Llama) at most.
    pub frames: usize,
    /// The reference's prompt token ids.
    pub prompt_ids: &'a [i64],
    pub model_dir: &'a str,
}

/// Runs the candidate command of one job (`template` filled in, `{out}` = `out`) and opens the
/// run it wrote. A command that exits non-zero, or leaves no complete run at `{out}`, is an
/// error quoting the command and the end of its stderr.
pub fn run_candidate_cmd(template: &str, job: &CandidateJob, out: &Path) -> Result<Run> {
    let ids: Vec<String> = job.prompt_ids.iter().map(|i| i.to_string()).collect();
    let cmd = fill_template(
        template,
        &[
            ("out", out.display().to_string()),
            ("text", job.text.to_string()),
            ("seed", job.seed.to_string()),
            ("temp", job.temperature.to_string()),
            ("top_k", job.top_k.to_string()),
            ("frames", job.frames.to_string()),
            ("prompt_ids", ids.join(",")),
            ("model", job.model_dir.to_string()),
        ],
    )?;
    let res = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .output()
        .with_context(|| format!("cannot run the candidate command: {cmd}"))?;
    if !res.status.success() {
        let err = String::from_utf8_lossy(&res.stderr);
        let tail: String = err
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        bail!(
            "the candidate command failed ({}): {cmd}\n{tail}",
            res.status
        );
    }
    Run::open(out).with_context(|| {
        format!(
            "the candidate command did not write a complete run at {{out}} = {}",
            out.display()
        )
    })
}

/// A candidate run compared with the reference.
pub struct Judged {
    /// The candidate's `sampler.noise`.
    pub noise: String,
    /// The candidate used its own noise and was re-scored by the reference.
    pub rescored: bool,
    /// The run the candidate was compared with: the reference's shared-noise capture, or the
    /// re-score of the candidate.
    pub reference_dir: PathBuf,
    pub diff: analysis::Diff,
}

/// Compares an outside candidate run with the reference: directly with the reference's
/// shared-noise capture at `reference_dir` when the candidate drew the shared noise, else
/// (its own noise) after re-scoring the candidate with `backend` into `rescore_out`, so that
/// its logits and probabilities are compared at every step.
pub fn judge_candidate(
    model: &Model,
    backend: &mut LoadedBackend,
    reference_dir: &Path,
    candidate: &Run,
    rescore_out: &Path,
    opts: &DiffOptions,
) -> Result<Judged> {
    let noise = candidate.manifest().sampler.noise.clone();
    let rescored = noise == NoiseMode::Native.name();
    let reference_dir = if rescored {
        rescore(
            model,
            candidate,
            backend.backend.as_mut(),
            0.0,
            &RescoreOptions {
                out: rescore_out.to_path_buf(),
                logits: Storage::F32,
                probs: Storage::F32,
            },
        )?;
        rescore_out.to_path_buf()
    } else {
        reference_dir.to_path_buf()
    };
    let reference = Run::open(&reference_dir)?;
    let diff = analysis::compare(&reference, candidate, opts)?;
    Ok(Judged {
        noise,
        rescored,
        reference_dir,
        diff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_fills_and_quotes() {
        let v = [
            ("out", "/tmp/a b".to_string()),
            ("text", "it's".to_string()),
        ];
        assert_eq!(
            fill_template("port --out {out} --text {text}", &v).unwrap(),
            "port --out '/tmp/a b' --text 'it'\\''s'"
        );
        let e = fill_template("port {outdir}", &v).unwrap_err().to_string();
        assert!(e.contains("{outdir}") && e.contains("{out}"), "{e}");
        assert!(fill_template("port {out", &v).is_err());
    }
}
