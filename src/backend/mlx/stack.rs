//! A Llama transformer stack with its KV cache, on MLX: shared by CSM (backbone, depth decoder)
//! and plain Llama language models.
pub(crate) use crate::backend::common::tap;
use crate::backend::common::{self, Shared};
use crate::model::{DType, HostTensor, LlamaFlavor};
use anyhow::Result;
use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::ops::concatenate;
use mlx_rs::{Array, Dtype};

pub(crate) fn mlx_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::Float32,
        DType::F16 => Dtype::Float16,
        DType::BF16 => Dtype::Bfloat16,
    }
}

/// Uploads a host tensor into MLX memory in `dtype`. The bytes go to MLX straight from the
/// host tensor (a memory-mapped file, usually: no host copy), then the host pages are released,
/// so the weights are resident once, in MLX.
pub(crate) fn to_array(t: &HostTensor, dtype: Dtype) -> Result<Array> {
    let shape: Vec<i32> = t.shape.iter().map(|&s| s as i32).collect();
    let a = match t.dtype {
        DType::F32 => match t.as_slice::<f32>() {
            Some(v) => Array::from_slice(v, &shape),
            None => Array::from_slice(&t.to_f32(), &shape),
        },
        DType::F16 => match t.as_slice::<half::f16>() {
            Some(v) => Array::from_slice(v, &shape),
            None => {
                let v: Vec<half::f16> = t
                    .data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                    .collect();
                Array::from_slice(&v, &shape)
            }
        },
        DType::BF16 => match t.as_slice::<half::bf16>() {
            Some(v) => Array::from_slice(v, &shape),
            None => {
                let v: Vec<half::bf16> = t
                    .data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]))
                    .collect();
                Array::from_slice(&v, &shape)
            }
        },
    };
    let a = a.as_dtype(dtype)?;
    a.eval()?;
    t.release();
    Ok(a)
}

pub(crate) fn index1(i: i32) -> Array {
    Array::from_slice(&[i], &[1])
}

impl Shared for Array {
    fn share(&self) -> Self {
        self.clone()
    }
}

/// The shared stack ([`common::Stack`]) on MLX arrays, the projections held transposed.
pub(crate) type Stack = common::Stack<Array>;

/// The recorded taps as host f32 tensors (one evaluation for all of them).
pub(crate) fn host_taps(taps: Vec<(String, Array)>) -> Result<Vec<crate::backend::Tap>> {
    // Flattened (a contiguous copy: some taps are transposed views), f32.
    let arrays: Vec<Array> = taps
        .iter()
        .map(|(_, a)| a.as_dtype(Dtype::Float32)?.reshape(&[-1]))
        .collect::<std::result::Result<_, _>>()?;
    mlx_rs::transforms::eval(arrays.iter())?;
    taps.into_iter()
        .zip(arrays)
        .map(|((name, a), flat)| {
            Ok(crate::backend::Tap {
                name,
                shape: a.shape().iter().map(|&d| d as usize).collect(),
                values: flat.try_as_slice::<f32>()?.to_vec(),
            })
        })
        .collect()
}

impl Stack {
    /// Loads the stack; `get` returns a tensor (compute dtype) by its torchtune leaf name
    /// (`layers.{i}.attn.q_proj.weight`, `layers.{i}.sa_norm.scale`, `norm.scale`, …), so any
    /// checkpoint naming maps onto it. `traditional`: RoPE on interleaved pairs (torchtune, CSM);
    /// false rotates split halves (Hugging Face Llama).
    pub(crate) fn load(
        get: &dyn Fn(&str) -> Result<Array>,
        f: &LlamaFlavor,
        traditional: bool,
    ) -> Result<Stack> {
        let wt = |name: &str| -> Result<Array> {
            let a = get(name)?.t();
            a.eval()?;
            Ok(a)
        };
        let freqs = Array::from_slice(&[0f32], &[1]);
        let mut stack = Stack::load_with(&wt, get, f, freqs, traditional)?;
        stack.set_rope_scaling(f.rope_scaling);
        Ok(stack)
    }

    /// Sets the RoPE frequencies (Llama-3 scaling or none): periods 1/inv_freq.
    pub(crate) fn set_rope_scaling(&mut self, scaling: Option<crate::model::RopeScaling>) {
        let f = LlamaFlavor {
            rope_scaling: scaling,
            ..self.f.clone()
        };
        let periods: Vec<f32> = f.rope_inv_freq().iter().map(|&x| 1.0 / x).collect();
        self.rope_freqs = Array::from_slice(&periods, &[periods.len() as i32]);
    }

    fn rope(&self, x: &Array, start: usize) -> Result<Array> {
        Ok(fast::rope(
            x,
            self.f.head_dim as i32,
            self.traditional,
            None,
            1.0,
            start as i32,
            Some(&self.rope_freqs),
        )?)
    }

    /// x: [1, L, D]. Uses and extends the cache when `cached`.
    pub(crate) fn forward(&mut self, x: &Array, cached: bool) -> Result<Array> {
        let l = x.dim(1);
        let start = if cached { self.pos } else { 0 };
        let (nh, nkv, hd) = (
            self.f.num_heads as i32,
            self.f.num_kv_heads as i32,
            self.f.head_dim as i32,
        );
        let eps = self.f.norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut h = x.clone();
        let mut taps = self.taps.take();
        let p = self.tap_prefix.clone();
        tap(&mut taps, || format!("{p}.input"), x);
        for i in 0..self.layers.len() {
            let layer = &self.layers[i];
            let xn = fast::rms_norm(&h, Some(&layer.sa_norm), eps)?;
            tap(&mut taps, || format!("{p}.layers.{i}.attn_norm"), &xn);
            let q = xn
                .matmul(&layer.q)?
                .reshape(&[1, l, nh, hd])?
                .transpose_axes(&[0, 2, 1, 3])?;
            let k = xn
                .matmul(&layer.k)?
                .reshape(&[1, l, nkv, hd])?
                .transpose_axes(&[0, 2, 1, 3])?;
            let v = xn
                .matmul(&layer.v)?
                .reshape(&[1, l, nkv, hd])?
                .transpose_axes(&[0, 2, 1, 3])?;
            tap(&mut taps, || format!("{p}.layers.{i}.q"), &q);
            tap(&mut taps, || format!("{p}.layers.{i}.k"), &k);
            tap(&mut taps, || format!("{p}.layers.{i}.v"), &v);
            let q = self.rope(&q, start)?;
            let mut k = self.rope(&k, start)?;
            tap(&mut taps, || format!("{p}.layers.{i}.q_rope"), &q);
            tap(&mut taps, || format!("{p}.layers.{i}.k_rope"), &k);
            let mut v = v;
            if cached {
                if let Some((ck, cv)) = &self.cache[i] {
                    k = concatenate(&[ck, &k], 2)?;
                    v = concatenate(&[cv, &v], 2)?;
                }
                self.cache[i] = Some((k.clone(), v.clone()));
            }
            let mask = (l > 1).then_some(ScaledDotProductAttentionMask::Causal);
            let attn = fast::scaled_dot_product_attention(&q, &k, &v, scale, mask, None)?;
            tap(&mut taps, || format!("{p}.layers.{i}.attn"), &attn);
            let attn = attn
                .transpose_axes(&[0, 2, 1, 3])?
                .reshape(&[1, l, nh * hd])?
                .matmul(&layer.o)?;
            tap(&mut taps, || format!("{p}.layers.{i}.o_proj"), &attn);
            h = h.add(&attn)?;
            tap(&mut taps, || format!("{p}.layers.{i}.resid_attn"), &h);
            let xn = fast::rms_norm(&h, Some(&layer.mlp_norm), eps)?;
            tap(&mut taps, || format!("{p}.layers.{i}.mlp_norm"), &xn);
            let gate = mlx_rs::nn::silu(xn.matmul(&layer.w1)?)?;
            let up = xn.matmul(&layer.w3)?;
            tap(&mut taps, || format!("{p}.layers.{i}.gate"), &gate);
            tap(&mut taps, || format!("{p}.layers.{i}.up"), &up);
            let down = gate.multiply(&up)?.matmul(&layer.w2)?;
            tap(&mut taps, || format!("{p}.layers.{i}.down"), &down);
            h = h.add(down)?;
            tap(&mut taps, || format!("{p}.layers.{i}.resid_mlp"), &h);
        }
        if cached {
            self.pos += l as usize;
        }
        let out = fast::rms_norm(&h, Some(&self.norm), eps)?;
        tap(&mut taps, || format!("{p}.final_norm"), &out);
        self.taps = taps;
        Ok(out)
    }

    pub(crate) fn cache_arrays(&self) -> Vec<&Array> {
        self.cache
            .iter()
            .flatten()
            .flat_map(|(k, v)| [k, v])
            .collect()
    }
}
