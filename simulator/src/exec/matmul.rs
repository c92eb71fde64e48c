//! `matmul`: `dst[M, N] (+)= stationary[K, M]^T @ moving[K, N]` on TensorE.
//!
//! Float inputs: every product of two bf16/fp16/fp8 values is exact in FP32 (at most
//! 11 + 11 significand bits), and the K products are summed in FP32, then added to (or
//! written over) the FP32 PSUM value. The GEMM is ndarray's `general_mat_mul` (the
//! `matrixmultiply` kernels), which sums each output's K <= 128 products in order in one
//! block. Deviation: for FP32 inputs products are not exact and may be fused (FMA)
//! depending on the host CPU, so FP32 matmul bits can differ between hosts; the chip's
//! own FP32 path (multi-pass) is not modelled bit for bit.
//!
//! INT8 inputs (i8/u8) accumulate in INT32: each sum over K <= 128 is at most
//! 128 * 255 * 255 < 2^24 in magnitude, so the FP32 GEMM computes it exactly; it is then
//! added to the INT32 PSUM value with saturation.

use super::{ExecContext, ExecError, shape};
use crate::memory::Memories;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use neuron_isa::{Ap, Dtype};

fn is_int8(d: Dtype) -> bool {
    matches!(d, Dtype::I8 | Dtype::U8)
}

pub(super) fn matmul(
    mem: &mut Memories,
    dst: &Ap,
    stationary: &Ap,
    moving: &Ap,
    accumulate: bool,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    let (k, m) = shape(stationary);
    let (k2, n) = shape(moving);
    if k2 != k {
        return Err(ExecError::new(format!(
            "stationary {stationary} has K={k} partitions but moving {moving} has {k2}"
        )));
    }
    if shape(dst) != (m, n) {
        return Err(ExecError::new(format!(
            "dst {dst} must be [M={m}, N={n}], found [{}, {}]",
            shape(dst).0,
            shape(dst).1
        )));
    }
    let int8 = is_int8(stationary.dtype) && is_int8(moving.dtype);
    if int8 && dst.dtype != Dtype::I32 {
        return Err(ExecError::new(format!(
            "dst {dst}: int8 inputs accumulate into i32, found {}",
            dst.dtype
        )));
    }
    let mut s = ctx.take();
    let mut mv = ctx.take();
    let mut c = ctx.take();
    let mut poisoned = mem.read_f32(stationary, &mut s)?;
    poisoned |= mem.read_f32(moving, &mut mv)?;
    let float_acc = accumulate && !int8;
    if float_acc {
        poisoned |= mem.read_f32(dst, &mut c)?;
    } else {
        c.clear();
        c.resize(m * n, 0.0);
    }
    {
        let shape_err = |e: ndarray::ShapeError| ExecError::new(format!("matmul buffers: {e}"));
        let sv = ArrayView2::from_shape((k, m), &s[..]).map_err(shape_err)?;
        let mvv = ArrayView2::from_shape((k, n), &mv[..]).map_err(shape_err)?;
        let mut cv = ArrayViewMut2::from_shape((m, n), &mut c[..]).map_err(shape_err)?;
        let beta = if float_acc { 1.0 } else { 0.0 };
        general_mat_mul(1.0, &sv.t(), &mvv, beta, &mut cv);
    }
    if int8 {
        // Exact: |sum| < 2^24, so the f32 holds an integer.
        let mut acc = Vec::new();
        if accumulate {
            mem.read_i32(dst, &mut acc)?;
        } else {
            acc.resize(m * n, 0);
        }
        for (a, &v) in acc.iter_mut().zip(&c) {
            *a = a.saturating_add(v as i32);
        }
        mem.write_i32(dst, &acc)?;
    } else {
        mem.write_f32(dst, &c, &mut ctx.rounder)?;
    }
    ctx.give([s, mv, c]);
    Ok(poisoned)
}
