//! The lane driver shared by the vectorised transcendental functions (`expf.rs`,
//! `erff.rs`): a formula that is exact (bit for bit the portable `libm` function) on a
//! range of inputs is evaluated on eight elements at a time, which the compiler
//! vectorises, and every element outside that range is recomputed with `libm` itself.

/// Elements evaluated together: a multiple of every host's FP32 vector width.
pub(super) const LANES: usize = 8;

/// Replaces each element `x` of `xs` with `exact(x)`: `fast(x)` where `in_range(x)`
/// (where the two agree bit for bit), `exact(x)` elsewhere, eight lanes at a time, calling
/// `then` on each finished stretch in order.
#[inline(always)]
pub(super) fn map_lanes(
    xs: &mut [f32],
    fast: impl Fn(f32) -> f32,
    in_range: impl Fn(f32) -> bool,
    exact: impl Fn(f32) -> f32,
    mut then: impl FnMut(&[f32]),
) {
    let mut chunks = xs.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        let mut lanes = [0.0f32; LANES];
        let mut all_in_range = true;
        for (l, &x) in lanes.iter_mut().zip(chunk.iter()) {
            *l = fast(x);
            all_in_range &= in_range(x);
        }
        if !all_in_range {
            for (l, &x) in lanes.iter_mut().zip(chunk.iter()) {
                if !in_range(x) {
                    *l = exact(x);
                }
            }
        }
        chunk.copy_from_slice(&lanes);
        then(chunk);
    }
    let rest = chunks.into_remainder();
    for x in rest.iter_mut() {
        *x = exact(*x);
    }
    then(rest);
}

/// Test helpers: a vectorised function against its `libm` reference, bit for bit.
#[cfg(test)]
pub(super) mod check {
    use super::LANES;

    /// Asserts that `vectorised` gives `reference`'s bits on every element of `xs`.
    pub(in crate::exec) fn bits(
        xs: &[f32],
        vectorised: impl Fn(&mut [f32]),
        reference: impl Fn(f32) -> f32,
        name: &str,
    ) {
        let mut got = xs.to_vec();
        vectorised(&mut got);
        for (&x, &y) in xs.iter().zip(&got) {
            let want = reference(x);
            assert!(
                y.to_bits() == want.to_bits(),
                "{name}({x:e}) [{:#010x}]: libm gives {want:e} [{:#010x}], found {y:e} [{:#010x}]",
                x.to_bits(),
                want.to_bits(),
                y.to_bits()
            );
        }
    }

    /// Every 97th FP32 bit pattern (about 44 M: both signs, every exponent, subnormals,
    /// infinities and NaNs).
    pub(in crate::exec) fn every_97th(
        vectorised: impl Fn(&mut [f32]),
        reference: impl Fn(f32) -> f32,
        name: &str,
    ) {
        let xs: Vec<f32> = (0..=u32::MAX / 97)
            .map(|i| f32::from_bits(i * 97))
            .collect();
        for block in xs.chunks(1 << 16) {
            bits(block, &vectorised, &reference, name);
        }
    }

    /// The 64 bit patterns on each side of each `|x|` edge, both signs, plus `extra`, at
    /// every alignment within a vector of lanes (and remainders shorter than one).
    pub(in crate::exec) fn edges(
        edges: &[u32],
        extra: &[f32],
        vectorised: impl Fn(&mut [f32]),
        reference: impl Fn(f32) -> f32,
        name: &str,
    ) {
        let mut xs = Vec::new();
        for &edge in edges {
            for d in 0..64u32 {
                for b in [edge.wrapping_sub(d), edge.wrapping_add(d)] {
                    xs.push(f32::from_bits(b));
                    xs.push(-f32::from_bits(b));
                }
            }
        }
        xs.extend_from_slice(extra);
        for skip in 0..LANES {
            bits(&xs[skip..], &vectorised, &reference, name);
        }
    }
}
