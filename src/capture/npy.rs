//! Minimal .npy plumbing for streaming: a fixed-size header that can be rewritten in place once
//! the number of frames is known, a header parser for files written by numpy or by us, and
//! positioned reads of little-endian data.
//!
//! The .npy format (numpy's NEP 1) is: magic `\x93NUMPY`, version bytes, header length
//! (u16 little endian for version 1, u32 for 2 and 3), then an ASCII Python dict literal with
//! `descr`, `fortran_order` and `shape`, padded with spaces and ended by `\n`, then the data.
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Total bytes of the header we write (preamble + dict + padding); a multiple of 64 so the data
/// is aligned, large enough for any u64 frame count.
pub const HEADER_LEN: usize = 128;

/// Element types a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    F64,
    I32,
    I64,
}

impl Dtype {
    pub fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F16 => "<f2",
            Dtype::F64 => "<f8",
            Dtype::I32 => "<i4",
            Dtype::I64 => "<i8",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }

    fn from_descr(d: &str) -> Option<Dtype> {
        // `|` and `=` mean native/not applicable; we only run on little-endian hosts.
        let d = d.trim_start_matches(['<', '=', '|']);
        Some(match d {
            "f4" => Dtype::F32,
            "f2" => Dtype::F16,
            "f8" => Dtype::F64,
            "i4" => Dtype::I32,
            "i8" => Dtype::I64,
            _ => return None,
        })
    }
}

/// The dict of a fixed-size header for `dtype` and `shape`, padded to [`HEADER_LEN`].
pub fn header_bytes(dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        dtype.descr(),
        shape_s
    );
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    let dict_len = HEADER_LEN - 10;
    out.extend_from_slice(&(dict_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    assert!(out.len() < HEADER_LEN, "npy header too long for {shape:?}");
    out.resize(HEADER_LEN - 1, b' ');
    out.push(b'\n');
    out
}

/// Parsed header of an existing .npy file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte offset of the data.
    pub data_offset: u64,
}

impl NpyHeader {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Reads and checks the header of `path`.
pub fn read_header(path: &Path) -> Result<NpyHeader> {
    let mut f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    parse_header(&mut f).with_context(|| format!("{}: not a valid .npy file", path.display()))
}

fn parse_header(f: &mut File) -> Result<NpyHeader> {
    let mut pre = [0u8; 8];
    f.read_exact(&mut pre)
        .context("file shorter than the .npy magic")?;
    if &pre[..6] != b"\x93NUMPY" {
        bail!("missing .npy magic \\x93NUMPY");
    }
    let major = pre[6];
    let (hlen, pre_len) = match major {
        1 => {
            let mut b = [0u8; 2];
            f.read_exact(&mut b)?;
            (u16::from_le_bytes(b) as usize, 10)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            f.read_exact(&mut b)?;
            (u32::from_le_bytes(b) as usize, 12)
        }
        v => bail!("unsupported .npy version {v} (expected 1, 2 or 3)"),
    };
    if hlen > 1 << 20 {
        bail!("header length {hlen} is implausible");
    }
    let mut dict = vec![0u8; hlen];
    f.read_exact(&mut dict).context("truncated header")?;
    let dict = String::from_utf8_lossy(&dict).to_string();
    let descr = dict_value(&dict, "descr")
        .ok_or_else(|| anyhow::anyhow!("header has no 'descr': {dict:?}"))?;
    let descr = descr.trim().trim_matches(['\'', '"']);
    if descr.starts_with('>') {
        bail!("big-endian dtype {descr:?} (expected little endian, e.g. '<f4')");
    }
    let dtype = Dtype::from_descr(descr).ok_or_else(|| {
        anyhow::anyhow!("dtype {descr:?} is not one of '<f4', '<f2', '<f8', '<i4', '<i8'")
    })?;
    let fortran = dict_value(&dict, "fortran_order").unwrap_or("False");
    if fortran.trim() != "False" {
        bail!("fortran_order is {fortran} (expected False: C order)");
    }
    let shape_s = dict_value(&dict, "shape")
        .ok_or_else(|| anyhow::anyhow!("header has no 'shape': {dict:?}"))?;
    let inner = shape_s.trim().trim_start_matches('(').trim_end_matches(')');
    let mut shape = Vec::new();
    for part in inner.split(',') {
        let p = part.trim().trim_end_matches('L');
        if p.is_empty() {
            continue;
        }
        shape.push(
            p.parse::<usize>()
                .with_context(|| format!("bad shape entry {p:?} in {shape_s:?}"))?,
        );
    }
    let len = f.metadata()?.len();
    let data_offset = (pre_len + hlen) as u64;
    let header = NpyHeader {
        dtype,
        shape,
        data_offset,
    };
    // Checked: a header (or a manifest it must match) claiming absurd sizes is an error, never
    // an overflow; every size derived from a shape is then bounded by the file's real length.
    let want = header
        .shape
        .iter()
        .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d as u64))
        .and_then(|b| b.checked_add(data_offset))
        .with_context(|| format!("shape {:?} is too large", header.shape))?;
    if len < want {
        bail!(
            "file is truncated: {len} bytes, expected {want} for shape {:?} {}",
            header.shape,
            dtype.descr()
        );
    }
    Ok(header)
}

/// The raw text of `key`'s value in a Python dict literal (`'key': value,`).
fn dict_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let pat1 = format!("'{key}'");
    let pat2 = format!("\"{key}\"");
    let start = dict
        .find(&pat1)
        .map(|i| i + pat1.len())
        .or_else(|| dict.find(&pat2).map(|i| i + pat2.len()))?;
    let rest = dict[start..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    if rest.starts_with('(') {
        let end = rest.find(')')?;
        Some(&rest[..=end])
    } else {
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(&rest[..end])
    }
}

/// A .npy file being streamed: a placeholder header, then data appended; `finish` rewrites the
/// header with the real leading dimension.
pub struct StreamingNpy {
    file: std::io::BufWriter<File>,
    dtype: Dtype,
    /// Shape without the leading (frames) dimension.
    inner: Vec<usize>,
    rows: usize,
}

impl StreamingNpy {
    pub fn create(path: &Path, dtype: Dtype, inner: &[usize]) -> Result<Self> {
        let f = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut shape = vec![0];
        shape.extend_from_slice(inner);
        file.write_all(&header_bytes(dtype, &shape))?;
        Ok(StreamingNpy {
            file,
            dtype,
            inner: inner.to_vec(),
            rows: 0,
        })
    }

    fn row_elems(&self) -> usize {
        self.inner.iter().product()
    }

    /// Appends one row, each value encoded by `le` into `N` little-endian bytes.
    fn push_le<T: Copy, const N: usize>(
        &mut self,
        dtype: Dtype,
        v: &[T],
        le: impl Fn(T) -> [u8; N],
    ) -> Result<()> {
        debug_assert_eq!(self.dtype, dtype);
        debug_assert_eq!(v.len(), self.row_elems());
        let mut buf = Vec::with_capacity(v.len() * N);
        for &x in v {
            buf.extend_from_slice(&le(x));
        }
        self.file.write_all(&buf)?;
        self.rows += 1;
        Ok(())
    }

    pub fn push_f32(&mut self, v: &[f32]) -> Result<()> {
        self.push_le(Dtype::F32, v, f32::to_le_bytes)
    }

    pub fn push_f16(&mut self, v: &[f32]) -> Result<()> {
        self.push_le(Dtype::F16, v, |x| half::f16::from_f32(x).to_le_bytes())
    }

    pub fn push_i32(&mut self, v: &[i32]) -> Result<()> {
        self.push_le(Dtype::I32, v, i32::to_le_bytes)
    }

    pub fn push_f64(&mut self, v: &[f64]) -> Result<()> {
        self.push_le(Dtype::F64, v, f64::to_le_bytes)
    }

    /// Rewrites the header with the final row count and fsyncs.
    pub fn finish(self) -> Result<()> {
        let mut f = self.file.into_inner().map_err(|e| e.into_error())?;
        let mut shape = vec![self.rows];
        shape.extend_from_slice(&self.inner);
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&header_bytes(self.dtype, &shape))?;
        f.sync_all()?;
        Ok(())
    }
}

/// Reads `n` elements of `dtype` at element index `start` (after the header) as f32.
pub fn read_f32_at(
    file: &File,
    header: &NpyHeader,
    start: usize,
    out: &mut [f32],
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let n = out.len();
    let size = header.dtype.size();
    let off = header.data_offset + (start * size) as u64;
    match header.dtype {
        Dtype::F32 => {
            // SAFETY: every bit pattern is a valid f32 and the slice covers exactly `out`.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, n * 4) };
            file.read_exact_at(bytes, off)?;
            if cfg!(target_endian = "big") {
                for x in out.iter_mut() {
                    *x = f32::from_bits(x.to_bits().swap_bytes());
                }
            }
        }
        Dtype::F16 => {
            scratch.resize(n * 2, 0);
            file.read_exact_at(scratch, off)?;
            for (o, b) in out.iter_mut().zip(scratch.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::F64 => {
            scratch.resize(n * 8, 0);
            file.read_exact_at(scratch, off)?;
            for (o, b) in out.iter_mut().zip(scratch.chunks_exact(8)) {
                *o = f64::from_le_bytes(b.try_into().unwrap()) as f32;
            }
        }
        Dtype::I32 | Dtype::I64 => bail!("expected a float array, found {}", header.dtype.descr()),
    }
    Ok(())
}

/// Reads `n` integer elements at element index `start` as i32 (i64 values must fit).
pub fn read_i32_at(
    file: &File,
    header: &NpyHeader,
    start: usize,
    out: &mut [i32],
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let n = out.len();
    let off = header.data_offset + (start * header.dtype.size()) as u64;
    match header.dtype {
        Dtype::I32 => {
            scratch.resize(n * 4, 0);
            file.read_exact_at(scratch, off)?;
            for (o, b) in out.iter_mut().zip(scratch.chunks_exact(4)) {
                *o = i32::from_le_bytes(b.try_into().unwrap());
            }
        }
        Dtype::I64 => {
            scratch.resize(n * 8, 0);
            file.read_exact_at(scratch, off)?;
            for (o, b) in out.iter_mut().zip(scratch.chunks_exact(8)) {
                let v = i64::from_le_bytes(b.try_into().unwrap());
                *o = i32::try_from(v)
                    .map_err(|_| anyhow::anyhow!("token {v} does not fit in i32"))?;
            }
        }
        d => bail!("expected an integer array, found {}", d.descr()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_fixed_size_and_parses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let mut w = StreamingNpy::create(&p, Dtype::F32, &[2, 3]).unwrap();
        w.push_f32(&[1., 2., 3., 4., 5., 6.]).unwrap();
        w.push_f32(&[7., 8., 9., 10., 11., 12.]).unwrap();
        w.finish().unwrap();
        let h = read_header(&p).unwrap();
        assert_eq!(h.shape, vec![2, 2, 3]);
        assert_eq!(h.data_offset, HEADER_LEN as u64);
        // npyz agrees on shape and values.
        let bytes = std::fs::read(&p).unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        assert_eq!(npy.shape(), &[2, 2, 3]);
        let v: Vec<f32> = npy.into_vec().unwrap();
        assert_eq!(v[7], 8.0);
        assert_eq!(
            header_bytes(Dtype::I64, &[usize::MAX, 32, 2051]).len(),
            HEADER_LEN
        );
    }

    #[test]
    fn dict_values() {
        let d = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }";
        assert_eq!(dict_value(d, "descr"), Some("'<f4'"));
        assert_eq!(dict_value(d, "shape"), Some("(3,)"));
        assert_eq!(dict_value(d, "fortran_order"), Some("False"));
    }
}
