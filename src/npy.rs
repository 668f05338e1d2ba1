//! The crate's .npy plumbing (numpy's NEP 1), reading and writing:
//! - one reader: [`NpyFile::open`] parses and checks a header (format version 1, 2 or 3; C or
//!   Fortran order; little or big endian) and [`NpyFile::read`] loads the whole array as an
//!   [`ndarray::ArrayD`] in logical (C) order, converted to f32 or f64; [`read_header`] and the
//!   positioned reads ([`read_f32_at`], [`read_i32_at`]) stream C-order little-endian files
//!   (a run's logits) a frame at a time;
//! - one writer: [`StreamingNpy`] appends rows after a fixed-size header that `finish`
//!   rewrites once the row count is known, either in place (inside a run's `.partial`
//!   directory) or through a temp sibling renamed into place ([`StreamingNpy::create_atomic`]).
//!
//! The format is: magic `\x93NUMPY`, version bytes, header length (u16 little endian for
//! version 1, u32 for 2 and 3), then an ASCII Python dict literal with `descr`, `fortran_order`
//! and `shape`, padded with spaces and ended by `\n`, then the data.
//!
//! Low floor: imports nothing of the crate but `util`.
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Total bytes of the header we write (preamble + dict + padding); a multiple of 64 so the data
/// is aligned, large enough for any u64 frame count.
pub const HEADER_LEN: usize = 128;

/// Element types read and written here (a run uses all but `U32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    F64,
    I32,
    I64,
    U32,
}

impl Dtype {
    pub fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F16 => "<f2",
            Dtype::F64 => "<f8",
            Dtype::I32 => "<i4",
            Dtype::I64 => "<i8",
            Dtype::U32 => "<u4",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }

    pub fn is_integer(self) -> bool {
        matches!(self, Dtype::I32 | Dtype::I64 | Dtype::U32)
    }

    fn from_descr(d: &str) -> Option<Dtype> {
        // `|` and `=` mean native/not applicable; we only run on little-endian hosts. The
        // byte order (`>`) is the header's business.
        let d = d.trim_start_matches(['<', '>', '=', '|']);
        Some(match d {
            "f4" => Dtype::F32,
            "f2" => Dtype::F16,
            "f8" => Dtype::F64,
            "i4" => Dtype::I32,
            "i8" => Dtype::I64,
            "u4" => Dtype::U32,
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
    /// `fortran_order: True`: the data is column-major (the first index varies fastest).
    pub fortran_order: bool,
    /// The data is big-endian (`descr` starts with `>`).
    pub big_endian: bool,
}

impl NpyHeader {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Reads and checks the header of `path`, a file to be read in place by [`read_f32_at`] and
/// [`read_i32_at`]: it must be little-endian and in C order (as every array of a run is).
pub fn read_header(path: &Path) -> Result<NpyHeader> {
    let mut f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    (|| {
        let h = parse_header(&mut f)?;
        if h.big_endian {
            bail!(
                "big-endian dtype '>{}' (expected little endian, e.g. '<f4')",
                &h.dtype.descr()[1..]
            );
        }
        if h.fortran_order {
            bail!("fortran_order is True (expected False: C order)");
        }
        Ok(h)
    })()
    .with_context(|| format!("{}: not a valid .npy file", path.display()))
}

/// Conversion of a stored element into the type an array is read as ([`NpyFile::read`]).
pub trait Element: Copy + 'static {
    fn from_f16(x: half::f16) -> Self;
    fn from_f32(x: f32) -> Self;
    fn from_f64(x: f64) -> Self;
    fn from_i32(x: i32) -> Self;
    fn from_i64(x: i64) -> Self;
    fn from_u32(x: u32) -> Self;
}

impl Element for f64 {
    fn from_f16(x: half::f16) -> Self {
        x.to_f64()
    }
    fn from_f32(x: f32) -> Self {
        f64::from(x)
    }
    fn from_f64(x: f64) -> Self {
        x
    }
    fn from_i32(x: i32) -> Self {
        f64::from(x)
    }
    fn from_i64(x: i64) -> Self {
        x as f64
    }
    fn from_u32(x: u32) -> Self {
        f64::from(x)
    }
}

impl Element for f32 {
    fn from_f16(x: half::f16) -> Self {
        x.to_f32()
    }
    fn from_f32(x: f32) -> Self {
        x
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn from_i32(x: i32) -> Self {
        x as f32
    }
    fn from_i64(x: i64) -> Self {
        x as f32
    }
    fn from_u32(x: u32) -> Self {
        x as f32
    }
}

/// An opened .npy file whose header was parsed and checked against the file's length (a
/// truncated array is named as such before anything is read).
#[derive(Debug)]
pub struct NpyFile {
    path: PathBuf,
    file: File,
    pub header: NpyHeader,
}

impl NpyFile {
    /// Opens `path` and parses its header: any format version, C or Fortran order, either byte
    /// order. Every error names the file.
    pub fn open(path: &Path) -> Result<NpyFile> {
        let mut file =
            File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let header = parse_header(&mut file)
            .with_context(|| format!("{}: not a valid .npy file", path.display()))?;
        Ok(NpyFile {
            path: path.to_path_buf(),
            file,
            header,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.header.shape
    }

    pub fn dtype(&self) -> Dtype {
        self.header.dtype
    }

    /// The whole array, converted to `T`, in logical (C, row-major) order and standard layout
    /// whatever the file's order: `as_slice` gives the values row by row.
    pub fn read<T: Element>(self) -> Result<ndarray::ArrayD<T>> {
        let h = &self.header;
        let ctx = || format!("{}: cannot read the array", self.path.display());
        let n = h.elements();
        let mut bytes = vec![0u8; n * h.dtype.size()];
        self.file
            .read_exact_at(&mut bytes, h.data_offset)
            .with_context(ctx)?;
        let values = decode::<T>(h.dtype, h.big_endian, &bytes);
        let shape = ndarray::IxDyn(&h.shape);
        let array = if h.fortran_order {
            // numpy writes a transposed array so; every reader here indexes row-major.
            use ndarray::ShapeBuilder;
            let f = ndarray::ArrayD::from_shape_vec(shape.clone().f(), values).with_context(ctx)?;
            ndarray::ArrayD::from_shape_vec(shape, f.iter().copied().collect())
        } else {
            ndarray::ArrayD::from_shape_vec(shape, values)
        };
        array.with_context(ctx)
    }
}

/// Reads the whole array at `path` ([`NpyFile::read`]), with the dtype it was stored as.
pub fn read_array<T: Element>(path: &Path) -> Result<(ndarray::ArrayD<T>, Dtype)> {
    let f = NpyFile::open(path)?;
    let dtype = f.dtype();
    Ok((f.read()?, dtype))
}

/// Decodes `bytes` holding elements of `dtype` (little- or big-endian).
fn decode<T: Element>(dtype: Dtype, big: bool, bytes: &[u8]) -> Vec<T> {
    fn each<T, const N: usize>(bytes: &[u8], big: bool, f: impl Fn([u8; N]) -> T) -> Vec<T> {
        bytes
            .chunks_exact(N)
            .map(|b| {
                let mut a: [u8; N] = b.try_into().unwrap();
                if big {
                    a.reverse();
                }
                f(a)
            })
            .collect()
    }
    match dtype {
        Dtype::F16 => each(bytes, big, |b| T::from_f16(half::f16::from_le_bytes(b))),
        Dtype::F32 => each(bytes, big, |b| T::from_f32(f32::from_le_bytes(b))),
        Dtype::F64 => each(bytes, big, |b| T::from_f64(f64::from_le_bytes(b))),
        Dtype::I32 => each(bytes, big, |b| T::from_i32(i32::from_le_bytes(b))),
        Dtype::I64 => each(bytes, big, |b| T::from_i64(i64::from_le_bytes(b))),
        Dtype::U32 => each(bytes, big, |b| T::from_u32(u32::from_le_bytes(b))),
    }
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
    let big_endian = descr.starts_with('>');
    let dtype = Dtype::from_descr(descr).ok_or_else(|| {
        anyhow::anyhow!("dtype {descr:?} is not one of '<f4', '<f2', '<f8', '<i4', '<i8', '<u4'")
    })?;
    let fortran = dict_value(&dict, "fortran_order").unwrap_or("False");
    let fortran_order = match fortran.trim() {
        "False" => false,
        "True" => true,
        other => bail!("fortran_order is {other} (expected True or False)"),
    };
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
        fortran_order,
        big_endian,
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

/// A .npy file being streamed: a placeholder header, then rows appended; `finish` rewrites the
/// header with the real leading dimension and fsyncs.
///
/// [`StreamingNpy::create`] writes the file in place (inside a run's `.partial` directory, which
/// is renamed as a whole); [`StreamingNpy::create_atomic`] writes a temp sibling that `finish`
/// renames into place, and that is removed if the writer is dropped unfinished.
pub struct StreamingNpy {
    /// `None` once finished.
    file: Option<std::io::BufWriter<File>>,
    dtype: Dtype,
    /// Shape without the leading (rows) dimension.
    inner: Vec<usize>,
    rows: usize,
    /// (temp file, final path) of an atomic writer.
    atomic: Option<(PathBuf, PathBuf)>,
}

impl StreamingNpy {
    pub fn create(path: &Path, dtype: Dtype, inner: &[usize]) -> Result<Self> {
        Self::start(path, dtype, inner, None)
    }

    /// Like [`StreamingNpy::create`], through a temp sibling of `path`: readers never see half
    /// a file.
    pub fn create_atomic(path: &Path, dtype: Dtype, inner: &[usize]) -> Result<Self> {
        let tmp = crate::util::temp_sibling(path);
        Self::start(&tmp, dtype, inner, Some(path.to_path_buf()))
    }

    fn start(
        path: &Path,
        dtype: Dtype,
        inner: &[usize],
        rename_to: Option<PathBuf>,
    ) -> Result<Self> {
        let f = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
        let mut w = StreamingNpy {
            file: Some(std::io::BufWriter::with_capacity(1 << 20, f)),
            dtype,
            inner: inner.to_vec(),
            rows: 0,
            atomic: rename_to.map(|p| (path.to_path_buf(), p)),
        };
        let mut shape = vec![0];
        shape.extend_from_slice(inner);
        w.file
            .as_mut()
            .unwrap()
            .write_all(&header_bytes(dtype, &shape))
            .with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(w)
    }

    fn row_elems(&self) -> usize {
        self.inner.iter().product()
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends whole rows (`v.len()` a multiple of the row size; for a 1-D array, any number of
    /// elements), each value encoded by `le` into `N` little-endian bytes.
    fn push_le<T: Copy, const N: usize>(
        &mut self,
        dtype: Dtype,
        v: &[T],
        le: impl Fn(T) -> [u8; N],
    ) -> Result<()> {
        debug_assert_eq!(self.dtype, dtype);
        let row = self.row_elems();
        debug_assert!(row > 0 && v.len().is_multiple_of(row));
        let mut buf = Vec::with_capacity(v.len() * N);
        for &x in v {
            buf.extend_from_slice(&le(x));
        }
        self.file
            .as_mut()
            .expect("npy writer already finished")
            .write_all(&buf)?;
        self.rows += v.len() / row.max(1);
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

    /// Rewrites the header with the final row count and fsyncs (and, for an atomic writer,
    /// renames the temp file into place).
    pub fn finish(mut self) -> Result<()> {
        let file = self.file.take().expect("npy writer already finished");
        let atomic = self.atomic.take();
        let res = (|| -> Result<()> {
            let mut f = file.into_inner().map_err(|e| e.into_error())?;
            let mut shape = vec![self.rows];
            shape.extend_from_slice(&self.inner);
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&header_bytes(self.dtype, &shape))?;
            f.sync_all()?;
            if let Some((tmp, path)) = &atomic {
                std::fs::rename(tmp, path)
                    .with_context(|| format!("{}: cannot rename the temp file", path.display()))?;
            }
            Ok(())
        })();
        if res.is_err() {
            if let Some((tmp, _)) = &atomic {
                let _ = std::fs::remove_file(tmp);
            }
        }
        res
    }
}

impl Drop for StreamingNpy {
    fn drop(&mut self) {
        if let Some((tmp, _)) = self.atomic.take() {
            self.file.take();
            let _ = std::fs::remove_file(tmp);
        }
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
        Dtype::I32 | Dtype::I64 | Dtype::U32 => {
            bail!("expected a float array, found {}", header.dtype.descr())
        }
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

    /// A version-1 .npy with the header dict `dict` and the raw `data`.
    fn npy_bytes(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut h = dict.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(data);
        b
    }

    fn i32_le(v: &[i32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn read_f64(p: &Path) -> (Vec<usize>, Vec<f64>) {
        let (a, _) = read_array::<f64>(p).unwrap();
        (a.shape().to_vec(), a.as_slice().unwrap().to_vec())
    }

    #[test]
    fn fortran_order_arrays_are_read_in_c_order() {
        let dir = tempfile::tempdir().unwrap();
        // a = [[0, 1, 2], [3, 4, 5]] stored column by column (numpy's `a.T.copy().T`).
        let f2 = dir.path().join("f2.npy");
        std::fs::write(
            &f2,
            npy_bytes(
                "{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3), }",
                &i32_le(&[0, 3, 1, 4, 2, 5]),
            ),
        )
        .unwrap();
        let (shape, v) = read_f64(&f2);
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(v, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        // Streamed (positioned) reads refuse it: they index the file row-major.
        let e = format!("{:#}", read_header(&f2).unwrap_err());
        assert!(e.contains("f2.npy") && e.contains("C order"), "{e}");
        // The same array in C order reads the same.
        let c2 = dir.path().join("c2.npy");
        std::fs::write(
            &c2,
            npy_bytes(
                "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }",
                &i32_le(&[0, 1, 2, 3, 4, 5]),
            ),
        )
        .unwrap();
        assert_eq!(read_f64(&c2), (shape, v));
        // Three dimensions: b[i, j, k] = 100 i + 10 j + k, shape (2, 3, 2), column-major.
        let mut data = vec![];
        for k in 0..2 {
            for j in 0..3 {
                for i in 0..2 {
                    data.push(100 * i + 10 * j + k);
                }
            }
        }
        let f3 = dir.path().join("f3.npy");
        std::fs::write(
            &f3,
            npy_bytes(
                "{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3, 2), }",
                &i32_le(&data),
            ),
        )
        .unwrap();
        let (shape, v) = read_f64(&f3);
        assert_eq!(shape, vec![2, 3, 2]);
        let want: Vec<f64> = (0..2)
            .flat_map(|i| {
                (0..3).flat_map(move |j| (0..2).map(move |k| (100 * i + 10 * j + k) as f64))
            })
            .collect();
        assert_eq!(v, want);
    }

    #[test]
    fn dtypes_and_byte_orders_convert() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let be: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        std::fs::write(
            &p,
            npy_bytes(
                "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
                &be,
            ),
        )
        .unwrap();
        let (a, dt) = read_array::<f32>(&p).unwrap();
        assert_eq!(
            (a.as_slice().unwrap(), dt),
            (&[1.5f32, -2.0][..], Dtype::F32)
        );
        assert!(format!("{:#}", read_header(&p).unwrap_err()).contains("big-endian"));
        let u: Vec<u8> = [7u32, u32::MAX]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        std::fs::write(
            &p,
            npy_bytes(
                "{'descr': '<u4', 'fortran_order': False, 'shape': (2,), }",
                &u,
            ),
        )
        .unwrap();
        let (a, dt) = read_array::<f64>(&p).unwrap();
        assert!(dt.is_integer());
        assert_eq!(a.as_slice().unwrap(), &[7.0, u32::MAX as f64][..]);
        // Truncated data is named as such.
        std::fs::write(
            &p,
            npy_bytes(
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }",
                &[0; 16],
            ),
        )
        .unwrap();
        let e = format!("{:#}", read_array::<f64>(&p).unwrap_err());
        assert!(e.contains("x.npy") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn atomic_writer_renames_on_finish_and_cleans_up_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("codes.npy");
        let mut w = StreamingNpy::create_atomic(&p, Dtype::I32, &[2]).unwrap();
        w.push_i32(&[1, 2, 3, 4]).unwrap();
        assert_eq!(w.rows(), 2);
        assert!(!p.exists());
        w.finish().unwrap();
        let (a, dt) = read_array::<f64>(&p).unwrap();
        assert_eq!((a.shape(), dt), (&[2, 2][..], Dtype::I32));
        assert_eq!(a.as_slice().unwrap(), &[1.0, 2.0, 3.0, 4.0][..]);
        // 1-D: any number of elements per push.
        let q = dir.path().join("wave.npy");
        let mut w = StreamingNpy::create_atomic(&q, Dtype::F32, &[]).unwrap();
        w.push_f32(&[0.5, 0.25, 0.125]).unwrap();
        w.push_f32(&[1.0]).unwrap();
        w.finish().unwrap();
        assert_eq!(read_header(&q).unwrap().shape, vec![4]);
        // Dropped unfinished: nothing left behind.
        let r = dir.path().join("gone.npy");
        let mut w = StreamingNpy::create_atomic(&r, Dtype::F32, &[]).unwrap();
        w.push_f32(&[1.0]).unwrap();
        drop(w);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn the_mimi_case_codes_read_as_numpy_sees_them() {
        // codes.npy of the shared Mimi case is stored fortran_order; its rows are frames.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/conformance/mimi-tiny-transformers");
        let (shape, v) = read_f64(&dir.join("codes.npy"));
        assert_eq!(shape, vec![20, 8]);
        // numpy: list(np.load("codes.npy")[0])
        let first_row = [1880.0, 1906.0, 1561.0, 1012.0, 1006.0, 1280.0, 8.0, 1239.0];
        assert_eq!(&v[..8], &first_row[..]);
    }

    #[test]
    fn dict_values() {
        let d = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }";
        assert_eq!(dict_value(d, "descr"), Some("'<f4'"));
        assert_eq!(dict_value(d, "shape"), Some("(3,)"));
        assert_eq!(dict_value(d, "fortran_order"), Some("False"));
    }
}
