//! `transpose`: `dst[F, P] = src[P, F]` through the systolic array (SBUF -> PSUM).
//! Bit-exact when the dtypes are equal (NaN and Inf safe, as on NeuronCore-v3; the v2
//! array is not bit-exact for NaN/Inf, which we do not model); otherwise cast through
//! FP32 (e.g. bf16 into FP32 PSUM, which is exact).

use super::{ExecContext, ExecError, shape};
use crate::memory::Memories;
use neuron_isa::Ap;

/// Transposes a dense `rows x cols` matrix of `T`.
fn transpose_dense<T: Copy>(src: &[T], rows: usize, cols: usize, out: &mut Vec<T>) {
    out.clear();
    out.extend((0..cols).flat_map(|c| (0..rows).map(move |r| src[r * cols + c])));
}

pub(super) fn transpose(
    mem: &mut Memories,
    dst: &Ap,
    src: &Ap,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    let (p, f) = shape(src);
    if shape(dst) != (f, p) {
        return Err(ExecError::new(format!(
            "dst {dst} must be [{f}, {p}] (src transposed), found [{}, {}]",
            shape(dst).0,
            shape(dst).1
        )));
    }
    if dst.dtype == src.dtype {
        let e = src.dtype.size() as usize;
        let mut raw = Vec::new();
        let poisoned = mem.read_raw(src, &mut raw)?;
        // Transpose whole elements: group the bytes of each element.
        let elems: Vec<&[u8]> = raw.chunks_exact(e).collect();
        let mut t = Vec::with_capacity(elems.len());
        transpose_dense(&elems, p, f, &mut t);
        let out: Vec<u8> = t.concat();
        mem.write_raw(dst, &out)?;
        return Ok(poisoned);
    }
    let mut x = ctx.take();
    let mut y = ctx.take();
    let poisoned = mem.read_f32(src, &mut x)?;
    transpose_dense(&x, p, f, &mut y);
    mem.write_f32(dst, &y, &mut ctx.rounder)?;
    ctx.give([x, y]);
    Ok(poisoned)
}
