//! `e^x` over a slice, bit for bit [`libm::expf`], in a form the compiler vectorises.
//!
//! `libm::expf` (FreeBSD's `e_expf.c`) is a few FP32 operations behind branches: a range
//! check, an argument reduction `x = k ln2 + r` whose `k` depends on which of three ranges
//! `|x|` falls in, a rational approximation of `e^r` (with a division) and a scaling by
//! `2^k`. Element by element the branches and the division's latency dominate (about
//! 5 ns per element on the softmax of a BERT layer, a tenth of that layer's functional
//! simulation time on the simulator's thread).
//!
//! [`exp_in_place`] evaluates the same operations in the same order on eight elements at
//! a time, with the branches turned into selects:
//! - `k` is computed for every element as `libm` would for its range (0 below
//!   `0.5 ln2`), and the reduction `hi = x - k ln2_hi`, `lo = k ln2_lo` is then exact
//!   for `k = 0` too (`x - 0 = x`, `0 * ln2_lo = 0`), which is what `libm` uses there;
//! - the scaling by `2^k` is one multiplication by the power of two, which is what
//!   `libm::scalbnf` does for `k` in `-126..=127` (and by `2^0 = 1` for `k = 0`, exact).
//!
//! An `x <= -103.97` (down to `-inf`: a softmax's masked scores) gives `+0`, `libm`'s
//! underflow branch, as a select too. Elements outside the ranges where those rewrites
//! hold (`|x| >= 87.33` where `libm` over- or underflows or `k` leaves that range,
//! `|x| <= 2^-14` where it returns `1 + x`, NaN) are recomputed with `libm::expf` itself. Every element therefore has exactly
//! `libm::expf`'s bits; the tests compare them over every 97th FP32 bit pattern and the
//! boundaries of each range. No fused multiply-add is involved (Rust never contracts
//! `a * b + c`).

use super::lanes::map_lanes;

/// 1 / ln 2 and ln 2 split into a high part whose products with small `k` are exact and
/// a low part: `libm::expf`'s constants.
const INV_LN2: f32 = f32::from_bits(0x3fb8_aa3b);
const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
/// `libm::expf`'s polynomial on the reduced argument.
const P1: f32 = f32::from_bits(0x3e2a_aa8f);
const P2: f32 = f32::from_bits(0xbb35_5215);

/// `|x|` bit patterns bounding the ranges of `libm::expf`: above `1.5 ln2` `k` is rounded
/// from `x / ln2`, above `0.5 ln2` it is +-1, at or below `2^-14` the result is `1 + x`,
/// and from `87.33` on the result over- or underflows (or `k` leaves `-126..=127`).
const ABOVE_1_5_LN2: u32 = 0x3f85_1592;
const ABOVE_0_5_LN2: u32 = 0x3eb1_7218;
const TINY: u32 = 0x3900_0000;
const LARGE: u32 = 0x42ae_ac50;
/// `|x|` from which `libm::expf` of a negative `x` (up to `-inf`) is `+0`: `x <= -103.97`.
const ZERO_BELOW: u32 = 0x42cf_f1b5;

/// `e^x` of one element as [`exp_in_place`]'s vector path evaluates it; exact for
/// `TINY < |x| < LARGE` (see the module docs) and for `x <= -103.97` (`+0`), and its
/// caller falls back to `libm::expf` elsewhere.
#[inline(always)]
fn exp_in_range(x: f32) -> f32 {
    let hx = x.to_bits() & 0x7fff_ffff;
    let negative = x.to_bits() >> 31 != 0;
    let half = if negative { -0.5 } else { 0.5 };
    let k: i32 = if hx > ABOVE_1_5_LN2 {
        // `as` truncates toward zero, as the C cast `libm` mirrors.
        (INV_LN2 * x + half) as i32
    } else if hx > ABOVE_0_5_LN2 {
        if negative { -1 } else { 1 }
    } else {
        0
    };
    let kf = k as f32;
    let hi = x - kf * LN2_HI;
    let lo = kf * LN2_LO;
    let r = hi - lo;
    let rr = r * r;
    let c = r - rr * (P1 + rr * P2);
    let y = 1.0 + (r * c / (2.0 - c) - lo + hi);
    // 2^k for k in -126..=127: the biased exponent alone (out of range, where the caller
    // discards the result, only without overflowing).
    let y = y * f32::from_bits((k.wrapping_add(127) as u32) << 23);
    // `libm::expf`'s `+0` for `x <= -103.97` (a softmax's masked scores), where the
    // formula above is meaningless.
    if zero(x) { 0.0 } else { y }
}

/// Whether `libm::expf(x)` is `+0` by its underflow branch: `x <= -103.97`, `-inf` too.
#[inline(always)]
fn zero(x: f32) -> bool {
    let hx = x.to_bits() & 0x7fff_ffff;
    x.to_bits() >> 31 != 0 && (ZERO_BELOW..=0x7f80_0000).contains(&hx)
}

/// Whether [`exp_in_range`] gives `libm::expf`'s bits for `x`.
#[inline(always)]
fn in_range(x: f32) -> bool {
    let hx = x.to_bits() & 0x7fff_ffff;
    (hx > TINY && hx < LARGE) || zero(x)
}

neuron_isa::vectorized! {
    /// Replaces every element `x` of `xs` with `libm::expf(x)`, bit for bit (compiled
    /// for the host's widest vector units, `neuron_isa::simd`).
    pub(crate) fn exp_in_place(xs: &mut [f32]) {
        map_lanes(xs, exp_in_range, in_range, libm::expf, |_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::super::lanes::check;
    use super::*;

    #[test]
    fn every_97th_bit_pattern_has_the_bits_of_libm() {
        check::every_97th(exp_in_place, libm::expf, "exp");
    }

    #[test]
    fn range_boundaries_have_the_bits_of_libm() {
        let edges = [
            ABOVE_1_5_LN2,
            ABOVE_0_5_LN2,
            TINY,
            LARGE,
            0x42b1_7218,
            0x42cf_f1b5,
        ];
        let extra = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1.0,
            -1.0,
        ];
        check::edges(&edges, &extra, exp_in_place, libm::expf, "exp");
        // And every vector build the host has (the default runs the widest).
        for level in neuron_isa::simd::Level::ALL {
            let f = |xs: &mut [f32]| exp_in_place::at(level, xs);
            check::edges(&edges, &extra, f, libm::expf, &format!("exp {level:?}"));
        }
    }

    #[test]
    fn the_vector_path_is_taken_for_ordinary_inputs() {
        // A wrong `exp_in_range` would hide behind the libm fallback if `in_range` were
        // always false: it holds across a softmax's inputs.
        for i in -2000..2000 {
            let x = i as f32 * 0.04321;
            if x.abs() > 1e-4 {
                assert!(in_range(x), "{x}");
                assert_eq!(exp_in_range(x).to_bits(), libm::expf(x).to_bits(), "{x}");
            }
        }
        // Masked scores (a large negative bias, or -inf) take the vector path too: +0.
        for x in [-104.0f32, -1e4, -3.4e38, f32::NEG_INFINITY] {
            assert!(in_range(x), "{x}");
            assert_eq!(exp_in_range(x).to_bits(), libm::expf(x).to_bits(), "{x}");
        }
        assert!(!in_range(f32::NAN) && !in_range(-f32::NAN) && !in_range(-100.0));
    }
}
