//! The MLX pipelines (mlx-rs): CSM ([`csm`]), a plain Llama LM ([`llama`]) and the Mimi codec
//! ([`mimi`]), on the shared transformer [`stack`] and [`sampler`]; fault injection's hooks are
//! in [`faults`]. This file holds what the MLX pipelines share about the library itself.
use crate::backend::common::FrameRows;
use crate::backend::{FrameOutput, Record};
use crate::capture::BackendInfo;
use crate::faults::Fault;
use crate::model::DType;
use anyhow::Result;
use mlx_rs::ops::concatenate;
use mlx_rs::{Array, Dtype};
use stack::{mlx_dtype, Stack};

pub mod csm;
pub(crate) mod faults;
pub mod llama;
pub mod mimi;
pub(crate) mod sampler;
pub(crate) mod stack;

pub use csm::MlxCsm;

/// Median time (ms, 5 runs after a warm-up) of a [1, 2048] × [2048, 8192] matmul in `dtype`
/// on this machine, with the weight as a transposed view as the stacks hold it.
pub fn matmul_ms(dtype: DType) -> Result<f64> {
    let dt = mlx_dtype(dtype);
    let w = mlx_rs::ops::ones::<f32>(&[8192, 2048])?.as_dtype(dt)?;
    let x = mlx_rs::ops::ones::<f32>(&[1, 2048])?.as_dtype(dt)?;
    mlx_rs::transforms::eval([&w, &x])?;
    let w_t = w.t();
    let mut ms = Vec::new();
    for i in 0..6 {
        let t0 = std::time::Instant::now();
        x.matmul(&w_t)?.eval()?;
        if i > 0 {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// What an MLX pipeline reports about itself (both model kinds).
pub(crate) fn info_of(dtype: DType, fault: Option<Fault>) -> BackendInfo {
    BackendInfo {
        name: "mlx".into(),
        library_version: format!("mlx {} (mlx-rs 0.33)", mlx_version()),
        device: format!("{:?}", mlx_rs::Device::default()).to_lowercase(),
        dtype: dtype.name().into(),
        fault: fault.map(|f| f.name().to_string()),
    }
}

/// MLX's version string, from mlx-c.
pub fn mlx_version() -> String {
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        let v = if mlx_sys::mlx_version(&mut s) == 0 {
            std::ffi::CStr::from_ptr(mlx_sys::mlx_string_data(s))
                .to_string_lossy()
                .into_owned()
        } else {
            "unknown".to_string()
        };
        mlx_sys::mlx_string_free(s);
        v
    }
}

/// A frame's output, from its rows with one host copy (tokens, then logits and probs when
/// recorded), evaluated together with `stack`'s KV cache so the next frame starts from values.
pub(crate) fn frame_output(
    rows: FrameRows<Array>,
    record: Record,
    positions: usize,
    stack: &Stack,
) -> Result<FrameOutput> {
    let cat = |rows: &[Array]| Ok(concatenate(rows, 0)?);
    let (codebooks, vocab) = (rows.codebooks(), rows.vocab());
    let parts = rows.host_parts(record, cat, |t| Ok(t.as_dtype(Dtype::Float32)?))?;
    let flat = concatenate(&parts, 0)?;
    let mut to_eval = vec![&flat];
    to_eval.extend(stack.cache_arrays());
    mlx_rs::transforms::eval(to_eval)?;
    let flat = flat.as_slice();
    Ok(FrameOutput::from_host(
        flat, codebooks, vocab, record, positions,
    ))
}
