//! How a run stores its logits and sampler probabilities.
use std::fmt;
use std::str::FromStr;

/// Storage of `logits.npy` / `probs.npy` (manifest fields `logits_storage`, `probs_storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Storage {
    /// Full `[F, C, V]` little-endian f32.
    F32,
    /// Full `[F, C, V]` little-endian f16 (IEEE half).
    F16,
    /// Only the N largest entries per step, sorted descending:
    /// `<name>_top_values.npy` f32 `[F, C, N]` and `<name>_top_indices.npy` i32 `[F, C, N]`.
    Top(usize),
    /// Not recorded.
    None,
}

impl Storage {
    /// Values stored per step (V for dense storage, N for `top:N`, 0 for none).
    pub fn width(self, vocab: usize) -> usize {
        match self {
            Storage::F32 | Storage::F16 => vocab,
            Storage::Top(n) => n.min(vocab),
            Storage::None => 0,
        }
    }

    /// True for f32 and f16 (every vocab entry stored).
    pub fn is_dense(self) -> bool {
        matches!(self, Storage::F32 | Storage::F16)
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::F32 => write!(f, "f32"),
            Storage::F16 => write!(f, "f16"),
            Storage::Top(n) => write!(f, "top:{n}"),
            Storage::None => write!(f, "none"),
        }
    }
}

impl FromStr for Storage {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let t = s.trim();
        match t {
            "f32" => return Ok(Storage::F32),
            "f16" => return Ok(Storage::F16),
            "none" => return Ok(Storage::None),
            _ => {}
        }
        if let Some(n) = t.strip_prefix("top:") {
            if let Ok(n) = n.parse::<usize>() {
                if n > 0 {
                    return Ok(Storage::Top(n));
                }
            }
        }
        anyhow::bail!(
            "invalid storage {s:?}: expected one of `f32`, `f16`, `top:N` (N a positive integer, e.g. `top:64`) or `none`"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for s in ["f32", "f16", "top:64", "none"] {
            assert_eq!(s.parse::<Storage>().unwrap().to_string(), s);
        }
        assert_eq!("top:5".parse::<Storage>().unwrap(), Storage::Top(5));
        assert_eq!(Storage::Top(8).width(5), 5);
        assert_eq!(Storage::F16.width(5), 5);
    }

    #[test]
    fn bad_input_names_forms() {
        for s in ["f64", "top:", "top:0", "top:x", ""] {
            let err = s.parse::<Storage>().unwrap_err().to_string();
            assert!(err.contains("top:N") && err.contains("f16"), "{err}");
        }
    }
}
