//! Exact numerics of the simulated chip: how every [`Dtype`] is encoded, and how an FP32
//! result is rounded when it is written to memory.
//!
//! Engines compute in FP32; memory stores narrower types. This module is the one place
//! where bits are produced, so every engine rounds the same way:
//!
//! - Floats (`bf16`, `f16`, `fp8_e4m3`, `fp8_e5m2`) round to nearest, ties to even
//!   ([`Rounding::Rne`]) or stochastically ([`Rounding::Stochastic`]). Subnormals are kept
//!   (no flush to zero). NaN inputs give a quiet NaN with the sign kept and the payload
//!   dropped.
//! - Overflow: `bf16`, `f16` and `fp8_e5m2` go to infinity, as IEEE 754 says.
//!   `fp8_e4m3` (OCP `e4m3fn`) has no infinity; the chip **saturates** to +-448 (and maps
//!   +-inf to +-448), the ONNX `Cast(saturate=1)` convention. The non-saturating OCP
//!   convention (overflow -> NaN) is available as [`f32_to_e4m3fn`] for comparison; the
//!   golden file of the tests holds both.
//! - Integers (`i8`, `u8`, `i32`) round to nearest-even, then saturate; NaN becomes 0.
//!   Stochastic rounding applies to float formats only; integer writes always use RNE.
//! - `i64` is read-only (token ids in HBM): it decodes to the nearest FP32 but cannot be
//!   written from FP32.
//! - FP32 is stored as is.
//!
//! Stochastic rounding adds a uniformly random integer below one unit of the last kept
//! place to the magnitude bits that are dropped, then truncates: the result is one of
//! the two neighbours of the exact value, and rounds up with probability equal to the
//! dropped fraction, so it is unbiased. The random numbers come from a SplitMix64
//! sequence (a Weyl counter passed through a mixing function) seeded by the run seed:
//! element `i` of a conversion uses the counter value `state + (i + 1) * golden`, which
//! makes the bits deterministic and independent of how a write is split into slices.
//!
//! All multi-byte values are little-endian.
//!
//! The slice functions ([`decode_slice`], [`encode_slice`]) are the fast paths used for
//! every memory access: they are branch-light (selects, lookup tables for FP8) so that
//! the compiler can vectorise them.

use crate::error::SimError;
use neuron_isa::Dtype;
use serde::{Deserialize, Serialize};

/// How an FP32 value is rounded to a narrower float type when it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Rounding {
    /// Round to nearest, ties to even (the chip's default).
    #[default]
    Rne,
    /// Stochastic rounding: round up with probability equal to the dropped fraction, from
    /// a seeded deterministic generator (`NEURON_RT_STOCHASTIC_ROUNDING_EN=1` on the chip).
    Stochastic,
}

/// The SplitMix64 increment (2^64 / golden ratio).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijective mix of a 64-bit counter value.
#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rounding mode of a run together with the state of its stochastic-rounding
/// generator. One `Rounder` lives in the execution context; conversions advance it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rounder {
    mode: Rounding,
    /// SplitMix64 counter: the next random number is `mix64(state + GOLDEN)`.
    state: u64,
}

impl Rounder {
    /// A rounder for `mode`, with the stochastic-rounding generator seeded by `seed`.
    pub fn new(mode: Rounding, seed: u64) -> Rounder {
        Rounder {
            mode,
            // Mixing the seed keeps small seeds (0, 1, 2) from giving related streams.
            state: mix64(seed ^ 0x6a09_e667_f3bc_c908),
        }
    }

    /// A round-to-nearest-even rounder (its generator is never used).
    pub fn rne() -> Rounder {
        Rounder::new(Rounding::Rne, 0)
    }

    /// The rounding mode.
    pub fn mode(&self) -> Rounding {
        self.mode
    }

    /// The next 64 random bits of the stochastic-rounding sequence.
    pub fn next_random(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Reserves `n` random numbers: returns the counter base; element `i` (0-based) uses
    /// `mix64(base + (i + 1) * GOLDEN)`, exactly what `n` calls of `next_random` return.
    fn reserve(&mut self, n: usize) -> u64 {
        let base = self.state;
        self.state = base.wrapping_add((n as u64).wrapping_mul(GOLDEN));
        base
    }
}

/// The random number of element `i` of a conversion that reserved counter `base`.
#[inline(always)]
fn random_at(base: u64, i: usize) -> u64 {
    mix64(base.wrapping_add((i as u64).wrapping_add(1).wrapping_mul(GOLDEN)))
}

// The scalar conversions live in the ISA crate, shared with the compiler and the runtime.
use neuron_isa::numerics::{
    Bf16Fmt, E4m3SatFmt, E5m2Fmt, F16Fmt, NarrowFloat, encode_one, encode_rne,
};
pub use neuron_isa::numerics::{
    bf16_to_f32, e4m3fn_to_f32, e5m2_to_f32, f16_to_f32, f32_to_bf16, f32_to_bf16_sr,
    f32_to_e4m3fn, f32_to_e4m3fn_sat, f32_to_e4m3fn_sat_sr, f32_to_e5m2, f32_to_e5m2_sr,
    f32_to_f16, f32_to_f16_sr, f32_to_i8, f32_to_i32, f32_to_u8,
};

/// The first four bytes of `c` as an array (callers pass 4-byte chunks).
#[inline(always)]
fn le4(c: &[u8]) -> [u8; 4] {
    [c[0], c[1], c[2], c[3]]
}

fn size_error(what: &str, dtype: Dtype, elems: usize, bytes: usize) -> SimError {
    SimError::Conversion(format!(
        "{what} {dtype}: {elems} elements need {} bytes, found {bytes}",
        elems.saturating_mul(dtype.size() as usize)
    ))
}

/// Decodes `src` (little-endian elements of `dtype`) into `dst`, exactly (`i32` and
/// `i64` round to the nearest f32). `src.len()` must be `dst.len() * dtype.size()`.
/// Compiled for the host's widest vector units (`neuron_isa::simd`; the same bits).
pub fn decode_slice(dtype: Dtype, src: &[u8], dst: &mut [f32]) -> Result<(), SimError> {
    if src.len() != dst.len().saturating_mul(dtype.size() as usize) {
        return Err(size_error("decode", dtype, dst.len(), src.len()));
    }
    decode_lanes(dtype, src, dst);
    Ok(())
}

neuron_isa::vectorized! {
/// [`decode_slice`]'s loops on checked lengths.
fn decode_lanes(dtype: Dtype, src: &[u8], dst: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes(le4(c));
            }
        }
        Dtype::Bf16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        Dtype::F16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        Dtype::Fp8E4m3 => {
            for (o, &b) in dst.iter_mut().zip(src) {
                *o = e4m3fn_to_f32(b);
            }
        }
        Dtype::Fp8E5m2 => {
            for (o, &b) in dst.iter_mut().zip(src) {
                *o = e5m2_to_f32(b);
            }
        }
        Dtype::I8 => {
            for (o, &b) in dst.iter_mut().zip(src) {
                *o = f32::from(b as i8);
            }
        }
        Dtype::U8 => {
            for (o, &b) in dst.iter_mut().zip(src) {
                *o = f32::from(b);
            }
        }
        Dtype::I32 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = i32::from_le_bytes(le4(c)) as f32;
            }
        }
        Dtype::I64 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(8)) {
                *o = i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32;
            }
        }
    }
}
}

/// Encodes a narrow float format over a slice, RNE or stochastic.
#[inline(always)]
fn encode_narrow<F: NarrowFloat, const N: usize>(
    src: &[f32],
    dst: &mut [u8],
    rounder: &mut Rounder,
) {
    match rounder.mode {
        Rounding::Rne => {
            for (o, &x) in dst.chunks_exact_mut(N).zip(src) {
                let code = encode_rne::<F>(x);
                o.copy_from_slice(&code.to_le_bytes()[..N]);
            }
        }
        Rounding::Stochastic => {
            let base = rounder.reserve(src.len());
            for (i, (o, &x)) in dst.chunks_exact_mut(N).zip(src).enumerate() {
                let code = encode_one::<F, true>(x, random_at(base, i));
                o.copy_from_slice(&code.to_le_bytes()[..N]);
            }
        }
    }
}

/// Encodes `src` into `dst` as little-endian elements of `dtype`, rounding floats with
/// `rounder` (integers: RNE and saturation; `fp8_e4m3`: the saturating convention).
/// `dst.len()` must be `src.len() * dtype.size()`; `i64` cannot be written.
pub fn encode_slice(
    dtype: Dtype,
    src: &[f32],
    dst: &mut [u8],
    rounder: &mut Rounder,
) -> Result<(), SimError> {
    if dst.len() != src.len().saturating_mul(dtype.size() as usize) {
        return Err(size_error("encode", dtype, src.len(), dst.len()));
    }
    if dtype == Dtype::I64 {
        return Err(SimError::Conversion(
            "encode i64: i64 is read-only (an HBM DMA source), it cannot be written".into(),
        ));
    }
    encode_lanes(dtype, src, dst, rounder);
    Ok(())
}

neuron_isa::vectorized! {
/// [`encode_slice`]'s loops on checked lengths.
fn encode_lanes(dtype: Dtype, src: &[f32], dst: &mut [u8], rounder: &mut Rounder) {
    match dtype {
        Dtype::F32 => {
            for (o, &x) in dst.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        Dtype::Bf16 => encode_narrow::<Bf16Fmt, 2>(src, dst, rounder),
        Dtype::F16 => encode_narrow::<F16Fmt, 2>(src, dst, rounder),
        Dtype::Fp8E4m3 => encode_narrow::<E4m3SatFmt, 1>(src, dst, rounder),
        Dtype::Fp8E5m2 => encode_narrow::<E5m2Fmt, 1>(src, dst, rounder),
        Dtype::I8 => {
            for (o, &x) in dst.iter_mut().zip(src) {
                *o = f32_to_i8(x) as u8;
            }
        }
        Dtype::U8 => {
            for (o, &x) in dst.iter_mut().zip(src) {
                *o = f32_to_u8(x);
            }
        }
        Dtype::I32 => {
            for (o, &x) in dst.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&f32_to_i32(x).to_le_bytes());
            }
        }
        // Refused by `encode_slice`.
        Dtype::I64 => {}
    }
}
}

/// Whether any element of `bytes` (elements of `dtype`) is the poison pattern: all bytes
/// 0xFF, a NaN in every float type. Integer types are never reported (0xFF.. is a valid
/// -1 or 255). A NaN computed by an engine is never all-ones except a negative NaN in
/// `fp8_e4m3`, whose only negative NaN encoding is 0xFF; that case is reported too.
pub fn is_poisoned(dtype: Dtype, bytes: &[u8]) -> bool {
    if !dtype.is_float() {
        return false;
    }
    poison_lanes(dtype.size(), bytes)
}

neuron_isa::vectorized! {
/// [`is_poisoned`]'s loops for `size`-byte elements.
fn poison_lanes(size: u64, bytes: &[u8]) -> bool {
    // Each element compared with all ones, the comparisons OR-ed together without
    // branches: one packed compare and one OR per vector on the baseline x86-64 target
    // (SSE2), where the unsigned max-reduction this used to be has no instruction for
    // 16- and 32-bit lanes and was emulated (4x slower for FP32; this check runs on
    // every simulated read). Elements start at byte 0; trailing bytes short of an
    // element are not one.
    match size {
        1 => bytes.iter().fold(false, |any, &b| any | (b == u8::MAX)),
        2 => bytes.chunks_exact(2).fold(false, |any, c| {
            any | (u16::from_le_bytes([c[0], c[1]]) == u16::MAX)
        }),
        4 => bytes.chunks_exact(4).fold(false, |any, c| {
            any | (u32::from_le_bytes(le4(c)) == u32::MAX)
        }),
        size => bytes
            .chunks_exact(size as usize)
            .any(|c| c.iter().all(|&b| b == 0xff)),
    }
}
}

/// [`is_poisoned`] over a large buffer, in blocks of 1 MiB (a whole number of elements of
/// every dtype) across the rayon pool: for checking a model's weights once.
pub fn is_poisoned_parallel(dtype: Dtype, bytes: &[u8]) -> bool {
    use rayon::prelude::*;
    const BLOCK: usize = 1 << 20;
    if bytes.len() <= BLOCK || !dtype.is_float() || BLOCK % dtype.size() as usize != 0 {
        return is_poisoned(dtype, bytes);
    }
    bytes
        .par_chunks(BLOCK)
        .any(|block| is_poisoned(dtype, block))
}

/// Converts `bytes` of `src_dtype` to `dst_dtype` element by element through FP32, the
/// DMA cast rule; integer-to-integer casts are exact (saturating) instead, so int64
/// token ids above 2^24 survive a cast to int32. Equal dtypes copy the bits.
pub fn cast_bytes(
    src_dtype: Dtype,
    src: &[u8],
    dst_dtype: Dtype,
    dst: &mut [u8],
    rounder: &mut Rounder,
) -> Result<(), SimError> {
    let n = src.len() / (src_dtype.size() as usize);
    if src.len() % (src_dtype.size() as usize) != 0 {
        return Err(size_error("cast source", src_dtype, n, src.len()));
    }
    if dst.len() != n.saturating_mul(dst_dtype.size() as usize) {
        return Err(size_error("cast destination", dst_dtype, n, dst.len()));
    }
    if src_dtype == dst_dtype {
        dst.copy_from_slice(src);
        return Ok(());
    }
    if !src_dtype.is_float() && !dst_dtype.is_float() {
        if dst_dtype == Dtype::I64 {
            return Err(SimError::Conversion(
                "cast to i64: i64 is read-only (an HBM DMA source), it cannot be written".into(),
            ));
        }
        for i in 0..n {
            let v = read_int(src_dtype, &src[i * src_dtype.size() as usize..]);
            write_int(dst_dtype, v, &mut dst[i * dst_dtype.size() as usize..]);
        }
        return Ok(());
    }
    // Chunks bound the temporary while keeping the per-chunk loops long.
    const CHUNK: usize = 4096;
    let mut tmp = vec![0.0f32; n.min(CHUNK)];
    let (ss, ds) = (src_dtype.size() as usize, dst_dtype.size() as usize);
    let mut start = 0;
    while start < n {
        let len = (n - start).min(CHUNK);
        let t = &mut tmp[..len];
        decode_slice(src_dtype, &src[start * ss..(start + len) * ss], t)?;
        encode_slice(
            dst_dtype,
            t,
            &mut dst[start * ds..(start + len) * ds],
            rounder,
        )?;
        start += len;
    }
    Ok(())
}

/// The integer at the start of `bytes` (an integer dtype; floats read as 0).
fn read_int(dtype: Dtype, bytes: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    let n = dtype.size() as usize;
    b[..n].copy_from_slice(&bytes[..n]);
    match dtype {
        Dtype::I8 => i64::from(b[0] as i8),
        Dtype::U8 => i64::from(b[0]),
        Dtype::I32 => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::I64 => i64::from_le_bytes(b),
        _ => 0,
    }
}

/// Writes `v` saturated to the integer `dtype` at the start of `bytes`.
fn write_int(dtype: Dtype, v: i64, bytes: &mut [u8]) {
    match dtype {
        Dtype::I8 => bytes[0] = v.clamp(-128, 127) as i8 as u8,
        Dtype::U8 => bytes[0] = v.clamp(0, 255) as u8,
        Dtype::I32 => bytes[..4].copy_from_slice(
            &(v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32).to_le_bytes(),
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuron_isa::numerics::E4m3Fmt;

    #[test]
    fn reserve_matches_sequential_draws() {
        let mut a = Rounder::new(Rounding::Stochastic, 7);
        let mut b = a.clone();
        let base = a.reserve(3);
        let seq: Vec<u64> = (0..3).map(|_| b.next_random()).collect();
        assert_eq!(
            seq,
            vec![random_at(base, 0), random_at(base, 1), random_at(base, 2)]
        );
        assert_eq!(a, b);
    }

    /// Checks the fast RNE path against the integer reference on `bits`.
    fn rne_matches_reference(bits: u32) {
        let x = f32::from_bits(bits);
        assert_eq!(
            encode_rne::<Bf16Fmt>(x),
            encode_one::<Bf16Fmt, false>(x, 0),
            "bf16 {bits:#x}"
        );
        assert_eq!(
            encode_rne::<F16Fmt>(x),
            encode_one::<F16Fmt, false>(x, 0),
            "f16 {bits:#x}"
        );
        assert_eq!(
            encode_rne::<E4m3Fmt>(x),
            encode_one::<E4m3Fmt, false>(x, 0),
            "e4m3 {bits:#x}"
        );
        assert_eq!(
            encode_rne::<E4m3SatFmt>(x),
            encode_one::<E4m3SatFmt, false>(x, 0),
            "e4m3 sat {bits:#x}"
        );
        assert_eq!(
            encode_rne::<E5m2Fmt>(x),
            encode_one::<E5m2Fmt, false>(x, 0),
            "e5m2 {bits:#x}"
        );
    }

    #[test]
    fn fast_rne_equals_reference() {
        // Every 97th bit pattern (covers all exponents and many mantissas, both signs),
        // plus every pattern around each format's subnormal/normal boundary and overflow.
        let mut b = 0u32;
        while let Some(next) = b.checked_add(97) {
            rne_matches_reference(b);
            b = next;
        }
        for center in [
            2f32.powi(-14),
            2f32.powi(-6),
            2f32.powi(-126),
            448.0,
            464.0,
            57344.0,
            61440.0,
            65504.0,
            65520.0,
            f32::MAX,
        ] {
            let c = center.to_bits();
            for d in 0..70_000u32 {
                rne_matches_reference(c.saturating_sub(d));
                rne_matches_reference(c.saturating_add(d).min(0x7fff_ffff));
                rne_matches_reference((c.saturating_sub(d)) | 0x8000_0000);
            }
        }
    }

    #[test]
    fn poison_check_finds_exactly_the_all_ones_elements() {
        // The rule, element by element.
        let naive = |dtype: Dtype, bytes: &[u8]| {
            dtype.is_float()
                && bytes
                    .chunks_exact(dtype.size() as usize)
                    .any(|c| c.iter().all(|&b| b == 0xff))
        };
        for dtype in [
            Dtype::F32,
            Dtype::Bf16,
            Dtype::F16,
            Dtype::Fp8E4m3,
            Dtype::I8,
            Dtype::I32,
        ] {
            let size = dtype.size() as usize;
            for len in [0, 1, 3, 8, 37, 64, 130] {
                // Bytes of 0xff that never make an aligned all-ones element, then one
                // aligned poisoned element at each place, and a misaligned run of 0xff.
                let base: Vec<u8> = (0..len)
                    .map(|i| if i % size == 0 { 0x7f } else { 0xff })
                    .collect();
                assert_eq!(
                    is_poisoned(dtype, &base),
                    naive(dtype, &base),
                    "{dtype} {len}"
                );
                for at in 0..len / size {
                    let mut b = base.clone();
                    b[at * size..(at + 1) * size].fill(0xff);
                    assert_eq!(
                        is_poisoned(dtype, &b),
                        naive(dtype, &b),
                        "{dtype} {len} {at}"
                    );
                    assert_eq!(is_poisoned(dtype, &b), dtype.is_float());
                }
                if len > size {
                    let mut b = vec![0u8; len];
                    b[1..1 + size].fill(0xff);
                    assert_eq!(
                        is_poisoned(dtype, &b),
                        naive(dtype, &b),
                        "{dtype} {len} shifted"
                    );
                }
                // A trailing partial element is not an element.
                let mut b = vec![0u8; len];
                if len % size != 0 {
                    b[len - len % size..].fill(0xff);
                    assert!(!is_poisoned(dtype, &b), "{dtype} {len} tail");
                }
            }
        }
    }

    #[test]
    fn every_vector_level_gives_the_baseline_bits() {
        use neuron_isa::simd::Level;
        // Every 16-bit pattern twice over (bf16/f16 decode; fp8 and int8 decode each byte),
        // and FP32 inputs around every rounding case: ties, NaNs, infinities, subnormals,
        // values past each format's range.
        let raw: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
        let mut xs: Vec<f32> = (0..=u16::MAX)
            .map(|h| f32::from_bits(u32::from(h).wrapping_mul(0x9e37_79b9)))
            .collect();
        xs.extend((0..=u16::MAX).map(|h| f32::from_bits((u32::from(h) << 16) | 0x8000)));
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            -f32::INFINITY,
            f32::NAN,
            1e-45,
            7e4,
            -3e38,
        ]);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for level in Level::ALL {
            // Every dtype that can be written (i64 is read-only).
            for dtype in Dtype::ALL.into_iter().filter(|&d| d != Dtype::I64) {
                let size = dtype.size() as usize;
                let n = raw.len() / size;
                let (mut want, mut got) = (vec![0f32; n], vec![0f32; n]);
                decode_lanes::at(Level::Baseline, dtype, &raw[..n * size], &mut want);
                decode_lanes::at(level, dtype, &raw[..n * size], &mut got);
                assert_eq!(bits(&got), bits(&want), "decode {dtype} {level:?}");

                let (mut want, mut got) = (vec![0u8; xs.len() * size], vec![0u8; xs.len() * size]);
                encode_lanes::at(Level::Baseline, dtype, &xs, &mut want, &mut Rounder::rne());
                encode_lanes::at(level, dtype, &xs, &mut got, &mut Rounder::rne());
                assert!(got == want, "encode {dtype} {level:?}");
                let mut sr = [
                    Rounder::new(Rounding::Stochastic, 7),
                    Rounder::new(Rounding::Stochastic, 7),
                ];
                encode_lanes::at(Level::Baseline, dtype, &xs, &mut want, &mut sr[0]);
                encode_lanes::at(level, dtype, &xs, &mut got, &mut sr[1]);
                assert!(got == want, "encode stochastic {dtype} {level:?}");

                // One poison element at the end of a long clean run, and none.
                let mut clean = vec![0x7fu8; 4096 * size];
                assert!(
                    !poison_lanes::at(level, dtype.size(), &clean),
                    "{dtype} {level:?}"
                );
                let end = clean.len();
                clean[end - size..].fill(0xff);
                assert!(
                    poison_lanes::at(level, dtype.size(), &clean),
                    "{dtype} {level:?}"
                );
            }
        }
    }

    #[test]
    fn fp8_tables_hit_known_values() {
        assert_eq!(e4m3fn_to_f32(0x7e), 448.0);
        assert_eq!(e4m3fn_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3fn_to_f32(0x08), 2f32.powi(-6));
        assert!(e4m3fn_to_f32(0x7f).is_nan());
        assert_eq!(e4m3fn_to_f32(0x78), 256.0);
        assert_eq!(e5m2_to_f32(0x7b), 57344.0);
        assert_eq!(e5m2_to_f32(0x7c), f32::INFINITY);
        assert_eq!(e5m2_to_f32(0xfc), f32::NEG_INFINITY);
        assert!(e5m2_to_f32(0x7d).is_nan());
        assert_eq!(e5m2_to_f32(0x01), 2f32.powi(-16));
        assert_eq!(e5m2_to_f32(0x3c), 1.0);
    }

    #[test]
    fn every_fp8_code_round_trips() {
        for b in 0..=255u8 {
            let v = e5m2_to_f32(b);
            if v.is_nan() {
                assert!(e5m2_to_f32(f32_to_e5m2(v)).is_nan());
            } else {
                assert_eq!(f32_to_e5m2(v), b, "e5m2 {b:#04x}");
            }
            let v = e4m3fn_to_f32(b);
            if v.is_nan() {
                assert!(e4m3fn_to_f32(f32_to_e4m3fn_sat(v)).is_nan());
            } else {
                assert_eq!(f32_to_e4m3fn_sat(v), b, "e4m3 {b:#04x}");
            }
        }
    }

    #[test]
    fn every_f16_code_round_trips_and_matches_half() {
        for h in 0..=u16::MAX {
            let v = f16_to_f32(h);
            let reference = half::f16::from_bits(h).to_f32();
            if reference.is_nan() {
                assert!(v.is_nan());
                assert!(f16_to_f32(f32_to_f16(v)).is_nan());
            } else {
                assert_eq!(v.to_bits(), reference.to_bits(), "f16 {h:#06x}");
                assert_eq!(f32_to_f16(v), h, "f16 {h:#06x}");
            }
        }
    }

    #[test]
    fn int_rounding_is_ties_to_even_and_saturating() {
        assert_eq!(f32_to_i8(2.5), 2);
        assert_eq!(f32_to_i8(3.5), 4);
        assert_eq!(f32_to_i8(-2.5), -2);
        assert_eq!(f32_to_i8(-0.5), 0);
        assert_eq!(f32_to_i8(127.5), 127);
        assert_eq!(f32_to_i8(-1000.0), -128);
        assert_eq!(f32_to_i8(f32::NAN), 0);
        assert_eq!(f32_to_u8(-3.0), 0);
        assert_eq!(f32_to_u8(254.5), 254);
        assert_eq!(f32_to_u8(255.5), 255);
        assert_eq!(f32_to_i32(4_194_304.5), 4_194_304);
        assert_eq!(f32_to_i32(4_194_305.5), 4_194_306);
        assert_eq!(f32_to_i32(3e9), i32::MAX);
        assert_eq!(f32_to_i32(-3e9), i32::MIN);
        assert_eq!(f32_to_i32(f32::NEG_INFINITY), i32::MIN);
        assert_eq!(f32_to_i32(f32::NAN), 0);
    }
}
