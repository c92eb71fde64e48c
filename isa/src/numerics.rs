//! Scalar conversions between f32 and every narrow storage type of the ISA, the single
//! definition of how a value is rounded when it is stored: the simulator uses them for
//! engine writes (with round-to-nearest-even or stochastic rounding), the compiler for the
//! weights it stores pre-cast, and the runtime for the inputs it binds. See
//! `docs/numerics.md` for the encodings, rounding and saturation rules.

/// A narrow binary floating-point storage format: field widths and what happens past the
/// largest finite value.
pub trait NarrowFloat {
    /// Fraction (mantissa) bits.
    const MANT: u32;
    /// Exponent bias.
    const BIAS: i32;
    /// Width of the encoding in bits; the sign is the top bit.
    const BITS: u32;
    /// The largest magnitude code a non-NaN input may produce. Codes are monotonic in the
    /// magnitude, so clamping implements overflow: the infinity code for IEEE-like
    /// formats, the NaN code for non-saturating `e4m3fn` (the code after 448 is NaN), the
    /// largest finite code for saturating formats.
    const CLAMP: u32;
    /// Magnitude code written for NaN inputs (a quiet NaN).
    const NAN: u32;
}

/// bfloat16: 8 exponent bits, 7 fraction bits, IEEE-like.
pub struct Bf16Fmt;
impl NarrowFloat for Bf16Fmt {
    const MANT: u32 = 7;
    const BIAS: i32 = 127;
    const BITS: u32 = 16;
    const CLAMP: u32 = 0x7f80;
    const NAN: u32 = 0x7fc0;
}

/// IEEE binary16.
pub struct F16Fmt;
impl NarrowFloat for F16Fmt {
    const MANT: u32 = 10;
    const BIAS: i32 = 15;
    const BITS: u32 = 16;
    const CLAMP: u32 = 0x7c00;
    const NAN: u32 = 0x7e00;
}

/// OCP `e4m3fn`, non-saturating: overflow gives NaN (0x7f).
pub struct E4m3Fmt;
impl NarrowFloat for E4m3Fmt {
    const MANT: u32 = 3;
    const BIAS: i32 = 7;
    const BITS: u32 = 8;
    const CLAMP: u32 = 0x7f;
    const NAN: u32 = 0x7f;
}

/// OCP `e4m3fn`, saturating: overflow and infinities give +-448 (0x7e).
pub struct E4m3SatFmt;
impl NarrowFloat for E4m3SatFmt {
    const MANT: u32 = 3;
    const BIAS: i32 = 7;
    const BITS: u32 = 8;
    const CLAMP: u32 = 0x7e;
    const NAN: u32 = 0x7f;
}

/// OCP `e5m2`: IEEE-like with infinities (0x7c) and NaNs.
pub struct E5m2Fmt;
impl NarrowFloat for E5m2Fmt {
    const MANT: u32 = 2;
    const BIAS: i32 = 15;
    const BITS: u32 = 8;
    const CLAMP: u32 = 0x7c;
    const NAN: u32 = 0x7e;
}

/// Rounds `x` to format `F`, returning the code (sign in bit `F::BITS - 1`).
///
/// The code of a non-negative value is `(biased exponent - 1) * 2^MANT + significand`
/// in the normal range (the hidden bit carries into the exponent field) and
/// `significand` in the subnormal range, so rounding is: shift the 24-bit f32
/// significand right by the number of dropped bits (more below the normal range), adding
/// the rounding increment first. A carry out of the fraction bumps the exponent, and a
/// carry past the largest code is overflow, handled by clamping to `F::CLAMP`.
///
/// With `SR`, the increment is `random` masked to the dropped bits; otherwise it is the
/// round-to-nearest-even increment. Shifts are capped at 63 bits: values below 2^-39
/// of the smallest subnormal round to zero under RNE, and round up with a probability
/// too small to matter under SR.
#[inline(always)]
pub fn encode_one<F: NarrowFloat, const SR: bool>(x: f32, random: u64) -> u32 {
    let bits = x.to_bits();
    let sign = (bits >> 31) << (F::BITS - 1);
    let abs = bits & 0x7fff_ffff;
    let exp = (abs >> 23) as i32;
    // f32 subnormals have no hidden bit and the exponent of the smallest normal.
    let hidden = if exp != 0 { 0x80_0000 } else { 0 };
    let sig = u64::from((abs & 0x7f_ffff) | hidden);
    // The target's biased exponent, were the value normal there.
    let exp_t = exp.max(1) - 127 + F::BIAS;
    let below_normal = (1 - exp_t).max(0) as u32;
    let shift = (23 - F::MANT + below_normal).min(63);
    let mask = (1u64 << shift) - 1;
    let increment = if SR {
        random & mask
    } else {
        (mask >> 1) + ((sig >> shift) & 1)
    };
    let exp_part = ((exp_t - 1).max(0) as u64) << F::MANT;
    let code = (exp_part + ((sig + increment) >> shift)).min(u64::from(F::CLAMP)) as u32;
    let code = if abs > 0x7f80_0000 { F::NAN } else { code };
    code | sign
}

/// Round-to-nearest-even to format `F`: the fast path, equal to `encode_one::<F, false>`
/// (the reference, checked by tests) but with only 32-bit operations and constant
/// shifts, so that slice loops vectorise even on baseline x86-64 (no per-lane variable
/// shifts before AVX2).
///
/// Normal range: rebias the exponent, add the RNE increment and shift out the dropped
/// bits (a carry bumps the exponent; codes past `F::CLAMP` clamp). Below the target's
/// smallest normal, adding a power-of-two `magic` whose ulp is the target's subnormal
/// quantum lets the FPU do the rounding (IEEE addition rounds to nearest even), and the
/// code is the difference of the bit patterns.
#[inline(always)]
pub fn encode_rne<F: NarrowFloat>(x: f32) -> u32 {
    let bits = x.to_bits();
    let sign = (bits >> 31) << (F::BITS - 1);
    let abs = bits & 0x7fff_ffff;
    let drop = 23 - F::MANT;
    // Smallest normal of the target, as f32 bits: 2^(1 - BIAS).
    let min_normal = ((128 - F::BIAS) as u32) << 23;
    let rebased = abs.wrapping_sub(((127 - F::BIAS) as u32) << 23);
    // Wrapping: lanes below the normal range (or NaN) compute garbage that is discarded.
    let normal = rebased
        .wrapping_add((1 << (drop - 1)) - 1)
        .wrapping_add((rebased >> drop) & 1)
        >> drop;
    // 2^(24 - BIAS - MANT): its ulp is 2^(1 - BIAS - MANT), the subnormal quantum.
    let magic_bits = ((24 - F::BIAS - F::MANT as i32 + 127) as u32) << 23;
    let sub = (f32::from_bits(abs) + f32::from_bits(magic_bits))
        .to_bits()
        .wrapping_sub(magic_bits);
    let code = if abs < min_normal {
        sub
    } else {
        normal.min(F::CLAMP)
    };
    let code = if abs > 0x7f80_0000 { F::NAN } else { code };
    code | sign
}

/// bf16 bits of `x`, rounded to nearest even (overflow -> inf, NaN -> quiet NaN).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    encode_rne::<Bf16Fmt>(x) as u16
}

/// bf16 bits of `x`, rounded stochastically with the random bits `random`.
pub fn f32_to_bf16_sr(x: f32, random: u64) -> u16 {
    encode_one::<Bf16Fmt, true>(x, random) as u16
}

/// f16 bits of `x`, rounded to nearest even (overflow -> inf, NaN -> quiet NaN).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    encode_rne::<F16Fmt>(x) as u16
}

/// f16 bits of `x`, rounded stochastically with the random bits `random`.
pub fn f32_to_f16_sr(x: f32, random: u64) -> u16 {
    encode_one::<F16Fmt, true>(x, random) as u16
}

/// `fp8_e4m3` bits of `x` with the chip's convention: round to nearest even, saturate
/// finite overflow and +-inf to +-448, NaN -> NaN (0x7f with the sign kept).
pub fn f32_to_e4m3fn_sat(x: f32) -> u8 {
    encode_rne::<E4m3SatFmt>(x) as u8
}

/// `fp8_e4m3` bits of `x` with the chip's saturating convention, rounded stochastically.
pub fn f32_to_e4m3fn_sat_sr(x: f32, random: u64) -> u8 {
    encode_one::<E4m3SatFmt, true>(x, random) as u8
}

/// `fp8_e4m3` bits of `x` with the non-saturating OCP convention (ml_dtypes): round to
/// nearest even; `|x| >= 464` and +-inf become NaN (0x7f / 0xff). Not used by the chip
/// model; kept to document and test the alternative.
pub fn f32_to_e4m3fn(x: f32) -> u8 {
    encode_rne::<E4m3Fmt>(x) as u8
}

/// `fp8_e5m2` bits of `x`, rounded to nearest even (overflow -> inf, NaN -> quiet NaN).
pub fn f32_to_e5m2(x: f32) -> u8 {
    encode_rne::<E5m2Fmt>(x) as u8
}

/// `fp8_e5m2` bits of `x`, rounded stochastically with the random bits `random`.
pub fn f32_to_e5m2_sr(x: f32, random: u64) -> u8 {
    encode_one::<E5m2Fmt, true>(x, random) as u8
}

/// `x` rounded to f32 with round-to-odd: an exact value is unchanged; otherwise the
/// result is `x` truncated toward zero with the lowest significand bit set (a value past
/// the f32 range truncates to the largest finite f32, which is odd).
///
/// Round-to-odd to a format with at least two more significand bits than the target
/// makes a following round-to-nearest-even to the target equal to rounding `x` directly
/// (Boldo and Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms
/// using rounding to odd", IEEE Trans. Computers 57(4), 2008). f32 has 24 bits and every
/// narrow format of the ISA at most 11, at every exponent of their ranges, so
/// `f32_to_*(f64_to_f32_odd(x))` is the correctly rounded narrow value of an f64 `x`,
/// where a plain `x as f32` first would round twice (and err when the f32 rounding lands
/// on the target's tie).
#[inline]
pub fn f64_to_f32_odd(x: f64) -> f32 {
    // `as` rounds to nearest even (to infinity past the range).
    let r = x as f32;
    // Branch-free (both outcomes computed, one selected), so slice loops vectorize.
    let keep = x.is_nan() | (f64::from(r) == x);
    // Rounded away from zero (then r is not zero): step back one code toward zero.
    let away = f64::from(r).abs() > x.abs();
    let odd = f32::from_bits(r.to_bits().wrapping_sub(u32::from(away)) | 1);
    if keep { r } else { odd }
}

/// bf16 bits of an f64, correctly rounded to nearest even (one rounding, see
/// [`f64_to_f32_odd`]).
#[inline]
pub fn f64_to_bf16(x: f64) -> u16 {
    f32_to_bf16(f64_to_f32_odd(x))
}

/// f16 bits of an f64, correctly rounded to nearest even (one rounding, see
/// [`f64_to_f32_odd`]).
#[inline]
pub fn f64_to_f16(x: f64) -> u16 {
    f32_to_f16(f64_to_f32_odd(x))
}

/// The value of bf16 bits (exact).
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// The value of f16 bits (exact; NaN payloads kept).
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    // Move exponent and fraction into f32 position and rebias; infinities and NaNs get
    // the maximum exponent, subnormals are normalised with one exact float subtraction.
    let h = u32::from(h);
    let shifted = (h & 0x7fff) << 13;
    let exp = shifted & 0x0f80_0000;
    let normal = shifted + ((127 - 15) << 23);
    let inf_nan = normal + ((128 - 16) << 23);
    let magic = f32::from_bits(113 << 23);
    let subnormal = (f32::from_bits(shifted + (113 << 23)) - magic).to_bits();
    let mag = if exp == 0x0f80_0000 {
        inf_nan
    } else if exp == 0 {
        subnormal
    } else {
        normal
    };
    f32::from_bits(mag | ((h & 0x8000) << 16))
}

/// f32 bits of an 8-bit float code with `mant` fraction bits and bias `bias`.
/// `fn_style`: the all-ones magnitude is the only NaN and there is no infinity
/// (`e4m3fn`); otherwise the all-ones exponent holds infinity and NaNs (IEEE-like).
const fn fp8_to_f32_bits(byte: u8, mant: u32, bias: i32, fn_style: bool) -> u32 {
    let b = byte as u32;
    let sign = (b >> 7) << 31;
    let exp_bits = 7 - mant;
    let emax = (1u32 << exp_bits) - 1;
    let e = (b >> mant) & emax;
    let m = b & ((1u32 << mant) - 1);
    let quiet_nan = sign | 0x7fc0_0000;
    if fn_style {
        if e == emax && m == (1u32 << mant) - 1 {
            return quiet_nan;
        }
    } else if e == emax {
        return if m == 0 {
            sign | 0x7f80_0000
        } else {
            quiet_nan
        };
    }
    if e == 0 {
        if m == 0 {
            return sign;
        }
        // Subnormal m * 2^(1 - bias - mant): normalise so the leading one is hidden.
        let mut mm = m;
        let mut ee = 1 - bias;
        while mm & (1u32 << mant) == 0 {
            mm <<= 1;
            ee -= 1;
        }
        return sign | (((ee + 127) as u32) << 23) | ((mm & ((1u32 << mant) - 1)) << (23 - mant));
    }
    sign | (((e as i32 - bias + 127) as u32) << 23) | (m << (23 - mant))
}

/// Decoding table of an 8-bit float format, built at compile time.
const fn fp8_table(mant: u32, bias: i32, fn_style: bool) -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = f32::from_bits(fp8_to_f32_bits(i as u8, mant, bias, fn_style));
        i += 1;
    }
    t
}

/// Every `fp8_e4m3` (OCP `e4m3fn`) value.
static E4M3_TABLE: [f32; 256] = fp8_table(3, 7, true);
/// Every `fp8_e5m2` value.
static E5M2_TABLE: [f32; 256] = fp8_table(2, 15, false);

/// The value of `fp8_e4m3` (OCP `e4m3fn`) bits (exact).
#[inline(always)]
pub fn e4m3fn_to_f32(b: u8) -> f32 {
    E4M3_TABLE[usize::from(b)]
}

/// The value of `fp8_e5m2` bits (exact).
#[inline(always)]
pub fn e5m2_to_f32(b: u8) -> f32 {
    E5M2_TABLE[usize::from(b)]
}

/// Rounds to the nearest integer, ties to even, without a libm call (vectorisable):
/// adding and subtracting 2^23 forces the FPU's own round-to-nearest-even at the units
/// place; values of magnitude >= 2^23 are integers already.
#[inline(always)]
pub fn round_ties_even_fast(x: f32) -> f32 {
    const TWO_23: f32 = 8_388_608.0;
    let c = TWO_23.copysign(x);
    if x.abs() < TWO_23 { (x + c) - c } else { x }
}

/// `x` rounded to nearest even and saturated to `i8`; NaN -> 0.
#[inline(always)]
pub fn f32_to_i8(x: f32) -> i8 {
    // `as` saturates and maps NaN to 0; clamping first keeps the fast rounding in range.
    round_ties_even_fast(x.clamp(-128.0, 127.0)) as i8
}

/// `x` rounded to nearest even and saturated to `u8`; NaN -> 0.
#[inline(always)]
pub fn f32_to_u8(x: f32) -> u8 {
    round_ties_even_fast(x.clamp(0.0, 255.0)) as u8
}

/// `x` rounded to nearest even and saturated to `i32`; NaN -> 0.
#[inline(always)]
pub fn f32_to_i32(x: f32) -> i32 {
    round_ties_even_fast(x) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The branch-free [`f64_to_f32_odd`] against its definition, written with branches.
    #[test]
    fn round_to_odd_matches_its_definition() {
        fn reference(x: f64) -> f32 {
            let r = x as f32;
            if x.is_nan() || f64::from(r) == x {
                return r;
            }
            let mut bits = r.to_bits();
            if f64::from(r).abs() > x.abs() {
                bits -= 1;
            }
            f32::from_bits(bits | 1)
        }
        let mut h = 0x1234_5678_9abc_def0u64;
        let mut xs = vec![
            0.0,
            -0.0,
            1.0,
            1e-300,
            -1e-300,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::from(f32::MAX) * 1.000_000_1,
            f64::from(f32::MIN_POSITIVE) / 3.0,
        ];
        for _ in 0..100_000 {
            h = crate::rng::mix64(h);
            xs.push(f64::from_bits(h));
            // Values in the f32 range, with and without low bits below f32 precision.
            let e = (h >> 52) % 300;
            let y = f64::from_bits((h & 0x800f_ffff_ffff_ffff) | ((e + 1023 - 150) << 52));
            xs.push(y);
            xs.push(f64::from(y as f32));
        }
        for x in xs {
            assert_eq!(
                f64_to_f32_odd(x).to_bits(),
                reference(x).to_bits(),
                "{x:e} ({:#018x})",
                x.to_bits()
            );
        }
    }
}
