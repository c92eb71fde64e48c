//! Element codecs: host numbers to and from the little-endian bytes of each ISA dtype.
//!
//! Floats go through the simulator's own codecs ([`neuron_sim::numerics`]), so an input
//! the runtime rounds to bf16 or fp8 gets exactly the bits an engine write would produce
//! (round to nearest even; fp8 e4m3 saturates to +-448). Integers are written and read
//! exactly (no trip through f32), so int64 token ids above 2^24 survive.

use neuron_isa::Dtype;
use neuron_sim::numerics::{Rounder, decode_slice, encode_slice};

/// Encodes float values as `dtype` (a float dtype), rounding to nearest even.
pub(crate) fn encode_floats(values: &[f32], dtype: Dtype) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; values.len() * dtype.size() as usize];
    encode_slice(dtype, values, &mut out, &mut Rounder::rne()).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Decodes float elements of `dtype` (exact: every float dtype widens to f32).
pub(crate) fn decode_floats(bytes: &[u8], dtype: Dtype) -> Result<Vec<f32>, String> {
    let mut out = vec![0f32; bytes.len() / dtype.size() as usize];
    decode_slice(dtype, bytes, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Whether integer `v` fits integer `dtype` exactly.
pub(crate) fn int_fits(v: i64, dtype: Dtype) -> bool {
    match dtype {
        Dtype::I8 => i8::try_from(v).is_ok(),
        Dtype::U8 => u8::try_from(v).is_ok(),
        Dtype::I32 => i32::try_from(v).is_ok(),
        _ => true,
    }
}

/// Appends integer `v` as integer `dtype` (truncating to its width: callers check
/// [`int_fits`] first).
pub(crate) fn encode_int(v: i64, dtype: Dtype, out: &mut Vec<u8>) {
    match dtype {
        Dtype::I8 | Dtype::U8 => out.push(v as u8),
        Dtype::I32 => out.extend_from_slice(&(v as i32).to_le_bytes()),
        _ => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// Decodes one element of integer `dtype` from `b` (exactly `dtype.size()` bytes).
pub(crate) fn decode_int(b: &[u8], dtype: Dtype) -> i64 {
    match (dtype, b) {
        (Dtype::I8, [x]) => i64::from(*x as i8),
        (Dtype::U8, [x]) => i64::from(*x),
        (Dtype::I32, &[a, b, c, d]) => i64::from(i32::from_le_bytes([a, b, c, d])),
        (Dtype::I64, &[a, b, c, d, e, f, g, h]) => i64::from_le_bytes([a, b, c, d, e, f, g, h]),
        // Not reached: callers pass chunks of the dtype's size.
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_like_the_chip() {
        let b = encode_floats(&[1.0 + 2f32.powi(-9), 1e6, -3.0], Dtype::Bf16).unwrap();
        assert_eq!(
            decode_floats(&b, Dtype::Bf16).unwrap(),
            vec![1.0, 999424.0, -3.0]
        );
        let b = encode_floats(&[1e6, 1.1], Dtype::Fp8E4m3).unwrap();
        assert_eq!(
            decode_floats(&b, Dtype::Fp8E4m3).unwrap(),
            vec![448.0, 1.125]
        );
    }

    #[test]
    fn ints_are_exact() {
        let mut v = Vec::new();
        encode_int(-5, Dtype::I32, &mut v);
        encode_int(255, Dtype::U8, &mut v);
        encode_int((1 << 40) + 1, Dtype::I64, &mut v);
        encode_int(-128, Dtype::I8, &mut v);
        assert_eq!(decode_int(&v[0..4], Dtype::I32), -5);
        assert_eq!(decode_int(&v[4..5], Dtype::U8), 255);
        assert_eq!(decode_int(&v[5..13], Dtype::I64), (1 << 40) + 1);
        assert_eq!(decode_int(&v[13..14], Dtype::I8), -128);
        assert!(int_fits(127, Dtype::I8) && !int_fits(128, Dtype::I8));
        assert!(!int_fits(-1, Dtype::U8) && int_fits(i64::MAX, Dtype::I64));
        assert!(!int_fits(1 << 31, Dtype::I32));
    }
}
