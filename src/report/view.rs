//! The report's view-model: what a `diff` report says, decided once for every output.
//!
//! [`ReportView::of`] turns a [`Diff`] into sections of already-formatted text: which rows
//! exist, their labels, their order and how each number is written (via [`super::num`]). The
//! renderers ([`super::html`], [`super::markdown`], [`super::terminal`]) only lay that out:
//! HTML escaping and markup, markdown pipes, aligned terminal columns and each output's own
//! sentences around the values. A cell that needs markup says what it is ([`Cell`]) rather than
//! carrying HTML or markdown, so each renderer writes it in its own syntax.
//!
//! Where the long-form outputs show different rows (markdown's terser label for the KL estimate,
//! its row for the mass outside the shared support), the row names the one output it is for
//! ([`Row::only`]), so the choice is still made here.
use super::{num, opt_num, step};
use crate::analysis::divergence::Step;
use crate::analysis::stats::{Estimate, Summary};
use crate::analysis::{Diff, LargestError, Membership, Metrics, RunInfo, TopTable};

/// The long-form outputs, for rows only one of them shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    Markdown,
    Html,
}

/// Part of a cell's text.
#[derive(Debug, Clone, PartialEq)]
pub enum Span {
    Text(String),
    /// A subscript (`h_A`).
    Sub(String),
}

impl Span {
    /// The spans as one string: text through `text`, subscripts through `sub`.
    pub fn join(spans: &[Span], text: fn(&str) -> String, sub: fn(String) -> String) -> String {
        spans
            .iter()
            .map(|x| match x {
                Span::Text(s) => text(s),
                Span::Sub(s) => sub(text(s)),
            })
            .collect()
    }
}

/// A bootstrap estimate: its value and its interval, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub struct EstimateView {
    pub value: String,
    pub ci: Result<Interval, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub low: String,
    pub high: String,
    /// Percent, e.g. `95`.
    pub level: String,
    pub resamples: usize,
    pub note: Option<String>,
}

/// One table cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Plain text; renderers escape it.
    Text(String),
    /// Text with subscripts.
    Spans(Vec<Span>),
    /// Values that share one column in HTML (`a / b`) and take adjacent columns in markdown.
    Split(Vec<String>),
    /// Emphasised text (the all-codebooks row).
    Strong(String),
    /// A token id with its decoded text (Rust-quoted), shown as code.
    Token {
        id: i32,
        text: Option<String>,
    },
    Estimate(EstimateView),
}

impl Cell {
    pub fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.into())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub cells: Vec<Cell>,
    /// `Some` when only that output shows the row.
    pub only: Option<Medium>,
}

impl Row {
    pub fn shown_in(&self, m: Medium) -> bool {
        self.only.is_none_or(|o| o == m)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub head: Vec<Cell>,
    pub rows: Vec<Row>,
}

impl Table {
    fn new(head: &[&str], rows: Vec<Row>) -> Table {
        Table {
            head: head.iter().map(|&h| h.into()).collect(),
            rows,
        }
    }

    /// The rows `m` shows.
    pub fn rows_for(&self, m: Medium) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| r.shown_in(m))
    }
}

fn row(cells: Vec<Cell>) -> Row {
    Row { cells, only: None }
}

fn pair(label: &str, value: impl Into<Cell>) -> Row {
    row(vec![label.into(), value.into()])
}

/// One run as shown in the report.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    /// `A (reference)` or `B (candidate)`.
    pub tag: &'static str,
    pub backend: String,
    pub dtype: String,
    pub frames: String,
    pub prompt: String,
    pub temperature: String,
    pub top_k: String,
    pub logits: String,
    pub probs: String,
    pub sampler: String,
    pub noise: String,
    pub seed: String,
    pub post: String,
    pub stop: String,
    pub fault: Option<String>,
}

impl RunView {
    fn of(tag: &'static str, r: &RunInfo) -> RunView {
        RunView {
            tag,
            backend: r.backend.clone(),
            dtype: r.dtype.clone(),
            frames: r.frames.to_string(),
            prompt: r.prompt_text.clone(),
            temperature: (r.temperature as f32).to_string(),
            top_k: r.top_k.to_string(),
            logits: r.logits_storage.clone(),
            probs: r.probs_storage.clone(),
            sampler: r.sampler_mode.clone(),
            noise: r.noise.clone(),
            seed: r.seed.to_string(),
            post: r.post.clone(),
            stop: r.stop_reason.clone(),
            fault: r.fault.clone(),
        }
    }

    fn row(&self) -> Row {
        let r = self.clone();
        row(vec![
            self.tag.into(),
            r.backend.into(),
            r.dtype.into(),
            r.frames.into(),
            r.prompt.into(),
            r.temperature.into(),
            r.top_k.into(),
            r.logits.into(),
            r.probs.into(),
            Cell::Split(vec![r.sampler, r.noise]),
            r.seed.into(),
            r.post.into(),
            r.stop.into(),
            r.fault.unwrap_or_else(|| "–".into()).into(),
        ])
    }
}

/// What was compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub frames: usize,
    pub codebooks: usize,
    pub steps: usize,
    pub vocab: usize,
    pub comparable: usize,
    pub comparability: String,
}

/// A first-occurrence event of the divergence table.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The terminal's name for it; `None` when the terminal leaves it out.
    pub short: Option<&'static str>,
    pub label: String,
    /// `frame F codebook C` or `none`.
    pub step: String,
}

/// Whether each side's token is in the other's top-N at the first token mismatch.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipView {
    pub step: String,
    pub token_a: i32,
    pub token_b: i32,
    pub rank_of_b_in_a: String,
    pub rank_of_a_in_b: String,
    pub source: String,
    /// `both in each other's top-5: a near-tie` or `not a near-tie (top-5)`.
    pub tie: String,
}

fn rank(r: Option<usize>) -> String {
    r.map_or("–".into(), |r| r.to_string())
}

impl MembershipView {
    fn of(m: &Membership) -> MembershipView {
        MembershipView {
            step: step(Some(m.step)),
            token_a: m.token_a,
            token_b: m.token_b,
            rank_of_b_in_a: rank(m.rank_of_b_in_a),
            rank_of_a_in_b: rank(m.rank_of_a_in_b),
            source: m.source.clone(),
            tie: if m.near_tie {
                format!("both in each other's top-{}: a near-tie", m.n)
            } else {
                format!("not a near-tie (top-{})", m.n)
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopRowView {
    pub token: i32,
    /// The decoded text, Rust-quoted (`"ab"`).
    pub text: Option<String>,
    pub p_a: String,
    pub rank_a: String,
    pub p_b: String,
    pub rank_b: String,
}

/// The top tokens at the divergence step.
#[derive(Debug, Clone, PartialEq)]
pub struct TopView {
    pub step: String,
    pub source: String,
    pub rows: Vec<TopRowView>,
}

impl TopView {
    fn of(t: &TopTable) -> TopView {
        TopView {
            step: step(Some(t.step)),
            source: t.source.clone(),
            rows: t
                .rows
                .iter()
                .map(|r| TopRowView {
                    token: r.token,
                    text: r.text.as_ref().map(|t| format!("{t:?}")),
                    p_a: opt_num(r.p_a),
                    rank_a: rank(r.rank_a),
                    p_b: opt_num(r.p_b),
                    rank_b: rank(r.rank_b),
                })
                .collect(),
        }
    }

    pub fn table(&self) -> Table {
        let rows = self
            .rows
            .iter()
            .map(|r| {
                row(vec![
                    Cell::Token {
                        id: r.token,
                        text: r.text.clone(),
                    },
                    r.p_a.as_str().into(),
                    r.rank_a.as_str().into(),
                    r.p_b.as_str().into(),
                    r.rank_b.as_str().into(),
                ])
            })
            .collect();
        Table::new(&["token", "p_A", "rank A", "p_B", "rank B"], rows)
    }
}

/// The entry with the largest |Δlogit|.
#[derive(Debug, Clone, PartialEq)]
pub struct LargestView {
    pub abs: String,
    pub step: String,
    pub index: usize,
    pub a: String,
    pub b: String,
}

impl LargestView {
    fn of(e: &LargestError) -> LargestView {
        LargestView {
            abs: num(e.abs as f64),
            step: step(Some(e.step)),
            index: e.index,
            a: num(e.a as f64),
            b: num(e.b as f64),
        }
    }
}

/// One row of the per-codebook table (`codebook: None` for all codebooks).
#[derive(Debug, Clone, PartialEq)]
pub struct CodebookView {
    pub codebook: Option<usize>,
    pub steps: String,
    pub agreement: String,
    pub top1: String,
    pub kl_mean: String,
    pub max_abs: String,
    pub probs_kl: String,
    pub jaccard: String,
    pub hist: String,
    pub js: String,
    pub unique_a: String,
    pub unique_b: String,
}

fn kl_of(m: &Metrics) -> Option<f64> {
    m.logits
        .as_ref()
        .and_then(|l| l.kl.as_ref())
        .map(|k| k.mean)
}

impl CodebookView {
    fn of(m: &Metrics) -> CodebookView {
        let t = &m.tokens;
        CodebookView {
            codebook: m.codebook,
            steps: m.steps.to_string(),
            agreement: num(m.token_agreement),
            top1: opt_num(m.top1_agreement),
            kl_mean: opt_num(kl_of(m)),
            max_abs: opt_num(m.logits.as_ref().map(|l| l.max_abs.max)),
            probs_kl: opt_num(m.probs.as_ref().and_then(|p| p.kl.as_ref()).map(|k| k.mean)),
            jaccard: num(t.jaccard),
            hist: num(t.hist_intersection),
            js: num(t.js_hist),
            unique_a: t.unique_a.to_string(),
            unique_b: t.unique_b.to_string(),
        }
    }

    fn row(&self) -> Row {
        let c = self.clone();
        row(vec![
            match c.codebook {
                Some(n) => n.to_string().into(),
                None => Cell::Strong("all".into()),
            },
            c.steps.into(),
            c.agreement.into(),
            c.top1.into(),
            c.kl_mean.into(),
            c.max_abs.into(),
            c.probs_kl.into(),
            c.jaccard.into(),
            c.hist.into(),
            c.js.into(),
            c.unique_a.into(),
            c.unique_b.into(),
        ])
    }
}

/// The worst codebooks the terminal lists.
pub const WORST_SHOWN: usize = 8;

/// The tolerances used, and where they come from.
#[derive(Debug, Clone, PartialEq)]
pub struct ToleranceView {
    pub atol: String,
    pub rtol: String,
    pub probs_atol: String,
    pub source: String,
}

impl ToleranceView {
    /// `atol 0.001, rtol 0.001, probs atol 0.0001 (f32 defaults)`.
    pub fn text(&self) -> String {
        let t = self;
        format!(
            "atol {}, rtol {}, probs atol {} ({})",
            t.atol, t.rtol, t.probs_atol, t.source
        )
    }
}

/// The non-finite step counts, when any run has one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonFiniteView {
    pub a_logits: usize,
    pub a_probs: usize,
    pub b_logits: usize,
    pub b_probs: usize,
}

/// The whole report, formatted.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportView {
    pub verdict_kind: String,
    pub verdict_line: String,
    pub runs: [RunView; 2],
    pub scope: Scope,
    /// The stage's name (`?` when unknown) and why it is blamed.
    pub stage: Option<(String, String)>,
    /// The divergence point, `frame F codebook C`.
    pub point: Option<String>,
    pub tolerances: ToleranceView,
    pub not_compared: Vec<String>,
    pub nonfinite: Option<NonFiniteView>,
    pub warnings: Vec<String>,
    pub performance: Option<String>,
    pub events: Vec<Event>,
    pub membership: Option<MembershipView>,
    pub top: Option<TopView>,
    pub largest: Option<LargestView>,
    pub agreement: Table,
    pub distributions: Table,
    pub tokens: Table,
    /// All codebooks first, then each codebook in order.
    pub codebooks: Vec<CodebookView>,
    /// Codebooks worst first (token agreement, then KL, then index), at most [`WORST_SHOWN`].
    pub worst: Vec<CodebookView>,
}

fn estimate(e: &Option<Estimate>) -> Cell {
    match e {
        Some(e) => Cell::Estimate(EstimateView {
            value: num(e.value),
            ci: if e.has_ci() {
                Ok(Interval {
                    low: num(e.ci_low),
                    high: num(e.ci_high),
                    level: (e.level * 100.0).round().to_string(),
                    resamples: e.resamples,
                    note: e.note.clone(),
                })
            } else {
                Err(e.note.as_deref().unwrap_or("too little data").into())
            },
        }),
        None => "–".into(),
    }
}

fn summary_row(name: &str, s: Option<&Summary>) -> Row {
    let mut r = vec![Cell::text(name)];
    match s {
        Some(s) => {
            r.push(s.n.to_string().into());
            r.push(format!("{} ± {}", num(s.mean), num(s.mean_se)).into());
            for v in [
                s.min, s.p1, s.p10, s.median, s.p90, s.p95, s.p99, s.p99_9, s.max,
            ] {
                r.push(num(v).into());
            }
        }
        None => {
            r.push("0".into());
            r.extend(std::iter::repeat_n(Cell::text("–"), 10));
        }
    }
    row(r)
}

fn events(d: &Diff) -> Vec<Event> {
    let (dv, tl) = (&d.divergence, &d.tolerances);
    let ev = |short, label: String, s: Option<Step>| Event {
        short,
        label,
        step: step(s),
    };
    vec![
        ev(
            None,
            format!(
                "divergence point ({})",
                dv.stage.map(|x| x.name()).unwrap_or("–")
            ),
            dv.point,
        ),
        ev(
            Some("token mismatch"),
            "sampled token mismatch".into(),
            dv.first_token_mismatch,
        ),
        ev(
            Some("logits breach"),
            format!("logits breach (atol {}, rtol {})", tl.atol, tl.rtol),
            dv.first_logits_breach,
        ),
        ev(
            Some("probs breach"),
            format!("probs breach (atol {}, rtol {})", tl.probs_atol, tl.rtol),
            dv.first_probs_breach,
        ),
        ev(
            Some("support mismatch"),
            "support mismatch (a token kept by one sampler only)".into(),
            dv.first_support_mismatch,
        ),
        ev(
            None,
            "top-1 (argmax) mismatch".into(),
            dv.first_top1_mismatch,
        ),
        ev(
            Some("post-only"),
            "post-processing-only mismatch".into(),
            dv.first_post_only_mismatch,
        ),
    ]
}

fn agreement(d: &Diff) -> Table {
    let (o, c) = (&d.overall, &d.confidence);
    let only = |m: Medium, label: &str, value: Cell| Row {
        only: Some(m),
        ..pair(label, value)
    };
    let mut rows = vec![
        pair("token agreement", estimate(&c.token_agreement)),
        pair("post-token agreement", num(o.post_token_agreement)),
        pair("top-1 agreement", estimate(&c.top1_agreement)),
        only(
            Medium::Markdown,
            "mean KL(softmax)",
            estimate(&c.kl_logits_mean),
        ),
        only(
            Medium::Html,
            "mean KL(softmax A ‖ softmax B)",
            estimate(&c.kl_logits_mean),
        ),
        pair("histogram intersection", estimate(&c.hist_intersection)),
    ];
    if let Some(l) = &o.logits {
        rows.push(pair("logits mean |Δ|", num(l.mean_abs)));
        rows.push(pair("logits max relative error", num(l.max_rel)));
        rows.push(pair(
            "logits breaching steps",
            format!("{} of {}", l.breaches, l.max_abs.n),
        ));
    }
    if let Some(p) = &o.probs {
        rows.push(pair(
            "probs breaching steps",
            format!("{} of {}", p.breaches, p.max_abs.n),
        ));
        rows.push(pair(
            "probs support mismatches (steps)",
            p.support_mismatch_steps.to_string(),
        ));
        if let Some(m) = &p.excluded_mass {
            rows.push(only(
                Medium::Markdown,
                "probability mass outside the shared support (max)",
                num(m.max).into(),
            ));
        }
    }
    Table::new(&["metric", "value"], rows)
}

fn distributions(o: &Metrics) -> Table {
    let (l, p) = (o.logits.as_ref(), o.probs.as_ref());
    Table::new(
        &[
            "quantity",
            "n",
            "mean ± s.e.",
            "min",
            "p1",
            "p10",
            "median",
            "p90",
            "p95",
            "p99",
            "p99.9",
            "max",
        ],
        vec![
            summary_row("logits max |Δ|", l.map(|l| &l.max_abs)),
            summary_row("KL(softmax A ‖ softmax B)", l.and_then(|l| l.kl.as_ref())),
            summary_row("cosine(logit rows)", l.and_then(|l| l.cosine.as_ref())),
            summary_row("probs max |Δ|", p.map(|p| &p.max_abs)),
            summary_row(
                "KL(probs A ‖ probs B), shared support",
                p.and_then(|p| p.kl.as_ref()),
            ),
            summary_row(
                "… on support-mismatch steps",
                p.and_then(|p| p.kl_support_mismatch.as_ref()),
            ),
            summary_row(
                "Δp of A's sampled token (p_B − p_A)",
                p.and_then(|p| p.dp_sampled.as_ref()),
            ),
        ],
    )
}

fn tokens(o: &Metrics) -> Table {
    let t = &o.tokens;
    let top = |v: &[(i32, u64)]| {
        v.iter()
            .map(|(t, n)| format!("{t}×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = |s: &str| Span::Text(s.into());
    let sub = |s: &str| Span::Sub(s.into());
    let mut rows = vec![
        pair(
            "unique tokens A / B",
            format!("{} / {}", t.unique_a, t.unique_b),
        ),
        pair(
            "overlap A / B",
            format!("{} / {}", num(t.overlap_a), num(t.overlap_b)),
        ),
        pair("Jaccard", num(t.jaccard)),
        pair("histogram intersection", num(t.hist_intersection)),
        pair("weighted Jaccard", num(t.weighted_jaccard)),
        row(vec![
            Cell::Spans(vec![
                text("KL(h"),
                sub("A"),
                text(" ‖ h"),
                sub("B"),
                text("), add-½ smoothing"),
            ]),
            num(t.kl_hist).into(),
        ]),
        pair("Jensen–Shannon", num(t.js_hist)),
    ];
    if let Some(c) = &t.chi_square {
        rows.push(pair("χ² homogeneity", super::chi_text(c)));
    }
    rows.push(pair("top tokens A", top(&t.top_a)));
    rows.push(pair("top tokens B", top(&t.top_b)));
    Table::new(&["metric", "value"], rows)
}

fn worst(d: &Diff) -> Vec<CodebookView> {
    let mut cbs: Vec<&Metrics> = d.per_codebook.iter().collect();
    cbs.sort_by(|x, y| {
        x.token_agreement
            .total_cmp(&y.token_agreement)
            .then(kl_of(y).unwrap_or(0.0).total_cmp(&kl_of(x).unwrap_or(0.0)))
            .then(x.codebook.cmp(&y.codebook))
    });
    cbs.into_iter()
        .take(WORST_SHOWN)
        .map(CodebookView::of)
        .collect()
}

impl ReportView {
    pub fn of(d: &Diff) -> ReportView {
        let (dv, tl, nf) = (&d.divergence, &d.tolerances, &d.nonfinite);
        let nonfinite = NonFiniteView {
            a_logits: nf.a.logits_steps,
            a_probs: nf.a.probs_steps,
            b_logits: nf.b.logits_steps,
            b_probs: nf.b.probs_steps,
        };
        let any_nonfinite =
            nonfinite.a_logits + nonfinite.a_probs + nonfinite.b_logits + nonfinite.b_probs > 0;
        ReportView {
            verdict_kind: d.verdict.kind.clone(),
            verdict_line: d.verdict.line.clone(),
            runs: [
                RunView::of("A (reference)", &d.a),
                RunView::of("B (candidate)", &d.b),
            ],
            scope: Scope {
                frames: d.frames_compared,
                codebooks: d.codebooks,
                steps: d.steps_total,
                vocab: d.vocab,
                comparable: d.steps_comparable,
                comparability: d.comparability.clone(),
            },
            stage: dv.explanation.as_ref().map(|e| {
                let name = dv.stage.map(|x| x.name()).unwrap_or("?");
                (name.to_string(), e.clone())
            }),
            point: dv.point.map(|p| step(Some(p))),
            tolerances: ToleranceView {
                atol: tl.atol.to_string(),
                rtol: tl.rtol.to_string(),
                probs_atol: tl.probs_atol.to_string(),
                source: tl.source.clone(),
            },
            not_compared: d.not_compared.clone(),
            nonfinite: any_nonfinite.then_some(nonfinite),
            warnings: d.warnings.clone(),
            performance: d.performance.explanation.clone(),
            events: events(d),
            membership: d.first_mismatch_membership.as_ref().map(MembershipView::of),
            top: d.divergence_top.as_ref().map(TopView::of),
            largest: d.largest_logit_error.as_ref().map(LargestView::of),
            agreement: agreement(d),
            distributions: distributions(&d.overall),
            tokens: tokens(&d.overall),
            codebooks: std::iter::once(&d.overall)
                .chain(&d.per_codebook)
                .map(CodebookView::of)
                .collect(),
            worst: worst(d),
        }
    }

    /// The runs table.
    pub fn runs_table(&self) -> Table {
        let h = |s: &[&str]| s.iter().map(|&x| Cell::from(x)).collect::<Vec<_>>();
        let mut head = h(&[
            "", "backend", "dtype", "frames", "prompt", "T", "top-k", "logits", "probs",
        ]);
        head.push(Cell::Split(vec!["sampler".into(), "noise".into()]));
        head.extend(h(&["seed", "post", "stop", "fault"]));
        Table {
            head,
            rows: self.runs.iter().map(RunView::row).collect(),
        }
    }

    /// The divergence table: each event and its first step.
    pub fn events_table(&self) -> Table {
        let rows = self
            .events
            .iter()
            .map(|e| pair(&e.label, e.step.as_str()))
            .collect();
        Table::new(&["event", "first step"], rows)
    }

    /// The per-codebook table, all codebooks first.
    pub fn codebooks_table(&self) -> Table {
        Table::new(
            &[
                "codebook",
                "steps",
                "token agr.",
                "top-1",
                "KL mean",
                "max |Δ|",
                "probs KL",
                "Jaccard",
                "hist∩",
                "JS",
                "unique A",
                "unique B",
            ],
            self.codebooks.iter().map(CodebookView::row).collect(),
        )
    }

    /// The non-finite counts in words, when there are any.
    pub fn nonfinite_note(&self) -> Option<String> {
        self.nonfinite.map(|n| {
            format!(
                "Non-finite (NaN/Inf) steps: A logits {}, probs {}; B logits {}, probs {} (left out of the summaries).",
                n.a_logits, n.a_probs, n.b_logits, n.b_probs
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{compare, DiffOptions};
    use crate::capture::{FrameRecord, Manifest, Run, RunWriter, Storage, Timings};
    use std::path::{Path, PathBuf};

    const FRAMES: usize = 4;
    const CODEBOOKS: usize = 2;
    const VOCAB: usize = 4;

    /// Frame f, codebook c: logits peaked on token (f + c) % VOCAB, which is sampled.
    fn records() -> Vec<FrameRecord> {
        (0..FRAMES)
            .map(|f| {
                let mut logits = vec![0f32; CODEBOOKS * VOCAB];
                let tokens: Vec<i32> = (0..CODEBOOKS).map(|c| ((f + c) % VOCAB) as i32).collect();
                for (c, &t) in tokens.iter().enumerate() {
                    logits[c * VOCAB + t as usize] = 4.0;
                }
                FrameRecord {
                    post_tokens: tokens.clone(),
                    tokens,
                    logits: Some(logits),
                    probs: None,
                    step_us: 1000.0,
                }
            })
            .collect()
    }

    fn write(dir: &Path, backend: &str, recs: &[FrameRecord]) -> PathBuf {
        let mut m = Manifest::example(backend);
        m.prompt.text = "a | b".into();
        let mut w =
            RunWriter::create(dir, m, CODEBOOKS, VOCAB, Storage::F32, Storage::None).unwrap();
        for r in recs {
            w.push(r).unwrap();
        }
        w.finish(
            "max_frames",
            Timings {
                load_ms: 1.0,
                prefill_ms: 1.0,
                total_ms: 1.0,
                mean_frame_ms: 1.0,
                step_positions: vec![],
            },
        )
        .unwrap()
    }

    /// A and B agree except B samples another token at frame 2, codebook 1 (same logits).
    fn view() -> (Diff, ReportView) {
        let tmp = tempfile::tempdir().unwrap();
        let a = records();
        let mut b = a.clone();
        b[2].tokens[1] = (b[2].tokens[1] + 1) % VOCAB as i32;
        b[2].post_tokens[1] = b[2].tokens[1];
        let (pa, pb) = (
            write(&tmp.path().join("a"), "torch", &a),
            write(&tmp.path().join("b"), "mlx", &b),
        );
        let d = compare(
            &Run::open(&pa).unwrap(),
            &Run::open(&pb).unwrap(),
            &DiffOptions::default(),
        )
        .unwrap();
        let v = ReportView::of(&d);
        (d, v)
    }

    fn texts(cells: &[Cell]) -> Vec<String> {
        cells
            .iter()
            .map(|c| match c {
                Cell::Text(s) | Cell::Strong(s) => s.clone(),
                Cell::Split(v) => v.join("/"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn labels(t: &Table, m: Medium) -> Vec<String> {
        t.rows_for(m)
            .map(|r| texts(&r.cells[..1])[0].clone())
            .collect()
    }

    #[test]
    fn runs_are_tagged_and_formatted() {
        let (_, v) = view();
        let [a, b] = &v.runs;
        assert_eq!((a.tag, a.backend.as_str()), ("A (reference)", "torch"));
        assert_eq!((b.tag, b.backend.as_str()), ("B (candidate)", "mlx"));
        assert_eq!(a.frames, "4");
        assert_eq!(a.prompt, "a | b", "escaping is the renderers' job");
        let t = v.runs_table();
        assert_eq!(t.head.len(), 14);
        assert_eq!(
            t.head[9],
            Cell::Split(vec!["sampler".into(), "noise".into()])
        );
        assert_eq!(t.rows.len(), 2);
        assert_eq!(texts(&t.rows[1].cells)[0], "B (candidate)");
        assert_eq!(texts(&t.rows[0].cells)[13], "–", "no fault");
    }

    #[test]
    fn events_name_the_first_token_mismatch() {
        let (_, v) = view();
        let labels: Vec<&str> = v.events.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels.len(), 7);
        assert!(labels[0].starts_with("divergence point ("));
        assert_eq!(labels[1], "sampled token mismatch");
        assert_eq!(v.events[1].step, "frame 2 codebook 1");
        assert_eq!(v.events[2].step, "none", "identical logits never breach");
        let short: Vec<&str> = v.events.iter().filter_map(|e| e.short).collect();
        assert_eq!(
            short,
            [
                "token mismatch",
                "logits breach",
                "probs breach",
                "support mismatch",
                "post-only"
            ]
        );
        let t = v.events_table();
        assert_eq!(
            texts(&t.rows[1].cells),
            ["sampled token mismatch", "frame 2 codebook 1"]
        );
        assert_eq!(v.point.as_deref(), Some("frame 2 codebook 1"));
    }

    #[test]
    fn agreement_rows_differ_only_where_marked() {
        let (d, v) = view();
        let md = labels(&v.agreement, Medium::Markdown);
        let html = labels(&v.agreement, Medium::Html);
        assert!(md.contains(&"mean KL(softmax)".to_string()));
        assert!(!md.contains(&"mean KL(softmax A ‖ softmax B)".to_string()));
        assert!(html.contains(&"mean KL(softmax A ‖ softmax B)".to_string()));
        assert_eq!(md.len(), html.len());
        assert_eq!(md[0], "token agreement");
        // No probs recorded: no probs rows; logits rows from the overall logits stats.
        assert!(!md.iter().any(|l| l.starts_with("probs")));
        let l = d.overall.logits.as_ref().unwrap();
        let breach = v
            .agreement
            .rows
            .iter()
            .find(|r| texts(&r.cells[..1])[0] == "logits breaching steps")
            .unwrap();
        assert_eq!(texts(&breach.cells)[1], format!("0 of {}", l.max_abs.n));
        let post = &v.agreement.rows[1];
        assert_eq!(texts(&post.cells)[1], num(d.overall.post_token_agreement));
    }

    #[test]
    fn distributions_have_a_row_per_quantity() {
        let (_, v) = view();
        let t = &v.distributions;
        assert_eq!(t.head.len(), 12);
        assert_eq!(t.rows.len(), 7);
        assert!(t.rows.iter().all(|r| r.cells.len() == 12));
        let first = texts(&t.rows[0].cells);
        assert_eq!(first[0], "logits max |Δ|");
        assert_eq!(first[2], "0 ± 0", "identical logits");
        assert_eq!(first[11], "0");
        // Probs were not recorded: n 0 and dashes.
        let probs = texts(&t.rows[3].cells);
        assert_eq!(probs[0], "probs max |Δ|");
        assert_eq!(probs[1], "0");
        assert!(probs[2..].iter().all(|c| c == "–"));
    }

    #[test]
    fn codebooks_all_first_and_worst_first() {
        let (d, v) = view();
        assert_eq!(v.codebooks.len(), 1 + CODEBOOKS);
        assert_eq!(v.codebooks[0].codebook, None);
        assert_eq!(
            v.codebooks_table().rows[0].cells[0],
            Cell::Strong("all".into())
        );
        assert_eq!(v.codebooks[2].codebook, Some(1));
        assert_eq!(v.worst.len(), CODEBOOKS);
        assert_eq!(
            v.worst[0].codebook,
            Some(1),
            "the mismatching codebook leads"
        );
        assert_eq!(v.worst[0].agreement, num(d.per_codebook[1].token_agreement));
        assert_ne!(v.worst[0].agreement, "1");
        assert_eq!(v.worst[1].agreement, "1");
        assert_eq!(v.worst[1].probs_kl, "–", "no probs");
    }

    #[test]
    fn tokens_table_marks_subscripts() {
        let (_, v) = view();
        let kl = v
            .tokens
            .rows
            .iter()
            .find_map(|r| match &r.cells[0] {
                Cell::Spans(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            Span::join(&kl, str::to_string, |s| format!("_{s}")),
            "KL(h_A ‖ h_B), add-½ smoothing"
        );
        let md = labels(&v.tokens, Medium::Markdown);
        assert_eq!(md.first().map(String::as_str), Some("unique tokens A / B"));
        assert_eq!(md.last().map(String::as_str), Some("top tokens B"));
    }

    #[test]
    fn estimates_carry_their_interval_or_why_not() {
        let e = Estimate {
            value: 0.5,
            ci_low: 0.25,
            ci_high: 0.75,
            level: 0.95,
            resamples: 1000,
            groups: 10,
            note: None,
        };
        let Cell::Estimate(x) = estimate(&Some(e.clone())) else {
            panic!("an estimate")
        };
        let ci = x.ci.unwrap();
        assert_eq!(
            (
                x.value.as_str(),
                ci.low.as_str(),
                ci.high.as_str(),
                ci.level.as_str()
            ),
            ("0.5", "0.25", "0.75", "95")
        );
        let none = Estimate {
            ci_low: f64::NAN,
            ..e
        };
        let Cell::Estimate(x) = estimate(&Some(none)) else {
            panic!("an estimate")
        };
        assert_eq!(x.ci, Err("too little data".to_string()));
        assert_eq!(estimate(&None), Cell::text("–"));
    }
}
