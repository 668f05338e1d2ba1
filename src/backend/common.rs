//! What the MLX and libtorch pipelines share that does not depend on the library: the state of a
//! Llama transformer stack (weights by role, KV cache, position, activation taps), the weight
//! names it loads, and the host-side bookkeeping of a frame. Each backend's `stack.rs` adds the
//! library calls (`load`, `forward`, RoPE) to [`Stack`].
use crate::backend::{Encoded, Record};
use crate::model::llama::hf_key;
use crate::model::llama::lora::LoraPair;
use crate::model::mimi::{decoder_layers, transpose_trim, ConvSpec, MimiConfig, SeanetLayer};
use crate::model::{Frames, HostTensor, LlamaFlavor, LlamaModel};
use crate::sampling::SamplerSpec;
use anyhow::{bail, Result};

/// A handle on a library tensor that a tap or a cache can keep without copying the data (an
/// MLX array is immutable, so a clone shares it; a libtorch tensor's shallow clone shares it).
pub(crate) trait Shared {
    fn share(&self) -> Self;
}

/// Recorded activation taps, in execution order; `None` while taps are off.
pub(crate) type Taps<T> = Option<Vec<(String, T)>>;

/// Records `x` under `name()` when taps are on (the name is only built then).
pub(crate) fn tap<T: Shared>(taps: &mut Taps<T>, name: impl FnOnce() -> String, x: &T) {
    if let Some(t) = taps {
        t.push((name(), x.share()));
    }
}

/// The weights of one Llama layer, by role. Each backend holds them as its matmuls take them
/// (MLX: the projections transposed; libtorch: as in the checkpoint, for `linear`).
pub(crate) struct Layer<T> {
    pub(crate) q: T,
    pub(crate) k: T,
    pub(crate) v: T,
    pub(crate) o: T,
    pub(crate) sa_norm: T,
    pub(crate) mlp_norm: T,
    pub(crate) w1: T,
    pub(crate) w2: T,
    pub(crate) w3: T,
}

impl<T> Layer<T> {
    /// Loads layer `i` by its torchtune leaf names (`layers.{i}.attn.q_proj.weight`,
    /// `layers.{i}.sa_norm.scale`, …): `matrix` gets a projection, `norm` an RMSNorm scale.
    pub(crate) fn load(
        i: usize,
        matrix: &dyn Fn(&str) -> Result<T>,
        norm: &dyn Fn(&str) -> Result<T>,
    ) -> Result<Self> {
        let m = |leaf: &str| matrix(&format!("layers.{i}.{leaf}.weight"));
        let n = |leaf: &str| norm(&format!("layers.{i}.{leaf}.scale"));
        Ok(Layer {
            q: m("attn.q_proj")?,
            k: m("attn.k_proj")?,
            v: m("attn.v_proj")?,
            o: m("attn.output_proj")?,
            sa_norm: n("sa_norm")?,
            mlp_norm: n("mlp_norm")?,
            w1: m("mlp.w1")?,
            w2: m("mlp.w2")?,
            w3: m("mlp.w3")?,
        })
    }
}

/// A Llama stack with its KV cache: shared by CSM (backbone, depth decoder) and plain Llama
/// language models, in either library.
pub(crate) struct Stack<T> {
    pub(crate) layers: Vec<Layer<T>>,
    pub(crate) norm: T,
    pub(crate) f: LlamaFlavor,
    /// The RoPE frequency table in the form the backend's rotation takes it (MLX: the periods
    /// 1/inv_freq `fast::rope` takes as `freqs`; libtorch: inv_freq).
    pub(crate) rope_freqs: T,
    pub(crate) cache: Vec<Option<(T, T)>>,
    pub(crate) pos: usize,
    /// RoPE on interleaved pairs (torchtune, CSM); false rotates split halves (HF Llama, or the
    /// split-halves fault in CSM).
    pub(crate) traditional: bool,
    /// Activation taps (issue 17): `Some` while recording; names get `tap_prefix`.
    pub(crate) taps: Taps<T>,
    pub(crate) tap_prefix: String,
}

impl<T: Shared> Stack<T> {
    /// Loads the stack: `matrix` and `norm` get a tensor (compute dtype) by its torchtune leaf
    /// name (`layers.{i}.attn.q_proj.weight`, `norm.scale`, …), so any checkpoint naming maps
    /// onto it. `traditional`: RoPE on interleaved pairs; false rotates split halves.
    pub(crate) fn load_with(
        matrix: &dyn Fn(&str) -> Result<T>,
        norm: &dyn Fn(&str) -> Result<T>,
        f: &LlamaFlavor,
        rope_freqs: T,
        traditional: bool,
    ) -> Result<Self> {
        let layers = (0..f.num_layers)
            .map(|i| Layer::load(i, matrix, norm))
            .collect::<Result<_>>()?;
        Ok(Stack {
            layers,
            norm: norm("norm.scale")?,
            f: f.clone(),
            rope_freqs,
            cache: (0..f.num_layers).map(|_| None).collect(),
            pos: 0,
            traditional,
            taps: None,
            tap_prefix: String::new(),
        })
    }

    /// Starts (or stops) recording taps named `prefix.…`.
    pub(crate) fn set_taps(&mut self, on: bool, prefix: &str) {
        self.taps = on.then(Vec::new);
        self.tap_prefix = prefix.to_string();
    }

    /// The taps recorded so far (recording goes on while taps are on).
    pub(crate) fn take_taps(&mut self) -> Vec<(String, T)> {
        let on = self.taps.is_some();
        std::mem::replace(&mut self.taps, on.then(Vec::new)).unwrap_or_default()
    }

    /// Prefix of the following taps' names (only built while taps are on).
    pub(crate) fn name_taps(&mut self, prefix: impl FnOnce() -> String) {
        if self.taps.is_some() {
            self.tap_prefix = prefix();
        }
    }

    /// Appends this stack's recorded taps to `all` (one list in execution order).
    pub(crate) fn move_taps_to(&mut self, all: &mut Taps<T>) {
        if let (Some(all), Some(mine)) = (all.as_mut(), self.taps.as_mut()) {
            all.append(mine);
        }
    }

    pub(crate) fn reset(&mut self) {
        self.cache.iter_mut().for_each(|c| *c = None);
        self.pos = 0;
    }

    /// Forgets the cache (and so the prompt) but keeps the position: the context-loss fault.
    pub(crate) fn drop_cache(&mut self) {
        self.cache.iter_mut().for_each(|c| *c = None);
    }

    /// Checks that `new` more positions fit (`what`: the model's name for its limit).
    pub(crate) fn check_room(&self, new: usize, what: &str) -> Result<()> {
        if self.pos + new > self.f.max_seq_len {
            bail!("sequence exceeds the model's {what} {}", self.f.max_seq_len);
        }
        Ok(())
    }
}

/// The input of a cache-free recomputation: `prefix`, then every frame as an audio row.
pub(crate) fn recompute_input(
    prefix: &Frames,
    frames: &[Vec<i32>],
    vocab: usize,
) -> Result<Frames> {
    let mut all = prefix.clone();
    for f in frames {
        all.extend(&Frames::audio(f, vocab)?);
    }
    Ok(all)
}

/// The tokens of a Llama step's rows (width 2: the token, then an unused column).
pub(crate) fn llama_tokens(frames: &Frames) -> Result<Vec<i64>> {
    if frames.width != 2 {
        bail!(
            "a Llama step takes rows of width 2 (token, unused), got {}",
            frames.width
        );
    }
    Ok(frames.tokens.chunks_exact(2).map(|r| r[0]).collect())
}

/// Ids into CSM's stacked audio embedding (codebook `cb`'s rows start at `cb × vocab`) and the
/// text ids, of each frame's audio columns and its text column: (`L × C` audio ids, `L` text ids).
pub(crate) fn csm_embedding_ids(
    frames: &Frames,
    codebooks: usize,
    vocab: usize,
) -> (Vec<i64>, Vec<i64>) {
    let mut audio = Vec::with_capacity(frames.len() * codebooks);
    let mut text = Vec::with_capacity(frames.len());
    for row in frames.tokens.chunks_exact(frames.width) {
        audio.extend(
            row[..codebooks]
                .iter()
                .enumerate()
                .map(|(cb, &t)| t + (cb * vocab) as i64),
        );
        text.push(row[codebooks]);
    }
    (audio, text)
}

/// The stacked-embedding ids of a frame's first `C − 1` codebooks' tokens (the depth decoder's
/// inputs after the backbone's state), in codebook order.
pub(crate) fn depth_ids(frame: &[i32], vocab: usize) -> Vec<i64> {
    frame[..frame.len() - 1]
        .iter()
        .enumerate()
        .map(|(cb, &t)| t as i64 + (cb * vocab) as i64)
        .collect()
}

/// The rows of one frame, one per codebook, kept on the device until the frame's single host
/// copy: the sampled tokens, the logits and the sampler's probabilities.
pub(crate) struct FrameRows<T> {
    vocab: usize,
    tokens: Vec<T>,
    logits: Vec<T>,
    probs: Vec<T>,
}

impl<T> FrameRows<T> {
    /// Rows for `codebooks` codebooks of `vocab` logits each.
    pub(crate) fn new(codebooks: usize, vocab: usize) -> Self {
        FrameRows {
            vocab,
            tokens: Vec::with_capacity(codebooks),
            logits: Vec::with_capacity(codebooks),
            probs: Vec::with_capacity(codebooks),
        }
    }

    /// The codebooks pushed so far.
    pub(crate) fn codebooks(&self) -> usize {
        self.tokens.len()
    }

    pub(crate) fn vocab(&self) -> usize {
        self.vocab
    }

    pub(crate) fn push(&mut self, token: T, logits: T, probs: T) {
        self.tokens.push(token);
        self.logits.push(logits);
        self.probs.push(probs);
    }

    /// The parts of the frame's host copy, in the order [`crate::backend::FrameOutput::from_host`]
    /// reads them: the tokens (as f32, by `to_f32`), then the logits and the probs when
    /// `record`ed; `cat` concatenates rows.
    pub(crate) fn host_parts(
        self,
        record: Record,
        cat: impl Fn(&[T]) -> Result<T>,
        to_f32: impl Fn(T) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut parts = vec![to_f32(cat(&self.tokens)?)?];
        if record.logits {
            parts.push(cat(&self.logits)?);
        }
        if record.probs {
            parts.push(cat(&self.probs)?);
        }
        Ok(parts)
    }
}

/// A Llama weight by its torchtune leaf name (see [`crate::model::llama::hf_key`]), put on the
/// device by `upload`, with the adapter's LoRA update of it (if any) merged by `fuse` (mlx-lm's
/// fuse: W + scale · (A B)ᵀ, in f32).
pub(crate) fn llama_weight<T>(
    model: &LlamaModel,
    leaf: &str,
    upload: impl Fn(&HostTensor) -> Result<T>,
    fuse: impl Fn(T, &LoraPair, f32) -> Result<T>,
) -> Result<T> {
    let name = hf_key(leaf);
    let w = upload(model.get(&name)?)?;
    let update = model
        .adapter
        .as_ref()
        .and_then(|a| a.updates.get(&name).map(|p| (p, a.scale)));
    match update {
        Some((pair, scale)) => fuse(w, pair, scale),
        None => Ok(w),
    }
}

/// A sampler as named steps, as mlx-lm's `make_sampler` writes it: each library writes the
/// steps ([`sample`] composes them in the one order both share), on rows of f32 logits [V].
pub(crate) trait SamplerSteps {
    type T;
    /// Greedy: the argmax token, with probability 1: (token [1], probs [V]).
    fn greedy(&self, logits: &Self::T) -> Result<(Self::T, Self::T)>;
    fn temperature(&self, logits: &Self::T, t: f32) -> Result<Self::T>;
    /// mlx-lm's top-p and min-p filters, decided on the temperature-1 `logits`, applied to
    /// `scaled` as −inf.
    fn top_p_min_p(&self, logits: &Self::T, scaled: Self::T, spec: &SamplerSpec)
        -> Result<Self::T>;
    /// The reference top-k: every entry at or above the k-th largest value (ties kept).
    fn top_k(&self, scaled: &Self::T, k: usize) -> Result<Self::T>;
    fn probabilities(&self, kept: &Self::T) -> Result<Self::T>;
    /// Exponential noise q (−log of uniforms) shaped `like`: the harness's shared draws, or
    /// the library's own.
    fn noise(&mut self, spec: &SamplerSpec, u: Option<&Self::T>, like: &Self::T)
        -> Result<Self::T>;
    /// The sampled token: argmax of probs / q with q ~ Exp(1), a draw from probs (the
    /// reference's `_multinomial_sample_one_no_sync`).
    fn pick(&self, probs: &Self::T, q: &Self::T) -> Result<Self::T>;
    /// A host row as a device row [V].
    fn upload(&self, row: &[f32]) -> Result<Self::T>;
    /// (token [1], probs [V]) copied to the host.
    fn download(&self, token: Self::T, probs: Self::T) -> Result<(i32, Vec<f32>)>;
    fn vocab(&self) -> usize;
    /// Restarts the native noise from `seed`.
    fn reseed(&mut self, seed: u64) -> Result<()>;
}

/// The sampler on one row of f32 logits [V]: (token [1], probs [V]).
pub(crate) fn sample<S: SamplerSteps>(
    s: &mut S,
    logits: &S::T,
    spec: &SamplerSpec,
    uniforms: Option<&S::T>,
) -> Result<(S::T, S::T)> {
    if spec.is_greedy() {
        return s.greedy(logits);
    }
    let scaled = s.temperature(logits, spec.temperature)?;
    let scaled = s.top_p_min_p(logits, scaled, spec)?;
    let kept = match spec.effective_top_k(s.vocab()) {
        None => scaled,
        Some(k) => s.top_k(&scaled, k)?,
    };
    let probs = s.probabilities(&kept)?;
    let q = s.noise(spec, uniforms, &probs)?;
    Ok((s.pick(&probs, &q)?, probs))
}

/// [`sample`] on a host row (a [`crate::backend::Backend::sample_logits`] call).
pub(crate) fn sample_host<S: SamplerSteps>(
    s: &mut S,
    logits: &[f32],
    spec: &SamplerSpec,
    uniforms: Option<&[f32]>,
) -> Result<(i32, Vec<f32>)> {
    crate::backend::check_row(logits, s.vocab())?;
    let u = uniforms.map(|u| s.upload(u)).transpose()?;
    let row = s.upload(logits)?;
    let (token, probs) = sample(s, &row, spec, u.as_ref())?;
    s.download(token, probs)
}

/// The [`crate::backend::Backend`] methods every pipeline writes the same way, from its fields:
/// its `sampler`, and the stacks whose taps it records, each with its tap prefix (the first one
/// collects the taps of all, in execution order). Expanded inside `impl Backend for …`, with the
/// backend's `host_taps` in scope.
macro_rules! backend_glue {
    ($main:ident: $main_prefix:literal $(, $other:ident: $prefix:literal)*) => {
        fn position(&self) -> usize {
            self.$main.pos
        }

        fn sample_logits(
            &mut self,
            logits: &[f32],
            spec: &crate::sampling::SamplerSpec,
            uniforms: Option<&[f32]>,
        ) -> anyhow::Result<(i32, Vec<f32>)> {
            crate::backend::common::sample_host(&mut self.sampler, logits, spec, uniforms)
        }

        fn set_taps(&mut self, on: bool) -> anyhow::Result<()> {
            self.$main.set_taps(on, $main_prefix);
            $(self.$other.set_taps(on, $prefix);)*
            Ok(())
        }

        fn take_taps(&mut self) -> anyhow::Result<Vec<crate::backend::Tap>> {
            host_taps(self.$main.take_taps())
        }
    };
}
pub(crate) use backend_glue;

/// The state of a streamed Mimi decode ([`crate::backend::Codec::decode_stream`]): what each
/// causal layer keeps from the frames already decoded. Its size does not grow with the stream.
pub(crate) struct DecodeStream<T> {
    /// Codebooks per frame (fixed for the stream).
    pub(crate) codebooks: usize,
    /// The upsample's pending outputs.
    pub(crate) upsample: Option<T>,
    /// Per decoder-transformer layer: the last `window − 1` keys and values.
    pub(crate) kv: Vec<(T, T)>,
    /// Position of the next transformer step.
    pub(crate) position: usize,
    /// One slot per SEANet decoder conv.
    pub(crate) decoder: Vec<Option<T>>,
}

impl<T> DecodeStream<T> {
    /// A new stream of frames of `codebooks` codes through the decoder of `cfg`: one state slot
    /// per SEANet decoder conv (two per residual block).
    pub(crate) fn new(codebooks: usize, cfg: &MimiConfig) -> Self {
        let slots = decoder_layers(cfg)
            .iter()
            .map(|l| match l {
                SeanetLayer::Residual { .. } => 2,
                _ => 1,
            })
            .sum();
        DecodeStream {
            codebooks,
            upsample: None,
            kv: Vec::new(),
            position: 0,
            decoder: (0..slots).map(|_| None).collect(),
        }
    }
}

/// Mimi's downsample conv (encoder side, stride 2), from the config.
pub(crate) fn mimi_downsample(cfg: &MimiConfig) -> ConvSpec {
    ConvSpec {
        name: "downsample".into(),
        in_ch: cfg.hidden_size,
        out_ch: cfg.hidden_size,
        kernel: cfg.resample_kernel(),
        stride: 2,
        dilation: 1,
    }
}

/// An encode's result from its single host copy: `latents` values (`frames × hidden`), then the
/// codes `[F][C]` as f32 (exact: codes < 2^24).
pub(crate) fn encoded_from_host(flat: &[f32], latents: usize, codebooks: usize) -> Encoded {
    let (lat, codes) = flat.split_at(latents);
    Encoded {
        latents: lat.to_vec(),
        codes: codes
            .chunks(codebooks)
            .map(|r| r.iter().map(|&x| x as i32).collect())
            .collect(),
    }
}

/// The shape of one of Mimi's causal transposed convs, and its trim (transformers'
/// `MimiConvTranspose1d`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransposeGeometry {
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
    pub(crate) groups: usize,
    trim_right_ratio: f64,
}

impl TransposeGeometry {
    pub(crate) fn new(cfg: &MimiConfig, kernel: usize, stride: usize, groups: usize) -> Self {
        TransposeGeometry {
            kernel,
            stride,
            groups,
            trim_right_ratio: cfg.trim_right_ratio,
        }
    }

    /// The outputs trimmed (left, right): `kernel − stride` of them, by the config's ratio when
    /// `causal`, half and half otherwise.
    pub(crate) fn trim(&self, causal: bool) -> (usize, usize) {
        transpose_trim(self.kernel, self.stride, self.trim_right_ratio, causal)
    }
}

/// The weights of one layer of Mimi's transformers, by role. Each backend holds them as its
/// matmuls take them (MLX: the projections transposed).
pub(crate) struct MimiLayer<T> {
    pub(crate) norm1: (T, T),
    pub(crate) norm2: (T, T),
    pub(crate) q: T,
    pub(crate) k: T,
    pub(crate) v: T,
    pub(crate) o: T,
    pub(crate) fc1: T,
    pub(crate) fc2: T,
    pub(crate) attn_scale: T,
    pub(crate) mlp_scale: T,
}

impl<T> MimiLayer<T> {
    /// Loads layer `i` by its transformers leaf names (`self_attn.q_proj.weight`, …): `matrix`
    /// gets a projection, `vector` a LayerNorm weight or bias or a layer scale.
    pub(crate) fn load(
        i: usize,
        matrix: &dyn Fn(usize, &str) -> Result<T>,
        vector: &dyn Fn(usize, &str) -> Result<T>,
    ) -> Result<Self> {
        let norm = |name: &str| -> Result<(T, T)> {
            let weight = vector(i, &format!("{name}.weight"))?;
            Ok((weight, vector(i, &format!("{name}.bias"))?))
        };
        Ok(MimiLayer {
            norm1: norm("input_layernorm")?,
            norm2: norm("post_attention_layernorm")?,
            q: matrix(i, "self_attn.q_proj.weight")?,
            k: matrix(i, "self_attn.k_proj.weight")?,
            v: matrix(i, "self_attn.v_proj.weight")?,
            o: matrix(i, "self_attn.o_proj.weight")?,
            fc1: matrix(i, "mlp.fc1.weight")?,
            fc2: matrix(i, "mlp.fc2.weight")?,
            attn_scale: vector(i, "self_attn_layer_scale.scale")?,
            mlp_scale: vector(i, "mlp_layer_scale.scale")?,
        })
    }
}

/// Mimi's parts, in the order a waveform meets them, each of one library's layer types: the
/// SEANet encoder, its transformer, the downsampling conv, the semantic and acoustic quantizers,
/// then the way back (upsampling, the decoder transformer, the SEANet decoder).
pub(crate) struct MimiNet<Seanet, Transformer, Conv, Quantizer, ConvTranspose> {
    pub encoder: Seanet,
    pub encoder_transformer: Transformer,
    pub downsample: Conv,
    pub quantizers: [Quantizer; 2],
    pub upsample: ConvTranspose,
    pub decoder_transformer: Transformer,
    pub decoder: Seanet,
}
