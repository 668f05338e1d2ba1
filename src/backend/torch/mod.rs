//! The libtorch reference pipelines (tch): CSM ([`csm`]), a plain Llama LM ([`llama`]) and the
//! Mimi codec ([`mimi`]), on the shared transformer [`stack`] and [`sampler`]. This file holds
//! what the libtorch pipelines share about the library itself.
use crate::backend::common::FrameRows;
use crate::backend::{FrameOutput, Record};
use crate::capture::BackendInfo;
use crate::model::DType;
use anyhow::Result;
use tch::{Kind, Tensor};

pub mod csm;
pub mod llama;
pub mod mimi;
pub(crate) mod sampler;
pub(crate) mod stack;

pub use csm::TorchCsm;

/// What the libtorch pipeline reports about itself (both model kinds).
pub(crate) fn info_of(dtype: DType) -> BackendInfo {
    BackendInfo {
        name: "torch".into(),
        library_version: format!(
            "libtorch {} (tch 0.26)",
            env!("CSM_PARITY_LIBTORCH_VERSION")
        ),
        device: "cpu".into(),
        dtype: dtype.name().into(),
        fault: None,
    }
}

/// A frame's output, from its rows with one host copy (tokens, then logits and probs when
/// recorded).
pub(crate) fn frame_output(
    rows: FrameRows<Tensor>,
    record: Record,
    positions: usize,
) -> Result<FrameOutput> {
    let cat = |rows: &[Tensor]| Ok(Tensor::cat(rows, 0));
    let (codebooks, vocab) = (rows.codebooks(), rows.vocab());
    let parts = rows.host_parts(record, cat, |t| Ok(t.to_kind(Kind::Float)))?;
    let flat = Vec::<f32>::try_from(Tensor::cat(&parts, 0))?;
    Ok(FrameOutput::from_host(
        &flat, codebooks, vocab, record, positions,
    ))
}
