//! The VectorE/GpSimd ALU (`AluOp` on two FP32 values) and the elementwise ops built on
//! it: `tensor_tensor` and `tensor_scalar`.
//!
//! NaN rules: arithmetic follows IEEE 754; `max`/`min` propagate NaN (like NumPy's
//! `maximum`, unlike Rust's `f32::max`) so poison stays visible; comparisons with NaN
//! are false (`is_ne` true) and yield 0.0 or 1.0; `pow` is `libm::powf`.

use super::{ExecContext, ExecError, Scalars, same_shape, shape};
use crate::memory::Memories;
use neuron_isa::{AluOp, Ap, Operand};

#[inline(always)]
pub(super) fn max_nan(a: f32, b: f32) -> f32 {
    if a > b || a.is_nan() { a } else { b }
}

#[inline(always)]
pub(super) fn min_nan(a: f32, b: f32) -> f32 {
    if a < b || a.is_nan() { a } else { b }
}

#[inline(always)]
fn flag(c: bool) -> f32 {
    if c { 1.0 } else { 0.0 }
}

/// `a op b` in FP32: the reference for every ALU op.
#[inline(always)]
pub fn alu(op: AluOp, a: f32, b: f32) -> f32 {
    match op {
        AluOp::Add => a + b,
        AluOp::Sub => a - b,
        AluOp::Mul => a * b,
        AluOp::Div => a / b,
        AluOp::Max => max_nan(a, b),
        AluOp::Min => min_nan(a, b),
        AluOp::Pow => libm::powf(a, b),
        AluOp::IsEq => flag(a == b),
        AluOp::IsNe => flag(a != b),
        AluOp::IsGt => flag(a > b),
        AluOp::IsGe => flag(a >= b),
        AluOp::IsLt => flag(a < b),
        AluOp::IsLe => flag(a <= b),
        AluOp::Bypass => a,
    }
}

/// Calls `$run($args.., kernel)` with a closure computing `$op`, one monomorphised call
/// per op so the elementwise loops inline the arithmetic and can vectorise.
macro_rules! with_alu {
    ($op:expr, $run:ident($($arg:expr),*)) => {
        match $op {
            AluOp::Add => $run($($arg,)* |a: f32, b: f32| alu(AluOp::Add, a, b)),
            AluOp::Sub => $run($($arg,)* |a: f32, b: f32| alu(AluOp::Sub, a, b)),
            AluOp::Mul => $run($($arg,)* |a: f32, b: f32| alu(AluOp::Mul, a, b)),
            AluOp::Div => $run($($arg,)* |a: f32, b: f32| alu(AluOp::Div, a, b)),
            AluOp::Max => $run($($arg,)* |a: f32, b: f32| alu(AluOp::Max, a, b)),
            AluOp::Min => $run($($arg,)* |a: f32, b: f32| alu(AluOp::Min, a, b)),
            AluOp::Pow => $run($($arg,)* |a: f32, b: f32| alu(AluOp::Pow, a, b)),
            AluOp::IsEq => $run($($arg,)* |a: f32, b: f32| alu(AluOp::IsEq, a, b)),
            AluOp::IsNe => $run($($arg,)* |a: f32, b: f32| alu(AluOp::IsNe, a, b)),
            AluOp::IsGt => $run($($arg,)* |a: f32, b: f32| alu(AluOp::IsGt, a, b)),
            AluOp::IsGe => $run($($arg,)* |a: f32, b: f32| alu(AluOp::IsGe, a, b)),
            AluOp::IsLt => $run($($arg,)* |a: f32, b: f32| alu(AluOp::IsLt, a, b)),
            AluOp::IsLe => $run($($arg,)* |a: f32, b: f32| alu(AluOp::IsLe, a, b)),
            AluOp::Bypass => $run($($arg,)* |a: f32, b: f32| alu(AluOp::Bypass, a, b)),
        }
    };
}
pub(super) use with_alu;

/// `a[i] = f(a[i], b[i])`.
#[inline(always)]
fn zip_in_place(a: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x = f(*x, y);
    }
}

/// `row[i] = f(row[i], s)`, or `f(s, row[i])` when `reverse`.
#[inline(always)]
fn with_scalar(row: &mut [f32], s: f32, reverse: bool, f: impl Fn(f32, f32) -> f32) {
    if reverse {
        for x in row.iter_mut() {
            *x = f(s, *x);
        }
    } else {
        for x in row.iter_mut() {
            *x = f(*x, s);
        }
    }
}

/// `dst = a op b`, elementwise.
pub(super) fn tensor_tensor(
    mem: &mut Memories,
    dst: &Ap,
    a: &Ap,
    b: &Ap,
    op: AluOp,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    same_shape("dst", dst, "a", a)?;
    same_shape("dst", dst, "b", b)?;
    let mut x = ctx.take();
    let mut y = ctx.take();
    let mut poisoned = mem.read_f32(a, &mut x)?;
    poisoned |= mem.read_f32(b, &mut y)?;
    with_alu!(op, zip_in_place(&mut x, &y));
    mem.write_f32(dst, &x, &mut ctx.rounder)?;
    ctx.give([x, y]);
    Ok(poisoned)
}

/// `dst = (src op0 operand0) op1 operand1`, each side swapped by its `reverse` flag.
pub(super) fn tensor_scalar(
    mem: &mut Memories,
    dst: &Ap,
    src: &Ap,
    first: (AluOp, &Operand, bool),
    second: (AluOp, &Operand, bool),
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    same_shape("dst", dst, "src", src)?;
    let (parts, free) = shape(src);
    let mut poisoned = false;
    let s0 = Scalars::read(mem, "operand0", first.1, parts, &mut poisoned)?;
    let s1 = Scalars::read(mem, "operand1", second.1, parts, &mut poisoned)?;
    let mut x = ctx.take();
    poisoned |= mem.read_f32(src, &mut x)?;
    for (p, row) in x.chunks_exact_mut(free.max(1)).enumerate() {
        with_alu!(first.0, with_scalar(row, s0.at(p), first.2));
        // `bypass` returns its left operand: skip it when that is the data.
        if second.0 != AluOp::Bypass || second.2 {
            with_alu!(second.0, with_scalar(row, s1.at(p), second.2));
        }
    }
    mem.write_f32(dst, &x, &mut ctx.rounder)?;
    ctx.give([x]);
    Ok(poisoned)
}
