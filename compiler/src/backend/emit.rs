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

/// The blob's layout: every weight tensor of the graph, then the constants, at 64-byte
/// aligned offsets in tensor order; `end` is the blob's length.
struct Layout<'a> {
    jobs: Vec<(neuron_isa::Dtype, usize, Source<'a>)>,
    ranges: Vec<WeightRange>,
    end: usize,
}

impl<'a> Layout<'a> {
    fn new(kg: &'a KernelGraph, consts: &'a Constants) -> Result<Layout<'a>, CompileError> {
        let mut ids = Vec::new();
        let mut jobs = Vec::new();
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
            ids.push(i as u32);
            jobs.push((t.dtype, t.numel(), Source::Param(data)));
        }
        for (j, (t, values)) in consts.tensors.iter().enumerate() {
            ids.push(consts.first + j as u32);
            jobs.push((t.dtype, values.len(), Source::Const(values)));
        }
        let mut ranges = Vec::with_capacity(jobs.len());
        let mut end = 0usize;
        for (&id, &(dtype, n, _)) in ids.iter().zip(&jobs) {
            let start = end.div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN;
            let len = n * dtype.size() as usize;
            ranges.push(WeightRange {
                tensor: TensorId(id),
                offset: start as u64,
                len: len as u64,
            });
            end = start + len;
        }
        Ok(Layout { jobs, ranges, end })
    }

    /// Every [`crate::ir::PARAM_CHUNK`]-element chunk of every weight, as `(weight,
    /// first element, elements, blob offset)`, in blob order.
    fn chunks(&self) -> Vec<(usize, usize, usize, usize)> {
        let mut out = Vec::new();
        for (j, ((dtype, n, _), r)) in self.jobs.iter().zip(&self.ranges).enumerate() {
            let mut first = 0;
            while first < *n {
                let count = crate::ir::PARAM_CHUNK.min(n - first);
                out.push((
                    j,
                    first,
                    count,
                    r.offset as usize + first * dtype.size() as usize,
                ));
                first += count;
            }
        }
        out
    }

    /// Encodes elements `first..` of weight `j` into `out` (as many as it holds). Float
    /// weights go through f32 (their values are f32s: half the traffic of f64, and the
    /// bf16 encoder is branch-free); the bytes are those of the f64 path. `narrow` and
    /// `wide` are scratch buffers.
    fn encode(
        &self,
        j: usize,
        first: usize,
        out: &mut [u8],
        (narrow, wide): &mut (Vec<f32>, Vec<f64>),
    ) {
        let (dtype, _, src) = &self.jobs[j];
        let count = out.len() / dtype.size() as usize;
        match src {
            Source::Const(c) => encode::encode_slice_f32(*dtype, &c[first..first + count], out),
            Source::Param(p) => {
                if !encode::encode_blocks_f32(*dtype, out, narrow, |at, v| {
                    p.values_f32(first + at, v)
                }) {
                    wide.resize(count, 0f64);
                    p.values_f64(first, wide);
                    encode::encode_slice(*dtype, wide, out);
                }
            }
        }
    }
}

/// The weight blob and its ranges: every weight tensor of the graph, then the constants.
///
/// The layout (64-byte aligned offsets, in tensor order) is computed first; then every
/// [`crate::ir::PARAM_CHUNK`]-element chunk of every weight is encoded into its own slice
/// of the blob in parallel. Seeded weights are drawn chunk by chunk and never kept, so
/// the peak is the blob plus a chunk per thread; the bytes do not depend on the thread
/// count. [`write_artifact`] encodes the same bytes straight into a `.neff` file.
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
    let layout = Layout::new(kg, consts)?;
    if !encode {
        return Ok((Vec::new(), layout.ranges));
    }
    crate::ir::limits::check_host_memory(layout.end as u64, "the encoded weights")?;
    let mut blob = vec![0u8; layout.end];
    // Cut the blob into one slice per chunk (chunks are in blob order).
    let mut work = Vec::new();
    let mut rest: &mut [u8] = &mut blob;
    let mut at = 0usize;
    for (j, first, count, offset) in layout.chunks() {
        let len = count * layout.jobs[j].0.size() as usize;
        let (_, tail) = rest.split_at_mut(offset - at);
        let (mine, tail) = tail.split_at_mut(len);
        rest = tail;
        at = offset + len;
        work.push((j, first, mine));
    }
    work.into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |scratch, (j, first, out)| layout.encode(j, first, out, scratch),
    );
    Ok((blob, layout.ranges))
}

/// Writes the `.neff` artifact of `meta` (emitted without weights, see
/// [`artifact_with`]) to `path`, encoding the weights straight into the file: each chunk
/// is encoded into a per-thread buffer and written at its place, in parallel, so the
/// blob is never held in memory (no fresh 700 MB to zero and copy for BERT-large). The
/// file is byte-identical to [`Artifact::write`] of the [`artifact`] with weights. On
/// failure the partial file is removed.
pub fn write_artifact(
    kg: &KernelGraph,
    consts: &Constants,
    meta: &ArtifactMeta,
    path: &std::path::Path,
) -> Result<(), CompileError> {
    use rayon::prelude::*;
    let _span = tracing::info_span!("encode_weights", to = %path.display()).entered();
    let layout = Layout::new(kg, consts)?;
    if layout.ranges != meta.weights {
        return Err(CompileError::Internal(
            "the weight layout differs from the emitted artifact's".into(),
        ));
    }
    meta.check_weights(layout.end as u64)
        .map_err(|e| CompileError::Internal(format!("emitted artifact is inconsistent: {e}")))?;
    let written = (|| {
        let w = neuron_isa::ArtifactWriter::create(path, meta, layout.end as u64)?;
        layout.chunks().into_par_iter().try_for_each_init(
            || (Vec::new(), (Vec::new(), Vec::new())),
            |(buf, scratch), (j, first, count, offset)| {
                buf.resize(count * layout.jobs[j].0.size() as usize, 0u8);
                layout.encode(j, first, buf, scratch);
                w.write_blob_at(offset as u64, buf)
            },
        )?;
        w.finish()
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(path);
        match e {
            neuron_isa::ArtifactError::Io { cause, .. } => CompileError::io(path, cause),
            e => CompileError::Internal(format!("cannot write {}: {e}", path.display())),
        }
    })
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
