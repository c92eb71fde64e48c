//! What the `analyze` functions of the row-tiled kinds share (elementwise, norm, softmax,
//! gather, copy): the joint row/column space of the output and the broadcast inputs, and
//! the descriptors of the operands their chains read.
//!
//! View 0 of every such space is the output; the inputs follow in the order the caller
//! gives, each broadcast to the output shape (numpy rules).

use super::chain::selected;
use super::operands::{RcOperand, classify};
use super::{chain_operands, kernel_input, lowering_error, view_storage};
use crate::backend::layout::{RowCols, Space, broadcast_view};
use crate::error::CompileError;
use crate::kernel::{EwOp, Kernel, KernelGraph, View};
use neuron_isa::{Dtype, TensorId};

/// The output of `k`, then its inputs `inputs` broadcast to the output shape.
fn output_and_inputs(k: &Kernel, inputs: &[usize]) -> Result<Vec<View>, CompileError> {
    let mut views: Vec<View> = vec![k.output.clone()];
    for &i in inputs {
        views.push(broadcast_input(k, i)?);
    }
    Ok(views)
}

/// Input `i` of `k` broadcast to the output shape.
pub fn broadcast_input(k: &Kernel, i: usize) -> Result<View, CompileError> {
    let shape = &k.output.shape;
    let v = kernel_input(k, i)?;
    broadcast_view(v, shape).ok_or_else(|| {
        lowering_error(
            k,
            format!(
                "input {i} of shape {:?} does not broadcast to {:?}",
                v.shape, shape
            ),
        )
    })
}

/// Builds the joint row/column space of `out` and `inputs` (broadcast to `out`'s shape),
/// spreading short rows over partitions when `spread` is set.
pub fn joint_space(k: &Kernel, inputs: &[usize], spread: bool) -> Result<RowCols, CompileError> {
    let views = output_and_inputs(k, inputs)?;
    let refs: Vec<&View> = views.iter().collect();
    let mut space = Space::new(&k.output.shape, &refs);
    if spread {
        space.spread_rows(128, 16);
    }
    Ok(RowCols::new(space, 1))
}

/// Rows shorter than this (at 4 bytes per element) are packed several per partition by
/// [`packed_space`]: DMA descriptors are overhead-bound below 512 B per partition and near
/// the peak from 2 KiB (trainium.md section 3).
pub const PACK_ROW_BYTES: usize = 512;

/// [`joint_space`] with spreading, then short rows packed: when there are at least two
/// partitions' worth of rows of fewer than [`PACK_ROW_BYTES`], `k` consecutive rows of
/// the innermost row dimension become one partition's row (the space's columns are then
/// `[k, cols]`), with `k` the largest divisor that still leaves 128 rows, so the tiles fill
/// every partition and each moves `k` rows' bytes in one descriptor per partition. An
/// operand that repeats along the packed rows (a bias row) or along the columns (a
/// per-row value) is loaded compact and read with a zero stride
/// ([`super::operands::CompactLoad`]).
pub fn packed_space(k: &Kernel, inputs: &[usize]) -> Result<RowCols, CompileError> {
    let views = output_and_inputs(k, inputs)?;
    let refs: Vec<&View> = views.iter().collect();
    let mut space = Space::new(&k.output.shape, &refs);
    space.spread_rows(128, 16);
    let packed = pack_short_rows(&mut space, 128);
    Ok(RowCols::new(space, if packed { 2 } else { 1 }))
}

/// Splits the innermost row dimension of `space` (all but its last dimension are rows) as
/// [`packed_space`] describes; returns whether it did.
fn pack_short_rows(space: &mut Space, partitions: usize) -> bool {
    let n = space.shape.len();
    if n < 2 {
        return false;
    }
    let (b, c) = (space.shape[n - 2], space.shape[n - 1]);
    if c == 0 || c * 4 >= PACK_ROW_BYTES {
        return false;
    }
    // One engine instruction reads at most 65536 elements per partition from SBUF.
    let max_k = (b / partitions).min(65536 / c);
    match (2..=max_k).rev().find(|k| b % k == 0) {
        Some(k) => {
            space.split(n - 2, k);
            true
        }
        None => false,
    }
}

/// The row/column space of a kernel whose last `ncols` output axes are columns, over the
/// output, then `inputs` broadcast to the output shape.
pub fn split_space(k: &Kernel, inputs: &[usize], ncols: usize) -> Result<RowCols, CompileError> {
    let views = output_and_inputs(k, inputs)?;
    let refs: Vec<&View> = views.iter().collect();
    let rc = RowCols::split_axes(&k.output.shape, &refs, ncols);
    if rc.cols.len() > neuron_isa::MAX_FREE_DIMS {
        return Err(lowering_error(
            k,
            format!(
                "the last {ncols} axes need {} free dimensions after merging, the hardware has {}",
                rc.cols.len(),
                neuron_isa::MAX_FREE_DIMS
            ),
        ));
    }
    Ok(rc)
}

/// An operand descriptor for kernel input `input` at view index `view` of `rc`.
pub fn rc_operand(
    kg: &KernelGraph,
    k: &Kernel,
    rc: &RowCols,
    input: usize,
    view: usize,
    force_full: bool,
) -> Result<RcOperand, CompileError> {
    let v = kernel_input(k, input)?;
    let (tensor, dtype) = view_storage(kg, k, v, &format!("input {input}"))?;
    Ok(RcOperand {
        input,
        view,
        class: classify(rc, view, force_full),
        tensor,
        dtype,
    })
}

/// Descriptors of the operands `opnds` (kernel inputs, at views `first_view ..` of `rc`)
/// read by `chain`; those a `Select` reads are full tiles.
pub fn chain_rc_operands(
    kg: &KernelGraph,
    k: &Kernel,
    rc: &RowCols,
    opnds: &[usize],
    first_view: usize,
    chain: &[EwOp],
) -> Result<Vec<RcOperand>, CompileError> {
    opnds
        .iter()
        .enumerate()
        .map(|(j, &i)| rc_operand(kg, k, rc, i, first_view + j, selected(chain, i)))
        .collect()
}

/// The HBM tensor and storage dtype of the output of `k`.
pub fn output_storage(kg: &KernelGraph, k: &Kernel) -> Result<(TensorId, Dtype), CompileError> {
    let t = kg
        .tensor(k.output.tensor)
        .ok_or_else(|| lowering_error(k, "output names a missing tensor"))?;
    Ok((TensorId(k.output.tensor.0), t.dtype))
}

/// The space, output and operands of a row kernel that applies a chain to one input `x`.
#[derive(Debug, Clone)]
pub struct RowInputs {
    /// Views: 0 = output, 1 = x, then the chain's operands.
    pub rc: RowCols,
    /// Output tensor and storage dtype.
    pub out: (TensorId, Dtype),
    /// The input `x` (always a full tile).
    pub x: RcOperand,
    /// The operands `chain` reads, in kernel-input order.
    pub operands: Vec<RcOperand>,
}

/// The [`RowInputs`] of kernel `k` with input `x` and chain `chain` (every chain the kernel
/// runs, e.g. prologue and epilogue together); `space` builds the row/column space of the
/// kernel inputs it is given ([`joint_space`], [`split_space`]).
pub fn row_inputs(
    kg: &KernelGraph,
    k: &Kernel,
    x: usize,
    chain: &[EwOp],
    space: impl FnOnce(&[usize]) -> Result<RowCols, CompileError>,
) -> Result<RowInputs, CompileError> {
    let opnds = chain_operands(chain);
    let mut inputs = vec![x];
    inputs.extend(&opnds);
    let rc = space(&inputs)?;
    let x = rc_operand(kg, k, &rc, x, 1, true)?;
    let operands = chain_rc_operands(kg, k, &rc, &opnds, 2, chain)?;
    let out = output_storage(kg, k)?;
    Ok(RowInputs {
        rc,
        out,
        x,
        operands,
    })
}
