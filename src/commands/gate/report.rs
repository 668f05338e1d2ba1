//! The gate's report: the outcome, and its terminal lines, markdown summary and JUnit XML.
use super::checks::Check;
use super::config::Candidate;
use super::measure::Measured;
use serde::Serialize;
use std::fmt::Write;

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

impl Check {
    /// The check's terminal line: verdict, name, value, limit, description.
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
