//! Safetensors weight index: reads a checkpoint in either layout, validates every key, shape
//! and dtype against the config, and hands the backends host tensors under the original
//! (Sesame/torchtune) names, with transformers' q/k row permutation undone.
use super::config::CsmConfig;
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Element type of a host tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            _ => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

impl std::str::FromStr for DType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            other => bail!("unknown dtype {other:?} (expected f32, bf16 or f16)"),
        }
    }
}

/// The bytes of a host tensor: owned, or a range of a memory-mapped weight file. Weights read
/// from safetensors are never copied on the host: each backend copies a tensor once, into its
/// own library's memory, then [`TensorBytes::release`]s the mapped pages, so a loaded model is
/// resident once per library and not once more on the host (issue 16).
#[derive(Clone)]
pub enum TensorBytes {
    Owned(Vec<u8>),
    Mapped {
        map: Arc<memmap2::Mmap>,
        start: usize,
        len: usize,
    },
}

impl std::ops::Deref for TensorBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            TensorBytes::Owned(v) => v,
            TensorBytes::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }
}

impl From<Vec<u8>> for TensorBytes {
    fn from(v: Vec<u8>) -> Self {
        TensorBytes::Owned(v)
    }
}

impl PartialEq for TensorBytes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for TensorBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorBytes::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
            TensorBytes::Mapped { start, len, .. } => {
                write!(f, "Mapped({len} bytes at offset {start})")
            }
        }
    }
}

impl TensorBytes {
    /// Drops the mapped pages of this range from the process's resident set (no-op for owned
    /// bytes). The bytes stay readable: a later read faults them in again from the page cache.
    pub fn release(&self) {
        #[cfg(unix)]
        if let TensorBytes::Mapped { map, start, len } = self {
            // SAFETY: the map is read-only and file-backed (MAP_SHARED, PROT_READ): MADV_DONTNEED
            // only unmaps the pages from this process; their content, refetched from the file
            // on the next access, is unchanged.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, *start, *len)
            };
        }
    }
}

/// Element types a [`HostTensor`] can be viewed as without a copy.
pub trait HostElement: sealed::Sealed + Copy {
    const DTYPE: DType;
}
mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}
impl HostElement for f32 {
    const DTYPE: DType = DType::F32;
}
impl HostElement for half::f16 {
    const DTYPE: DType = DType::F16;
}
impl HostElement for half::bf16 {
    const DTYPE: DType = DType::BF16;
}

/// A tensor in host memory: little-endian bytes of `dtype`, row-major `shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: TensorBytes,
}

impl HostTensor {
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor {
            shape,
            dtype: DType::F32,
            data: data.into(),
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The elements as `&[T]` without a copy, when the bytes are aligned for `T` (`T` must be
    /// the 4- or 2-byte type of `self.dtype`; little-endian hosts only). `None`: use
    /// [`HostTensor::to_f32`].
    pub fn as_slice<T: HostElement>(&self) -> Option<&[T]> {
        if !cfg!(target_endian = "little") || T::DTYPE != self.dtype {
            return None;
        }
        // SAFETY: T is f32, f16 or bf16 (HostElement is sealed to them): plain old data, any
        // bit pattern valid; align_to only returns the aligned middle.
        match unsafe { self.data.align_to::<T>() } {
            ([], v, []) => Some(v),
            _ => None,
        }
    }
    /// Drops the mapped pages of this tensor from the resident set (see [`TensorBytes`]).
    pub fn release(&self) {
        self.data.release();
    }
    /// The values widened to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F16 => self
                .data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::BF16 => self
                .data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }
}

/// Which key naming a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Sesame's release: torchtune names, interleaved-pair RoPE.
    Original,
    /// transformers' `CsmForConditionalGeneration`: q/k rows permuted for split-half RoPE.
    Hf,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Original => "original",
            Layout::Hf => "hf",
        }
    }
}

impl std::str::FromStr for Layout {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "original" => Ok(Layout::Original),
            "hf" | "transformers" => Ok(Layout::Hf),
            other => bail!("unknown layout {other:?} (expected original or hf)"),
        }
    }
}

/// Every tensor CSM holds, under original names, with its shape.
pub fn expected_tensors(cfg: &CsmConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for (stack, f) in [("backbone", &cfg.backbone), ("decoder", &cfg.decoder)] {
        let (d, hd, m) = (f.embed_dim, f.head_dim, f.intermediate_dim);
        for i in 0..f.num_layers {
            let p = format!("{stack}.layers.{i}");
            out.push((format!("{p}.attn.q_proj.weight"), vec![f.num_heads * hd, d]));
            out.push((
                format!("{p}.attn.k_proj.weight"),
                vec![f.num_kv_heads * hd, d],
            ));
            out.push((
                format!("{p}.attn.v_proj.weight"),
                vec![f.num_kv_heads * hd, d],
            ));
            out.push((
                format!("{p}.attn.output_proj.weight"),
                vec![d, f.num_heads * hd],
            ));
            out.push((format!("{p}.sa_norm.scale"), vec![d]));
            out.push((format!("{p}.mlp_norm.scale"), vec![d]));
            out.push((format!("{p}.mlp.w1.weight"), vec![m, d]));
            out.push((format!("{p}.mlp.w2.weight"), vec![d, m]));
            out.push((format!("{p}.mlp.w3.weight"), vec![m, d]));
        }
        out.push((format!("{stack}.norm.scale"), vec![d]));
    }
    let (db, dd, v, c) = (
        cfg.backbone.embed_dim,
        cfg.decoder.embed_dim,
        cfg.audio_vocab_size,
        cfg.audio_num_codebooks,
    );
    out.push((
        "text_embeddings.weight".into(),
        vec![cfg.text_vocab_size, db],
    ));
    out.push(("audio_embeddings.weight".into(), vec![v * c, db]));
    out.push(("projection.weight".into(), vec![dd, db]));
    out.push(("codebook0_head.weight".into(), vec![v, db]));
    out.push(("audio_head".into(), vec![c - 1, dd, v]));
    out
}

/// Maps a transformers key to its original name; `Ok(None)` for keys that are known but not
/// used (the Mimi codec, the tied depth-decoder embedding).
fn hf_to_original(key: &str) -> Option<Option<String>> {
    const FIXED: &[(&str, &str)] = &[
        ("embed_text_tokens.weight", "text_embeddings.weight"),
        (
            "backbone_model.embed_tokens.embed_audio_tokens.weight",
            "audio_embeddings.weight",
        ),
        ("backbone_model.norm.weight", "backbone.norm.scale"),
        ("lm_head.weight", "codebook0_head.weight"),
        ("depth_decoder.model.norm.weight", "decoder.norm.scale"),
        (
            "depth_decoder.model.inputs_embeds_projector.weight",
            "projection.weight",
        ),
        ("depth_decoder.codebooks_head.weight", "audio_head"),
    ];
    if let Some((_, o)) = FIXED.iter().find(|(h, _)| *h == key) {
        return Some(Some(o.to_string()));
    }
    if key == "depth_decoder.model.embed_tokens.weight" || key.starts_with("codec_model.") {
        return Some(None);
    }
    let (stack, rest) = if let Some(r) = key.strip_prefix("backbone_model.layers.") {
        ("backbone", r)
    } else if let Some(r) = key.strip_prefix("depth_decoder.model.layers.") {
        ("decoder", r)
    } else {
        return None;
    };
    let (idx, leaf) = rest.split_once('.')?;
    idx.parse::<usize>().ok()?;
    let mapped = match leaf {
        "self_attn.q_proj.weight" => "attn.q_proj.weight",
        "self_attn.k_proj.weight" => "attn.k_proj.weight",
        "self_attn.v_proj.weight" => "attn.v_proj.weight",
        "self_attn.o_proj.weight" => "attn.output_proj.weight",
        "input_layernorm.weight" => "sa_norm.scale",
        "post_attention_layernorm.weight" => "mlp_norm.scale",
        "mlp.gate_proj.weight" => "mlp.w1.weight",
        "mlp.up_proj.weight" => "mlp.w3.weight",
        "mlp.down_proj.weight" => "mlp.w2.weight",
        _ => return None,
    };
    Some(Some(format!("{stack}.layers.{idx}.{mapped}")))
}

fn is_hf_key(key: &str) -> bool {
    key.starts_with("backbone_model.")
        || key.starts_with("depth_decoder.")
        || key.starts_with("codec_model.")
        || key == "embed_text_tokens.weight"
        || key == "lm_head.weight"
}

/// Undoes transformers' conversion permutation of q/k rows (split halves → interleaved pairs):
/// within each head, original row 2i is HF row i and original row 2i+1 is HF row i + hd/2.
fn unpermute_rows(t: &HostTensor, head_dim: usize) -> HostTensor {
    let row = t.shape[1] * t.dtype.size();
    let mut data = vec![0u8; t.data.len()];
    let rows = t.shape[0];
    for r in 0..rows {
        let (head, j) = (r / head_dim, r % head_dim);
        let src = head * head_dim
            + if j % 2 == 0 {
                j / 2
            } else {
                j / 2 + head_dim / 2
            };
        data[r * row..(r + 1) * row].copy_from_slice(&t.data[src * row..(src + 1) * row]);
    }
    HostTensor {
        shape: t.shape.clone(),
        dtype: t.dtype,
        data: data.into(),
    }
}

/// A validated checkpoint.
#[derive(Debug, Clone)]
pub struct CsmWeights {
    pub layout: Layout,
    /// Original names → tensors (always every name of [`expected_tensors`]).
    pub tensors: BTreeMap<String, HostTensor>,
    /// Keys in the files that the model does not use (e.g. `codec_model.*`).
    pub ignored: Vec<String>,
    /// sha256 over the weight files in order, hex.
    pub sha256: String,
    pub files: Vec<PathBuf>,
}

impl CsmWeights {
    pub fn get(&self, name: &str) -> &HostTensor {
        &self.tensors[name]
    }
    /// The element type most tensors are stored in.
    pub fn stored_dtype(&self) -> DType {
        let mut counts = BTreeMap::new();
        for t in self.tensors.values() {
            *counts.entry(t.dtype.name()).or_insert(0usize) += t.numel();
        }
        let top = counts.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d);
        top.and_then(|d| d.parse().ok()).unwrap_or(DType::F32)
    }
}

/// The safetensors files of a model directory: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`, or (a file path) that file.
pub fn weight_files(model: &Path) -> Result<Vec<PathBuf>> {
    if model.is_file() {
        return Ok(vec![model.to_path_buf()]);
    }
    let single = model.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = model.join("model.safetensors.index.json");
    if index.is_file() {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)
            .with_context(|| format!("{}: not valid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: no \"weight_map\" object", index.display()))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| model.join(f)).collect());
    }
    bail!(
        "{}: no model.safetensors or model.safetensors.index.json found",
        model.display()
    )
}

/// Named host tensors read from safetensors files, each with the file it came from.
pub type RawTensors = Vec<(String, HostTensor, PathBuf)>;

/// Reads every tensor of `files` (F32, BF16, F16); returns them with the sha256 over the files.
pub fn read_safetensors(files: &[PathBuf]) -> Result<(RawTensors, String)> {
    read_safetensors_where(files, &|_| true)
}

/// [`read_safetensors`], keeping only the tensors whose names pass `keep` (the others are
/// neither touched nor type-checked). The files are memory-mapped, not read: the tensors point
/// into the maps (see [`TensorBytes`]).
pub fn read_safetensors_where(
    files: &[PathBuf],
    keep: &dyn Fn(&str) -> bool,
) -> Result<(RawTensors, String)> {
    let mut raw: RawTensors = Vec::new();
    for file in files {
        let open = || {
            std::fs::File::open(file)
                .with_context(|| format!("cannot read weights {}", file.display()))
        };
        let handle = open()?;
        let len = handle
            .metadata()
            .with_context(|| format!("cannot read weights {}", file.display()))?
            .len();
        if len < 8 {
            bail!(
                "{}: not a valid safetensors file ({len} bytes; a safetensors file starts with an 8-byte header length)",
                file.display()
            );
        }
        // SAFETY: read-only map of a file the user handed us; like every safetensors reader that
        // maps (candle, transformers), this assumes the file is not truncated while in use.
        let map = Arc::new(
            unsafe { memmap2::Mmap::map(&handle) }
                .with_context(|| format!("cannot map weights {}", file.display()))?,
        );
        let st = SafeTensors::deserialize(&map[..])
            .with_context(|| format!("{}: not a valid safetensors file", file.display()))?;
        let mut names: Vec<_> = st
            .names()
            .into_iter()
            .filter(|n| keep(n))
            .map(String::from)
            .collect();
        names.sort();
        for name in names {
            let view = st.tensor(&name)?;
            let dtype = match view.dtype() {
                Dtype::F32 => DType::F32,
                Dtype::F16 => DType::F16,
                Dtype::BF16 => DType::BF16,
                other => bail!(
                    "{}: tensor {name:?} has dtype {other:?}; expected F32, BF16 or F16",
                    file.display()
                ),
            };
            let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
            let t = HostTensor {
                shape: view.shape().to_vec(),
                dtype,
                data: TensorBytes::Mapped {
                    map: map.clone(),
                    start,
                    len: view.data().len(),
                },
            };
            raw.push((name, t, file.clone()));
        }
    }
    Ok((raw, files_sha256(files)?))
}

/// sha256 over the bytes of `files` in order (hex), streamed from the files (page cache, not
/// this process's memory). Digests are cached per process by (paths, lengths, mtimes), so a
/// codec read from inside a CSM checkpoint does not hash the checkpoint a second time.
fn files_sha256(files: &[PathBuf]) -> Result<String> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Key = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;
    static CACHE: Mutex<Option<HashMap<Key, String>>> = Mutex::new(None);
    let mut key: Key = Vec::new();
    for file in files {
        let meta = std::fs::metadata(file)
            .with_context(|| format!("cannot read weights {}", file.display()))?;
        key.push((
            std::fs::canonicalize(file).unwrap_or_else(|_| file.clone()),
            meta.len(),
            meta.modified().ok(),
        ));
    }
    if let Some(d) = CACHE
        .lock()
        .ok()
        .and_then(|c| c.as_ref().and_then(|m| m.get(&key).cloned()))
    {
        return Ok(d);
    }
    let mut hasher = Sha256::new();
    for file in files {
        let mut f = std::fs::File::open(file)
            .with_context(|| format!("cannot read weights {}", file.display()))?;
        std::io::copy(&mut f, &mut hasher)
            .with_context(|| format!("cannot read weights {}", file.display()))?;
    }
    let digest = hex(&hasher.finalize());
    if let Ok(mut c) = CACHE.lock() {
        c.get_or_insert_with(HashMap::new)
            .insert(key, digest.clone());
    }
    Ok(digest)
}

/// Reads, maps and validates the checkpoint of `cfg` from `model` (a directory or a file).
pub fn load_csm(model: &Path, cfg: &CsmConfig) -> Result<CsmWeights> {
    let files = weight_files(model)?;
    let (raw, sha256) = read_safetensors(&files)?;
    map_and_validate(raw, cfg, sha256, files)
}

/// Maps named host tensors (any layout) to the original layout and validates them.
pub fn map_and_validate(
    raw: Vec<(String, HostTensor, PathBuf)>,
    cfg: &CsmConfig,
    sha256: String,
    files: Vec<PathBuf>,
) -> Result<CsmWeights> {
    let n_hf = raw.iter().filter(|(k, ..)| is_hf_key(k)).count();
    let layout = if n_hf * 2 > raw.len() {
        Layout::Hf
    } else {
        Layout::Original
    };
    let expected: BTreeMap<String, Vec<usize>> = expected_tensors(cfg).into_iter().collect();
    let mut tensors = BTreeMap::new();
    let mut ignored = Vec::new();
    for (key, t, file) in raw {
        let name = match layout {
            Layout::Original => {
                if is_hf_key(&key) {
                    bail!("{}: mixed layouts: key {key:?} is a transformers name in an original-layout checkpoint", file.display());
                }
                key.clone()
            }
            Layout::Hf => match hf_to_original(&key) {
                Some(Some(n)) => n,
                Some(None) => {
                    ignored.push(key);
                    continue;
                }
                None if !is_hf_key(&key) && expected.contains_key(&key) => bail!(
                    "{}: mixed layouts: key {key:?} is an original name in a transformers-layout checkpoint",
                    file.display()
                ),
                None => bail!("{}: unexpected key {key:?} (not part of the CSM architecture)", file.display()),
            },
        };
        let Some(shape) = expected.get(&name) else {
            bail!(
                "{}: unexpected key {key:?} (not part of the CSM architecture of this config)",
                file.display()
            );
        };
        if &t.shape != shape {
            bail!(
                "{}: tensor {key:?} has shape {:?}; the config expects {:?}",
                file.display(),
                t.shape,
                shape
            );
        }
        let t = if layout == Layout::Hf
            && (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight"))
        {
            let hd = if name.starts_with("backbone") {
                cfg.backbone.head_dim
            } else {
                cfg.decoder.head_dim
            };
            unpermute_rows(&t, hd)
        } else {
            t
        };
        if tensors.insert(name, t).is_some() {
            bail!("duplicate tensor {key:?} across weight files");
        }
    }
    if let Some((missing, shape)) = expected.iter().find(|(k, _)| !tensors.contains_key(*k)) {
        let shown = match layout {
            Layout::Original => missing.clone(),
            Layout::Hf => original_to_hf_name(missing),
        };
        bail!(
            "{}: missing tensor {shown:?} (shape {shape:?}, {} layout)",
            files
                .first()
                .map_or(String::new(), |f| f.display().to_string()),
            layout.name()
        );
    }
    Ok(CsmWeights {
        layout,
        tensors,
        ignored,
        sha256,
        files,
    })
}

/// The transformers name of an original key (for messages).
pub fn original_to_hf_name(name: &str) -> String {
    for cand in hf_candidates(name) {
        if hf_to_original(&cand) == Some(Some(name.to_string())) {
            return cand;
        }
    }
    name.to_string()
}

fn hf_candidates(name: &str) -> Vec<String> {
    let fixed = [
        "embed_text_tokens.weight",
        "backbone_model.embed_tokens.embed_audio_tokens.weight",
        "backbone_model.norm.weight",
        "lm_head.weight",
        "depth_decoder.model.norm.weight",
        "depth_decoder.model.inputs_embeds_projector.weight",
        "depth_decoder.codebooks_head.weight",
    ];
    let mut out: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    if let Some((stack, rest)) = name.split_once(".layers.") {
        let prefix = if stack == "backbone" {
            "backbone_model.layers."
        } else {
            "depth_decoder.model.layers."
        };
        let (idx, _) = rest.split_once('.').unwrap_or((rest, ""));
        for leaf in [
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            out.push(format!("{prefix}{idx}.{leaf}"));
        }
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes tensors as one safetensors file, atomically: streamed to a temporary sibling (no
/// serialized copy in memory, so a full-size checkpoint can be written), synced, then renamed.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
    use safetensors::tensor::TensorView;
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, t)| {
            let dt = match t.dtype {
                DType::F32 => Dtype::F32,
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
            };
            Ok((k.clone(), TensorView::new(dt, t.shape.clone(), &t.data)?))
        })
        .collect::<Result<_>>()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = crate::util::temp_sibling(path);
    let res = safetensors::serialize_to_file(views, None, &tmp)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(std::fs::File::open(&tmp)?.sync_all()?))
        .and_then(|()| Ok(std::fs::rename(&tmp, path)?));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_hf_permutation() {
        // HF permutation: view(heads, hd/2, 2, dim).transpose(1, 2): hf row i ← orig 2i, hf row hd/2+i ← orig 2i+1.
        let (heads, hd, dim) = (2, 4, 3);
        let orig: Vec<f32> = (0..heads * hd * dim).map(|x| x as f32).collect();
        let mut hf = vec![0f32; orig.len()];
        for h in 0..heads {
            for i in 0..hd / 2 {
                for c in 0..dim {
                    hf[(h * hd + i) * dim + c] = orig[(h * hd + 2 * i) * dim + c];
                    hf[(h * hd + hd / 2 + i) * dim + c] = orig[(h * hd + 2 * i + 1) * dim + c];
                }
            }
        }
        let t = HostTensor::from_f32(vec![heads * hd, dim], &hf);
        assert_eq!(unpermute_rows(&t, hd).to_f32(), orig);
    }

    #[test]
    fn tensors_are_mapped_not_copied_and_release_keeps_them_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let mut tensors = BTreeMap::new();
        let big: Vec<f32> = (0..300_000).map(|i| i as f32 * 0.5).collect();
        tensors.insert("a".to_string(), HostTensor::from_f32(vec![600, 500], &big));
        tensors.insert(
            "b".to_string(),
            HostTensor::from_f32(vec![3], &[1.0, -2.0, 3.5]),
        );
        write_safetensors(&path, &tensors).unwrap();
        let (raw, sha) = read_safetensors(std::slice::from_ref(&path)).unwrap();
        // The digest is sha256 over the file's bytes, as before the files were mapped.
        assert_eq!(sha, hex(&Sha256::digest(std::fs::read(&path).unwrap())));
        for (name, t, _) in &raw {
            assert!(
                matches!(t.data, TensorBytes::Mapped { .. }),
                "{name}: {:?}",
                t.data
            );
            assert_eq!(t, &tensors[name]);
            t.release();
            // Released pages come back from the file with the same bytes.
            assert_eq!(t.to_f32(), tensors[name].to_f32());
        }
        let a = &raw.iter().find(|(n, ..)| n == "a").unwrap().1;
        assert_eq!(a.as_slice::<f32>().map(|v| v[599]), Some(299.5));
        assert!(a.as_slice::<half::bf16>().is_none(), "wrong element type");
    }

    #[test]
    fn empty_or_short_weight_files_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        for bytes in [
            &b""[..],
            &b"\x10\0\0"[..],
            &b"\xff\xff\xff\xff\xff\xff\xff\x7f{}"[..],
        ] {
            std::fs::write(&path, bytes).unwrap();
            let e = format!(
                "{:#}",
                read_safetensors(std::slice::from_ref(&path)).unwrap_err()
            );
            assert!(e.contains("model.safetensors"), "{e}");
            assert!(e.contains("not a valid safetensors file"), "{e}");
        }
    }

    #[test]
    fn hf_names_round_trip() {
        for (name, _) in expected_tensors(&CsmConfig::tiny()) {
            let hf = original_to_hf_name(&name);
            assert_ne!(hf, name, "{name}");
            assert_eq!(hf_to_original(&hf), Some(Some(name)));
        }
    }
}
