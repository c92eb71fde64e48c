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

/// Rows whose statistics [`stats_of_group`] computes together.
const GROUP: usize = 8;

/// [`stats`] of the even and of the odd elements of each of [`GROUP`] rows of `free`
/// elements (`group` holds them back to back), appended to `out` as `bn_stats` lays them
/// out. Every chain of adds is the one `stats` computes, in the same order; the
/// `2 * GROUP` chains run side by side, so their dependent adds overlap instead of
/// following one another (a layer norm's statistics were bound by the add latency).
fn stats_of_group(group: &[f32], free: usize, out: &mut Vec<f32>) {
    let rows: [&[f32]; GROUP] = std::array::from_fn(|r| &group[r * free..(r + 1) * free]);
    // Chain `2 * r + h`: row `r`'s elements of parity `h`.
    let counts = [free.div_ceil(2), free / 2];
    // An even and an odd element of every row at a time, the last even one of an
    // odd-length row alone.
    let mut sum = [0.0f32; 2 * GROUP];
    for k in 0..free / 2 {
        for (r, row) in rows.iter().enumerate() {
            let pair = &row[2 * k..2 * k + 2];
            sum[2 * r] += pair[0];
            sum[2 * r + 1] += pair[1];
        }
    }
    if free % 2 == 1 {
        for (r, row) in rows.iter().enumerate() {
            sum[2 * r] += row[free - 1];
        }
    }
    let mut mean = [0.0f32; 2 * GROUP];
    for (c, m) in mean.iter_mut().enumerate() {
        *m = sum[c] / counts[c % 2] as f32;
    }
    let mut m2 = [0.0f32; 2 * GROUP];
    let mut add = |c: usize, v: f32| {
        let d = v - mean[c];
        m2[c] += d * d;
    };
    for k in 0..free / 2 {
        for (r, row) in rows.iter().enumerate() {
            let pair = &row[2 * k..2 * k + 2];
            add(2 * r, pair[0]);
            add(2 * r + 1, pair[1]);
        }
    }
    if free % 2 == 1 {
        for (r, row) in rows.iter().enumerate() {
            add(2 * r, row[free - 1]);
        }
    }
    for c in 0..2 * GROUP {
        let n = counts[c % 2];
        if n == 0 {
            out.extend([0.0; 3]);
        } else {
            out.extend([n as f32, mean[c], m2[c]]);
        }
    }
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
    let mut groups = x.chunks_exact(GROUP * free.max(1));
    for group in &mut groups {
        stats_of_group(group, free.max(1), &mut out);
    }
    for row in groups.remainder().chunks_exact(free.max(1)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_statistics_have_the_bits_of_row_by_row() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for free in [1usize, 2, 3, 7, 64, 255, 512] {
            let x: Vec<f32> = (0..GROUP * free)
                .map(|_| {
                    let r = next();
                    match r % 97 {
                        0 => f32::INFINITY,
                        1 => -0.0,
                        2 => 1e30,
                        _ => ((r >> 11) % 20_000) as f32 / 37.0 - 270.0,
                    }
                })
                .collect();
            let mut got = Vec::new();
            stats_of_group(&x, free, &mut got);
            let mut want = Vec::new();
            for row in x.chunks_exact(free) {
                want.extend(stats(row.iter().copied().step_by(2)));
                want.extend(stats(row.iter().copied().skip(1).step_by(2)));
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "free {free}");
        }
    }
}
