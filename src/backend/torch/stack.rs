//! A Llama transformer stack with its KV cache, on libtorch: shared by CSM (backbone, depth
//! decoder) and plain Llama language models.
pub(crate) use crate::backend::common::tap;
use crate::backend::common::{self, Shared, Taps};
use crate::model::{DType, HostTensor, LlamaFlavor};
use tch::{Device, Kind, Tensor};

pub(crate) fn kind_of(d: DType) -> Kind {
    match d {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
    }
}

/// Uploads a host tensor into libtorch memory in `kind` (one copy, from the host tensor —
/// usually a memory-mapped file), then releases the host pages, so the weights are resident
/// once, in libtorch.
pub(crate) fn to_tensor(t: &HostTensor, kind: Kind) -> Tensor {
    let shape: Vec<i64> = t.shape.iter().map(|&s| s as i64).collect();
    let out = Tensor::from_data_size(&t.data, &shape, kind_of(t.dtype)).to_kind(kind);
    t.release();
    out
}

impl Shared for Tensor {
    fn share(&self) -> Self {
        self.shallow_clone()
    }
}

/// The shared stack ([`common::Stack`]) on libtorch tensors.
pub(crate) type Stack = common::Stack<Tensor>;

/// [`tap`] of a value computed only when taps are on (e.g. a copy of a tensor updated in place).
pub(crate) fn tap_with(
    taps: &mut Taps<Tensor>,
    name: impl FnOnce() -> String,
    x: impl FnOnce() -> Tensor,
) {
    if let Some(t) = taps {
        t.push((name(), x()));
    }
}

/// The recorded taps as host f32 tensors.
pub(crate) fn host_taps(taps: Vec<(String, Tensor)>) -> anyhow::Result<Vec<crate::backend::Tap>> {
    taps.into_iter()
        .map(|(name, t)| {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            let values = Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1]))?;
            Ok(crate::backend::Tap {
                name,
                shape,
                values,
            })
        })
        .collect()
}

impl Stack {
    /// Loads the stack; `get` returns a tensor (compute kind) by its torchtune leaf name
    /// (`layers.{i}.attn.q_proj.weight`, `layers.{i}.sa_norm.scale`, `norm.scale`, …).
    pub(crate) fn load(
        get: &dyn Fn(&str) -> anyhow::Result<Tensor>,
        f: &LlamaFlavor,
        traditional: bool,
    ) -> anyhow::Result<Stack> {
        let inv_freq = Tensor::from_slice(&f.rope_inv_freq());
        Stack::load_with(get, get, f, inv_freq, traditional)
    }

    fn rms_norm(&self, x: &Tensor, scale: &Tensor) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        (xf * (var + self.f.norm_eps).rsqrt()).to_kind(x.kind()) * scale
    }

    /// RoPE on x [B, H, L, hd] at positions start..start+L: torchtune's rotation of
    /// interleaved pairs (x[2i], x[2i+1]) when `traditional`, else HF's split halves
    /// (x[i], x[i + hd/2]): out = x·cos + rotate_half(x)·sin.
    fn rope(&self, x: &Tensor, start: usize) -> Tensor {
        let (b, h, l, hd) = x.size4().unwrap();
        let pos = Tensor::arange_start(start as i64, start as i64 + l, (Kind::Float, Device::Cpu));
        let angles = pos.unsqueeze(1) * self.rope_freqs.unsqueeze(0); // [L, hd/2]
        let (cos, sin) = (angles.cos(), angles.sin());
        if !self.traditional {
            let xf = x.to_kind(Kind::Float);
            let (x1, x2) = (xf.narrow(-1, 0, hd / 2), xf.narrow(-1, hd / 2, hd / 2));
            let out1 = &x1 * &cos - &x2 * &sin;
            let out2 = &x2 * &cos + &x1 * &sin;
            return Tensor::cat(&[out1, out2], -1).to_kind(x.kind());
        }
        let xs = x.to_kind(Kind::Float).reshape([b, h, l, hd / 2, 2]);
        let (x0, x1) = (xs.select(-1, 0), xs.select(-1, 1));
        let out0 = &x0 * &cos - &x1 * &sin;
        let out1 = &x1 * &cos + &x0 * &sin;
        Tensor::stack(&[out0, out1], -1)
            .reshape([b, h, l, hd])
            .to_kind(x.kind())
    }

    /// x: [1, L, D] at positions pos..pos+L. Uses and extends the cache when `cached`.
    pub(crate) fn forward(&mut self, x: &Tensor, cached: bool) -> Tensor {
        let (_, l, _) = x.size3().unwrap();
        let start = if cached { self.pos } else { 0 };
        let (nh, nkv, hd) = (
            self.f.num_heads as i64,
            self.f.num_kv_heads as i64,
            self.f.head_dim as i64,
        );
        let mut h = x.shallow_clone();
        let mut taps = self.taps.take();
        let p = self.tap_prefix.clone();
        // A copy: `h` below shares x's storage and is updated in place.
        tap_with(&mut taps, || format!("{p}.input"), || x.copy());
        for i in 0..self.layers.len() {
            let layer = &self.layers[i];
            let xn = self.rms_norm(&h, &layer.sa_norm);
            tap(&mut taps, || format!("{p}.layers.{i}.attn_norm"), &xn);
            let q = xn
                .linear::<Tensor>(&layer.q, None)
                .view([1, l, nh, hd])
                .transpose(1, 2);
            let k = xn
                .linear::<Tensor>(&layer.k, None)
                .view([1, l, nkv, hd])
                .transpose(1, 2);
            let v = xn
                .linear::<Tensor>(&layer.v, None)
                .view([1, l, nkv, hd])
                .transpose(1, 2);
            tap(&mut taps, || format!("{p}.layers.{i}.q"), &q);
            tap(&mut taps, || format!("{p}.layers.{i}.k"), &k);
            tap(&mut taps, || format!("{p}.layers.{i}.v"), &v);
            let q = self.rope(&q, start);
            let mut k = self.rope(&k, start);
            tap(&mut taps, || format!("{p}.layers.{i}.q_rope"), &q);
            tap(&mut taps, || format!("{p}.layers.{i}.k_rope"), &k);
            let mut v = v;
            if cached {
                if let Some((ck, cv)) = &self.cache[i] {
                    k = Tensor::cat(&[ck, &k], 2);
                    v = Tensor::cat(&[cv, &v], 2);
                }
                self.cache[i] = Some((k.shallow_clone(), v.shallow_clone()));
            }
            let rep = nh / nkv;
            let (k, v) = if rep > 1 {
                (
                    k.repeat_interleave_self_int(rep, 1, None::<i64>),
                    v.repeat_interleave_self_int(rep, 1, None::<i64>),
                )
            } else {
                (k, v)
            };
            let total = k.size()[2];
            let mut scores = q
                .to_kind(Kind::Float)
                .matmul(&k.to_kind(Kind::Float).transpose(-2, -1))
                * (1.0 / (hd as f64).sqrt());
            if l > 1 {
                // Query i sits at absolute position start + i and sees keys 0..=start+i.
                let qpos = Tensor::arange_start(
                    start as i64,
                    start as i64 + l,
                    (Kind::Int64, Device::Cpu),
                );
                let kpos = Tensor::arange(total, (Kind::Int64, Device::Cpu));
                let masked = kpos.unsqueeze(0).gt_tensor(&qpos.unsqueeze(1));
                scores = scores.masked_fill(&masked, f64::NEG_INFINITY);
            }
            let attn = scores
                .softmax(-1, Kind::Float)
                .matmul(&v.to_kind(Kind::Float))
                .to_kind(h.kind());
            tap(&mut taps, || format!("{p}.layers.{i}.attn"), &attn);
            let attn = attn
                .transpose(1, 2)
                .reshape([1, l, nh * hd])
                .linear::<Tensor>(&layer.o, None);
            tap(&mut taps, || format!("{p}.layers.{i}.o_proj"), &attn);
            h += attn;
            tap_with(
                &mut taps,
                || format!("{p}.layers.{i}.resid_attn"),
                || h.copy(),
            );
            let xn = self.rms_norm(&h, &layer.mlp_norm);
            tap(&mut taps, || format!("{p}.layers.{i}.mlp_norm"), &xn);
            let gate = xn.linear::<Tensor>(&layer.w1, None).silu();
            let up = xn.linear::<Tensor>(&layer.w3, None);
            tap(&mut taps, || format!("{p}.layers.{i}.gate"), &gate);
            tap(&mut taps, || format!("{p}.layers.{i}.up"), &up);
            let down = (gate * up).linear::<Tensor>(&layer.w2, None);
            tap(&mut taps, || format!("{p}.layers.{i}.down"), &down);
            h += down;
            tap_with(
                &mut taps,
                || format!("{p}.layers.{i}.resid_mlp"),
                || h.copy(),
            );
        }
        if cached {
            self.pos += l as usize;
        }
        let out = self.rms_norm(&h, &self.norm);
        tap(&mut taps, || format!("{p}.final_norm"), &out);
        self.taps = taps;
        out
    }
}
