//! The tiny fixture model: deterministic weights of the CSM architecture (original key names),
//! its config and a small byte-level tokenizer, and its codec: a tiny Mimi in `codec/`.
//! Same seed → byte-identical files.
use super::checkpoint::write_safetensors;
use super::csm::{expected_tensors, CsmConfig};
use super::mimi::MimiConfig;
use super::tensor::{DType, HostTensor};
use crate::rng::SplitMix64;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Logit scale of the output heads and the spread (log-normal sigma) of per-token scales:
/// together they make next-token distributions peaked like a trained model's (on the tiny
/// fixture, top-1 probability: p10 ≈ 0.35, median ≈ 0.64, p90 ≈ 0.97).
pub const HEAD_LOGIT_STD: f32 = 3.0;
pub const HEAD_TOKEN_TAIL: f64 = 0.4;
/// One token in this many is a twin (identical head weights) of its predecessor.
pub const TWIN_EVERY: usize = 16;

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Random weights of `cfg` (any size: also used for the full CSM-1B shape in benchmarks).
pub fn random_weights(cfg: &CsmConfig, seed: u64) -> BTreeMap<String, HostTensor> {
    random_weights_in(cfg, seed, DType::F32)
}

/// [`random_weights`] stored in `dtype` (the f32 values rounded; each tensor converted as it
/// is made, so a bf16 CSM-1B needs 3.1 GB, not 6.2 GB, while it is generated).
/// Tensors are made on all cores (each from its own seed, so the result does not depend on the
/// number of threads).
pub fn random_weights_in(cfg: &CsmConfig, seed: u64, dtype: DType) -> BTreeMap<String, HostTensor> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let mut todo = expected_tensors(cfg);
    // Largest first, so the last tensors to finish are small ones.
    todo.sort_by_key(|(_, shape)| std::cmp::Reverse(shape.iter().product::<usize>()));
    let next = AtomicUsize::new(0);
    let done = Mutex::new(BTreeMap::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads.min(todo.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((name, shape)) = todo.get(i) else {
                    break;
                };
                let t = random_tensor(name, shape.clone(), seed, dtype);
                done.lock().unwrap().insert(name.clone(), t);
            });
        }
    });
    done.into_inner().unwrap()
}

fn random_tensor(name: &str, shape: Vec<usize>, seed: u64, dtype: DType) -> HostTensor {
    let mut rng = SplitMix64(seed ^ fnv1a(name));
    let n: usize = shape.iter().product();
    let values: Vec<f32> = if name == "codebook0_head.weight" || name == "audio_head" {
        // Output heads: token t's weights scaled by a log-normal factor, so a few
        // tokens dominate each step, as in a trained model.
        let is_audio = name == "audio_head";
        let (vocab, fan_in) = if is_audio {
            (shape[2], shape[1])
        } else {
            (shape[0], shape[1])
        };
        let mut srng = SplitMix64(seed ^ fnv1a(&format!("{name}/token-scale")));
        let s = HEAD_TOKEN_TAIL;
        let scales: Vec<f32> = (0..vocab)
            .map(|_| (s * srng.normal() - s * s).exp() as f32)
            .collect();
        let std = HEAD_LOGIT_STD / (fan_in as f32).sqrt();
        let mut w: Vec<f32> = (0..n)
            .map(|i| {
                let t = if is_audio { i % vocab } else { i / fan_in };
                rng.normal() as f32 * std * scales[t]
            })
            .collect();
        // Twin tokens: every token t ≡ 1 (mod TWIN_EVERY) has the same head weights
        // as t − 1, so exact logit ties occur (as they do in bf16 checkpoints) and
        // top-k tie handling is observable.
        for t in (1..vocab).filter(|t| t % TWIN_EVERY == 1) {
            let rows = n / (vocab * fan_in);
            for r in 0..rows {
                for d in 0..fan_in {
                    let (src, dst) = if is_audio {
                        (
                            (r * fan_in + d) * vocab + t - 1,
                            (r * fan_in + d) * vocab + t,
                        )
                    } else {
                        ((t - 1) * fan_in + d, t * fan_in + d)
                    };
                    w[dst] = w[src];
                }
            }
        }
        w
    } else if name.ends_with(".scale") {
        (0..n).map(|_| (1.0 + 0.1 * rng.normal()) as f32).collect()
    } else {
        let std = if name.ends_with("embeddings.weight") {
            1.0
        } else {
            1.0 / (shape[1] as f32).sqrt()
        };
        (0..n).map(|_| rng.normal() as f32 * std).collect()
    };
    host_in(shape, &values, dtype)
}

fn host_in(shape: Vec<usize>, values: &[f32], dtype: DType) -> HostTensor {
    let data: Vec<u8> = match dtype {
        DType::F32 => return HostTensor::from_f32(shape, values),
        DType::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
    };
    HostTensor {
        shape,
        dtype,
        data: data.into(),
    }
}

/// A randomly initialised checkpoint of the full CSM-1B shape (original layout, weights in
/// `dtype`, `config.json`), for measuring real-size speed and memory on a machine without the
/// real weights. It has no tokenizer (like Sesame's release: pass `--tokenizer`) and no codec.
pub fn write_csm_1b_fixture(dir: &Path, seed: u64, dtype: DType) -> Result<()> {
    let cfg = CsmConfig::csm_1b();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let weights = random_weights_in(&cfg, seed, dtype);
    write_safetensors(&dir.join("model.safetensors"), &weights)?;
    let mut config = cfg.to_original_json();
    config["fixture_seed"] = serde_json::json!(seed);
    config["fixture_note"] = serde_json::json!(
        "random weights of the CSM-1B shape (csm-parity fixture --kind csm-1b); not a trained model"
    );
    crate::util::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    Ok(())
}

/// GPT-2's byte → printable-character map used by byte-level BPE vocabularies.
fn byte_level_chars() -> Vec<char> {
    let mut direct: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    direct.extend(0xA1..=0xAC);
    direct.extend(0xAE..=0xFF);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if direct.contains(&b) {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            }
        })
        .collect()
}

/// A byte-level BPE tokenizer.json: ids 0..255 are bytes, then a few merges of frequent
/// English pairs, then `<|begin_of_text|>` and `<|end_of_text|>`. Fits `text_vocab`.
pub fn tokenizer_json(text_vocab: usize) -> String {
    let chars = byte_level_chars();
    let mut vocab: Vec<(String, usize)> = chars
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i))
        .collect();
    let space = chars[b' ' as usize];
    let pairs = [("t", "h"), ("e", " "), ("s", " "), ("i", "n"), (" ", "t")];
    let mut merges = Vec::new();
    for (a, b) in pairs {
        let map = |s: &str| {
            if s == " " {
                space.to_string()
            } else {
                s.to_string()
            }
        };
        let (a, b) = (map(a), map(b));
        let id = vocab.len();
        if id + 2 >= text_vocab {
            break;
        }
        vocab.push((format!("{a}{b}"), id));
        merges.push(format!("{a} {b}"));
    }
    let bos = vocab.len();
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let vocab_obj: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .map(|(t, i)| (t.clone(), serde_json::json!(i)))
        .chain([
            (super::tokenizer::BOS.to_string(), serde_json::json!(bos)),
            (
                super::tokenizer::EOS.to_string(),
                serde_json::json!(bos + 1),
            ),
        ])
        .collect();
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(bos, super::tokenizer::BOS), special(bos + 1, super::tokenizer::EOS)],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab_obj, "merges": merges}
    });
    serde_json::to_string_pretty(&tok).unwrap()
}

/// Writes `config.json`, `model.safetensors` and `tokenizer.json` of the tiny fixture to `dir`.
pub fn write_fixture(dir: &Path, seed: u64) -> Result<()> {
    let cfg = CsmConfig::tiny();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let weights = random_weights(&cfg, seed);
    write_safetensors(&dir.join("model.safetensors"), &weights)?;
    write_codec_fixture(
        &dir.join(super::mimi::CODEC_SUBDIR),
        &MimiConfig::tiny(cfg.audio_num_codebooks),
        seed,
    )?;
    let mut config = cfg.to_original_json();
    config["fixture_seed"] = serde_json::json!(seed);
    config["fixture_version"] = serde_json::json!(FIXTURE_VERSION);
    crate::util::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    crate::util::write_atomic(
        &dir.join("tokenizer.json"),
        tokenizer_json(cfg.text_vocab_size).as_bytes(),
    )?;
    Ok(())
}

/// Where the bundled fixtures are made and found, resolved at run time (an installed or copied
/// binary never looks for the tree it was built in), first match:
/// 1. `$CSM_PARITY_FIXTURES`;
/// 2. the `fixtures/` folder of the csm-parity checkout the current directory is in (the nearest
///    ancestor with `fixtures/gate.toml`);
/// 3. the user data directory: `$XDG_DATA_HOME/csm-parity/fixtures`, by default
///    `~/.local/share/csm-parity/fixtures`.
pub fn fixtures_root() -> Result<std::path::PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    fixtures_root_from(
        env("CSM_PARITY_FIXTURES").map(Into::into),
        std::env::current_dir().ok(),
        env("XDG_DATA_HOME").map(Into::into),
        env("HOME").map(Into::into),
    )
}

/// [`fixtures_root`] from its inputs (the variables and the current directory).
pub fn fixtures_root_from(
    explicit: Option<std::path::PathBuf>,
    cwd: Option<std::path::PathBuf>,
    xdg_data: Option<std::path::PathBuf>,
    home: Option<std::path::PathBuf>,
) -> Result<std::path::PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir);
    }
    if let Some(project) = cwd.as_deref().and_then(|c| {
        c.ancestors()
            .find(|a| a.join("fixtures/gate.toml").is_file())
    }) {
        return Ok(project.join("fixtures"));
    }
    match (xdg_data, home) {
        (Some(data), _) => Ok(data.join("csm-parity").join("fixtures")),
        (None, Some(home)) => Ok(home.join(".local/share/csm-parity/fixtures")),
        (None, None) => anyhow::bail!(
            "no place for the bundled fixtures: not inside a csm-parity checkout, and neither \
             CSM_PARITY_FIXTURES, XDG_DATA_HOME nor HOME is set; pass --model DIR or set \
             CSM_PARITY_FIXTURES"
        ),
    }
}

/// The bundled fixture's directory: `tiny-csm` under [`fixtures_root`] (made on first use).
pub fn default_fixture_dir() -> Result<std::path::PathBuf> {
    Ok(fixtures_root()?.join("tiny-csm"))
}

/// Version of the fixture generators, written as `fixture_version` into each fixture's
/// config.json: bump it whenever the generated weights change, so bundled fixtures made by an
/// older build are regenerated instead of silently reused.
pub const FIXTURE_VERSION: u64 = 3;

/// Makes the fixture in `dir` with `write` when `marker` (its last-written file) is absent or
/// its config.json comes from another generator version; returns `dir`.
fn ensure_fixture(
    dir: std::path::PathBuf,
    marker: &Path,
    what: &str,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<std::path::PathBuf> {
    let version = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["fixture_version"].as_u64());
    if !dir.join(marker).is_file() || version != Some(FIXTURE_VERSION) {
        eprintln!("making the {what} in {}", dir.display());
        write(&dir)?;
    }
    Ok(dir)
}

/// Makes the default fixture if it is absent or stale; returns its directory.
pub fn ensure_default_fixture() -> Result<std::path::PathBuf> {
    ensure_fixture(
        default_fixture_dir()?,
        Path::new("codec/model.safetensors"),
        "tiny fixture model",
        |d| write_fixture(d, DEFAULT_SEED),
    )
}

pub const DEFAULT_SEED: u64 = 1234;

/// The tiny Llama's tokenizer: [`tokenizer_json`] plus the Llama-3 chat specials
/// `<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>` right after BOS/EOS.
pub fn llama_tokenizer_json(vocab: usize) -> String {
    use super::llama::{END_HEADER, EOT, START_HEADER};
    let mut tok: serde_json::Value = serde_json::from_str(&tokenizer_json(vocab)).unwrap();
    let next = tok["added_tokens"]
        .as_array()
        .and_then(|a| a.iter().filter_map(|t| t["id"].as_u64()).max())
        .unwrap_or(0) as usize
        + 1;
    assert!(
        next + 3 <= vocab,
        "vocab {vocab} too small for the chat specials"
    );
    for (i, content) in [START_HEADER, END_HEADER, EOT].into_iter().enumerate() {
        let id = next + i;
        tok["added_tokens"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}));
        tok["model"]["vocab"][content] = serde_json::json!(id);
    }
    serde_json::to_string_pretty(&tok).unwrap()
}

/// Deterministic weights of a Llama config (HF names): peaked output head with twin tokens,
/// as [`random_weights`] does for CSM.
pub fn llama_weights(cfg: &super::llama::LlamaConfig, seed: u64) -> BTreeMap<String, HostTensor> {
    super::llama::expected_tensors(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let mut rng = SplitMix64(seed ^ fnv1a(&name));
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name == "lm_head.weight" {
                let (vocab, fan_in) = (shape[0], shape[1]);
                let mut srng = SplitMix64(seed ^ fnv1a("lm_head/token-scale"));
                let s = HEAD_TOKEN_TAIL;
                let scales: Vec<f32> = (0..vocab)
                    .map(|_| (s * srng.normal() - s * s).exp() as f32)
                    .collect();
                let std = HEAD_LOGIT_STD / (fan_in as f32).sqrt();
                let mut w: Vec<f32> = (0..n)
                    .map(|i| rng.normal() as f32 * std * scales[i / fan_in])
                    .collect();
                for t in (1..vocab).filter(|t| t % TWIN_EVERY == 1) {
                    let (src, dst) = ((t - 1) * fan_in, t * fan_in);
                    w.copy_within(src..src + fan_in, dst);
                }
                w
            } else if name.ends_with("norm.weight") {
                (0..n).map(|_| (1.0 + 0.1 * rng.normal()) as f32).collect()
            } else {
                let std = if name == "model.embed_tokens.weight" {
                    1.0
                } else {
                    1.0 / (shape[1] as f32).sqrt()
                };
                (0..n).map(|_| rng.normal() as f32 * std).collect()
            };
            (name, HostTensor::from_f32(shape, &values))
        })
        .collect()
}

/// The fixture adapter: rank 4, scale 2, on q/v/down projections of the last layer.
pub fn llama_adapter(
    cfg: &super::llama::LlamaConfig,
    seed: u64,
) -> (serde_json::Value, BTreeMap<String, HostTensor>) {
    let (rank, layers) = (4usize, 1usize);
    let keys = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"];
    let config = serde_json::json!({
        "fine_tune_type": "lora",
        "num_layers": layers,
        "lora_parameters": {"rank": rank, "scale": 2.0, "dropout": 0.0, "keys": keys},
    });
    let f = &cfg.flavor;
    let mut tensors = BTreeMap::new();
    for i in f.num_layers - layers..f.num_layers {
        for k in keys {
            let (din, dout) = match k {
                "self_attn.q_proj" => (f.embed_dim, f.num_heads * f.head_dim),
                "self_attn.v_proj" => (f.embed_dim, f.num_kv_heads * f.head_dim),
                _ => (f.intermediate_dim, f.embed_dim),
            };
            for (leaf, shape, std) in [
                ("lora_a", [din, rank], 1.0 / (din as f64).sqrt()),
                ("lora_b", [rank, dout], 0.5 / (rank as f64).sqrt()),
            ] {
                let name = format!("model.layers.{i}.{k}.{leaf}");
                let mut rng = SplitMix64(seed ^ fnv1a(&name));
                let v: Vec<f32> = (0..shape[0] * shape[1])
                    .map(|_| (rng.normal() * std) as f32)
                    .collect();
                tensors.insert(name, HostTensor::from_f32(shape.to_vec(), &v));
            }
        }
    }
    (config, tensors)
}

/// Writes the tiny Llama fixture to `dir` (HF layout: config.json, model.safetensors,
/// tokenizer.json) and its LoRA adapter to `dir/adapter/`.
pub fn write_llama_fixture(dir: &Path, seed: u64) -> Result<()> {
    let cfg = super::llama::LlamaConfig::tiny();
    std::fs::create_dir_all(dir.join("adapter"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    write_safetensors(&dir.join("model.safetensors"), &llama_weights(&cfg, seed))?;
    let mut config = cfg.to_json();
    config["fixture_seed"] = serde_json::json!(seed);
    config["fixture_version"] = serde_json::json!(FIXTURE_VERSION);
    crate::util::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    crate::util::write_atomic(
        &dir.join("tokenizer.json"),
        llama_tokenizer_json(cfg.vocab_size).as_bytes(),
    )?;
    let (acfg, atensors) = llama_adapter(&cfg, seed);
    write_safetensors(&dir.join("adapter").join("adapters.safetensors"), &atensors)?;
    crate::util::write_atomic(
        &dir.join("adapter").join("adapter_config.json"),
        serde_json::to_string_pretty(&acfg)?.as_bytes(),
    )?;
    Ok(())
}

/// The bundled Llama fixture (`tiny-llama` under [`fixtures_root`], made on first use or when stale);
/// returns its directory.
pub fn ensure_llama_fixture() -> Result<std::path::PathBuf> {
    let dir = fixtures_root()?.join("tiny-llama");
    // adapter_config.json is written last: its presence means the fixture is complete.
    ensure_fixture(
        dir,
        &Path::new("adapter").join("adapter_config.json"),
        "tiny Llama fixture",
        |d| write_llama_fixture(d, DEFAULT_SEED),
    )
}

/// Output level of the fixture codec: the last SEANet conv's weights are scaled so that the
/// decoded audio of typical codes has an RMS of about 0.2 (measured: see tests/mimi.rs).
pub const CODEC_OUTPUT_GAIN: f32 = 0.047;

/// Random weights of the Mimi of `cfg` (transformers names): He-style convs and projections,
/// LayerNorms near identity, layer scales 0.5, codebooks N(0, 1) stored as embed_sum /
/// cluster_usage with usage in [0.5, 2) (so the division matters). Any size: the benchmark
/// uses it for the full `kyutai/mimi` shape.
pub fn random_mimi_weights(cfg: &MimiConfig, seed: u64) -> BTreeMap<String, HostTensor> {
    let last_conv = {
        let dec = super::mimi::decoder_layers(cfg);
        match dec.last() {
            Some(super::mimi::SeanetLayer::Conv { conv, .. }) => {
                format!("{}.conv.weight", conv.name)
            }
            _ => String::new(),
        }
    };
    let mut out = BTreeMap::new();
    for (name, shape) in super::mimi::expected_tensors(cfg) {
        let mut rng = SplitMix64(seed ^ fnv1a(&format!("mimi/{name}")));
        let n: usize = shape.iter().product();
        let normal = |rng: &mut SplitMix64, std: f32| -> Vec<f32> {
            (0..n).map(|_| rng.normal() as f32 * std).collect()
        };
        let values: Vec<f32> = if name.ends_with("cluster_usage") {
            (0..n).map(|_| (0.5 + 1.5 * rng.uniform()) as f32).collect()
        } else if name.ends_with("embed_sum") {
            // Codebook vector = embed_sum / usage ~ N(0, 1): draw the vector, multiply by usage.
            let mut urng = SplitMix64(
                seed ^ fnv1a(&format!(
                    "mimi/{}",
                    name.replace("embed_sum", "cluster_usage")
                )),
            );
            let usage: Vec<f32> = (0..shape[0])
                .map(|_| (0.5 + 1.5 * urng.uniform()) as f32)
                .collect();
            let dim = shape[1];
            (0..n)
                .map(|i| rng.normal() as f32 * usage[i / dim])
                .collect()
        } else if name.ends_with("layer_scale.scale") {
            (0..n).map(|_| (0.5 + 0.05 * rng.normal()) as f32).collect()
        } else if name.contains("layernorm.weight") {
            (0..n).map(|_| (1.0 + 0.1 * rng.normal()) as f32).collect()
        } else if name.contains("layernorm.bias") || name.ends_with(".bias") {
            normal(&mut rng, 0.05)
        } else {
            // Weights: [out, in, k] convs, [in, out/g, k] transposed convs, [out, in] linears.
            let fan_in: usize =
                if name.starts_with("decoder.") && shape.len() == 3 && is_transposed(cfg, &name) {
                    shape[0] * shape[2] / 2
                } else {
                    shape[1..].iter().product()
                };
            let gain = if name == last_conv {
                CODEC_OUTPUT_GAIN
            } else {
                1.0
            };
            normal(&mut rng, gain * (2.0 / fan_in.max(1) as f32).sqrt())
        };
        out.insert(name, HostTensor::from_f32(shape, &values));
    }
    out
}

fn is_transposed(cfg: &MimiConfig, name: &str) -> bool {
    super::mimi::decoder_layers(cfg).iter().any(|l| {
        matches!(l, super::mimi::SeanetLayer::ConvTranspose { conv } if name == format!("{}.conv.weight", conv.name))
    })
}

/// Writes a deterministic tiny Mimi codec (`config.json` + `model.safetensors`, transformers
/// layout) to `dir`.
pub fn write_codec_fixture(dir: &Path, cfg: &MimiConfig, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_safetensors(
        &dir.join("model.safetensors"),
        &random_mimi_weights(cfg, seed),
    )?;
    let mut config = cfg.to_hf_json();
    config["fixture_seed"] = serde_json::json!(seed);
    config["fixture_version"] = serde_json::json!(FIXTURE_VERSION);
    crate::util::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::PromptTokenizer;

    #[test]
    fn fixtures_are_found_at_run_time_not_where_the_binary_was_built() {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path().join("proj");
        std::fs::create_dir_all(project.join("fixtures")).unwrap();
        std::fs::write(project.join("fixtures/gate.toml"), "").unwrap();
        let deep = project.join("runs/a/b");
        std::fs::create_dir_all(&deep).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let p = |x: &str| Some(std::path::PathBuf::from(x));
        // The variable wins, then the checkout around the current directory.
        assert_eq!(
            fixtures_root_from(p("/fx"), Some(deep.clone()), None, p("/home/u")).unwrap(),
            std::path::PathBuf::from("/fx")
        );
        assert_eq!(
            fixtures_root_from(None, Some(deep), p("/data"), p("/home/u")).unwrap(),
            project.join("fixtures")
        );
        // Outside a checkout: the user data directory.
        assert_eq!(
            fixtures_root_from(None, Some(elsewhere.clone()), p("/data"), p("/home/u")).unwrap(),
            std::path::PathBuf::from("/data/csm-parity/fixtures")
        );
        assert_eq!(
            fixtures_root_from(None, Some(elsewhere.clone()), None, p("/home/u")).unwrap(),
            std::path::PathBuf::from("/home/u/.local/share/csm-parity/fixtures")
        );
        let err = fixtures_root_from(None, Some(elsewhere), None, None).unwrap_err();
        assert!(format!("{err}").contains("CSM_PARITY_FIXTURES"), "{err}");
    }

    #[test]
    fn bf16_random_weights_are_the_f32_ones_rounded() {
        let cfg = CsmConfig::tiny();
        let f = random_weights(&cfg, 7);
        let b = random_weights_in(&cfg, 7, DType::BF16);
        assert_eq!(f.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, t) in &b {
            assert_eq!(t.dtype, DType::BF16, "{name}");
            assert_eq!(t.data.len(), t.numel() * 2, "{name}");
            let want: Vec<f32> = f[name]
                .to_f32()
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect();
            assert_eq!(t.to_f32(), want, "{name}");
        }
    }

    #[test]
    fn tokenizer_round_trips_and_fits_vocab() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, tokenizer_json(264)).unwrap();
        let tok = PromptTokenizer::from_file(&p).unwrap();
        let ids = tok.encode_segment(0, "the cat sat").unwrap();
        assert_eq!(ids.first(), Some(&261));
        assert_eq!(ids.last(), Some(&262));
        assert!(ids.iter().all(|&i| i < 264));
        assert!(
            ids.len() < "[0]the cat sat".len() + 2,
            "merges apply: {ids:?}"
        );
        assert_eq!(tok.decode(&ids).unwrap(), "[0]the cat sat");
    }

    #[test]
    fn fixture_is_byte_identical() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_fixture(a.path(), 7).unwrap();
        write_fixture(b.path(), 7).unwrap();
        for f in ["model.safetensors", "config.json", "tokenizer.json"] {
            assert_eq!(
                std::fs::read(a.path().join(f)).unwrap(),
                std::fs::read(b.path().join(f)).unwrap(),
                "{f}"
            );
        }
    }
}
