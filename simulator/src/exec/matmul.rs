//! `matmul`: `dst[M, N] (+)= stationary[K, M]^T @ moving[K, N]` on TensorE.
//!
//! The arithmetic rule, the same bits on every host (docs/numerics.md, "Matmul"): each
//! output element is `acc = +0; for k in 0..K { acc = acc + s[k, m] * v[k, n] }` in FP32,
//! every product and every sum rounded on its own (no fused multiply-add), `k` in
//! increasing order; then `dst = acc` (a fresh accumulation: `+0 + acc`) or
//! `dst = dst + acc`.
//!
//! - bf16 / fp16 / fp8 inputs: every product is exact in FP32 (at most 11 + 11
//!   significand bits), so fusing or not cannot change a bit and the rule is computed by
//!   ndarray's `general_mat_mul` (the `matrixmultiply` kernels: one block for K <= 128,
//!   each output summed over `k` in order, `alpha = beta = 1` exact), the fast path.
//! - FP32 inputs: products are not exact, and `matrixmultiply` fuses them on hosts with
//!   FMA, so the rule is computed by [`gemm_f32_unfused`], a portable kernel of
//!   separate multiplies and adds (Rust never contracts them). Deviation: the chip's own
//!   FP32 path (multi-pass) is not modelled bit for bit.
//! - INT8 inputs (i8/u8) accumulate in INT32: each sum over K <= 128 is at most
//!   128 * 255 * 255 < 2^24 in magnitude, so the FP32 GEMM computes it exactly; it is
//!   then added to the INT32 PSUM value with saturation.
//!
//! Large matmuls are split over output columns across the rayon pool; every element is
//! computed by the same operations whatever the split, so the bits do not depend on the
//! thread count.

use super::{ExecContext, ExecError, shape};
use crate::memory::Memories;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Axis};
use neuron_isa::{Ap, Dtype};

fn is_int8(d: Dtype) -> bool {
    matches!(d, Dtype::I8 | Dtype::U8)
}

/// Checks the operands of a matmul: returns `(K, M, N, int8)`.
pub(super) fn operands(
    dst: &Ap,
    stationary: &Ap,
    moving: &Ap,
) -> Result<(usize, usize, usize, bool), ExecError> {
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
    Ok((k, m, n, int8))
}

pub(super) fn matmul(
    mem: &mut Memories,
    dst: &Ap,
    stationary: &Ap,
    moving: &Ap,
    accumulate: bool,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    let (k, m, n, int8) = operands(dst, stationary, moving)?;
    let width = block_width(k, m, n);
    let mut s = ctx.take();
    let mut poisoned = mem.read_f32(stationary, &mut s)?;
    let mut mv = ctx.take();
    poisoned |= mem.read_f32(moving, &mut mv)?;
    let exact_products = stationary.dtype != Dtype::F32 && moving.dtype != Dtype::F32;
    let shape_err = |e: ndarray::ShapeError| ExecError::new(format!("matmul buffers: {e}"));
    let sv = ArrayView2::from_shape((k, m), s.as_slice()).map_err(shape_err)?;
    let vblocks = moving_blocks(&mv, k, n, width)?;
    if !int8 {
        // The fast path: accumulate in place in PSUM (the inputs are already read, so an
        // overlap with `dst` behaves as if they were snapshotted).
        if let Some(cv) = mem.rows_f32_mut(dst)? {
            poisoned |= gemm(&sv, vblocks, cv, width, accumulate, exact_products, true);
            ctx.give([s, mv]);
            return Ok(poisoned);
        }
    }
    let mut c = ctx.take();
    let float_acc = accumulate && !int8;
    if float_acc {
        poisoned |= mem.read_f32(dst, &mut c)?;
    } else {
        c.clear();
        c.resize(m * n, 0.0);
    }
    let cv = ArrayViewMut2::from_shape((m, n), c.as_mut_slice()).map_err(shape_err)?;
    gemm(&sv, vblocks, cv, width, float_acc, exact_products, true);
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

/// The column blocks of `width` columns (the last one narrower) of the dense moving
/// tile `mv` (`[K, N]`).
pub(super) fn moving_blocks(
    mv: &[f32],
    k: usize,
    n: usize,
    width: usize,
) -> Result<Vec<ArrayView2<'_, f32>>, ExecError> {
    let whole = ArrayView2::from_shape((k, n), mv)
        .map_err(|e| ExecError::new(format!("matmul buffers: {e}")))?;
    Ok((0..n.div_ceil(width.max(1)))
        .map(|b| whole.slice_move(ndarray::s![.., b * width..((b + 1) * width).min(n)]))
        .collect())
}

/// Multiply-adds below which a matmul is not split across threads.
const PARALLEL_MACS: usize = 1 << 20;

/// The width of the column blocks a `[K, M] x [K, N]` matmul is split into across the
/// rayon pool (`n` when it is not split). Any split gives the same bits.
pub(super) fn block_width(k: usize, m: usize, n: usize) -> usize {
    block_width_on(rayon::current_num_threads(), k, m, n)
}

/// [`block_width`] on a pool of `threads` threads.
pub(super) fn block_width_on(threads: usize, k: usize, m: usize, n: usize) -> usize {
    let blocks = if k * m * n >= PARALLEL_MACS && threads > 1 {
        threads.min(n.div_ceil(64))
    } else {
        1
    };
    n.div_ceil(blocks.max(1)).max(1)
}

/// `c[M, N] = (accumulate ? c : 0) + s[K, M]^T @ v[K, N]` by the module's rule, over the
/// column blocks of `c` (`width` columns each, the last one narrower) in parallel;
/// `vblocks` are the same column blocks of `v`. `c` may be a strided view (the rows of
/// PSUM itself). When accumulating and `check_poison`, returns whether any element of `c`
/// was the FP32 poison pattern before the update (a read of unwritten memory).
pub(super) fn gemm(
    sv: &ArrayView2<'_, f32>,
    vblocks: Vec<ArrayView2<'_, f32>>,
    mut cv: ArrayViewMut2<'_, f32>,
    width: usize,
    accumulate: bool,
    exact_products: bool,
    check_poison: bool,
) -> bool {
    use rayon::prelude::*;
    let beta = if accumulate { 1.0 } else { 0.0 };
    let run = |vb: ArrayView2<'_, f32>, mut cb: ArrayViewMut2<'_, f32>| {
        let poisoned = accumulate && check_poison && has_poison(&cb);
        if exact_products {
            general_mat_mul(1.0, &sv.t(), &vb, beta, &mut cb);
        } else {
            gemm_f32_unfused(sv, &vb, &mut cb, accumulate);
        }
        poisoned
    };
    if vblocks.len() == 1 {
        return vblocks.into_iter().any(|vb| run(vb, cv.view_mut()));
    }
    let ccols: Vec<_> = cv.axis_chunks_iter_mut(Axis(1), width).collect();
    debug_assert!(
        vblocks.len() == ccols.len()
            && vblocks
                .iter()
                .zip(&ccols)
                .all(|(v, c)| v.ncols() == c.ncols()),
        "moving and dst column blocks must match"
    );
    vblocks
        .into_par_iter()
        .zip(ccols)
        .map(|(vb, cb)| run(vb, cb))
        .reduce(|| false, |a, b| a | b)
}

/// Whether some element of `c` has the FP32 poison bits (all ones).
fn has_poison(c: &ArrayViewMut2<'_, f32>) -> bool {
    c.rows().into_iter().any(|row| match row.as_slice() {
        // Compares OR-ed without branches, as `numerics::is_poisoned`.
        Some(r) => r
            .iter()
            .fold(false, |any, x| any | (x.to_bits() == u32::MAX)),
        None => row.iter().any(|x| x.to_bits() == u32::MAX),
    })
}

neuron_isa::vectorized! {
    /// The module's rule for FP32 inputs, with separate multiplies and adds: for each output
    /// row, `acc[n] = acc[n] + s[k, m] * v[k, n]` over `k` in order (vectorizes over `n`
    /// without changing any element's order of operations), then `c = (accumulate ? c : +0)
    /// + acc`. Compiled for the host's widest vector units (`neuron_isa::simd`).
    pub(crate) fn gemm_f32_unfused(
        s: &ArrayView2<'_, f32>,
        v: &ArrayView2<'_, f32>,
        c: &mut ArrayViewMut2<'_, f32>,
        accumulate: bool,
    ) {
        let (k, m) = s.dim();
        let n = v.ncols();
        let mut acc = vec![0f32; n];
        for mi in 0..m {
            acc.fill(0.0);
            for ki in 0..k {
                let a = s[[ki, mi]];
                let row = v.row(ki);
                match row.as_slice() {
                    Some(r) => {
                        for (o, &x) in acc.iter_mut().zip(r) {
                            *o += a * x;
                        }
                    }
                    None => {
                        for (o, &x) in acc.iter_mut().zip(row.iter()) {
                            *o += a * x;
                        }
                    }
                }
            }
            let mut row = c.row_mut(mi);
            let add = |(o, &x): (&mut f32, &f32)| {
                let base = if accumulate { *o } else { 0.0 };
                *o = base + x;
            };
            // A contiguous row as a slice (ndarray's iterator does not vectorize).
            match row.as_slice_mut() {
                Some(r) => r.iter_mut().zip(&acc).for_each(add),
                None => row.iter_mut().zip(&acc).for_each(add),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// The rule, one element at a time.
    fn rule(s: &Array2<f32>, v: &Array2<f32>, c: &Array2<f32>, accumulate: bool) -> Array2<f32> {
        let (k, m) = s.dim();
        let n = v.ncols();
        Array2::from_shape_fn((m, n), |(i, j)| {
            let mut acc = 0f32;
            for kk in 0..k {
                let p = s[[kk, i]] * v[[kk, j]];
                acc += p;
            }
            (if accumulate { c[[i, j]] } else { 0.0 }) + acc
        })
    }

    fn data(k: usize, m: usize, n: usize, bf16: bool) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
        let r = neuron_isa::rng::CounterRng::for_tensor(1, "mm");
        let mut x = vec![0f32; k * m + k * n + m * n];
        r.fill_standard_normal(0, &mut x);
        if bf16 {
            for v in &mut x {
                *v = crate::numerics::bf16_to_f32(crate::numerics::f32_to_bf16(*v));
            }
        }
        let s = Array2::from_shape_vec((k, m), x[..k * m].to_vec()).unwrap();
        let v = Array2::from_shape_vec((k, n), x[k * m..k * m + k * n].to_vec()).unwrap();
        let c = Array2::from_shape_vec((m, n), x[k * m + k * n..].to_vec()).unwrap();
        (s, v, c)
    }

    fn bits(a: &Array2<f32>) -> Vec<u32> {
        a.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn both_paths_follow_the_rule_for_any_thread_count() {
        for (exact, acc) in [(true, false), (true, true), (false, false), (false, true)] {
            let (k, m, n) = (128, 96, 500);
            let (s, v, c0) = data(k, m, n, exact);
            let want = rule(&s, &v, &c0, acc);
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut c = c0.clone();
                pool.install(|| {
                    let width = block_width(k, m, n);
                    let vblocks = v.axis_chunks_iter(Axis(1), width).collect();
                    gemm(&s.view(), vblocks, c.view_mut(), width, acc, exact, true)
                });
                assert_eq!(
                    bits(&c),
                    bits(&want),
                    "exact {exact} acc {acc} threads {threads}"
                );
            }
            // The unfused kernel at every vector level the host has.
            for level in neuron_isa::simd::Level::ALL {
                let mut c = c0.clone();
                gemm_f32_unfused::at(level, &s.view(), &v.view(), &mut c.view_mut(), acc);
                assert_eq!(bits(&c), bits(&want), "unfused acc {acc} {level:?}");
            }
        }
    }
}
