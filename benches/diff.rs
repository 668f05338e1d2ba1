//! Throughput of `csm-parity diff` on a synthetic pair of runs with ≥ 2 GB of f32 logits each
//! (CSM-1B shape: 32 codebooks × 2051 vocab). Generated in a temp dir, deleted afterwards.
//! Prints GB/s of logits processed (both runs' bytes) and peak RSS. Single-threaded.
//!
//! `cargo bench --no-default-features --bench diff`; CSM_PARITY_BENCH_GB=0.2 for a quick run.
//! Under `cargo test --benches` (no `--bench` argument) it runs a 0.02 GB smoke size.
use csm_parity::analysis::{compare, DiffOptions};
use csm_parity::capture::{FrameRecord, Manifest, Run, RunWriter, Storage, Timings};
use std::time::Instant;

fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let gb: f64 = std::env::var("CSM_PARITY_BENCH_GB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            // `cargo bench` passes --bench; under `cargo test --benches` run a small smoke size.
            if std::env::args().any(|a| a == "--bench") {
                2.05
            } else {
                0.02
            }
        });
    let (c, v) = (32usize, 2051usize);
    let frame_bytes = (c * v * 4) as f64;
    let frames = (gb * 1e9 / frame_bytes).ceil() as usize;
    let tmp = tempfile::tempdir_in(std::env::temp_dir()).expect("temp dir");
    let t0 = Instant::now();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mk = |name: &str| {
        let mut m = Manifest::example(name);
        m.sampler.mode = "teacher".into();
        m
    };
    let mut wa = RunWriter::create(
        &tmp.path().join("torch"),
        mk("torch"),
        c,
        v,
        Storage::F32,
        Storage::None,
    )
    .unwrap();
    let mut wb = RunWriter::create(
        &tmp.path().join("mlx"),
        mk("mlx"),
        c,
        v,
        Storage::F32,
        Storage::None,
    )
    .unwrap();
    let mut la = vec![0f32; c * v];
    let mut lb = vec![0f32; c * v];
    for f in 0..frames {
        for (x, y) in la.iter_mut().zip(lb.iter_mut()) {
            let u = next();
            *x = u * u * u * 24.0 - 8.0;
            *y = *x + (next() - 0.5) * 2e-4;
        }
        let toks: Vec<i32> = (0..c).map(|k| ((f * 31 + k * 7) % v) as i32).collect();
        let rec = |l: &Vec<f32>| FrameRecord {
            tokens: toks.clone(),
            post_tokens: toks.clone(),
            logits: Some(l.clone()),
            probs: None,
            step_us: 1.0,
        };
        wa.push(&rec(&la)).unwrap();
        wb.push(&rec(&lb)).unwrap();
    }
    let pa = wa.finish("max_frames", Timings::default()).unwrap();
    let pb = wb.finish("max_frames", Timings::default()).unwrap();
    let gen_s = t0.elapsed().as_secs_f64();
    let rss_before = peak_rss_mb();
    let a = Run::open(&pa).unwrap();
    let b = Run::open(&pb).unwrap();
    let file_gb = a.logits().unwrap().data_bytes() as f64 / 1e9;
    let t1 = Instant::now();
    let d = compare(&a, &b, &DiffOptions::default()).unwrap();
    let secs = t1.elapsed().as_secs_f64();
    let processed = d.bytes_read as f64 / 1e9;
    println!("synthetic runs: {frames} frames × {c} codebooks × {v} vocab, {file_gb:.2} GB of f32 logits per run (generated in {gen_s:.1} s)");
    println!("verdict: {}", d.verdict.line);
    println!(
        "diff: {secs:.2} s for {processed:.2} GB of logits (both runs) → {:.2} GB/s ({:.2} GB/s per run), {:.0} steps/s",
        processed / secs,
        processed / 2.0 / secs,
        (frames * c) as f64 / secs
    );
    println!(
        "peak RSS: {:.0} MB (after generating: {rss_before:.0} MB); logits files {:.2} GB each",
        peak_rss_mb(),
        file_gb
    );
    // Breakdown: the per-step kernel alone on frames already in memory.
    let mut buf_a = csm_parity::capture::FrameBuf::default();
    let mut buf_b = csm_parity::capture::FrameBuf::default();
    let nf = frames.min(200);
    let t2 = Instant::now();
    for f in 0..nf {
        a.logits().unwrap().read_frame(f, &mut buf_a).unwrap();
        b.logits().unwrap().read_frame(f, &mut buf_b).unwrap();
    }
    let read_s = t2.elapsed().as_secs_f64();
    let t3 = Instant::now();
    let mut acc = 0f64;
    for _ in 0..nf {
        for k in 0..c {
            let r = csm_parity::analysis::metrics::compare_logits_dense(
                &buf_a.values()[k * v..(k + 1) * v],
                &buf_b.values()[k * v..(k + 1) * v],
                1e-3,
                1e-3,
            );
            acc += r.kl;
        }
    }
    let kern_s = t3.elapsed().as_secs_f64();
    let bytes = (nf * c * v * 8) as f64 / 1e9;
    println!(
        "breakdown: read {:.2} GB/s, kernel {:.2} GB/s (both runs' bytes; checksum {acc:.3e})",
        bytes / read_s,
        bytes / kern_s
    );
    drop(tmp);
}
