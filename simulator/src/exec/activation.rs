//! `activation`: `dst = func(src * scale + bias)` on ScalarE, in FP32, with an optional
//! per-partition sum of the results (before the cast to `dst`) written to `accum`.
//!
//! Functions are evaluated with `libm` (portable, correctly-rounded-or-close FP32
//! implementations) so results are identical on every host. Deviation: the chip uses
//! piecewise-polynomial approximations with documented valid input ranges (e.g. `log`
//! on [2^-64, 2^64]); we compute the exact functions everywhere, so in-range results
//! differ from the chip's by its approximation error and out-of-range inputs do not
//! reproduce its invalid outputs. `x * scale + bias` is two FP32 operations (no fused
//! multiply-add). NaN propagates through every function (`relu(NaN)` is NaN).

use super::erff::erf_in_place;
use super::expf::exp_in_place;
use super::{ExecContext, ExecError, Scalars, same_shape, shape};
use crate::memory::Memories;
use neuron_isa::{ActFunc, Ap, Operand};
use std::f32::consts::FRAC_1_SQRT_2;

/// sqrt(2 / pi), the tanh-GELU constant.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + libm::expf(-x))
}

/// `func(x)` in FP32: the reference for every activation function.
#[inline(always)]
pub fn activation_fn(func: ActFunc, x: f32) -> f32 {
    match func {
        ActFunc::Identity => x,
        ActFunc::Relu => {
            if x > 0.0 || x.is_nan() {
                x
            } else {
                0.0
            }
        }
        ActFunc::Gelu => 0.5 * x * (1.0 + libm::erff(x * FRAC_1_SQRT_2)),
        ActFunc::GeluTanh => {
            0.5 * x * (1.0 + libm::tanhf(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
        }
        ActFunc::Sigmoid => sigmoid(x),
        // A NaN input is returned itself: `x * sigmoid(x)` would multiply it by the
        // sign-flipped NaN of `exp(-x)`, and which of two NaN operands a multiplication
        // returns depends on the host's instruction choice.
        ActFunc::Silu if x.is_nan() => x,
        ActFunc::Silu => x * sigmoid(x),
        ActFunc::Tanh => libm::tanhf(x),
        ActFunc::Exp => libm::expf(x),
        ActFunc::Log => libm::logf(x),
        ActFunc::Sqrt => libm::sqrtf(x),
        ActFunc::Rsqrt => 1.0 / libm::sqrtf(x),
        ActFunc::Reciprocal => 1.0 / x,
        ActFunc::Square => x * x,
        ActFunc::Erf => libm::erff(x),
        ActFunc::Abs => libm::fabsf(x),
        ActFunc::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                // +-0 stays +-0 and NaN stays NaN.
                x
            }
        }
        // ln(1 + e^x) in a form that neither overflows for large x nor loses small values.
        ActFunc::Softplus => x.max(0.0) + libm::log1pf(libm::expf(-libm::fabsf(x))),
    }
}

/// Elements from which an activation of a transcendental function is split across the
/// rayon pool.
const PARALLEL_ELEMS: usize = 1 << 14;

/// Functions too cheap per element for a split across threads to pay.
fn cheap(func: ActFunc) -> bool {
    matches!(
        func,
        ActFunc::Identity | ActFunc::Relu | ActFunc::Square | ActFunc::Abs | ActFunc::Sign
    )
}

/// `exp(x * scale + bias)` over one partition's row: the same operations as `map_row`
/// with `activation_fn(Exp, _)`, with the `exp`s vectorised (`expf.rs`, bit for bit
/// `libm::expf`).
fn exp_row(row: &mut [f32], scale: f32, bias: f32) {
    affine(row, scale, bias);
    exp_in_place(row);
}

/// `x = x * scale + bias` over a row: two FP32 operations, no fused multiply-add.
#[inline(always)]
fn affine(row: &mut [f32], scale: f32, bias: f32) {
    for x in row.iter_mut() {
        *x = *x * scale + bias;
    }
}

/// Rows whose sums are taken together (see [`row_sums`]).
const SUM_ROWS: usize = 8;

neuron_isa::vectorized! {
    /// `func(x * scale + bias)` over the rows of `x` (`free` elements each, the first
    /// being partition `p0`), and each row's sum into `sums` when given. Compiled for the
    /// host's widest vector units (`neuron_isa::simd`).
    fn activation_rows(
        x: &mut [f32],
        free: usize,
        p0: usize,
        func: ActFunc,
        scale: &Scalars,
        bias: &Scalars,
        sums: Option<&mut [f32]>,
    ) {
        for (i, row) in x.chunks_exact_mut(free).enumerate() {
            let p = p0 + i;
            row_of(func, row, scale.at(p), bias.at(p));
        }
        if let Some(sums) = sums {
            row_sums(x, free, sums);
        }
    }
}

/// `func(x * scale + bias)` over one partition's row.
#[inline(always)]
fn row_of(func: ActFunc, row: &mut [f32], s: f32, b: f32) {
    // One monomorphised loop per function so the compiler can inline it.
    match func {
        ActFunc::Identity => map_row(row, s, b, |v| activation_fn(ActFunc::Identity, v)),
        ActFunc::Relu => map_row(row, s, b, |v| activation_fn(ActFunc::Relu, v)),
        ActFunc::Gelu => gelu_row(row, s, b),
        ActFunc::GeluTanh => map_row(row, s, b, |v| activation_fn(ActFunc::GeluTanh, v)),
        ActFunc::Sigmoid => sigmoid_row(row, s, b, false),
        ActFunc::Silu => sigmoid_row(row, s, b, true),
        ActFunc::Tanh => map_row(row, s, b, |v| activation_fn(ActFunc::Tanh, v)),
        ActFunc::Exp => exp_row(row, s, b),
        ActFunc::Log => map_row(row, s, b, |v| activation_fn(ActFunc::Log, v)),
        ActFunc::Sqrt => map_row(row, s, b, |v| activation_fn(ActFunc::Sqrt, v)),
        ActFunc::Rsqrt => map_row(row, s, b, |v| activation_fn(ActFunc::Rsqrt, v)),
        ActFunc::Reciprocal => map_row(row, s, b, |v| activation_fn(ActFunc::Reciprocal, v)),
        ActFunc::Square => map_row(row, s, b, |v| activation_fn(ActFunc::Square, v)),
        ActFunc::Erf => erf_row(row, s, b),
        ActFunc::Abs => map_row(row, s, b, |v| activation_fn(ActFunc::Abs, v)),
        ActFunc::Sign => map_row(row, s, b, |v| activation_fn(ActFunc::Sign, v)),
        ActFunc::Softplus => map_row(row, s, b, |v| activation_fn(ActFunc::Softplus, v)),
    }
}

/// Each row's FP32 sum in free order, as the chip's accumulator adds them (`sums[r]` for
/// row `r` of `x`, rows of `free` elements; a NaN sum stays that NaN): [`SUM_ROWS`] rows at a time, so that their
/// chains of dependent adds overlap instead of following one another (the same adds in
/// the same order for every row).
#[inline(always)]
fn row_sums(x: &[f32], free: usize, sums: &mut [f32]) {
    for (rows, out) in x.chunks(SUM_ROWS * free).zip(sums.chunks_mut(SUM_ROWS)) {
        let mut acc = [0.0f32; SUM_ROWS];
        let n = out.len().min(rows.len() / free);
        for j in 0..free {
            for (r, a) in acc.iter_mut().enumerate().take(n) {
                // A NaN sum stays that NaN: which of two NaNs an addition returns
                // depends on the host's instruction choice (the compiler may swap the
                // operands), so the first NaN in free order is kept explicitly.
                let v = rows[r * free + j];
                *a = if a.is_nan() { *a } else { *a + v };
            }
        }
        out[..n].copy_from_slice(&acc[..n]);
    }
}

/// `sigmoid(x * scale + bias)` (times `x * scale + bias` for SiLU) over one partition's
/// row: `activation_fn`'s `1 / (1 + exp(-x))` with the `exp`s vectorised.
fn sigmoid_row(row: &mut [f32], scale: f32, bias: f32, silu: bool) {
    const CHUNK: usize = 64;
    for chunk in row.chunks_mut(CHUNK) {
        let mut z = [0.0f32; CHUNK];
        for (z, x) in z.iter_mut().zip(chunk.iter_mut()) {
            *z = *x * scale + bias;
            *x = -*z;
        }
        exp_in_place(chunk);
        for (y, &v) in chunk.iter_mut().zip(z.iter()) {
            let s = 1.0 / (1.0 + *y);
            // SiLU of NaN: the input NaN, as `activation_fn` defines it.
            *y = if !silu {
                s
            } else if v.is_nan() {
                v
            } else {
                v * s
            };
        }
    }
}

/// `gelu(x * scale + bias)` (the erf form) over one partition's row: `activation_fn`'s
/// `0.5 x (1 + erf(x / sqrt 2))` with the `erf`s vectorised (`erff.rs`, bit for bit
/// `libm::erff`).
fn gelu_row(row: &mut [f32], scale: f32, bias: f32) {
    const CHUNK: usize = 64;
    for chunk in row.chunks_mut(CHUNK) {
        let mut t = [0.0f32; CHUNK];
        let t = &mut t[..chunk.len()];
        for (t, x) in t.iter_mut().zip(chunk.iter_mut()) {
            *x = *x * scale + bias;
            *t = *x * FRAC_1_SQRT_2;
        }
        erf_in_place(t);
        for (x, &e) in chunk.iter_mut().zip(t.iter()) {
            *x = 0.5 * *x * (1.0 + e);
        }
    }
}

/// `erf(x * scale + bias)` over one partition's row, the `erf`s vectorised.
fn erf_row(row: &mut [f32], scale: f32, bias: f32) {
    affine(row, scale, bias);
    erf_in_place(row);
}

/// Applies `f(x * scale + bias)` to one partition's row.
#[inline(always)]
fn map_row(row: &mut [f32], scale: f32, bias: f32, f: impl Fn(f32) -> f32) {
    for x in row.iter_mut() {
        *x = f(*x * scale + bias);
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn activation(
    mem: &mut Memories,
    dst: &Ap,
    src: &Ap,
    func: ActFunc,
    scale: &Operand,
    bias: Option<&Operand>,
    accum: Option<&Ap>,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    same_shape("dst", dst, "src", src)?;
    let (parts, free) = shape(src);
    let mut poisoned = false;
    let scale = Scalars::read(mem, "scale", scale, parts, &mut poisoned)?;
    let bias = match bias {
        Some(b) => Scalars::read(mem, "bias", b, parts, &mut poisoned)?,
        None => Scalars::Imm(0.0),
    };
    if let Some(acc) = accum {
        if shape(acc) != (parts, 1) {
            return Err(ExecError::new(format!(
                "accum {acc}: expected [{parts}, 1], found [{}, {}]",
                shape(acc).0,
                shape(acc).1
            )));
        }
    }
    let mut x = ctx.take();
    poisoned |= mem.read_f32(src, &mut x)?;
    // The row sums only when `accum` asks for them: a sequential FP32 sum is one
    // dependent add per element, most of an identity eviction's time.
    let want_sums = accum.is_some();
    let mut sums = vec![0.0f32; parts];
    let free = free.max(1);
    // Transcendental functions over a large tile are split by groups of eight partitions
    // across the pool (every element and every row sum is computed by the same
    // operations either way).
    if x.len() >= PARALLEL_ELEMS && !cheap(func) && ctx.may_split() {
        use rayon::prelude::*;
        x.par_chunks_exact_mut(SUM_ROWS * free)
            .zip(sums.par_chunks_mut(SUM_ROWS))
            .enumerate()
            .for_each(|(g, (rows, sums))| {
                let sums = want_sums.then_some(sums);
                activation_rows(rows, free, g * SUM_ROWS, func, &scale, &bias, sums)
            });
        // The partitions after the last whole group.
        let done = x.len() / (SUM_ROWS * free) * SUM_ROWS;
        let tail = want_sums.then_some(&mut sums[done..]);
        activation_rows(&mut x[done * free..], free, done, func, &scale, &bias, tail);
    } else {
        let sums = want_sums.then_some(&mut sums[..]);
        activation_rows(&mut x, free, 0, func, &scale, &bias, sums);
    }
    mem.write_f32(dst, &x, &mut ctx.rounder)?;
    if let Some(acc) = accum {
        mem.write_f32(acc, &sums, &mut ctx.rounder)?;
    }
    ctx.give([x]);
    Ok(poisoned)
}
