//! `csm-parity noise`: the shared-noise uniforms of a run as one `.npy` file `[F, C, V]` f32,
//! so a pipeline outside the harness can draw exactly the same noise (docs/shared-noise.md).
use super::SharedNoise;
use crate::npy::{self, Dtype, StreamingNpy};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// What `noise` writes: frames × codebooks × vocab uniforms for `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseSpec {
    pub seed: u64,
    pub frames: usize,
    pub codebooks: usize,
    pub vocab: usize,
}

impl NoiseSpec {
    /// Checks the sizes (each ≥ 1, the byte count fits in memory arithmetic).
    pub fn check(&self) -> Result<()> {
        for (flag, v) in [
            ("--frames", self.frames),
            ("--codebooks", self.codebooks),
            ("--vocab", self.vocab),
        ] {
            if v == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        self.frames
            .checked_mul(self.codebooks)
            .and_then(|n| n.checked_mul(self.vocab))
            .and_then(|n| n.checked_mul(4))
            .with_context(|| {
                format!(
                    "--frames {} × --codebooks {} × --vocab {} is too large",
                    self.frames, self.codebooks, self.vocab
                )
            })?;
        Ok(())
    }

    /// Bytes of array data.
    pub fn data_bytes(&self) -> u64 {
        (self.frames * self.codebooks * self.vocab * 4) as u64
    }
}

/// True when every value of `row` lies on the generator's grid: `(k + ½) / 2^23` for
/// k in 0 … 2^23 − 1 (so strictly inside (0, 1)).
fn on_grid(row: &[f32]) -> bool {
    const SCALE: f64 = 8_388_608.0;
    row.iter().all(|&u| {
        let y = u as f64 * SCALE;
        y > 0.0 && y < SCALE && (y - 0.5).fract() == 0.0
    })
}

/// Whether `path` is a noise file this command wrote: an f32 `.npy` of shape `[F, C, V]` whose
/// size matches its header and whose first frame lies on the generator's grid. Anything else
/// (another array, a text file, a file written by numpy's RNG) is not ours.
pub fn is_noise_file(path: &Path) -> bool {
    let Ok(h) = npy::read_header(path) else {
        return false;
    };
    if h.dtype != Dtype::F32 || h.shape.len() != 3 || h.shape.contains(&0) {
        return false;
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let want = h.data_offset + (h.elements() as u64) * 4;
    if meta.len() != want {
        return false;
    }
    let n = h.shape[1] * h.shape[2];
    let mut first = vec![0f32; n];
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    if npy::read_f32_at(&f, &h, 0, &mut first, &mut Vec::new()).is_err() {
        return false;
    }
    on_grid(&first)
}

/// Writes the uniforms of `spec` to `path` (via a temp file in the same directory and a
/// rename). An existing `path` is replaced only when it is a noise file this command wrote, or
/// when `force` is set; a directory is never replaced.
pub fn write_noise(path: &Path, spec: &NoiseSpec, force: bool) -> Result<()> {
    spec.check()?;
    if path.is_dir() {
        bail!(
            "--out {}: is a directory (give a file name such as noise.npy)",
            path.display()
        );
    }
    if path.exists() && !force && !is_noise_file(path) {
        bail!(
            "--out {}: exists and is not a noise file written by `csm-parity noise`; \
             refusing to overwrite it (pass --force to replace it)",
            path.display()
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "--out {}: directory {} does not exist",
                path.display(),
                dir.display()
            );
        }
    }
    // Dropped on an error, the writer removes its temp file.
    let mut w = StreamingNpy::create_atomic(path, Dtype::F32, &[spec.codebooks, spec.vocab])?;
    for f in 0..spec.frames {
        let row = SharedNoise::frame_uniforms(spec.seed, f as u64, spec.codebooks, spec.vocab);
        w.push_f32(&row)?;
    }
    w.finish()
        .with_context(|| format!("--out {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_accepts_generator_output_and_rejects_plain_floats() {
        let row = SharedNoise::frame_uniforms(3, 1, 4, 257);
        assert!(on_grid(&row));
        assert!(on_grid(&[0.5 / 8_388_608.0, 1.0 - 0.5 / 8_388_608.0]));
        assert!(!on_grid(&[1.0]));
        assert!(!on_grid(&[0.25]));
        assert!(!on_grid(&[0.0]));
        // 0.7f32 (bits 0x3f333333) is an odd multiple of 2^-24, so on the grid; its neighbour
        // with an even mantissa is not.
        assert!(on_grid(&[0.7]));
        assert!(!on_grid(&[f32::from_bits(0x3f33_3334)]));
    }

    /// The numbers of docs/shared-noise.md's worked example.
    #[test]
    fn worked_example_of_the_docs() {
        assert_eq!(SharedNoise::mix(42 ^ 0x5EED), 0xa58e3ad0afa5e736);
        assert_eq!(3u64.wrapping_mul(0x9E37_79B9_7F4A_7C15), 0xdaa66d2c7ddf743f);
        let key = SharedNoise::key(42, 3, 1);
        assert_eq!(key, 0xf6b3ed07e2aeb579);
        let want: [(u64, u64, u32); 4] = [
            (0x1de2456c07bc879f, 979234, 0x3def1228),
            (0x8ae97fda8afb0c75, 4551871, 0x3f0ae97f),
            (0x028afbe031de856a, 83325, 0x3c22bec0),
            (0x54cfa8038aada5a0, 2779092, 0x3ea99f52),
        ];
        let mut row = [0f32; 4];
        SharedNoise::uniforms_into(42, 3, 1, &mut row);
        for (i, (x, k, ubits)) in want.into_iter().enumerate() {
            assert_eq!(SharedNoise::bits(key, i as u64), x, "x_{i}");
            assert_eq!(x >> 41, k);
            assert_eq!(row[i].to_bits(), ubits, "u_{i}");
        }
        assert_eq!(row[1] as f64 * 8_388_608.0, 4_551_871.5);
        assert!((-(row[0].ln()) - 2.1478586).abs() < 1e-6);
    }

    #[test]
    fn sizes_are_checked() {
        let s = NoiseSpec {
            seed: 0,
            frames: 0,
            codebooks: 1,
            vocab: 1,
        };
        assert!(s.check().unwrap_err().to_string().contains("--frames"));
        let s = NoiseSpec {
            seed: 0,
            frames: usize::MAX / 2,
            codebooks: 4,
            vocab: 4,
        };
        assert!(s.check().unwrap_err().to_string().contains("too large"));
    }
}
