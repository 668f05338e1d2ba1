//! `inspect MODEL`: layout, architecture numbers, parameter count, dtype, and what is missing,
//! mis-shaped or extra — read from the safetensors headers alone (no weights loaded).
use crate::model::checkpoint::weight_files;
use crate::model::csm::expected_tensors;
use crate::model::csm::weights::original_to_hf_name;
use crate::model::CsmConfig;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub model: String,
    pub layout: String,
    pub config: serde_json::Value,
    pub parameters: usize,
    pub dtypes: BTreeMap<String, usize>,
    pub tensors: usize,
    pub missing: Vec<String>,
    pub misshaped: Vec<String>,
    pub extra: Vec<String>,
    pub ignored: Vec<String>,
    /// Tensors whose bytes are not (all) in the file: a truncated or inconsistent file.
    pub truncated: Vec<String>,
    pub ok: bool,
}

/// Bytes per element of a safetensors dtype (None: unknown dtype).
fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// (name → (dtype, shape)) from a safetensors header, and the tensors whose bytes the file does
/// not hold in full (data offsets past its end, or not matching dtype × shape).
#[allow(clippy::type_complexity)]
fn read_header(path: &Path) -> Result<(BTreeMap<String, (String, Vec<usize>)>, Vec<String>)> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let n = u64::from_le_bytes(n) as usize;
    if n > 100 << 20 {
        bail!(
            "{}: safetensors header of {n} bytes is implausible",
            path.display()
        );
    }
    let mut buf = vec![0u8; n];
    f.read_exact(&mut buf)
        .with_context(|| format!("{}: truncated header", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&buf)
        .with_context(|| format!("{}: header is not JSON", path.display()))?;
    let file_len = f
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    let data_len = file_len.saturating_sub(8 + n as u64);
    let mut bad = Vec::new();
    let mut out = BTreeMap::new();
    for (k, t) in v.as_object().into_iter().flatten() {
        if k == "__metadata__" {
            continue;
        }
        let dtype = t
            .get("dtype")
            .and_then(|d| d.as_str())
            .unwrap_or("?")
            .to_string();
        let shape: Vec<usize> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as usize)
                    .collect()
            })
            .unwrap_or_default();
        let offsets: Option<(u64, u64)> = t.get("data_offsets").and_then(|o| {
            let a = o.as_array()?;
            Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?))
        });
        let want = dtype_size(&dtype).and_then(|sz| {
            shape
                .iter()
                .try_fold(sz as u64, |acc: u64, &d| acc.checked_mul(d as u64))
        });
        match offsets {
            None => bad.push(format!("{}: {k}: no data_offsets", path.display())),
            Some((b, e)) if e > data_len => bad.push(format!(
                "{}: {k}: bytes {b}..{e} but the file holds {data_len} data bytes (truncated)",
                path.display()
            )),
            Some((b, e)) if e < b || want.is_some_and(|w| e - b != w) => bad.push(format!(
                "{}: {k}: {} data bytes, {dtype} × {shape:?} needs {}",
                path.display(),
                e.saturating_sub(b),
                want.unwrap_or(0)
            )),
            _ => {}
        }
        out.insert(k.clone(), (dtype, shape));
    }
    Ok((out, bad))
}

pub fn inspect(model: &Path) -> Result<Inspection> {
    let cfg = CsmConfig::from_file(&model.join("config.json"))?;
    let mut found = BTreeMap::new();
    let mut truncated = Vec::new();
    for file in weight_files(model)? {
        let (h, bad) = read_header(&file)?;
        found.extend(h);
        truncated.extend(bad);
    }
    let is_hf = found
        .keys()
        .filter(|k| k.starts_with("backbone_model.") || k.starts_with("depth_decoder."))
        .count()
        * 2
        > found.len();
    let expected: Vec<(String, Vec<usize>)> = expected_tensors(&cfg)
        .into_iter()
        .map(|(k, s)| (if is_hf { original_to_hf_name(&k) } else { k }, s))
        .collect();
    let mut ins = Inspection {
        model: model.display().to_string(),
        layout: if is_hf { "hf" } else { "original" }.into(),
        config: cfg.to_original_json(),
        parameters: 0,
        dtypes: BTreeMap::new(),
        tensors: 0,
        missing: vec![],
        misshaped: vec![],
        extra: vec![],
        ignored: vec![],
        truncated,
        ok: true,
    };
    for (name, shape) in &expected {
        match found.get(name) {
            None => ins.missing.push(format!("{name} {shape:?}")),
            Some((dtype, s)) => {
                if s != shape {
                    ins.misshaped
                        .push(format!("{name}: {s:?}, expected {shape:?}"));
                }
                let n: usize = s.iter().product();
                ins.parameters += n;
                ins.tensors += 1;
                *ins.dtypes.entry(dtype.clone()).or_default() += n;
            }
        }
    }
    let names: std::collections::HashSet<&String> = expected.iter().map(|(k, _)| k).collect();
    for k in found.keys().filter(|k| !names.contains(k)) {
        if is_hf
            && (k.starts_with("codec_model.") || k == "depth_decoder.model.embed_tokens.weight")
        {
            ins.ignored.push(k.clone());
        } else {
            ins.extra.push(k.clone());
        }
    }
    ins.ok = ins.missing.is_empty()
        && ins.misshaped.is_empty()
        && ins.extra.is_empty()
        && ins.truncated.is_empty();
    Ok(ins)
}

impl Inspection {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} — {} layout, {} tensors, {:.2} M parameters",
            self.model,
            self.layout,
            self.tensors,
            self.parameters as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "  audio: {} codebooks × {} codes; text vocab {}",
            c["audio_num_codebooks"], c["audio_vocab_size"], c["text_vocab_size"]
        );
        for part in ["backbone", "decoder"] {
            let f = &c[part];
            let _ = writeln!(
                s,
                "  {part:<8} {} layers, dim {}, {} heads / {} kv, mlp {}, eps {}, rope base {}, llama3 scaling {} (factor {}, low {}, high {}, ctx {})",
                f["num_layers"], f["embed_dim"], f["num_heads"], f["num_kv_heads"], f["intermediate_dim"], f["norm_eps"], f["rope_base"],
                if f["use_scaled_rope"] == true { "on" } else { "off" }, f["scale_factor"], f["low_freq_factor"], f["high_freq_factor"], f["old_context_len"]
            );
        }
        let dt: Vec<String> = self
            .dtypes
            .iter()
            .map(|(d, n)| format!("{d} ({:.2} M)", *n as f64 / 1e6))
            .collect();
        let _ = writeln!(s, "  dtype: {}", dt.join(", "));
        for (what, list) in [
            ("missing", &self.missing),
            ("mis-shaped", &self.misshaped),
            ("extra", &self.extra),
            ("incomplete data", &self.truncated),
        ] {
            if !list.is_empty() {
                let _ = writeln!(
                    s,
                    "  {what} ({}): {}",
                    list.len(),
                    list.iter().take(8).cloned().collect::<Vec<_>>().join("; ")
                );
            }
        }
        if !self.ignored.is_empty() {
            let _ = writeln!(
                s,
                "  ignored (not part of the generator): {} tensors",
                self.ignored.len()
            );
        }
        let _ = writeln!(
            s,
            "  {}",
            if self.ok {
                "complete: every tensor present with the expected shape and all its bytes"
            } else {
                "NOT loadable as is"
            }
        );
        s
    }
}
