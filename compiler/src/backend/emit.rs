//! Emission: the HBM tensor table, the weight blob and the artifact metadata.
//!
//! Tensor `i` of the kernel graph is HBM tensor `t{i}` of the program (same order, so ids
//! carry over); constants the back end adds while lowering (int8 dequantization rows)
//! follow. Weight bytes are encoded in each tensor's storage dtype with round-to-nearest-
//! even ([`super::encode`]) and placed in the blob at 64-byte aligned offsets.

use super::encode;
use super::lower::Constants;
use super::tiling::KernelPlan;
use crate::error::CompileError;
use crate::kernel::KernelGraph;
use crate::options::CompileOptions;
use neuron_isa::{
    Artifact, ArtifactMeta, HbmTensor, KernelInfo, Program, TensorId, TensorKind, WeightRange,
};
use std::collections::BTreeMap;

/// Alignment of each weight in the blob.
pub const WEIGHT_ALIGN: usize = 64;

/// The HBM tensor table of a kernel graph (one entry per kernel-graph tensor, same order).
pub fn tensor_table(kg: &KernelGraph) -> Vec<HbmTensor> {
    kg.tensors
        .iter()
        .map(|t| HbmTensor {
            name: t.name.clone(),
            kind: t.kind,
            shape: t.shape.iter().map(|&d| d as u64).collect(),
            dtype: t.dtype,
        })
        .collect()
}

/// Kernel metadata: name, kind, nodes, flops, the HBM bytes its DMAs move and its tiling.
pub fn kernel_infos(
    kg: &KernelGraph,
    plans: &[KernelPlan],
    hbm_bytes: impl Fn(u32) -> u64,
) -> Vec<KernelInfo> {
    kg.kernels
        .iter()
        .zip(plans)
        .enumerate()
        .map(|(i, (k, p))| KernelInfo {
            name: k.name.clone(),
            kind: k.op.kind().to_string(),
            nodes: k.nodes.clone(),
            flops: k.flops,
            hbm_bytes: hbm_bytes(i as u32),
            tiling: p.tiling.to_string(),
        })
        .collect()
}

/// The weight blob and its ranges: every weight tensor of the graph, then the constants.
pub fn weight_blob(
    kg: &KernelGraph,
    consts: &Constants,
) -> Result<(Vec<u8>, Vec<WeightRange>), CompileError> {
    let mut blob = Vec::new();
    let mut ranges = Vec::new();
    let mut place = |blob: &mut Vec<u8>, id: u32, bytes: &mut dyn FnMut(&mut Vec<u8>)| {
        blob.resize(blob.len().div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN, 0);
        let start = blob.len();
        bytes(blob);
        ranges.push(WeightRange {
            tensor: TensorId(id),
            offset: start as u64,
            len: (blob.len() - start) as u64,
        });
    };
    for (i, t) in kg.tensors.iter().enumerate() {
        if t.kind != TensorKind::Weight {
            continue;
        }
        let data = t.data.as_ref().ok_or_else(|| {
            CompileError::Internal(format!("weight tensor '{}' has no data to store", t.name))
        })?;
        if data.num_elements() != t.numel() {
            return Err(CompileError::Internal(format!(
                "weight tensor '{}' has shape {:?} but its data has {} elements",
                t.name,
                t.shape,
                data.num_elements()
            )));
        }
        let values = data.to_f64();
        place(&mut blob, i as u32, &mut |b| {
            encode::encode_into(t.dtype, values.iter().copied(), b)
        });
    }
    for (j, (t, values)) in consts.tensors.iter().enumerate() {
        place(&mut blob, consts.first + j as u32, &mut |b| {
            encode::encode_into(t.dtype, values.iter().map(|&v| f64::from(v)), b)
        });
    }
    Ok((blob, ranges))
}

/// Assembles the artifact. `index_bounds` gives, per integer graph input that indexes a
/// gather, the exclusive bound of its valid values (the runtime draws generated inputs
/// below it; see [`crate::reference::index_bounds`]).
pub fn artifact(
    kg: &KernelGraph,
    program: Program,
    consts: &Constants,
    opts: &CompileOptions,
    index_bounds: BTreeMap<String, u64>,
) -> Result<Artifact, CompileError> {
    let (blob, weights) = weight_blob(kg, consts)?;
    let batch_size = kg
        .inputs
        .first()
        .and_then(|&i| kg.tensor(i))
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(1) as u64;
    let meta = ArtifactMeta {
        model_name: kg.name.clone(),
        target: opts.target.clone(),
        options: opts.to_map(),
        batch_size,
        model_flops: kg.kernels.iter().map(|k| k.flops).sum(),
        seed: kg.seed,
        index_bounds,
        program,
        weights,
    };
    let art = Artifact { meta, blob };
    art.check_weights()
        .map_err(|e| CompileError::Internal(format!("emitted artifact is inconsistent: {e}")))?;
    Ok(art)
}
