//! `bn_stats` and `bn_aggr`: the LayerNorm statistics path, in FP32.
//!
//! `bn_stats` writes, per partition, `(count, mean, M2)` of the even-indexed free
//! elements, then of the odd-indexed ones, where `M2 = count * variance` is the sum of
//! squared deviations from the mean. Each half is computed in two passes (sum, then
//! squared deviations), sequentially. A half with no elements (a free size of 1 has no
//! odd elements) gives `(0, 0, 0)`.
//!
//! `bn_aggr` combines any number of such triples with Chan et al.'s pairwise update
//! (`n = na + nb; d = mb - ma; mean = ma + d * nb / n; M2 = M2a + M2b + d^2 na nb / n`)
//! and writes `(mean, M2 / n)`: the population variance. Triples with a count of zero
//! are skipped; if all counts are zero the outputs are NaN (0 / 0).

use super::{ExecContext, ExecError, shape};
use crate::memory::Memories;
use neuron_isa::Ap;

/// `(count, mean, M2)` of the values yielded by `it`.
fn stats(it: impl Iterator<Item = f32> + Clone) -> [f32; 3] {
    let (mut n, mut sum) = (0u32, 0.0f32);
    for v in it.clone() {
        n += 1;
        sum += v;
    }
    if n == 0 {
        return [0.0; 3];
    }
    let count = n as f32;
    let mean = sum / count;
    let m2 = it.fold(0.0f32, |acc, v| {
        let d = v - mean;
        acc + d * d
    });
    [count, mean, m2]
}

pub(super) fn bn_stats(
    mem: &mut Memories,
    dst: &Ap,
    src: &Ap,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    let (parts, free) = shape(src);
    if shape(dst) != (parts, 6) {
        return Err(ExecError::new(format!(
            "dst {dst} must be [{parts}, 6], found [{}, {}]",
            shape(dst).0,
            shape(dst).1
        )));
    }
    let mut x = ctx.take();
    let poisoned = mem.read_f32(src, &mut x)?;
    let mut out = Vec::with_capacity(parts * 6);
    for row in x.chunks_exact(free.max(1)) {
        out.extend(stats(row.iter().copied().step_by(2)));
        out.extend(stats(row.iter().copied().skip(1).step_by(2)));
    }
    mem.write_f32(dst, &out, &mut ctx.rounder)?;
    ctx.give([x]);
    Ok(poisoned)
}

/// Combines `(count, mean, M2)` triples; returns `(count, mean, M2)` of the union.
pub(super) fn chan_combine(triples: &[f32]) -> [f32; 3] {
    let (mut n, mut mean, mut m2) = (0.0f32, 0.0f32, 0.0f32);
    for t in triples.chunks_exact(3) {
        let (nb, mb, m2b) = (t[0], t[1], t[2]);
        if nb == 0.0 {
            continue;
        }
        let total = n + nb;
        let delta = mb - mean;
        mean += delta * (nb / total);
        m2 += m2b + delta * delta * (n * nb / total);
        n = total;
    }
    [n, mean, m2]
}

pub(super) fn bn_aggr(
    mem: &mut Memories,
    dst: &Ap,
    src: &Ap,
    ctx: &mut ExecContext,
) -> Result<bool, ExecError> {
    let (parts, free) = shape(src);
    if free % 3 != 0 {
        return Err(ExecError::new(format!(
            "src {src}: free size must be a multiple of 3, found {free}"
        )));
    }
    if shape(dst) != (parts, 2) {
        return Err(ExecError::new(format!(
            "dst {dst} must be [{parts}, 2], found [{}, {}]",
            shape(dst).0,
            shape(dst).1
        )));
    }
    let mut x = ctx.take();
    let poisoned = mem.read_f32(src, &mut x)?;
    let mut out = Vec::with_capacity(parts * 2);
    for row in x.chunks_exact(free.max(1)) {
        let [n, mean, m2] = chan_combine(row);
        if n == 0.0 {
            out.extend([f32::NAN, f32::NAN]);
        } else {
            out.extend([mean, m2 / n]);
        }
    }
    mem.write_f32(dst, &out, &mut ctx.rounder)?;
    ctx.give([x]);
    Ok(poisoned)
}
