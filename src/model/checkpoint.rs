//! Safetensors checkpoint files: which files a model directory holds, reading them as
//! memory-mapped host tensors (with a streamed sha256), and writing them atomically.
use super::tensor::{DType, HostTensor, TensorBytes};
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
}
