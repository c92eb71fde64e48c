//! `tensor_copy`, `memset` and `select`: data movement on VectorE/GpSimd.
//!
//! `tensor_copy` moves bits when the dtypes are equal (NaN payloads and int32 values
//! above 2^24 survive) and otherwise casts through FP32. `select` computes in FP32:
//! `pred != 0` picks `on_true` (a NaN predicate counts as non-zero).

use super::{ExecContext, ExecError, same_shape, shape};
use crate::memory::Memories;
use neuron_isa::Ap;

pub(super) fn tensor_copy(
    mem: &mut Memories,
    dst: &Ap,
    src: &Ap,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    same_shape("dst", dst, "src", src)?;
    if let Some(poisoned) = mem.copy_raw(dst, src, ctx.may_split())? {
        return Ok(poisoned);
    }
    if dst.dtype == src.dtype {
        let mut raw = ctx.take_bytes();
        let poisoned = mem.read_raw(src, &mut raw)?;
        mem.write_raw(dst, &raw)?;
        ctx.give_bytes(raw);
        return Ok(poisoned);
    }
    let mut x = ctx.take();
    let poisoned = mem.read_f32(src, &mut x)?;
    mem.write_f32(dst, &x, &mut ctx.rounder)?;
    ctx.give([x]);
    Ok(poisoned)
}

pub(super) fn memset(
    mem: &mut Memories,
    dst: &Ap,
    value: f32,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    let (parts, free) = shape(dst);
    let mut x = ctx.take();
    x.clear();
    x.resize(
        parts
            .saturating_mul(free)
            .min(neuron_isa::verify::MAX_AP_ELEMS as usize),
        value,
    );
    mem.write_f32(dst, &x, &mut ctx.rounder)?;
    ctx.give([x]);
    Ok(false)
}

pub(super) fn select(
    mem: &mut Memories,
    dst: &Ap,
    pred: &Ap,
    on_true: &Ap,
    on_false: &Ap,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    same_shape("dst", dst, "pred", pred)?;
    same_shape("dst", dst, "on_true", on_true)?;
    same_shape("dst", dst, "on_false", on_false)?;
    let mut p = ctx.take();
    let mut t = ctx.take();
    let mut f = ctx.take();
    let mut poisoned = mem.read_f32(pred, &mut p)?;
    poisoned |= mem.read_f32(on_true, &mut t)?;
    poisoned |= mem.read_f32(on_false, &mut f)?;
    for ((o, &c), &fv) in t.iter_mut().zip(&p).zip(&f) {
        if c == 0.0 {
            *o = fv;
        }
    }
    mem.write_f32(dst, &t, &mut ctx.rounder)?;
    ctx.give([p, t, f]);
    Ok(poisoned)
}
