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

/// One weight's bytes to produce: where, in which dtype, from what.
enum Source<'a> {
    Param(&'a crate::ir::ParamData),
    Const(&'a [f32]),
}

/// The weight blob and its ranges: every weight tensor of the graph, then the constants.
///
/// The layout (64-byte aligned offsets, in tensor order) is computed first; then every
/// [`crate::ir::PARAM_CHUNK`]-element chunk of every weight is encoded into its own slice
/// of the blob in parallel. Seeded weights are drawn chunk by chunk and never kept, so
/// the peak is the blob plus a chunk per thread; the bytes do not depend on the thread
/// count.
pub fn weight_blob(
    kg: &KernelGraph,
    consts: &Constants,
) -> Result<(Vec<u8>, Vec<WeightRange>), CompileError> {
    weight_blob_with(kg, consts, true)
}

/// [`weight_blob`], or with `encode` false only the ranges (and an empty blob): what a
/// timing-only run needs, without drawing or encoding one weight.
pub fn weight_blob_with(
    kg: &KernelGraph,
    consts: &Constants,
    encode: bool,
) -> Result<(Vec<u8>, Vec<WeightRange>), CompileError> {
    use rayon::prelude::*;
    let _span = tracing::info_span!("encode_weights").entered();
    let mut jobs: Vec<(u32, neuron_isa::Dtype, usize, Source<'_>)> = Vec::new();
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
        jobs.push((i as u32, t.dtype, t.numel(), Source::Param(data)));
    }
    for (j, (t, values)) in consts.tensors.iter().enumerate() {
        jobs.push((
            consts.first + j as u32,
            t.dtype,
            values.len(),
            Source::Const(values),
        ));
    }
    // Layout.
    let mut ranges = Vec::with_capacity(jobs.len());
    let mut end = 0usize;
    for &(id, dtype, n, _) in &jobs {
        let start = end.div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN;
        let len = n * dtype.size() as usize;
        ranges.push(WeightRange {
            tensor: TensorId(id),
            offset: start as u64,
            len: len as u64,
        });
        end = start + len;
    }
    if !encode {
        return Ok((Vec::new(), ranges));
    }
    crate::ir::limits::check_host_memory(end as u64, "the encoded weights")?;
    let mut blob = vec![0u8; end];
    // Cut the blob into one slice per chunk of every weight.
    let mut work: Vec<(&Source<'_>, neuron_isa::Dtype, usize, &mut [u8])> = Vec::new();
    let mut rest: &mut [u8] = &mut blob;
    let mut at = 0usize;
    for (job, r) in jobs.iter().zip(&ranges) {
        let (_, dtype, n, src) = job;
        let size = dtype.size() as usize;
        let (_, tail) = rest.split_at_mut(r.offset as usize - at);
        let (mut mine, tail) = tail.split_at_mut(r.len as usize);
        rest = tail;
        at = (r.offset + r.len) as usize;
        let mut first = 0;
        while first < *n {
            let count = crate::ir::PARAM_CHUNK.min(n - first);
            let (c, more) = mine.split_at_mut(count * size);
            work.push((src, *dtype, first, c));
            mine = more;
            first += count;
        }
    }
    // Float weights go through f32 (their values are f32s: half the traffic of f64, and
    // the bf16 encoder is branch-free); the bytes are those of the f64 path.
    work.into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(narrow, wide), (src, dtype, first, out)| {
            let count = out.len() / dtype.size() as usize;
            match src {
                Source::Const(c) => {
                    encode::encode_slice_f32(dtype, &c[first..first + count], out);
                }
                Source::Param(p) => {
                    narrow.resize(count, 0f32);
                    if p.values_f32(first, narrow) {
                        encode::encode_slice_f32(dtype, narrow, out);
                    } else {
                        wide.resize(count, 0f64);
                        p.values_f64(first, wide);
                        encode::encode_slice(dtype, wide, out);
                    }
                }
            }
        },
    );
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
    artifact_with(kg, program, consts, opts, index_bounds, true)
}

/// [`artifact`]; with `encode_weights` false the blob is left empty (the ranges are
/// still laid out), for a run that reads no weight byte.
pub fn artifact_with(
    kg: &KernelGraph,
    program: Program,
    consts: &Constants,
    opts: &CompileOptions,
    index_bounds: BTreeMap<String, u64>,
    encode_weights: bool,
) -> Result<Artifact, CompileError> {
    let (blob, weights) = weight_blob_with(kg, consts, encode_weights)?;
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
        training: None,
        kernel_estimates_ns: Vec::new(),
    };
    let art = Artifact {
        meta,
        blob: blob.into(),
    };
    if !encode_weights {
        return Ok(art);
    }
    art.check_weights()
        .map_err(|e| CompileError::Internal(format!("emitted artifact is inconsistent: {e}")))?;
    Ok(art)
}
