//! Codec benchmark: decode 10 s of audio (125 frames × 32 codebooks) with a randomly
//! initialised Mimi of the full `kyutai/mimi` shape (hidden 512, 64 filters, 8 transformer
//! layers, 32 codebooks; generated here, never downloaded) in each backend, and print the
//! real-time factor (decode wall time / audio duration; below 1 is faster than real time).
//!
//! `cargo bench --bench mimi`; BENCH_REPEATS sets the timed decodes per backend (default 3;
//! the median is reported); BENCH_BACKENDS (e.g. `torch`) limits the backends; BENCH_STREAM=1
//! also times the streamed decode (`decode_stream`, 25 frames a chunk, as `capture` and
//! `decode` feed it). The transformers `MimiModel` anchor: `benches/mimi_anchor.py`, see
//! docs/codec.md.
use csm_parity::backend::{load_codec, BackendKind};
use csm_parity::model::fixture::random_mimi_weights;
use csm_parity::model::mimi::{weights::validate_mimi, MimiConfig, MimiModel};
use csm_parity::model::DType;
use csm_parity::rng::SplitMix64;
use std::time::Instant;

fn main() {
    let cfg = MimiConfig::mimi();
    let raw = random_mimi_weights(&cfg, 7)
        .into_iter()
        .map(|(k, t)| (k, t, "random".into()))
        .collect();
    let weights = validate_mimi(raw, &cfg, "", "random".into(), vec![]).unwrap();
    let model = MimiModel {
        dir: "random".into(),
        config: cfg.clone(),
        weights,
    };
    let frames = 125;
    let mut rng = SplitMix64(11);
    let codes: Vec<Vec<i32>> = (0..frames)
        .map(|_| {
            (0..cfg.num_quantizers)
                .map(|_| (rng.next_u64() % cfg.codebook_size as u64) as i32)
                .collect()
        })
        .collect();
    let seconds = (frames * cfg.samples_per_frame()) as f64 / cfg.sampling_rate as f64;
    let repeats: usize = std::env::var("BENCH_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!(
        "Mimi decode, full shape ({} parameters), {frames} frames = {seconds:.1} s of audio, f32",
        csm_parity::model::mimi::weights::parameter_count(&cfg)
    );
    let only = std::env::var("BENCH_BACKENDS").unwrap_or_default();
    let stream = std::env::var("BENCH_STREAM").is_ok_and(|v| v == "1");
    for kind in BackendKind::available() {
        if !only.is_empty() && !only.split(',').any(|b| b == kind.name()) {
            continue;
        }
        let mut codec = load_codec(kind, &model, DType::F32).unwrap();
        let warm = codec.decode(&codes[..8]).unwrap();
        assert!(warm.audio.iter().all(|x| x.is_finite()));
        let mut times: Vec<f64> = (0..repeats)
            .map(|_| {
                let t = Instant::now();
                let out = codec.decode(&codes).unwrap();
                let dt = t.elapsed().as_secs_f64();
                assert_eq!(out.audio.len(), frames * cfg.samples_per_frame());
                dt
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "  {:<6} {:>8.3} s per decode (median of {repeats})  RTF {:.3}  ({})",
            kind.name(),
            median,
            median / seconds,
            codec.info().device
        );
        if stream {
            let mut times: Vec<f64> = (0..repeats)
                .map(|_| {
                    let t = Instant::now();
                    codec.stream_reset();
                    let mut n = 0;
                    for chunk in codes.chunks(25) {
                        n += codec.decode_stream(chunk).unwrap().audio.len();
                    }
                    let dt = t.elapsed().as_secs_f64();
                    assert_eq!(n, frames * cfg.samples_per_frame());
                    dt
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            println!(
                "  {:<6} {:>8.3} s per streamed decode, 25 frames a chunk (median of {repeats})  RTF {:.3}",
                kind.name(),
                median,
                median / seconds
            );
        }
    }
}
