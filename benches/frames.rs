//! Frame-time benchmark: ms per frame for each backend on the tiny fixture and on a randomly
//! initialised model of the full CSM-1B shape (generated here, never downloaded), at backbone
//! positions 16 and 512 — with a KV cache the two must be close (each step reads the weights once).
//!
//! `cargo bench --bench frames [-- tiny|full]`; BENCH_DTYPE=f32|bf16 (default f32) sets the
//! full model's dtype, BENCH_FULL_FRAMES the frames timed per point (default 3).
use csm_parity::backend::{self, BackendKind, FrameRequest, Record};
use csm_parity::model::csm::weights::{map_and_validate, CsmWeights};
use csm_parity::model::{fixture, CsmConfig, CsmModel, DType, Frames, Model};
use csm_parity::sampling::{NoiseMode, SamplerSpec, SharedNoise};
use std::time::Instant;

fn model_from(cfg: CsmConfig, seed: u64) -> CsmModel {
    let raw = fixture::random_weights(&cfg, seed)
        .into_iter()
        .map(|(k, t)| (k, t, "random".into()))
        .collect();
    let weights: CsmWeights = map_and_validate(raw, &cfg, "random".into(), vec![]).unwrap();
    CsmModel {
        dir: "random".into(),
        config: cfg,
        weights,
        tokenizer: None,
    }
}

/// Median ms per frame at backbone position ≈ `position`, and the capture overhead
/// (recording logits + probs) as a fraction of the plain frame time.
fn time_frames(
    b: &mut dyn backend::Backend,
    cfg: &CsmConfig,
    position: usize,
    frames: usize,
    record: Record,
) -> f64 {
    let ids: Vec<u32> = (0..position as u32)
        .map(|i| 1 + i % (cfg.text_vocab_size as u32 - 1))
        .collect();
    let prompt = Frames::text(&ids, cfg.audio_num_codebooks, cfg.text_vocab_size).unwrap();
    let sampler = SamplerSpec::new(0.9, 50, NoiseMode::Shared, 1).unwrap();
    b.reset(1).unwrap();
    let (c, v) = (cfg.audio_num_codebooks, cfg.audio_vocab_size);
    let mut input = prompt;
    let mut times = Vec::new();
    for f in 0..frames + 1 {
        let u = SharedNoise::frame_uniforms(1, f as u64, c, v);
        let start = Instant::now();
        let out = b
            .generate_frame(&FrameRequest {
                input: &input,
                sampler: &sampler,
                uniforms: Some(&u),
                forced: None,
                record,
            })
            .unwrap();
        if f > 0 {
            // frame 0 includes the prefill
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        input = Frames::audio(&out.sampled, v).unwrap();
    }
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

fn bench(name: &str, model: &Model, dtype: DType, frames: usize) {
    let Model::Csm(csm) = model else {
        unreachable!("the frame bench times CSM models")
    };
    for kind in BackendKind::available() {
        let mut b = backend::load(kind, model, dtype).unwrap();
        let plain = Record::default();
        let full = Record {
            logits: true,
            probs: true,
        };
        let at16 = time_frames(b.as_mut(), &csm.config, 16, frames, plain);
        let at16_rec = time_frames(b.as_mut(), &csm.config, 16, frames, full);
        let at512 = time_frames(b.as_mut(), &csm.config, 512, frames, plain);
        println!(
            "{name:<14} {:<6} {:<5} {:>10.2} ms/frame @16 {:>10.2} ms/frame @512 ({:+.1}%)  capture overhead (logits+probs f32) {:+.1}%",
            kind.name(),
            dtype.name(),
            at16,
            at512,
            (at512 / at16 - 1.0) * 100.0,
            (at16_rec / at16 - 1.0) * 100.0
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |w: &str| args.is_empty() || args.iter().any(|a| a == w);
    if want("tiny") {
        let model = CsmModel::load(&fixture::ensure_default_fixture().unwrap()).unwrap();
        bench("tiny-fixture", &Model::Csm(model), DType::F32, 30);
    }
    if want("full") {
        let dtype: DType = std::env::var("BENCH_DTYPE")
            .unwrap_or_else(|_| "f32".into())
            .parse()
            .unwrap();
        let frames = std::env::var("BENCH_FULL_FRAMES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        eprintln!(
            "generating random CSM-1B-shaped weights ({} parameters)…",
            CsmConfig::csm_1b().parameter_count()
        );
        let model = model_from(CsmConfig::csm_1b(), 1);
        bench("csm-1b-random", &Model::Csm(model), dtype, frames);
    }
}
