//! Wall time of a 2×2×4 sweep (temps 0.6,0.8 × top-k 50,100 × seeds 0..4, one text) on the tiny
//! fixture, three ways:
//! 1. sequential, backends loaded for every capture (what 32 `csm-parity capture` calls do);
//! 2. sequential, backends loaded once and reused (`capture_with`);
//! 3. N worker threads, each with its own loaded backends (`--jobs N`).
//!
//! Each variant starts from an empty directory (no reuse of stored job results) and is checked
//! to give the same result as variant 1. `cargo bench --bench sweep`;
//! CSM_PARITY_BENCH_FRAMES (default 32) sets frames per run, CSM_PARITY_BENCH_JOBS (default 2)
//! the workers. Under `cargo test --benches` (no `--bench` argument) it runs a 1×1×1 smoke size.
#[cfg(all(feature = "mlx", feature = "torch"))]
fn main() {
    use csm_parity::commands::sweep::{run_sweep, Execution, SweepSpec};
    use csm_parity::model::{fixture, CsmModel, Model};
    use std::time::Instant;

    let full = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let frames = env("CSM_PARITY_BENCH_FRAMES", if full { 32 } else { 2 });
    let workers = env("CSM_PARITY_BENCH_JOBS", 2);
    let model = Model::Csm(CsmModel::load(&fixture::ensure_default_fixture().unwrap()).unwrap());
    let spec = SweepSpec {
        temperatures: if full { vec![0.6, 0.8] } else { vec![0.8] },
        top_ks: if full { vec![50, 100] } else { vec![50] },
        seeds: (0..if full { 4 } else { 1 }).collect(),
        texts: vec![csm_parity::commands::sweep::DEFAULT_TEXT.into()],
        max_frames: frames,
        speaker: 0,
        dtype: "f32".into(),
        model_sha256: model.sha256().into(),
        model_path: model.dir().display().to_string(),
        candidate: None,
    };
    let jobs = spec.jobs().len();
    println!(
        "sweep bench: {} temps × {} top-k × {} seeds = {jobs} jobs ({} captures of {frames} frames, both backends), {} cores",
        spec.temperatures.len(),
        spec.top_ks.len(),
        spec.seeds.len(),
        2 * jobs,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let variants = [
        ("sequential, backends loaded per capture", 1, false),
        ("sequential, backends reused", 1, true),
        ("parallel workers, backends reused", workers, true),
    ];
    let mut reference = None;
    let mut base = None;
    for (name, w, reuse) in variants {
        let tmp = tempfile::tempdir().unwrap();
        let exec = Execution {
            workers: w,
            reuse_backends: reuse,
            progress: false,
            keep_runs: false,
        };
        let t0 = Instant::now();
        let (_, r) = run_sweep(&model, &spec, tmp.path(), None, &exec).unwrap();
        let s = t0.elapsed().as_secs_f64();
        let r = r.unwrap();
        match &reference {
            None => reference = Some(r),
            Some(x) => assert_eq!(x, &r, "{name}: result differs from the sequential one"),
        }
        let b = *base.get_or_insert(s);
        println!(
            "  {name:<42} workers {w}: {s:7.2} s  ({:.3} s/job, {:.2}× vs first)",
            s / jobs as f64,
            b / s
        );
    }
}

#[cfg(not(all(feature = "mlx", feature = "torch")))]
fn main() {
    println!("sweep bench: needs both backends (default features); skipped");
}
