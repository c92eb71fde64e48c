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

use super::lanes::map_lanes;

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

neuron_isa::vectorized! {
    /// Replaces every element `x` of `xs` with `libm::erff(x)`, bit for bit (compiled
    /// for the host's widest vector units, `neuron_isa::simd`).
    pub(crate) fn erf_in_place(xs: &mut [f32]) {
        map_lanes(xs, erf_small, in_range, libm::erff, |_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::super::lanes::check;
    use super::*;

    #[test]
    fn every_97th_bit_pattern_has_the_bits_of_libm() {
        check::every_97th(erf_in_place, libm::erff, "erf");
    }

    #[test]
    fn range_boundaries_have_the_bits_of_libm() {
        let edges = [TINY, SMALL_END, 0x3fa0_0000, 0x4036_db6d, 0x40c0_0000];
        let extra = [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        check::edges(&edges, &extra, erf_in_place, libm::erff, "erf");
        // And every vector build the host has (the default runs the widest).
        for level in neuron_isa::simd::Level::ALL {
            let f = |xs: &mut [f32]| erf_in_place::at(level, xs);
            check::edges(&edges, &extra, f, libm::erff, &format!("erf {level:?}"));
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
