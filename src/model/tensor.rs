//! Host-side values shared by every model family: the compute dtype, host tensors (owned or
//! memory-mapped bytes) and the backbone input frames.
use anyhow::{bail, Result};
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

/// Backbone input positions: `len` rows of `width` = codebooks + 1 columns (text last), with a
/// 0/1 mask of the same shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Frames {
    pub width: usize,
    pub tokens: Vec<i64>,
    pub mask: Vec<f32>,
}

impl Frames {
    pub fn len(&self) -> usize {
        self.tokens.len() / self.width
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// One text frame per id (only the text column unmasked).
    pub fn text(ids: &[u32], codebooks: usize, text_vocab: usize) -> Result<Self> {
        let width = codebooks + 1;
        let mut tokens = vec![0i64; ids.len() * width];
        let mut mask = vec![0f32; ids.len() * width];
        for (i, &id) in ids.iter().enumerate() {
            if id as usize >= text_vocab {
                bail!("text token id {id} is outside the model's text vocabulary of {text_vocab}");
            }
            tokens[i * width + codebooks] = id as i64;
            mask[i * width + codebooks] = 1.0;
        }
        Ok(Frames {
            width,
            tokens,
            mask,
        })
    }

    /// One audio frame (all codebooks unmasked, text column masked out).
    pub fn audio(codes: &[i32], audio_vocab: usize) -> Result<Self> {
        let width = codes.len() + 1;
        let mut tokens = vec![0i64; width];
        let mut mask = vec![0f32; width];
        for (c, &code) in codes.iter().enumerate() {
            if code < 0 || code as usize >= audio_vocab {
                bail!("audio token {code} (codebook {c}) is outside the audio vocabulary of {audio_vocab}");
            }
            tokens[c] = code as i64;
            mask[c] = 1.0;
        }
        Ok(Frames {
            width,
            tokens,
            mask,
        })
    }

    /// Plain LM positions: one row of width 2 per token (column 0 the token, column 1 unused
    /// and masked), the form [`crate::backend::Backend`] takes for a model with one codebook.
    pub fn lm(ids: &[u32], vocab: usize) -> Result<Self> {
        let codes: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let mut out = Frames {
            width: 2,
            tokens: vec![],
            mask: vec![],
        };
        for &c in &codes {
            out.extend(&Frames::audio(&[c], vocab)?);
        }
        Ok(out)
    }

    /// Appends `other`'s rows.
    pub fn extend(&mut self, other: &Frames) {
        assert_eq!(self.width, other.width);
        self.tokens.extend_from_slice(&other.tokens);
        self.mask.extend_from_slice(&other.mask);
    }
}
