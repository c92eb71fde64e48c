//! `tensor_reduce`: reduces the innermost `axes` free dimensions of each partition with
//! add, max, min or mul, in FP32, sequentially in memory order of the view (the order a
//! lane streams its elements); `negate` negates the result. Max and min propagate NaN.

use super::alu::{alu, max_nan, min_nan, with_alu};
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

neuron_isa::vectorized! {
    /// `fold_groups` with `max_nan` (`larger`) or `min_nan`, with the same result bits: a
    /// group holding a NaN gives its first NaN (the fold keeps it); otherwise the fold ends
    /// on the last element equal to the extreme value (an equal element replaces the
    /// accumulator, which decides the sign of a zero extreme). That element is found by an
    /// order-free extreme over eight lanes and a scan back from the end by eight at a time
    /// (both vectorize), instead of one dependent compare per element. Compiled for the
    /// host's widest vector units (`neuron_isa::simd`).
    fn extreme_groups(x: &[f32], group: usize, out: &mut [f32], larger: bool) {
        if larger {
            extreme_groups_of::<true>(x, group, out);
        } else {
            extreme_groups_of::<false>(x, group, out);
        }
    }
}

/// [`extreme_groups`] for one direction (a constant, so the loops have no branch on it).
#[inline(always)]
fn extreme_groups_of<const LARGER: bool>(x: &[f32], group: usize, out: &mut [f32]) {
    let better = |a: f32, b: f32| if LARGER { a > b } else { a < b };
    for (o, g) in out.iter_mut().zip(x.chunks_exact(group)) {
        let has_nan = g.iter().fold(false, |a, v| a | v.is_nan());
        if has_nan || g.len() < 16 {
            let f = if LARGER { max_nan } else { min_nan };
            *o = g[1..].iter().fold(g[0], |acc, &v| f(acc, v));
            continue;
        }
        let mut lanes = [g[0]; 8];
        let mut chunks = g.chunks_exact(8);
        for c in &mut chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l = if better(v, *l) { v } else { *l };
            }
        }
        let m = chunks
            .remainder()
            .iter()
            .chain(&lanes)
            .fold(g[0], |m, &v| if better(v, m) { v } else { m });
        // Some element equals `m` (it is one of them): the last one is the result.
        let mut end = g.len();
        *o = m;
        while end > 0 {
            let start = end.saturating_sub(8);
            let c = &g[start..end];
            if c.iter().fold(false, |any, &v| any | (v == m)) {
                if let Some(p) = c.iter().rposition(|&v| v == m) {
                    *o = c[p];
                }
                break;
            }
            end = start;
        }
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
    match op {
        AluOp::Max => extreme_groups(&x, group.max(1), &mut out, true),
        AluOp::Min => extreme_groups(&x, group.max(1), &mut out, false),
        _ => with_alu!(op, fold_groups(&x, group.max(1), &mut out)),
    }
    if negate {
        out.iter_mut().for_each(|v| *v = -*v);
    }
    mem.write_f32(dst, &out, &mut ctx.rounder)?;
    ctx.give([x, out]);
    Ok(poisoned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast extreme has the sequential fold's bits on groups with NaNs (several, with
    /// payloads), signed zeros as the extreme, ties, infinities and every length from 1.
    #[test]
    fn extremes_have_the_bits_of_the_sequential_fold() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let special = [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x7fc0_0001),
            f32::from_bits(0xffc0_0002),
            1.5,
            -1.5,
        ];
        for len in 1..200usize {
            for case in 0..6 {
                let g: Vec<f32> = (0..len)
                    .map(|_| {
                        let r = next();
                        match case {
                            // Mostly zeros of both signs: the extreme is a signed zero.
                            0 => special[(r % 2) as usize],
                            // Ties among a few values.
                            1 => ((r % 5) as f32) - 2.0,
                            // Specials sprinkled among ordinary values (NaNs at times).
                            2 if r % 17 == 0 => special[(r >> 8) as usize % special.len()],
                            3 if r % 61 == 0 => special[4 + (r >> 8) as usize % 2],
                            _ => f32::from_bits(0x3f80_0000 ^ (r as u32 & 0x807f_ffff)),
                        }
                    })
                    .collect();
                for larger in [true, false] {
                    let f = if larger { max_nan } else { min_nan };
                    let want = g[1..].iter().fold(g[0], |a, &v| f(a, v));
                    for level in neuron_isa::simd::Level::ALL {
                        let mut out = [0.0f32];
                        extreme_groups::at(level, &g, len, &mut out, larger);
                        assert_eq!(
                            out[0].to_bits(),
                            want.to_bits(),
                            "len {len} case {case} larger {larger} {level:?}"
                        );
                    }
                }
            }
        }
    }
}
