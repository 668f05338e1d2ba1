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
