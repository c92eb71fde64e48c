//! `tensor_reduce`: reduces the innermost `axes` free dimensions of each partition with
//! add, max, min or mul, in FP32, sequentially in memory order of the view (the order a
//! lane streams its elements); `negate` negates the result. Max and min propagate NaN.

use super::alu::{alu, with_alu};
use super::{ExecContext, ExecError, shape};
use crate::memory::Memories;
use neuron_isa::{AluOp, Ap};

/// `out[g] = fold(f, group g)` over consecutive groups of `group` elements.
#[inline(always)]
fn fold_groups(x: &[f32], group: usize, out: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    for (o, g) in out.iter_mut().zip(x.chunks_exact(group)) {
        let mut acc = g[0];
        for &v in &g[1..] {
            acc = f(acc, v);
        }
        *o = acc;
    }
}

pub(super) fn tensor_reduce(
    mem: &mut Memories,
    dst: &Ap,
    src: &Ap,
    op: AluOp,
    axes: u8,
    negate: bool,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    if !op.is_reduction() {
        return Err(ExecError::new(format!(
            "{} is not a reduction: expected add, max, min or mul",
            op.name()
        )));
    }
    let axes = usize::from(axes);
    if axes == 0 || axes > src.dims.len() {
        return Err(ExecError::new(format!(
            "axes must be 1..={} (src free dims), found {axes}",
            src.dims.len()
        )));
    }
    let (parts, free) = shape(src);
    let group = src.dims[src.dims.len() - axes..]
        .iter()
        .fold(1usize, |acc, d| acc.saturating_mul(d.size as usize));
    let kept = free / group.max(1);
    if shape(dst) != (parts, kept) {
        return Err(ExecError::new(format!(
            "dst {dst} must be [{parts}, {kept}], found [{}, {}]",
            shape(dst).0,
            shape(dst).1
        )));
    }
    let mut x = ctx.take();
    let mut out = ctx.take();
    let poisoned = mem.read_f32(src, &mut x)?;
    out.clear();
    out.resize(parts * kept, 0.0);
    // Groups never straddle partitions: `group` divides the free size.
    with_alu!(op, fold_groups(&x, group.max(1), &mut out));
    if negate {
        out.iter_mut().for_each(|v| *v = -*v);
    }
    mem.write_f32(dst, &out, &mut ctx.rounder)?;
    ctx.give([x, out]);
    Ok(poisoned)
}
