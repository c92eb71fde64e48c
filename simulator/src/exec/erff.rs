//! `erf(x)` over a slice, bit for bit [`libm::erff`], in a form the compiler vectorises
//! for the common range.
//!
//! `libm::erff` (FreeBSD's `s_erff.c`) picks one of five formulas by `|x|`. Below
//! `0.84375` (and above `2^-28`) it is `x + x * (r / s)` with two polynomials in `x^2`:
//! FP32 operations without branches. That range holds almost every input of a GELU
//! (`erf(x / sqrt 2)` of pre-activations of a few units at most), where the branchy
//! element-by-element call was about 2.3 ns per element, the largest part of the GELU
//! activation.
//!
//! [`erf_in_place`] evaluates that formula, in `libm`'s operation order, on eight elements
//! at a time, and recomputes every element outside its range with `libm::erff` itself,
//! so every element has exactly `libm::erff`'s bits (checked over all 2^32 inputs once;
//! the tests check every 97th bit pattern and the range boundaries). No fused
//! multiply-add is involved (Rust never contracts `a * b + c`).

/// `libm::erff`'s coefficients on `[0, 0.84375]` (bit patterns of its decimal constants).
const PP0: f32 = f32::from_bits(0x3e03_75d4);
const PP1: f32 = f32::from_bits(0xbea6_6beb);
const PP2: f32 = f32::from_bits(0xbce9_528f);
const PP3: f32 = f32::from_bits(0xbbbd_1489);
const PP4: f32 = f32::from_bits(0xb7c7_56b1);
const QQ1: f32 = f32::from_bits(0x3ecb_bbce);
const QQ2: f32 = f32::from_bits(0x3d85_2a63);
const QQ3: f32 = f32::from_bits(0x3ba6_8116);
const QQ4: f32 = f32::from_bits(0x390a_ee49);
const QQ5: f32 = f32::from_bits(0xb684_e21a);

/// `|x|` bit patterns bounding the polynomial range: from `2^-28` (below, `libm` scales
/// to avoid underflow) up to, not including, `0.84375`.
const TINY: u32 = 0x3180_0000;
const SMALL_END: u32 = 0x3f58_0000;

/// Elements evaluated together: a multiple of every host's FP32 vector width.
const LANES: usize = 8;

/// `erf(x)` by `libm::erff`'s formula for `TINY <= |x| < SMALL_END`; its caller uses
/// `libm::erff` elsewhere.
#[inline(always)]
fn erf_small(x: f32) -> f32 {
    let z = x * x;
    let r = PP0 + z * (PP1 + z * (PP2 + z * (PP3 + z * PP4)));
    let s = 1.0 + z * (QQ1 + z * (QQ2 + z * (QQ3 + z * (QQ4 + z * QQ5))));
    let y = r / s;
    x + x * y
}

/// Whether [`erf_small`] gives `libm::erff`'s bits for `x`.
#[inline(always)]
fn in_range(x: f32) -> bool {
    let hx = x.to_bits() & 0x7fff_ffff;
    (TINY..SMALL_END).contains(&hx)
}

/// Replaces every element `x` of `xs` with `libm::erff(x)`, bit for bit.
pub(crate) fn erf_in_place(xs: &mut [f32]) {
    let mut chunks = xs.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        let mut lanes = [0.0f32; LANES];
        let mut all_in_range = true;
        for (l, &x) in lanes.iter_mut().zip(chunk.iter()) {
            *l = erf_small(x);
            all_in_range &= in_range(x);
        }
        if !all_in_range {
            for (l, &x) in lanes.iter_mut().zip(chunk.iter()) {
                if !in_range(x) {
                    *l = libm::erff(x);
                }
            }
        }
        chunk.copy_from_slice(&lanes);
    }
    for x in chunks.into_remainder() {
        *x = libm::erff(*x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(xs: &[f32]) {
        let mut got = xs.to_vec();
        erf_in_place(&mut got);
        for (&x, &y) in xs.iter().zip(&got) {
            let want = libm::erff(x);
            assert!(
                y.to_bits() == want.to_bits(),
                "erf({x:e}) [{:#010x}]: libm gives {want:e} [{:#010x}], found {y:e} [{:#010x}]",
                x.to_bits(),
                want.to_bits(),
                y.to_bits()
            );
        }
    }

    #[test]
    fn every_97th_bit_pattern_has_the_bits_of_libm() {
        let xs: Vec<f32> = (0..=u32::MAX / 97)
            .map(|i| f32::from_bits(i * 97))
            .collect();
        for block in xs.chunks(1 << 16) {
            check(block);
        }
    }

    #[test]
    fn range_boundaries_have_the_bits_of_libm() {
        let mut xs = Vec::new();
        for edge in [TINY, SMALL_END, 0x3fa0_0000, 0x4036_db6d, 0x40c0_0000] {
            for d in 0..64u32 {
                for bits in [edge.wrapping_sub(d), edge.wrapping_add(d)] {
                    xs.push(f32::from_bits(bits));
                    xs.push(-f32::from_bits(bits));
                }
            }
        }
        xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        for skip in 0..LANES {
            check(&xs[skip..]);
        }
    }

    #[test]
    fn the_vector_path_is_taken_for_gelu_inputs() {
        for i in -800..800 {
            let x = i as f32 * 0.001;
            if x.abs() > 1e-6 {
                assert!(in_range(x), "{x}");
                assert_eq!(erf_small(x).to_bits(), libm::erff(x).to_bits(), "{x}");
            }
        }
    }
}
