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

/// `exp(x * scale + bias)` over one partition's row, returning the row's sum: the same
/// operations as `run_row` with `activation_fn(Exp, _)`, with the `exp`s vectorised
/// (`expf.rs`, bit for bit `libm::expf`).
fn exp_row(row: &mut [f32], scale: f32, bias: f32) -> f32 {
    for x in row.iter_mut() {
        *x = *x * scale + bias;
    }
    exp_in_place(row);
    row.iter().fold(0.0f32, |sum, &y| sum + y)
}

/// `sigmoid(x * scale + bias)` (times `x * scale + bias` for SiLU) over one partition's
/// row, returning the row's sum: `activation_fn`'s `1 / (1 + exp(-x))` with the `exp`s
/// vectorised.
fn sigmoid_row(row: &mut [f32], scale: f32, bias: f32, silu: bool, z: &mut Vec<f32>) -> f32 {
    z.clear();
    z.extend(row.iter().map(|&x| x * scale + bias));
    for (e, &v) in row.iter_mut().zip(z.iter()) {
        *e = -v;
    }
    exp_in_place(row);
    let mut sum = 0.0f32;
    for (y, &v) in row.iter_mut().zip(z.iter()) {
        let s = 1.0 / (1.0 + *y);
        *y = if silu { v * s } else { s };
        sum += *y;
    }
    sum
}

/// Applies `f(x * scale + bias)` to one partition's row, returning the row's sum.
#[inline(always)]
fn run_row(row: &mut [f32], scale: f32, bias: f32, f: impl Fn(f32) -> f32) -> f32 {
    let mut sum = 0.0f32;
    for x in row.iter_mut() {
        let y = f(*x * scale + bias);
        *x = y;
        sum += y;
    }
    sum
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
    let mut sums = vec![0.0f32; parts];
    let row_of = |(p, (row, sum)): (usize, (&mut [f32], &mut f32))| {
        let (s, b) = (scale.at(p), bias.at(p));
        // One monomorphised loop per function so the compiler can inline it.
        *sum = match func {
            ActFunc::Identity => run_row(row, s, b, |v| activation_fn(ActFunc::Identity, v)),
            ActFunc::Relu => run_row(row, s, b, |v| activation_fn(ActFunc::Relu, v)),
            ActFunc::Gelu => run_row(row, s, b, |v| activation_fn(ActFunc::Gelu, v)),
            ActFunc::GeluTanh => run_row(row, s, b, |v| activation_fn(ActFunc::GeluTanh, v)),
            ActFunc::Sigmoid => sigmoid_row(row, s, b, false, &mut Vec::new()),
            ActFunc::Silu => sigmoid_row(row, s, b, true, &mut Vec::new()),
            ActFunc::Tanh => run_row(row, s, b, |v| activation_fn(ActFunc::Tanh, v)),
            ActFunc::Exp => exp_row(row, s, b),
            ActFunc::Log => run_row(row, s, b, |v| activation_fn(ActFunc::Log, v)),
            ActFunc::Sqrt => run_row(row, s, b, |v| activation_fn(ActFunc::Sqrt, v)),
            ActFunc::Rsqrt => run_row(row, s, b, |v| activation_fn(ActFunc::Rsqrt, v)),
            ActFunc::Reciprocal => run_row(row, s, b, |v| activation_fn(ActFunc::Reciprocal, v)),
            ActFunc::Square => run_row(row, s, b, |v| activation_fn(ActFunc::Square, v)),
            ActFunc::Erf => run_row(row, s, b, |v| activation_fn(ActFunc::Erf, v)),
            ActFunc::Abs => run_row(row, s, b, |v| activation_fn(ActFunc::Abs, v)),
            ActFunc::Sign => run_row(row, s, b, |v| activation_fn(ActFunc::Sign, v)),
            ActFunc::Softplus => run_row(row, s, b, |v| activation_fn(ActFunc::Softplus, v)),
        };
    };
    // Transcendental functions over a large tile are split by partitions across the pool
    // (every element and every row sum is computed by the same operations either way).
    if x.len() >= PARALLEL_ELEMS && !cheap(func) && ctx.may_split() {
        use rayon::prelude::*;
        x.par_chunks_exact_mut(free.max(1))
            .zip(sums.par_iter_mut())
            .enumerate()
            .for_each(row_of);
    } else {
        x.chunks_exact_mut(free.max(1))
            .zip(sums.iter_mut())
            .enumerate()
            .for_each(row_of);
    }
    mem.write_f32(dst, &x, &mut ctx.rounder)?;
    if let Some(acc) = accum {
        mem.write_f32(acc, &sums, &mut ctx.rounder)?;
    }
    ctx.give([x]);
    Ok(poisoned)
}
