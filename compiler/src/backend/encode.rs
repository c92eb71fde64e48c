//! Element encoders: host values to the little-endian bytes of an ISA dtype.
//!
//! Used for the weight blob of the artifact (weights are stored in HBM in their assigned
//! dtype) and by tests that bind inputs the way the runtime does. Floats round to nearest,
//! ties to even (the chip's default mode), through the ISA's shared conversions
//! ([`neuron_isa::numerics`], the ones the simulator's engines write with), so weights are
//! rounded exactly as a chip write would round them; an f64 value is rounded once (round
//! to odd to f32 first, [`numerics::f64_to_f32_odd`]), not twice. fp8 e4m3 is the OCP
//! `e4m3fn` format (finite only) and saturates to
//! +-448 like ONNX `Cast(saturate=1)`; fp8 e5m2 is IEEE-like and overflows to infinity.
//! Integers round to nearest even and saturate to the type's range (NaN gives 0).

use half::{bf16, f16};
use neuron_isa::{Dtype, numerics};

fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// Encodes `x` as fp8 (`Dtype::Fp8E4m3` or `Dtype::Fp8E5m2`) with round-to-nearest-even;
/// other dtypes give `None`.
pub fn f32_to_fp8(dtype: Dtype, x: f32) -> Option<u8> {
    match dtype {
        Dtype::Fp8E4m3 => Some(numerics::f32_to_e4m3fn_sat(x)),
        Dtype::Fp8E5m2 => Some(numerics::f32_to_e5m2(x)),
        _ => None,
    }
}

/// Rounds to nearest even and saturates to `[lo, hi]`; NaN gives 0.
fn to_int(x: f64, lo: f64, hi: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        round_half_even(x).clamp(lo, hi)
    }
}

/// Appends the encoding of every value of `values` in `dtype` to `out`.
pub fn encode_into(dtype: Dtype, values: impl IntoIterator<Item = f64>, out: &mut Vec<u8>) {
    for v in values {
        match dtype {
            Dtype::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            Dtype::Bf16 => out.extend_from_slice(&numerics::f64_to_bf16(v).to_le_bytes()),
            Dtype::F16 => out.extend_from_slice(&numerics::f64_to_f16(v).to_le_bytes()),
            Dtype::Fp8E4m3 => out.push(numerics::f32_to_e4m3fn_sat(numerics::f64_to_f32_odd(v))),
            Dtype::Fp8E5m2 => out.push(numerics::f32_to_e5m2(numerics::f64_to_f32_odd(v))),
            Dtype::I8 => out.push(to_int(v, -128.0, 127.0) as i8 as u8),
            Dtype::U8 => out.push(to_int(v, 0.0, 255.0) as u8),
            Dtype::I32 => out.extend_from_slice(
                &(to_int(v, f64::from(i32::MIN), f64::from(i32::MAX)) as i32).to_le_bytes(),
            ),
            Dtype::I64 => out.extend_from_slice(&(to_int(v, -9.2e18, 9.2e18) as i64).to_le_bytes()),
        }
    }
}

/// Encodes `values` in `dtype` into `out`, which must hold exactly
/// `values.len() * dtype.size()` bytes (the same bytes as [`encode_into`]).
pub fn encode_slice(dtype: Dtype, values: &[f64], out: &mut [u8]) {
    let n = dtype.size() as usize;
    debug_assert_eq!(out.len(), values.len() * n);
    match dtype {
        Dtype::Bf16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&numerics::f64_to_bf16(v).to_le_bytes());
            }
        }
        Dtype::F32 => {
            for (o, &v) in out.chunks_exact_mut(4).zip(values) {
                o.copy_from_slice(&(v as f32).to_le_bytes());
            }
        }
        _ => {
            let mut tmp = Vec::with_capacity(out.len());
            encode_into(dtype, values.iter().copied(), &mut tmp);
            out.copy_from_slice(&tmp);
        }
    }
}

/// Encodes f32 `values` in `dtype` into `out` (`values.len() * dtype.size()` bytes):
/// the same bytes as [`encode_slice`] of the values widened to f64 (NaN payloads aside:
/// an f32 NaN keeps its bits here), at half the memory traffic (the weight encoder's
/// path for f32, bf16 and f16 weights).
pub fn encode_slice_f32(dtype: Dtype, values: &[f32], out: &mut [u8]) {
    debug_assert_eq!(out.len(), values.len() * dtype.size() as usize);
    match dtype {
        Dtype::Bf16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&numerics::f32_to_bf16(v).to_le_bytes());
            }
        }
        Dtype::F32 => {
            for (o, &v) in out.chunks_exact_mut(4).zip(values) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        _ => {
            let mut tmp = Vec::with_capacity(out.len());
            encode_into(dtype, values.iter().map(|&v| f64::from(v)), &mut tmp);
            out.copy_from_slice(&tmp);
        }
    }
}

/// Elements per block of [`encode_blocks_f32`]: 16 KB of f32, so a block stays in the
/// L1 cache between being produced and encoded.
const F32_BLOCK: usize = 4096;

/// Encodes `out.len() / dtype.size()` elements in `dtype` into `out`, produced block by
/// block by `fill(first element, values)` into `scratch` (the same bytes as
/// [`encode_slice_f32`] of all the values at once, without a buffer of them all).
/// Returns false as soon as `fill` does (the values are not f32s; `out` is then
/// partly written).
pub fn encode_blocks_f32(
    dtype: Dtype,
    out: &mut [u8],
    scratch: &mut Vec<f32>,
    mut fill: impl FnMut(usize, &mut [f32]) -> bool,
) -> bool {
    let size = dtype.size() as usize;
    let count = out.len() / size;
    scratch.resize(F32_BLOCK.min(count), 0f32);
    for (b, o) in out.chunks_mut(F32_BLOCK * size).enumerate() {
        let v = &mut scratch[..o.len() / size];
        if !fill(b * F32_BLOCK, v) {
            return false;
        }
        encode_slice_f32(dtype, v, o);
    }
    true
}

/// The encoding of `values` in `dtype`.
pub fn encode(dtype: Dtype, values: impl IntoIterator<Item = f64>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(dtype, values, &mut out);
    out
}

/// Decodes little-endian `bytes` of `dtype` to f64 (for tests and the summary); a trailing
/// partial element is ignored.
pub fn decode(dtype: Dtype, bytes: &[u8]) -> Vec<f64> {
    let n = dtype.size() as usize;
    bytes
        .chunks_exact(n)
        .map(|c| match dtype {
            Dtype::F32 => f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            Dtype::Bf16 => f64::from(bf16::from_le_bytes([c[0], c[1]])),
            Dtype::F16 => f64::from(f16::from_le_bytes([c[0], c[1]])),
            Dtype::Fp8E4m3 => f64::from(numerics::e4m3fn_to_f32(c[0])),
            Dtype::Fp8E5m2 => f64::from(numerics::e5m2_to_f32(c[0])),
            Dtype::I8 => f64::from(c[0] as i8),
            Dtype::U8 => f64::from(c[0]),
            Dtype::I32 => f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            Dtype::I64 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                i64::from_le_bytes(a) as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_known_values() {
        let e = |x: f32| f32_to_fp8(Dtype::Fp8E4m3, x).unwrap();
        assert_eq!(e(0.0), 0x00);
        assert_eq!(e(1.0), 0x38);
        assert_eq!(e(-2.0), 0xc0);
        assert_eq!(e(448.0), 0x7e);
        assert_eq!(e(1e6), 0x7e, "saturates");
        assert_eq!(e(f32::NEG_INFINITY), 0xfe, "saturates");
        assert_eq!(e(f32::NAN) & 0x7f, 0x7f);
        // Smallest subnormal 2^-9, and a tie between 0 and it rounds to even (0).
        assert_eq!(e(2f32.powi(-9)), 0x01);
        assert_eq!(e(2f32.powi(-10)), 0x00);
        // 1.0625 is halfway between 1.0 (0x38) and 1.125 (0x39): ties to even.
        assert_eq!(e(1.0625), 0x38);
        assert_eq!(e(1.1875), 0x3a);
    }

    #[test]
    fn every_fp8_code_round_trips() {
        for d in [Dtype::Fp8E4m3, Dtype::Fp8E5m2] {
            for b in 0..=255u8 {
                let v = decode(d, &[b])[0];
                if v.is_nan() {
                    continue;
                }
                let back = f32_to_fp8(d, v as f32).unwrap();
                // Negative zero encodes as 0x80; both zeros decode to 0.
                assert!(
                    back == b || (v == 0.0 && back & 0x7f == 0),
                    "{d} {b:#x} -> {v} -> {back:#x}"
                );
            }
        }
    }

    #[test]
    fn integers_round_to_even_and_saturate() {
        assert_eq!(
            encode(Dtype::I8, [2.5, -2.5, 3.5, 200.0, -300.0, f64::NAN]),
            vec![2, 254, 4, 127, 128, 0]
        );
        assert_eq!(
            decode(Dtype::I32, &encode(Dtype::I32, [7.0, -1.0])),
            vec![7.0, -1.0]
        );
    }

    #[test]
    fn f32_path_matches_the_f64_path_bit_for_bit() {
        // Above the tie by the f32's lowest bits: rounds up (half's `bf16::from_f64`, used
        // before, looked only at the f64's top 32 bits and rounded this one down).
        assert_eq!(
            encode(Dtype::Bf16, [f64::from(f32::from_bits(0x5d60_8003))]),
            [0x61, 0x5d]
        );
        // Every pattern of the low 17 bits (round, sticky and result bits) under a spread
        // of signs, exponents (zero/subnormal, normal, the largest, inf/NaN) and high
        // mantissas.
        for sign in [0u32, 1] {
            for exp in [0u32, 1, 2, 100, 127, 128, 200, 253, 254, 255] {
                for hi in [0u32, 0x3f, 0x40, 0x2a] {
                    for lo in 0..1u32 << 17 {
                        let bits = sign << 31 | exp << 23 | hi << 17 | lo;
                        let x = f32::from_bits(bits);
                        let (mut a, mut b) = ([0u8; 2], [0u8; 2]);
                        encode_slice_f32(Dtype::Bf16, &[x], &mut a);
                        encode_slice(Dtype::Bf16, &[f64::from(x)], &mut b);
                        assert_eq!(a, b, "{bits:#010x}");
                    }
                }
            }
        }
        let xs: Vec<f32> = (0..4096u32)
            .map(|i| f32::from_bits(i.wrapping_mul(0x9e37_79b9)))
            .filter(|x| !x.is_nan())
            .collect();
        for d in [
            Dtype::Bf16,
            Dtype::F32,
            Dtype::F16,
            Dtype::Fp8E4m3,
            Dtype::I8,
        ] {
            let n = xs.len() * d.size() as usize;
            let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
            encode_slice_f32(d, &xs, &mut a);
            let wide: Vec<f64> = xs.iter().map(|&x| f64::from(x)).collect();
            encode_slice(d, &wide, &mut b);
            assert_eq!(a, b, "{d}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: rounds to even (1.0).
        let b = encode(
            Dtype::Bf16,
            [1.0 + 2f64.powi(-8), 1.0 + 3.0 * 2f64.powi(-8)],
        );
        assert_eq!(
            decode(Dtype::Bf16, &b),
            vec![1.0, 1.0 + 2.0 * 2f64.powi(-7)]
        );
    }
}
