//! Issue 7: plain Llama LMs (HF layout, LoRA adapters) in both pipelines, on the tiny fixture.
#![cfg(all(feature = "mlx", feature = "torch"))]
use csm_parity::analysis::{self, DiffOptions};
use csm_parity::backend::{self, Backend, BackendKind, FrameRequest, Record};
use csm_parity::capture::{Run, Storage};
use csm_parity::commands::capture::{capture, CaptureOptions, Mode};
use csm_parity::commands::selftest::{selftest, SelftestOptions};
use csm_parity::faults::Fault;
use csm_parity::model::fixture;
use csm_parity::model::{read_safetensors, write_safetensors};
use csm_parity::model::{DType, Frames, LlamaModel, Model};
use csm_parity::rng::SplitMix64;
use csm_parity::sampling::{reference_sample, NoiseMode, PostProcess, SamplerSpec, SharedNoise};
use std::collections::BTreeMap;
use std::path::Path;

fn fixture_dir() -> std::path::PathBuf {
    fixture::ensure_llama_fixture().unwrap()
}

fn load(adapter: bool) -> LlamaModel {
    let dir = fixture_dir();
    let a = dir.join("adapter");
    LlamaModel::load(&dir, adapter.then_some(a.as_path())).unwrap()
}

/// Greedy decoding of `n` tokens after `prompt`; `forced` feeds those tokens instead of the
/// sampled ones (teacher forcing). Returns (sampled tokens, logits per step).
fn greedy(
    b: &mut dyn Backend,
    prompt: &Frames,
    forced: Option<&[i32]>,
    n: usize,
) -> (Vec<i32>, Vec<Vec<f32>>) {
    b.reset(0).unwrap();
    let spec = SamplerSpec::greedy();
    let mut input = prompt.clone();
    let (mut toks, mut logits) = (vec![], vec![]);
    for i in 0..n {
        let out = b
            .generate_frame(&FrameRequest {
                input: &input,
                sampler: &spec,
                uniforms: None,
                forced: None,
                record: Record {
                    logits: true,
                    probs: false,
                },
            })
            .unwrap();
        let fed = forced.map_or(out.sampled[0], |f| f[i]);
        toks.push(out.sampled[0]);
        logits.push(out.logits.unwrap());
        input = Frames::lm(&[fed as u32], 272).unwrap();
    }
    (toks, logits)
}

fn max_abs(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn logits_agree_between_backends_with_and_without_adapter() {
    let mut per_adapter = vec![];
    for adapter in [false, true] {
        let lm = load(adapter);
        let ids = lm.prompt_ids("the cat sat on the mat", false).unwrap();
        let prompt = Frames::lm(&ids, lm.config.vocab_size).unwrap();
        let model = Model::Llama(lm);
        let mut t = backend::load(BackendKind::Torch, &model, DType::F32).unwrap();
        let mut m = backend::load(BackendKind::Mlx, &model, DType::F32).unwrap();
        let (tt, tl) = greedy(t.as_mut(), &prompt, None, 24);
        // MLX teacher-forced on torch's tokens: every step comparable.
        let (mt, ml) = greedy(m.as_mut(), &prompt, Some(&tt), 24);
        let d = max_abs(&tl, &ml);
        eprintln!("adapter {adapter}: max |mlx - torch| logit over 24 steps = {d:e}");
        assert!(d <= 1e-4, "adapter {adapter}: max |Δlogit| {d}");
        assert_eq!(tt, mt, "greedy tokens differ (adapter {adapter})");
        // The KV-cached logits equal one uncached pass over the same sequence.
        let frames: Vec<Vec<i32>> = tt[..23].iter().map(|&x| vec![x]).collect();
        for (name, b, cached) in [("torch", &mut t, &tl), ("mlx", &mut m, &ml)] {
            let rec = b.recompute(&prompt, &frames).unwrap();
            let dc = max_abs(&rec, &cached[..23]);
            assert!(dc <= 1e-4, "{name} cache vs recompute: {dc}");
        }
        // Logits are peaked like a trained model's, not flat.
        let spread = tl[0].iter().cloned().fold(f32::MIN, f32::max)
            - tl[0].iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread > 5.0, "{spread}");
        per_adapter.push(tl);
    }
    // The adapter changes the model (by far more than the backends differ).
    let effect = max_abs(&per_adapter[0][..1], &per_adapter[1][..1]);
    assert!(
        effect > 0.1,
        "adapter effect on the first step's logits: {effect}"
    );
}

fn opts(out: &Path, text: &str, seed: u64, sampler: SamplerSpec, mode: Mode) -> CaptureOptions {
    CaptureOptions {
        text: text.into(),
        speaker: 0,
        chat: false,
        backends: vec![BackendKind::Torch, BackendKind::Mlx],
        reference: BackendKind::Torch,
        sampler: SamplerSpec { seed, ..sampler },
        max_frames: 24,
        mode,
        post: PostProcess::None,
        dtype: DType::F32,
        logits: Storage::F32,
        probs: Storage::F32,
        out: out.to_path_buf(),
        progress: false,
        inject: None,
        force: false,
        audio: Default::default(),
        codec_fault: None,
    }
}

#[test]
fn shared_noise_token_streams_are_identical_and_decode_to_the_same_text() {
    let tmp = tempfile::tempdir().unwrap();
    let samplers = [
        SamplerSpec::new(0.9, 20, NoiseMode::Shared, 0).unwrap(),
        SamplerSpec::new(1.0, 0, NoiseMode::Shared, 0)
            .unwrap()
            .with_filters(0.9, 0.0)
            .unwrap(),
        SamplerSpec::new(0.8, 0, NoiseMode::Shared, 0)
            .unwrap()
            .with_filters(0.0, 0.05)
            .unwrap(),
    ];
    let mut n = 0;
    for adapter in [false, true] {
        let model = Model::Llama(load(adapter));
        let Model::Llama(lm) = &model else {
            unreachable!()
        };
        for text in ["Hello there.", "the cat sat on the mat", "Parity, please!"] {
            for seed in [1u64, 7, 2024] {
                let sampler = samplers[(seed as usize + n) % samplers.len()];
                let out = tmp.path().join(format!("run{n}"));
                n += 1;
                let s =
                    capture(&model, &opts(&out, text, seed, sampler, Mode::Independent)).unwrap();
                let what = format!("adapter {adapter}, {text:?}, seed {seed}, {sampler:?}");
                assert_eq!(s.tokens_equal, Some(true), "{what}\n{}", s.render());
                assert_eq!(s.model_kind, "llama");
                let (a, b) = (
                    Run::open(&out.join("torch")).unwrap(),
                    Run::open(&out.join("mlx")).unwrap(),
                );
                assert_eq!((a.codebooks(), a.vocab()), (1, 272));
                assert_eq!(a.manifest().model.kind, "llama");
                assert_eq!(
                    a.manifest().model.config.get("adapter").is_some(),
                    adapter,
                    "{what}"
                );
                assert!(["eos_token", "max_tokens"].contains(&a.manifest().stop_reason.as_str()));
                // Both runs' tokens decode to the same text, which is the recorded text.
                let decode = |r: &Run| {
                    let ids: Vec<u32> = r
                        .tokens()
                        .iter()
                        .map(|&t| t as u32)
                        .filter(|t| !lm.eos_ids.contains(t))
                        .collect();
                    lm.decode(&ids).unwrap()
                };
                let (ta, tb) = (decode(&a), decode(&b));
                assert_eq!(ta, tb, "{what}");
                assert!(!ta.is_empty(), "{what}");
                assert_eq!(a.manifest().output_text.as_deref(), Some(ta.as_str()));
                assert_eq!(b.manifest().output_text.as_deref(), Some(tb.as_str()));
                // diff reads the LM runs unchanged and finds no divergence.
                let d = analysis::compare(&a, &b, &DiffOptions::default()).unwrap();
                assert_ne!(d.verdict.kind, "diverged", "{what}: {}", d.verdict.line);
                // The recorded probabilities are the filtered ones.
                if let Some(k) = sampler.effective_top_k(272) {
                    let mut buf = csm_parity::capture::FrameBuf::default();
                    a.probs().unwrap().read_frame(0, &mut buf).unwrap();
                    let nz = buf.values().iter().filter(|&&p| p > 0.0).count();
                    assert!(
                        nz <= k + 4 && nz >= k,
                        "{what}: {nz} nonzero probs with top-k {k}"
                    );
                }
            }
        }
    }
}

#[test]
fn on_device_samplers_match_the_host_reference_with_top_p_and_min_p() {
    let model = Model::Llama(load(false));
    let mut backends: Vec<Box<dyn Backend>> = [BackendKind::Torch, BackendKind::Mlx]
        .into_iter()
        .map(|k| backend::load(k, &model, DType::F32).unwrap())
        .collect();
    let v = 272;
    let mut rng = SplitMix64(99);
    for row in 0..40 {
        // Peaked logits with exact ties (every 16th token doubles its predecessor).
        let mut logits: Vec<f32> = (0..v).map(|_| (rng.normal() * 3.0) as f32).collect();
        for t in (1..v).filter(|t| t % 16 == 1) {
            logits[t] = logits[t - 1];
        }
        let spec = SamplerSpec::new(
            [0.7, 1.0, 1.3][row % 3],
            [0, 10, 40][row % 3],
            NoiseMode::Shared,
            0,
        )
        .unwrap()
        .with_filters([0.5, 0.9, 0.0, 0.95][row % 4], [0.0, 0.1, 0.02][row % 3])
        .unwrap();
        let mut u = vec![0f32; v];
        SharedNoise::uniforms_into(5, row as u64, 0, &mut u);
        let (rt, rp) = reference_sample(&logits, &spec, &u);
        for b in backends.iter_mut() {
            let (t, p) = b.sample_logits(&logits, &spec, Some(&u)).unwrap();
            let name = b.info().name;
            assert_eq!(t, rt, "{name} row {row} {spec:?}");
            let support = |p: &[f32]| p.iter().map(|&x| x > 0.0).collect::<Vec<_>>();
            assert_eq!(
                support(&p),
                support(&rp),
                "{name} row {row} support {spec:?}"
            );
            let d = p
                .iter()
                .zip(&rp)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(d < 1e-5, "{name} row {row}: {d}");
        }
    }
}

#[test]
fn chat_prompt_uses_the_llama3_header_format() {
    let model = load(false);
    let plain = model.prompt_ids("hi", false).unwrap();
    let chat = model.prompt_ids("hi", true).unwrap();
    assert_eq!(plain, vec![261, b'h' as u32, b'i' as u32]);
    // BOS, <|start_header_id|> user <|end_header_id|> \n\n hi <|eot_id|> <|start_header_id|> …
    assert_eq!(&chat[..2], &[261, 263]);
    assert!(chat.contains(&264) && chat.contains(&265));
    assert_eq!(chat.iter().filter(|&&t| t == 263).count(), 2);
    assert_eq!(*chat.last().unwrap(), b'\n' as u32);
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(
        tmp.path(),
        "hi",
        3,
        SamplerSpec::new(0.9, 20, NoiseMode::Shared, 3).unwrap(),
        Mode::Independent,
    );
    o.chat = true;
    let s = capture(&Model::Llama(model), &o).unwrap();
    assert_eq!(s.tokens_equal, Some(true));
    let r = Run::open(&tmp.path().join("mlx")).unwrap();
    assert_eq!(
        r.manifest().prompt.token_ids,
        chat.iter().map(|&t| t as i64).collect::<Vec<_>>()
    );
}

/// Copies the fixture adapter into a temp dir, with its tensors changed by `edit`.
fn broken_adapter(
    edit: impl FnOnce(&mut BTreeMap<String, csm_parity::model::HostTensor>),
) -> tempfile::TempDir {
    let src = fixture_dir().join("adapter");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("adapter_config.json"),
        tmp.path().join("adapter_config.json"),
    )
    .unwrap();
    let (raw, _) = read_safetensors(&[src.join("adapters.safetensors")]).unwrap();
    let mut tensors: BTreeMap<_, _> = raw.into_iter().map(|(k, t, _)| (k, t)).collect();
    edit(&mut tensors);
    write_safetensors(&tmp.path().join("adapters.safetensors"), &tensors).unwrap();
    tmp
}

#[test]
fn adapter_errors_name_the_tensor() {
    let dir = fixture_dir();
    let err = |a: &Path| format!("{:#}", LlamaModel::load(&dir, Some(a)).err().unwrap());
    let missing = broken_adapter(|t| {
        t.remove("model.layers.1.self_attn.v_proj.lora_b").unwrap();
    });
    let e = err(missing.path());
    assert!(
        e.contains("missing adapter tensor \"model.layers.1.self_attn.v_proj.lora_b\"")
            && e.contains("[4, 32]"),
        "{e}"
    );
    let misshaped = broken_adapter(|t| {
        let a = t.get_mut("model.layers.1.self_attn.q_proj.lora_a").unwrap();
        *a = csm_parity::model::HostTensor::from_f32(vec![64, 3], &[0.0; 192]);
    });
    let e = err(misshaped.path());
    assert!(
        e.contains("\"model.layers.1.self_attn.q_proj.lora_a\" has shape [64, 3]")
            && e.contains("expected [64, 4]"),
        "{e}"
    );
    let extra = broken_adapter(|t| {
        let a = t["model.layers.1.self_attn.q_proj.lora_a"].clone();
        t.insert("model.layers.0.self_attn.q_proj.lora_a".into(), a);
    });
    assert!(err(extra.path())
        .contains("unexpected adapter tensor \"model.layers.0.self_attn.q_proj.lora_a\""));
    let no_cfg = tempfile::tempdir().unwrap();
    assert!(err(no_cfg.path()).contains("adapter_config.json"));
}

#[test]
fn model_errors_name_the_key() {
    let src = fixture_dir();
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let (raw, _) = read_safetensors(&[src.join("model.safetensors")]).unwrap();
    let mut tensors: BTreeMap<_, _> = raw.into_iter().map(|(k, t, _)| (k, t)).collect();
    tensors.remove("model.layers.1.mlp.up_proj.weight");
    write_safetensors(&tmp.path().join("model.safetensors"), &tensors).unwrap();
    let e = format!("{:#}", LlamaModel::load(tmp.path(), None).err().unwrap());
    assert!(
        e.contains("missing tensor \"model.layers.1.mlp.up_proj.weight\""),
        "{e}"
    );
}

#[test]
fn tied_embeddings_load_and_agree() {
    let src = fixture_dir();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["tie_word_embeddings"] = true.into();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    // transformers sometimes saves lm_head even when tied: it is ignored.
    std::fs::copy(
        src.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let model = LlamaModel::load(tmp.path(), None).unwrap();
    assert_eq!(model.lm_head_name(), "model.embed_tokens.weight");
    let prompt = Frames::lm(&model.prompt_ids("hello", false).unwrap(), 272).unwrap();
    let model = Model::Llama(model);
    let mut t = backend::load(BackendKind::Torch, &model, DType::F32).unwrap();
    let mut m = backend::load(BackendKind::Mlx, &model, DType::F32).unwrap();
    let (tt, tl) = greedy(t.as_mut(), &prompt, None, 8);
    let (_, ml) = greedy(m.as_mut(), &prompt, Some(&tt), 8);
    assert!(max_abs(&tl, &ml) <= 1e-4);
}

#[test]
fn selftest_on_the_llama_path_gives_the_expected_verdicts() {
    let model = load(true);
    let tmp = tempfile::tempdir().unwrap();
    let o = SelftestOptions {
        max_frames: 48,
        seed: 42,
        temperature: 0.9,
        top_k: 5,
        text: "hi".into(),
        faults: vec![
            Fault::ContextLoss,
            Fault::NoCache,
            Fault::RopeHalves,
            Fault::NoRopeScaling,
        ],
        out: tmp.path().to_path_buf(),
        codec: false,
    };
    let r = selftest(&Model::Llama(model), &o).unwrap();
    let table = r.render();
    eprintln!("{table}");
    let get = |case: &str| r.rows.iter().find(|row| row.case == case).unwrap();
    assert!(!get("clean").detected, "{table}");
    assert!(get("clean").headline_value < 1e-4, "{table}");
    assert_eq!(get("context-loss").stage, "model", "{table}");
    assert_eq!(
        get("context-loss").first_divergence,
        Some([1, 0]),
        "the prompt is forgotten after the first token\n{table}"
    );
    assert_eq!(get("no-cache").stage, "performance", "{table}");
    assert_eq!(get("no-cache").first_divergence, None, "{table}");
    assert_eq!(get("rope-halves").stage, "model", "{table}");
    assert!(r.all_pass, "{table}");
}

/// The top-N table at the divergence step of a Llama pair shows each token's decoded text
/// (JSON, terminal, Markdown and HTML); a CSM pair (audio codes) has none.
#[test]
fn divergence_table_shows_decoded_llama_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let model = load(false);
    let mut o = opts(
        &tmp.path().join("cap"),
        "Hello world",
        3,
        SamplerSpec::new(0.9, 50, NoiseMode::Shared, 3).unwrap(),
        Mode::Independent,
    );
    o.inject = Some(Fault::RopeHalves);
    capture(&Model::Llama(model), &o).unwrap();
    let (a, b) = (
        Run::open(&tmp.path().join("cap/torch")).unwrap(),
        Run::open(&tmp.path().join("cap/mlx")).unwrap(),
    );
    let d = analysis::compare(&a, &b, &DiffOptions::default()).unwrap();
    let t = d.divergence_top.as_ref().expect("a divergence step table");
    let tok = csm_parity::model::tokenizer::load_tokenizer(&fixture_dir()).unwrap();
    assert!(!t.rows.is_empty());
    // Ids past the tokenizer's vocabulary (the model's padded rows) have no text.
    for r in &t.rows {
        assert_eq!(
            r.text,
            tok.decode_token(r.token as u32),
            "token {}",
            r.token
        );
    }
    let first = t
        .rows
        .iter()
        .find(|r| r.text.is_some())
        .expect("a decoded token in the table");
    let shown = format!("{:?}", first.text.as_ref().unwrap());
    let json = serde_json::to_value(&d).unwrap();
    let k = t.rows.iter().position(|r| r.token == first.token).unwrap();
    assert_eq!(
        json["divergence_top"]["rows"][k]["text"].as_str(),
        first.text.as_deref()
    );
    let term = csm_parity::report::terminal::render(&d);
    if k < 5 {
        // The terminal line lists the first five rows.
        assert!(term.contains(&format!("{} {shown}", first.token)), "{term}");
    }
    let md = csm_parity::report::markdown::render(&d, &[]);
    assert!(md.contains(&format!("| {} `", first.token)), "{md}");
    let html = csm_parity::report::html::render(&d, &[]).unwrap();
    assert!(html.contains(&format!("{} <code>", first.token)), "{html}");
}
