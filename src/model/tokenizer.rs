//! Text prompt → token ids → input frames (DESIGN §2).
use anyhow::{bail, Context, Result};
use std::path::Path;
use tokenizers::Tokenizer;

pub const BOS: &str = "<|begin_of_text|>";
pub const EOS: &str = "<|end_of_text|>";

/// A tokenizer.json with CSM's prompt convention: `"[{speaker}]{text}"` between
/// `<|begin_of_text|>` and `<|end_of_text|>`.
pub struct PromptTokenizer {
    inner: Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl PromptTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{}: not a valid tokenizer.json: {e}", path.display()))?;
        let bos = inner.token_to_id(BOS);
        let eos = inner.token_to_id(EOS);
        Ok(PromptTokenizer { inner, bos, eos })
    }

    /// Token ids of a CSM text segment, BOS/EOS included when the vocabulary has them.
    pub fn encode_segment(&self, speaker: u32, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(format!("[{speaker}]{text}"), false)
            .map_err(|e| anyhow::anyhow!("tokenizing the prompt failed: {e}"))?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        ids.extend(self.bos);
        ids.extend_from_slice(enc.get_ids());
        ids.extend(self.eos);
        Ok(ids)
    }

    /// Plain text ids (no speaker tag, no specials): for plain LM prompts and decoding checks.
    pub fn encode_plain(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| anyhow::anyhow!("tokenizing failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("decoding failed: {e}"))
    }

    /// One token's text (special tokens included, e.g. `<|eot_id|>`); `None` for an id the
    /// vocabulary does not have.
    pub fn decode_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)?;
        self.inner.decode(&[id], false).ok()
    }

    /// The id of a token (special tokens included), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
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

/// Reads a model directory's tokenizer.json.
pub fn load_tokenizer(model_dir: &Path) -> Result<PromptTokenizer> {
    let path = model_dir.join("tokenizer.json");
    if !path.is_file() {
        bail!(
            "{}: no tokenizer.json (needed to turn --text into tokens)",
            model_dir.display()
        );
    }
    PromptTokenizer::from_file(&path).context("loading the tokenizer")
}
