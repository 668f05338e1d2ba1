//! The sweep's spec: grid, seeds and texts, their validation, the jobs, cells and shards they make, and `spec.json`.
use super::job::Job;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The text used when neither `--text` nor `--texts` is given.
pub const DEFAULT_TEXT: &str = "The quick brown fox jumps over the lazy dog.";

/// What a sweep computes: the grid, the seeds and texts, and everything a job's result depends
/// on. Two directories can be merged only when their specs are equal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepSpec {
    pub temperatures: Vec<f64>,
    pub top_ks: Vec<usize>,
    pub seeds: Vec<u64>,
    pub texts: Vec<String>,
    pub max_frames: usize,
    pub speaker: u32,
    pub dtype: String,
    /// sha256 of the weights (the model path is informational and not compared).
    pub model_sha256: String,
    pub model_path: String,
    /// The outside candidate (`CandidateSource::describe`); absent: the built-in MLX pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
}

impl SweepSpec {
    pub fn validate(&self) -> Result<()> {
        if self.temperatures.is_empty() {
            bail!("--temps: expected at least one temperature");
        }
        if self.top_ks.is_empty() {
            bail!("--topk: expected at least one top-k");
        }
        if self.seeds.is_empty() {
            bail!("--seeds: expected at least one seed");
        }
        if self.texts.is_empty() {
            bail!("--texts: expected at least one text");
        }
        if self.max_frames == 0 {
            bail!("--max-frames: expected at least 1");
        }
        for &t in &self.temperatures {
            crate::sampling::check_temperature(t).map_err(|e| anyhow::anyhow!("--temps: {e}"))?;
        }
        let mut t = self.temperatures.clone();
        t.sort_by(f64::total_cmp);
        t.dedup();
        let mut k = self.top_ks.clone();
        k.sort_unstable();
        k.dedup();
        let mut s = self.seeds.clone();
        s.sort_unstable();
        s.dedup();
        if t.len() != self.temperatures.len()
            || k.len() != self.top_ks.len()
            || s.len() != self.seeds.len()
        {
            bail!("--temps, --topk and --seeds must not repeat a value");
        }
        Ok(())
    }

    /// The grid's axes, each in ascending order: temperatures and top-ks.
    pub fn axes(&self) -> (Vec<f64>, Vec<usize>) {
        let mut temps = self.temperatures.clone();
        temps.sort_by(f64::total_cmp);
        let mut ks = self.top_ks.clone();
        ks.sort_unstable();
        (temps, ks)
    }

    /// Every job, sorted deterministically: by temperature, top-k, text, seed (each in
    /// ascending order). Shard `i/n` takes the jobs whose index `% n == i − 1`.
    pub fn jobs(&self) -> Vec<Job> {
        let (temps, ks) = self.axes();
        let mut seeds = self.seeds.clone();
        seeds.sort_unstable();
        let mut out = Vec::new();
        for &temperature in &temps {
            for &top_k in &ks {
                for text_index in 0..self.texts.len() {
                    for &seed in &seeds {
                        out.push(Job {
                            temperature,
                            top_k,
                            seed,
                            text_index,
                        });
                    }
                }
            }
        }
        out
    }

    /// Cells in grid order (temperature, then top-k, ascending).
    pub fn cells(&self) -> Vec<(f64, usize)> {
        let (temps, ks) = self.axes();
        temps
            .iter()
            .flat_map(|&t| ks.iter().map(move |&k| (t, k)))
            .collect()
    }
}

/// `--shard i/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("expected i/n with 1 ≤ i ≤ n (e.g. 2/4), got {s:?}");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (i, n): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || i == 0 || i > n {
            return Err(bad());
        }
        Ok(Shard { index: i, count: n })
    }
}

impl Shard {
    pub fn take(&self, jobs: Vec<Job>) -> Vec<Job> {
        jobs.into_iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index - 1)
            .map(|(_, j)| j)
            .collect()
    }
}

pub fn spec_path(dir: &Path) -> PathBuf {
    dir.join("spec.json")
}

pub(super) fn write_spec(dir: &Path, spec: &SweepSpec) -> Result<()> {
    let path = spec_path(dir);
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(old) = serde_json::from_slice::<SweepSpec>(&bytes) {
            if old == *spec {
                return Ok(());
            }
        }
    }
    let mut bytes = serde_json::to_vec_pretty(spec)?;
    bytes.push(b'\n');
    crate::util::write_atomic(&path, &bytes)
}

pub fn read_spec(dir: &Path) -> Result<SweepSpec> {
    let path = spec_path(dir);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "{}: not a sweep directory (no spec.json; run `csm-parity sweep --out {}` first)",
            dir.display(),
            dir.display()
        )
    })?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a valid sweep spec", path.display()))
}

/// Parses `--seeds`: `N` (seeds 0..N), `A..B` (half-open) or a list `1,5,9`.
pub fn parse_seeds(s: &str) -> std::result::Result<Vec<u64>, String> {
    let s = s.trim();
    let bad = || format!("expected N (seeds 0..N), A..B or a list like 1,5,9; got {s:?}");
    if let Some((a, b)) = s.split_once("..") {
        let a: u64 = a.trim().parse().map_err(|_| bad())?;
        let b: u64 = b.trim().parse().map_err(|_| bad())?;
        if b <= a {
            return Err(format!("{s:?}: the range A..B must have A < B"));
        }
        return Ok((a..b).collect());
    }
    if s.contains(',') {
        return s
            .split(',')
            .map(|x| x.trim().parse::<u64>().map_err(|_| bad()))
            .collect();
    }
    let n: u64 = s.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err("expected at least one seed, got 0".into());
    }
    Ok((0..n).collect())
}

/// Reads `--texts FILE`: one text per line; blank lines and lines starting with `#` skipped.
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("--texts {}: cannot read", path.display()))?;
    let texts: Vec<String> = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if texts.is_empty() {
        bail!(
            "--texts {}: expected one text per line, found none",
            path.display()
        );
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_shards_parse() {
        assert_eq!(parse_seeds("3").unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_seeds("2..5").unwrap(), vec![2, 3, 4]);
        assert_eq!(parse_seeds("7, 1").unwrap(), vec![7, 1]);
        assert!(parse_seeds("5..2").is_err() && parse_seeds("x").is_err());
        let s: Shard = "2/3".parse().unwrap();
        assert_eq!(
            s.take(
                (0..7)
                    .map(|i| i as f64)
                    .map(|t| Job {
                        temperature: t,
                        top_k: 1,
                        seed: 0,
                        text_index: 0
                    })
                    .collect()
            )
            .len(),
            2
        );
        assert!("0/3".parse::<Shard>().is_err() && "4/3".parse::<Shard>().is_err());
    }
}
